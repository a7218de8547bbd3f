"""Log review fixes: what tools/test.py and the inference tools say, and where.

A. tools/test.py ends with one line in the paper's layout, in % (``acc/top1`` stays a
   fraction, as MMAction2 logs it), on the console and in the log file;
   quickstart_result.json says which of its numbers are fractions and which percent.
B. ``--amp``'s autocast dtype and the config warnings printed before the runner existed
   reach the run's log file (the console shows each once).
C. The tested checkpoint is read once (it was read by the tool's checks, then again by the
   runner); the checks still run on the runner's dict and still end in one line.
D. init_model logs which checkpoint it loaded (epoch, iter, tensor count).
E. A linear head without class names shows the names its checkpoint recorded
   (``meta['dataset_meta']['classes']``) instead of ``class 7``.
F. ``--dump`` no longer logs mmengine's "prefix is not set" warning; the file is unchanged.

Tiny configs and random models, as the other tests of these tools.
"""
import glob
import os.path as osp
import pickle
import sys

import pytest
import torch

import stan_mm  # noqa: F401

sys.path.insert(0, osp.dirname(__file__))
from test_user_tools import load_tool  # noqa: E402

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..'))
RECOGNITION_CFG = osp.join(REPO, 'configs', 'quickstart', 'motion_stan_tiny.py')


# ------------------------------------------------------------------ A. summary line
def test_results_summary_is_the_paper_layout_in_percent():
    tool = load_tool('tools/test.py')
    metrics = {'acc/top1': 0.842, 'acc/top5': 0.9651, 'acc/mean1': 0.8013,
               'motion/top1': 84.2, 'motion/direction_acc': 97.0}   # motion: % already
    assert tool.results_summary(metrics) == \
        'results: top-1 / top-5: 84.2 / 96.5 %, mean class accuracy 80.1 %'
    keys = ('R1', 'R5', 'R10', 'MdR', 'MnR')
    retrieval = {f'retrieval/t2v_{k}': v for k, v in zip(keys, (46.9, 72.8, 82.2, 2.0, 14.46))}
    assert tool.results_summary(retrieval) == \
        'results: t2v R@1/R@5/R@10/MdR/MnR: 46.9 / 72.8 / 82.2 / 2.0 / 14.5'
    retrieval.update({f'retrieval/v2t_{k}': v for k, v in zip(keys, (45, 70, 80, 2, 11))})
    assert tool.results_summary(retrieval).endswith(
        '; v2t R@1/R@5/R@10/MdR/MnR: 45.0 / 70.0 / 80.0 / 2.0 / 11.0')
    # another prefix is named; top-5 absent; nothing known: no line
    assert tool.results_summary({'val/top1': 0.5}, acc_prefixes=['val']) == \
        'results: [val] top-1: 50.0 %'
    assert tool.results_summary({'motion/top1': 50.0}) is None


def test_quickstart_result_says_which_numbers_are_fractions():
    tool = load_tool('tools/quickstart.py')
    assert 'acc/*: fractions' in tool.RESULT_UNITS and 'top1' in tool.RESULT_UNITS
    assert 'percent' in tool.RESULT_UNITS
    text = open(osp.join(REPO, 'docs', 'training_testing.md')).read()
    assert '**fractions**' in text and 'test.py: results: top-1 / top-5:' in text


