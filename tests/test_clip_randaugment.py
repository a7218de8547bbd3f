"""ClipRandAugment against torchvision 0.29's RandAugment on the same uint8 frames.

Reference: ``torchvision.transforms.autoaugment._apply_op`` (what ``RandAugment`` calls;
it dispatches to ``torchvision.transforms.functional``) on the ``[T, 3, H, W]`` tensor of
the same frames, and ``TorchVisionWrapper(op='RandAugment')`` for whole draws.

Tolerances, and why:
* colour / lookup-table ops (Brightness, Color, Contrast, Sharpness, Posterize, Solarize,
  AutoContrast, Equalize): exactly equal. They are computed with torchvision's float32
  operation order and its truncation to uint8, so there is no rounding slack to allow.
* geometric ops, NEAREST: exactly equal. The source pixels are torchvision's own choice
  (its op run on an image of pixel coordinates), so the coordinates on exact .5 ties (shear
  levels 4 and 20) round as torch's float32 grid rounds them on this CPU. (Computing the
  grid in numpy instead matched on an AMD EPYC but missed 15-108 pixels per case on an
  Intel Xeon, whose BLAS kernel fuses the multiply-adds.)
* geometric ops, BILINEAR (not used by the configs): OpenCV quantises the sampling point
  to 1/32 pixel and interpolates in fixed point, torchvision in float32, so where the
  image changes fast the two differ by a few grey levels (up to ~255/32 at a full-range
  edge). On these noisy test frames, over all 31 levels: >= 97% of pixels within 1 grey
  level, at most 8 apart; asserted: >= 95% within 1, at most 10 apart.
"""
import math

import numpy as np
import pytest
import torch
from torchvision.transforms import InterpolationMode, RandAugment
from torchvision.transforms import autoaugment as tv_aa

import stan_mm  # noqa: F401  (registers the transforms)
from mmaction.registry import TRANSFORMS
from stan_mm.datasets.transforms import clip_randaugment as cra
from stan_mm.datasets.transforms.clip_randaugment import (RANDAUGMENT_OPS,
                                                          ClipRandAugment, apply_op,
                                                          randaugment_space, sample_ops)

SIZES = [(3, 37, 51), (3, 40, 64)]   # odd and even frame sizes, T = 3
COLOUR_OPS = ['Brightness', 'Color', 'Contrast', 'Sharpness', 'Posterize', 'Solarize',
              'AutoContrast', 'Equalize']
GEOMETRIC_OPS = ['ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Rotate']
# 4 and 20: shear factors 0.04 / 0.2 put whole rows of sampling points on .5 ties
LEVELS = [0, 4, 13, 20, 21, 30]
FILL = [10, 200, 128]


def make_clip(T: int, H: int, W: int, seed: int) -> np.ndarray:
    """uint8 [T, H, W, 3]: per-frame gradients, a coloured rectangle, a flat dark band
    and a saturated corner, plus noise (every frame different)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W]
    frames = []
    for t in range(T):
        f = np.stack([x * 255 // max(W - 1, 1), y * 255 // max(H - 1, 1),
                      (x + 2 * y + 37 * t) % 256], -1).astype(np.int64)
        y0, x0 = rng.integers(0, H - 8), rng.integers(0, W - 10)
        f[y0:y0 + 8, x0:x0 + 10] = rng.integers(0, 256, 3)
        f[H // 2:H // 2 + 3] = 7
        f[:4, :5] = 255
        f = f + rng.integers(-12, 13, f.shape)
        frames.append(np.clip(f, 0, 255).astype(np.uint8))
    return np.stack(frames)


def torchvision_op(clip: np.ndarray, op: str, magnitude: float, interpolation='nearest',
                   fill=None) -> np.ndarray:
    """torchvision's op on the [T, 3, H, W] tensor of the clip, back to [T, H, W, 3]."""
    tensor = torch.from_numpy(np.ascontiguousarray(clip.transpose(0, 3, 1, 2)))
    fill = None if fill is None else [float(f) for f in fill]
    out = tv_aa._apply_op(tensor, op, magnitude, InterpolationMode(interpolation), fill)
    return out.numpy().transpose(0, 2, 3, 1)


def signed_magnitudes(op: str, H: int, W: int, levels=LEVELS):
    mags, signed = randaugment_space(31, H, W)[op]
    if mags.ndim == 0:
        return [0.0]
    values = sorted({float(mags[lv].item()) for lv in levels})
    return values + [-v for v in values if v and signed]


