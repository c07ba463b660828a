"""Read face-api's face-recognition weights (TensorFlow.js format) into `networks.face_resnet`.

    npm pack @vladmandic/face-api@1.7.15
    python3 -m tools.convert --format faceapi-recognition --src vladmandic-face-api-1.7.15.tgz \\
        --dst Data/face_resnet_faceapi.safetensors

`--src` is the npm tarball, the package's `model/` folder, or its
`face_recognition_model-weights_manifest.json`. The manifest lists 117 tensors stored one after
another in `face_recognition_model.bin`, each as uint8 with a per-tensor scale and minimum
(value = min + scale * q, as TensorFlow.js decodes them). Convolution filters are HWIO and the
final matrix is (256, 128); they are transposed to PyTorch's layouts. Nothing is executed from
the files: they are JSON and raw numbers.
"""
import hashlib
import json
import tarfile
import warnings
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
import torch

from common.errors import UserError
from networks.face_resnet import EMBEDDING_SIZE, FACE_RESNET_MEAN, FACE_RESNET_STD, INPUT_SIZE, FaceResNet
from utils.checkpoint import check_keys, save_safetensors

MANIFEST = "face_recognition_model-weights_manifest.json"
PACKAGE = "@vladmandic/face-api"
LICENCE = ("MIT (the npm package @vladmandic/face-api, Copyright (c) Vladimir Mandic); the weights are the "
           "TensorFlow.js port of dlib's dlib_face_recognition_resnet_model_v1 by Davis E. King, released "
           "into the public domain (dlib-models' README)")
QUANTIZED = {"uint8": np.uint8, "uint16": np.uint16}
PLAIN = {"float32": np.float32, "int32": np.int32}
# face-api name suffix -> (this project's suffix, how to reorder the tensor).
PARTS = {
    "/conv/filters": (".conv.weight", (3, 2, 0, 1)),  # HWIO -> OIHW
    "/conv/bias": (".conv.bias", None),
    "/scale/weights": (".scale.weight", None),
    "/scale/biases": (".scale.bias", None),
}


def read_source(src, manifest: str = MANIFEST) -> Tuple[Dict[str, Any], bytes, str]:
    """(manifest entry, weights bytes, description) from a tarball, a model folder or a manifest.

    `manifest` names the network's manifest in the package's model/ folder.
    """
    src = Path(src)
    if not src.exists():
        raise UserError(f"--src {src}: no such file or folder")
    if src.is_dir():
        src = src / manifest if (src / manifest).is_file() else src / "model" / manifest
    if src.name.endswith((".tgz", ".tar.gz")):
        return _read_tarball(src, manifest)
    if src.name != manifest or not src.is_file():
        raise UserError(f"--src {src}: expected the npm tarball of {PACKAGE}, its model/ folder or {manifest}")
    entry = _manifest_entry(src.read_text(), src)
    weights = src.with_name(entry["paths"][0])
    if not weights.is_file():
        raise UserError(f"{src} names {entry['paths'][0]}, which is not beside it")
    return entry, weights.read_bytes(), str(src)


def _read_tarball(path: Path, manifest: str) -> Tuple[Dict[str, Any], bytes, str]:
    try:
        with tarfile.open(path) as tar:
            names = {Path(m.name).name: m for m in tar.getmembers() if m.isfile() and "/model/" in m.name}
            if manifest not in names:
                raise UserError(f"{path} holds no model/{manifest}: is it the npm tarball of {PACKAGE}?")
            entry = _manifest_entry(tar.extractfile(names[manifest]).read().decode(), path)
            member = names.get(entry["paths"][0])
            if member is None:
                raise UserError(f"{path} lacks model/{entry['paths'][0]}, which its manifest names")
            return entry, tar.extractfile(member).read(), f"{path}:{member.name}"
    except (tarfile.TarError, OSError, EOFError) as err:
        raise UserError(f"{path} is not a readable tarball ({err})") from None


def _manifest_entry(text: str, source) -> Dict[str, Any]:
    try:
        manifest = json.loads(text)
        entry = manifest[0]
        if len(manifest) != 1 or len(entry["paths"]) != 1 or not isinstance(entry["weights"], list):
            raise ValueError("expected one weights group with one file")
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise UserError(f"{source}: not a TensorFlow.js weights manifest ({err})") from None
    return entry


