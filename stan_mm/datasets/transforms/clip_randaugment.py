"""Clip-level RandAugment on uint8 numpy frames, equivalent to torchvision's.

``TorchVisionWrapper(op='RandAugment', ...)`` stacks the frames into a uint8 ``[T, C, H, W]``
tensor and runs ``torchvision.transforms.RandAugment`` on it: ``num_ops`` operations are drawn
once per clip and applied to every frame. Its tensor kernels are slow on uint8 (8-12 ms of
CPU time for 8 frames of 224x224, 2 ops, on one core), most of the cost of decoding the clip.
:class:`ClipRandAugment` draws the same operations with the same calls to torch's global
random generator (so with the same torch seed it picks the same ops, magnitudes and signs)
and applies them with OpenCV / numpy to the HWC frames (about 1.5 ms for the same clip):

=========================  ==============================================================
op                         implementation, and how it compares with torchvision 0.29
=========================  ==============================================================
ShearX/Y, Rotate           ``cv2.remap``. NEAREST: the source pixel of every output pixel
                           is torchvision's own choice (its op run once, per op and size,
                           on an image of pixel coordinates): equal pixels on any CPU.
                           BILINEAR: sampling maps computed in float32 the way torchvision
                           builds its ``grid_sample`` grid; OpenCV quantises sampling
                           points to 1/32 pixel, so pixels at strong edges differ by a few
                           grey levels (fill: torchvision's formula).
TranslateX/Y               an integer shift (torchvision truncates the magnitude): a copy.
Brightness, Posterize,     one 256-entry table for the whole clip (``cv2.LUT``) or a bit
Solarize                   mask, entries computed with torchvision's float32 arithmetic.
AutoContrast, Equalize     one table per frame and channel (min/max, histogram).
Contrast                   one table per frame (the frame's mean grey level).
Color, Sharpness           float32 blend with the grey image / the 3x3 smoothed image
                           (exact integer rounding of the 1/13 kernel), same operation
                           order and truncation as torchvision.
=========================  ==============================================================

All but BILINEAR give torchvision's pixels exactly (tests/test_clip_randaugment.py; 300 of
300 random 8x224x224 draws of the K400 recipe equal TorchVisionWrapper's bit for bit).
Frames are RGB (what MMAction2's decoders give), as torchvision's grey-level weights assume.
"""
import functools
import math
import threading
from collections import OrderedDict
from numbers import Number
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from mmaction.registry import TRANSFORMS
from mmcv.transforms import BaseTransform

from stan_mm.errors import ConfigValueError

from .fast_paths import mark_owned

__all__ = ['ClipRandAugment', 'RANDAUGMENT_OPS', 'randaugment_space', 'sample_ops',
           'apply_op']

# torchvision's RandAugment op order: the op index drawn from torch's generator is an index
# into this tuple.
RANDAUGMENT_OPS = ('Identity', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Rotate',
                   'Brightness', 'Color', 'Contrast', 'Sharpness', 'Posterize', 'Solarize',
                   'AutoContrast', 'Equalize')
_GEOMETRIC = ('ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Rotate')
_INTERPOLATIONS = {'nearest': cv2.INTER_NEAREST, 'bilinear': cv2.INTER_LINEAR}
_F32 = np.float32
# ITU-R 601-2 luma weights as torchvision uses them (float32, truncated to uint8)
_GREY_WEIGHTS = (_F32(0.2989), _F32(0.587), _F32(0.114))
_NAME = 'ClipRandAugment'

Clip = np.ndarray  # uint8 [T, H, W, 3]
# what the ops read: a uint8 [T, H, W, 3] array or a list of T C-contiguous [H, W, 3] frames
Frames = Union[np.ndarray, Sequence[np.ndarray]]


def _nbytes(value) -> int:
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


def _bytes_lru(max_bytes: Union[int, Callable[[], int]]):
    """``functools.lru_cache`` bounded by the bytes of the numpy arrays it holds rather
    than by a number of entries: the sampling maps of one op are ~4-6 bytes per pixel, so
    64 entries of 720p frames (a transform placed before the resize, or clips of many
    sizes) held ~0.4 GB in every DataLoader worker. Least recently used entries go first;
    an entry larger than ``max_bytes`` is computed every time, not kept. ``max_bytes``: a
    number, or a function giving it (read at every store)."""
    budget = max_bytes if callable(max_bytes) else (lambda: max_bytes)

    def wrap(fn):
        cache: 'OrderedDict[tuple, object]' = OrderedDict()
        lock = threading.Lock()
        used = [0]

        @functools.wraps(fn)
        def cached(*args):
            with lock:
                if args in cache:
                    cache.move_to_end(args)
                    return cache[args]
            value = fn(*args)
            size, limit = _nbytes(value), budget()
            if size > limit:
                return value
            with lock:
                if args not in cache:
                    cache[args] = value
                    used[0] += size
                    while used[0] > limit:
                        _, old = cache.popitem(last=False)
                        used[0] -= _nbytes(old)
            return value

        def cache_clear():
            with lock:
                cache.clear()
                used[0] = 0

        cached.cache_clear = cache_clear
        cached.cache_bytes = lambda: used[0]
        cached.cache_len = lambda: len(cache)
        return cached
    return wrap


