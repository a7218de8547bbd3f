"""tools/train.py review fixes, from tiny CPU trainings:

1. ``--resume`` in a work dir with nothing to resume keeps the config's ``load_from`` (it was
   dropped: mmengine "auto resumed from None" and trained from the base weights); with
   something to resume the resume wins, and the tool says that ``load_from`` is not used.
2. A schedule that ends before ``train_cfg.max_epochs`` is named (the epochs after it
   trained at lr ~ 0 without a word); a resume with another ``max_epochs`` than the
   checkpoint's run says that the schedules go on as the checkpoint has them, and one with
   nothing left to train says so.
3. A resume with changed optimizer settings (``lr``) says that the checkpoint's are used.
4. The error that ends a run is also in the work dir's log file; an unreadable training
   video adds a hint (a resume meets it again); under torchrun (``TORCHELASTIC_ERROR_FILE``)
   the error is recorded in the error file, exit status and stderr unchanged.
5. A top-level ``vis_backends`` set in a child config or ``--cfg-options`` (it does
   nothing: the visualizer was built from the base's variable) is warned about.

The runs are ``tools/train.py``'s ``main`` in process (``run_tool`` as its ``__main__``
calls it), 4 training videos, batch 2: 2 iterations per epoch.
"""
import glob
import json
import os
import os.path as osp
import runpy
import shutil
import sys

import pytest
from mmengine.config import Config

from stan_mm.testing import load_script
from stan_mm.utils.cli import run_tool, warn_schedule_beyond_training

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY = osp.join(REPO, 'configs', 'quickstart', 'motion_stan_tiny.py')
K400 = osp.join(REPO, 'configs', 'stan', 'k400_self_b16.py')
MOTION = dict(num_train=4, num_val=1, num_test=1, num_frames=8, size=32, seed=0,
              pairs=('horizontal', 'vertical', 'scale', 'fade'), progress=False)


def load_train_tool():
    return load_script('tools/train.py', '_train_tool_review')


def train(argv) -> int:
    """Exit status of ``tools/train.py argv``, run as its ``__main__`` runs it."""
    tool = load_train_tool()
    return run_tool(lambda: tool.main([str(a) for a in argv]), 'train.py')


def write_config(path, data_root, extra='', max_epochs=2, max_keep_ckpts=3):
    """The tiny quickstart on ``data_root``, ``max_epochs`` epochs, no validation, a
    checkpoint per epoch (the last ``max_keep_ckpts`` kept)."""
    path.write_text(f"""
_base_ = [{TINY!r}]
data_root = {str(data_root)!r}
motion = {MOTION!r}
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, generate=motion))
val_dataloader = None
val_cfg = None
val_evaluator = None
test_dataloader = None
test_cfg = None
test_evaluator = None
max_epochs = {max_epochs}
train_cfg = dict(type='ResumableEpochBasedTrainLoop', max_epochs=max_epochs, val_interval=100)
param_scheduler = [dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=0.0,
                        by_epoch=True, begin=0, end=max_epochs, convert_to_iter_based=True)]
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(interval=1, max_keep_ckpts={max_keep_ckpts},
                                     save_best=None))
log_processor = dict(window_size=1)
{extra}""")
    return str(path)


def run_logs(work_dir):
    """The text of the log file of each run in ``work_dir``, oldest first."""
    dirs = sorted(d for d in glob.glob(osp.join(str(work_dir), '2*')) if osp.isdir(d))
    out = []
    for d in dirs:
        with open(osp.join(d, osp.basename(d) + '.log')) as f:
            out.append(f.read())
    return out


