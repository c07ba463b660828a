"""common.meta: ModelMeta read and checked once, torch-free; no other module reads a metadata dict by key."""
import ast
import json
import subprocess
import sys

import pytest

from common.errors import UserError
from common.meta import DetectorMeta, ModelMeta, meta_kind
from helpers import ROOT

STORED = {"model": "dan", "model_args": {"num_classes": 2, "num_heads": 4}, "classes": ["happy", "sad"],
          "img_size": 112, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def test_required_fields_typed_and_the_rest_kept_in_extra():
    meta = ModelMeta.from_dict({**STORED, "temperature": 1.5, "epoch": 4, "averaged_from": [{"file": "a"}]}, "m")
    assert (meta.model, meta.img_size, meta.classes, meta.epoch) == ("dan", 112, ["happy", "sad"], 4)
    assert meta.extra == {"averaged_from": [{"file": "a"}]}
    assert meta.to_dict() == {**STORED, "temperature": 1.5, "epoch": 4, "averaged_from": [{"file": "a"}]}
    assert ModelMeta.from_json(meta.to_json(), "m") == meta
    with pytest.raises(Exception):  # frozen: a change is a copy (replace)
        meta.epoch = 5
    assert meta.replace(epoch=5).epoch == 5 and meta.epoch == 4


def test_grey_input_and_temperature_defaults():
    """Unrecorded grayscale means grey, except for converted published weights (colour RAF-DB)."""
    assert ModelMeta.from_dict(STORED, "m").grey_input is True
    assert ModelMeta.from_dict({**STORED, "converted_from": {"file": "x.pth"}}, "m").grey_input is False
    assert ModelMeta.from_dict({**STORED, "grayscale": False}, "m").grey_input is False
    assert ModelMeta.from_dict({**STORED, "grayscale": True, "converted_from": {}}, "m").grey_input is True
    assert ModelMeta.from_dict(STORED, "m").softmax_temperature == 1.0
    assert ModelMeta.from_dict({**STORED, "temperature": 0.75}, "m").softmax_temperature == 0.75


@pytest.mark.parametrize("changes,words", [
    ({"classes": ["a", "a"]}, "names a class twice"),
    ({"img_size": 8}, "img_size 8 is outside"),
    ({"std": [1, 0, 1]}, "std holds a value that is not positive"),
    ({"epoch": "3"}, "epoch '3' is not an integer"),
    ({"epoch": True}, "epoch True is not an integer"),
    ({"val_accuracy": float("nan")}, "val_accuracy nan is not a finite number"),
    ({"calibration": [1]}, "calibration \\[1\\] is not a JSON object"),
    ({"quantized": 8}, "quantized 8 is not a string"),
    ({"selection": "source-mean"}, "selection 'source-mean' is not a JSON object"),
])
def test_bad_values_are_one_line_naming_the_value(changes, words):
    with pytest.raises(UserError, match=words) as err:
        ModelMeta.from_dict({**STORED, **changes}, "m.onnx")
    assert str(err.value).startswith("m.onnx: ") and "\n" not in str(err.value)


def test_the_registry_check_runs_only_when_a_registry_is_given():
    """The ONNX path has no model registry (no torch): it checks the values alone; the torch readers
    pass networks.MODELS and refuse an unknown model or an argument its constructor does not take."""
    def dan(num_classes, num_heads=4):
        return None

    stored = {**STORED, "model": "other"}
    assert ModelMeta.from_dict(stored, "m").model == "other"
    with pytest.raises(UserError, match="names the model 'other', which is not one of dan"):
        ModelMeta.from_dict(stored, "m", {"dan": dan})
    with pytest.raises(UserError, match=r"gives dan the arguments \['depth'\], which it does not take"):
        ModelMeta.from_dict({**STORED, "model_args": {**STORED["model_args"], "depth": 3}}, "m", {"dan": dan})


def test_kinds_and_the_detectors_anchors():
    assert meta_kind(json.dumps(STORED), "m") == "model"
    assert meta_kind(json.dumps({"kind": "trunk"}), "t") == "trunk"
    with pytest.raises(UserError, match="has the kind 'photo'"):
        meta_kind(json.dumps({"kind": "photo"}), "p")
    text = json.dumps({"kind": "detector", "anchors": [[1.5, 2], [6, 7.25]], "detector": "tinyface"})
    found = DetectorMeta.from_json(text, "d.onnx")
    assert found.anchors == ((1.5, 2.0), (6.0, 7.25)) and found.extra == {"kind": "detector", "detector": "tinyface"}
    for bad in ({"kind": "detector", "anchors": [[1, -2]]}, {"kind": "detector"}, STORED):
        with pytest.raises(UserError, match="d.onnx: its metadata"):
            DetectorMeta.from_json(json.dumps(bad), "d.onnx")


def test_the_schema_imports_neither_torch_nor_the_project_above_common():
    code = "import sys, common.meta; print(sorted(m for m in ('torch', 'numpy', 'networks', 'utils') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def metadata_reads_by_key(tree: ast.AST):
    """Line numbers where a metadata dict is read by key: `<..meta..>["key"]`, `<..meta..>.get("key")`
    and `x["meta"]["key"]`, the name holding "meta" (the ONNX `metadata_props` and `custom_metadata_map`
    are ONNX's own)."""
    def named_meta(node) -> bool:
        name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
        is_meta_entry = (isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant)
                         and node.slice.value == "meta")
        return is_meta_entry or ("meta" in name.lower() and name not in ("metadata_props", "custom_metadata_map"))

    for node in ast.walk(tree):
        if (isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant)
                and isinstance(node.slice.value, str) and named_meta(node.value)):
            yield node.lineno
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and named_meta(node.func.value) and node.args and isinstance(node.args[0], ast.Constant)):
            yield node.lineno


def test_no_module_but_the_schema_reads_metadata_by_key():
    files = [ROOT / f"{s}.py" for s in ("train", "test", "predict", "serve")]
    files += [p for d in ("common", "data", "networks", "utils", "inference", "tools", "benchmarks")
              for p in (ROOT / d).rglob("*.py") if p != ROOT / "common" / "meta.py"]
    found = [f"{p.relative_to(ROOT)}:{line}" for p in files
             for line in metadata_reads_by_key(ast.parse(p.read_text()))]
    assert found == []


def test_the_check_finds_each_form_of_read():
    code = 'a = meta["classes"]\nb = self.meta.get("img_size")\nc = ckpt["meta"]["epoch"]\nd = meta.classes\n'
    assert list(metadata_reads_by_key(ast.parse(code))) == [1, 2, 3]