# ----------------------------------------------------------------------------- sampling
def test_op_space_is_torchvisions():
    for bins, (H, W) in [(31, (224, 224)), (10, (37, 51))]:
        ref = RandAugment()._augmentation_space(bins, (H, W))
        ours = randaugment_space(bins, H, W)
        assert tuple(ref) == tuple(ours) == RANDAUGMENT_OPS
        for name, (mags, signed) in ref.items():
            assert ours[name][1] == signed
            assert torch.equal(ours[name][0], mags), name


@pytest.mark.parametrize('num_ops,magnitude,bins', [(2, 21, 31), (3, 9, 31), (1, 5, 10)])
def test_same_torch_seed_same_ops_as_torchvision(monkeypatch, num_ops, magnitude, bins):
    """Record the (op, magnitude) calls of torchvision's RandAugment.forward and compare
    with sample_ops after re-seeding: same random calls, same draws."""
    calls = []
    monkeypatch.setattr(tv_aa, '_apply_op',
                        lambda img, op, mag, interpolation, fill: calls.append((op, mag))
                        or img)
    aug = RandAugment(num_ops=num_ops, magnitude=magnitude, num_magnitude_bins=bins)
    img = torch.zeros(2, 3, 30, 50, dtype=torch.uint8)
    seen = set()
    for seed in range(60):
        torch.manual_seed(seed)
        calls.clear()
        aug(img)
        ref = list(calls)
        torch.manual_seed(seed)
        ours = sample_ops(num_ops, magnitude, bins, 30, 50)
        assert ours == ref, seed
        # and the generator is left in the same state
        torch.manual_seed(seed)
        aug(img)
        after_ref = torch.rand(1)
        torch.manual_seed(seed)
        sample_ops(num_ops, magnitude, bins, 30, 50)
        assert torch.equal(torch.rand(1), after_ref)
        seen.update((op, mag < 0) for op, mag in ours)
    assert len({op for op, _ in seen}) >= 12            # the draws cover the op set
    assert any(neg for _, neg in seen) and any(not neg for _, neg in seen)


# ----------------------------------------------------------------------------- per op
@pytest.mark.parametrize('size', SIZES)
@pytest.mark.parametrize('op', COLOUR_OPS)
def test_colour_ops_equal_torchvision(op, size):
    clip = make_clip(*size, seed=size[1])
    # plus a frame with a constant channel and a frame of one value (the degenerate
    # branches of AutoContrast / Equalize)
    flat = clip[:2].copy()
    flat[0, ..., 1] = 90
    flat[1] = 200
    # and channels spanning [11, 234], [0, 141], [30, 121]: AutoContrast's float32 scale
    # 255 / (max - min) must be rounded as torchvision rounds it (reciprocal, then x 255)
    lo, hi = np.array([11, 0, 30]), np.array([234, 141, 121])
    dim = clip.astype(np.int64) * (hi - lo) // 255 + lo
    dim[:, 0, 0], dim[:, -1, -1] = lo, hi
    dim = dim.astype(np.uint8)
    for frames in (clip, flat, dim):
        for mag in signed_magnitudes(op, *size[1:]):
            ref = torchvision_op(frames, op, mag)
            out = apply_op(frames, op, mag)
            assert out.dtype == np.uint8 and out.shape == frames.shape
            diff = np.abs(out.astype(int) - ref.astype(int))
            assert diff.max() == 0, (op, mag, int(diff.max()), int((diff > 0).sum()))


@pytest.mark.parametrize('size', SIZES)
@pytest.mark.parametrize('op', GEOMETRIC_OPS)
def test_geometric_ops_nearest_match_torchvision(op, size):
    clip = make_clip(*size, seed=size[2])
    for fill in (None, FILL):
        for mag in signed_magnitudes(op, *size[1:]):
            ref = torchvision_op(clip, op, mag, 'nearest', fill)
            out = apply_op(clip, op, mag, 'nearest', fill)
            differ = (out != ref).any(-1)                    # whole pixels
            assert not differ.any(), (op, mag, fill, int(differ.sum()))


