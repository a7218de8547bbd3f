"""Log review (2), from the tools' console and log files:

A. A config value a stan-mm class refuses (``model.backbone.temporal_module=lstm``,
   ``depth=9``) and a config key the class does not take (``model.backbone.detph=4``,
   Python's ``TypeError ... unexpected keyword argument``) end ``tools/train.py`` in one
   line and exit status 2 (they ended in ~46 lines of mmengine registry traceback, exit
   status 1); the key's line names its path, the likely argument and the valid ones. A
   ``TypeError`` of the code itself keeps its traceback.
B. Progress bars written to a file that is not a terminal are plain lines (start, at most
   one every 30 s, end), not tqdm's ``\\r``-redrawn bar (one huge line in a job's log); the
   ranking bar counted ``0.00/320``.
C. ``STANOptimWrapperConstructor`` logs one line per (lr, weight decay) group instead of
   mmengine's line per tensor and setting (331 lines for ``k400_self_b16.py``), which go
   to DEBUG.
D. No ``"FileClient" will be deprecated`` / ``"HardDiskBackend"`` warnings in a training
   run (the checkpoint hook's start and every checkpoint saved).
E. The retrieval dataset's load line says ``eval`` (not ``test``) for the evaluation
   layout; the two CLIP build lines of a recognizer name their tower; ``--resume``
   refusals are ``CommandLineError`` (exit status 2, as the tool's other argument errors).
"""
import glob
import io
import logging
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import stan_mm  # noqa: F401  (registers everything)
from mmaction.registry import MODELS
from stan_mm.testing import tiny_clip_cfg
from stan_mm.utils.cli import is_user_error, run_tool, user_errors

torch.set_num_threads(1)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY = osp.join(REPO, 'configs', 'quickstart', 'motion_stan_tiny.py')
SCHEDULE = osp.join(REPO, 'configs', '_base_', 'schedules', 'recognition_adamw_cosine_30e.py')
MOTION = dict(num_train=4, num_val=2, num_test=2, num_frames=8, size=32, seed=0,
              pairs=('horizontal', 'vertical', 'scale', 'fade'), progress=False)


def train_tool():
    from test_user_tools import load_tool
    return load_tool('tools/train.py')


def write_config(path, data_root):
    """The tiny quickstart on ``data_root``: 1 epoch of 2 iterations, validation once. Its
    experiment name is the test's own (mmengine names a run's logger and message hub by
    config file name and start second, and hands a second run started within the same
    second the first one's: its log lines then went to the other run's file)."""
    path.write_text(f"""
_base_ = [{TINY!r}]
experiment_name = {path.parent.name!r}
data_root = {str(data_root)!r}
motion = {MOTION!r}
loader = dict(batch_size=2, num_workers=0, persistent_workers=False)
train_dataloader = dict(loader, dataset=dict(data_root=data_root, generate=motion))
val_dataloader = dict(loader, dataset=dict(data_root=data_root, generate=motion))
test_dataloader = dict(loader, dataset=dict(data_root=data_root, generate=motion))
train_cfg = dict(max_epochs=1, val_interval=1)
param_scheduler = []
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1, save_best=None))
""")
    return str(path)


def train(argv) -> int:
    tool = train_tool()
    return run_tool(lambda: tool.main([str(a) for a in argv]), 'train.py')


def run_logs(work_dir):
    return [open(p).read() for p in sorted(glob.glob(osp.join(str(work_dir), '*', '*.log')))]


@pytest.fixture
def current_log():
    """The messages (DEBUG and above) of mmengine's current logger, as they are logged."""
    from mmengine.logging import MMLogger
    logger, records = MMLogger.get_current_instance(), []
    handler, level = logging.Handler(logging.DEBUG), logger.level
    handler.emit = records.append
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# ------------------------------------------------------------------ A: config errors
def test_config_value_error_is_a_user_error_that_survives_a_rewrap():
    """A ValueError subclass with the message as its only argument: code catching
    ValueError still does, and a wrapper that re-creates it as type(e)(message) (mmengine's
    build_from_cfg did in some versions) keeps the type, so the tools still print it on
    one line."""
    from stan_mm.errors import ConfigValueError
    assert ConfigValueError in user_errors() and issubclass(ConfigValueError, ValueError)
    error = ConfigValueError("CLIPSTAN: unknown temporal_module='lstm'")
    rewrapped = type(error)(f'class `CLIPSTAN` in stan_mm/models/backbones: {error}')
    assert type(rewrapped) is ConfigValueError and is_user_error(rewrapped)


