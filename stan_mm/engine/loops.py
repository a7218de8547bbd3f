"""An epoch-based training loop that resumes inside an epoch where the checkpoint left it.

mmengine's ``EpochBasedTrainLoop`` resumed from an iteration checkpoint (``CheckpointHook(
by_epoch=False)``) restarts that epoch at its first batch: the iterations done before the
checkpoint are trained again, on the same samples, and the run ends that many iterations
past its schedule. :class:`ResumableEpochBasedTrainLoop` runs only the batches of that epoch
that were not trained yet, then the following epochs as mmengine does.

How the rest of the epoch is found: mmengine's ``DefaultSampler`` (and stan-mm's
``TwinGroupSampler``) draw their order from ``(seed, epoch)`` (``DistSamplerSeedHook`` sets
the epoch before it starts), so the resumed run's sampler yields the same indices as the
interrupted one. The loop drops the first ``done * batch_size`` of them, where ``done`` are
the batches of the epoch the checkpoint has seen (see "Where the checkpoint is" below);
those samples are never loaded (the indices are skipped in the main process, before any
worker decodes a video). In DDP every rank's sampler yields its own shard, so each rank
drops its own first ``done * batch_size`` indices. For the duration of the shortened epoch
the DataLoader's ``BatchSampler`` reads from a proxy of the sampler that skips them;
``len(dataloader)`` stays the full epoch's, and hooks receive ``batch_idx`` from ``done``
on, so logs read ``[done+1/len]`` and the hooks' end-of-epoch checks (``batch_idx + 1 ==
len(dataloader)``) fire at the true last batch. With ``persistent_workers=True`` the proxy
works too: the workers only receive indices, and the next epoch's iterator reads the
sampler, restored, again.

Falls back to mmengine's behaviour, with a warning that names the reason, when the order
cannot be reproduced: a sampler not known to draw its order from ``(seed, epoch)`` (e.g.
torch's ``RandomSampler``), a sampler whose epoch length varies from epoch to epoch
(``constant_epoch_length = False``: ``TwinGroupSampler`` with groups of unequal size over
several ranks), a batch sampler other than torch's ``BatchSampler``, a checkpoint saved
before the last batch of its epoch whose epoch length, batch size, world size or dataset
length differ from this run's, or a checkpoint without the loop's record of them (saved by
mmengine's ``EpochBasedTrainLoop``, which is what the stan-mm configs used before this
loop): its iteration cannot be placed in an epoch, so nothing is skipped and the run is
mmengine's, batch for batch.

A change of ``drop_last`` alone (the same dataset length, samples per rank, batch size and
world size: the same order cut into the same batches, the last, partial one dropped or
trained) is no such change: the batches the checkpoint has done are skipped; where they are
all of this run's epoch (the partial batch, dropped now, was still to come), the epoch is
ended without a batch. The loop records ``drop_last`` and the lengths since 2026-12-07; an
older checkpoint whose batch count is what this run's samples make with the other
``drop_last`` falls back with a warning that names drop_last as a possible cause and the
``--cfg-options train_dataloader.drop_last=...`` that skips its batches.

A training DataLoader that yields no batch (a training set smaller than one batch with
``drop_last=True``, or an empty one) is refused when the loop is built, with
:class:`EmptyTrainDataloaderError` naming the sizes and the fixes (mmengine failed later,
on a bare assertion, when a schedule was converted to iterations, or trained nothing);
:mod:`stan_mm.compat.empty_loader` does the same for mmengine's own ``EpochBasedTrainLoop``
and ``IterBasedTrainLoop``.

Where the checkpoint is: the loop records, with the order information below, the epoch it
is in and the iteration that epoch started at. A checkpoint saved in the epoch it resumes
in has done ``iter - epoch start`` of its batches; one saved at the end of the previous
epoch (an epoch checkpoint) is at an epoch boundary, whatever this run's epoch length
(resumed with another batch size, world size or dataset, the next epoch starts at its first
batch as with mmengine's loop, with a warning that the iteration count is offset). One
saved after the last batch of its epoch (before the epoch's end) ends that epoch without a
batch (its end-of-epoch hooks, validation), then goes on as from the epoch checkpoint of the
same state, whatever this run's epoch length (with that warning where it changed). A
checkpoint without the epoch and its start iteration: mmengine's behaviour, with a warning
where its iteration falls inside an epoch at this run's epoch length.

The run's end: wherever the resume leaves it (a fallback trains the epoch's first batches
again; a changed epoch length offsets the count), the loop's ``max_iters`` (hence
``runner.max_iters``: CheckpointHook's last checkpoint, the ETA) is set to the iteration the
run really ends at, ``iter - skipped + (max_epochs - epoch) * len(dataloader)``. Parameter
schedules written per epoch (the stan-mm schedules) are put on this run's epoch length when
it differs from the checkpoint's (:meth:`ResumableEpochBasedTrainLoop._rescale_schedulers`;
mmengine's resume keeps the checkpoint's iteration counts: with more batches per epoch, the
learning rate reached its end early and stayed there); those of an optimizer with a schedule
written in iterations are left as they are. With ``auto_scale_lr`` on (``--auto-scale-lr``)
the learning rates follow this run's real batch (world size x batch size), as mmengine
scales them when a run starts: the checkpoint records the factor its run applied, and a
resume whose factor differs (another world size or batch size, or the option turned on)
replays the schedules from the initial rates rescaled by the ratio of the two (mmengine's
resume brought back the rates scaled for the run that saved the checkpoint).

The sampler's seed: with ``randomness.seed`` unset mmengine draws a new seed per run and
builds the sampler before the checkpoint is loaded, so a resumed run would shuffle its
epochs differently (while mmengine gives the runner, hence ``EpochSeedHook``, the
checkpoint's seed back). The loop stores the sampler's seed (with the epoch length, batch
size, world size, drop_last, this rank's samples per epoch, the dataset length, the epoch
and the iteration it started at) in the message hub, hence in every checkpoint. Resumed
from a checkpoint with that record, wherever it is (inside an epoch, at an epoch boundary,
or where the loop falls back to restarting the epoch), the loop gives the sampler the
stored seed back when the sampler's order is a function of ``(seed, epoch)`` and the world
size is the checkpoint's: the job shuffles its remaining epochs as the interrupted run
would have, whichever checkpoint it resumes from.

A validation cut short: an epoch checkpoint is written before the epoch's validation, so
a job killed during it resumed, with mmengine's loop, at the next epoch with no result for
that epoch. Each finished validation is recorded in the work dir
(``.stan_validated.json``: the checkpoint it followed); resumed from an epoch checkpoint
without that record, the loop runs the epoch's validation before training on.

Exactness of what is trained: same samples, same order, same number of iterations. Same
random augmentation and dropout as well needs ``EpochSeedHook(per_iteration=True)``
(see :mod:`stan_mm.engine.seed_hook`).

Example::

    train_cfg = dict(type='ResumableEpochBasedTrainLoop', max_epochs=30, val_interval=1)
    default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook', by_epoch=False,
                                         interval=2000))
"""
import bisect
import contextlib
import copy
import itertools
import json
import os
import os.path as osp
from typing import Iterator, Optional

import numpy as np

from mmengine.dataset import DefaultSampler
from mmengine.dist import get_world_size
from mmengine.hooks import Hook
from mmengine.runner import EpochBasedTrainLoop
from mmaction.registry import LOOPS
from torch.utils.data import BatchSampler, SequentialSampler

from stan_mm.compat.worker_shutdown import seeding_partial, set_worker_seed

ORDER_KEY = 'stan_mm_train_order'   # message hub (runtime info, saved in checkpoints)
ITER_ORDER_KEY = 'stan_mm_iter_order'   # the same, of mmengine's IterBasedTrainLoop
_OWN_SCALE = object()   # ResumableEpochBasedTrainLoop._carried_lr_scale: this run's factor
#: in the work dir: the checkpoint whose epoch's validation last finished (see
#: ResumableEpochBasedTrainLoop._plan_validation)
VALIDATED_FILE = '.stan_validated.json'


def validates_after(loop, done: int, last: int) -> bool:
    """mmengine's test of whether its training loop validates after ``done`` epochs (epoch
    loops) or iterations (``IterBasedTrainLoop``), ``last`` being the run's total: from
    ``val_begin`` on, every interval that ``_decide_current_val_interval`` picks then
    (``dynamic_intervals``), and after the last."""
    interval = loop.dynamic_intervals[bisect.bisect(loop.dynamic_milestones, done + 1) - 1]
    return done >= loop.val_begin and (done % interval == 0 or done == last)


def derived_seed(seed: int, *entropy: int) -> int:
    """A seed in ``[0, 2**31)`` derived from ``(seed, *entropy)`` (NumPy ``SeedSequence``)."""
    words = [int(seed) % 2**32, *(int(e) for e in entropy)]
    return int(np.random.SeedSequence(words).generate_state(1)[0] % 2**31)


