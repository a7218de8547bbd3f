"""The fast paths that hand on arrays (``Resize`` to the frames' own size, ``FormatShape`` on
a list of views; stan_mm/datasets/transforms/fast_paths.py) apply only to frames the
pipeline owns, i.e. made by stan_mm's transforms: a caller's own frames come back untouched
and the packed tensor does not share their memory, as with stock MMAction2 (review of the
fast paths), while stan_mm's own pipelines (decoded frames) keep the zero-copy paths."""
import gc
import random

import numpy as np
import pytest
import torch

import stan_mm  # noqa: F401  (installs the fast paths)
from mmaction.datasets.transforms import FormatShape, Resize
from mmengine.dataset import Compose
from mmengine.registry import init_default_scope

from stan_mm.datasets.transforms import fast_paths, video_io

cv2 = pytest.importorskip('cv2')
init_default_scope('mmaction')

T, H, W = 4, 16, 20


def _user_frames(kind, seed=0):
    """The caller's frames: ``'views'`` of one uint8 array (a list), ``'separate'`` arrays
    (a list) or the ``'array'`` ``[T, H, W, 3]`` itself; plus everything the caller holds."""
    clip = np.random.default_rng(seed).integers(0, 256, (T, H, W, 3), dtype=np.uint8)
    if kind == 'views':
        frames = list(clip)
        return frames, [clip] + frames
    if kind == 'separate':
        frames = [f.copy() for f in clip]
        return frames, list(frames)
    return clip, [clip]


def _pipeline(input_format, flip=True):
    """The reviewer's stock pipeline: Resize to the frames' own size, Flip, FormatShape,
    PackActionInputs."""
    return Compose([dict(type='Resize', scale=(W, H), keep_ratio=False)]
                   + ([dict(type='Flip', flip_ratio=1.0)] if flip else [])
                   + [dict(type='FormatShape', input_format=input_format),
                      dict(type='PackActionInputs')])


def _run(pipe, imgs):
    return pipe(dict(imgs=imgs, img_shape=(H, W), original_shape=(H, W), modality='RGB',
                     num_clips=1, clip_len=T, label=0))['inputs']


def _stock(input_format, kind, flip=True):
    """What MMAction2 alone gives (fast paths off), on fresh frames of the same values."""
    with fast_paths.disabled():
        return _run(_pipeline(input_format, flip), _user_frames(kind)[0])


@pytest.mark.parametrize('kind', ['views', 'separate', 'array'])
@pytest.mark.parametrize('input_format', ['NCTHW', 'NCHW'])
def test_callers_frames_are_neither_flipped_nor_shared(input_format, kind):
    """The review's repro: a caller's frames through Resize(own size) > Flip > FormatShape >
    PackActionInputs with stan_mm imported."""
    frames, held = _user_frames(kind)
    before = [a.copy() for a in held]
    flipped = _run(_pipeline(input_format), frames)
    for a, b in zip(held, before):
        np.testing.assert_array_equal(a, b)          # not flipped in place
        assert not np.shares_memory(flipped.numpy(), a)
    assert torch.equal(flipped, _stock(input_format, kind))
    # test-time flip averaging: the plain pipeline on the same frames is not flipped
    plain = _run(_pipeline(input_format, flip=False), frames)
    assert torch.equal(plain, _stock(input_format, kind, flip=False))
    assert not torch.equal(plain, flipped)
    for a, b in zip(held, before):
        np.testing.assert_array_equal(a, b)
        assert not np.shares_memory(plain.numpy(), a)


@pytest.mark.parametrize('input_format', ['NCTHW', 'NCHW'])
def test_format_shape_copies_the_callers_views(input_format):
    """FormatShape alone on the caller's views of one array: a copy, as MMAction2 makes."""
    clip = np.random.default_rng(1).integers(0, 256, (T, H, W, 3), dtype=np.uint8)
    out = FormatShape(input_format=input_format)(dict(imgs=list(clip), num_clips=1,
                                                      clip_len=T, modality='RGB'))['imgs']
    assert not np.shares_memory(out, clip)
    out[...] = 0
    assert clip.any()


# --------------------------------------------------------------------------- owned frames
def _write_video(path, num_frames=24, height=48, width=64):
    """mp4v frames that differ everywhere (noise plus a level per frame)."""
    rng = np.random.default_rng(0)
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), 10.0, (width, height))
    assert vw.isOpened()
    for t in range(num_frames):
        vw.write(rng.integers(0, 40, (height, width, 3), dtype=np.uint8)
                 + np.uint8((37 * t) % 200))
    vw.release()
    return str(path)


