"""Command-line review fixes: output paths checked before any work, missing inputs and bad
numbers refused on one line (exit 2), no user file overwritten or left half-written.

Tools: tools/convert/stan_public_to_mm.py, tools/train.py, tools/test.py,
tools/quickstart.py, tools/analysis/get_flops.py, tools/analysis/benchmark_retrieval_eval.py.
"""
import os
import os.path as osp

import pytest
import torch
from mmengine.config import Config

from stan_mm.testing import load_script
from stan_mm.utils.cli import (CommandLineError, ConfigOptionError, check_numeric_options,
                               run_tool, user_errors)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY = osp.join(REPO, 'configs', 'quickstart', 'motion_stan_tiny.py')


def load_tool(rel_path):
    return load_script(osp.join('tools', rel_path))


def run(tool_path, argv, name):
    """Exit status of ``tools/<tool_path>`` main(argv) run as its __main__ runs it."""
    tool = load_tool(tool_path)
    return run_tool(lambda: tool.main(argv), name)


def one_line_error(err: str, prefix: str) -> str:
    """The error line of ``err`` (stderr), checked to be a one-line error, no traceback."""
    assert 'Traceback' not in err, err
    lines = [ln for ln in err.splitlines() if prefix in ln]
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------ 1: stan_public_to_mm
def _mm_checkpoint(path, value=0.0):
    torch.save({'state_dict': {'backbone.visual.class_embedding': torch.full((4, ), value),
                               'backbone.visual.conv1.weight': torch.zeros(4, 3, 2, 2)}}, path)


@pytest.mark.parametrize('export', [True, False])
@pytest.mark.parametrize('how', ['same', 'symlink', 'hardlink'])
def test_stan_public_to_mm_refuses_to_overwrite_its_input(tmp_path, capsys, export, how):
    src = tmp_path / 'src.pth'
    _mm_checkpoint(src)
    before = src.read_bytes()
    dst = src
    if how == 'symlink':
        dst = tmp_path / 'link.pth'
        os.symlink(src, dst)
    elif how == 'hardlink':
        dst = tmp_path / 'hard.pth'
        os.link(src, dst)
    tool = load_tool('convert/stan_public_to_mm.py')
    assert tool.main((['--export'] if export else []) + [str(src), str(dst)]) == 2
    line = one_line_error(capsys.readouterr().err, 'stan_public_to_mm: error: ')
    assert 'would overwrite the input' in line
    assert src.read_bytes() == before


def test_stan_public_to_mm_write_is_atomic(tmp_path, capsys, monkeypatch):
    """A write that fails half-way (disk full) leaves an existing output as it was, and no
    temporary file behind; a reader never sees a half-written file under the name."""
    src, dst = tmp_path / 'ours.pth', tmp_path / 'public.pth'
    _mm_checkpoint(src)
    dst.write_bytes(b'the previous output')
    real_save = torch.save

    def half_save(obj, f, *args, **kwargs):
        if hasattr(f, 'write'):       # (the converter writes through its temp file's fd)
            f.write(b'PK\x03\x04 half a zip')
        else:
            with open(f, 'wb') as fh:
                fh.write(b'PK\x03\x04 half a zip')
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(torch, 'save', half_save)
    tool = load_tool('convert/stan_public_to_mm.py')
    assert tool.main(['--export', str(src), str(dst)]) == 2
    assert 'No space left' in one_line_error(capsys.readouterr().err, 'stan_public_to_mm:')
    assert dst.read_bytes() == b'the previous output'
    assert sorted(os.listdir(tmp_path)) == ['ours.pth', 'public.pth']
    # the documented behaviour: an existing output other than the input is replaced
    monkeypatch.setattr(torch, 'save', real_save)
    assert tool.main(['--export', str(src), str(dst)]) == 0
    assert 'backbone.class_embedding' in torch.load(dst)['state_dict']
    assert sorted(os.listdir(tmp_path)) == ['ours.pth', 'public.pth']


# ------------------------------------------------------------------ 2: output paths
def test_train_refuses_a_work_dir_that_is_a_file(tmp_path, capsys):
    wfile = tmp_path / 'wfile'
    wfile.write_text('not a folder')
    assert run('train.py', [TINY, '--work-dir', str(wfile)], 'train.py') == 2
    line = one_line_error(capsys.readouterr().err, 'train.py: error: ')
    assert f"--work-dir '{wfile}' is a file, not a folder" in line
    assert wfile.read_text() == 'not a folder'


