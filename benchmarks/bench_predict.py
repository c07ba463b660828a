"""How fast predict.py is: per-photo latency after warm-up, and a whole process from a cold start.

    python3 benchmarks/bench_predict.py                      # a random DAN at 224 px
    python3 benchmarks/bench_predict.py --checkpoint Data/dan_fer2013.safetensors

The photo is the astronaut in Data/samples at 640x480 (one face). Latency is the median over --runs
calls of decoding the JPEG, detection, classification and formatting the JSON line and the table,
after warm-up, with each part (and MTCNN's stages) timed on its own in the same iterations.
With --latency-only (and --checkpoint) only the latency is measured, with the usual export cache.
Cold start is the wall time of `python3 predict.py --params <photo> --checkpoint <model>` in a
fresh process (with the ONNX export cached, as on every run after the first), and a breakdown of
where that time goes. Weights do not change the speed, so a random model measures the real one.
The operating system's file cache is warm: a first run after a reboot reads more from disk.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Run in a fresh interpreter: each stage of a cold predict.py run, timed on its own.
BREAKDOWN = r"""
import sys, time, json
t0 = time.perf_counter()
sys.path.insert(0, ".")
import numpy, PIL.Image, cv2, onnxruntime
t1 = time.perf_counter()
import predict
from inference.detectors import build_detector
from inference.export import cached_onnx
from inference.recognizer import EmotionRecognizer, OnnxRunner
t2 = time.perf_counter()
onnx_path = cached_onnx(sys.argv[1])
t3 = time.perf_counter()
OnnxRunner(onnx_path, 2)
t4 = time.perf_counter()
build_detector(sys.argv[3])
t5 = time.perf_counter()
recognizer = EmotionRecognizer(sys.argv[1], detector=sys.argv[3])
t6 = time.perf_counter()
image = recognizer.load(sys.argv[2])
t7 = time.perf_counter()
faces = recognizer.predict(image)
t8 = time.perf_counter()
print(json.dumps({"imports: numpy, PIL, cv2, onnxruntime": t1 - t0, "imports: project modules": t2 - t1,
                  "checkpoint hash + cache lookup": t3 - t2, "ONNX Runtime session": t4 - t3,
                  "detector load": t5 - t4, "decode the photo": t7 - t6, "first prediction": t8 - t7,
                  "torch imported": "torch" in sys.modules}))
