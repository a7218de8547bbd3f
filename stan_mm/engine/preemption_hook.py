"""Save a checkpoint and stop cleanly when the job is told to end.

A Slurm job that is preempted or reaches its time limit gets SIGTERM (or the signal that
``srun --signal=USR1@120`` / ``sbatch --signal`` asks for, some time before), then SIGKILL
after the cluster's grace period (``KillWait``, 30 s by default). ``torchrun`` stopping its
workers sends SIGTERM and kills them 30 s later. Without a handler, Python dies at once on
either signal: everything since the last checkpoint, up to an epoch of Kinetics-400
training, is trained again after the requeue.

:class:`PreemptionHook` (``default_hooks.preemption`` in ``configs/_base_/default_runtime.py``)
catches the signals it is given (default ``SIGTERM`` and ``SIGUSR1``) while ``runner.train()``
runs, and only records them; the training step that is running finishes. At the next point
where every rank can agree (after each training iteration, at the end of an epoch, before
an epoch starts, hence after a validation; with gradient accumulation only where the
optimizer has just stepped, since the gradients summed since the last step are in no
checkpoint; with ``IterBasedTrainLoop``, after a validation due at that iteration) the run:

1. agrees across ranks: the largest signal number any rank received, one all-reduce of one
   int (only when distributed). A signal that reached one rank stops every rank at the same
   iteration, so none waits for the others in a gradient all-reduce;
2. saves the training state, unless a checkpoint of exactly this state exists (the
   checkpoint hook's own, written at this iteration or epoch end, or the checkpoint the run
   resumed from): ``iter_<n>.pth`` inside an epoch, ``epoch_<e>.pth`` at an epoch's end,
   with the optimizer and the schedules, through
   :meth:`~stan_mm.engine.checkpoint_hook.AtomicCheckpointHook.save_unscheduled` (never of
   NaN weights, never a half-written file; ``last_checkpoint`` names it; not part of
   ``max_keep_ckpts``' rotation, and deleted once the resumed run publishes a newer
   checkpoint);
3. raises :class:`TrainingPreempted`; ``tools/train.py`` turns it into one line naming the
   checkpoint and the exit status ``128 + signal number`` (143 for SIGTERM, 138 for
   SIGUSR1), the status of a process killed by that signal.

``tools/train.py CONFIG --resume`` then goes on from that checkpoint; inside an epoch,
:class:`~stan_mm.engine.loops.ResumableEpochBasedTrainLoop` (the stan-mm configs' loop)
trains only the batches the checkpoint had not seen. Stopped at an epoch's end before its
validation, the resumed run validates that epoch first; stopped after it, the save records
the validation as done (``.stan_validated.json``).

DataLoader workers. Slurm signals every process of the job step, the DataLoader workers
too, and a worker killed by SIGTERM makes the training process raise at once ("DataLoader
worker ... is killed by signal") from PyTorch's SIGCHLD handler, before any checkpoint. The
hook makes the workers of the training and validation DataLoaders ignore the signals it
handles (their ``worker_init_fn`` is wrapped; mmengine's seeding partial is kept, so
``EpochSeedHook`` and the loop still reseed it): they end when the training process stops
them, or when it dies.

The handlers are removed when the training loop returns or raises. Workers still alive
after PyTorch's shutdown of them (which ends with a SIGTERM they ignore) are killed
(``stan_mm.compat.worker_shutdown``). A save that fails on any rank stops every rank with
that error in the message (no checkpoint named).

Not handled: a signal during validation is acted on after it (a validation longer than
the grace period is cut by SIGKILL; with ``interval=1`` epoch checkpoints the resumed run
validates again, see ``docs/robustness.md``). SIGINT (Ctrl-C) keeps Python's
``KeyboardInterrupt``. A second signal does not speed anything up; SIGKILL ends a run at
once. Signal handlers can only be set in the main thread: ``runner.train()`` in another
thread runs without this hook (with a warning).

Cost: nothing on a single process; in distributed runs one all-reduce of one int per
iteration (after the loss's sync that ``NonFiniteLossHook`` and the logger make anyway).
"""
import functools
import os
import os.path as osp
import signal
import threading
import time
import weakref
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from mmengine.hooks import Hook
from mmaction.registry import HOOKS

