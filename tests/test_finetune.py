"""--init: a new run from a model file, class rows carried over by name across class sets."""
import pytest
import torch

import train
from common.errors import UserError
from helpers import make_image_folder
from networks import build_criterion, build_model
from utils.checkpoint import save_checkpoint, save_safetensors
from utils.finetune import class_indexed_keys, init_from

OLD = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]  # FER2013
NEW = ["angry", "contempt", "disgust", "fear", "happy", "neutral", "sad", "surprise"]  # FER+


def old_model():
    torch.manual_seed(1)
    model = build_model("dan", num_classes=7, num_heads=2)
    with torch.no_grad():  # non-trivial BatchNorm statistics on the logits, to see them carried
        model.bn.running_mean.copy_(torch.arange(7.0))
        model.bn.running_var.copy_(torch.arange(1.0, 8.0))
    return model


def meta(classes):
    return {"model": "dan", "model_args": {"num_classes": len(classes), "num_heads": 2}, "classes": classes,
            "img_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}


def test_class_indexed_keys_of_dan():
    assert class_indexed_keys("dan", {"num_heads": 2}, 7) == [
        "bn.bias", "bn.running_mean", "bn.running_var", "bn.weight", "fc.bias", "fc.weight"]


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_init_from_seven_to_eight_classes(tmp_path, suffix):
    old = old_model()
    old_criterion = build_criterion("dan", old)
    path = tmp_path / f"old{suffix}"
    if suffix == ".safetensors":
        save_safetensors(old.state_dict(), meta(OLD), path, half=False)
    else:
        save_checkpoint({"format": "fer-checkpoint", "version": 1, "meta": meta(OLD), "state_dict": old.state_dict(),
                         "criterion": old_criterion.state_dict()}, path)
    torch.manual_seed(2)
    new = build_model("dan", num_classes=8, num_heads=2)
    criterion = build_criterion("dan", new)
    fresh = {k: v.clone() for k, v in new.state_dict().items()}
    fresh_centers = criterion.centers.detach().clone()
    report = init_from(new, criterion, path, "dan", NEW)

    state, old_state = new.state_dict(), old.state_dict()
    for key in ("fc.weight", "fc.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
        for i, name in enumerate(NEW):
            expected = fresh[key][i] if name == "contempt" else old_state[key][OLD.index(name)]
            assert torch.equal(state[key][i], expected), (key, name)
    assert torch.equal(state["trunk.conv1.weight"], old_state["trunk.conv1.weight"])
    assert torch.equal(state["heads.1.spatial.conv3x3.0.weight"], old_state["heads.1.spatial.conv3x3.0.weight"])
    assert report.new == ["contempt"] and report.carried == OLD and report.dropped == []
    assert report.centers == (suffix == ".pth")
    if suffix == ".pth":
        assert torch.equal(criterion.centers[2], old_criterion.centers[OLD.index("disgust")])
        assert torch.equal(criterion.centers[1], fresh_centers[1])
    assert "contempt" in report.summary()


def test_init_refuses_another_model_or_shape(tmp_path):
    path = tmp_path / "old.safetensors"
    save_safetensors(old_model().state_dict(), meta(OLD), path)
    with pytest.raises(UserError, match="holds a dan model"):
        init_from(build_model("resnet18", num_classes=8), None, path, "resnet18", NEW)
    with pytest.raises(UserError, match="does not fit"):
        init_from(build_model("dan", num_classes=8, num_heads=4), None, path, "dan", NEW)


def test_train_init_starts_a_new_run_from_a_model_file(tmp_path):
    data = make_image_folder(tmp_path / "d", ["angry", "contempt", "happy"], per_class=3, size=32)
    path = tmp_path / "old.safetensors"
    save_safetensors(old_model().state_dict(), meta(OLD), path, half=False)
    out = tmp_path / "run"
    train.main(train.get_args_parser().parse_args(
        ["--data", str(data), "--epochs", "1", "--output", str(out), "--init", str(path), "--num-heads", "2",
         "--img-size", "32", "--batch-size", "4", "--workers", "0", "--threads", "1", "--device", "cpu",
         "--lr", "1e-9", "--warmup-epochs", "0", "--pretrained", "none"]))
    from utils.checkpoint import load_checkpoint
    ckpt = load_checkpoint(out / "last.pth")
    assert ckpt["epoch"] == 1 and ckpt["meta"].classes == ["angry", "contempt", "happy"]
    # lr ~0: the carried rows are the old model's
    old = old_model().state_dict()
    assert torch.allclose(ckpt["state_dict"]["fc.weight"][2], old["fc.weight"][OLD.index("happy")], atol=1e-6)
    assert torch.allclose(ckpt["state_dict"]["trunk.layer1.0.conv1.weight"], old["trunk.layer1.0.conv1.weight"],
                          atol=1e-6)


def interior(y: torch.Tensor, border: int = 2) -> torch.Tensor:
    return y[..., border:-border, border:-border]


def test_grey_model_spread_reads_colour_as_its_grey_version():
    from data.transforms import LUMA
    from utils.finetune import spread_grey_input

    grey = old_model().eval()
    with torch.no_grad():  # BatchNorm statistics away from (0, 1), to see the constant land there
        grey.trunk.bn1.running_mean.uniform_(-1, 1)
        grey.trunk.bn1.running_var.uniform_(0.5, 2)
    colour = old_model().eval()
    colour.load_state_dict(grey.state_dict())
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    assert spread_grey_input(colour, mean, std) == "trunk.conv1"
    w, w2 = grey.trunk.conv1.weight, colour.trunk.conv1.weight
    s, k = torch.tensor(std).view(1, 3, 1, 1), torch.tensor(LUMA).view(1, 3, 1, 1)
    a = (w / s).sum(1, keepdim=True)
    assert torch.allclose(w2, s * k * a)  # by hand: W'_c = s_c k_c sum_d W_d / s_d
    assert torch.allclose((w2 / s).sum(1), a[:, 0], atol=1e-6)  # a grey pixel's weight is kept

    torch.manual_seed(3)
    photo = torch.rand(2, 3, 40, 40)  # colour, in [0, 1]
    luma = (photo * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True).expand(-1, 3, -1, -1)
    m, sd = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        first = lambda net, x: net.trunk.bn1(net.trunk.conv1((x - m) / sd))  # noqa: E731
        y_grey, y_colour = first(grey, luma), first(colour, photo)
        assert torch.allclose(interior(y_colour), interior(y_grey), atol=1e-4)  # equal away from the padding
        assert not torch.allclose(first(grey, photo), y_grey, atol=1e-2)  # unspread, colour reads otherwise
        # the whole model: equal but for the border's share
        out_grey, out_colour = grey((luma - m) / sd).logits, colour((photo - m) / sd).logits
        assert (out_colour - out_grey).abs().max() < 0.1 * out_grey.abs().max()


def test_init_spreads_only_a_grey_file_into_a_colour_run(tmp_path):
    path = tmp_path / "grey.safetensors"
    save_safetensors(old_model().state_dict(), {**meta(OLD), "grayscale": True}, path, half=False)
    original = old_model().trunk.conv1.weight
    for colour, spread in [(True, "trunk.conv1"), (False, "")]:
        model = build_model("dan", num_classes=7, num_heads=2)
        report = init_from(model, None, path, "dan", OLD, colour=colour)
        assert report.spread == spread and ("spread over colour" in report.summary()) == colour
        assert torch.equal(model.trunk.conv1.weight, original) != colour
    colour_file = tmp_path / "colour.safetensors"
    save_safetensors(old_model().state_dict(), {**meta(OLD), "grayscale": False}, colour_file, half=False)
    model = build_model("dan", num_classes=7, num_heads=2)
    assert init_from(model, None, colour_file, "dan", OLD, colour=True).spread == ""
    assert torch.equal(model.trunk.conv1.weight, original)