def file_identity(path) -> Optional[dict]:
    """``{'path', 'size', 'mtime_ns'}`` of an existing local file; ``{'path'}`` for a
    storage URL (``s3://...``: named, not read); else None."""
    if isinstance(path, str) and '://' in path:
        return dict(path=path)
    try:
        st = os.stat(path)
    except (OSError, TypeError, ValueError):
        return None
    return dict(path=os.path.abspath(path), size=st.st_size, mtime_ns=st.st_mtime_ns)


def scheduler_entries(configs) -> list:
    """The scheduler entries of a ``param_scheduler`` value, flattened: one dict, a list,
    or one of those per optimizer (a dict of them); ``[]`` for None."""
    if configs is None:
        return []
    groups = (list(configs.values()) if isinstance(configs, dict)
              and not isinstance(configs.get('type'), str) else [configs])
    return [c for g in groups for c in (g if isinstance(g, list) else [g])]


class _ValidationHook(Hook):
    """The loop's validation bookkeeping, at the lowest priority (after the checkpoint
    hooks): the validation cut short by a kill runs at the end of ``before_train``
    (:meth:`ResumableEpochBasedTrainLoop.run_cut_validation`), and every finished
    validation is recorded (:meth:`ResumableEpochBasedTrainLoop._record_validation`)."""

    priority = 'LOWEST'

    def __init__(self, loop):
        self.loop = loop

    def before_train(self, runner) -> None:
        self.loop.run_cut_validation()

    def after_val_epoch(self, runner, metrics=None) -> None:
        self.loop._record_validation()


class SamplerProxy:
    """Stands in for a sampler inside a DataLoader's ``BatchSampler`` (the DataLoader's own
    ``sampler`` attribute cannot be reassigned): same length, attributes read from the
    wrapped sampler (``set_epoch``, ``epoch``, ``seed``). Subclasses change ``__iter__``."""

    def __init__(self, sampler):
        self.sampler = sampler

    def __iter__(self) -> Iterator:
        return iter(self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)

    def __getattr__(self, name):
        if name == 'sampler':            # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.sampler, name)


class SkipFirst(SamplerProxy):
    """The wrapped sampler's indices without the first ``count``; ``len`` is unchanged
    (the DataLoader keeps the full epoch's length)."""

    def __init__(self, sampler, count: int):
        super().__init__(sampler)
        self.count = int(count)

    def __iter__(self) -> Iterator:
        return itertools.islice(iter(self.sampler), self.count, None)


def innermost_sampler(sampler):
    """The sampler under any :class:`SamplerProxy` layers."""
    while isinstance(sampler, SamplerProxy):
        sampler = sampler.sampler
    return sampler


def has_reproducible_order(sampler) -> bool:
    """Whether ``sampler`` yields the same indices in every process for the same state
    (seed, epoch): mmengine's ``DefaultSampler``, torch's ``SequentialSampler``, or a
    sampler class that says so with ``reproducible_order = True`` (``TwinGroupSampler``).
    ``reproducible_order = False`` on a subclass opts out."""
    default = isinstance(sampler, (DefaultSampler, SequentialSampler))
    return bool(getattr(type(sampler), 'reproducible_order', default))


def has_constant_epoch_length(sampler) -> bool:
    """Whether ``len(sampler)`` (this rank's samples per epoch) is the same in every epoch,
    so that the batches done in an epoch can be counted from the iteration. A sampler says
    otherwise with ``constant_epoch_length = False`` (an attribute or property;
    ``TwinGroupSampler`` has one); mmengine's ``DefaultSampler`` and torch's samplers have
    a constant length."""
    return bool(getattr(sampler, 'constant_epoch_length', True))


def epoch_restart_text(done: Optional[int] = None) -> str:
    """What resuming from a checkpoint inside an epoch does with mmengine's
    ``EpochBasedTrainLoop`` (and with this loop where it falls back): the one wording of
    that consequence in every warning about it (this loop's and ``AtomicCheckpointHook``'s).
    ``done``: the epoch's iterations done at the checkpoint, where known."""
    past = f'{done} iterations' if done else 'as many iterations'
    return ('the epoch restarts at its first batch, as with mmengine\'s EpochBasedTrainLoop: '
            'its iterations done before the checkpoint are trained again and the run ends '
            f'{past} past its schedule')


class EmptyTrainDataloaderError(ValueError):
    """The training DataLoader yields no batch (a training set smaller than one batch with
    ``drop_last=True``, or an empty one; distributed: on any rank): refused when the
    training loop is built, on every rank, with the sizes and the fix, in one line (a user
    error of the tools)."""


class UnevenTrainDataloaderError(ValueError):
    """Distributed, the ranks' training DataLoaders yield different numbers of batches per
    epoch (a sampler that does not pad the shards to the same length, e.g.
    ``DefaultSampler(round_up=False)``): refused when an epoch-based training loop is
    built, on every rank, with each rank's samples and batches and the fix (a user error of
    the tools)."""


def loader_sampler(dataloader):
    """The sampler of ``dataloader``'s batch sampler, under any :class:`SamplerProxy`."""
    batch_sampler = getattr(dataloader, 'batch_sampler', None)
    return innermost_sampler(getattr(batch_sampler, 'sampler', None))


def loader_batch_size(dataloader) -> Optional[int]:
    """Samples per batch of ``dataloader``: its ``batch_size``, or its batch sampler's
    (torch sets ``DataLoader.batch_size`` to None when a ``batch_sampler`` is given;
    mmengine's ``scale_lr`` reads the config's ``batch_size``)."""
    size = getattr(dataloader, 'batch_size', None)
    if not isinstance(size, int):
        size = getattr(getattr(dataloader, 'batch_sampler', None), 'batch_size', None)
    return size if isinstance(size, int) else None


def loader_drop_last(dataloader) -> Optional[bool]:
    """Whether ``dataloader`` drops the last, partial batch of an epoch (its batch
    sampler's ``drop_last``); None where it does not say."""
    value = getattr(getattr(dataloader, 'batch_sampler', None), 'drop_last', None)
    if not isinstance(value, bool):
        value = getattr(dataloader, 'drop_last', None)
    return value if isinstance(value, bool) else None


def restore_iter_loop_sampler_seed(loop) -> None:
    """Called when mmengine's ``IterBasedTrainLoop`` starts
    (:mod:`stan_mm.compat.iter_loop_order`): give the training sampler the seed of the run
    that saved the checkpoint it resumes from, and record this run's in the message hub
    (hence in every checkpoint).

    With ``randomness.seed`` unset, mmengine draws a new seed per run and builds the
    sampler with it before the checkpoint is loaded (the runner gets the checkpoint's seed
    back, the sampler does not): an ``InfiniteSampler`` resumed at iteration ``n`` then
    went on in another order than the interrupted run's, and a ``DefaultSampler`` mixed
    two orders in the pass it was resumed in (samples of that pass seen twice, others not
    at all). mmengine's loop advances its iterator by loading the ``n`` batches it skips,
    so with the seed given back the resumed run trains the interrupted run's samples from
    iteration ``n + 1`` on. Given back where the sampler's order is a function of its seed
    (``InfiniteSampler``, or what :func:`has_reproducible_order` accepts) and the world
    size is the checkpoint's; a sampler not known to be such a function is left alone,
    with a warning, and so is any sampler resumed on another world size (other shards: no
    seed gives the interrupted run's order back), with a warning naming both sizes."""
    from mmengine.dataset import InfiniteSampler
    runner = loop.runner
    hub = runner.message_hub
    sampler = loader_sampler(loop.dataloader)
    seed = getattr(sampler, 'seed', None)
    saved = hub.get_info(ITER_ORDER_KEY)
    old = saved.get('sampler_seed') if isinstance(saved, dict) else None
    world_size = get_world_size()
    name = f'{type(sampler).__module__}.{type(sampler).__name__}'
    old_world = saved.get('world_size') if isinstance(saved, dict) else None
    if loop.iter > 0 and isinstance(old_world, int) and old_world != world_size:
        runner.logger.warning(
            f'IterBasedTrainLoop: resumed at iteration {loop.iter} on {world_size} '
            f'rank{"s" * (world_size != 1)}, but the checkpoint\'s run had {old_world}: '
            f'the ranks\' shards of the data differ, so the resumed run trains other '
            f'samples than the interrupted run would have (its sampler keeps this run\'s '
            f'seed). Resume on {old_world} rank{"s" * (old_world != 1)} to go on in the '
            f'interrupted run\'s order')
    elif (loop.iter > 0 and isinstance(old, int) and isinstance(seed, int) and old != seed
            and old_world == world_size):
        if isinstance(sampler, InfiniteSampler) or has_reproducible_order(sampler):
            drawn, sampler.seed = seed, old
            seed = old
            if isinstance(sampler, InfiniteSampler):
                # (its index stream reads the seed when it starts: not started yet, since
                # the endless iterator starts the DataLoader at the first batch)
                sampler.indices = sampler._indices_of_rank()
            runner.logger.info(
                f'IterBasedTrainLoop: {type(sampler).__name__} seed set back to {old} (the '
                f'checkpoint\'s; this run drew {drawn}) so that the resumed run draws the '
                'interrupted run\'s order')
        else:
            runner.logger.warning(
                f'IterBasedTrainLoop: resumed at iteration {loop.iter}, but the sampler '
                f'{name} is not known to draw its order from its seed, so the seed of the '
                f'interrupted run ({old}) is not given back: the resumed run trains other '
                'samples than the interrupted run would have. Set randomness.seed (--seed) '
                'for a sampler seeded from it, or reproducible_order = True on the sampler '
                'class if its order is a function of its seed')
    hub.update_info(ITER_ORDER_KEY, dict(sampler_seed=seed if isinstance(seed, int) else None,
                                         world_size=world_size,
                                         sampler=type(sampler).__name__))


