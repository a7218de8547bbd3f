"""Checkpoints that survive a kill at any moment.

mmengine 0.10.7's ``CheckpointHook`` (1) deletes the oldest kept checkpoint, (2) writes the new
one in place with ``open(path, 'wb')`` and (3) rewrites ``last_checkpoint`` in place. A kill
during (2) leaves a truncated ``epoch_N.pth``; a kill during (3) leaves an empty
``last_checkpoint``; with ``max_keep_ckpts=1`` a kill after (1) leaves nothing to resume from.

:class:`AtomicCheckpointHook` reorders and hardens this: the new checkpoint is written to a
temporary file in the same folder, flushed, fsync'ed and renamed into place; then
``last_checkpoint`` is replaced the same way; only then is the oldest checkpoint deleted. At
every instant the work dir holds a complete checkpoint that ``last_checkpoint`` names.
``stan_mm.compat`` also makes mmengine's local ``put``/``put_text`` atomic, which covers
``save_best`` and any other writer that goes through mmengine's file backends.
"""
import os
import os.path as osp
import tempfile

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook
from mmaction.registry import HOOKS


def atomic_write_bytes(data: bytes, path: str) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a
    partial one (temporary file in the same folder + fsync + ``os.replace``)."""
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + osp.basename(path) + '.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """Drop-in replacement for ``CheckpointHook`` (same arguments): save, publish, then prune.

    Example::

        default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook', interval=1,
                                             max_keep_ckpts=2, save_best='auto'))
    """

    def _save_checkpoint_with_step(self, runner, step, meta):
        stale = None
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and
                                            self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                stale = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            # stored before saving so that the checkpoint carries the list it leaves behind
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir, filename, self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta, by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)

        if not is_main_process():
            return
        atomic_write_bytes(str(self.last_ckpt).encode(),
                           osp.join(runner.work_dir, 'last_checkpoint'))
        if stale is not None:
            old = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(stale))
            if self.file_backend.isfile(old):
                self.file_backend.remove(old)
            elif self.file_backend.isdir(old):
                self.file_backend.rmtree(old)
