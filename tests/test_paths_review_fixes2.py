"""Review fixes: what the tools may replace or read, and where the shell scripts run from.

1. ``tools/data/make_synthetic.py --overwrite`` replaces only a folder whose ``meta.json``
   says the synthetic generator wrote it; any other non-empty folder (or a file) is refused,
   ``--overwrite`` or not (``--out data`` or ``--out .`` wiped real data).
2. ``tools/convert/clip_to_mm.py SRC OUTDIR`` refuses a non-empty folder that holds
   anything but its own earlier output, and reports the size of the files it wrote.
3. ``--classnames`` of ``tools/demo/recognize.py``: a value that looks like a path is a
   file (a missing one is an error, not one class name scored 1.0); one class is refused.
4. ``tools/dist_*.sh`` and the Slurm scripts find the repository with ``CDPATH`` exported.
"""
import json
import os
import os.path as osp
import shutil
import subprocess
import sys

import pytest

from stan_mm.datasets import synthetic as syn

sys.path.insert(0, osp.dirname(__file__))
from test_user_tools import load_tool  # noqa: E402

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..'))
SMALL = dict(num_train=2, num_val=2, num_test=0, num_frames=4, size=32,
             captions_per_video=1, pairs=('horizontal', ), seed=1, progress=False)


# ------------------------------------------------------------------ 1. make_synthetic
def _user_folder(tmp_path):
    """What the reviewer's --out /tmp/u held: a project of the user's, no dataset."""
    out = tmp_path / 'u'
    (out / 'project').mkdir(parents=True)
    (out / 'project' / 'notes.txt').write_text('x')
    return out


