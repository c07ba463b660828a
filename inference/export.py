"""Export a checkpoint to ONNX, and keep exported copies in a cache so prediction needs no torch.

The graph takes `input`, a float32 (B, 3, S, S) batch normalised with the checkpoint's mean and
std, B free, and returns `logits` (B, C) and, for DAN, `attention` (B, N, h, w): each head's
spatial-attention map on the trunk grid (7x7 at 224 px). The checkpoint's metadata (model,
model_args, classes, img_size, mean, std) is stored as JSON under the ONNX metadata key META_KEY ("fer"),
so an exported file is a complete model on its own.

Its command line: `python3 -m tools.export_onnx` (tools/export_onnx.py). Only exporting imports
torch (inside the functions that export); finding a cached export does not, so that prediction
from an export runs on ONNX Runtime alone (inference/runtime.py).
"""
import logging
import os
from pathlib import Path
from typing import Callable, Optional

from common.errors import UserError
from common.files import file_digest
from common.meta import ModelMeta

from .faces import normalize, resize_faces
from .runtime import save_with_meta

# Part of every cache key: bump it when the exported graph changes (new outputs, a model
# transform such as BatchNorm folding), so older cached files are not reused.
EXPORT_VERSION = 2
OPSET = 18


def prepare_for_export(model):
    """Transforms applied to the eval-mode model before tracing; returns the model to export.

    `networks.fuse`: BatchNorms (and the face trunk's scale layers) folded into the layers before
    them and, for DAN, each head's 3x3/1x3/3x1 convolutions merged into one 3x3 and the heads run
    as grouped convolutions; the outputs are the same to float rounding (speed: docs/speed.md).
    """
    from networks import fuse  # torch: only when exporting

    return fuse(model)


def export_onnx(checkpoint, out, transform: Callable = prepare_for_export, opset: int = OPSET) -> ModelMeta:
    """Rebuild the checkpoint's model with torch and write it as ONNX to `out` (atomically).

    Args:
        checkpoint: a .safetensors model or .pth training checkpoint of this project.
        out: the .onnx file to write.
        transform: model -> model, applied before tracing (see `prepare_for_export`).
        opset: ONNX opset version.

    Returns:
        the metadata written: the checkpoint's, with the source's digest and the export version.
    """
    from utils.checkpoint import load_model  # torch: only when exporting

    model, meta = load_model(checkpoint, "cpu")
    model = transform(model).eval()
    proto = model_proto(model, meta.img_size, opset)
    # the file's own extra keys are not carried over
    stored = meta.replace(source_sha256=file_digest(checkpoint), export_version=EXPORT_VERSION, extra={})
    save_with_meta(proto, stored, out)
    return stored


def model_proto(model, size: int, opset: int = OPSET):
    """Trace an eval-mode model to an ONNX ModelProto: input (B, 3, S, S) with B free; outputs
    logits and, for DAN, attention."""
    import torch  # torch: only when exporting

    graph = _graph_outputs_class()(model).eval()  # export() restores the wrapper's mode: keep it eval
    example = torch.zeros(2, 3, size, size)
    with torch.no_grad():
        has_attention = model(example[:1]).attention is not None
    names = ["logits", "attention"] if has_attention else ["logits"]
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(graph, (example,), None, input_names=["input"], output_names=names,
                                dynamic_shapes=({0: batch},), opset_version=opset, dynamo=True,
                                verbose=False)
    return program.model_proto


def quantize_int8(src: Path, dst: Path, calibration) -> Path:
    """Static int8 quantisation in ONNX Runtime (QDQ, per-channel int8 weights, uint8 activations),
    with activation ranges calibrated (min-max) on `calibration`, float32 (B, 3, S, S) batches."""
    # The quantiser pulls in onnx: only when quantising.
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"input": batch}

    prepared = dst.with_suffix(".prepared.onnx")
    try:
        quant_pre_process(str(src), str(prepared))
        quantize_static(str(prepared), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        prepared.unlink(missing_ok=True)
    return dst


def calibration_batches(folder, meta: ModelMeta, images: int = 512, batch: int = 64):
    """Normalised float32 (B, 3, S, S) batches of up to `images` training images, evenly spread,
    prepared as prediction prepares faces (grey when the model takes grey, normalised)."""
    from data.datasets import FaceFolder  # torch: only when quantising

    root = Path(folder)
    if not (root / "train").is_dir():
        raise UserError(f"--int8 {folder}: expected a dataset folder with train/<class>/ images")
    dataset = FaceFolder([root], "train", meta.img_size, skip_unknown=True, classes=meta.classes)
    step = max(1, len(dataset) // images)
    faces = [dataset.load(i).permute(1, 2, 0).numpy() for i in range(0, len(dataset), step)[:images]]
    x = normalize(resize_faces(faces, meta.img_size, meta.grey_input), meta.mean, meta.std)
    return [x[k:k + batch] for k in range(0, len(x), batch)]


def _graph_outputs_class():
    """Defined on call, so that importing this module does not import torch."""
    from torch import nn  # torch: only when exporting

    class GraphOutputs(nn.Module):
        """Model -> the tuple the ONNX graph returns: (logits,) or (logits, attention)."""

        def __init__(self, model: nn.Module):
            super().__init__()
            self.model = model

        def forward(self, x):
            out = self.model(x)
            return (out.logits,) if out.attention is None else (out.logits, out.attention)

    return GraphOutputs


def default_cache_dir() -> Path:
    """$FER_CACHE_DIR, else $XDG_CACHE_HOME/fer, else ~/.cache/fer."""
    if os.environ.get("FER_CACHE_DIR"):
        return Path(os.environ["FER_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fer"


def cached_onnx(checkpoint, cache_dir: Optional[Path] = None, transform: Callable = prepare_for_export) -> Path:
    """The ONNX export of `checkpoint`, made (with torch) on first use and cached by content hash.

    The cache file is named after the checkpoint's SHA-256 and EXPORT_VERSION, so a retrained
    checkpoint at the same path gets a fresh export and later runs need neither torch nor export.
    A transform other than the default gets its own cache entry, named after the function.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise UserError(f"checkpoint {checkpoint} not found")
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    tag = "" if transform is prepare_for_export else "-" + getattr(transform, "__name__", "custom")
    path = cache_dir / f"{checkpoint.stem}-{file_digest(checkpoint)[:16]}-v{EXPORT_VERSION}{tag}.onnx"
    if not path.is_file():
        logging.getLogger("predict").info("exporting %s to ONNX once (cached at %s)", checkpoint, path)
        try:
            export_onnx(checkpoint, path, transform)
        except OSError as err:
            raise UserError(f"cannot write the ONNX cache {path} ({err}); set FER_CACHE_DIR or --cache-dir "
                            "to a writable folder") from None
    return path


def export_int8(fp32_path, data, meta: ModelMeta) -> Path:
    """Quantise an exported fp32 graph to `<name>-int8.onnx`, keeping its metadata."""
    import onnx  # onnx: only when exporting (prediction needs ONNX Runtime alone)

    fp32_path = Path(fp32_path)
    dst = fp32_path.with_name(fp32_path.stem + "-int8.onnx")
    quantize_int8(fp32_path, dst, calibration_batches(data, meta))
    save_with_meta(onnx.load(str(dst)), meta.replace(quantized="int8"), dst)
    return dst
