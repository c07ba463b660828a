"""Fake official releases for the data/prepare tests, built in tmp_path with PIL, and helpers
that read what `python3 -m data.prepare` wrote."""
import csv
import itertools
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from data.prepare.cli import main


_seeds = itertools.count()


def noise_image(path: Path, size=(16, 16), mode="RGB") -> Path:
    """Save a noise image no other test image equals (nor nearly equals)."""
    rng = np.random.default_rng(next(_seeds))
    channels = {"RGB": 3, "L": 1}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(path)
    return path


def run_prepare(*argv) -> int:
    return main([str(a) for a in argv])


def read_manifest(root: Path) -> list[dict]:
    with open(root / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def count_layout(root: Path) -> Counter:
    """(split, class) → number of files, read from the folders themselves."""
    return Counter(tuple(p.relative_to(root).parts[:2]) for p in root.glob("*/*/*") if p.is_file())


def count_splits(root: Path) -> Counter:
    return Counter(p.relative_to(root).parts[0] for p in root.glob("*/*/*") if p.is_file())


def read_files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def subjects_by_split(root: Path) -> dict:
    subjects = defaultdict(set)
    for row in read_manifest(root):
        subjects[row["split"]].add(row["subject"])
    return subjects


def make_class_folders(root: Path, classes: dict, subjects=("S001", "S002", "S003", "S004", "S005"), per=2) -> Path:
    """`root/<class>/<subject>_<n>.png` for each folder name → image count per subject."""
    for folder, _ in classes.items():
        for subject in subjects:
            for n in range(per):
                noise_image(root / folder / f"{subject}_{n:03d}.png", mode="L")
    return root


def make_rafdb(root: Path, lines: list[str], original=False) -> Path:
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    for line in lines:
        name = line.split()[0]
        if name.endswith(".jpg") and "missing" not in name:
            stem = name[:-4]
            noise_image(root / "Image" / "aligned" / f"{stem}_aligned.jpg")
            if original:
                noise_image(root / "Image" / "original" / name)
    return root


def rafdb_lines(train=40, test=7) -> list[str]:
    lines = [f"train_{i:05d}.jpg {i % 7 + 1}" for i in range(1, train + 1)]
    return lines + [f"test_{i:04d}.jpg {i % 7 + 1}" for i in range(1, test + 1)]


AFFECTNET_HEADER = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
                     "facial_landmarks", "expression", "valence", "arousal"]


def make_affectnet_csv(path: Path, rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(AFFECTNET_HEADER)
        writer.writerows(rows)


def make_affectnet_manual(root: Path) -> Path:
    images = root / "Manually_Annotated_Images"
    train, val = [], []
    for code in range(11):  # 0-7 expressions, 8-10 none / uncertain / no face
        for k in range(2):
            rel = f"{code + 1}/img_{code}_{k}.jpg"
            noise_image(images / rel, size=(64, 48))
            train.append([rel, 4, 6, 32, 24, "1.0;2.0;3.0", code, 0.1, -0.2])
    for code in range(8):
        rel = f"900/val_{code}.jpg"
        noise_image(images / rel, size=(64, 48))
        val.append([rel, 0, 0, 100, 100, "", code, 0, 0])  # box larger than the image: clipped
    train.append(["1/img_0_0.jpg", "x", 0, 10, 10, "", 1, 0, 0])  # malformed
    train.append(["1/img_0_1.jpg", 0, 0, 10, 10, "", 12, 0, 0])  # out of range
    make_affectnet_csv(root / "training.csv", train)
    make_affectnet_csv(root / "validation.csv", val)
    return root


def fer_pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (48, 48), dtype=np.uint8)


def make_fer_csv(path: Path, rows: list[tuple], icml=False) -> Path:
    """rows: (emotion, pixels (48, 48) or a raw string, usage)."""
    def text(p):
        return p if isinstance(p, str) else " ".join(map(str, p.ravel()))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        if icml:  # Kaggle's variant: another column order, names with a leading space
            writer.writerow(["emotion", " Usage", " pixels"])
            writer.writerows([e, u, text(p)] for e, p, u in rows)
        else:
            writer.writerow(["emotion", "pixels", "Usage"])
            writer.writerows([e, text(p), u] for e, p, u in rows)
    return path


