"""Reseed every random generator at the start of each epoch, so that a run resumed from an
epoch-end checkpoint replays the remaining epochs exactly.

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
resumption.
"""
import functools
import random

import numpy as np
import torch
from mmengine.hooks import Hook
from mmaction.registry import HOOKS


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed in ``[0, 2**31)`` derived from ``(seed, epoch)`` (NumPy ``SeedSequence``)."""
    return int(np.random.SeedSequence([int(seed) % 2**32, int(epoch)]).generate_state(1)[0]
               % 2**31)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@HOOKS.register_module()
class EpochSeedHook(Hook):
    """Seed all generators from ``(seed, epoch)`` before every training epoch.

    Example (exact resumption with ``tools/train.py --resume``)::

        randomness = dict(seed=0, deterministic=True)
        custom_hooks = [dict(type='EpochSeedHook')]
        train_dataloader = dict(num_workers=2, persistent_workers=False, ...)

    Args:
        seed: base seed; default: the runner's seed (``randomness.seed``, which already
            differs per rank with ``diff_rank_seed=True``).
        reseed_workers: also pass the epoch seed to mmengine's default ``worker_init_fn``
            of the training DataLoader (workers started for this epoch use it).
    """
    priority = 'VERY_HIGH'

    def __init__(self, seed=None, reseed_workers: bool = True):
        self.seed = seed
        self.reseed_workers = reseed_workers

    def before_train_epoch(self, runner) -> None:
        base = self.seed if self.seed is not None else runner.seed
        seed = epoch_seed(base, runner.epoch)
        seed_everything(seed)
        if self.reseed_workers:
            loader = runner.train_dataloader
            init_fn = getattr(loader, 'worker_init_fn', None)
            if isinstance(init_fn, functools.partial) and 'seed' in init_fn.keywords:
                loader.worker_init_fn = functools.partial(
                    init_fn.func, *init_fn.args, **dict(init_fn.keywords, seed=seed))
