"""Export a checkpoint to ONNX, and keep exported copies in a cache so prediction needs no torch.

The graph takes `input`, a float32 (B, 3, S, S) batch normalised with the checkpoint's mean and
std, B free, and returns `logits` (B, C) and, for DAN, `attention` (B, N, h, w): each head's
spatial-attention map on the trunk grid (7x7 at 224 px). The checkpoint's metadata (model,
model_args, classes, img_size, mean, std) is stored as JSON under the ONNX metadata key META_KEY ("fer"),
so an exported file is a complete model on its own.

    python3 -m utils.export_onnx --checkpoint runs/dan/best.safetensors --out Data/dan.onnx

It also holds what every ONNX Runtime session of the project is opened with (`session_options`).
Only exporting imports torch (inside the functions that export); reading metadata and finding a
cached export do not, so that prediction from an export runs without torch.
"""
import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
import onnxruntime as ort

from utils.errors import UserError, run_cli
from utils.files import META_KEY, file_digest, save_with_meta
from utils.meta import check_meta_values, parse_meta

from .faces import normalize, resize_faces, wants_grayscale

# Part of every cache key: bump it when the exported graph changes (new outputs, a model
# transform such as BatchNorm folding), so older cached files are not reused.
EXPORT_VERSION = 2
OPSET = 18


def session_options(threads: int, spinning: bool = True) -> ort.SessionOptions:
    """Options of every ONNX Runtime session here: `threads` intra-op threads, one inter-op thread,
    warnings off. spinning=False stops idle worker threads from spinning after each run, which
    would take the CPU from a face detector that runs next (OpenCV's threads or MTCNN's session)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def softmax(logits: np.ndarray) -> np.ndarray:
    """(B, C) -> (B, C) probabilities, computed in float64 so each row sums to 1."""
    z = logits.astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def prepare_for_export(model):
    """Transforms applied to the eval-mode model before tracing; returns the model to export.

    `networks.fuse`: BatchNorms (and the face trunk's scale layers) folded into the layers before
    them and, for DAN, each head's 3x3/1x3/3x1 convolutions merged into one 3x3 and the heads run
    as grouped convolutions; the outputs are the same to float rounding (speed: docs/speed.md).
    """
    from networks import fuse  # torch: only when exporting

    return fuse(model)


def export_onnx(checkpoint, out, transform: Callable = prepare_for_export, opset: int = OPSET) -> Dict[str, Any]:
    """Rebuild the checkpoint's model with torch and write it as ONNX to `out` (atomically).

    Args:
        checkpoint: a .safetensors model or .pth training checkpoint of this project.
        out: the .onnx file to write.
        transform: model -> model, applied before tracing (see `prepare_for_export`).
        opset: ONNX opset version.

    Returns:
        the checkpoint's metadata, as stored in the file.
    """
    from utils.checkpoint import ModelMeta, load_model  # torch: only when exporting

    model, meta = load_model(checkpoint, "cpu")
    model = transform(model).eval()
    proto = model_proto(model, int(meta["img_size"]), opset)
    stored = ModelMeta.from_dict(meta, checkpoint)  # the file's own extra keys are not carried over
    stored.extra = {"source_sha256": file_digest(checkpoint), "export_version": EXPORT_VERSION}
    save_with_meta(proto, stored.to_dict(), out)
    return stored.to_dict()


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


def calibration_batches(folder, meta, images: int = 512, batch: int = 64):
    """Normalised float32 (B, 3, S, S) batches of up to `images` training images, evenly spread,
    prepared as prediction prepares faces (grey when the model takes grey, normalised)."""
    from data.datasets import FaceFolder  # torch: only when quantising

    root = Path(folder)
    if not (root / "train").is_dir():
        raise UserError(f"--int8 {folder}: expected a dataset folder with train/<class>/ images")
    size = int(meta["img_size"])
    dataset = FaceFolder([root], "train", size, skip_unknown=True, classes=meta["classes"])
    step = max(1, len(dataset) // images)
    faces = [dataset.load(i).permute(1, 2, 0).numpy() for i in range(0, len(dataset), step)[:images]]
    x = normalize(resize_faces(faces, size, wants_grayscale(meta)), meta["mean"], meta["std"])
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


def read_onnx_meta(session_or_path) -> Dict[str, Any]:
    """The metadata (META_KEY) of an exported model (an onnxruntime session or a path)."""
    if isinstance(session_or_path, (str, Path)):
        session_or_path = ort.InferenceSession(str(session_or_path), session_options(1),
                                               providers=["CPUExecutionProvider"])
    props = session_or_path.get_modelmeta().custom_metadata_map
    if META_KEY not in props:
        raise UserError("this ONNX file was not exported by this project (no 'fer' metadata); "
                        "export one with python3 -m utils.export_onnx")
    source = session_or_path if isinstance(session_or_path, (str, Path)) else "the ONNX model"
    meta = parse_meta(props[META_KEY], source)
    check_meta_values(meta, source)
    return meta


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Export a checkpoint to ONNX (logits, and attention for DAN).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help=".safetensors model or .pth checkpoint")
    p.add_argument("--out", default=None, help="output .onnx (default: the checkpoint with .onnx)")
    p.add_argument("--opset", type=int, default=OPSET)
    p.add_argument("--check", action="store_true",
                   help="compare onnxruntime's probabilities with PyTorch's on random input")
    p.add_argument("--int8", metavar="DATA", default=None,
                   help="also write <out>-int8.onnx, quantised to int8 with activation ranges calibrated "
                        "on 512 images of DATA/train (its speed and accuracy: docs/speed.md)")
    return p


def check_against_torch(checkpoint, onnx_path, batch: int = 3, seed: int = 0) -> float:
    """Largest |p_onnx - p_torch| over a random batch (softmax probabilities)."""
    import torch  # only when checking an export

    from utils.checkpoint import load_model  # torch: as above

    model, meta = load_model(checkpoint, "cpu")
    size = int(meta["img_size"])
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        p_torch = torch.softmax(model(x).logits, dim=1).numpy()
    session = ort.InferenceSession(str(onnx_path), session_options(1), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"input": x.numpy()})[0]
    return float(np.abs(softmax(logits) - p_torch).max())


def main(args) -> None:
    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".onnx")
    meta = export_onnx(args.checkpoint, out, opset=args.opset)
    print(f"wrote {out} ({meta['model']}, {len(meta['classes'])} classes, {meta['img_size']} px)")
    if args.check:
        print(f"max |p_onnx - p_torch| = {check_against_torch(args.checkpoint, out):.2e}")
    if args.int8:
        int8 = export_int8(out, args.int8, meta)
        print(f"wrote {int8} (int8; use it with predict.py --checkpoint {int8})")


def export_int8(fp32_path, data, meta) -> Path:
    """Quantise an exported fp32 graph to `<name>-int8.onnx`, keeping its metadata."""
    import onnx  # onnx: only when exporting (prediction needs ONNX Runtime alone)

    fp32_path = Path(fp32_path)
    dst = fp32_path.with_name(fp32_path.stem + "-int8.onnx")
    quantize_int8(fp32_path, dst, calibration_batches(data, meta))
    save_with_meta(onnx.load(str(dst)), {**meta, "quantized": "int8"}, dst)
    return dst


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
