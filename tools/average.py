"""Average the weights of several files of one model: epochs of a run (as SWA does) or runs that
share a start (a "model soup", Wortsman et al. 2022, arXiv 2203.05482).

    python3 -m tools.average runs/a/epochs/epoch_00{3,4,5}.safetensors \\
        --out runs/a/average.safetensors --bn-data ../shared/data/ferplus Data/ckplus48_v1t0

Every file must hold the same model (name, constructor arguments, classes, input). Floating
tensors are averaged in fp32 (with `--weights`, a weighted mean); counters such as BatchNorm's
`num_batches_tracked` are taken from the first file. BatchNorm's running statistics of averaged
weights are not the statistics of the averaged network, so `--bn-data` recomputes them from
training images (no augmentation) with `torch.optim.swa_utils.update_bn`, as SWA prescribes;
without it they are averaged too. The result is a shipped-format `.safetensors` (or a `.pth`)
whose metadata names its sources; a calibration temperature is not carried (fit one again with
`test.py --calibrate`).
"""
import argparse
import logging
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from common.errors import UserError, run_cli
from common.files import file_digest
from common.meta import ModelMeta
from data.datasets import FaceFolder
from data.loading import Batches, ShardedSampler, TensorCache
from data.transforms import Normalize
from networks import build_model
from utils.checkpoint import (check_keys, load_state_strict, read_weights, save_checkpoint,
                              save_safetensors, training_checkpoint)
from utils.misc import setup_logging

log = logging.getLogger("average")

SAME = ("model", "model_args", "classes", "img_size", "mean", "std")  # what every file must share


def average_states(states: Sequence[Dict[str, torch.Tensor]],
                   weights: Optional[Sequence[float]] = None) -> Dict[str, torch.Tensor]:
    """The (weighted) mean of state dicts with the same keys and shapes.

    Args:
        states: state dicts; floating tensors are averaged in fp32, others taken from the first.
        weights: one non-negative number per state (normalised to sum 1); None: equal weights.
    """
    if not states:
        raise UserError("nothing to average: give at least one model file")
    weights = [1.0] * len(states) if weights is None else [float(w) for w in weights]
    if len(weights) != len(states) or min(weights) < 0 or sum(weights) <= 0:
        raise UserError(f"--weights needs {len(states)} non-negative numbers, not all zero; got {weights}")
    total = sum(weights)
    out = {}
    for key, first in states[0].items():
        if not first.is_floating_point():
            out[key] = first.clone()
            continue
        acc = torch.zeros_like(first, dtype=torch.float32)
        for w, state in zip(weights, states):
            acc += state[key].float() * (w / total)
        out[key] = acc
    return out


def recompute_batchnorm(model: nn.Module, batches, normalize: Normalize) -> int:
    """Set every BatchNorm's running mean and variance to their averages over `batches` with
    `torch.optim.swa_utils.update_bn`; returns the number of images seen. Single-image batches are
    skipped (a batch variance needs two). The model is left in eval mode."""
    seen = 0

    def inputs():
        nonlocal seen
        for images, *_ in batches:
            if len(images) > 1:
                seen += len(images)
                yield normalize(images).contiguous(memory_format=torch.channels_last)

    update_bn(inputs(), model)
    model.eval()
    return seen


def bn_batches(roots: Sequence[Path], meta: ModelMeta, images: int, batch_size: int, seed: int) -> Batches:
    """A fixed random subset of `images` training images of `roots`, in the model's input form."""
    dataset = FaceFolder(list(roots), "train", meta.img_size, classes=meta.classes, skip_unknown=True,
                         grayscale=meta.grey_input)  # a grey model's statistics are of grey faces
    g = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(dataset), generator=g)[:images].sort().values.tolist()
    dataset.samples = [dataset.samples[i] for i in keep]
    cache = TensorCache(dataset, torch.device("cpu"), 0, desc="loading train (BatchNorm statistics)")
    return Batches(dataset, ShardedSampler(len(dataset), True, seed=seed), batch_size, cache)


def average_files(paths: Sequence[Path], weights: Optional[Sequence[float]] = None):
    """(averaged state dict, metadata of the first file); refuses files of different models."""
    states, metas = [], []
    for path in paths:
        state, meta = read_weights(path)
        if metas:
            differs = [k for k in SAME if getattr(meta, k) != getattr(metas[0], k)]
            if differs:
                raise UserError(f"{path} is not the same model as {paths[0]} (they differ in "
                                f"{', '.join(differs)}); only files of one model can be averaged")
            check_keys(states[0], state, path, what=str(paths[0]))
        states.append(state)
        metas.append(meta)
    return average_states(states, weights), metas[0]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="model files (.pth or .safetensors) of one model")
    p.add_argument("--out", required=True, help="the averaged model (.safetensors: fp16 weights; .pth: fp32)")
    p.add_argument("--weights", type=float, nargs="+", default=None, help="one weight per file (default: equal)")
    p.add_argument("--bn-data", nargs="+", default=None,
                   help="dataset roots whose train/ images recompute BatchNorm's statistics (default: averaged)")
    p.add_argument("--bn-images", type=int, default=4096, help="training images used for those statistics")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="which training images are drawn")
    return p


def main(args) -> Path:
    setup_logging()
    paths = [Path(p) for p in args.checkpoints]
    out = Path(args.out)
    if out.suffix not in (".safetensors", ".pth"):
        raise UserError(f"--out {out} must end in .safetensors or .pth")
    if out.resolve() in {p.resolve() for p in paths}:
        raise UserError(f"--out {out} is one of the inputs; write the average to a new file")
    state, meta = average_files(paths, args.weights)
    model = build_model(meta.model, **meta.model_args)
    load_state_strict(model, state, out)
    if args.bn_data:
        batches = bn_batches([Path(r) for r in args.bn_data], meta, args.bn_images, args.batch_size, args.seed)
        seen = recompute_batchnorm(model.to(memory_format=torch.channels_last), batches,
                                   Normalize(meta.mean, meta.std))
        log.info("BatchNorm statistics recomputed from %d training images of %s", seen, ", ".join(args.bn_data))
    info = meta.replace(temperature=None, calibration=None, epoch=None, val_accuracy=None, extra={
        **meta.extra, "averaged_from": [{"file": str(p), "sha256": file_digest(p)} for p in paths],
        "average_weights": list(args.weights) if args.weights else None,
        "batchnorm": (f"recomputed from {args.bn_images} training images of {', '.join(args.bn_data)}"
                      if args.bn_data else "averaged")})
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".safetensors":
        save_safetensors(weights, info, out)
    else:
        save_checkpoint(training_checkpoint(info, weights), out)
    log.info("wrote %s: the average of %d files", out, len(paths))
    return out


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
