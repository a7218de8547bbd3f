"""Known gaps closed on 2026-12-07 that have no better home: the ranking's progress log
says where it stopped when it fails; the training batch and the gloo switch in the run's
log; gpu_session.py's install folder (security review)."""
import io
import os

import pytest
import torch

from stan_mm.evaluation.ranking import retrieval_ranks
from stan_mm.evaluation.similarity import EmbeddingSimilarity


class _FailsAtRow(EmbeddingSimilarity):
    """Similarity rows that raise once ``rows`` reaches text ``fail_at``."""

    def __init__(self, *args, fail_at, **kwargs):
        super().__init__(*args, **kwargs)
        self.fail_at = fail_at

    def rows(self, start, stop, pad_to=None):
        if stop > self.fail_at:
            raise OSError(f'read error at text row {start}')
        return super().rows(start, stop, pad_to=pad_to)


def test_a_failed_ranking_logs_where_it_stopped(monkeypatch):
    """A log (stderr not a terminal) shows the ranking's start line, and on an error a
    'stopped after' line with the rows done: the bar was left open before, so the log
    ended at the start line."""
    stream = io.StringIO()
    monkeypatch.setattr('sys.stderr', stream)
    g = torch.Generator().manual_seed(0)
    text, video = torch.randn(12, 8, generator=g), torch.randn(6, 8, generator=g)
    t2v = torch.arange(12) % 6
    source = _FailsAtRow(text, video, name='sims', fail_at=8)
    with pytest.raises(OSError, match='read error at text row 8'):
        retrieval_ranks(source, t2v, chunk_size=4, progress=True)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith('ranking (2 passes over the text rows): 0/24 rows')
    assert lines[-1].startswith('ranking (2 passes over the text rows): 8/24 rows (33%), '
                                'stopped after ')
    # a ranking that succeeds ends with 'done in'
    stream.truncate(0)
    stream.seek(0)
    retrieval_ranks(EmbeddingSimilarity(text, video, name='ok'), t2v, chunk_size=4,
                    progress=True)
    assert stream.getvalue().splitlines()[-1].startswith(
        'ranking (2 passes over the text rows): 24/24 rows (100%), done in ')


# ------------------------------------------- the training batch and the backend in the log
def test_train_log_states_the_batch_per_rank_and_per_step(tmp_path, capsys):
    """tools/train.py logs the batch a run trains on: per rank, over the ranks, and per
    optimizer step under gradient accumulation (mmengine logs it only with
    auto_scale_lr)."""
    from test_log_review_fixes2 import run_logs, train, write_config
    config = write_config(tmp_path / 'cfg.py', tmp_path / 'data')
    work_dir = tmp_path / 'work'
    assert train([config, '--work-dir', work_dir, '--cfg-options',
                  'optim_wrapper.accumulative_counts=2']) == 0
    (log, ) = run_logs(work_dir)
    assert ('training batch: 2 samples per rank x 1 rank = 2 samples per iteration, 4 per '
            'optimizer step (accumulative_counts=2)') in log


def test_gloo_fallback_is_written_to_the_run_log_once(monkeypatch, tmp_path):
    """The switch from nccl to gloo on a machine without CUDA happens before the run's
    log exists: it is printed (a Python warning, first rank only) and then written to the
    log file by tools/train.py and tools/test.py (log_config_warnings)."""
    import warnings
    from stan_mm.compat import dist as dist_fix
    from stan_mm.utils import cli
    cli.log_config_warnings(clear_only=True)
    monkeypatch.setenv('RANK', '1')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert dist_fix._cpu_backend('nccl', 'torch') == 'gloo'      # rank 1: silent
    assert cli._CONFIG_WARNINGS == []
    monkeypatch.setenv('RANK', '0')
    with pytest.warns(UserWarning, match='using the gloo backend instead of nccl'):
        assert dist_fix._cpu_backend('nccl', 'torch') == 'gloo'
    assert dist_fix._cpu_backend('gloo', 'torch') == 'gloo'
    written = []
    monkeypatch.setattr(cli, 'write_to_log_files',
                        lambda message, level, exclude=(): written.append((level, message)))
    cli.log_config_warnings()
    assert [level for level, _ in written] == ['WARNING']
    assert written[0][1].startswith('CUDA is not available: using the gloo backend instead '
                                    'of nccl (env_cfg.dist_cfg.backend')