@pytest.mark.parametrize('build, match', [
    (dict(type='CLIPSTAN', arch=tiny_clip_cfg(), depth=2, temporal_module='lstm'),
     "unknown temporal_module='lstm'"),
    (dict(type='CLIPSTAN', arch=tiny_clip_cfg(), depth=9), r'depth=9; expected an int in'),
    (dict(type='CLIPSTAN', arch=tiny_clip_cfg(), depth=2, drop_path_rate=1.5),
     'drop_path_rate=1.5'),
    (dict(type='CLIPSTAN', arch='ViT-X/99'), "Unknown CLIP arch name 'ViT-X/99'"),
    (dict(type='SymmetricInfoNCELoss', duplicate_videos='drop'), 'duplicate_videos='),
    (dict(type='TextClassifierHead', classnames=['a b', 'A  b'], in_channels=32,
          text_encoder=dict(type='CLIPTextEncoder', arch=tiny_clip_cfg())),
     'same text for CLIP'),
    (dict(type='STANRetriever', arch=tiny_clip_cfg(), temperature=0,
          backbone=dict(type='CLIPSTAN', depth=1, input_layout='NTCHW')),
     'temperature must be'),
    (dict(type='STANRetriever', arch=tiny_clip_cfg(),
          backbone=dict(type='CLIPSTAN', detph=2, input_layout='NTCHW')),
     r"model\.backbone\.detph, which CLIPSTAN does not take; did you mean 'depth'\?"),
])
def test_bad_config_values_raise_config_value_error(build, match):
    """The constructors' argument checks of the backbone, losses, heads and retriever
    raise ConfigValueError (a user error: one line) with their message."""
    from stan_mm.errors import ConfigValueError
    init_default_scope('mmaction')
    with pytest.raises(ConfigValueError, match=match):
        MODELS.build(build)


def test_bad_config_values_of_data_and_metrics_raise_config_value_error(tmp_path):
    from mmaction.registry import DATASETS, METRICS
    from stan_mm.errors import ConfigValueError
    init_default_scope('mmaction')
    with pytest.raises(ConfigValueError, match="split='dev'"):
        DATASETS.build(dict(type='SyntheticMotionDataset', data_root=str(tmp_path),
                            split='dev', pipeline=[]))
    with pytest.raises(ConfigValueError, match='dsl_temp must be a positive finite number'):
        METRICS.build(dict(type='RetrievalRecallMetric', dsl_temp=0))
    with pytest.raises(ConfigValueError, match='unknown motion pair'):
        DATASETS.build(dict(type='SyntheticMotionDataset', data_root=str(tmp_path / 'm'),
                            split='train', pipeline=[], generate=dict(MOTION, pairs=['up'])))


@pytest.mark.parametrize('option, expected', [
    ('model.backbone.temporal_module=lstm',
     "ConfigValueError: CLIPSTAN: unknown temporal_module='lstm'"),
    ('model.backbone.depth=9', 'ConfigValueError: CLIPSTAN: depth=9; expected an int in '
                               '[0, 2]'),
    ('model.backbone.detph=4',
     "ConfigValueError: the config sets model.backbone.detph, which CLIPSTAN does not take; "
     "did you mean 'depth'? CLIPSTAN takes: arch, pretrained, depth, temporal_module"),
    # I3DHead passes **kwargs on to BaseHead, whose __init__ raises: still the head's key
    ('model.cls_head.num_clases=8',
     "the config sets model.cls_head.num_clases, which I3DHead does not take; did you mean "
     "'num_classes'? I3DHead takes: num_classes, in_channels, loss_cls, spatial_type"),
    # the runner's own DataLoader(...) call
    ('train_dataloader.batchsize=2',
     "the config sets train_dataloader.batchsize, which DataLoader does not take; did you "
     "mean 'batch_size'?"),
])
def test_train_tool_ends_a_bad_config_entry_in_one_line(tmp_path, capsys, option, expected):
    """The error line and exit status 2, no traceback on the console nor in the run's log
    file (it held the whole traceback)."""
    config = write_config(tmp_path / 'cfg.py', tmp_path / 'data')
    work_dir = tmp_path / 'work'
    assert train([config, '--work-dir', work_dir, '--cfg-options', option]) == 2
    err = capsys.readouterr().err
    assert f'train.py: error: {expected}' in err or expected in err, err
    assert 'Traceback' not in err and err.count('\n') <= 3, err
    logs = run_logs(work_dir)
    assert logs, f'no log file in {work_dir}'
    for log in logs:
        assert expected in log and 'Traceback' not in log, log


def test_type_errors_of_the_code_keep_their_traceback():
    """Only a class that mmengine built from a config entry holding the key is a config
    error: an unexpected keyword in the code's own call (a bug) is re-raised as it is."""

    class Thing:
        def __init__(self, depth=1):
            self.depth = depth

    def call_with_a_wrong_keyword():
        return Thing(detph=2)

    with pytest.raises(TypeError, match="unexpected keyword argument 'detph'"):
        run_tool(call_with_a_wrong_keyword, 'train.py')

    def function_call():
        return sorted([1], reversed=True)

    with pytest.raises(TypeError):
        run_tool(function_call, 'train.py')


