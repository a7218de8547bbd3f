"""The exact fast paths for MMAction2's transforms (stan_mm/datasets/transforms/fast_paths.py):
Resize hands on frames already at the target size, bit for bit what cv2.resize returns;
FormatShape uses the array a list of frames tiles instead of copying it; UniformSample draws
a training clip's indices in one call, the same indices and generator state as MMAction2's
loop. The first two apply only to frames the pipeline owns (``mark_owned``, what stan_mm's
decoder does): frames made here are marked where a test is about the fast path itself;
tests/test_fast_path_ownership.py covers the caller's frames and the decoder."""
import os

import numpy as np
import pytest

import stan_mm  # noqa: F401  (installs the fast path)
from mmaction.datasets.transforms import FormatShape, Resize, UniformSample
from mmcv.image.geometric import cv2_interp_codes

from stan_mm.datasets.transforms.fast_paths import mark_owned, tiled_array

cv2 = pytest.importorskip('cv2')
SHAPES = [(256, 340, 3), (17, 33, 3), (240, 426, 4), (5, 7)]


@pytest.mark.parametrize('dtype', [np.uint8, np.float32, np.uint16])
def test_cv2_resize_to_the_same_size_is_a_copy(dtype):
    """The assumption behind the fast path, for every interpolation mmcv offers."""
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        img = (rng.random(shape) * 255).astype(dtype)
        for name, code in cv2_interp_codes.items():
            out = cv2.resize(img, (shape[1], shape[0]), interpolation=code)
            assert out.dtype == img.dtype and out.shape == img.shape, (name, shape)
            np.testing.assert_array_equal(out, img, err_msg=f'{name} {shape} {dtype}')


def _run(resize, imgs, patched=True):
    """``resize`` on a copy of the frame list, with or without the fast path."""
    h, w = imgs[0].shape[:2]
    results = dict(imgs=list(imgs), img_shape=(h, w), modality='RGB')
    if patched:
        return resize(results)
    saved = Resize._resize_imgs
    Resize._resize_imgs = saved.__wrapped__           # MMAction2's own method
    try:
        return resize(results)
    finally:
        Resize._resize_imgs = saved


@pytest.mark.parametrize('interpolation', sorted(cv2_interp_codes))
@pytest.mark.parametrize('config,size', [
    (dict(scale=(-1, 256)), (256, 340)),                        # short side already 256
    (dict(scale=(340, 256), keep_ratio=False), (256, 340)),
    (dict(scale=(-1, 256)), (240, 426)),                        # SSv2: a real resize
    (dict(scale=(224, 224), keep_ratio=False), (190, 150)),
])
def test_resize_equals_mmaction_without_the_fast_path(interpolation, config, size):
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(4)]
    mark_owned(imgs)                  # as if decoded by SafeDecordDecode
    resize = Resize(**config, interpolation=interpolation)
    fast = _run(resize, imgs)
    slow = _run(resize, imgs, patched=False)
    assert fast['img_shape'] == slow['img_shape']
    np.testing.assert_array_equal(fast['scale_factor'], slow['scale_factor'])
    assert len(fast['imgs']) == len(slow['imgs']) == 4
    for a, b in zip(fast['imgs'], slow['imgs']):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    unchanged = tuple(fast['img_shape']) == size
    # the fast path is taken exactly when the size does not change: no copies then
    assert all((a is b) == unchanged for a, b in zip(fast['imgs'], imgs))
    # a real resize writes every frame into one array (FormatShape then keeps it)
    assert (tiled_array(fast['imgs']) is not None) == (not unchanged)
    assert tiled_array(slow['imgs']) is None
    # the caller's frames (not owned): MMAction2's copies, the same values
    theirs = [f.copy() for f in imgs]
    got = _run(resize, theirs)['imgs']
    assert not any(a is b for a, b in zip(got, theirs))
    for a, b in zip(got, slow['imgs']):
        np.testing.assert_array_equal(a, b)


