"""Training data order and augmentation that are exactly reproducible, across resume too.

USB's loaders restart an interrupted epoch from its beginning and draw augmentations from the
process-global RNG, so a resumed run sees different data than an uninterrupted one. Here:

* :class:`ResumableSampler` gives each (epoch, position) a fixed sample index and a fixed
  per-sample seed, split across processes, and can start in the middle of an epoch. Both depend
  on the position in the epoch's global order only, so ``world_size`` processes with batch ``B``
  see at each step exactly the samples and augmentations of one process with batch
  ``world_size x B`` (the same global batch, whichever machine a process runs on);
* :class:`SeededDataset` applies the dataset's random transforms under that per-sample seed,
  leaving the global RNG untouched, so the result does not depend on workers or resumption.
"""

from __future__ import annotations

import random
from typing import Any, Iterator, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

_MIX = 0x9E3779B1


def _mix(*parts: int) -> int:
    h = 0
    for p in parts:
        h = (h * _MIX + int(p) + 0x7F4A7C15) % (2**63 - 1)
    return h


class ResumableSampler(Sampler[Tuple[int, int]]):
    """Yields ``(index, sample_seed)`` for one process, for one epoch at a time.

    Args:
        dataset_len: Number of items in the dataset.
        num_samples: Items this process draws per epoch (iterations per epoch x batch size).
        seed: Run seed.
        rank: This process's rank.
        world_size: Number of processes.
        batch_size: Batch size, to translate a start iteration into a start position.
    """

    def __init__(
        self, dataset_len: int, num_samples: int, seed: int, rank: int = 0, world_size: int = 1, batch_size: int = 1
    ) -> None:
        if dataset_len < 1:
            raise ValueError("cannot sample from an empty dataset")
        self.dataset_len = dataset_len
        self.num_samples = num_samples
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.batch_size = batch_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start_iteration(self, iteration_in_epoch: int) -> None:
        """Begin the next pass at this iteration of the epoch (0 = the epoch's start)."""
        self.start = iteration_in_epoch * self.batch_size

    def _order(self) -> torch.Tensor:
        gen = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
        total = self.num_samples * self.world_size
        reps = -(-total // self.dataset_len)
        order = torch.cat([torch.randperm(self.dataset_len, generator=gen) for _ in range(reps)])[:total]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        order = self._order().tolist()
        start, self.start = self.start, 0
        for pos in range(start, len(order)):
            # the seed of the global position (rank 0 of one process: the position itself); the leading 0
            # keeps the seeds of single-process runs as they were
            yield order[pos], _mix(self.seed, self.epoch, 0, pos * self.world_size + self.rank)

    def __len__(self) -> int:
        return self.num_samples - self.start


class SeededDataset(Dataset):
    """Wraps a dataset so that ``ds[(index, seed)]`` runs its random transforms under ``seed``.

    Python's, NumPy's and torch's global RNG states are saved and restored around the call.
    Plain integer keys are passed through (evaluation loaders), and so is every key of a dataset
    whose ``deterministic_items`` is true (its items draw no random numbers: seeding would only cost time).
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key: Any) -> Any:
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, seed = key
        if getattr(self.dataset, "deterministic_items", False):  # nothing random to seed (augment_device)
            return self.dataset[index]
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            np.random.seed(seed % (2**32))
            torch.manual_seed(seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


def _worker_options(num_workers: int, pin_memory: bool, persistent_workers: bool) -> dict:
    """DataLoader keywords for workers: persistent workers only when there are workers."""
    opts = dict(num_workers=num_workers, pin_memory=pin_memory)
    if num_workers > 0:
        opts["persistent_workers"] = bool(persistent_workers)
    return opts


def train_loader(
    dataset: Dataset,
    batch_size: int,
    iters_per_epoch: int,
    seed: int,
    rank: int,
    world_size: int,
    num_workers: int,
    pin_memory: bool = False,
    persistent_workers: bool = False,
) -> DataLoader:
    """An infinite-style training loader (one epoch = ``iters_per_epoch`` batches) that can resume.

    Args:
        dataset: The training dataset.
        batch_size: Items per batch.
        iters_per_epoch: Batches per epoch.
        seed: Run seed (data order and per-sample augmentation seeds).
        rank: This process's rank.
        world_size: Number of processes.
        num_workers: DataLoader worker processes.
        pin_memory: Page-locked batches (faster, asynchronous host-to-GPU copies).
        persistent_workers: Keep the workers alive between epochs instead of restarting them
            (and re-copying the dataset into them) at every epoch. The order and the
            augmentations are the same either way: the sampler runs in the main process and
            every sample carries its own seed.
    """
    num_items = len(dataset)  # type: ignore[arg-type]  # map-style datasets have __len__
    sampler = ResumableSampler(num_items, iters_per_epoch * batch_size, seed, rank, world_size, batch_size)
    return DataLoader(
        SeededDataset(dataset),
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
        **_worker_options(num_workers, pin_memory, persistent_workers),
    )


def eval_loader(
    dataset: Dataset, batch_size: int, num_workers: int, pin_memory: bool = False, persistent_workers: bool = False
) -> DataLoader:
    """A deterministic, unshuffled loader that does not consume the global RNG."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        generator=torch.Generator().manual_seed(0),
        **_worker_options(num_workers, pin_memory, persistent_workers),
    )
