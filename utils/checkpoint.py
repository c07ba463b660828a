"""Self-describing checkpoints, written atomically and read without unpickling code.

Every model file carries its `ModelMeta` (common/meta.py): what rebuilds the model and prepares its
input; in memory a checkpoint's "meta" is that ModelMeta, in the file its plain dict.
A training checkpoint (`.pth`) is a plain dict of tensors, numbers, strings and lists:

    {"format": "fer-checkpoint", "version": 1,
     "meta": {"model": "dan", "model_args": {...}, "classes": [...], "img_size": 224,
              "mean": [...], "std": [...], and ModelMeta's optional fields when set},
     "state_dict": ..., "criterion": ..., "optimizer": ..., "scheduler": ..., "scaler": ...,
     "epoch": int, "best_metric": float, "best_epoch": int, "history": [...], "args": {...},
     "metrics": {...}}                   (metrics: the epoch's line of log.jsonl)

A shipped model (`.safetensors`) holds the weights (fp16 or fp32) and the same "meta" as
JSON in the safetensors header. Both are loaded by `load_model`.

Every file is written by `common.files.atomic_write`: a kill at any instant leaves the old file or
the new one.
"""
import pickle
import pickletools
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

from common.errors import UserError, first_line
from common.files import atomic_write
from common.meta import META_KEY, ModelMeta, meta_kind, stored_json
from networks import MODELS, build_model, loaded_backbone, spec_of

FORMAT = "fer-checkpoint"


def training_checkpoint(meta: ModelMeta, state_dict: Dict[str, torch.Tensor], **training) -> Dict[str, Any]:
    """The `.pth` dict of this project: format, version, metadata, weights and any training state
    (criterion, optimizer, scheduler, scaler, epoch, best_metric, best_epoch, history, args, metrics).
    In memory "meta" is a ModelMeta; `save_checkpoint` stores it as the plain dict of the file format."""
    return {"format": FORMAT, "version": 1, "meta": meta, "state_dict": state_dict, **training}


def save_checkpoint(checkpoint: Dict[str, Any], path: Path) -> None:
    """Write a `.pth` (atomically); its ModelMeta as the plain dict torch.load(weights_only) reads."""
    meta = checkpoint.get("meta")
    if isinstance(meta, ModelMeta):
        checkpoint = {**checkpoint, "meta": meta.to_dict()}
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
                        "convert published weights with python3 -m tools.convert")
    return {**ckpt, "meta": ModelMeta.from_dict(ckpt.get("meta"), path, MODELS)}


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


def save_safetensors(state_dict: Dict[str, torch.Tensor], meta: Union[ModelMeta, Dict[str, Any]], path: Path,
                     half: bool = True) -> None:
    """Write weights (floating tensors as fp16 when `half`) and metadata as one safetensors file
    (a model's ModelMeta, or the plain dict of a converted trunk)."""
    tensors = {}
    for k, v in state_dict.items():
        v = v.detach().cpu()
        if half and v.is_floating_point() and "running_var" not in k:
            v = v.half()
        tensors[k] = v.contiguous()
    _write_safetensors(tensors, meta, path)


def _write_safetensors(tensors: Dict[str, torch.Tensor], meta, path: Path) -> None:
    """The file's bytes are made in memory (safetensors' `save`) and written into atomic_write's own
    temporary file: `save_file` writes through a `.tmpXXXXXX` of its own beside the target, which a
    kill at the wrong instant left behind in run folders (tests/test_faults_train.py)."""
    text = stored_json(meta)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(save(tensors, metadata={META_KEY: text})),
                 disk_errors=(RuntimeError, SafetensorError))


def update_meta(path, meta: ModelMeta) -> None:
    """Rewrite a model file's metadata (atomically), its weights unchanged."""
    path = Path(path)
    if path.suffix == ".safetensors":
        tensors, _ = read_safetensors(path)
        _write_safetensors(tensors, meta, path)
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


def read_weights(path) -> Tuple[Dict[str, torch.Tensor], ModelMeta]:
    """(state_dict in fp32, metadata) from a .safetensors model or a .pth checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found")
    if path.suffix == ".safetensors":
        state, header = read_safetensors(path)
        if META_KEY not in header:
            raise UserError(f"{path} has no project metadata; convert it with python3 -m tools.convert")
        meta = ModelMeta.from_json(header[META_KEY], path, MODELS)
    else:
        ckpt = load_checkpoint(path)
        state, meta = ckpt["state_dict"], ckpt["meta"]
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, meta


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
        if META_KEY in header and meta_kind(header[META_KEY], path) != "trunk":
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
    `python3 -m tools.convert --format faceapi-recognition`; its embedding layer `fc.*` is ignored,
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


def load_model(path, device="cpu") -> Tuple[nn.Module, ModelMeta]:
    """Rebuild a model from a checkpoint or shipped model file alone.

    Returns:
        (model in eval mode on `device`, the file's ModelMeta).
    """
    state, meta = read_weights(path)
    model = build_model(meta.model, **meta.model_args)
    load_state_strict(model, state, path)
    return model.to(device).eval(), meta