@pytest.fixture(scope='module')
def video(tmp_path_factory):
    return _write_video(tmp_path_factory.mktemp('ownership') / 'noise.mp4')


def _steps(transforms, results):
    """Apply ``transforms`` one by one; ``results['imgs']`` after each (the list object as
    it was then, and its frames)."""
    seen = []
    for t in Compose(transforms).transforms:
        results = t(results)
        imgs = results.get('imgs')
        seen.append(list(imgs) if isinstance(imgs, list) else imgs)
    return results, seen


K400_TAIL = [dict(type='Resize', scale=(-1, 48)),           # 64x48 video: its own size
             dict(type='RandomResizedCrop'),
             dict(type='Resize', scale=(32, 32), keep_ratio=False),
             dict(type='Flip', flip_ratio=0.5),
             dict(type='ClipRandAugment', num_ops=2, magnitude=21, num_magnitude_bins=31),
             dict(type='FormatShape', input_format='NCTHW'),
             dict(type='PackActionInputs')]
MSRVTT_TAIL = [dict(type='Resize', scale=(-1, 48)),
               dict(type='RandomResizedCrop'),
               dict(type='Resize', scale=(32, 32), keep_ratio=False),
               dict(type='FormatShape', input_format='NCHW'),
               dict(type='PackActionInputs')]
HEAD = [dict(type='SafeDecordInit'), dict(type='UniformSample', clip_len=8),
        dict(type='SafeDecordDecode')]


def _seed(seed):
    random.seed(seed)             # RandomResizedCrop's offsets
    np.random.seed(seed)
    torch.manual_seed(seed)


@pytest.mark.parametrize('tail', [K400_TAIL, MSRVTT_TAIL], ids=['k400', 'msrvtt'])
def test_decoded_frames_take_both_fast_paths(video, tail):
    """stan_mm's training pipelines (K400, MSR-VTT layout) on a decoded clip: the first
    Resize hands on the decoded frames themselves and FormatShape keeps the array the frames
    before it tile (no copy); the output equals MMAction2's without the fast paths. The
    caller's copies of the same frames through the same transforms are copied instead."""
    for seed in range(3):
        _seed(seed)
        results, seen = _steps(HEAD + tail, dict(filename=video, start_index=0,
                                                 modality='RGB', label=0))
        decoded, resized, before_format = seen[2], seen[3], seen[-3]
        assert len(resized) == 8 and all(a is b for a, b in zip(resized, decoded))
        assert np.shares_memory(seen[-2], before_format[0])       # FormatShape: no copy
        assert np.shares_memory(results['inputs'].numpy(), seen[-2])
        with fast_paths.disabled():
            _seed(seed)
            stock = Compose(HEAD + tail)(dict(filename=video, start_index=0,
                                              modality='RGB', label=0))
        assert torch.equal(results['inputs'], stock['inputs'])
        # the same frames as the caller's own: copied by the first Resize, left as they are
        _seed(seed)
        head = Compose(HEAD)(dict(filename=video, start_index=0, modality='RGB', label=0))
        theirs = head['imgs'] = [f.copy() for f in head['imgs']]
        kept = [f.copy() for f in theirs]
        again, seen = _steps(tail, head)
        assert not any(a is b for a, b in zip(seen[0], theirs))
        for a, b in zip(theirs, kept):
            np.testing.assert_array_equal(a, b)
            assert not np.shares_memory(again['inputs'].numpy(), a)
        assert torch.equal(again['inputs'], stock['inputs'])
        assert all(fast_paths.is_owned(f) for f in decoded)
        assert not any(fast_paths.is_owned(f) for f in theirs)


