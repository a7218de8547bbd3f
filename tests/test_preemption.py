"""PreemptionHook: a signal (SIGTERM, SIGUSR1) saves a checkpoint after the running iteration
and stops the run, every rank at the same iteration; the resumed run ends with the weights
of a run that was never stopped.

The in-process tests drive mmengine's ``Runner`` on the toy model and noisy toy dataset of
``test_mid_epoch_resume`` (deterministic, reseeded per iteration), and send the signal from
a hook to the test process itself (and to its DataLoader workers, as Slurm does). A guard
handler turns a signal that reaches pytest without the hook into a test failure instead of
the end of the test session. The last test sends SIGTERM to ``tools/train.py`` (in a forked
child) training the tiny quickstart STAN on real videos with two DataLoader workers.
"""
import multiprocessing as mp
import os
import os.path as osp
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from mmengine.hooks import Hook
from mmaction.registry import HOOKS

from stan_mm.engine import PreemptionHook, TrainingPreempted
from stan_mm.engine.preemption_hook import ignore_signals_in_workers

import test_mid_epoch_resume as toy
from test_mid_epoch_resume import PER_EPOCH, TOTAL, make_runner, same_state


class _Unhandled(Exception):
    """A signal reached the test process while no PreemptionHook handled it."""


@pytest.fixture
def guard():
    """SIGTERM / SIGUSR1 raise :class:`_Unhandled` unless a hook handles them."""
    def unhandled(signum, frame):
        raise _Unhandled(signal.Signals(signum).name)
    before = {s: signal.signal(s, unhandled) for s in (signal.SIGTERM, signal.SIGUSR1)}
    yield
    for s, h in before.items():
        signal.signal(s, h)


@HOOKS.register_module(force=True)
class _SignalAt(Hook):
    """Sends ``signum`` to this process (and to its DataLoader workers: ``workers``) while
    global iteration ``at`` (1-based) runs, or at the start of the validation after epoch
    ``in_val``, or at the end of epoch ``at_epoch_end``, or before the run's first epoch
    (``before_train``); before the PreemptionHook's own check (priority NORMAL)."""
    priority = 'NORMAL'

    def __init__(self, at=None, in_val=None, at_epoch_end=None, before_train=False,
                 signum=int(signal.SIGTERM), workers=True):
        self.at, self.in_val, self.at_epoch_end = at, in_val, at_epoch_end
        self.at_start, self.signum, self.workers = before_train, int(signum), workers
        self.worker_pids = []
        self.after_run_called = False

    def after_run(self, runner):
        self.after_run_called = True

    def _send(self):
        # from another process, as Slurm's: PyTorch's workers exit quietly on a SIGTERM
        # that their parent (this process) sends, and die of one from anywhere else
        if self.workers:
            self.worker_pids = [p.pid for p in mp.active_children()]
        subprocess.run(['kill', '-s', signal.Signals(self.signum).name[3:],
                        *map(str, self.worker_pids), str(os.getpid())], check=True)

    def before_train_epoch(self, runner):
        if self.at_start:
            self.at_start = False
            self._send()

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if self.at is not None and runner.iter + 1 == self.at:
            self._send()
            if self.workers:
                # as with a real signal, the iteration goes on after the workers got it:
                # one killed by it would make PyTorch raise here
                time.sleep(0.5)

    def after_train_epoch(self, runner):
        if self.at_epoch_end is not None and runner.epoch + 1 == self.at_epoch_end:
            self._send()

    def before_val_epoch(self, runner):
        if self.in_val is not None and runner.epoch == self.in_val:
            self._send()