def test_unchanged_size_copies_frames_that_cannot_stand_in_for_copies():
    """The skip hands frames on only when they behave like cv2.resize's copies; otherwise
    MMAction2's copies. Checked through an in-place Flip after Resize, which is where
    aliasing shows: a repeated frame object (PyAVDecode repeats one array for a repeated
    index) would be flipped once per slot, a negative-stride view (OpenCVDecode's
    BGR->RGB) makes cv2.flip fail, a read-only frame cannot be flipped in place."""
    from mmaction.datasets.transforms import Flip
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (3, 8, 10, 3), dtype=np.uint8)
    shared = np.ascontiguousarray(base[0])
    readonly = base[1].copy()
    readonly.flags.writeable = False
    cases = {
        'same object twice': [shared, shared, base[2].copy()],
        'same memory, two views': [base[0], base[0][...], base[1]],
        'negative strides': [f[:, :, ::-1] for f in base],
        'read-only': [readonly, base[2].copy()],
        'int64 (cv2 makes it int32)': [f.astype(np.int64) for f in base],
    }
    resize = Resize(scale=(-1, 8))
    for name, imgs in cases.items():
        mark_owned(imgs)              # owned: the other conditions decide
        expect = _run(resize, [f.copy() for f in imgs], patched=False)
        got = _run(resize, list(imgs))
        assert [a.dtype for a in got['imgs']] == [b.dtype for b in expect['imgs']], name
        assert not any(a is b for a, b in zip(got['imgs'], imgs)), name
        flipped = Flip(flip_ratio=1.0)(dict(got, modality='RGB'))['imgs']
        for a, f in zip(flipped, imgs):
            np.testing.assert_array_equal(a, np.asarray(f)[:, ::-1], err_msg=name)
    # frames that can stand in for copies are handed on as they are (the fast path)
    distinct = list(base.copy())
    assert not any(a is b for a, b in zip(_run(resize, distinct)['imgs'], distinct))
    mark_owned(distinct)              # ... once the pipeline owns them
    assert all(a is b for a, b in zip(_run(resize, distinct)['imgs'], distinct))


@pytest.mark.parametrize('dtype', [np.uint8, np.uint16, np.float32])
def test_resize_into_one_array_equals_mmaction(dtype, monkeypatch):
    rng = np.random.default_rng(4)
    imgs = [(rng.random((30, 41, 3)) * 255).astype(dtype) for _ in range(3)]
    for interpolation in sorted(cv2_interp_codes):
        resize = Resize(scale=(17, 23), keep_ratio=False, interpolation=interpolation)
        fast, slow = _run(resize, imgs), _run(resize, imgs, patched=False)
        assert tiled_array(fast['imgs']) is not None
        for a, b in zip(fast['imgs'], slow['imgs']):
            assert a.dtype == b.dtype and a.shape == b.shape == (23, 17, 3)
            np.testing.assert_array_equal(a, b, err_msg=interpolation)
    # frames of two sizes, and mmcv's pillow backend: MMAction2's own path
    mixed = imgs[:2] + [(rng.random((31, 41, 3)) * 255).astype(dtype)]
    resize = Resize(scale=(17, 23), keep_ratio=False)
    fast = _run(resize, mixed)
    assert tiled_array(fast['imgs']) is None
    for a, b in zip(fast['imgs'], _run(resize, mixed, patched=False)['imgs']):
        np.testing.assert_array_equal(a, b)
    if dtype == np.uint8:
        from mmcv.image import geometric
        monkeypatch.setattr(geometric, 'imread_backend', 'pillow')
        fast, slow = _run(resize, imgs), _run(resize, imgs, patched=False)
        assert tiled_array(fast['imgs']) is None
        for a, b in zip(fast['imgs'], slow['imgs']):
            np.testing.assert_array_equal(a, b)


def test_single_channel_frames_keep_cv2_shape():
    """cv2.resize returns [H, W] for an [H, W, 1] frame; the fast path leaves those alone."""
    imgs = [np.full((16, 20, 1), 7, np.uint8)] * 2
    resize = Resize(scale=(20, 16), keep_ratio=False)
    fast, slow = _run(resize, imgs), _run(resize, imgs, patched=False)
    assert [a.shape for a in fast['imgs']] == [b.shape for b in slow['imgs']] == [(16, 20)] * 2


