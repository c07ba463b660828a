"""Self-describing checkpoints, written atomically and read without unpickling code.

Every model file carries its `ModelMeta` (below): what rebuilds the model and prepares its input.
A training checkpoint (`.pth`) is a plain dict of tensors, numbers, strings and lists:

    {"format": "fer-checkpoint", "version": 1,
     "meta": {"model": "dan", "model_args": {...}, "classes": [...], "img_size": 224,
              "mean": [...], "std": [...], and when known "grayscale", "converted_from",
              "epoch", "val_accuracy", "temperature"},
     "state_dict": ..., "criterion": ..., "optimizer": ..., "scheduler": ..., "scaler": ...,
     "epoch": int, "best_metric": float, "best_epoch": int, "history": [...], "args": {...},
     "metrics": {...}}                   (metrics: the epoch's line of log.jsonl)

A shipped model (`.safetensors`) holds the weights (fp16 or fp32) and the same "meta" as
JSON in the safetensors header. Both are loaded by `load_model`.

Every file is written by `atomic_write`: a kill at any instant leaves the old file or the new
one, and at worst a `.<name>.<random>.tmp` that `remove_stale_temps` deletes on the next start.
`fault_point` marks the places the fault-injection tests kill the process at.
"""
import errno
import glob
import inspect
import json
import os
import pickle
import pickletools
import signal
import tempfile
import warnings
import zipfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from networks import MODELS, build_model, default_input, loaded_backbone, spec_of
from utils.errors import UserError, first_line
from utils.meta import META_KEY, check_meta_values, parse_meta

FORMAT = "fer-checkpoint"


@dataclass
class ModelMeta:
    """What a model file says about its model: enough to rebuild it and to prepare its input.

    Attributes:
        model: a `networks.MODELS` name; model_args: its constructor's arguments.
        classes: class names in the order of the outputs.
        img_size, mean, std: the square input side and its normalisation (x - mean) / std.
        grayscale: trained on grey faces (inference converts colour photos to grey); None: not recorded.
        converted_from: where converted weights came from (utils.convert); None for trained ones.
        epoch, val_accuracy: the epoch of these weights and its selection score (train.py's best files).
        temperature: the calibration temperature fitted by test.py --calibrate.
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
    temperature: Optional[float] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    REQUIRED = ("model", "model_args", "classes", "img_size", "mean", "std")

    @classmethod
    def for_model(cls, model: str, model_args: Dict[str, Any], classes, img_size: Optional[int] = None,
                  **optional) -> "ModelMeta":
        """The metadata of a `networks` model, its input size and normalisation taken from the model
        registry (`networks.default_input`) unless `img_size` is given."""
        config = default_input(model, model_args.get("trunk"))
        return cls(model, dict(model_args), list(classes), int(img_size or config.img_size), list(config.mean),
                   list(config.std), **optional)

    @classmethod
    def from_dict(cls, meta: Dict[str, Any], source) -> "ModelMeta":
        """Raises UserError naming the missing keys, or the first value that is not what it must be
        (a model file is input like any other: `validate_meta`)."""
        if not isinstance(meta, dict):
            raise UserError(f"{source}: its metadata is not a JSON object ({type(meta).__name__}); the file is "
                            "damaged or not from this project")
        missing = [k for k in cls.REQUIRED if k not in meta]
        if missing:
            raise UserError(f"{source} lacks the metadata {missing}; it cannot be rebuilt from the file alone")
        validate_meta(meta, source)
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in meta.items() if k in known},
                   extra={k: v for k, v in meta.items() if k not in known})

    def to_dict(self) -> Dict[str, Any]:
        """The JSON-ready dict files store: unset optional fields left out, `extra` merged in."""
        out = {k: v for k, v in asdict(self).items() if k != "extra" and (v is not None or k in self.REQUIRED)}
        return {**out, **self.extra}


def validate_meta(meta: Dict[str, Any], source) -> None:
    """Check a file's metadata before anything is built from it: a known model whose constructor
    takes these arguments, then the values every reader uses (utils.meta.check_meta_values).
    Raises UserError naming the value."""
    model, args = meta["model"], meta["model_args"]
    if model not in MODELS:
        raise UserError(f"{source}: its metadata names the model {model!r}, which is not one of {', '.join(MODELS)}; "
                        "the file is damaged or was edited")
    if isinstance(args, dict):
        unknown = sorted(set(args) - set(inspect.signature(MODELS[model]).parameters))
        if unknown:
            raise UserError(f"{source}: its metadata gives {model} the arguments {unknown}, which it does not "
                            "take; the file is damaged or was edited")
    check_meta_values(meta, source)


def training_checkpoint(meta: ModelMeta, state_dict: Dict[str, torch.Tensor], **training) -> Dict[str, Any]:
    """The `.pth` dict of this project: format, version, metadata, weights and any training state
    (criterion, optimizer, scheduler, scaler, epoch, best_metric, best_epoch, history, args, metrics)."""
    return {"format": FORMAT, "version": 1, "meta": meta.to_dict(), "state_dict": state_dict, **training}
FAULT_ENV = "FER_FAULT_KILL_AT"
_fault_hits: Dict[str, int] = {}
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def fault_point(label: str) -> None:
    """Die here by SIGKILL, as `kill -9` or a power cut would, when the environment says
    FER_FAULT_KILL_AT=<label> (or <label>@N: at its N-th pass); otherwise do nothing.

    Labels: `write:<file name>` inside `atomic_write` (temporary file written, not yet renamed),
    and train.py's `saved:<file name>` after each file of an epoch. Used by tests/test_faults_train.py.
    """
    wanted = os.environ.get(FAULT_ENV)
    if not wanted:
        return
    name, _, nth = wanted.partition("@")
    if name == label:
        _fault_hits[label] = _fault_hits.get(label, 0) + 1
        if _fault_hits[label] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path) then rename over `path`, so a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        try:
            write(tmp)
        except (RuntimeError, SafetensorError) as err:  # torch.save's and safetensors' words for a full disk
            raise OSError(errno.EIO, f"the write failed ({first_line(err)}); is the disk full?") from None
        # As open() would create it, not mkstemp's owner-only 0600; after writing, since a writer
        # may replace the file (safetensors' save_file does) instead of writing into it.
        os.chmod(tmp, 0o666 & ~_UMASK)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        fault_point(f"write:{path.name}")
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself survives a power cut
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temps(folder: Path, names: Iterable[str]) -> List[Path]:
    """Delete the temporary files a killed `atomic_write` of each of `names` left in `folder`
    (`.<name>.*.tmp`); returns them."""
    removed = []
    for name in names:
        for tmp in Path(folder).glob(f".{glob.escape(name)}.*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def save_checkpoint(checkpoint: Dict[str, Any], path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def load_checkpoint(path) -> Dict[str, Any]:
    """Read a training checkpoint with `weights_only=True`.

    Raises:
        UserError: the file is missing, not a checkpoint of this project, or needs unpickling.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found")
    if path.suffix == ".onnx":
        raise UserError(f"{path} is an ONNX export, which only predict.py runs; give the .pth or .safetensors "
                        "it was exported from")
    try:
        with warnings.catch_warnings():  # refused files are explained below, in one line
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"{path} cannot be loaded as a checkpoint: {why_unloadable(path, err)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a checkpoint written by this project's train.py; "
                        "convert published weights with python3 -m utils.convert")
    return ckpt


