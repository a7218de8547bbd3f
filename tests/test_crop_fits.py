"""A test crop that cannot fit the frames its Resize makes is refused from the config, before
any video is read (``stan_mm.apis.video.check_crop_fits``), by ``train.py`` / ``test.py`` and
by ``--views``. MMAction2's own transforms, run on real frames, are the reference: every case
refused here is one where they fail (ThreeCrop's bare AssertionError) or cut crops of the
wrong size, and every case accepted is one where they give crops of the requested size.
"""
import glob
import os.path as osp

import numpy as np
import pytest
from mmaction.datasets.transforms import CenterCrop, Resize, TenCrop, ThreeCrop
from mmengine.config import Config

import stan_mm  # noqa: F401
from stan_mm.apis.video import (CropSizeError, check_config_crops, check_crop_fits,
                                set_config_views)
from stan_mm.testing import load_script
from stan_mm.utils.cli import run_tool

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CROP_TYPES = {'ThreeCrop': ThreeCrop, 'CenterCrop': CenterCrop, 'TenCrop': TenCrop}
# landscape (K400's 340x256) and portrait frames, HxW
FRAMES = [(256, 340), (340, 256), (240, 320)]


def mmaction_crops_ok(resize: dict, crop: dict) -> bool:
    """Whether MMAction2's own Resize + crop give crops of the requested size on every frame
    shape of FRAMES (False on an exception, e.g. ThreeCrop's assert)."""
    r_args = {k: v for k, v in resize.items() if k != 'type'}
    c_args = {k: v for k, v in crop.items() if k != 'type'}
    size = c_args['crop_size']
    cw, ch = (size, size) if isinstance(size, int) else size
    for h, w in FRAMES:
        results = dict(imgs=[np.zeros((h, w, 3), np.uint8)] * 2, img_shape=(h, w),
                       modality='RGB', num_clips=1, clip_len=2)
        try:
            results = Resize(**r_args)(results)
            results = CROP_TYPES[crop['type']](**c_args)(results)
        except AssertionError:
            return False
        if any(img.shape[:2] != (ch, cw) for img in results['imgs']):
            return False
    return True


CASES = [
    # (resize, crop, refused)
    (dict(type='Resize', scale=(-1, 224)), dict(type='ThreeCrop', crop_size=224), False),
    (dict(type='Resize', scale=(-1, 256)), dict(type='ThreeCrop', crop_size=224), True),
    (dict(type='Resize', scale=(-1, 200)), dict(type='ThreeCrop', crop_size=224), True),
    (dict(type='Resize', scale=(256, -1)), dict(type='ThreeCrop', crop_size=224), True),
    (dict(type='Resize', scale=(-1, 256)), dict(type='CenterCrop', crop_size=224), False),
    (dict(type='Resize', scale=(-1, 200)), dict(type='CenterCrop', crop_size=224), True),
    (dict(type='Resize', scale=(-1, 200)), dict(type='TenCrop', crop_size=224), True),
    (dict(type='Resize', scale=(-1, 224)), dict(type='TenCrop', crop_size=224), False),
    (dict(type='Resize', scale=(300, 224), keep_ratio=False),
     dict(type='ThreeCrop', crop_size=224), False),
    (dict(type='Resize', scale=(300, 250), keep_ratio=False),
     dict(type='ThreeCrop', crop_size=224), True),
    (dict(type='Resize', scale=(200, 250), keep_ratio=False),
     dict(type='CenterCrop', crop_size=224), True),
    (dict(type='Resize', scale=(230, 250), keep_ratio=False),
     dict(type='CenterCrop', crop_size=224), False),
]


@pytest.mark.parametrize('resize, crop, refused', CASES)
def test_refused_exactly_where_mmaction_fails(resize, crop, refused):
    # the reference: MMAction2's transforms on real frames
    assert mmaction_crops_ok(resize, crop) is not refused
    pipeline = [dict(type='UniformSample', clip_len=2, num_clips=1, test_mode=True),
                resize, crop, dict(type='FormatShape', input_format='NCTHW')]
    if refused:
        with pytest.raises(CropSizeError) as info:
            check_crop_fits(pipeline, 'my.py, test pipeline')
        msg = str(info.value)
        assert msg.startswith('my.py, test pipeline: ' + crop['type'])
        assert f'(index 2) after Resize(scale={resize["scale"]}' in msg
    else:
        check_crop_fits(pipeline, 'my.py')


