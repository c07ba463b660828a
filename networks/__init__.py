"""Models by name: `build_model("dan", num_classes=7, num_heads=4)`.

What differs between models is data, one `ModelSpec` per registered name (as timm's `_cfg`):
the builder, its trunk (whose input size, normalisation and pretrained files it takes) or its
own input, where a backbone file loads and which of its keys it skips, the criterion, whether it
has spatial attention maps, DAN's options. The factory, the checkpoint loader, train.py, the
recognizer and the benchmarks read it; nothing outside networks/ asks a model's name or class.
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from torch import nn

from common.errors import UserError
from common.meta import ModelMeta

from .dan import DAN
from .efficientnet import EfficientNetB3
from .face_resnet import FaceResNetTrunk, fold_scales
from .fuse import fuse
from .losses import CECriterion, DANCriterion, total_loss
from .outputs import ModelOutput
from .resnet import FaceResNetClassifier, ResNet18
from .trunks import IMAGENET_224, TRUNKS, InputConfig


@dataclass(frozen=True)
class ModelSpec:
    """What the code outside networks/ needs to know of one model.

    Attributes:
        builder: the class; `builder(num_classes=C, **options)`.
        trunk: its trunk in networks.trunks (input size, normalisation, pretrained files), or None
            when it has none of them (then `input` and `pretrained` say).
        input: the input size and normalisation of a model without such a trunk.
        pretrained: backbone files looked for under the repository root, for a model without a trunk.
        backbone: the attribute a pretrained backbone file loads into (utils.checkpoint.load_backbone).
        skip: the prefix of the backbone file's keys that are not loaded (its own classifier).
        criterion: "dan" (cross-entropy + affinity + partition losses) or "ce".
        attention: the model gives spatial-attention maps (ModelOutput.attention).
        options: its constructor options beyond num_classes that train.py sets, with their defaults
            (DAN: num_heads, trunk).
        heads: its attention heads can run grouped (networks.fuse.group_heads) on a GPU.
    """

    builder: Callable[..., nn.Module]
    trunk: Optional[str] = None
    input: Optional[InputConfig] = None
    pretrained: Tuple[str, ...] = ()
    backbone: str = "trunk"
    skip: str = "fc."
    criterion: str = "ce"
    attention: bool = False
    options: Dict[str, object] = field(default_factory=dict)
    heads: bool = False


SPECS: Dict[str, ModelSpec] = {
    "dan": ModelSpec(DAN, trunk="resnet18", criterion="dan", attention=True, heads=True,
                     options={"num_heads": 4, "trunk": "resnet18"}),
    # timm's efficientnet_b3 was trained at 300 px but this project trains it at 224 like the others.
    "efficientnet_b3": ModelSpec(EfficientNetB3, input=IMAGENET_224, backbone="backbone", skip="classifier.",
                                 pretrained=("Data/efficientnet_b3.pth", "Data/efficientnet_b3_ra2-cf984f9c.pth")),
    "face_resnet": ModelSpec(FaceResNetClassifier, trunk="face_resnet"),
    "resnet18": ModelSpec(ResNet18, trunk="resnet18"),
}
MODELS: Dict[str, Callable[..., nn.Module]] = {name: spec.builder for name, spec in SPECS.items()}


def model_spec(name: str) -> ModelSpec:
    """The spec of a registered model; UserError for any other name."""
    if name not in SPECS:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(SPECS)}")
    return SPECS[name]


def spec_of(model: nn.Module) -> ModelSpec:
    """The spec of a built model (a subclass, as GroupedDAN is DAN's, has its base's)."""
    for spec in SPECS.values():
        if isinstance(model, spec.builder):
            return spec
    raise UserError(f"{type(model).__name__} is not one of this project's models ({', '.join(SPECS)})")


def loaded_backbone(module: nn.Module) -> None:
    """What a backbone needs once a pretrained file is in it: dlib's face trunk folds its scales
    into its convolutions (the form that fine-tunes stably: networks.face_resnet.fold_scales)."""
    if isinstance(module, FaceResNetTrunk):
        fold_scales(module, drop=False)


def model_trunk(name: str, trunk: Optional[str] = None) -> Optional[str]:
    """The trunk of model `name` (DAN's `trunk` argument when given), or None for EfficientNet."""
    return trunk or model_spec(name).trunk


def min_input_size(name: str, trunk: Optional[str] = None) -> int:
    """The smallest input side model `name` (with DAN's `trunk`) takes."""
    found = model_trunk(name, trunk)
    return TRUNKS[found].min_size if found else 32


def default_input(name: str, trunk: Optional[str] = None) -> InputConfig:
    """The input size and normalisation model `name` is trained with unless told otherwise."""
    found = model_trunk(name, trunk)
    return TRUNKS[found].input if found else model_spec(name).input


def model_meta(name: str, model_args: Dict[str, Any], classes: Sequence[str], img_size: Optional[int] = None,
               **optional) -> ModelMeta:
    """The ModelMeta of a new model of this registry: its input size and normalisation from the
    registry (`default_input`) unless `img_size` is given; `optional`: ModelMeta's other fields."""
    config = default_input(name, model_args.get("trunk"))
    return ModelMeta(name, dict(model_args), list(classes), int(img_size or config.img_size), list(config.mean),
                     list(config.std), **optional)


def build_model(name: str, num_classes: int, **options) -> nn.Module:
    """Build a model by name, randomly initialised (pretrained weights: utils.checkpoint.load_backbone).

    Args:
        name: one of MODELS.
        num_classes: C.
        **options: constructor arguments, e.g. num_heads and trunk for DAN.
    """
    return model_spec(name).builder(num_classes=num_classes, **options)


def build_criterion(name: str, model: nn.Module, label_smoothing: float = 0.0, lambda_aff: float = 1.0,
                    lambda_part: float = 1.0) -> nn.Module:
    """The model's criterion; it owns its terms' weights (`weight_dict`) and sums them (`total`)."""
    if model_spec(name).criterion == "dan":
        return DANCriterion(model.num_classes, model.num_features, label_smoothing, lambda_aff, lambda_part)
    return CECriterion(label_smoothing)


def default_pretrained(name: str, root: Path, trunk: Optional[str] = None) -> Optional[str]:
    """The conventional backbone file under Data/ for this model (and DAN trunk), if present."""
    found = model_trunk(name, trunk)
    for rel in TRUNKS[found].pretrained if found else model_spec(name).pretrained:
        if (root / rel).is_file():
            return str(root / rel)
    return None


__all__ = ["MODELS", "SPECS", "TRUNKS", "ModelOutput", "ModelSpec", "model_spec", "spec_of", "loaded_backbone",
           "build_model", "build_criterion", "default_input", "model_meta", "default_pretrained",
           "min_input_size", "model_trunk", "total_loss", "DAN", "EfficientNetB3", "FaceResNetClassifier",
           "ResNet18", "fuse"]