@pytest.mark.parametrize('zero_copy', [True, False])
def test_repeated_and_reordered_indices_are_owned(video, monkeypatch, zero_copy):
    """Indices out of stream order with repeats (the stream-order path; a repeated frame is
    handed out as a copy), with and without decord's zero-copy batch: every frame is owned,
    so Resize to their own size hands them on, and Flip acts on each slot once."""
    monkeypatch.setattr(video_io, 'ZERO_COPY', zero_copy)
    inds = np.array([9, 2, 2, 5, 9, 0, 2, 7])
    results = Compose([dict(type='SafeDecordInit')])(dict(filename=video, start_index=0,
                                                          modality='RGB'))
    results['frame_inds'] = inds
    decoded = Compose([dict(type='SafeDecordDecode')])(results)['imgs']
    expect = [f[:, ::-1].copy() for f in decoded]
    theirs = [f.copy() for f in decoded]           # the same frames, held by the caller
    flip = Compose([dict(type='Resize', scale=(-1, 48)), dict(type='Flip', flip_ratio=1.0)])
    for imgs, owned in ((theirs, False), (decoded, True)):
        out = flip(dict(imgs=list(imgs), img_shape=(48, 64), modality='RGB'))['imgs']
        assert all((a is b) == owned for a, b in zip(out, imgs))
        for a, b in zip(out, expect):
            np.testing.assert_array_equal(a, b)
    assert all(fast_paths.is_owned(f) for f in decoded)


def test_opencv_fallback_frames_are_owned(tmp_path, monkeypatch):
    """An 8 px wide mp4v video (a width decord 0.6.0 cannot copy) is decoded by OpenCV; its
    frames are owned too."""
    path = _write_video(tmp_path / 'tiny.mp4', num_frames=10, height=8, width=8)
    calls = []
    original = video_io.decode_frames_opencv

    def spy(*args, **kwargs):
        calls.append(args[1])
        return original(*args, **kwargs)

    monkeypatch.setattr(video_io, 'decode_frames_opencv', spy)
    results = Compose(HEAD[:1] + [dict(type='UniformSample', clip_len=4, test_mode=True)]
                      + HEAD[2:])(dict(filename=path, start_index=0, modality='RGB'))
    if not calls:
        pytest.skip('decord decoded the 8 px wide video itself')
    decoded = results['imgs']
    theirs = [f.copy() for f in decoded]
    resize = Resize(scale=(8, 8), keep_ratio=False)
    assert not any(a is b for a, b in zip(resize(dict(results, imgs=list(theirs)))['imgs'],
                                          theirs))
    out = resize(dict(results))['imgs']
    assert all(a is b for a, b in zip(out, decoded))
    assert all(fast_paths.is_owned(f) for f in decoded)


def test_clip_randaugment_output_is_owned_and_its_input_is_not_claimed():
    """ClipRandAugment's new array is kept by FormatShape (no copy); when it draws only
    Identity the caller's frames (views of the caller's array) come back as they were, and
    FormatShape copies them."""
    from stan_mm.datasets.transforms.clip_randaugment import ClipRandAugment
    rng = np.random.default_rng(3)
    drawn = set()
    for seed in range(40):
        clip = rng.integers(0, 256, (4, 12, 10, 3), dtype=np.uint8)
        imgs = list(clip)
        torch.manual_seed(seed)
        out = ClipRandAugment(num_ops=1, magnitude=9)(dict(imgs=list(imgs)))['imgs']
        identity = all(a is b for a, b in zip(out, imgs))
        drawn.add(identity)
        packed = FormatShape(input_format='NCTHW')(dict(imgs=out, num_clips=1, clip_len=4,
                                                        modality='RGB'))['imgs']
        assert np.shares_memory(packed, out[0]) == (not identity)
        assert not np.shares_memory(packed, clip)
        assert all(fast_paths.is_owned(f) for f in out) == (not identity)
        assert not fast_paths.is_owned(clip)
    assert drawn == {True, False}


def test_registry_holds_weak_references_and_checks_identity():
    """Entries go with their arrays (no growth over many clips); a new array at a reused
    id is not owned; views and crops of an owned array are."""
    reg = fast_paths._OWNED
    gc.collect()
    start = len(reg)
    for _ in range(200):
        clip = np.zeros((4, 6, 5, 3), np.uint8)
        fast_paths.mark_owned(list(clip))
        assert fast_paths.is_owned(clip[1]) and fast_paths.is_owned(clip[2, 1:3])
        del clip
    gc.collect()
    assert len(reg) <= start
    arr = np.zeros(3)
    fast_paths.mark_owned(arr)
    key = id(arr)
    del arr
    gc.collect()
    assert key not in reg
    a, b = np.zeros(3), np.zeros(3)
    reg[id(b)] = a                        # what a reused id would look like: another array
    try:
        assert not fast_paths.is_owned(b) and not fast_paths.is_owned(b[1:])
    finally:
        del reg[id(b)]
