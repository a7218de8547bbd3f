"""Resource review fixes (long runs):

1. ClipRandAugment's sampling-map caches are bounded by bytes, not by 64 entries: placed
   before the resize (or on clips of many sizes), 64 entries of 720p maps held ~0.4 GB in
   every DataLoader worker. The pixels are unchanged (tests/test_clip_randaugment.py).
2. SkippedVideosHook keeps one count per file and reason instead of every skip record (an
   iteration-based run kept all of them until its end, ~700 B per skipped read), reports
   an iteration-based run every ``iter_interval`` iterations (it reported once, at the end,
   labelled "Epoch 1"), and a run stopped before its epoch end logs what it has not
   reported.
"""
import logging
import os.path as osp
import sys

import numpy as np
import pytest
import torch
from mmaction.structures import ActionDataSample
from mmengine.logging import MMLogger
from mmengine.runner import IterBasedTrainLoop

from stan_mm.datasets.transforms import clip_randaugment as RA
from stan_mm.engine.skip_hook import INFO_EPOCH, INFO_TOTAL, SkippedVideosHook

sys.path.insert(0, osp.dirname(__file__))
from test_robust_video import _Hub  # noqa: E402


# ------------------------------------------------------------------ 1. map caches
def test_geometric_caches_stay_under_their_byte_budget():
    RA._remap_maps.cache_clear()
    RA._nearest_source.cache_clear()
    budget = RA.CACHE_BYTES
    # 40 frame sizes around 720p: 40 x 720 x 1280 x 4 B = 147 MB of int16 maps uncapped
    for i in range(40):
        h, w = 700 + i, 1280
        RA._remap_maps('ShearX', 0.2, h, w, 'nearest')
        assert RA._remap_maps.cache_bytes() <= budget
        assert RA._nearest_source.cache_bytes() <= budget
    assert RA._remap_maps.cache_len() < 40          # old entries were dropped
    # a hit returns the same maps; an evicted entry is recomputed equal
    first = RA._remap_maps('ShearX', 0.2, 224, 224, 'nearest')[0]
    assert RA._remap_maps('ShearX', 0.2, 224, 224, 'nearest')[0] is first
    RA._remap_maps.cache_clear()
    RA._nearest_source.cache_clear()
    np.testing.assert_array_equal(RA._remap_maps('ShearX', 0.2, 224, 224, 'nearest')[0],
                                  first)


def test_the_budget_can_be_changed_at_run_time(monkeypatch):
    RA._remap_maps.cache_clear()
    RA._nearest_source.cache_clear()
    one = RA._remap_maps('ShearY', 0.2, 224, 224, 'nearest')[0].nbytes      # ~0.2 MB
    monkeypatch.setattr(RA, 'CACHE_BYTES', 2 * one + 1)
    for mag in (0.1, 0.2, 0.3, 0.25):
        RA._remap_maps('ShearY', mag, 224, 224, 'nearest')
    assert RA._remap_maps.cache_len() == 2
    assert RA._remap_maps.cache_bytes() <= 2 * one + 1
    RA._remap_maps.cache_clear()
    RA._nearest_source.cache_clear()


def test_an_entry_over_the_budget_is_not_kept():
    cache_fn = RA._bytes_lru(1000)(lambda n: np.zeros(n, np.uint8))
    big = cache_fn(2000)
    assert big.shape == (2000, ) and cache_fn.cache_len() == 0
    a = cache_fn(600)
    assert cache_fn(600) is a and cache_fn.cache_bytes() == 600
    cache_fn(600)
    cache_fn(500)                                    # 1100 > 1000: the 600 goes
    assert cache_fn.cache_len() == 1 and cache_fn.cache_bytes() == 500


def test_transform_output_is_unchanged_across_sizes():
    """Same torch seed, same pixels whether the maps come from the cache or not."""
    rng = np.random.RandomState(0)
    t = RA.ClipRandAugment(num_ops=2, magnitude=21)
    for h, w in ((96, 128), (100, 120), (96, 128)):
        clip = rng.randint(0, 255, (3, h, w, 3)).astype(np.uint8)
        torch.manual_seed(h * w)
        cached = t.transform(dict(imgs=clip.copy()))['imgs']
        RA._remap_maps.cache_clear()
        RA._nearest_source.cache_clear()
        torch.manual_seed(h * w)
        fresh = t.transform(dict(imgs=clip.copy()))['imgs']
        np.testing.assert_array_equal(cached, fresh)


# ------------------------------------------------------------------ 2. skip hook
class _Runner:
    def __init__(self, iteration_based=False):
        self.epoch, self.iter, self.message_hub = 0, 0, _Hub()
        self.train_loop = object.__new__(IterBasedTrainLoop) if iteration_based else None