def test_fast_path_is_installed_once():
    from stan_mm.datasets.transforms.fast_paths import apply_resize_fast_path
    before = Resize._resize_imgs
    apply_resize_fast_path()
    assert Resize._resize_imgs is before
    assert not getattr(Resize._resize_imgs.__wrapped__, '_stan_mm_fast_path', False)


# --------------------------------------------------------------------------- FormatShape
def _format(imgs, input_format, patched=True, num_clips=1):
    results = dict(imgs=imgs, num_clips=num_clips, clip_len=len(imgs) // num_clips,
                   modality='RGB')
    fmt = FormatShape(input_format=input_format)
    if patched:
        return fmt(results)
    saved = FormatShape.transform
    FormatShape.transform = saved.__wrapped__
    try:
        return fmt(results)
    finally:
        FormatShape.transform = saved


def _frame_lists():
    """(name, frames, whether they tile one array)"""
    rng = np.random.default_rng(2)
    clip = rng.integers(0, 256, (8, 6, 5, 3), dtype=np.uint8)
    separate = [f.copy() for f in clip]
    read_only = clip.copy()
    read_only.flags.writeable = False
    strided = rng.integers(0, 256, (8, 6, 10, 3), dtype=np.uint8)[:, :, ::2]
    yield 'views', list(clip), True
    yield 'views of a float clip', list(clip.astype(np.float32)), True
    yield 'separate arrays', separate, False
    yield 'views, reordered', list(clip[::-1]), False
    yield 'views, one swapped', [clip[1], clip[0]] + list(clip[2:]), False
    yield 'views of part of an array', list(clip)[:4], False
    yield 'a view and a copy', [clip[0].copy()] + list(clip[1:]), False
    yield 'strided views', list(strided), False
    yield 'read-only array', list(read_only), False
    yield 'crops of the views', [f[1:5, 1:4] for f in clip], False


@pytest.mark.parametrize('input_format', ['NCTHW', 'NCHW'])
def test_format_shape_equals_mmaction_without_the_fast_path(input_format):
    for owned in (True, False):
        for name, imgs, tiles in _frame_lists():      # new arrays every time
            if owned:
                mark_owned(imgs)
            fast = _format(list(imgs), input_format)
            slow = _format(list(imgs), input_format, patched=False)
            assert fast['imgs'].dtype == slow['imgs'].dtype, name
            assert fast['imgs'].shape == slow['imgs'].shape == fast['input_shape'], name
            assert fast['imgs'].strides == slow['imgs'].strides, name
            np.testing.assert_array_equal(fast['imgs'], slow['imgs'], err_msg=name)
            # the copy is skipped exactly when the frames tile one writeable array that
            # the pipeline owns
            assert np.shares_memory(fast['imgs'], imgs[0]) == (tiles and owned), name
            assert not np.shares_memory(slow['imgs'], imgs[0]), name


def test_format_shape_after_clip_randaugment_skips_the_copy():
    """ClipRandAugment returns views of its output array; FormatShape keeps that array."""
    from stan_mm.datasets.transforms.clip_randaugment import ClipRandAugment
    rng = np.random.default_rng(3)
    imgs = [rng.integers(0, 256, (12, 10, 3), dtype=np.uint8) for _ in range(4)]
    torch = pytest.importorskip('torch')
    for seed in range(20):
        torch.manual_seed(seed)
        out = ClipRandAugment(num_ops=2, magnitude=21)(dict(imgs=list(imgs)))['imgs']
        if any(a is b for a, b in zip(out, imgs)):
            continue                   # only Identity drawn: the input frames themselves
        fast = _format(out, 'NCTHW')
        np.testing.assert_array_equal(fast['imgs'][0], np.stack(out).transpose(3, 0, 1, 2))
        assert np.shares_memory(fast['imgs'], out[0])
        return
    pytest.fail('no seed drew a non-Identity op')


# --------------------------------------------------------------------------- UniformSample
def _sample(sampler, num_frames, patched=True):
    if patched:
        return sampler._get_sample_clips(num_frames)
    return UniformSample._get_sample_clips.__wrapped__(sampler, num_frames)


