"""Resuming from an iteration checkpoint inside an epoch (``ResumableEpochBasedTrainLoop``):
the resumed run trains exactly the batches the checkpoint had not seen, numbers them from
there, and with ``EpochSeedHook(per_iteration=True)`` ends with the uninterrupted run's
weights bit for bit (CPU, ``deterministic=True``).

Most tests drive mmengine's ``Runner`` in-process on a toy model (a linear layer behind
dropout) and a toy dataset whose samples draw "augmentation" noise from ``random``, NumPy
and torch, so that every generator matters; a hook records which dataset indices each
iteration trained on. A run is "killed" by an exception after an iteration, the resumed run
is a new ``Runner`` loading the iteration checkpoint. The last test kills
``tools/train.py`` with SIGKILL on the tiny quickstart STAN with real videos, two persistent
DataLoader workers and ``--deterministic``.
"""
import contextlib
import glob
import json
import itertools
import os.path as osp
import random
import re
import signal
from unittest import mock

import numpy as np
import pytest
import torch
from torch import nn

import stan_mm  # noqa: F401
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmaction.registry import DATA_SAMPLERS, DATASETS, HOOKS, METRICS, MODELS
from mmengine.evaluator import BaseMetric

from stan_mm.engine.loops import (ORDER_KEY, ResumableEpochBasedTrainLoop,
                                  skip_first_samples)

init_default_scope('mmaction')

SIZE, BATCH, EPOCHS = 11, 2, 3          # 6 batches per epoch (the last one of 1 sample)
PER_EPOCH = -(-SIZE // BATCH)
TOTAL = EPOCHS * PER_EPOCH               # 18 iterations
CKPT_EVERY = 4                           # iter_4, iter_8 (epoch 2, 2 of 6 done), iter_12...
STOP_AFTER = 10                          # the last checkpoint before the stop: iter_8.pth
_names = itertools.count()


class _Stopped(Exception):
    """Stands in for a kill (the resumed run only reads the checkpoint)."""


@DATASETS.register_module(force=True)
class _NoisyToyDataset(torch.utils.data.Dataset):
    """Sample ``i``: ``i / size`` plus noise from torch, NumPy and ``random`` (the three
    generators data pipelines draw from)."""
    metainfo = dict()

    def __init__(self, size: int = SIZE):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, idx):
        noise = torch.rand(4) + float(np.random.rand()) + random.random()
        return dict(inputs=torch.full((4, ), idx / self.size) + 0.1 * noise, idx=idx)


@MODELS.register_module(force=True)
class _DropoutToyModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.drop = nn.Dropout(0.5)

    def forward(self, inputs, idx=None, data_samples=None, mode='loss'):
        out = self.fc(self.drop(inputs))
        if mode != 'loss':          # (validation: one output per sample)
            return list(out)
        return dict(loss=((out - 1) ** 2).mean())


@DATA_SAMPLERS.register_module(force=True)
class _FreshShuffle(torch.utils.data.RandomSampler):
    """A sampler whose order is not a function of (seed, epoch)."""

    def __init__(self, dataset, seed=None):
        super().__init__(dataset)


@HOOKS.register_module(force=True)
class _Record(Hook):
    """Records (global iter, batch_idx, end_of_epoch, dataset indices, inputs) per
    iteration; raises :class:`_Stopped` after global iteration ``stop_after`` (1-based),
    after the checkpoint hook has saved."""
    priority = 'LOWEST'

    def __init__(self, stop_after=None, stop_in_val=None):
        self.stop_after = stop_after
        self.stop_in_val = stop_in_val   # "killed" during the validation after this epoch
        self.seen = []
        self.lrs = []     # (epoch, batch_idx, learning rate the iteration trained with)
        self.validated = []   # the epochs whose validation finished
        self.betas = []       # (epoch, batch_idx, Adam's betas the iteration trained with)

    def before_val_epoch(self, runner):
        _VAL_EPOCH[0] = runner.epoch
        if self.stop_in_val is not None and runner.epoch == self.stop_in_val:
            raise _Stopped(runner.iter)

    def after_val_epoch(self, runner, metrics=None):
        self.validated.append(runner.epoch)

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        group = runner.optim_wrapper.optimizer.param_groups[0]
        self.lrs.append((runner.epoch, batch_idx, group['lr']))
        self.betas.append((runner.epoch, batch_idx, tuple(group.get('betas', ()))))

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.seen.append((runner.iter + 1, batch_idx,
                          self.end_of_epoch(runner.train_dataloader, batch_idx),
                          data_batch['idx'].tolist(), data_batch['inputs'].clone()))
        if self.stop_after is not None and runner.iter + 1 >= self.stop_after:
            raise _Stopped(runner.iter + 1)


def make_runner(work_dir, loop='ResumableEpochBasedTrainLoop', per_iteration=True,
                num_workers=0, stop_after=None, resume_from=None, seed=0, by_epoch=False,
                sampler=None, batch_size=None, train_cfg=None, stop_in_val=None,
                optim_wrapper=None, save_best=None, extra_hooks=(), model=None,
                loader_extra=None, checkpoint_type='AtomicCheckpointHook',
                ckpt_every=CKPT_EVERY, **runner_kwargs):
    loader = dict(dataset=dict(type='_NoisyToyDataset'), batch_size=batch_size or BATCH,
                  sampler=sampler or dict(type='DefaultSampler', shuffle=True),
                  num_workers=num_workers, persistent_workers=num_workers > 0,
                  collate_fn=dict(type='default_collate'), **(loader_extra or {}))
    return Runner(
        model=model or dict(type='_DropoutToyModel'),
        work_dir=str(work_dir),
        experiment_name=f'mid_epoch_{next(_names)}',
        train_dataloader=loader,
        train_cfg=train_cfg or dict(type=loop, max_epochs=EPOCHS),
        optim_wrapper=optim_wrapper or dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
        default_hooks=dict(logger=dict(type='LoggerHook', interval=1),
                           checkpoint=dict(type=checkpoint_type, by_epoch=by_epoch,
                                           interval=1 if by_epoch else ckpt_every,
                                           **(dict(save_best=save_best, rule='greater')
                                              if save_best else {}))),
        custom_hooks=[dict(type='EpochSeedHook', per_iteration=per_iteration),
                      dict(type='_Record', stop_after=stop_after, stop_in_val=stop_in_val),
                      *extra_hooks],
        log_processor=dict(window_size=1),
        randomness=dict(seed=seed, deterministic=True),
        resume=resume_from is not None,
        load_from=None if resume_from is None else str(resume_from),
        default_scope='mmaction', **runner_kwargs)


def train(runner):
    """Train; the records, the final state (weights and optimizer) and the run's log."""
    try:
        runner.train()
    except _Stopped:
        pass
    # (persistent workers are stopped when train() returns or raises: stan_mm.compat's
    # worker_shutdown; left to the garbage collector, each worker took 5 s to stop)
    assert getattr(runner.train_dataloader, '_iterator', None) is None
    record = next(h for h in runner.hooks if isinstance(h, _Record))
    state = {k: v.clone() for k, v in runner.model.state_dict().items()}
    for group, values in runner.optim_wrapper.optimizer.state_dict()['state'].items():
        state.update({f'optim.{group}.{k}': v.clone() for k, v in values.items()})
    logs = glob.glob(osp.join(runner.log_dir, '*.log'))
    log = open(logs[0]).read() if logs else ''
    return dict(seen=record.seen, state=state, iter=runner.iter, log=log,
                max_iters=runner.max_iters, lrs=record.lrs, validated=record.validated,
                betas=record.betas)


