"""tools.convert: published DAN weights become this project's checkpoints, computing the same logits.

The reference DAN is rebuilt here from its published module layout (features.0-7, cat_head{i}.sa /
.ca, fc, bn), so the key renaming in tools/convert.py is checked against names it did not produce.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

from common.errors import UserError, run_cli
from networks import build_model
from tools.convert import AFFECTNET_ORDER, RAFDB_ORDER, convert, get_args_parser, main
from utils.checkpoint import load_backbone, load_model

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


# ---- the reference DAN's module layout ---------------------------------------------------------

def _conv_bn(cin, cout, kernel, padding):
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=padding), nn.BatchNorm2d(cout))


class RefSpatial(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1x1 = _conv_bn(512, 256, 1, 0)
        self.conv_3x3 = _conv_bn(256, 512, 3, 1)
        self.conv_1x3 = _conv_bn(256, 512, (1, 3), (0, 1))
        self.conv_3x1 = _conv_bn(256, 512, (3, 1), (1, 0))

    def forward(self, x):
        y = self.conv1x1(x)
        y = torch.relu(self.conv_3x3(y) + self.conv_1x3(y) + self.conv_3x1(y))
        return x * y.sum(dim=1, keepdim=True)


class RefChannel(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = nn.Sequential(nn.Linear(512, 32), nn.BatchNorm1d(32), nn.ReLU(),
                                       nn.Linear(32, 512), nn.Sigmoid())

    def forward(self, x):
        pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)  # (B, 512)
        return pooled * self.attention(pooled)


class RefHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.sa = RefSpatial()
        self.ca = RefChannel()

    def forward(self, x):
        return self.ca(self.sa(x))


class RefDAN(nn.Module):
    """The published DAN's names and computation: its state dict is what the releases hold."""

    def __init__(self, num_class=7, num_head=4):
        super().__init__()
        self.features = nn.Sequential(*list(resnet18(weights=None).children())[:-2])
        self.num_head = num_head
        for i in range(num_head):
            self.add_module(f"cat_head{i}", RefHead())
        self.fc = nn.Linear(512, num_class)
        self.bn = nn.BatchNorm1d(num_class)

    def forward(self, x):
        x = self.features(x)
        heads = torch.stack([getattr(self, f"cat_head{i}")(x) for i in range(self.num_head)], dim=1)
        if self.num_head > 1:
            heads = F.log_softmax(heads, dim=1)
        return self.bn(self.fc(heads.sum(dim=1)))


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and random BatchNorm statistics, scaled so activations stay finite."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / fan_in ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.num_batches_tracked.fill_(int(torch.randint(1, 10_000, (), generator=g)))
    return model.eval()


def calibrate_(model: nn.Module, images: torch.Tensor, seed: int = 0) -> nn.Module:
    """Centre and scale the final BatchNorm's statistics on `images` (times random factors).

    Random weights give logits in the thousands, where fp32 rounding alone exceeds 1e-5; with
    logits of order one the 1e-5 tolerance of the proof is meaningful on any CPU.
    """
    g = torch.Generator().manual_seed(seed)
    seen = []
    hook = model.bn.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    with torch.inference_mode():
        model(images)
    hook.remove()
    pre = seen[0]  # (B, C) logits before the BatchNorm
    with torch.no_grad():
        model.bn.running_mean.copy_(pre.mean(0) + 0.1 * pre.std(0) * torch.randn(pre.shape[1], generator=g))
        model.bn.running_var.copy_(pre.var(0) * (0.5 + torch.rand(pre.shape[1], generator=g)) + 1e-3)
    return model


def dan_release(path: Path, state: dict) -> Path:
    """A file laid out like the yaoing/DAN releases."""
    torch.save({"iter": 21, "model_state_dict": state,
                "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 0.0001, "params": [0, 1]}]}}, path)
    return path


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))  # (B, 3, S, S)


@pytest.fixture(scope="module")
def reference(images):
    """A 2-head, 7-class reference DAN with random weights and BatchNorm statistics."""
    return calibrate_(randomize_(RefDAN(num_class=7, num_head=2), seed=1), images)


# ---- the proof: same weights, same logits ---------------------------------------------------------

