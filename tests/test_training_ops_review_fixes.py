"""Review fixes of the training operations: NaN / inf losses and weights stop the run
(``NonFiniteLossHook``) and are never checkpointed (``AtomicCheckpointHook``); the pointer to
a new checkpoint is on disk before the checkpoint is, so a kill between the two renames
leaves a work dir :func:`recover_last_checkpoint` resumes from; the start of a run removes
the temporary file of ``.stan_validated.json``; mmengine's atomic local writes keep symlinks
and hard links.

Training runs use mmengine's ``Runner`` in-process on a toy model (a linear layer, 8
samples in batches of 2: 4 iterations per epoch), the first one built from
``configs/_base_/default_runtime.py`` with a ``custom_hooks`` list of its own.
"""
import itertools
import math
import os
import os.path as osp

import pytest
import torch
from torch import nn

import stan_mm  # noqa: F401
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.optim import OptimWrapper
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmaction.registry import DATASETS, HOOKS, MODELS, OPTIM_WRAPPERS

init_default_scope('mmaction')

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
RUNTIME = osp.join(REPO, 'configs', '_base_', 'default_runtime.py')
PER_EPOCH = 4
PENDING_POINTER = '.last_checkpoint.pending'      # stan_mm.engine.checkpoint_hook's
_names = itertools.count()


@DATASETS.register_module(force=True)
class _NFToyDataset(torch.utils.data.Dataset):
    metainfo = dict()

    def __len__(self):
        return 2 * PER_EPOCH

    def __getitem__(self, idx):
        return dict(inputs=torch.full((4, ), idx / 8.0))


@MODELS.register_module(force=True)
class _NFToyModel(BaseModel):
    """``loss * loss_factor``: a hook sets the factor to inf for chosen iterations."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.loss_factor = 1.0

    def forward(self, inputs, data_samples=None, mode='loss'):
        out = self.fc(inputs)
        if mode != 'loss':
            return list(out)
        return dict(loss=((out - 1) ** 2).mean() * self.loss_factor)


@OPTIM_WRAPPERS.register_module(force=True)
class _SkipNonFiniteOptimWrapper(OptimWrapper):
    """What AMP's ``GradScaler`` does with inf / NaN gradients: skip the step."""

    def update_params(self, loss, step_kwargs=None, zero_kwargs=None):
        loss = self.scale_loss(loss)
        self.backward(loss)
        if self.should_update():
            grads = [p.grad for g in self.optimizer.param_groups for p in g['params']
                     if p.grad is not None]
            if all(bool(torch.isfinite(g).all()) for g in grads):
                self.step(**(step_kwargs or {}))
            self.zero_grad(**(zero_kwargs or {}))


@HOOKS.register_module(force=True)
class _NFPoison(Hook):
    """``nan_weights_at``: a weight becomes NaN before that (1-based) iteration;
    ``inf_loss_at``: the loss of those iterations is inf; ``nan_weights_after``: a weight
    becomes NaN after that iteration (after its loss was computed)."""
    priority = 'HIGHEST'

    def __init__(self, nan_weights_at=None, inf_loss_at=(), nan_weights_after=None):
        self.nan_weights_at = nan_weights_at
        self.inf_loss_at = set(inf_loss_at)
        self.nan_weights_after = nan_weights_after
        self.trained = []

    @staticmethod
    def _poison(runner):
        with torch.no_grad():
            runner.model.fc.weight[1, 2] = float('nan')

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        it = runner.iter + 1
        self.trained.append(it)
        if it == self.nan_weights_at:
            self._poison(runner)
        runner.model.loss_factor = math.inf if it in self.inf_loss_at else 1.0

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.nan_weights_after:
            self._poison(runner)