from stan_mm.errors import ConfigValueError

__all__ = ['PreemptionHook', 'TrainingPreempted', 'ignore_signals_in_workers']

_UNCATCHABLE = {'SIGKILL', 'SIGSTOP'}


class TrainingPreempted(RuntimeError):
    """Training stopped on a signal after saving its state.

    Attributes:
        signal_name (str): e.g. ``'SIGTERM'``.
        checkpoint (str | None): the checkpoint to resume from (None when nothing had been
            trained yet, or when saving failed: the message says why).
        exit_code (int): ``128 + signal number``, the status of a process the signal
            killed.
    """

    def __init__(self, message: str, signum: int, checkpoint: Optional[str]):
        super().__init__(message)
        self.signal_name = _name(signum)
        self.checkpoint = checkpoint
        self.exit_code = 128 + int(signum)


def _name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f'signal {signum}'


def _parse_signals(signals) -> Tuple[int, ...]:
    if isinstance(signals, (str, int)):
        signals = [signals]
    out = []
    for s in signals:
        if isinstance(s, str):
            name = s.upper() if s.upper().startswith('SIG') else 'SIG' + s.upper()
            num = getattr(signal, name, None)
            if not isinstance(num, signal.Signals):
                raise ConfigValueError(f'PreemptionHook: unknown signal {s!r}; give names such as '
                                       f"'SIGTERM', 'SIGUSR1' (this system's signal module)")
        elif isinstance(s, int) and not isinstance(s, bool):
            try:
                num = signal.Signals(s)
            except ValueError:
                raise ConfigValueError(f'PreemptionHook: {s} is not a signal number of this '
                                       f'system') from None
        else:
            raise ConfigValueError(f'PreemptionHook: signals must be names or numbers, got {s!r}')
        if num.name in _UNCATCHABLE:
            raise ConfigValueError(f'PreemptionHook: {num.name} cannot be caught by any process; '
                                   f"use SIGTERM or SIGUSR1 (e.g. srun --signal=USR1@120)")
        if num not in out:
            out.append(num)
    if not out:
        raise ConfigValueError('PreemptionHook: signals is empty; remove the hook instead '
                               '(default_hooks.preemption=None)')
    return tuple(int(n) for n in out)


class _IgnoreSignals:
    """A DataLoader ``worker_init_fn`` that ignores ``signums`` in the worker, then calls
    ``fn`` (picklable for the ``spawn`` start method when ``fn`` is)."""

    def __init__(self, fn, signums: Sequence[int]):
        self.fn = fn
        self.signums = tuple(signums)

    def __call__(self, *args, **kwargs):
        for signum in self.signums:
            signal.signal(signum, signal.SIG_IGN)
        if self.fn is not None:
            return self.fn(*args, **kwargs)
        return None


_EXIT_GUARD = []
# the DataLoader iterators whose workers ignore the signals (weak: a freed iterator has
# stopped its workers)
_SHIELDED = weakref.WeakSet()


def _track_shielded_iterators() -> None:
    """Record every multiprocessing DataLoader iterator whose ``worker_init_fn`` is an
    :class:`_IgnoreSignals` (idempotent)."""
    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter as Iter
    original = Iter.__init__
    if getattr(original, '_stan_mm_shielded', False):
        return

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        fn = getattr(self, '_worker_init_fn', None)
        if isinstance(getattr(fn, 'func', fn), _IgnoreSignals):
            _SHIELDED.add(self)

    __init__._stan_mm_shielded = True
    Iter.__init__ = __init__


def _kill_dataloader_workers() -> None:
    """At interpreter exit, before ``multiprocessing``'s own exit function, which sends
    SIGTERM to every daemonic child and then joins it with no timeout: kill the workers
    that ignore SIGTERM (they would hang the exit). Other children are left to it."""
    iterators = list(_SHIELDED)
    if not iterators:
        return
    try:     # torch's SIGCHLD handler would raise for each killed worker of a live iterator
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    except (ValueError, OSError):
        pass
    from stan_mm.compat.worker_shutdown import kill_live_workers
    for iterator in iterators:
        kill_live_workers(iterator)


