"""Compute face-api's own 128-D embeddings for a few faces: the fixture that checks the PyTorch port.

    npm install --prefix /tmp/faceapi @vladmandic/face-api@1.7.15 @tensorflow/tfjs@4.22.0 \\
        @tensorflow/tfjs-backend-wasm@4.22.0
    python3 benchmarks/faceapi_reference.py --prefix /tmp/faceapi

The faces: crops of the shipped sample photo (`Data/samples/astronaut.jpg`, public domain) at
three scales, mirrored and in grey, written as 150x150 PNGs to `tests/fixtures/faceapi/`, and
(when `../shared/data` is there) a few FER+ and CK+ faces upscaled to 150x150, named by path only:
those images stay in shared/. Each face goes through face-api's FaceRecognitionNet in Node
(`benchmarks/faceapi_embed.js`, TensorFlow.js's CPU backend) and the embeddings are stored in
`tests/fixtures/faceapi/embeddings.json`; tests/test_face_resnet.py compares the port with them.
The script also prints how far the port is from them, when the converted weights can be read.
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.faceapi import embed, load_face_resnet, read_source, to_state_dict, decode_weights  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "faceapi"
SAMPLE = ROOT / "Data" / "samples" / "astronaut.jpg"
# The sample's face (x0, y0, x1, y1) as Haar finds it (96x96), and two looser boxes around it.
SAMPLE_BOXES = {"tight": (175, 65, 271, 161), "medium": (159, 49, 287, 177), "loose": (139, 29, 307, 197)}
SHARED = ROOT.parent / "shared" / "data"
SHARED_FACES = ("ferplus/val/happy", "ferplus/val/surprise", "ferplus/val/angry", "ck_plus_48/all/fear")


def sample_faces():
    """(name, 150x150x3 uint8) crops of the sample photo."""
    photo = Image.open(SAMPLE).convert("RGB")
    for name, box in SAMPLE_BOXES.items():
        face = photo.crop(box).resize((150, 150), Image.BILINEAR)
        yield f"astronaut_{name}", np.asarray(face)
        if name == "medium":
            yield "astronaut_medium_mirror", np.asarray(face)[:, ::-1]
            yield "astronaut_medium_grey", np.repeat(np.asarray(face.convert("L"))[..., None], 3, axis=2)


def shared_face(relative: str) -> np.ndarray:
    """A shared-data face (grey, 48x48) as the test reads it: RGB, bilinear to 150x150."""
    with Image.open(SHARED / relative) as im:
        return np.asarray(im.convert("RGB").resize((150, 150), Image.BILINEAR))


def shared_faces():
    for folder in SHARED_FACES:
        files = sorted((SHARED / folder).glob("*.png"))
        if files:
            yield str(files[0].relative_to(SHARED)), shared_face(str(files[0].relative_to(SHARED)))


def run_node(model_dir: Path, prefix: Path, faces: np.ndarray) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "faces.bin"
        faces.astype(np.uint8).tofile(raw)
        out = subprocess.run(["node", str(ROOT / "benchmarks" / "faceapi_embed.js"), str(model_dir), str(raw),
                              str(len(faces))], capture_output=True, text=True, check=False,
                             env={"NODE_PATH": str(prefix / "node_modules"), "PATH": "/usr/bin:/bin:/usr/local/bin"})
    if out.returncode:
        sys.exit(f"error: node failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
    return np.array(json.loads(out.stdout), dtype=np.float64)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prefix", type=Path, required=True,
                   help="folder where npm installed @vladmandic/face-api and @tensorflow/tfjs")
    args = p.parse_args()
    package = args.prefix / "node_modules" / "@vladmandic" / "face-api"
    if not (package / "model").is_dir():
        sys.exit(f"error: {package}/model not found: run the npm install of this script's docstring")
    version = json.loads((package / "package.json").read_text())["version"]

    FIXTURES.mkdir(parents=True, exist_ok=True)
    named = list(sample_faces())
    for name, face in named:
        Image.fromarray(face).save(FIXTURES / f"{name}.png")
    entries = [{"name": name, "png": f"{name}.png"} for name, _ in named]
    shared = list(shared_faces()) if SHARED.is_dir() else []
    entries += [{"name": path, "shared": path} for path, _ in shared]
    faces = np.stack([f for _, f in named] + [f for _, f in shared])

    reference = run_node(package / "model", args.prefix, faces)
    fixture = {"package": f"@vladmandic/face-api@{version}", "runtime": "TensorFlow.js cpu backend (Node)",
               "input": "150x150 RGB uint8; face-api subtracts its mean colour and divides by 255",
               "faces": [{**e, "embedding": [round(float(v), 8) for v in emb]} for e, emb in zip(entries, reference)]}
    (FIXTURES / "embeddings.json").write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {len(entries)} reference embeddings to {FIXTURES / 'embeddings.json'}")

    entry, data, _ = read_source(package / "model")
    port = embed(load_face_resnet(to_state_dict(decode_weights(entry, data))), faces)
    print(f"PyTorch port vs face-api: max |difference| {np.abs(port - reference).max():.2e} "
          f"(embedding values up to {np.abs(reference).max():.2f})")


if __name__ == "__main__":
    main()
