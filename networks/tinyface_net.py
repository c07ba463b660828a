"""face-api's Tiny Face Detector network (a YOLOv2-style face detector), ported to PyTorch exactly.

The network of Vincent Mühler's `TinyFaceDetector` in face-api.js, which the npm package
`@vladmandic/face-api` ships as `tiny_face_detector_model.bin`: a 3x3 convolution ('valid'
padding, 3 -> 16 channels), then five depthwise-separable 3x3 convolutions (16 -> 32 -> ... -> 512),
each followed by a leaky ReLU (slope 0.1) and a 2x2 max pool (stride 2 for the first five layers,
stride 1 after the last), then a 1x1 convolution giving 5 numbers (tx, ty, tw, th, confidence) for
each of 5 anchor boxes in each cell of a (size / 32)-square grid. inference/tinyface.py
decodes that output into boxes; prediction runs this network's ONNX export
(`python3 -m tools.convert --format faceapi-tinyface`, docs/convert.md), so PyTorch serves the
conversion and the tests only.
"""
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

# Anchor sizes in grid cells (width, height), face-api's BOX_ANCHORS, and its mean colour (0-255 RGB).
ANCHORS = ((1.603231, 2.094468), (6.041143, 7.080126), (2.882459, 3.518061),
           (4.266906, 5.178857), (9.041765, 10.66308))
MEAN_RGB = (117.001, 114.697, 97.404)
CHANNELS = (16, 32, 64, 128, 256, 512)


def leaky(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.1)


class SeparableConv(nn.Module):
    """3x3 depthwise (no bias) then 1x1 pointwise with bias, 'same' padding; face-api's layout."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class TinyFaceNet(nn.Module):
    """(B, 3, S, S) normalised RGB, S a multiple of 32 -> (B, 25, S / 32, S / 32) raw box encodings."""

    def __init__(self):
        super().__init__()
        layers = [("conv0", nn.Conv2d(3, CHANNELS[0], 3))]  # 'valid' padding, as face-api's first layer
        layers += [(f"conv{i}", SeparableConv(CHANNELS[i - 1], CHANNELS[i])) for i in range(1, len(CHANNELS))]
        self.layers = nn.ModuleDict(OrderedDict(layers))
        self.conv8 = nn.Conv2d(CHANNELS[-1], 5 * len(ANCHORS), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers.values()):
            x = leaky(layer(x))
            if i < len(CHANNELS) - 1:
                # TensorFlow's 'same' 2x2 pool of stride 2 pads the right and bottom: ceil mode.
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)
            else:
                x = F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float("-inf")), 2, 1)
        return self.conv8(x)


class PixelInput(nn.Module):
    """The network behind face-api's input handling: (B, S, S, 3) uint8 RGB pixels in, minus the
    mean colour, divided by 255, channels first. Its ONNX export takes the photo's pixels as they are."""

    def __init__(self, net: TinyFaceNet):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(MEAN_RGB).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float()
        return self.net((x - self.mean) / 255)