@pytest.mark.parametrize('flag', ['--work-dir', '--dump', '--dump-parent'])
def test_test_refuses_unusable_output_paths(tmp_path, capsys, flag):
    ckpt = tmp_path / 'ckpt.pth'
    ckpt.write_bytes(b'x')
    wfile = tmp_path / 'wfile'
    wfile.write_text('not a folder')
    folder = tmp_path / 'folder.pkl'
    folder.mkdir()
    extra = {'--work-dir': ['--work-dir', str(wfile)],
             '--dump': ['--dump', str(folder), '--work-dir', str(tmp_path / 'w')],
             '--dump-parent': ['--dump', str(wfile / 'out.pkl'),
                               '--work-dir', str(tmp_path / 'w')]}[flag]
    assert run('test.py', [TINY, str(ckpt), *extra], 'test.py') == 2
    line = one_line_error(capsys.readouterr().err, 'test.py: error: ')
    want = {'--work-dir': f"--work-dir '{wfile}' is a file, not a folder",
            '--dump': f"--dump '{folder}' is a folder; give a file name",
            '--dump-parent': f"its folder '{wfile}' is a file, not a folder"}[flag]
    assert want in line
    assert wfile.read_text() == 'not a folder'


def test_benchmark_refuses_an_out_folder_before_running(tmp_path, capsys):
    tool = load_tool('analysis/benchmark_retrieval_eval.py')
    with pytest.raises(SystemExit) as exc:
        tool.main(['--num-texts', '8', '--num-videos', '8', '--dim', '4', '--configs',
                   'plain', '--out', str(tmp_path)])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    line = one_line_error(captured.err, ': error: ')   # (argparse's prog: argv[0])
    assert '--out' in line and 'is a folder' in line
    assert 'settings:' not in captured.out          # no worker ran


# ------------------------------------------------------------------ 3: missing inputs
@pytest.mark.parametrize('tool_path,name,argv', [
    ('train.py', 'train.py', ['nope.py']),
    ('test.py', 'test.py', ['nope.py', 'ckpt.pth']),
    ('analysis/get_flops.py', 'get_flops.py', ['nope.py']),
])
def test_missing_config_is_one_line(tmp_path, capsys, monkeypatch, tool_path, name, argv):
    monkeypatch.chdir(tmp_path)
    assert run(tool_path, argv, name) == 2
    line = one_line_error(capsys.readouterr().err, f'{name}: error: ')
    assert "'nope.py'" in line and 'config file not found' in line


def test_quickstart_missing_config_is_refused_at_parse_time(tmp_path, capsys):
    tool = load_tool('quickstart.py')
    with pytest.raises(SystemExit) as exc:
        tool.parse_args(['--config', str(tmp_path / 'nope.py')])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert 'Traceback' not in err and '--config' in err and 'config file not found' in err


def test_train_resume_path_is_checked(tmp_path):
    train = load_tool('train.py')
    cfg = Config.fromfile(TINY)
    for path, what in ((tmp_path / 'nope.pth', 'checkpoint not found'),
                       (tmp_path, 'is a folder')):
        args = train.parse_args([TINY, '--work-dir', str(tmp_path / 'w'), '--resume',
                                 str(path)])
        with pytest.raises(CommandLineError, match=f'--resume.*{what}'):
            train.merge_args(cfg.copy(), args)
    ckpt = tmp_path / 'epoch_1.pth'
    ckpt.write_bytes(b'x')
    for given in (str(ckpt), 's3://bucket/epoch_1.pth'):   # a URL is mmengine's to read
        args = train.parse_args([TINY, '--work-dir', str(tmp_path / 'w'), '--resume', given])
        out = train.merge_args(cfg.copy(), args)
        assert out.resume is True and out.load_from == given


def test_train_missing_resume_file_is_one_line(tmp_path, capsys):
    argv = [TINY, '--work-dir', str(tmp_path / 'w'), '--resume', str(tmp_path / 'nope.pth')]
    assert run('train.py', argv, 'train.py') == 2
    line = one_line_error(capsys.readouterr().err, 'train.py: error: ')
    assert 'checkpoint not found' in line and 'nope.pth' in line


# ------------------------------------------------------------------ 4: numbers
@pytest.mark.parametrize('value', ['0', '-2'])
def test_quickstart_refuses_epochs_below_one(capsys, value):
    tool = load_tool('quickstart.py')
    with pytest.raises(SystemExit) as exc:
        tool.parse_args(['--epochs', value])
    assert exc.value.code == 2
    assert '--epochs' in capsys.readouterr().err
    assert tool.parse_args(['--epochs', '1']).epochs == 1


@pytest.mark.parametrize('argv,flag', [
    (['--shape', '0', '32', '32'], '--shape'), (['--shape', '8', '-1', '32'], '--shape'),
    (['--text-len', '0'], '--text-len')])
def test_get_flops_refuses_non_positive_sizes(capsys, argv, flag):
    tool = load_tool('analysis/get_flops.py')
    with pytest.raises(SystemExit) as exc:
        tool.parse_args([TINY, *argv])
    assert exc.value.code == 2
    assert f'argument {flag}' in capsys.readouterr().err


