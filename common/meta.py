"""What a model file says about itself (`ModelMeta`), read once and checked once, torch-free.

Every model file of this project stores its metadata as JSON under META_KEY: in a safetensors
header, in a `.pth` checkpoint's "meta" entry, in an exported ONNX file's metadata. Every reader
(utils.checkpoint for safetensors and `.pth`, inference.runtime for ONNX, utils.run_folder for a
run's best files) turns it into a `ModelMeta` here, so no other module reads a metadata dict by
key. Files that are not models carry a "kind": "trunk" (a converted backbone) or "detector" (the
converted Tiny Face Detector); `meta_kind` and `DetectorMeta` read those.
"""
import dataclasses
import inspect
import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

from common.errors import UserError

# The key under which every model file of this project holds its metadata (JSON): in a
# safetensors header and in an ONNX file's metadata (exported models, the face detector).
META_KEY = "fer"
MAX_CLASSES = 100_000
IMG_SIZES = (16, 2048)


def parse_meta(text: str, source) -> Any:
    """The JSON a model file stores under META_KEY; UserError when it is not valid JSON."""
    try:
        return json.loads(text)
    except (TypeError, ValueError, RecursionError):
        raise UserError(f"{source}: its metadata is not valid JSON; the file is damaged or was edited") from None


def _damaged(source, what: str) -> UserError:
    return UserError(f"{source}: its metadata {what}; the file is damaged or was edited")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class ModelMeta:
    """What a model file says about its model: enough to rebuild it and to prepare its input.

    Attributes:
        model: a `networks.MODELS` name; model_args: its constructor's arguments.
        classes: class names in the order of the outputs.
        img_size, mean, std: the square input side and its normalisation (x - mean) / std.
        grayscale: trained on grey faces (inference converts colour photos to grey); None: not recorded.
        converted_from: where converted weights came from (tools.convert); None for trained ones.
        epoch, val_accuracy: the epoch of these weights and its overall val accuracy (train.py's best files).
        selection: how train.py chose that epoch when not by val_accuracy: {"rule": --select's value,
            "score": the epoch's score by that rule} (--select source-mean: the mean of the per-source accuracies).
        temperature, calibration: the temperature fitted by test.py --calibrate, and on what split with
            what expected calibration error before and after ({"fitted_on", "ece_before", "ece_after"}).
        source_sha256, export_version: an ONNX export's source file and exporter version (inference/export.py).
        quantized: "int8" for an ONNX graph quantised by tools.export_onnx --int8.
        extra: any other key a file carries (kept, so rewriting a file loses nothing).
    """

    model: str
    model_args: Dict[str, Any]
    classes: List[str]
    img_size: int
    mean: List[float]
    std: List[float]
    grayscale: Optional[bool] = None
    converted_from: Optional[Dict[str, Any]] = None
    epoch: Optional[int] = None
    val_accuracy: Optional[float] = None
    selection: Optional[Dict[str, Any]] = None
    temperature: Optional[float] = None
    calibration: Optional[Dict[str, Any]] = None
    source_sha256: Optional[str] = None
    export_version: Optional[int] = None
    quantized: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    REQUIRED = ("model", "model_args", "classes", "img_size", "mean", "std")

    def __post_init__(self):  # copies: the caller's lists stay the caller's
        for name in ("classes", "mean", "std"):
            object.__setattr__(self, name, list(getattr(self, name)))

    @classmethod
    def from_dict(cls, meta: Any, source, models: Optional[Mapping[str, Callable]] = None) -> "ModelMeta":
        """The metadata a file holds, checked before anything is built from it (a model file is
        input like any other): every required key, then `check_values`; with `models` (the
        registry, `networks.MODELS`), a known model whose constructor takes these arguments.
        Raises UserError naming the missing keys or the first bad value."""
        if not isinstance(meta, dict):
            raise UserError(f"{source}: its metadata is not a JSON object ({type(meta).__name__}); the file is "
                            "damaged or not from this project")
        missing = [k for k in cls.REQUIRED if k not in meta]
        if missing:
            raise UserError(f"{source} lacks the metadata {missing}; it cannot be rebuilt from the file alone")
        cls.check_values(meta, source)
        if models is not None:
            cls._check_buildable(meta["model"], meta["model_args"], source, models)
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in meta.items() if k in known},
                   extra={k: v for k, v in meta.items() if k not in known})

    @classmethod
    def from_json(cls, text: str, source, models: Optional[Mapping[str, Callable]] = None) -> "ModelMeta":
        """`from_dict` of the JSON text a file stores under META_KEY."""
        return cls.from_dict(parse_meta(text, source), source, models)

    @staticmethod
    def check_values(meta: Dict[str, Any], source) -> None:
        """The values every reader uses: arguments as an object, a sane class count matching unique
        class names, an input size and normalisation in range, a finite positive temperature,
        grayscale true or false. Raises UserError naming the first bad value."""
        args, classes = meta.get("model_args"), meta.get("classes")
        if not isinstance(meta.get("model"), str):
            raise _damaged(source, "names no model")
        if not isinstance(args, dict):
            raise _damaged(source, "model_args is not an object")
        if not (isinstance(classes, list) and classes and all(isinstance(c, str) and c for c in classes)):
            raise _damaged(source, "classes is not a list of names")
        if len(set(classes)) != len(classes):
            raise _damaged(source, f"names a class twice ({sorted(c for c in set(classes) if classes.count(c) > 1)})")
        n = args.get("num_classes")
        if not (_is_int(n) and 1 <= n <= MAX_CLASSES and n == len(classes)):
            raise _damaged(source, f"num_classes {n!r} does not match its {len(classes)} class names")
        size = meta.get("img_size")
        if not (_is_int(size) and IMG_SIZES[0] <= size <= IMG_SIZES[1]):
            raise _damaged(source, f"img_size {size!r} is outside {IMG_SIZES[0]}-{IMG_SIZES[1]}")
        for key in ("mean", "std"):
            values = meta.get(key)
            if not (isinstance(values, list) and len(values) == 3 and all(_finite(v) for v in values)):
                raise _damaged(source, f"{key} is not three finite numbers")
        if any(v <= 0 for v in meta["std"]):
            raise _damaged(source, "std holds a value that is not positive")
        temperature = meta.get("temperature")
        if temperature is not None and not (_finite(temperature) and temperature > 0):
            raise _damaged(source, f"temperature {temperature!r} is not a finite positive number")
        grey = meta.get("grayscale")
        if grey is not None and not isinstance(grey, bool):
            raise _damaged(source, f"grayscale {grey!r} is not true or false")
        for key, kind, what in (("converted_from", dict, "a JSON object"), ("calibration", dict, "a JSON object"),
                                ("selection", dict, "a JSON object"),
                                ("quantized", str, "a string"), ("source_sha256", str, "a string"),
                                ("epoch", int, "an integer"), ("export_version", int, "an integer")):
            value = meta.get(key)
            if value is not None and not (isinstance(value, kind) and not isinstance(value, bool)):
                raise _damaged(source, f"{key} {value!r} is not {what}")
        accuracy = meta.get("val_accuracy")
        if accuracy is not None and not _finite(accuracy):
            raise _damaged(source, f"val_accuracy {accuracy!r} is not a finite number")

    @staticmethod
    def _check_buildable(model: str, args: Dict[str, Any], source, models: Mapping[str, Callable]) -> None:
        if model not in models:
            raise _damaged(source, f"names the model {model!r}, which is not one of {', '.join(models)}")
        unknown = sorted(set(args) - set(inspect.signature(models[model]).parameters))
        if unknown:
            raise _damaged(source, f"gives {model} the arguments {unknown}, which it does not take")

    def to_dict(self) -> Dict[str, Any]:
        """The JSON-ready dict files store: unset optional fields left out, `extra` merged in."""
        out = {k: v for k, v in asdict(self).items() if k != "extra" and (v is not None or k in self.REQUIRED)}
        return {**out, **self.extra}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def replace(self, **changes) -> "ModelMeta":
        """A copy with these fields changed (the dataclass is frozen)."""
        return dataclasses.replace(self, **changes)

    @property
    def grey_input(self) -> bool:
        """Whether the model's faces go in grey. Unless the file says, grey: a model trained on grey
        faces (FER2013, CK+) misreads colour ones badly, while a colour model loses little on grey.
        Converted published DAN weights (tools/convert.py) were trained on colour RAF-DB/AffectNet."""
        return self.grayscale if self.grayscale is not None else self.converted_from is None

    @property
    def softmax_temperature(self) -> float:
        """The temperature logits are divided by before the softmax (1 when not calibrated)."""
        return float(self.temperature) if self.temperature is not None else 1.0


