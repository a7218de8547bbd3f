"""DataLoader workers of a finished run are stopped when the run ends, not by the garbage
collector (found in this project's tests, not in the notes).

torch stops the worker processes of a ``_MultiProcessingDataLoaderIter`` in its ``__del__``:
it puts ``None`` on each worker's index queue and joins each worker with a 5 s timeout
(``MP_STATUS_CHECK_INTERVAL``), then terminates the ones still alive. A ``DataLoader`` with
``persistent_workers=True`` keeps its iterator (``loader._iterator``), and mmengine's
``Runner`` lives in reference cycles (runner, loops, hooks), so that iterator is freed by
the cyclic garbage collector, not by reference counting. That collector runs weakref
callbacks before ``__del__`` methods: the index queues, garbage as well, have already run
their ``multiprocessing`` finalizer, which tells each queue's feeder thread to stop. The
``None`` put after that is never sent, every worker waits out the 5 s join and is killed:
10 s for a loader with 2 workers, 20 s for a run's train and val loaders, at whichever later
allocation triggers a full collection in a process that goes on (a test session, a notebook,
a sweep of runs). At interpreter exit there is no delay (torch skips the shutdown and
``multiprocessing`` terminates the daemonic workers), so a one-run ``tools/train.py`` was
not slower; it now stops its workers before it exits instead of having them killed there.

The fix wraps ``Runner.train``, ``Runner.val`` and ``Runner.test``: when one returns or
raises, :func:`shutdown_loader_workers` stops the worker processes of the iterators the
runner's built loops (train, val, test) keep open: a persistent loader's
(``loader._iterator``) and the endless iterator of an ``IterBasedTrainLoop``; the loaders
start fresh workers if they are iterated again. A non-persistent loader keeps no iterator:
its workers stop when its epoch ends, and when the epoch raised its iterator lives in the
exception's traceback (frames of the loop), out of reach here, until that traceback is
freed. Batches, seeds and results are unchanged (nothing runs before the run ends); loops
never built, loaders never iterated and ``num_workers=0`` are left alone; each rank stops
its own workers, no collective is involved (DDP); a failure to stop them is logged and
never hides the run's own exception.

Workers still alive after torch's shutdown, which ends with ``terminate()`` (SIGTERM), are
killed (SIGKILL) and reaped: those that ignore SIGTERM (``PreemptionHook``'s) would
otherwise outlive a worker stuck in a read.

``IterBasedTrainLoop``'s endless iterator starts the DataLoader's workers when the loop is
built, before the run loads its checkpoint and before any hook: a hook cannot reach the
workers' ``worker_init_fn`` (``PreemptionHook``'s signal handling, ``EpochSeedHook``'s
per-epoch seed) in time. The iterator now starts them at its first ``next()``, as
``EpochBasedTrainLoop`` does at its epoch's first batch: the same batches, the workers
seeded by mmengine's ``worker_init_fn`` as before, and torch's global random stream as
with mmengine (the one number ``iter()`` draws is drawn when the loop is built).

Each pass over the data draws its own augmentation. With a finite sampler
(``DefaultSampler``) the endless iterator calls ``iter(loader)`` again each time the
sampler is exhausted; with ``persistent_workers=False`` that starts fresh workers, which
mmengine's ``worker_init_fn`` seeds with ``seed + worker_id + rank * num_workers`` at every
start: every pass repeated the first pass's random crops, flips and frame offsets. The
workers started for pass ``k > 0`` now get the seed derived from ``(seed, k)`` in place of
``seed`` (the same derivation and the same replacement of the ``functools.partial``'s
``seed`` as ``ResumableEpochBasedTrainLoop``'s per epoch; the worker and rank offsets are
kept). Pass 0 keeps the seed found at the first ``next()`` (mmengine's, or
``EpochSeedHook``'s epoch seed, set in ``before_train_epoch`` before it), so the first pass
and the model's initialisation are mmengine's. A loader whose ``worker_init_fn`` is not
such a partial is left alone; with ``persistent_workers=True`` the workers are not
restarted (``iter()`` resets them) and keep their streams, and an ``InfiniteSampler`` is
never exhausted: both draw what they drew before. A run resumed from an iteration
checkpoint advances the iterator by mmengine's ``next()`` calls, which load the skipped
batches and count the passes as the interrupted run did: with the same ``randomness.seed``
the resumed run's workers draw what the uninterrupted run's drew (with the seed unset,
mmengine draws another one per run, for every pass).
"""
import functools
import logging

import torch