def _write_config(path, work_dir, poison, skip_nonfinite=False, max_epochs=4,
                  wrapper=None):
    """A config on the base runtime (its default_hooks), with its own custom_hooks;
    ``wrapper``: the optim_wrapper's ``type`` and other arguments."""
    wrapper = ''.join(f'{k}={v!r}, ' for k, v in (wrapper or (
        dict(type='_SkipNonFiniteOptimWrapper') if skip_nonfinite else {})).items())
    path.write_text(f"""
_base_ = [{RUNTIME!r}]
model = dict(type='_NFToyModel')
work_dir = {str(work_dir)!r}
experiment_name = 'nf_{next(_names)}'
train_dataloader = dict(dataset=dict(type='_NFToyDataset'), batch_size=2, num_workers=0,
                        sampler=dict(type='DefaultSampler', shuffle=False),
                        collate_fn=dict(type='default_collate'))
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs={max_epochs}, val_interval=100)
optim_wrapper = dict({wrapper}optimizer=dict(type='SGD', lr=0.1))
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(interval=1, max_keep_ckpts=5, save_best=None))
log_processor = dict(window_size=1)
custom_hooks = [dict(type='_NFPoison', **{poison!r})]
randomness = dict(seed=0)
""")
    return str(path)


def _run(tmp_path, poison, **kwargs):
    """Train from the config; (runner, the exception it raised or None, the log text)."""
    from mmengine.config import Config
    work = tmp_path / 'work'
    runner = Runner.from_cfg(Config.fromfile(_write_config(tmp_path / 'cfg.py', work, poison,
                                                           **kwargs)))
    err = None
    try:
        runner.train()
    except Exception as e:  # noqa: BLE001
        err = e
    with open(osp.join(runner.log_dir, f'{runner.timestamp}.log')) as f:
        log = f.read()
    return runner, err, log


def _last_checkpoint(work):
    with open(osp.join(work, 'last_checkpoint')) as f:
        return f.read().strip()


def _finite_checkpoint(path) -> bool:
    from stan_mm.compat import safe_torch_load
    state = safe_torch_load(path)['state_dict']
    return all(bool(torch.isfinite(v).all()) for v in state.values())


def _poison_hook(runner):
    return next(h for h in runner.hooks if isinstance(h, _NFPoison))


# ---------------------------------------------------------------- NonFiniteLossHook
def test_nan_weights_stop_the_run_at_once_and_last_checkpoint_stays_finite(tmp_path):
    """A NaN weight before iteration 6 (epoch 2): every later loss was NaN, the run ended
    with status 0 and last_checkpoint named NaN weights. Now the run stops at iteration 6
    (the weights cannot recover: no waiting for patience) with an error naming the epoch,
    the iteration, the loss key, the last checkpoint (epoch_1.pth, finite) and what to do;
    the hook comes from the base runtime's default_hooks although the config has a
    custom_hooks list of its own."""
    runner, err, log = _run(tmp_path, dict(nan_weights_at=6))
    work = str(tmp_path / 'work')
    assert err is not None, 'training with NaN weights ran to the end'
    assert type(err).__name__ == 'NonFiniteTrainingError' and isinstance(err, RuntimeError)
    msg = str(err)
    assert 'epoch 2, iteration 6' in msg and 'loss=nan' in msg
    assert 'fc.weight' in msg and 'weights are no longer finite' in msg
    assert osp.join(work, 'epoch_1.pth') in msg and '--resume' in msg
    assert 'learning rate' in msg and 'clip_grad' in msg and 'bfloat16' in msg
    assert _poison_hook(runner).trained[-1] == 6             # stopped in that iteration
    assert _last_checkpoint(work) == osp.join(work, 'epoch_1.pth')
    assert _finite_checkpoint(_last_checkpoint(work))
    assert sorted(f for f in os.listdir(work) if f.endswith('.pth')) == ['epoch_1.pth']
    assert 'ERROR' in log and 'NonFiniteLossHook: training stopped' in log