def test_unknown_sizes_left_to_mmaction():
    """A float scale, two sizes with keep_ratio, or a transform in between: the frame size
    depends on the video, nothing is refused."""
    for pipeline in ([dict(type='Resize', scale=0.5), dict(type='ThreeCrop', crop_size=224)],
                     [dict(type='Resize', scale=(300, 200)),
                      dict(type='ThreeCrop', crop_size=224)],
                     [dict(type='Resize', scale=(-1, 256)),
                      dict(type='CenterCrop', crop_size=240),
                      dict(type='ThreeCrop', crop_size=224)]):
        check_crop_fits(pipeline)


def test_every_shipped_config_passes():
    files = sorted(glob.glob(osp.join(REPO, 'configs', 'stan', '*.py'))
                   + glob.glob(osp.join(REPO, 'configs', 'quickstart', 'motion_*.py')))
    assert len(files) >= 16
    for path in files:
        check_config_crops(Config.fromfile(path))


def test_views_that_make_a_threecrop_after_a_larger_resize_are_refused():
    """``--views 1x3`` turns the CenterCrop(224) after Resize(-1, 256) into a ThreeCrop that
    MMAction2 would stop on at the first video."""
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'stan', 'k400_self_b16.py'))
    pipeline = cfg.test_dataloader.dataset.pipeline
    resize = next(t for t in pipeline if t['type'] == 'Resize')
    resize['scale'] = (-1, 256)
    crop = next(t for t in pipeline if t['type'] in ('ThreeCrop', 'CenterCrop'))
    crop['type'] = 'CenterCrop'
    check_config_crops(cfg)           # CenterCrop(224) from a short side of 256: fine
    expected = (r'views 1x3: ThreeCrop\(crop_size=224\) \(index 4\) after '
                r'Resize\(scale=\(-1, 256\)\) \(index 3\)')
    with pytest.raises(CropSizeError, match=expected):
        set_config_views(cfg, pipeline, '1x3')


@pytest.mark.parametrize('tool', ['train.py', 'test.py'])
def test_tools_refuse_before_any_work(tmp_path, capsys, tool):
    """One line naming the config, the loader, both transforms and the fix; no work dir."""
    mod = load_script(osp.join('tools', tool))
    config = osp.join(REPO, 'configs', 'quickstart', 'motion_stan_tiny.py')
    work_dir = tmp_path / 'work'
    cfg = Config.fromfile(config)
    pipeline = cfg.test_dataloader.dataset.pipeline
    i = next(i for i, t in enumerate(pipeline) if t['type'] == 'CenterCrop')
    assert pipeline[i - 1]['type'] == 'Resize', pipeline
    size = pipeline[i]['crop_size']
    options = []
    for split in ('val', 'test'):
        key = f'{split}_dataloader.dataset.pipeline'
        options += [f'{key}.{i - 1}.scale=(-1,{size + 16})', f'{key}.{i}.type=ThreeCrop']
    ckpt = tmp_path / 'ckpt.pth'
    ckpt.write_bytes(b'never read: the config is refused first')
    argv = [config] + ([str(ckpt)] if tool == 'test.py' else []) + [
        '--work-dir', str(work_dir), '--cfg-options'] + options
    assert run_tool(lambda: mod.main(argv), tool) == 2
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    lines = [ln for ln in err.splitlines() if 'ThreeCrop' in ln]
    assert len(lines) == 1, err
    assert 'motion_stan_tiny.py' in lines[0] and 'dataloader.dataset.pipeline' in lines[0]
    assert f'scale=(-1, {size})' in lines[0]
    assert not work_dir.exists()


def test_tools_test_py_leaves_the_val_pipeline_alone(tmp_path, capsys):
    """``test.py`` runs the test split only: a crop that cannot fit in the val pipeline
    (which ``train.py`` refuses) is not a reason to refuse a test run. The run gets past
    the crop check and stops on the (fake) checkpoint instead."""
    mod = load_script('tools/test.py')
    config = osp.join(REPO, 'configs', 'quickstart', 'motion_stan_tiny.py')
    pipeline = Config.fromfile(config).val_dataloader.dataset.pipeline
    i = next(i for i, t in enumerate(pipeline) if t['type'] == 'CenterCrop')
    option = f'val_dataloader.dataset.pipeline.{i}.crop_size={pipeline[i]["crop_size"] + 16}'
    ckpt = tmp_path / 'ckpt.pth'
    ckpt.write_bytes(b'not a checkpoint')
    argv = [config, str(ckpt), '--work-dir', str(tmp_path / 'work'), '--cfg-options', option]
    assert run_tool(lambda: mod.main(argv), 'test.py') == 2
    err = capsys.readouterr().err
    assert 'CropSizeError' not in err and 'val_dataloader' not in err, err
    assert 'not a PyTorch checkpoint' in err, err
