"""Models by name: `build_model("dan", num_classes=7, num_heads=4)`."""
from pathlib import Path
from typing import Callable, Dict, Optional

from torch import nn

from utils.errors import UserError

from .dan import DAN
from .efficientnet import EfficientNetB3
from .fuse import fuse
from .losses import CECriterion, DANCriterion, total_loss
from .outputs import ModelOutput
from .resnet import FaceResNetClassifier, ResNet18
from .trunks import IMAGENET_224, TRUNKS, InputConfig

MODELS: Dict[str, Callable[..., nn.Module]] = {
    "dan": DAN,
    "efficientnet_b3": EfficientNetB3,
    "face_resnet": FaceResNetClassifier,
    "resnet18": ResNet18,
}
# The trunk of each model that has one of networks.trunks (DAN's is its `trunk` argument).
MODEL_TRUNKS = {"dan": "resnet18", "resnet18": "resnet18", "face_resnet": "face_resnet"}
# timm's efficientnet_b3 was trained at 300 px but this project trains it at 224 like the others.
OTHER_INPUTS = {"efficientnet_b3": IMAGENET_224}
# Where a backbone file is looked for when --pretrained is not given (relative to the repo root).
OTHER_PRETRAINED = {"efficientnet_b3": ("Data/efficientnet_b3.pth", "Data/efficientnet_b3_ra2-cf984f9c.pth")}


def model_trunk(name: str, trunk: Optional[str] = None) -> Optional[str]:
    """The trunk of model `name` (DAN's `trunk` argument when given), or None for EfficientNet."""
    return trunk or MODEL_TRUNKS.get(name)


def min_input_size(name: str, trunk: Optional[str] = None) -> int:
    """The smallest input side model `name` (with DAN's `trunk`) takes."""
    found = model_trunk(name, trunk)
    return TRUNKS[found].min_size if found else 32


def default_input(name: str, trunk: Optional[str] = None) -> InputConfig:
    """The input size and normalisation model `name` is trained with unless told otherwise."""
    found = model_trunk(name, trunk)
    return TRUNKS[found].input if found else OTHER_INPUTS[name]


def build_model(name: str, num_classes: int, **options) -> nn.Module:
    """Build a model by name, randomly initialised (pretrained weights: utils.checkpoint.load_backbone).

    Args:
        name: one of MODELS.
        num_classes: C.
        **options: constructor arguments, e.g. num_heads and trunk for DAN.
    """
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name](num_classes=num_classes, **options)


def build_criterion(name: str, model: nn.Module, label_smoothing: float = 0.0, lambda_aff: float = 1.0,
                    lambda_part: float = 1.0) -> nn.Module:
    """The model's criterion; it owns its terms' weights (`weight_dict`) and sums them (`total`)."""
    if name == "dan":
        return DANCriterion(model.num_classes, model.num_features, label_smoothing, lambda_aff, lambda_part)
    return CECriterion(label_smoothing)


def default_pretrained(name: str, root: Path, trunk: Optional[str] = None) -> Optional[str]:
    """The conventional backbone file under Data/ for this model (and DAN trunk), if present."""
    found = model_trunk(name, trunk)
    for rel in TRUNKS[found].pretrained if found else OTHER_PRETRAINED.get(name, ()):
        if (root / rel).is_file():
            return str(root / rel)
    return None


__all__ = ["MODELS", "TRUNKS", "ModelOutput", "build_model", "build_criterion", "default_input",
           "default_pretrained", "min_input_size", "model_trunk", "total_loss", "DAN", "EfficientNetB3",
           "FaceResNetClassifier", "ResNet18", "fuse"]
