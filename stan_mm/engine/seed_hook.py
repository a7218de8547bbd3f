"""Reseed every random generator at the start of each epoch, so that a run resumed from an
epoch-end checkpoint replays the remaining epochs exactly; with ``per_iteration=True`` also
before every iteration and every training sample, so that a run resumed from a checkpoint
inside an epoch does too.

mmengine seeds the generators once, when the runner is built, and its checkpoints do not
store their states. A resumed run therefore starts epoch e+1 with the generators in their
post-build state, while the uninterrupted run has drawn from them for e epochs (dropout, drop
path, ``num_workers=0`` data augmentation, the DataLoader's base seed, validation). The
sampler order is already per epoch (``DistSamplerSeedHook``), and DataLoader workers are
seeded by ``worker_init_fn``; everything drawn in the main process is not.

:class:`EpochSeedHook` seeds Python's ``random``, NumPy and torch (CPU and CUDA) at every
epoch start with a number derived from ``(seed, epoch)``, and (``reseed_workers=True``)
gives mmengine's ``worker_init_fn`` that number too, so that fresh (non-persistent) workers
also draw a different, reproducible stream each epoch instead of the same one every epoch.
With ``persistent_workers=True`` the workers keep their streams across epochs and a resumed
run cannot replay them: use ``persistent_workers=False`` (or ``num_workers=0``) for exact
resumption (per-epoch mode; ``per_iteration=True`` lifts this). Under mmengine's
``IterBasedTrainLoop`` (one "epoch") the hook seeds once, in ``before_train_epoch``, before
the loop's endless iterator starts its workers at the first batch: the workers of the first
pass over the data get the epoch seed, those of pass ``k > 0`` a seed derived from (that
seed, ``k``) (:mod:`stan_mm.compat.worker_shutdown`).

Per epoch is not enough for a run resumed *inside* an epoch (an iteration checkpoint and
:class:`~stan_mm.engine.loops.ResumableEpochBasedTrainLoop`): at the checkpoint the main
process's generators and each worker's have drawn for part of the epoch, and the resumed
run cannot put them back (checkpoints hold no generator states; worker streams also depend
on which worker loaded which batch). ``per_iteration=True`` makes every draw a function of
where it happens instead of what was drawn before:

* before every training iteration (``before_train_iter``) the main process's ``random``,
  NumPy and torch generators are seeded from ``(seed, iteration)``: dropout, drop path,
  batch augmentations in the data preprocessor (mixup/cutmix), anything the model draws;
* every training sample is loaded with the generators of the process that loads it (a
  DataLoader worker, or the main process with ``num_workers=0``) seeded from ``(seed,
  epoch, rank, position of the sample in this rank's epoch)``: the pipeline's random
  frame sampling, crops, flips, RandAugment. The seed travels with the index from the
  sampler (:class:`SeededIndex`), so it reaches persistent workers too, and the loaded
  sample no longer depends on which worker loads it or on what that worker loaded before.

With both, a run resumed from an iteration checkpoint (or an epoch checkpoint) replays the
uninterrupted run bit for bit on CPU with ``deterministic=True``, for ``num_workers=0`` and
for ``num_workers>0`` with or without ``persistent_workers``. Under mmengine's
``IterBasedTrainLoop`` (one "epoch"; its endless iterator starts the DataLoader over at
every pass over the data without ``before_train_epoch``) the samples are seeded from
``(seed, pass, rank, position in the pass)`` instead, the pass counted where the loader
starts it; a run resumed from an iteration checkpoint replays the uninterrupted one there
too (mmengine advances the resumed iterator by loading the batches it skips). Not covered: generators a
transform or model creates for itself (``np.random.default_rng()`` without a seed, a
``torch.Generator`` built at construction) are not reseeded; CUDA kernels that are not
deterministic (``deterministic=True`` and ``CUBLAS_WORKSPACE_CONFIG`` cover PyTorch's); a
resumed run with another world size, batch size or dataset; a training dataset that defines
its own ``__getitems__`` (batched loading; the per-sample seeding is then off, with a
warning); a train loop that is neither epoch-based nor mmengine's ``IterBasedTrainLoop``
(the per-sample seeding is then off, with a warning, and only the per-iteration seeding of
the main process applies); a random validation pipeline with ``num_workers=0`` after an epoch
that was resumed after its last batch (it draws from the epoch seed instead of the last
iteration's). Drawn numbers differ from ``per_iteration=False`` runs (other seeds), not
their distribution.
"""
import random
from typing import Optional

