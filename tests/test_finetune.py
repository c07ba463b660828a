"""--init: a new run from a model file, class rows carried over by name across class sets."""
import pytest
import torch

import train
from conftest import make_image_folder
from networks import build_criterion, build_model
from utils.checkpoint import save_checkpoint, save_safetensors
from utils.errors import UserError
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
    assert ckpt["epoch"] == 1 and ckpt["meta"]["classes"] == ["angry", "contempt", "happy"]
    # lr ~0: the carried rows are the old model's
    old = old_model().state_dict()
    assert torch.allclose(ckpt["state_dict"]["fc.weight"][2], old["fc.weight"][OLD.index("happy")], atol=1e-6)
    assert torch.allclose(ckpt["state_dict"]["trunk.layer1.0.conv1.weight"], old["trunk.layer1.0.conv1.weight"],
                          atol=1e-6)
