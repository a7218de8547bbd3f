"""Exact fast paths for MMAction2's own transforms, installed on ``import stan_mm``.

Ownership. Two of the fast paths hand on arrays where MMAction2 makes copies (``Resize`` to
the frames' own size, ``FormatShape`` on a list of views). That is exact only for frames
nothing else holds: a caller that puts its own frames into ``results['imgs']`` and keeps
them must get them back untouched by a later in-place transform (``Flip``), and a packed
tensor that does not share their memory. So those two apply only to frames the pipeline
owns: arrays that stan_mm's own transforms made in a pipeline call,
:class:`~stan_mm.datasets.transforms.video_io.SafeDecordDecode` (every decoding path:
decord's batch, with or without its copy, frames handed out again for repeated indices,
the OpenCV fallback),
:class:`~stan_mm.datasets.transforms.clip_randaugment.ClipRandAugment` (when it applied
an op) and ``Resize``'s own one-array output below. Each registers its new arrays with
:func:`mark_owned` (weak references: an entry goes when its array does); a frame is owned
when it or an array in its ``.base`` chain is registered (:func:`is_owned`), e.g. views of
a decoded batch and crops of them. Frames the caller made take MMAction2's code: the same
values as always, copied. Ownership lasts as long as the array: frames taken out of one
pipeline call's results and fed to another still count as owned (copy them to keep them).

``Resize`` to the size the frames already have. MMAction2's ``Resize`` resizes every frame
with ``mmcv.imresize``, i.e. ``cv2.resize``, which for an unchanged size returns a copy of
the frame (for every interpolation mmcv offers; ``tests/test_fast_paths.py`` checks it).
Videos prepared at the pipeline's scale pay that copy for every frame, e.g. Kinetics-400
distributed at 340x256 under ``Resize(scale=(-1, 256))``: about 0.5 ms of CPU per 8-frame
clip in the K400 training pipeline, 3 % of a data worker's time (docs/benchmarks.md).
With the fast path owned frames are handed on as they are: the same pixels, shapes and
types, without the copy. The one difference is aliasing: a later in-place transform (e.g.
``Flip``) then writes into the decoded arrays, which nothing but ``results['imgs']`` holds.
So the skip applies only to frames that behave like the copies would: owned (above),
C-contiguous, writeable, of a type ``cv2.resize`` keeps, and no two sharing memory (a
decoder may repeat one array for a repeated frame index; a shared frame would be flipped
once per slot). Other frames, and ``[H, W, 1]`` ones (``cv2.resize`` drops their channel
axis), keep the slow path. A real
resize writes the frames into one ``[T, H', W', C]`` array (``cv2.resize(..., dst=)``, what
``mmcv.imresize(..., out=)`` does): the same values, one allocation instead of T, and a
list that ``FormatShape`` below takes without a copy (the MSR-VTT pipeline ends with
``Resize``; ``Flip`` flips in place). Only with mmcv's ``cv2`` backend.

``FormatShape`` on a list of frames that are consecutive views of one C-contiguous array
the pipeline owns (what
:class:`~stan_mm.datasets.transforms.clip_randaugment.ClipRandAugment`,
:class:`~stan_mm.datasets.transforms.video_io.SafeDecordDecode` and the resize above
return).
``FormatShape`` stacks the
list with ``np.array(imgs)``, a copy of the whole clip (1.2 MB for 8 frames of 224x224);
that array is the one the views already tile, so it is used as it is. Same values, shape,
dtype and strides; the list of views is replaced, as the copy replaced it.

``UniformSample`` in training mode draws one index per segment with a Python loop of
``np.random.randint(start, end + 1)`` calls; the fast path makes one call with the arrays
of bounds (cached per frame count and clip length). NumPy's legacy generator draws an
array-bounded ``randint`` element by element with the same bounded-integer routine as the
scalar call, so the indices and the generator's state afterwards are the same
(``tests/test_fast_paths.py`` compares with MMAction2's method over many seeds and frame
counts). Test mode keeps MMAction2's code.

:class:`~stan_mm.datasets.transforms.video_io.SafeDecordDecode` has one more of the same
kind: it takes decord's batch without ``asnumpy()``'s copy (``video_io.decord_batch_to_numpy``).

All of them can be turned off: environment variable ``STAN_MM_NO_FAST_PATHS=1`` before
``import stan_mm`` (nothing is patched, the decoder copies), or ``with disabled(): ...``
for a block (what ``tools/analysis/benchmark.py --compare-fast-paths`` measures).
"""
import contextlib
import functools
import os
import weakref
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

