"""Checkpoints that survive a kill at any moment, and never publish NaN weights.

mmengine 0.10.7's ``CheckpointHook`` (1) deletes the oldest kept checkpoint, (2) writes the new
one in place with ``open(path, 'wb')`` and (3) rewrites ``last_checkpoint`` in place. A kill
during (2) leaves a truncated ``epoch_N.pth``; a kill during (3) leaves an empty
``last_checkpoint``; with ``max_keep_ckpts=1`` a kill after (1) leaves nothing to resume from.

:class:`AtomicCheckpointHook` reorders and hardens this. Publishing a checkpoint is:

1. the pointer to the new checkpoint is written to ``<work_dir>/.last_checkpoint.pending``
   (temporary file, fsync, rename: the pending pointer exists only complete);
2. the checkpoint is written to a temporary file in its folder, flushed, fsync'ed and
   renamed into place (``stan_mm.compat`` makes mmengine's local ``put`` do this);
3. the pending pointer is renamed to ``last_checkpoint``;
4. only then is the checkpoint that falls out of ``max_keep_ckpts`` deleted.

At every instant the work dir holds a complete checkpoint that ``last_checkpoint`` names
(a kill between (2) and (3) leaves it naming the previous one), except after a kill between
(2) and (3) of the run's first checkpoint: then :func:`recover_last_checkpoint` finds that
checkpoint through the pending pointer.
A run killed between publishing and pruning leaves the old checkpoint behind; each
checkpoint records what is to be pruned after it, so a run resumed from it deletes that
file, and any temporary file a kill left in the checkpoint folder, when it starts. It does
so holding a lock on the work dir and on a local ``out_dir``
(:func:`~stan_mm.apis.features.folder_lock`, nested in ``tools/train.py``'s own), which the
main process keeps until the run ends: a second run started in the same folders by any
launcher is refused with :class:`WorkDirInUseError` before anything is deleted, instead of
deleting the checkpoint the first run is writing.
``stan_mm.compat`` also makes mmengine's local ``put``/``put_text`` atomic, which covers
``save_best`` and any other writer that goes through mmengine's file backends; like
mmengine's ``open(path, 'wb')`` they write through a symlink and into a hard-linked file
(:func:`atomic_write_bytes`).

Before any checkpoint (epoch, iteration, last or best) is written, the model's parameters are
checked: NaN or inf weights are never written, the previous checkpoint stays the one
``last_checkpoint`` names, and the run stops with
:class:`~stan_mm.engine.nonfinite_hook.NonFiniteTrainingError` (see
:mod:`stan_mm.engine.nonfinite_hook`; 35-90 ms per checkpoint for 150 M parameters on
CPU).

``save_best``: mmengine deletes the previous best checkpoint before it writes the new one,
so a kill in between left no best checkpoint at all (and a resumed run never rewrites it).
Here every deletion requested while a best checkpoint is saved waits until that save is
done. A kill in between leaves both best files, and one of them (the older or, when the
kill came before the resumable checkpoint was rewritten, the newer) stays on disk.
"""
import contextlib
import difflib
import errno
import inspect
import os
import os.path as osp
import re
import shutil
import stat
import tempfile
import zipfile
from typing import Optional

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook
from mmaction.registry import HOOKS

from stan_mm.utils.atomic import replacing as _replacing_file
from stan_mm.utils.atomic import umask as _umask  # noqa: F401  (imported from here too)
from stan_mm.utils.cli import CommandLineError

from .loop_exit import on_train_loop_exit
from .nonfinite_hook import NonFiniteTrainingError, any_rank, nonfinite_parameters, \
    resume_advice

#: in the work dir: the pointer to the checkpoint being published (see the module docstring)
PENDING_POINTER = '.last_checkpoint.pending'


def in_folder(path: str, folder) -> bool:
    """Whether ``path`` lies directly in ``folder`` (local paths resolved, symlinks
    included; storage URLs compared as text); False without a folder."""
    if not folder:
        return False
    if '://' in str(path) or '://' in str(folder):
        return str(path).rsplit('/', 1)[0].rstrip('/') == str(folder).rstrip('/')
    return osp.realpath(osp.dirname(str(path))) == osp.realpath(str(folder))


