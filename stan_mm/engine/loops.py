"""An epoch-based training loop that resumes inside an epoch where the checkpoint left it.

mmengine's ``EpochBasedTrainLoop`` resumed from an iteration checkpoint (``CheckpointHook(
by_epoch=False)``) restarts that epoch at its first batch: the iterations done before the
checkpoint are trained again, on the same samples, and the run ends that many iterations
past its schedule. :class:`ResumableEpochBasedTrainLoop` runs only the batches of that epoch
that were not trained yet, then the following epochs as mmengine does.

How the rest of the epoch is found: mmengine's ``DefaultSampler`` (and stan-mm's
``TwinGroupSampler``) draw their order from ``(seed, epoch)`` (``DistSamplerSeedHook`` sets
the epoch before it starts), so the resumed run's sampler yields the same indices as the
interrupted one. The loop drops the first ``done * batch_size`` of them, where ``done =
iter - epoch * len(dataloader)`` are the batches the checkpoint has seen; those samples are
never loaded (the indices are skipped in the main process, before any worker decodes a
video). In DDP every rank's sampler yields its own shard, so each rank drops its own first
``done * batch_size`` indices. For the duration of the shortened epoch the DataLoader's
``BatchSampler`` reads from a proxy of the sampler that skips them; ``len(dataloader)``
stays the full epoch's, and hooks receive ``batch_idx`` from ``done`` on, so logs read
``[done+1/len]`` and the hooks' end-of-epoch checks (``batch_idx + 1 == len(dataloader)``)
fire at the true last batch. With ``persistent_workers=True`` the proxy works too: the
workers only receive indices, and the next epoch's iterator reads the sampler, restored,
again.

Falls back to mmengine's behaviour, with a warning that names the reason, when the order
cannot be reproduced: a sampler not known to draw its order from ``(seed, epoch)`` (e.g.
torch's ``RandomSampler``), a batch sampler other than torch's ``BatchSampler``, or a
checkpoint whose epoch length, batch size or world size differ from this run's.

The sampler's seed: with ``randomness.seed`` unset mmengine draws a new seed per run and
builds the sampler before the checkpoint is loaded, so a resumed run would shuffle the
epoch differently. The loop stores the sampler's seed (with the epoch length, batch size
and world size) in the message hub, hence in every checkpoint, and a mid-epoch resume
gives the sampler the stored seed back.

Exactness of what is trained: same samples, same order, same number of iterations. Same
random augmentation and dropout as well needs ``EpochSeedHook(per_iteration=True)``
(see :mod:`stan_mm.engine.seed_hook`).

Example::

    train_cfg = dict(type='ResumableEpochBasedTrainLoop', max_epochs=30, val_interval=1)
    default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook', by_epoch=False,
                                         interval=2000))
"""
import contextlib
import itertools
from typing import Iterator, Optional

from mmengine.dataset import DefaultSampler
from mmengine.dist import get_world_size
from mmengine.runner import EpochBasedTrainLoop
from mmaction.registry import LOOPS
from torch.utils.data import BatchSampler, SequentialSampler

ORDER_KEY = 'stan_mm_train_order'   # message hub (runtime info, saved in checkpoints)


class SamplerProxy:
    """Stands in for a sampler inside a DataLoader's ``BatchSampler`` (the DataLoader's own
    ``sampler`` attribute cannot be reassigned): same length, attributes read from the
    wrapped sampler (``set_epoch``, ``epoch``, ``seed``). Subclasses change ``__iter__``."""

    def __init__(self, sampler):
        self.sampler = sampler

    def __iter__(self) -> Iterator:
        return iter(self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)

    def __getattr__(self, name):
        if name == 'sampler':            # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.sampler, name)


class SkipFirst(SamplerProxy):
    """The wrapped sampler's indices without the first ``count``; ``len`` is unchanged
    (the DataLoader keeps the full epoch's length)."""

    def __init__(self, sampler, count: int):
        super().__init__(sampler)
        self.count = int(count)

    def __iter__(self) -> Iterator:
        return itertools.islice(iter(self.sampler), self.count, None)


def innermost_sampler(sampler):
    """The sampler under any :class:`SamplerProxy` layers."""
    while isinstance(sampler, SamplerProxy):
        sampler = sampler.sampler
    return sampler


def has_reproducible_order(sampler) -> bool:
    """Whether ``sampler`` yields the same indices in every process for the same state
    (seed, epoch): mmengine's ``DefaultSampler``, torch's ``SequentialSampler``, or a
    sampler class that says so with ``reproducible_order = True`` (``TwinGroupSampler``).
    ``reproducible_order = False`` on a subclass opts out."""
    default = isinstance(sampler, (DefaultSampler, SequentialSampler))
    return bool(getattr(type(sampler), 'reproducible_order', default))


@contextlib.contextmanager
def skip_first_samples(dataloader, count: int):
    """Within the block, iterating ``dataloader`` skips the first ``count`` indices of its
    sampler (never loaded). Needs a torch ``BatchSampler`` (what mmengine builds)."""
    batch_sampler = dataloader.batch_sampler
    inner = batch_sampler.sampler
    batch_sampler.sampler = SkipFirst(inner, count)
    try:
        yield
    finally:
        batch_sampler.sampler = inner