def run(runner):
    """Train; (the TrainingPreempted raised or None, the toy records, the final state)."""
    stop = None
    try:
        runner.train()
    except TrainingPreempted as e:
        stop = e
    record = next(h for h in runner.hooks if isinstance(h, toy._Record))
    state = {k: v.clone() for k, v in runner.model.state_dict().items()}
    for group, values in runner.optim_wrapper.optimizer.state_dict()['state'].items():
        state.update({f'optim.{group}.{k}': v.clone() for k, v in values.items()})
    logs = [osp.join(runner.log_dir, f) for f in os.listdir(runner.log_dir)
            if f.endswith('.log')]
    result = dict(seen=record.seen, state=state, iter=runner.iter,
                  validated=record.validated, log=open(logs[0]).read() if logs else '')
    return stop, result


def preempted(work_dir, signal_hook, **kwargs):
    return make_runner(work_dir, extra_hooks=[dict(type='PreemptionHook'), signal_hook],
                       **kwargs)


def resumed(work_dir, **kwargs):
    last = open(osp.join(work_dir, 'last_checkpoint')).read().strip()
    return make_runner(work_dir, resume_from=last, extra_hooks=[dict(type='PreemptionHook')],
                       **kwargs)


# ---------------------------------------------------------------- inside an epoch
def test_sigterm_inside_an_epoch_saves_and_the_resumed_run_is_exact(tmp_path, guard):
    """SIGTERM to the process and its two persistent DataLoader workers after iteration 10
    (epoch 2, 4 of 6 batches; the last regular checkpoint is iter_8.pth): iter_10.pth is
    saved and published, the run stops with exit status 143; resumed from it, the run trains
    iterations 11..18 and ends with the uninterrupted run's weights and optimizer state bit
    for bit. The next regular checkpoint (iter_12.pth) deletes iter_10.pth."""
    _, full = run(make_runner(tmp_path / 'full', num_workers=2))
    hook = dict(type='_SignalAt', at=10)
    runner = preempted(tmp_path / 'b', hook, num_workers=2)
    stop, killed = run(runner)
    work = tmp_path / 'b'
    assert isinstance(stop, TrainingPreempted), stop
    assert stop.exit_code == 128 + signal.SIGTERM and stop.signal_name == 'SIGTERM'
    assert stop.checkpoint == str(work / 'iter_10.pth')
    assert open(work / 'last_checkpoint').read() == str(work / 'iter_10.pth')
    assert 'stopped at iteration 10 (epoch 2); saved' in killed['log']
    assert [s[0] for s in killed['seen']] == list(range(1, 11))
    from stan_mm.compat import safe_torch_load
    meta = safe_torch_load(str(work / 'iter_10.pth'))['meta']
    assert (meta['epoch'], meta['iter']) == (1, 10)
    # the handlers are the test's again; the hooks' after_run ran (visualizer closed)
    assert signal.getsignal(signal.SIGTERM).__name__ == 'unhandled'
    assert 'came after the last training iteration' not in killed['log']
    assert next(h for h in runner.hooks if isinstance(h, _SignalAt)).after_run_called

    _, again = run(resumed(work, num_workers=2))
    assert [s[0] for s in again['seen']] == list(range(11, TOTAL + 1))
    assert same_state(again['state'], full['state'])
    assert not osp.exists(work / 'iter_10.pth') and osp.isfile(work / 'iter_12.pth')
    assert 'removed' in again['log'] and 'iter_10.pth' in again['log']


def test_a_second_stop_replaces_the_first_stops_checkpoint(tmp_path, guard):
    """Stopped after iteration 10, resumed, stopped again after iteration 11: iter_11.pth is
    published and iter_10.pth (not part of the rotation) is deleted."""
    work = tmp_path / 'twice'
    stop, _ = run(preempted(work, dict(type='_SignalAt', at=10, workers=False)))
    assert stop.checkpoint == str(work / 'iter_10.pth')
    last = open(work / 'last_checkpoint').read()
    stop, again = run(make_runner(work, resume_from=last, extra_hooks=[
        dict(type='PreemptionHook'), dict(type='_SignalAt', at=11, workers=False)]))
    assert stop.checkpoint == str(work / 'iter_11.pth')
    assert [s[0] for s in again['seen']] == [11]
    assert open(work / 'last_checkpoint').read() == str(work / 'iter_11.pth')
    assert sorted(f for f in os.listdir(work) if f.endswith('.pth')) == \
        ['iter_11.pth', 'iter_4.pth', 'iter_8.pth']


