"""A model file's metadata as read from the file, checked: torch-free, so that the ONNX Runtime
path checks what an exported model says as utils.checkpoint checks a .safetensors or .pth file."""
import json
import math
from typing import Any, Dict

from utils.errors import UserError

# The key under which every model file of this project holds its metadata (JSON): in a
# safetensors header and in an ONNX file's metadata (exported models, the face detector).
META_KEY = "fer"
MAX_CLASSES = 100_000
IMG_SIZES = (16, 2048)

def parse_meta(text: str, source) -> Dict[str, Any]:
    """The JSON metadata a model file stores; UserError when it is not valid JSON."""
    try:
        return json.loads(text)
    except (TypeError, ValueError, RecursionError):
        raise UserError(f"{source}: its metadata is not valid JSON; the file is damaged or was edited") from None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_meta_values(meta: Dict[str, Any], source) -> None:
    """The metadata values every reader of a model file uses, checked (torch-free, so the ONNX path
    checks them too): arguments as an object, a sane class count matching unique class names, an
    input size and normalisation in range, a finite positive temperature, grayscale true or false.
    Raises UserError naming the first bad value."""
    def bad(what: str) -> UserError:
        return UserError(f"{source}: its metadata {what}; the file is damaged or was edited")

    if not isinstance(meta, dict):
        raise bad(f"is not a JSON object ({type(meta).__name__})")
    args, classes = meta.get("model_args"), meta.get("classes")
    if not isinstance(args, dict):
        raise bad("model_args is not an object")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) and c for c in classes)):
        raise bad("classes is not a list of names")
    if len(set(classes)) != len(classes):
        raise bad(f"names a class twice ({sorted(c for c in set(classes) if classes.count(c) > 1)})")
    n = args.get("num_classes")
    if not (_is_int(n) and 1 <= n <= MAX_CLASSES and n == len(classes)):
        raise bad(f"num_classes {n!r} does not match its {len(classes)} class names")
    size = meta.get("img_size")
    if not (_is_int(size) and IMG_SIZES[0] <= size <= IMG_SIZES[1]):
        raise bad(f"img_size {size!r} is outside {IMG_SIZES[0]}-{IMG_SIZES[1]}")
    for key in ("mean", "std"):
        values = meta.get(key)
        if not (isinstance(values, list) and len(values) == 3 and all(_finite(v) for v in values)):
            raise bad(f"{key} is not three finite numbers")
    if any(v <= 0 for v in meta["std"]):
        raise bad("std holds a value that is not positive")
    temperature = meta.get("temperature")
    if temperature is not None and not (_finite(temperature) and temperature > 0):
        raise bad(f"temperature {temperature!r} is not a finite positive number")
    grey = meta.get("grayscale")
    if grey is not None and not isinstance(grey, bool):
        raise bad(f"grayscale {grey!r} is not true or false")