@LOOPS.register_module()
class ResumableEpochBasedTrainLoop(EpochBasedTrainLoop):
    """mmengine's ``EpochBasedTrainLoop`` (same arguments, same behaviour) that, resumed
    from a checkpoint saved inside an epoch, trains only that epoch's remaining batches.

    See the module docstring for how, and for when it falls back to mmengine's restart of
    the epoch (with a warning).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._skip_batches = 0   # batches of the next epoch already trained (resume)

    # ---------------------------------------------------------------- what can be skipped
    def skip_unsupported_reason(self) -> Optional[str]:
        """None when the training DataLoader's order can be reproduced and skipped; else
        why not (names the sampler or batch sampler type)."""
        batch_sampler = getattr(self.dataloader, 'batch_sampler', None)
        if type(batch_sampler) is not BatchSampler:
            return (f'its DataLoader batches with {type(batch_sampler).__name__}, not '
                    'torch\'s BatchSampler, so skipping whole batches by sampler indices '
                    'is not known to be exact')
        sampler = innermost_sampler(batch_sampler.sampler)
        if not has_reproducible_order(sampler):
            return (f'its sampler {type(sampler).__module__}.{type(sampler).__name__} is '
                    'not known to yield the same order for the same (seed, epoch); use '
                    'DefaultSampler, or set reproducible_order = True on the sampler class '
                    'if its order is a function of its seed and epoch')
        return None

    def _order_info(self) -> dict:
        """What the sampler order of an epoch depends on, stored with each checkpoint."""
        batch_sampler = getattr(self.dataloader, 'batch_sampler', None)
        sampler = innermost_sampler(getattr(batch_sampler, 'sampler', None))
        seed = getattr(sampler, 'seed', None)
        return dict(batches_per_epoch=len(self.dataloader),
                    batch_size=getattr(self.dataloader, 'batch_size', None),
                    world_size=get_world_size(),
                    sampler_seed=seed if isinstance(seed, int) else None)

    def _fallback(self, why: str) -> int:
        self.runner.logger.warning(
            f'ResumableEpochBasedTrainLoop: resumed at iteration {self._iter}, inside epoch '
            f'{self._epoch + 1}, but {why}. Falling back to mmengine\'s behaviour: the epoch '
            'restarts at its first batch, its finished iterations are trained again and the '
            'run ends past its schedule. Resume from an epoch checkpoint for an exact '
            'continuation')
        return 0

    def _plan_resume(self) -> int:
        """How many batches of the next epoch to skip (0 unless resumed mid-epoch); gives
        the sampler the interrupted run's seed back; records the order info."""
        hub = self.runner.message_hub
        saved = hub.get_info(ORDER_KEY)
        per_epoch = len(self.dataloader)
        done = self._iter - self._epoch * per_epoch
        skip = 0
        if done != 0 and self._epoch < self._max_epochs:
            skip = self._check_resume(done, per_epoch, saved)
        hub.update_info(ORDER_KEY, self._order_info())
        return skip

    def _check_resume(self, done: int, per_epoch: int, saved: Optional[dict]) -> int:
        if not 0 < done <= per_epoch:
            return self._fallback(
                f'{done} batches of an epoch of {per_epoch} would be done: the epoch length '
                'differs from the checkpoint\'s (dataset, batch size or world size changed?)')
        if done < per_epoch:   # (after the epoch's last batch there is no order to follow)
            reason = self.skip_unsupported_reason()
            if reason is not None:
                return self._fallback(reason)
        now = self._order_info()
        if isinstance(saved, dict):
            changed = [f'{k} {saved[k]} -> {now[k]}'
                       for k in ('batches_per_epoch', 'batch_size', 'world_size')
                       if k in saved and saved[k] != now[k]]
            if changed:
                return self._fallback('the batches differ from the checkpoint\'s ('
                                      + ', '.join(changed) + ')')
            self._restore_sampler_seed(saved.get('sampler_seed'), now['sampler_seed'])
        if done == per_epoch:
            self.runner.logger.info(
                f'ResumableEpochBasedTrainLoop: resumed at iteration {self._iter}, after the '
                f'last batch of epoch {self._epoch + 1}; ending that epoch (its end-of-epoch '
                'hooks and validation) without training a batch')
        else:
            self.runner.logger.info(
                f'ResumableEpochBasedTrainLoop: resumed at iteration {self._iter}, {done} of '
                f'the {per_epoch} batches of epoch {self._epoch + 1} done; continuing at '
                f'batch {done + 1} (the first {done * self.dataloader.batch_sampler.batch_size}'
                ' indices of this rank\'s sampler are skipped, not loaded)')
        return done

    def _restore_sampler_seed(self, old_seed: Optional[int], seed: Optional[int]) -> None:
        """Give the sampler the interrupted run's seed (see the module docstring)."""
        batch_sampler = getattr(self.dataloader, 'batch_sampler', None)
        sampler = innermost_sampler(getattr(batch_sampler, 'sampler', None))
        if old_seed is None or seed == old_seed or not has_reproducible_order(sampler):
            return
        sampler.seed = old_seed
        self.runner.logger.info(
            f'ResumableEpochBasedTrainLoop: {type(sampler).__name__} seed set back to '
            f'{old_seed} (the checkpoint\'s; this run drew {seed}) so that the epochs are '
            'shuffled as in the interrupted run')

    # ------------------------------------------------------------------------- the loop
    def run(self):
        """mmengine's ``run``, after deciding where the resumed epoch continues."""
        self._skip_batches = self._plan_resume()
        return super().run()

    def run_epoch(self) -> None:
        """mmengine's ``run_epoch``; the epoch a run resumed inside skips the batches the
        checkpoint has seen and numbers the others from there."""
        skip, self._skip_batches = self._skip_batches, 0
        if not skip:
            return super().run_epoch()
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        if skip < len(self.dataloader):
            count = skip * self.dataloader.batch_sampler.batch_size
            with skip_first_samples(self.dataloader, count):
                for idx, data_batch in enumerate(self.dataloader, start=skip):
                    self.run_iter(idx, data_batch)
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1