"""


def make_checkpoint(path: str, img_size: int) -> None:
    sys.path.insert(0, str(ROOT))
    from networks import build_model, model_meta
    from utils.checkpoint import save_safetensors

    args = {"num_classes": 7, "num_heads": 4}
    meta = model_meta("dan", args, ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"], img_size)
    save_safetensors(build_model("dan", **args).state_dict(), meta, path)


def photo_640x480(path: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from PIL import Image

    from benchmarks.photos import astronaut_640x480
    Image.fromarray(astronaut_640x480()).save(path, quality=92)


def wall(cmd, env) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def mtcnn_stages(detector, parts: dict) -> None:
    """Time MTCNN's stages (the Tiny Face Detector when it proposes the boxes, P-Net over the
    pyramid, R-Net, O-Net) into `parts` on each call; a stage a photo does not reach is left out."""
    stages = [(detector, "_propose", "P-Net"), (detector, "_refine", "R-Net"), (detector, "_output", "O-Net")]
    if getattr(detector, "tiny", None) is not None:
        stages.insert(0, (detector.tiny, "boxes", "Tiny Face Detector"))
    for owner, stage, name in stages:
        parts[f"detect: {name}"] = []

        def timed(*args, _run=getattr(owner, stage), _name=name, **kwargs):
            start = time.perf_counter()
            out = _run(*args, **kwargs)
            parts[f"detect: {_name}"].append(time.perf_counter() - start)
            return out
        setattr(owner, stage, timed)


def latency(checkpoint: str, photo: str, detector: str, runs: int, threads: int,
            detector_options: dict = None) -> dict:
    """Median ms per photo in this process: the whole call (decode, predict, the JSON line and the
    table), and its parts timed separately in the same iterations."""
    sys.path.insert(0, str(ROOT))
    import numpy as np

    import predict
    from inference.faces import crop_face, normalize, resize_faces
    from inference.recognizer import EmotionRecognizer
    from inference.sources import Input

    recognizer = EmotionRecognizer(checkpoint, detector=detector, threads=threads, detector_options=detector_options)
    encoded = Path(photo).read_bytes()
    image = recognizer.load(photo)
    item = Input(photo, image=image)
    parts = {"total": [], "decode": [], "detect": [], "crop + resize + normalise": [], "model": []}
    if hasattr(recognizer.detector, "_propose"):
        mtcnn_stages(recognizer.detector, parts)
    for i in range(10 + runs):
        t0 = time.perf_counter()
        dets = recognizer.detector(image)
        t1 = time.perf_counter()
        x = normalize(resize_faces([crop_face(image, d, recognizer.margin) for d in dets], recognizer.img_size),
                      recognizer.mean, recognizer.std)
        t2 = time.perf_counter()
        recognizer.runner(x)
        t3 = time.perf_counter()
        start = time.perf_counter()
        decoded = recognizer.load(encoded)
        decode_end = time.perf_counter()
        faces = recognizer.predict(decoded)
        json.dumps(predict.record(item, faces, 0.0))
        predict.format_faces(item, faces, recognizer.classes, 0.0)
        end = time.perf_counter()
        if i < 10:
            for key in parts:
                parts[key].clear()
        else:
            parts["decode"].append(decode_end - start)
            parts["detect"].append(t1 - t0)
            parts["crop + resize + normalise"].append(t2 - t1)
            parts["model"].append(t3 - t2)
            parts["total"].append(end - start)
    assert len(faces) == 1, f"expected one face, found {len(faces)}"
    out = {k: round(1000 * statistics.median(v), 1) for k, v in parts.items() if v}
    out["face"] = {"box": list(faces[0].box), "emotion": faces[0].emotion}
    out["total p90"] = round(1000 * float(np.percentile(parts["total"], 90)), 1)
    out["total min"] = round(1000 * min(parts["total"]), 1)
    out["torch imported"] = "torch" in sys.modules
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="model to time (default: a random DAN)")
    p.add_argument("--img-size", type=int, default=224, help="input size of the random DAN")
    p.add_argument("--detector", default="auto")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--cold-runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--detector-options", type=json.loads, default=None,
                   help='JSON for the detector\'s constructor, e.g. \'{"max_side": 320, "threads": 2}\'')
    p.add_argument("--latency-only", action="store_true", help="skip the cold-start runs")
    p.add_argument("--make-checkpoint", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.make_checkpoint:
        return make_checkpoint(args.make_checkpoint, args.img_size)

    work = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    if args.latency_only and args.checkpoint:  # the usual export cache: variants of one model export it once
        photo_640x480(work / "astronaut_640x480.jpg")
        report = {"checkpoint": args.checkpoint, "detector": args.detector, "detector options": args.detector_options,
                  "threads": args.threads, "load average before": os.getloadavg()[0],
                  "latency after warm-up (ms, median)": latency(args.checkpoint, str(work / "astronaut_640x480.jpg"),
                                                                args.detector, args.runs, args.threads,
                                                                args.detector_options),
                  "load average after": os.getloadavg()[0]}
        print(json.dumps(report, indent=2))
        return
    env = {**os.environ, "FER_CACHE_DIR": str(work / "cache")}
    checkpoint = args.checkpoint or str(work / "dan.safetensors")
    if not args.checkpoint:
        subprocess.run([sys.executable, __file__, "--make-checkpoint", checkpoint, "--img-size", str(args.img_size)],
                       check=True)
    photo = str(work / "astronaut_640x480.jpg")
    photo_640x480(Path(photo))
    cmd = [sys.executable, "predict.py", "--params", photo, "--checkpoint", checkpoint, "--detector", args.detector]

    report = {"checkpoint": checkpoint, "detector": args.detector, "cpu cores": os.cpu_count(),
              "load average before": os.getloadavg()[0]}
    report["first run, exporting ONNX (s)"] = round(wall(cmd, env), 2)
    cold = [wall(cmd, env) for _ in range(args.cold_runs)]
    report["cold start, cached export (s): median"] = round(statistics.median(cold), 2)
    report["cold start (s): all"] = [round(t, 2) for t in cold]
    report["python3 -c pass (s)"] = round(statistics.median(wall([sys.executable, "-c", "pass"], env)
                                                            for _ in range(3)), 3)
    stages = subprocess.run([sys.executable, "-c", BREAKDOWN, checkpoint, photo, args.detector], cwd=ROOT, env=env,
                            check=True, capture_output=True, text=True).stdout
    report["cold start breakdown (s)"] = {k: (round(v, 3) if isinstance(v, float) else v)
                                          for k, v in json.loads(stages.splitlines()[-1]).items()}
    report["cold start, --backend torch (s)"] = round(wall(cmd + ["--backend", "torch"], env), 2)
    os.environ["FER_CACHE_DIR"] = env["FER_CACHE_DIR"]
    report["latency after warm-up (ms, median)"] = latency(checkpoint, photo, args.detector, args.runs, args.threads,
                                                           args.detector_options)
    report["load average after"] = os.getloadavg()[0]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
