"""The training step, one training epoch and evaluation: the loop reads the same on CPU and GPU."""
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from common.errors import UserError
from data.transforms import mix_batch
from utils.distributed import DistInfo, all_gather_cat, all_reduce_sum


@dataclass(frozen=True)
class BatchMix:
    """Mixup (cutmix False) or CutMix of each training batch with Beta(alpha, alpha) weights."""

    alpha: float
    cutmix: bool = False


@dataclass
class Precision:
    """Autocast settings: bf16 where the GPU supports it, else fp16 with a GradScaler; off on the CPU."""

    enabled: bool = False
    dtype: torch.dtype = torch.float32

    @staticmethod
    def choose(device: torch.device, amp: Optional[bool], dtype: str = "auto") -> "Precision":
        """`amp` None means on for CUDA; `dtype` is auto, bf16 or fp16 (auto: bf16 where the GPU has it)."""
        if device.type != "cuda" or amp is False:
            return Precision()
        if dtype == "auto":
            dtype = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if dtype == "bf16" and not torch.cuda.is_bf16_supported():
            raise UserError(f"{torch.cuda.get_device_name(device)} has no bfloat16; use --amp-dtype fp16")
        return Precision(True, {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype])

    @property
    def needs_scaler(self) -> bool:
        return self.enabled and self.dtype == torch.float16


@dataclass(frozen=True)
class Runtime:
    """Where and how the tensors run: the device, autocast, channels_last, the distributed state."""

    device: torch.device
    precision: Precision = field(default_factory=Precision)
    channels_last: bool = False
    dist: DistInfo = field(default_factory=DistInfo)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.precision.dtype, enabled=self.precision.enabled)


@dataclass
class Optimisation:
    """What takes a step: the optimiser, its per-iteration scheduler, the (maybe disabled) GradScaler."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler


@dataclass
class TrainInputs:
    """How a batch becomes the model's input and targets: the device-side augmentation, label
    distributions (N, C) on the device indexed by sample (or None), mixup or CutMix (or None)."""

    augment: Callable[[torch.Tensor], torch.Tensor]
    soft_targets: Optional[torch.Tensor] = None
    mix: Optional[BatchMix] = None


MAX_NONFINITE_STEPS = 3  # training stops after this many steps in a row with a NaN or infinite loss


class TrainStep(nn.Module):
    """Model and criterion as one module, so DDP also averages the criterion's parameters
    (DAN's class centers) across ranks. Returns (logits, loss terms, their weighted total)."""

    def __init__(self, model: nn.Module, criterion: nn.Module):
        super().__init__()
        self.model = model
        self.criterion = criterion

    def forward(self, images: torch.Tensor, labels: torch.Tensor, soft: Optional[torch.Tensor] = None):
        output = self.model(images)
        losses = self.criterion(output, labels, soft)
        return output.logits, losses, self.criterion.total(losses)


def train_one_epoch(step: nn.Module, batches, opt: Optimisation, inputs: TrainInputs, rt: Runtime,
                    desc: str) -> Dict[str, float]:
    """One pass over `batches`; returns the mean of each loss term, total loss, accuracy and images/s.

    `inputs.soft_targets` replaces the labels in the cross-entropy term (label distributions from
    annotators' votes); `inputs.mix` (mixup or CutMix) needs them. With a mix, the label of the
    larger part stands for the image elsewhere."""
    device, dist_info = rt.device, rt.dist
    optimizer, soft_targets, mix = opt.optimizer, inputs.soft_targets, inputs.mix
    step.train()
    # Reading a number back waits for the GPU: do it every 50 steps there, every 10 on the CPU.
    log_every = 50 if device.type == "cuda" else 10
    sums: Dict[str, torch.Tensor] = {}
    correct = torch.zeros((), device=device)
    seen = torch.zeros((), device=device)
    counted = torch.zeros((), device=device)  # images of the steps whose loss was finite
    streak = torch.zeros((), dtype=torch.int32, device=device)  # consecutive non-finite losses, kept on the device
    worst = torch.zeros_like(streak)
    start = time.perf_counter()
    last = len(batches) - 1
    bar = tqdm(batches, desc=desc, unit="batch", dynamic_ncols=True, leave=False, disable=not dist_info.is_main)
    for i, (images, labels, _, indices) in enumerate(bar):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        soft = soft_targets[indices.to(device, non_blocking=True)] if soft_targets is not None else None
        x = inputs.augment(images)
        if mix is not None:
            x, soft, lam, perm = mix_batch(x, soft, mix.alpha, mix.cutmix)
            labels = labels if lam >= 0.5 else labels[perm]
        with rt.autocast():
            logits, losses, loss = step(rt.prepare(x), labels, soft)
        optimizer.zero_grad(set_to_none=True)
        opt.scaler.scale(loss).backward()
        opt.scaler.step(optimizer)
        opt.scaler.update()
        opt.scheduler.step()

        n = labels.shape[0]
        finite = torch.isfinite(loss.detach())
        streak = torch.where(finite, 0, streak + 1)
        worst = torch.maximum(worst, streak)
        for name, value in {**losses, "loss": loss}.items():  # the means leave out non-finite steps
            term = torch.where(finite, value.detach().float() * n, 0)
            sums[name] = sums.get(name, torch.zeros((), device=device)) + term
        counted += finite * n
        correct += (logits.detach().argmax(1) == labels).sum()
        seen += n
        if i % log_every == 0 or i == last:
            check_streak(worst, i, desc, dist_info)  # one sync every `log_every` steps
            mean_loss = (sums["loss"] / counted).item()
            rate = seen.item() * dist_info.world_size / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{100 * (correct / seen).item():.1f}%",
                            img_s=f"{rate:.0f}", lr=f"{optimizer.param_groups[0]['lr']:.2g}")
    bar.close()
    totals = torch.stack([seen, correct, counted] + [sums[k] for k in sorted(sums)])
    totals = all_reduce_sum(totals, dist_info)
    seen_all = totals[0].item()
    stats = {f"train_{k}": (v / totals[2]).item() for k, v in zip(sorted(sums), totals[3:])}  # nan if none counted
    stats["train_acc"] = (totals[1] / seen_all).item()
    stats["train_images_per_s"] = seen_all / (time.perf_counter() - start)
    return stats


