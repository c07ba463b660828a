"""tools.average: weight averaging of model files, BatchNorm statistics recomputed from data."""
import pytest
import torch
from torch import nn

from common.errors import UserError
from data.transforms import Normalize
from helpers import make_image_folder
from networks import build_model
from tools import average
from utils.checkpoint import load_model, read_safetensors, save_checkpoint, save_safetensors

CLASSES = ["angry", "happy", "sad"]


def meta(num_heads=2, img_size=32):
    return {"model": "dan", "model_args": {"num_classes": 3, "num_heads": num_heads}, "classes": CLASSES,
            "img_size": img_size, "mean": [0.5] * 3, "std": [0.25] * 3, "temperature": 0.8}


def saved(path, seed, num_heads=2, img_size=32):
    torch.manual_seed(seed)
    model = build_model("dan", num_classes=3, num_heads=num_heads)
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.trunk.bn1.num_batches_tracked.fill_(seed)
    if path.suffix == ".pth":
        save_checkpoint({"format": "fer-checkpoint", "version": 1, "meta": meta(num_heads, img_size),
                         "state_dict": model.state_dict()}, path)
    else:
        save_safetensors(model.state_dict(), meta(num_heads, img_size), path, half=False)
    return model.state_dict()


def test_average_states_against_hand_computed_means():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(5)}
    assert torch.equal(average.average_states([a, b])["w"], torch.tensor([2.0, 4.0]))
    weighted = average.average_states([a, b], [3, 1])  # (3 * a + b) / 4
    assert torch.allclose(weighted["w"], torch.tensor([1.5, 3.0]))
    assert weighted["n"].item() == 3  # counters come from the first file
    with pytest.raises(UserError, match="non-negative"):
        average.average_states([a, b], [1, -1])
    with pytest.raises(UserError, match="non-negative"):
        average.average_states([a, b], [1])


def test_average_files_mixes_formats_and_refuses_other_models(tmp_path):
    s1 = saved(tmp_path / "a.pth", 1)
    s2 = saved(tmp_path / "b.safetensors", 2)
    state, info = average.average_files([tmp_path / "a.pth", tmp_path / "b.safetensors"])
    key = "heads.0.spatial.conv3x3.0.weight"
    assert torch.allclose(state[key], (s1[key] + s2[key]) / 2)
    assert torch.allclose(state["bn.running_mean"], (s1["bn.running_mean"] + s2["bn.running_mean"]) / 2)
    assert info.classes == CLASSES
    saved(tmp_path / "other.safetensors", 3, num_heads=3)
    with pytest.raises(UserError, match="differ in model_args"):
        average.average_files([tmp_path / "a.pth", tmp_path / "other.safetensors"])
    saved(tmp_path / "size.safetensors", 3, img_size=48)
    with pytest.raises(UserError, match="differ in img_size"):
        average.average_files([tmp_path / "a.pth", tmp_path / "size.safetensors"])


def test_recompute_batchnorm_gives_the_data_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4))
    net[1].running_mean.fill_(7.0)
    net[1].momentum = 0.25
    images = torch.randint(0, 256, (12, 3, 5, 5), dtype=torch.uint8)
    normalize = Normalize([0.5] * 3, [0.25] * 3)
    batches = [(images[:6],), (images[6:],), (images[:1],)]  # the 1-image batch is skipped
    assert average.recompute_batchnorm(net, batches, normalize) == 12
    with torch.no_grad():
        y = net[0](normalize(images))  # (12, 4, 5, 5)
    per_batch = torch.stack([y[:6].mean((0, 2, 3)), y[6:].mean((0, 2, 3))])
    assert torch.allclose(net[1].running_mean, per_batch.mean(0), atol=1e-5)  # the average over batches
    unbiased = torch.stack([y[:6].transpose(0, 1).reshape(4, -1).var(1), y[6:].transpose(0, 1).reshape(4, -1).var(1)])
    assert torch.allclose(net[1].running_var, unbiased.mean(0), atol=1e-4)
    assert net[1].momentum == 0.25 and not net.training


def test_cli_writes_a_loadable_average_with_its_sources(tmp_path):
    for i, name in enumerate(("a.pth", "b.pth")):
        saved(tmp_path / name, i + 1)
    data = tmp_path / "data"
    make_image_folder(data, CLASSES, per_class=4, size=40)
    out = tmp_path / "avg.safetensors"
    args = average.get_args_parser().parse_args(
        [str(tmp_path / "a.pth"), str(tmp_path / "b.pth"), "--out", str(out), "--bn-data", str(data),
         "--bn-images", "8", "--batch-size", "4"])
    average.main(args)
    model, info = load_model(out)
    assert info.classes == CLASSES and info.temperature is None
    assert [s["file"] for s in info.extra["averaged_from"]] == [str(tmp_path / "a.pth"), str(tmp_path / "b.pth")]
    assert info.extra["batchnorm"].startswith("recomputed from 8 training images")
    plain, _ = average.average_files([tmp_path / "a.pth", tmp_path / "b.pth"])
    state = model.state_dict()
    assert torch.allclose(state["fc.weight"], plain["fc.weight"], atol=1e-3)  # fp16 in the file
    assert not torch.allclose(state["bn.running_mean"], plain["bn.running_mean"], atol=1e-3)  # recomputed
    assert model(torch.randn(2, 3, 32, 32)).logits.shape == (2, 3)
    _, header = read_safetensors(out)
    assert "averaged_from" in header["fer"]


def test_cli_refuses_overwriting_an_input(tmp_path):
    saved(tmp_path / "a.safetensors", 1)
    path = str(tmp_path / "a.safetensors")
    args = average.get_args_parser().parse_args([path, "--out", path])
    with pytest.raises(UserError, match="one of the inputs"):
        average.main(args)