def test_workers_ignore_the_signal(tmp_path, guard):
    """Workers started with 'spawn' (which, unlike forked ones, do not inherit the training
    process's handler) got SIGTERM too and did not die: PyTorch would have raised
    'DataLoader worker ... is killed by signal' in the training process before any
    checkpoint. Their worker_init_fn stays a partial of mmengine's seeding function."""
    hook = dict(type='_SignalAt', at=3)
    runner = preempted(tmp_path / 'w', hook, num_workers=1,
                       loader_extra=dict(multiprocessing_context='spawn'))
    stop, _ = run(runner)
    assert isinstance(stop, TrainingPreempted), stop
    assert stop.checkpoint == str(tmp_path / 'w' / 'iter_3.pth')
    sender = next(h for h in runner.hooks if isinstance(h, _SignalAt))
    assert len(sender.worker_pids) == 1
    init = runner.train_dataloader.worker_init_fn
    assert init.keywords.get('seed') is not None and init.func.fn is not None


class _HangsAfterFirst(torch.utils.data.Dataset):
    """Sample 0 at once; every later sample hangs (a stuck read)."""

    def __len__(self):
        return 4

    def __getitem__(self, idx):
        if idx:
            time.sleep(120)
        return idx


def test_a_stuck_worker_that_ignores_sigterm_is_killed_at_shutdown(monkeypatch):
    """torch ends its worker shutdown with terminate() (SIGTERM) for a worker that did not
    stop; one that ignores SIGTERM (this hook's workers) is killed instead of staying
    behind (stan_mm.compat.worker_shutdown)."""
    from torch.utils.data import _utils
    monkeypatch.setattr(_utils, 'MP_STATUS_CHECK_INTERVAL', 0.5)   # (torch's waits: 5 s)
    loader = torch.utils.data.DataLoader(_HangsAfterFirst(), batch_size=1, num_workers=1)
    ignore_signals_in_workers(loader, [int(signal.SIGTERM)])
    it = iter(loader)
    assert next(it).tolist() == [0]
    worker = it._workers[0]
    it._shutdown_workers()
    worker.join(5)
    assert not worker.is_alive()


def test_ignore_signals_in_workers_keeps_the_seeding_partial():
    import functools
    calls = []

    def seeding(worker_id, seed):
        calls.append((worker_id, seed))
    loader = SimpleNamespace(worker_init_fn=functools.partial(seeding, seed=7))
    assert ignore_signals_in_workers(loader, [int(signal.SIGUSR1)])
    assert ignore_signals_in_workers(loader, [int(signal.SIGUSR1)])      # idempotent
    fn = loader.worker_init_fn
    assert isinstance(fn, functools.partial) and fn.keywords == dict(seed=7)
    assert fn.func.fn is seeding
    before = signal.getsignal(signal.SIGUSR1)
    try:
        fn(3)
        assert calls == [(3, 7)] and signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGUSR1, before)
    plain = SimpleNamespace(worker_init_fn=None)
    assert ignore_signals_in_workers(plain, [int(signal.SIGTERM)])
    assert plain.worker_init_fn.fn is None
    assert not ignore_signals_in_workers(None, [int(signal.SIGTERM)])


def test_a_checkpoint_of_the_same_iteration_is_not_saved_twice(tmp_path, guard):
    """SIGUSR1 after iteration 8, where the checkpoint hook saved iter_8.pth itself: the stop
    names it and writes nothing more; exit status 138."""
    hook = dict(type='_SignalAt', at=8, signum=int(signal.SIGUSR1), workers=False)
    stop, killed = run(preempted(tmp_path / 'c', hook))
    assert stop.exit_code == 128 + signal.SIGUSR1 and stop.signal_name == 'SIGUSR1'
    assert stop.checkpoint == str(tmp_path / 'c' / 'iter_8.pth')
    assert sorted(f for f in os.listdir(tmp_path / 'c') if f.endswith('.pth')) == \
        ['iter_4.pth', 'iter_8.pth']
    assert 'the checkpoint of this state is' in killed['log']


