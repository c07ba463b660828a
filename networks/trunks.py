"""The trunks DAN and the plain classifiers are built on, with each one's input as data.

`TRUNKS[name]` says how to build the trunk, how many channels its feature map has (DAN's heads
take theirs from it), the input size and normalisation it was pretrained with (the defaults of
`train.py --img-size` and of the checkpoint's metadata), and the files `--pretrained auto` looks
for under Data/.
"""
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Tuple

from torch import nn
from torchvision.models import resnet18

from data.transforms import IMAGENET_MEAN, IMAGENET_STD

from .face_resnet import FACE_RESNET_MEAN, FACE_RESNET_STD, INPUT_SIZE, MIN_INPUT_SIZE, FaceResNetTrunk

# ResNet-18's children up to layer4, in order: the trunk's module names (torchvision's).
TRUNK_LAYERS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def resnet18_trunk() -> nn.Sequential:
    """torchvision's ResNet-18 without average pool and fc; keys keep torchvision's names."""
    net = resnet18(weights=None)
    return nn.Sequential(OrderedDict((name, getattr(net, name)) for name in TRUNK_LAYERS))


@dataclass(frozen=True)
class InputConfig:
    """What a model expects: a square RGB input of `img_size`, normalised (x - mean) / std."""

    img_size: int
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]


@dataclass(frozen=True)
class Trunk:
    build: Callable[[], nn.Module]
    channels: int  # of the feature map
    input: InputConfig
    pretrained: Tuple[str, ...]  # files under the repo root that --pretrained auto tries, in order
    min_size: int = 32  # the smallest input side it takes


IMAGENET_224 = InputConfig(224, IMAGENET_MEAN, IMAGENET_STD)
TRUNKS = {
    # torchvision's ResNet-18 (11.2M parameters): a 7x7 map at 224 px
    "resnet18": Trunk(resnet18_trunk, 512, IMAGENET_224, ("Data/resnet18_msceleb.pth", "Data/resnet18.pth")),
    # dlib's face-recognition ResNet (5.6M parameters): a 2x2 map at 150 px
    "face_resnet": Trunk(FaceResNetTrunk, FaceResNetTrunk.out_channels,
                         InputConfig(INPUT_SIZE, FACE_RESNET_MEAN, FACE_RESNET_STD),
                         ("Data/face_resnet_faceapi.safetensors",), MIN_INPUT_SIZE),
}