def test_fractional_fill_is_rounded_as_torchvision_rounds_it():
    """torchvision turns the fill into float32 before rounding: 2.5000001 is 2.5 in float32
    (rounds to 2, half to even), 3.4999999 is 3.5 (rounds to 4); float64 would give 3, 3."""
    clip = make_clip(*SIZES[0], seed=1)
    fill = (2.5000001, 3.4999999, 127.5)
    ref = torchvision_op(clip, 'Rotate', 30.0, 'nearest', fill)
    out = apply_op(clip, 'Rotate', 30.0, 'nearest', fill)
    assert (ref[:, 0, 0] == [2, 4, 128]).all()             # a corner is all fill
    assert not (out != ref).any()


@pytest.mark.parametrize('op', GEOMETRIC_OPS)
def test_geometric_ops_bilinear_close_to_torchvision(op):
    T, H, W = SIZES[0]
    clip = make_clip(T, H, W, seed=3)
    for fill in (None, FILL):
        for mag in signed_magnitudes(op, H, W, levels=[4, 21, 30]):
            ref = torchvision_op(clip, op, mag, 'bilinear', fill)
            out = apply_op(clip, op, mag, 'bilinear', fill)
            diff = np.abs(out.astype(int) - ref.astype(int))
            assert (diff <= 1).mean() >= 0.95 and diff.max() <= 10, (
                op, mag, fill, (diff <= 1).mean(), diff.max())


def test_translate_is_an_integer_shift():
    """Hand check of the geometry: TranslateX by +d moves content d pixels right."""
    clip = make_clip(2, 20, 30, seed=0)
    out = apply_op(clip, 'TranslateX', 5.7)          # torchvision truncates to 5
    assert np.array_equal(out[:, :, 5:], clip[:, :, :-5]) and not out[:, :, :5].any()
    out = apply_op(clip, 'TranslateY', -3.2, fill=FILL)
    assert np.array_equal(out[:, :-3], clip[:, 3:])
    assert (out[:, -3:] == np.array(FILL, np.uint8)).all()


def test_posterize_and_solarize_by_hand():
    clip = make_clip(2, 9, 11, seed=1)
    assert np.array_equal(apply_op(clip, 'Posterize', 5.0), clip & 0b11111000)
    v = clip.astype(int)
    assert np.array_equal(apply_op(clip, 'Solarize', 76.5), np.where(v >= 76.5, 255 - v, v))


def _all_pairs():
    """uint8 ``[256, 256, 3]`` frame and other image covering every (pixel, other) pair:
    frame[i, j] = i, other[i, j] = j (all three channels)."""
    i, j = np.mgrid[0:256, 0:256].astype(np.uint8)
    return (np.repeat(i[..., None], 3, -1).copy(), np.repeat(j[..., None], 3, -1).copy(),
            np.ascontiguousarray(j))


@pytest.mark.parametrize('sign', [1.0, -1.0])
def test_blend_equals_torchvision_on_every_value_pair(sign):
    """The float32 blend behind Color and Sharpness, for every level's ratio of the op space
    and every (pixel, other) pair, against torchvision's own ``_blend``; the grey (2-D)
    input of Color gives the same bytes as its 3-channel copy."""
    from torchvision.transforms import _functional_tensor as tv_ft
    frame, other, grey = _all_pairs()
    ref_frame = torch.from_numpy(frame.transpose(2, 0, 1).copy())
    ref_other = torch.from_numpy(other.transpose(2, 0, 1).copy())
    mags = randaugment_space(31, 8, 8)['Color'][0]
    for mag in mags.tolist():
        ratio = 1.0 + sign * mag
        ref = tv_ft._blend(ref_frame, ref_other, ratio).numpy().transpose(1, 2, 0)
        blend = cra._Blender(frame.shape, ratio)
        out = np.empty_like(frame)
        blend(frame, blend.other_term(other), out)
        assert np.array_equal(out, ref), (ratio, int((out != ref).sum()))
        blend(frame, blend.other_term(grey), out)
        assert np.array_equal(out, ref), (ratio, 'grey', int((out != ref).sum()))


def test_grey_level_equals_torchvision_on_every_rgb_value():
    """The grey image behind Color and Contrast, on all 2**24 RGB values (16 frames of
    4096 x 256), against torchvision's ``rgb_to_grayscale``: the float32 products, their
    left-to-right sum and the truncation leave no pixel to chance."""
    from torchvision.transforms import functional as tv_f
    v = np.arange(256, dtype=np.uint8)
    for r0 in range(0, 256, 16):
        rgb = np.stack(np.meshgrid(v[r0:r0 + 16], v, v, indexing='ij'), -1)
        frame = np.ascontiguousarray(rgb.reshape(16 * 256, 256, 3))
        ref = tv_f.rgb_to_grayscale(torch.from_numpy(frame).permute(2, 0, 1)).numpy()[0]
        grey = cra._grey_frame(frame)
        assert np.array_equal(grey, ref), (r0, int((grey != ref).sum()))