from mmengine.logging import print_log
from mmengine.runner import BaseLoop, Runner
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

_MARK = '_stan_mm_worker_shutdown'
_LOOPS = ('_train_loop', '_val_loop', '_test_loop')   # not the properties: they build loops


def _stop_open_iterator(holder, replacement) -> bool:
    """Stop the workers of ``holder._iterator`` (a loader, or the endless wrapper of an
    ``IterBasedTrainLoop``) if it is a multiprocessing iterator, and put ``replacement`` in
    its place, so that the next iteration starts fresh workers. Returns whether workers were
    running."""
    iterator = getattr(holder, '_iterator', None)
    if not isinstance(iterator, _MultiProcessingDataLoaderIter):
        return False
    running = not getattr(iterator, '_shutdown', True)
    if running:
        iterator._shutdown_workers()
    holder._iterator = replacement
    return running


def shutdown_loader_workers(runner) -> int:
    """Stop the DataLoader worker processes of the iterators ``runner``'s built loops keep
    open (persistent workers, or the endless iterator of an ``IterBasedTrainLoop``).
    Returns how many iterators were stopped. Safe to call more than once."""
    stopped = 0
    for name in _LOOPS:
        loop = getattr(runner, name, None)
        if not isinstance(loop, BaseLoop):
            continue
        try:
            # a persistent loader's iterator: iterated again, the loader starts fresh workers
            stopped += _stop_open_iterator(getattr(loop, 'dataloader', None), None)
            # IterBasedTrainLoop's endless wrapper holds the open iterator of its epoch;
            # left exhausted, its next step starts the loader over (fresh workers)
            stopped += _stop_open_iterator(getattr(loop, 'dataloader_iterator', None),
                                           iter(()))
        except Exception as exc:   # never hide what the run itself raised
            print_log(f'could not stop the DataLoader workers of {name[1:]}: '
                      f'{type(exc).__name__}: {exc}', logger='current', level=logging.WARNING)
    return stopped


def _stops_workers_after(method):
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        finally:
            shutdown_loader_workers(self)

    setattr(run, _MARK, True)
    return run


def kill_live_workers(iterator) -> None:
    """Kill (SIGKILL) and reap the worker processes of DataLoader iterator ``iterator``
    that are still alive."""
    for w in getattr(iterator, '_workers', None) or ():
        try:
            if w.is_alive():
                w.kill()
                w.join(1)
        except (AttributeError, OSError, ValueError):
            pass


def _kills_survivors(shutdown):
    """torch's ``_shutdown_workers`` ends with ``terminate()`` (SIGTERM) for workers that did
    not stop in time (e.g. stuck in a read). Workers told to ignore SIGTERM
    (:class:`~stan_mm.engine.preemption_hook.PreemptionHook`, so that Slurm's signal does not
    kill them mid-iteration) survive that and would stay behind as orphans: they are killed
    (SIGKILL) instead."""
    @functools.wraps(shutdown)
    def _shutdown_workers(self):
        try:
            shutdown(self)
        finally:
            kill_live_workers(self)

    setattr(_shutdown_workers, _MARK, True)
    return _shutdown_workers


_NOT_STARTED = object()


def _rng_state(generator):
    return generator.get_state() if generator is not None else torch.get_rng_state()


def _set_rng_state(generator, state) -> None:
    if generator is not None:
        generator.set_state(state)
    else:
        torch.set_rng_state(state)


def seeding_partial(loader):
    """``loader``'s ``worker_init_fn`` if it is a ``functools.partial`` with a ``seed``
    keyword (mmengine's seeding function, possibly wrapped by ``PreemptionHook``), else
    None."""
    init_fn = getattr(loader, 'worker_init_fn', None)
    if isinstance(init_fn, functools.partial) and 'seed' in init_fn.keywords:
        return init_fn
    return None


def set_worker_seed(loader, seed: int) -> bool:
    """Give the workers ``loader`` starts from now on the seed ``seed``: the ``seed`` of its
    seeding partial (:func:`seeding_partial`) is replaced, its other arguments (the rank
    offset, ``PreemptionHook``'s wrapper) kept. The one place that rebuilds the partial:
    ``ResumableEpochBasedTrainLoop`` (per epoch), ``EpochSeedHook(reseed_workers=True)``
    and the endless iterator (per pass, :func:`_seed_workers_for_pass`). Returns whether
    ``loader`` had such a partial (else it is left alone)."""
    init_fn = seeding_partial(loader)
    if init_fn is None:
        return False
    loader.worker_init_fn = functools.partial(
        init_fn.func, *init_fn.args, **dict(init_fn.keywords, seed=seed))
    return True


