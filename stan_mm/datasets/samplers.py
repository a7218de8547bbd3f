"""Samplers that keep groups of related samples together in a batch.

``TwinGroupSampler`` serves the synthetic motion benchmark's *twins* (one trajectory
rendered forward and backward: the same frames in opposite order, with partner labels)
next to each other, so that with an even batch size both twins of a group land in the same
batch. Each such batch holds pairs of inputs that an order-blind model cannot tell apart
while their labels differ, so every step's gradient is about frame order: on the
quickstart this is what lets a from-scratch tiny STAN learn growing vs shrinking
(``docs/quickstart.md`` has the measurements).
"""
import math
from typing import Iterator, List, Optional, Sequence

import numpy as np
import torch
from mmaction.registry import DATA_SAMPLERS
from mmengine.dist import get_dist_info, sync_random_seed
from torch.utils.data import Sampler


# keeps the sampler's stream apart from other seeds derived from (seed, epoch)
_ORDER_TAG = 0x5457494E  # 'TWIN'


def order_seed(seed: int, epoch: int) -> int:
    """The torch seed of the group order at ``(seed, epoch)``: a hash of both (NumPy
    ``SeedSequence``), not ``seed + epoch``, with which seed s at epoch e+1 would shuffle
    as seed s+1 at epoch e (runs with neighbouring seeds would see shifted copies of each
    other's orders)."""
    words = [int(seed) % 2**64, int(epoch) % 2**64, _ORDER_TAG]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] % 2**63)


def _check_groups(groups: Sequence[Sequence[int]], size: int, owner: str) -> List[List[int]]:
    groups = [[int(i) for i in g] for g in groups]
    flat = [i for g in groups for i in g]
    if any(len(g) == 0 for g in groups):
        raise ValueError(f'{owner}: empty group in the dataset\'s twin_groups()')
    if sorted(flat) != list(range(size)):
        raise ValueError(f'{owner}: twin_groups() must cover every index 0..{size - 1} '
                         f'exactly once (got {len(flat)} indices for {size} samples)')
    return groups


@DATA_SAMPLERS.register_module()
class TwinGroupSampler(Sampler):
    """Shuffle groups of samples, never their members: the indices of a group are yielded
    consecutively (in the group's order), groups in a random order per epoch.

    The dataset must provide ``twin_groups() -> list[list[int]]`` (every index exactly
    once), as :class:`~stan_mm.datasets.motion_dataset.SyntheticMotionDataset` does.
    Groups with fewer members than the largest are served last, so with a batch size that
    is a multiple of the group size every full group stays within one batch.

    Distributed: like mmengine's ``DefaultSampler``, every rank draws the same permutation
    (``seed`` synchronized across ranks) and takes every ``world_size``-th group. With
    ``round_up`` every rank yields the same number of samples, as ``DefaultSampler``'s
    ranks do (otherwise a rank with an extra batch would wait forever at the gradient
    synchronization): the group list is padded by repetition so all ranks get as many
    groups, and when groups differ in size (a twin missing) a rank with fewer samples than
    the largest repeats its own first samples at the end of its list.

    Args:
        dataset: a dataset with ``twin_groups()``.
        shuffle (bool): shuffle the group order each epoch (``set_epoch``).
        seed (int, optional): base seed; None draws one (synchronized across ranks).
        round_up (bool): pad so that every rank gets the same number of groups and of
            samples.
    """

    # the order is a function of (seed, epoch): ResumableEpochBasedTrainLoop may skip into
    # it, where the epoch length is constant too (constant_epoch_length)
    reproducible_order = True
    # recorded with each checkpoint (ResumableEpochBasedTrainLoop): a mid-epoch resume
    # skips into the order only where it is the one that checkpoint's run followed.
    # 1: seed + epoch (stan-mm before 2026-12-06 21:00); 2: order_seed's hash of both
    order_version = 2

    def __init__(self, dataset, shuffle: bool = True, seed: Optional[int] = None,
                 round_up: bool = True):
        name = type(dataset).__name__
        if not callable(getattr(dataset, 'twin_groups', None)):
            raise TypeError(
                f'TwinGroupSampler needs a dataset with twin_groups() (e.g. '
                f'SyntheticMotionDataset); {name} has none. Use '
                f"sampler=dict(type='DefaultSampler') for this dataset.")
        self.dataset = dataset
        self.groups = _check_groups(dataset.twin_groups(), len(dataset),
                                    f'TwinGroupSampler({name})')
        self.rank, self.world_size = get_dist_info()
        self.shuffle = shuffle
        self.seed = sync_random_seed() if seed is None else seed
        self.round_up = round_up
        self.epoch = 0
        # ((epoch, seed), this rank's groups): shared by __iter__ and __len__
        self._cache = None
        n = len(self.groups)
        if round_up:
            self.num_groups = math.ceil(n / self.world_size)
        else:
            self.num_groups = math.ceil((n - self.rank) / self.world_size)

    def _rank_groups(self) -> List[List[int]]:
        key = (self.epoch, self.seed)   # (a resumed run may set the seed back)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._draw_rank_groups())
        return self._cache[1]

    def _draw_rank_groups(self) -> List[List[int]]:
        order = list(range(len(self.groups)))
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(order_seed(self.seed, self.epoch))
            order = torch.randperm(len(self.groups), generator=g).tolist()
        if self.round_up:
            total = self.num_groups * self.world_size
            order = (order * math.ceil(total / max(len(order), 1)))[:total]
        mine = [self.groups[i] for i in order[self.rank::self.world_size]]
        full = max((len(g) for g in self.groups), default=0)
        # stable: full groups first (in the shuffled order), then the short ones
        mine = [g for g in mine if len(g) == full] + [g for g in mine if len(g) != full]
        if self.round_up and self.world_size > 1:
            # every rank computes every rank's sample count from the shared permutation
            counts = [sum(len(self.groups[i]) for i in order[r::self.world_size])
                      for r in range(self.world_size)]
            missing = max(counts) - counts[self.rank]
            if missing:
                flat = [i for g in mine for i in g]
                mine.append((flat * math.ceil(missing / len(flat)))[:missing])
        return mine

    def __iter__(self) -> Iterator[int]:
        for group in self._rank_groups():
            yield from group

    def __len__(self) -> int:
        return sum(len(g) for g in self._rank_groups())

    @property
    def constant_epoch_length(self) -> bool:
        """Whether ``len(self)`` (this rank's samples per epoch) is the same in every epoch:
        with a single rank, or when all groups have the same size. With groups of unequal
        size shared by several ranks, a rank's count depends on which groups the epoch's
        shuffle gives it (e.g. groups of sizes 2, 2, 1, 1, 2, 1 over 2 ranks: 5 or 6
        samples, depending on the epoch), and
        :class:`~stan_mm.engine.loops.ResumableEpochBasedTrainLoop` then restarts an epoch
        it is resumed inside (with a warning) instead of counting its batches from the
        iteration."""
        return self.world_size == 1 or len({len(g) for g in self.groups}) <= 1

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch (a new group order per epoch when ``shuffle``)."""
        self.epoch = epoch
