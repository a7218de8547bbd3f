"""A Recognizer3D trained on several clips per video is refused by ``tools/train.py`` before
anything is built (``check_train_clips``). The reference for why: the tiny quickstart model
itself, whose loss cannot take two clips of one labelled video."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config

import stan_mm  # noqa: F401
from stan_mm.testing import load_script
from stan_mm.utils.cli import ConfigOptionError, check_train_clips, read_config

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY = osp.join(REPO, 'configs', 'quickstart', 'motion_stan_tiny.py')
K400 = osp.join(REPO, 'configs', 'stan', 'k400_self_b16.py')


def _sampler_index(cfg):
    pipeline = cfg.train_dataloader.dataset.pipeline
    return next(i for i, step in enumerate(pipeline) if 'clip_len' in step)


def test_two_training_clips_break_the_loss_of_recognizer3d():
    from mmaction.registry import MODELS
    from mmaction.structures import ActionDataSample
    from mmengine.registry import init_default_scope
    init_default_scope('mmaction')
    cfg = Config.fromfile(TINY)
    model = MODELS.build(cfg.model)
    samples = [ActionDataSample().set_gt_label(torch.tensor([i])) for i in range(2)]
    one = torch.randn(2, 1, 3, cfg.num_frames, 32, 32)
    assert torch.isfinite(model(one, samples, mode='loss')['loss_cls'])
    with pytest.raises(Exception):          # MMAction2's own failure, deep in the loss
        model(torch.randn(2, 2, 3, cfg.num_frames, 32, 32), samples, mode='loss')


@pytest.mark.parametrize('config', [TINY, K400])
def test_check_refuses_several_clips_and_names_the_option(config):
    cfg = Config.fromfile(config)
    check_train_clips(cfg, 'train.py')                       # the shipped config: 1 clip
    i = _sampler_index(cfg)
    cfg.train_dataloader.dataset.pipeline[i]['num_clips'] = 3
    option = f'train_dataloader.dataset.pipeline.{i}.num_clips'
    with pytest.raises(ConfigOptionError, match=rf'{option}=3: .*Set --cfg-options '
                                                rf'{option}=1'):
        check_train_clips(cfg, 'train.py')
    # through a dataset wrapper: the same sampler one level down
    cfg.train_dataloader.dataset = dict(type='RepeatDataset', times=2,
                                        dataset=cfg.train_dataloader.dataset)
    with pytest.raises(ConfigOptionError, match=r'train_dataloader\.dataset\.dataset\.'
                                                rf'pipeline\.{i}\.num_clips=3'):
        check_train_clips(cfg, 'train.py')
    cfg.model['type'] = 'Recognizer2D'                       # segments by design
    check_train_clips(cfg, 'train.py')


def test_train_tool_refuses_before_building(tmp_path):
    train = load_script('tools/train.py')
    i = _sampler_index(Config.fromfile(TINY))
    argv = [TINY, '--work-dir', str(tmp_path / 'wd'), '--cfg-options',
            f'train_dataloader.dataset.pipeline.{i}.num_clips=2']
    with pytest.raises(ConfigOptionError, match='Recognizer3D trains on one clip'):
        train.merge_args(read_config(TINY), train.parse_args(argv))
    assert not (tmp_path / 'wd').exists()