def test_smoothing_equals_torchvision_on_extreme_frames():
    """Sharpness's 3x3 smoothing (integer box sum + 4 x centre, divided by 13 with
    rounding) against torchvision's ``_blurred_degenerate_image`` on full-range noise,
    a 0/255 checkerboard and flat 0 and 255 frames: the sums reach both ends of [0, 3315]."""
    from torchvision.transforms import _functional_tensor as tv_ft
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, (41, 57, 3), dtype=np.uint8)
    checker = (np.indices((41, 57)).sum(0) % 2 * 255).astype(np.uint8)
    frames = [noise, np.repeat(checker[..., None], 3, -1), np.zeros_like(noise),
              np.full_like(noise, 255), np.where(noise > 127, 255, 0).astype(np.uint8)]
    for frame in frames:
        frame = np.ascontiguousarray(frame)
        ref = tv_ft._blurred_degenerate_image(
            torch.from_numpy(frame.transpose(2, 0, 1).copy())).numpy().transpose(1, 2, 0)
        out = cra._smoothed(frame, np.empty_like(frame))
        assert np.array_equal(out[1:-1, 1:-1], ref[1:-1, 1:-1])
        for mag in (-0.9, -0.33, 0.42, 0.9):
            assert np.array_equal(apply_op(frame[None], 'Sharpness', mag)[0],
                                  torchvision_op(frame[None], 'Sharpness', mag)[0])


# ----------------------------------------------------------------------------- clip level
@pytest.mark.parametrize('op', RANDAUGMENT_OPS)
def test_each_frame_gets_the_op_as_if_alone(op):
    clip = make_clip(4, 29, 34, seed=5)
    mag = signed_magnitudes(op, 29, 34, levels=[21])[-1]
    out = apply_op(clip, op, mag)
    for i in range(len(clip)):
        assert np.array_equal(out[i], apply_op(clip[i:i + 1], op, mag)[0]), (op, i)


def test_transform_draws_once_per_clip():
    """With the same seed, frame i of the augmented clip equals frame i augmented alone."""
    aug = ClipRandAugment(num_ops=2, magnitude=21)
    clip = make_clip(4, 29, 34, seed=6)
    for seed in range(12):
        torch.manual_seed(seed)
        out = aug(dict(imgs=list(clip)))['imgs']
        for i in range(len(clip)):
            torch.manual_seed(seed)
            alone = aug(dict(imgs=[clip[i].copy()]))['imgs']
            assert np.array_equal(out[i], alone[0]), (seed, i)


@pytest.mark.parametrize('size', [(3, 37, 51), (8, 32, 32)])
def test_matches_torchvision_wrapper_draw_for_draw(size):
    """The config's transform against the one it replaces, seeded alike."""
    kwargs = dict(num_ops=2, magnitude=21, num_magnitude_bins=31)
    ours = TRANSFORMS.build(dict(type='ClipRandAugment', **kwargs))
    ref = TRANSFORMS.build(dict(type='TorchVisionWrapper', op='RandAugment', **kwargs))
    clip = make_clip(*size, seed=7)
    fractions = []
    for seed in range(40):
        torch.manual_seed(seed)
        expected = np.stack(ref(dict(imgs=list(clip)))['imgs'])
        torch.manual_seed(seed)
        got = ours(dict(imgs=list(clip)))['imgs']
        assert isinstance(got, list) and len(got) == size[0]
        fractions.append((np.stack(got) == expected).all(-1).mean())
    assert min(fractions) >= 0.99, min(fractions)


def test_container_types_and_input_untouched():
    aug = ClipRandAugment(num_ops=3, magnitude=21)
    clip = make_clip(3, 24, 26, seed=8)
    keep = clip.copy()
    for seed in range(8):
        torch.manual_seed(seed)
        out = aug(dict(imgs=clip))['imgs']
        assert isinstance(out, np.ndarray) and out.shape == clip.shape
        assert out.dtype == np.uint8
        torch.manual_seed(seed)
        out_list = aug(dict(imgs=list(clip)))['imgs']
        assert isinstance(out_list, list)
        assert all(f.flags.c_contiguous and f.shape == (24, 26, 3) for f in out_list)
        assert np.array_equal(np.stack(out_list), out)
    assert np.array_equal(clip, keep)