def test_non_finite_losses_stop_the_run_after_patience(tmp_path):
    """inf losses from iteration 6 on, every step skipped (as GradScaler does), so the
    weights stay finite: the run stops at the 5th such iteration in a row (patience=5 of
    the base runtime), iteration 10; the epoch 2 checkpoint (finite weights) is the last."""
    runner, err, log = _run(tmp_path, dict(inf_loss_at=range(6, 100)), skip_nonfinite=True)
    work = str(tmp_path / 'work')
    assert err is not None and type(err).__name__ == 'NonFiniteTrainingError'
    msg = str(err)
    assert 'epoch 3, iteration 10' in msg and 'loss=inf' in msg
    assert 'in 5 consecutive iterations (since iteration 6; patience=5)' in msg
    assert osp.join(work, 'epoch_2.pth') in msg
    assert _poison_hook(runner).trained[-1] == 10
    assert _last_checkpoint(work) == osp.join(work, 'epoch_2.pth')
    assert _finite_checkpoint(_last_checkpoint(work))
    assert log.count('NonFiniteLossHook: non-finite loss (loss=inf)') == 4   # 6..9 warned


def test_isolated_inf_losses_do_not_stop_training(tmp_path):
    """An inf loss whose step is skipped (AMP fp16) at iterations 3 and 7: training goes on
    to the end; each is reported as a warning."""
    runner, err, log = _run(tmp_path, dict(inf_loss_at=(3, 7)), skip_nonfinite=True)
    assert err is None
    assert _poison_hook(runner).trained == list(range(1, 4 * PER_EPOCH + 1))
    assert 'NonFiniteLossHook: non-finite loss (loss=inf) at epoch 1, iteration 3 (1 of 5 ' \
        'in a row allowed; the weights are still finite' in log
    assert 'at epoch 2, iteration 7 (1 of 5' in log                # the count restarted
    assert _last_checkpoint(str(tmp_path / 'work')).endswith('epoch_4.pth')


def test_nonfinite_hook_arguments_and_consumes_no_random_numbers():
    """patience is checked when the hook is built; a healthy iteration draws no random
    number (exact resumption relies on the generators' states)."""
    from types import SimpleNamespace
    from stan_mm.engine import NonFiniteLossHook
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match='patience must be an int >= 1'):
            NonFiniteLossHook(patience=bad)
    hook = NonFiniteLossHook(patience=2)
    runner = SimpleNamespace(epoch=0, iter=0, model=nn.Linear(2, 2), work_dir='.')
    state = torch.get_rng_state()
    hook.after_train_iter(runner, 0, outputs=dict(loss=torch.tensor(0.5), acc=torch.tensor(
        float('nan'))))                               # 'acc' is no loss: not counted
    assert torch.equal(torch.get_rng_state(), state) and hook._streak == 0


def _dist_worker(rank, init_file):
    """Rank 0's loss is NaN at iterations 2..; rank 1's stays finite: both ranks must stop
    at the same iteration (else rank 1 would wait in the next all-reduce)."""
    from types import SimpleNamespace
    from stan_mm.engine import NonFiniteLossHook, NonFiniteTrainingError
    said = []
    logger = SimpleNamespace(warning=said.append, error=said.append)
    runner = SimpleNamespace(epoch=0, iter=0, model=nn.Linear(2, 2), logger=logger,
                             work_dir=osp.dirname(init_file))
    hook = NonFiniteLossHook(patience=3)
    hook.before_train(runner)
    for it in range(10):
        runner.iter = it
        loss = float('nan') if rank == 0 and it >= 1 else 1.0
        try:
            hook.after_train_iter(runner, it, outputs=dict(loss=torch.tensor(loss)))
        except NonFiniteTrainingError as e:
            return (it + 1, str(e))
    return None