# --------------------------------------------------------- A, B, C, F: one test run
def _write_tiny(folder):
    """A tiny linear-head recognition config (2 test videos) whose file also sets a
    misspelled runner key (a config warning), and a checkpoint of its model."""
    from mmaction.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from test_recognition import write_tiny_config
    cfg_path = write_tiny_config(folder, num_train=1, num_val=2, head='linear')
    with open(cfg_path, 'a') as f:
        f.write('\ncustom_hoooks = []\n')
    init_default_scope('mmaction')
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(cfg_path).model)
    ckpt = str(folder / 'ckpt.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {'epoch': 1, 'iter': 3}}, ckpt)
    return cfg_path, ckpt, model


@pytest.fixture
def tiny(tmp_path):
    return _write_tiny(tmp_path)


def _count_reads(monkeypatch):
    """The checkpoint files read from disk (every local load goes through
    stan_mm.compat's safe_torch_load: mmengine's loader and the tool's own)."""
    import stan_mm.compat.checkpoint as compat
    reads, real = [], compat.safe_torch_load

    def counting(filename, *args, **kwargs):
        reads.append(osp.abspath(str(filename)))
        return real(filename, *args, **kwargs)
    monkeypatch.setattr(compat, 'safe_torch_load', counting)
    return reads


@pytest.fixture
def file_reads(monkeypatch):
    return _count_reads(monkeypatch)


def _run_test_tool(argv):
    tool = load_tool('tools/test.py')
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from stan_mm.utils.cli import run_tool
        return run_tool(lambda: tool.main(argv), 'test.py')
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def amp_dump_run(tmp_path_factory):
    """``tools/test.py CFG CKPT --amp --dump`` on the tiny config, run once for the tests
    below: exit status, console (stdout, stderr), log file text, checkpoint reads."""
    import contextlib
    import io
    folder = tmp_path_factory.mktemp('amp_dump_run')
    cfg_path, ckpt, _ = _write_tiny(folder)
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        reads = _count_reads(mp)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = _run_test_tool([cfg_path, ckpt, '--work-dir', str(folder / 'w'),
                                     '--amp', '--dump', str(folder / 'dump.pkl')])
    logs = glob.glob(str(folder / 'w' / '*' / '*.log'))
    assert status == 0 and len(logs) == 1, err.getvalue()[-3000:]
    return dict(out=out.getvalue(), err=err.getvalue(), log=open(logs[0]).read(),
                reads=reads, ckpt=osp.abspath(ckpt), dump=str(folder / 'dump.pkl'))


def test_test_tool_reads_the_checkpoint_once(amp_dump_run):
    """C: the tool's checks use the dict the runner loads (the file was read twice)."""
    assert amp_dump_run['reads'].count(amp_dump_run['ckpt']) == 1, amp_dump_run['reads']
    # (mmengine prints this line with print(), not to the log)
    assert amp_dump_run['out'].count('Loads checkpoint by') == 1
    assert amp_dump_run['log'].count('Load checkpoint from') == 1


def test_test_tool_logs_the_amp_dtype_and_the_config_warnings(amp_dump_run):
    """B: in the log file too; on the console once."""
    log = amp_dump_run['log']
    assert 'test.py: --amp: autocast in bf16 on cpu' in log
    warning = "test.py: warning: the config sets 'custom_hoooks'"
    assert warning in log and ' - WARNING - ' in log.split(warning)[0].splitlines()[-1]
    assert (amp_dump_run['err'] + amp_dump_run['out']).count(warning) == 1


def test_test_tool_ends_with_the_paper_layout_line(amp_dump_run):
    """A: the closing line, in %, in the log (the metric line keeps the fractions)."""
    log = amp_dump_run['log']
    line = [ln for ln in log.splitlines() if 'test.py: results: top-1 / top-5: ' in ln]
    assert len(line) == 1 and log.rstrip().endswith(line[0])
    top1 = float(line[0].split('top-1 / top-5: ')[1].split(' / ')[0])
    assert top1 in (0.0, 50.0, 100.0)                     # 2 test videos
    assert f'acc/top1: {top1 / 100:.4f}' in log
    assert line[0].endswith(' %')


def test_test_tool_dump_has_no_prefix_warning_and_the_same_file(amp_dump_run):
    """F: no "prefix is not set"; the dump as mmengine writes it (per-sample dicts)."""
    assert 'The prefix is not set' not in (amp_dump_run['log'] + amp_dump_run['out']
                                          + amp_dump_run['err'])
    with open(amp_dump_run['dump'], 'rb') as f:
        samples = pickle.load(f)
    assert isinstance(samples, list) and len(samples) == 2
    assert all(isinstance(s, dict) and {'pred_score', 'gt_label'} <= set(s) for s in samples)
    from mmengine.evaluator import DumpResults as MMEngineDumpResults
    from mmengine.registry import init_default_scope
    from mmaction.registry import METRICS
    init_default_scope('mmaction')
    dump = METRICS.build(dict(type='DumpResults', out_file_path='x.pkl'))
    assert isinstance(dump, MMEngineDumpResults) and dump.prefix == 'dump'


def test_test_tool_checks_still_refuse_a_checkpoint_that_does_not_fit(tmp_path, tiny,
                                                                     file_reads, capsys):
    """The check runs on the runner's dict: a head of other classes ends in one line, the
    file read once, before any test step."""
    cfg_path, ckpt, model = tiny
    state = dict(model.state_dict())
    state['cls_head.fc_cls.weight'] = torch.zeros(5, state['cls_head.fc_cls.weight'].shape[1])
    state['cls_head.fc_cls.bias'] = torch.zeros(5)
    bad = str(tmp_path / 'bad.pth')
    torch.save({'state_dict': state, 'meta': {}}, bad)
    status = _run_test_tool([cfg_path, bad, '--work-dir', str(tmp_path / 'w')])
    cap = capsys.readouterr()
    assert status == 2 and 'Traceback' not in cap.err
    error = f'test.py: error: CheckpointMismatchError: checkpoint {bad} does not fit '
    assert any(line.startswith(error) for line in cap.err.splitlines()), cap.err
    assert 'cls_head.fc_cls.weight: checkpoint [5, 32] vs model [3, 32]' in cap.err
    assert 'Epoch(test)' not in cap.out                   # no test step ran
    assert 'size mismatch' not in cap.out + cap.err       # nor mmengine's loading
    assert file_reads.count(osp.abspath(bad)) == 1


def test_checkpoint_check_hook_checks_a_checkpoint_no_hook_saw(tmp_path, tiny, file_reads):
    """A runner that loaded the weights without calling after_load_checkpoint: the hook
    reads and checks the file before the first test step."""
    from stan_mm.utils.checkpoint_check import CheckpointMismatchError
    tool = load_tool('tools/test.py')
    cfg_path, ckpt, model = tiny
    from mmengine.config import Config
    cfg = Config.fromfile(cfg_path)
    hook = tool.CheckpointCheckHook(ckpt, cfg)

    class Runner:
        pass
    runner = Runner()
    runner.model = model
    hook.before_test(runner)
    assert hook.checked and file_reads.count(osp.abspath(ckpt)) == 1
    hook.before_test(runner)                              # checked already: not again
    assert file_reads.count(osp.abspath(ckpt)) == 1
    other = tool.CheckpointCheckHook(ckpt, cfg)
    with pytest.raises(CheckpointMismatchError, match='does not fit'):
        other.after_load_checkpoint(runner, {'state_dict': {}, 'meta': {}})


# ------------------------------------------------------ D, E: the inference tools
@pytest.fixture
def linear_ckpt(tmp_path):
    """The quickstart linear-head recognizer (8 classes) saved with a mmengine-like meta:
    epoch, iter and the training set's class names."""
    from mmaction.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    init_default_scope('mmaction')
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(RECOGNITION_CFG).model)
    classes = tuple(f'motion {i}' for i in range(8))
    path = str(tmp_path / 'lin.pth')
    torch.save({'state_dict': model.state_dict(),
                'meta': {'epoch': 3, 'iter': 12, 'dataset_meta': {'classes': classes}}}, path)
    return path, classes, len(model.state_dict())


