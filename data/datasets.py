"""ImageFolder datasets with several sources: `<dataset>/<split>/<class>/<image>`.

Classes are matched by canonical name across datasets; every image keeps its source dataset
so results can be reported per source: the source comes from the dataset's `manifest.csv`
(written by `python3 -m data.prepare`), else from a `<source>__` file-name prefix (as merged
datasets name their files), else from the dataset folder's name.
"""
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from common.errors import UserError

from .classes import normalize_class_name
from .images import decode_image
from .layout import MANIFEST, CsvReader, is_image_file, split_source_prefix
from .votes import VOTES, majority_agreement, read_votes, soft_targets

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FolderImage:
    """One image of a FaceFolder: its file, class index, source index and dataset folder."""

    path: str
    label: int
    source: int
    root: int = 0  # index into FaceFolder.roots


def find_datasets(root: Path) -> List[Path]:
    """Every folder directly under `root` that holds a `train/` split."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / "train").is_dir())


def read_manifest_sources(root: Path) -> Dict[str, str]:
    """{relative path: source} from the manifest.csv that `python3 -m data.prepare` writes, if any."""
    manifest = root / MANIFEST
    if not manifest.is_file():
        return {}
    with open(manifest, newline="", encoding="utf-8") as f:
        return {row["path"]: row["source"] for row in CsvReader(f, manifest) if row.get("path") and row.get("source")}


def source_of(path: Path, root: Path, manifest: Dict[str, str]) -> str:
    """The image's source dataset: from the manifest, else a `<source>__` file-name prefix (merged
    datasets), else the dataset folder's name."""
    rel = path.relative_to(root).as_posix()
    if rel in manifest:
        return manifest[rel]
    return split_source_prefix(path.name)[0] or root.name


class FaceFolder(Dataset):
    """Images of one split from one or more dataset folders.

    Args:
        roots: dataset folders, each with `<split>/<class>/` subfolders.
        split: "train", "val" or "test".
        img_size: images are resized to img_size x img_size.
        classes: the class list to use (from training or a checkpoint); None takes the sorted
            union of the class folders found. A class folder not in `classes` is an error...
        skip_unknown: ...unless this is set: then its images are left out (cross-dataset tests).
        grayscale: turn every image grey (three equal channels, ITU-R 601 luma as PIL's "L"),
            as prediction does for a model trained grey.

    Items are (uint8 image (3, S, S), label, source index, sample index), or None for an
    unreadable image (reported once by path; `collate_skip_none` drops it).
    """

    def __init__(self, roots: Sequence[Path], split: str, img_size: int, classes: Optional[Sequence[str]] = None,
                 skip_unknown: bool = False, grayscale: bool = False):
        self.roots = [Path(r) for r in roots]
        self.grayscale = grayscale
        self.split = split
        self.img_size = img_size
        found = self._scan()
        names = sorted({item[1] for item in found})
        if classes is None:
            classes = names
        unknown = sorted(set(names) - set(classes))
        if unknown and skip_unknown:
            log.info("skipping the classes %s, which the model does not know", unknown)
            found = [item for item in found if item[1] not in unknown]
        elif unknown:
            raise UserError(f"the {split} data has classes {unknown} that the model does not know "
                            f"(it knows {list(classes)}); remove those folders or retrain")
        self.classes = list(classes)
        self.sources = sorted({item[2] for item in found})
        index = {c: i for i, c in enumerate(self.classes)}
        src_index = {s: i for i, s in enumerate(self.sources)}
        self.samples = [FolderImage(str(p), index[c], src_index[s], r) for p, c, s, r in found]
        if not self.samples:
            raise UserError(f"no images found in the {split} split of {', '.join(map(str, self.roots))}")

    def _scan(self):
        found = []
        for r, root in enumerate(self.roots):
            split_dir = root / self.split
            if not split_dir.is_dir():
                raise UserError(f"{split_dir} does not exist; each dataset folder needs "
                                f"train/ and val/ (and optionally test/) with one folder per class")
            manifest = read_manifest_sources(root)
            for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
                name = normalize_class_name(class_dir.name)
                before = len(found)
                for path in sorted(class_dir.rglob("*")):
                    if path.is_file() and is_image_file(path):
                        found.append((path, name, source_of(path, root, manifest), r))
                if len(found) == before:
                    log.warning("%s holds no images: %s is left out of this %s split", class_dir, name, self.split)
        return found

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    @property
    def source_ids(self) -> np.ndarray:
        return np.array([s.source for s in self.samples], dtype=np.int64)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.classes))

    def missing_classes(self) -> List[str]:
        """The classes of `classes` that have no image in this split."""
        return [c for c, n in zip(self.classes, self.class_counts()) if n == 0]

    def __len__(self) -> int:
        return len(self.samples)

    def vote_targets(self, extra: Optional[Path] = None,
                     min_votes: int = 2) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        """((N, C) label distributions from the annotators' votes (see data.votes), one-hot for
        images without votes; (N,) whether each came from votes), or (None, None) when no votes
        file applies. Each root's own `votes.csv` applies to that root; `extra` (--soft-labels)
        to every root, its paths taken relative to each."""
        own = {r: root / VOTES for r, root in enumerate(self.roots) if (root / VOTES).is_file()}
        if not own and not extra:
            return None, None
        shared = read_votes(extra) if extra else {}
        per_root = {r: {**shared, **read_votes(path)} for r, path in own.items()}
        votes, keys = {}, []
        for s in self.samples:
            key = (s.root, Path(s.path).relative_to(self.roots[s.root]).as_posix())
            found = per_root.get(s.root, shared).get(key[1])
            if found is not None:
                votes[key] = found
            keys.append(key)
        targets, from_votes = soft_targets(keys, self.labels, self.classes, votes, min_votes)
        log.info("%s: label distributions from votes for %d of %d images (one-hot for the rest)",
                 self.split, from_votes.sum(), len(keys))
        agreement = majority_agreement(targets[from_votes], self.labels[from_votes])
        if agreement < 0.9:
            log.warning("the votes' top class matches the folder label for only %.1f%% of the %s images: "
                        "are the votes for these images?", 100 * agreement, self.split)
        return targets, from_votes

    def soft_targets(self, extra: Optional[Path] = None, min_votes: int = 2) -> Optional[np.ndarray]:
        """The training targets of `vote_targets`, or None without votes."""
        return self.vote_targets(extra, min_votes)[0]

    def load(self, i: int) -> torch.Tensor:
        """Decode sample i as a uint8 (3, S, S) tensor."""
        image = decode_image(self.samples[i].path)
        if self.grayscale:
            image = image.convert("L").convert("RGB")
        image = image.resize((self.img_size, self.img_size), Image.BILINEAR)
        return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)

    def __getitem__(self, i: int):
        sample = self.samples[i]
        try:
            image = self.load(i)
        except (UserError, OSError) as err:
            log.warning("skipping unreadable image %s: %s", sample.path, err)
            return None
        return image, sample.label, sample.source, i


def collate_skip_none(batch):
    """Stack (image, label, source, index) items, dropping unreadable (None) ones."""
    batch = [item for item in batch if item is not None]
    if not batch:
        return None
    images, labels, sources, indices = zip(*batch)
    return (torch.stack(images), torch.tensor(labels), torch.tensor(sources), torch.tensor(indices))
