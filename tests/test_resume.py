"""Killed training runs: SIGKILL mid-epoch, then ``tools/train.py --resume``, replays the
uninterrupted run exactly (CPU); SIGKILL while a checkpoint is being written never leaves a
``last_checkpoint`` that names a missing or partial file; ``max_keep_ckpts`` is honoured.

Each run is ``tools/train.py``'s ``main`` in a forked child process (the parent has already
paid for ``import stan_mm``), one torch thread, killed with a real ``SIGKILL`` by the child
itself at a chosen moment. The model is the tiny quickstart STAN with drop path 0.2, so the
main process draws random numbers every iteration; ``num_workers=0`` puts the data
augmentation (UniformSample, RandomCrop) in the main process too.
"""
import glob
import json
import multiprocessing as mp
import os
import os.path as osp
import signal
import sys
import time
import traceback

import pytest
import torch

import stan_mm  # noqa: F401
from mmengine.hooks import Hook
from mmaction.registry import HOOKS
from mmengine.registry import init_default_scope

init_default_scope('mmaction')

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
QUICKSTART = osp.join(REPO, 'configs', 'quickstart', 'motion_stan_tiny.py')
MOTION = dict(num_train=12, num_val=2, num_test=2, num_frames=8, size=32, seed=0,
              pairs=('horizontal', 'vertical', 'scale', 'fade'),  # the quickstart's classes
              progress=False)
KILL_ITER = 8  # 3 iterations per epoch: the 2nd iteration of epoch 3
MAX_EPOCHS = 4


@HOOKS.register_module(force=True)
class _SigkillAfterIter(Hook):
    """Test helper: the process kills itself with SIGKILL after global iteration ``at``
    (after the other hooks, so that the iteration is logged)."""
    priority = 'LOWEST'

    def __init__(self, at: int):
        self.at = at

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 >= self.at:
            os.kill(os.getpid(), signal.SIGKILL)


