"""The exact fast path for MMAction2's Resize (stan_mm/datasets/transforms/fast_paths.py):
frames already at the target size are handed on, bit for bit what cv2.resize returns."""
import numpy as np
import pytest

import stan_mm  # noqa: F401  (installs the fast path)
from mmaction.datasets.transforms import Resize
from mmcv.image.geometric import cv2_interp_codes

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
