"""Plain ResNet-18 classifier: the baseline of DAN's ablation (same trunk, no attention heads)."""
import torch
from torch import nn

from .dan import resnet18_trunk
from .outputs import ModelOutput


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 7):
        super().__init__()
        self.num_classes = num_classes
        self.trunk = resnet18_trunk()
        self.num_features = self.trunk.layer4[-1].bn2.num_features
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def forward_head(self, fmap: torch.Tensor) -> ModelOutput:
        features = fmap.mean(dim=(2, 3))  # (B, 512)
        return ModelOutput(self.fc(features), features)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        return self.forward_head(self.forward_features(x))