def test_a_signal_before_any_iteration_saves_nothing(tmp_path, guard):
    hook = dict(type='_SignalAt', before_train=True, workers=False)
    stop, killed = run(preempted(tmp_path / 'd', hook))
    assert stop.checkpoint is None and killed['iter'] == 0 and killed['seen'] == []
    assert not [f for f in os.listdir(tmp_path / 'd') if f.endswith('.pth')]
    assert 'nothing was trained yet' in str(stop)


# ---------------------------------------------------------------- around a validation
def test_a_signal_during_validation_stops_after_it_and_records_it(tmp_path, guard):
    """Iteration checkpoints every 4 (none at the end of epoch 1, iteration 6); SIGTERM at
    the start of epoch 1's validation: the validation finishes, the run saves epoch_1.pth
    (meta: 1 epoch, 6 iterations) before epoch 2 and records the validation as done, so the
    resumed run trains epoch 2 at once, to the uninterrupted run's state."""
    kw = toy._with_validation()
    _, full = run(make_runner(tmp_path / 'full', **kw))
    stop, killed = run(preempted(tmp_path / 'v', dict(type='_SignalAt', in_val=1,
                                                     workers=False), **kw))
    work = tmp_path / 'v'
    assert stop.checkpoint == str(work / 'epoch_1.pth') and killed['validated'] == [1]
    assert 'stopped at the start of epoch 2 (iteration 6)' in str(stop)
    from stan_mm.compat import safe_torch_load
    meta = safe_torch_load(str(work / 'epoch_1.pth'))['meta']
    assert (meta['epoch'], meta['iter']) == (1, PER_EPOCH)
    _, again = run(resumed(work, **kw))
    assert again['validated'] == [2, 3] and 'validating epoch 1' not in again['log']
    assert [s[0] for s in again['seen']] == list(range(PER_EPOCH + 1, TOTAL + 1))
    assert same_state(again['state'], full['state'])


def test_a_signal_at_an_epoch_end_stops_before_the_validation(tmp_path, guard):
    """Epoch checkpoints (interval 1); SIGTERM while epoch 1 ends: epoch_1.pth is the
    checkpoint of that state (nothing more is saved), the run stops before validating, and
    the resumed run validates epoch 1 first."""
    kw = toy._with_validation()
    stop, killed = run(preempted(tmp_path / 'e', dict(type='_SignalAt', at_epoch_end=1,
                                                     workers=False), by_epoch=True, **kw))
    work = tmp_path / 'e'
    assert stop.checkpoint == str(work / 'epoch_1.pth') and killed['validated'] == []
    assert 'before its validation' in str(stop)
    assert sorted(f for f in os.listdir(work) if f.endswith('.pth')) == ['epoch_1.pth']
    _, again = run(resumed(work, by_epoch=True, **kw))
    assert again['validated'] == [1, 2, 3]
    assert 'validating epoch 1 before training epoch 2' in again['log']
    assert again['iter'] == TOTAL


def test_a_signal_during_validation_after_an_iteration_checkpoint_of_the_last_batch(
        tmp_path, guard):
    """iter_12.pth is saved after epoch 2's last batch, before the epoch's end hooks; a
    SIGTERM during epoch 2's validation must not name it as the state after that
    validation (the resumed run would end epoch 2 and validate it again): epoch_2.pth is
    saved, and the resumed run validates epoch 3 only, to the uninterrupted state."""
    kw = toy._with_validation()
    _, full = run(make_runner(tmp_path / 'full', **kw))
    stop, killed = run(preempted(tmp_path / 'l', dict(type='_SignalAt', in_val=2,
                                                     workers=False), **kw))
    assert stop.checkpoint == str(tmp_path / 'l' / 'epoch_2.pth')
    assert killed['validated'] == [1, 2]
    _, again = run(resumed(tmp_path / 'l', **kw))
    assert again['validated'] == [3]
    assert [s[0] for s in again['seen']] == list(range(2 * PER_EPOCH + 1, TOTAL + 1))
    assert same_state(again['state'], full['state'])


