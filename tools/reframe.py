"""Re-frame a dataset's faces the way prediction frames them, so that a model trains on what it will see.

    python3 -m tools.reframe --src ../shared/data/sfew --dst Data/sfew_framed
    python3 -m tools.reframe --src Data/rafdb --dst Data/rafdb_framed --splits train val test

Datasets ship their own crops: SFEW's are 143x181 with the hair and the neck, FER2013's are
48-px squares, RAF-DB's are aligned 100-px squares. `predict.py` instead finds each face,
turns it upright by the eyes and cuts a square with a margin of 0.2 of the box on each side.
A model trained on one framing and shown the other loses accuracy (docs/training.md). This
tool runs predict.py's own detector, fallbacks and crop over every image of a dataset and
writes the largest face's crop, at its own size, to the same `<split>/<class>/` layout, with
the standard manifest.csv and `reframe.csv` (per image: how its box was found, the box, the
detector's score). An image in which no face is found is left out and counted.
"""
import argparse
import csv
import logging
from collections import Counter
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from common.errors import ArgumentParser, UserError, number, run_cli
from data.classes import normalize_class_name
from data.images import decode_image
from data.prepare.common import Problems, Sample, check_destination, image_files, sub_folders, write_dataset

from inference.detectors import DETECTORS, build_detector
from inference.faces import Detection
from inference.fallback import Fallback, add_fallback_args, fallback_from_args
from inference.recognizer import locate_faces

log = logging.getLogger(__name__)
REFRAME_CSV = "reframe.csv"
MAX_CROP_SIDE = 512  # larger crops are shrunk: no model here reads more than 300 px


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="Write a dataset's faces cropped as predict.py crops them.")
    p.add_argument("--src", required=True, help="a dataset folder: <split>/<class>/<image>")
    p.add_argument("--dst", required=True, help="the folder to write (replaced if an earlier output of this tool)")
    p.add_argument("--splits", nargs="+", default=["train", "val", "test"],
                   help="splits to re-frame (those missing under --src are skipped)")
    p.add_argument("--source", default=None, help="the source name in manifest.csv (default: --src's folder name)")
    p.add_argument("--detector", default="auto", choices=sorted(DETECTORS))
    p.add_argument("--margin", type=number(float, 0), default=0.2, help="as predict.py's --margin")
    p.add_argument("--no-align", action="store_true", help="as predict.py's --no-align")
    add_fallback_args(p)
    return p


def largest_face(image: np.ndarray, detector, fallback: Fallback, margin: float,
                 align: bool) -> Tuple[Optional[Detection], str, Optional[np.ndarray]]:
    """(the largest face's detection, how it was found, its crop (side, side, 3) uint8), or
    (None, source, None) when no face is found."""
    detections, source, crops = locate_faces(image, detector, fallback, margin, align)
    if not detections:
        return None, source, None
    i = max(range(len(detections)), key=lambda k: detections[k].box[2] * detections[k].box[3])
    return detections[i], source, crops[i]


def reframe(src: Path, dst: Path, splits: List[str], source: str, detector, fallback: Fallback,
            margin: float = 0.2, align: bool = True) -> Counter:
    """Write every image's largest face under `dst`; returns the count of images by how their face
    was found ("detector", "padded", "whole image", "none")."""
    present = [s for s in splits if (src / s).is_dir()]
    if not present:
        raise UserError(f"{src} has none of the splits {splits}")
    check_destination(dst, [src])
    samples, records, how = [], [], Counter()
    problems = Problems()
    files = [(split, class_dir, path) for split in present for class_dir in sub_folders(src / split)
             for path in image_files(class_dir)]
    for split, class_dir, path in tqdm(files, desc="reframe", unit="img", disable=None):
        try:
            image = np.asarray(decode_image(path))
        except UserError as err:
            problems.report(str(path), str(err))
            continue
        det, found_by, crop = largest_face(image, detector, fallback, margin, align)
        if det is None:
            how["none"] += 1
            records.append({"path": "", "original": str(path), "box_source": "none", "box": "", "score": ""})
            continue
        how[found_by] += 1
        face = Image.fromarray(crop)
        if face.width > MAX_CROP_SIDE:
            face = face.resize((MAX_CROP_SIDE, MAX_CROP_SIDE), Image.BILINEAR)
        sample = Sample(name=path.stem + ".png", label=normalize_class_name(class_dir.name), split=split,
                        source=source, original=str(path), load=lambda face=face: face)
        samples.append(sample)
        records.append({"path": sample.relpath, "original": str(path), "box_source": found_by,
                        "box": " ".join(f"{v:.1f}" for v in det.box),
                        "score": "" if det.score is None else f"{det.score:.4f}"})
    if not samples:
        raise UserError(f"no face was found in any image under {src}")
    info = {"kind": "reframe", "src": str(src), "splits": present, "margin": margin, "align": align,
            "fallback": {"pad": fallback.pad, "pad_mode": fallback.pad_mode, "whole_image": fallback.whole_image},
            "found": dict(how)}
    write_dataset(samples, dst, link=False, problems=problems, info=info)
    with open(dst / REFRAME_CSV, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "original", "box_source", "box", "score"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
    return how


def main(args) -> Counter:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    src, dst = Path(args.src), Path(args.dst)
    if not src.is_dir():
        raise UserError(f"--src {src} is not a folder")
    fallback = fallback_from_args(args)
    how = reframe(src, dst, args.splits, args.source or src.name, build_detector(args.detector), fallback,
                  args.margin, not args.no_align)
    total = sum(how.values())
    log.info("%s: %d images, %s", dst, total, ", ".join(f"{k} {v}" for k, v in how.most_common()))
    return how


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