def test_unknown_key_outside_a_runner_is_still_named():
    """MODELS.build of a config dict (an API user): the key and the valid arguments, without
    a path (there is no whole config to find it in)."""
    from stan_mm.utils.cli import unexpected_argument_error
    init_default_scope('mmaction')
    with pytest.raises(TypeError) as info:
        MODELS.build(dict(type='SymmetricInfoNCELoss', gahter=False))
    error = unexpected_argument_error(info.value)
    assert is_user_error(error)
    assert str(error).startswith("the config sets 'gahter', which SymmetricInfoNCELoss does "
                                 "not take; did you mean 'gather'? SymmetricInfoNCELoss "
                                 "takes: gather, duplicate_videos, loss_weight"), error


# ------------------------------------------------------------------ B: progress bars
class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_redirected_is_plain_lines():
    """Not a terminal: lines ending in a newline, counts as integers, no carriage return:
    one when it starts, one at most every `interval` seconds, one when it ends."""
    from stan_mm.utils.progress import progress_bar
    out = io.StringIO()
    with progress_bar(total=320, desc='ranking', unit='row', file=out, interval=0,
                      leave=False) as bar:
        for _ in range(4):
            bar.update(80)
    lines = out.getvalue().splitlines()
    assert '\r' not in out.getvalue() and len(lines) == 6, lines
    assert lines[0] == 'ranking: 0/320 rows (0%)', lines
    assert lines[1].startswith('ranking: 80/320 rows (25%), ') and 'ETA' in lines[1], lines
    assert lines[-1].startswith('ranking: 320/320 rows (100%), done in '), lines
    # the default interval (30 s): a short bar writes its first and last lines
    out = io.StringIO()
    assert list(progress_bar(range(3), desc='videos', unit='video', file=out)) == [0, 1, 2]
    lines = out.getvalue().splitlines()
    assert lines[0] == 'videos: 0/3 videos (0%)' and len(lines) == 2, lines
    assert lines[1].startswith('videos: 3/3 videos (100%), done in '), lines
    # ended short of its total (an error): said so, with the postfix
    out = io.StringIO()
    bar = progress_bar(total=3, file=out, unit='video', desc='videos')
    bar.update(1)
    bar.set_postfix(unreadable=1)
    bar.close()
    assert out.getvalue().splitlines()[-1].startswith(
        'videos: 1/3 videos (33%), stopped after '), out.getvalue()
    assert out.getvalue().splitlines()[-1].endswith(', unreadable=1'), out.getvalue()


def test_progress_bar_on_a_terminal_is_tqdm():
    from tqdm import tqdm
    from stan_mm.utils.progress import progress_bar
    terminal = _Terminal()
    bar = progress_bar(total=5, desc='videos', file=terminal)
    assert isinstance(bar, tqdm)
    bar.update(5)
    bar.close()
    assert '5/5' in terminal.getvalue()


