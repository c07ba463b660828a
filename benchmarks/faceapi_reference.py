"""Compute face-api's own 128-D embeddings for a few faces: the fixture that checks the PyTorch port.

    npm install --prefix /tmp/faceapi @vladmandic/face-api@1.7.15 @tensorflow/tfjs@4.22.0 \\
        @tensorflow/tfjs-backend-wasm@4.22.0
    python3 benchmarks/faceapi_reference.py --prefix /tmp/faceapi

The faces: crops of the shipped sample photo (`Data/samples/astronaut.jpg`, public domain) at
three scales, mirrored and in grey, written as 150x150 PNGs to `tests/fixtures/faceapi/`, and
(when `../shared/data` is there) a few FER+ and CK+ faces upscaled to 150x150, named by path only:
those images stay in shared/. Each face goes through face-api's FaceRecognitionNet in Node
(`benchmarks/faceapi_node.js embed`, TensorFlow.js's CPU backend) and the embeddings are stored in
`tests/fixtures/faceapi/embeddings.json`; tests/test_face_resnet.py compares the port with them.
The script also prints how far the port is from them, when the converted weights can be read.

It does the same for face-api's Tiny Face Detector (`benchmarks/faceapi_node.js tinyface`): the
sample photo at 224 and 320 pixels square, and mirrored at 224, go through face-api's own
network and `locateFaces`; the images are stored as PNGs and the raw outputs and boxes in
`tests/fixtures/faceapi/tinyface.json`, which tests/test_tinyface.py compares the port with.
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

from tools.faceapi import embed, load_face_resnet, read_source, to_state_dict, decode_weights  # noqa: E402

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


def run_node(kind: str, model_dir: Path, prefix: Path, images: np.ndarray):
    """What benchmarks/faceapi_node.js prints for square `images` (uint8, written as raw bytes)."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "images.bin"
        images.astype(np.uint8).tofile(raw)
        out = subprocess.run(["node", str(ROOT / "benchmarks" / "faceapi_node.js"), kind, str(model_dir), str(raw),
                              str(images.shape[1]), str(len(images))], capture_output=True, text=True, check=False,
                             env={"NODE_PATH": str(prefix / "node_modules"), "PATH": "/usr/bin:/bin:/usr/local/bin"})
    if out.returncode:
        sys.exit(f"error: node failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
    return json.loads(out.stdout)


def tinyface_images():
    """(name, side, square uint8 image) inputs of the Tiny Face Detector reference: the sample photo."""
    photo = Image.open(SAMPLE).convert("RGB")
    for side in (224, 320):
        yield f"tinyface_{side}", side, np.asarray(photo.resize((side, side), Image.BILINEAR))
    yield "tinyface_224_mirror", 224, np.asarray(photo.resize((224, 224), Image.BILINEAR))[:, ::-1]


def tinyface_reference(package: Path, prefix: Path, version: str) -> None:
    import torch

    from networks.tinyface_net import PixelInput
    from tools.faceapi import TINYFACE_MANIFEST, load_tinyface_net, tinyface_state

    entries = []
    for name, side, image in tinyface_images():
        Image.fromarray(image).save(FIXTURES / f"{name}.png")
        out = run_node("tinyface", package / "model", prefix, image[None])[0]
        entries.append({"name": name, "png": f"{name}.png", "side": side, "shape": out["shape"],
                        "raw": [round(float(v), 6) for v in out["raw"]],
                        "boxes": [[round(float(v), 4) for v in b] for b in out["boxes"]]})
    fixture = {"package": f"@vladmandic/face-api@{version}", "runtime": "TensorFlow.js cpu backend (Node)",
               "input": "square RGB uint8 images fed at inputSize = their side (no padding, no resizing)",
               "images": entries}
    (FIXTURES / "tinyface.json").write_text(json.dumps(fixture) + "\n")
    print(f"wrote {len(entries)} Tiny Face Detector references to {FIXTURES / 'tinyface.json'}")

    entry, data, _ = read_source(package / "model", TINYFACE_MANIFEST)
    port = PixelInput(load_tinyface_net(tinyface_state(decode_weights(entry, data)))).eval()
    for e, (_, _, image) in zip(entries, tinyface_images()):
        with torch.no_grad():
            ours = port(torch.from_numpy(image.copy())[None]).numpy()[0].transpose(1, 2, 0)
        ref = np.array(e["raw"]).reshape(ours.shape)
        print(f"{e['name']}: PyTorch port vs face-api: max |difference| {np.abs(ours - ref).max():.2e} "
              f"(outputs up to {np.abs(ref).max():.2f}); face-api's boxes {e['boxes']}")


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

    reference = np.array(run_node("embed", package / "model", args.prefix, faces), dtype=np.float64)
    fixture = {"package": f"@vladmandic/face-api@{version}", "runtime": "TensorFlow.js cpu backend (Node)",
               "input": "150x150 RGB uint8; face-api subtracts its mean colour and divides by 255",
               "faces": [{**e, "embedding": [round(float(v), 8) for v in emb]} for e, emb in zip(entries, reference)]}
    (FIXTURES / "embeddings.json").write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {len(entries)} reference embeddings to {FIXTURES / 'embeddings.json'}")

    entry, data, _ = read_source(package / "model")
    port = embed(load_face_resnet(to_state_dict(decode_weights(entry, data))), faces)
    print(f"PyTorch port vs face-api: max |difference| {np.abs(port - reference).max():.2e} "
          f"(embedding values up to {np.abs(reference).max():.2f})")
    tinyface_reference(package, args.prefix, version)


if __name__ == "__main__":
    main()