def test_init_model_logs_which_checkpoint_it_loaded(linear_ckpt, monkeypatch):
    import stan_mm.apis.inference as inference
    lines, real = [], inference.print_log

    def recording(msg, *args, **kwargs):
        lines.append(str(msg))
        return real(msg, *args, **kwargs)
    monkeypatch.setattr(inference, 'print_log', recording)
    path, _, tensors = linear_ckpt
    inference.init_model(RECOGNITION_CFG, path, 'cpu')
    assert f'loaded {path} (epoch 3, iter 12; {tensors} tensors)' in lines
    assert inference.loaded_line('x.pth', None, 5) == 'loaded x.pth (5 tensors)'
    assert inference.loaded_line('x.pth', {'epoch': 2}, 5) == 'loaded x.pth (epoch 2; 5 tensors)'


def test_linear_head_shows_the_class_names_its_checkpoint_recorded(tmp_path, linear_ckpt,
                                                                    capsys, monkeypatch):
    from stan_mm.apis import init_model
    from stan_mm.apis.recognition import class_labels
    from test_inference_review_fixes import write_video
    from test_user_tools import parse_table
    path, classes, _ = linear_ckpt
    model = init_model(RECOGNITION_CFG, path, 'cpu')
    assert class_labels(model, None) == list(classes)
    assert class_labels(model, [f'c{i}' for i in range(8)])[0] == 'c0'   # given: used
    model.checkpoint_meta = {'dataset_meta': {'classes': ('a', 'b')}}    # 2 names, 8 classes
    assert class_labels(model, None) == [f'class {i}' for i in range(8)]
    model.checkpoint_meta = None
    assert class_labels(model, None)[7] == 'class 7'
    monkeypatch.chdir(tmp_path)
    video = write_video('v.mp4')
    tool = load_tool('tools/demo/recognize.py')
    assert tool.main([RECOGNITION_CFG, path, video, '--top-k', '8']) == 0
    rows = parse_table(capsys.readouterr().out)
    assert sorted(r[2] for r in rows) == sorted(classes)


def test_train_tool_logs_the_config_warnings(tmp_path, capsys):
    """B: train.py writes the config's warnings into its log file too (once on the
    console); lines left from an earlier call in the process are not logged."""
    from test_recognition import write_tiny_config
    from stan_mm.utils.cli import config_warning
    cfg_path = write_tiny_config(tmp_path, num_train=2, num_val=1, head='linear')
    with open(cfg_path, 'a') as f:
        f.write('\ncustom_hoooks = []\n')
    config_warning('other.py', 'left from an earlier call')
    tool = load_tool('tools/train.py')
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert tool.main([cfg_path, '--work-dir', str(tmp_path / 'w'), '--no-validate']) \
            in (None, 0)
    finally:
        torch.set_num_threads(threads)
    cap = capsys.readouterr()
    logs = glob.glob(str(tmp_path / 'w' / '*' / '*.log'))
    assert len(logs) == 1
    log = open(logs[0]).read()
    warning = "train.py: warning: the config sets 'custom_hoooks'"
    assert warning in log and (cap.err + cap.out).count(warning) == 1
    assert 'left from an earlier call' not in log


def test_config_warnings_of_other_ranks_are_not_kept(monkeypatch, capsys):
    from stan_mm.utils import cli
    cli.log_config_warnings(clear_only=True)
    monkeypatch.setenv('RANK', '1')
    cli.config_warning('test.py', 'rank 1')
    monkeypatch.setenv('RANK', '0')
    cli.config_warning('test.py', 'rank 0')
    assert cli._CONFIG_WARNINGS == ['test.py: warning: rank 0']
    cli.log_config_warnings()                  # no run's log file: nothing written, cleared
    assert cli._CONFIG_WARNINGS == []
    assert capsys.readouterr().err == 'test.py: warning: rank 0\n'
