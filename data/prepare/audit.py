"""`audit`: does a prepared dataset leak between its splits?

Reads `<dir>/<split>/<class>/<image>` and reports counts per split and class; exact
duplicates (same decoded pixels) and near duplicates (perceptual hash within a small
Hamming distance) within and across splits; identical images filed under more than one
class; unreadable files; and subjects found in more than one split.

An image "leaks" when a copy of it (or its subject) is in an earlier split, in the order
train, val, test, then any other split by name. A val/ that is an exact copy of test/ (the
held-out-fold protocol, --val-is-test) is reported as such, not as a leak.
"""
import contextlib
import hashlib
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image
from tqdm import tqdm

from common.errors import UserError
from data.layout import SPLITS, split_source_prefix
from data.prepare.common import image_files, read_manifest, sub_folders
from data.prepare.folder import compile_subject_regex, subject_of

# Rows of the 32-point DCT-II basis for the 8 lowest frequencies: (8, 32).
_DCT = np.cos(np.pi * np.outer(np.arange(8), 2 * np.arange(32) + 1) / 64)
_EXAMPLES = 10


def add_arguments(parser) -> None:
    """Options of the `audit` kind."""
    parser.add_argument("dir", help="prepared dataset: <dir>/<split>/<class>/<image>")
    parser.add_argument("--json", default=None, help="also write the report as JSON to this file")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when any split leaks")
    parser.add_argument("--near-radius", type=int, default=2, choices=range(0, 7), metavar="0-6",
                        help="largest perceptual-hash distance (bits of 64) counted as a near duplicate "
                             "(default: 2; 0 = equal hashes only)")
    parser.add_argument("--subject-regex", default=None,
                        help="subject in file names, for datasets whose manifest.csv has no subjects")
    parser.add_argument("--workers", type=int, default=1, help="processes that decode images (default: 1)")


