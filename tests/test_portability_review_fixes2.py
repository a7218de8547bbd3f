"""Portability review, part 2:

A. tools/quickstart.py: ``--data-root DIR`` (and ``--cfg-options data_root=DIR``, which the
   configs ignored: they copy ``data_root`` into each loader when loaded) reaches every
   dataloader; a read-only current folder (data root or default work dir) ends in one line
   naming the folder and the option instead of an OSError traceback.
B. stan_mm.apis.video.list_videos: a list-file line starting with ``#`` that names an
   existing file is that video (a folder scan lists it), not a comment.
C. stan_mm.utils.benchmark: ``ru_maxrss`` is bytes on macOS, KiB on Linux.
"""
import errno
import importlib.util
import os
import os.path as osp
import sys
import types

import pytest

import stan_mm  # noqa: F401  (registers the modules)
from stan_mm.utils.cli import CommandLineError, run_tool

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
QUICKSTART = osp.join(REPO, 'tools', 'quickstart.py')
RETRIEVAL = osp.join(REPO, 'configs', 'quickstart', 'motion_retrieval_tiny.py')
LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')
TINY_DATA = dict(num_train=4, num_val=2, num_test=2, num_frames=4, size=32, seed=1,
                 progress=False)


def load_quickstart():
    spec = importlib.util.spec_from_file_location('quickstart_under_test', QUICKSTART)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_line_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith('quickstart.py: error: ')]
    assert len(lines) == 1 and 'Traceback' not in err, err
    return lines[0]


def read_only(monkeypatch, folder):
    """Make ``folder`` behave as on a read-only file system (the tests may run as root,
    for whom permission bits do not stop a write): creating anything below it fails with
    EROFS, ``os.access(W_OK)`` is False."""
    folder = osp.abspath(str(folder))

    def inside(path):
        path = osp.abspath(os.fspath(path))
        return path == folder or path.startswith(folder + os.sep)
    real_makedirs, real_mkdir, real_access = os.makedirs, os.mkdir, os.access

    def makedirs(name, mode=0o777, exist_ok=False):
        if inside(name) and not (exist_ok and osp.isdir(name)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(name))
        return real_makedirs(name, mode, exist_ok)

    def mkdir(path, mode=0o777, *args, **kwargs):
        if inside(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real_mkdir(path, mode, *args, **kwargs)

    def access(path, mode, *args, **kwargs):
        if inside(path) and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)
    monkeypatch.setattr(os, 'makedirs', makedirs)
    monkeypatch.setattr(os, 'mkdir', mkdir)
    monkeypatch.setattr(os, 'access', access)


def tiny_config(folder, data_root):
    """The quickstart STAN on a tiny generated dataset at ``data_root``, 1 epoch."""
    loaders = '\n'.join(
        f'{split}_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False, '
        f'dataset=dict(data_root={str(data_root)!r}, generate={TINY_DATA!r}))'
        for split in ('train', 'val', 'test'))
    cfg = osp.join(str(folder), 'tiny.py')
    with open(cfg, 'w') as f:
        f.write(f"_base_ = [{osp.join(REPO, 'configs', 'quickstart', 'motion_stan_tiny.py')!r}]"
                f"\n{loaders}\ntrain_cfg = dict(max_epochs=1, val_interval=1)\n"
                "param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=True)]\n")
    return cfg


# ----------------------------------------------------------------- A: quickstart data root
@pytest.mark.parametrize('argv', [
    ['--data-root', '{root}'],
    ['--baseline', '--data-root', '{root}'],
    ['--config', RETRIEVAL, '--data-root', '{root}'],
    ['--cfg-options', 'data_root={root}'],          # was ignored: the loaders kept data/motion
    ['--config', RETRIEVAL, '--cfg-options', 'data_root={root}'],
])
def test_data_root_reaches_every_dataloader(tmp_path, argv):
    tool = load_quickstart()
    root = str(tmp_path / 'my data' / 'motion')
    args = tool.parse_args([a.format(root=root) for a in argv])
    _, cfg = tool.build_config(args)
    assert [cfg[k].dataset.data_root for k in LOADERS] == [root] * 3
    assert cfg.data_root == root
    # nothing was written by building the config
    assert not (tmp_path / 'my data').exists()