def test_overwrite_never_replaces_a_folder_the_generator_did_not_write(tmp_path):
    out = _user_folder(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(syn.SyntheticDatasetExistsError) as e:
            syn.generate_motion_dataset(str(out), overwrite=overwrite, **SMALL)
        msg = str(e.value)
        assert str(out) in msg and 'is not a synthetic dataset' in msg, msg
        assert 'remove it yourself' in msg and 'choose another output directory' in msg
        assert 'to replace it' not in msg      # --overwrite is not offered as the way out
        assert (out / 'project' / 'notes.txt').read_text() == 'x'
        assert sorted(os.listdir(tmp_path)) == ['u']        # no temporary leftovers
    # a meta.json of something else is not this generator's either
    (out / 'meta.json').write_text(json.dumps({'generator': 'my own tool', 'params': {}}))
    with pytest.raises(syn.SyntheticDatasetExistsError, match='is not a synthetic dataset'):
        syn.generate_motion_dataset(str(out), overwrite=True, **SMALL)
    assert (out / 'project' / 'notes.txt').read_text() == 'x'
    # a file where the folder would go is not replaced either
    path = tmp_path / 'file'
    path.write_text('keep')
    with pytest.raises(syn.SyntheticDatasetExistsError, match='is not a directory'):
        syn.generate_motion_dataset(str(path), overwrite=True, **SMALL)
    assert path.read_text() == 'keep'


def test_make_synthetic_tool_refuses_with_one_line_and_keeps_the_files(tmp_path):
    out = _user_folder(tmp_path)
    r = subprocess.run([sys.executable, 'tools/data/make_synthetic.py', '--out', str(out),
                        '--num-train', '2', '--num-val', '2', '--num-test', '2', '--quiet',
                        '--overwrite'], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('make_synthetic.py: error: '), r.stderr
    assert f'{out} is not empty and is not a synthetic dataset' in lines[0]
    assert (out / 'project' / 'notes.txt').read_text() == 'x'


def test_overwrite_replaces_a_dataset_of_the_generator_and_empty_folders_are_used(tmp_path):
    out = tmp_path / 'ds'
    syn.generate_motion_dataset(str(out), **SMALL)
    other = dict(SMALL, seed=2)
    with pytest.raises(syn.SyntheticDatasetExistsError) as e:   # ours: --overwrite offered
        syn.generate_motion_dataset(str(out), **other)
    assert 'holds a synthetic dataset' in str(e.value) and '--overwrite' in str(e.value)
    assert syn.generate_motion_dataset(str(out), overwrite=True, **other)['params']['seed'] == 2
    empty = tmp_path / 'empty'
    empty.mkdir()
    syn.generate_motion_dataset(str(empty), **SMALL)
    assert syn.load_meta(str(empty))['generator'] == (
        'stan_mm.datasets.synthetic.generate_motion_dataset')
    assert sorted(os.listdir(tmp_path)) == ['ds', 'empty']


def test_move_into_place_checks_again(tmp_path):
    """A folder that became someone else's while the videos were written is kept."""
    out = _user_folder(tmp_path)
    tmp = tmp_path / 'tmp'
    tmp.mkdir()
    with pytest.raises(syn.SyntheticDatasetExistsError, match='is not a synthetic dataset'):
        syn._move_into_place(str(tmp), str(out), {})
    assert (out / 'project' / 'notes.txt').read_text() == 'x'


# ------------------------------------------------------------------ 2. clip_to_mm
DIR_FILES = ('open_clip_config.json', 'open_clip_model.safetensors')


@pytest.fixture(scope='module')
def clip_src(tmp_path_factory):
    from stan_mm.testing import save_open_clip, tiny_clip, tiny_clip_cfg
    path = str(tmp_path_factory.mktemp('clip') / 'tiny.safetensors')
    save_open_clip(tiny_clip(seed=5, quick_gelu=False), path)
    return path, json.dumps(tiny_clip_cfg(quick_gelu=False))


def test_clip_to_mm_refuses_a_folder_of_other_files(clip_src, tmp_path, capsys):
    src, arch = clip_src
    tool = load_tool('tools/convert/clip_to_mm.py')
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'notes.txt').write_text('mine')
    assert tool.main([src, str(out), '--arch', arch]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith('clip_to_mm: error: '), err
    assert f'output folder {out} is not empty' in err and 'notes.txt' in err, err
    assert os.listdir(out) == ['notes.txt']
    # an open_clip folder this tool did not write: its config is not replaced
    (out / 'notes.txt').unlink()
    (out / 'open_clip_config.json').write_text('{"model_cfg": {"embed_dim": 1}}')
    assert tool.main([src, str(out), '--arch', arch]) == 2
    assert 'open_clip_config.json' in capsys.readouterr().err
    assert (out / 'open_clip_config.json').read_text() == '{"model_cfg": {"embed_dim": 1}}'
    assert os.listdir(out) == ['open_clip_config.json']
    # a folder given for a single file
    assert tool.main([src, str(out) + '.pth', '--arch', arch]) == 0   # a file: fine
    capsys.readouterr()
    os.mkdir(tmp_path / 'dir.pth')
    assert tool.main([src, str(tmp_path / 'dir.pth'), '--arch', arch]) == 2
    assert 'is a folder; give a file name' in capsys.readouterr().err


def test_clip_to_mm_replaces_its_own_output_and_reports_the_written_size(clip_src, tmp_path,
                                                                         capsys):
    from stan_mm.apis.clip_export import convert_clip
    src, arch = clip_src
    out = str(tmp_path / 'out')
    for empty_first in (True, False):    # an empty folder, then its own earlier output
        if empty_first:
            os.mkdir(out)
        report = convert_clip(src, out, arch=json.loads(arch))
        assert sorted(os.listdir(out)) == sorted(DIR_FILES)
        assert report.out_bytes == sum(osp.getsize(osp.join(out, f)) for f in DIR_FILES)
    # an interrupted run's temporary file is its own too
    shutil.copy(osp.join(out, DIR_FILES[1]), osp.join(out, DIR_FILES[1] + '.tmp'))
    report = convert_clip(src, out, arch=json.loads(arch))
    assert sorted(os.listdir(out)) == sorted(DIR_FILES)


# ------------------------------------------------------------------ 3. --classnames
def test_classnames_that_look_like_a_path_are_files(tmp_path, monkeypatch):
    from stan_mm.apis.recognition import parse_classnames
    monkeypatch.chdir(tmp_path)
    for value in ('data/ucf101/classes.csv', 'classes.csv', 'classes.txt', 'names.json',
                  'data/ucf101/classnames', 'a/b,c'):
        with pytest.raises(FileNotFoundError, match='class names file not found') as e:
            parse_classnames(value)
        assert repr(value) in str(e.value)
    (tmp_path / 'two.csv').write_text('walking\nrunning\n')
    assert parse_classnames('two.csv') == ['walking', 'running']
    (tmp_path / 'noext').write_text('a\nb\n')
    assert parse_classnames('noext') == ['a', 'b']                   # exists: a file
    # comma-separated lists keep working
    assert parse_classnames(' red, green ,blue') == ['red', 'green', 'blue']
    assert parse_classnames('moving left,moving right') == ['moving left', 'moving right']
    assert parse_classnames(['a', 'b']) == ['a', 'b']


def test_one_class_is_refused(tmp_path, monkeypatch):
    from stan_mm.apis.recognition import parse_classnames
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'one.txt').write_text('walking\n')
    for value in ('walking', 'one.txt', ['walking']):
        with pytest.raises(ValueError, match=r'one class .*scores it 1\.0 whatever the video'):
            parse_classnames(value)


def test_recognize_tool_names_the_missing_classnames_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name in ('ckpt.pth', 'video.mp4'):
        (tmp_path / name).write_bytes(b'x')
    cfg = osp.join(REPO, 'configs', 'quickstart', 'motion_stan_tiny.py')
    tool = load_tool('tools/demo/recognize.py')
    assert tool.main([cfg, 'ckpt.pth', 'video.mp4',
                      '--classnames', 'data/ucf101/classes.csv']) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith('recognize: error: '), err
    assert "class names file not found: 'data/ucf101/classes.csv'" in err, err


# ------------------------------------------------------------------ 4. CDPATH
FAKE_PYTHON = '#!/bin/sh\nprintf "ARG:%s\\n" "$@"\necho "PYTHONPATH:$PYTHONPATH"\n'
FAKE_SRUN = ('#!/bin/sh\n# skip the srun options up to the command: $PYTHON\n'
             'while [ $# -gt 0 ] && [ "$1" != "$PYTHON" ]; do shift; done\nexec "$@"\n')


@pytest.mark.skipif(shutil.which('bash') is None, reason='needs bash')
@pytest.mark.parametrize('script,args,tool', [
    ('dist_train.sh', ['cfg.py', '1'], 'train.py'),
    ('dist_test.sh', ['cfg.py', 'ckpt.pth', '1'], 'test.py'),
    ('slurm_train.sh', ['part', 'job', 'cfg.py'], 'train.py'),
    ('slurm_test.sh', ['part', 'job', 'cfg.py', 'ckpt.pth'], 'test.py'),
])
def test_scripts_find_the_repository_with_cdpath_exported(tmp_path, script, args, tool):
    """Run as ``bash repo/tools/X.sh`` (a relative path) with ``CDPATH`` exported: ``cd``
    searched CDPATH first (here a decoy holding ``repo/tools``) and printed the folder,
    which ended up in the path of the Python tool."""
    (tmp_path / 'repo').symlink_to(REPO)
    (tmp_path / 'decoy' / 'repo' / 'tools').mkdir(parents=True)
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    for name, text in (('python', FAKE_PYTHON), ('srun', FAKE_SRUN)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, CDPATH=str(tmp_path / 'decoy'), PYTHON=str(bin_dir / 'python'),
               PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}', GPUS='1',
               GPUS_PER_NODE='1', PYTHONPATH='')
    r = subprocess.run(['bash', f'repo/tools/{script}', *args], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    root = str(tmp_path / 'repo')
    lines = r.stdout.splitlines()
    assert f'ARG:{root}/tools/{tool}' in lines, r.stdout
    assert f'PYTHONPATH:{root}' in lines, r.stdout
    assert 'decoy' not in r.stdout + r.stderr
