"""Shared fixtures: tiny ImageFolder datasets built in tmp_path, and the real data when present."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# Two cores: keep torch from oversubscribing them while tests run.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def make_image_folder(root: Path, classes, per_class: int = 4, size: int = 40, splits=("train", "val"),
                      seed: int = 0, prefix: str = "") -> Path:
    """Write `per_class` images per class and split; each class has its own mean colour so a
    model can learn it."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                base = np.full((size, size, 3), 40 + 50 * c, dtype=np.float64)
                pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{prefix}{split}_{name}_{i}.png")
    return root


@pytest.fixture
def tiny_data(tmp_path):
    return make_image_folder(tmp_path / "tiny", ["angry", "happy", "sad"], splits=("train", "val", "test"))


def shared_or_skip(*parts) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not available")
    return path
