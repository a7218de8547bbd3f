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
import multiprocessing as mp
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

FRAME_MODES = ('ends', 'all')
#: frames decoded per batch in ``frames='all'`` (bounds the memory of long videos)
_ALL_BATCH = 64


def check_video(path: str, frames: str = 'ends') -> Optional[str]:
    """Why ``path`` cannot be read as the data pipelines read it, or None if it can.

    Args:
        path: a local video file.
        frames: ``'ends'`` or ``'all'`` (see the module docstring).

    Returns:
        the reason (``VideoReadError``'s, e.g. ``'file not found'``, ``'decoding frames
        [63] failed (...)'``), or None.
    """
    from stan_mm.datasets.transforms.video_io import (SafeDecordDecode, SafeDecordInit,
                                                      VideoReadError)
    if frames not in FRAME_MODES:
        raise ValueError(f'frames={frames!r}; expected one of {FRAME_MODES}')
    try:
        results = SafeDecordInit().transform(dict(filename=path))
        total = results['total_frames']
        if frames == 'ends':
            batches = [sorted({0, total // 2, total - 1})]
        else:
            batches = [list(range(s, min(s + _ALL_BATCH, total)))
                       for s in range(0, total, _ALL_BATCH)]
        decode = SafeDecordDecode()
        for inds in batches:
            decode.transform(dict(results, frame_inds=np.asarray(inds)))
    except VideoReadError as e:
        return e.reason
    except Exception as e:       # anything else decord or the pipeline raises on this file
        return f'{type(e).__name__}: {e}'
    return None


def _check_one(job: Tuple[str, str]) -> Tuple[str, Optional[str]]:
    path, frames = job
    return path, check_video(path, frames)


def check_videos(paths: Sequence[str], frames: str = 'ends', workers: int = 0,
                 progress: bool = True) -> List[Tuple[str, str]]:
    """``(path, reason)`` of every video of ``paths`` that :func:`check_video` refuses, in
    the order of ``paths``.

    Args:
        workers: processes decoding at once (0: this process).
        progress: show a progress bar (tqdm) on stderr.
    """
    from tqdm import tqdm
    if frames not in FRAME_MODES:
        raise ValueError(f'frames={frames!r}; expected one of {FRAME_MODES}')
    jobs = [(p, frames) for p in paths]
    bar = tqdm(total=len(jobs), desc='videos', unit='video', disable=not progress)
    bad = {}

    def collect(results: Iterable[Tuple[str, Optional[str]]]) -> None:
        for path, reason in results:
            if reason is not None:
                bad[path] = reason
                bar.set_postfix(unreadable=len(bad))
            bar.update(1)

    try:
        if workers > 0:
            # fork: no video is open in this process (stan_mm.compat's decord fix covers
            # readers a caller left behind); spawn where fork does not exist
            method = 'fork' if 'fork' in mp.get_all_start_methods() else 'spawn'
            with mp.get_context(method).Pool(workers) as pool:
                collect(pool.imap_unordered(_check_one, jobs, chunksize=4))
        else:
            collect(map(_check_one, jobs))
    finally:
        bar.close()
    return [(p, bad[p]) for p in paths if p in bad]