_MARK = '_stan_mm_fast_path'
ENV_OFF = 'STAN_MM_NO_FAST_PATHS'
_PATCHED: List[Tuple[type, str]] = []     # (class, attribute) of every installed patch


def enabled_by_env() -> bool:
    """False when ``STAN_MM_NO_FAST_PATHS`` is set to anything but ``''`` or ``'0'``."""
    return os.environ.get(ENV_OFF, '').strip() in ('', '0')


def _install(owner: type, name: str, make) -> None:
    """Replace ``owner.name`` by ``make(original)`` once (idempotent)."""
    original = getattr(owner, name)
    if getattr(original, _MARK, False):
        return
    fast = functools.wraps(original)(make(original))      # sets __wrapped__
    setattr(fast, _MARK, True)
    setattr(owner, name, fast)
    _PATCHED.append((owner, name))


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """MMAction2's own methods, and ``SafeDecordDecode`` copying decord's batch, inside the
    block. Swaps class attributes: not for use while other threads run transforms."""
    from . import video_io
    saved = [(owner, name, getattr(owner, name)) for owner, name in _PATCHED]
    zero_copy = video_io.ZERO_COPY
    try:
        for owner, name, fast in saved:
            setattr(owner, name, getattr(fast, '__wrapped__', fast))
        video_io.ZERO_COPY = False
        yield
    finally:
        for owner, name, fast in saved:
            setattr(owner, name, fast)
        video_io.ZERO_COPY = zero_copy


# id(array) -> array, for the arrays stan_mm's transforms made (see "Ownership" above).
# Keyed by id because arrays are unhashable; the identity check in is_owned guards against
# a reused id, and the weak values drop an entry when its array is freed.
_OWNED: 'weakref.WeakValueDictionary[int, np.ndarray]' = weakref.WeakValueDictionary()


def _root(arr: np.ndarray) -> np.ndarray:
    """The last array in ``arr``'s ``.base`` chain (``arr`` itself when it owns its data or
    views memory of something that is not an array, e.g. decord's DLPack buffer)."""
    while isinstance(arr.base, np.ndarray):
        arr = arr.base
    return arr


def mark_owned(imgs) -> None:
    """Register frames that a stan_mm transform has just made (an array, or a list of
    arrays) as owned by the pipeline: the array holding each frame's memory (the end of its
    ``.base`` chain) is recorded, so the frames, their views and crops are owned. Only for
    new arrays that no caller holds: never for the frames a transform was given."""
    for img in (imgs, ) if isinstance(imgs, np.ndarray) else imgs:
        if isinstance(img, np.ndarray):
            root = _root(img)
            _OWNED[id(root)] = root


def is_owned(img) -> bool:
    """True when ``img`` or an array in its ``.base`` chain was registered with
    :func:`mark_owned` (and is still alive: the entry is that very array, not one that
    reuses its id)."""
    while isinstance(img, np.ndarray):
        if _OWNED.get(id(img)) is img:
            return True
        img = img.base
    return False


_CV2_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)


def _unchanged(imgs: Sequence[np.ndarray], new_w: int, new_h: int) -> bool:
    """True when ``cv2.resize`` to ``(new_w, new_h)`` would return copies equal in every
    respect to ``imgs`` themselves: same size, a type it keeps, not ``[H, W, 1]``, and
    frames that can stand in for fresh copies (owned by the pipeline, C-contiguous,
    writeable, disjoint)."""
    if not all(isinstance(img, np.ndarray) and img.shape[:2] == (new_h, new_w)
               and not (img.ndim == 3 and img.shape[2] == 1)
               and img.dtype.type in _CV2_DTYPES and img.flags.c_contiguous
               and img.flags.writeable and is_owned(img) for img in imgs):
        return False
    spans = sorted((img.__array_interface__['data'][0], img.nbytes) for img in imgs)
    return all(start + size <= nxt for (start, size), (nxt, _) in zip(spans, spans[1:]))