def ignore_signals_in_workers(loader, signums: Sequence[int]) -> bool:
    """Make the workers of DataLoader ``loader`` ignore ``signums`` (from their start on).
    A ``functools.partial`` stays a partial of the same arguments (mmengine's seeding
    ``worker_init_fn``, which ``EpochSeedHook`` and the loop rebuild with other seeds).
    Idempotent; returns whether ``loader`` has a ``worker_init_fn`` to wrap.

    Programs a worker starts (``subprocess``) inherit the ignored signals. At interpreter
    exit, DataLoader workers still running are killed before ``multiprocessing`` would
    wait for them forever."""
    if loader is None or not hasattr(loader, 'worker_init_fn'):
        return False
    if not _EXIT_GUARD:
        import atexit
        import multiprocessing.util  # noqa: F401  (registers its exit function first...)
        atexit.register(_kill_dataloader_workers)   # (...so that this one runs before it)
        _track_shielded_iterators()
        _EXIT_GUARD.append(True)
    fn = loader.worker_init_fn
    if isinstance(fn, functools.partial):
        if isinstance(fn.func, _IgnoreSignals):
            return True
        loader.worker_init_fn = functools.partial(_IgnoreSignals(fn.func, signums),
                                                  *fn.args, **fn.keywords)
    elif not isinstance(fn, _IgnoreSignals):
        loader.worker_init_fn = _IgnoreSignals(fn, signums)
    return True


def _signal_on_any_rank(signum: int) -> int:
    """The largest of every rank's ``signum`` (0: none); an all-reduce when distributed."""
    from mmengine.dist import all_reduce, get_world_size, is_distributed
    if is_distributed() and get_world_size() > 1:
        t = torch.tensor([int(signum)], dtype=torch.int32)
        all_reduce(t, op='max')
        return int(t.item())
    return int(signum)


def _at_optimizer_step(optim_wrapper) -> bool:
    """Whether no gradients are waiting in ``.grad`` (gradient accumulation,
    ``accumulative_counts``): the last backward pass was followed by an optimizer step. A
    stop between two steps would lose the gradients summed since the last one (they are not
    in any checkpoint). The same on every rank."""
    from mmengine.optim import OptimWrapperDict
    wrappers = (list(optim_wrapper.values()) if isinstance(optim_wrapper, OptimWrapperDict)
                else [optim_wrapper])
    for w in wrappers:
        counts = getattr(w, '_accumulative_counts', 1)
        inner = getattr(w, '_inner_count', 0)
        if counts > 1 and inner % counts and inner < getattr(w, '_max_counts', -1):
            return False
    return True


def _resume_hint(work_dir) -> str:
    from .nonfinite_hook import published_checkpoint
    last = published_checkpoint(work_dir)
    return (f'The last checkpoint published is {last}: --resume goes on from it'
            if last else 'No checkpoint has been published: start the run again')


def _loaded_checkpoint(runner) -> Optional[str]:
    """The checkpoint ``runner.train()`` resumed from (mmengine's own choice: ``load_from``
    with ``resume``, else the work dir's latest), or None."""
    if not getattr(runner, '_resume', False):
        return None
    if getattr(runner, '_load_from', None):
        return str(runner._load_from)
    from mmengine.runner.checkpoint import find_latest_checkpoint
    try:
        return find_latest_checkpoint(str(runner.work_dir))
    except (OSError, ValueError):
        return None