def test_reference_layout_has_275_tensors_for_4_heads():
    ref = RefDAN(num_class=7, num_head=4).state_dict()
    own = build_model("dan", num_classes=7, num_heads=4).state_dict()
    assert len(ref) == 275 == len(own)
    # Registration order matches too, which the positional copy below relies on.
    assert [v.shape for v in ref.values()] == [v.shape for v in own.values()]


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_converted_logits_equal_reference_and_direct_load(tmp_path, reference, images, suffix):
    src = dan_release(tmp_path / "rafdb_epoch21_acc0.897_bacc0.8275.pth", reference.state_dict())
    dst = tmp_path / f"dan{suffix}"
    meta = convert(src, "dan-rafdb", dst)
    model, loaded_meta = load_model(dst)
    assert loaded_meta.classes == list(RAFDB_ORDER) == meta.classes
    assert loaded_meta.model_args == {"num_classes": 7, "num_heads": 2}
    assert not model.training

    # The project's DAN loaded the direct way: tensor by tensor in registration order, no names involved.
    direct = build_model("dan", num_classes=7, num_heads=2)
    direct.load_state_dict(dict(zip(direct.state_dict(), reference.state_dict().values())))
    direct.eval()

    with torch.inference_mode():
        expected = reference(images)
        got = model(images).logits
        got_direct = direct(images).logits
    assert got.shape == (2, 7) and torch.isfinite(got).all()
    assert 0.1 < expected.abs().max() < 100  # not vacuous, and within fp32's reach of 1e-5
    torch.testing.assert_close(got, got_direct, rtol=0, atol=1e-5)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_half_safetensors_holds_fp16_rounded_weights(tmp_path, reference):
    src = dan_release(tmp_path / "rafdb.pth", reference.state_dict())
    convert(src, "dan-rafdb", tmp_path / "dan16.safetensors", half=True)
    model, _ = load_model(tmp_path / "dan16.safetensors")
    own = dict(zip(model.state_dict(), reference.state_dict().values()))  # same order, see the 275 test
    for k, v in model.state_dict().items():
        rounded = own[k].half().float() if own[k].is_floating_point() and "running_var" not in k else own[k]
        assert torch.equal(v, rounded), k
    assert (tmp_path / "dan16.safetensors").stat().st_size < 0.6 * (tmp_path / "rafdb.pth").stat().st_size


# ---- one tiny file per format ---------------------------------------------------------------------

@pytest.mark.parametrize("fmt, classes", [
    ("dan-rafdb", RAFDB_ORDER),
    ("dan-affectnet7", AFFECTNET_ORDER[:7]),
    ("dan-affectnet8", AFFECTNET_ORDER),
])
def test_dan_release_formats(tmp_path, images, fmt, classes):
    ref = calibrate_(randomize_(RefDAN(num_class=len(classes), num_head=1), seed=3), images)
    src = dan_release(tmp_path / f"{fmt}.pth", ref.state_dict())
    convert(src, fmt, tmp_path / "out.safetensors")
    model, meta = load_model(tmp_path / "out.safetensors")
    assert meta.classes == list(classes)
    assert meta.img_size == 224 and meta.mean == [0.485, 0.456, 0.406] and meta.std == [0.229, 0.224, 0.225]
    assert meta.converted_from["format"] == fmt
    with torch.inference_mode():
        torch.testing.assert_close(model(images).logits, ref(images), rtol=0, atol=1e-5)


def test_emotion_recognition_bare_state_dict_with_dataparallel_prefix(tmp_path, images):
    ref = calibrate_(randomize_(RefDAN(num_class=6, num_head=4), seed=4), images)
    src = tmp_path / "DAN_best.pth"
    torch.save({f"module.{k}": v for k, v in ref.state_dict().items()}, src)
    convert(src, "emotion-recognition-dan", tmp_path / "er.pth")
    model, meta = load_model(tmp_path / "er.pth")
    assert meta.classes == ["angry", "disgust", "fear", "happy", "sad", "surprise"]
    assert meta.model_args == {"num_classes": 6, "num_heads": 4}
    with torch.inference_mode():
        torch.testing.assert_close(model(images).logits, ref(images), rtol=0, atol=1e-5)


def msceleb_file(path: Path, prefix: str = "") -> dict:
    """Like resnet18_msceleb.pth: torchvision ResNet-18 names under 'state_dict', with an identity classifier."""
    net = randomize_(resnet18(weights=None, num_classes=10), seed=5)
    state = {prefix + k: v for k, v in net.state_dict().items()}
    torch.save({"epoch": 30, "arch": "resnet18", "state_dict": state}, path)
    return net.state_dict()


