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

#: the beginnings of the two messages dropped
DROPPED = ('"FileClient" will be deprecated in future.',
           '"HardDiskBackend" is the alias of "LocalBackend"')


@contextlib.contextmanager
def quiet_file_client():
    """Drop the :data:`DROPPED` messages of ``mmengine.fileio.file_client`` inside the
    ``with`` block (its module-level ``print_log`` is swapped, and restored after)."""
    from mmengine.fileio import file_client as fc
    previous = fc.print_log

    def filtered_print_log(msg, logger=None, level=logging.INFO):
        if isinstance(msg, str) and msg.startswith(DROPPED):
            return
        previous(msg, logger=logger, level=level)

    fc.print_log = filtered_print_log
    try:
        yield
    finally:
        fc.print_log = previous


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