def train_data_name(dataset) -> str:
    """What the training set is, for messages: ``'VideoDataset (ann_file=train.txt)'``; a
    wrapper names the datasets it holds, in order (``'ConcatDataset of [VideoDataset
    (ann_file=a.txt), VideoDataset (ann_file=b.txt)]'``, ``'RepeatDataset of
    VideoDataset (...)'``); ``''`` for a plain list or tuple of samples."""
    if dataset is None or isinstance(dataset, (list, tuple)):
        return ''
    inner = list(getattr(dataset, 'datasets', None) or [])
    if not inner and getattr(dataset, 'dataset', None) is not None:
        inner = [dataset.dataset]
    name = type(dataset).__name__
    if inner:
        parts = [train_data_name(d) or type(d).__name__ for d in inner]
        return f'{name} of ' + (parts[0] if len(parts) == 1 else f'[{", ".join(parts)}]')
    ann_file = getattr(dataset, 'ann_file', None)
    return f'{name} (ann_file={ann_file})' if ann_file else name


def _rank_counts(samples: Optional[int], batches: Optional[int]) -> list:
    """``[(samples, batches)]`` of every rank's training DataLoader (None where a rank's
    has no length), rank order: one all-gather of two integers per rank, on every rank."""
    import torch
    from mmengine.dist import all_gather
    mine = torch.tensor([-1 if samples is None else samples,
                         -1 if batches is None else batches], dtype=torch.long)
    return [tuple(None if v < 0 else v for v in t.tolist()) for t in all_gather(mine)]


def _ranks_text(ranks: list) -> str:
    return (f'rank {ranks[0]}' if len(ranks) == 1
            else 'ranks ' + ', '.join(str(r) for r in ranks))


def refuse_empty_train_loader(dataloader, epoch_based: bool = True) -> None:
    """Raise :class:`EmptyTrainDataloaderError` when the training DataLoader ``dataloader``
    yields no batch per epoch (pass over the data), with the sizes and the fix. Called when
    mmengine's ``EpochBasedTrainLoop`` (and so ``ResumableEpochBasedTrainLoop``) or
    ``IterBasedTrainLoop`` is built (:mod:`stan_mm.compat.empty_loader`), before the runner
    builds the parameter schedulers: a schedule converted to iterations failed mmengine's
    bare "epoch_length must be a positive integer", an epoch loop otherwise trained
    nothing and an iteration loop ended in a bare ``StopIteration``.

    Distributed (a process group of several ranks), every rank's loader is checked on every
    rank (one all-gather of its samples and batches per epoch, before any other collective
    of the loop): a shard without a batch on some ranks only (``DefaultSampler(round_up=
    False)`` with fewer samples than ranks, ``drop_last`` with fewer samples on a rank than
    a batch) stopped those ranks alone, and the others waited for them at their first
    collective. Every rank now raises the same error, naming the ranks, the samples and
    batches of each, and the training set. With ``epoch_based`` (an epoch loop), ranks with
    different numbers of batches per epoch are refused too
    (:class:`UnevenTrainDataloaderError`): their gradient synchronizations would no longer
    pair up (an iteration loop runs ``max_iters`` on every rank whatever its shard)."""
    from mmengine.dist import is_distributed
    batches = _sized(dataloader)
    sampler = loader_sampler(dataloader)
    samples = _sized(sampler)
    world_size = get_world_size()
    counts = _rank_counts(samples, batches) if is_distributed() and world_size > 1 else None
    if counts is None and batches != 0:
        return
    if counts is not None:
        all_batches = [b for _, b in counts]
        # (a rank without a batch is refused whatever the others' loaders; batch counts
        # are compared only where every rank's loader has a length)
        if 0 not in all_batches and (None in all_batches or not epoch_based
                                     or len(set(all_batches)) == 1):
            return
    dataset = getattr(dataloader, 'dataset', None)
    size = _sized(dataset)
    name = train_data_name(dataset)
    batch_size, drop_last = loader_batch_size(dataloader), loader_drop_last(dataloader)
    if counts is not None:
        _refuse_rank_counts(counts, size, name, batch_size, drop_last,
                            getattr(sampler, 'round_up', None))
    if size is None or samples is None:
        what = 'its sampler yields no sample'
    else:
        what = f'{size} training samples' + (f' from {name}' if name else '')
    sizes = (f'{what}, batch size {batch_size}, world size {world_size}, '
             f'drop_last={drop_last}')
    if drop_last and samples:
        fix = (f'set --cfg-options train_dataloader.drop_last=False (an epoch is then one '
               f'batch of {samples}), a batch size of at most {samples} '
               f'(train_dataloader.batch_size={samples}), or use more training data')
        why = ('drop_last drops the last, partial batch of an epoch, here its only one')
    else:
        fix = 'check the training annotations and data_root (train_dataloader.dataset)'
        why = 'there is no sample to batch'
    raise EmptyTrainDataloaderError(
        f'the training DataLoader yields no batch per epoch, so nothing would be '
        f'trained: {sizes} ({why}). Fix: {fix}')


