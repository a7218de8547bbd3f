"""Synthetic motion benchmark: real ``.mp4`` videos whose classes come in time-reversed pairs.

The benchmark exists so that a newcomer without Kinetics, MSR-VTT, CLIP weights or a GPU can
train and test STAN through the real MMAction2 pipeline (decord, transforms, runner,
evaluator) and see the paper's central claim: a model that ignores frame order (CLIP with
mean pooling over frames) cannot tell apart motions that a temporal model (STAN) can.

Design
------
Every motion *pair* has a canonical (``forward``) class and a ``backward`` class whose videos
are the same frames played backwards:

============  ==========================  ==========================
pair          forward class               backward class
============  ==========================  ==========================
horizontal    a shape moving left         a shape moving right
vertical      a shape moving up           a shape moving down
rotation      a shape rotating clockwise  a shape rotating counterclockwise
scale         a shape growing             a shape shrinking
fade          a shape appearing           a shape disappearing
============  ==========================  ==========================

A video is made by sampling appearance (shape, colour, size, textured background) and a
canonical trajectory from a random stream that does *not* depend on the direction, then
rendering it and reversing the frame order for the backward class. Hence the multiset of
frames of a backward video has exactly the distribution of the forward one, and any
order-invariant model is at chance within each pair: its top-1 accuracy is at most 50 %
(``meta['order_invariant_ceiling']``) whereas chance is ``1 / num_classes``.

With ``twins=True`` (default) videos come in twin groups: one trajectory rendered forward
*and* backward, i.e. both videos hold the same frames, in opposite order, with captions that
differ only in the motion phrase. For retrieval this puts, for every caption, a gallery video
that no order-invariant model can separate from the right one.

Labels: pair ``p`` (in the order given by ``pairs``) has forward label ``2p`` and backward
label ``2p + 1``; the partner of label ``c`` is ``c ^ 1``.

Files written under ``out_dir``::

    meta.json                      generation parameters, classes, pairs, chance, counts
    classnames.txt                 one class name per line, in label order
    train.txt val.txt test.txt     MMAction2 VideoDataset lists: "video12.mp4 3"
    videos/video<N>.mp4            the videos (mp4v, RGB, ``size`` x ``size``)
    annotations/videos.json        one record per video: split, label, appearance, trajectory,
                                   captions (enough to re-render it with ``render_video``)
    retrieval/{train,val,test}.json    MMAction2 VideoTextDataset: {"video12.mp4": [captions]}
    msrvtt/MSRVTT_data.json        CLIP4Clip layout: videos[...] + sentences[{video_id, caption}]
    msrvtt/MSRVTT_train.9k.csv     column video_id (the train split; not 9k videos here)
    msrvtt/MSRVTT_JSFUSION_test.csv    key,vid_key,video_id,sentence (one caption per test video)
    msrvtt/MSRVTT_JSFUSION_val.csv     same layout for the val split (not part of MSR-VTT)

Paths in the list files and the retrieval JSON are relative to ``videos/`` (use
``data_prefix=dict(video=<out_dir>/videos)``). Video ids follow MSR-VTT: ``video0`` ...
numbered over train, then val, then test.

Everything is deterministic given ``seed``: each video's content depends only on
``(seed, split, group index)`` and the generation parameters.
"""
from __future__ import annotations

import copy
import csv
import json
import math
import os
import os.path as osp
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from stan_mm.errors import ConfigValueError

__all__ = [
    'FORMAT_VERSION', 'SPLITS', 'MotionPair', 'MOTION_PAIRS', 'DEFAULT_PAIRS', 'SHAPES',
    'COLOURS', 'SIZES', 'BACKGROUNDS', 'class_names', 'make_video_specs', 'render_background',
    'shape_polygon',
    'render_video', 'write_video', 'generate_motion_dataset', 'load_meta',
    'load_video_records', 'paired_direction_accuracy', 'SyntheticDatasetExistsError',
]

GENERATOR = 'stan_mm.datasets.synthetic.generate_motion_dataset'  # meta.json 'generator'
FORMAT_VERSION = 2  # 2: larger shapes and moves (a from-scratch tiny model learns them)
SPLITS = ('train', 'val', 'test')
_SPLIT_CODE = {'train': 0, 'val': 1, 'test': 2}
_MSRVTT_SPLIT = {'train': 'train', 'val': 'validate', 'test': 'test'}

# Random-stream tags: a video's streams are seeded by (seed, split code, tag, group index).
_STREAM_SPLIT, _STREAM_CONTENT, _STREAM_CAPTION = 0, 1, 2

_MARGIN = 0.04  # distance kept between a shape and the frame border, fraction of the side
_SUBPIXEL_BITS = 4  # cv2.fillPoly fractional bits: positions quantised to 1/16 pixel


class SyntheticDatasetExistsError(FileExistsError):
    """The output folder of :func:`generate_motion_dataset` holds something else than this
    dataset (a file, or another dataset or other files); the message says what to do.
    Command-line tools print it as a one-line user error."""


# --------------------------------------------------------------------------- vocabulary
@dataclass(frozen=True)
class MotionPair:
    """Two classes whose videos are each other's frames in reverse order.

    Attributes:
        name: pair key (``'horizontal'``, ...).
        forward: class name of the canonical trajectory (label ``2p``).
        backward: class name of the reversed videos (label ``2p + 1``).
        forward_phrases / backward_phrases: caption verb phrases, index-aligned so that
            twin captions differ only by the phrase.
        needs_orientation: the motion is invisible on rotation-symmetric shapes (circle).
    """
    name: str
    forward: str
    backward: str
    forward_phrases: Tuple[str, ...]
    backward_phrases: Tuple[str, ...]
    needs_orientation: bool = False