def _load_train_tool():
    import importlib.util
    spec = importlib.util.spec_from_file_location('_stan_train_tool',
                                                  osp.join(REPO, 'tools', 'train.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def _skip_yapf():
    """Speed only: mmengine formats the config with yapf whenever it logs, dumps or stores it
    in a checkpoint (~40 % of these tiny runs); keep the text, skip the formatting."""
    import mmengine.config.config as mm_config
    mm_config.FormatCode = lambda text, **kwargs: (text, None)


def _child(argv, patch):
    try:
        torch.set_num_threads(1)
        _skip_yapf()
        if patch is not None:
            patch()
        status = _load_train_tool().main(argv)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(3)
    # (an int main returns is the tool's exit status, as run_tool makes it)
    os._exit(status if isinstance(status, int) and not isinstance(status, bool) else 0)


def train(argv, patch=None, timeout=300) -> int:
    """Run ``tools/train.py argv`` in a forked child; its exit code (-9: SIGKILL)."""
    p = mp.get_context('fork').Process(target=_child, args=(list(map(str, argv)), patch))
    p.start()
    p.join(timeout)
    if p.exitcode is None:
        p.kill()
        p.join()
        pytest.fail(f'training did not finish within {timeout} s: {argv}')
    return p.exitcode


def write_config(path, data_root, indices=None, **overrides):
    """The tiny quickstart config on ``data_root``; ``indices``: use the first N training
    videos; ``overrides``: top-level assignments appended (they replace the key)."""
    extra = ''.join(f'{k} = {v!r}\n' for k, v in overrides.items())
    path.write_text(f"""
_base_ = [{QUICKSTART!r}]
data_root = {str(data_root)!r}
motion = {MOTION!r}
model = dict(backbone=dict(drop_path_rate=0.2))
train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, generate=motion,
                                     indices={indices!r}))
val_dataloader = None
val_cfg = None
val_evaluator = None
test_dataloader = None
test_cfg = None
test_evaluator = None
max_epochs = {MAX_EPOCHS}
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=100)
param_scheduler = [dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=1e-5,
                        by_epoch=True, begin=0, end=max_epochs, convert_to_iter_based=True)]
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(interval=2, max_keep_ckpts=1, save_best=None))
log_processor = dict(window_size=1)  # scalars.json then holds every iteration's own loss
randomness = dict(seed=0, deterministic=True)
custom_hooks = [dict(type='EpochSeedHook')]
{extra}""")
    return path


def iteration_checkpoint_run(tmp_path):
    """``(data_root, overrides)`` for :func:`write_config`: the quickstart's videos generated
    in ``tmp_path / 'data'``, 3 epochs of 3 iterations under ResumableEpochBasedTrainLoop,
    2 DataLoader workers, an iteration checkpoint every 4 iterations (only the last kept)."""
    from stan_mm.datasets.synthetic import generate_motion_dataset
    data_root = tmp_path / 'data'
    generate_motion_dataset(str(data_root), **MOTION)
    return data_root, dict(
        train_cfg=dict(type='ResumableEpochBasedTrainLoop', max_epochs=3, val_interval=100),
        # (persistent workers are covered by test_mid_epoch_resume's in-process tests; here
        # they would add 5 s per run: a persistent worker's iterator, garbage-collected at
        # exit, waits for it to join)
        train_dataloader=dict(batch_size=4, num_workers=2, persistent_workers=False,
                              dataset=dict(data_root=str(data_root), generate=MOTION)),
        default_hooks=dict(logger=dict(interval=1), checkpoint=dict(
            by_epoch=False, interval=4, max_keep_ckpts=1, save_best=None)))


def scalars(run_dir):
    """{iter: record} of the training iterations logged in one run directory."""
    out = {}
    with open(osp.join(run_dir, 'vis_data', 'scalars.json')) as f:
        for line in f:
            rec = json.loads(line)
            if 'loss' in rec:
                out[rec['iter']] = rec
    return out


def run_dirs(work_dir):
    return sorted(d for d in glob.glob(osp.join(work_dir, '2*')) if osp.isdir(d))


def pth_files(work_dir):
    return sorted(osp.basename(p) for p in glob.glob(osp.join(work_dir, '*.pth')))


def last_checkpoint(work_dir):
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    from stan_mm.datasets.synthetic import generate_motion_dataset
    root = tmp_path_factory.mktemp('motion') / 'data'
    generate_motion_dataset(str(root), **MOTION)
    return root


@pytest.fixture(scope='module')
def runs(tmp_path_factory, data_root):
    """A: uninterrupted 4 epochs. B: the same, SIGKILLed in epoch 3, then ``--resume``."""
    tmp = tmp_path_factory.mktemp('resume')
    cfg = write_config(tmp / 'cfg.py', data_root)
    kill_cfg = write_config(tmp / 'kill.py', data_root, custom_hooks=[
        dict(type='EpochSeedHook'), dict(type='_SigkillAfterIter', at=KILL_ITER)])
    a, b = tmp / 'A', tmp / 'B'
    res = dict(a=str(a), b=str(b))
    res['code_a'] = train([cfg, '--work-dir', a])
    res['code_killed'] = train([kill_cfg, '--work-dir', b])
    res['after_kill'] = dict(last=last_checkpoint(b), pth=pth_files(b),
                             iters=sorted(scalars(run_dirs(b)[-1])))
    # mmengine names a run's log folder by its start time to the second; the killed run
    # can be over within a second, and the resumed one must not share its folder
    _next_second()
    res['code_resumed'] = train([cfg, '--work-dir', b, '--resume'])
    return res


def _next_second():
    """Sleep until the wall-clock second changes."""
    start = int(time.time())
    while int(time.time()) == start:
        time.sleep(0.05)


def test_sigkill_mid_epoch_leaves_epoch_2_checkpoint(runs):
    assert runs['code_a'] == 0
    assert runs['code_killed'] == -signal.SIGKILL
    after = runs['after_kill']
    assert after['iters'] == list(range(1, KILL_ITER + 1))  # it died inside epoch 3
    assert osp.basename(after['last']) == 'epoch_2.pth'
    assert after['pth'] == ['epoch_2.pth']


def test_resume_reproduces_losses_exactly(runs):
    assert runs['code_resumed'] == 0
    full = scalars(run_dirs(runs['a'])[-1])
    killed_dir, resumed_dir = run_dirs(runs['b'])
    resumed = scalars(resumed_dir)
    assert sorted(full) == list(range(1, 3 * MAX_EPOCHS + 1))
    assert sorted(resumed) == list(range(7, 3 * MAX_EPOCHS + 1))  # resumed at epoch 3
    for it in resumed:
        for key in ('loss', 'grad_norm', 'lr', 'epoch'):
            assert resumed[it][key] == full[it][key], (it, key, resumed[it], full[it])
    # the killed run itself agreed with A up to its death
    killed = scalars(killed_dir)
    assert all(killed[it]['loss'] == full[it]['loss'] for it in killed)


def test_resume_reproduces_final_weights_exactly(runs):
    from stan_mm.compat import safe_torch_load
    ca = safe_torch_load(osp.join(runs['a'], 'epoch_4.pth'))
    cb = safe_torch_load(osp.join(runs['b'], 'epoch_4.pth'))
    assert ca['state_dict'].keys() == cb['state_dict'].keys()
    for k, v in ca['state_dict'].items():
        assert torch.equal(v, cb['state_dict'][k]), k
    for k, v in ca['optimizer']['state'].items():
        for name, t in v.items():
            assert torch.equal(torch.as_tensor(t), torch.as_tensor(
                cb['optimizer']['state'][k][name])), (k, name)


def test_atomic_checkpoint_hook_keeps_max_keep_ckpts(runs):
    """Checkpoints every 2 epochs, max_keep_ckpts=1: epoch_2.pth is pruned when epoch_4.pth
    is saved, also by the resumed run (which inherits the list of kept checkpoints)."""
    for work in (runs['a'], runs['b']):
        assert pth_files(work) == ['epoch_4.pth']
        assert osp.basename(last_checkpoint(work)) == 'epoch_4.pth'
        assert not glob.glob(osp.join(work, '.*.tmp'))


# --------------------------------------------------------------------------- kill in save
class _HalfWriter:
    """File object that writes half of the data, syncs it and kills the process."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        self.f.write(data[:len(data) // 2])
        self.f.flush()
        os.fsync(self.f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    def __getattr__(self, name):
        return getattr(self.f, name)


def _kill_while_writing(prefix: str, nth: int):
    """Patch for the child: SIGKILL half-way through the ``nth`` write of a temporary file
    named ``prefix*`` (how AtomicCheckpointHook / the atomic LocalBackend write)."""
    def patch():
        real_fdopen, seen = os.fdopen, [0]

        def fdopen(fd, *args, **kwargs):
            f = real_fdopen(fd, *args, **kwargs)
            if osp.basename(os.readlink(f'/proc/self/fd/{fd}')).startswith(prefix):
                seen[0] += 1
                if seen[0] == nth:
                    return _HalfWriter(f)
            return f
        os.fdopen = fdopen
    return patch


def _kill_before(func: str, name_prefix: str):
    """Patch for the child: SIGKILL when ``os.<func>`` is called on a ``name_prefix*`` path."""
    def patch():
        real = getattr(os, func)

        def wrapped(path, *args, **kwargs):
            if osp.basename(str(path)).startswith(name_prefix):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(path, *args, **kwargs)
        setattr(os, func, wrapped)
    return patch


KILL_POINTS = {
    # where the process dies          (patch, expected last_checkpoint, .pth files after)
    'checkpoint_half_written': (_kill_while_writing('.epoch_2.pth.', 1), 'epoch_1.pth',
                                ['epoch_1.pth']),
    'checkpoint_before_rename': (_kill_before('replace', '.epoch_2.pth.'), 'epoch_1.pth',
                                 ['epoch_1.pth']),
    # the pointer to epoch_2.pth, written (as .last_checkpoint.pending, then renamed to
    # last_checkpoint) before epoch_2.pth is renamed into place
    'pending_pointer_half_written': (_kill_while_writing('..last_checkpoint.pending.', 2),
                                     'epoch_1.pth', ['epoch_1.pth']),
    'before_pruning': (_kill_before('remove', 'epoch_1.pth'), 'epoch_2.pth',
                       ['epoch_1.pth', 'epoch_2.pth']),
}


@pytest.mark.parametrize('point', list(KILL_POINTS))
def test_kill_during_checkpoint_save(tmp_path, data_root, point):
    """max_keep_ckpts=1 (the hardest case: mmengine's own hook deletes the old checkpoint
    before writing the new one) and one iteration per epoch; killed while saving epoch 2."""
    from mmengine.config import Config
    from mmaction.registry import MODELS
    from stan_mm.compat import safe_torch_load
    patch, expected, files = KILL_POINTS[point]
    cfg = write_config(tmp_path / 'cfg.py', data_root, indices=4, param_scheduler=[],
                       train_cfg=dict(type='EpochBasedTrainLoop', max_epochs=3,
                                      val_interval=100),
                       default_hooks=dict(logger=dict(interval=1), checkpoint=dict(
                           interval=1, max_keep_ckpts=1, save_best=None)))
    work = tmp_path / 'work'
    assert train([cfg, '--work-dir', work], patch=patch) == -signal.SIGKILL
    assert pth_files(work) == files
    last = last_checkpoint(work)
    assert osp.basename(last) == expected and osp.isfile(last)
    ckpt = safe_torch_load(last)
    assert ckpt['meta']['epoch'] == int(expected[6])
    model = MODELS.build(Config.fromfile(str(cfg)).model)
    model.load_state_dict(ckpt['state_dict'], strict=True)  # complete and loadable
    if point in ('checkpoint_half_written', 'before_pruning'):  # training goes on from it
        if point == 'checkpoint_half_written':
            assert glob.glob(osp.join(work, '.epoch_2.pth.*.tmp'))   # the partial write
        assert train([cfg, '--work-dir', work, '--resume']) == 0
        # the resumed run removes what the kill left: the partial write, or epoch_1.pth
        # (pruning was due once epoch_2.pth was published)
        assert pth_files(work) == ['epoch_3.pth']
        assert not glob.glob(osp.join(work, '.*.tmp'))
        assert safe_torch_load(str(work / 'epoch_3.pth'))['meta']['epoch'] == 3


def test_atomic_writes_get_the_permissions_open_would_give(tmp_path):
    """mkstemp creates 0600 files; checkpoints must follow the umask (readable by the group
    on a shared cluster) or keep the mode of the file they replace."""
    from mmengine.fileio.backends import LocalBackend
    import stan_mm  # noqa: F401  (makes LocalBackend.put atomic)
    from stan_mm.engine import atomic_write_bytes
    old = os.umask(0o022)
    try:
        atomic_write_bytes(b'x', str(tmp_path / 'a.pth'))
        LocalBackend().put(b'y', str(tmp_path / 'b.pth'))
        with open(tmp_path / 'c.pth', 'wb') as f:      # what mmengine would do
            f.write(b'z')
        modes = {n: os.stat(tmp_path / n).st_mode & 0o777 for n in ('a.pth', 'b.pth', 'c.pth')}
        assert modes == {'a.pth': 0o644, 'b.pth': 0o644, 'c.pth': 0o644}
        os.umask(0o077)
        atomic_write_bytes(b'x', str(tmp_path / 'd.pth'))
        assert os.stat(tmp_path / 'd.pth').st_mode & 0o777 == 0o600
        os.chmod(tmp_path / 'a.pth', 0o640)              # an existing file keeps its mode
        atomic_write_bytes(b'new', str(tmp_path / 'a.pth'))
        assert os.stat(tmp_path / 'a.pth').st_mode & 0o777 == 0o640
        assert (tmp_path / 'a.pth').read_bytes() == b'new'
    finally:
        os.umask(old)


def test_epoch_seed_hook_reseeds_main_process_and_workers():
    """Unit check of what the exact-resume test relies on: after ``before_train_epoch`` the
    generators' states depend on (seed, epoch) only, and fresh workers get that seed."""
    import functools
    import random
    import numpy as np
    from mmengine.dataset import worker_init_fn
    from stan_mm.engine.seed_hook import EpochSeedHook, epoch_seed

    class Runner:
        seed = 7

        def __init__(self, epoch):
            self.epoch = epoch
            self.train_dataloader = torch.utils.data.DataLoader(
                list(range(4)), num_workers=1, worker_init_fn=functools.partial(
                    worker_init_fn, num_workers=1, rank=0, seed=7))

    def draws(epoch, noise):
        runner = Runner(epoch)
        torch.rand(noise), np.random.rand(noise), random.random()  # state before: anything
        EpochSeedHook().before_train_epoch(runner)
        return ((torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random()),
                runner.train_dataloader.worker_init_fn.keywords['seed'])

    (a, seed_a), (b, _), (c, seed_c) = draws(2, 5), draws(2, 11), draws(3, 5)
    assert a == b and a != c
    assert seed_a == epoch_seed(7, 2) and seed_c == epoch_seed(7, 3) and seed_a != seed_c
    torch.manual_seed(epoch_seed(7, 2))  # reference: plain seeding with the derived seed
    assert torch.rand(3).tolist() == a[0]


class _BestRunner:
    """What CheckpointHook's save_best path uses of a runner; ``kill`` makes the next
    checkpoint write die (an exception standing in for SIGKILL mid-write)."""

    def __init__(self, work_dir, name):
        from mmengine.logging import MessageHub, MMLogger
        self.work_dir, self.epoch, self.iter, self.kill = str(work_dir), 1, 1, False
        self.message_hub = MessageHub.get_instance(name)
        self.logger = MMLogger.get_instance('stan_mm_best_ckpt_test')

    def save_checkpoint(self, out_dir, filename, *args, **kwargs):
        from stan_mm.engine.checkpoint_hook import atomic_write_bytes
        if self.kill:
            raise KeyboardInterrupt('killed while writing ' + filename)
        atomic_write_bytes(f'epoch {self.epoch}'.encode(), osp.join(out_dir, filename))


def _resumed_best_hook(runner, best_ckpt, best_score):
    """An AtomicCheckpointHook (save_best='acc') of a run resumed from a checkpoint whose
    message hub names ``best_ckpt`` with ``best_score``."""
    from stan_mm.engine.checkpoint_hook import AtomicCheckpointHook
    runner.message_hub.update_info('best_ckpt', str(best_ckpt))
    runner.message_hub.update_info('best_score', best_score)
    hook = AtomicCheckpointHook(interval=1, save_best='acc', rule='greater')
    hook.before_train(runner)
    return hook


def test_best_checkpoint_survives_a_kill_while_the_next_best_is_written(tmp_path):
    """mmengine deletes the previous best checkpoint before writing the new one: a kill in
    between left no best checkpoint. AtomicCheckpointHook deletes it only afterwards."""
    from stan_mm.engine.checkpoint_hook import AtomicCheckpointHook

    def best_files():
        return sorted(p.name for p in tmp_path.glob('best_*.pth'))
    runner = _BestRunner(tmp_path, 'best_kill_1')
    hook = AtomicCheckpointHook(interval=1, save_best='acc', rule='greater')
    hook.before_train(runner)
    hook._save_best_checkpoint(runner, {'acc': 0.5})
    assert best_files() == ['best_acc_epoch_1.pth']
    runner.epoch, runner.kill = 2, True
    with pytest.raises(KeyboardInterrupt):
        hook._save_best_checkpoint(runner, {'acc': 0.7})
    assert best_files() == ['best_acc_epoch_1.pth']          # the old best is still there
    # the resumed run knows the best checkpoint of its last saved state (epoch 1) and
    # replaces it once a better one is written
    resumed = _BestRunner(tmp_path, 'best_kill_2')
    hook = _resumed_best_hook(resumed, tmp_path / 'best_acc_epoch_1.pth', 0.5)
    resumed.epoch = 3
    hook._save_best_checkpoint(resumed, {'acc': 0.4})           # not better: nothing
    assert best_files() == ['best_acc_epoch_1.pth']
    hook._save_best_checkpoint(resumed, {'acc': 0.8})
    assert best_files() == ['best_acc_epoch_3.pth']
    assert (tmp_path / 'best_acc_epoch_3.pth').read_bytes() == b'epoch 3'


def test_checkpoint_hook_refuses_unknown_arguments_at_build():
    """mmengine passes unknown keywords to save_checkpoint at the first save, after a
    whole epoch; the hook refuses them when training starts, with the likely name, unless
    the runner's save_checkpoint takes them."""
    from mmengine.runner import Runner
    from stan_mm.engine import AtomicCheckpointHook
    runner = object.__new__(Runner)
    with pytest.raises(TypeError, match=r"'max_keep_ckpt' \(did you mean 'max_keep_ckpts'\?\)"):
        AtomicCheckpointHook(interval=1, max_keep_ckpt=1)._check_save_arguments(runner)
    AtomicCheckpointHook(interval=1, max_keep_ckpts=1)._check_save_arguments(runner)

    class MyRunner(Runner):
        def save_checkpoint(self, out_dir, filename, safe_serialization=False, **kw):
            pass
    AtomicCheckpointHook(interval=1, safe_serialization=True)._check_save_arguments(
        object.__new__(MyRunner))


def test_a_failed_checkpoint_write_names_the_file_and_keeps_the_old_one(tmp_path,
                                                                       monkeypatch):
    import errno
    from stan_mm.engine import checkpoint_hook
    path = tmp_path / 'epoch_3.pth'
    path.write_bytes(b'old checkpoint')

    def full(fd):
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(checkpoint_hook.os, 'fsync', full)
    with pytest.raises(OSError) as err:
        checkpoint_hook.atomic_write_bytes(b'new checkpoint', str(path))
    assert err.value.errno == errno.ENOSPC
    assert f'could not write {path} (free space on that disk)' in str(err.value)
    assert path.read_bytes() == b'old checkpoint'
    assert os.listdir(tmp_path) == ['epoch_3.pth']           # no temporary file left

    def quota(fd):                                           # an OSError without errno
        raise OSError('Disk quota exceeded (FUSE)')
    monkeypatch.setattr(checkpoint_hook.os, 'fsync', quota)
    with pytest.raises(OSError, match=r'^Disk quota exceeded \(FUSE\)$'):
        checkpoint_hook.atomic_write_bytes(b'new checkpoint', str(path))


def test_iteration_checkpoints_in_an_epoch_loop_are_warned_about():
    """Resuming from an iteration checkpoint inside an epoch restarts the epoch (mmengine):
    the hook says so, with the numbers, when the run starts."""
    from types import SimpleNamespace
    from mmengine.runner import EpochBasedTrainLoop
    from stan_mm.engine import AtomicCheckpointHook
    loop = object.__new__(EpochBasedTrainLoop)
    loop.dataloader = list(range(6))
    said = []
    logger = SimpleNamespace(warning=said.append, info=said.append)

    def warnings(by_epoch, it, epoch):
        said.clear()
        runner = SimpleNamespace(_train_loop=loop, iter=it, epoch=epoch, logger=logger)
        AtomicCheckpointHook(interval=1, by_epoch=by_epoch)._warn_mid_epoch(runner)
        return list(said)
    got = warnings(False, 14, 2)
    assert len(got) == 1 and 'resumed at iteration 14, 2 of the 6 iterations of epoch 3' \
        in got[0] and '2 iterations past its schedule' in got[0]
    assert 'by_epoch=False in an epoch-based loop' in warnings(False, 12, 2)[0]
    assert warnings(True, 14, 2) == []                       # epoch checkpoints: nothing


def test_a_save_best_that_names_no_metric_is_a_clear_error(tmp_path):
    """A typo in save_best ('acc/top_1') ran until the first validation, then ended on
    mmengine's bare KeyError; now the error names the metrics the validation reports, and
    nothing is written or removed."""
    from stan_mm.engine.checkpoint_hook import AtomicCheckpointHook
    from stan_mm.utils.cli import ConfigOptionError, user_errors
    runner = _BestRunner(tmp_path, 'best_typo')
    hook = AtomicCheckpointHook(interval=1, save_best='acc/top_1', rule='greater')
    hook.before_train(runner)
    with pytest.raises(ConfigOptionError, match=r"'acc/top_1'.*acc/mean1, acc/top1, "
                                                r"acc/top5") as info:
        hook._save_best_checkpoint(runner, {'acc/top1': 0.5, 'acc/top5': 0.9,
                                            'acc/mean1': 0.4})
    assert isinstance(info.value, user_errors())
    assert not list(tmp_path.glob('best_*.pth'))
    # the right name works
    hook = AtomicCheckpointHook(interval=1, save_best='acc/top1', rule='greater')
    hook.before_train(runner)
    hook._save_best_checkpoint(runner, {'acc/top1': 0.5, 'acc/top5': 0.9})
    assert [p.name for p in tmp_path.glob('best_*.pth')] == ['best_acc_top1_epoch_1.pth']


def test_a_best_checkpoint_of_another_folder_is_never_deleted(tmp_path):
    """Resumed in a copy of a work dir, the message hub names the original folder's best
    checkpoint; mmengine deleted it at the copy's first better score."""
    original, copy = tmp_path / 'original', tmp_path / 'copy'
    for folder in (original, copy):
        folder.mkdir()
        (folder / 'best_acc_epoch_1.pth').write_bytes(b'epoch 1')
    runner = _BestRunner(copy, 'best_other_folder')
    hook = _resumed_best_hook(runner, original / 'best_acc_epoch_1.pth', 0.5)
    runner.epoch = 2
    hook._save_best_checkpoint(runner, {'acc': 0.8})
    assert (original / 'best_acc_epoch_1.pth').read_bytes() == b'epoch 1'   # kept
    assert (copy / 'best_acc_epoch_2.pth').read_bytes() == b'epoch 2'
    # in its own folder the previous best is replaced as before
    runner.epoch = 3
    hook._save_best_checkpoint(runner, {'acc': 0.9})
    assert sorted(p.name for p in copy.glob('best_*.pth')) == ['best_acc_epoch_1.pth',
                                                               'best_acc_epoch_3.pth']
