"""The named output every model in this project returns."""
from typing import NamedTuple, Optional

import torch


class ModelOutput(NamedTuple):
    """What a forward pass returns.

    Attributes:
        logits: (B, C) class scores before softmax.
        features: (B, D) pooled backbone features (D = 512 for DAN, 1536 for EfficientNet-B3).
        heads: (B, N, 512) DAN's per-head vectors as they enter the fusion sum (after the
            log-softmax over heads when N > 1); None for models without heads.
        attention: (B, N, H, W) DAN's spatial-attention maps (one per head, on the trunk's
            H x W grid, not normalised); None for models without heads.
    """

    logits: torch.Tensor
    features: torch.Tensor
    heads: Optional[torch.Tensor] = None
    attention: Optional[torch.Tensor] = None