# ---------------------------------------------------------------- gradient accumulation
def test_gradient_accumulation_stops_at_an_optimizer_step(tmp_path, guard):
    """accumulative_counts=2: a SIGTERM during iteration 9 (its gradients would be summed
    with iteration 10's) stops after iteration 10, where the optimizer stepped; resumed,
    the run ends with the uninterrupted run's state (a stop after 9 lost 9's gradients)."""
    ow = dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9), accumulative_counts=2)
    _, full = run(make_runner(tmp_path / 'full', optim_wrapper=ow))
    stop, _ = run(preempted(tmp_path / 'g', dict(type='_SignalAt', at=9, workers=False),
                            optim_wrapper=ow))
    assert stop.checkpoint == str(tmp_path / 'g' / 'iter_10.pth')
    _, again = run(resumed(tmp_path / 'g', optim_wrapper=ow))
    assert [s[0] for s in again['seen']] == list(range(11, TOTAL + 1))
    assert same_state(again['state'], full['state'])


# ---------------------------------------------------------------- IterBasedTrainLoop
@HOOKS.register_module(force=True)
class _ValIters(Hook):
    """Records ``runner.iter`` at every finished validation; SIGTERM at the start of the
    validation after iteration ``signal_at``."""
    priority = 'LOWEST'

    def __init__(self, signal_at=None):
        self.iters, self.signal_at = [], signal_at

    def before_val_epoch(self, runner):
        if runner.iter == self.signal_at:
            os.kill(os.getpid(), signal.SIGTERM)

    def after_val_epoch(self, runner, metrics=None):
        self.iters.append(runner.iter)


def _val_iters(runner):
    return next(h for h in runner.hooks if isinstance(h, _ValIters)).iters


@pytest.mark.parametrize('sampler', ['DefaultSampler', 'InfiniteSampler'])
def test_iteration_based_loop_with_workers(tmp_path, guard, sampler):
    """IterBasedTrainLoop started its DataLoader workers when it was built, before any
    hook; they now start at its first batch, with the signals ignored (else SIGTERM killed
    them and PyTorch raised before any checkpoint), on the same samples."""
    loop = dict(type='IterBasedTrainLoop', max_iters=12)
    kw = dict(num_workers=2, train_cfg=loop, sampler=dict(type=sampler, shuffle=True))
    _, plain = run(make_runner(tmp_path / 'plain', **kw))
    stop, killed = run(preempted(tmp_path / 'i', dict(type='_SignalAt', at=3), **kw))
    assert stop.checkpoint == str(tmp_path / 'i' / 'iter_3.pth')
    assert 'stopped at iteration 3;' in str(stop)
    assert [s[3] for s in killed['seen']] == [s[3] for s in plain['seen'][:3]]


