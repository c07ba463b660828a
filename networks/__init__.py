"""Models by name: `build_model("dan", num_classes=7, num_heads=4)`."""
from pathlib import Path
from typing import Callable, Dict, Optional

import torch
from torch import nn

from utils.errors import UserError

from .dan import DAN
from .efficientnet import EfficientNetB3
from .face_resnet import FaceResNetTrunk, fold_scales
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


def build_model(name: str, num_classes: int, pretrained: Optional[str] = None, **options) -> nn.Module:
    """Build a model by name, optionally loading a backbone from a file.

    Args:
        name: one of MODELS.
        num_classes: C.
        pretrained: path to backbone weights (see `load_backbone`), or None for random init.
        **options: constructor arguments, e.g. num_heads for DAN.
    """
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    model = MODELS[name](num_classes=num_classes, **options)
    if pretrained:
        load_backbone(model, pretrained)
    return model


def build_criterion(name: str, model: nn.Module, label_smoothing: float = 0.0) -> nn.Module:
    if name == "dan":
        return DANCriterion(model.num_classes, model.num_features, label_smoothing)
    return CECriterion(label_smoothing)


def _read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise UserError(f"pretrained weights {path} not found")
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # an unpicklable or non-weights file
        raise UserError(f"cannot read {path} as plain weights ({str(err).splitlines()[0]}); "
                        "only files loadable with torch.load(weights_only=True) are accepted") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_backbone(model: nn.Module, path: str) -> None:
    """Load backbone weights into `model` from `path`; the classifier stays random.

    DAN and ResNet18 take a torchvision ResNet-18 state dict (for example the MS-Celeb-1M
    `resnet18_msceleb.pth`, whose `state_dict` uses torchvision's names); its `fc.*` is ignored.
    DAN with the face_resnet trunk, and FaceResNetClassifier, take the trunk written by
    `python3 -m utils.convert --format faceapi-recognition`; its embedding layer `fc.*` is ignored.
    EfficientNet-B3 takes a timm `efficientnet_b3` state dict; its `classifier.*` is ignored.

    Raises:
        UserError: naming the missing and unexpected keys, or mismatched shapes.
    """
    state = _read_state_dict(path)
    if isinstance(model, EfficientNetB3):
        target, prefix, skip = model.backbone, "", "classifier."
    else:
        target, prefix, skip = model.trunk, "", "fc."
    state = {prefix + k: v for k, v in state.items() if not k.startswith(skip)}
    own = target.state_dict()
    missing = sorted(k for k in own if k not in state and not k.startswith(skip))
    unexpected = sorted(k for k in state if k not in own)
    if missing or unexpected:
        raise UserError(f"{path} does not fit the {type(model).__name__} backbone: "
                        f"missing keys {short_keys(missing)}, unexpected keys {short_keys(unexpected)}")
    wrong = [k for k, v in state.items() if v.shape != own[k].shape]
    if wrong:
        raise UserError(f"{path}: shape mismatch for {short_keys(wrong)}")
    target.load_state_dict(state, strict=False)
    if isinstance(target, FaceResNetTrunk):
        fold_scales(target, drop=False)  # the parametrisation that fine-tunes stably (see fold_scales)


def short_keys(keys, limit: int = 6) -> str:
    """The first `limit` names, comma-separated, and how many more; "none" for none."""
    if not keys:
        return "none"
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def default_pretrained(name: str, root: Path, trunk: Optional[str] = None) -> Optional[str]:
    """The conventional backbone file under Data/ for this model (and DAN trunk), if present."""
    found = model_trunk(name, trunk)
    for rel in TRUNKS[found].pretrained if found else OTHER_PRETRAINED.get(name, ()):
        if (root / rel).is_file():
            return str(root / rel)
    return None


__all__ = ["MODELS", "TRUNKS", "ModelOutput", "build_model", "build_criterion", "load_backbone",
           "default_input", "default_pretrained", "min_input_size", "model_trunk", "total_loss", "DAN", "EfficientNetB3",
           "FaceResNetClassifier", "ResNet18", "fuse"]
