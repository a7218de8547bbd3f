"""Test-time frame sampling that treats a video and its time reversal alike."""
from typing import Dict

import numpy as np
from mmaction.registry import TRANSFORMS
from mmcv.transforms import BaseTransform

from stan_mm.errors import ConfigValueError


def symmetric_indices(num_frames: int, clip_len: int) -> np.ndarray:
    """``clip_len`` frame indices spread from the first to the last of ``num_frames``
    frames (one frame: the middle one), mirror-symmetric: ``inds[i] + inds[clip_len - 1 - i] == num_frames - 1`` (for
    an odd ``clip_len`` and an even ``num_frames`` the middle frame cannot mirror itself: it
    is the earlier of the two middle frames).

    So the frames taken from a video played backwards are the same frames, in reverse
    order. (MMAction2's ``UniformSample(test_mode=True)`` takes ``round(i * (T - 1) / n)``:
    for 16 frames and 8 samples 0 2 4 6 8 9 11 13, which leans to the start of the video,
    so a video and its reversal show different frames.)"""
    if num_frames < 1 or clip_len < 1:
        raise ValueError(f'SymmetricSample: need num_frames >= 1 and clip_len >= 1, got '
                         f'{num_frames} and {clip_len}')
    pos = (np.linspace(0.0, num_frames - 1, clip_len) if clip_len > 1
           else np.array([(num_frames - 1) / 2]))          # one frame: the middle one
    half = clip_len // 2
    first = np.floor(pos[:half] + 0.5).astype(np.int64)     # the first half, rounded up at .5
    middle = (np.floor(pos[half:clip_len - half]).astype(np.int64)
              if clip_len % 2 else np.zeros(0, np.int64))
    return np.concatenate([first, middle, (num_frames - 1) - first[::-1]])


@TRANSFORMS.register_module()
class SymmetricSample(BaseTransform):
    """Deterministic sampling of ``clip_len`` frames for testing, symmetric in time (see
    :func:`symmetric_indices`): a model that ignores frame order sees exactly the same
    frames of a video and of its time-reversed copy. Used by the quickstart's test
    pipelines, whose classes come in time-reversed pairs.

    Required keys: ``total_frames``, ``start_index``. Added keys: ``frame_inds``
    (int32 ``[clip_len]``), ``clip_len``, ``frame_interval`` (None), ``num_clips`` (1),
    as ``UniformSample`` sets them.

    Args:
        clip_len (int): frames per clip.
    """

    def __init__(self, clip_len: int) -> None:
        if not isinstance(clip_len, int) or isinstance(clip_len, bool) or clip_len < 1:
            raise ConfigValueError(f'SymmetricSample: clip_len must be an integer >= 1, got '
                                   f'{clip_len!r}')
        self.clip_len = clip_len

    def transform(self, results: Dict) -> Dict:
        inds = symmetric_indices(int(results['total_frames']), self.clip_len)
        results['frame_inds'] = (inds + results['start_index']).astype(np.int32)
        results['clip_len'] = self.clip_len
        results['frame_interval'] = None
        results['num_clips'] = 1
        return results

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(clip_len={self.clip_len})'