MOTION_PAIRS: Dict[str, MotionPair] = {
    p.name: p
    for p in (
        MotionPair('horizontal', 'a shape moving left', 'a shape moving right',
                   ('moves to the left', 'slides left', 'travels from right to left',
                    'is moving leftwards'),
                   ('moves to the right', 'slides right', 'travels from left to right',
                    'is moving rightwards')),
        MotionPair('vertical', 'a shape moving up', 'a shape moving down',
                   ('moves up', 'rises', 'travels from the bottom to the top',
                    'is moving upwards'),
                   ('moves down', 'sinks', 'travels from the top to the bottom',
                    'is moving downwards')),
        MotionPair('rotation', 'a shape rotating clockwise',
                   'a shape rotating counterclockwise',
                   ('rotates clockwise', 'spins clockwise', 'turns clockwise',
                    'is rotating in the clockwise direction'),
                   ('rotates counterclockwise', 'spins anticlockwise',
                    'turns counterclockwise', 'is rotating in the counterclockwise direction'),
                   needs_orientation=True),
        MotionPair('scale', 'a shape growing', 'a shape shrinking',
                   ('grows', 'gets bigger', 'expands', 'is growing larger'),
                   ('shrinks', 'gets smaller', 'contracts', 'is shrinking')),
        MotionPair('fade', 'a shape appearing', 'a shape disappearing',
                   ('fades in', 'appears', 'slowly becomes visible', 'materializes'),
                   ('fades out', 'disappears', 'slowly vanishes', 'dissolves away')),
    )
}
DEFAULT_PAIRS: Tuple[str, ...] = tuple(MOTION_PAIRS)

# shape name -> rotational symmetry period in degrees (None: fully symmetric)
SHAPES: Dict[str, Optional[float]] = {
    'circle': None, 'square': 90.0, 'triangle': 120.0, 'star': 72.0, 'cross': 90.0,
}
COLOURS: Dict[str, Tuple[int, int, int]] = {  # RGB
    'red': (220, 30, 30), 'green': (30, 200, 50), 'blue': (40, 80, 235),
    'yellow': (240, 220, 30), 'cyan': (30, 210, 220), 'magenta': (220, 40, 200),
    'white': (245, 245, 245),
}
SIZES: Dict[str, float] = {'small': 0.14, 'medium': 0.17, 'large': 0.20}  # radius / side
BACKGROUNDS: Dict[str, Tuple[str, ...]] = {  # kind -> caption adjectives
    'noise': ('noisy', 'mottled'),
    'gradient': ('gradient', 'shaded'),
    'stripes': ('striped', 'stripy'),
    'checkerboard': ('checkered', 'chequered'),
}
_SIZE_WORDS = {'small': 'small', 'medium': 'medium-sized', 'large': 'large'}
_CAPTION_TEMPLATES = (
    '{a_size} {colour} {shape} {motion} over {a_bg} background',
    'a {colour} {shape} {motion}',
    'the {size}{colour} {shape} {motion} in front of {a_bg} background',
    'on {a_bg} background {a_size} {colour} {shape} {motion}',
    'a video of a {colour} {shape} that {motion}',
    'there is {a_size} {colour} {shape} which {motion} on {a_bg} backdrop',
)

# Trajectory ranges (fractions of the frame side unless stated).
_MOVE_DISTANCE = (0.45, 0.6)  # displacement over the whole video
_ROTATION_STEP = (0.07, 0.11)  # per frame, fraction of the shape's symmetry period: the
#   direction stays unambiguous for temporal strides up to 4 (4 * 0.11 < 0.5 period)
_SCALE_START = (0.06, 0.09)  # start radius of a growing shape
_SCALE_RATIO = (2.2, 2.8)  # end radius / start radius
_SCALE_MAX_RADIUS = 0.24
_FADE_START = (0.0, 0.25)  # fraction of the video where alpha leaves 0
_FADE_END = (0.6, 1.0)  # fraction of the video where alpha reaches 1
_MIN_COLOUR_DISTANCE = 90.0  # RGB distance between shape and both background colours


def class_names(pairs: Sequence[str] = DEFAULT_PAIRS) -> List[str]:
    """Class names in label order: ``[pair0.forward, pair0.backward, pair1.forward, ...]``."""
    names = []
    for pair in _check_pairs(pairs):
        names += [MOTION_PAIRS[pair].forward, MOTION_PAIRS[pair].backward]
    return names


def _check_pairs(pairs: Sequence[str]) -> Tuple[str, ...]:
    if isinstance(pairs, str):
        pairs = (pairs, )
    pairs = tuple(pairs)
    if not pairs:
        raise ConfigValueError(f'pairs must name at least one of {list(MOTION_PAIRS)}')
    unknown = [p for p in pairs if p not in MOTION_PAIRS]
    if unknown:
        raise ConfigValueError(f'unknown motion pair(s) {unknown}; choose from '
                               f'{list(MOTION_PAIRS)}')
    if len(set(pairs)) != len(pairs):
        raise ConfigValueError(f'pairs {list(pairs)} contain duplicates')
    return pairs