import numpy as np
import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop
from mmaction.registry import HOOKS

from stan_mm.compat.worker_shutdown import set_worker_seed

from .loops import SamplerProxy, derived_seed as _derived_seed

def _endless_iterator_started(loop) -> bool:
    """Whether ``IterBasedTrainLoop`` ``loop``'s endless iterator has started its DataLoader
    (:mod:`stan_mm.compat.worker_shutdown` makes it start at the first batch)."""
    from stan_mm.compat.worker_shutdown import endless_iterator_started
    return endless_iterator_started(getattr(loop, 'dataloader_iterator', None))


# entropy tags that keep the per-iteration and per-sample streams apart from epoch seeds
_ITER_TAG = 0x49544552   # 'ITER'
_SAMPLE_TAG = 0x534D504C  # 'SMPL'


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed in ``[0, 2**31)`` derived from ``(seed, epoch)``."""
    return _derived_seed(seed, epoch)


def iteration_seed(seed: int, iteration: int) -> int:
    """A seed in ``[0, 2**31)`` derived from ``(seed, global iteration)``."""
    return _derived_seed(seed, _ITER_TAG, iteration)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class SeededIndex(int):
    """A dataset index that carries the seed its sample is to be loaded with (it passes
    through torch's ``BatchSampler`` and the worker queues like the plain index)."""

    def __new__(cls, index: int, seed: int):
        self = super().__new__(cls, index)
        self.seed = seed
        return self

    def __reduce__(self):
        return SeededIndex, (int(self), self.seed)


class SeedPerPosition(SamplerProxy):
    """The wrapped sampler's indices as :class:`SeededIndex`, each seeded from ``(seed,
    epoch, rank, position in this rank's epoch)``; ``seed_base`` and ``seed_epoch`` are set
    before each epoch by :class:`EpochSeedHook` (other attributes are the sampler's).

    With ``count_passes=True`` (mmengine's ``IterBasedTrainLoop``, whose endless iterator
    starts the DataLoader over at every pass over the data without ``before_train_epoch``)
    the "epoch" is the number of the pass instead: this proxy counts the times it is
    iterated (once per ``iter(loader)``, in the main process), from 0 for each run. A run
    resumed from an iteration checkpoint counts the same passes, since mmengine advances
    the iterator by loading the batches it skips."""

    def __init__(self, sampler, seed_base: int, seed_epoch: int = 0,
                 count_passes: bool = False):
        super().__init__(sampler)
        self.seed_base, self.seed_epoch = int(seed_base), int(seed_epoch)
        self.count_passes = count_passes
        self.passes = 0

    def __iter__(self):
        epoch = self.seed_epoch
        if self.count_passes:
            epoch, self.passes = self.passes, self.passes + 1
        rng = np.random.default_rng(
            [self.seed_base % 2**32, _SAMPLE_TAG, epoch, get_rank()])
        for index in self.sampler:
            yield SeededIndex(index, int(rng.integers(2**31)))


class SeedEachSample:
    """Installed as the training dataset's ``__getitems__``, which torch's fetcher calls with
    a batch's indices in the process that loads it: seeds ``random``, NumPy and torch from
    each :class:`SeededIndex` before loading that sample (plain indices load as before)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __call__(self, indices):
        samples = []
        for index in indices:
            seed = getattr(index, 'seed', None)
            if seed is not None:
                seed_everything(seed)
                index = int(index)
            samples.append(self.dataset[index])
        return samples


@HOOKS.register_module()
class EpochSeedHook(Hook):
    """Seed all generators from ``(seed, epoch)`` before every training epoch; with
    ``per_iteration=True`` also before every training iteration and every training sample.

    Example (exact resumption from epoch checkpoints with ``tools/train.py --resume``)::

        randomness = dict(seed=0, deterministic=True)
        custom_hooks = [dict(type='EpochSeedHook')]
        train_dataloader = dict(num_workers=2, persistent_workers=False, ...)

    Exact resumption from iteration checkpoints too (any ``num_workers``, persistent
    workers allowed; what ``tools/train.py --deterministic`` adds)::

        train_cfg = dict(type='ResumableEpochBasedTrainLoop', ...)
        custom_hooks = [dict(type='EpochSeedHook', per_iteration=True)]

    Args:
        seed: base seed; default: the runner's seed (``randomness.seed``, which already
            differs per rank with ``diff_rank_seed=True``).
        reseed_workers: also pass the epoch seed to mmengine's default ``worker_init_fn``
            of the training DataLoader (workers started for this epoch use it; under
            ``IterBasedTrainLoop`` those of its first pass over the data, later passes
            using seeds derived from it).
        per_iteration: also seed the main process before every iteration and every
            training sample where it is loaded (module docstring); the per-sample part
            needs an epoch-based train loop (mmengine's ``EpochBasedTrainLoop`` or a
            subclass such as ``ResumableEpochBasedTrainLoop``) or mmengine's
            ``IterBasedTrainLoop`` (seeds per pass over the data), a batch sampler that draws from a ``sampler`` (torch's ``BatchSampler``, what
            mmengine builds) and a map-style dataset; otherwise it is off, with a warning
            when training starts, and only the main process is seeded per iteration.
    """
    priority = 'VERY_HIGH'

    def __init__(self, seed=None, reseed_workers: bool = True, per_iteration: bool = False):
        self.seed = seed
        self.reseed_workers = reseed_workers
        self.per_iteration = per_iteration
        self._per_sample: Optional[SeedPerPosition] = None

    def _base(self, runner) -> int:
        return self.seed if self.seed is not None else runner.seed

    def before_train(self, runner) -> None:
        if not self.per_iteration:
            return
        loader = runner.train_dataloader
        batch_sampler = getattr(loader, 'batch_sampler', None)
        dataset = getattr(loader, 'dataset', None)
        loop = getattr(runner, 'train_loop', None)
        count_passes = isinstance(loop, IterBasedTrainLoop)
        if count_passes and _endless_iterator_started(loop):
            problem = (f'the DataLoader of the train loop {type(loop).__name__} was started '
                       'before training (the samples it loads cannot be tagged with their '
                       'seeds any more)')
        elif not (count_passes or isinstance(loop, EpochBasedTrainLoop)):
            problem = (f'the train loop {type(loop).__name__} is neither epoch-based '
                       '(mmengine\'s EpochBasedTrainLoop or a subclass) nor mmengine\'s '
                       'IterBasedTrainLoop, so it is not known when it starts its '
                       'DataLoader over')
        elif getattr(batch_sampler, 'sampler', None) is None:
            problem = (f'the training DataLoader batches with '
                       f'{type(batch_sampler).__name__}, which has no sampler to tag')
        elif isinstance(dataset, torch.utils.data.IterableDataset):
            problem = f'the training dataset {type(dataset).__name__} is iterable'
        elif hasattr(type(dataset), '__getitems__'):
            problem = (f'the training dataset {type(dataset).__name__} loads batches itself '
                       '(__getitems__)')
        else:
            problem = None
        if problem is not None:
            runner.logger.warning(
                f'EpochSeedHook(per_iteration=True): {problem}. The per-sample seeding is '
                'off: the data pipeline\'s random augmentation is not seeded per sample, so '
                'it depends on num_workers and on which worker loads a sample, and a resumed '
                'run draws other augmentation than the interrupted one (the per-iteration '
                'seeding of the main process still applies)')
            return
        self._per_sample = SeedPerPosition(batch_sampler.sampler, self._base(runner),
                                           count_passes=count_passes)
        batch_sampler.sampler = self._per_sample
        dataset.__getitems__ = SeedEachSample(dataset)

    def after_train(self, runner) -> None:
        if self._per_sample is None:
            return
        loader = runner.train_dataloader
        if loader.batch_sampler.sampler is self._per_sample:
            loader.batch_sampler.sampler = self._per_sample.sampler
        if isinstance(getattr(loader.dataset, '__dict__', {}).get('__getitems__'),
                      SeedEachSample):
            del loader.dataset.__getitems__
        self._per_sample = None

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self.per_iteration:
            seed_everything(iteration_seed(self._base(runner), runner.iter))

    def before_train_epoch(self, runner) -> None:
        base = self._base(runner)
        if self._per_sample is not None:
            self._per_sample.seed_base, self._per_sample.seed_epoch = int(base), runner.epoch
        seed = epoch_seed(base, runner.epoch)
        seed_everything(seed)
        if self.reseed_workers:
            set_worker_seed(runner.train_dataloader, seed)