#: bytes each geometric-op cache may hold. Maps of 224x224 frames take ~0.2-0.3 MB per op
#: (all ~10 geometric op/sign pairs of a recipe fit); of 1080p frames ~8-12 MB, so only a
#: few fit and the others are recomputed when drawn (~0.1 s each, nearest): place the
#: transform after the resize to the training size, as the configs do, or raise this
#: (``stan_mm.datasets.transforms.clip_randaugment.CACHE_BYTES``, read when an entry is
#: stored) for full-size frames. One entry larger than this is never kept.
CACHE_BYTES = 32 << 20


# ------------------------------------------------------------------------- op sampling
def randaugment_space(num_bins: int, height: int,
                      width: int) -> Dict[str, Tuple[torch.Tensor, bool]]:
    """``{op: (magnitudes, signed)}``: the magnitude of each op at each of ``num_bins``
    levels (a 0-dim tensor for ops without a magnitude), float32 as torchvision computes
    them, and whether a random sign applies. Translations scale with the image size."""
    lin = torch.linspace
    return {
        'Identity': (torch.tensor(0.0), False),
        'ShearX': (lin(0.0, 0.3, num_bins), True),
        'ShearY': (lin(0.0, 0.3, num_bins), True),
        'TranslateX': (lin(0.0, 150.0 / 331.0 * width, num_bins), True),
        'TranslateY': (lin(0.0, 150.0 / 331.0 * height, num_bins), True),
        'Rotate': (lin(0.0, 30.0, num_bins), True),
        'Brightness': (lin(0.0, 0.9, num_bins), True),
        'Color': (lin(0.0, 0.9, num_bins), True),
        'Contrast': (lin(0.0, 0.9, num_bins), True),
        'Sharpness': (lin(0.0, 0.9, num_bins), True),
        # bits kept: 8 at level 0 down to 4 at the last level
        'Posterize': (8 - (torch.arange(num_bins) / ((num_bins - 1) / 4)).round().int(),
                      False),
        'Solarize': (lin(255.0, 0.0, num_bins), False),
        'AutoContrast': (torch.tensor(0.0), False),
        'Equalize': (torch.tensor(0.0), False),
    }


def sample_ops(num_ops: int, magnitude: int, num_bins: int, height: int,
               width: int) -> List[Tuple[str, float]]:
    """Draw ``num_ops`` ``(op_name, signed magnitude)`` pairs from torch's global random
    generator with the same calls, in the same order, as torchvision's
    ``RandAugment.forward``: ``torch.randint(14, (1,))`` for the op, then, for signed ops
    only, ``torch.randint(2, (1,))`` (1 = negative)."""
    levels = _levels(magnitude, num_bins, height, width)
    ops = []
    for _ in range(num_ops):
        name = RANDAUGMENT_OPS[int(torch.randint(len(RANDAUGMENT_OPS), (1,)).item())]
        mag, signed = levels[name]
        if signed and torch.randint(2, (1,)):
            mag *= -1.0
        ops.append((name, mag))
    return ops


@functools.lru_cache(maxsize=64)
def _levels(magnitude: int, num_bins: int, height: int,
            width: int) -> Dict[str, Tuple[float, bool]]:
    """``{op: (magnitude at level ``magnitude`` as a Python float, signed)}`` (cached;
    callers must not modify it)."""
    return {name: (float(mags[magnitude].item()) if mags.ndim > 0 else 0.0, signed)
            for name, (mags, signed) in randaugment_space(num_bins, height, width).items()}


# ------------------------------------------------------------------------- geometric ops
def _inverse_affine(center: Sequence[float], angle: float, translate: Sequence[float],
                    shear: Sequence[float]) -> List[float]:
    """Output-to-input affine map (2x3, row-major) in coordinates centred on the image
    centre, for a rotation by ``angle`` degrees, shears ``shear`` (degrees, x then y) about
    ``center`` followed by a translation, scale 1. The forward map is
    ``T * C * R(angle) * SHy * SHx * C^-1``; its linear part has determinant 1."""
    rot = math.radians(angle)
    sx, sy = math.radians(shear[0]), math.radians(shear[1])
    cx, cy = center
    tx, ty = translate
    # forward linear part [[a, b], [c, d]] = R(rot) * SHy(sy) * SHx(sx)
    a = math.cos(rot - sy) / math.cos(sy)
    b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
    c = math.sin(rot - sy) / math.cos(sy)
    d = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
    m = [d, -b, 0.0, -c, a, 0.0]
    m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty) + cx
    m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty) + cy
    return m


