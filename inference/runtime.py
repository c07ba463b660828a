"""What every ONNX Runtime session of the project shares, torch-free: session options, the
softmax, and an ONNX file's metadata read as `ModelMeta` and written with it.

Prediction from an exported or cached model runs on this module and ONNX Runtime alone.
"""
from pathlib import Path
from typing import Any, Dict, Union

import numpy as np
import onnxruntime as ort

from common.errors import UserError
from common.files import atomic_write
from common.meta import META_KEY, ModelMeta, stored_json


def session_options(threads: int, spinning: bool = True) -> ort.SessionOptions:
    """Options of every ONNX Runtime session here: `threads` intra-op threads, one inter-op thread,
    warnings off. spinning=False stops idle worker threads from spinning after each run, which
    would take the CPU from a face detector that runs next (OpenCV's threads or MTCNN's session)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def softmax(logits: np.ndarray) -> np.ndarray:
    """(B, C) -> (B, C) probabilities, computed in float64 so each row sums to 1."""
    z = logits.astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def stored_meta(session: ort.InferenceSession) -> str:
    """The JSON an ONNX model of this project stores under META_KEY (its exported model or its
    face detector); UserError when it has none."""
    props = session.get_modelmeta().custom_metadata_map
    if META_KEY not in props:
        raise UserError(f"this ONNX file was not written by this project (no {META_KEY!r} metadata); "
                        "export one with python3 -m tools.export_onnx")
    return props[META_KEY]


def read_onnx_meta(session_or_path: Union[ort.InferenceSession, str, Path]) -> ModelMeta:
    """The ModelMeta of an exported model (an onnxruntime session or a path), checked."""
    source = session_or_path if isinstance(session_or_path, (str, Path)) else "the ONNX model"
    if isinstance(session_or_path, (str, Path)):
        session_or_path = ort.InferenceSession(str(session_or_path), session_options(1),
                                               providers=["CPUExecutionProvider"])
    return ModelMeta.from_json(stored_meta(session_or_path), source)


def save_with_meta(proto, meta: Union[ModelMeta, Dict[str, Any]], path) -> None:
    """Write an ONNX graph atomically with `meta` (a model's ModelMeta, or the plain dict of the
    converted face detector) as its only metadata entry, JSON under META_KEY."""
    import onnx  # onnx: only when writing (prediction needs ONNX Runtime alone)

    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, stored_json(meta)
    atomic_write(Path(path), lambda tmp: onnx.save(proto, tmp))