def test_iteration_based_loop_stops_after_a_due_validation(tmp_path, guard, monkeypatch):
    """val_interval=4: a SIGTERM during iteration 8 stops after the validation due at
    iteration 8 (not before it: the resumed run starts after iteration 8 and would never
    run it); one during the last validation lets the finished run end normally."""
    monkeypatch.setitem(toy.SCORES, 0, 0.5)          # (runner.epoch stays 0)
    kw = toy._with_validation(train_cfg=dict(type='IterBasedTrainLoop', max_iters=12,
                                             val_interval=4))
    runner = preempted(tmp_path / 'b', dict(type='_SignalAt', at=8, workers=False), **kw)
    runner.register_hook(_ValIters())
    stop, _ = run(runner)
    assert _val_iters(runner) == [4, 8] and stop.checkpoint == str(tmp_path / 'b' /
                                                                    'iter_8.pth')
    again = resumed(tmp_path / 'b', **kw)
    again.register_hook(_ValIters())
    run(again)
    assert _val_iters(again) == [12]

    last = preempted(tmp_path / 'c', dict(type='_SignalAt', workers=False), **kw)
    last.register_hook(_ValIters(signal_at=12))
    stop, result = run(last)
    assert stop is None and _val_iters(last) == [4, 8, 12] and last.iter == 12
    assert 'came after the last training iteration; the run finished' in result['log']


# ---------------------------------------------------------------- saving
def test_a_failed_save_stops_with_the_error(tmp_path, guard, monkeypatch):
    """A full disk while saving: the stop names the error and the last published
    checkpoint, and names no checkpoint of its own."""
    from stan_mm.engine import AtomicCheckpointHook

    def full_disk(self, runner, filename, meta):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(AtomicCheckpointHook, 'save_unscheduled', full_disk)
    work = tmp_path / 'f'
    stop, _ = run(preempted(work, dict(type='_SignalAt', at=10, workers=False)))
    assert stop.checkpoint is None and stop.exit_code == 143
    assert 'could not be saved (OSError: [Errno 28] No space left on device)' in str(stop)
    assert f'The last checkpoint published is {work / "iter_8.pth"}' in str(stop)
    assert signal.getsignal(signal.SIGTERM).__name__ == 'unhandled'


def test_with_mmengines_checkpoint_hook(tmp_path, guard):
    """mmengine's own CheckpointHook: iter_10.pth is saved and named by last_checkpoint
    all the same (a warning says it stays); the resumed run ends at the uninterrupted
    state."""
    _, full = run(make_runner(tmp_path / 'full'))
    work = tmp_path / 'p'
    stop, killed = run(preempted(work, dict(type='_SignalAt', at=10, workers=False),
                                 checkpoint_type='CheckpointHook'))
    assert stop.checkpoint == str(work / 'iter_10.pth')
    assert open(work / 'last_checkpoint').read() == str(work / 'iter_10.pth')
    assert 'iter_10.pth is not deleted later' in killed['log']
    _, again = run(resumed(work, checkpoint_type='CheckpointHook'))
    assert [s[0] for s in again['seen']] == list(range(11, TOTAL + 1))
    assert same_state(again['state'], full['state'])


_EXIT_SCRIPT = """
import signal, sys, torch
from torch.utils.data import _utils
_utils.MP_STATUS_CHECK_INTERVAL = 0.5
from stan_mm.engine.preemption_hook import ignore_signals_in_workers
loader = torch.utils.data.DataLoader(list(range(100)), batch_size=1, num_workers=2)
ignore_signals_in_workers(loader, [int(signal.SIGTERM)])
it = iter(loader)
next(it)
raise SystemExit(7)      # the iterator is alive: multiprocessing's exit joins the workers
"""


def test_exit_does_not_wait_for_workers_that_ignore_sigterm(tmp_path):
    """multiprocessing's exit function sends SIGTERM to the workers, then joins them
    without a timeout: workers that ignore SIGTERM used to hang the exit forever."""
    script = tmp_path / 'exit.py'
    script.write_text(_EXIT_SCRIPT)
    env = dict(os.environ, PYTHONPATH=osp.dirname(osp.dirname(osp.abspath(__file__))))
    done = subprocess.run([sys.executable, str(script)], env=env, timeout=120,
                          capture_output=True, text=True)
    assert done.returncode == 7, done.stderr[-2000:]


