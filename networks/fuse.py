"""Faster forms of the same models: BatchNorm folding for inference, DAN's heads run together.

`fuse(model)` returns an eval-only copy whose every BatchNorm is folded into the convolution or
linear layer before it. For DAN it also rewrites the heads (`FusedDAN`):

- each head's 3x3, 1x3 and 3x1 convolutions become one 3x3 convolution (a 1x3 kernel is a 3x3
  kernel whose top and bottom rows are zero; a 3x1 one has zero left and right columns);
- the N heads run as one: a single 1x1 convolution with the N heads' filters stacked, one
  grouped 3x3 convolution (groups = N) and batched matrix products for channel attention,
  in place of 4N convolutions and 2N linear layers called one after another.

Its training counterpart, `networks.dan.GroupedDAN`, runs the heads together the same way
and shares DAN's head arithmetic (`channel_gates`, `fuse_heads`).
"""
import copy
from typing import Dict, List, Union

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .dan import DAN, channel_gates, fuse_heads
from .face_resnet import fold_scales
from .outputs import ModelOutput

Foldable = Union[nn.Conv1d, nn.Conv2d, nn.Linear]


def fold_batchnorm(layer: Foldable, bn: _BatchNorm) -> None:
    """Fold an eval-mode BatchNorm that directly follows `layer` into layer's weight and bias, in place.

    bn(layer(x)) = s * (W x + b - mean) + beta with s = gamma / sqrt(var + eps), so W' = s W and
    b' = s (b - mean) + beta. Computed in float64, stored in the layer's dtype.
    """
    weight = layer.weight.detach().double()
    bias = layer.bias.detach().double() if layer.bias is not None else weight.new_zeros(weight.shape[0])
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.detach().double() if bn.affine else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.affine else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    dtype = layer.weight.dtype
    layer.weight = nn.Parameter((weight * scale.view(-1, *[1] * (weight.dim() - 1))).to(dtype))
    layer.bias = nn.Parameter(((bias - mean) * scale + beta).to(dtype))


def _after_batchnorm(bn: _BatchNorm) -> nn.Module:
    """What is left of a BatchNorm module once its affine map is folded away."""
    if type(bn) in (nn.BatchNorm1d, nn.BatchNorm2d):
        return nn.Identity()
    # timm's BatchNormAct2d: normalisation, then its own dropout and activation.
    return nn.Sequential(bn.drop, bn.act)


def _foldable_batchnorm(bn: nn.Module) -> bool:
    if not isinstance(bn, _BatchNorm) or not bn.track_running_stats or bn.running_mean is None:
        return False
    if type(bn) in (nn.BatchNorm1d, nn.BatchNorm2d):
        return True
    return type(bn).__name__ == "BatchNormAct2d" and hasattr(bn, "act") and hasattr(bn, "drop")


class _Tracer(fx.Tracer):
    """Keeps convolutions, linear layers and BatchNorms (timm's subclasses too) as single calls."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (_BatchNorm, nn.Conv1d, nn.Conv2d, nn.Linear)) or super().is_leaf_module(m, qualname)


def fold_batchnorms(model: nn.Module) -> nn.Module:
    """Fold, in place, every BatchNorm whose input is the output of a convolution or linear layer
    used nowhere else; returns `model` (in eval mode).

    The pairs are found in the traced graph of `model.forward` (torch.fx), so a pair is folded only
    when data really flows from the layer into the BatchNorm and nowhere else, whatever the
    modules are called. A module called more than once is left alone.
    """
    model.eval()
    if not any(_foldable_batchnorm(m) for m in model.modules()):
        return model  # nothing to fold (the face_resnet trunk, whose shape-dependent padding fx cannot trace)
    graph = _Tracer().trace(model)
    modules = dict(model.named_modules())
    calls: Dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    for node in graph.nodes:
        if node.op != "call_module" or not _foldable_batchnorm(modules[node.target]):
            continue
        source = node.args[0]
        if not (isinstance(source, fx.Node) and source.op == "call_module" and len(source.users) == 1):
            continue
        layer = modules[source.target]
        if not isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            continue
        if calls[source.target] != 1 or calls[node.target] != 1:
            continue
        fold_batchnorm(layer, modules[node.target])
        parent, _, name = node.target.rpartition(".")
        setattr(model.get_submodule(parent), name, _after_batchnorm(modules[node.target]))
    return model


def _folded_conv_bn(block: nn.Sequential) -> nn.Conv2d:
    """A copy of conv_bn's convolution with its BatchNorm folded in."""
    conv = copy.deepcopy(block[0])
    fold_batchnorm(conv, block[1])
    return conv


