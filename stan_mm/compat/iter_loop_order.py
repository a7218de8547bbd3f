"""mmengine's ``IterBasedTrainLoop`` resumed with ``randomness.seed`` unset gives its sampler
the interrupted run's seed (found in the dataset-wrapper review, not in the notes).

mmengine draws a new seed for every run without ``randomness.seed`` and builds the training
sampler with it before it loads the checkpoint: the runner (and with it ``EpochSeedHook``)
gets the checkpoint's seed back, the sampler does not. A resumed ``InfiniteSampler`` went on
in another order than the interrupted run, and a ``DefaultSampler`` mixed two orders in the
pass it was resumed in. ``IterBasedTrainLoop.run`` now first calls
:func:`~stan_mm.engine.loops.restore_iter_loop_sampler_seed`, which records the sampler's
seed in the message hub (hence in every checkpoint) and, resumed from a checkpoint with that
record, gives it back (``ResumableEpochBasedTrainLoop`` does the same for the epoch loops).
"""
import functools

from mmengine.runner import IterBasedTrainLoop

_MARK = '_stan_mm_iter_loop_order_fix'


def _gives_the_seed_back(run):
    @functools.wraps(run)
    def wrapped(self):
        from stan_mm.engine.loops import restore_iter_loop_sampler_seed
        restore_iter_loop_sampler_seed(self)
        return run(self)

    setattr(wrapped, _MARK, True)
    return wrapped


def apply_iter_loop_order_fix() -> bool:
    """Wrap ``IterBasedTrainLoop.run`` (idempotent). Returns whether it was applied now."""
    if getattr(IterBasedTrainLoop.run, _MARK, False):
        return False
    IterBasedTrainLoop.run = _gives_the_seed_back(IterBasedTrainLoop.run)
    return True
