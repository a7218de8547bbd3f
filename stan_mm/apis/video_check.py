"""Find the videos a run would fail on, before the run: every video opened and decoded the
way the data pipelines read it (``SafeDecordInit`` + ``SafeDecordDecode``).

A broken file otherwise surfaces when its sample is reached, possibly hours into training
(a named :class:`~stan_mm.datasets.transforms.video_io.VideoReadError`, or a skip with
``SkipUnreadable``). ``tools/data/check_videos.py`` runs :func:`check_videos` over a folder,
a list of files or the videos of a config's splits.

What is decoded per video (``frames``):

- ``'ends'`` (default): the first, middle and last frame. A file cut short usually fails at
  its last frame, since decord counts the frames from the container's index; this costs
  about three seeks per video.
- ``'all'``: every frame, in one pass. Finds damage anywhere in the stream; costs a full
  decode.

A video whose container lost its frame index along with its frames (a cut MJPEG AVI can be
counted as a shorter video) reads as a shorter video and is not reported.
"""
import collections
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

FRAME_MODES = ('ends', 'all')
#: bytes of decoded frames per batch in ``frames='all'`` (bounds the memory of a worker on
#: long or large videos: 64 frames of 1080p, 16 of 4K)
_ALL_BATCH_BYTES = 400 << 20
#: the reason given for a video whose decoding killed its worker process
CRASHED = ('the decoder crashed (its worker process died, e.g. a segmentation fault or '
           'the out-of-memory killer); the file is probably corrupt')


