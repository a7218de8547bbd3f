"""Resources stan-mm leaked, above all on error paths (found in the resource-leak review:
ResourceWarnings, descriptors, child processes and temporary files counted per test):

1. ``decode_frames_opencv`` on a video's bytes (the OpenCV fallback for a file-client
   video) left its temporary copy in ``tempfile.gettempdir()`` when writing it failed: a
   full disk, or a Ctrl-C during the write.
2. A ``.pth`` export (``clip_to_mm.py --format pth``) whose write failed left its
   ``BytesIO`` exported to a memoryview: with the error kept in a reference cycle (a caller
   storing it), the collector later printed "Exception ignored in: <_io.BytesIO ...>
   BufferError" to stderr.
3. ``check_videos``' one-process-per-video pass (``_run_isolated``, after a decoder crash)
   stopped by Ctrl-C or an error left its other decoding processes running, then unreaped,
   with their pipes open.
4. ``tools/analysis/gpu_session.py``: a step runs in a session of its own (to be killed as
   a group at its limit), so the terminal's Ctrl-C never reached it: a stopped session left
   its benchmark step running on the GPU.
5. ``tools/analysis/benchmark.py`` without ``--video-cache`` left its temporary folder of
   generated videos behind when writing them failed or was stopped.

And what was found clean, kept so: reading good and broken videos (decord readers, the
OpenCV fallback) holds no descriptor once a sample is done.
"""
import errno
import gc
import os
import pathlib
import sys
import tempfile
from argparse import Namespace

import cv2
import numpy as np
import pytest
import torch

from stan_mm.testing import load_script

ROOT = pathlib.Path(__file__).resolve().parents[1]
needs_proc = pytest.mark.skipif(not os.path.isdir('/proc/self/fd'),
                                reason='counts descriptors and processes through /proc')


def write_mp4(path, frames=6, size=32):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), 8.0, (size, size))
    for t in range(frames):
        writer.write(np.full((size, size, 3), 20 + 30 * t, np.uint8))
    writer.release()
    return str(path)


def open_fds():
    """This process's open descriptors (after a collection: what is still referenced)."""
    gc.collect()
    return set(os.listdir('/proc/self/fd'))


def child_pids():
    """Processes whose parent is this one, zombies (unreaped) included."""
    me, kids = str(os.getpid()), set()
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            stat = pathlib.Path(f'/proc/{pid}/stat').read_text()
        except OSError:
            continue
        if stat.rsplit(')', 1)[1].split()[1] == me:
            kids.add(pid)
    return kids


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """``tempfile.gettempdir()`` is an empty folder of this test's own."""
    folder = tmp_path / 'tmpdir'
    folder.mkdir()
    monkeypatch.setattr(tempfile, 'tempdir', str(folder))
    return folder


# ------------------------------------------------------------------ 1. OpenCV fallback
class _FullDisk:
    """A file whose writes fail as ``error`` does (the descriptor is still closed)."""

    def __init__(self, f, error):
        self.f, self.error = f, error

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        raise self.error


@pytest.mark.parametrize('error', [OSError(errno.ENOSPC, 'No space left on device'),
                                   KeyboardInterrupt()], ids=['full disk', 'Ctrl-C'])
def test_the_opencv_fallback_leaves_no_temporary_video(tmp_path, private_tmp, monkeypatch,
                                                       error):
    from stan_mm.datasets.transforms.video_io import decode_frames_opencv
    data = pathlib.Path(write_mp4(tmp_path / 'a.mp4')).read_bytes()
    frames = decode_frames_opencv(data, [0, 5, 0], 'mem/a.mp4')      # (works from bytes)
    assert [f.shape for f in frames] == [(32, 32, 3)] * 3
    assert os.listdir(private_tmp) == []
    real = os.fdopen
    monkeypatch.setattr(os, 'fdopen', lambda fd, *a, **k: _FullDisk(real(fd, *a, **k), error))
    with pytest.raises(type(error)):
        decode_frames_opencv(data, [0], 'mem/a.mp4')
    monkeypatch.undo()
    assert os.listdir(private_tmp) == []


