"""No ``FileClient`` deprecation warnings from checkpointing that does not use it.

mmengine 0.10.7's ``CheckpointHook.before_train`` and its ``save_checkpoint`` (behind
``Runner.save_checkpoint``) build a ``FileClient`` they do not use when
``file_client_args`` is None ("to avoid breaking backward compatibility"), which logs
WARNINGs about an API the run does not use: both at the start of every training run, the
first again at every checkpoint saved:

``"FileClient" will be deprecated in future. Please use io functions in ...``
``"HardDiskBackend" is the alias of "LocalBackend" and the former will be deprecated ...``

While ``CheckpointHook.before_train`` (stan-mm's ``AtomicCheckpointHook`` calls it through
``super()``) or ``Runner.save_checkpoint`` runs with ``file_client_args=None``, exactly
these two messages of ``mmengine.fileio.file_client`` are dropped; a config that sets
``file_client_args`` still gets them (it uses the deprecated API), and every other
message is untouched.
"""
import contextlib
import logging
from typing import Callable, Optional

#: the beginnings of the two messages dropped
DROPPED = ('"FileClient" will be deprecated in future.',
           '"HardDiskBackend" is the alias of "LocalBackend"')


@contextlib.contextmanager
def rewritten_print_log(module, rewrite: Callable[[object, int], Optional[int]]):
    """Inside the ``with`` block, every message ``module`` logs through its module-level
    ``print_log`` goes to ``rewrite(msg, level)``, which returns the level to log it at,
    or None to drop it; the previous ``print_log`` is restored afterwards, also on an
    error. (Swaps a module global: not for threads that log through ``module`` at the
    same time.)"""
    previous = module.print_log

    def rewriting_print_log(msg, logger=None, level=logging.INFO):
        level = rewrite(msg, level)
        if level is not None:
            previous(msg, logger=logger, level=level)

    module.print_log = rewriting_print_log
    try:
        yield
    finally:
        module.print_log = previous


def quiet_file_client():
    """Drop the :data:`DROPPED` messages of ``mmengine.fileio.file_client`` inside the
    ``with`` block."""
    from mmengine.fileio import file_client as fc
    return rewritten_print_log(fc, lambda msg, level: None if isinstance(msg, str) and
                               msg.startswith(DROPPED) else level)


def apply_fileclient_log_fix() -> None:
    """Wrap ``CheckpointHook.before_train`` (a hook without ``file_client_args``) and
    ``Runner.save_checkpoint`` (called without ``file_client_args``) in
    :func:`quiet_file_client` (idempotent)."""
    import functools
    import inspect
    from mmengine.hooks import CheckpointHook
    from mmengine.runner import Runner
    original_before_train = CheckpointHook.before_train
    if getattr(original_before_train, '_stan_fileclient_log', False):
        return

    @functools.wraps(original_before_train)
    def before_train(self, runner) -> None:
        if getattr(self, 'file_client_args', None) is not None:
            return original_before_train(self, runner)
        with quiet_file_client():
            return original_before_train(self, runner)

    original_save = Runner.save_checkpoint
    signature = inspect.signature(original_save)

    @functools.wraps(original_save)
    def save_checkpoint(self, *args, **kwargs):
        try:
            given = signature.bind(self, *args, **kwargs).arguments.get('file_client_args')
        except TypeError:               # (mmengine's own call reports the bad arguments)
            given = None
        if given is not None:
            return original_save(self, *args, **kwargs)
        with quiet_file_client():
            return original_save(self, *args, **kwargs)

    before_train._stan_fileclient_log = True
    CheckpointHook.before_train = before_train
    Runner.save_checkpoint = save_checkpoint
