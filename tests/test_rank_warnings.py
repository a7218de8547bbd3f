"""Config warnings of tools/train.py and tools/test.py are printed once per run, not once per
process: every process of a distributed run parses the config, so an 8-GPU job printed each
warning (misspelled keys, a schedule shorter than the run, clip_arch / num_frames set where
they do nothing, backbone and head from different CLIPs, --deterministic notes) 8 times.
The rank comes from the launchers' environment (``RANK``, ``SLURM_PROCID``,
``OMPI_COMM_WORLD_RANK``), read before any process group exists.
"""
import os.path as osp

import pytest
from mmengine.config import Config

from stan_mm.utils.cli import (check_model_variant, config_warning, is_first_rank,
                               warn_misspelled_keys, warn_schedule_beyond_training)
from test_user_tools import load_tool

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
K400 = osp.join(REPO, 'configs', 'stan', 'k400_self_b16.py')
TINY = osp.join(REPO, 'configs', 'quickstart', 'motion_stan_tiny.py')
RANK_VARS = ('RANK', 'SLURM_PROCID', 'OMPI_COMM_WORLD_RANK')


@pytest.fixture
def rank(monkeypatch):
    """``rank(name, value)`` sets one launcher variable (the others unset)."""
    for name in RANK_VARS:
        monkeypatch.delenv(name, raising=False)

    def set_rank(name, value):
        for other in RANK_VARS:
            monkeypatch.delenv(other, raising=False)
        monkeypatch.setenv(name, value)
    return set_rank


def _all_warnings(cfg):
    """Run every config check that warns on ``cfg``."""
    warn_misspelled_keys(cfg, 'train.py')
    warn_schedule_beyond_training(cfg, 'train.py')
    check_model_variant(cfg, 'train.py', options={'clip_arch': 'ViT-L/14'})


def _noisy_config():
    cfg = Config.fromfile(K400)
    cfg.merge_from_dict({'train_dataloder': {}, 'train_cfg.max_epochs': 40,
                         'clip_arch': 'ViT-L/14'})
    return cfg


@pytest.mark.parametrize('name', RANK_VARS)
def test_config_warnings_print_on_the_first_rank_only(capsys, rank, name):
    cfg = _noisy_config()
    rank(name, '0')
    _all_warnings(cfg)
    err = capsys.readouterr().err
    assert "did you mean 'train_dataloader'" in err
    assert 'ends at epoch 30, but train_cfg.max_epochs=40' in err
    assert "the config sets clip_arch='ViT-L/14'" in err
    assert len(err.splitlines()) == 3, err
    rank(name, '3')
    _all_warnings(cfg)
    assert capsys.readouterr().err == ''


def test_no_launcher_variables_is_one_process(capsys, rank):
    assert is_first_rank()
    config_warning('test.py', 'something')
    assert capsys.readouterr().err == 'test.py: warning: something\n'
    rank('RANK', '1')
    assert not is_first_rank()
    config_warning('test.py', 'something')
    assert capsys.readouterr().err == ''


def test_a_config_error_is_raised_on_every_rank(rank):
    # errors are not rank-gated: every process must stop
    from stan_mm.utils.cli import ConfigOptionError
    cfg = Config.fromfile(K400)
    cfg.merge_from_dict({'model.cls_head.in_channels': 768})
    for value in ('0', '5'):
        rank('RANK', value)
        with pytest.raises(ConfigOptionError, match='in_channels'):
            check_model_variant(cfg, 'train.py')


def test_train_tool_prints_its_notes_once(capsys, rank):
    train = load_tool('tools/train.py')
    argv = [TINY, '--deterministic', '--cfg-options', 'train_cfg.type=EpochBasedTrainLoop',
            'train_cfg.max_epochs=12']
    for value, expect in (('0', True), ('2', False)):
        rank('RANK', value)
        args = train.parse_args(argv)
        train.merge_args(Config.fromfile(TINY), args)
        out, err = capsys.readouterr()
        assert ("--deterministic replays a resumed run exactly from epoch-end checkpoints "
                "only" in err) is expect, err
        assert ('param_scheduler[1] (CosineAnnealingLR) ends at epoch 10' in err) is expect
        if not expect:
            assert err == '' and out == ''
        # note(): printed by the first rank, kept for every rank's log
        train.note(args, 'train.py: a note')
        assert ('a note' in capsys.readouterr().out) is expect
        assert args.log_notes[-1] == 'train.py: a note'