def _write_error(exc: BaseException, path: str) -> None:
    """Re-raise an OSError of a failed write that names no file with ``path`` in it."""
    if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
        # (a failed write names no file; the caller's traceback would not either)
        hint = ' (free space on that disk)' if exc.errno == errno.ENOSPC else ''
        raise OSError(exc.errno, f'{exc.strerror}: could not write {path}{hint}; the file '
                      'there before, if any, is unchanged') from exc


def atomic_write_bytes(data: bytes, path: str) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a
    partial one (temporary file in the same folder + fsync + ``os.replace``).

    The file gets the permissions ``open(path, 'wb')`` would give it: those of the file it
    replaces, else ``0o666`` less the umask (``mkstemp``'s own ``0o600`` would hide
    checkpoints from the rest of a group on a shared cluster).

    Links behave as with ``open(path, 'wb')`` (mmengine's own ``put``): a symlink at
    ``path`` is followed, the file it points to is replaced and the link keeps pointing to
    it (the temporary file goes next to that file); a file with other hard links
    (``st_nlink > 1``) is rewritten in place, not atomically, because replacing it would
    detach it from its other names (a kill during that write leaves it truncated, as it
    would with mmengine).

    A path that names something other than a regular file (a FIFO, a device such as
    ``/dev/null``, a terminal, ``/dev/stdout``) is written into with ``open(path, 'wb')``,
    as mmengine's ``put`` does: renaming a temporary file over it would replace the device
    or pipe with a regular file (``LocalBackend.put`` is this function for every mmengine
    user once ``stan_mm`` is imported, e.g. ``mmengine.dump(obj, '/dev/null')``)."""
    try:
        st_path = os.stat(str(path))          # (follows links, as open() does)
    except (OSError, ValueError):
        st_path = None
    if st_path is not None and not stat.S_ISREG(st_path.st_mode):
        try:
            with open(str(path), 'wb') as f:
                f.write(data)
        except BaseException as exc:
            _write_error(exc, path)
            raise
        return
    target = osp.realpath(str(path))
    folder = osp.dirname(target)
    os.makedirs(folder, exist_ok=True)
    try:
        st = os.stat(target)
    except OSError:
        st = None
    if st is not None and st.st_nlink > 1 and stat.S_ISREG(st.st_mode):
        try:
            with open(target, 'wb') as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException as exc:
            _write_error(exc, path)
            raise
        return
    try:
        with _replacing_file(target) as f:      # (keeps the mode of the file it replaces)
            f.write(data)
    except BaseException as exc:
        _write_error(exc, path)
        raise


def fsync_folder(folder: str) -> None:
    """fsync the folder ``folder`` (its entries: a rename into it survives a power loss);
    a file system that cannot do it is left as it is."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def output_folder(out: str) -> str:
    """The folder an output folder ``out`` is written to: ``out`` made absolute, or the
    folder a symlink ``out`` names, with or without a trailing slash (``islink('link/')``
    is False: the slash makes the lookup follow the link)."""
    plain = out.rstrip(os.sep) or out
    return osp.realpath(plain) if osp.islink(plain) else osp.abspath(plain)


def replace_folder(tmp: str, out_dir: str) -> None:
    """Rename the complete folder ``tmp`` (beside ``out_dir``, same file system) to
    ``out_dir``, replacing what is there (the caller has checked that it may), so that a
    reader of ``out_dir`` finds the old folder or the new one, never a mix of their files.

    An existing ``out_dir`` is first renamed aside to a unique ``.<name>.old-XXXXXXXX``
    beside it and removed once the new folder is in place (a symlink there is replaced,
    not followed). A kill between the two renames leaves ``out_dir`` missing and both
    complete folders beside it (the writers that use this remove such leftovers on their
    next run). When renaming ``tmp`` fails (or is interrupted), the old folder is put back
    if ``out_dir`` is still free (else someone else's new folder is there, which supersedes
    it) and the error is raised (an ``OSError`` names ``tmp`` and ``out_dir``); ``tmp`` is
    the caller's to remove."""
    parent = osp.dirname(osp.abspath(out_dir))
    old = None
    if osp.lexists(out_dir):
        old = tempfile.mkdtemp(prefix=f'.{osp.basename(osp.abspath(out_dir))}.old-',
                               dir=parent)
        os.rmdir(old)   # (a free, unique name to rename to)
        try:
            os.rename(out_dir, old)
        except FileNotFoundError:  # removed concurrently
            old = None
    try:
        os.rename(tmp, out_dir)
    except BaseException as e:   # (Ctrl-C too: out_dir must not stay missing)
        if old is not None and not osp.lexists(out_dir):
            try:
                os.rename(old, out_dir)
            except OSError:
                raise OSError(getattr(e, 'errno', None),
                              f'could not rename {tmp} to {out_dir} ({e}), nor the previous '
                              f'{out_dir} back from {old}: rename {old} (or the new {tmp}) '
                              f'to {out_dir}') from e
        elif old is not None:
            _remove_entry(old)
        raise
    if old is not None:
        _remove_entry(old)
    fsync_folder(parent)


def _remove_entry(path: str) -> None:
    """Delete ``path``: a folder with its files (a symlink itself, not what it names)."""
    if osp.isdir(path) and not osp.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def read_pointer(path: str) -> str:
    """The path a pointer file (``last_checkpoint``, the pending pointer) names, stripped;
    ``''`` when it is missing or unreadable."""
    try:
        with open(path, 'rb') as f:      # (written with os.fsencode: any locale reads it)
            return os.fsdecode(f.read()).strip()
    except (OSError, UnicodeDecodeError):   # (Windows decodes strictly)
        return ''


def is_complete_checkpoint(path: str) -> bool:
    """Whether ``path`` is a complete checkpoint file, checked without loading it: a
    non-empty regular file that ends with a zip end-of-central-directory record
    (``zipfile.is_zipfile``: torch.save's format; a write cut short has none). A folder
    (the sharded checkpoints of DeepSpeed / FSDP strategies) never counts: it is written
    in place, file by file, so a kill can leave part of it. A storage
    URL (``s3://``) counts when its backend says it exists (an object store's PUT is
    atomic)."""
    path = str(path)
    if '://' in path:
        try:
            from mmengine.fileio import get_file_backend
            return bool(get_file_backend(path).exists(path))
        except Exception:  # noqa: BLE001  (no backend, no credentials, no network)
            return False
    try:
        return osp.isfile(path) and osp.getsize(path) > 0 and zipfile.is_zipfile(path)
    except OSError:
        return False


def recover_last_checkpoint(work_dir: str, publish: bool = False) -> Optional[str]:
    """The checkpoint a run killed while publishing its checkpoint left without
    ``last_checkpoint``; None when there is nothing to recover.

    Contract (for ``tools/train.py --resume``, before it refuses a work dir that holds
    checkpoints but no ``last_checkpoint``):

    * ``<work_dir>/last_checkpoint`` exists and names an existing file (or a storage URL):
      None, nothing to recover (mmengine reads ``last_checkpoint`` itself).
    * Otherwise (missing, empty, or naming a file that is gone): the path named by the
      pending pointer ``<work_dir>/.last_checkpoint.pending``, if that file exists and the
      path it names :func:`is_complete_checkpoint`; else None.
      :class:`AtomicCheckpointHook` writes the pending pointer completely (temporary file,
      fsync, rename) before the checkpoint is renamed into place and renames it to
      ``last_checkpoint`` after, so a pending pointer is never partial, and the checkpoint it
      names is either absent (killed before its rename: None) or complete. The usual case is
      a kill between the first checkpoint's rename and the pointer's.
    * ``publish=True`` also completes the interrupted step: the pending pointer is renamed
      to ``last_checkpoint`` (so mmengine's ``resume=True`` with no ``load_from`` finds the
      checkpoint). Safe when several processes (ranks on a shared disk) call it at once.
      Without it nothing is written; the caller passes the path on (``load_from``).

    The path is returned as recorded (absolute, as ``last_checkpoint`` holds it). Reads only
    the work dir's two small files and the end of the checkpoint; no torch.load."""
    work_dir = str(work_dir)
    record = osp.join(work_dir, 'last_checkpoint')
    named = read_pointer(record)
    if named and ('://' in named or osp.exists(named)):
        return None
    pending = osp.join(work_dir, PENDING_POINTER)
    target = read_pointer(pending)
    if not target or not is_complete_checkpoint(target):
        return None
    if publish:
        try:
            os.replace(pending, record)
        except FileNotFoundError:       # another process published it first
            if read_pointer(record) != target:
                return None
    return target


class _DeferredRemovals:
    """A file backend whose ``remove`` only records the path (everything else is the
    wrapped backend's)."""

    def __init__(self, backend):
        self._backend = backend
        self.removals = []

    def remove(self, path) -> None:
        self.removals.append(path)

    def __getattr__(self, name):
        return getattr(self._backend, name)


class WorkDirInUseError(CommandLineError):
    """Another training run holds the work dir (or the checkpoint folder) this run would
    write its checkpoints to (:meth:`AtomicCheckpointHook.before_train`)."""


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """Drop-in replacement for ``CheckpointHook`` (same arguments): save, publish, then prune.

    Example::

        default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook', interval=1,
                                             max_keep_ckpts=2, save_best='auto'))
    """

    PRUNE_KEY = 'stan_mm_prune_ckpt_ids'
    # the checkpoint save_unscheduled wrote (deleted once a newer one is published)
    UNSCHEDULED_KEY = 'stan_mm_unscheduled_ckpt'
    # mkstemp names of atomic_write_bytes: '.<file>.<8 random characters>.tmp' (<file>:
    # a checkpoint, last_checkpoint, .last_checkpoint.pending or .stan_validated.json)
    _TMP_NAME = re.compile(r'^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$')

    def _check_save_arguments(self, runner) -> None:
        """mmengine hands keywords it does not know (``self.args``) to the runner's
        ``save_checkpoint`` at the first save, which fails there, after a whole epoch of
        training, with a TypeError: refuse the ones that runner does not take now."""
        params = inspect.signature(type(runner).save_checkpoint).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return
        unknown = [k for k in self.args if k not in params]
        if not unknown:
            return
        known = sorted((set(inspect.signature(CheckpointHook.__init__).parameters)
                        | set(params)) - {'self', 'kwargs', 'runner'})
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, known, n=1)
            hints.append(f'{k!r}' + (f' (did you mean {close[0]!r}?)' if close else ''))
        raise TypeError(f'AtomicCheckpointHook: unknown argument(s) {", ".join(hints)}; it '
                        f'takes CheckpointHook\'s and {type(runner).__name__}.save_checkpoint\'s:'
                        f' {", ".join(known)}')

    def before_run(self, runner) -> None:
        """Make the folder locks of :meth:`before_train` go when the training loop returns
        or raises: mmengine calls ``after_run`` only after a run that returned, and a
        failed run must not keep this process holding the work dir (a second run started
        from another thread of it, a notebook's, would be refused until it exits)."""
        super().before_run(runner)
        on_train_loop_exit(runner, '_stan_mm_ckpt_lock', self._release_folders)

    def after_run(self, runner) -> None:
        super().after_run(runner)
        self._release_folders()

    def _release_folders(self) -> None:
        locks, self._folder_locks = getattr(self, '_folder_locks', None), None
        if locks is not None:
            locks.close()

    def _lock_folders(self, runner) -> None:
        """Hold :func:`~stan_mm.apis.features.folder_lock` on the work dir and on a local
        ``out_dir`` elsewhere for the run (main process; released in ``after_run`` or when
        the training loop raises), before anything in them is deleted: only
        ``tools/train.py`` locks the work dir itself, and a second run started there with
        MMAction2's train.py, ``tools/quickstart.py`` or a plain Runner would otherwise
        delete the temporary file of the checkpoint the first run is writing. Nested in
        ``tools/train.py``'s own lock (same thread). Raises :class:`WorkDirInUseError`
        when another run holds one of them."""
        from stan_mm.apis.features import FeatureFolderError, FeatureWriteError, folder_lock
        self._release_folders()            # (a second train() of the same runner)
        work_dir, out_dir = str(runner.work_dir), str(self.out_dir)
        folders = [('work dir', work_dir)]
        if '://' not in out_dir and osp.realpath(out_dir) != osp.realpath(work_dir):
            folders.append(('checkpoint folder (out_dir)', out_dir))
        stack = contextlib.ExitStack()
        for what, folder in folders:
            try:
                stack.enter_context(folder_lock(folder))
            except FeatureWriteError:   # (a file in the way: its message names it)
                stack.close()
                raise
            except FeatureFolderError as e:
                stack.close()
                who = ('another thread of this process' if 'another thread' in str(e)
                       else 'another process')
                raise WorkDirInUseError(
                    f'AtomicCheckpointHook: the {what} {folder} is in use by another '
                    f'training run ({who} holds a lock on it); nothing in it was deleted. '
                    f'Wait for that run to end, stop it (the workers of a torchrun job '
                    f'whose launcher was killed go on running: look for them with ps), or '
                    f'give this run another work_dir (tools/train.py --work-dir)') from None
        self._folder_locks = stack

    def _lock_folders_on_every_rank(self, runner) -> None:
        """:meth:`_lock_folders` on the main process; in a distributed run its outcome is
        broadcast, so that a refusal stops every rank at once (the other ranks would
        otherwise go on to their first collective and wait there for a rank that has
        stopped, until a launcher kills them or NCCL's timeout)."""
        from mmengine.dist import broadcast_object_list, get_world_size
        failure, outcome = None, [None]
        if is_main_process():
            try:
                self._lock_folders(runner)
            except Exception as exc:   # noqa: BLE001  (re-raised below, after telling)
                failure, outcome = exc, [f'{type(exc).__name__}: {exc}']
        if get_world_size() > 1:
            broadcast_object_list(outcome, src=0)
        if failure is not None:
            raise failure
        if outcome[0] is not None:
            self._release_folders()
            raise WorkDirInUseError(f'rank 0 could not start the run: {outcome[0]}')

    def before_train(self, runner) -> None:
        self._check_save_arguments(runner)
        super().before_train(runner)
        self._warn_mid_epoch(runner)
        self._lock_folders_on_every_rank(runner)   # before anything is deleted
        if not is_main_process():
            return
        # a resumed run finishes the pruning that a kill interrupted
        keep = set(getattr(self, 'keep_ckpt_ids', ()))
        for step in runner.message_hub.runtime_info.get(self.PRUNE_KEY) or []:
            if step not in keep and self._remove(step):
                runner.logger.info(
                    f'AtomicCheckpointHook: removed {self.filename_tmpl.format(step)}, '
                    f'which a killed run published a newer checkpoint for but did not delete')
        from .loops import VALIDATED_FILE
        ours = ('last_checkpoint', PENDING_POINTER, VALIDATED_FILE)
        for folder in {str(self.out_dir), str(runner.work_dir)}:
            if not osp.isdir(folder):
                continue
            for name in sorted(os.listdir(folder)):
                match = self._TMP_NAME.match(name)
                if match and (match['name'] in ours or match['name'].endswith('.pth')):
                    os.remove(osp.join(folder, name))
                    runner.logger.warning(f'AtomicCheckpointHook: removed {name} from '
                                          f'{folder}, a partial write of a killed run')
        # a pointer left by a publication that a kill interrupted: the run has started (and
        # resumed, if it did) by now, and its own first checkpoint writes a new one
        pending = osp.join(str(runner.work_dir), PENDING_POINTER)
        if osp.isfile(pending):
            os.remove(pending)
            runner.logger.info(f'AtomicCheckpointHook: removed {pending}, the pointer of a '
                               'checkpoint publication that a kill interrupted')

    def _warn_mid_epoch(self, runner) -> None:
        """Iteration checkpoints inside mmengine's ``EpochBasedTrainLoop``: resuming from one
        restarts that epoch at its first batch, so its finished iterations are trained again
        and the schedule runs past its end. With
        :class:`~stan_mm.engine.loops.ResumableEpochBasedTrainLoop`, which continues the
        epoch, only where its sampler rules that out, and not when this run's resume
        already made the loop say that it restarts the epoch (one warning per situation)."""
        from mmengine.runner import EpochBasedTrainLoop
        from .loops import ResumableEpochBasedTrainLoop, epoch_restart_text
        loop = getattr(runner, '_train_loop', None)
        if self.by_epoch or not isinstance(loop, EpochBasedTrainLoop):
            return
        if isinstance(loop, ResumableEpochBasedTrainLoop):
            reason = loop.skip_unsupported_reason()
            if reason is not None and not getattr(loop, 'warned_epoch_restart', False):
                runner.logger.warning(
                    'AtomicCheckpointHook: by_epoch=False, but ResumableEpochBasedTrainLoop '
                    f'cannot continue an epoch here: {reason}. Resumed from a checkpoint '
                    f'inside an epoch, {epoch_restart_text()}')
            return
        fix = ("train_cfg=dict(type='ResumableEpochBasedTrainLoop', ...) continues the "
               'epoch instead')
        per_epoch = len(loop.dataloader)
        done = runner.iter - runner.epoch * per_epoch
        if 0 < done <= per_epoch:
            runner.logger.warning(
                f'AtomicCheckpointHook: resumed at iteration {runner.iter}, {done} of the '
                f'{per_epoch} iterations of epoch {runner.epoch + 1}; '
                f'{epoch_restart_text(done)}. Resume from an epoch checkpoint for an exact '
                f'continuation; {fix}')
        else:
            runner.logger.warning(
                'AtomicCheckpointHook: by_epoch=False in an epoch-based loop. Resumed from a '
                f'checkpoint inside an epoch, {epoch_restart_text()}; keep by_epoch=True '
                '(checkpoints at epoch ends), use an IterBasedTrainLoop, or ' + fix)

    def _save_best_checkpoint(self, runner, metrics) -> None:
        """mmengine's, with the previous best checkpoint deleted after the new one is
        written instead of before (see the module docstring); a ``save_best`` that names no
        metric of the validation is an error naming the metrics (mmengine: a bare
        ``KeyError`` after the first validation)."""
        keys = [k for k in (getattr(self, 'key_indicators', None) or []) if k != 'auto']
        missing = [k for k in keys if k not in metrics] if self.save_best and metrics else []
        if missing:
            from stan_mm.utils.cli import ConfigOptionError
            last = runner.message_hub.get_info('last_ckpt')
            saved = (f'the last checkpoint written is {last} (--resume goes on from it)'
                     if last else 'no checkpoint has been written yet')
            raise ConfigOptionError(
                f'default_hooks.checkpoint.save_best names {", ".join(map(repr, missing))}, '
                f'which this validation does not report; its metrics are '
                f'{", ".join(sorted(metrics))}. Set save_best to one of them; {saved}')
        if self.save_best and metrics:
            self._refuse_nonfinite(runner, 'a best checkpoint (after ' + (
                f'epoch {runner.epoch})' if self.by_epoch else f'iteration {runner.iter})'))
        backend = self.file_backend
        deferred = _DeferredRemovals(backend)
        self.file_backend = deferred
        try:
            super()._save_best_checkpoint(runner, metrics)
        finally:
            self.file_backend = backend
        current = self._best_paths()
        for path in deferred.removals:
            if path in current or not backend.isfile(path):
                continue
            if not in_folder(path, getattr(self, 'out_dir', None)):
                # a best checkpoint named by a resumed checkpoint's message hub, in another
                # folder (a copied work dir): another run's file, not this run's to delete
                runner.logger.info(f'AtomicCheckpointHook: the previous best checkpoint '
                                   f'{path} is outside this run\'s folder {self.out_dir}; '
                                   'not deleting it')
                continue
            backend.remove(path)

    def _remove(self, step) -> bool:
        old = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(step))
        if self.file_backend.isfile(old):
            self.file_backend.remove(old)
        elif self.file_backend.isdir(old):
            self.file_backend.rmtree(old)
        else:
            return False
        return True

    def _refuse_nonfinite(self, runner, what: str) -> None:
        """Raise :class:`NonFiniteTrainingError` (after an ERROR log naming the first bad
        parameters) when any parameter of the model holds a NaN or inf, before anything of
        the checkpoint ``what`` is written or recorded. Every rank decides the same
        (:func:`any_rank`: sharded parameters may differ between ranks)."""
        model = getattr(runner, 'model', None)
        if model is None:
            return
        bad = nonfinite_parameters(model)
        if not any_rank(bool(bad)):
            return
        msg = (f'AtomicCheckpointHook: refusing to save {what}: the weights are not '
               f'finite (NaN/inf in '
               f'{", ".join(bad) if bad else "the parameters of another rank"}); '
               f'last_checkpoint and the best checkpoint are left as they were. '
               f'{resume_advice(runner.work_dir)}.')
        runner.logger.error(msg)
        raise NonFiniteTrainingError(msg)

    def _save_checkpoint_with_step(self, runner, step, meta):
        filename = self.filename_tmpl.format(step)
        self._refuse_nonfinite(runner, filename)
        stale = None
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and
                                            self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                stale = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            # stored before saving so that the checkpoint carries the list it leaves behind
            # and what is to be deleted once it is published
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
            runner.message_hub.update_info(self.PRUNE_KEY, [] if stale is None else [stale])

        self._publish(runner, filename, meta, self.save_optimizer, self.save_param_scheduler)
        # (4) prune
        self._remove_superseded(runner)
        if stale is not None and is_main_process():
            self._remove(stale)

    def _publish(self, runner, filename: str, meta, save_optimizer: bool,
                 save_param_scheduler: bool) -> str:
        """Steps (1)-(3) of the module docstring for ``filename`` in ``out_dir``; returns
        its path. Every rank calls it (``runner.save_checkpoint`` writes on the main
        process)."""
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        pending = osp.join(runner.work_dir, PENDING_POINTER)
        if is_main_process():
            # (1) the pointer, complete on disk before the checkpoint is renamed into place
            # (the file system's encoding, as the path itself: a work dir with non-ASCII
            # names under an ASCII locale without UTF-8 mode failed here and lost the save)
            atomic_write_bytes(os.fsencode(str(self.last_ckpt)), pending)
        # (2) the checkpoint: temporary file, fsync, rename (LocalBackend.put, stan_mm.compat)
        runner.save_checkpoint(
            self.out_dir, filename, self.file_client_args,
            save_optimizer=save_optimizer, save_param_scheduler=save_param_scheduler,
            meta=meta, by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)
        if is_main_process():
            # (3) publish
            os.replace(pending, osp.join(runner.work_dir, 'last_checkpoint'))
        return self.last_ckpt

    def save_unscheduled(self, runner, filename: str, meta: dict) -> str:
        """Save and publish ``filename`` now, outside the hook's interval (what
        :class:`~stan_mm.engine.preemption_hook.PreemptionHook` saves when the job is told
        to stop): never of non-finite weights, published as every checkpoint of this hook
        (``last_checkpoint`` names it), always with the optimizer and the schedules (a
        resume needs them), with ``meta`` (``epoch``, ``iter``) as given. It is not part of
        the ``max_keep_ckpts`` rotation; the next checkpoint this hook publishes (in this
        run or the run resumed from it) deletes it. Returns its path."""
        self._refuse_nonfinite(runner, filename)
        previous = runner.message_hub.get_info(self.UNSCHEDULED_KEY)
        path = self.file_backend.join_path(self.out_dir, filename)
        # recorded in the checkpoint itself, so that the resumed run deletes it later
        runner.message_hub.update_info(self.UNSCHEDULED_KEY, path)
        self._publish(runner, filename, meta, True, True)
        if is_main_process() and previous and previous != path:
            self._remove_path(runner, previous)
        return path

    def _remove_superseded(self, runner) -> None:
        """Delete the unscheduled checkpoint (:meth:`save_unscheduled`) that the checkpoint
        just published supersedes (the file on the main process; the record on every
        rank)."""
        old = runner.message_hub.get_info(self.UNSCHEDULED_KEY)
        if not old:
            return
        runner.message_hub.update_info(self.UNSCHEDULED_KEY, None)
        if is_main_process() and old != self.last_ckpt and old not in self._best_paths():
            self._remove_path(runner, old)

    def _best_paths(self) -> set:
        return {getattr(self, 'best_ckpt_path', None),
                *getattr(self, 'best_ckpt_path_dict', {}).values()}

    def _remove_path(self, runner, path: str) -> None:
        """Delete ``path`` if it is a file in this hook's folder (a resumed run's message
        hub may name another folder's file: a copied work dir)."""
        if not in_folder(path, getattr(self, 'out_dir', None)):
            return
        try:
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
                runner.logger.info(f'AtomicCheckpointHook: removed {path}, the checkpoint '
                                   f'saved when the job was stopped, now superseded')
        except OSError as e:
            runner.logger.warning(f'AtomicCheckpointHook: could not remove {path} ({e})')
