"""Batches for training and evaluation: a seeded, shardable sampler and an optional in-memory cache.

Small datasets (FER2013, CK+, RAF-DB) are decoded once into a uint8 tensor, on the GPU when
training there, and batches are sliced from it; larger ones stream through DataLoader
workers. Either way a batch is (uint8 images (B, 3, S, S), labels (B,), sources (B,),
indices (B,)), and augmentation happens afterwards on the device (data/transforms.py).
"""
import logging
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from common.errors import UserError

from .datasets import FaceFolder, collate_skip_none
from .transforms import to_device

log = logging.getLogger(__name__)


class ShardedSampler(Sampler):
    """Indices for one epoch, the same for a given (seed, epoch) on every run and device.

    Args:
        n: dataset size.
        shuffle: a fresh permutation each epoch (training); else 0..n-1 in order.
        seed: base seed; the epoch is added so that resuming reproduces the order.
        rank, world_size: DDP shard; training shards are padded to equal length
            (as DistributedSampler does), evaluation shards are not, so summed counts are exact.
        weights: optional per-sample weights: draw the epoch's samples with replacement (class balancing).
        repeats: optional whole number of times each sample appears per epoch (oversampling a
            small source); the epoch then holds sum(repeats) samples.
    """

    def __init__(self, n: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1,
                 weights: Optional[torch.Tensor] = None, repeats: Optional[torch.Tensor] = None):
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.weights = weights
        self.repeats = repeats
        self.size = int(repeats.sum()) if repeats is not None and shuffle else n  # samples per epoch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)[self.rank::self.world_size]
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        pool = torch.arange(self.n)
        if self.repeats is not None:
            pool = pool.repeat_interleave(self.repeats)
        if self.weights is not None:
            idx = pool[torch.multinomial(self.weights[pool], self.size, replacement=True, generator=g)]
        else:
            idx = pool[torch.randperm(self.size, generator=g)]
        total = -(-self.size // self.world_size) * self.world_size
        idx = idx.repeat(-(-total // self.size))[:total]  # pad with the first indices (repeated if n < ranks)
        return idx[self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        # Arithmetic, not len(self.indices()), which would draw a permutation (or weighted
        # samples) of the whole dataset just to count it.
        if self.shuffle:
            return -(-self.size // self.world_size)
        return len(range(self.rank, self.n, self.world_size))


def balanced_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Per-sample weights proportional to 1 / class frequency."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return torch.as_tensor(1.0 / counts[labels], dtype=torch.double)


def source_repeats(sources: np.ndarray, source_names, factors: dict) -> torch.Tensor:
    """Per-sample repeat counts: `factors[name]` for the images of source `name`, 1 for the rest.

    Raises:
        UserError: a factor names a source that is not in the data.
    """
    unknown = sorted(set(factors) - set(source_names))
    if unknown:
        raise UserError(f"--oversample names {unknown}, which are not sources of the training data "
                        f"({', '.join(source_names)})")
    per_source = torch.tensor([factors.get(name, 1) for name in source_names], dtype=torch.long)
    return per_source[torch.as_tensor(sources, dtype=torch.long)]


class TensorCache:
    """Every decodable image of a FaceFolder as one uint8 tensor (N, 3, S, S).

    Unreadable images are reported and removed from `dataset.samples`, so the sampler built
    afterwards sees only good images and every DDP rank gets the same number of batches.
    """

    def __init__(self, dataset: FaceFolder, device: torch.device, workers: int, desc: str = "caching"):
        n, s = len(dataset), dataset.img_size
        self.images = torch.zeros((n, 3, s, s), dtype=torch.uint8)
        self.valid = torch.zeros(n, dtype=torch.bool)
        loader = DataLoader(dataset, batch_size=256, num_workers=workers, collate_fn=collate_skip_none)
        for batch in tqdm(loader, desc=desc, unit="batch", leave=False, dynamic_ncols=True):
            if batch is None:
                continue
            images, _, _, idx = batch
            self.images[idx] = images
            self.valid[idx] = True
        if not self.valid.all():
            keep = self.valid.nonzero().flatten()
            log.warning("%d unreadable images skipped", n - len(keep))
            dataset.samples = [dataset.samples[i] for i in keep.tolist()]
            self.images = self.images[keep]
        self.labels = torch.as_tensor(dataset.labels)
        self.sources = torch.tensor([sample.source for sample in dataset.samples])
        self.images, self.labels, self.sources = (t.to(device) for t in (self.images, self.labels, self.sources))
        self.device = device

    @staticmethod
    def nbytes(dataset: FaceFolder) -> int:
        return len(dataset) * 3 * dataset.img_size ** 2


class Batches:
    """Iterate batches of (images, labels, sources, indices) from a cache or through workers.

    Args:
        dataset: the FaceFolder.
        sampler: a ShardedSampler; call `set_epoch` before each epoch.
        batch_size: images per batch.
        cache: a TensorCache of `dataset`, or None to decode through DataLoader workers.
        workers: DataLoader workers when not cached.
        drop_last: drop a final partial batch (training; BatchNorm needs more than one sample).
    """

    def __init__(self, dataset: FaceFolder, sampler: ShardedSampler, batch_size: int,
                 cache: Optional[TensorCache] = None, workers: int = 0, drop_last: bool = False,
                 pin_memory: bool = False):
        self.dataset, self.sampler, self.batch_size = dataset, sampler, batch_size
        self.cache, self.drop_last = cache, drop_last
        self.loader = None
        if cache is None:
            self.loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                     collate_fn=collate_skip_none, drop_last=drop_last,
                                     pin_memory=pin_memory, persistent_workers=workers > 0,
                                     prefetch_factor=4 if workers > 0 else None)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        if self.loader is not None:
            yield from (batch for batch in self.loader if batch is not None)
            return
        # Pinned and non-blocking: a pageable copy would make the CPU wait for the GPU's queue.
        idx = to_device(self.sampler.indices(), self.cache.device)
        for start in range(0, len(idx), self.batch_size):
            chunk = idx[start:start + self.batch_size]
            if self.drop_last and len(chunk) < self.batch_size:
                break
            yield self.cache.images[chunk], self.cache.labels[chunk], self.cache.sources[chunk], chunk