@pytest.mark.parametrize('argv,message', [
    (['--num-texts', '0', '--num-videos', '5'], '--num-texts must be >= 1'),
    (['--num-texts', '3', '--num-videos', '5'], '--num-texts must be >= --num-videos'),
    (['--dim', '0'], '--dim must be >= 1'),
    (['--chunk-size', '-1'], '--chunk-size must be >= 1'),
    (['--threads', '0'], '--threads must be >= 1'),
    (['--bank', '0', '--configs', 'qb'], '--bank must be >= 1'),
])
def test_benchmark_validates_numbers_before_any_worker(tmp_path, capsys, argv, message):
    out = tmp_path / 'bench.json'
    tool = load_tool('analysis/benchmark_retrieval_eval.py')
    base = ['--num-texts', '8', '--num-videos', '8', '--dim', '4', '--configs', 'plain']
    with pytest.raises(SystemExit) as exc:
        tool.main(base + argv + ['--out', str(out)])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert message in one_line_error(captured.err, ': error: ')
    assert 'settings:' not in captured.out and not out.exists()


@pytest.mark.parametrize('options,bad', [
    ({'test_dataloader': {'batch_size': 0}}, 'test_dataloader.batch_size=0'),
    ({'train_dataloader': {'batch_size': -1}}, 'train_dataloader.batch_size=-1'),
    ({'val_dataloader': {'num_workers': -1}}, 'val_dataloader.num_workers=-1'),
    ({'extra_dataloader': {'batch_size': 0}}, 'extra_dataloader.batch_size=0'),
])
def test_check_numeric_options_refuses_loader_sizes_out_of_range(options, bad):
    cfg = Config(dict(test_dataloader=dict(batch_size=2, num_workers=0)))
    cfg.merge_from_dict(options)
    with pytest.raises(ConfigOptionError, match=f'out of range: {bad}'):
        check_numeric_options(cfg)


def test_check_numeric_options_keeps_valid_loader_sizes():
    check_numeric_options(Config(dict(
        train_dataloader=dict(batch_size=1, num_workers=0), val_dataloader=None,
        test_dataloader=dict(batch_size=8, num_workers=2))))
    with pytest.raises(ConfigOptionError, match='must be numbers are not: test_dataloader'
                       r'.batch_size=0.0 \(expected an integer: write 0'):
        check_numeric_options(Config(dict(test_dataloader=dict(batch_size=0.0))))


def test_test_tool_refuses_batch_size_zero(tmp_path):
    test_tool = load_tool('test.py')
    ckpt = tmp_path / 'ckpt.pth'
    ckpt.write_bytes(b'x')
    args = test_tool.parse_args([TINY, str(ckpt), '--cfg-options',
                                 'test_dataloader.batch_size=0'])
    with pytest.raises(ConfigOptionError, match='test_dataloader.batch_size=0'):
        test_tool.merge_args(Config.fromfile(TINY), args)


# ------------------------------------------------------------------ 5: synthetic data root
def test_synthetic_folder_of_other_contents_is_a_user_error(tmp_path, capsys):
    from stan_mm.datasets.synthetic import (SyntheticDatasetExistsError,
                                            generate_motion_dataset)
    assert issubclass(SyntheticDatasetExistsError, FileExistsError)
    assert SyntheticDatasetExistsError in user_errors()
    other = tmp_path / 'other'
    other.mkdir()
    (other / 'notes.txt').write_text('mine')
    with pytest.raises(SyntheticDatasetExistsError, match='not empty'):
        generate_motion_dataset(str(other), num_train=1, num_val=0, num_test=0, progress=False)
    # through tools/train.py: one line, exit 2 (the dataset is built when training starts)
    argv = [TINY, '--work-dir', str(tmp_path / 'w'), '--cfg-options',
            f'train_dataloader.dataset.data_root={other}', 'train_dataloader.num_workers=0',
            'train_dataloader.persistent_workers=False']
    assert run('train.py', argv, 'train.py') == 2
    line = one_line_error(capsys.readouterr().err, 'train.py: error: ')
    assert 'SyntheticDatasetExistsError' in line and str(other) in line
    assert os.listdir(other) == ['notes.txt']


def test_amp_converts_plain_wrappers_and_names_the_others(tmp_path):
    """--amp turns OptimWrapper / AmpOptimWrapper (scoped names too) into
    AutoAmpOptimWrapper with bf16; another wrapper type is refused naming --amp (it got
    a dtype it does not take and failed after the model was built with a bare TypeError)."""
    train = load_tool('train.py')
    args = train.parse_args([TINY, '--work-dir', str(tmp_path / 'w'), '--amp'])
    for kind in (None, 'OptimWrapper', 'mmengine.OptimWrapper', 'AmpOptimWrapper',
                 'AutoAmpOptimWrapper'):
        cfg = Config.fromfile(TINY)
        if kind is None:
            cfg.optim_wrapper.pop('type', None)
        else:
            cfg.optim_wrapper.type = kind
        out = train.merge_args(cfg, args)
        assert out.optim_wrapper.type == 'AutoAmpOptimWrapper', kind
        assert out.optim_wrapper.dtype == 'bfloat16'
    cfg = Config.fromfile(TINY)
    cfg.optim_wrapper.type = 'ApexOptimWrapper'
    with pytest.raises(CommandLineError, match=r"--amp .*'ApexOptimWrapper'"):
        train.merge_args(cfg, args)
