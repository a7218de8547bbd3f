"""decord ``VideoReader`` objects inherited through ``fork()`` are never freed in the child.

A forked DataLoader worker starts with a copy of its parent's memory, including any
``decord.VideoReader`` the parent has not freed yet: readers kept alive by a reference cycle
(an exception's traceback holding the frame that opened the video, for instance) wait for
the cyclic garbage collector. When that collector runs in the worker, the reader's
``__del__`` frees the native reader, whose decoding threads exist only in the parent: the
worker hangs or is killed by ``SIGABRT`` ("DataLoader worker ... is killed by signal:
Aborted", seen in this project's CI in a worker that never touched that reader).

The fix records the process that created each reader and, in any other process, drops the
native handle without freeing it: the child leaks its copy-on-write copy of a reader it
cannot use anyway. Readers created before ``import stan_mm`` keep decord's behaviour.
"""
import functools
import os

_MARK = '_stan_mm_fork_safe'


def apply_decord_fork_fix() -> bool:
    """Patch ``decord.VideoReader`` (idempotent). Returns False when decord is missing."""
    try:
        from decord import video_reader
    except ImportError:
        return False
    cls = video_reader.VideoReader
    if getattr(cls.__del__, _MARK, False):
        return True
    original_init, original_del = cls.__init__, cls.__del__

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        self._stan_mm_pid = os.getpid()
        original_init(self, *args, **kwargs)

    @functools.wraps(original_del)
    def __del__(self):
        pid = getattr(self, '_stan_mm_pid', None)
        if pid is not None and pid != os.getpid():
            self._handle = None        # inherited through fork: not ours to free
            return
        original_del(self)

    for fn in (__init__, __del__):
        setattr(fn, _MARK, True)
    cls.__init__, cls.__del__ = __init__, __del__
    return True