def test_msceleb_backbone_becomes_dan_with_untrained_heads(tmp_path):
    trunk = msceleb_file(tmp_path / "resnet18_msceleb.pth")
    convert(tmp_path / "resnet18_msceleb.pth", "msceleb-resnet18", tmp_path / "init.safetensors")
    model, meta = load_model(tmp_path / "init.safetensors")
    assert meta.classes == list(RAFDB_ORDER)
    assert meta.model_args == {"num_classes": 7, "num_heads": 4}
    assert meta.converted_from["heads_trained"] is False
    for k, v in model.trunk.state_dict().items():
        assert torch.equal(v, trunk[k]), k
    # The heads are freshly initialised (BatchNorm at identity), not taken from anywhere.
    assert torch.equal(model.heads[0].spatial.conv3x3[1].running_var, torch.ones(512))


def test_msceleb_classes_option(tmp_path):
    msceleb_file(tmp_path / "r18.pth", prefix="module.")
    meta = convert(tmp_path / "r18.pth", "msceleb-resnet18", tmp_path / "init.pth",
                   classes=["Happiness", "sadness", "neutral"], num_heads=2)
    assert meta.classes == ["happy", "sad", "neutral"]
    assert meta.model_args == {"num_classes": 3, "num_heads": 2}
    model, _ = load_model(tmp_path / "init.pth")
    assert model.fc.out_features == 3


def test_train_pretrained_accepts_original_msceleb_file(tmp_path):
    """train.py --pretrained PATH keeps the path, and load_backbone reads the original file."""
    import train

    path = str(tmp_path / "resnet18_msceleb.pth")
    trunk = msceleb_file(Path(path))
    args = train.resolve_args(train.get_args_parser().parse_args(
        ["--pretrained", path, "--data", str(tmp_path), "--output", str(tmp_path / "run")]))
    assert args.pretrained == path
    model = build_model(args.model, num_classes=7, num_heads=1)
    load_backbone(model, args.pretrained)
    for k, v in model.trunk.state_dict().items():
        assert torch.equal(v, trunk[k]), k


# ---- refusals ------------------------------------------------------------------------------------