def same_state(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
    return train(make_runner(tmp_path_factory.mktemp('full')))


def stop_and_resume(tmp_path, ckpt=f'iter_{STOP_AFTER - STOP_AFTER % CKPT_EVERY}.pth',
                    **kwargs):
    stopped = train(make_runner(tmp_path / 'stopped', stop_after=STOP_AFTER, **kwargs))
    assert stopped['iter'] == STOP_AFTER - 1   # (the exception left the last one uncounted)
    resumed = train(make_runner(tmp_path / 'resumed', resume_from=tmp_path / 'stopped' / ckpt,
                                **kwargs))
    return stopped, resumed


# -------------------------------------------------------------- the rest of the epoch
@pytest.mark.parametrize('num_workers', [0, 2], ids=['main_process', 'persistent_workers'])
def test_resumed_run_trains_the_rest_of_the_epoch_exactly(tmp_path, uninterrupted,
                                                          num_workers):
    """Killed in epoch 2, resumed from iter_8.pth (2 of the epoch's 6 batches done): the
    resumed run trains iterations 9..18 on the uninterrupted run's samples, with its
    augmentation, and ends with its weights and optimizer state bit for bit. (The
    uninterrupted run loads in the main process: seeded per sample, the data do not depend
    on the workers.)"""
    full = uninterrupted
    stopped, resumed = stop_and_resume(tmp_path, num_workers=num_workers)
    assert [s[0] for s in full['seen']] == list(range(1, TOTAL + 1))
    done = 8
    assert [s[0] for s in resumed['seen']] == list(range(done + 1, TOTAL + 1))
    assert resumed['iter'] == resumed['max_iters'] == TOTAL
    # the same dataset indices, batch by batch: none repeated, none missed
    assert [s[3] for s in stopped['seen'][:done] + resumed['seen']] == \
        [s[3] for s in full['seen']]
    epoch2 = [i for s in stopped['seen'][PER_EPOCH:done] + resumed['seen'][:PER_EPOCH - 2]
              for i in s[3]]
    assert sorted(epoch2) == list(range(SIZE))
    # the same augmented inputs (seeded per sample) and the same final state
    for got, want in zip(resumed['seen'], full['seen'][done:]):
        assert torch.equal(got[4], want[4]), got[0]
    assert same_state(resumed['state'], full['state'])


def test_batch_idx_and_logs_continue_inside_the_epoch(tmp_path):
    """Hooks get batch_idx 2..5 for the rest of epoch 2 (their end-of-epoch check fires at
    batch 6 of 6), the log reads [2][3/6] .. [2][6/6] and resumes there, not at [2][1/6]."""
    _, resumed = stop_and_resume(tmp_path)
    assert [s[1] for s in resumed['seen']] == [2, 3, 4, 5] + list(range(PER_EPOCH))
    assert [s[2] for s in resumed['seen']] == [False] * 3 + [True] + [False] * 5 + [True]
    lines = re.findall(r'Epoch\(train\)\s*\[(\d+)\]\[\s*(\d+)/(\d+)\]', resumed['log'])
    assert lines[:5] == [('2', '3', '6'), ('2', '4', '6'), ('2', '5', '6'), ('2', '6', '6'),
                         ('3', '1', '6')]
    assert ('2', '1', '6') not in lines and len(lines) == TOTAL - 8
    assert 'continuing at batch 3 (the first 4 indices of this rank\'s sampler are ' \
        'skipped, not loaded)' in resumed['log']
    assert 'AtomicCheckpointHook:' not in resumed['log']     # no mid-epoch warning


def test_checkpoint_after_the_last_batch_of_an_epoch(tmp_path, uninterrupted):
    """iter_12.pth is saved after the last batch of epoch 2, before the epoch ended: the
    resumed run ends epoch 2 without a batch (mmengine would train it again) and trains
    epoch 3 as the uninterrupted run did."""
    stopped = train(make_runner(tmp_path / 'stopped13', stop_after=13))
    resumed = train(make_runner(tmp_path / 'resumed12',
                                resume_from=tmp_path / 'stopped13' / 'iter_12.pth'))
    assert stopped['iter'] == 12
    assert [s[0] for s in resumed['seen']] == list(range(13, TOTAL + 1))
    assert [s[1] for s in resumed['seen']] == list(range(PER_EPOCH))
    assert 'after the last batch of epoch 2' in resumed['log']
    assert same_state(resumed['state'], uninterrupted['state'])


def test_per_epoch_seeding_alone_is_not_exact_mid_epoch(tmp_path, uninterrupted):
    """The same indices, but without per-iteration seeding the resumed dropout and
    augmentation streams differ (what per_iteration=True is for)."""
    full = train(make_runner(tmp_path / 'full', per_iteration=False))
    stopped, resumed = stop_and_resume(tmp_path, per_iteration=False)
    assert [s[3] for s in stopped['seen'][:8] + resumed['seen']] == [s[3] for s in full['seen']]
    assert not torch.equal(resumed['seen'][0][4], full['seen'][8][4])
    assert not same_state(resumed['state'], full['state'])


def test_sampler_seed_of_the_interrupted_run_is_restored(tmp_path):
    """randomness.seed unset: every run draws its own seed and mmengine builds the sampler
    with it before loading the checkpoint. The loop gives the sampler the checkpoint's seed
    back, so that the rest of epoch 2 is the rest of the interrupted run's order."""
    stopped, resumed = stop_and_resume(tmp_path, seed=None)
    epoch2 = [i for s in stopped['seen'][PER_EPOCH:8] + resumed['seen'][:PER_EPOCH - 2]
              for i in s[3]]
    assert sorted(epoch2) == list(range(SIZE))
    assert 'seed set back to' in resumed['log']


def test_sampler_seed_is_restored_from_an_epoch_checkpoint_too(tmp_path):
    """randomness.seed unset, stopped 2 batches into epoch 3, resumed from epoch_2.pth:
    mmengine gives the runner (hence EpochSeedHook's augmentation seeds) the checkpoint's
    seed back, and the loop gives it to the sampler as well, so epoch 3 starts with the
    interrupted run's batches, augmented as there, as from an iteration checkpoint."""
    stopped = train(make_runner(tmp_path / 'stopped', stop_after=2 * PER_EPOCH + 2,
                                seed=None, by_epoch=True))
    resumed = train(make_runner(tmp_path / 'resumed', seed=None, by_epoch=True,
                                resume_from=tmp_path / 'stopped' / 'epoch_2.pth'))
    assert [s[0] for s in resumed['seen']][:2] == [2 * PER_EPOCH + 1, 2 * PER_EPOCH + 2]
    assert [s[3] for s in resumed['seen'][:2]] == [s[3] for s in stopped['seen'][-2:]]
    for got, want in zip(resumed['seen'][:2], stopped['seen'][-2:]):
        assert torch.equal(got[4], want[4]), got[0]
    assert 'seed set back to' in resumed['log']


def test_plan_gives_the_sampler_its_seed_back_wherever_the_checkpoint_is():
    """The stored sampler seed comes back inside an epoch, at an epoch boundary (also with
    another batch size) and where the loop falls back; not with another world size (other
    shards) nor from a checkpoint without the loop's record."""
    at_end = dict(batches_per_epoch=6, batch_size=2, world_size=1, sampler_seed=7, epoch=0,
                  epoch_start_iter=0)
    inside = dict(at_end, epoch=1, epoch_start_iter=6)

    def seed_after(saved, it, batch_size=BATCH):
        loader = toy_loader(batch_size)
        planned(loader, it, 1, saved)
        return loader.sampler.seed
    assert seed_after(inside, 8) == 7
    assert seed_after(at_end, 6) == 7
    assert seed_after(at_end, 6, batch_size=3) == 7
    assert seed_after(inside, 8, batch_size=3) == 7          # falls back: batch size
    assert seed_after(dict(at_end, world_size=2), 6) == 0
    assert seed_after(dict(inside, world_size=2), 8) == 0
    assert seed_after(dict(batches_per_epoch=6, batch_size=2, world_size=1,
                           sampler_seed=7), 6) == 0


def test_checkpoint_after_the_last_batch_resumed_with_another_batch_size(tmp_path):
    """iter_12.pth (after the last batch of epoch 2, 6 batches of 2) resumed with batches of
    3 (4 per epoch) is an epoch end, not a checkpoint inside the epoch: epoch 2 is not
    trained again; the run trains epoch 3 from its first batch as it does from epoch_2.pth
    (the same state), and says the iteration count is offset (no fallback)."""
    train(make_runner(tmp_path / 'stopped', stop_after=13))
    train(make_runner(tmp_path / 'stopped_ep', stop_after=13, by_epoch=True))
    resumed = train(make_runner(tmp_path / 'resumed', batch_size=3,
                                resume_from=tmp_path / 'stopped' / 'iter_12.pth'))
    from_epoch = train(make_runner(tmp_path / 'from_epoch', batch_size=3, by_epoch=True,
                                   resume_from=tmp_path / 'stopped_ep' / 'epoch_2.pth'))
    assert [s[0] for s in resumed['seen']] == [13, 14, 15, 16]
    assert [s[1] for s in resumed['seen']] == [0, 1, 2, 3]
    assert resumed['iter'] == resumed['max_iters'] == 16
    assert [s[:4] for s in resumed['seen']] == [s[:4] for s in from_epoch['seen']]
    assert same_state(resumed['state'], from_epoch['state'])
    assert 'Falling back' not in resumed['log'] and 'inside epoch' not in resumed['log']
    assert 'ResumableEpochBasedTrainLoop: resumed at iteration 12, after the last batch of ' \
        'epoch 2 (the checkpoint was saved there, before the end of the epoch); ending that ' \
        'epoch (its end-of-epoch hooks and validation) without training a batch, then ' \
        'epoch 3 is trained from its first batch (nothing is skipped or trained twice). ' \
        'Iteration 12 does not fall on an epoch boundary of this run\'s epoch length (4 ' \
        'batches) because the batch size changed (2 -> 3): the iteration count goes on ' \
        'from 12, so the run ends at iteration 16 instead of 12' in resumed['log']
    assert open(tmp_path / 'resumed' / 'last_checkpoint').read().endswith('iter_16.pth')


def test_plan_of_a_checkpoint_after_the_last_batch_of_an_epoch():
    """Done batches == the checkpoint's batches per epoch: an epoch end whatever changed
    (the whole epoch of this run is 'skipped': only its end-of-epoch hooks run), a warning
    where the iteration is off this run's boundaries, an info line where it is on one; one
    batch before it, the fallback."""
    new = dict(batches_per_epoch=6, batch_size=2, world_size=1, sampler_seed=0, epoch=1,
               epoch_start_iter=6)
    skip, said = planned(toy_loader(3), 12, 1, new)
    assert skip == 4 and [lvl for lvl, _ in said] == ['warning']
    assert 'after the last batch of epoch 2' in said[0][1] and 'Falling' not in said[0][1]
    # (another batch size, the same epoch length: iteration 12 ends epoch 2 here too)
    skip, said = planned(toy_loader(), 12, 1, dict(new, batch_size=1))
    assert skip == 6 and [lvl for lvl, _ in said] == ['info']
    assert 'after the last batch of epoch 2' in said[0][1]
    skip, said = planned(toy_loader(3), 11, 1, new)
    assert skip == 0 and 'Falling back' in said[0][1]


def test_max_iters_is_where_the_run_ends_after_a_fallback(tmp_path):
    """The fallback restarts epoch 1 at iteration 4 (4 of its 6 batches trained again): the
    run ends at iteration 22, not at mmengine's max_epochs * len(dataloader) = 18. The loop's
    max_iters says so, hence CheckpointHook saves the last iteration's weights (iter_22.pth,
    named by last_checkpoint), not iteration 18's as if it were the last."""
    from stan_mm.compat import safe_torch_load
    _, resumed = stop_and_resume(tmp_path, ckpt='iter_4.pth',
                                 sampler=dict(type='_FreshShuffle'))
    assert 'Falling back' in resumed['log']
    assert resumed['iter'] == resumed['max_iters'] == TOTAL + 4
    work = tmp_path / 'resumed'
    assert open(work / 'last_checkpoint').read().endswith(f'iter_{TOTAL + 4}.pth')
    assert not (work / f'iter_{TOTAL}.pth').exists()
    saved = safe_torch_load(str(work / f'iter_{TOTAL + 4}.pth'))
    assert saved['meta']['iter'] == TOTAL + 4
    assert all(torch.equal(v, resumed['state'][k]) for k, v in saved['state_dict'].items())


# ------------------------------------------------------------ no mid-epoch resume
def test_without_mid_epoch_resume_it_is_mmengines_loop(tmp_path, uninterrupted):
    """Uninterrupted, and resumed from an epoch checkpoint: the same batches and weights as
    mmengine's EpochBasedTrainLoop."""
    mm = train(make_runner(tmp_path / 'mm', loop='EpochBasedTrainLoop'))
    assert [s[:4] for s in mm['seen']] == [s[:4] for s in uninterrupted['seen']]
    assert same_state(mm['state'], uninterrupted['state'])
    runs = {}
    for loop in ('EpochBasedTrainLoop', 'ResumableEpochBasedTrainLoop'):
        work = tmp_path / loop
        train(make_runner(work / 'stopped', loop=loop, stop_after=STOP_AFTER, by_epoch=True))
        runs[loop] = train(make_runner(work / 'resumed', loop=loop, by_epoch=True,
                                       resume_from=work / 'stopped' / 'epoch_1.pth'))
    a, b = runs.values()
    assert [s[:4] for s in a['seen']] == [s[:4] for s in b['seen']]
    assert [s[0] for s in b['seen']] == list(range(PER_EPOCH + 1, TOTAL + 1))
    assert same_state(a['state'], b['state'])
    assert same_state(b['state'], uninterrupted['state'])


# ---------------------------------------------------------------------- fallback
def test_unsupported_sampler_falls_back_with_a_warning(tmp_path):
    """A sampler whose order is not a function of (seed, epoch): mmengine's behaviour (the
    epoch restarts at its first batch), with a warning naming the sampler."""
    _, resumed = stop_and_resume(tmp_path, sampler=dict(type='_FreshShuffle'))
    assert 'ResumableEpochBasedTrainLoop: resumed at iteration 8, inside epoch 2, but its ' \
        'sampler test_mid_epoch_resume._FreshShuffle is not known' in resumed['log']
    assert 'Falling back: the epoch restarts at its first batch, as with mmengine\'s ' \
        'EpochBasedTrainLoop: its iterations done before the checkpoint are trained again ' \
        'and the run ends 2 iterations past its schedule' in resumed['log']
    assert [s[1] for s in resumed['seen']][:PER_EPOCH] == list(range(PER_EPOCH))
    assert resumed['iter'] == TOTAL + 2                       # 2 batches trained again


# ------------------------------------------- checkpoints without the loop's order record
NO_RECORD = ('but the checkpoint has no record of its batches and sampler order (it was not '
             'written by ResumableEpochBasedTrainLoop but e.g. by mmengine\'s '
             'EpochBasedTrainLoop, the stan-mm configs\' loop before it)')


@pytest.mark.parametrize('seeds', [(None, 5), (0, 1)], ids=['seed_unset', 'other_seed'])
def test_checkpoint_of_mmengines_loop_is_resumed_as_mmengine_does(tmp_path, seeds):
    """iter_8.pth saved by mmengine's EpochBasedTrainLoop (its seed drawn, or 0) holds no
    record of the sampler's seed or of the batches; resumed with another seed, the rest of
    epoch 2 in this run's order would train some samples twice and others never. The loop
    does what mmengine's does (epoch 2 restarts at its first batch), batch for batch, and
    warns that it cannot check."""
    seed_stopped, seed_resumed = seeds
    stopped = tmp_path / 'stopped'
    train(make_runner(stopped, loop='EpochBasedTrainLoop', stop_after=STOP_AFTER,
                      seed=seed_stopped))
    runs = {loop: train(make_runner(tmp_path / loop, loop=loop, seed=seed_resumed,
                                    resume_from=stopped / 'iter_8.pth'))
            for loop in ('EpochBasedTrainLoop', 'ResumableEpochBasedTrainLoop')}
    mm, ours = runs.values()
    assert [s[1] for s in ours['seen']] == list(range(PER_EPOCH)) * 2
    assert [s[:4] for s in ours['seen']] == [s[:4] for s in mm['seen']]
    assert same_state(ours['state'], mm['state']) and ours['iter'] == TOTAL + 2
    assert 'ResumableEpochBasedTrainLoop: resumed at iteration 8, which at this run\'s 6 ' \
        'batches per epoch is 2 batches into epoch 2, ' + NO_RECORD in ours['log']
    assert 'Saved inside that epoch: the epoch restarts at its first batch, as with ' \
        'mmengine\'s EpochBasedTrainLoop: its iterations done before the checkpoint are ' \
        'trained again and the run ends 2 iterations past its schedule' in ours['log']
    assert 'continuing at batch' not in ours['log'] and 'seed set back' not in ours['log']


def test_epoch_checkpoint_resumed_with_another_batch_size_is_mmengines(tmp_path):
    """epoch_1.pth (6 batches of 2 per epoch) resumed with batches of 3 (4 per epoch):
    iteration 6 is no epoch boundary at this run's epoch length, yet epoch 2 never started.
    From a checkpoint of either loop, ResumableEpochBasedTrainLoop trains epochs 2 and 3
    from their first batch, as mmengine's loop does, and says why the iteration is off."""
    for saved_by in ('EpochBasedTrainLoop', 'ResumableEpochBasedTrainLoop'):
        work = tmp_path / saved_by
        train(make_runner(work / 'stopped', loop=saved_by, stop_after=STOP_AFTER,
                          by_epoch=True))
        runs = {loop: train(make_runner(work / loop, loop=loop, by_epoch=True, batch_size=3,
                                        resume_from=work / 'stopped' / 'epoch_1.pth'))
                for loop in ('EpochBasedTrainLoop', 'ResumableEpochBasedTrainLoop')}
        mm, ours = runs.values()
        assert [s[1] for s in ours['seen']] == [0, 1, 2, 3] * 2, saved_by
        assert [s[:4] for s in ours['seen']] == [s[:4] for s in mm['seen']]
        assert same_state(ours['state'], mm['state']) and ours['iter'] == 6 + 2 * 4
        assert 'inside epoch' not in ours['log'] and 'continuing at' not in ours['log']
        if saved_by == 'EpochBasedTrainLoop':
            assert NO_RECORD in ours['log']
        else:
            assert 'ResumableEpochBasedTrainLoop: the checkpoint was saved at the end of ' \
                'epoch 1, at iteration 6, which does not fall on an epoch boundary of this ' \
                'run\'s epoch length (4 batches) because the batch size changed (2 -> 3). ' \
                'Epoch 2 is trained from its first batch, as with mmengine\'s loop (nothing ' \
                'is skipped or trained twice); the iteration count goes on from 6, so the ' \
                'run ends at iteration 14 instead of 12' in ours['log']


def planned(loader, it, epoch, saved, with_hook=False):
    """What ``_plan_resume`` decides for a loop over ``loader`` resumed at (iteration,
    epoch) with ``saved`` in the message hub: (batches skipped, [(level, message)]);
    ``with_hook``: then what ``AtomicCheckpointHook(by_epoch=False)`` says at the start of
    training (after the loop's plan, as in ``Runner.train``)."""
    from types import SimpleNamespace
    from mmengine.logging import MessageHub
    loop = object.__new__(ResumableEpochBasedTrainLoop)
    loop.dataloader = loader
    loop._iter, loop._epoch, loop._max_epochs = it, epoch, EPOCHS
    loop._max_iters = EPOCHS * len(loader)
    hub = MessageHub.get_instance(f'planned_{next(_names)}')
    if saved is not None:
        hub.update_info(ORDER_KEY, saved)
    said = []
    logger = SimpleNamespace(warning=lambda m: said.append(('warning', m)),
                             info=lambda m: said.append(('info', m)))
    loop._runner = SimpleNamespace(message_hub=hub, logger=logger)
    skip = loop._plan_resume()
    if with_hook:
        from stan_mm.engine import AtomicCheckpointHook
        runner = SimpleNamespace(_train_loop=loop, iter=it, epoch=epoch, logger=logger)
        AtomicCheckpointHook(interval=1, by_epoch=False)._warn_mid_epoch(runner)
    return skip, said


def toy_loader(batch_size=BATCH, sampler=None, drop_last=False, size=SIZE):
    from mmengine.dataset import DefaultSampler
    data = list(range(size))
    return torch.utils.data.DataLoader(
        data, batch_size=batch_size, drop_last=drop_last,
        sampler=sampler or DefaultSampler(data, shuffle=True, seed=0))


def test_plan_for_checkpoints_with_and_without_the_epoch_record():
    """The loop's record (the epoch and the iteration it started at) places the checkpoint
    whatever this run's epoch length; without it (or without its epoch start): no skip,
    and a warning only where the iteration falls inside an epoch of this run."""
    order = dict(batches_per_epoch=6, batch_size=2, world_size=1, sampler_seed=0)
    new = dict(order, epoch=1, epoch_start_iter=6)
    assert planned(toy_loader(), 8, 1, new)[0] == 2
    skip, said = planned(toy_loader(3), 8, 1, new)      # mid-epoch, then batches of 3
    assert skip == 0 and 'inside epoch 2, but the checkpoint was saved with 2 batches of ' \
        'that epoch done and the batch size changed (2 -> 3) since' in said[0][1]
    assert 'the epoch restarts at its first batch' in said[0][1]
    skip, said = planned(toy_loader(), 8, 1, order)     # order info, no epoch start
    assert skip == 0 and NO_RECORD in said[0][1]
    assert planned(toy_loader(), 12, 1, new)[0] == 6     # after the epoch's last batch
    at_end = dict(order, epoch=0, epoch_start_iter=0)    # saved at the end of epoch 1
    assert planned(toy_loader(), 6, 1, at_end) == (0, [])
    # (a best checkpoint of mmengine's CheckpointHook is saved as if at iteration + 1)
    assert planned(toy_loader(), 7, 1, at_end) == (0, [])
    skip, said = planned(toy_loader(3), 6, 1, at_end)
    assert skip == 0 and 'which does not fall on an epoch boundary of this run\'s epoch ' \
        'length (4 batches) because the batch size changed (2 -> 3)' in said[0][1]
    skip, said = planned(toy_loader(), 8, 1, None)
    assert skip == 0 and [lvl for lvl, _ in said] == ['warning'] and NO_RECORD in said[0][1]
    assert planned(toy_loader(), 6, 1, None) == (0, [])   # a boundary here: mmengine's
    assert planned(toy_loader(), 5, 1, None) == (0, [])   # ahead of this epoch: as mmengine
    assert planned(toy_loader(3), 6, 1, None)[0] == 0


# ------------------------------------------------------------- drop_last changed since
@HOOKS.register_module(force=True)
class _DropLastFrom(Hook):
    """From epoch ``epoch`` (0-based) on, the training DataLoader's ``drop_last`` is
    ``value``: an uninterrupted run whose drop_last changed between two epochs."""
    priority = 'VERY_HIGH'

    def __init__(self, epoch, value):
        self.epoch, self.value = epoch, value

    def before_train_epoch(self, runner):
        if runner.epoch >= self.epoch:
            runner.train_dataloader.batch_sampler.drop_last = self.value


@pytest.mark.parametrize('before, ckpt, switch, first', [
    (False, 8, 1, 9),      # 2 of epoch 2's 6 batches done: 3 of its 5 are left
    (False, 11, 1, 12),    # 5 of 6 done: all of the 5, the partial 6th was not trained
    (False, 12, 2, 13),    # 6 of 6 done, the partial one too: an epoch end
    (True, 8, 1, 9),       # 3 of 5 done: 3 of 6 left, the partial one now trained
], ids=['on_2_done', 'on_all_full_done', 'on_partial_done', 'off_3_done'])
def test_a_changed_drop_last_keeps_the_done_batches(tmp_path, before, ckpt, switch, first):
    """The retrieval configs turned drop_last on (2026-12-07); a checkpoint of epoch 2
    saved with drop_last=False (6 batches per epoch, the 6th of 1 sample) resumed with
    drop_last=True (5 batches) fell back to restarting the epoch ('the dataset length
    changed (6 -> 5 batches)'), training the done batches twice. drop_last does not move a
    batch boundary (the same sampler order cut into batches of the same size), so the loop
    skips the done batches, or ends the epoch where they are all of this run's epoch. The
    resumed run equals, batch for batch and bit for bit, the uninterrupted run whose
    drop_last changed at the start of the epoch where this run's batches start to differ
    (the checkpoint's epoch, or the next one when the partial batch was trained): that run
    trained the checkpoint's batches and state, then this run's epoch lengths. Also off
    (True -> False): the skipped batches are the done ones, the partial batch is trained."""
    extra = dict(loader_extra=dict(drop_last=before), ckpt_every=ckpt)
    train(make_runner(tmp_path / 'stopped', stop_after=ckpt + 1, **extra))
    resumed = train(make_runner(
        tmp_path / 'resumed', resume_from=tmp_path / 'stopped' / f'iter_{ckpt}.pth',
        ckpt_every=ckpt, loader_extra=dict(drop_last=not before)))
    reference = train(make_runner(
        tmp_path / 'reference', extra_hooks=[dict(type='_DropLastFrom', epoch=switch,
                                                  value=not before)], **extra))
    lengths = {False: PER_EPOCH, True: SIZE // BATCH}         # 6, 5
    end = switch * lengths[before] + (EPOCHS - switch) * lengths[not before]
    assert [s[0] for s in reference['seen']] == list(range(1, end + 1))
    assert [s[0] for s in resumed['seen']] == list(range(first, end + 1))
    assert resumed['iter'] == resumed['max_iters'] == end
    # the same batch positions, end-of-epoch flags, dataset indices and inputs
    assert [s[1:4] for s in resumed['seen']] == [s[1:4] for s in reference['seen'][first - 1:]]
    for got, want in zip(resumed['seen'], reference['seen'][first - 1:]):
        assert torch.equal(got[4], want[4]), got[0]
    assert same_state(resumed['state'], reference['state'])
    assert 'Falling back' not in resumed['log'] and 'dataset length' not in resumed['log']
    assert f'drop_last changed ({before} -> {not before}: {lengths[before]} -> ' \
        f'{lengths[not before]} batches per epoch, the last, partial batch (1 of 2 samples ' \
        'per rank) ' + ('trained' if before else 'dropped') + ')' in resumed['log']
    if ckpt == 11:
        assert 'that is all 5 batches of the epoch with this run\'s drop_last (its last, ' \
            'partial batch, not trained yet, is dropped): ending that epoch' in resumed['log']
    assert f'the run ends at iteration {end} instead of {EPOCHS * lengths[not before]}' \
        in resumed['log']


def test_plan_when_drop_last_changed():
    """The decision on its own (6 batches of 2 per epoch saved, 11 samples; drop_last=True
    now: 5): skip where only drop_last changed; fall back where the dataset length changed
    too; a checkpoint that does not record its drop_last (written before 2026-12-07) falls
    back, naming drop_last as a possible cause and how to resume to skip its batches."""
    old = dict(batches_per_epoch=6, batch_size=2, world_size=1, sampler_seed=0, epoch=1,
               epoch_start_iter=6)
    recorded = dict(old, drop_last=False, samples_per_epoch=SIZE, dataset_length=SIZE)
    dropping = toy_loader(drop_last=True)
    assert len(dropping) == 5
    skip, said = planned(dropping, 8, 1, recorded)
    assert skip == 2 and 'Falling back' not in said[0][1]
    assert 'continuing at batch 3 of 5 (the first 4 indices of this rank\'s sampler are ' \
        'skipped, not loaded)' in said[0][1]
    assert planned(dropping, 11, 1, recorded)[0] == 5     # the epoch's full batches done
    assert planned(dropping, 12, 1, recorded)[0] == 5     # its partial batch too: an end
    # the dataset changed as well: another order
    skip, said = planned(toy_loader(drop_last=True, size=SIZE + 1), 8, 1, recorded)
    assert skip == 0 and 'the dataset length changed (11 -> 12 samples) since' in said[0][1]
    # a checkpoint without the record: the fallback, naming drop_last
    skip, said = planned(dropping, 8, 1, old)
    assert skip == 0 and 'Falling back' in said[0][1]
    assert 'the dataset length changed (6 -> 5 batches per epoch at the same batch size ' \
        'and world size) or only drop_last did (drop_last=True now, and this run\'s ' \
        'samples make 6 batches with drop_last=False; the checkpoint does not record its ' \
        'drop_last) since, so its batches cannot be skipped (if only drop_last changed, as ' \
        'in the stan-mm retrieval configs on 2026-12-07, resume with --cfg-options ' \
        'train_dataloader.drop_last=False instead' in said[0][1]
    # ... and what it advises: skipped
    assert planned(toy_loader(drop_last=False), 8, 1, old)[0] == 2
    # a batch count that drop_last does not explain: the dataset's, as before
    skip, said = planned(dropping, 8, 1, dict(old, batches_per_epoch=7))
    assert skip == 0 and 'or only drop_last' not in said[0][1]


class _Twins(list):
    def __init__(self, groups):
        super().__init__(range(sum(len(g) for g in groups)))
        self.groups = groups

    def twin_groups(self):
        return self.groups


def _twin_sampler(groups, rank, world_size, **kwargs):
    from stan_mm.datasets.samplers import TwinGroupSampler
    with mock.patch('stan_mm.datasets.samplers.get_dist_info',
                    return_value=(rank, world_size)):
        return TwinGroupSampler(_Twins(groups), seed=0, **kwargs)


def test_twin_group_sampler_says_whether_its_epoch_length_is_constant():
    uneven = [[0, 1], [2, 3], [4], [5], [6, 7], [8]]
    for rank in range(2):
        sampler = _twin_sampler(uneven, rank, 2)
        lengths = []
        for epoch in range(6):
            sampler.set_epoch(epoch)
            lengths.append(len(sampler))
        assert len(set(lengths)) > 1 and not sampler.constant_epoch_length
    assert not _twin_sampler(uneven, 0, 2, round_up=False).constant_epoch_length
    assert _twin_sampler(uneven, 0, 1).constant_epoch_length
    even = [[2 * i, 2 * i + 1] for i in range(5)]
    for round_up in (True, False):
        sampler = _twin_sampler(even, 1, 2, round_up=round_up)
        lengths = set()
        for epoch in range(6):
            sampler.set_epoch(epoch)
            lengths.add(len(sampler))
        assert len(lengths) == 1 and sampler.constant_epoch_length


def test_sampler_with_a_varying_epoch_length_is_not_skipped_into():
    """DDP with twin groups of unequal size: a rank's epoch length depends on the epoch,
    so ``iter - epoch * len`` need not count the epoch's batches: no skip, a warning that
    says why; an epoch checkpoint (this loop's record) resumes silently."""
    sampler = _twin_sampler([[0, 1], [2, 3], [4], [5], [6, 7], [8]], 0, 2)
    loader = toy_loader(sampler=sampler)
    per_epoch = len(loader)
    saved = dict(batches_per_epoch=per_epoch, batch_size=BATCH, world_size=1,
                 sampler_seed=0, epoch=1, epoch_start_iter=per_epoch)
    skip, said = planned(loader, per_epoch + 1, 1, saved)
    assert skip == 0 and said[0][0] == 'warning'
    assert 'inside epoch 2, but the number of samples per epoch of its sampler ' \
        'stan_mm.datasets.samplers.TwinGroupSampler changes from epoch to epoch ' \
        '(constant_epoch_length is False' in said[0][1]
    loop = object.__new__(ResumableEpochBasedTrainLoop)
    loop.dataloader = loader
    assert 'changes from epoch to epoch' in loop.skip_unsupported_reason()
    at_end = dict(saved, epoch=0, epoch_start_iter=0)
    assert planned(loader, per_epoch + 1, 1, at_end) == (0, [])


def test_one_warning_per_situation_with_a_varying_epoch_length():
    """by_epoch=False and a sampler whose epoch length varies: the loop, resuming, and
    AtomicCheckpointHook, at the start of training, say once between them that an epoch
    will restart: the loop's fallback is not repeated by the hook (resumed after the last
    batch of an epoch), and the hook speaks when the loop did not (a fresh run; an epoch
    checkpoint resumed with another batch size)."""
    sampler = _twin_sampler([[0, 1], [2, 3], [4], [5], [6, 7], [8]], 0, 2)
    loader = toy_loader(sampler=sampler)
    per_epoch = len(loader)
    assert per_epoch >= 2
    inside = dict(batches_per_epoch=per_epoch, batch_size=BATCH, world_size=1,
                  sampler_seed=0, epoch=1, epoch_start_iter=per_epoch)
    hook_says = 'AtomicCheckpointHook: by_epoch=False, but ResumableEpochBasedTrainLoop ' \
        'cannot continue an epoch here: the number of samples per epoch'
    for it, saved, who in ((2 * per_epoch, inside, 'ResumableEpochBasedTrainLoop: resumed'),
                           (per_epoch + 1, inside, 'ResumableEpochBasedTrainLoop: resumed'),
                           (0, None, hook_says),
                           (per_epoch + 1, dict(inside, epoch=0, epoch_start_iter=0,
                                                batch_size=3), hook_says)):
        _, said = planned(loader, it, 1 if it else 0, saved, with_hook=True)
        assert [lvl for lvl, _ in said] == ['warning'], (it, said)
        assert said[0][1].startswith(who), (it, said)


ITER_LOOP = dict(type='IterBasedTrainLoop', max_iters=TOTAL)   # 3 passes of 6 batches


def test_iteration_loop_seeds_each_sample_per_pass_and_resumes_exactly(tmp_path,
                                                                       uninterrupted):
    """mmengine's IterBasedTrainLoop starts its DataLoader over at every pass without
    before_train_epoch: the samples are seeded from (seed, pass, rank, position). They do
    not depend on the workers, every pass draws new augmentation, and a run killed after
    iteration 10 and resumed from iter_8.pth (inside pass 2) ends bit for bit where the
    uninterrupted run ends, persistent workers included."""
    from stan_mm.engine.seed_hook import EpochSeedHook, SeedPerPosition
    full = train(make_runner(tmp_path / 'full', train_cfg=ITER_LOOP))
    assert 'per-sample seeding is off' not in full['log']
    assert [s[0] for s in full['seen']] == list(range(1, TOTAL + 1))
    workers = train(make_runner(tmp_path / 'workers', train_cfg=ITER_LOOP, num_workers=2))
    for got, want in zip(workers['seen'], full['seen']):
        assert got[3] == want[3] and torch.equal(got[4], want[4]), got[0]
    assert same_state(workers['state'], full['state'])
    # each pass draws its own augmentation for the same sample
    by_pass = [{i: x for s in full['seen'][k * PER_EPOCH:(k + 1) * PER_EPOCH]
                for i, x in zip(s[3], s[4])} for k in range(EPOCHS)]
    assert all(sorted(p) == list(range(SIZE)) for p in by_pass)
    for i in range(SIZE):
        assert not torch.equal(by_pass[0][i], by_pass[1][i]), i
        assert not torch.equal(by_pass[1][i], by_pass[2][i]), i
    # pass k is seeded as epoch k of an epoch-based run: the same samples, batch by batch
    for got, want in zip(full['seen'], uninterrupted['seen']):
        assert got[3] == want[3] and torch.equal(got[4], want[4]), got[0]
    stopped, resumed = stop_and_resume(tmp_path, train_cfg=ITER_LOOP, num_workers=2)
    assert [s[0] for s in resumed['seen']] == list(range(9, TOTAL + 1))
    for got, want in zip(resumed['seen'], full['seen'][8:]):
        assert got[3] == want[3] and torch.equal(got[4], want[4]), got[0]
    assert same_state(resumed['state'], full['state'])
    # the DataLoader is given back as it was
    runner = make_runner(tmp_path / 'after', train_cfg=dict(ITER_LOOP, max_iters=2))
    train(runner)
    loader = runner.train_dataloader
    assert not isinstance(loader.batch_sampler.sampler, SeedPerPosition)
    assert '__getitems__' not in vars(loader.dataset)
    assert next(h for h in runner.hooks if isinstance(h, EpochSeedHook))._per_sample is None


def test_per_sample_seeding_is_off_when_the_iteration_loop_started_its_loader(tmp_path):
    """A DataLoader the endless iterator started before training cannot be tagged any
    more: the hook says so and leaves it alone (the per-iteration seeding still runs)."""
    from stan_mm.engine.seed_hook import SeedPerPosition
    runner = make_runner(tmp_path, train_cfg=dict(ITER_LOOP, max_iters=3))
    next(runner.train_loop.dataloader_iterator)
    result = train(runner)
    assert 'EpochSeedHook(per_iteration=True): the DataLoader of the train loop ' \
        'IterBasedTrainLoop was started before training' in result['log']
    assert 'The per-sample seeding is off' in result['log']
    assert not isinstance(runner.train_dataloader.batch_sampler.sampler, SeedPerPosition)


# ---------------------------------------------------------------------------------- DDP
def _ddp_worker(out_dir):
    """Each of 2 torchrun processes (gloo): uninterrupted, stopped after iteration 5 and
    resumed from iter_4.pth (each rank: 6 of the 11 samples, 3 batches per epoch, 1 done);
    writes what its rank trained on."""
    import json
    import os
    from mmengine.dist import barrier, get_rank
    torch.set_num_threads(1)
    ddp = dict(launcher='pytorch', env_cfg=dict(dist_cfg=dict(backend='gloo')))
    full = train(make_runner(osp.join(out_dir, 'full'), **ddp))
    stopped = train(make_runner(osp.join(out_dir, 'stopped'), stop_after=5, **ddp))
    barrier()
    resumed = train(make_runner(osp.join(out_dir, 'resumed'), **ddp,
                                resume_from=osp.join(out_dir, 'stopped', 'iter_4.pth')))
    result = {name: [s[:4] for s in run['seen']]
              for name, run in (('full', full), ('stopped', stopped), ('resumed', resumed))}
    result['same_weights'] = same_state(full['state'], resumed['state'])
    result['iter'] = resumed['iter']
    with open(os.path.join(out_dir, f'rank{get_rank()}.json'), 'w') as f:
        json.dump(result, f)
    # as the tools do: left to interpreter exit, gloo's teardown can abort a rank (SIGABRT,
    # "terminate called without an active exception"; seen in CI)
    from stan_mm.engine.shutdown import shutdown_distributed
    shutdown_distributed()


def test_ddp_each_rank_continues_its_own_shard(tmp_path):
    """torchrun, 2 CPU processes (gloo): each rank trains the rest of its own shard's epoch
    (together: every sample of epoch 2 exactly once, as uninterrupted), and the resumed
    weights equal the uninterrupted run's on both ranks."""
    import json
    import os
    import subprocess
    import sys
    from stan_mm.testing import free_port
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
         '--master_port', str(port), __file__, str(tmp_path)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:]
    ranks = [json.load(open(tmp_path / f'rank{r}.json')) for r in range(2)]
    per_epoch = 3                        # ceil(11 / 2) = 6 samples per rank, batch 2
    epoch2 = []
    for res in ranks:
        assert res['same_weights'] and res['iter'] == 3 * per_epoch
        assert [s[0] for s in res['resumed']] == list(range(5, 3 * per_epoch + 1))
        assert [s[1] for s in res['resumed']][:2] == [1, 2]
        assert [s[3] for s in res['stopped'][:4] + res['resumed']] == \
            [s[3] for s in res['full']]
        epoch2 += [i for s in res['stopped'][3:4] + res['resumed'][:2] for i in s[3]]
    # round_up pads the 11 samples to 12: one index twice, all of them at least once
    assert sorted(set(epoch2)) == list(range(SIZE)) and len(epoch2) == 12


# ------------------------------------------------------------------------- unit checks
@pytest.mark.parametrize('world_size', [1, 2])
def test_skip_is_per_rank_shard(world_size):
    """DDP: each rank's sampler yields its own shard; skipping ``done * batch_size`` of it
    leaves exactly that rank's remaining batches (DefaultSampler with round_up padding)."""
    from mmengine.dataset import DefaultSampler
    done = 2
    for rank in range(world_size):
        with mock.patch('mmengine.dataset.sampler.get_dist_info',
                        return_value=(rank, world_size)):
            sampler = DefaultSampler(list(range(SIZE)), shuffle=True, seed=3)
        sampler.set_epoch(1)
        loader = torch.utils.data.DataLoader(list(range(SIZE)), batch_size=BATCH,
                                             sampler=sampler)
        full = [b.tolist() for b in loader]
        with skip_first_samples(loader, done * BATCH):
            assert len(loader) == len(full)                  # the epoch keeps its length
            rest = [b.tolist() for b in loader]
        assert rest == full[done:]
        assert [b.tolist() for b in loader] == full          # restored afterwards


def test_twin_group_sampler_redraws_when_its_seed_is_set_back():
    from stan_mm.datasets.samplers import TwinGroupSampler

    class Twins(list):
        def twin_groups(self):
            return [[i, i + 1] for i in range(0, len(self), 2)]
    sampler = TwinGroupSampler(Twins(range(20)), seed=1)
    first = list(sampler)
    sampler.seed = 2
    assert list(sampler) != first
    sampler.seed = 1
    assert list(sampler) == first


def test_checkpoint_hook_warns_only_for_mmengines_loop():
    from types import SimpleNamespace
    from mmengine.runner import EpochBasedTrainLoop
    from stan_mm.engine import AtomicCheckpointHook

    said = []
    logger = SimpleNamespace(warning=said.append, info=said.append)

    def warnings(loop_type, sampler, it=14, epoch=2, loop_warned=False):
        loop = object.__new__(loop_type)
        loop.warned_epoch_restart = loop_warned
        loop.dataloader = torch.utils.data.DataLoader(list(range(12)), batch_size=2,
                                                      sampler=sampler)
        said.clear()
        runner = SimpleNamespace(_train_loop=loop, iter=it, epoch=epoch, logger=logger)
        AtomicCheckpointHook(interval=1, by_epoch=False)._warn_mid_epoch(runner)
        return list(said)
    seq = torch.utils.data.SequentialSampler(range(12))
    assert 'resumed at iteration 14, 2 of the 6 iterations' in \
        warnings(EpochBasedTrainLoop, seq)[0]
    assert 'resumed at iteration 18, 6 of the 6' in warnings(EpochBasedTrainLoop, seq, 18)[0]
    assert warnings(ResumableEpochBasedTrainLoop, seq) == []
    assert warnings(ResumableEpochBasedTrainLoop, seq, it=12) == []
    fresh = torch.utils.data.RandomSampler(range(12))
    got = warnings(ResumableEpochBasedTrainLoop, fresh, it=12)
    assert len(got) == 1 and 'cannot continue an epoch here: its sampler ' \
        'torch.utils.data.sampler.RandomSampler is not known' in got[0]
    got = warnings(ResumableEpochBasedTrainLoop, fresh)          # the loop did not warn
    assert len(got) == 1 and 'cannot continue an epoch here' in got[0]
    assert warnings(ResumableEpochBasedTrainLoop, fresh, loop_warned=True) == []


# ------------------------------------------------------------------ end to end, SIGKILL
def test_sigkill_mid_epoch_through_train_tool(tmp_path):
    """tools/train.py --deterministic on the tiny quickstart STAN (drop path; real videos
    decoded with random frame offsets and crops by 2 DataLoader workers; TwinGroupSampler),
    iteration checkpoints every 4 of 3 x 3 iterations, SIGKILLed after iteration 5, resumed
    from iter_4.pth (1 of epoch 2's 3 batches done): the losses of iterations 5..9 and the
    final weights equal the uninterrupted run's (and the killed run's, up to its death)."""
    from test_resume import (_next_second, iteration_checkpoint_run, run_dirs, scalars,
                             train as train_tool, write_config)
    from stan_mm.compat import safe_torch_load
    data_root, common = iteration_checkpoint_run(tmp_path)
    cfg = write_config(tmp_path / 'cfg.py', data_root, custom_hooks=[], **common)
    # the killed run loads in the main process: workers of a SIGKILLed process hold the
    # test's wait for it until they notice (5 s); seeded per sample, the data are the same
    common['train_dataloader'].update(num_workers=0)
    kill = write_config(tmp_path / 'kill.py', data_root, **common, custom_hooks=[
        dict(type='_SigkillAfterIter', at=5)])
    a, b = tmp_path / 'A', tmp_path / 'B'
    assert train_tool([cfg, '--work-dir', a, '--deterministic']) == 0
    assert train_tool([kill, '--work-dir', b, '--deterministic']) == -signal.SIGKILL
    assert open(b / 'last_checkpoint').read().endswith('iter_4.pth')
    _next_second()          # the resumed run's log folder is named by the second it starts
    assert train_tool([cfg, '--work-dir', b, '--deterministic', '--resume']) == 0
    full = scalars(run_dirs(a)[-1])
    killed, resumed = (scalars(d) for d in run_dirs(b))
    assert sorted(full) == list(range(1, 10)) and sorted(resumed) == list(range(5, 10))
    assert sorted(killed) == list(range(1, 6))
    assert all(killed[it]['loss'] == full[it]['loss'] for it in killed)
    for it in resumed:
        assert resumed[it]['loss'] == full[it]['loss'], (it, resumed[it], full[it])
    wa = safe_torch_load(str(a / 'iter_9.pth'))['state_dict']
    wb = safe_torch_load(str(b / 'iter_9.pth'))['state_dict']
    assert all(torch.equal(v, wb[k]) for k, v in wa.items())


if __name__ == '__main__':      # the DDP test's workers (torchrun)
    import sys
    _ddp_worker(sys.argv[1])


# warm-up over two epochs, then cosine to 0 over the third, both written per epoch
EPOCH_SCHEDULE = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=2,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=1, eta_min=0.0, by_epoch=True, begin=2, end=3,
         convert_to_iter_based=True),
]


