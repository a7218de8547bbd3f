"""A training DataLoader that yields no batch is refused when mmengine's train loop is
built (found in review, not in the notes).

A training set smaller than one batch with ``drop_last=True``, or an empty one (a wrong
``data_root`` or annotation file), gives a DataLoader of length 0. mmengine's
``EpochBasedTrainLoop`` then failed on a bare ``AssertionError: epoch_length must be a
positive integer, but got 0`` when a parameter schedule was converted to iterations, and
otherwise "trained" every epoch without a batch, saved the initial weights as checkpoints
and validated them; its ``IterBasedTrainLoop`` ended in a bare ``StopIteration`` at the
first batch. Both loops (and their subclasses, ``ResumableEpochBasedTrainLoop`` among them)
now raise :class:`~stan_mm.engine.loops.EmptyTrainDataloaderError` when they are built,
before the runner builds the schedulers, with the sizes and the fix in one line
(:func:`~stan_mm.engine.loops.refuse_empty_train_loader`). A DataLoader without a length
(an iterable dataset) is left alone.
"""
import functools

from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop

_MARK = '_stan_mm_empty_loader_fix'


def _refuses_empty_loader(init):
    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        from stan_mm.engine.loops import refuse_empty_train_loader   # (compat comes first)
        refuse_empty_train_loader(self.dataloader)

    setattr(__init__, _MARK, True)
    return __init__


def apply_empty_loader_fix() -> bool:
    """Wrap the ``__init__`` of mmengine's ``EpochBasedTrainLoop`` and
    ``IterBasedTrainLoop`` (idempotent). Returns whether it was applied now."""
    applied = False
    for cls in (EpochBasedTrainLoop, IterBasedTrainLoop):
        if not getattr(cls.__init__, _MARK, False):
            cls.__init__ = _refuses_empty_loader(cls.__init__)
            applied = True
    return applied