def check_streak(worst: torch.Tensor, i: int, desc: str, dist_info: DistInfo) -> None:
    """Stop training (on every rank) once the loss was non-finite for MAX_NONFINITE_STEPS steps in a row.

    A single such step can pass (under fp16 the GradScaler skips it); in fp32 and bf16 it
    usually spoils the weights, so the next steps fail too and training stops right after.
    """
    diverged = all_reduce_sum((worst >= MAX_NONFINITE_STEPS).float(), dist_info).item()
    if diverged:
        raise UserError(f"training diverged: the loss was NaN or infinite for {MAX_NONFINITE_STEPS} steps in a row "
                        f"(by step {i + 1} of {desc}); lower --lr or raise --warmup-epochs")


def nonfinite_tensor(state: Dict[str, torch.Tensor]) -> Optional[str]:
    """The name of the first floating tensor in `state` that holds a NaN or infinity, else None."""
    for name, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return name
    return None


@torch.inference_mode()
def evaluate(model: nn.Module, batches, normalize, rt: Runtime, desc: str = "eval",
             keep_features: bool = False) -> Dict[str, np.ndarray]:
    """Predict every batch; returns numpy arrays gathered from all ranks, in sample-index order:
    indices, labels, sources, preds, probs (N, C), loss (N,) and features (N, D) if asked."""
    device, dist_info = rt.device, rt.dist
    model.eval()
    parts = {k: [] for k in ("indices", "labels", "sources", "probs", "loss", "features")}
    bar = tqdm(batches, desc=desc, unit="batch", dynamic_ncols=True, leave=False, disable=not dist_info.is_main)
    for images, labels, sources, indices in bar:
        x = rt.prepare(normalize(images.to(device, non_blocking=True)))
        labels = labels.to(device, non_blocking=True)
        with rt.autocast():
            output = model(x)
        logits = output.logits.float()
        parts["loss"].append(F.cross_entropy(logits, labels, reduction="none"))
        parts["probs"].append(logits.softmax(1))
        parts["labels"].append(labels)
        parts["sources"].append(sources.to(device, non_blocking=True))
        parts["indices"].append(indices.to(device, non_blocking=True))
        if keep_features:
            parts["features"].append(output.features.float())
    bar.close()
    result = {}
    for name, chunks in parts.items():
        if not chunks:
            continue
        gathered = all_gather_cat(torch.cat(chunks), dist_info)
        result[name] = gathered.cpu().numpy()
    order = np.argsort(result["indices"], kind="stable")
    result = {k: v[order] for k, v in result.items()}
    result["preds"] = result["probs"].argmax(1)
    return result
