"""Compare the face detectors predict.py offers: detection rate, false faces and speed.

    python3 benchmarks/bench_detectors.py --data ../shared/data --photo t1.jpg "105,320;330,200;..."

Kinds of test image:
  * photos with their faces' centres given by hand (the astronaut photo in Data/samples is
    always included; add others with --photo PATH "x,y;x,y;...");
  * FER2013 validation faces and CK+ faces (48x48 grey crops of real faces), each enlarged 3x
    and pasted at a random place on a 320x320 grey canvas, when --data holds them;
  * with --small-faces N, FER2013 validation faces resized to N px on a 640x480 canvas: faces
    as small as in a group photo, which a detector that sees a smaller view may miss.
  * with --tight, face crops as they are, the face filling the image (its centre is the face's):
    SFEW val's 143x181 colour movie faces, and FER+ val's and CK+'s 48-px grey faces: photos that
    are already a face, where a detector tends to find nothing.
Detectors are named with their options to compare settings: mtcnn:'{"max_side": 320}'.
Each detector runs without and with predict.py's fallbacks (--fallbacks: "none", "pad" for the
padded retry alone, "all" adding the whole photo when small and face-shaped), so that what the
fallbacks add, found faces and false ones, shows row by row.
A face counts as found when a detection's box contains its centre (each detection finds at
most one face); other detections are false faces. Speed is the median time per call on the
astronaut photo at 640x480, after warm-up, on this machine's CPUs.

With --checkpoint, the FER+ and CK+ sets go through predict.py's own path (EmotionRecognizer with
each detector in turn: margin, alignment by the eyes, flip TTA), and the expression accuracy is
reported per set: over the faces found, and over all faces (a face not found counts as wrong), on
FER+ val faces (majority labels) and CK+ faces pasted the same way. This is how a detector's boxes change what the model answers:

    python3 benchmarks/bench_detectors.py --data ../shared/data --samples 300 \
        --checkpoint Data/dan_ferplus.safetensors --detectors mtcnn tinyface-onet
"""
import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.photos import astronaut_640x480  # noqa: E402
from inference.detectors import build_detector  # noqa: E402
from inference.fallback import Fallback  # noqa: E402

FALLBACKS = {"none": Fallback(pad=0, whole_image=False), "pad": Fallback(whole_image=False), "all": Fallback()}

DETECTORS = ["haar", "haar-alt2", "mtcnn"]


def astronaut_with_centre():
    return astronaut_640x480(), [(281, 62)]


def pasted_crops(folder: Path, n: int, seed: int, side: int = 144, canvas_size=(320, 320)):
    """(image, [centre]) for n random 48x48 crops from folder, resized to `side` and pasted at a
    random place on a grey canvas of `canvas_size` (width, height)."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    rng = random.Random(seed)
    for path in rng.sample(files, min(n, len(files))):
        face = Image.open(path).convert("RGB").resize((side, side), Image.BILINEAR)
        canvas = Image.new("RGB", canvas_size, (128, 128, 128))
        x, y = rng.randint(0, canvas_size[0] - side), rng.randint(0, canvas_size[1] - side)
        canvas.paste(face, (x, y))
        yield np.asarray(canvas), [(x + side // 2, y + side // 2, path.parent.name)]


def tight_crops(folder: Path, n: int, seed: int):
    """(image, [centre]) for n random images of folder as they are: the centre of the image is the face's."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    rng = random.Random(seed)
    for path in sorted(rng.sample(files, min(n, len(files)))):
        image = np.asarray(Image.open(path).convert("RGB"))
        yield image, [(image.shape[1] / 2, image.shape[0] / 2, path.parent.name)]


def match(detections, centres):
    """([(centre, its detection)] for the faces found, false faces) for one image."""
    unused = list(detections)
    found = []
    for centre in centres:
        cx, cy = centre[:2]
        for d in unused:
            x, y, w, h = d.box
            if x <= cx <= x + w and y <= cy <= y + h:
                unused.remove(d)
                found.append((centre, d))
                break
    return found, len(unused)


def evaluate(detector, images, recognizer=None):
    """faces, found, false faces, and with a recognizer (whose detector is `detector`) the faces
    found whose expression predict.py's path reads right."""
    faces = found = false = right = 0
    for image, centres in images:
        answers = recognizer.predict(image) if recognizer is not None else detector(image)
        pairs, fp = match(answers, centres)
        faces, found, false = faces + len(centres), found + len(pairs), false + fp
        if recognizer is not None:
            right += sum(face.emotion == centre[2] for centre, face in pairs)
    return faces, found, false, right


