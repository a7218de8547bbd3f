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

Distributed, a shard without a batch on some ranks only (``DefaultSampler(round_up=False)``
with fewer samples than ranks; ``drop_last`` with fewer samples on a rank than a batch) was
refused on those ranks alone; the others went on and waited for them at their first
collective (with NCCL, a hang). The ranks now exchange their samples and batches per epoch
(one all-gather of two integers, when the loop is built) and all raise the same error,
naming the ranks without a batch, every rank's counts and the training set (its dataset
and annotation files, also inside ``ConcatDataset`` / ``RepeatDataset``). Under an epoch
loop, ranks with different numbers of batches per epoch are refused as well
(:class:`~stan_mm.engine.loops.UnevenTrainDataloaderError`): the ranks' gradient
synchronizations would no longer pair up.
"""
import functools

from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop

_MARK = '_stan_mm_empty_loader_fix'


def _refuses_empty_loader(init):
    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        from stan_mm.engine.loops import refuse_empty_train_loader   # (compat comes first)
        refuse_empty_train_loader(self.dataloader,
                                  epoch_based=isinstance(self, EpochBasedTrainLoop))

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
