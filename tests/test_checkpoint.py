"""utils.checkpoint: atomic writes, the one metadata schema, the one key check and weights reader."""
import pickle

import pytest
import torch

from networks import build_model
from utils.checkpoint import (FORMAT, ModelMeta, atomic_write, check_keys, load_checkpoint, load_model,
                              read_state_dict, save_checkpoint, save_safetensors, training_checkpoint)
from utils.errors import UserError


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(b"old")

    def failing(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, failing)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pth"]  # no temporary file left behind


def test_pickled_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return open, (str(marker), "w")

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"format": FORMAT, "meta": {}, "state_dict": {}, "x": Payload()}, f)
    with pytest.raises(UserError, match="refused|weights_only") as err:
        load_checkpoint(path)
    assert not marker.exists() and "\n" not in str(err.value)


def test_missing_metadata_is_named(tmp_path):
    model = build_model("resnet18", num_classes=3)
    save_safetensors(model.state_dict(), {"model": "resnet18", "model_args": {"num_classes": 3},
                                          "classes": ["a", "b", "c"]}, tmp_path / "m.safetensors")
    with pytest.raises(UserError, match=r"lacks the metadata \['img_size', 'mean', 'std'\]"):
        load_model(tmp_path / "m.safetensors")


def test_model_meta_takes_the_registry_input_and_round_trips():
    meta = ModelMeta.for_model("dan", {"num_classes": 8, "num_heads": 4, "trunk": "face_resnet"}, list("abcdefgh"),
                               grayscale=True)
    assert meta.img_size == 150 and meta.std == [1.0, 1.0, 1.0]
    assert ModelMeta.for_model("dan", {"num_classes": 2}, ["a", "b"], 112).mean == [0.485, 0.456, 0.406]
    stored = {**meta.to_dict(), "quantized": "int8"}
    assert "epoch" not in stored and stored["grayscale"] is True
    again = ModelMeta.from_dict(stored, "x")
    assert again.extra == {"quantized": "int8"} and again.to_dict() == stored


def test_training_checkpoint_loads_back(tmp_path):
    model = build_model("resnet18", num_classes=2)
    meta = ModelMeta.for_model("resnet18", {"num_classes": 2}, ["a", "b"], 64)
    save_checkpoint(training_checkpoint(meta, model.state_dict(), epoch=3), tmp_path / "c.pth")
    assert load_checkpoint(tmp_path / "c.pth")["epoch"] == 3
    rebuilt, read = load_model(tmp_path / "c.pth")
    assert read["classes"] == ["a", "b"] and torch.equal(rebuilt.fc.weight, model.fc.weight)


def test_key_check_names_missing_unexpected_and_both_shapes():
    own = {"a": torch.zeros(2), "b": torch.zeros(3, 3)}
    with pytest.raises(UserError) as err:
        check_keys(own, {"b": torch.zeros(3, 1), "c": torch.zeros(1)}, "f.pth", "the trunk")
    assert str(err.value) == ("f.pth does not fit the trunk: missing keys a; unexpected keys c; "
                              "wrong shapes b (3, 1) where (3, 3) is expected")


def test_reader_points_a_project_file_elsewhere(tmp_path):
    model = build_model("resnet18", num_classes=2)
    meta = ModelMeta.for_model("resnet18", {"num_classes": 2}, ["a", "b"], 64)
    save_checkpoint(training_checkpoint(meta, model.state_dict()), tmp_path / "c.pth")
    save_safetensors(model.state_dict(), meta.to_dict(), tmp_path / "c.safetensors")
    for name in ("c.pth", "c.safetensors"):
        with pytest.raises(UserError, match="of this project: use --init"):
            read_state_dict(tmp_path / name, "use --init")
    torch.save({"module.w": torch.ones(2)}, tmp_path / "plain.pth")
    assert list(read_state_dict(tmp_path / "plain.pth", "")) == ["w"]


def test_written_model_files_are_readable_by_others_as_open_would_make_them(tmp_path):
    """mkstemp makes 0600 files, and safetensors' writer replaces the file it is given: both the
    .safetensors and the .pth written atomically end up 0666 less the umask (0644 under 022)."""
    import os

    from utils.checkpoint import save_checkpoint, save_safetensors
    umask = os.umask(0o022)
    try:
        model = build_model("resnet18", num_classes=3)
        meta = ModelMeta.for_model("resnet18", {"num_classes": 3}, ["a", "b", "c"], 32)
        save_safetensors(model.state_dict(), meta.to_dict(), tmp_path / "m.safetensors")
        save_checkpoint({"format": FORMAT, "meta": meta.to_dict(), "state_dict": model.state_dict()}, tmp_path / "m.pth")
    finally:
        os.umask(umask)
    for name in ("m.safetensors", "m.pth"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