def decode_weights(entry: Dict[str, Any], data: bytes) -> Dict[str, np.ndarray]:
    """The manifest's tensors as float32 arrays, in its own names and shapes."""
    out, offset = {}, 0
    for spec in entry["weights"]:
        name, shape = spec["name"], tuple(spec["shape"])
        count = int(np.prod(shape, dtype=np.int64))
        quant = spec.get("quantization")
        dtype = QUANTIZED.get(quant["dtype"]) if quant else PLAIN.get(spec["dtype"])
        if dtype is None:
            raise UserError(f"tensor {name}: unsupported storage {quant['dtype'] if quant else spec['dtype']}")
        size = count * np.dtype(dtype).itemsize
        if offset + size > len(data):
            raise UserError(f"the weights file ends inside tensor {name} ({len(data)} bytes)")
        raw = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
        offset += size
        values = raw.astype(np.float64) * quant["scale"] + quant["min"] if quant else raw
        out[name] = values.astype(np.float32).reshape(shape)
    if offset != len(data):
        raise UserError(f"the weights file has {len(data) - offset} bytes after its last tensor")
    return out


def to_state_dict(tensors: Dict[str, np.ndarray]) -> Dict[str, torch.Tensor]:
    """face-api names and layouts -> a `FaceResNet` state dict without its `trunk.` prefix.

    Raises:
        UserError: naming tensors the port lacks, tensors the file lacks, or wrong shapes.
    """
    state = {}
    for name, value in tensors.items():
        if name == "fc":
            state["fc.weight"] = torch.from_numpy(value.T.copy())  # (256, 128) -> Linear's (128, 256)
            continue
        part = next((p for p in PARTS if name.endswith(p)), None)
        if part is None:
            raise UserError(f"unexpected tensor {name} in the face-api file")
        key, order = PARTS[part]
        array = value.transpose(order) if order else value
        state[name[: -len(part)].replace("/", ".") + key] = torch.from_numpy(np.ascontiguousarray(array))
    own = {k.removeprefix("trunk."): v for k, v in FaceResNet().state_dict().items()}
    check_keys(own, state, "the face-api file", "networks.face_resnet")
    return state


def load_face_resnet(state: Dict[str, torch.Tensor]) -> FaceResNet:
    """A FaceResNet (eval mode) from a converted state dict (trunk keys and `fc.weight`)."""
    model = FaceResNet()
    model.load_state_dict({(k if k.startswith("fc.") else "trunk." + k): v for k, v in state.items()})
    return model.eval()


def convert_faceapi(src, dst) -> Dict[str, Any]:
    """Write the face-recognition network of face-api's package as a float32 safetensors trunk.

    Returns:
        The metadata written: what the file is, its input and normalisation, where it came from.
    """
    dst = Path(dst)
    if dst.suffix != ".safetensors":
        raise UserError(f"--dst {dst}: a trunk is written as .safetensors")
    entry, data, where = read_source(src)
    state = to_state_dict(decode_weights(entry, data))
    meta = {"kind": "trunk", "trunk": "face_resnet", "img_size": INPUT_SIZE, "mean": list(FACE_RESNET_MEAN),
            "std": list(FACE_RESNET_STD), "grayscale": False, "embedding_size": EMBEDDING_SIZE,
            "converted_from": {"file": where, "format": "faceapi-recognition", "package": PACKAGE,
                               "sha256": hashlib.sha256(data).hexdigest(), "licence": LICENCE}}
    # float32: the uint8-decoded values are not fp16 numbers, and the port is checked to 1e-4.
    save_safetensors(state, meta, dst, half=False)
    return meta


def embed(model: FaceResNet, faces: np.ndarray) -> np.ndarray:
    """(N, 150, 150, 3) uint8 RGB faces -> (N, 128) embeddings, normalised as face-api does."""
    x = torch.from_numpy(np.ascontiguousarray(faces)).permute(0, 3, 1, 2).float() / 255
    x = x - torch.tensor(FACE_RESNET_MEAN).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(x).numpy()