def _geometric_matrix(op: str, magnitude: float, height: int, width: int) -> List[float]:
    """The inverse affine matrix torchvision's ``_apply_op`` builds for ``op``."""
    if op in ('ShearX', 'ShearY'):
        shear = math.degrees(math.atan(magnitude))
        # sheared about the top-left corner (torchvision passes center=[0, 0])
        corner = [-width * 0.5, -height * 0.5]
        return _inverse_affine(corner, 0.0, [0.0, 0.0],
                               [shear, 0.0] if op == 'ShearX' else [0.0, shear])
    if op == 'TranslateX':
        return _inverse_affine([0.0, 0.0], 0.0, [float(int(magnitude)), 0.0], [0.0, 0.0])
    if op == 'TranslateY':
        return _inverse_affine([0.0, 0.0], 0.0, [0.0, float(int(magnitude))], [0.0, 0.0])
    if op == 'Rotate':   # F.rotate: counter-clockwise, about the centre
        return _inverse_affine([0.0, 0.0], -magnitude, [0.0, 0.0], [0.0, 0.0])
    raise ValueError(f'{_NAME}: {op!r} is not a geometric op')


def sampling_maps(matrix: Sequence[float], height: int,
                  width: int) -> Tuple[np.ndarray, np.ndarray]:
    """Input pixel coordinates ``(x, y)``, float32 ``[H, W]`` each, that output pixel
    ``(row, col)`` samples, computed in float32 in the order torchvision's tensor ``affine``
    and ``grid_sample(align_corners=False)`` compute them: pixel centres relative to the
    image centre, the matrix divided by the half sizes, then un-normalised to pixel
    indices. Rounding these half-to-even (``cv2.remap`` NEAREST) gives torchvision's
    nearest-neighbour choice, including exact ties."""
    theta = np.asarray(matrix, dtype=_F32).reshape(2, 3)
    rx = theta[0] / _F32(0.5 * width)
    ry = theta[1] / _F32(0.5 * height)
    xs = np.arange(width, dtype=_F32) - _F32(width * 0.5 - 0.5)            # [W]
    ys = (np.arange(height, dtype=_F32) - _F32(height * 0.5 - 0.5))[:, None]  # [H, 1]
    gx = (xs * rx[0] + ys * rx[1]) + rx[2]
    gy = (xs * ry[0] + ys * ry[1]) + ry[2]
    map_x = (gx + _F32(1)) * _F32(width * 0.5) - _F32(0.5)
    map_y = (gy + _F32(1)) * _F32(height * 0.5) - _F32(0.5)
    return map_x.astype(_F32), map_y.astype(_F32)