def test_default_data_root_and_outputs_unchanged():
    tool = load_quickstart()
    for argv, name in (([], 'stan'), (['--baseline'], 'meanpool')):
        got, cfg = tool.build_config(tool.parse_args(argv))
        assert got == name
        assert [cfg[k].dataset.data_root for k in LOADERS] == ['data/motion'] * 3
        assert cfg.work_dir == osp.join('work_dirs', 'quickstart', name)


def test_a_loader_option_keeps_its_own_folder_and_conflicts_are_refused(tmp_path, capsys):
    tool = load_quickstart()
    args = tool.parse_args(['--data-root', str(tmp_path / 'a'), '--cfg-options',
                            f'val_dataloader.dataset.data_root={tmp_path / "v"}'])
    _, cfg = tool.build_config(args)
    assert [cfg[k].dataset.data_root for k in LOADERS] == [
        str(tmp_path / 'a'), str(tmp_path / 'v'), str(tmp_path / 'a')]
    with pytest.raises(SystemExit) as exc:
        tool.parse_args(['--data-root', str(tmp_path / 'a'),
                         '--cfg-options', f'data_root={tmp_path / "b"}'])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert '--data-root' in err and 'data_root=' in err and 'Traceback' not in err
    (tmp_path / 'file').write_text('x')
    with pytest.raises(SystemExit):
        tool.parse_args(['--data-root', str(tmp_path / 'file')])
    assert 'is a file, not a folder' in capsys.readouterr().err


def test_unwritable_data_root_is_one_line(tmp_path, monkeypatch, capsys):
    tool = load_quickstart()
    ro = tmp_path / 'ro'
    ro.mkdir()
    read_only(monkeypatch, ro)
    argv = ['--data-root', str(ro / 'motion'), '--work-dir', str(tmp_path / 'work')]
    assert run_tool(lambda: tool.main(argv), 'quickstart.py') == 2
    line = one_line_error(capsys.readouterr().err)
    assert f'--data-root {str(ro / "motion")!r}' in line and repr(str(ro)) in line
    assert 'not writable' in line and 'give a writable folder with --data-root DIR' in line


def test_read_only_current_folder_default_data_root_is_one_line(tmp_path, monkeypatch,
                                                                 capsys):
    """The README's command in a read-only folder: before, an OSError traceback from the
    data generator (EROFS on <cwd>/data)."""
    tool = load_quickstart()
    ro = tmp_path / 'ro'
    ro.mkdir()
    read_only(monkeypatch, ro)
    monkeypatch.chdir(ro)
    argv = ['--work-dir', str(tmp_path / 'work')]
    assert run_tool(lambda: tool.main(argv), 'quickstart.py') == 2
    line = one_line_error(capsys.readouterr().err)
    assert "the data root 'data/motion'" in line and repr(str(ro / 'data')) in line
    assert 'Read-only file system' in line and '--data-root DIR' in line


def test_read_only_current_folder_default_work_dir_is_one_line(tmp_path, monkeypatch,
                                                               capsys):
    """Data elsewhere, no --work-dir, read-only current folder: before, an OSError
    traceback from the runner creating work_dirs/quickstart/<name>."""
    tool = load_quickstart()
    ro = tmp_path / 'ro'
    ro.mkdir()
    cfg = tiny_config(tmp_path, tmp_path / 'data' / 'motion')
    read_only(monkeypatch, ro)
    monkeypatch.chdir(ro)
    assert run_tool(lambda: tool.main(['--config', cfg]), 'quickstart.py') == 2
    line = one_line_error(capsys.readouterr().err)
    assert repr(str(ro / 'work_dirs' / 'quickstart' / 'tiny')) in line
    assert 'Read-only file system' in line and '--work-dir DIR' in line