def stored_json(meta: Union[ModelMeta, Dict[str, Any]]) -> str:
    """The JSON a file stores under META_KEY: a model's ModelMeta, or the plain dict of a file that
    is not a model (a converted trunk or face detector)."""
    return meta.to_json() if isinstance(meta, ModelMeta) else json.dumps(meta)


def meta_kind(text: str, source) -> str:
    """What a file's metadata describes: "model" (a `ModelMeta`), "trunk" (a converted backbone,
    tools.faceapi) or "detector" (the converted Tiny Face Detector)."""
    meta = parse_meta(text, source)
    kind = meta.get("kind", "model") if isinstance(meta, dict) else None
    if kind not in ("model", "trunk", "detector"):
        raise _damaged(source, f"has the kind {kind!r}, not model, trunk or detector")
    return kind


@dataclass(frozen=True)
class DetectorMeta:
    """The converted Tiny Face Detector's metadata (tools.faceapi.convert_tinyface).

    Attributes:
        anchors: (width, height) of each anchor box, in grid cells.
        extra: the rest (the detector's name, face-api's mean colour, where it was converted from).
    """

    anchors: Tuple[Tuple[float, float], ...]
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str, source) -> "DetectorMeta":
        meta = parse_meta(text, source)
        if not isinstance(meta, dict) or meta.get("kind") != "detector":
            raise _damaged(source, "is not a face detector's")
        anchors = meta.get("anchors")
        if not (isinstance(anchors, list) and anchors and all(
                isinstance(a, list) and len(a) == 2 and all(_finite(v) and v > 0 for v in a) for a in anchors)):
            raise _damaged(source, "anchors is not a list of (width, height) pairs")
        return cls(tuple((float(w), float(h)) for w, h in anchors),
                   {k: v for k, v in meta.items() if k != "anchors"})