def _article(word: str) -> str:
    return ('an ' if word[0] in 'aeiou' else 'a ') + word


# --------------------------------------------------------------------------- sampling
def _stream(seed: int, split: str, tag: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_CODE[split], tag, index])


def _r4(values) -> List[float]:
    """Round to 4 decimals so that JSON records re-render bit-identically."""
    return [round(float(v), 4) for v in np.atleast_1d(values)]


def _sample_background(rng: np.random.Generator, shape_rgb: np.ndarray) -> dict:
    """Two muted colours far from the shape colour, plus the texture's parameters."""
    for _ in range(100):
        lum = rng.uniform(50, 150)
        c0 = np.clip(lum + rng.normal(0, 20, 3), 20, 200)
        c1 = np.clip(c0 + rng.choice([-1, 1]) * rng.uniform(25, 60) + rng.normal(0, 12, 3),
                     10, 210)
        if min(np.linalg.norm(c0 - shape_rgb),
               np.linalg.norm(c1 - shape_rgb)) >= _MIN_COLOUR_DISTANCE:
            break
    kind = str(rng.choice(list(BACKGROUNDS)))
    bg = dict(kind=kind, colours=[_r4(c0), _r4(c1)])
    if kind == 'noise':
        bg.update(grid=int(rng.integers(4, 9)), grain=_r4(rng.uniform(0, 6))[0],
                  seed=int(rng.integers(2**31)))
    elif kind == 'gradient':
        bg.update(angle=_r4(rng.uniform(0, 360))[0])
    elif kind == 'stripes':
        bg.update(angle=_r4(rng.uniform(0, 180))[0], period=_r4(rng.uniform(0.12, 0.25))[0],
                  phase=_r4(rng.uniform(0, 2 * math.pi))[0],
                  sharpness=_r4(rng.uniform(1, 4))[0])
    else:
        bg.update(cell=_r4(rng.uniform(0.12, 0.25))[0], offset=_r4(rng.uniform(0, 1, 2)))
    return bg


def _sample_trajectory(rng: np.random.Generator, pair: str, shape: str, radius: float,
                       num_frames: int) -> Tuple[dict, bool]:
    """Canonical (forward) trajectory, per frame, in fractions of the side / degrees.

    Returns the trajectory ``dict(x, y, radius, angle, alpha)`` (lists of length T) and
    whether the size changes over the video (then captions name no size).
    """
    t = np.linspace(0.0, 1.0, num_frames)
    ones = np.ones(num_frames)
    angle0 = rng.uniform(0, 360)
    size_changes = False

    def position(r: float) -> Tuple[float, float]:
        lo, hi = r + _MARGIN, 1 - r - _MARGIN
        return rng.uniform(lo, hi), rng.uniform(lo, hi)

    x0, y0 = position(radius)
    x, y, rad, angle, alpha = x0 * ones, y0 * ones, radius * ones, angle0 * ones, ones
    if pair in ('horizontal', 'vertical'):  # forward: left / up, i.e. coordinate decreasing
        lo, hi = radius + _MARGIN, 1 - radius - _MARGIN
        dist = min(rng.uniform(*_MOVE_DISTANCE), hi - lo)
        start = rng.uniform(lo + dist, hi)
        path = start - dist * t
        if pair == 'horizontal':
            x = path
        else:
            y = path
    elif pair == 'rotation':  # forward: clockwise on screen (angle grows with y pointing down)
        step = rng.uniform(*_ROTATION_STEP) * SHAPES[shape]
        angle = angle0 + step * np.arange(num_frames)
    elif pair == 'scale':  # forward: growing
        r0 = rng.uniform(*_SCALE_START)
        r1 = min(r0 * rng.uniform(*_SCALE_RATIO), _SCALE_MAX_RADIUS)
        rad = r0 + (r1 - r0) * t
        x, y = (v * ones for v in position(r1))
        size_changes = True
    elif pair == 'fade':  # forward: appearing
        a, b = rng.uniform(*_FADE_START), rng.uniform(*_FADE_END)
        alpha = np.clip((t - a) / (b - a), 0.0, 1.0)
    else:  # pragma: no cover - guarded by _check_pairs
        raise ValueError(pair)
    traj = dict(x=_r4(x), y=_r4(y), radius=_r4(rad), angle=_r4(angle % 360), alpha=_r4(alpha))
    return traj, size_changes


def _sample_content(rng: np.random.Generator, pair: str, num_frames: int) -> dict:
    """Appearance + canonical trajectory of one video (independent of its direction)."""
    shapes = [s for s in SHAPES if SHAPES[s] is not None or
              not MOTION_PAIRS[pair].needs_orientation]
    shape = str(rng.choice(shapes))
    colour = str(rng.choice(list(COLOURS)))
    rgb = np.clip(np.array(COLOURS[colour]) + rng.integers(-15, 16, 3), 0, 255)
    size = str(rng.choice(list(SIZES)))
    radius = SIZES[size] * rng.uniform(0.92, 1.08)
    background = _sample_background(rng, rgb.astype(float))
    trajectory, size_changes = _sample_trajectory(rng, pair, shape, radius, num_frames)
    return dict(shape=shape, colour=colour, rgb=[int(v) for v in rgb],
                size=None if size_changes else size, background=background,
                trajectory=trajectory)