# ------------------------------------------------------------ gpu_session.py --site
def test_gpu_session_refuses_an_install_folder_others_may_write(tmp_path):
    """The wheels' install folder goes first on the steps' PYTHONPATH: the default is no
    longer the fixed /tmp/stan_site (anyone could create it first and plant a
    sitecustomize.py), and a folder others may write to, or a link, is refused."""
    import os
    from test_benchmark_tool import _load
    session = _load('gpu_session_site', 'tools/analysis/gpu_session.py')
    args = session.parse_args(['--out', str(tmp_path / 'out')])
    assert args.site == os.path.join(session.ROOT, '.whl-site')
    fresh = tmp_path / 'fresh'
    session.check_site(str(fresh))
    assert fresh.is_dir() and (fresh.stat().st_mode & 0o777) == 0o700
    session.check_site(str(fresh))                   # its own folder: accepted again
    shared = tmp_path / 'shared'
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(SystemExit, match=r'--site .*shared is owned by another user or '
                       r'writable by others \(mode drwxrwxrwx\)'):
        session.check_site(str(shared))
    link = tmp_path / 'link'
    link.symlink_to(fresh)
    with pytest.raises(SystemExit, match='is not a folder'):
        session.check_site(str(link))


# ------------------------------------------------------ make_synthetic into a symlink
def test_synthetic_dataset_follows_a_symlinked_out_dir(tmp_path):
    """data/ -> a folder on a scratch disk: the dataset is written where the link points
    and the link stays (it was replaced by a folder on the link's disk); regenerating
    with other parameters (overwrite) keeps the link too."""
    import os
    from stan_mm.datasets.synthetic import generate_motion_dataset
    scratch = tmp_path / 'scratch' / 'motion'
    link = tmp_path / 'data'
    link.symlink_to(scratch)                         # (dangling: the target is created)
    small = dict(num_train=2, num_val=1, num_test=1, num_frames=4, size=32,
                 pairs=('horizontal', ), progress=False)
    meta = generate_motion_dataset(str(link), **small)
    assert link.is_symlink() and os.readlink(link) == str(scratch)
    assert (scratch / 'meta.json').is_file() and len(os.listdir(scratch / 'videos')) == 4
    assert generate_motion_dataset(str(link), **small) == meta      # idempotent
    generate_motion_dataset(str(link), **dict(small, num_train=4), overwrite=True)
    assert link.is_symlink() and len(os.listdir(scratch / 'videos')) == 6
    # with a trailing slash (shell completion adds it; islink('data/') is False)
    generate_motion_dataset(str(link) + os.sep, **dict(small, num_train=2), overwrite=True)
    assert link.is_symlink() and len(os.listdir(scratch / 'videos')) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ['data', 'scratch']


# ------------------------------------------- mmengine's default optimizer constructor
from test_log_review_fixes2 import current_log  # noqa: E402,F401  (a fixture)


def test_default_constructor_logs_groups_not_every_tensor(current_log):
    """The quickstart configs build their optimizer with mmengine's default constructor
    and a paramwise_cfg: one INFO line per (lr, weight decay) instead of one
    'paramwise_options' line per tensor setting (those at DEBUG); the groups are
    mmengine's, unchanged."""
    import logging
    import os.path as osp
    from mmengine.config import Config
    from mmengine.optim import DefaultOptimWrapperConstructor, build_optim_wrapper
    repo = osp.dirname(osp.dirname(osp.abspath(__file__)))
    cfg = Config.fromfile(osp.join(repo, 'configs', 'quickstart', 'motion_stan_tiny.py'))
    assert 'constructor' not in cfg.optim_wrapper and cfg.optim_wrapper.paramwise_cfg
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4),
                                torch.nn.Linear(4, 2))
    records = current_log
    records.clear()
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    info = [r.getMessage() for r in records if r.levelno >= logging.INFO]
    debug = [r.getMessage() for r in records if r.levelno == logging.DEBUG]
    assert not any('paramwise_options' in m for m in info), info
    assert sum(m.startswith('paramwise_options -- ') for m in debug) == 4, debug
    groups = [m for m in info if m.startswith('optimizer: lr ')]
    # weights decay at 0.05; norms and biases (norm_decay_mult, bias_decay_mult = 0) not
    assert groups == [
        'optimizer: lr 0.003, weight decay 0.05: 2 tensors, 24 params (0.weight 1, '
        '2.weight 1)',
        "optimizer: lr 0.003, weight decay 0: 4 tensors, 14 params (0.bias 1, 1.weight 1, "
        "1.bias 1, 2.bias 1) (log_level='DEBUG' lists the settings of every tensor)"], groups
    decays = sorted(g['weight_decay'] for g in wrapper.optimizer.param_groups)
    assert decays == [0.0] * 4 + [0.05] * 2
    assert DefaultOptimWrapperConstructor.__call__._stan_frozen_log