# ------------------------------------------------------------------ 2. .pth export
def test_a_failed_pth_export_leaves_no_exported_buffer(tmp_path, monkeypatch):
    from stan_mm.apis import clip_export
    ignored = []
    monkeypatch.setattr(sys, 'unraisablehook', lambda u: ignored.append(
        f'{type(u.exc_value).__name__}: {u.exc_value} ({u.object!r})'))

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def export():
        try:
            clip_export._write({'w': torch.zeros(3)}, {}, str(tmp_path / 'clip.pth'), 'pth')
        except OSError as e:
            kept = e    # noqa: F841  (the error kept: a cycle through this frame)
            return str(e)

    fsync = os.fsync
    monkeypatch.setattr(os, 'fsync', full_disk)
    message = export()
    monkeypatch.setattr(os, 'fsync', fsync)
    gc.collect()
    assert 'could not write' in message and 'clip.pth' in message
    assert ignored == []
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ 3. check_videos
@needs_proc
def test_isolated_video_checks_stopped_early_leave_no_process(tmp_path):
    from stan_mm.apis import video_check
    jobs = [(write_mp4(tmp_path / f'{i}.mp4'), 'ends', None) for i in range(3)]
    recorded = []

    def record(path, reason):
        recorded.append((path, reason))
        if len(recorded) == 1:
            raise KeyboardInterrupt          # the first result: the others still run

    fds, kids = open_fds(), child_pids()
    with pytest.raises(KeyboardInterrupt):
        video_check._run_isolated(jobs, 2, record)
    assert child_pids() == kids        # none running, none left unreaped
    assert open_fds() == fds           # their pipes and sentinels closed
    video_check._run_isolated(jobs, 2, lambda *r: recorded.append(r))   # (all of them)
    assert len(recorded) == 1 + 3 and all(reason is None for _, reason in recorded)
    assert child_pids() == kids and open_fds() == fds


# ------------------------------------------------------------------ 4. gpu_session
@needs_proc
def test_a_stopped_gpu_session_kills_its_running_step(tmp_path, monkeypatch):
    import subprocess
    session = load_script(str(ROOT / 'tools/analysis/gpu_session.py'), 'gpu_session_leaks')
    started = []
    real_wait = subprocess.Popen.wait

    def wait(self, timeout=None):
        if timeout is not None and not started:      # run_step's wait: Ctrl-C arrives
            started.append(self)
            raise KeyboardInterrupt
        return real_wait(self, timeout)

    monkeypatch.setattr(subprocess.Popen, 'wait', wait)
    try:
        with pytest.raises(KeyboardInterrupt):
            session.run_step(['sleep', '60'], 600, str(tmp_path / 'steps.log'),
                             dict(os.environ))
        (proc, ) = started
        assert str(proc.pid) not in child_pids()      # killed and reaped
        with pytest.raises(ProcessLookupError):
            os.killpg(proc.pid, 0)                     # nothing left of its group
    finally:
        for proc in started:                           # (without the fix: stop it here)
            if proc.returncode is None:
                proc.kill()
                real_wait(proc)


# ------------------------------------------------------------------ 5. benchmark videos
def test_the_benchmark_removes_its_temporary_videos_when_writing_them_fails(private_tmp,
                                                                            monkeypatch):
    from stan_mm.utils import benchmark as B
    tool = load_script(str(ROOT / 'tools/analysis/benchmark.py'), 'benchmark_leaks')
    threads = torch.get_num_threads()
    written = []

    def write_benchmark_videos(folder, num, *args, **kwargs):
        written.append(write_mp4(os.path.join(folder, 'v0.mp4')))
        raise KeyboardInterrupt              # stopped while writing the second video

    monkeypatch.setattr(B, 'write_benchmark_videos', write_benchmark_videos)
    cfg = dict(train_dataloader=dict(dataset=dict(pipeline=[dict(type='DecordInit')])))
    args = Namespace(videos=None, video_cache=None, num_videos=2, video_size=(32, 32),
                     video_frames=4, video_fps=8.0, seed=0, video_codec='mp4v')
    with pytest.raises(KeyboardInterrupt):
        tool.run_pipeline_benchmark(args, cfg)
    assert written and written[0].startswith(str(private_tmp))
    assert os.listdir(private_tmp) == []
    assert torch.get_num_threads() == threads


# ------------------------------------------------------------------ found clean
@needs_proc
def test_reading_good_and_broken_videos_holds_no_descriptor(tmp_path):
    """SafeDecordInit + SafeDecordDecode over good, empty, truncated and missing files
    (and the OpenCV fallback on bytes), many times: no descriptor stays open, nothing is
    left in the temporary folder and no ResourceWarning names stan-mm's files."""
    import warnings

    from stan_mm.apis.video_check import check_video
    from stan_mm.datasets.transforms.video_io import decode_frames_opencv
    good = write_mp4(tmp_path / 'good.mp4')
    data = pathlib.Path(good).read_bytes()
    (tmp_path / 'empty.mp4').write_bytes(b'')
    (tmp_path / 'cut.mp4').write_bytes(data[:len(data) // 2])
    (tmp_path / 'text.mp4').write_text('not a video\n' * 20)
    files = [good] + [str(tmp_path / n) for n in ('empty.mp4', 'cut.mp4', 'text.mp4',
                                                  'missing.mp4')]
    reasons = [check_video(f, 'all') for f in files]       # (warm up: libraries loaded)
    assert reasons[0] is None and all(reasons[1:])
    fds = open_fds()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always', ResourceWarning)
        for _ in range(5):
            assert [check_video(f, 'all') for f in files] == reasons
            decode_frames_opencv(data, [1, 0], 'mem/good.mp4')
        gc.collect()
    assert open_fds() == fds
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)
             and 'stan_mm' in str(w.filename)]
    assert leaks == []