def copy_work_dir(src, dst):
    """The checkpoints of ``src`` in a new work dir ``dst``, its last_checkpoint naming the
    copy's file (a copied last_checkpoint names the original's)."""
    os.makedirs(dst)
    for p in glob.glob(osp.join(str(src), '*.pth')):
        shutil.copy(p, dst)
    with open(osp.join(str(src), 'last_checkpoint')) as f:
        name = osp.basename(f.read().strip())
    with open(osp.join(str(dst), 'last_checkpoint'), 'w') as f:
        f.write(osp.join(str(dst), name))
    return str(dst)


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    from stan_mm.datasets.synthetic import generate_motion_dataset
    root = tmp_path_factory.mktemp('motion') / 'data'
    generate_motion_dataset(str(root), **MOTION)
    return root


@pytest.fixture(scope='module')
def config(tmp_path_factory, data_root):
    return write_config(tmp_path_factory.mktemp('cfg') / 'tiny.py', data_root)


@pytest.fixture(scope='module')
def trained(tmp_path_factory, config):
    """A work dir trained for its 2 epochs (epoch_1.pth, epoch_2.pth)."""
    work_dir = tmp_path_factory.mktemp('trained') / 'w'
    assert train([config, '--work-dir', work_dir]) == 0
    assert osp.isfile(work_dir / 'epoch_2.pth')
    return work_dir


# ------------------------------------------------------------------ 1: --resume and load_from
def test_resume_on_a_fresh_work_dir_keeps_load_from(tmp_path, capsys, config, trained):
    work_dir = tmp_path / 'new'
    ckpt = str(trained / 'epoch_1.pth')
    assert train([config, '--work-dir', work_dir, '--resume', '--cfg-options',
                  f'load_from={ckpt}', 'train_cfg.max_epochs=1']) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith('train.py: --resume:')]
    assert len(lines) == 1, out
    assert 'nothing to resume' in lines[0] and f'load_from={ckpt}' in lines[0]
    dumped = Config.fromfile(str(work_dir / 'tiny.py'))
    assert dumped.load_from == ckpt and dumped.resume is False
    (log, ) = run_logs(work_dir)
    assert f'Load checkpoint from {ckpt}' in log
    assert 'Auto resumed' not in log
    assert 'nothing to resume' in log                     # the note is in the log too


def test_resume_wins_over_load_from_when_the_work_dir_has_a_checkpoint(
        tmp_path, capsys, config, trained):
    """... and says so; resumed with a smaller max_epochs than its epoch (a requeue after
    the end, or a shortened run), it says that nothing is left to train."""
    work_dir = copy_work_dir(trained, tmp_path / 'copy')
    other = str(trained / 'epoch_1.pth')
    assert train([config, '--work-dir', work_dir, '--resume', '--cfg-options',
                  f'load_from={other}', 'train_cfg.max_epochs=1']) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith('train.py: --resume:')]
    assert len(lines) == 1, out
    assert osp.join(work_dir, 'epoch_2.pth') in lines[0]
    assert f'load_from={other} is not used' in lines[0]
    (log, ) = run_logs(work_dir)
    assert 'resumed epoch: 2' in log
    assert 'nothing is left to train' in log and 'train_cfg.max_epochs=1' in log
    assert "checkpoint's run had train_cfg.max_epochs=2, this one has 1" in log
    assert 'Epoch(train)' not in log


def test_resume_recovers_a_checkpoint_whose_publication_was_cut(tmp_path, capsys, config,
                                                                 trained):
    """A run stopped between renaming epoch_1.pth into place and renaming its pending
    pointer to last_checkpoint (AtomicCheckpointHook's publish order): --resume used to
    refuse the work dir (checkpoints but no last_checkpoint), which stops a requeue loop;
    it now finishes the publication and resumes from epoch_1.pth."""
    from stan_mm.engine.checkpoint_hook import PENDING_POINTER
    work_dir = tmp_path / 'cut'
    work_dir.mkdir()
    shutil.copy(trained / 'epoch_1.pth', work_dir)
    (work_dir / PENDING_POINTER).write_text(str(work_dir / 'epoch_1.pth'))
    assert train([config, '--work-dir', work_dir, '--resume']) == 0
    err = capsys.readouterr().err
    assert 'was stopped while publishing it' in err and 'resuming from it' in err, err
    (log, ) = run_logs(work_dir)
    assert 'resumed epoch: 1' in log
    assert (work_dir / 'last_checkpoint').read_text().strip() == str(work_dir / 'epoch_2.pth')
    # without the pending pointer the work dir is still refused, naming the checkpoint
    refused = tmp_path / 'refused'
    refused.mkdir()
    shutil.copy(trained / 'epoch_1.pth', refused)
    assert train([config, '--work-dir', refused, '--resume']) == 2     # a CommandLineError
    assert 'train.py: error: CommandLineError: --resume found no last_checkpoint' in \
        capsys.readouterr().err