# ------------------------------------------ a config entry without a required argument
def test_train_tool_names_a_missing_required_argument_in_one_line(tmp_path, capsys):
    """param_scheduler = [dict(type='MultiStepLR')] without its milestones: one line
    naming the entry's path, the argument and the --cfg-options that sets it, exit 2 (it
    was a traceback ending in mmengine's build_from_cfg)."""
    from test_log_review_fixes2 import train, write_config
    base = write_config(tmp_path / 'base.py', tmp_path / 'data')
    config = tmp_path / 'cfg.py'
    config.write_text(f"_base_ = [{base!r}]\n"
                      "experiment_name = 'missing_argument'\n"
                      "param_scheduler = [dict(type='LinearLR', start_factor=0.5, end=1),\n"
                      "                   dict(type='MultiStepLR', by_epoch=True)]\n")
    assert train([config, '--work-dir', tmp_path / 'work']) == 2
    err = capsys.readouterr().err
    assert ("train.py: error: ConfigValueError: the config entry param_scheduler.1 "
            "(type='MultiStepLR') lacks the argument 'milestones', which MultiStepLR "
            "requires: set it in the config or with --cfg-options "
            "param_scheduler.1.milestones=...") in err
    assert 'Traceback' not in err


def test_a_missing_argument_in_the_code_keeps_its_traceback():
    """A call in the code without a required argument is a bug, not a config error: no
    ConfigValueError (the traceback is kept), also for a class mmengine builds from a
    dict the code wrote while a config is at hand. Without a config (a library call) the
    class is named."""
    from mmaction.registry import MODELS
    from stan_mm.utils.cli import missing_argument_error

    def helper(a, b):
        return a + b

    with pytest.raises(TypeError) as info:
        helper(1)
    assert missing_argument_error(info.value) is None
    with pytest.raises(TypeError) as info:
        MODELS.build(dict(type='I3DHead', num_classes=3))
    from mmengine.config import Config

    def build(cfg):      # (a config of the run, without an I3DHead entry)
        MODELS.build(dict(type='I3DHead', num_classes=3))

    with pytest.raises(TypeError) as with_config:
        build(Config(dict(model=dict(type='Recognizer3D'))))
    assert missing_argument_error(with_config.value) is None
    # two entries of the class: only the one without the argument is named
    from mmengine.registry import PARAM_SCHEDULERS
    sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)

    def schedulers(cfg):
        for entry in cfg.param_scheduler:
            PARAM_SCHEDULERS.build(dict(entry, optimizer=sgd))

    with pytest.raises(TypeError) as two:
        schedulers(Config(dict(param_scheduler=[dict(type='MultiStepLR', milestones=[1]),
                                                dict(type='MultiStepLR')])))
    assert str(missing_argument_error(two.value)).startswith(
        "the config entry param_scheduler.1 (type='MultiStepLR') lacks the argument "
        "'milestones'")
    error = missing_argument_error(info.value)       # no config found: the class is named
    assert str(error) == ("the config entry I3DHead (type='I3DHead') lacks the argument "
                          "'in_channels', which I3DHead requires: set it in the config or "
                          "with --cfg-options in_channels=...")


# ---------------------------------------- security review leftovers: temp files in place
from test_concurrency_review_fixes import (DIR_FILES, _assert_is, _convert,  # noqa: E402
                                           _no_swap, two_clips)  # noqa: F401 (a fixture)


def test_in_place_conversion_does_not_write_through_planted_links(two_clips, tmp_path,
                                                                  monkeypatch):
    """clip_to_mm into a folder it cannot swap writes <file>.tmp inside it first: links
    planted at those names were written through (the victims overwritten with the
    model); they are removed first now, and the victims are untouched."""
    out = tmp_path / 'clip'
    _convert(two_clips, 'old', out)
    victims = []
    for name in DIR_FILES:
        victim = tmp_path / f'victim_{name}'
        victim.write_text('keep me')
        (out / f'{name}.tmp').symlink_to(victim)
        victims.append(victim)
    _no_swap(monkeypatch, 'mount point')
    _convert(two_clips, 'new', out)
    monkeypatch.undo()
    _assert_is(two_clips, 'new', out)
    assert [v.read_text() for v in victims] == ['keep me'] * len(DIR_FILES)
    assert sorted(os.listdir(out)) == sorted(DIR_FILES)


def test_a_link_planted_while_the_weights_are_written_is_refused(two_clips, tmp_path,
                                                                 monkeypatch):
    """Diff review: the config's <file>.tmp is opened after the weights are written
    (seconds for ViT-L); a link planted there in that window was written through. Both
    files are created exclusively without following links now: the conversion fails,
    the victim is untouched and the previous output stays."""
    import safetensors.torch
    out = tmp_path / 'clip'
    _convert(two_clips, 'old', out)
    victim = tmp_path / 'victim.json'
    victim.write_text('keep me')
    real_save = safetensors.torch.save

    def save_then_plant(*args, **kwargs):
        data = real_save(*args, **kwargs)
        (out / f'{DIR_FILES[0]}.tmp').symlink_to(victim)
        return data
    _no_swap(monkeypatch, 'mount point')
    monkeypatch.setattr(safetensors.torch, 'save', save_then_plant)
    with pytest.raises(OSError, match='File exists'):
        _convert(two_clips, 'new', out)
    monkeypatch.undo()
    assert victim.read_text() == 'keep me'
    _assert_is(two_clips, 'old', out)
    assert sorted(os.listdir(out)) == sorted(DIR_FILES)