def why_unloadable(path: Path, err: Exception) -> str:
    """Why torch.load(path, weights_only=True) failed with `err`, in a clause for people; read
    from the file's first bytes and its pickle's names, never by running it."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return "the file is empty (an interrupted copy or download?)"
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        return "it is a web page, not weights: a download link served its page instead of the file"
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(path):
            return ("it is cut short or damaged (torch.save writes a zip archive and this one has no end record): "
                    "an interrupted copy or download? copy it again")
    elif not head.startswith(b"\x80"):
        return "it is not a file torch.save writes (neither its zip archive nor a pickle)"
    names = _pickle_globals(path, head)
    if names:
        return (f"it asks for {', '.join(names)}, which are refused: loading them means unpickling code "
                "from the file")
    if isinstance(err, pickle.UnpicklingError):
        return "it holds objects that weights_only loading refuses (unpickling them could run code)"
    return first_line(err)


def _pickle_globals(path: Path, head: bytes) -> List[str]:
    """The Python objects a torch file's pickle asks for beyond what weights_only allows, read
    with pickletools (nothing is run); [] when it cannot tell."""
    try:
        if head.startswith(b"PK"):
            return torch.serialization.get_unsafe_globals_in_checkpoint(path)
        names, strings = [], []
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if op.name == "GLOBAL":
                    names.append(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(".".join(strings[-2:]))
                elif isinstance(arg, str):
                    strings.append(arg)
        return [n for n in dict.fromkeys(names) if not n.startswith(("torch.", "collections.OrderedDict"))]
    except Exception:
        return []


def check_meta(meta: Dict[str, Any], source) -> Dict[str, Any]:
    """`meta` as it is, once ModelMeta has checked it holds what rebuilds the model."""
    ModelMeta.from_dict(meta, source)
    return meta


def save_safetensors(state_dict: Dict[str, torch.Tensor], meta: Dict[str, Any], path: Path,
                     half: bool = True) -> None:
    """Write weights (floating tensors as fp16 when `half`) and metadata as one safetensors file."""
    tensors = {}
    for k, v in state_dict.items():
        v = v.detach().cpu()
        if half and v.is_floating_point() and "running_var" not in k:
            v = v.half()
        tensors[k] = v.contiguous()
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={META_KEY: json.dumps(meta)}))


def update_meta(path, meta: Dict[str, Any]) -> None:
    """Rewrite a model file's metadata (atomically), its weights unchanged."""
    path = Path(path)
    if path.suffix == ".safetensors":
        tensors, _ = read_safetensors(path)
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={META_KEY: json.dumps(meta)}))
    else:
        ckpt = load_checkpoint(path)
        ckpt["meta"] = meta
        save_checkpoint(ckpt, path)