@pytest.mark.parametrize('first_batch', [2, 5])
def test_epoch_schedule_follows_a_new_epoch_length(tmp_path, first_batch):
    """Epoch 1 trained at one batch size (6 or 3 batches per epoch), resumed from its epoch
    checkpoint at batch size 3 (4 batches per epoch), as after a change of world size: every
    later iteration trains with the learning rate a run at batch size 3 from the start
    has at the same epoch and batch (mmengine's resume kept the old iteration counts: the
    warm-up and the cosine ended early, or never, and the rest ran at the wrong rate)."""
    def lr_by_position(run):
        return {(e, b): lr for e, b, lr in run['lrs']}

    reference = lr_by_position(train(make_runner(
        tmp_path / 'ref', batch_size=3, param_scheduler=EPOCH_SCHEDULE)))
    assert len(reference) == 3 * 4
    first = train(make_runner(tmp_path / 'run', batch_size=first_batch, by_epoch=True,
                              param_scheduler=EPOCH_SCHEDULE,
                              stop_after=-(-SIZE // first_batch) + 1))
    assert osp.isfile(tmp_path / 'run' / 'epoch_1.pth')
    resumed = train(make_runner(tmp_path / 'run', batch_size=3, by_epoch=True,
                                param_scheduler=EPOCH_SCHEDULE,
                                resume_from=tmp_path / 'run' / 'epoch_1.pth'))
    got = lr_by_position(resumed)
    assert sorted(got) == [(e, b) for e in (1, 2) for b in range(4)]
    for pos, lr in got.items():
        assert lr == pytest.approx(reference[pos], rel=1e-9, abs=1e-12), (pos, lr, reference)
    # the schedule by hand: linear warm-up 0.01 -> 0.1 over the 8 iterations of epochs
    # 1-2, then 0.05 (1 + cos(pi t / 4)) over the last 4
    assert reference[(1, 0)] == pytest.approx(0.1 * (0.1 + 0.9 * 4 / 7))
    assert [reference[(2, b)] for b in range(4)] == pytest.approx(
        [0.05 * (1 + np.cos(np.pi * t / 4)) for t in range(4)])
    assert 'the epoch length changed (6 -> 4 batches)' in resumed['log'] or \
        'the epoch length changed (3 -> 4 batches)' in resumed['log']
    assert 'the parameter schedules are rebuilt for this run' in resumed['log']
    assert first['lrs'][0][2] == pytest.approx(0.01)


def test_epoch_schedule_after_a_fallback_and_next_to_iteration_schedules(tmp_path):
    """Resumed inside epoch 1 at another batch size, the epoch restarts (the fallback) and
    so does its learning rate: the restarted epoch trains with the rates of a run at the
    new batch size from its first batch. A schedule written in iterations keeps the
    checkpoint's counts, and the warning says so."""
    reference = {(e, b): lr for e, b, lr in train(make_runner(
        tmp_path / 'ref', batch_size=3, param_scheduler=EPOCH_SCHEDULE))['lrs']}
    train(make_runner(tmp_path / 'run', batch_size=2, param_scheduler=EPOCH_SCHEDULE,
                      stop_after=5))                               # iter_4.pth: 4 of 6 done
    resumed = train(make_runner(tmp_path / 'run', batch_size=3, param_scheduler=EPOCH_SCHEDULE,
                                resume_from=tmp_path / 'run' / 'iter_4.pth'))
    got = {(e, b): lr for e, b, lr in resumed['lrs']}
    assert sorted(got) == sorted(reference)                # the whole of epoch 1 again
    for pos, lr in got.items():
        assert lr == pytest.approx(reference[pos], rel=1e-9, abs=1e-12), (pos, lr)

    mixed = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=5),
             dict(EPOCH_SCHEDULE[1], begin=1)]
    train(make_runner(tmp_path / 'mixed', batch_size=2, by_epoch=True, param_scheduler=mixed,
                      stop_after=7))
    ckpt_lr = torch.load(str(tmp_path / 'mixed' / 'epoch_1.pth'), map_location='cpu',
                         weights_only=False)['optimizer']['param_groups'][0]['lr']
    resumed = train(make_runner(tmp_path / 'mixed', batch_size=3, by_epoch=True,
                                param_scheduler=mixed,
                                resume_from=tmp_path / 'mixed' / 'epoch_1.pth'))
    assert resumed['lrs'][0][2] == pytest.approx(ckpt_lr)   # untouched
    assert 'schedules written in iterations (by_epoch=False)' in resumed['log']


_VAL_EPOCH = [0]                       # the epoch being validated (set by _Record)
SCORES = {1: 0.5, 2: 0.9, 3: 0.7}       # the toy validation score of each epoch


@METRICS.register_module(force=True)
class _CountMetric(BaseMetric):
    """Counts the validation batches (a metric the toy model can feed), and reports the
    score :data:`SCORES` gives the epoch being validated."""

    def process(self, data_batch, data_samples):
        self.results.append(1)

    def compute_metrics(self, results):
        return dict(batches=float(len(results)), score=SCORES[_VAL_EPOCH[0]])


def _with_validation(**kwargs):
    return dict(kwargs, val_dataloader=dict(
        dataset=dict(type='_NoisyToyDataset'), batch_size=4, num_workers=0,
        sampler=dict(type='DefaultSampler', shuffle=False),
        collate_fn=dict(type='default_collate')),
        val_cfg=dict(), val_evaluator=dict(type='_CountMetric'))


def test_validation_cut_by_a_kill_runs_when_resumed(tmp_path):
    """An epoch checkpoint is written before that epoch's validation: a run killed during
    the validation of epoch 1 used to resume at epoch 2 with no result for epoch 1. Now
    that validation runs first; a run killed after it does not repeat it."""
    killed = train(make_runner(tmp_path / 'killed', by_epoch=True, stop_in_val=1,
                               **_with_validation()))
    assert killed['validated'] == [] and osp.isfile(tmp_path / 'killed' / 'epoch_1.pth')
    resumed = train(make_runner(tmp_path / 'killed', by_epoch=True,
                                resume_from=tmp_path / 'killed' / 'epoch_1.pth',
                                **_with_validation()))
    assert resumed['validated'] == [1, 2, 3]
    assert 'validating epoch 1 before training epoch 2' in resumed['log']
    assert resumed['iter'] == TOTAL                       # nothing trained twice

    # killed while training epoch 2, after epoch 1's validation: not repeated
    done = train(make_runner(tmp_path / 'later', by_epoch=True, stop_after=PER_EPOCH + 2,
                             **_with_validation()))
    assert done['validated'] == [1]
    again = train(make_runner(tmp_path / 'later', by_epoch=True,
                              resume_from=tmp_path / 'later' / 'epoch_1.pth',
                              **_with_validation()))
    assert again['validated'] == [2, 3] and 'validating epoch 1' not in again['log']
    # the record names the last validated epoch's checkpoint, relative to the work dir
    record = json.loads((tmp_path / 'later' / '.stan_validated.json').read_text())
    assert record['epoch'] == 3 and record['checkpoint']['path'] == 'epoch_3.pth'


def test_a_moved_work_dir_keeps_its_validation_record(tmp_path):
    """The record of the finished validation names the checkpoint relative to the work
    dir: a work dir moved (mv, another mount) and resumed from its epoch checkpoint does
    not validate that epoch again (with an absolute path it did: a whole extra validation
    on K400)."""
    import shutil
    done = train(make_runner(tmp_path / 'old', by_epoch=True, stop_after=PER_EPOCH + 2,
                             **_with_validation()))
    assert done['validated'] == [1]
    shutil.move(str(tmp_path / 'old'), str(tmp_path / 'moved Ж'))
    again = train(make_runner(tmp_path / 'moved Ж', by_epoch=True,
                              resume_from=tmp_path / 'moved Ж' / 'epoch_1.pth',
                              **_with_validation()))
    assert again['validated'] == [2, 3] and 'validating epoch 1' not in again['log']


def test_adam_momentum_schedule_follows_a_new_epoch_length(tmp_path):
    """A momentum schedule on AdamW acts on betas[0]: after a resume at another epoch length
    betas follow a run at that length from the start (a first version replayed on an SGD
    stand-in, which turned the schedule onto an unused 'momentum' entry)."""
    adamw = dict(optimizer=dict(type='AdamW', lr=0.1, betas=(0.9, 0.999)))
    schedule = EPOCH_SCHEDULE + [dict(type='CosineAnnealingMomentum', T_max=3, eta_min=0.6,
                                      by_epoch=True, begin=0, end=3,
                                      convert_to_iter_based=True)]
    ref = train(make_runner(tmp_path / 'ref', batch_size=3, optim_wrapper=adamw,
                            param_scheduler=schedule))
    train(make_runner(tmp_path / 'run', batch_size=2, by_epoch=True, optim_wrapper=adamw,
                      param_scheduler=schedule, stop_after=PER_EPOCH + 1))
    resumed = train(make_runner(tmp_path / 'run', batch_size=3, by_epoch=True,
                                optim_wrapper=adamw, param_scheduler=schedule,
                                resume_from=tmp_path / 'run' / 'epoch_1.pth'))
    want = {(e, b): betas for e, b, betas in ref['betas']}
    got = {(e, b): betas for e, b, betas in resumed['betas']}
    assert sorted(got) == [(e, b) for e in (1, 2) for b in range(4)]
    assert len({v[0] for v in got.values()}) == len(got)     # betas[0] moves every step
    for pos, betas in got.items():
        assert betas == pytest.approx(want[pos], rel=1e-9), (pos, betas, want[pos])
    lrs = {(e, b): lr for e, b, lr in ref['lrs']}
    for e, b, lr in resumed['lrs']:
        assert lr == pytest.approx(lrs[(e, b)], rel=1e-9)


def test_plateau_schedules_are_kept_with_a_warning(tmp_path):
    """ReduceOnPlateau follows validation metrics, which a replay does not have: the
    optimizer's schedules keep the checkpoint's state, and the warning says so."""
    schedule = [EPOCH_SCHEDULE[0],
                dict(type='ReduceOnPlateauLR', monitor='batches', rule='less', patience=0,
                     factor=0.5, by_epoch=True, begin=0, end=3)]
    train(make_runner(tmp_path / 'run', batch_size=2, by_epoch=True, param_scheduler=schedule,
                      stop_after=PER_EPOCH + 1, **_with_validation()))
    ckpt = torch.load(str(tmp_path / 'run' / 'epoch_1.pth'), map_location='cpu',
                      weights_only=False)
    resumed = train(make_runner(tmp_path / 'run', batch_size=3, by_epoch=True,
                                param_scheduler=schedule,
                                resume_from=tmp_path / 'run' / 'epoch_1.pth',
                                **_with_validation()))
    assert 'a ReduceOnPlateau schedule follows metrics' in resumed['log']
    assert resumed['lrs'][0][2] == pytest.approx(
        ckpt['optimizer']['param_groups'][0]['lr'])


def test_one_schedule_list_shared_by_several_optimizers_is_paired_with_each():
    """mmengine builds one list of schedulers per optimizer from a shared config list; each
    is paired with the configs (a first version found no pairing and silently kept the
    old counts). Unpairable schedulers are reported, not skipped silently."""
    from types import SimpleNamespace
    loop = ResumableEpochBasedTrainLoop.__new__(ResumableEpochBasedTrainLoop)
    cfgs = [dict(type='LinearLR', by_epoch=True, convert_to_iter_based=True),
            dict(type='CosineAnnealingLR', by_epoch=True, convert_to_iter_based=True)]
    loop._scheduler_cfgs = cfgs
    loop._runner = SimpleNamespace(param_schedulers={'gen': ['g1', 'g2'], 'dis': ['d1', 'd2']})
    pairs, why = loop._scheduler_lists()
    assert why is None
    assert [(label, built, c) for label, built, c in pairs] == [
        ('gen', ['g1', 'g2'], cfgs), ('dis', ['d1', 'd2'], cfgs)]
    loop._runner = SimpleNamespace(param_schedulers=['only one'])
    pairs, why = loop._scheduler_lists()
    assert pairs == [] and 'cannot be paired' in why


SCALE = dict(enable=True, base_batch_size=4)      # auto_scale_lr: lr x (batch / 4)


def _lrs(run):
    return {(e, b): lr for e, b, lr in run['lrs']}


@pytest.mark.parametrize('first', [
    dict(batch_size=2, auto_scale_lr=SCALE),     # fewer GPUs / another batch: 0.5 -> 0.75
    dict(batch_size=3),                          # --auto-scale-lr turned on at the resume
], ids=['another_batch', 'turned_on'])
def test_auto_scale_lr_follows_the_resumed_runs_batch(tmp_path, first):
    """With auto_scale_lr, mmengine scales the configured rates by the real batch / the base
    batch when a run starts, but its resume brings back the rates the checkpoint's run had
    scaled for its own batch. Resumed at batch 3 (factor 3/4) from a run at batch 2 (1/2),
    or from a run without the option, every later iteration now trains with the rate of a
    run at batch 3 with auto_scale_lr from the start."""
    reference = _lrs(train(make_runner(tmp_path / 'ref', batch_size=3, auto_scale_lr=SCALE,
                                       param_scheduler=EPOCH_SCHEDULE)))
    # by hand: warm-up from 0.1 x 3/4 x 0.1 to 0.075 over 8 iterations, then cosine to 0
    assert reference[(0, 0)] == pytest.approx(0.1 * 0.75 * 0.1)
    assert reference[(2, 0)] == pytest.approx(0.075)
    train(make_runner(tmp_path / 'run', by_epoch=True, param_scheduler=EPOCH_SCHEDULE,
                      stop_after=-(-SIZE // first['batch_size']) + 1, **first))
    resumed = train(make_runner(tmp_path / 'run', batch_size=3, by_epoch=True,
                                auto_scale_lr=SCALE, param_scheduler=EPOCH_SCHEDULE,
                                resume_from=tmp_path / 'run' / 'epoch_1.pth'))
    got = _lrs(resumed)
    assert sorted(got) == [(e, b) for e in (1, 2) for b in range(4)]
    for pos, lr in got.items():
        assert lr == pytest.approx(reference[pos], rel=1e-9, abs=1e-12), (pos, lr)
    factor = 0.75 / (0.5 if 'auto_scale_lr' in first else 1.0)
    assert f'auto_scale_lr scales the learning rates by {factor:.4g}' in resumed['log']
    # the optimizer's initial rates are this run's: a second resume at the same batch
    # replays nothing and keeps them
    ckpt = torch.load(str(tmp_path / 'run' / 'epoch_2.pth'), map_location='cpu',
                      weights_only=False)
    assert ckpt['optimizer']['param_groups'][0]['initial_lr'] == pytest.approx(0.075)
    again = train(make_runner(tmp_path / 'run', batch_size=3, by_epoch=True,
                              auto_scale_lr=SCALE, param_scheduler=EPOCH_SCHEDULE,
                              resume_from=tmp_path / 'run' / 'epoch_2.pth'))
    assert 'advanced to iteration 8' not in again['log']    # (both runs may log there)
    for pos, lr in _lrs(again).items():
        assert lr == pytest.approx(reference[pos], rel=1e-9, abs=1e-12), (pos, lr)


def test_auto_scale_lr_rescales_iteration_schedules_and_constant_rates(tmp_path):
    """At the same epoch length (no epoch restarted) a schedule written in iterations is
    replayed at the new scale too; an optimizer without a schedule has its rate scaled.
    auto_scale_lr off at the resume: the checkpoint's rates, as mmengine keeps them."""
    warm = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=10)]
    reference = _lrs(train(make_runner(tmp_path / 'ref', auto_scale_lr=SCALE,
                                       param_scheduler=warm)))
    train(make_runner(tmp_path / 'run', by_epoch=True, param_scheduler=warm,
                      stop_after=PER_EPOCH + 1))
    resumed = train(make_runner(tmp_path / 'run', by_epoch=True, auto_scale_lr=SCALE,
                                param_scheduler=warm,
                                resume_from=tmp_path / 'run' / 'epoch_1.pth'))
    got = _lrs(resumed)
    assert len(got) == 2 * PER_EPOCH and reference[(0, 0)] == pytest.approx(0.005)
    for pos, lr in got.items():
        assert lr == pytest.approx(reference[pos], rel=1e-9, abs=1e-12), (pos, lr)

    train(make_runner(tmp_path / 'flat', by_epoch=True, stop_after=PER_EPOCH + 1))
    flat = train(make_runner(tmp_path / 'flat', by_epoch=True, auto_scale_lr=SCALE,
                             resume_from=tmp_path / 'flat' / 'epoch_1.pth'))
    assert [lr for _, _, lr in flat['lrs']] == pytest.approx([0.05] * 2 * PER_EPOCH)
    assert 'no schedule: learning rate 0.05' in flat['log']

    train(make_runner(tmp_path / 'off', by_epoch=True, auto_scale_lr=SCALE,
                      param_scheduler=warm, stop_after=PER_EPOCH + 1))
    off = train(make_runner(tmp_path / 'off', by_epoch=True, param_scheduler=warm,
                            resume_from=tmp_path / 'off' / 'epoch_1.pth'))
    for pos, lr in _lrs(off).items():
        assert lr == pytest.approx(reference[pos], rel=1e-9, abs=1e-12), (pos, lr)


def test_the_recorded_factor_is_the_one_the_rates_carry(tmp_path):
    """Trained with auto_scale_lr (x 1/2), resumed without it (the checkpoint's rates kept,
    as mmengine keeps them), then with it again at the same batch: the rates are those of
    an uninterrupted run with auto_scale_lr. (The second run recorded its own factor, 1,
    while its rates still carried 1/2, and the third scaled them by 1/2 again.)"""
    reference = _lrs(train(make_runner(tmp_path / 'ref', auto_scale_lr=SCALE,
                                       param_scheduler=EPOCH_SCHEDULE)))
    run = tmp_path / 'run'
    train(make_runner(run, by_epoch=True, auto_scale_lr=SCALE, param_scheduler=EPOCH_SCHEDULE,
                      stop_after=PER_EPOCH + 1))
    off = train(make_runner(run, by_epoch=True, param_scheduler=EPOCH_SCHEDULE,
                            resume_from=run / 'epoch_1.pth', stop_after=2 * PER_EPOCH + 1))
    on = train(make_runner(run, by_epoch=True, auto_scale_lr=SCALE,
                           param_scheduler=EPOCH_SCHEDULE, resume_from=run / 'epoch_2.pth'))
    got = {**_lrs(off), **_lrs(on)}
    assert sorted(got) == [(e, b) for e in (1, 2) for b in range(PER_EPOCH)]
    for pos, lr in got.items():
        assert lr == pytest.approx(reference[pos], rel=1e-9, abs=1e-12), (pos, lr)


class _TwoOptimizerToy(BaseModel):
    """Two linear layers, each with its own optimizer (an OptimWrapperDict)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(3, 3)

    def forward(self, inputs, idx=None, data_samples=None, mode='loss'):
        return dict(loss=((self.b(self.a(inputs)) - 1) ** 2).mean())

    def train_step(self, data, optim_wrapper):
        data = self.data_preprocessor(data, True)
        loss, log = self.parse_losses(self(**data))
        for wrapper in optim_wrapper.values():
            wrapper.zero_grad()
        loss.backward()
        for wrapper in optim_wrapper.values():
            wrapper.step()
        return log


class _RecordEachOptimizer(Hook):
    priority = 'LOWEST'

    def __init__(self):
        self.lrs = []

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.lrs.append({k: w.optimizer.param_groups[0]['lr']
                         for k, w in runner.optim_wrapper.items()})


@pytest.mark.parametrize('schedules', [False, True], ids=['no_schedule', 'per_optimizer'])
def test_auto_scale_lr_with_several_optimizers(tmp_path, schedules, monkeypatch):
    """An OptimWrapperDict (itself an OptimWrapper) was taken for one optimizer and the
    rescale failed on its names; each optimizer's rates now follow the new batch."""
    monkeypatch.setattr(_Record, 'before_train_iter', lambda *a, **k: None)   # (one optimizer)
    warm = [dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=2,
                 convert_to_iter_based=True)]
    extra = dict(param_scheduler=dict(a=warm, b=warm)) if schedules else {}

    def run(work_dir, **kwargs):
        from mmengine.optim import OptimWrapper
        torch.manual_seed(0)
        model = _TwoOptimizerToy()
        wrappers = dict(a=OptimWrapper(torch.optim.SGD(model.a.parameters(), lr=0.1)),
                        b=OptimWrapper(torch.optim.SGD(model.b.parameters(), lr=0.2)))
        record = _RecordEachOptimizer()
        runner = make_runner(work_dir, model=model, optim_wrapper=wrappers, by_epoch=True,
                             auto_scale_lr=SCALE, extra_hooks=[record], **extra, **kwargs)
        with contextlib.suppress(_Stopped):
            runner.train()
        return record.lrs

    reference = run(tmp_path / 'ref', batch_size=3)
    run(tmp_path / 'run', batch_size=2, stop_after=PER_EPOCH + 1)
    got = run(tmp_path / 'run', batch_size=3, resume_from=tmp_path / 'run' / 'epoch_1.pth')
    assert len(got) == 8 and got[0]['b'] == pytest.approx(2 * got[0]['a'])
    for mine, want in zip(got, reference[4:]):
        assert mine == pytest.approx(want, rel=1e-9)


def test_auto_scale_lr_reads_the_batch_of_a_batch_sampler(tmp_path):
    """With a batch_sampler in the DataLoader config torch sets DataLoader.batch_size to
    None: the factor was 1 for every run and never carried across a resume."""
    loader = dict(batch_sampler=dict(type=torch.utils.data.BatchSampler, drop_last=False))
    reference = _lrs(train(make_runner(tmp_path / 'ref', batch_size=3, auto_scale_lr=SCALE,
                                       param_scheduler=EPOCH_SCHEDULE)))
    train(make_runner(tmp_path / 'run', batch_size=2, by_epoch=True, auto_scale_lr=SCALE,
                      param_scheduler=EPOCH_SCHEDULE, stop_after=PER_EPOCH + 1,
                      loader_extra=loader))
    got = _lrs(train(make_runner(tmp_path / 'run', batch_size=3, by_epoch=True,
                                 auto_scale_lr=SCALE, param_scheduler=EPOCH_SCHEDULE,
                                 resume_from=tmp_path / 'run' / 'epoch_1.pth',
                                 loader_extra=loader)))
    assert len(got) == 8
    for pos, lr in got.items():
        assert lr == pytest.approx(reference[pos], rel=1e-9, abs=1e-12), (pos, lr)


def test_auto_scale_lr_without_the_checkpoints_factor_keeps_its_rates(tmp_path):
    """A checkpoint that does not record its run's factor (written by mmengine's loop, or
    an earlier stan-mm) at another batch: its rates are kept, with a warning that says
    what to do."""
    train(make_runner(tmp_path, loop='EpochBasedTrainLoop', by_epoch=True, batch_size=2,
                      auto_scale_lr=SCALE, stop_after=PER_EPOCH + 1))
    resumed = train(make_runner(tmp_path, by_epoch=True, batch_size=3, auto_scale_lr=SCALE,
                                resume_from=tmp_path / 'epoch_1.pth'))
    assert [lr for _, _, lr in resumed['lrs']] == pytest.approx([0.05] * 2 * 4)
    assert 'does not record the learning-rate factor' in resumed['log']


def test_the_last_epochs_cut_validation_runs_when_resumed(tmp_path):
    """The validation cut short may be the last epoch's, the one that counts: resumed from
    the last epoch checkpoint, the run validates it and ends."""
    train(make_runner(tmp_path, by_epoch=True, stop_in_val=3, **_with_validation()))
    resumed = train(make_runner(tmp_path, by_epoch=True,
                                resume_from=tmp_path / 'epoch_3.pth', **_with_validation()))
    assert resumed['validated'] == [3] and resumed['iter'] == TOTAL
    assert 'validating epoch 3 (the last) before the run ends' in resumed['log']


def test_a_best_found_by_the_cut_validation_is_recorded_in_the_epoch_checkpoint(tmp_path):
    """Epoch 2 (score 0.9, the best) has its validation cut; re-run on resume it saves
    best_score_epoch_2.pth and writes epoch_2.pth again with that best in its record, so a
    second resume from epoch_2.pth does not take epoch 3 (0.7) for a new best."""
    kw = dict(by_epoch=True, save_best='score', **_with_validation())
    train(make_runner(tmp_path, stop_in_val=2, **kw))
    assert sorted(p.name for p in tmp_path.glob('best_*.pth')) == ['best_score_epoch_1.pth']
    first = train(make_runner(tmp_path, resume_from=tmp_path / 'epoch_2.pth',
                              stop_after=2 * PER_EPOCH + 1, **kw))
    assert first['validated'] == [2]
    assert sorted(p.name for p in tmp_path.glob('best_*.pth')) == ['best_score_epoch_2.pth']
    hub = torch.load(str(tmp_path / 'epoch_2.pth'), map_location='cpu',
                     weights_only=False)['message_hub']['runtime_info']
    assert hub['best_score'] == 0.9 and hub['best_ckpt'].endswith('best_score_epoch_2.pth')
    second = train(make_runner(tmp_path, resume_from=tmp_path / 'epoch_2.pth', **kw))
    assert second['validated'] == [3]
    assert sorted(p.name for p in tmp_path.glob('best_*.pth')) == ['best_score_epoch_2.pth']


@pytest.mark.parametrize('val_interval,dynamic,killed,expected', [
    (2, [(1, 1)], dict(stop_in_val=1), [1, 2, 3]),     # interval 1 from epoch 1: 1 is due
    (1, [(2, 3)], dict(stop_after=2 * PER_EPOCH + 1), [3]),  # every 3rd from 2: 2 is not
])
def test_cut_validation_follows_dynamic_intervals(tmp_path, val_interval, dynamic, killed,
                                                 expected):
    train_cfg = dict(type='ResumableEpochBasedTrainLoop', max_epochs=EPOCHS,
                     val_interval=val_interval, dynamic_intervals=dynamic)
    train(make_runner(tmp_path, by_epoch=True, train_cfg=train_cfg, **killed,
                      **_with_validation()))
    ckpt = 'epoch_1.pth' if 'stop_in_val' in killed else 'epoch_2.pth'
    resumed = train(make_runner(tmp_path, by_epoch=True, train_cfg=train_cfg,
                                resume_from=tmp_path / ckpt, **_with_validation()))
    assert resumed['validated'] == [e for e in expected if e >= int(ckpt[6])]


def test_an_early_stop_decided_by_the_cut_validation_stops_the_run(tmp_path):
    """EarlyStoppingHook reaching its threshold on the re-run validation (epoch 2, 0.9)
    stops the run there, as it stopped the uninterrupted one."""
    stop = [dict(type='EarlyStoppingHook', monitor='score', rule='greater',
                 stopping_threshold=0.8)]
    kw = dict(by_epoch=True, extra_hooks=stop, **_with_validation())
    whole = train(make_runner(tmp_path / 'whole', **kw))
    assert whole['validated'] == [1, 2] and whole['iter'] == 2 * PER_EPOCH
    train(make_runner(tmp_path / 'cut', stop_in_val=2, **kw))
    resumed = train(make_runner(tmp_path / 'cut', resume_from=tmp_path / 'cut' / 'epoch_2.pth',
                                **kw))
    assert resumed['validated'] == [2] and resumed['iter'] == 2 * PER_EPOCH
