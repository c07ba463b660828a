"""EfficientNet-B3 (Tan and Le, 2019) from timm, behind the project's model interface."""
import timm
import torch
from torch import nn

from .outputs import ModelOutput


class EfficientNetB3(nn.Module):
    """timm's `efficientnet_b3` with a C-class classifier.

    Args:
        num_classes: number of expression classes C.
        drop_rate: dropout before the classifier.
    """

    def __init__(self, num_classes: int = 7, drop_rate: float = 0.3):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = timm.create_model("efficientnet_b3", pretrained=False, num_classes=num_classes,
                                          drop_rate=drop_rate)
        self.num_features = self.backbone.num_features  # 1536

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, 1536, S/32, S/32)."""
        return self.backbone.forward_features(x)

    def forward_head(self, fmap: torch.Tensor) -> ModelOutput:
        features = self.backbone.forward_head(fmap, pre_logits=True)  # (B, 1536)
        return ModelOutput(self.backbone.get_classifier()(features), features)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        return self.forward_head(self.forward_features(x))
