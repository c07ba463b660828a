"""DAN: Distract your Attention Network (Wen et al., arXiv 2109.07270).

A trunk (ResNet-18 as in the paper, or dlib's face-recognition ResNet: `networks.trunks`) feeds
N cross-attention heads, which take their channel count C from it; each head is spatial attention followed by
channel attention. The head vectors are fused (log-softmax over heads, then summed) and
classified by a linear layer with BatchNorm on the logits, as the paper's reference code does.
"""
import torch
import torch.nn.functional as F
from torch import nn

from utils.errors import UserError

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
        self.num_features = TRUNKS[trunk].channels  # 512 for ResNet-18
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
        heads = torch.stack(vectors, dim=1)  # (B, N, C)
        if self.num_heads > 1:
            heads = F.log_softmax(heads, dim=1)
        logits = self.bn(self.fc(heads.sum(dim=1)))
        return ModelOutput(logits, fmap.mean(dim=(2, 3)), heads, torch.cat(maps, dim=1))

    def forward(self, x: torch.Tensor) -> ModelOutput:
        return self.forward_head(self.forward_features(x))