def test_ranking_progress_redirected_has_no_carriage_returns(capsys, monkeypatch):
    """retrieval_ranks(progress=True) with stderr redirected (capsys: not a terminal): no
    tqdm redraws, and counts as integers, not the unit-scaled '0.00/320' of before."""
    from stan_mm.evaluation.ranking import retrieval_ranks
    from stan_mm.evaluation.similarity import DenseSimilarity
    sim, t2v = torch.randn(160, 40), torch.arange(160) % 40
    retrieval_ranks(DenseSimilarity(sim), t2v, chunk_size=32, progress=True)
    err = capsys.readouterr().err
    assert '\r' not in err and '0.00/' not in err, err
    assert err.startswith('ranking (2 passes over the text rows): 0/320 rows (0%)\n'), err
    import stan_mm.utils.progress as P      # a line at every update (default: every 30 s)
    monkeypatch.setattr(P.progress_bar, '__kwdefaults__',
                        dict(P.progress_bar.__kwdefaults__, interval=0.0))
    retrieval_ranks(DenseSimilarity(sim), t2v, chunk_size=32, progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert lines[1].startswith('ranking (2 passes over the text rows): 32/320 rows (10%), ')
    assert lines[-1].startswith('ranking (2 passes over the text rows): 320/320 rows (100%), '
                                'done in '), lines


def test_synthetic_generation_progress_redirected(tmp_path, capsys):
    from stan_mm.datasets.synthetic import generate_motion_dataset
    generate_motion_dataset(str(tmp_path / 'm'), **dict(MOTION, progress=True))
    assert '\r' not in capsys.readouterr().err


# ------------------------------------------------------------------ C: optimizer lines
from test_logging_review_fixes import _recognizer  # noqa: E402


def test_stan_constructor_logs_groups_not_every_tensor(current_log):
    """One INFO line per (lr, weight decay), whose tensor and parameter counts add up to
    the optimizer's; mmengine's per-tensor 'paramwise_options' lines at DEBUG only."""
    from mmengine.optim import build_optim_wrapper
    model = _recognizer()
    current_log.clear()
    wrapper = build_optim_wrapper(model, Config.fromfile(SCHEDULE).optim_wrapper)
    info = [r.getMessage() for r in current_log if r.levelno >= logging.INFO]
    debug = [r.getMessage() for r in current_log if r.levelno == logging.DEBUG]
    assert not any('paramwise_options' in m for m in info), info
    assert sum(m.startswith('paramwise_options -- ') for m in debug) > 50, len(debug)
    groups = [m for m in info if m.startswith('optimizer: lr ')]
    tensors = sum(len(g['params']) for g in wrapper.optimizer.param_groups)
    # the base lr and 10x for the branch and the head, each with and without decay
    assert len(groups) == 4, groups
    assert sum(int(m.split(': ')[2].split(' tensors')[0]) for m in groups) == tensors, groups
    assert any(m.startswith('optimizer: lr 2e-05, weight decay 0.02: ') and
               'backbone.branch' in m and 'cls_head.fc_cls' in m for m in groups), groups
    assert "log_level='DEBUG'" in groups[-1]


# ------------------------------------------------------------------ D, E: a training run
def test_training_run_log_has_no_fileclient_warnings(tmp_path, capsys):
    """A training run with a checkpoint: no FileClient / HardDiskBackend deprecation lines
    (they came from CheckpointHook.before_train and every save_checkpoint)."""
    config = write_config(tmp_path / 'cfg.py', tmp_path / 'data')
    work_dir = tmp_path / 'work'
    assert train([config, '--work-dir', work_dir]) == 0
    captured = capsys.readouterr()
    (log, ) = run_logs(work_dir)
    assert osp.isfile(work_dir / 'epoch_1.pth')
    for text in (captured.out, captured.err, log):
        assert 'FileClient' not in text and 'HardDiskBackend' not in text


def test_resume_refusal_is_a_command_line_error(tmp_path, capsys):
    """Checkpoints but no last_checkpoint: one line, exit status 2 (it was SystemExit,
    status 1)."""
    config = write_config(tmp_path / 'cfg.py', tmp_path / 'data')
    work_dir = tmp_path / 'work'
    work_dir.mkdir()
    (work_dir / 'epoch_3.pth').write_bytes(b'x')
    assert train([config, '--work-dir', work_dir, '--resume']) == 2
    err = capsys.readouterr().err
    assert err.startswith('train.py: error: CommandLineError: --resume found no '
                          f'last_checkpoint in {work_dir}'), err
    assert f'--resume {work_dir / "epoch_3.pth"}' in err


def test_retrieval_dataset_says_eval_for_the_evaluation_layout(tmp_path, current_log):
    from stan_mm.datasets.motion_dataset import SyntheticMotionTextDataset
    root = str(tmp_path / 'm')
    SyntheticMotionTextDataset(root, 'val', pipeline=[], generate=MOTION, test_mode=True)
    SyntheticMotionTextDataset(root, 'train', pipeline=[], generate=MOTION)
    lines = [r.getMessage() for r in current_log
             if r.getMessage().startswith('SyntheticMotionTextDataset(')]
    assert lines[0].startswith('SyntheticMotionTextDataset(json, eval): 2 videos'), lines
    assert lines[1].startswith('SyntheticMotionTextDataset(json, train): 4 videos'), lines


def test_clip_build_lines_name_the_tower(current_log):
    """A recognizer with a text head builds two CLIPs; their lines said the same thing."""
    init_default_scope('mmaction')
    MODELS.build(dict(
        type='Recognizer3D',
        backbone=dict(type='CLIPSTAN', arch=tiny_clip_cfg(), depth=1),
        cls_head=dict(type='TextClassifierHead', classnames=['a b', 'c d'], in_channels=32,
                      context_length=16,
                      text_encoder=dict(type='CLIPTextEncoder', arch=tiny_clip_cfg()))))
    lines = [r.getMessage() for r in current_log if 'random init, activation' in
             r.getMessage()]
    assert len(lines) == 2, lines
    assert lines[0].startswith('CLIP image tower of model.backbone (architecture from the '
                               'arch dict): random init'), lines
    assert lines[1].startswith('CLIP text tower of model.cls_head.text_encoder (architecture '
                               'from the arch dict): random init'), lines
