"""What ``import stan_mm`` changes for code that does not use STAN: mmengine's file writes and
checkpoint loading keep their behaviour for other models and other callers."""
import argparse
import os
import stat

import pytest
import torch

import stan_mm  # noqa: F401  (applies the compat fixes)
from mmengine.fileio import LocalBackend, dump


# ------------------------------------------------------------------ LocalBackend.put
def _written_to_fifo(fifo, write) -> bytes:
    """Run ``write()`` with a reader open on ``fifo`` (non-blocking, so that nothing hangs
    when the write goes elsewhere) -> the bytes that came through the pipe."""
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        write()
        chunks = []
        while True:
            try:
                chunk = os.read(rfd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b''.join(chunks)
    finally:
        os.close(rfd)


def test_put_writes_into_a_fifo_instead_of_replacing_it(tmp_path):
    """mmengine's ``put`` opens the path and writes: a FIFO stays a FIFO and its reader
    gets the bytes. The atomic write renamed a regular file over it."""
    fifo = tmp_path / 'pipe'
    os.mkfifo(fifo)
    got = _written_to_fifo(fifo, lambda: LocalBackend().put(b'hello', str(fifo)))
    assert stat.S_ISFIFO(os.stat(fifo).st_mode), 'the FIFO was replaced by a regular file'
    assert got == b'hello'
    assert sorted(os.listdir(tmp_path)) == ['pipe']     # no temporary file left behind


@pytest.mark.skipif(os.geteuid() != 0, reason='mknod of a character device needs root')
def test_dump_to_a_device_keeps_the_device(tmp_path):
    """``mmengine.dump(obj, '/dev/null')`` (as root) must not replace the device node with
    a regular file; a copy of /dev/null's node in a temporary folder stands in for it."""
    node = tmp_path / 'null'
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except OSError as e:      # (a container without CAP_MKNOD)
        pytest.skip(f'cannot create a device node here: {e}')
    dump({'a': 1}, str(node), file_format='json')
    assert stat.S_ISCHR(os.stat(node).st_mode), 'the device node was replaced by a file'
    assert sorted(os.listdir(tmp_path)) == ['null']


def test_put_into_a_link_to_a_pipe(tmp_path):
    """``/dev/stdout`` is a link to ``/proc/self/fd/1``; when that is a pipe, the link's
    real path (``pipe:[N]``) is no file name at all. A link to a FIFO stands in for it: the
    write goes through the link into the pipe."""
    fifo = tmp_path / 'pipe'
    os.mkfifo(fifo)
    link = tmp_path / 'stdout'
    link.symlink_to(fifo)
    got = _written_to_fifo(fifo, lambda: LocalBackend().put_text('{"a": 1}', str(link)))
    assert got == b'{"a": 1}'
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and link.is_symlink()


def test_dump_to_dev_stdout_when_stdout_is_a_pipe(tmp_path):
    """``mmengine.dump(obj, '/dev/stdout')`` in a process whose output is piped (``| jq``,
    ``subprocess`` with ``capture_output``) prints the JSON, as without stan-mm; it failed
    with FileNotFoundError on ``/proc/<pid>/fd/.pipe:[N].<random>.tmp``."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ('import stan_mm\n'
            'from mmengine.fileio import dump\n'
            "dump({'a': 1}, '/dev/stdout', file_format='json')\n")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=300, cwd=str(tmp_path),
                         env=dict(os.environ, PYTHONPATH=root))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == '{"a": 1}'


def test_put_regular_files_stays_atomic(tmp_path):
    """Regular files (new or existing) still go through the temporary file and rename:
    the old inode is replaced, not rewritten."""
    target = tmp_path / 'out.json'
    target.write_bytes(b'old')
    before = os.stat(target).st_ino
    LocalBackend().put(b'new', str(target))
    assert target.read_bytes() == b'new'
    assert os.stat(target).st_ino != before
    new = tmp_path / 'sub' / 'new.bin'
    LocalBackend().put(b'x', str(new))
    assert new.read_bytes() == b'x'


# ------------------------------------------------------------------ checkpoint loading
def _namespace_checkpoint(path):
    """An ordinary checkpoint whose meta holds an ``argparse.Namespace`` (a global the
    weights-only unpickler refuses), prefixed keys as a DDP model saves them."""
    torch.save({'state_dict': {'module.0.weight': torch.ones(2, 3),
                               'module.0.bias': torch.zeros(2)},
                'meta': {'args': argparse.Namespace(lr=0.1)}}, path)


def test_torch_opt_out_of_weights_only_is_honoured(tmp_path, monkeypatch):
    """``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` makes mmengine's ``load_checkpoint`` unpickle
    fully without stan-mm; with stan-mm imported it must do so too (it was refused with
    UnsafeCheckpointError). ``revise_keys`` and ``map_location`` work as usual."""
    from mmengine.runner.checkpoint import load_checkpoint
    path = tmp_path / 'other_model.pth'
    _namespace_checkpoint(path)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    monkeypatch.delenv('STAN_MM_TRUST_CHECKPOINTS', raising=False)
    ckpt = load_checkpoint(model, str(path), map_location='cpu',
                           revise_keys=[(r'^module\.', '')])
    assert ckpt['meta']['args'].lr == 0.1
    assert float(model[0].weight.detach().sum()) == 6.0


def test_without_the_opt_out_the_allow_list_still_refuses(tmp_path, monkeypatch):
    """The opt-out is torch's variable only: unset (or overridden by
    ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``), such a checkpoint is still refused."""
    from mmengine.runner.checkpoint import load_checkpoint

    from stan_mm.compat import UnsafeCheckpointError
    path = tmp_path / 'other_model.pth'
    _namespace_checkpoint(path)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    monkeypatch.delenv('STAN_MM_TRUST_CHECKPOINTS', raising=False)
    monkeypatch.delenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', raising=False)
    monkeypatch.delenv('TORCH_FORCE_WEIGHTS_ONLY_LOAD', raising=False)
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(model, str(path), map_location='cpu')
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', 'true')
    monkeypatch.setenv('TORCH_FORCE_WEIGHTS_ONLY_LOAD', '1')
    from stan_mm.compat.checkpoint import torch_weights_only_opted_out
    assert not torch_weights_only_opted_out()
