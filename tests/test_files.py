"""common.files: the SHA-256 digest of a file, and ONNX files written atomically with the project's
metadata (inference.runtime.save_with_meta, through common.files.atomic_write): the whole file or the old one,
never a half-written file or a stray temporary, and the errors a full disk or a locked folder give.
"""
import errno
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from common.files import file_digest
from common.meta import META_KEY
from helpers import ROOT
from inference.runtime import save_with_meta


def identity_model(**props):
    """A one-node ONNX graph (y = x, two floats), with `props` as metadata entries."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # old enough for any ONNX Runtime the project supports
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model


def stored_props(path):
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def failing_save(error, written=b"the first half of a new model"):
    """An onnx.save that writes part of the file, then fails with `error`, as a write cut short does."""
    def save(proto, tmp):
        with open(tmp, "wb") as f:
            f.write(written)
        raise error
    return save


# file_digest

def test_digest_matches_hashlib_across_its_1_mib_blocks(tmp_path):
    # 2.5 MiB: two whole blocks and a partial one, so a block lost or read twice changes the digest.
    data = np.random.default_rng(0).integers(0, 256, (5 << 19) + 7, dtype=np.uint8).tobytes()
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert file_digest(path) == hashlib.sha256(data).hexdigest()
    assert file_digest(str(path)) == file_digest(path)  # callers pass str and Path


def test_digest_of_an_empty_file_is_sha256_of_nothing(tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert file_digest(path) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_digest_tells_apart_files_that_differ_by_one_byte(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"weights" * 1000)
    b.write_bytes(b"weights" * 999 + b"weightS")
    assert file_digest(a) != file_digest(b)
    assert file_digest(b) == hashlib.sha256(b.read_bytes()).hexdigest()


def test_digest_of_a_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        file_digest(tmp_path / "nowhere.onnx")


def test_importing_the_module_loads_neither_torch_nor_onnx():
    """The ONNX Runtime path imports common.files: its docstring promises nothing heavy comes with it."""
    code = ("import sys, common.files; "
            "print(sorted(m for m in ('torch', 'onnx', 'numpy', 'safetensors') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# save_with_meta

def test_meta_is_the_only_entry_and_reads_back_as_json(tmp_path):
    # Class names outside ASCII: JSON escapes them, and they must come back the same.
    meta = {"model": "dan", "classes": ["colère", "joie"], "img_size": 112, "mean": [0.5] * 3}
    path = tmp_path / "model.onnx"
    save_with_meta(identity_model(author="someone", fer='{"old": 1}'), meta, path)
    props = stored_props(path)
    assert list(props) == [META_KEY] and META_KEY == "fer"  # older entries are dropped, not kept beside
    assert json.loads(props[META_KEY]) == meta


def test_onnx_runtime_reads_the_meta_and_runs_the_graph(tmp_path):
    """As inference.tinyface reads it: through the session's custom metadata map."""
    path = tmp_path / "model.onnx"
    save_with_meta(identity_model(), {"classes": ["a", "b"]}, str(path))  # a str path, as faceapi passes
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert json.loads(session.get_modelmeta().custom_metadata_map[META_KEY]) == {"classes": ["a", "b"]}
    x = np.array([1.5, -2.0], dtype=np.float32)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], x)  # the graph is written unchanged


def test_missing_folders_are_created(tmp_path):
    path = tmp_path / "cache" / "onnx" / "model.onnx"
    save_with_meta(identity_model(), {"v": 1}, path)
    assert json.loads(stored_props(path)[META_KEY]) == {"v": 1}


def test_replacing_a_file_leaves_only_the_new_file(tmp_path):
    path = tmp_path / "model.onnx"
    save_with_meta(identity_model(), {"v": 1}, path)
    save_with_meta(identity_model(), {"v": 2}, path)
    assert json.loads(stored_props(path)[META_KEY]) == {"v": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_the_file_gets_the_mode_open_would_give_not_mkstemps_0600(tmp_path):
    """mkstemp makes owner-only files; a cache others read needs the usual 0666 less the umask."""
    path = tmp_path / "model.onnx"
    save_with_meta(identity_model(), {"v": 1}, path)
    reference = tmp_path / "reference"
    with open(reference, "w"):
        pass
    assert path.stat().st_mode & 0o777 == reference.stat().st_mode & 0o777
    if reference.stat().st_mode & 0o044:  # the umask lets others read: mkstemp's 0600 would not
        assert path.stat().st_mode & 0o777 != 0o600


def test_a_full_disk_keeps_the_old_file_and_its_error(tmp_path, monkeypatch):
    """onnx.save writes with open(): ENOSPC arrives as an OSError and stays one (callers catch OSError)."""
    path = tmp_path / "model.onnx"
    path.write_bytes(b"the old model")
    monkeypatch.setattr(onnx, "save", failing_save(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
    with pytest.raises(OSError) as err:
        save_with_meta(identity_model(), {"v": 1}, path)
    assert err.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"the old model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # the half-written temporary is gone


def test_a_writer_runtime_error_becomes_an_eio_oserror_naming_the_disk(tmp_path, monkeypatch):
    """atomic_write maps RuntimeError (torch.save's word for a full disk) to one OSError line."""
    path = tmp_path / "model.onnx"
    path.write_bytes(b"the old model")
    monkeypatch.setattr(onnx, "save", failing_save(RuntimeError("file write failed\nat frame 3 of the writer")))
    with pytest.raises(OSError) as err:
        save_with_meta(identity_model(), {"v": 1}, path)
    assert err.value.errno == errno.EIO
    assert err.value.strerror == "the write failed (file write failed); is the disk full?"  # first line only
    assert path.read_bytes() == b"the old model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_other_writer_errors_pass_through_and_leave_no_temporary(tmp_path, monkeypatch):
    # protobuf refuses a model over 2 GB with ValueError: not a disk problem, so not mapped to one.
    monkeypatch.setattr(onnx, "save", failing_save(ValueError("Message onnx.ModelProto exceeds maximum size")))
    with pytest.raises(ValueError, match="exceeds maximum size"):
        save_with_meta(identity_model(), {"v": 1}, tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []  # no file at all: there was none before


def test_a_failed_rename_keeps_the_old_file_and_removes_the_whole_temporary(tmp_path, monkeypatch):
    """The last step fails (a folder that refuses renames): the temporary, already complete, is deleted."""
    path = tmp_path / "model.onnx"
    path.write_bytes(b"the old model")

    def refuse(src, dst):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dst))
    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError) as err:
        save_with_meta(identity_model(), {"v": 1}, path)
    assert err.value.errno == errno.EACCES and "disk full" not in str(err.value)
    assert path.read_bytes() == b"the old model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes into read-only folders; needs an ordinary user")
def test_a_read_only_folder_raises_permission_error_and_keeps_the_old_file(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"the old model")
    folder.chmod(0o555)
    try:
        with pytest.raises(PermissionError):
            save_with_meta(identity_model(), {"v": 1}, folder / "model.onnx")
        assert (folder / "model.onnx").read_bytes() == b"the old model"
        assert [p.name for p in folder.iterdir()] == ["model.onnx"]
    finally:
        folder.chmod(0o755)  # so pytest can delete tmp_path


def test_meta_that_is_not_json_raises_before_anything_is_written(tmp_path):
    # A NumPy integer (say, a class count from an array) is not JSON: the error comes before any file.
    with pytest.raises(TypeError, match="JSON serializable"):
        save_with_meta(identity_model(), {"num_classes": np.int64(7)}, tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []
