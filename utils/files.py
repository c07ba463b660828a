"""File helpers that import nothing heavy (safe on the ONNX Runtime path): content digests, and
writing ONNX files with this project's metadata."""
import hashlib
import json
from pathlib import Path
from typing import Any, Dict

from utils.meta import META_KEY


def file_digest(path) -> str:
    """SHA-256 of a file's bytes, hex (read in 1 MiB blocks; hashlib.file_digest needs Python 3.11)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


__all__ = ["META_KEY", "file_digest", "save_with_meta"]


def save_with_meta(proto, meta: Dict[str, Any], path) -> None:
    """Write an ONNX graph atomically with `meta` as its only metadata entry (JSON under META_KEY)."""
    import onnx  # onnx: only when writing (prediction needs ONNX Runtime alone)

    from utils.checkpoint import atomic_write  # torch: only when writing

    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)
    atomic_write(Path(path), lambda tmp: onnx.save(proto, tmp))