TINYFACE_MANIFEST = "tiny_face_detector_model-weights_manifest.json"
TINYFACE_LICENCE = ("MIT (the npm package @vladmandic/face-api, Copyright (c) Vladimir Mandic; the Tiny Face "
                    "Detector and its weights come from face-api.js, MIT, Copyright (c) 2018 Vincent Mühler)")
# face-api name suffix -> (this project's suffix, how to reorder the tensor).
TINYFACE_PARTS = {
    "/filters": (".weight", (3, 2, 0, 1)),  # HWIO -> OIHW
    "/depthwise_filter": (".depthwise.weight", (2, 3, 0, 1)),  # (3, 3, C, 1) -> (C, 1, 3, 3)
    "/pointwise_filter": (".pointwise.weight", (3, 2, 0, 1)),
    "/bias": (".bias", None),
}


def tinyface_state(tensors: Dict[str, np.ndarray]) -> Dict[str, torch.Tensor]:
    """face-api's Tiny Face Detector tensors -> a `TinyFaceNet` state dict.

    Raises:
        UserError: naming tensors the port lacks, tensors the file lacks, or wrong shapes.
    """
    from networks.tinyface_net import TinyFaceNet

    state = {}
    for name, value in tensors.items():
        layer, _, part = name.partition("/")
        part = "/" + part
        if part not in TINYFACE_PARTS or not layer.startswith("conv"):
            raise UserError(f"unexpected tensor {name} in the Tiny Face Detector file")
        key, order = TINYFACE_PARTS[part]
        if layer == "conv8":
            prefix = "conv8"
        else:
            prefix = f"layers.{layer}" + (".pointwise" if part == "/bias" and layer != "conv0" else "")
        array = value.transpose(order) if order else value
        state[prefix + key] = torch.from_numpy(np.ascontiguousarray(array))
    check_keys(TinyFaceNet().state_dict(), state, "the face-api file", "networks.tinyface_net")
    return state


def load_tinyface_net(state: Dict[str, torch.Tensor]):
    """A `networks.tinyface_net.TinyFaceNet` (eval mode) from a converted state dict."""
    from networks.tinyface_net import TinyFaceNet

    model = TinyFaceNet()
    model.load_state_dict(state)
    return model.eval()


def convert_tinyface(src, dst) -> Dict[str, Any]:
    """Write face-api's Tiny Face Detector as an ONNX graph (Data/tiny_face_detector.onnx).

    The graph takes (1, S, S, 3) uint8 RGB pixels with S free (a multiple of 32), normalises them
    as face-api does, and gives the raw (1, 25, S/32, S/32) encodings; its metadata carries the
    anchors that inference.tinyface decodes with, and where the weights came from.

    Returns:
        The metadata written.
    """
    from networks.tinyface_net import ANCHORS, MEAN_RGB, PixelInput
    from inference.runtime import save_with_meta

    dst = Path(dst)
    if dst.suffix != ".onnx":
        raise UserError(f"--dst {dst}: the detector is written as .onnx (prediction runs it in ONNX Runtime)")
    entry, data, where = read_source(src, TINYFACE_MANIFEST)
    model = load_tinyface_net(tinyface_state(decode_weights(entry, data)))
    side = torch.export.Dim("side", min=2, max=128)
    with warnings.catch_warnings():  # the exporter's notes on naming the free axes
        warnings.simplefilter("ignore", UserWarning)
        program = torch.onnx.export(PixelInput(model).eval(), (torch.zeros(1, 224, 224, 3, dtype=torch.uint8),),
                                    None, input_names=["pixels"], output_names=["boxes"],
                                    dynamic_shapes=({1: 32 * side, 2: 32 * side},), dynamo=True, verbose=False)
    meta = {"kind": "detector", "detector": "tinyface", "anchors": [list(a) for a in ANCHORS],
            "mean_rgb": list(MEAN_RGB),
            "converted_from": {"file": where, "format": "faceapi-tinyface", "package": PACKAGE,
                               "sha256": hashlib.sha256(data).hexdigest(), "licence": TINYFACE_LICENCE}}
    save_with_meta(program.model_proto, meta, dst)
    return meta