@HOOKS.register_module()
class PreemptionHook(Hook):
    """On SIGTERM / SIGUSR1 (Slurm preemption or time limit, ``scancel``, ``kill``,
    torchrun's shutdown): finish the running iteration, save a checkpoint (every rank at
    the same iteration), then raise :class:`TrainingPreempted`. See the module docstring.

    Registered as ``default_hooks.preemption`` in ``configs/_base_/default_runtime.py``
    (``preemption=None`` removes it). Example, with Slurm's early warning::

        default_hooks = dict(preemption=dict(type='PreemptionHook',
                                             signals=('SIGTERM', 'SIGUSR1')))
        # SRUN_ARGS="--signal=USR1@120" bash tools/slurm_train.sh ...

    Args:
        signals (sequence of str | int): the signals that stop the run this way. Default
            ``('SIGTERM', 'SIGUSR1')``.
    """
    # after the checkpoint hook (VERY_LOW): a checkpoint it writes at this iteration or
    # epoch end is the one the stop keeps
    priority = 'LOWEST'

    def __init__(self, signals: Union[str, int, Sequence[Union[str, int]]] = (
            'SIGTERM', 'SIGUSR1')):
        self.signums = _parse_signals(signals)
        self._received = 0
        self._announce = False
        self._active = False
        self._previous: Dict[int, object] = {}
        # the checkpoint that holds exactly the current training state (None: the state
        # changed since the last one), and the message hub's last_ckpt at the last look
        self._state_ckpt: Optional[str] = None
        self._hub_ckpt = None
        self._after_validation = False   # an iteration-based loop validates now
        self._stopping = False

    # ------------------------------------------------------------------ handlers
    def _on_signal(self, signum, frame) -> None:
        if not self._received:
            self._received = signum
            if self._announce:
                try:     # (no logging here: the handler may interrupt the logger itself)
                    os.write(2, (f'PreemptionHook: {_name(signum)} received; saving a '
                                 f'checkpoint at the next safe point, then stopping\n'
                                 ).encode())
                except OSError:
                    pass

    def _install(self, runner) -> None:
        if threading.current_thread() is not threading.main_thread():
            runner.logger.warning('PreemptionHook: runner.train() runs outside the main '
                                  'thread, where signal handlers cannot be set: a signal '
                                  'stops this run without a checkpoint')
            return
        from mmengine.dist import is_main_process
        self._announce = is_main_process()
        for signum in self.signums:
            if signum not in self._previous:
                self._previous[signum] = signal.signal(signum, self._on_signal)

    def _uninstall(self) -> None:
        self._active = False
        for signum, previous in self._previous.items():
            try:
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
            except (ValueError, TypeError):     # not the main thread / a foreign handler
                pass
        self._previous = {}

    # ------------------------------------------------------------------ hook points
    def before_run(self, runner) -> None:
        """The handlers go when the training loop returns or raises (mmengine calls
        ``after_run`` only after a run that returned): a run that failed must not leave a
        process that ignores SIGTERM."""
        from .loop_exit import on_train_loop_exit
        on_train_loop_exit(runner, '_stan_mm_preemption', self._uninstall)

    def before_train(self, runner) -> None:
        self._received = 0
        self._announce = False
        self._active = True
        self._after_validation = False
        self._stopping = False
        self._hub_ckpt = runner.message_hub.get_info('last_ckpt')
        # the state at the start: the checkpoint resumed from (nothing trained: count 0)
        self._state_ckpt = _loaded_checkpoint(runner) if runner.iter > 0 else None
        self._install(runner)
        loop = runner.train_loop
        ignore_signals_in_workers(getattr(loop, 'dataloader', None), self.signums)
        val_loop = getattr(runner, '_val_loop', None)
        ignore_signals_in_workers(getattr(val_loop, 'dataloader', None), self.signums)
        # (IterBasedTrainLoop's workers start at its first batch: stan_mm.compat)
        if self._previous:
            runner.logger.info(
                'PreemptionHook: ' + ' / '.join(_name(s) for s in self.signums) +
                ' saves a checkpoint after the running iteration and stops the run '
                '(resume with --resume)')

    def _note_checkpoint(self, runner) -> None:
        """A checkpoint hook that ran before this one published a checkpoint of the
        current state (the message hub's ``last_ckpt`` changed)."""
        last = runner.message_hub.get_info('last_ckpt')
        if last != self._hub_ckpt:
            self._hub_ckpt = self._state_ckpt = last

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        self._state_ckpt = None                      # this iteration trained
        self._note_checkpoint(runner)
        count = runner.iter + 1
        # the run's last iteration: the epoch's end (epoch loops) or the end of the run;
        # an iteration-based loop about to validate: after the validation, before the next
        # iteration (once every hook has seen the validation)
        if count >= runner.max_iters:
            return
        if self._iter_loop_validates(runner, count):
            self._after_validation = True
            return
        self._check(runner, count, 'iter')

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self._after_validation:
            self._after_validation = False
            self._note_checkpoint(runner)
            self._check(runner, runner.iter, 'iter')

    def after_train_epoch(self, runner) -> None:
        self._state_ckpt = None                      # the epoch-end hooks ran
        self._note_checkpoint(runner)
        if self._is_iter_loop(runner):               # (called once, when the run is done)
            return
        self._check(runner, runner.iter, 'epoch_end')

    def before_train_epoch(self, runner) -> None:
        self._note_checkpoint(runner)
        self._check(runner, runner.iter, 'epoch_start')

    def after_run(self, runner) -> None:
        if self._received and not self._stopping:
            runner.logger.warning(f'PreemptionHook: {_name(self._received)} came after the '
                                  'last training iteration; the run finished')
        self._uninstall()

    @staticmethod
    def _is_iter_loop(runner) -> bool:
        from mmengine.runner import IterBasedTrainLoop
        return isinstance(getattr(runner, '_train_loop', None), IterBasedTrainLoop)

    def _iter_loop_validates(self, runner, count: int) -> bool:
        """Whether an ``IterBasedTrainLoop`` validates after iteration ``count`` (its own
        test, with the interval its ``_decide_current_val_interval`` picks then)."""
        if not self._is_iter_loop(runner) or getattr(runner, '_val_loop', None) is None:
            return False
        from .loops import validates_after
        return validates_after(runner.train_loop, count, runner.train_loop.max_iters)

    # ------------------------------------------------------------------ the stop
    def _check(self, runner, count: int, where: str) -> None:
        """``count``: iterations trained so far; ``where``: 'iter' (after one, or after an
        iteration-based loop's validation), 'epoch_end' (the epoch's end hooks ran, its
        validation did not), 'epoch_start' (before an epoch, after the previous epoch's
        validation). Between two optimizer steps of gradient accumulation nothing is
        decided (no collective either: the same on every rank)."""
        if not self._active or not _at_optimizer_step(runner.optim_wrapper):
            return
        signum = _signal_on_any_rank(self._received)
        if not signum:
            return
        self._stop(runner, signum, count, where)

    def _stop(self, runner, signum: int, count: int, where: str) -> None:
        from mmengine.dist import all_reduce, get_world_size, is_distributed
        name = _name(signum)
        mine = '' if self._received else ' (on another rank)'
        epoch = runner.epoch
        if where == 'iter':
            place = (f'iteration {count}' if self._is_iter_loop(runner)
                     else f'iteration {count} (epoch {epoch + 1})')
        elif where == 'epoch_end':
            place = f'the end of epoch {epoch + 1} (iteration {count}), before its validation'
        else:
            place = f'the start of epoch {epoch + 1} (iteration {count})'
        start = time.perf_counter()
        failed = None
        try:     # (the handlers stay while saving: a repeated signal cannot cut the save)
            if count == 0:
                ckpt, how = None, 'nothing was trained yet, so no checkpoint was saved'
            elif self._state_ckpt:
                # (decided alike on every rank: no file system involved)
                ckpt = self._state_ckpt
                how = f'the checkpoint of this state is {ckpt}'
            else:
                try:
                    ckpt = self._save(runner, count, where)
                except Exception as exc:  # noqa: BLE001 (every rank must learn of it)
                    failed, ckpt = exc, None
                if is_distributed() and get_world_size() > 1:
                    flag = torch.tensor([int(failed is not None)], dtype=torch.int32)
                    all_reduce(flag, op='max')
                    if flag.item() and failed is None:
                        failed = RuntimeError('saving the checkpoint failed on another rank')
                how = f'saved {ckpt} in {time.perf_counter() - start:.1f} s'
        finally:
            self._uninstall()
        if failed is not None:
            msg = (f'PreemptionHook: {name} received{mine}; stopping at {place}, but the '
                   f'checkpoint could not be saved ({type(failed).__name__}: {failed}). '
                   f'{_resume_hint(runner.work_dir)}')
            runner.logger.error(msg)
            self._end_run(runner)
            raise TrainingPreempted(msg, signum, None) from failed
        tail = ('Resume with the same command and --resume (python tools/train.py CONFIG '
                '--resume)' if ckpt else 'Start the run again')
        msg = f'PreemptionHook: {name} received{mine}; stopped at {place}; {how}. {tail}'
        runner.logger.warning(msg)
        self._end_run(runner)
        raise TrainingPreempted(msg, signum, ckpt)

    def _end_run(self, runner) -> None:
        """What a run that returns gets from mmengine, ``after_run`` of every hook
        (LoggerHook closes the visualizer: TensorBoard / W&B flushed; logs copied to its
        ``out_dir``), for the run that stops here. Never hides the stop."""
        self._stopping = True
        try:
            runner.call_hook('after_run')
        except Exception as exc:  # noqa: BLE001
            runner.logger.warning(f'PreemptionHook: after_run of the stopped run failed: '
                                  f'{type(exc).__name__}: {exc}')

    def _checkpoint_hook(self, runner):
        from mmengine.hooks import CheckpointHook
        return next((h for h in runner.hooks if isinstance(h, CheckpointHook)), None)

    def _save(self, runner, count: int, where: str) -> str:
        from mmengine.runner import EpochBasedTrainLoop
        from .checkpoint_hook import AtomicCheckpointHook
        from .loops import ResumableEpochBasedTrainLoop
        hook = self._checkpoint_hook(runner)
        tmpl = getattr(hook, 'filename_tmpl', None)
        by_epoch = bool(getattr(hook, 'by_epoch', True))
        if where == 'iter':
            meta = dict(epoch=runner.epoch, iter=count)
            filename = (tmpl if tmpl and not by_epoch else 'iter_{}.pth').format(count)
        else:
            epochs = runner.epoch + 1 if where == 'epoch_end' else runner.epoch
            meta = dict(epoch=epochs, iter=count)
            filename = (tmpl if tmpl and by_epoch else 'epoch_{}.pth').format(epochs)
        loop = runner.train_loop
        if (where == 'iter' and isinstance(loop, EpochBasedTrainLoop)
                and not isinstance(loop, ResumableEpochBasedTrainLoop)):
            runner.logger.warning(
                'PreemptionHook: mmengine\'s EpochBasedTrainLoop restarts an epoch resumed '
                'from a checkpoint inside it (the epoch\'s first iterations are trained '
                "again); train_cfg=dict(type='ResumableEpochBasedTrainLoop', ...) continues it")
        if isinstance(hook, AtomicCheckpointHook):
            path = hook.save_unscheduled(runner, filename, meta)
        else:
            path = _save_plain(runner, hook, filename, meta)
        self._hub_ckpt = self._state_ckpt = runner.message_hub.get_info('last_ckpt')
        if where == 'epoch_start' and isinstance(loop, ResumableEpochBasedTrainLoop) \
                and loop._validation_due(runner.epoch):
            loop._record_validation()     # that epoch's validation finished
        return path


