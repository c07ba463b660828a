"""Self-describing checkpoints, written atomically and read without unpickling code.

A training checkpoint (`.pth`) is a plain dict of tensors, numbers, strings and lists:

    {"format": "fer-checkpoint", "version": 1,
     "meta": {"model": "dan", "model_args": {...}, "classes": [...], "img_size": 224,
              "mean": [...], "std": [...]},
     "state_dict": ..., "criterion": ..., "optimizer": ..., "scheduler": ..., "scaler": ...,
     "epoch": int, "best_metric": float, "best_epoch": int, "history": [...], "args": {...}}

A shipped model (`.safetensors`) holds the weights (fp16 or fp32) and the same "meta" as
JSON in the safetensors header. Both are loaded by `load_model`.

Every file is written by `atomic_write`: a kill at any instant leaves the old file or the new
one, and at worst a `.<name>.<random>.tmp` that `remove_stale_temps` deletes on the next start.
`fault_point` marks the places the fault-injection tests kill the process at.
"""
import glob
import json
import os
import pickle
import pickletools
import signal
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Tuple

import torch
from torch import nn

from utils.errors import UserError, first_line

FORMAT = "fer-checkpoint"
META_KEYS = ("model", "model_args", "classes", "img_size", "mean", "std")
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
    os.chmod(tmp, 0o666 & ~_UMASK)  # as open() would create it, not mkstemp's owner-only 0600
    try:
        write(tmp)
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
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise UserError(f"{source} lacks the metadata {missing}; it cannot be rebuilt from the file alone")
    return meta


def save_safetensors(state_dict: Dict[str, torch.Tensor], meta: Dict[str, Any], path: Path,
                     half: bool = True) -> None:
    """Write weights (floating tensors as fp16 when `half`) and metadata as one safetensors file."""
    from safetensors.torch import save_file

    tensors = {}
    for k, v in state_dict.items():
        v = v.detach().cpu()
        if half and v.is_floating_point() and "running_var" not in k:
            v = v.half()
        tensors[k] = v.contiguous()
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"fer": json.dumps(meta)}))


def update_meta(path, meta: Dict[str, Any]) -> None:
    """Rewrite a model file's metadata (atomically), its weights unchanged."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"fer": json.dumps(meta)}))
    else:
        ckpt = load_checkpoint(path)
        ckpt["meta"] = meta
        save_checkpoint(ckpt, path)


def read_weights(path) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """(state_dict in fp32, metadata) from a .safetensors model or a .pth checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:
            raise UserError(f"{path} is not a readable safetensors file ({err})") from None
        if "fer" not in header:
            raise UserError(f"{path} has no project metadata; convert it with python3 -m utils.convert")
        meta = json.loads(header["fer"])
    else:
        ckpt = load_checkpoint(path)
        state, meta = ckpt["state_dict"], ckpt["meta"]
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return state, check_meta(meta, path)


def load_state_strict(model: nn.Module, state: Dict[str, torch.Tensor], source) -> None:
    """load_state_dict that names missing and unexpected keys and bad shapes in a UserError."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        def short(keys):
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "") if keys else "none"
        raise UserError(f"{source} does not fit the model: missing keys {short(missing)}; "
                        f"unexpected keys {short(unexpected)}; wrong shapes {short(wrong)}")
    model.load_state_dict(state)


def load_model(path, device="cpu") -> Tuple[nn.Module, Dict[str, Any]]:
    """Rebuild a model from a checkpoint or shipped model file alone.

    Returns:
        (model in eval mode on `device`, metadata dict with model, model_args, classes,
        img_size, mean, std).
    """
    from networks import build_model

    state, meta = read_weights(path)
    model = build_model(meta["model"], **meta["model_args"])
    load_state_strict(model, state, path)
    return model.to(device).eval(), meta