def _sample_caption_choices(rng: np.random.Generator, count: int, num_phrases: int,
                            num_bg_words: int) -> List[Tuple[int, int, int]]:
    """``count`` distinct (template, motion phrase, background word) index triples."""
    combos = [(t, m, b) for t in range(len(_CAPTION_TEMPLATES)) for m in range(num_phrases)
              for b in range(num_bg_words)]
    if count > len(combos):
        raise ValueError(f'captions_per_video={count} exceeds the {len(combos)} distinct '
                         'phrasings the templates can produce; use a smaller value')
    return [combos[i] for i in rng.choice(len(combos), size=count, replace=False)]


def _caption(choice: Tuple[int, int, int], spec: dict) -> str:
    template, phrase, bg_word = choice
    pair = MOTION_PAIRS[spec['pair']]
    phrases = pair.backward_phrases if spec['reversed'] else pair.forward_phrases
    size = _SIZE_WORDS[spec['size']] if spec['size'] else None
    text = _CAPTION_TEMPLATES[template].format(
        a_size=_article(size) if size else 'a',
        size=f'{size} ' if size else '',
        colour=spec['colour'], shape=spec['shape'], motion=phrases[phrase],
        a_bg=_article(BACKGROUNDS[spec['background']['kind']][bg_word]))
    return ' '.join(text.split())