def test_every_rank_stops_at_the_same_iteration(tmp_path):
    from stan_mm.testing import run_ranks
    results = run_ranks(_dist_worker, tmp_path / 'init')
    assert all(isinstance(v, tuple) for v in results.values()), results
    assert results[0][0] == results[1][0] == 4          # iterations 2, 3, 4: patience 3
    assert 'loss=nan' in results[0][1]
    assert 'a non-finite loss on another rank' in results[1][1]


# ---------------------------------------------------------- AtomicCheckpointHook: NaN
def _toy_runner(work_dir, hooks=(), max_epochs=2, **kwargs):
    return Runner(
        model=dict(type='_NFToyModel'), work_dir=str(work_dir),
        experiment_name=f'nf_ckpt_{next(_names)}',
        train_dataloader=dict(dataset=dict(type='_NFToyDataset'), batch_size=2, num_workers=0,
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              collate_fn=dict(type='default_collate')),
        train_cfg=dict(type='EpochBasedTrainLoop', max_epochs=max_epochs),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        default_hooks=dict(logger=dict(type='LoggerHook', interval=1),
                           checkpoint=dict(type='AtomicCheckpointHook', interval=1)),
        custom_hooks=list(hooks), log_processor=dict(window_size=1),
        default_scope='mmaction', **kwargs)


def test_checkpoint_hook_refuses_nan_weights(tmp_path):
    """Without NonFiniteLossHook: a weight turns NaN after the last iteration of epoch 2
    (its loss was finite). The epoch 2 checkpoint is refused with an ERROR naming the
    parameter, the run stops, last_checkpoint still names epoch_1.pth."""
    work = tmp_path / 'work'
    runner = _toy_runner(work, [dict(type='_NFPoison', nan_weights_after=2 * PER_EPOCH)],
                         max_epochs=3)
    with pytest.raises(Exception) as info:               # (before: no error at all)
        runner.train()
    assert type(info.value).__name__ == 'NonFiniteTrainingError'
    msg = str(info.value)
    assert 'refusing to save epoch_2.pth' in msg and 'fc.weight' in msg
    assert str(work / 'epoch_1.pth') in msg
    assert sorted(p.name for p in work.glob('*.pth')) == ['epoch_1.pth']
    assert _last_checkpoint(work) == str(work / 'epoch_1.pth')
    assert not list(work.glob('.*'))                  # no pending pointer, no temporary file
    log = open(osp.join(runner.log_dir, f'{runner.timestamp}.log')).read()
    assert 'ERROR' in log and 'refusing to save epoch_2.pth' in log


class _BestRunner:
    """What CheckpointHook's save_best path uses of a runner, with a model."""

    def __init__(self, work_dir, name, model):
        from mmengine.logging import MessageHub, MMLogger
        self.work_dir, self.epoch, self.iter, self.model = str(work_dir), 1, 4, model
        self.message_hub = MessageHub.get_instance(name)
        self.logger = MMLogger.get_instance('stan_mm_nf_best_test')

    def save_checkpoint(self, out_dir, filename, *args, **kwargs):
        from stan_mm.engine.checkpoint_hook import atomic_write_bytes
        atomic_write_bytes(f'epoch {self.epoch}'.encode(), osp.join(out_dir, filename))


def test_checkpoint_hook_refuses_a_nan_best_checkpoint(tmp_path):
    from stan_mm.engine import AtomicCheckpointHook
    model = nn.Linear(3, 2)
    runner = _BestRunner(tmp_path, f'nf_best_{next(_names)}', model)
    hook = AtomicCheckpointHook(interval=1, save_best='acc', rule='greater')
    hook.before_train(runner)
    hook._save_best_checkpoint(runner, {'acc': 0.5})
    assert [p.name for p in tmp_path.glob('best_*.pth')] == ['best_acc_epoch_1.pth']
    with torch.no_grad():
        model.bias[1] = float('inf')
    runner.epoch = 2
    with pytest.raises(Exception, match=r'refusing to save a best checkpoint \(after '
                                        r'epoch 2\).*'
                                        r'NaN/inf in bias') as info:
        hook._save_best_checkpoint(runner, {'acc': 0.9})
    assert type(info.value).__name__ == 'NonFiniteTrainingError'
    assert [p.name for p in tmp_path.glob('best_*.pth')] == ['best_acc_epoch_1.pth']
    assert runner.message_hub.get_info('best_score') == 0.5