_POOL_SCRIPT = """
import multiprocessing as mp, signal, torch
from stan_mm.engine.preemption_hook import ignore_signals_in_workers
loader = torch.utils.data.DataLoader(list(range(8)), batch_size=1, num_workers=1)
ignore_signals_in_workers(loader, [int(signal.SIGTERM)])
pool = mp.Pool(2)                   # left open: multiprocessing's exit function ends it
print(pool.apply(abs, (-3, )))
"""


def test_exit_leaves_other_processes_to_multiprocessing(tmp_path):
    """Only the workers that ignore SIGTERM are killed at exit: killing a Pool's workers
    too made the Pool restart them and the exit hang."""
    script = tmp_path / 'pool.py'
    script.write_text(_POOL_SCRIPT)
    env = dict(os.environ, PYTHONPATH=osp.dirname(osp.dirname(osp.abspath(__file__))))
    done = subprocess.run([sys.executable, str(script)], env=env, timeout=120,
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == '3', done.stderr[-2000:]


def test_the_endless_iterator_draws_what_mmengines_draws_when_it_is_built():
    """IterBasedTrainLoop's iterator starts its workers at the first batch, but the base
    seed torch draws for them is drawn when the loop is built, as mmengine draws it: the
    numbers drawn in between (the model's initialisation) and the base seed are mmengine's
    (reference: the same draws made by hand in mmengine's order)."""
    from mmengine.runner.loops import _InfiniteDataloaderIterator
    loader = torch.utils.data.DataLoader(list(range(6)), batch_size=2)
    torch.manual_seed(0)
    base = torch.empty((), dtype=torch.int64).random_().item()     # mmengine: iter() here
    init = torch.randn(3)
    after = torch.randn(2)
    torch.manual_seed(0)
    endless = _InfiniteDataloaderIterator(loader)
    assert torch.equal(torch.randn(3), init)
    assert next(endless).tolist() == [0, 1]
    assert endless._iterator._base_seed == base
    assert torch.equal(torch.randn(2), after)


# ---------------------------------------------------------------- handlers, resumed state
def test_the_handlers_go_when_training_raises(tmp_path, guard):
    """mmengine calls after_run only after a run that returned: a run that raised must not
    leave the process ignoring SIGTERM."""
    runner = make_runner(tmp_path / 'r', stop_after=3, extra_hooks=[
        dict(type='PreemptionHook')])
    with pytest.raises(toy._Stopped):
        runner.train()
    assert signal.getsignal(signal.SIGTERM).__name__ == 'unhandled'


def test_a_stop_before_training_names_the_checkpoint_it_resumed_from(tmp_path, guard):
    """A moved work dir: the checkpoint's own record names the old folder; the stop names
    the file the run resumed from."""
    try:
        make_runner(tmp_path / 'old', stop_after=10).train()
    except toy._Stopped:
        pass
    os.rename(tmp_path / 'old', tmp_path / 'new')
    stop, _ = run(make_runner(tmp_path / 'new', resume_from=tmp_path / 'new' / 'iter_8.pth',
                              extra_hooks=[dict(type='PreemptionHook'),
                                           dict(type='_SignalAt', before_train=True,
                                                workers=False)]))
    assert stop.checkpoint == str(tmp_path / 'new' / 'iter_8.pth')
    assert 'the checkpoint of this state is' in str(stop)


# ---------------------------------------------------------------- distributed
def _dist_worker(rank, init_file):
    """Only rank 1 gets SIGUSR1, during iteration 3: both ranks must stop after it."""
    from mmengine.logging import MessageHub
    said = []
    runner = SimpleNamespace(
        epoch=0, iter=0, message_hub=MessageHub.get_instance(f'pre_{rank}'),
        logger=SimpleNamespace(warning=said.append, info=said.append),
        train_loop=SimpleNamespace(dataloader=None), hooks=[], max_iters=100,
        optim_wrapper=SimpleNamespace())
    hook = PreemptionHook(signals=['SIGUSR1'])
    hook._save = lambda runner, count, where: f'iter_{count}.pth'
    hook.before_train(runner)
    for it in range(10):
        runner.iter = it
        if rank == 1 and it == 2:
            os.kill(os.getpid(), signal.SIGUSR1)
        try:
            hook.after_train_iter(runner, it)
        except TrainingPreempted as e:
            return (it + 1, e.checkpoint, e.exit_code, str(e))
    return None


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_iteration(tmp_path):
    from stan_mm.testing import run_ranks
    results = run_ranks(_dist_worker, tmp_path / 'init')
    assert all(isinstance(v, tuple) for v in results.values()), results
    assert results[0][:3] == results[1][:3] == (3, 'iter_3.pth', 128 + signal.SIGUSR1)
    assert '(on another rank)' in results[0][3] and '(on another rank)' not in results[1][3]


# ---------------------------------------------------------------- arguments
def test_arguments():
    assert PreemptionHook().signums == (signal.SIGTERM, signal.SIGUSR1)
    assert PreemptionHook(signals='usr2').signums == (signal.SIGUSR2, )
    assert PreemptionHook(signals=[int(signal.SIGTERM), 'SIGTERM']).signums == \
        (signal.SIGTERM, )
    for bad, words in [('SIGKILL', 'cannot be caught'), ('SIGBOGUS', 'unknown signal'),
                       ([], 'is empty'), ([1.5], 'names or numbers'), (99999, 'not a signal')]:
        with pytest.raises(ValueError, match=words):
            PreemptionHook(signals=bad)


def test_the_runtime_registers_it():
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(osp.dirname(osp.dirname(__file__)),
                                   'configs/_base_/default_runtime.py'))
    assert cfg.default_hooks.preemption.type == 'PreemptionHook'