def speed(detector, image, runs: int = 30) -> float:
    for _ in range(5):
        detector(image)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        detector(image)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="folder with fer2013/val and ck_plus_48/all")
    p.add_argument("--samples", type=int, default=300, help="faces drawn from each crop set")
    p.add_argument("--photo", nargs=2, action="append", default=[], metavar=("PATH", "CENTRES"),
                   help='a photo and its faces\' centres, "x,y;x,y"')
    p.add_argument("--detectors", nargs="+", default=DETECTORS,
                   help='names, each optionally with constructor options: mtcnn:\'{"max_side": 320}\'')
    p.add_argument("--small-faces", type=int, default=0,
                   help="also FER2013 val faces resized to this side on a 640x480 canvas (0: not)")
    p.add_argument("--tight", action="store_true",
                   help="also face crops as they are (SFEW val, FER+ val, CK+ under --data)")
    p.add_argument("--fallbacks", nargs="+", default=["none", "all"], choices=sorted(FALLBACKS),
                   help="run each detector with each of these fallback settings")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default=None,
                   help="also classify each face found with this model (expression accuracy per set)")
    args = p.parse_args()
    recognizer = None
    if args.checkpoint:
        from inference.recognizer import EmotionRecognizer
        recognizer = EmotionRecognizer(args.checkpoint, detector="none")

    astro, centres = astronaut_with_centre()
    photos = [(astro, centres)]
    for path, text in args.photo:
        photos.append((np.asarray(Image.open(path).convert("RGB")),
                       [tuple(float(v) for v in c.split(",")) for c in text.split(";")]))
    sets = {"photos": photos}
    if args.data:
        labelled = (("FER+ val", "ferplus/val"),) if recognizer else ()
        for name, sub in (("FER2013 val", "fer2013/val"),) + labelled + (("CK+", "ck_plus_48/all"),):
            folder = Path(args.data) / sub
            if folder.is_dir():
                sets[name] = list(pasted_crops(folder, args.samples, args.seed))
        for name, sub in (("tight: SFEW val", "sfew/val"), ("tight: FER+ val", "ferplus/val"),
                          ("tight: CK+", "ck_plus_48/all")):
            folder = Path(args.data) / sub
            if args.tight and folder.is_dir():
                sets[name] = list(tight_crops(folder, args.samples, args.seed))
        folder = Path(args.data) / "fer2013/val"
        if args.small_faces and folder.is_dir():  # faces as small as in a group photo: what a smaller view loses
            sets[f"FER2013 val, {args.small_faces} px in 640x480"] = list(
                pasted_crops(folder, args.samples, args.seed, args.small_faces, (640, 480)))

    scored_sets = ("FER+ val", "CK+", "tight: SFEW val", "tight: FER+ val", "tight: CK+")
    rows = []
    for spec in args.detectors:
        kind, _, options = spec.partition(":")
        try:
            raw = build_detector(kind, **(json.loads(options) if options else {}))
        except Exception as err:
            print(f"{spec}: unavailable ({err})", file=sys.stderr)
            continue
        for fallback_name in args.fallbacks:
            fallback = FALLBACKS[fallback_name]
            row = evaluate_detector(spec, fallback_name, raw, fallback, astro, sets, recognizer, scored_sets)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    print_tables(rows, sets, recognizer, args.checkpoint, scored_sets)


def evaluate_detector(spec, fallback_name, raw, fallback, astro, sets, recognizer, scored_sets) -> dict:
    """One table row: a detector with one fallback setting on every set."""
    detector = raw if fallback_name == "none" else (lambda image: fallback.detect(raw, image)[0])
    name = spec if fallback_name == "none" else f"{spec} + fallbacks ({fallback_name})"
    row = {"detector": name, "ms_640x480": round(speed(detector, astro), 1)}
    if recognizer is not None:
        recognizer.detector, recognizer.fallback = raw, fallback
    for set_name, images in sets.items():
        scored = recognizer if set_name in scored_sets else None
        faces, found, false, right = evaluate(detector, images, scored)
        row[set_name] = {"faces": faces, "found": found, "false": false}
        if scored:
            row[set_name]["right"] = right
    return row


def print_tables(rows, sets, recognizer, checkpoint, scored_sets) -> None:
    header = "| detector | " + " | ".join(f"{s}: found / faces (false)" for s in sets) + " | ms per 640x480 photo |"
    print(header)
    print("|" + " --- |" * (len(sets) + 2))
    for row in rows:
        cells = [f"{row[s]['found']}/{row[s]['faces']} = {row[s]['found'] / row[s]['faces']:.0%} ({row[s]['false']})"
                 for s in sets]
        print(f"| {row['detector']} | " + " | ".join(cells) + f" | {row['ms_640x480']} |")
    if recognizer:
        scored = [s for s in scored_sets if s in sets]
        print(f"\nExpression accuracy ({checkpoint}): right / faces found, and over all faces\n")
        print("| detector | " + " | ".join(scored) + " |")
        print("|" + " --- |" * (len(scored) + 1))
        for row in rows:
            cells = [f"{row[s]['right']}/{row[s]['found']} = {row[s]['right'] / max(row[s]['found'], 1):.1%}; "
                     f"{row[s]['right'] / row[s]['faces']:.1%} of {row[s]['faces']}" for s in scored]
            print(f"| {row['detector']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
