"""Per-epoch report of the videos that :class:`stan_mm.datasets.transforms.SkipUnreadable`
skipped, counted over every DataLoader worker and every rank.

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


@HOOKS.register_module()
class SkippedVideosHook(Hook):
    """Log, at the end of every training epoch, how many video reads
    :class:`~stan_mm.datasets.transforms.SkipUnreadable` skipped (all ranks, all workers),
    with the files and reasons.

    The epoch's count and the running total are also stored in the message hub
    (``train/skipped_videos_epoch``, ``train/skipped_videos_total``; the total survives
    ``--resume`` through the checkpoint).

    With an iteration-based loop (no epochs) the report comes once, at the end of training.

    Args:
        max_listed: files listed in the log line (the rest are counted).
    """
    priority = 'BELOW_NORMAL'

    def __init__(self, max_listed: int = 20):
        self.max_listed = max_listed
        self._records: List[dict] = []

    def before_train_epoch(self, runner) -> None:
        self._records = []

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        self._records.extend(skipped_in_batch(data_batch))

    def after_train_epoch(self, runner) -> None:
        records = gather_skips(self._records)
        self._records = []
        hub = runner.message_hub
        total = int(hub.get_info(INFO_TOTAL, 0) or 0) + len(records)
        hub.update_info(INFO_EPOCH, len(records))
        hub.update_info(INFO_TOTAL, total)
        if not is_main_process():
            return
        epoch = runner.epoch + 1
        if not records:
            print_log(f'Epoch {epoch}: no unreadable videos skipped', logger='current')
            return
        per_file = Counter((r['filename'], r['reason']) for r in records)
        listed = [f'{name} x{n} ({reason})' if n > 1 else f'{name} ({reason})'
                  for (name, reason), n in per_file.most_common(self.max_listed)]
        more = len(per_file) - len(listed)
        print_log(f'Epoch {epoch}: skipped {len(records)} unreadable video reads over all '
                  f'ranks and workers ({len(per_file)} files; {total} since the start): '
                  + '; '.join(listed) + (f'; ... and {more} more files' if more > 0 else ''),
                  logger='current', level=logging.WARNING)
