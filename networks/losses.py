"""Training criteria. Each returns a dict of named loss terms; `total_loss` weighs them in one place."""
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .outputs import ModelOutput


def _unbiased_var(x: torch.Tensor, dim: int) -> torch.Tensor:
    """torch.var(x, dim) (unbiased) written out: the same numbers, faster on the CPU than
    torch.var's reduction over a middle dimension (docs/speed.md)."""
    return (x - x.mean(dim=dim, keepdim=True)).square().sum(dim=dim) / (x.shape[dim] - 1)


def affinity_loss(features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """DAN's affinity loss: pull features to their class center, push centers apart.

    Args:
        features: (B, D) pooled features.
        labels: (B,) class indices.
        centers: (C, D) learned class centers.

    Returns:
        Scalar: sum over samples of ||f_i - c_{y_i}||^2 / sum_d Var_c(centers[:, d]),
        each term clamped to [1e-12, 1e12], divided by B.
    """
    dist = (features.float() - centers[labels].float()).pow(2).sum(dim=1)  # (B,)
    spread = _unbiased_var(centers.float(), 0).sum()
    return (dist / spread).clamp(min=1e-12, max=1e12).sum() / features.shape[0]


def partition_loss(heads: torch.Tensor) -> torch.Tensor:
    """DAN's partition loss: log(1 + N / (v + eps)), v = unbiased variance across heads,
    averaged over batch and channels; 0 for a single head.

    Args:
        heads: (B, N, D) per-head vectors.
    """
    num_heads = heads.shape[1]
    if num_heads == 1:
        return heads.new_zeros(())
    var = _unbiased_var(heads.float(), 1).mean()
    return torch.log1p(num_heads / (var + torch.finfo(torch.float32).eps))


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, soft: Optional[torch.Tensor],
                        label_smoothing: float, logit_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Cross-entropy against the labels, or against label distributions `soft` (B, C) when given
    (FER+'s annotator votes: -sum_c q_c log p_c, averaged over the batch).

    `logit_bias` (C,) is added to the logits inside the loss only: with tau * log(class prior) it is
    the logit-adjusted loss (Menon et al. 2021), which trains the plain logits towards balanced
    accuracy against a skewed prior."""
    logits = logits.float() if logit_bias is None else logits.float() + logit_bias
    return F.cross_entropy(logits, soft if soft is not None else labels, label_smoothing=label_smoothing)


class DANCriterion(nn.Module):
    """Cross-entropy + affinity + partition, with exactly `num_classes` learned centers.

    With label distributions the cross-entropy is taken against them; the affinity term keeps
    the (majority) label, since a feature has one class center to be pulled to.

    Args:
        num_classes: C.
        feat_dim: D, the pooled feature size.
        label_smoothing: for the cross-entropy term.
        lambda_aff, lambda_part: the weights of the affinity and partition terms (`weight_dict`).
    """

    def __init__(self, num_classes: int, feat_dim: int = 512, label_smoothing: float = 0.0,
                 lambda_aff: float = 1.0, lambda_part: float = 1.0):
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))
        self.label_smoothing = label_smoothing
        self.weight_dict = {"ce": 1.0, "affinity": lambda_aff, "partition": lambda_part}
        self.logit_bias: Optional[torch.Tensor] = None  # see classification_loss; not part of the state

    def total(self, losses: Dict[str, torch.Tensor]) -> torch.Tensor:
        return total_loss(losses, self.weight_dict)

    def forward(self, output: ModelOutput, labels: torch.Tensor,
                soft: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        return {
            "ce": classification_loss(output.logits, labels, soft, self.label_smoothing, self.logit_bias),
            "affinity": affinity_loss(output.features, labels, self.centers),
            "partition": partition_loss(output.heads),
        }


class CECriterion(nn.Module):
    """Plain cross-entropy, for models without heads."""

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing
        self.weight_dict = {"ce": 1.0}
        self.logit_bias: Optional[torch.Tensor] = None

    def total(self, losses: Dict[str, torch.Tensor]) -> torch.Tensor:
        return total_loss(losses, self.weight_dict)

    def forward(self, output: ModelOutput, labels: torch.Tensor,
                soft: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        return {"ce": classification_loss(output.logits, labels, soft, self.label_smoothing, self.logit_bias)}


def total_loss(losses: Dict[str, torch.Tensor], weights: Dict[str, float]) -> torch.Tensor:
    """The weighted sum of named terms; a term without a weight counts once."""
    return sum(weights.get(name, 1.0) * value for name, value in losses.items())