@pytest.mark.parametrize('clip_len', [1, 3, 8, 16, 32])
def test_uniform_sample_draws_what_mmaction_draws(clip_len):
    """Same indices and same generator state afterwards, over seeds and frame counts
    (fewer frames than clip_len included)."""
    sampler = UniformSample(clip_len=clip_len)
    for num_frames in (1, 2, 5, 8, 9, 17, 64, 301, 1000, 2 ** 20):
        for seed in range(40):
            np.random.seed(seed)
            fast = _sample(sampler, num_frames)
            after_fast = np.random.random()
            np.random.seed(seed)
            slow = _sample(sampler, num_frames, patched=False)
            after_slow = np.random.random()
            assert fast.dtype == slow.dtype and fast.shape == slow.shape == (clip_len,)
            np.testing.assert_array_equal(fast, slow, err_msg=f'{num_frames} {seed}')
            assert after_fast == after_slow
            assert fast.min() >= 0 and fast.max() <= num_frames - 1


def test_uniform_sample_transform_and_test_mode():
    np.random.seed(0)
    fast = UniformSample(clip_len=8)(dict(total_frames=np.int64(90), start_index=1))
    np.random.seed(0)
    saved = UniformSample._get_sample_clips
    UniformSample._get_sample_clips = saved.__wrapped__
    try:
        slow = UniformSample(clip_len=8)(dict(total_frames=np.int64(90), start_index=1))
        test_slow = UniformSample(clip_len=8, num_clips=2, test_mode=True)._get_sample_clips(90)
    finally:
        UniformSample._get_sample_clips = saved
    assert fast['frame_inds'].dtype == slow['frame_inds'].dtype == np.int32
    np.testing.assert_array_equal(fast['frame_inds'], slow['frame_inds'])
    test_fast = UniformSample(clip_len=8, num_clips=2, test_mode=True)._get_sample_clips(90)
    np.testing.assert_array_equal(test_fast, test_slow)


def test_disabled_restores_mmaction_and_the_copy(tmp_path):
    from stan_mm.datasets.transforms import fast_paths, video_io
    patched = (Resize._resize_imgs, FormatShape.transform, UniformSample._get_sample_clips)
    assert video_io.ZERO_COPY
    with fast_paths.disabled():
        assert (Resize._resize_imgs, FormatShape.transform,
                UniformSample._get_sample_clips) == tuple(f.__wrapped__ for f in patched)
        assert not video_io.ZERO_COPY
        clip = np.zeros((2, 4, 5, 3), np.uint8)
        assert not np.shares_memory(_format(list(clip), 'NCTHW')['imgs'], clip)
    assert (Resize._resize_imgs, FormatShape.transform,
            UniformSample._get_sample_clips) == patched
    assert video_io.ZERO_COPY
    assert not np.shares_memory(_format(list(clip), 'NCTHW')['imgs'], clip)  # not owned
    mark_owned(clip)
    assert np.shares_memory(_format(list(clip), 'NCTHW')['imgs'], clip)
    with pytest.raises(KeyError):
        with fast_paths.disabled():
            raise KeyError('restored on errors too')
    assert FormatShape.transform is patched[1] and video_io.ZERO_COPY


def test_environment_variable_turns_them_off():
    import subprocess
    import sys
    code = ('import stan_mm; from mmaction.datasets.transforms import Resize, FormatShape; '
            'from stan_mm.datasets.transforms import video_io; '
            "print(hasattr(Resize._resize_imgs, '__wrapped__'), "
            "hasattr(FormatShape.transform, '__wrapped__'), video_io.ZERO_COPY)")
    for value, expected in (('1', 'False False False'), ('0', 'True True True')):
        env = dict(os.environ, STAN_MM_NO_FAST_PATHS=value)
        out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True,
                             text=True, check=True).stdout.split('\n')
        assert out[-2] == expected, (value, out)


def test_fast_paths_are_installed_once():
    from stan_mm.datasets.transforms import fast_paths
    before = FormatShape.transform, UniformSample._get_sample_clips
    fast_paths.apply_format_shape_fast_path()
    fast_paths.apply_uniform_sample_fast_path()
    assert (FormatShape.transform, UniformSample._get_sample_clips) == before
