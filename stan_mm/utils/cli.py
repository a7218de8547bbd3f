"""How the command-line tools end on a mistake in the user's data, config or files.

``tools/train.py`` and ``tools/test.py`` run through :func:`run_tool`: an error that
stan-mm raises about the user's input (a bad annotation line, weights that do not fit, an
unreadable video, an unsafe or damaged checkpoint, test views the config cannot take) ends the tool with its message on one
line of stderr and exit status 2, instead of a page of mmengine traceback with the message
at the bottom. Bugs (any other exception) keep their traceback, and ``STAN_TRACEBACK=1``
shows it for these errors too.
"""
import os
import sys
from typing import Callable, Tuple, Type


class ConfigOptionError(ValueError):
    """A command-line config option (``--cfg-options``) the config cannot take as given;
    the message says how to write it."""


def user_errors() -> Tuple[Type[BaseException], ...]:
    """The exception types that describe the user's input, not a bug of the code."""
    from stan_mm.apis.video import ViewsError
    from stan_mm.compat.checkpoint import CorruptCheckpointError, UnsafeCheckpointError
    from stan_mm.datasets.readers_common import AnnotationError
    from stan_mm.datasets.transforms.video_io import VideoReadError
    from stan_mm.models.clip.builder import CLIPArchMismatchError, CLIPKeysMismatchError
    from stan_mm.utils.checkpoint_check import CheckpointMismatchError
    return (AnnotationError, CLIPArchMismatchError, CLIPKeysMismatchError,
            CheckpointMismatchError, CorruptCheckpointError, UnsafeCheckpointError,
            VideoReadError, ViewsError, ConfigOptionError)


def describe(exc: BaseException) -> str:
    """The message to print: a video error re-raised from a DataLoader worker carries the
    worker's traceback in its text; its file and reason are what the user needs."""
    filename, reason = getattr(exc, 'filename', None), getattr(exc, 'reason', None)
    if filename and reason and 'Traceback' in str(exc):
        return f'cannot read video file {filename!r}: {reason}'
    return str(exc)


def run_tool(main: Callable[[], object], tool: str) -> int:
    """Call ``main()``; return 0, or 2 after printing ``<tool>: error: <message>`` for an
    error of :func:`user_errors` (re-raised as is when ``STAN_TRACEBACK=1``)."""
    try:
        main()
    except user_errors() as exc:
        if os.environ.get('STAN_TRACEBACK', '') not in ('', '0'):
            raise
        print(f'{tool}: error: {type(exc).__name__}: {describe(exc)}\n'
              '(STAN_TRACEBACK=1 shows where it was raised)', file=sys.stderr)
        return 2
    return 0
