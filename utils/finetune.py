"""Starting a new run from the weights of a trained model (`train.py --init PATH`).

Unlike `--resume`, which continues one run, `--init` takes only the weights: a new optimiser,
schedule and run folder. The class sets may differ: every tensor indexed by class (the
classifier's rows, DAN's BatchNorm over the logits, its class centres) is carried over row by
row by class name; classes the old model lacked keep their fresh initialisation.

A model trained on grey faces, started for colour training, has its first convolution spread
over the three channels (`spread_grey_input`): it then reads a colour photo exactly as it read
the photo's grey version, and learns from there what colour adds.
"""
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from common.errors import UserError
from data.transforms import LUMA
from networks import build_model
from utils.checkpoint import check_keys, load_checkpoint, read_weights

log = logging.getLogger(__name__)


@dataclass
class InitReport:
    """What `init_from` did."""

    tensors: int = 0
    carried: List[str] = field(default_factory=list)  # classes whose rows came from the file
    new: List[str] = field(default_factory=list)      # classes that start fresh
    dropped: List[str] = field(default_factory=list)  # classes of the file the new run lacks
    centers: bool = False                             # DAN's class centres carried over
    spread: str = ""                                  # the first convolution spread for colour input

    def summary(self) -> str:
        text = (f"{self.tensors} tensors; class rows carried for {', '.join(self.carried) or 'none'}; "
                f"new: {', '.join(self.new) or 'none'}")
        if self.dropped:
            text += f"; not in the new data: {', '.join(self.dropped)}"
        text += "; class centres carried" if self.centers else "; class centres start fresh"
        return text + (f"; grey model: {self.spread} spread over colour channels by luma" if self.spread else "")


def class_indexed_keys(name: str, model_args: Dict, num_classes: int) -> List[str]:
    """The state-dict keys whose first dimension is the class count (found by building the model
    with one class more and seeing which shapes change)."""
    args = {k: v for k, v in model_args.items() if k != "num_classes"}
    a = build_model(name, num_classes=num_classes, **args).state_dict()
    b = build_model(name, num_classes=num_classes + 1, **args).state_dict()
    return sorted(k for k in a if a[k].shape != b[k].shape)


def carry_rows(target: torch.Tensor, source: torch.Tensor, new_classes: Sequence[str],
               old_classes: Sequence[str]) -> torch.Tensor:
    """`target` with row i replaced by `source`'s row of the same class name, where there is one."""
    out = target.clone()
    for i, name in enumerate(new_classes):
        if name in old_classes:
            out[i] = source[old_classes.index(name)]
    return out


def first_conv(model: nn.Module):
    """(name, conv) of the first convolution that reads the image (3 input channels), and
    (name, BatchNorm) of the first BatchNorm after it, or None."""
    modules = list(model.named_modules())
    for i, (name, m) in enumerate(modules):
        if isinstance(m, nn.Conv2d) and m.in_channels == 3:
            bn = next(((n, b) for n, b in modules[i + 1:] if isinstance(b, nn.BatchNorm2d)), None)
            return (name, m), bn
    raise UserError("the model has no convolution with 3 input channels to spread")


@torch.no_grad()
def spread_grey_input(model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> str:
    """Make a model trained on grey faces read colour ones as their grey version.

    The grey model saw x_c = (L - m_c) / s_c on each channel c, with L the luma sum_c k_c P_c
    (ITU-R 601 weights k, as PIL's "L"). Its first convolution W gives sum_c W_c (L - m_c) / s_c.
    With W'_c = s_c k_c A, A = sum_d W_d / s_d, the colour input x_c = (P_c - m_c) / s_c gives
    A L - A (k . m) per kernel tap: the same up to a constant per output channel, which is
    added to the convolution's bias, or, without one, to the running mean of the BatchNorm that
    follows. Outputs are then equal away from the zero-padded border (tested).

    Returns:
        the convolution's name.
    """
    (name, conv), bn = first_conv(model)
    w = conv.weight  # (O, 3, k, k)
    s = torch.tensor(std, dtype=w.dtype).view(1, 3, 1, 1)
    m = torch.tensor(mean, dtype=w.dtype).view(1, 3, 1, 1)
    k = torch.tensor(LUMA, dtype=w.dtype).view(1, 3, 1, 1)
    a = (w / s).sum(1, keepdim=True)  # (O, 1, k, k)
    new = s * k * a
    # Constant part of each output (interior): grey model minus colour model, (O,).
    shift = ((w * m / s).sum((1, 2, 3)) - (a * (k * m).sum(1, keepdim=True)).sum((1, 2, 3)))
    conv.weight.copy_(new)
    if conv.bias is not None:
        conv.bias.sub_(shift)  # y' = y + shift: take it back here
    elif bn is not None:
        bn[1].running_mean.add_(shift)
    return name


def init_from(model: nn.Module, criterion: Optional[nn.Module], path, model_name: str,
              classes: Sequence[str], colour: bool = False) -> InitReport:
    """Load the weights of the model file `path` (.pth or .safetensors of this project) into `model`.

    Args:
        model: the new run's model (its classes are `classes`).
        criterion: the new run's criterion; DAN's centres are carried when `path` is a training
            checkpoint that holds them.
        model_name: the new run's model name, which the file's must match.
        colour: the new run trains on colour faces: a model file trained grey (metadata
            "grayscale") has its first convolution spread over the channels (spread_grey_input).

    Raises:
        UserError: the file is of another model or its other tensors do not fit.
    """
    state, meta = read_weights(path)
    if meta.model != model_name:
        raise UserError(f"--init {path} holds a {meta.model} model, not {model_name}: pass --model {meta.model}")
    old = list(meta.classes)
    indexed = set(class_indexed_keys(model_name, meta.model_args, len(old)))
    own = model.state_dict()

    def rows_aside(tensors):  # a class-indexed tensor may have another number of rows: compare the rest
        return {k: v[:0] if k in indexed else v for k, v in tensors.items()}

    check_keys(rows_aside(own), rows_aside(state), f"--init {path}", "the new model (other constructor arguments?)")
    new_state = {k: carry_rows(own[k], v, classes, old) if k in indexed else v for k, v in state.items()}
    model.load_state_dict(new_state)
    report = InitReport(tensors=len(new_state), carried=[c for c in classes if c in old],
                        new=[c for c in classes if c not in old], dropped=[c for c in old if c not in classes])
    if colour and meta.grayscale:
        report.spread = spread_grey_input(model, meta.mean, meta.std)
    centers = getattr(criterion, "centers", None)
    if centers is not None and Path(path).suffix != ".safetensors":
        saved = load_checkpoint(path).get("criterion", {}).get("centers")
        if saved is not None and saved.shape[1:] == centers.shape[1:]:
            with torch.no_grad():
                centers.copy_(carry_rows(centers.detach(), saved.float(), classes, old))
            report.centers = True
    return report
