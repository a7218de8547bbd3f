"""Clean-up that must run however the training loop ends.

mmengine's ``Runner.train`` calls the hooks' ``after_run`` only after a loop that returned:
when it raises, a hook that installed something in ``before_run`` / ``before_train``
(signal handlers, folder locks) would leave it in place for the rest of the process.
"""
import functools
from typing import Callable


def on_train_loop_exit(runner, marker: str, callback: Callable[[], None]) -> None:
    """Call ``callback`` when ``runner``'s training loop returns or raises, by wrapping its
    ``run`` (once per ``marker``: a second call with the same marker, e.g. a second
    ``runner.train()``, adds nothing). Call from ``before_run``, when the loop exists; a
    runner without a built loop is left alone."""
    from mmengine.runner import BaseLoop
    loop = getattr(runner, '_train_loop', None)
    if not isinstance(loop, BaseLoop) or getattr(loop.run, marker, False):
        return
    original = loop.run

    @functools.wraps(original)
    def run(*args, **kwargs):
        try:
            return original(*args, **kwargs)
        finally:
            callback()

    setattr(run, marker, True)
    loop.run = run
