"""DAN: Distract your Attention Network (Wen et al., arXiv 2109.07270), and GroupedDAN, the same
model with its heads run together for training on a GPU.

A trunk (ResNet-18 as in the paper, or dlib's face-recognition ResNet: `networks.trunks`) feeds
N cross-attention heads, which take their channel count C from it; each head is spatial attention followed by
channel attention. The head vectors are fused (log-softmax over heads, then summed) and
classified by a linear layer with BatchNorm on the logits, as the paper's reference code does.
"""
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from common.errors import UserError

from .outputs import ModelOutput
from .trunks import TRUNKS


def conv_bn(in_ch: int, out_ch: int, kernel_size, padding) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel_size, padding=padding), nn.BatchNorm2d(out_ch))


class SpatialAttention(nn.Module):
    """Reduce to C/2 channels, then three parallel convolutions (3x3, 1x3, 3x1) summed.

    The ReLU'd sum is summed over channels into one (B, 1, H, W) map that scales the input.
    """

    def __init__(self, channels: int = 512):
        super().__init__()
        mid = channels // 2
        self.conv1x1 = conv_bn(channels, mid, 1, 0)
        self.conv3x3 = conv_bn(mid, channels, (3, 3), (1, 1))
        self.conv1x3 = conv_bn(mid, channels, (1, 3), (0, 1))
        self.conv3x1 = conv_bn(mid, channels, (3, 1), (1, 0))

    def forward(self, x: torch.Tensor):
        """(B, C, H, W) -> attended map (B, C, H, W) and attention (B, 1, H, W)."""
        y = self.conv1x1(x)
        y = F.relu(self.conv3x3(y) + self.conv1x3(y) + self.conv3x1(y))
        attention = y.sum(dim=1, keepdim=True)
        return x * attention, attention


class ChannelAttention(nn.Module):
    """Global average pool, then a sigmoid gate from a 32-unit bottleneck."""

    def __init__(self, channels: int = 512, hidden: int = 32):
        super().__init__()
        self.gate = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C)."""
        pooled = x.mean(dim=(2, 3))
        return pooled * self.gate(pooled)


class CrossAttentionHead(nn.Module):
    def __init__(self, channels: int = 512):
        super().__init__()
        self.spatial = SpatialAttention(channels)
        self.channel = ChannelAttention(channels)
        self.apply(_init_head_weights)

    def forward(self, x: torch.Tensor):
        """(B, C, H, W) -> head vector (B, C) and attention map (B, 1, H, W)."""
        attended, attention = self.spatial(x)
        return self.channel(attended), attention


def _init_head_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out")
        nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.001)
        nn.init.zeros_(m.bias)


def fuse_heads(heads: torch.Tensor, fc: nn.Module, bn: Optional[nn.Module] = None):
    """DAN's fusion tail: head vectors (B, N, C) -> (log-softmax over the heads when N > 1, logits).

    The heads are summed and classified by `fc`, then `bn` (None where it is folded into fc).
    """
    if heads.shape[1] > 1:
        heads = F.log_softmax(heads, dim=1)
    logits = fc(heads.sum(dim=1))
    return heads, (bn(logits) if bn is not None else logits)


def channel_gates(pooled: torch.Tensor, w_in: torch.Tensor, b_in: torch.Tensor, w_out: torch.Tensor,
                  b_out: torch.Tensor, hidden_norm: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
    """N heads' channel attention at once, as batched matrix products.

    pooled (B, N, C) -> pooled * sigmoid(relu(norm(pooled W_in + b_in)) W_out + b_out), with
    w_in (N, C, K), b_in (N, K), w_out (N, K, C), b_out (N, C): each head's ChannelAttention gate
    (Linear, BatchNorm1d, ReLU, Linear, Sigmoid), its BatchNorm as `hidden_norm` ((B, N, K) ->
    (B, N, K)) or folded into w_in and b_in.
    """
    hidden = torch.matmul(pooled.unsqueeze(2), w_in).squeeze(2) + b_in  # (B, N, K)
    if hidden_norm is not None:
        hidden = hidden_norm(hidden)
    gate = torch.sigmoid(torch.matmul(F.relu(hidden).unsqueeze(2), w_out).squeeze(2) + b_out)
    return pooled * gate  # (B, N, C)


def build_trunk(name: str) -> nn.Module:
    """A fresh trunk by its `networks.trunks.TRUNKS` name."""
    if name not in TRUNKS:
        raise UserError(f"unknown trunk {name!r}; choose one of {', '.join(TRUNKS)}")
    return TRUNKS[name].build()


class DAN(nn.Module):
    """Distract your Attention Network.

    Args:
        num_classes: number of expression classes C.
        num_heads: number of cross-attention heads N.
        trunk: a `networks.trunks.TRUNKS` name; the heads and features have its channel count.
    """

    def __init__(self, num_classes: int = 7, num_heads: int = 4, trunk: str = "resnet18"):
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads must be at least 1, got {num_heads}")
        self.num_classes = num_classes
        self.num_heads = num_heads
        self.trunk_name = trunk
        self.trunk = build_trunk(trunk)
        self.num_features = TRUNKS[trunk].channels  # C: 512 for ResNet-18, 256 for face_resnet
        self.heads = nn.ModuleList(CrossAttentionHead(self.num_features) for _ in range(num_heads))
        self.fc = nn.Linear(self.num_features, num_classes)
        self.bn = nn.BatchNorm1d(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> trunk map (B, C, H, W): (B, 512, S/32, S/32) for ResNet-18."""
        return self.trunk(x)

    def forward_head(self, fmap: torch.Tensor) -> ModelOutput:
        """Trunk map (B, C, H, W) -> ModelOutput (logits (B, classes), features (B, C),
        heads (B, N, C), attention (B, N, H, W))."""
        vectors, maps = zip(*(head(fmap) for head in self.heads))
        heads, logits = fuse_heads(torch.stack(vectors, dim=1), self.fc, self.bn)
        return ModelOutput(logits, fmap.mean(dim=(2, 3)), heads, torch.cat(maps, dim=1))

    def forward(self, x: torch.Tensor) -> ModelOutput:
        return self.forward_head(self.forward_features(x))