def fer_rows() -> list[tuple]:
    usages = ["Training"] * 14 + ["PublicTest"] * 4 + ["PrivateTest"] * 3
    return [(i % 7, fer_pixels(i), usage) for i, usage in enumerate(usages)]


def make_ferplus_csv(path: Path, votes: list[list], usages: list[str], faces=None) -> Path:
    """FER+'s fer2013new.csv: one row of 10 counts per FER2013 row; rows not in `faces`
    (default: all) have no image name, as FER+ marks non-faces."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Usage", "Image name", "neutral", "happiness", "surprise", "sadness", "anger", "disgust",
                         "fear", "contempt", "unknown", "NF"])
        for i, (vote, usage) in enumerate(zip(votes, usages)):
            writer.writerow([usage, f"fer{i:07d}.png" if faces is None or i in faces else ""] + vote)
    return path


FERPLUS_CASES = [
    ("Training", [0, 8, 1, 0, 0, 0, 0, 0, 1, 0]),  # 0: happy 8 of 10
    ("Training", [0, 0, 1, 4, 3, 0, 1, 0, 1, 0]),  # 1: sad 4 of 10, but 4 of the 7 left without the single votes
    ("Training", [0, 0, 4, 3, 0, 0, 3, 0, 0, 0]),  # 2: no majority; surprise is the top
    ("Training", [1, 0, 0, 0, 0, 0, 0, 0, 9, 0]),  # 3: unknown wins
    ("Training", [0, 3, 0, 0, 0, 0, 0, 0, 4, 3]),  # 4: no majority; unknown is the top
    ("PublicTest", [0, 0, 0, 0, 0, 0, 0, 0, 2, 8]),  # 5: not-a-face wins
    ("PublicTest", [10, 0, 0, 0, 0, 0, 0, 0, 0, 0]),  # 6: no image name: not a face
    ("PublicTest", [0, 0, 0, 3, 0, 0, 0, 7, 0, 0]),  # 7: contempt
    ("PrivateTest", [0, 0, 0, 0, 6, 2, 1, 0, 1, 0]),  # 8: angry
    ("PrivateTest", [5, 5, 0, 0, 0, 0, 0, 0, 0, 0]),  # 9: tie: no majority, no unique top
]


NOT_A_FACE = "not a face: no Image name in fer2013new.csv"


VOTES_HEADER = "file,neutral,happy,surprise,sad,angry,disgust,fear,contempt,unknown,not_face"


def make_ferplus_release(root: Path, cases=FERPLUS_CASES) -> tuple[Path, Path]:
    """(fer2013.csv, fer2013new.csv) in `root`, one FER2013 row per case, row 6 not a face."""
    root.mkdir(parents=True, exist_ok=True)
    usages = [usage for usage, _ in cases]
    fer = make_fer_csv(root / "fer2013.csv", [(i % 7, fer_pixels(100 + i), usage) for i, usage in enumerate(usages)])
    votes = make_ferplus_csv(root / "fer2013new.csv", [vote for _, vote in cases], usages,
                             faces=set(range(len(cases))) - {6})
    return fer, votes


def make_ckplus_release(root: Path, subjects=8, sequences=2, frames=6) -> Path:
    for s in range(1, subjects + 1):
        subject = f"S{s:03d}"
        for q in range(1, sequences + 1):
            sequence = f"{q:03d}"
            for f in range(1, frames + 1):
                frame = root / "cohn-kanade-images" / subject / sequence / f"{subject}_{sequence}_{f:08d}.png"
                noise_image(frame, mode="L")
            if (s + q) % 4 == 0:
                continue  # an unlabelled sequence, as most CK+ sequences are
            emotion = root / "Emotion" / subject / sequence / f"{subject}_{sequence}_{frames:08d}_emotion.txt"
            emotion.parent.mkdir(parents=True, exist_ok=True)
            emotion.write_text(f"   {(s + q) % 7 + 1:.7e}\n")
    return root


def make_prepared_pair(tmp_path: Path) -> tuple[Path, Path]:
    raf = tmp_path / "rafdb"
    run_prepare("rafdb", "--src", make_rafdb(tmp_path / "raf", rafdb_lines(28, 7)), "--dst", raf)
    ck = tmp_path / "ckplus"
    run_prepare("ckplus", "--src", make_ckplus_release(tmp_path / "ck"), "--dst", ck, "--neutral")
    return raf, ck

