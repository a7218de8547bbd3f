"""``stan_mm.utils.atomic``: the one atomic-replace implementation behind the checkpoint
hook's ``atomic_write_bytes``, the feature folder's files (``features._replacing``), the
converter's ``save_atomic`` and the benchmark's temporary videos.
"""
import os
import stat
import subprocess
import time
import sys

import numpy as np
import pytest
import torch

from stan_mm.utils.atomic import default_mode, new_temp_beside, replacing, umask


def test_umask_matches_the_process_umask():
    """Read without changing it; checked in a child with a umask of its own."""
    code = ('import os; os.umask(0o027); from stan_mm.utils.atomic import umask; '
            'before = umask(); print(oct(before), oct(os.umask(0o027)))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ['0o27', '0o27']
    assert umask() == (lambda m: (os.umask(m), m)[1])(os.umask(0o022))


def test_new_file_gets_open_mode_and_replaced_file_keeps_its_mode(tmp_path):
    path = tmp_path / 'a.bin'
    with replacing(str(path)) as f:
        f.write(b'one')
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask()
    os.chmod(path, 0o640)
    with replacing(str(path)) as f:
        f.write(b'two')
    assert path.read_bytes() == b'two'
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert sorted(os.listdir(tmp_path)) == ['a.bin']


@pytest.mark.parametrize('exc', [RuntimeError, KeyboardInterrupt, OSError])
def test_a_failed_block_leaves_the_old_file_and_no_temporary(tmp_path, exc):
    path = tmp_path / 'a.txt'
    path.write_text('old')
    with pytest.raises(exc):
        with replacing(str(path), text=True) as f:
            f.write('half of the new')
            raise exc('stop')
    assert path.read_text() == 'old'
    assert os.listdir(tmp_path) == ['a.txt']


def test_a_link_planted_at_a_guessable_name_is_not_written_through(tmp_path):
    """The temporary name is unpredictable and created exclusively: links at the fixed names
    earlier versions used stay untouched."""
    victim = tmp_path / 'victim'
    victim.write_bytes(b'keep')
    for name in ('.a.bin.tmp', 'a.bin.tmp'):
        os.symlink(victim, tmp_path / name)
    with replacing(str(tmp_path / 'a.bin')) as f:
        f.write(b'new')
    assert victim.read_bytes() == b'keep'
    assert (tmp_path / 'a.bin').read_bytes() == b'new'


def test_new_temp_beside_names_and_mode(tmp_path):
    target = tmp_path / 'video.mp4'
    target.write_bytes(b'')
    os.chmod(target, 0o604)
    fd, tmp = new_temp_beside(str(target), suffix='.tmp.mp4')
    os.close(fd)
    name = os.path.basename(tmp)
    assert name.startswith('.video.mp4.') and name.endswith('.tmp.mp4')
    assert len(name) == len('.video.mp4.') + 8 + len('.tmp.mp4')
    assert stat.S_IMODE(os.stat(tmp).st_mode) == 0o604 == default_mode(str(target))


def test_callers_keep_the_mode_of_the_file_they_replace(tmp_path):
    """save_atomic and the feature folder's .npy files used to reset a replaced file to
    0o666 less the umask, unlike open() and atomic_write_bytes."""
    from stan_mm.apis.features import atomic_save_npy
    from stan_mm.engine.checkpoint_hook import atomic_write_bytes
    from stan_mm.utils.stan_convert import save_atomic
    writers = {'ckpt.pth': lambda p: save_atomic({'w': torch.ones(2)}, p),
               'emb.npy': lambda p: atomic_save_npy(p, np.ones(3, np.float32)),
               'state.bin': lambda p: atomic_write_bytes(b'x', p)}
    for name, write in writers.items():
        path = str(tmp_path / name)
        write(path)
        os.chmod(path, 0o640)
        write(path)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640, name
    assert sorted(os.listdir(tmp_path)) == sorted(writers)


def test_converter_sweeps_the_temporaries_of_killed_conversions(tmp_path):
    """A conversion killed mid-write leaves ``.<name>.<random>.tmp`` (a model-sized copy);
    the next save to the same file removes those older than 10 minutes, and nothing else:
    a young one (a conversion still writing), another file's, a symlink, a user's file."""
    from stan_mm.utils.stan_convert import save_atomic
    out = tmp_path / 'model.pth'
    old = time.time() - 3600
    names = {'.model.pth.a1B2c3D4.tmp': True, '.model.pth.Zz9_yy8X.tmp': False,
             '.other.pth.a1B2c3D4.tmp': False, '.model.pth.notrandom.tmp': False,
             'model.pth.a1B2c3D4.tmp': False}
    for name, stale in names.items():
        (tmp_path / name).write_bytes(b'x' * 10)
        if stale or name != '.model.pth.Zz9_yy8X.tmp':
            os.utime(tmp_path / name, (old, old))
    os.symlink(tmp_path / 'victim', tmp_path / '.model.pth.LiNk0000.tmp')
    (tmp_path / 'victim').write_bytes(b'keep')
    save_atomic({'w': torch.ones(2)}, str(out))
    left = set(os.listdir(tmp_path))
    for name, stale in names.items():
        assert (name not in left) == stale, name
    assert {'model.pth', 'victim', '.model.pth.LiNk0000.tmp'} <= left
