"""Export a checkpoint to ONNX (inference/export.py), optionally checked against PyTorch and
quantised to int8.

    python3 -m tools.export_onnx --checkpoint runs/dan/best.safetensors --out Data/dan.onnx
    python3 -m tools.export_onnx --checkpoint Data/dan_wild.safetensors --check --int8 Data/ferplus
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from common.errors import run_cli
from inference.export import OPSET, export_int8, export_onnx
from inference.runtime import session_options, softmax


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
    size = meta.img_size
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        p_torch = torch.softmax(model(x).logits, dim=1).numpy()
    session = ort.InferenceSession(str(onnx_path), session_options(1), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"input": x.numpy()})[0]
    return float(np.abs(softmax(logits) - p_torch).max())


def main(args) -> None:
    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".onnx")
    meta = export_onnx(args.checkpoint, out, opset=args.opset)
    print(f"wrote {out} ({meta.model}, {len(meta.classes)} classes, {meta.img_size} px)")
    if args.check:
        print(f"max |p_onnx - p_torch| = {check_against_torch(args.checkpoint, out):.2e}")
    if args.int8:
        int8 = export_int8(out, args.int8, meta)
        print(f"wrote {int8} (int8; use it with predict.py --checkpoint {int8})")

if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