def _save_plain(runner, hook, filename: str, meta: dict) -> str:
    """Save without an AtomicCheckpointHook: into the checkpoint hook's ``out_dir`` (else
    the work dir), then point ``last_checkpoint`` at it (written atomically)."""
    from mmengine.dist import is_main_process
    from .checkpoint_hook import atomic_write_bytes
    from .nonfinite_hook import NonFiniteTrainingError, any_rank, nonfinite_parameters
    bad = nonfinite_parameters(runner.model)
    if any_rank(bool(bad)):
        raise NonFiniteTrainingError(
            f'PreemptionHook: not saving {filename}: the weights are not finite '
            f'({", ".join(bad) if bad else "on another rank"})')
    out_dir = str(getattr(hook, 'out_dir', None) or runner.work_dir)
    runner.save_checkpoint(out_dir, filename, save_optimizer=True, save_param_scheduler=True,
                           meta=meta, by_epoch=False,
                           backend_args=getattr(hook, 'backend_args', None))
    path = (hook.file_backend.join_path(out_dir, filename)
            if hook is not None and hasattr(hook, 'file_backend') else osp.join(out_dir,
                                                                               filename))
    runner.message_hub.update_info('last_ckpt', path)
    if hook is not None:
        hook.last_ckpt = path
    if is_main_process():
        atomic_write_bytes(os.fsencode(str(path)),       # (the file system's bytes)
                           osp.join(str(runner.work_dir), 'last_checkpoint'))
    runner.logger.warning(
        f'PreemptionHook: {path} is not deleted later (the checkpoint hook is not '
        "AtomicCheckpointHook, which removes it once a newer checkpoint is published); "
        "default_hooks.checkpoint.type='AtomicCheckpointHook' does, with the same arguments")
    return path
