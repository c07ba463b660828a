"""Starting a new run from the weights of a trained model (`train.py --init PATH`).

Unlike `--resume`, which continues one run, `--init` takes only the weights: a new optimiser,
schedule and run folder. The class sets may differ: every tensor indexed by class (the
classifier's rows, DAN's BatchNorm over the logits, its class centres) is carried over row by
row by class name; classes the old model lacked keep their fresh initialisation.
"""
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from networks import build_model
from utils.checkpoint import check_keys, load_checkpoint, read_weights
from utils.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class InitReport:
    """What `init_from` did."""

    tensors: int = 0
    carried: List[str] = field(default_factory=list)  # classes whose rows came from the file
    new: List[str] = field(default_factory=list)      # classes that start fresh
    dropped: List[str] = field(default_factory=list)  # classes of the file the new run lacks
    centers: bool = False                             # DAN's class centres carried over

    def summary(self) -> str:
        text = (f"{self.tensors} tensors; class rows carried for {', '.join(self.carried) or 'none'}; "
                f"new: {', '.join(self.new) or 'none'}")
        if self.dropped:
            text += f"; not in the new data: {', '.join(self.dropped)}"
        return text + ("; class centres carried" if self.centers else "; class centres start fresh")


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


def init_from(model: nn.Module, criterion: Optional[nn.Module], path, model_name: str,
              classes: Sequence[str]) -> InitReport:
    """Load the weights of the model file `path` (.pth or .safetensors of this project) into `model`.

    Args:
        model: the new run's model (its classes are `classes`).
        criterion: the new run's criterion; DAN's centres are carried when `path` is a training
            checkpoint that holds them.
        model_name: the new run's model name, which the file's must match.

    Raises:
        UserError: the file is of another model or its other tensors do not fit.
    """
    state, meta = read_weights(path)
    if meta["model"] != model_name:
        raise UserError(f"--init {path} holds a {meta['model']} model, not {model_name}: pass --model {meta['model']}")
    old = list(meta["classes"])
    indexed = set(class_indexed_keys(model_name, meta["model_args"], len(old)))
    own = model.state_dict()

    def rows_aside(tensors):  # a class-indexed tensor may have another number of rows: compare the rest
        return {k: v[:0] if k in indexed else v for k, v in tensors.items()}

    check_keys(rows_aside(own), rows_aside(state), f"--init {path}", "the new model (other constructor arguments?)")
    new_state = {k: carry_rows(own[k], v, classes, old) if k in indexed else v for k, v in state.items()}
    model.load_state_dict(new_state)
    report = InitReport(tensors=len(new_state), carried=[c for c in classes if c in old],
                        new=[c for c in classes if c not in old], dropped=[c for c in old if c not in classes])
    centers = getattr(criterion, "centers", None)
    if centers is not None and Path(path).suffix != ".safetensors":
        saved = load_checkpoint(path).get("criterion", {}).get("centers")
        if saved is not None and saved.shape[1:] == centers.shape[1:]:
            with torch.no_grad():
                centers.copy_(carry_rows(centers.detach(), saved.float(), classes, old))
            report.centers = True
    return report