def _seed_workers_for_pass(loader, base: int, index: int) -> None:
    """Give the workers ``loader`` starts for pass ``index`` over its data the seed ``base``
    (pass 0) or one derived from ``(base, index)``, as ``ResumableEpochBasedTrainLoop``
    does per epoch (:func:`set_worker_seed`)."""
    if seeding_partial(loader) is None:
        return
    from stan_mm.engine.loops import derived_seed   # (not at import: stan_mm.compat is first)
    set_worker_seed(loader, base if index == 0 else derived_seed(base, index))


def endless_iterator_started(iterator) -> bool:
    """Whether mmengine's endless iterator ``iterator`` (``IterBasedTrainLoop``'s
    ``dataloader_iterator``) has started its loader (any other object: True)."""
    return getattr(iterator, '_iterator', None) is not _NOT_STARTED


def _lazy_endless_iterator(cls) -> None:
    """``_InfiniteDataloaderIterator`` starts its loader at the first ``next()``, and each
    pass over the data after the first gives the workers a seed of their own.

    ``iter(loader)`` draws torch's base seed of the workers from the loader's generator (the
    global one by default). That draw is made when the loop is built, as mmengine makes
    it, so that what is drawn after it (the model's initialisation) is unchanged; the
    first ``next()`` runs ``iter()`` from the generator's state of that moment, and then
    puts back the state it found: the same base seed, the same stream. (A sampler that
    draws from the global generator when it starts, unlike mmengine's, draws from that
    earlier state too.)

    When the loader's iterator is exhausted (a finite sampler), mmengine's ``__next__``
    counts a pass (``_epoch``) and calls ``iter(loader)`` again, which starts fresh workers
    unless they are persistent. The seed of mmengine's ``worker_init_fn`` (the one found at
    the first ``next()``) is the same at every start, so every pass would repeat the first
    one's augmentation; pass ``k > 0`` now gets a seed derived from ``(seed, k)``
    (:func:`_seed_workers_for_pass`) before mmengine's restart runs."""
    original_next = cls.__next__

    def __init__(self, dataloader) -> None:
        self._dataloader = dataloader
        self._iterator = _NOT_STARTED
        self._epoch = 0
        self._stan_mm_worker_seed = None
        generator = getattr(dataloader, 'generator', None)
        self._stan_mm_rng = _rng_state(generator)
        torch.empty((), dtype=torch.int64).random_(generator=generator)   # the base seed

    @functools.wraps(original_next)
    def __next__(self):
        if self._iterator is _NOT_STARTED:
            init_fn = seeding_partial(self._dataloader)
            if init_fn is not None:          # pass 0's seed: mmengine's, or a hook's
                self._stan_mm_worker_seed = init_fn.keywords['seed']
            generator = getattr(self._dataloader, 'generator', None)
            now = _rng_state(generator)
            _set_rng_state(generator, self._stan_mm_rng)
            try:
                self._iterator = iter(self._dataloader)
            finally:
                _set_rng_state(generator, now)
            return original_next(self)
        try:
            return next(self._iterator)
        except StopIteration:
            pass
        if self._stan_mm_worker_seed is not None:
            _seed_workers_for_pass(self._dataloader, self._stan_mm_worker_seed,
                                   self._epoch + 1)
        self._iterator = iter(())     # exhausted: mmengine's __next__ starts the next pass
        return original_next(self)

    __init__.__doc__ = cls.__init__.__doc__
    setattr(__init__, _MARK, True)
    cls.__init__, cls.__next__ = __init__, __next__


def apply_worker_shutdown_fix() -> bool:
    """Wrap ``Runner.train/val/test`` and the DataLoader iterator's worker shutdown
    (idempotent). Returns whether it was applied now."""
    if getattr(Runner.train, _MARK, False):
        return False
    for name in ('train', 'val', 'test'):
        setattr(Runner, name, _stops_workers_after(getattr(Runner, name)))
    if not getattr(_MultiProcessingDataLoaderIter._shutdown_workers, _MARK, False):
        _MultiProcessingDataLoaderIter._shutdown_workers = _kills_survivors(
            _MultiProcessingDataLoaderIter._shutdown_workers)
    from mmengine.runner.loops import _InfiniteDataloaderIterator
    if not getattr(_InfiniteDataloaderIterator.__init__, _MARK, False):
        _lazy_endless_iterator(_InfiniteDataloaderIterator)
    return True