# ------------------------------------------------------------------ 2: schedule vs max_epochs
def test_schedule_ending_before_max_epochs_is_named(capsys):
    cfg = Config.fromfile(K400)
    warn_schedule_beyond_training(cfg, 'train.py')
    assert capsys.readouterr().err == ''                 # the schedule fits its 30 epochs
    cfg.merge_from_dict({'train_cfg.max_epochs': 40})
    warn_schedule_beyond_training(cfg, 'train.py')
    lines = capsys.readouterr().err.splitlines()
    # the warm-up (LinearLR to the base rate, ends at epoch 5) is not named
    assert len(lines) == 1, lines
    assert lines[0].startswith('train.py: warning: param_scheduler[1] (CosineAnnealingLR) '
                               'ends at epoch 30, but train_cfg.max_epochs=40: epochs '
                               '31..40 train at the learning rate it ends with')
    assert '--cfg-options param_scheduler.1.end=40 param_scheduler.1.T_max=35' in lines[0]
    # through the tool (the quickstart's warm-up is written in iterations)
    train = load_train_tool()
    args = train.parse_args([TINY, '--cfg-options', 'train_cfg.max_epochs=12'])
    train.merge_args(Config.fromfile(TINY), args)
    err = capsys.readouterr().err
    assert 'param_scheduler[1] (CosineAnnealingLR) ends at epoch 10' in err
    assert 'param_scheduler[0]' not in err


@pytest.fixture(scope='module')
def resumed_longer(tmp_path_factory, config, trained):
    """The trained work dir resumed with max_epochs 3 (one more epoch) and another lr: the
    log of that run."""
    work_dir = copy_work_dir(trained, tmp_path_factory.mktemp('longer') / 'w')
    assert train([config, '--work-dir', work_dir, '--resume', '--cfg-options',
                  'train_cfg.max_epochs=3', 'optim_wrapper.optimizer.lr=0.02']) == 0
    (log, ) = run_logs(work_dir)
    return log


def test_resume_with_another_max_epochs_warns(resumed_longer):
    lines = [ln for ln in resumed_longer.splitlines()
             if "checkpoint's run had train_cfg.max_epochs" in ln]
    assert len(lines) == 1, resumed_longer
    assert 'WARNING' in lines[0]
    assert 'max_epochs=2, this one has 3' in lines[0]
    assert 'they end at epoch 2, so epoch 3 train at the learning rate they end with' \
        in lines[0]
    assert 'load_from=' in lines[0] and 'without --resume' in lines[0]
    assert 'Epoch(train) [3][2/2]' in resumed_longer       # and it trains on


# ------------------------------------------------------------------ 3: optimizer on resume
def test_resume_with_changed_lr_warns(resumed_longer):
    lines = [ln for ln in resumed_longer.splitlines() if 'optimizer settings differ' in ln]
    assert len(lines) == 1, resumed_longer
    assert 'optim_wrapper.optimizer.lr 0.003 (checkpoint) vs 0.02' in lines[0]
    assert "uses the checkpoint's values" in lines[0]
    # which is what happens: the rate of epoch 3 is the checkpoint's schedule's
    (line, ) = [ln for ln in resumed_longer.splitlines() if 'Epoch(train) [3][1/2]' in ln]
    lr = float(line.split(' lr: ')[1].split()[0])
    assert lr < 3e-3


