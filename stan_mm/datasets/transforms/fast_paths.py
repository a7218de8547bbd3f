"""Exact fast paths for MMAction2's own transforms, installed on ``import stan_mm``.

``Resize`` to the size the frames already have. MMAction2's ``Resize`` resizes every frame
with ``mmcv.imresize``, i.e. ``cv2.resize``, which for an unchanged size returns a copy of
the frame (for every interpolation mmcv offers; ``tests/test_fast_paths.py`` checks it).
Videos prepared at the pipeline's scale pay that copy for every frame, e.g. Kinetics-400
distributed at 340x256 under ``Resize(scale=(-1, 256))``: about 0.5 ms of CPU per 8-frame
clip in the K400 training pipeline, 3 % of a data worker's time (docs/benchmarks.md).
With the fast path the frames are handed on as they are: the same pixels, shapes and
types, without the copy. The one difference is aliasing: a later in-place transform (e.g.
``Flip``) then writes into the decoded arrays, which nothing but ``results['imgs']`` holds.
``[H, W, 1]`` frames keep the slow path (``cv2.resize`` drops their channel axis).
"""
import functools
from typing import List, Sequence

import numpy as np

_MARK = '_stan_mm_fast_path'


def _unchanged(imgs: Sequence[np.ndarray], new_w: int, new_h: int) -> bool:
    return all(isinstance(img, np.ndarray) and img.shape[:2] == (new_h, new_w)
               and not (img.ndim == 3 and img.shape[2] == 1) for img in imgs)


def apply_resize_fast_path() -> None:
    """Make ``mmaction.datasets.transforms.Resize`` skip resizes to the frames' own size
    (idempotent)."""
    from mmaction.datasets.transforms.processing import Resize
    original = Resize._resize_imgs
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def _resize_imgs(self, imgs, new_w, new_h) -> List[np.ndarray]:
        if len(imgs) and _unchanged(imgs, new_w, new_h):
            return list(imgs)
        return original(self, imgs, new_w, new_h)

    setattr(_resize_imgs, _MARK, True)       # functools.wraps set __wrapped__
    Resize._resize_imgs = _resize_imgs


apply_resize_fast_path()