def read_safetensors(path) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """(tensors, header metadata) of a .safetensors file; UserError if it cannot be read."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except Exception as err:
        raise UserError(f"{path} is not a readable safetensors file ({first_line(err)})") from None


def read_weights(path) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """(state_dict in fp32, metadata) from a .safetensors model or a .pth checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found")
    if path.suffix == ".safetensors":
        state, header = read_safetensors(path)
        if META_KEY not in header:
            raise UserError(f"{path} has no project metadata; convert it with python3 -m utils.convert")
        meta = parse_meta(header[META_KEY], path)
    else:
        ckpt = load_checkpoint(path)
        state, meta = ckpt["state_dict"], ckpt["meta"]
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return state, check_meta(meta, path)


def short_keys(keys, limit: int = 6) -> str:
    """The first `limit` names, comma-separated, and how many more; "none" for none."""
    keys = list(keys)
    if not keys:
        return "none"
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_keys(own: Dict[str, torch.Tensor], state: Dict[str, torch.Tensor], source, what: str = "the model",
               hint: str = "") -> None:
    """The one key check: raises a UserError naming the missing keys, the unexpected keys and the
    keys whose shapes differ (with both shapes) when `state` does not fit `own` exactly."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k} {tuple(state[k].shape)} where {tuple(own[k].shape)} is expected"
             for k in sorted(set(own) & set(state)) if own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        raise UserError(f"{source} does not fit {what}: missing keys {short_keys(missing)}; unexpected keys "
                        f"{short_keys(unexpected)}; wrong shapes {short_keys(wrong)}{hint}")


def read_state_dict(path, own_file_hint: str) -> Dict[str, torch.Tensor]:
    """The one reader of weights from outside this project: a `.pth` read with
    torch.load(weights_only=True) (nothing in it runs), bare or under `model_state_dict` or
    `state_dict`, a DataParallel `module.` prefix removed; or a `.safetensors` trunk.

    A model file of this project is refused with `own_file_hint` (what to do with it instead).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found")
    if path.suffix == ".safetensors":
        state, header = read_safetensors(path)
        if META_KEY in header and json.loads(header[META_KEY]).get("kind") != "trunk":
            raise UserError(f"{path} is a model of this project: {own_file_hint}")
        return state
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"{path} was refused: torch.load(weights_only=True), which loads tensors and plain "
                        f"containers and never runs code from the file, cannot read it ({why_unloadable(path, err)}). "
                        "Ask its publisher for a plain state dict, or re-save its tensors yourself only if you "
                        "trust it") from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        raise UserError(f"{path} is a checkpoint of this project: {own_file_hint}")
    if isinstance(obj, dict):
        for key in ("model_state_dict", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} does not hold a state dict of tensors (neither a bare one nor one under "
                        "'model_state_dict' or 'state_dict')")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_backbone(model: nn.Module, path) -> None:
    """Load backbone weights into `model` from `path` (train.py --pretrained); the rest stays random.

    DAN and ResNet18 take a torchvision ResNet-18 state dict (for example the MS-Celeb-1M
    `resnet18_msceleb.pth`, whose `state_dict` uses torchvision's names); its `fc.*` is ignored.
    DAN with the face_resnet trunk, and FaceResNetClassifier, take the trunk written by
    `python3 -m utils.convert --format faceapi-recognition`; its embedding layer `fc.*` is ignored,
    and its scales are folded into the convolutions (the form that fine-tunes stably: fold_scales).
    EfficientNet-B3 takes a timm `efficientnet_b3` state dict; its `classifier.*` is ignored.

    Raises:
        UserError: naming the missing and unexpected keys, or mismatched shapes.
    """
    state = read_state_dict(path, "start from it with train.py --init, which takes a whole model")
    spec = spec_of(model)
    target, skip = getattr(model, spec.backbone), spec.skip
    state = {k: v for k, v in state.items() if not k.startswith(skip)}
    own = {k: v for k, v in target.state_dict().items() if not k.startswith(skip)}
    check_keys(own, state, path, f"the {type(model).__name__} backbone")
    target.load_state_dict(state, strict=False)
    loaded_backbone(target)


def load_state_strict(model: nn.Module, state: Dict[str, torch.Tensor], source) -> None:
    """load_state_dict after `check_keys`: every key present, none unexpected, every shape right."""
    check_keys(model.state_dict(), state, source)
    model.load_state_dict(state)


def load_model(path, device="cpu") -> Tuple[nn.Module, Dict[str, Any]]:
    """Rebuild a model from a checkpoint or shipped model file alone.

    Returns:
        (model in eval mode on `device`, metadata dict with model, model_args, classes,
        img_size, mean, std).
    """
    state, meta = read_weights(path)
    model = build_model(meta["model"], **meta["model_args"])
    load_state_strict(model, state, path)
    return model.to(device).eval(), meta