def make_video_specs(split: str, num_videos: int, *, seed: int = 0,
                     pairs: Sequence[str] = DEFAULT_PAIRS, num_frames: int = 16,
                     captions_per_video: int = 5, twins: bool = True,
                     first_id: int = 0) -> List[dict]:
    """Describe the videos of one split (no rendering).

    Args:
        split: ``'train'``, ``'val'`` or ``'test'`` (selects the random streams).
        num_videos: number of videos of the split.
        seed: global seed.
        pairs: motion pair names, in label order.
        num_frames: frames per video (T).
        captions_per_video: distinct captions per video.
        twins: videos come in groups of two (one trajectory forward and backward).
        first_id: number of the first video id (``video<first_id>``).

    Returns:
        One JSON-serialisable record per video: ``video_id``, ``filename``, ``split``,
        ``label``, ``class_name``, ``pair``, ``reversed``, ``group``, ``shape``, ``colour``,
        ``rgb``, ``size`` (None for the scale pair), ``background`` (kind + parameters),
        ``trajectory`` (canonical order, lists of length T: ``x``, ``y``, ``radius``
        (fractions of the side), ``angle`` (degrees), ``alpha``) and ``captions``.
        Classes are balanced: per-pair counts differ by at most one group (with twins a
        group is two videos, so up to two videos), and within a pair the forward and
        backward counts differ by at most one.
    """
    if split not in _SPLIT_CODE:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    pairs = _check_pairs(pairs)
    _check_int('num_videos', num_videos, 0)
    _check_int('num_frames', num_frames, 2)
    _check_int('captions_per_video', captions_per_video, 1)
    names = class_names(pairs)
    split_rng = _stream(seed, split, _STREAM_SPLIT, 0)
    group_size = 2 if twins else 1
    num_groups = -(-num_videos // group_size)
    if twins:  # each group: a pair; videos: forward then backward
        group_pair = split_rng.permutation(np.arange(num_groups) % len(pairs))
        group_labels = [[2 * p, 2 * p + 1] for p in group_pair]
        if num_videos % 2:  # the last group holds a single video of a random direction
            group_labels[-1] = [group_labels[-1][int(split_rng.integers(2))]]
    else:
        group_labels = [[int(c)] for c in
                        split_rng.permutation(np.arange(num_groups) % len(names))]
    specs = []
    for group, labels in enumerate(group_labels):
        pair = pairs[labels[0] // 2]
        content = _sample_content(_stream(seed, split, _STREAM_CONTENT, group), pair,
                                  num_frames)
        choices = _sample_caption_choices(
            _stream(seed, split, _STREAM_CAPTION, group), captions_per_video,
            len(MOTION_PAIRS[pair].forward_phrases),
            len(BACKGROUNDS[content['background']['kind']]))
        for label in labels:
            vid = f'video{first_id + len(specs)}'
            spec = dict(video_id=vid, filename=f'{vid}.mp4', split=split, label=int(label),
                        class_name=names[label], pair=pair, reversed=bool(label % 2),
                        group=group, **copy.deepcopy(content))
            spec['captions'] = [_caption(c, spec) for c in choices]
            specs.append(spec)
    return specs


# --------------------------------------------------------------------------- rendering
def render_background(background: dict, size: int) -> np.ndarray:
    """Static textured background ``[H, W, 3]`` float32 RGB in [0, 255] (H = W = size)."""
    kind = background['kind']
    c0, c1 = (np.asarray(c, np.float32) for c in background['colours'])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size  # fractions of the side
    grain = None
    if kind == 'noise':
        rng = np.random.default_rng(background['seed'])
        grid = rng.uniform(0, 1, (background['grid'], background['grid'])).astype(np.float32)
        w = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
        w = (w - w.min()) / max(float(w.max() - w.min()), 1e-6)
        grain = rng.normal(0, background['grain'], (size, size, 1)).astype(np.float32)
    elif kind == 'gradient':
        a = math.radians(background['angle'])
        proj = xx * math.cos(a) + yy * math.sin(a)
        w = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1e-6)
    elif kind == 'stripes':
        a = math.radians(background['angle'])
        proj = xx * math.cos(a) + yy * math.sin(a)
        wave = np.sin(2 * math.pi * proj / background['period'] + background['phase'])
        w = 0.5 + 0.5 * np.tanh(background['sharpness'] * wave)
    elif kind == 'checkerboard':
        ox, oy = background['offset']
        cell = background['cell']
        w = (np.floor(xx / cell + ox) + np.floor(yy / cell + oy)) % 2
    else:
        raise ValueError(f'unknown background kind {kind!r}; expected one of '
                         f'{list(BACKGROUNDS)}')
    img = c0 * (1 - w[..., None]) + c1 * w[..., None]
    if grain is not None:
        img = img + grain
    return np.clip(img, 0, 255).astype(np.float32)


def shape_polygon(shape: str, cx: float, cy: float, radius: float,
                  angle: float) -> np.ndarray:
    """Vertices ``[V, 2]`` (x, y) of a shape in pixel coordinates (y pointing down).

    ``radius`` is the distance from the centre to the outermost vertex; increasing
    ``angle`` (degrees) turns the shape clockwise on screen.
    """
    if shape == 'circle':
        theta, r = np.linspace(0, 360, 48, endpoint=False), np.ones(48)
    elif shape in ('square', 'triangle'):
        n = 4 if shape == 'square' else 3
        theta, r = np.arange(n) * 360.0 / n, np.ones(n)
    elif shape == 'star':
        theta, r = np.arange(10) * 36.0, np.tile([1.0, 0.45], 5)
    elif shape == 'cross':  # plus sign with arms of half-width w
        w = 0.35
        pts = np.array([(w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w),
                        (-1, -w), (-w, -w), (-w, -1), (w, -1)])
        theta = np.degrees(np.arctan2(pts[:, 1], pts[:, 0]))
        r = np.linalg.norm(pts, axis=1) / np.sqrt(1 + w * w)
    else:
        raise ValueError(f'unknown shape {shape!r}; expected one of {list(SHAPES)}')
    theta = np.radians(theta + angle)
    return np.stack([cx + radius * r * np.cos(theta), cy + radius * r * np.sin(theta)], 1)


def render_video(spec: dict, size: int) -> np.ndarray:
    """Render one video record of :func:`make_video_specs`.

    Args:
        spec: the record (also accepted as read back from ``annotations/videos.json``).
        size: side of the square frames in pixels.

    Returns:
        ``[T, H, W, 3]`` uint8 RGB frames, in playing order (reversed for backward classes).
    """
    traj = spec['trajectory']
    background = render_background(spec['background'], size)
    rgb = np.asarray(spec['rgb'], np.float32)
    scale = 1 << _SUBPIXEL_BITS
    frames = []
    for x, y, r, a, alpha in zip(traj['x'], traj['y'], traj['radius'], traj['angle'],
                                 traj['alpha']):
        # pixel i covers [i, i + 1) in side units * size; cv2 puts pixel centres on integers
        poly = shape_polygon(spec['shape'], x * size - 0.5, y * size - 0.5, r * size, a)
        mask = np.zeros((size, size), np.uint8)
        cv2.fillPoly(mask, [np.round(poly * scale).astype(np.int32)], 255, cv2.LINE_AA,
                     _SUBPIXEL_BITS)
        weight = (mask.astype(np.float32) / 255.0 * alpha)[..., None]
        frame = background * (1 - weight) + rgb * weight
        frames.append(np.clip(np.rint(frame), 0, 255).astype(np.uint8))
    frames = np.stack(frames)
    return np.ascontiguousarray(frames[::-1]) if spec['reversed'] else frames


def write_video(path: str, frames: np.ndarray, fps: float = 8.0) -> None:
    """Write ``[T, H, W, 3]`` uint8 RGB frames as an mp4 (MPEG-4 part 2, fourcc ``mp4v``).

    decord 0.6.0 reads these files; H and W must be even (4:2:0 chroma).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f'{path}: expected uint8 frames [T, H, W, 3], got '
                         f'{frames.dtype} {frames.shape}')
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:   # the encoder would drop the last row / column silently
        raise ValueError(f'{path}: frame height and width must be even (4:2:0 chroma), got '
                         f'{height}x{width}; crop or pad the frames')
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), float(fps),
                             (width, height))
    if not writer.isOpened():
        raise RuntimeError(f'OpenCV could not open an mp4v VideoWriter for {path}; this '
                           'needs an OpenCV build with FFMPEG (opencv-python from PyPI has '
                           'it; check cv2.getBuildInformation())')
    try:
        for frame in frames:
            writer.write(np.ascontiguousarray(frame[..., ::-1]))  # RGB -> BGR
    finally:
        writer.release()
    if not osp.isfile(path) or osp.getsize(path) == 0:
        raise RuntimeError(f'OpenCV wrote no data to {path}')


# --------------------------------------------------------------------------- dataset
def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigValueError(f'{name} must be an integer >= {minimum}, got {value!r}')


def _params(num_train, num_val, num_test, num_frames, size, fps, pairs, captions_per_video,
            twins, seed) -> dict:
    for name, value, minimum in (('num_train', num_train, 0), ('num_val', num_val, 0),
                                 ('num_test', num_test, 0), ('num_frames', num_frames, 2),
                                 ('size', size, 16), ('captions_per_video',
                                                      captions_per_video, 1),
                                 ('seed', seed, 0)):
        _check_int(name, value, minimum)
    if num_train + num_val + num_test == 0:
        raise ConfigValueError('num_train + num_val + num_test must be > 0')
    if size % 2:
        raise ConfigValueError(f'size must be even (mp4 4:2:0 chroma), got {size}')
    if not isinstance(fps, (int, float)) or isinstance(fps, bool) or fps <= 0:
        raise ConfigValueError(f'fps must be a positive number, got {fps!r}')
    return dict(num_train=int(num_train), num_val=int(num_val), num_test=int(num_test),
                num_frames=int(num_frames), size=int(size), fps=float(fps),
                pairs=list(_check_pairs(pairs)), captions_per_video=int(captions_per_video),
                twins=bool(twins), seed=int(seed))


def _file_table() -> dict:
    return dict(
        classnames='classnames.txt', videos='videos', video_info='annotations/videos.json',
        recognition={s: f'{s}.txt' for s in SPLITS},
        retrieval={s: f'retrieval/{s}.json' for s in SPLITS},
        msrvtt=dict(data='msrvtt/MSRVTT_data.json', train='msrvtt/MSRVTT_train.9k.csv',
                    test='msrvtt/MSRVTT_JSFUSION_test.csv',
                    val='msrvtt/MSRVTT_JSFUSION_val.csv'))


def _write_json(path: str, obj) -> None:
    os.makedirs(osp.dirname(path) or '.', exist_ok=True)
    with open(path, 'w') as f:
        json.dump(obj, f, indent=1)
        f.write('\n')


def _write_lines(path: str, lines: Sequence[str]) -> None:
    with open(path, 'w') as f:
        f.writelines(f'{line}\n' for line in lines)


def _write_csv(path: str, header: Sequence[str], rows: Sequence[Sequence]) -> None:
    with open(path, 'w', newline='') as f:
        writer = csv.writer(f, lineterminator='\n')
        writer.writerow(header)
        writer.writerows(rows)


def _write_annotations(root: str, specs: Dict[str, List[dict]], params: dict) -> dict:
    """Write every annotation file; returns the meta dict (also written as meta.json)."""
    files = _file_table()
    names = class_names(params['pairs'])
    all_specs = [s for split in SPLITS for s in specs[split]]
    _write_lines(osp.join(root, files['classnames']), names)
    _write_json(osp.join(root, files['video_info']), all_specs)
    for split in SPLITS:
        _write_lines(osp.join(root, files['recognition'][split]),
                     [f"{s['filename']} {s['label']}" for s in specs[split]])
        _write_json(osp.join(root, files['retrieval'][split]),
                    {s['filename']: s['captions'] for s in specs[split]})
    # MSR-VTT (CLIP4Clip) layout
    msr = files['msrvtt']
    duration = round(params['num_frames'] / params['fps'], 4)
    sentences, videos = [], []
    for s in all_specs:
        videos.append({'category': s['label'], 'url': '', 'video_id': s['video_id'],
                       'start time': 0.0, 'end time': duration,
                       'split': _MSRVTT_SPLIT[s['split']], 'id': int(s['video_id'][5:])})
        for caption in s['captions']:
            sentences.append({'caption': caption, 'video_id': s['video_id'],
                              'sen_id': len(sentences)})
    _write_json(osp.join(root, msr['data']),
                {'info': {'description': 'stan_mm synthetic motion benchmark',
                          'version': FORMAT_VERSION},
                 'videos': videos, 'sentences': sentences})
    _write_csv(osp.join(root, msr['train']), ['video_id'],
               [[s['video_id']] for s in specs['train']])
    for split in ('test', 'val'):
        _write_csv(osp.join(root, msr[split]), ['key', 'vid_key', 'video_id', 'sentence'],
                   [[f'ret{i}', f"msr{s['video_id'][5:]}", s['video_id'], s['captions'][0]]
                    for i, s in enumerate(specs[split])])

    counts = {}
    for split in SPLITS:
        per_class = [0] * len(names)
        for s in specs[split]:
            per_class[s['label']] += 1
        counts[split] = dict(videos=len(specs[split]), per_class=per_class,
                             captions=len(specs[split]) * params['captions_per_video'])
    meta = dict(
        format_version=FORMAT_VERSION,
        generator=GENERATOR,
        params=params,
        classes=names, num_classes=len(names),
        pairs=[dict(name=p, labels=[2 * i, 2 * i + 1])
               for i, p in enumerate(params['pairs'])],
        partner=[c ^ 1 for c in range(len(names))],
        chance_level=1.0 / len(names),
        order_invariant_ceiling=0.5,
        video=dict(num_frames=params['num_frames'], height=params['size'],
                   width=params['size'], fps=params['fps'], fourcc='mp4v',
                   container='mp4'),
        counts=counts, files=files,
        notes=('Labels 2p and 2p+1 of pair p hold the same frames in opposite order: an '
               'order-invariant model has top-1 <= order_invariant_ceiling. Paths in the '
               'recognition lists and retrieval JSON are relative to files.videos.'),
    )
    _write_json(osp.join(root, 'meta.json'), meta)
    return meta


def load_meta(out_dir: str) -> dict:
    """Read ``out_dir/meta.json`` (raises ``FileNotFoundError`` with a hint)."""
    path = osp.join(out_dir, 'meta.json')
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path} not found: generate the dataset with '
                                f'`python tools/data/make_synthetic.py --out {out_dir}`')
    with open(path) as f:
        return json.load(f)


def load_video_records(out_dir: str) -> List[dict]:
    """Per-video records of ``annotations/videos.json`` (see :func:`make_video_specs`)."""
    meta = load_meta(out_dir)
    with open(osp.join(out_dir, meta['files']['video_info'])) as f:
        return json.load(f)


def _is_complete(out_dir: str, meta: dict) -> bool:
    files = meta.get('files', {})
    try:
        paths = [files['classnames'], files['video_info'], *files['recognition'].values(),
                 *files['retrieval'].values(), *files['msrvtt'].values()]
        num_videos = sum(c['videos'] for c in meta['counts'].values())
        found = [n for n in os.listdir(osp.join(out_dir, files['videos']))
                 if n.endswith('.mp4')]
    except (KeyError, TypeError, AttributeError, OSError):
        return False
    return all(osp.isfile(osp.join(out_dir, p)) for p in paths) and len(found) == num_videos


def _older_format(out_dir: str) -> bool:
    """Whether ``out_dir`` holds a dataset written by an older version of this generator
    (safe to replace: it is generated data)."""
    try:
        meta = load_meta(out_dir)
    except (FileNotFoundError, json.JSONDecodeError, OSError):
        return False
    version = meta.get('format_version')
    return (meta.get('generator') == GENERATOR
            and isinstance(version, int) and version < FORMAT_VERSION)


def _written_by_us(out_dir: str) -> bool:
    """Whether ``out_dir/meta.json`` says this generator wrote ``out_dir`` (any format
    version): only such a folder may be replaced."""
    try:
        meta = load_meta(out_dir)
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError, OSError):
        return False
    return isinstance(meta, dict) and meta.get('generator') == GENERATOR


def _check_replaceable(out_dir: str) -> None:
    """Raise :class:`SyntheticDatasetExistsError` unless ``out_dir`` is absent, an empty
    folder, or a folder this generator wrote. Anything else is never replaced, ``overwrite``
    or not: ``--out data`` or ``--out .`` must not delete real data."""
    if not osp.lexists(out_dir):
        return
    if not osp.isdir(out_dir):
        raise SyntheticDatasetExistsError(
            f'{out_dir} exists and is not a directory; choose another output directory')
    if not os.listdir(out_dir) or _written_by_us(out_dir):
        return
    raise SyntheticDatasetExistsError(
        f'{out_dir} is not empty and is not a synthetic dataset (no meta.json written by '
        f'this generator), so it is not replaced, with --overwrite (overwrite=True) or '
        f'without: choose another output directory, or remove it yourself')


def _same_dataset(out_dir: str, params: dict) -> Tuple[bool, str]:
    """Whether ``out_dir`` already holds the dataset of ``params`` (and why not)."""
    try:
        meta = load_meta(out_dir)
    except (FileNotFoundError, json.JSONDecodeError) as e:
        return False, str(e)
    if meta.get('format_version') != FORMAT_VERSION:
        return False, (f"format_version {meta.get('format_version')} != {FORMAT_VERSION}")
    old = meta.get('params', {})
    diff = {k: (old.get(k), params[k]) for k in params if old.get(k) != params[k]}
    if diff:
        return False, 'parameters differ (existing, requested): ' + ', '.join(
            f'{k}={a!r} vs {b!r}' for k, (a, b) in diff.items())
    if not _is_complete(out_dir, meta):
        return False, 'files listed in meta.json are missing'
    return True, ''


def generate_motion_dataset(out_dir: str, num_train: int = 480, num_val: int = 160,
                            num_test: int = 160, num_frames: int = 16, size: int = 64,
                            fps: float = 8.0, pairs: Sequence[str] = DEFAULT_PAIRS,
                            captions_per_video: int = 5, twins: bool = True, seed: int = 0,
                            overwrite: bool = False, progress: bool = True) -> dict:
    """Generate the synthetic motion benchmark under ``out_dir`` (see the module docstring).

    Idempotent: if ``out_dir/meta.json`` records the same parameters and its files are
    present, nothing is written and the stored meta is returned. The dataset is built in a
    temporary sibling directory and renamed into place, so an interrupted run never leaves
    a directory that looks complete; concurrent calls (e.g. several ranks) are safe.

    Args:
        out_dir: destination directory (created; must be absent, empty, or hold a dataset
            made by this function: a folder whose ``meta.json`` does not say this generator
            wrote it is never replaced, ``overwrite`` or not). A symlink is followed: the
            dataset goes where it points, and the link stays.
        num_train / num_val / num_test: videos per split.
        num_frames: frames per video (T).
        size: frame side in pixels (even; frames are ``size`` x ``size``).
        fps: frame rate stored in the mp4 files.
        pairs: motion pairs, in label order (subset of :data:`MOTION_PAIRS`).
        captions_per_video: distinct captions per video for retrieval.
        twins: each trajectory is written forward *and* backward (see module docstring).
        seed: global seed.
        overwrite: replace an existing dataset generated (by this function) with other
            parameters.
        progress: show a progress bar (stan_mm.utils.progress: tqdm on a terminal, a line
            every 30 s when stderr is redirected).

    Returns:
        The meta dict written to ``out_dir/meta.json``.
    """
    params = _params(num_train, num_val, num_test, num_frames, size, fps, pairs,
                     captions_per_video, twins, seed)
    # a symlink (e.g. data/ -> a scratch disk) is followed: the dataset is built beside
    # and renamed to what it points to, and the link stays (replacing the link put the
    # videos on the link's disk instead, as the CLIP converter did not)
    from stan_mm.engine.checkpoint_hook import output_folder
    out_dir = output_folder(out_dir)
    same, reason = _same_dataset(out_dir, params)
    if same:
        return load_meta(out_dir)
    _check_replaceable(out_dir)   # never replace what this generator did not write
    if osp.exists(out_dir) and not overwrite and _older_format(out_dir):
        warnings.warn(f'{out_dir} holds this benchmark in an older format ({reason}); '
                      'regenerating it')
        overwrite = True
    if not overwrite and _written_by_us(out_dir):
        raise SyntheticDatasetExistsError(
            f'{out_dir} holds a synthetic dataset that is not the one asked for ({reason}). '
            'Delete it (the quickstart configs then regenerate it on first use), pass '
            'overwrite=True (tools/data/make_synthetic.py: --overwrite) to replace it, or '
            'choose another output directory.')

    parent = osp.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.{osp.basename(out_dir)}.tmp-', dir=parent)
    try:
        counts = {'train': num_train, 'val': num_val, 'test': num_test}
        specs, first_id = {}, 0
        for split in SPLITS:
            specs[split] = make_video_specs(
                split, counts[split], seed=seed, pairs=params['pairs'], num_frames=num_frames,
                captions_per_video=captions_per_video, twins=twins, first_id=first_id)
            first_id += counts[split]
        video_dir = osp.join(tmp, 'videos')
        os.makedirs(video_dir)
        from stan_mm.utils.progress import progress_bar
        all_specs = [s for split in SPLITS for s in specs[split]]
        for i, spec in enumerate(progress_bar(all_specs, desc=f'synthetic videos -> {out_dir}',
                                              unit='video', disable=not progress,
                                              leave=False)):
            write_video(osp.join(video_dir, spec['filename']), render_video(spec, size), fps)
            if i == 0:   # named by where it will live (tmp is renamed to out_dir)
                _check_decodable(osp.join(video_dir, spec['filename']), size,
                                 shown=osp.join(out_dir, 'videos', spec['filename']))
        _write_annotations(tmp, specs, params)
        _move_into_place(tmp, out_dir, params)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_meta(out_dir)


def _check_decodable(path: str, size: int, shown: Optional[str] = None) -> None:
    """Warn when decord 0.6.0 cannot decode what was written (it fails on mp4v frames 16,
    24, 48 or 72 pixels wide, for instance): MMAction2's stock ``DecordInit``/``DecordDecode``
    would then fail in a worker; stan-mm's ``SafeDecordInit``/``SafeDecordDecode`` fall
    back to OpenCV for such files."""
    try:
        import decord
    except ImportError:  # pragma: no cover - decord is a requirement
        return
    try:
        decord.VideoReader(osp.abspath(path)).get_batch([0]).asnumpy()  # no protocol
    except Exception as e:
        warnings.warn(f'size={size}: decord cannot decode the generated video {shown or path} '
                      f'({type(e).__name__}); use SafeDecordInit/SafeDecordDecode (OpenCV '
                      f'fallback) in the pipeline or another frame size, e.g. 32, 64 or 96')


def _move_into_place(tmp: str, out_dir: str, params: dict) -> None:
    """Rename ``tmp`` to ``out_dir``, replacing what is there: nothing, an empty folder or a
    dataset of this generator (checked here too); the renames are
    :func:`~stan_mm.engine.checkpoint_hook.replace_folder`'s."""
    from stan_mm.engine.checkpoint_hook import replace_folder
    if _same_dataset(out_dir, params)[0]:  # another process finished the same dataset
        shutil.rmtree(tmp, ignore_errors=True)
        return
    _check_replaceable(out_dir)   # (again: it may have changed while generating)
    try:
        replace_folder(tmp, out_dir)
    except OSError:
        if _same_dataset(out_dir, params)[0]:  # another process finished the same dataset
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            raise


# --------------------------------------------------------------------------- evaluation
def paired_direction_accuracy(scores, labels) -> float:
    """How often the true class outscores its time-reversed partner (label ``c ^ 1``).

    This isolates temporal direction from recognising which motion pair it is: a model
    blind to frame order gives (near-)equal scores to a twin's two directions and sits at
    0.5; ties count as half.

    Args:
        scores: ``[N, C]`` class scores (logits or probabilities), C even.
        labels: ``[N]`` integer labels in ``[0, C)``.

    Returns:
        Mean over the N samples of ``1[s_y > s_partner] + 0.5 * 1[s_y == s_partner]``.
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if scores.ndim != 2 or scores.shape[1] % 2 or labels.shape != (scores.shape[0], ):
        raise ValueError(f'expected scores [N, C] with C even and labels [N], got '
                         f'{scores.shape} and {labels.shape}')
    if labels.size == 0 or labels.min() < 0 or labels.max() >= scores.shape[1]:
        raise ValueError(f'labels must be non-empty and in [0, {scores.shape[1]})')
    rows = np.arange(len(labels))
    own, partner = scores[rows, labels], scores[rows, labels ^ 1]
    return float(np.mean((own > partner) + 0.5 * (own == partner)))