def _batch(*names):
    ds = ActionDataSample()
    ds.set_metainfo(dict(skipped_videos=[dict(filename=n, reason='file not found', index=i)
                                         for i, n in enumerate(names)]))
    return dict(inputs=[torch.zeros(1)], data_samples=[ds])


@pytest.fixture
def log_lines():
    logger, lines = MMLogger.get_current_instance(), []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda r: lines.append(r.getMessage())
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)


def test_skips_are_counted_per_file_not_kept_per_read(log_lines):
    hook, runner = SkippedVideosHook(), _Runner()
    hook.before_train(runner)
    hook.before_train_epoch(runner)
    for i in range(3000):
        runner.iter = i
        hook.after_train_iter(runner, i, data_batch=_batch('a.mp4', 'b.mp4'))
    assert len(hook._counts) == 2             # not 6000 records
    hook.after_train_epoch(runner)
    (line, ) = [m for m in log_lines if 'skipped' in m]
    assert line.startswith('Epoch 1: skipped 6000 unreadable video reads')
    assert 'a.mp4 x3000 (file not found)' in line and '(2 files; 6000 since the start)' in line
    assert runner.message_hub.info[INFO_EPOCH] == 6000


def test_an_iteration_based_run_is_reported_every_interval(log_lines):
    hook, runner = SkippedVideosHook(iter_interval=3), _Runner(iteration_based=True)
    hook.before_train(runner)
    hook.before_train_epoch(runner)          # (IterBasedTrainLoop calls it once)
    for i in range(7):
        runner.iter = i
        hook.after_train_iter(runner, i, data_batch=_batch(f'v{i}.mp4'))
    runner.iter = 7                          # the loop's count after the last iteration
    hook.after_train_epoch(runner)
    reports = [m for m in log_lines if 'unreadable video' in m]
    assert [r.split(':')[0] for r in reports] == ['Iterations 1-3', 'Iterations 4-6',
                                                  'Iterations 7-7']
    assert reports[0].startswith('Iterations 1-3: skipped 3 unreadable video reads')
    assert '(1 files; 7 since the start)' in reports[2]
    assert runner.message_hub.info[INFO_TOTAL] == 7
    assert not any(m.startswith('Epoch') for m in log_lines)


def test_a_run_stopped_before_its_epoch_end_logs_its_unreported_skips(log_lines):
    hook, runner = SkippedVideosHook(), _Runner()
    hook.before_train(runner)
    hook.before_train_epoch(runner)
    hook.after_train_iter(runner, 0, data_batch=_batch('a.mp4', 'a.mp4'))
    hook.after_run(runner)                   # preempted: no after_train_epoch
    (line, ) = [m for m in log_lines if 'not reported' in m]
    assert '2 unreadable video reads skipped on this rank' in line
    assert 'a.mp4 x2 (file not found)' in line
    hook.after_run(runner)                   # nothing left: silent
    assert len([m for m in log_lines if 'not reported' in m]) == 1


def test_iter_interval_is_checked():
    with pytest.raises(ValueError, match='iter_interval must be an int >= 1'):
        SkippedVideosHook(iter_interval=0)


# ------------------------------------------------------------------ 3. video check pool
def _crash_on_named(path, frames='ends', init=None):
    import os
    import signal
    if path.endswith('crash.mp4'):
        os.kill(os.getpid(), signal.SIGKILL)      # a decoder crash, the OOM killer
    return 'bad' if path.endswith('bad.mp4') else None


def test_one_decoder_crash_isolates_only_the_jobs_in_flight(monkeypatch):
    """A crash broke the pool and every unfinished video was then checked in a process of
    its own (one fork per remaining video: ~240k on Kinetics). Now only the jobs in flight
    are isolated and the rest go on in a fresh pool."""
    from stan_mm.apis import video_check
    monkeypatch.setattr(video_check, 'check_video', _crash_on_named)
    isolated = []
    real_isolated = video_check._run_isolated

    def spy(jobs, workers, record):
        isolated.append(len(jobs))
        return real_isolated(jobs, workers, record)

    monkeypatch.setattr(video_check, '_run_isolated', spy)
    paths = [f'v{i}.mp4' for i in range(300)]
    paths[5], paths[150], paths[299] = 'crash.mp4', 'bad.mp4', 'bad.mp4'
    got = video_check.check_videos(paths, workers=2, progress=False)
    assert got == [('crash.mp4', video_check.CRASHED), ('bad.mp4', 'bad'), ('bad.mp4', 'bad')]
    window = video_check.WINDOW_PER_WORKER * 2
    assert sum(isolated) <= window, isolated          # not ~295
    assert any(n > 0 for n in isolated)
