"""torch ``Dataset``/``DataLoader`` over an :class:`ImageTable` (or a :class:`ClipTable` for clip models).

Every sample goes through :func:`edgekit.core.spec.preprocess`, the function a deployed model's runtime also
uses, so training, evaluation, calibration and deployment cannot disagree. Augmentation works on the
uint8 image *before* preprocessing, the way a camera frame would differ.
"""
from __future__ import annotations

import numpy as np

from edgekit.core.spec import ModelSpec, preprocess, preprocess_clip
from edgekit.core.data import ImageTable


def augment(image: np.ndarray, rng: np.random.Generator, shift: float = 0.1, hflip: bool = False) -> np.ndarray:
    """Random translation by up to ``shift`` of the size (edge-padded) and an optional mirror."""
    height, width = image.shape[:2]
    dy, dx = (int(rng.integers(-round(s * shift), round(s * shift) + 1)) for s in (height, width))
    if dy or dx:
        pad = [(abs(dy), abs(dy)), (abs(dx), abs(dx))] + [(0, 0)] * (image.ndim - 2)
        padded = np.pad(image, pad, mode="edge")
        image = padded[abs(dy) - dy: abs(dy) - dy + height, abs(dx) - dx: abs(dx) - dx + width]
    if hflip and rng.random() < 0.5:
        image = image[:, ::-1]
    return np.ascontiguousarray(image)


class TableDataset:
    """Map-style dataset of (preprocessed CHW float32 tensor, label) for the given indices."""

    def __init__(self, table: ImageTable, indices: np.ndarray, spec: ModelSpec,
                 train: bool = False, hflip: bool = False, seed: int = 0):
        self.table, self.indices, self.spec = table, np.asarray(indices), spec
        self.train, self.hflip = train, hflip
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        import torch

        index = int(self.indices[i])
        image = self.table.image(index)
        if self.train:
            image = augment(image, self.rng, hflip=self.hflip)
        x = preprocess(image, self.spec, source_color=self.table.color)
        return torch.from_numpy(x), int(self.table.labels[index])


class ClipDataset(TableDataset):
    """(preprocessed C x T x H x W clip, label): a random stretch of each segment when training, its middle
    otherwise; augmentation draws its shift and mirror once per clip and applies them to every frame."""

    def __getitem__(self, i: int):
        import torch

        index = int(self.indices[i])
        spec = self.spec
        frames = self.table.clip(index, spec.clip_frames, spec.frame_stride, rng=self.rng if self.train else None)
        if self.train:
            seed = int(self.rng.integers(2**63))
            frames = [augment(frame, np.random.default_rng(seed), hflip=self.hflip) for frame in frames]
        x = preprocess_clip(frames, spec, source_color=self.table.color)
        return torch.from_numpy(x), int(self.table.labels[index])


def make_loader(table: ImageTable, indices: np.ndarray, spec: ModelSpec, batch_size: int,
                train: bool = False, hflip: bool = False, seed: int = 0, workers: int = 0,
                shard: tuple[int, int] | None = None):
    """A DataLoader over ``indices``. ``shard=(rank, world_size)``: this process's share of a distributed
    training split (torch's DistributedSampler: a seeded permutation per epoch, cut into equal parts; call
    ``loader.sampler.set_epoch(epoch)`` each epoch), with its own augmentation seed."""
    import torch
    from torch.utils.data import DataLoader

    generator = torch.Generator().manual_seed(seed)
    rank, world = shard or (0, 1)
    kind = ClipDataset if spec.task == "clip" else TableDataset
    dataset = kind(table, indices, spec, train=train, hflip=hflip, seed=seed + 1000 * rank)
    sampler = None
    if shard is not None:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=train, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler,
                      generator=generator, num_workers=workers,
                      drop_last=train and len(dataset) > batch_size * world,
                      worker_init_fn=_seed_worker if workers else None)


def _seed_worker(worker_id: int) -> None:
    import torch

    info = torch.utils.data.get_worker_info()
    info.dataset.rng = np.random.default_rng(torch.initial_seed() % 2**32)