@_bytes_lru(lambda: CACHE_BYTES)
def _nearest_source(op: str, magnitude: float, height: int, width: int) -> np.ndarray:
    """int16 ``[H, W, 2]``: the input pixel ``(x, y)`` that torchvision's NEAREST ``op``
    copies into each output pixel, ``(-1, -1)`` where it brings in the fill.

    Found by running torchvision's own op (``F.affine`` / ``F.rotate`` with the arguments
    its RandAugment passes) on a float32 image of 1-based pixel coordinates: its sampling
    grid is a float32 matrix product whose rounding depends on the CPU's BLAS kernels (an
    FMA changes which way a coordinate on a .5 tie goes), so asking torch, once per op,
    magnitude and size (cached), gives its choice on this machine exactly."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF
    ys, xs = torch.meshgrid(torch.arange(1, height + 1, dtype=torch.float32),
                            torch.arange(1, width + 1, dtype=torch.float32), indexing='ij')
    coords = torch.stack([xs, ys])                                     # [2, H, W]
    nearest = InterpolationMode.NEAREST
    if op in ('ShearX', 'ShearY'):
        shear = math.degrees(math.atan(magnitude))
        out = TF.affine(coords, angle=0.0, translate=[0, 0], scale=1.0,
                        shear=[shear, 0.0] if op == 'ShearX' else [0.0, shear],
                        interpolation=nearest, fill=None, center=[0, 0])
    elif op == 'Rotate':
        out = TF.rotate(coords, magnitude, interpolation=nearest, fill=None)
    else:
        raise ValueError(f'{_NAME}: no sampling grid for {op!r}')
    # 0 (outside, zero padding) -> -1: OpenCV's constant border
    return np.ascontiguousarray((out.round().to(torch.int16) - 1).permute(1, 2, 0).numpy())


@_bytes_lru(lambda: CACHE_BYTES)
def _remap_maps(op: str, magnitude: float, height: int, width: int,
                interpolation: str) -> tuple:
    """``cv2.remap`` maps for one op (converted once and cached: a config has only a few
    distinct geometric ops per image size). NEAREST: torchvision's own pixel choice
    (:func:`_nearest_source`). BILINEAR: OpenCV's fixed-point coordinates and
    interpolation table indices from :func:`sampling_maps`."""
    if interpolation == 'nearest':
        return _nearest_source(op, magnitude, height, width), None
    mx, my = sampling_maps(_geometric_matrix(op, magnitude, height, width), height, width)
    return cv2.convertMaps(mx, my, cv2.CV_16SC2, nninterpolation=False)


@_bytes_lru(lambda: CACHE_BYTES)
def _partial_border(op: str, magnitude: float, height: int, width: int) -> tuple:
    """BILINEAR: pixels whose 4 source pixels are not all inside the image, as ``(rows,
    cols, inside weight)``; the weight is the warp of an all-ones image (cached)."""
    map1, map2 = _remap_maps(op, magnitude, height, width, 'bilinear')
    mask = cv2.remap(np.ones((height, width), _F32), map1, map2, cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    rows, cols = np.nonzero(mask < 1)
    return rows, cols, mask[rows, cols][:, None]


def _shape(frames: Frames) -> Tuple[int, int, int, int]:
    return (len(frames),) + tuple(frames[0].shape)


def _new_like(frames: Frames) -> Clip:
    return np.empty(_shape(frames), np.uint8)


def _geometric(frames: Frames, op: str, magnitude: float, interpolation: str,
               fill: Optional[Tuple[float, float, float]]) -> Clip:
    T, H, W, _ = _shape(frames)
    map1, map2 = _remap_maps(op, magnitude, H, W, interpolation)
    # NEAREST: a pixel from outside is `fill`, OpenCV's constant border. BILINEAR: the
    # warp with a 0 border, then torchvision's fill step `out * w + (1 - w) * fill`, w the
    # inside weight of the pixel (it weights the inside pixels twice; kept as is).
    bilinear_fill = fill is not None and interpolation == 'bilinear'
    border_value = (0.0, 0.0, 0.0) if fill is None or bilinear_fill else fill
    out = _new_like(frames)
    for t in range(T):   # one warp per frame with shared maps (no layout copies)
        cv2.remap(frames[t], map1, map2, _INTERPOLATIONS[interpolation], dst=out[t],
                  borderMode=cv2.BORDER_CONSTANT, borderValue=border_value)
    if bilinear_fill:
        rows, cols, w = _partial_border(op, magnitude, H, W)
        edge = out[:, rows, cols].astype(_F32) * w + (1 - w) * np.asarray(fill, _F32)
        out[:, rows, cols] = np.rint(edge).clip(0, 255).astype(np.uint8)
    return out


def _translate(frames: Frames, dx: int, dy: int,
               fill: Optional[Tuple[float, float, float]]) -> Clip:
    """An integer translation samples exactly one source pixel (or none) with either
    interpolation: a shifted copy, ``fill`` (or 0) where the image moved away."""
    T, H, W, C = _shape(frames)
    out = _new_like(frames)
    out[...] = 0 if fill is None else np.asarray(fill, _F32).astype(np.uint8)
    if abs(dx) < W and abs(dy) < H:
        src_y, dst_y = slice(max(-dy, 0), H - max(dy, 0)), slice(max(dy, 0), H - max(-dy, 0))
        src_x, dst_x = slice(max(-dx, 0), W - max(dx, 0)), slice(max(dx, 0), W - max(-dx, 0))
        for t in range(T):
            out[t, dst_y, dst_x] = frames[t][src_y, src_x]
    return out


# ------------------------------------------------------------------------- colour ops
# Point-wise ops write into `out`, which may be `frames` itself (in place) when `frames`
# is an array the transform owns.
def _lut(frames: Frames, lut: np.ndarray, out: Clip) -> Clip:
    """One 256-entry table for every pixel of the clip."""
    if isinstance(frames, np.ndarray):
        T, H, W, C = frames.shape
        cv2.LUT(frames.reshape(T * H, W, C), lut, dst=out.reshape(T * H, W, C))
    else:
        for t, frame in enumerate(frames):
            cv2.LUT(frame, lut, dst=out[t])
    return out


def _lut_frames(frames: Frames, luts: np.ndarray, out: Clip) -> Clip:
    """``luts`` uint8 ``[T, 256]`` (one table per frame) or ``[T, 256, C]`` (per frame and
    channel)."""
    for t, frame in enumerate(frames):
        cv2.LUT(frame, np.ascontiguousarray(luts[t][None]), dst=out[t])
    return out


def _posterize(frames: Frames, bits: int, out: Clip) -> Clip:
    keep = np.uint8((0xFF << (8 - bits)) & 0xFF)      # torchvision: img & -(2 ** (8 - bits))
    if isinstance(frames, np.ndarray):
        return np.bitwise_and(frames, keep, out=out)
    for t, frame in enumerate(frames):
        np.bitwise_and(frame, keep, out=out[t])
    return out


def _truncate(x: np.ndarray) -> np.ndarray:
    """float -> uint8 as torchvision's blend does: clamp to [0, 255], then truncate."""
    return np.clip(x, 0, 255).astype(np.uint8)