def _batch_norm(x: torch.Tensor, bns: Sequence[_BatchNorm], training: bool) -> torch.Tensor:
    """x (B, N*K, ...) through N BatchNorms of K channels each, as one call.

    In training, each BatchNorm's running statistics and batch count are updated as its own
    forward would update them.
    """
    mean = torch.cat([bn.running_mean for bn in bns])
    var = torch.cat([bn.running_var for bn in bns])
    weight = torch.cat([bn.weight for bn in bns])
    bias = torch.cat([bn.bias for bn in bns])
    y = F.batch_norm(x, mean, var, weight, bias, training, bns[0].momentum, bns[0].eps)
    if training:  # F.batch_norm updated the concatenated copies: hand each BatchNorm its part
        with torch.no_grad():
            for bn, m, v in zip(bns, mean.chunk(len(bns)), var.chunk(len(bns))):
                bn.running_mean.copy_(m)
                bn.running_var.copy_(v)
                bn.num_batches_tracked.add_(1)
    return y


def _grouped_conv_bn(x: torch.Tensor, blocks: Sequence[nn.Sequential], training: bool) -> torch.Tensor:
    """N conv_bn blocks on x as one grouped convolution and one BatchNorm call.

    x is (B, Cin, H, W) read by every block when the blocks' input is Cin channels, else
    (B, N*Cin, H, W) with block i reading slice i.
    """
    convs = [block[0] for block in blocks]
    groups = x.shape[1] // convs[0].in_channels
    y = F.conv2d(x, torch.cat([conv.weight for conv in convs]), torch.cat([conv.bias for conv in convs]),
                 padding=convs[0].padding, groups=groups)
    return _batch_norm(y, [block[1] for block in blocks], training)


class GroupedDAN(DAN):
    """DAN with its heads run together, for training on a GPU; same parameters and state dict.

    The heads' weights are concatenated at each forward (so gradients reach each head's own
    parameters) and run as: one 1x1 convolution for every head, one grouped convolution per kernel
    shape (3x3, 1x3, 3x1; groups = N), one BatchNorm call per stage, batched matrix products for
    channel attention: the heads' 4N convolutions become 4 and their 5N BatchNorms 5 calls. The
    1x3 and 3x1 branches stay apart in training because each has its own batch statistics.
    """

    def forward_head(self, fmap: torch.Tensor) -> ModelOutput:
        n, c = self.num_heads, self.num_features
        b, _, h, w = fmap.shape
        spatial = [head.spatial for head in self.heads]
        gates = [head.channel.gate for head in self.heads]
        y = _grouped_conv_bn(fmap, [s.conv1x1 for s in spatial], self.training)  # (B, N*256, H, W)
        z = sum(_grouped_conv_bn(y, [getattr(s, name) for s in spatial], self.training)
                for name in ("conv3x3", "conv1x3", "conv3x1"))
        attention = F.relu(z).unflatten(1, (n, c)).sum(dim=2)  # (B, N, H, W)
        pooled = attention.flatten(2) @ fmap.flatten(2).transpose(1, 2) / (h * w)  # (B, N, C)

        def hidden_norm(hidden):  # the gates' BatchNorm1d layers as one call
            return _batch_norm(hidden.flatten(1), [g[1] for g in gates], self.training).view(b, n, -1)

        heads = channel_gates(pooled, torch.stack([g[0].weight.t() for g in gates]),
                              torch.stack([g[0].bias for g in gates]), torch.stack([g[3].weight.t() for g in gates]),
                              torch.stack([g[3].bias for g in gates]), hidden_norm)
        heads, logits = fuse_heads(heads, self.fc, self.bn)
        return ModelOutput(logits, fmap.mean(dim=(2, 3)), heads, attention)


def group_heads(model: DAN) -> GroupedDAN:
    """A GroupedDAN with `model`'s weights, buffers, mode, device and dtype (build the optimiser afterwards)."""
    grouped = GroupedDAN(model.num_classes, model.num_heads, model.trunk_name).to(model.fc.weight)
    grouped.load_state_dict(model.state_dict())
    return grouped.train(model.training)