def _refusal_rank(rank, init_file):
    """Only rank 1's weights hold an inf (sharded or diverged parameters): every rank must
    refuse the checkpoint (rank 0 alone would write it and go on to the next all-reduce)."""
    from stan_mm.engine import AtomicCheckpointHook
    model = nn.Linear(3, 2)
    if rank == 1:
        with torch.no_grad():
            model.weight[0, 1] = float('inf')
    runner = _BestRunner(osp.dirname(init_file), f'nf_dist_{rank}', model)
    try:
        AtomicCheckpointHook(interval=1)._refuse_nonfinite(runner, 'epoch_2.pth')
        return 'saved'
    except Exception as e:  # noqa: BLE001
        return f'{type(e).__name__}: {e}'


def test_every_rank_refuses_a_checkpoint_when_one_ranks_weights_are_not_finite(tmp_path):
    from stan_mm.testing import run_ranks
    got = run_ranks(_refusal_rank, tmp_path / 'init')
    assert got[0].startswith('NonFiniteTrainingError') and 'of another rank' in got[0], got
    assert got[1].startswith('NonFiniteTrainingError') and 'weight' in got[1], got


def test_nonfinite_parameters_names_them():
    from stan_mm.engine.nonfinite_hook import nonfinite_parameters
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3).half(), nn.Linear(3, 3))
    assert nonfinite_parameters(model) == []
    with torch.no_grad():
        model[1].weight.fill_(60000.)       # finite fp16 whose L2 norm overflows: not flagged
        assert nonfinite_parameters(model) == []
        model[2].bias[0] = float('nan')
        model[0].weight[1, 1] = -float('inf')
    assert nonfinite_parameters(model) == ['0.weight', '2.bias']
    assert nonfinite_parameters(model, limit=1) == ['0.weight']


# ----------------------------------------------- publish order, recover_last_checkpoint
class _Killed(BaseException):
    """Stands in for a SIGKILL at a chosen rename."""


def _kill_at_rename(monkeypatch, dst_name, renames):
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        renames.append((osp.basename(str(src)), osp.basename(str(dst))))
        if osp.basename(str(dst)) == dst_name:
            raise _Killed(dst_name)
        return real(src, dst, *args, **kwargs)
    monkeypatch.setattr(os, 'replace', replace)


def test_a_kill_between_the_checkpoint_and_its_pointer_is_recoverable(tmp_path, monkeypatch):
    """Killed after epoch_1.pth was renamed into place, before last_checkpoint existed:
    tools/train.py --resume refused such a work dir. The pointer now reaches the disk
    before the checkpoint, and recover_last_checkpoint finds epoch_1.pth through it."""
    work = tmp_path / 'work'
    renames = []
    _kill_at_rename(monkeypatch, 'last_checkpoint', renames)
    with pytest.raises(_Killed):
        _toy_runner(work).train()
    monkeypatch.undo()
    assert sorted(p.name for p in work.glob('*.pth')) == ['epoch_1.pth']
    assert not (work / 'last_checkpoint').exists()
    # order: pending pointer complete, then the checkpoint, then last_checkpoint
    dsts = [d for _, d in renames]
    assert dsts == [PENDING_POINTER, 'epoch_1.pth', 'last_checkpoint'], renames
    assert renames[-1][0] == PENDING_POINTER
    assert (work / PENDING_POINTER).read_text() == str(work / 'epoch_1.pth')

    from stan_mm.engine import checkpoint_hook, recover_last_checkpoint
    assert checkpoint_hook.PENDING_POINTER == PENDING_POINTER
    assert recover_last_checkpoint(str(work)) == str(work / 'epoch_1.pth')
    assert not (work / 'last_checkpoint').exists()              # publish=False: read-only
    assert recover_last_checkpoint(str(work), publish=True) == str(work / 'epoch_1.pth')
    assert _last_checkpoint(work) == str(work / 'epoch_1.pth')
    assert not (work / PENDING_POINTER).exists()
    assert recover_last_checkpoint(str(work)) is None           # nothing left to recover

    # mmengine's resume (resume=True, no load_from) now goes on from epoch 1
    runner = _toy_runner(work, resume=True)
    runner.train()
    assert runner.iter == 2 * PER_EPOCH
    assert _last_checkpoint(work) == str(work / 'epoch_2.pth')
    assert not (work / PENDING_POINTER).exists() and not list(work.glob('.*.tmp'))