def _as_3x3(weight: torch.Tensor) -> torch.Tensor:
    """A (O, I, kh, kw) kernel with kh, kw in {1, 3} as the 3x3 kernel it equals under padding 1."""
    kh, kw = weight.shape[2:]
    return F.pad(weight, ((3 - kw) // 2, (3 - kw) // 2, (3 - kh) // 2, (3 - kh) // 2))


class FusedDAN(nn.Module):
    """DAN for inference, built from a DAN by `fuse`: BatchNorms folded, each head's three
    convolutions merged into one 3x3, all heads run together. Eval only: it has no BatchNorm left
    to train.

    Returns the same ModelOutput as DAN: logits (B, C), features (B, 512), heads (B, N, 512),
    attention (B, N, H, W).
    """

    def __init__(self, dan: DAN):
        super().__init__()
        n, c = dan.num_heads, dan.num_features
        self.num_classes, self.num_heads, self.num_features = dan.num_classes, n, c
        self.trunk = fold_scales(fold_batchnorms(copy.deepcopy(dan.trunk)))
        spatial = [head.spatial for head in dan.heads]
        reduce = [_folded_conv_bn(s.conv1x1) for s in spatial]
        mid = reduce[0].out_channels
        self.reduce = nn.Conv2d(c, n * mid, 1)  # every head's 1x1 reduction at once
        self.spatial = nn.Conv2d(n * mid, n * c, 3, padding=1, groups=n)  # head i reads its own slice
        merged_w: List[torch.Tensor] = []
        merged_b: List[torch.Tensor] = []
        for s in spatial:
            convs = [_folded_conv_bn(getattr(s, name)) for name in ("conv3x3", "conv1x3", "conv3x1")]
            merged_w.append(sum(_as_3x3(conv.weight) for conv in convs))
            merged_b.append(sum(conv.bias for conv in convs))
        gates = []
        for head in dan.heads:
            gate = copy.deepcopy(head.channel.gate)  # Linear, BatchNorm1d, ReLU, Linear, Sigmoid
            fold_batchnorm(gate[0], gate[1])
            gates.append(gate)
        fc = copy.deepcopy(dan.fc)
        fold_batchnorm(fc, dan.bn)
        self.reduce.weight = nn.Parameter(torch.cat([conv.weight.detach() for conv in reduce]))
        self.reduce.bias = nn.Parameter(torch.cat([conv.bias.detach() for conv in reduce]))
        self.spatial.weight = nn.Parameter(torch.cat(merged_w).detach())
        self.spatial.bias = nn.Parameter(torch.cat(merged_b).detach())
        # Channel attention as batched matrix products: (B, N, 1, C) @ (N, C, 32), and back.
        self.gate_in = nn.Parameter(torch.stack([g[0].weight.detach().t() for g in gates]))  # (N, C, 32)
        self.gate_in_bias = nn.Parameter(torch.stack([g[0].bias.detach() for g in gates]))  # (N, 32)
        self.gate_out = nn.Parameter(torch.stack([g[3].weight.detach().t() for g in gates]))  # (N, 32, C)
        self.gate_out_bias = nn.Parameter(torch.stack([g[3].bias.detach() for g in gates]))  # (N, C)
        self.fc = fc
        self.eval()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> trunk map (B, 512, S/32, S/32)."""
        return self.trunk(x)

    def forward_head(self, fmap: torch.Tensor) -> ModelOutput:
        n, c = self.num_heads, self.num_features
        h, w = fmap.shape[2:]
        y = F.relu(self.spatial(self.reduce(fmap)))  # (B, N*C, H, W)
        attention = y.unflatten(1, (n, c)).sum(dim=2)  # (B, N, H, W)
        # mean over H, W of fmap * attention, for every head at once: (B, N, HW) @ (B, HW, C)
        pooled = attention.flatten(2) @ fmap.flatten(2).transpose(1, 2) / (h * w)  # (B, N, C)
        heads = channel_gates(pooled, self.gate_in, self.gate_in_bias, self.gate_out, self.gate_out_bias)
        heads, logits = fuse_heads(heads, self.fc)
        return ModelOutput(logits, fmap.mean(dim=(2, 3)), heads, attention)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        return self.forward_head(self.forward_features(x))


def fuse(model: nn.Module) -> nn.Module:
    """An inference copy of `model` with every BatchNorm folded away (eval mode; `model` is untouched).

    DAN (and GroupedDAN) become a FusedDAN (see its docstring); other models (ResNet18,
    EfficientNetB3, FaceResNetClassifier) keep their class with each BatchNorm, and each scale
    layer of the face_resnet trunk, folded into the layer before it. The
    outputs equal the original's in eval mode up to float rounding.
    """
    if isinstance(model, DAN):
        return FusedDAN(model)
    return fold_scales(fold_batchnorms(copy.deepcopy(model)))