class Payload:
    """Unpickling this creates a marker file: the stand-in for code a malicious file would run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture
def payload_file(tmp_path):
    marker = tmp_path / "payload-ran"
    ref = RefDAN(num_class=7, num_head=1)
    path = tmp_path / "evil.pth"
    torch.save({"iter": 1, "model_state_dict": ref.state_dict(), "state_dict": resnet18().state_dict(),
                "extra": Payload(marker)}, path)
    return path, marker


@pytest.mark.parametrize("how", ["dan-rafdb", "emotion-recognition-dan", "msceleb-resnet18",
                                 "train --pretrained", "load_model"])
def test_pickle_payload_is_refused_without_running(tmp_path, payload_file, how):
    path, marker = payload_file
    with pytest.raises(UserError) as err:
        if how == "train --pretrained":
            load_backbone(build_model("dan", num_classes=7, num_heads=1), path)
        elif how == "load_model":
            load_model(path)
        else:
            convert(path, how, tmp_path / "out.safetensors")
    assert not marker.exists()
    assert "refused" in str(err.value) or "weights_only" in str(err.value)
    if how.startswith(("dan", "emotion")):
        assert "asks for io.open" in str(err.value)  # names what the file asks for, without running it
    assert not (tmp_path / "out.safetensors").exists()


def test_payload_is_real(payload_file):
    """Guards the test above: loading the same file without weights_only does run the payload."""
    path, marker = payload_file
    torch.load(path, weights_only=False)
    assert marker.exists()


# ---- every key accounted for ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_state():
    return RefDAN(num_class=7, num_head=2).state_dict()


def _convert_state(tmp_path, state, fmt="dan-rafdb"):
    return convert(dan_release(tmp_path / "src.pth", state), fmt, tmp_path / "out.pth")


def test_missing_keys_are_named(tmp_path, small_state):
    state = dict(small_state)
    del state["cat_head1.ca.attention.1.running_var"], state["fc.bias"]
    with pytest.raises(UserError, match=r"missing keys cat_head1\.ca\.attention\.1\.running_var, fc\.bias;"):
        _convert_state(tmp_path, state)
    assert not (tmp_path / "out.pth").exists()


def test_unexpected_keys_are_named(tmp_path, small_state):
    state = {**small_state, "cat_head0.sa.extra.weight": torch.zeros(3), "classifier.weight": torch.zeros(7, 512)}
    with pytest.raises(UserError, match=r"missing keys none; unexpected keys cat_head0\.sa\.extra\.weight, "
                                        r"classifier\.weight;"):
        _convert_state(tmp_path, state)


def test_missing_head_is_named(tmp_path):
    state = {k: v for k, v in RefDAN(num_class=7, num_head=3).state_dict().items() if not k.startswith("cat_head1.")}
    with pytest.raises(UserError, match=r"3 heads.*missing keys cat_head1\.ca\.attention\.0\.bias"):
        _convert_state(tmp_path, state)


def test_wrong_class_count_names_shapes_and_the_right_format(tmp_path):
    state = RefDAN(num_class=8, num_head=1).state_dict()
    with pytest.raises(UserError) as err:
        _convert_state(tmp_path, state, "dan-rafdb")
    message = str(err.value)
    assert "fc.weight (8, 512) where (7, 512) is expected" in message
    assert "bn.running_mean (8,) where (7,) is expected" in message
    assert "did you mean --format dan-affectnet8?" in message


def test_backbone_given_as_dan_points_to_msceleb_format(tmp_path):
    msceleb_file(tmp_path / "r18.pth")
    with pytest.raises(UserError, match="use --format msceleb-resnet18"):
        convert(tmp_path / "r18.pth", "dan-rafdb", tmp_path / "out.pth")


def test_msceleb_wrong_shape_is_named(tmp_path):
    state = resnet18().state_dict()
    state["layer4.1.conv2.weight"] = torch.zeros(512, 512, 1, 1)
    torch.save({"state_dict": state}, tmp_path / "r18.pth")
    with pytest.raises(UserError, match=r"wrong shapes layer4\.1\.conv2\.weight \(512, 512, 1, 1\) where "
                                        r"\(512, 512, 3, 3\) is expected"):
        convert(tmp_path / "r18.pth", "msceleb-resnet18", tmp_path / "out.pth")


def test_old_files_without_batch_counters_convert(tmp_path, small_state, images):
    state = {k: v for k, v in small_state.items() if not k.endswith("num_batches_tracked")}
    _convert_state(tmp_path, state)
    model, _ = load_model(tmp_path / "out.pth")
    assert int(model.bn.num_batches_tracked) == 0


def test_project_checkpoint_is_not_converted_again(tmp_path, reference):
    convert(dan_release(tmp_path / "src.pth", reference.state_dict()), "dan-rafdb", tmp_path / "dan.pth")
    with pytest.raises(UserError, match="is a checkpoint of this project: use it directly"):
        convert(tmp_path / "dan.pth", "dan-rafdb", tmp_path / "again.pth")


@pytest.mark.parametrize("argv, message", [
    (["--src", "missing.pth", "--format", "dan-rafdb", "--dst", "out.pth"], "no such file"),
    (["--src", "x.pth", "--format", "dan-rafdb", "--dst", "out.onnx"], "must end in .safetensors"),
    (["--src", "x.pth", "--format", "dan-rafdb", "--dst", "out.pth", "--classes", "happy", "sad"],
     "apply to msceleb-resnet18 only"),
    (["--src", "x.pth", "--format", "dan-rafdb", "--dst", "out.pth", "--half"], ".safetensors outputs only"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.pth").write_bytes(b"")
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, get_args_parser().parse_args(argv))
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_cli_end_to_end(tmp_path, reference):
    src = dan_release(tmp_path / "rafdb.pth", reference.state_dict())
    run = subprocess.run([sys.executable, "-m", "tools.convert", "--src", str(src), "--format", "dan-rafdb",
                          "--dst", str(tmp_path / "dan.safetensors")],
                         cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    assert "surprise, fear, disgust, happy, sad, angry, neutral" in run.stderr
    assert "predict.py --checkpoint" in run.stderr
    _, meta = load_model(tmp_path / "dan.safetensors")
    assert meta.classes == list(RAFDB_ORDER)
