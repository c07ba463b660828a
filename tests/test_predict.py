"""predict.py: files, folders, globs, videos, URLs, JSON and tables, pictures, exit codes.

The fixtures (a tiny DAN exported once, real photos, a local web server) are in conftest.py;
each module of inference has its own test file.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import predict
from common.errors import UserError
from helpers import FACE_CLASSES as CLASSES
from helpers import check_record, make_checkpoint
from inference.recognizer import EmotionRecognizer

ROOT = Path(__file__).resolve().parents[1]


def run_predict(argv, capsys):
    """predict.main in-process: (exit code, stdout, stderr)."""
    code = predict.main(predict.get_args_parser().parse_args(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_files_json_schema_and_failures(checkpoint, cache_dir, photos, capsys):
    names = ["one.jpg", "one.webp", "one.bmp", "grey.png", "rgba.png", "four.jpg", "noface.png", "truncated.jpg"]
    code, out, err = run_predict(["--params", *[str(photos / n) for n in names], str(photos / "absent.jpg"),
                                  "--checkpoint", str(checkpoint), "--cache-dir", str(cache_dir), "--json"],
                                 capsys)
    records = [json.loads(line) for line in out.splitlines()]
    assert [Path(r["input"]).name for r in records] == names + ["absent.jpg"]
    for r in records:
        check_record(r)
    counts = {Path(r["input"]).name: len(r["faces"]) for r in records}
    assert counts == {"one.jpg": 1, "one.webp": 1, "one.bmp": 1, "grey.png": 1, "rgba.png": 1, "four.jpg": 4,
                      "noface.png": 0, "truncated.jpg": 0, "absent.jpg": 0}
    errors = {Path(r["input"]).name: r["error"] for r in records if r["error"]}
    assert set(errors) == {"truncated.jpg", "absent.jpg"} and "not a readable image" in errors["truncated.jpg"]
    assert code == 1 and len(err.strip().splitlines()) == 2  # one line per failed input


def test_cli_table_folder_and_glob(checkpoint, cache_dir, photos, capsys):
    code, out, err = run_predict(["--params", str(photos / "no*.png"), str(photos / "one.jpg"),
                                  "--checkpoint", str(checkpoint), "--cache-dir", str(cache_dir)], capsys)
    assert code == 0 and err == ""
    assert "noface.png" in out and "no face found" in out
    assert "1 face" in out and all(c in out for c in CLASSES)
    code, out, _ = run_predict(["--params", str(photos), "--checkpoint", str(checkpoint),
                                "--cache-dir", str(cache_dir), "--json"], capsys)
    assert len(out.splitlines()) == 8 and code == 1  # the folder's eight images, one truncated


def test_cli_pixel_limit(checkpoint, cache_dir, photos, capsys):
    code, out, err = run_predict(["--params", str(photos / "one.jpg"), "--max-pixels", "10000",
                                  "--checkpoint", str(checkpoint), "--cache-dir", str(cache_dir)], capsys)
    assert code == 1 and "over the limit" in err


def test_cli_save_dir_and_attention(checkpoint, cache_dir, photos, workdir, capsys):
    out_dir = workdir / "annotated"
    code, _, _ = run_predict(["--params", str(photos / "four.jpg"), str(photos / "one.jpg"), "--save-dir",
                              str(out_dir), "--attention", "--checkpoint", str(checkpoint),
                              "--cache-dir", str(cache_dir)], capsys)
    assert code == 0
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["four.jpg"] + [f"four_face{k}_attention.png" for k in range(1, 5)] + \
        ["one.jpg", "one_face1_attention.png"]
    annotated = np.asarray(Image.open(out_dir / "one.jpg"))
    assert annotated.shape == (480, 640, 3)
    strip = Image.open(out_dir / "one_face1_attention.png")
    assert strip.width == 5 * strip.height  # the face and four heads


def test_cli_video_frames(checkpoint, cache_dir, astronaut, workdir, capsys):
    import cv2

    path = workdir / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (640, 480))
    for _ in range(7):
        writer.write(cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    writer.release()
    code, out, _ = run_predict(["--params", str(path), "--frame-stride", "3", "--json",
                                "--checkpoint", str(checkpoint), "--cache-dir", str(cache_dir)], capsys)
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["frame"] for r in records] == [0, 3, 6]
    assert all(len(r["faces"]) == 1 for r in records)


def test_cli_unopenable_webcam_is_one_error(checkpoint, cache_dir, capsys):
    code, out, err = run_predict(["--params", "97", "--checkpoint", str(checkpoint),
                                  "--cache-dir", str(cache_dir), "--json"], capsys)
    assert code == 1 and "cannot open this webcam" in json.loads(out.splitlines()[-1])["error"]


def test_cli_cold_run_needs_no_torch(checkpoint, cache_dir, photos, recognizer):
    """With the export cached, a fresh process neither imports torch nor exports again."""
    code = ("import atexit, runpy, sys; atexit.register(lambda: print('torch imported:', 'torch' in sys.modules, "
            "file=sys.stderr)); sys.argv = sys.argv[1:]; runpy.run_path('predict.py', run_name='__main__')")
    env = {**os.environ, "FER_CACHE_DIR": str(cache_dir)}
    result = subprocess.run([sys.executable, "-c", code, "predict.py", "--params", str(photos / "one.jpg"),
                             "--checkpoint", str(checkpoint)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "1 face" in result.stdout and "torch imported: False" in result.stderr


def test_efficientnet_checkpoint_rebuilds_and_refuses_attention(workdir, photos, capsys):
    ckpt = make_checkpoint(workdir / "effnet.safetensors", model="efficientnet_b3", img_size=64)
    faces = EmotionRecognizer(ckpt, backend="torch", threads=1).predict(photos / "one.jpg")
    assert len(faces) == 1 and faces[0].attention is None
    with pytest.raises(UserError, match="--attention needs a DAN"):
        run_predict(["--params", str(photos / "one.jpg"), "--checkpoint", str(ckpt), "--backend", "torch",
                     "--save-dir", str(workdir / "eff_out"), "--attention"], capsys)


def test_cli_urls_mixed_with_failures(photo_server, checkpoint, cache_dir, capsys):
    code, out, err = run_predict(["--params", photo_server + "/good.jpg", photo_server + "/missing.jpg", photo_server + "/page.html",
                                  "ftp://example.invalid/a.jpg", "--timeout", "2", "--json",
                                  "--checkpoint", str(checkpoint), "--cache-dir", str(cache_dir)], capsys)
    records = [json.loads(line) for line in out.splitlines()]
    assert [len(r["faces"]) for r in records] == [1, 0, 0, 0]
    assert records[0]["error"] is None and all(r["error"] for r in records[1:])
    assert code == 1 and len(err.strip().splitlines()) == 3
    for r in records:
        check_record(r)
