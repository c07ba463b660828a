"""benchmarks.bench: the --quick run works end to end and writes every section; benchmarks/bench_step_profile.py
counts multiply-adds right and runs at a tiny size. No speed is asserted."""
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.bench import Repeat

ROOT = Path(__file__).resolve().parents[1]


def test_quick_run_writes_every_section(tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.bench", "--quick", "--device", "cpu", "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert {r["section"] for r in rows} == {"training", "speedups", "data", "inference"}
    for row in rows:
        for key in ("images_per_s", "ms_median", "ms_p90", "ratio"):
            if key in row:
                assert math.isfinite(row[key]) and row[key] > 0, row
    names = [r["name"] for r in rows]
    for model in ("dan", "efficientnet_b3", "resnet18"):
        assert f"{model} 64 px: model step alone" in names and f"{model} 64 px: with data" in names
    assert "DAN / ResNet-18 step time, 64 px" in names
    assert "DAN / ResNet-18 step time, 64 px, NCHW (the reference's layout)" in names
    assert "dan 64 px: model step alone, NCHW" in names and "resnet18 64 px: model step alone, NCHW" in names
    inference = [r["name"] for r in rows if r["section"] == "inference"]
    assert len(inference) == 5 and any("int8" in n for n in inference)
    assert report["machine"]["torch"] == torch.__version__
    for title in ("### Training", "### DAN training speed-ups", "### Data pipeline alone", "### Inference per face"):
        assert title in run.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_is_one_line_of_error():
    run = subprocess.run([sys.executable, "-m", "benchmarks.bench", "--quick", "--device", "cuda"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].startswith("error: --device cuda")


def test_repeat_yields_exactly_steps_across_epochs():
    assert list(Repeat([1, 2, 3], 7)) == [1, 2, 3, 1, 2, 3, 1]
    assert len(Repeat([1, 2, 3], 7)) == 7


def test_compare_sets_runs_side_by_side_with_speedups(tmp_path):
    from benchmarks.bench import compare_reports
    from common.errors import UserError

    def report(name, rows):
        path = tmp_path / name
        path.write_text(json.dumps({"machine": {"cpu": "test cpu", "cores": 2, "torch": "x", "command": name},
                                    "rows": rows}))
        return str(path)

    a = report("a.json", [
        {"section": "training", "name": "dan 112 px: model step alone", "images_per_s": 80.0},
        {"section": "inference", "name": "DAN 224 px: onnx", "ms_median": 10.0, "images_per_s": 100.0},
        {"section": "training", "name": "DAN / ResNet-18 step time, 112 px", "ratio": 1.40},
        {"section": "data", "name": "only in a", "images_per_s": 5.0}])
    b = report("b.json", [
        {"section": "training", "name": "dan 112 px: model step alone", "images_per_s": 100.0},
        {"section": "inference", "name": "DAN 224 px: onnx", "ms_median": 8.0, "images_per_s": 90.0},
        {"section": "training", "name": "DAN / ResNet-18 step time, 112 px", "ratio": 1.12}])
    lines = compare_reports([a, b]).splitlines()
    row = {line.split(" | ")[0].strip("| "): line for line in lines if line.startswith("| ")}
    assert row["dan 112 px: model step alone"].endswith("| 80.00 | 100.00 | 1.25x |")  # more images/s
    assert row["DAN 224 px: onnx"].endswith("| ms_median | 10.00 | 8.00 | 1.25x |")  # fewer ms is faster
    assert row["DAN / ResNet-18 step time, 112 px"].endswith("| 1.40 | 1.12 | 1.25x |")  # a lower ratio is better
    assert row["only in a"].endswith("| 5.00 |  |  |")
    with pytest.raises(UserError, match="no such file"):
        compare_reports([a, str(tmp_path / "missing.json")])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(UserError, match="not a report"):
        compare_reports([str(tmp_path / "bad.json")])


def _load_step_profile():
    spec = importlib.util.spec_from_file_location("bench_step_profile", ROOT / "benchmarks" / "bench_step_profile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_profile_counts_multiply_adds_by_hand():
    profile = _load_step_profile()
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4, 6, (1, 3), padding=(0, 1)))
    macs = profile.conv_macs_per_call(net, lambda: net(torch.randn(2, 3, 5, 5)))
    # First: 2*4*5*5 outputs x 3*3*3 taps; the image needs no gradient, so backward = weight grad only.
    assert macs[((2, 3, 5, 5), (4, 3, 3, 3))] == (5400, 5400)
    # Second: 2*6*5*5 outputs x 4*1*3 taps; backward computes the input's and the weight's gradients.
    assert macs[((2, 4, 5, 5), (6, 4, 1, 3))] == (3600, 7200)


def test_step_profile_tiny_run(tmp_path, capsys):
    profile = _load_step_profile()
    out = tmp_path / "profile.json"
    args = profile.get_args_parser().parse_args(["--size", "32", "--batch", "2", "--rounds", "1", "--steps", "1",
                                                 "--threads", "1", "--json", str(out)])
    report = profile.main(args)
    assert json.loads(out.read_text())["phases_ms"] == report["phases_ms"]
    assert set(report["phases_ms"]) == {"dan", "resnet18", "dan, heads NCHW"}
    for times in report["phases_ms"].values():
        assert times["step"] == pytest.approx(times["forward"] + times["backward"] + times["optimizer"])  # one step: its own sum
    shapes = {(tuple(r["input"]), tuple(r["weight"])) for r in report["convolutions"]}
    # A 32 px image leaves a 1x1 map for the heads: their 1x1, 3x3, 1x3 and 3x1 convolutions are all there.
    for weight in ((256, 512, 1, 1), (512, 256, 3, 3), (512, 256, 1, 3), (512, 256, 3, 1)):
        assert any(w == weight for _, w in shapes), weight
    head_3x3 = next(r for r in report["convolutions"] if tuple(r["weight"]) == (512, 256, 3, 3) and r["calls"] == 4)
    assert head_3x3["forward_mac_per_call"] == 2 * 512 * 1 * 1 * 256 * 9
    assert len(report["head_convolution_forms"]) == 3
    assert "| step, DAN's heads in NCHW |" in capsys.readouterr().out
