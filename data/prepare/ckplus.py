"""`ckplus`: the CK+ release, or the common CK+48 class-folder layout.

Release: `cohn-kanade-images/Sxxx/yyy/*.png` frames and `Emotion/Sxxx/yyy/*_emotion.txt`
labels (codes 0-7). Each labelled sequence gives its last --frames frames (the peak), and
with --neutral its first frame as neutral. CK+48: `<class>/Sxxx_yyy_zzzzzzzz.png`.
The subject (Sxxx) is always known, so every split is subject-disjoint.
"""
import re
from pathlib import Path

from common.errors import UserError
from data.prepare.common import Problems, Sample
from data.prepare.folder import read_class_folders

LABELS = ("neutral", "angry", "contempt", "disgust", "fear", "happy", "sad", "surprise")
CK48_SUBJECT = re.compile(r"^(S\d+)_")


def add_arguments(parser) -> None:
    """Options of the `ckplus` kind."""
    parser.add_argument("--frames", type=int, default=3,
                        help="last frames of each labelled sequence to keep (default: 3)")
    parser.add_argument("--neutral", action="store_true",
                        help="also keep each labelled sequence's first frame, as neutral")


def read(args, problems: Problems) -> list[Sample]:
    """Samples of the CK+ release or of CK+48; no split (it is made by subject)."""
    root = Path(args.src)
    if not root.is_dir():
        raise UserError(f"--src {root} is not a folder: give the CK+ folder (with cohn-kanade-images/) or CK+48")
    if (root / "cohn-kanade-images").is_dir():
        if args.frames < 1:
            raise UserError("--frames must be at least 1")
        return _read_release(root, args.frames, args.neutral, problems)
    if (root / "CK+48").is_dir():
        root = root / "CK+48"
    return read_class_folders(root, "ckplus", CK48_SUBJECT, problems)


def _read_release(root: Path, frames: int, neutral: bool, problems: Problems) -> list[Sample]:
    label_root = root / "Emotion"
    if not label_root.is_dir():
        raise UserError(f"{label_root} is missing: unpack CK+'s Emotion labels next to cohn-kanade-images/")
    samples = []
    for label_file in sorted(label_root.glob("S*/*/*_emotion.txt")):
        label = _read_label(label_file, problems)
        if label is None:
            continue
        subject, sequence = label_file.parent.parent.name, label_file.parent.name
        sequence_dir = root / "cohn-kanade-images" / subject / sequence
        images = sorted(sequence_dir.glob("*.png")) if sequence_dir.is_dir() else []
        if not images:
            problems.report(str(label_file), f"no frames in {sequence_dir}")
            continue
        chosen = [(path, label) for path in images[-frames:]]
        if neutral and images[0] not in images[-frames:]:
            chosen.insert(0, (images[0], "neutral"))
        samples += [Sample(name=path.name, label=name, split=None, source="ckplus", original=str(path),
                           subject=subject, path=path) for path, name in chosen]
    return samples


def _read_label(path: Path, problems: Problems):
    text = path.read_text(errors="replace").split()
    try:
        value = float(text[0])
    except (IndexError, ValueError):
        problems.report(f"{path}:1", f"expected an emotion code 0-7, found {' '.join(text)!r}")
        return None
    if value != int(value) or not 0 <= value < len(LABELS):
        problems.report(f"{path}:1", f"emotion code {value:g} is outside 0-7")
        return None
    return LABELS[int(value)]
