"""Self-describing checkpoints, written atomically and read without unpickling code.

A training checkpoint (`.pth`) is a plain dict of tensors, numbers, strings and lists:

    {"format": "fer-checkpoint", "version": 1,
     "meta": {"model": "dan", "model_args": {...}, "classes": [...], "img_size": 224,
              "mean": [...], "std": [...]},
     "state_dict": ..., "criterion": ..., "optimizer": ..., "scheduler": ..., "scaler": ...,
     "epoch": int, "best_metric": float, "best_epoch": int, "rng": {...}, "args": {...}}

A shipped model (`.safetensors`) holds the weights (fp16 or fp32) and the same "meta" as
JSON in the safetensors header. Both are loaded by `load_model`.
"""
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
from torch import nn

from utils.errors import UserError, first_line

FORMAT = "fer-checkpoint"
META_KEYS = ("model", "model_args", "classes", "img_size", "mean", "std")


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path) then rename over `path`, so a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"{path} cannot be loaded safely as a checkpoint ({first_line(err)}); files that need "
                        "arbitrary unpickling are refused; if it is a published DAN file, convert it with "
                        "python3 -m utils.convert") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a checkpoint written by this project's train.py; "
                        "convert published weights with python3 -m utils.convert")
    return ckpt


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
