"""utils.checkpoint: atomic writes, the one metadata schema, the one key check and weights reader."""
import pickle

import pytest
import torch

from common.errors import UserError
from common.files import atomic_write
from common.meta import ModelMeta
from networks import build_model, model_meta
from utils.checkpoint import (FORMAT, check_keys, load_checkpoint, load_model, read_state_dict, save_checkpoint,
                              save_safetensors, training_checkpoint)


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
    meta = model_meta("dan", {"num_classes": 8, "num_heads": 4, "trunk": "face_resnet"}, list("abcdefgh"),
                      grayscale=True)
    assert meta.img_size == 150 and meta.std == [1.0, 1.0, 1.0]
    assert model_meta("dan", {"num_classes": 2}, ["a", "b"], 112).mean == [0.485, 0.456, 0.406]
    stored = {**meta.to_dict(), "quantized": "int8", "note": "kept"}
    assert "epoch" not in stored and stored["grayscale"] is True
    again = ModelMeta.from_dict(stored, "x")
    assert again.quantized == "int8" and again.extra == {"note": "kept"} and again.to_dict() == stored
    assert again == ModelMeta.from_json(again.to_json(), "y")


def test_training_checkpoint_loads_back(tmp_path):
    model = build_model("resnet18", num_classes=2)
    meta = model_meta("resnet18", {"num_classes": 2}, ["a", "b"], 64)
    save_checkpoint(training_checkpoint(meta, model.state_dict(), epoch=3), tmp_path / "c.pth")
    assert load_checkpoint(tmp_path / "c.pth")["epoch"] == 3
    rebuilt, read = load_model(tmp_path / "c.pth")
    assert read.classes == ["a", "b"] and torch.equal(rebuilt.fc.weight, model.fc.weight)


def test_key_check_names_missing_unexpected_and_both_shapes():
    own = {"a": torch.zeros(2), "b": torch.zeros(3, 3)}
    with pytest.raises(UserError) as err:
        check_keys(own, {"b": torch.zeros(3, 1), "c": torch.zeros(1)}, "f.pth", "the trunk")
    assert str(err.value) == ("f.pth does not fit the trunk: missing keys a; unexpected keys c; "
                              "wrong shapes b (3, 1) where (3, 3) is expected")


def test_reader_points_a_project_file_elsewhere(tmp_path):
    model = build_model("resnet18", num_classes=2)
    meta = model_meta("resnet18", {"num_classes": 2}, ["a", "b"], 64)
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
        meta = model_meta("resnet18", {"num_classes": 3}, ["a", "b", "c"], 32)
        save_safetensors(model.state_dict(), meta.to_dict(), tmp_path / "m.safetensors")
        save_checkpoint({"format": FORMAT, "meta": meta.to_dict(), "state_dict": model.state_dict()}, tmp_path / "m.pth")
    finally:
        os.umask(umask)
    for name in ("m.safetensors", "m.pth"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


def _meta(**changes):
    meta = {"model": "resnet18", "model_args": {"num_classes": 3}, "classes": ["a", "b", "c"], "img_size": 32,
            "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "temperature": 0.8}
    meta.update(changes)
    return {k: v for k, v in meta.items() if v is not ...}


@pytest.mark.parametrize("changes, words", [
    ({"model": "gpt"}, "not one of"),
    ({"model_args": {"num_classes": 3, "layers": 50}}, "does not take"),
    ({"model_args": {"num_classes": 10**12}}, "num_classes"),
    ({"model_args": {"num_classes": 4}}, "does not match its 3 class names"),
    ({"model_args": None}, "model_args is not an object"),
    ({"classes": ["a", "a", "c"]}, "names a class twice"),
    ({"img_size": 0}, "img_size 0"),
    ({"img_size": "112"}, "img_size '112'"),
    ({"std": [0.25, 0, 0.25]}, "std holds a value that is not positive"),
    ({"mean": [0.5, float("nan"), 0.5]}, "mean is not three finite numbers"),
    ({"temperature": -1.0}, "temperature -1.0"),
    ({"temperature": 0}, "temperature 0"),
    ({"temperature": float("nan")}, "temperature nan"),
    ({"grayscale": "yes"}, "grayscale 'yes'"),
])
def test_model_metadata_is_validated_on_every_read(tmp_path, changes, words):
    """Invalid metadata gave tracebacks, a negative temperature inverted the ranking silently, and
    duplicate class names collapsed the output: each is one refusal naming the value."""
    from utils.checkpoint import save_safetensors
    path = tmp_path / "m.safetensors"
    state = build_model("resnet18", num_classes=3).state_dict()
    save_safetensors(state, _meta(**changes), path)
    with pytest.raises(UserError, match=words) as err:
        load_model(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    # the ONNX path's torch-free check (no model registry) says the same
    if "model" not in changes and "does not take" not in words:
        with pytest.raises(UserError, match=words):
            ModelMeta.from_dict(_meta(**changes), "x.onnx")


def test_metadata_that_is_not_json_or_not_an_object_is_refused(tmp_path):
    from safetensors.torch import save_file
    state = {k: v.contiguous() for k, v in build_model("resnet18", num_classes=3).state_dict().items()}
    for text, words in (("{not json", "not valid JSON"), ("null", "not a JSON object"), ("[1, 2]", "not a JSON object")):
        save_file(state, str(tmp_path / "m.safetensors"), metadata={"fer": text})
        with pytest.raises(UserError, match=words):
            load_model(tmp_path / "m.safetensors")
