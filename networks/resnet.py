"""Plain classifiers: a trunk, global average pooling and one linear layer.

The baselines of DAN's ablation (the same trunk without the attention heads): `ResNet18` for
the paper's trunk, `FaceResNetClassifier` for dlib's face-recognition trunk.
"""
import torch
from torch import nn

from .dan import build_trunk
from .outputs import ModelOutput
from .trunks import TRUNKS


class PlainClassifier(nn.Module):
    trunk_name = "resnet18"

    def __init__(self, num_classes: int = 7):
        super().__init__()
        self.num_classes = num_classes
        self.trunk = build_trunk(self.trunk_name)
        self.num_features = TRUNKS[self.trunk_name].channels
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def forward_head(self, fmap: torch.Tensor) -> ModelOutput:
        features = fmap.mean(dim=(2, 3))  # (B, C)
        return ModelOutput(self.fc(features), features)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        return self.forward_head(self.forward_features(x))


class ResNet18(PlainClassifier):
    trunk_name = "resnet18"


class FaceResNetClassifier(PlainClassifier):
    trunk_name = "face_resnet"