def _refuse_rank_counts(counts: list, size: Optional[int], name: str,
                        batch_size: Optional[int], drop_last: Optional[bool],
                        round_up: Optional[bool]) -> None:
    """The distributed part of :func:`refuse_empty_train_loader`: the same message on every
    rank, made of what every rank knows (``counts``: every rank's ``(samples, batches)``)."""
    world_size = len(counts)
    samples = [s for s, _ in counts]
    batches = [b for _, b in counts]
    data = ('its sampler yields no sample' if size is None else
            f'{size} training samples' + (f' from {name}' if name else ''))
    sizes = (f'{data}; samples per rank {samples}, batches per rank {batches}; batch size '
             f'{batch_size}, drop_last={drop_last}')
    share = -(-size // world_size) if size else 0
    pad = (f'set --cfg-options train_dataloader.sampler.round_up=True (every rank then '
           f'gets {share} sample{"s" * (share != 1)}), ' if round_up is False and size else '')
    short = [r for r, b in enumerate(batches) if b == 0]
    if not short:
        raise UnevenTrainDataloaderError(
            f'the training DataLoaders of the {world_size} ranks yield different numbers '
            f'of batches per epoch, so the ranks would run different numbers of '
            f'iterations and their gradient synchronizations would no longer pair up (a '
            f'hang, or a crash when the first rank ends): {sizes}. Fix: '
            + (pad[:-2] if pad else 'a sampler that gives every rank as many samples '
               '(DefaultSampler with round_up=True, its default)'))
    least = min(samples[r] for r in short) if all(
        samples[r] is not None for r in short) else None
    if len(short) == world_size:
        head = (f'the training DataLoader yields no batch per epoch on any of the '
                f'{world_size} ranks, so nothing would be trained')
    else:
        head = (f'the training DataLoader yields no batch per epoch on {_ranks_text(short)} '
                f'of {world_size}, so nothing would be trained there and the other ranks '
                f'would wait for {"it" if len(short) == 1 else "them"} at their first '
                f'gradient synchronization (a hang)')
    if drop_last and least:
        why = 'drop_last drops the last, partial batch of an epoch, there its only one'
        fix = (f'set --cfg-options train_dataloader.drop_last=False, a batch size of at '
               f'most {least} (train_dataloader.batch_size={least}), use fewer ranks, or '
               f'use more training data')
    elif size:
        empty = [r for r in short if samples[r] == 0]
        why = (f'the sampler gives {_ranks_text(empty or short)} no sample'
               + ('; its round_up=False does not pad the shards to the same length'
                  if pad else ''))
        fix = pad + f'use at most {size} rank{"s" * (size != 1)}, or use more training data'
    else:
        why = 'there is no sample to batch'
        fix = 'check the training annotations and data_root (train_dataloader.dataset)'
    raise EmptyTrainDataloaderError(f'{head}: {sizes} ({why}). Fix: {fix}')


def _order_version(sampler) -> Optional[str]:
    """``'TwinGroupSampler v2'``: the sampler class and the version of its order
    (``order_version``), or None for a sampler that states none."""
    version = getattr(type(sampler), 'order_version', None)
    return None if version is None else f'{type(sampler).__name__} v{version}'


def _batch_count(samples: int, batch_size: int, drop_last: bool) -> int:
    """Batches a ``BatchSampler`` of ``batch_size`` makes of ``samples`` indices."""
    return samples // batch_size if drop_last else -(-samples // batch_size)


def _sized(obj) -> Optional[int]:
    """``len(obj)``, or None where it has none (an iterable dataset)."""
    try:
        return len(obj)
    except (TypeError, NotImplementedError):
        return None


@contextlib.contextmanager
def skip_first_samples(dataloader, count: int):
    """Within the block, iterating ``dataloader`` skips the first ``count`` indices of its
    sampler (never loaded). Needs a torch ``BatchSampler`` (what mmengine builds)."""
    batch_sampler = dataloader.batch_sampler
    inner = batch_sampler.sampler
    batch_sampler.sampler = SkipFirst(inner, count)
    try:
        yield
    finally:
        batch_sampler.sampler = inner


@LOOPS.register_module()
class ResumableEpochBasedTrainLoop(EpochBasedTrainLoop):
    """mmengine's ``EpochBasedTrainLoop`` (same arguments, same behaviour) that, resumed
    from a checkpoint saved inside an epoch, trains only that epoch's remaining batches.

    See the module docstring for how, and for when it falls back to mmengine's restart of
    the epoch (with a warning).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # (an epoch without a batch was refused by mmengine's EpochBasedTrainLoop.__init__:
        # stan_mm.compat.empty_loader)
        self._skip_batches = 0   # batches of the next epoch already trained (resume)
        self._revalidate = False  # resumed epoch checkpoint whose validation was cut short
        # the parameter scheduler configs (the runner builds the loop before it turns them
        # into schedulers): what _rescale_schedulers rebuilds at a new epoch length
        configs = getattr(self.runner, 'param_schedulers', None)
        entries = scheduler_entries(configs)
        # (only configs: built schedulers hold the optimizer and, through it, the model)
        self._scheduler_cfgs = (copy.deepcopy(configs) if entries and all(
            isinstance(c, dict) for c in entries) else None)
        # this run's resume restarts an epoch and the loop said so (AtomicCheckpointHook
        # then does not warn again)
        self.warned_epoch_restart = False
        # the auto_scale_lr factor the optimizer's rates carry, recorded with the
        # checkpoints: this run's own unless a resume kept the checkpoint's rates (then
        # theirs; None: not known)
        self._carried_lr_scale = _OWN_SCALE

    # ---------------------------------------------------------------- what can be skipped
    def _sampler(self):
        return loader_sampler(self.dataloader)

    def _length_reason(self) -> Optional[str]:
        """None when the sampler's epoch length is constant; else why the batches done in
        an epoch cannot be counted from the iteration."""
        from stan_mm.datasets.samplers import TwinGroupSampler
        sampler = self._sampler()
        if has_constant_epoch_length(sampler):
            return None
        why = ('constant_epoch_length is False: its groups differ in size and are shared '
               f'by {sampler.world_size} ranks' if isinstance(sampler, TwinGroupSampler)
               else 'its constant_epoch_length is False')
        return (f'the number of samples per epoch of its sampler {type(sampler).__module__}.'
                f'{type(sampler).__name__} changes from epoch to epoch ({why}), so the '
                'batches done in the epoch cannot be counted from the iteration')

    def _order_reason(self) -> Optional[str]:
        """None when the training DataLoader's order can be reproduced and skipped into;
        else why not (names the sampler or batch sampler type)."""
        batch_sampler = getattr(self.dataloader, 'batch_sampler', None)
        if type(batch_sampler) is not BatchSampler:
            return (f'its DataLoader batches with {type(batch_sampler).__name__}, not '
                    'torch\'s BatchSampler, so skipping whole batches by sampler indices '
                    'is not known to be exact')
        sampler = self._sampler()
        if not has_reproducible_order(sampler):
            return (f'its sampler {type(sampler).__module__}.{type(sampler).__name__} is '
                    'not known to yield the same order for the same (seed, epoch); use '
                    'DefaultSampler, or set reproducible_order = True on the sampler class '
                    'if its order is a function of its seed and epoch')
        return None

    def skip_unsupported_reason(self) -> Optional[str]:
        """None when the training DataLoader's order can be reproduced and skipped; else
        why not (names the sampler or batch sampler type)."""
        return self._order_reason() or self._length_reason()

    def _order_info(self) -> dict:
        """What the sampler order of an epoch depends on, stored with each checkpoint."""
        sampler = self._sampler()
        seed = getattr(sampler, 'seed', None)
        return dict(batches_per_epoch=len(self.dataloader),
                    batch_size=self._batch_size(),
                    world_size=get_world_size(),
                    sampler_seed=seed if isinstance(seed, int) else None,
                    lr_scale=self._recorded_lr_scale(),
                    # (since 2026-12-07: a change of drop_last alone keeps the batches)
                    drop_last=self._drop_last(),
                    samples_per_epoch=_sized(sampler),      # this rank's
                    dataset_length=_sized(getattr(self.dataloader, 'dataset', None)),
                    # (since 2026-12-07; None: a sampler without versions, e.g.
                    # DefaultSampler, whose order never changed)
                    sampler_order=_order_version(sampler))

    def _drop_last(self) -> Optional[bool]:
        return loader_drop_last(self.dataloader)

    def _recorded_lr_scale(self) -> Optional[float]:
        """The auto_scale_lr factor the rates carry (see ``_carried_lr_scale``)."""
        carried = getattr(self, '_carried_lr_scale', _OWN_SCALE)
        return self._lr_scale() if carried is _OWN_SCALE else carried

    def _lr_scale(self) -> float:
        """The factor mmengine's ``auto_scale_lr`` applied to this run's learning rates when
        it started (``Runner.scale_lr``: world size x batch size / ``base_batch_size``);
        1.0 when it is off."""
        cfg = getattr(self.runner, 'auto_scale_lr', None)
        batch_size = self._batch_size()
        if (not isinstance(cfg, dict) or not cfg.get('enable', False)
                or not cfg.get('base_batch_size') or not isinstance(batch_size, int)):
            return 1.0
        return get_world_size() * batch_size / float(cfg['base_batch_size'])

    def _scale_after_resume(self, saved, factor: float, rescaled: Optional[str]):
        """The auto_scale_lr factor the rates carry after the resume: the checkpoint's
        where its rates were kept (auto_scale_lr off now, or schedules the rescale left as
        they were), this run's where they were rescaled to it; None when not known (the
        checkpoint has no record, or some optimizers were rescaled and others not)."""
        old = saved.get('lr_scale') if isinstance(saved, dict) else None
        old = float(old) if isinstance(old, (int, float)) and old > 0 else None
        cfg = getattr(self.runner, 'auto_scale_lr', None)
        if not (isinstance(cfg, dict) and cfg.get('enable', False)):
            return old                    # the checkpoint's rates, as they came
        if old is None:
            return None
        if factor == 1.0 or rescaled == 'all':
            return self._lr_scale()
        return old if rescaled == 'none' else None

    def _lr_factor(self, saved) -> float:
        """By how much this run's ``auto_scale_lr`` factor differs from the one of the run
        that saved the checkpoint (1.0 when ``auto_scale_lr`` is off now: the checkpoint's
        rates are kept, as mmengine keeps them). Warns when the checkpoint does not say."""
        now = self._lr_scale()
        cfg = getattr(self.runner, 'auto_scale_lr', None)
        if not (isinstance(cfg, dict) and cfg.get('enable', False)):
            return 1.0
        old = saved.get('lr_scale') if isinstance(saved, dict) else None
        if isinstance(old, (int, float)) and old > 0:
            return now / float(old)
        self.runner.logger.warning(
            'ResumableEpochBasedTrainLoop: auto_scale_lr is on, but the checkpoint does not '
            'record the learning-rate factor its rates carry (written by mmengine\'s loop, '
            'by stan-mm before 2026-12-06, or after a resume that rescaled the rates of only '
            'some optimizers), so its learning rates are kept as they are. If they are not '
            'those of this run\'s batch, set optim_wrapper.optimizer.lr to the rate for this '
            'batch and resume without --auto-scale-lr')
        return 1.0

    def _fallback(self, why: str, done: Optional[int] = None) -> int:
        self.warned_epoch_restart = True
        self.runner.logger.warning(
            f'ResumableEpochBasedTrainLoop: resumed at iteration {self._iter}, inside epoch '
            f'{self._epoch + 1}, but {why}. Falling back: {epoch_restart_text(done)}. '
            'Resume from an epoch checkpoint for an exact continuation')
        return 0

    def _plan_resume(self) -> int:
        """How many batches of the next epoch to skip (0 unless resumed mid-epoch); gives
        the sampler the interrupted run's seed back; records the order info."""
        hub = self.runner.message_hub
        saved = hub.get_info(ORDER_KEY)
        skip = 0
        if self._iter > 0 and self._epoch < self._max_epochs:
            skip = self._check_resume(saved)
            self._set_max_iters(self._iter - skip
                                + (self._max_epochs - self._epoch) * len(self.dataloader))
            old_length = saved.get('batches_per_epoch') if isinstance(saved, dict) else None
            if not (isinstance(old_length, int) and old_length > 0):
                old_length = len(self.dataloader)
            factor = self._lr_factor(saved)
            rescaled = None
            if old_length != len(self.dataloader) or factor != 1.0:
                rescaled = self._rescale_schedulers(old_length, len(self.dataloader), skip,
                                                    factor)
            self._carried_lr_scale = self._scale_after_resume(saved, factor, rescaled)
        if (self._iter > 0 and self._epoch <= self._max_epochs and skip == 0
                and isinstance(saved, dict) and self._saved_done(saved) == 0):
            # (the last epoch's checkpoint too: its validation may be the one cut short)
            self._revalidate = self._plan_validation()
        hub.update_info(ORDER_KEY, self._order_info())
        return skip

    # ------------------------------------------------------- validation cut by a kill
    def _validation_due(self, epoch: int) -> bool:
        """Whether mmengine's loop validates after ``epoch`` (1-based) epochs: its
        ``run`` test, with the interval its ``_decide_current_val_interval`` picks then
        (``dynamic_intervals``)."""
        if getattr(self.runner, '_val_loop', None) is None or epoch < 1:
            return False
        return validates_after(self, epoch, self._max_epochs)

    def _plan_validation(self) -> bool:
        """Resumed from an epoch checkpoint: whether that epoch's validation still has to
        run. An epoch checkpoint is written before the epoch's validation (mmengine's
        order), so a job killed during the validation resumed at the next epoch with no
        result for that epoch, and ``save_best`` never compared it. After each validation
        the main process records, in ``<work_dir>/.stan_validated.json``, the checkpoint
        whose epoch it followed (path, relative to the work dir when in it, size,
        modification time); the validation runs again
        when the resumed checkpoint is not that file (killed during the validation, or a
        work dir without the record: at most one validation more). Decided on the main
        process, for every rank."""
        from mmengine.dist import broadcast_object_list, get_world_size, is_main_process
        decision = [False]
        if is_main_process() and self._validation_due(self._epoch):
            own = self._checkpoint_identity()
            try:
                with open(osp.join(self.runner.work_dir, VALIDATED_FILE)) as f:
                    done = json.load(f).get('checkpoint')
            except (OSError, ValueError, AttributeError):
                done = None
            decision = [own is None or done != own]
        if get_world_size() > 1:
            broadcast_object_list(decision)
        if decision[0]:
            name = self.runner.message_hub.get_info('last_ckpt') or 'the checkpoint'
            self.runner.logger.warning(
                f'ResumableEpochBasedTrainLoop: {osp.basename(str(name))} was saved at the '
                f'end of epoch {self._epoch}, before its validation, and this work dir has '
                f'no record that the validation finished (killed during it?): validating '
                f'epoch {self._epoch} ' + (f'before training epoch {self._epoch + 1}'
                                           if self._epoch < self._max_epochs
                                           else '(the last) before the run ends'))
        return decision[0]

    def _checkpoint_identity(self) -> Optional[dict]:
        """:func:`file_identity` of the run's last checkpoint, its path relative to the
        work dir when it is in it: a work dir moved or renamed (``mv``, another mount)
        keeps its record of the finished validation (an absolute path re-ran it)."""
        path = self.runner.message_hub.get_info('last_ckpt')
        work_dir = osp.abspath(str(self.runner.work_dir))
        if isinstance(path, str) and '://' not in path and not osp.exists(path):
            # resumed in a moved work dir: the checkpoint's message hub still names the
            # file where it was written; the file of that name here is the one loaded
            here = osp.join(work_dir, osp.basename(path))
            path = here if osp.isfile(here) else path
        own = file_identity(path)
        if own is not None and '://' not in own['path']:
            if osp.dirname(own['path']) == work_dir:
                own['path'] = osp.basename(own['path'])
        return own

    def _record_validation(self) -> None:
        """After a validation: record the checkpoint of this epoch (main process)."""
        from mmengine.dist import is_main_process
        from stan_mm.engine.checkpoint_hook import atomic_write_bytes
        own = self._checkpoint_identity()
        if not is_main_process() or own is None:
            return
        try:
            atomic_write_bytes(json.dumps(dict(checkpoint=own, epoch=self._epoch)).encode(),
                               osp.join(self.runner.work_dir, VALIDATED_FILE))
        except OSError as e:
            self.runner.logger.warning(f'ResumableEpochBasedTrainLoop: could not record the '
                                       f'finished validation ({e})')

    def _scheduler_lists(self):
        """``([(label, schedulers, their configs)], why not)``: one entry per optimizer for
        the parameter schedulers the runner built from configs (in build order; ``label``
        the optimizer's name where there are several, else ``''``), and, when they cannot
        be paired with their configs, the reason (the entries are then empty)."""
        schedulers = getattr(self.runner, 'param_schedulers', None)
        cfgs = getattr(self, '_scheduler_cfgs', None)
        if not schedulers:
            return [], None
        if not cfgs:
            return [], 'they were not built from configs'
        if isinstance(schedulers, dict):        # several optimizers
            shared = not isinstance(cfgs, dict) or isinstance(cfgs.get('type'), str)
            groups = [(k, v, cfgs if shared else cfgs.get(k)) for k, v in schedulers.items()]
        else:
            groups = [('', schedulers, cfgs)]
        out = []
        for label, built, cfg_list in groups:
            cfg_list = [cfg_list] if isinstance(cfg_list, dict) else list(cfg_list or [])
            if len(cfg_list) != len(built) or not all(isinstance(c, dict) for c in cfg_list):
                return [], (f'the schedulers{" of " + label if label else ""} cannot be '
                            'paired with their configs')
            out.append((label, list(built), cfg_list))
        return out, None

    def _rescale_schedulers(self, old_length: int, new_length: int, skip: int,
                            lr_factor: float = 1.0) -> str:
        """Put the parameter schedules written per epoch on this run's epoch length, and the
        learning rates on this run's ``auto_scale_lr`` factor.

        mmengine's resume loads every scheduler's state, iteration counts included: a
        schedule written per epoch and converted to iterations (``by_epoch=True,
        convert_to_iter_based=True``, the stan-mm schedules) would go on ending where it
        ended at the checkpoint's epoch length, so with more (fewer) batches per epoch now
        the learning rate would reach its end early and stay there (or never get there).

        Here the schedules of each optimizer are built again from their configs at this
        run's epoch length, on a stand-in optimizer (no parameters, the optimizer's own
        defaults, one group per distinct set of initial values), and stepped as
        ``ParamSchedulerHook`` steps them up to where this run goes on: epoch
        ``self._epoch`` plus the ``skip`` batches of it the checkpoint has trained (an
        epoch restarted by the fallback starts again at its first batch, with that batch's
        rate). Their states, and the values they set (learning rate, momentum or Adam's
        ``betas``, ...), replace those the checkpoint brought: the rest of the run has the
        rates of a run at this epoch length from the start. Kept as the checkpoint has
        them, with a warning: the schedules of an optimizer with a schedule written in
        iterations (``by_epoch=False``: its iteration count goes on from the
        checkpoint's) or with a ``ReduceOnPlateau`` schedule (driven by metrics, which
        cannot be replayed).

        ``lr_factor`` (this run's ``auto_scale_lr`` factor over the checkpoint run's; see
        :meth:`_lr_factor`): the initial learning rates of the replay, and those of the
        optimizer's groups, are the checkpoint's times ``lr_factor``, as if this run had
        started with its own scaling (``Runner.scale_lr`` scales the optimizer's rates before
        the schedules are built; an absolute ``eta_min`` stays as written). Schedules
        written in iterations are replayed too when the iteration count this run goes on
        from is the replay's (the same epoch length and no epoch restarted). An optimizer
        without schedules has its rates multiplied by ``lr_factor``; one whose schedules are
        kept as the checkpoint has them keeps its rates too (the warning says so).

        Returns:
            whether the learning rates were rescaled by ``lr_factor``: ``'all'`` (also when
            ``lr_factor`` is 1), ``'none'`` or ``'some'`` (of the optimizers)."""
        import torch
        from mmengine.registry import PARAM_SCHEDULERS

        class StandIn(torch.optim.Optimizer):
            """Holds param groups for the schedulers; ``step`` does nothing."""

            def step(self, closure=None):
                return None

        target = self._epoch * new_length + skip      # iterations trained, this length
        scaled = lr_factor != 1.0
        kept = (' and learning rates (not rescaled for auto_scale_lr)' if scaled else '')
        notes = []
        counts = dict(scaled=0, kept=0)       # optimizers whose rates were rescaled / kept
        lists, why_not = self._scheduler_lists()
        if why_not and (scaled or any(c.get('convert_to_iter_based', False) for c in
                                      scheduler_entries(self._scheduler_cfgs))):
            notes.append(f'not done: {why_not}; they keep the checkpoint\'s iteration counts'
                         + kept)
            counts['kept'] += 1
        optimizers = self._optimizers()
        if scaled and not why_not:
            with_schedules = {id(self._inner(built[0].optimizer)) for _, built, _ in lists}
            for label, optimizer in optimizers:
                if id(optimizer) not in with_schedules:
                    for group in optimizer.param_groups:
                        for key in ('lr', 'initial_lr'):
                            if isinstance(group.get(key), (int, float)):
                                group[key] = group[key] * lr_factor
                    where_ = f' of optimizer {label!r}' if label else ''
                    counts['scaled'] += 1
                    notes.append(f'no schedule{where_}: learning rate '
                                 f'{optimizer.param_groups[0]["lr"]:.4g} in the first '
                                 'parameter group')
        for label, built, cfgs in lists:
            where_ = f' of optimizer {label!r}' if label else ''
            if not scaled and not any(c.get('convert_to_iter_based', False) for c in cfgs):
                continue          # nothing counted in iterations
            if not all(c.get('by_epoch', True) for c in cfgs) and target != self._iter:
                notes.append(f'not for the schedules{where_}: one is written in iterations '
                             '(by_epoch=False); they keep the checkpoint\'s iteration counts'
                             + kept)
                counts['kept'] += 1
                continue
            if any('ReduceOnPlateau' in type(s).__name__ for s in built):
                notes.append(f'not for the schedules{where_}: a ReduceOnPlateau schedule '
                             'follows metrics, which cannot be replayed; they keep the '
                             'checkpoint\'s iteration counts' + kept)
                counts['kept'] += 1
                continue
            optimizer = self._inner(built[0].optimizer)
            names = sorted({s.param_name for s in built})
            copied = names + (['betas'] if 'momentum' in names and all(
                'betas' in g for g in optimizer.param_groups) else [])
            if any(n not in g for g in optimizer.param_groups for n in names):
                notes.append(f'not for the schedules{where_} of {", ".join(names)}, which '
                             f'the {type(optimizer).__name__} groups do not hold; they keep '
                             'the checkpoint\'s iteration counts' + kept)
                counts['kept'] += 1
                continue
            keys = [tuple(g.get(f'initial_{n}', g.get(n)) for n in names)
                    for g in optimizer.param_groups]
            distinct = list(dict.fromkeys(keys))
            where = [distinct.index(k) for k in keys]
            first_of = [keys.index(k) for k in distinct]
            groups = []
            for i in first_of:
                g = {k: v for k, v in optimizer.param_groups[i].items()
                     if k != 'params' and not k.startswith('initial_')}
                g.update({n: optimizer.param_groups[i].get(f'initial_{n}', g[n])
                          for n in names})
                if scaled:
                    g['lr'] = g['lr'] * lr_factor      # (scale_lr: before the schedules)
                if 'betas' in copied and 'initial_momentum' in optimizer.param_groups[i]:
                    g['betas'] = (g['momentum'], *tuple(g['betas'])[1:])
                groups.append(dict(g, params=[torch.zeros(1, requires_grad=True)]))
            stand_in = StandIn(groups, dict(optimizer.defaults))
            fresh = []
            for cfg, real in zip(cfgs, built):
                cfg = copy.deepcopy(dict(cfg))
                # (an unset end: max_epochs, or for a schedule written in iterations the
                # checkpoint run's max_iters, which its loaded state holds)
                cfg.setdefault('end', self._max_epochs if cfg.get('by_epoch', True)
                               else real.end)
                fresh.append(PARAM_SCHEDULERS.build(
                    cfg, default_args=dict(optimizer=stand_in, epoch_length=new_length)))
            stand_in.step()     # (schedulers warn when stepped before their optimizer)
            per_iter = [f for f in fresh if not f.by_epoch]
            per_epoch = [f for f in fresh if f.by_epoch]
            for it in range(1, target + 1):
                for f in per_iter:
                    f.step()
                if it % new_length == 0 and it // new_length <= self._epoch:
                    for f in per_epoch:
                        f.step()
            for real, f in zip(built, fresh):
                state = f.state_dict()
                for key in ('base_values', '_last_value'):
                    if isinstance(state.get(key), list) and len(state[key]) == len(distinct):
                        state[key] = [state[key][j] for j in where]
                real.load_state_dict(state)
            for group, j in zip(optimizer.param_groups, where):
                for n in copied:
                    group[n] = stand_in.param_groups[j][n]
                for n in names:     # (what a later resume's replay starts from)
                    if f'initial_{n}' in stand_in.param_groups[j]:
                        group[f'initial_{n}'] = stand_in.param_groups[j][f'initial_{n}']
                if scaled and 'lr' not in names:    # no learning-rate schedule here
                    for key in ('lr', 'initial_lr'):
                        if isinstance(group.get(key), (int, float)):
                            group[key] = group[key] * lr_factor
            counts['scaled'] += 1
            now = ', '.join(f'{n} {optimizer.param_groups[0][n]:.4g}' for n in names
                            if isinstance(optimizer.param_groups[0][n], (int, float)))
            notes.append(', '.join(f'{type(s).__name__} [{s.begin}, {s.end})' for s in built)
                         + where_ + (f' ({now} in the first parameter group)' if now else ''))
        if notes:
            changed = []
            if old_length != new_length:
                changed.append(f'the epoch length changed ({old_length} -> {new_length} '
                               'batches)')
            if scaled:
                changed.append(f'auto_scale_lr scales the learning rates by {lr_factor:.4g} '
                               'times the factor of the run that saved the checkpoint (real '
                               f'batch {get_world_size() * (self._batch_size() or 0)} now)')
            self.runner.logger.warning(
                'ResumableEpochBasedTrainLoop: ' + ' and '.join(changed) + '; the parameter '
                'schedules are rebuilt for this run (its epoch length and learning-rate '
                f'scale) and advanced to iteration {target} of it: ' + '; '.join(notes))
        if not scaled or not counts['kept']:
            return 'all'
        return 'none' if not counts['scaled'] else 'some'

    @staticmethod
    def _inner(optimizer):
        """The torch optimizer inside an ``OptimWrapper`` (or the optimizer itself)."""
        return getattr(optimizer, 'optimizer', optimizer)

    def _optimizers(self) -> list:
        """``[(label, torch optimizer)]`` of the runner (label '' for a single one; an
        ``OptimWrapperDict``, itself an ``OptimWrapper``, gives one entry per optimizer)."""
        from mmengine.optim import OptimWrapperDict
        wrappers = getattr(self.runner, 'optim_wrapper', None)
        if wrappers is None:
            return []
        if isinstance(wrappers, OptimWrapperDict) or (
                isinstance(wrappers, dict) and hasattr(wrappers, 'items')):
            return [(k, self._inner(w)) for k, w in wrappers.items()]
        return [('', self._inner(wrappers))]

    def _batch_size(self) -> Optional[int]:
        return loader_batch_size(self.dataloader)

    def _set_max_iters(self, max_iters: int) -> None:
        """The iteration this run really ends at. mmengine's loop keeps ``max_epochs *
        len(dataloader)``, which a resume that restarts an epoch (the fallback) or goes on
        from an iteration that is no epoch boundary at this run's epoch length misses:
        ``runner.max_iters`` is what hooks take for the last iteration (CheckpointHook's
        ``save_last``, the ETA, gradient accumulation's last, partial step). Unchanged by a
        mid-epoch continuation. Parameter schedulers are not touched here (see
        :meth:`_rescale_schedulers`)."""
        max_iters = int(max_iters)
        if max_iters == self._max_iters:
            return
        self._max_iters = max_iters
        from mmengine.optim import OptimWrapper, OptimWrapperDict
        wrappers = getattr(self.runner, 'optim_wrapper', None)
        wrappers = (wrappers.values() if isinstance(wrappers, OptimWrapperDict) or (
            hasattr(wrappers, 'values') and not isinstance(wrappers, OptimWrapper))
            else [wrappers])
        for wrapper in wrappers:
            # (set by Runner.train with the old end; re-counted without its warnings again)
            if isinstance(wrapper, OptimWrapper) and getattr(wrapper, '_max_counts', -1) >= 0:
                wrapper._max_counts = max_iters
                wrapper._remainder_counts = max_iters % wrapper._accumulative_counts

    def _saved_done(self, saved: dict) -> Optional[int]:
        """Batches of epoch ``self._epoch`` done at the checkpoint, in the run that saved it
        (0: an epoch boundary there); None if the stored info does not tell."""
        if not (isinstance(saved.get('epoch'), int)
                and isinstance(saved.get('epoch_start_iter'), int)):
            return None
        if saved['epoch'] != self._epoch:   # saved at the end of an earlier epoch
            return 0
        return self._iter - saved['epoch_start_iter']

    def _check_resume(self, saved: Optional[dict]) -> int:
        per_epoch = len(self.dataloader)
        done = self._iter - self._epoch * per_epoch   # at this run's epoch length
        old_done = self._saved_done(saved) if isinstance(saved, dict) else None
        if old_done is None:
            return self._without_order_info(done, per_epoch)
        now = self._order_info()
        if saved.get('world_size') == now['world_size']:   # (wherever the checkpoint is)
            self._restore_sampler_seed(saved.get('sampler_seed'), now['sampler_seed'])
        changed = self._changed(saved, now)
        drop_only = self._drop_last_only(saved, now)    # (then changed names drop_last)
        order = self._order_change(saved, now)
        if order is not None:
            changed, drop_only = changed + [order], False
        if old_done == 0:   # an epoch boundary of the run that saved it: nothing to skip
            if done != 0 and changed and self._length_reason() is None:
                self._warn_off_boundary(changed, per_epoch)
            return 0
        reason = self._length_reason()
        if reason is not None:
            return self._fallback(reason, old_done)
        if changed and old_done == saved.get('batches_per_epoch'):
            # saved after the last batch of the epoch: an epoch end, whatever this run's
            # epoch length; the epoch is ended without a batch, as at the same length
            self._end_epoch_off_boundary(changed, per_epoch)
            return per_epoch
        if changed and not drop_only:
            return self._fallback(
                f'the checkpoint was saved with {old_done} batches of that epoch done and '
                + ' and '.join(changed) + ' since, so its batches cannot be skipped'
                + self._drop_last_hint(saved, now))
        if not 0 < old_done <= per_epoch:
            return self._fallback(
                f'{old_done} batches of an epoch of {per_epoch} would be done: the epoch '
                'length differs from the checkpoint\'s (dataset, batch size or world size '
                'changed?)')
        done = old_done
        if done < per_epoch:   # (after the epoch's last batch there is no order to follow)
            reason = self._order_reason()
            if reason is not None:
                return self._fallback(reason, done)
        if drop_only:
            self._note_drop_last(changed, done, per_epoch)
        elif done == per_epoch:
            self.runner.logger.info(
                f'ResumableEpochBasedTrainLoop: resumed at iteration {self._iter}, after the '
                f'last batch of epoch {self._epoch + 1}; ending that epoch (its end-of-epoch '
                'hooks and validation) without training a batch')
        else:
            self.runner.logger.info(
                f'ResumableEpochBasedTrainLoop: resumed at iteration {self._iter}, {done} of '
                f'the {per_epoch} batches of epoch {self._epoch + 1} done; continuing at '
                f'batch {done + 1} (the first {done * self.dataloader.batch_sampler.batch_size}'
                ' indices of this rank\'s sampler are skipped, not loaded)')
        return done

    @staticmethod
    def _order_change(saved: dict, now: dict) -> Optional[str]:
        """Why the sampler may not give the order of the run that saved the checkpoint
        (a stan-mm version whose sampler shuffled otherwise), or None. A sampler class
        states its order's version (``order_version``, e.g. ``TwinGroupSampler``); a
        checkpoint written before 2026-12-07 does not record it."""
        version = now.get('sampler_order')
        if version is None:
            return None
        if 'sampler_order' not in saved:
            return (f'the sampler may shuffle otherwise (the checkpoint, written by an '
                    f'older stan-mm, does not record its order version; now {version})')
        if saved['sampler_order'] != version:
            return f'the sampler\'s order changed ({saved["sampler_order"]} -> {version})'
        return None

    @staticmethod
    def _changed(saved: dict, now: dict) -> list:
        """What differs between the checkpoint's batches and this run's, e.g. ``['the batch
        size changed (2 -> 3)']``; at the same batch size and world size, a changed dataset
        length (where both record it), or else a changed number of batches per epoch: named
        as drop_last's where that alone explains it (:meth:`_drop_last_only`), as the
        dataset's or perhaps drop_last's where the checkpoint does not record its
        drop_last (written before 2026-12-07), else as the dataset's."""
        names = dict(batch_size='batch size', world_size='world size')
        changed = [f'the {names[k]} changed ({saved[k]} -> {now[k]})' for k in names
                   if k in saved and saved[k] != now[k]]
        if changed:
            return changed
        old, new = saved.get('dataset_length'), now.get('dataset_length')
        if isinstance(old, int) and isinstance(new, int) and old != new:
            return [f'the dataset length changed ({old} -> {new} samples)']
        k = 'batches_per_epoch'
        if k not in saved or saved[k] == now[k]:
            return []
        if ResumableEpochBasedTrainLoop._drop_last_only(saved, now):
            partial = now['samples_per_epoch'] % now['batch_size']
            return [f'drop_last changed ({saved["drop_last"]} -> {now["drop_last"]}: '
                    f'{saved[k]} -> {now[k]} batches per epoch, the last, partial batch ('
                    f'{partial} of {now["batch_size"]} samples per rank) '
                    + ('dropped' if now['drop_last'] else 'trained') + ')']
        text = (f'the dataset length changed ({saved[k]} -> {now[k]} batches per epoch at '
                'the same batch size and world size)')
        if ResumableEpochBasedTrainLoop._drop_last_hint(saved, now):
            text += (f' or only drop_last did (drop_last={now["drop_last"]} now, and this '
                     f'run\'s samples make {saved[k]} batches with '
                     f'drop_last={not now["drop_last"]}; the checkpoint does not record its '
                     'drop_last)')
        return [text]

    @staticmethod
    def _drop_last_only(saved: dict, now: dict) -> bool:
        """Whether the checkpoint's batches per epoch differ from this run's by drop_last
        alone: the same dataset length, samples per epoch (this rank's sampler), batch size
        and world size, hence (the sampler's seed given back) the same order cut into the
        same batches, but drop_last changed, which drops or trains the last, partial batch.
        Batch ``i`` of an epoch is then the same in both runs wherever both have it, and
        the batches the checkpoint has done can be skipped."""
        keys = ('dataset_length', 'samples_per_epoch', 'batch_size', 'world_size')
        if not all(isinstance(saved.get(k), int) and saved[k] == now.get(k) for k in keys):
            return False
        if not (isinstance(saved.get('drop_last'), bool)
                and isinstance(now.get('drop_last'), bool)
                and saved['drop_last'] != now['drop_last']
                and saved.get('batches_per_epoch') != now.get('batches_per_epoch')):
            return False
        return all(_batch_count(d['samples_per_epoch'], d['batch_size'], d['drop_last'])
                   == d['batches_per_epoch'] for d in (saved, now))

    @staticmethod
    def _drop_last_hint(saved: dict, now: dict) -> str:
        """For a checkpoint that does not record its drop_last (written before
        2026-12-07) and whose batches per epoch are what this run's samples make with the
        other drop_last: what to resume with to skip its done batches; else ``''``."""
        drop, size = now.get('drop_last'), now.get('batch_size')
        samples, old = now.get('samples_per_epoch'), saved.get('batches_per_epoch')
        if ('drop_last' in saved or not isinstance(drop, bool) or not isinstance(size, int)
                or not isinstance(samples, int) or size < 1 or old == now.get(
                    'batches_per_epoch') or old != _batch_count(samples, size, not drop)):
            return ''
        return (' (if only drop_last changed' + (
            ', as in the stan-mm retrieval configs on 2026-12-07' if drop else '')
            + f', resume with --cfg-options train_dataloader.drop_last={not drop} instead: '
            'the run then goes on where the checkpoint left it, with the checkpoint\'s '
            'batches)')

    def _note_drop_last(self, changed: list, done: int, per_epoch: int) -> None:
        """Resumed ``done`` batches into an epoch whose batches per epoch changed by
        drop_last alone (:meth:`_drop_last_only`): the done batches are skipped; where they
        are all of this run's epoch (the checkpoint's run had still its partial batch to
        train, which this run drops), the epoch is ended without a batch."""
        if done < per_epoch:
            size = self.dataloader.batch_sampler.batch_size    # (torch's: _order_reason)
            what = (f'continuing at batch {done + 1} of {per_epoch} (the first {done * size} '
                    'indices of this rank\'s sampler are skipped, not loaded)')
        else:
            what = (f'that is all {per_epoch} batches of the epoch with this run\'s '
                    'drop_last (its last, partial batch, not trained yet, is dropped): '
                    'ending that epoch (its end-of-epoch hooks and validation) without '
                    f'training a batch, then epoch {self._epoch + 2} is trained from its '
                    'first batch')
        end = self._iter - done + (self._max_epochs - self._epoch) * per_epoch
        message = (f'ResumableEpochBasedTrainLoop: resumed at iteration {self._iter}, {done} '
                   f'batches into epoch {self._epoch + 1}; ' + ' and '.join(changed)
                   + ' since the checkpoint, which leaves the order of the samples and the '
                   'batches before the last one as they were, so nothing is trained twice: '
                   + what)
        if end == self._max_epochs * per_epoch:
            self.runner.logger.info(message)
            return
        self.runner.logger.warning(
            f'{message}. Iteration {self._iter} is not where epoch {self._epoch + 1} '
            f'would be at this run\'s epoch length ({per_epoch} batches): the iteration '
            f'count goes on from {self._iter}, so the run ends at iteration {end} instead of '
            f'{self._max_epochs * per_epoch}; schedules written in iterations '
            '(by_epoch=False) and iteration checkpoint intervals are offset accordingly')

    def _warn_off_boundary(self, changed: list, per_epoch: int) -> None:
        """The checkpoint is at an epoch boundary of the run that saved it, but its
        iteration is not a multiple of this run's epoch length (``changed`` says why)."""
        why = ' because ' + ' and '.join(changed)
        self.runner.logger.warning(
            f'ResumableEpochBasedTrainLoop: the checkpoint was saved at the end of epoch '
            f'{self._epoch}, at iteration {self._iter}, which does not fall on an epoch '
            f'boundary of this run\'s epoch length ({per_epoch} batches){why}. Epoch '
            f'{self._epoch + 1} is trained from its first batch, as with mmengine\'s loop '
            '(nothing is skipped or trained twice); the iteration count goes on from '
            f'{self._iter}, so the run ends at iteration '
            f'{self._iter + (self._max_epochs - self._epoch) * per_epoch} instead of '
            f'{self._max_epochs * per_epoch}; schedules written in iterations '
            '(by_epoch=False) and iteration checkpoint intervals are offset accordingly')

    def _end_epoch_off_boundary(self, changed: list, per_epoch: int) -> None:
        """The checkpoint was saved after the last batch of epoch ``self._epoch + 1`` (before
        its end-of-epoch hooks), and this run's epoch length differs (``changed`` says why):
        the epoch is ended without a batch, then the next starts at its first batch, as
        from the epoch checkpoint of the same state."""
        end = self._iter + (self._max_epochs - self._epoch - 1) * per_epoch
        what = (f'ResumableEpochBasedTrainLoop: resumed at iteration {self._iter}, after the '
                f'last batch of epoch {self._epoch + 1} (the checkpoint was saved there, '
                'before the end of the epoch); ending that epoch (its end-of-epoch hooks and '
                'validation) without training a batch, then epoch '
                f'{self._epoch + 2} is trained from its first batch (nothing is skipped or '
                'trained twice)')
        if self._iter == (self._epoch + 1) * per_epoch:    # a boundary at this length too
            self.runner.logger.info(what)
            return
        self.runner.logger.warning(
            f'{what}. Iteration {self._iter} does not fall on an epoch boundary of this '
            f'run\'s epoch length ({per_epoch} batches) because ' + ' and '.join(changed)
            + f': the iteration count goes on from {self._iter}, so the run ends at '
            f'iteration {end} instead of {self._max_epochs * per_epoch}; schedules written '
            'in iterations (by_epoch=False) and iteration checkpoint intervals are offset '
            'accordingly')

    def _without_order_info(self, done: int, per_epoch: int) -> int:
        """A checkpoint without the loop's record (saved by mmengine's
        ``EpochBasedTrainLoop``, the stan-mm configs' loop before this one): mmengine's
        behaviour, no skip; a warning where its iteration would fall inside an epoch of this
        run."""
        if 0 < done <= per_epoch:
            self.warned_epoch_restart = True
            self.runner.logger.warning(
                f'ResumableEpochBasedTrainLoop: resumed at iteration {self._iter}, which at '
                f'this run\'s {per_epoch} batches per epoch is {done} batches into epoch '
                f'{self._epoch + 1}, but the checkpoint has no record of its batches and '
                'sampler order (it was not written by ResumableEpochBasedTrainLoop but e.g. '
                'by mmengine\'s EpochBasedTrainLoop, the stan-mm configs\' loop before it), '
                'so where it stopped in that epoch cannot be checked and it is resumed as '
                'mmengine\'s loop resumes it. Saved inside that epoch: '
                f'{epoch_restart_text(done)}. Saved at the end of epoch {self._epoch} with '
                'another batch size, world size or dataset: nothing is trained twice')
        return 0

    def _restore_sampler_seed(self, old_seed: Optional[int], seed: Optional[int]) -> None:
        """Give the sampler the interrupted run's seed (see the module docstring)."""
        sampler = self._sampler()
        if old_seed is None or seed == old_seed or not has_reproducible_order(sampler):
            return
        sampler.seed = old_seed
        self.runner.logger.info(
            f'ResumableEpochBasedTrainLoop: {type(sampler).__name__} seed set back to '
            f'{old_seed} (the checkpoint\'s; this run drew {seed}) so that the epochs are '
            'shuffled as in the interrupted run')

    def _record_epoch_start(self, start_iter: int) -> None:
        """Store the epoch and the iteration it started at with the order info (hence in
        the checkpoints saved during the epoch and at its end)."""
        hub = self.runner.message_hub   # (run() stored the order info before any epoch)
        hub.update_info(ORDER_KEY, dict(hub.get_info(ORDER_KEY), epoch=self._epoch,
                                        epoch_start_iter=int(start_iter)))

    # ------------------------------------------------------------------------- the loop
    def run(self):
        """mmengine's ``run``, after deciding where the resumed epoch continues. Resumed
        from an epoch checkpoint whose validation was cut short, that validation runs at
        the end of ``before_train`` (:class:`_ValidationHook`, which also records every
        finished validation), before any epoch: the last epoch's too, and an early stop it
        triggers stops the run."""
        self._skip_batches = self._plan_resume()
        self.runner.register_hook(_ValidationHook(self), priority='LOWEST')
        return super().run()

    def run_cut_validation(self) -> None:
        """The validation planned by :meth:`_plan_validation`. The checkpoint hooks are
        told which checkpoint this epoch's is (the message hub's ``last_ckpt``, when it
        lies in their folder): with a new best score, mmengine saves it again, so that it
        records that best (a resumed run's hooks have not written a checkpoint yet)."""
        if not self._revalidate:
            return
        self._revalidate = False
        from mmengine.hooks import CheckpointHook
        from stan_mm.engine.checkpoint_hook import in_folder
        last = self.runner.message_hub.get_info('last_ckpt')
        for hook in self.runner.hooks:
            if (isinstance(hook, CheckpointHook) and last
                    and getattr(hook, 'last_ckpt', None) is None
                    and in_folder(last, getattr(hook, 'out_dir', None))):
                hook.last_ckpt = last
        self.runner.val_loop.run()

    def _seed_workers_for_epoch(self) -> None:
        """mmengine's ``worker_init_fn`` seeds every DataLoader worker with ``seed +
        worker_id`` (plus a rank offset) whenever workers start, the same at every start:
        fresh (non-persistent) workers would draw the same augmentation in every epoch, and
        a resumed run's persistent workers the first epoch's draws again. The seed it gives
        workers started for epoch ``e > 0`` is derived from ``(seed, e)`` instead. Epoch 0
        keeps mmengine's, so an uninterrupted run with persistent workers (the configs')
        draws what it drew under mmengine's loop. An ``EpochSeedHook`` sets its own seed
        afterwards (``before_train_epoch``)."""
        init_fn = seeding_partial(self.dataloader)
        if init_fn is None:
            return
        base = getattr(self, '_worker_seed', None)
        if base is None:
            base = self._worker_seed = init_fn.keywords['seed']
        set_worker_seed(self.dataloader,
                        base if self._epoch == 0 else derived_seed(base, self._epoch))

    def run_epoch(self) -> None:
        """mmengine's ``run_epoch``; the epoch a run resumed inside skips the batches the
        checkpoint has seen and numbers the others from there. Workers started for an
        epoch after the first draw a stream of their own (:meth:`_seed_workers_for_epoch`)."""
        self._seed_workers_for_epoch()
        skip, self._skip_batches = self._skip_batches, 0
        self._record_epoch_start(self._iter - skip)
        if not skip:
            return super().run_epoch()
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        if skip < len(self.dataloader):
            count = skip * self.dataloader.batch_sampler.batch_size
            with skip_first_samples(self.dataloader, count):
                for idx, data_batch in enumerate(self.dataloader, start=skip):
                    self.run_iter(idx, data_batch)
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1
