"""networks.face_resnet and tools.faceapi: the port of dlib's face-recognition ResNet, its converter,
and DAN on it.

The exactness test compares the port with face-api's own embeddings (computed in Node by
benchmarks/faceapi_reference.py and stored in tests/fixtures/faceapi/embeddings.json). It needs
the npm tarball of @vladmandic/face-api 1.7.15, which .ci/run fetches into .cache/ (`npm pack`);
without it, that test skips and says how to get it. Everything else builds its own weights.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.errors import UserError
from data.images import decode_image
from networks import build_criterion, build_model, fuse
from networks.dan import group_heads
from networks.face_resnet import MIN_INPUT_SIZE, FaceResNet, FaceResNetTrunk, Residual, fold_scales
from tools.convert import get_args_parser, main
from tools.faceapi import (MANIFEST, convert_faceapi, decode_weights, embed, load_face_resnet, read_source,
                           to_state_dict)
from utils.checkpoint import load_backbone

from helpers import SHARED_DATA, tfjs_weights

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "faceapi"
TARBALL = Path(os.environ.get("FACEAPI_TGZ", ROOT / ".cache" / "vladmandic-face-api-1.7.15.tgz"))


def faceapi_layout(seed: int = 0):
    """A face-api style (manifest, bin bytes, float tensors) of a random FaceResNet, uint8-quantised
    the way TensorFlow.js stores it: q = round((v - min) / scale), value = min + scale * q."""
    torch.manual_seed(seed)
    net = FaceResNet()
    for p in net.parameters():
        with torch.no_grad():
            p.normal_(0, 0.1)
    arrays = {}
    for key, tensor in net.state_dict().items():
        key = key.removeprefix("trunk.")
        if key == "fc.weight":
            name, array = "fc", tensor.numpy().T  # (256, 128)
        else:
            stem, part = key.rsplit(".", 2)[0], ".".join(key.rsplit(".", 2)[1:])
            suffix = {"conv.weight": "conv/filters", "conv.bias": "conv/bias", "scale.weight": "scale/weights",
                      "scale.bias": "scale/biases"}[part]
            name = stem.replace(".", "/") + "/" + suffix
            array = tensor.numpy().transpose(2, 3, 1, 0) if part == "conv.weight" else tensor.numpy()
        arrays[name] = array
    return tfjs_weights(arrays, "face_recognition_model.bin")


def write_model_dir(folder: Path, entry, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).write_text(json.dumps([entry]))
    (folder / "face_recognition_model.bin").write_bytes(data)
    return folder


def test_decode_and_layouts_match_tensorflow_js():
    entry, data, values = faceapi_layout()
    decoded = decode_weights(entry, data)
    assert len(decoded) == 117  # 29 convolutions with bias and scale (4 tensors each), and fc
    state = to_state_dict(decoded)
    filters = values["conv64_down/conv1/conv/filters"]  # HWIO (3, 3, 32, 64)
    w = state["conv64_down.conv1.conv.weight"]  # OIHW (64, 32, 3, 3)
    assert w.shape == (64, 32, 3, 3)
    assert w[5, 7, 2, 0].item() == pytest.approx(float(filters[2, 0, 7, 5]), abs=0)
    assert state["fc.weight"].shape == (128, 256)
    assert state["fc.weight"][3, 200].item() == pytest.approx(float(values["fc"][200, 3]), abs=0)
    assert torch.equal(state["conv32_1.conv2.scale.bias"], torch.from_numpy(values["conv32_1/conv2/scale/biases"]))


def test_converter_reads_a_model_folder_and_writes_a_float32_trunk(tmp_path):
    entry, data, values = faceapi_layout()
    folder = write_model_dir(tmp_path / "model", entry, data)
    dst = tmp_path / "trunk.safetensors"
    main(get_args_parser().parse_args(["--format", "faceapi-recognition", "--src", str(folder), "--dst", str(dst)]))
    from safetensors import safe_open
    with safe_open(str(dst), framework="pt") as f:
        meta = json.loads(f.metadata()["fer"])
        weight = f.get_tensor("conv32_down.conv.weight")
    assert weight.dtype == torch.float32
    assert meta["kind"] == "trunk" and meta["img_size"] == 150 and meta["std"] == [1.0, 1.0, 1.0]
    assert "public domain" in meta["converted_from"]["licence"] and "MIT" in meta["converted_from"]["licence"]
    assert torch.equal(weight, torch.from_numpy(values["conv32_down/conv/filters"].transpose(3, 2, 0, 1).copy()))
    # DAN on this trunk takes the file; the embedding layer is not part of the trunk
    model = build_model("dan", num_classes=7, trunk="face_resnet")
    load_backbone(model, dst)
    assert model.num_features == 256 and model.heads[0].channel.gate[0].in_features == 256


@pytest.mark.parametrize("damage, message", [
    ("truncate", "ends inside tensor"),
    ("extra", "bytes after its last tensor"),
    ("manifest", "not a TensorFlow.js weights manifest"),
    ("rename", "unexpected tensor"),
])
def test_damaged_files_are_refused_in_one_line(tmp_path, damage, message):
    entry, data, _ = faceapi_layout()
    if damage == "truncate":
        data = data[:-10]
    elif damage == "extra":
        data = data + b"\0" * 4
    elif damage == "rename":
        entry["weights"][3]["name"] = "conv32_down/bn/gamma"
    folder = write_model_dir(tmp_path / "model", entry, data)
    if damage == "manifest":
        (folder / MANIFEST).write_text('{"weights": 1}')
    with pytest.raises(UserError, match=message) as err:
        convert_faceapi(folder, tmp_path / "out.safetensors")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out.safetensors").exists()


def test_wrong_source_and_cli_exit(tmp_path):
    (tmp_path / "photo.jpg").write_bytes(b"not a model")
    with pytest.raises(UserError, match="expected the npm tarball"):
        read_source(tmp_path / "photo.jpg")
    out = subprocess.run([sys.executable, "-m", "tools.convert", "--format", "faceapi-recognition", "--src",
                          str(tmp_path / "missing"), "--dst", str(tmp_path / "x.safetensors")],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == [f"error: --src {tmp_path / 'missing'}: no such file or folder"]


def test_downsampling_blocks_pad_like_face_api():
    """A stride-2 unpadded 3x3 conv leaves floor((n-1)/2) rows, the 2x2 pool floor(n/2): on an even
    side the branch is zero-padded at the bottom and right; new channels of the shortcut are zero."""
    torch.manual_seed(0)
    block = Residual(2, 4, down=True).eval()
    x = torch.rand(1, 2, 8, 8)
    with torch.no_grad():
        branch = block.conv2(block.conv1(x))  # (1, 4, 3, 3)
        assert branch.shape[-2:] == (3, 3)
        pooled = torch.nn.functional.avg_pool2d(x, 2)  # (1, 2, 4, 4)
        expected = torch.zeros(1, 4, 4, 4)
        expected[:, :, :3, :3] += branch
        expected[:, :2] += pooled
        torch.testing.assert_close(block(x), torch.relu(expected))


def test_shapes_minimum_size_and_random_init_identity_blocks():
    trunk = FaceResNetTrunk().eval()
    with torch.no_grad():
        assert trunk(torch.rand(2, 3, 150, 150)).shape == (2, 256, 2, 2)
        assert trunk(torch.rand(1, 3, MIN_INPUT_SIZE, MIN_INPUT_SIZE)).shape == (1, 256, 1, 1)
        with pytest.raises(ValueError, match="at least 103x103"):
            trunk(torch.rand(1, 3, MIN_INPUT_SIZE - 1, MIN_INPUT_SIZE - 1))
        # random initialisation: each residual branch starts at zero, so a block passes its input on
        x = torch.rand(1, 32, 9, 9)
        torch.testing.assert_close(trunk.conv32_1(x), x)


@pytest.mark.parametrize("drop", [True, False])
def test_fold_scales_keeps_outputs(drop):
    torch.manual_seed(0)
    net = FaceResNet().double().eval()
    for p in net.parameters():
        with torch.no_grad():
            p.normal_(0, 0.2)
    x = torch.rand(2, 3, 120, 120, dtype=torch.float64)
    with torch.no_grad():
        before = net(x)
        fold_scales(net, drop=drop)
        torch.testing.assert_close(net(x), before, rtol=1e-10, atol=1e-12)
    scales = [m.scale for m in net.modules() if hasattr(m, "scale")]
    assert all(isinstance(s, torch.nn.Identity) for s in scales) if drop else \
        all(torch.equal(s.weight, torch.ones_like(s.weight)) for s in scales)


def test_dan_on_the_face_trunk_fuses_groups_and_trains():
    torch.manual_seed(0)
    model = build_model("dan", num_classes=6, num_heads=2, trunk="face_resnet").double()
    x = torch.rand(3, 3, 150, 150, dtype=torch.float64)
    model.train()
    out = model(x)
    assert out.heads.shape == (3, 2, 256) and out.attention.shape == (3, 2, 2, 2)
    losses = build_criterion("dan", model)(out, torch.tensor([0, 3, 5]))
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters())
    grouped = group_heads(model)
    torch.testing.assert_close(grouped(x).logits, model(x).logits)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(fuse(model)(x).logits, model(x).logits, rtol=1e-8, atol=1e-8)
        plain = build_model("face_resnet", num_classes=6).double().eval()
        torch.testing.assert_close(fuse(plain)(x).logits, plain(x).logits, rtol=1e-8, atol=1e-8)


def test_train_refuses_a_trunk_for_other_models_and_too_small_inputs(tiny_data):
    from train import get_args_parser as train_parser
    from train import resolve_args
    with pytest.raises(UserError, match="--trunk applies to --model dan"):
        resolve_args(train_parser().parse_args(["--model", "resnet18", "--trunk", "face_resnet",
                                                "--data", str(tiny_data)]))
    with pytest.raises(UserError, match="too small for the face_resnet trunk"):
        resolve_args(train_parser().parse_args(["--trunk", "face_resnet", "--img-size", "96",
                                                "--data", str(tiny_data)]))
    args = resolve_args(train_parser().parse_args(["--trunk", "face_resnet", "--pretrained", "none",
                                                   "--data", str(tiny_data)]))
    assert args.img_size == 150


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    if not TARBALL.is_file():
        pytest.skip(f"{TARBALL} is not there: npm pack @vladmandic/face-api@1.7.15 --pack-destination .cache")
    dst = tmp_path_factory.mktemp("faceapi") / "face_resnet.safetensors"
    convert_faceapi(TARBALL, dst)
    from safetensors.torch import load_file
    return load_face_resnet(load_file(str(dst)))


def test_port_reproduces_face_api_embeddings(converted):
    fixture = json.loads((FIXTURES / "embeddings.json").read_text())
    faces = [f for f in fixture["faces"] if "png" in f]
    assert len(faces) == 5
    ours = embed(converted, np.stack([np.asarray(decode_image(FIXTURES / f["png"])) for f in faces]))
    reference = np.array([f["embedding"] for f in faces])
    assert np.abs(ours - reference).max() < 1e-4
    # and it is a face-recognition network: the medium crop lies within dlib's same-person radius 0.6
    # of the tighter and looser crops, its mirror image and its grey copy
    names = [f["name"] for f in faces]
    medium = ours[names.index("astronaut_medium")]
    assert np.linalg.norm(ours - medium, axis=1).max() < 0.6


def test_port_on_shared_faces(converted):
    fixture = json.loads((FIXTURES / "embeddings.json").read_text())
    shared = [f for f in fixture["faces"] if "shared" in f]
    if not shared or not (SHARED_DATA / shared[0]["shared"]).is_file():
        pytest.skip("the shared data is not available")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from faceapi_reference import shared_face
    ours = embed(converted, np.stack([shared_face(f["shared"]) for f in shared]))
    assert np.abs(ours - np.array([f["embedding"] for f in shared])).max() < 1e-4
    # four different people: pairwise farther apart than one person's crops
    distances = np.linalg.norm(ours[:, None] - ours[None], axis=2)
    assert distances[np.triu_indices(len(shared), 1)].min() > 0.4