def run(args) -> int:
    """Audit args.dir, print the report, write --json; 1 under --strict when it leaks, else 0."""
    report = audit(Path(args.dir), near_radius=args.near_radius,
                   subject_regex=compile_subject_regex(args.subject_regex), workers=args.workers)
    print(format_report(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 1 if args.strict and report["leaks"] else 0


@dataclass
class _Image:
    path: str  # relative to the dataset root, e.g. "val/happy/x.jpg"
    split: str
    label: str
    subject: str = ""
    digest: Optional[bytes] = None
    phash: Optional[int] = None


def audit(root: Path, *, near_radius: int = 2, subject_regex: Optional[re.Pattern] = None,
          workers: int = 1) -> dict:
    """Audit a prepared dataset; the report is a JSON-ready dict (see format_report)."""
    images, order = _scan(root, subject_regex)
    unreadable = _fingerprint(root, images, workers)
    readable = [im for im in images if im.digest is not None]
    exact = defaultdict(list)
    for i, im in enumerate(readable):
        exact[im.digest].append(i)
    near = _near_pairs(readable, near_radius)
    val_is_test = _val_is_test(readable)
    rank = {split: i for i, split in enumerate(order)}
    if val_is_test:  # val is deliberately test itself: compare both only with what comes before
        rank["test"] = rank["val"]
    cross = _cross_split(readable, exact, near, rank)
    subjects = _subject_overlap(readable, rank)
    return {
        "root": str(root),
        "images": len(images),
        "splits": order,
        "counts": _counts(images, order),
        "near_radius": near_radius,
        "exact_duplicates_within": _exact_within(readable, exact, order),
        "near_duplicates_within": _near_within(readable, near, order),
        "cross_split_duplicates": cross["images"],
        "cross_split_exact": cross["exact"],
        "cross_split_near": cross["near"],
        "cross_split_other_class": cross["relabelled"],
        "cross_split_by_pair": cross["by_pair"],
        "cross_split_examples": cross["examples"],
        "conflicting_labels": _conflicts(readable, exact),
        "unreadable": unreadable,
        "subjects_known": any(im.subject for im in images),
        "subject_overlap": subjects,
        "val_is_test": val_is_test,
        "leaks": bool(cross["images"] or subjects),
    }


def _scan(root: Path, subject_regex) -> tuple[list[_Image], list[str]]:
    if not root.is_dir():
        raise UserError(f"{root} is not a folder: give a prepared dataset <dir>/<split>/<class>/<image>")
    order = sorted((f.name for f in sub_folders(root)), key=lambda s: (SPLITS.index(s) if s in SPLITS else 3, s))
    manifest = read_manifest(root)
    images = []
    for split in order:
        for class_dir in sub_folders(root / split):
            for path in image_files(class_dir):
                rel = path.relative_to(root).as_posix()
                images.append(_Image(rel, split, class_dir.name, _subject(rel, path.name, manifest, subject_regex)))
    if not images:
        raise UserError(f"{root} holds no images in <split>/<class>/ folders: is it a prepared dataset?")
    return images, [s for s in order if any(im.split == s for im in images)]


def _subject(rel: str, name: str, manifest: dict, subject_regex) -> str:
    """'source/subject' of an image, '' when unknown."""
    row = manifest.get(rel, {})
    source, bare = split_source_prefix(name)
    source = row.get("source") or source
    subject = row.get("subject", "")
    if not subject and subject_regex is not None:
        subject = subject_of(bare, subject_regex)
    return f"{source}/{subject}" if subject else ""


def _fingerprint(root: Path, images: list[_Image], workers: int) -> list[dict]:
    """Fill in each image's pixel digest and perceptual hash; return the unreadable files."""
    paths = [root / im.path for im in images]
    unreadable = []
    with Pool(workers) if workers > 1 else contextlib.nullcontext() as pool:
        results = pool.imap(fingerprint, paths, chunksize=64) if pool else map(fingerprint, paths)
        for im, (digest, phash, error) in zip(images, tqdm(results, total=len(paths), desc="auditing",
                                                           unit="img", disable=None)):
            im.digest, im.phash = digest, phash
            if error:
                unreadable.append({"path": im.path, "error": error})
    return unreadable


def fingerprint(path: Path) -> tuple[Optional[bytes], Optional[int], str]:
    """(digest of the decoded pixels, 64-bit perceptual hash, '') or (None, None, error)."""
    try:
        with Image.open(path) as image:
            image.load()
            header = f"{image.mode} {image.width}x{image.height} ".encode()
            digest = hashlib.blake2b(header + image.tobytes(), digest_size=16).digest()
            grey = np.asarray(image.convert("L").resize((32, 32), Image.BILINEAR), dtype=np.float64)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        return None, None, str(err) or type(err).__name__
    return digest, perceptual_hash(grey), ""


def perceptual_hash(grey: np.ndarray) -> int:
    """DCT hash of a (32, 32) grey image: 64 bits, one per low frequency above the median."""
    coeffs = np.round(_DCT @ grey @ _DCT.T, 3).ravel()  # (64,); rounding makes flat images hash alike
    bits = coeffs > np.median(coeffs[1:])
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def _near_pairs(images: list[_Image], radius: int) -> dict[int, set]:
    """Index → indices of images within `radius` hash bits but with different pixels.

    Two hashes within `radius` bits agree exactly on at least one of `radius + 1` bands
    (pigeonhole), so only images sharing a band are compared.
    """
    bands = radius + 1
    width = -(-64 // bands)
    near = defaultdict(set)
    for band in range(bands):
        buckets = defaultdict(list)
        for i, im in enumerate(images):
            buckets[(im.phash >> (band * width)) & ((1 << width) - 1)].append(i)
        for members in buckets.values():
            for a, i in enumerate(members):
                for j in members[a + 1:]:
                    if ((images[i].phash ^ images[j].phash).bit_count() <= radius
                            and images[i].digest != images[j].digest):
                        near[i].add(j)
                        near[j].add(i)
    return near


def _val_is_test(images: list[_Image]) -> bool:
    val = Counter(im.digest for im in images if im.split == "val")
    return bool(val) and val == Counter(im.digest for im in images if im.split == "test")


def _cross_split(images: list[_Image], exact: dict, near: dict, rank: dict) -> dict:
    """Images with an exact or near copy in an earlier split, in all and by pair of splits."""
    by_pair = defaultdict(Counter)
    examples, leaked, exact_count, relabelled = [], 0, 0, 0
    for i, im in enumerate(images):
        relabelled += any(images[j].label != im.label and rank[images[j].split] < rank[im.split]
                          for j in exact[im.digest])
        copies = {}  # earlier split -> (kind, index of one copy); exact wins over near
        for kind, others in (("near", near.get(i, ())), ("exact", exact[im.digest])):
            for j in others:
                if rank[images[j].split] < rank[im.split]:
                    copies[images[j].split] = (kind, j)
        if not copies:
            continue
        for split, (kind, _) in copies.items():
            by_pair[f"{im.split}-{split}"][kind] += 1
        kind, j = min(copies.values())  # "exact" sorts before "near"
        leaked += 1
        exact_count += kind == "exact"
        if len(examples) < _EXAMPLES:
            examples.append({"path": im.path, "copy": images[j].path, "kind": kind})
    pairs = {pair: {"exact": c["exact"], "near": c["near"]} for pair, c in sorted(by_pair.items())}
    return {"images": leaked, "exact": exact_count, "near": leaked - exact_count, "relabelled": relabelled,
            "by_pair": pairs, "examples": examples}


def _counts(images: list[_Image], order: list[str]) -> dict:
    counts = Counter((im.split, im.label) for im in images)
    return {split: {label: n for (s, label), n in sorted(counts.items()) if s == split} for split in order}


def _exact_within(images: list[_Image], exact: dict, order: list[str]) -> dict:
    """Per split: extra copies of identical images, and how many such groups."""
    result = {split: {"extra_copies": 0, "groups": 0} for split in order}
    for members in exact.values():
        per_split = Counter(images[i].split for i in members)
        for split, n in per_split.items():
            if n > 1:
                result[split]["extra_copies"] += n - 1
                result[split]["groups"] += 1
    return result


def _near_within(images: list[_Image], near: dict, order: list[str]) -> dict:
    """Per split: images with a near (not exact) copy in the same split."""
    result = dict.fromkeys(order, 0)
    for i, others in near.items():
        if any(images[j].split == images[i].split for j in others):
            result[images[i].split] += 1
    return result


def _conflicts(images: list[_Image], exact: dict) -> dict:
    """Identical images filed under more than one class."""
    groups = [members for members in exact.values() if len({images[i].label for i in members}) > 1]
    across = sum(len({images[i].split for i in members}) > 1 for members in groups)
    examples = [sorted(f"{images[i].path}" for i in members) for members in groups[:_EXAMPLES]]
    return {"groups": len(groups), "images": sum(map(len, groups)), "groups_across_splits": across,
            "examples": examples}


def _subject_overlap(images: list[_Image], rank: dict) -> dict:
    """'split-earlier split' → subjects in both, for subjects that are known."""
    by_split = defaultdict(set)
    for im in images:
        if im.subject:
            by_split[im.split].add(im.subject)
    overlap = {}
    for split, subjects in by_split.items():
        for other, others in by_split.items():
            shared = subjects & others
            if rank[other] < rank[split] and shared:
                overlap[f"{split}-{other}"] = sorted(shared)
    return dict(sorted(overlap.items()))


def format_report(report: dict) -> str:
    """The audit as readable text."""
    splits = len(report["splits"])
    lines = [f"audit of {report['root']}: {report['images']:,} images in {splits} split{'s' * (splits != 1)}", ""]
    lines += _count_table(report["counts"]) + [""]
    within = "; ".join(f"{s} {v['extra_copies']:,} extra copies in {v['groups']:,} groups"
                       for s, v in report["exact_duplicates_within"].items())
    lines.append(f"exact duplicates within a split: {within}")
    near = "; ".join(f"{s} {n:,} images" for s, n in report["near_duplicates_within"].items())
    lines.append(f"near duplicates within a split (hash distance <= {report['near_radius']}): {near}")
    lines.append(f"cross-split duplicates: {report['cross_split_duplicates']:,} images have a copy in an earlier "
                 f"split (exact {report['cross_split_exact']:,}, of which {report['cross_split_other_class']:,} "
                 f"under another class; near {report['cross_split_near']:,})")
    for pair, n in report["cross_split_by_pair"].items():
        lines.append(f"  {pair.replace('-', ' in ')}: exact {n['exact']:,}, near {n['near']:,}")
    lines += [f"  e.g. {e['path']} = {e['copy']} ({e['kind']})" for e in report["cross_split_examples"][:3]]
    conflicts = report["conflicting_labels"]
    lines.append(f"identical images under more than one class: {conflicts['groups']:,} groups "
                 f"({conflicts['groups_across_splits']:,} across splits)")
    lines += [f"  e.g. {' = '.join(group[:3])}" + (f" (+{len(group) - 3} more)" if len(group) > 3 else "")
              for group in conflicts["examples"][:3]]
    lines.append(f"unreadable files: {len(report['unreadable']):,}")
    lines += [f"  {u['path']}: {u['error']}" for u in report["unreadable"][:_EXAMPLES]]
    lines += _subject_lines(report)
    if report["val_is_test"]:
        lines.append("val/ is an exact copy of test/ (held-out fold used for both): val/ is not counted as a leak")
    lines += ["", "verdict: " + _verdict(report)]
    return "\n".join(lines)


def _count_table(counts: dict) -> list[str]:
    labels = sorted({label for per_split in counts.values() for label in per_split})
    width = max([5] + [len(label) for label in labels])
    rows = ["split".ljust(8) + "".join(label.rjust(width + 1) for label in labels) + "total".rjust(width + 2)]
    for split, per_split in counts.items():
        cells = "".join(f"{per_split.get(label, 0):>{width + 1},}" for label in labels)
        rows.append(split.ljust(8) + cells + f"{sum(per_split.values()):>{width + 2},}")
    return rows


def _subject_lines(report: dict) -> list[str]:
    if not report["subjects_known"]:
        return ["subjects: unknown (manifest.csv has none; pass --subject-regex if file names carry them)"]
    if not report["subject_overlap"]:
        return ["subjects: every subject is in one split only"]
    return [f"subjects in two splits: {pair.replace('-', ' and ')}: {len(s)} ({', '.join(s[:5])}"
            + (", ...)" if len(s) > 5 else ")") for pair, s in report["subject_overlap"].items()]


def _verdict(report: dict) -> str:
    if not report["leaks"]:
        return "clean: no image or subject of one split is in another"
    parts = []
    if report["cross_split_duplicates"]:
        parts.append(f"{report['cross_split_duplicates']:,} images have copies in an earlier split")
    if report["subject_overlap"]:
        parts.append(f"{sum(map(len, report['subject_overlap'].values()))} subjects appear in two splits")
    return "LEAKS: " + "; ".join(parts)