def test_recover_last_checkpoint_refuses_what_is_not_complete(tmp_path, monkeypatch):
    work = tmp_path / 'work'
    # killed before the checkpoint's rename: the pointer names a file that is not there
    _kill_at_rename(monkeypatch, 'epoch_1.pth', [])
    with pytest.raises(_Killed):
        _toy_runner(work).train()
    monkeypatch.undo()
    assert (work / PENDING_POINTER).read_text() == str(work / 'epoch_1.pth')
    from stan_mm.engine.checkpoint_hook import recover_last_checkpoint
    assert not list(work.glob('*.pth')) and recover_last_checkpoint(str(work)) is None
    # a truncated checkpoint (no zip end record), an empty one: refused
    good = tmp_path / 'good.pth'
    torch.save({'state_dict': {'w': torch.ones(300)}}, str(good))
    data = good.read_bytes()
    (work / 'epoch_1.pth').write_bytes(data[:len(data) // 2])
    assert recover_last_checkpoint(str(work)) is None
    (work / 'epoch_1.pth').write_bytes(b'')
    assert recover_last_checkpoint(str(work)) is None
    (work / 'epoch_1.pth').write_bytes(data)
    assert recover_last_checkpoint(str(work)) == str(work / 'epoch_1.pth')
    # last_checkpoint naming a file that is gone: the pending pointer is used
    (work / 'last_checkpoint').write_text(str(work / 'gone.pth'))
    assert recover_last_checkpoint(str(work)) == str(work / 'epoch_1.pth')
    # a valid last_checkpoint: nothing to recover
    (work / 'last_checkpoint').write_text(str(good))
    assert recover_last_checkpoint(str(work)) is None


def test_start_of_run_removes_validated_json_tmp_and_pending_pointer(tmp_path):
    """atomic_write_bytes' temporary file of .stan_validated.json is
    '..stan_validated.json.XXXXXXXX.tmp'; the cleanup at the start of a run missed it."""
    from mmengine.logging import MessageHub, MMLogger
    from stan_mm.engine import AtomicCheckpointHook

    class R:
        work_dir, epoch, iter, model = str(tmp_path), 0, 0, None
        message_hub = MessageHub.get_instance(f'nf_tmp_{next(_names)}')
        logger = MMLogger.get_instance('stan_mm_nf_tmp_test')

        def save_checkpoint(self, out_dir, filename, *args, **kwargs):
            pass
    left = ['..stan_validated.json.ab_c1234.tmp', '.epoch_1.pth.abcdefgh.tmp',
            '.last_checkpoint.x1y2z3w4.tmp', '..last_checkpoint.pending.q1w2e3r4.tmp',
            PENDING_POINTER]
    kept = ['.stan_validated.json', 'epoch_1.pth', '.other.json.abcdefgh.tmp', 'last_checkpoint']
    for name in left + kept:
        (tmp_path / name).write_bytes(b'x')
    AtomicCheckpointHook(interval=1).before_train(R())
    assert sorted(os.listdir(tmp_path)) == sorted(kept)


# -------------------------------------------------- atomic writes keep symlinks, hard links
def test_atomic_put_writes_through_a_symlink(tmp_path):
    """stan_mm.compat makes LocalBackend.put atomic (tmp + os.replace); that replaced a
    symlink at the path with a regular file. Like mmengine's open(path, 'wb'), the link now
    keeps pointing to its target, which gets the new content."""
    import mmengine
    store = tmp_path / 'store'
    store.mkdir()
    (store / 'cfg.json').write_text('{"old": 0}')
    link = tmp_path / 'cfg.json'
    link.symlink_to(osp.join('store', 'cfg.json'))          # relative link
    mmengine.dump({'a': 1}, str(link))
    assert link.is_symlink() and os.readlink(link) == osp.join('store', 'cfg.json')
    assert mmengine.load(str(store / 'cfg.json')) == {'a': 1}
    assert not list(tmp_path.glob('.*.tmp')) and not list(store.glob('.*.tmp'))
    dangling = tmp_path / 'new.json'                         # a link to a file not yet there
    dangling.symlink_to(store / 'new.json')
    mmengine.dump({'b': 2}, str(dangling))
    assert dangling.is_symlink() and mmengine.load(str(store / 'new.json')) == {'b': 2}


def test_atomic_put_keeps_hard_links(tmp_path):
    import mmengine
    a, b = tmp_path / 'a.json', tmp_path / 'b.json'
    a.write_text('{"old": 0}')
    os.link(a, b)
    mmengine.dump({'a': 1}, str(a))
    assert os.stat(a).st_ino == os.stat(b).st_ino and os.stat(a).st_nlink == 2
    assert mmengine.load(str(b)) == {'a': 1}
    # a file with a single name is still replaced atomically (a new inode)
    c = tmp_path / 'c.json'
    c.write_text('{}')
    ino = os.stat(c).st_ino
    mmengine.dump({'c': 3}, str(c))
    assert os.stat(c).st_ino != ino and mmengine.load(str(c)) == {'c': 3}


def test_the_runtime_hooks_can_be_switched_off_with_none(tmp_path):
    """default_hooks.nonfinite=None / param_group_lr=None (a child config or --cfg-options)
    switch the stan runtime's extra hooks off; mmengine itself accepts None only for its
    six own names and failed a bare assert for these."""
    from mmengine.config import Config
    runtime = Config.fromfile(RUNTIME)
    assert {'nonfinite', 'param_group_lr'} <= set(runtime.default_hooks)
    hooks = dict(runtime.default_hooks, nonfinite=None, param_group_lr=None, timer=None)
    runner = _toy_runner(tmp_path / 'work')
    runner._hooks = []
    runner.register_default_hooks(hooks)
    names = [type(h).__name__ for h in runner.hooks]
    assert 'NonFiniteLossHook' not in names and 'ParamGroupLrHook' not in names
    assert 'IterTimerHook' not in names                       # mmengine's own None rule
    assert 'AtomicCheckpointHook' in names and 'SyncBuffersHook' in names
    runner._hooks = []
    runner.register_default_hooks(dict(runtime.default_hooks))
    assert {'NonFiniteLossHook', 'ParamGroupLrHook'} <= {type(h).__name__
                                                         for h in runner.hooks}


def test_a_sharded_checkpoint_folder_is_never_complete(tmp_path):
    """A sharded checkpoint folder is written file by file in place: a pending pointer to
    one is not trusted, even when the folder holds files."""
    from stan_mm.engine.checkpoint_hook import is_complete_checkpoint, recover_last_checkpoint
    work = tmp_path / 'work'
    shards = work / 'epoch_1.pth'
    shards.mkdir(parents=True)
    (shards / 'rank0.pt').write_bytes(b'x' * 100)
    (work / PENDING_POINTER).write_text(str(shards))
    assert not is_complete_checkpoint(str(shards))
    assert recover_last_checkpoint(str(work)) is None