def _blend_lut(ratio: float, other: Union[float, np.ndarray]) -> np.ndarray:
    """``trunc(clamp(ratio * v + (1 - ratio) * other))`` for v = 0..255 in float32 (one
    table; ``other`` a scalar or an array broadcasting against ``[256]``)."""
    v = np.arange(256, dtype=_F32)
    return _truncate(v * _F32(ratio) + np.asarray(other, dtype=_F32) * _F32(1.0 - ratio))


_SCRATCH = threading.local()


def _scratch(name: str, shape: Sequence[int], dtype) -> np.ndarray:
    """A per-thread work buffer reused across calls: fresh 0.6 MB temporaries per frame
    cost page faults that are a large part of these ops' time."""
    bufs = _SCRATCH.__dict__.setdefault('bufs', {})
    buf = bufs.get(name)
    if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype:
        buf = bufs[name] = np.empty(shape, dtype)
    return buf


_GREY_SCALE = tuple(float(w) for w in _GREY_WEIGHTS) + (0.0,)
_ONES_1x3 = np.ones((1, 3), _F32)


def _grey_frame(frame: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` RGB -> uint8 ``[H, W]``: ``trunc(0.2989 r + 0.587 g + 0.114 b)``,
    float32, left to right (torchvision's ``rgb_to_grayscale``). Returns a scratch buffer
    (valid until the next call).

    Each product is one float32 rounding (``cv2.multiply`` by the per-channel weights);
    the channel sum is ``cv2.transform`` with the matrix ``[1, 1, 1]``, which OpenCV
    evaluates as ``((1*r' + 1*g') + 1*b') + 0`` (its scalar path for one output channel):
    products by 1 are exact, so a fused multiply-add cannot change the rounding, and the
    order is torchvision's. Checked on all 2**24 RGB values in the tests."""
    H, W = frame.shape[:2]
    x = _scratch('grey_x3', (H, W, 3), _F32)
    np.copyto(x, frame)                                     # exact: small integers
    cv2.multiply(x, _GREY_SCALE, dst=x)
    total = cv2.transform(x, _ONES_1x3, dst=_scratch('grey_sum', (H, W), _F32))
    grey = _scratch('grey', (H, W), np.uint8)
    np.copyto(grey, total.reshape(H, W), casting='unsafe')  # truncation, as .to(uint8)
    return grey


class _Blender:
    """``trunc(clamp(ratio * frame + (1 - ratio) * other))`` in float32, one ``[H, W, C]``
    frame at a time, as torchvision's ``_blend``: each product is one float32 rounding
    (``numpy.multiply`` of the uint8 values by the float32 factor), then one float32 sum,
    clamp, truncate. With ``0 <= ratio <= 1`` both factors are >= 0 and the sum stays
    below 256, so the clamp is skipped (truncation alone gives the same bytes)."""

    def __init__(self, shape: Sequence[int], ratio: float) -> None:
        self.ratio = _F32(ratio)
        self.other_ratio = _F32(1.0 - ratio)      # torchvision: (1.0 - ratio) in double
        self.clamp = not 0.0 <= ratio <= 1.0
        self.a = _scratch('blend_a', shape, _F32)
        self.b = _scratch('blend_b', shape, _F32)
        self.b1 = _scratch('blend_b1', shape[:2], _F32)

    def other_term(self, other: np.ndarray) -> np.ndarray:
        """float32 ``(1 - ratio) * other`` for a uint8 ``other`` shaped like the frame, or
        ``[H, W]`` (a grey image, repeated over the channels). Returns a scratch buffer."""
        if other.ndim == 2:
            np.multiply(other, self.other_ratio, out=self.b1, dtype=_F32)
            cv2.cvtColor(self.b1, cv2.COLOR_GRAY2RGB, dst=self.b)   # copies, exact
        else:
            np.multiply(other, self.other_ratio, out=self.b, dtype=_F32)
        return self.b

    def __call__(self, frame: np.ndarray, other_term: np.ndarray, out: np.ndarray) -> None:
        """``other_term`` from :meth:`other_term`; ``out`` may be ``frame``."""
        a = self.a
        np.multiply(frame, self.ratio, out=a, dtype=_F32)
        cv2.add(a, other_term, dst=a)
        if self.clamp:
            np.clip(a, 0, 255, out=a)
        np.copyto(out, a, casting='unsafe')       # truncation, as .to(torch.uint8)


def _color(frames: Frames, factor: float, out: Clip) -> Clip:
    blend = _Blender(frames[0].shape, factor)
    for t, frame in enumerate(frames):
        blend(frame, blend.other_term(_grey_frame(frame)), out[t])
    return out


def _contrast(frames: Frames, factor: float, out: Clip) -> Clip:
    # torchvision: mean of the (truncated uint8) grey image over each frame, float32.
    # The float32 sum of integers is exact below 2**24, so sum exactly and divide in
    # float32: bit for bit up to 65793 pixels per frame; beyond, torch's float32 sum may
    # round (measured still equal at 340x256 and 640x480).
    H, W = frames[0].shape[:2]
    sums = np.array([cv2.sumElems(_grey_frame(f))[0] for f in frames], dtype=np.float64)
    means = sums.astype(_F32) / _F32(H * W)                            # [T]
    return _lut_frames(frames, _blend_lut(factor, means[:, None]), out)  # [T, 256] tables


def _smoothed(frame: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """torchvision's 3x3 smoothing of a uint8 ``[H, W, C]`` frame (weights 1/13, centre
    5/13) rounded to uint8, inside the one-pixel border: ``round(S / 13)`` with the
    integer ``S = box3x3 + 4 * centre`` (the exact value S/13 is never a tie, and the
    float error of ``box / 13 + centre * 4 / 13`` is below 1e-3, so the rounding cannot
    flip). The border of ``dst`` is left to the caller."""
    shape = frame.shape
    box = _scratch('smooth_box', shape, np.uint16)
    centre = _scratch('smooth_centre', shape, np.uint16)
    cv2.boxFilter(frame, cv2.CV_16U, (3, 3), dst=box, normalize=False,
                  borderType=cv2.BORDER_REPLICATE)
    np.copyto(centre, frame)
    cv2.addWeighted(box, 1.0 / 13.0, centre, 4.0 / 13.0, 0.0, dst=dst, dtype=cv2.CV_8U)
    return dst


def _sharpness(frames: Frames, factor: float, out: Clip) -> Clip:
    T, H, W, C = _shape(frames)
    if H <= 2 or W <= 2:          # torchvision returns such images unchanged
        out[...] = frames
        return out
    blend = _Blender((H, W, C), factor)
    blurred = _scratch('blurred', (H, W, C), np.uint8)
    for t, frame in enumerate(frames):
        _smoothed(frame, blurred)
        # torchvision keeps the border pixels of the image
        blurred[0], blurred[-1] = frame[0], frame[-1]
        blurred[:, 0], blurred[:, -1] = frame[:, 0], frame[:, -1]
        blend(frame, blend.other_term(blurred), out[t])
    return out


def _autocontrast(frames: Frames, out: Clip) -> Clip:
    T, _, _, C = _shape(frames)
    lo = np.empty((T, C), _F32)
    hi = np.empty((T, C), _F32)
    for t, frame in enumerate(frames):
        for c, plane in enumerate(cv2.split(frame)):
            lo[t, c], hi[t, c] = cv2.minMaxLoc(plane)[:2]
    flat = hi == lo
    with np.errstate(divide='ignore'):
        # torchvision's `255 / (max - min)` is a tensor __rtruediv__: reciprocal, then
        # times 255, both float32 (not the same float as a direct division)
        scale = (_F32(1) / (hi - lo)) * _F32(255)
    lo[flat], scale[flat] = 0, 1          # constant channel: unchanged
    v = np.arange(256, dtype=_F32)
    luts = _truncate((v[None, :, None] - lo[:, None, :]) * scale[:, None, :])  # [T,256,C]
    return _lut_frames(frames, luts, out)


def _equalize(frames: Frames, out: Clip) -> Clip:
    T, _, _, C = _shape(frames)
    hist = np.empty((T, C, 256), np.int64)
    for t, frame in enumerate(frames):
        for c in range(C):
            hist[t, c] = cv2.calcHist([frame], [c], None, [256], [0, 256]).reshape(-1)
    # torchvision's _scale_channel: step = (count of all nonzero bins but the last) // 255
    last = 255 - np.argmax(hist[..., ::-1] != 0, axis=-1)                    # [T, C]
    total = hist.sum(-1)
    step = (total - np.take_along_axis(hist, last[..., None], -1)[..., 0]) // 255
    safe = np.maximum(step, 1)[..., None]
    lut = (np.cumsum(hist, -1) + (step // 2)[..., None]) // safe
    lut = np.concatenate([np.zeros_like(lut[..., :1]), lut[..., :-1]], -1).clip(0, 255)
    identity = np.broadcast_to(np.arange(256), lut.shape)
    lut = np.where((step == 0)[..., None], identity, lut).astype(np.uint8)   # [T, C, 256]
    return _lut_frames(frames, lut.transpose(0, 2, 1), out)


def _apply(frames: Frames, op: str, magnitude: float, interpolation: str,
           fill: Optional[Tuple[float, float, float]], inplace: bool) -> Frames:
    """One op on ``frames``. ``inplace``: point-wise ops may overwrite ``frames`` (an array
    the caller owns); geometric ops always return a new array."""
    if op == 'Identity':
        return frames
    if op in ('TranslateX', 'TranslateY'):
        shift = int(magnitude)
        return _translate(frames, shift if op == 'TranslateX' else 0,
                          shift if op == 'TranslateY' else 0, fill)
    if op in _GEOMETRIC:
        return _geometric(frames, op, magnitude, interpolation, fill)
    out = frames if inplace and isinstance(frames, np.ndarray) else _new_like(frames)
    if op == 'Brightness':
        return _lut(frames, _blend_lut(1.0 + magnitude, 0.0), out)
    if op == 'Color':
        return _color(frames, 1.0 + magnitude, out)
    if op == 'Contrast':
        return _contrast(frames, 1.0 + magnitude, out)
    if op == 'Sharpness':
        return _sharpness(frames, 1.0 + magnitude, out)
    if op == 'Posterize':
        return _posterize(frames, int(magnitude), out)
    if op == 'Solarize':
        v = np.arange(256)
        return _lut(frames, np.where(v >= magnitude, 255 - v, v).astype(np.uint8), out)
    if op == 'AutoContrast':
        return _autocontrast(frames, out)
    if op == 'Equalize':
        return _equalize(frames, out)
    raise ValueError(f'{_NAME}: unknown op {op!r}; expected one of {RANDAUGMENT_OPS}')


def apply_op(frames: Frames, op: str, magnitude: float, interpolation: str = 'nearest',
             fill: Optional[Sequence[float]] = None) -> Frames:
    """Apply one RandAugment op, as torchvision's ``_apply_op`` defines it, to every frame.

    Args:
        frames: uint8 ``[T, H, W, 3]`` array or list of ``[H, W, 3]`` frames (RGB,
            C-contiguous). Not modified.
        op: one of :data:`RANDAUGMENT_OPS`.
        magnitude: the signed value (not the level), as :func:`sample_ops` returns it.
        interpolation: ``'nearest'`` or ``'bilinear'`` (geometric ops).
        fill: 3 values for the pixels a geometric op brings in (None: 0).

    Returns:
        a new uint8 ``[T, H, W, 3]`` array (``Identity``: ``frames`` itself).
    """
    if op not in RANDAUGMENT_OPS:
        raise ValueError(f'{_NAME}: unknown op {op!r}; expected one of {RANDAUGMENT_OPS}')
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"{_NAME}: interpolation must be 'nearest' or 'bilinear', got "
                         f'{interpolation!r}')
    # torchvision rounds the fill as float32
    fill3 = None if fill is None else tuple(float(np.rint(np.float32(f))) for f in fill)
    return _apply(frames, op, magnitude, interpolation, fill3, inplace=False)


# ------------------------------------------------------------------------- transform
def _check_int(name: str, value, low: int, high: Optional[int] = None) -> int:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or value < low or (high is not None and value > high):
        rng = f'in [{low}, {high}]' if high is not None else f'>= {low}'
        raise ConfigValueError(f'{_NAME}: {name} must be an integer {rng}, got {value!r}')
    return int(value)


@TRANSFORMS.register_module()
class ClipRandAugment(BaseTransform):
    """torchvision's RandAugment for a clip of uint8 frames, same ops for every frame.

    Required keys: ``imgs``, a list of ``[H, W, 3]`` uint8 RGB frames of one size or a
    uint8 array ``[T, H, W, 3]`` (MMAction2's layout before ``FormatShape``). Modified
    keys: ``imgs``, same container type (a list of C-contiguous frames, or an array).

    Equivalent to ``TorchVisionWrapper(op='RandAugment', ...)`` with the same arguments:
    the same ops, magnitudes and signs are drawn from torch's global generator (same calls,
    same order), and each op gives torchvision's pixels (see the module docstring for the
    few exceptions), at a fraction of the cost.

    Args:
        num_ops (int): ops applied one after the other. Default 2.
        magnitude (int): level of every op, in ``[0, num_magnitude_bins - 1]``. Default 9.
        num_magnitude_bins (int): number of levels (>= 2). Default 31.
        interpolation (str): ``'nearest'`` (default) or ``'bilinear'``, for the geometric
            ops.
        fill (None | number | sequence of 3 numbers): value(s) in [0, 255] of the pixels
            that geometric ops bring in. Default None (0).
    """

    def __init__(self, num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31,
                 interpolation: str = 'nearest',
                 fill: Union[None, Number, Sequence[Number]] = None) -> None:
        self.num_ops = _check_int('num_ops', num_ops, 0)
        self.num_magnitude_bins = _check_int('num_magnitude_bins', num_magnitude_bins, 2)
        self.magnitude = _check_int('magnitude', magnitude, 0, self.num_magnitude_bins - 1)
        interp = getattr(interpolation, 'value', interpolation)   # InterpolationMode too
        if not isinstance(interp, str) or interp.lower() not in _INTERPOLATIONS:
            raise ConfigValueError(f"{_NAME}: interpolation must be 'nearest' or 'bilinear', "
                                   f'got {interpolation!r}')
        self.interpolation = interp.lower()
        self.fill = self._check_fill(fill)

    @staticmethod
    def _check_fill(fill) -> Optional[Tuple[float, float, float]]:
        if fill is None:
            return None
        values = [fill] * 3 if isinstance(fill, Number) else fill
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError):
            values = None
        if (values is None or len(values) != 3 or isinstance(fill, (str, bytes))
                or not all(0 <= v <= 255 for v in values)):
            raise ConfigValueError(f'{_NAME}: fill must be None, a number or 3 numbers (R, G, B) '
                                   f'in [0, 255], got {fill!r}')
        return tuple(values)

    @staticmethod
    def _check_imgs(imgs) -> Tuple[int, int]:
        """Validate ``results['imgs']``; return the frame size ``(H, W)``."""
        where = f"{_NAME}: results['imgs']"
        if isinstance(imgs, np.ndarray):
            if imgs.dtype != np.uint8 or imgs.ndim != 4 or imgs.shape[-1] != 3:
                raise ValueError(f'{where} must be uint8 [T, H, W, 3] (RGB frames before '
                                 f'FormatShape), got a {imgs.dtype} array of shape '
                                 f'{imgs.shape}')
            return imgs.shape[1:3]
        if not isinstance(imgs, (list, tuple)) or not imgs:
            raise ValueError(f'{where} must be a non-empty list of [H, W, 3] uint8 frames or '
                             f'a uint8 [T, H, W, 3] array, got {type(imgs).__name__} '
                             f'{imgs!r:.60}')
        first = imgs[0]
        for i, f in enumerate(imgs):
            if (not isinstance(f, np.ndarray) or f.dtype != np.uint8 or f.ndim != 3
                    or f.shape[-1] != 3 or f.shape != first.shape):
                got = (f'a {f.dtype} array of shape {f.shape}' if isinstance(f, np.ndarray)
                       else type(f).__name__)
                raise ValueError(f'{where}[{i}] must be a uint8 [H, W, 3] RGB frame of the '
                                 f'same size as frame 0 {getattr(first, "shape", None)}, '
                                 f'got {got} (place {_NAME} before FormatShape)')
        return first.shape[:2]

    def transform(self, results: Dict) -> Dict:
        if 'imgs' not in results:
            raise KeyError(f"{_NAME}: results has no 'imgs' (decoded frames); place it "
                           f'after the decoding transform and before FormatShape')
        imgs = results['imgs']
        H, W = self._check_imgs(imgs)
        ops = [(op, mag) for op, mag in sample_ops(
            self.num_ops, self.magnitude, self.num_magnitude_bins, H, W) if op != 'Identity']
        if not ops:
            return results       # only Identity drawn: frames untouched
        is_array = isinstance(imgs, np.ndarray)
        frames = (np.ascontiguousarray(imgs) if is_array
                  else [np.ascontiguousarray(f) for f in imgs])       # no copy if contiguous
        fill = None if self.fill is None else tuple(float(np.rint(np.float32(f)))
                                                    for f in self.fill)   # torchvision's
        for i, (op, mag) in enumerate(ops):
            # the first op reads the input frames (left untouched) into a new [T, H, W, 3]
            # array; later point-wise ops work in place on that array
            frames = _apply(frames, op, mag, self.interpolation, fill, inplace=i > 0)
        mark_owned(frames)       # a new array: fast_paths' FormatShape may keep it
        results['imgs'] = frames if is_array else list(frames)
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(num_ops={self.num_ops}, '
                f'magnitude={self.magnitude}, num_magnitude_bins={self.num_magnitude_bins}, '
                f"interpolation='{self.interpolation}', fill={self.fill})")