def _resize_into_one_array(imgs: Sequence[np.ndarray], new_w: int, new_h: int,
                           interpolation: str) -> Optional[List[np.ndarray]]:
    """``[cv2.resize(img, (new_w, new_h)) for img in imgs]`` written into one array and
    returned as its views, or None where ``mmcv.imresize`` would do something else (pillow
    backend, frames of different shapes or types, ``[H, W, 1]`` frames)."""
    from mmcv.image import geometric
    first = imgs[0]
    if (geometric.imread_backend != 'cv2' or interpolation not in geometric.cv2_interp_codes
            or not isinstance(first, np.ndarray) or first.ndim != 3 or first.shape[2] < 2
            or first.dtype.type not in _CV2_DTYPES or new_w < 1 or new_h < 1
            or not all(isinstance(img, np.ndarray) and img.shape == first.shape
                       and img.dtype == first.dtype for img in imgs)):
        return None
    import cv2
    code = geometric.cv2_interp_codes[interpolation]
    out = np.empty((len(imgs), new_h, new_w, first.shape[2]), first.dtype)
    frames = list(out)
    for img, dst in zip(imgs, frames):
        res = cv2.resize(img, (new_w, new_h), dst=dst, interpolation=code)
        if res is not dst:                # cv2 did not write into dst: keep its result
            dst[...] = res
    mark_owned(out)                       # a new array: FormatShape may keep it
    return frames


def apply_resize_fast_path() -> None:
    """Make ``mmaction.datasets.transforms.Resize`` skip resizes to the frames' own size
    (idempotent)."""
    from mmaction.datasets.transforms.processing import Resize

    def make(original):
        def _resize_imgs(self, imgs, new_w, new_h) -> List[np.ndarray]:
            if len(imgs):
                if _unchanged(imgs, new_w, new_h):
                    return list(imgs)
                out = _resize_into_one_array(imgs, new_w, new_h, self.interpolation)
                if out is not None:
                    return out
            return original(self, imgs, new_w, new_h)
        return _resize_imgs

    _install(Resize, '_resize_imgs', make)


def tiled_array(imgs) -> Optional[np.ndarray]:
    """The C-contiguous, writeable array ``A`` with ``imgs[i]`` the view ``A[i]`` for every
    ``i`` (same memory, shape, strides and dtype), or None if ``imgs`` is not such a list.
    ``A`` then equals ``np.array(imgs)``."""
    if not isinstance(imgs, list) or not imgs or not isinstance(imgs[0], np.ndarray):
        return None
    first = imgs[0]
    base = first.base
    if (not isinstance(base, np.ndarray) or base.ndim != first.ndim + 1
            or base.shape != (len(imgs),) + first.shape or base.dtype != first.dtype
            or not base.flags.c_contiguous or not base.flags.writeable):
        return None
    start = base.__array_interface__['data'][0]
    step, strides = base.strides[0], base.strides[1:]
    for i, img in enumerate(imgs):
        if (not isinstance(img, np.ndarray) or img.base is not base
                or img.shape != first.shape or img.dtype != base.dtype
                or img.strides != strides
                or img.__array_interface__['data'][0] != start + i * step):
            return None
    return base


def apply_format_shape_fast_path() -> None:
    """Make ``mmaction.datasets.transforms.FormatShape`` use the array a list of frames
    tiles instead of copying it, when the pipeline owns that array (idempotent)."""
    from mmaction.datasets.transforms.formatting import FormatShape

    def make(original):
        def transform(self, results):
            stacked = tiled_array(results.get('imgs'))
            if stacked is not None and is_owned(stacked):
                results['imgs'] = stacked
            return original(self, results)
        return transform

    _install(FormatShape, 'transform', make)


@functools.lru_cache(maxsize=256)
def _segment_bounds(num_frames: int, clip_len: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(starts, ends + 1)`` of ``UniformSample``'s segments, computed with its own
    expressions (read-only arrays, cached)."""
    seg_size = float(num_frames - 1) / clip_len
    starts = [int(np.round(seg_size * i)) for i in range(clip_len)]
    stops = [int(np.round(seg_size * (i + 1))) + 1 for i in range(clip_len)]
    lows, highs = np.array(starts), np.array(stops)
    lows.flags.writeable = highs.flags.writeable = False
    return lows, highs


def apply_uniform_sample_fast_path() -> None:
    """Make ``mmaction.datasets.transforms.UniformSample`` draw a training clip's indices
    in one ``np.random.randint`` call (idempotent)."""
    from mmaction.datasets.transforms.loading import UniformSample

    def make(original):
        def _get_sample_clips(self, num_frames) -> np.ndarray:
            clip_len = self.clip_len
            if (self.test_mode or not isinstance(clip_len, (int, np.integer))
                    or clip_len < 1 or not isinstance(num_frames, (int, np.integer))
                    or num_frames < 1):
                return original(self, num_frames)
            lows, highs = _segment_bounds(int(num_frames), int(clip_len))
            return np.random.randint(lows, highs)
        return _get_sample_clips

    _install(UniformSample, '_get_sample_clips', make)


if enabled_by_env():
    apply_resize_fast_path()
    apply_format_shape_fast_path()
    apply_uniform_sample_fast_path()
