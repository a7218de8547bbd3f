"""Review fixes: outputs replaced as a whole, and folder locks that hold across threads.

1. ``clip_to_mm`` into a folder: both files are written into a new folder beside ``OUT``
   that then takes its place (a full disk or a kill between the two files left the new
   weights with the previous config, whose activation the loader then used silently).
2. ``clip_to_mm`` to ``OUT.pth``: a temporary file of its own per run, fsync'ed, removed on
   failure, and a full disk names the file.
3. ``folder_lock``: a second thread of the process is refused (it entered unlocked, and the
   first thread's exit unlocked the folder while the second still wrote).
4. ``AtomicCheckpointHook.before_train`` locks the work dir (and ``out_dir``) before it
   deletes the temporary files of a killed run: a second run started in a work dir without
   tools/train.py deleted the checkpoint the first run was writing.
5. ``extract_features`` removes the temporary files a killed run left (``sim.npy.tmp.npy``
   of ``--save-sim`` stayed forever after a rerun without it).
"""
import contextlib
import errno
import fcntl
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import threading

import pytest
import torch

DIR_FILES = ('open_clip_config.json', 'open_clip_model.safetensors')


def _locked_elsewhere(path) -> bool:
    """Whether a flock on the folder ``path`` is held (through another open file
    description: this process's own folder_lock counts too)."""
    fd = os.open(str(path), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@contextlib.contextmanager
def _held_by_another_process(path):
    """A subprocess holding a flock on the folder ``path`` while the block runs."""
    holder = subprocess.Popen([sys.executable, '-c', (
        'import fcntl, os, sys, time\n'
        f'fd = os.open({str(path)!r}, os.O_RDONLY)\n'
        'fcntl.flock(fd, fcntl.LOCK_EX)\n'
        'print("locked", flush=True)\n'
        'time.sleep(60)\n')], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        yield
    finally:
        holder.kill()
        holder.wait()


# ------------------------------------------------------------------ 1. clip_to_mm folder
@pytest.fixture(scope='module')
def two_clips(tmp_path_factory):
    """Two tiny CLIPs of one shape that differ in weights and activation: the earlier
    output (QuickGELU) and the one converted into the same folder next (GELU)."""
    from stan_mm.testing import save_open_clip, tiny_clip, tiny_clip_cfg
    root = tmp_path_factory.mktemp('clips')
    out = {}
    for name, seed, quick in (('old', 1, True), ('new', 2, False)):
        path = str(root / f'{name}.safetensors')
        save_open_clip(tiny_clip(seed=seed, quick_gelu=quick), path)
        out[name] = (path, tiny_clip_cfg(quick_gelu=quick))
    return out


def _convert(clips, which, out):
    from stan_mm.apis.clip_export import convert_clip
    src, arch = clips[which]
    return convert_clip(src, str(out), arch=arch)


def _assert_is(clips, which, out):
    """``out`` loads as the conversion of ``clips[which]``: its weights and activation."""
    from safetensors.torch import load_file
    from stan_mm.models.clip import read_clip_checkpoint
    ck = read_clip_checkpoint(str(out))
    ref = load_file(clips[which][0])
    assert ck.quick_gelu is clips[which][1]['quick_gelu']
    assert torch.equal(ck.state_dict['visual.conv1.weight'], ref['visual.conv1.weight'])


def _boom_on(name):
    def boom(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    boom.__name__ = name
    return boom


def test_a_full_disk_while_the_config_is_written_keeps_the_previous_folder(
        two_clips, tmp_path, monkeypatch):
    """The config write fails (ENOSPC) after the weights were written: the folder still
    loads as the previous model, weights and activation alike, the error names the file,
    and nothing is left beside the folder."""
    out = tmp_path / 'clip'
    _convert(two_clips, 'old', out)
    real_fsync = os.fsync

    def fsync(fd):        # (the disk fills while the config is written: ENOSPC at fsync)
        if os.readlink(f'/proc/self/fd/{fd}').endswith(DIR_FILES[0]):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)
    monkeypatch.setattr(os, 'fsync', fsync)
    with pytest.raises(OSError) as e:
        _convert(two_clips, 'new', out)
    monkeypatch.undo()
    _assert_is(two_clips, 'old', out)     # (not the new weights with the old activation)
    assert e.value.errno == errno.ENOSPC
    assert str(out / 'open_clip_config.json') in str(e.value), e.value
    assert 'free some space' in str(e.value) and f'{out} is unchanged' in str(e.value)
    assert sorted(os.listdir(tmp_path)) == ['clip']
    assert sorted(os.listdir(out)) == sorted(DIR_FILES)


def test_a_full_disk_while_the_weights_are_written_names_the_file(two_clips, tmp_path,
                                                                   monkeypatch):
    """safetensors reports a failed write as its own error ('... (os error 28)'): it
    becomes an OSError naming the weights file; the folder is the previous one."""
    import safetensors.torch

    class SafetensorError(Exception):
        pass

    def fail(*args, **kwargs):
        raise SafetensorError('Error while serializing: I/O error: No space left on '
                              'device (os error 28)')
    out = tmp_path / 'clip'
    _convert(two_clips, 'old', out)
    monkeypatch.setattr(safetensors.torch, 'save', fail)
    with pytest.raises(OSError) as e:
        _convert(two_clips, 'new', out)
    monkeypatch.undo()
    assert e.value.errno == errno.ENOSPC
    assert str(out / 'open_clip_model.safetensors') in str(e.value), e.value
    _assert_is(two_clips, 'old', out)
    assert sorted(os.listdir(tmp_path)) == ['clip']


def test_an_interrupt_between_the_renames_puts_the_previous_folder_back(
        two_clips, tmp_path, monkeypatch):
    """Ctrl-C after the previous folder went aside and before the new one took its name:
    the previous one is put back, nothing is left beside it."""
    out = tmp_path / 'clip'
    _convert(two_clips, 'old', out)
    real, calls = os.rename, []

    def rename(a, b):
        calls.append((a, b))
        if len(calls) == 2:      # the new folder into place
            raise KeyboardInterrupt
        return real(a, b)
    monkeypatch.setattr(os, 'rename', rename)
    with pytest.raises(KeyboardInterrupt):
        _convert(two_clips, 'new', out)
    monkeypatch.undo()
    assert len(calls) == 3 and calls[2] == (calls[0][1], str(out))   # the way back
    _assert_is(two_clips, 'old', out)
    assert sorted(os.listdir(tmp_path)) == ['clip']


def test_the_next_conversion_removes_what_a_kill_between_the_renames_left(two_clips,
                                                                         tmp_path):
    """A kill between the renames leaves OUT missing with the previous folder and the new
    one beside it: the next conversion into OUT removes both once it has written its own
    (and names them), but keeps a folder a running conversion holds and anything that is
    not such a folder."""
    out = tmp_path / 'clip'
    _convert(two_clips, 'old', out)
    shutil.copytree(out, tmp_path / '.clip.tmp-a1b2c3d4')       # the new one, complete
    os.rename(out, tmp_path / '.clip.old-e5f6g7h8')             # the previous one, aside
    (tmp_path / '.clip.tmp-running').mkdir()                    # being written now
    (tmp_path / '.clip.tmp-running' / DIR_FILES[1]).write_bytes(b'part')
    (tmp_path / '.clip.old-mine').mkdir()                       # a user's folder
    (tmp_path / '.clip.old-mine' / 'notes.txt').write_text('x')
    fd = os.open(str(tmp_path / '.clip.tmp-running'), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        report = _convert(two_clips, 'new', out)
    finally:
        os.close(fd)
    _assert_is(two_clips, 'new', out)
    assert sorted(report.removed_leftovers) == [str(tmp_path / '.clip.old-e5f6g7h8'),
                                                str(tmp_path / '.clip.tmp-a1b2c3d4')]
    assert '.clip.tmp-a1b2c3d4' in report.format()
    assert any('.clip.tmp-running' in w and 'still running' in w for w in report.warnings)
    assert sorted(os.listdir(tmp_path)) == ['.clip.old-mine', '.clip.tmp-running', 'clip']


def test_a_folder_output_keeps_the_rules_and_its_permissions(two_clips, tmp_path):
    """The folder is still refused when it holds other files (checked again before the new
    folder takes its place), an empty folder keeps its mode, and a symlink to the
    output folder stays a symlink."""
    from stan_mm.apis.clip_export import check_output
    out = tmp_path / 'clip'
    out.mkdir()
    os.chmod(out, 0o750)
    _convert(two_clips, 'old', out)
    assert os.stat(out).st_mode & 0o777 == 0o750
    link = tmp_path / 'link'
    link.symlink_to(out)
    _convert(two_clips, 'new', link)
    assert link.is_symlink() and sorted(os.listdir(out)) == sorted(DIR_FILES)
    _assert_is(two_clips, 'new', out)
    (out / 'notes.txt').write_text('mine')
    with pytest.raises(FileExistsError, match='notes.txt'):
        check_output(str(out), 'dir')


# ------------------------------------------------------------------ 2. clip_to_mm .pth
def test_a_single_file_output_has_a_temporary_file_of_its_own(two_clips, tmp_path,
                                                               monkeypatch):
    """OUT.pth.tmp (another conversion's temporary file under the old fixed name) is not
    touched; a full disk at the fsync names the file, leaves the previous OUT.pth as it
    was and no temporary file."""
    from stan_mm.compat import safe_torch_load
    out = tmp_path / 'clip.pth'
    (tmp_path / 'clip.pth.tmp').write_bytes(b'another run writes this')
    _convert(two_clips, 'old', out)
    assert (tmp_path / 'clip.pth.tmp').read_bytes() == b'another run writes this'
    before = out.read_bytes()
    monkeypatch.setattr(os, 'fsync', _boom_on('fsync'))
    with pytest.raises(OSError) as e:
        _convert(two_clips, 'new', out)
    monkeypatch.undo()
    assert e.value.errno == errno.ENOSPC and str(out) in str(e.value), e.value
    assert out.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ['clip.pth', 'clip.pth.tmp']
    meta = safe_torch_load(str(out), map_location='cpu')['meta']
    assert meta['clip_cfg']['quick_gelu'] is True


# ------------------------------------------------------------------ 3. folder_lock
def test_folder_lock_refuses_a_second_thread_and_nests_in_one(tmp_path):
    """Another thread is refused while one holds the folder (it used to enter unlocked);
    the holder may nest it, and the OS lock goes with the last of its levels."""
    from stan_mm.apis.features import FeatureFolderError, folder_lock
    out = tmp_path / 'feat'
    taken, done, seen = threading.Event(), threading.Event(), []

    def holder():
        with folder_lock(str(out)):
            taken.set()
            done.wait(10)
    t = threading.Thread(target=holder, name='holder-thread')
    t.start()
    try:
        assert taken.wait(10)
        with pytest.raises(FeatureFolderError, match='another thread of this process '
                                                     r'\(holder-thread'):
            with folder_lock(str(out)):
                seen.append('entered')
        assert seen == [] and _locked_elsewhere(out)
    finally:
        done.set()
        t.join()
    assert not _locked_elsewhere(out)
    with folder_lock(str(out)):                 # free again, and nested in one thread
        with folder_lock(str(out)):
            assert _locked_elsewhere(out)
        assert _locked_elsewhere(out)           # the outer level still holds it
    assert not _locked_elsewhere(out)


# ------------------------------------------------------------------ 4. checkpoint hook
class _Runner:
    """What AtomicCheckpointHook.before_train uses of a runner."""

    def __init__(self, work_dir, name):
        from mmengine.logging import MessageHub, MMLogger
        self.work_dir, self.cfg = str(work_dir), {}
        self.logger = MMLogger.get_instance('stan_mm_concurrency_test')
        self.message_hub = MessageHub.get_instance(name)

    def save_checkpoint(self, out_dir, filename, file_client_args=None, save_optimizer=True,
                        save_param_scheduler=True, meta=None, by_epoch=True,
                        backend_args=None):
        raise AssertionError('nothing is saved in these tests')


def _leftovers_of_a_killed_run(folder):
    """What before_train deletes: a checkpoint's temporary file and the pending pointer."""
    (folder / '.epoch_5.pth.ab12CD34.tmp').write_bytes(b'half a checkpoint')
    (folder / '.last_checkpoint.pending').write_text(str(folder / 'epoch_5.pth'))
    return sorted(os.listdir(folder))


def test_before_train_refuses_a_work_dir_another_run_holds(tmp_path):
    """A run that holds the work dir (tools/train.py's lock, or this hook's in another
    process) may be writing its checkpoint: a second run's before_train raises naming the
    work dir and the fix, and deletes nothing."""
    from stan_mm.engine.checkpoint_hook import AtomicCheckpointHook
    from stan_mm.utils.cli import CommandLineError   # (WorkDirInUseError: a user error)
    work_dir = tmp_path / 'work'
    work_dir.mkdir()
    names = _leftovers_of_a_killed_run(work_dir)
    hook = AtomicCheckpointHook(interval=1)
    with _held_by_another_process(work_dir):
        with pytest.raises(CommandLineError) as e:
            hook.before_train(_Runner(work_dir, 'ckpt_lock_1'))
    msg = str(e.value)
    assert type(e.value).__name__ == 'WorkDirInUseError'
    assert f'work dir {work_dir} is in use by another training run' in msg, msg
    assert 'nothing in it was deleted' in msg and '--work-dir' in msg
    assert sorted(os.listdir(work_dir)) == names


def test_before_train_refuses_an_out_dir_another_run_holds(tmp_path):
    """CheckpointHook's out_dir (checkpoints in another folder) is locked too: a run
    writing there keeps its temporary files."""
    from stan_mm.engine.checkpoint_hook import AtomicCheckpointHook
    from stan_mm.utils.cli import CommandLineError   # (WorkDirInUseError: a user error)
    work_dir, out_root = tmp_path / 'work', tmp_path / 'ckpts'
    work_dir.mkdir()
    out_dir = out_root / 'work'          # mmengine: out_dir / basename(work_dir)
    out_dir.mkdir(parents=True)
    names = _leftovers_of_a_killed_run(out_dir)
    hook = AtomicCheckpointHook(interval=1, out_dir=str(out_root))
    with _held_by_another_process(out_dir):
        with pytest.raises(CommandLineError, match=f'checkpoint folder .*{out_dir}'):
            hook.before_train(_Runner(work_dir, 'ckpt_lock_2'))
    assert sorted(os.listdir(out_dir)) == names
    assert not _locked_elsewhere(work_dir)         # the work dir's lock was let go


def test_before_train_holds_the_work_dir_until_the_run_ends(tmp_path):
    """The lock is taken before the leftovers are deleted, held for the run, nested in
    tools/train.py's own (same thread), and released by after_run, or when the training
    loop raises (mmengine then calls no after_run)."""
    from mmengine.runner import BaseLoop
    from stan_mm.apis.features import folder_lock
    from stan_mm.engine.checkpoint_hook import AtomicCheckpointHook
    work_dir = tmp_path / 'work'
    work_dir.mkdir()
    _leftovers_of_a_killed_run(work_dir)
    runner = _Runner(work_dir, 'ckpt_lock_3')
    hook = AtomicCheckpointHook(interval=1)
    with folder_lock(str(work_dir)):                 # tools/train.py's work_dir_lock
        hook.before_train(runner)
        assert os.listdir(work_dir) == []
        hook.after_run(runner)
        assert _locked_elsewhere(work_dir)           # train.py's level still holds it
    assert not _locked_elsewhere(work_dir)

    class FailingLoop(BaseLoop):
        def run(self):
            hook.before_train(runner)
            assert _locked_elsewhere(work_dir)
            raise RuntimeError('the training failed')
    runner._train_loop = FailingLoop(runner, [])
    hook.before_run(runner)
    with pytest.raises(RuntimeError, match='the training failed'):
        runner._train_loop.run()
    assert not _locked_elsewhere(work_dir)


# ------------------------------------------------------------------ 5. feature folders
def test_extraction_removes_the_temporary_files_a_killed_run_left(tmp_path, monkeypatch):
    """sim.npy.tmp.npy (--save-sim) and the other temporary names of the folder's files
    are removed, with the lock held, at the start of an extraction; files of other names
    are the user's and stay."""
    from stan_mm.apis import features

    class Stop(Exception):
        pass
    out = tmp_path / 'feat'
    out.mkdir()
    for name in ('sim.npy.tmp.npy', 'videos.npy.tmp.npy', 'meta.json.tmp',
                 'notes.tmp.npy', 'sim.npy.tmp'):
        (out / name).write_bytes(b'x' * 10)
    held = []

    def check_folder(out_dir, *args, **kwargs):   # (the next step: the test ends there)
        held.append(osp.realpath(out_dir) in features._HELD)
        raise Stop

    class Recognizer(torch.nn.Module):
        backbone = cls_head = None

        def extract_feat(self, x):
            return x
    monkeypatch.setattr(features, '_check_folder', check_folder)
    logs = []
    with pytest.raises(Stop):
        features.extract_features(Recognizer(), str(out), videos=[], key='k',
                                  progress=False, log=logs.append)
    assert held == [True]
    assert sorted(os.listdir(out)) == ['notes.tmp.npy', 'sim.npy.tmp']
    assert len(logs) == 3 and any(str(out / 'sim.npy.tmp.npy') in m for m in logs), logs


# ------------------------------------------------------------------ 4. clip_to_mm in place
def _no_swap(monkeypatch, how):
    """Make the swap of the output folder impossible: ``replace_folder`` raises EBUSY (a
    mount point), or no folder can be created beside OUT (a read-only parent)."""
    import tempfile
    from stan_mm.engine import checkpoint_hook
    if how == 'mount point':
        def replace_folder(tmp, out_dir):
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), out_dir)
        monkeypatch.setattr(checkpoint_hook, 'replace_folder', replace_folder)
    else:
        real = tempfile.mkdtemp

        def mkdtemp(*args, prefix=None, **kwargs):
            if prefix and prefix.startswith('.clip.'):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            return real(*args, prefix=prefix, **kwargs)
        monkeypatch.setattr(tempfile, 'mkdtemp', mkdtemp)


@pytest.mark.parametrize('how', ['mount point', 'read-only parent'])
def test_an_output_folder_that_cannot_be_swapped_is_written_in_place(two_clips, tmp_path,
                                                                     monkeypatch, how):
    """OUT a mount point (EBUSY) or in a read-only parent: the new model is written inside
    OUT over an earlier output of another model (it used to fail), with nothing else left
    in or beside it, and files the group can read."""
    out = tmp_path / 'clip'
    _convert(two_clips, 'old', out)
    _no_swap(monkeypatch, how)
    _convert(two_clips, 'new', out)
    monkeypatch.undo()
    _assert_is(two_clips, 'new', out)
    assert sorted(os.listdir(out)) == sorted(DIR_FILES)
    assert sorted(os.listdir(tmp_path)) == ['clip']
    from stan_mm.engine.checkpoint_hook import _umask
    for name in DIR_FILES:
        assert os.stat(out / name).st_mode & 0o777 == 0o666 & ~_umask(), name


def test_a_failure_in_place_leaves_no_weights_beside_the_old_config(two_clips, tmp_path,
                                                                    monkeypatch):
    """Renaming the new weights into place fails (the last step): the folder is left
    without weights (the loader fails loudly), with the temporary files removed, not
    with the old weights beside the new config."""
    out = tmp_path / 'clip'
    _convert(two_clips, 'old', out)
    _no_swap(monkeypatch, 'mount point')
    real = os.replace

    def replace(a, b):
        if str(a).endswith(DIR_FILES[1] + '.tmp'):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(a, b)
    monkeypatch.setattr(os, 'replace', replace)
    with pytest.raises(OSError, match='may now hold no weights'):
        _convert(two_clips, 'new', out)
    monkeypatch.undo()
    assert sorted(os.listdir(out)) == [DIR_FILES[0]]


def test_a_folder_output_is_readable_by_the_group(two_clips, tmp_path):
    """Both files of a folder output get 0o666 less the umask (safetensors made 0600)."""
    from stan_mm.engine.checkpoint_hook import _umask
    out = tmp_path / 'clip'
    _convert(two_clips, 'old', out)
    for name in DIR_FILES:
        assert os.stat(out / name).st_mode & 0o777 == 0o666 & ~_umask(), name


def test_a_single_file_output_removes_what_killed_conversions_left(two_clips, tmp_path):
    """A killed .pth conversion leaves .clip.pth.XXXXXXXX.tmp (the whole model): the next
    conversion removes those unchanged for 10 minutes and names them, and keeps a fresh
    one (being written) and other names."""
    out = tmp_path / 'clip.pth'
    stale, fresh = tmp_path / '.clip.pth.ab_12XYZ.tmp', tmp_path / '.clip.pth.cd34efgh.tmp'
    other = tmp_path / '.clip.pth.toolongname.tmp'
    for path in (stale, fresh, other):
        path.write_bytes(b'part')
    old = os.path.getmtime(stale) - 3600
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    report = _convert(two_clips, 'old', out)
    assert report.removed_leftovers == [str(stale)]
    assert str(stale) in report.format()
    assert sorted(os.listdir(tmp_path)) == sorted([out.name, fresh.name, other.name])