def test_a_benchmark_already_in_a_read_only_folder_is_only_read(tmp_path, monkeypatch):
    from stan_mm.datasets.synthetic import generate_motion_dataset
    tool = load_quickstart()
    root = tmp_path / 'ro' / 'motion'
    _, cfg = tool.build_config(tool.parse_args(['--config', tiny_config(tmp_path, root)]))
    generate = cfg.train_dataloader.dataset.generate    # (TINY_DATA over the base's motion)
    generate_motion_dataset(str(root), **generate)
    read_only(monkeypatch, tmp_path / 'ro')
    tool.check_data_roots(cfg, None)                     # holds the benchmark: no error
    # other parameters: it would have to be regenerated there, which cannot be done
    generate.seed = 2
    with pytest.raises(CommandLineError, match='not writable.*--data-root DIR'):
        tool.check_data_roots(cfg, None)


# ------------------------------------------------------------------- B: '#' in list files
def test_list_file_keeps_videos_whose_names_start_with_hash(tmp_path):
    from stan_mm.apis.video import list_videos
    for name in ('#1 clip.mp4', 'a.mp4', '#2.mp4'):
        (tmp_path / name).write_bytes(b'')
    listed = tmp_path / 'videos.txt'
    listed.write_text('# my videos\n#1 clip.mp4\n#a.mp4\na.mp4\n  # indented comment\n#2\n')
    root, paths = list_videos(str(listed))
    # '#1 clip.mp4' and '#2' (-> '#2.mp4') are files; '#a.mp4' is no file: a comment
    assert root == str(tmp_path)
    assert paths == ['#1 clip.mp4', 'a.mp4', '#2.mp4']
    assert list_videos(str(listed), resolve=False)[1] == ['#1 clip.mp4', 'a.mp4', '#2']
    assert sorted(paths) == list_videos(str(tmp_path))[1]    # the folder scan agrees
    # the same names from a list in another folder, relative to that list's folder
    sub = tmp_path / 'lists'
    sub.mkdir()
    (sub / 'l.txt').write_text('#1 clip.mp4\n../#1 clip.mp4\n../a.mp4\n')
    assert list_videos(str(sub / 'l.txt'))[1] == ['../#1 clip.mp4', '../a.mp4']


def test_list_docs_say_how_hash_lines_are_read():
    from stan_mm.apis.video import list_videos
    assert '#1 clip.mp4' in list_videos.__doc__
    with open(osp.join(REPO, 'docs', 'user_tools.md'), encoding='utf-8') as f:
        assert 'a `#` line that names an existing file' in f.read()


# ------------------------------------------------------------------- C: ru_maxrss units
@pytest.mark.parametrize('platform,expected', [('darwin', 123456789),
                                               ('linux', 123456789 * 1024),
                                               ('freebsd13', 123456789 * 1024)])
def test_ru_maxrss_unit_follows_the_platform(monkeypatch, platform, expected):
    import resource
    from stan_mm.utils import benchmark as B
    monkeypatch.setattr(sys, 'platform', platform)
    monkeypatch.setattr(resource, 'getrusage',
                        lambda who: types.SimpleNamespace(ru_maxrss=123456789))
    peak, method = B._peak_rss_since_reset(False)
    assert peak == expected and 'ru_maxrss' in method


def test_step_memory_without_proc_on_macos(monkeypatch):
    """No /proc (macOS): the high-water mark before the step stands for the RSS before
    it (before: max() of an int and None raised TypeError); bytes, not KiB x 1024."""
    import resource
    from stan_mm.utils import benchmark as B
    monkeypatch.setattr(sys, 'platform', 'darwin')
    monkeypatch.setattr(B, '_reset_peak_rss', lambda: False)
    monkeypatch.setattr(B, 'current_rss', lambda: None)
    maxrss = iter([100 * 2**20, 164 * 2**20])           # bytes, as macOS reports them
    monkeypatch.setattr(resource, 'getrusage',
                        lambda who: types.SimpleNamespace(ru_maxrss=next(maxrss)))
    mem = B.measure_step_rss(lambda: None)
    assert (mem['before'], mem['peak'], mem['delta']) == (100 * 2**20, 164 * 2**20, 64 * 2**20)
    assert 'lower bound' in mem['method']