def check_video(path: str, frames: str = 'ends',
                init: Optional[Dict] = None) -> Optional[str]:
    """Why ``path`` cannot be read as the data pipelines read it, or None if it can.

    Args:
        path: a video file (local, or any storage ``init``'s ``io_backend`` reads).
        frames: ``'ends'`` or ``'all'`` (see the module docstring).
        init: keyword arguments of ``SafeDecordInit`` (the config pipeline's:
            ``io_backend``, ``max_seconds``, file client arguments).

    Returns:
        the reason (``VideoReadError``'s, e.g. ``'file not found'``, ``'decoding frames
        [63] failed (...)'``), or None.
    """
    from stan_mm.datasets.transforms.video_io import (SafeDecordDecode, SafeDecordInit,
                                                      VideoReadError)
    if frames not in FRAME_MODES:
        raise ValueError(f'frames={frames!r}; expected one of {FRAME_MODES}')
    try:
        results = SafeDecordInit(**(init or {})).transform(dict(filename=path))
        total = results['total_frames']
        decode = SafeDecordDecode()
        if frames == 'ends':
            decode.transform(dict(results, frame_inds=np.asarray(sorted(
                {0, total // 2, total - 1}))))
            return None
        first = decode.transform(dict(results, frame_inds=np.asarray([0])))['imgs'][0]
        step = max(1, _ALL_BATCH_BYTES // max(1, first.nbytes))
        for start in range(1, total, step):
            decode.transform(dict(results, frame_inds=np.arange(start,
                                                                 min(start + step, total))))
    except VideoReadError as e:
        return e.reason
    except Exception as e:       # anything else decord or the pipeline raises on this file
        return f'{type(e).__name__}: {e}'
    return None


def _check_one(job: Tuple[str, str, Optional[Dict]]) -> Tuple[str, Optional[str]]:
    path, frames, init = job
    return path, check_video(path, frames, init)


def check_videos(paths: Sequence[str], frames: str = 'ends', workers: int = 0,
                 progress: bool = True, init: Optional[Dict] = None
                 ) -> List[Tuple[str, str]]:
    """``(path, reason)`` of every video of ``paths`` that :func:`check_video` refuses, in
    the order of ``paths``.

    Args:
        workers: processes decoding at once. With ``workers >= 1`` a video whose decoding
            kills its process (a decoder crash, the out-of-memory killer) is found again
            alone in a process of its own and reported (:data:`CRASHED`); with 0 (this
            process) such a crash ends the caller.
        progress: show a progress bar on stderr (tqdm's on a terminal, a plain line every
            30 s when redirected to a file: :func:`stan_mm.utils.progress.progress_bar`).
        init: ``SafeDecordInit`` keyword arguments (see :func:`check_video`).
    """
    from stan_mm.utils.progress import progress_bar
    if frames not in FRAME_MODES:
        raise ValueError(f'frames={frames!r}; expected one of {FRAME_MODES}')
    jobs = [(p, frames, init) for p in paths]
    bar = progress_bar(total=len(jobs), desc='videos', unit='video', disable=not progress)
    bad: Dict[str, str] = {}

    def record(path: str, reason: Optional[str]) -> None:
        if reason is not None:
            bad[path] = reason
            bar.set_postfix(unreadable=len(bad))
        bar.update(1)

    try:
        if workers > 0:
            pending = collections.deque(jobs)
            while pending:
                # a process died: the jobs it may have taken with it (those in flight),
                # each again in a process of its own so that a crash names its video; the
                # jobs not started yet go on in a fresh pool
                _run_isolated(_run_pool(pending, workers, record), workers, record)
        else:
            for job in jobs:
                record(*_check_one(job))
    finally:
        bar.close()
    return [(p, bad[p]) for p in paths if p in bad]


def _mp_context():
    """fork: no video is open in this process (stan_mm.compat's decord fix covers readers a
    caller left behind); spawn where fork does not exist, and on macOS, where forking a
    threaded process is not safe (:mod:`stan_mm.compat.macos`)."""
    from stan_mm.compat.macos import start_method_for_platform
    method = 'fork' if 'fork' in mp.get_all_start_methods() else 'spawn'
    return mp.get_context(start_method_for_platform(method))


#: jobs in flight per worker process in :func:`_run_pool`
WINDOW_PER_WORKER = 4


def _run_pool(pending: 'collections.deque', workers: int, record) -> list:
    """Run the jobs of ``pending`` (taken from its left) in ``workers`` processes,
    ``record`` each result in order. At most ``WINDOW_PER_WORKER * workers`` jobs are in
    flight at once (a 240k-video check held a future per video). When a process dies the
    pool breaks: returns the jobs that were in flight without a result (the crash is one
    of them), and ``pending`` keeps the jobs not started yet; returns ``[]`` when every
    job of ``pending`` was recorded."""
    window = WINDOW_PER_WORKER * workers
    in_flight: 'collections.deque' = collections.deque()      # (future, job)
    with ProcessPoolExecutor(workers, mp_context=_mp_context()) as pool:
        while pending or in_flight:
            while pending and len(in_flight) < window:
                job = pending.popleft()
                try:
                    in_flight.append((pool.submit(_check_one, job), job))
                except BrokenProcessPool:
                    pending.appendleft(job)
                    break
            if not in_flight:
                break
            future, job = in_flight.popleft()
            try:
                record(*future.result())
            except BrokenProcessPool:
                lost = [job]
                for other, other_job in in_flight:    # done before the break: a result
                    if other.done() and not other.cancelled() and other.exception() is None:
                        record(*other.result())
                    else:
                        lost.append(other_job)
                return lost
    return []


def _child(job, conn) -> None:
    conn.send(_check_one(job))
    conn.close()


def _run_isolated(jobs, workers: int, record) -> None:
    """Each job in a process of its own, ``workers`` at a time; a process that dies
    without a result (a decoder crash) records :data:`CRASHED` for its video. When this
    stops early (Ctrl-C, an error of ``record``), the processes still running are killed
    and reaped and their pipes closed (they were left running, then unreaped)."""
    from multiprocessing.connection import wait
    ctx = _mp_context()
    pending, running = list(jobs), {}
    try:
        while pending or running:
            while pending and len(running) < workers:
                job = pending.pop(0)
                receive, send = ctx.Pipe(duplex=False)
                try:
                    proc = ctx.Process(target=_child, args=(job, send), daemon=True)
                    proc.start()
                except BaseException:
                    receive.close()
                    raise
                finally:
                    send.close()
                running[proc.sentinel] = (proc, job, receive)
            for sentinel in wait(list(running)):
                proc, job, receive = running.pop(sentinel)
                try:
                    result = receive.recv() if receive.poll() else None
                except EOFError:          # died before sending
                    result = None
                finally:
                    receive.close()
                proc.join()
                proc.close()
                record(job[0], result[1] if result is not None else CRASHED)
    finally:
        for proc, _, receive in running.values():
            receive.close()
            if proc.is_alive():
                proc.kill()
            proc.join()
            proc.close()