# ------------------------------------------------------------------ 4: the error in the log
def test_error_is_in_the_work_dir_log_with_a_hint_for_videos(tmp_path, capsys):
    from stan_mm.datasets.synthetic import generate_motion_dataset
    root = tmp_path / 'data'
    generate_motion_dataset(str(root), **MOTION)
    for video in glob.glob(str(root / 'videos' / '*.mp4')):
        with open(video, 'r+b') as f:
            f.truncate(100)
    work_dir = tmp_path / 'w'
    assert train([write_config(tmp_path / 'bad.py', root), '--work-dir', work_dir]) == 2
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    (line, ) = [ln for ln in err.splitlines() if ln.startswith('train.py: error: ')]
    assert line.startswith('train.py: error: VideoReadError: ')
    (hint, ) = [ln for ln in err.splitlines() if ln.startswith('train.py: hint: ')]
    assert 'SkipUnreadable' in hint and 'tools/data/check_videos.py' in hint
    assert '--resume' in hint
    (log, ) = run_logs(work_dir)
    tail = log.rstrip().splitlines()[-2:]
    assert tail[0].endswith(line) and ' - ERROR - ' in tail[0], tail
    assert tail[1] == hint, tail


def test_torchrun_error_file_records_the_error(tmp_path, capsys, monkeypatch):
    """Run as ``__main__`` (as torchrun does) with ``TORCHELASTIC_ERROR_FILE`` set: the
    error is written there; exit status 2 and the one-line error as without it."""
    error_file = tmp_path / 'error.json'
    missing = str(tmp_path / 'missing.py')
    monkeypatch.setenv('TORCHELASTIC_ERROR_FILE', str(error_file))
    monkeypatch.setattr(sys, 'argv', ['tools/train.py', missing])
    monkeypatch.setattr(sys, 'path', list(sys.path))
    import faulthandler
    monkeypatch.setattr(faulthandler, 'enable', lambda *a, **k: None)  # (pytest's stays)
    with pytest.raises(SystemExit) as info:
        runpy.run_path(osp.join(REPO, 'tools', 'train.py'), run_name='__main__')
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err == (f"train.py: error: CommandLineError: CONFIG {missing!r}: config file not "
                   f"found\n(STAN_TRACEBACK=1 shows where it was raised)\n")
    message = json.loads(error_file.read_text())['message']['message']
    assert message.startswith('CommandLineError: ') and missing in message


# ------------------------------------------------------------------ 5: vis_backends
TENSORBOARD = "[dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')]"


def test_top_level_vis_backends_is_named(tmp_path, capsys):
    train = load_train_tool()

    def warnings(path, *options):
        argv = [path] + (['--cfg-options', *options] if options else [])
        train.merge_args(Config.fromfile(path), train.parse_args(argv))
        return [ln for ln in capsys.readouterr().err.splitlines() if 'vis_backends' in ln]

    assert warnings(TINY) == []        # the base runtime's own variable
    (line, ) = warnings(TINY, 'vis_backends=[]')
    assert line.startswith('train.py: warning: the config sets vis_backends=[]')
    assert 'Set visualizer.vis_backends instead' in line
    child = tmp_path / 'child.py'
    child.write_text(f'_base_ = [{TINY!r}]\nvis_backends = {TENSORBOARD}\n')
    (line, ) = warnings(str(child))
    assert "TensorboardVisBackend" in line and 'does nothing' in line
    # set where it takes effect too: nothing to say
    child.write_text(f'_base_ = [{TINY!r}]\nvis_backends = {TENSORBOARD}\n'
                     f"visualizer = dict(type='ActionVisualizer', vis_backends=vis_backends)\n")
    assert warnings(str(child)) == []
