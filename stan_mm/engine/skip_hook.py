"""Per-epoch report of the videos that
:class:`stan_mm.datasets.transforms.video_io.SkipUnreadable` skipped, counted over every
DataLoader worker and every rank.

The skips happen in DataLoader worker processes, whose counters the main process cannot
see. The wrapper therefore records each skip in the substitute sample's
``data_samples.metainfo['skipped_videos']``; the batch carries it to the main process, where
this hook counts it after every training iteration. At the end of the epoch the records of
all ranks are gathered, and rank 0 logs the total with the files and reasons. Every sample
reaches exactly one batch, so the count is exact whatever ``num_workers`` and the world size.
"""
import logging
from collections import Counter
from typing import Iterable, List, Optional

from mmengine.dist import all_gather_object, is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmaction.registry import HOOKS

INFO_EPOCH = 'train/skipped_videos_epoch'
INFO_TOTAL = 'train/skipped_videos_total'


def skipped_in_batch(data_batch) -> List[dict]:
    """The skip records (``{'index', 'filename', 'reason'}``) carried by one batch: a dict
    with ``data_samples`` (collated) or a list of such samples."""
    if isinstance(data_batch, dict):
        samples: Iterable = data_batch.get('data_samples')
        samples = [] if samples is None else samples
    elif isinstance(data_batch, (list, tuple)):
        samples = [s.get('data_samples') for s in data_batch if isinstance(s, dict)]
    else:
        samples = []
    if not isinstance(samples, (list, tuple)):
        samples = [samples]
    records = []
    for ds in samples:
        meta = getattr(ds, 'metainfo', None) or {}
        records.extend(meta.get('skipped_videos') or [])
    return records


def gather_skips(records: List[dict]) -> List[dict]:
    """All ranks' records, rank order (no-op when not distributed)."""
    return [r for part in all_gather_object(list(records)) for r in part]


def _iteration_based(runner) -> bool:
    """Whether the run's training loop counts iterations, not epochs (mmengine's
    ``IterBasedTrainLoop`` calls ``after_train_epoch`` once, at the end of training)."""
    from mmengine.runner import IterBasedTrainLoop
    return isinstance(getattr(runner, 'train_loop', None), IterBasedTrainLoop)


@HOOKS.register_module()
class SkippedVideosHook(Hook):
    """Log, at the end of every training epoch, how many video reads
    :class:`~stan_mm.datasets.transforms.video_io.SkipUnreadable` skipped (all ranks, all
    workers), with the files and reasons.

    The epoch's count and the running total are also stored in the message hub
    (``train/skipped_videos_epoch``, ``train/skipped_videos_total``; the total survives
    ``--resume`` through the checkpoint).

    With an iteration-based loop (no epochs) the report comes every ``iter_interval``
    iterations and at the end of training (``train/skipped_videos_epoch`` then counts the
    reads since the last report). Skips are kept as one count per file and reason, so the
    memory does not grow with the number of skipped reads. A run stopped without an epoch
    end (preemption) logs each rank's skips not yet reported.

    Args:
        max_listed: files listed in the log line (the rest are counted).
        iter_interval: iterations between reports of an iteration-based loop.
    """
    priority = 'BELOW_NORMAL'

    def __init__(self, max_listed: int = 20, iter_interval: int = 1000):
        if not isinstance(iter_interval, int) or iter_interval < 1:
            raise ValueError(f'SkippedVideosHook: iter_interval must be an int >= 1, got '
                             f'{iter_interval!r}')
        self.max_listed = max_listed
        self.iter_interval = iter_interval
        self._counts: Counter = Counter()      # (filename, reason) -> skipped reads
        self._first_iter = 0                   # first iteration of the current report

    def before_train(self, runner) -> None:
        self._first_iter = int(getattr(runner, 'iter', 0) or 0)

    def before_train_epoch(self, runner) -> None:
        self._counts = Counter()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        for r in skipped_in_batch(data_batch):
            self._counts[(r['filename'], r['reason'])] += 1
        done = int(getattr(runner, 'iter', batch_idx)) + 1
        if _iteration_based(runner) and done % self.iter_interval == 0:
            self._report(runner, f'Iterations {self._first_iter + 1}-{done}')
            self._first_iter = done

    def after_train_epoch(self, runner) -> None:
        if _iteration_based(runner):
            done = int(getattr(runner, 'iter', self._first_iter))
            if done > self._first_iter:
                self._report(runner, f'Iterations {self._first_iter + 1}-{done}')
            self._first_iter = done
            return
        self._report(runner, f'Epoch {runner.epoch + 1}')

    def after_run(self, runner) -> None:
        # a run that ended without an epoch end (preemption: the hook calls after_run; a
        # run that raised, e.g. the NaN stop, gets no after_run from mmengine): no gather (not
        # every rank may get here), each rank logs what it has not reported
        if self._counts:
            n = sum(self._counts.values())
            print_log(f'SkippedVideosHook: {n} unreadable video reads skipped on this rank '
                      f'since the last report, not reported because the run stopped before '
                      f'the end of the epoch: ' + self._listing(self._counts),
                      logger='current', level=logging.WARNING)
            self._counts = Counter()

    def _listing(self, per_file: Counter) -> str:
        listed = [f'{name} x{n} ({reason})' if n > 1 else f'{name} ({reason})'
                  for (name, reason), n in per_file.most_common(self.max_listed)]
        more = len(per_file) - len(listed)
        return '; '.join(listed) + (f'; ... and {more} more files' if more > 0 else '')

    def _report(self, runner, label: str) -> None:
        """Gather every rank's counts (a collective: every rank calls it at the same
        point), store them in the message hub and log them on rank 0."""
        per_file: Counter = Counter()
        for part in all_gather_object(dict(self._counts)):
            per_file.update(part)
        self._counts = Counter()
        count = sum(per_file.values())
        hub = runner.message_hub
        total = int(hub.get_info(INFO_TOTAL, 0) or 0) + count
        hub.update_info(INFO_EPOCH, count)
        hub.update_info(INFO_TOTAL, total)
        if not is_main_process():
            return
        if not count:
            print_log(f'{label}: no unreadable videos skipped', logger='current')
            return
        print_log(f'{label}: skipped {count} unreadable video reads over all ranks and '
                  f'workers ({len(per_file)} files; {total} since the start): '
                  + self._listing(per_file), logger='current', level=logging.WARNING)