# ---------------------------------------------------------------- tools/train.py
def test_sigterm_through_train_tool(tmp_path):
    """tools/train.py on the tiny quickstart STAN (real videos, 2 DataLoader workers,
    iteration checkpoints every 4 of 3 x 3 iterations, ``--deterministic``), SIGTERM to the
    process and its workers after iteration 5: exit status 143, iter_5.pth published; then
    ``--resume``: iterations 6..9 have the uninterrupted run's losses, and its weights."""
    from test_resume import (_next_second, iteration_checkpoint_run, run_dirs, scalars,
                             train as train_tool, write_config)
    from stan_mm.compat import safe_torch_load
    data_root, common = iteration_checkpoint_run(tmp_path)
    cfg = write_config(tmp_path / 'cfg.py', data_root, custom_hooks=[], **common)
    stop = write_config(tmp_path / 'stop.py', data_root, **common, custom_hooks=[
        dict(type='_SignalAt', at=5)])
    a, b = tmp_path / 'A', tmp_path / 'B'
    assert train_tool([cfg, '--work-dir', a, '--deterministic']) == 0
    assert train_tool([stop, '--work-dir', b, '--deterministic']) == 128 + signal.SIGTERM
    assert open(b / 'last_checkpoint').read() == str(b / 'iter_5.pth')
    log = open(next(osp.join(d, f) for d in run_dirs(b) for f in os.listdir(d)
                    if f.endswith('.log'))).read()
    assert 'PreemptionHook: SIGTERM received; stopped at iteration 5 (epoch 2)' in log
    _next_second()
    assert train_tool([cfg, '--work-dir', b, '--deterministic', '--resume']) == 0
    full = scalars(run_dirs(a)[-1])
    resumed_run = scalars(run_dirs(b)[-1])
    assert sorted(resumed_run) == list(range(6, 10))
    for it in resumed_run:
        assert resumed_run[it]['loss'] == full[it]['loss'], (it, resumed_run[it], full[it])
    wa = safe_torch_load(str(a / 'iter_9.pth'))['state_dict']
    wb = safe_torch_load(str(b / 'iter_9.pth'))['state_dict']
    assert all(torch.equal(v, wb[k]) for k, v in wa.items())
    assert not osp.exists(b / 'iter_5.pth')      # superseded by iter_8.pth