def test_no_op_drawn_leaves_results_alone():
    imgs = list(make_clip(2, 10, 12, seed=9))
    results = ClipRandAugment(num_ops=0)(dict(imgs=imgs))
    assert results['imgs'] is imgs


def test_config_pipelines_place_it_before_format_shape():
    from mmengine.config import Config
    import os.path as osp
    repo = osp.dirname(osp.dirname(osp.abspath(__file__)))
    for name in ('k400', 'ssv2'):
        cfg = Config.fromfile(osp.join(repo, 'configs', '_base_', 'datasets', f'{name}.py'))
        types = [t['type'] for t in cfg.train_pipeline]
        i = types.index('ClipRandAugment')
        assert i < types.index('FormatShape') and 'TorchVisionWrapper' not in types
        t = TRANSFORMS.build(cfg.train_pipeline[i])
        assert (t.num_ops, t.magnitude, t.num_magnitude_bins, t.interpolation) == (
            2, 21, 31, 'nearest')


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize('kwargs,field', [
    (dict(magnitude=31), 'magnitude'), (dict(magnitude=-1), 'magnitude'),
    (dict(magnitude=2.5), 'magnitude'), (dict(magnitude=True), 'magnitude'),
    (dict(num_ops=-1), 'num_ops'), (dict(num_magnitude_bins=1), 'num_magnitude_bins'),
    (dict(magnitude=10, num_magnitude_bins=10), 'magnitude'),
    (dict(interpolation='bicubic'), 'interpolation'), (dict(fill=[1, 2]), 'fill'),
    (dict(fill=300), 'fill'), (dict(fill='red'), 'fill'),
])
def test_bad_arguments_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f'ClipRandAugment: {field}'):
        ClipRandAugment(**kwargs)


@pytest.mark.parametrize('imgs,what', [
    (np.zeros((2, 8, 8, 3), np.float32), 'uint8'),                 # wrong dtype
    (np.zeros((2, 3, 8, 8), np.uint8), r'\[T, H, W, 3\]'),       # after FormatShape
    ([np.zeros((8, 8), np.uint8)], r'\[H, W, 3\]'),               # grey frames
    ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8)], 'same size'),
    ([np.zeros((8, 8, 3), np.float64)], 'uint8'),
    ([], 'non-empty'),
    ('frames', 'non-empty'),
])
def test_bad_imgs_raise_a_clear_error(imgs, what):
    with pytest.raises(ValueError, match=r"ClipRandAugment: results\['imgs'\]") as e:
        ClipRandAugment()(dict(imgs=imgs))
    assert e.match(what)


def test_missing_imgs_key():
    with pytest.raises(KeyError, match='ClipRandAugment.*imgs'):
        ClipRandAugment()(dict(filename='x.mp4'))


def test_apply_op_rejects_unknown_op_and_interpolation():
    clip = make_clip(1, 12, 14, seed=0)
    with pytest.raises(ValueError, match='unknown op'):
        apply_op(clip, 'Invert', 0.0)
    with pytest.raises(ValueError, match='interpolation'):
        apply_op(clip, 'Rotate', 10.0, interpolation='bicubic')


def test_sampling_maps_follow_torchvision_centre_convention():
    """Hand check: a 90 degree rotation of a square image about its centre maps output
    pixel (row r, col c) to input (x = W-1-r, y = c) (counter-clockwise)."""
    H = W = 6
    m = cra._geometric_matrix('Rotate', 90.0, H, W)
    mx, my = cra.sampling_maps(m, H, W)
    r, c = np.mgrid[0:H, 0:W]
    assert np.allclose(mx, W - 1 - r, atol=1e-4) and np.allclose(my, c, atol=1e-4)
    shear = cra._geometric_matrix('ShearX', math.tan(math.radians(10)), H, W)
    sx, sy = cra.sampling_maps(shear, H, W)
    assert np.allclose(sy, r, atol=1e-5)                      # rows stay rows
    assert np.allclose(sx[0], np.arange(W) + 0.5 * math.tan(math.radians(10)), atol=1e-4)
