"""Training on mmengine's dataset wrappers (``RepeatDataset``, ``ConcatDataset``): exact
resumption under both train loops, and the training DataLoader's refusal of shards without
a batch under DDP.

The runs drive mmengine's ``Runner`` in-process on a toy model (a linear layer behind
dropout) and a toy ``BaseDataset`` whose samples draw "augmentation" noise from torch, NumPy
and ``random``, wrapped in a ``RepeatDataset`` or a ``ConcatDataset``; a hook records which
samples (dataset, index) each iteration trained on. A run resumed from an iteration
checkpoint of an uninterrupted run must train that run's samples in its order and end with
its weights, with ``randomness.seed`` unset (each run draws its own seed, as with the
configs), under ``ResumableEpochBasedTrainLoop`` + ``DefaultSampler`` and under mmengine's
``IterBasedTrainLoop`` + ``InfiniteSampler`` / ``DefaultSampler``. The DDP tests run two
forked gloo ranks (:func:`stan_mm.testing.run_ranks`, with a timeout: a hang fails them).
"""
import glob
import itertools
import os
import os.path as osp
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import stan_mm  # noqa: F401  (applies the compat fixes)
import mmengine.runner.loops as mm_loops
from mmengine.dataset import BaseDataset, ConcatDataset, DefaultSampler, RepeatDataset
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmaction.registry import DATASETS, HOOKS, MODELS

from stan_mm.engine.loops import (EmptyTrainDataloaderError, UnevenTrainDataloaderError,
                                  refuse_empty_train_loader)

init_default_scope('mmaction')

BATCH, EPOCHS, ITERS, CKPT_EVERY = 2, 2, 10, 3
_names = itertools.count()


@DATASETS.register_module(force=True)
class _WrapToyDataset(BaseDataset):
    """``size`` samples; sample ``i`` is ``i / 10 + tag`` plus noise from torch, NumPy and
    ``random``, and carries its key ``(tag, i)``."""

    def __init__(self, size=5, tag=0, ann_file='', **kwargs):
        self.size, self.tag = size, tag
        super().__init__(ann_file=ann_file, pipeline=[], serialize_data=False, **kwargs)

    def load_data_list(self):
        return [dict(i=i) for i in range(self.size)]

    def prepare_data(self, idx):
        noise = torch.rand(4) + float(np.random.rand()) + random.random()
        return dict(inputs=torch.full((4, ), idx / 10 + self.tag) + 0.1 * noise,
                    key=torch.tensor([self.tag, idx]))


@MODELS.register_module(force=True)
class _WrapToyModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.drop = nn.Dropout(0.5)

    def forward(self, inputs, key=None, data_samples=None, mode='loss'):
        return dict(loss=((self.fc(self.drop(inputs)) - 1) ** 2).mean())


@HOOKS.register_module(force=True)
class _WrapRecord(Hook):
    """Records ``(global iteration, [(tag, index) of the batch's samples])``."""
    priority = 'LOWEST'

    def __init__(self):
        self.seen = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.seen.append((runner.iter + 1, [tuple(k) for k in data_batch['key'].tolist()]))


WRAPPED = dict(
    # 10 samples: 5 batches per epoch
    repeat=dict(type='RepeatDataset', times=2, dataset=dict(type='_WrapToyDataset', size=5)),
    # 5 + 4 samples: 5 batches per epoch, the last of one sample
    concat=dict(type='ConcatDataset', datasets=[dict(type='_WrapToyDataset', size=5),
                                                dict(type='_WrapToyDataset', size=4, tag=1)]))
LOOPS = {
    'epoch_default': (dict(type='ResumableEpochBasedTrainLoop', max_epochs=EPOCHS),
                      'DefaultSampler'),
    'iter_infinite': (dict(type='IterBasedTrainLoop', max_iters=ITERS), 'InfiniteSampler'),
    'iter_default': (dict(type='IterBasedTrainLoop', max_iters=ITERS), 'DefaultSampler'),
}


@pytest.fixture
def no_sleep_between_passes(monkeypatch):
    """mmengine's endless iterator sleeps 2 s before each new pass over the data."""
    monkeypatch.setattr(mm_loops, 'time', SimpleNamespace(sleep=lambda seconds: None))


def train(work_dir, wrapper, loop, resume_from=None):
    """Train (``randomness.seed`` unset, per-iteration seeding, iteration checkpoints every
    3 iterations); the samples seen, the final weights and the run's log."""
    train_cfg, sampler = LOOPS[loop]
    runner = Runner(
        model=dict(type='_WrapToyModel'),
        work_dir=str(work_dir),
        experiment_name=f'wrapper_resume_{next(_names)}',
        train_dataloader=dict(dataset=WRAPPED[wrapper], batch_size=BATCH,
                              sampler=dict(type=sampler, shuffle=True), num_workers=0,
                              collate_fn=dict(type='default_collate')),
        train_cfg=train_cfg,
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
        default_hooks=dict(logger=dict(type='LoggerHook', interval=1),
                           checkpoint=dict(type='AtomicCheckpointHook', by_epoch=False,
                                           interval=CKPT_EVERY)),
        custom_hooks=[dict(type='EpochSeedHook', per_iteration=True),
                      dict(type='_WrapRecord')],
        log_processor=dict(window_size=1, by_epoch=loop.startswith('epoch')),
        randomness=dict(seed=None, deterministic=True),
        resume=resume_from is not None,
        load_from=None if resume_from is None else str(resume_from),
        default_scope='mmaction')
    runner.train()
    seen = next(h for h in runner.hooks if isinstance(h, _WrapRecord)).seen
    logs = glob.glob(osp.join(runner.log_dir, '*.log'))
    return dict(seen=seen, state={k: v.clone() for k, v in runner.model.state_dict().items()},
                log=open(logs[0]).read() if logs else '')


@pytest.mark.parametrize('loop', list(LOOPS))
@pytest.mark.parametrize('wrapper', list(WRAPPED))
def test_resumed_run_on_a_wrapped_dataset_is_exact(tmp_path, wrapper, loop,
                                                   no_sleep_between_passes):
    """Resumed from iter_6.pth of an uninterrupted run (epoch loop: 1 of epoch 2's 5
    batches done; iteration loop: 6 of 10), with a seed of its own: iterations 7..10 train
    the uninterrupted run's samples in its order, and the run ends with its weights.
    Under IterBasedTrainLoop mmengine built the sampler with the resumed run's seed, so
    the rest of the run was drawn in another order (the InfiniteSampler's stream, the
    DefaultSampler's second pass); the sampler now gets the checkpoint's seed back."""
    full = train(tmp_path / 'full', wrapper, loop)
    total = ITERS if loop.startswith('iter') else EPOCHS * 5
    assert [s[0] for s in full['seen']] == list(range(1, total + 1))
    resumed = train(tmp_path / 'resumed', wrapper, loop,
                    resume_from=tmp_path / 'full' / 'iter_6.pth')
    assert [s[0] for s in resumed['seen']] == list(range(7, total + 1))
    assert [s[1] for s in resumed['seen']] == [s[1] for s in full['seen'][6:]]
    assert all(torch.equal(v, resumed['state'][k]) for k, v in full['state'].items())
    assert 'seed set back to' in resumed['log']
    if wrapper == 'concat':          # the samples of both datasets were trained
        assert {tag for _, keys in full['seen'] for tag, _ in keys} == {0, 1}


def test_iteration_loop_warns_about_a_sampler_it_cannot_give_its_seed_back(tmp_path):
    """A sampler not known to draw its order from its seed: its seed is not set back,
    with a warning saying the resumed run trains other samples and what to do."""
    from mmengine.logging import MessageHub
    from stan_mm.engine.loops import ITER_ORDER_KEY, restore_iter_loop_sampler_seed

    class OwnOrder(DefaultSampler):
        reproducible_order = False

    dataset = RepeatDataset(dict(type='_WrapToyDataset', size=3), times=2)
    said = []
    hub = MessageHub.get_instance('wrapper_resume_warn')
    hub.update_info(ITER_ORDER_KEY, dict(sampler_seed=7, world_size=1))
    for sampler, seed in [(OwnOrder(dataset, seed=3), 3), (DefaultSampler(dataset, seed=3), 7)]:
        loader = torch.utils.data.DataLoader(dataset, batch_size=2, sampler=sampler)
        loop = SimpleNamespace(dataloader=loader, iter=4, runner=SimpleNamespace(
            message_hub=hub, logger=SimpleNamespace(
                info=lambda m: said.append(('info', m)),
                warning=lambda m: said.append(('warning', m)))))
        hub.update_info(ITER_ORDER_KEY, dict(sampler_seed=7, world_size=1))
        restore_iter_loop_sampler_seed(loop)
        assert sampler.seed == seed
        assert hub.get_info(ITER_ORDER_KEY)['sampler_seed'] == seed
    assert [level for level, _ in said] == ['warning', 'info']
    assert 'is not known to draw its order from its seed' in said[0][1]
    assert 'Set randomness.seed (--seed)' in said[0][1]
    assert 'DefaultSampler seed set back to 7 (the checkpoint\'s; this run drew 3)' in said[1][1]


# ------------------------------------------------------------------ empty shards in DDP
def toy_loader(dataset, batch_size, drop_last=False, round_up=True):
    sampler = DefaultSampler(dataset, shuffle=False, round_up=round_up, seed=0)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                                       drop_last=drop_last)


def test_the_refusal_names_every_annotation_file_of_a_wrapper():
    """A ConcatDataset of two empty lists: the one-line refusal names both files."""
    dataset = ConcatDataset([
        dict(type='_WrapToyDataset', size=0, ann_file='lists/a_train.txt'),
        dict(type='_WrapToyDataset', size=0, tag=1, ann_file='lists/b_train.txt')])
    with pytest.raises(EmptyTrainDataloaderError) as info:
        refuse_empty_train_loader(toy_loader(dataset, 2))
    assert str(info.value).startswith(
        'the training DataLoader yields no batch per epoch, so nothing would be trained: 0 '
        'training samples from ConcatDataset of [_WrapToyDataset (ann_file=lists/a_train.txt)'
        ', _WrapToyDataset (ann_file=lists/b_train.txt)], batch size 2, world size 1')
    repeated = RepeatDataset(dict(type='_WrapToyDataset', size=1, ann_file='t.txt'), times=1)
    with pytest.raises(EmptyTrainDataloaderError, match=r'1 training samples from '
                       r'RepeatDataset of _WrapToyDataset \(ann_file=t\.txt\), batch size 2'):
        refuse_empty_train_loader(toy_loader(repeated, 2, drop_last=True))


def _ddp_cases(rank, init_file):
    """Each rank builds three runners on a RepeatDataset in the same process group: the
    refusals must come on both ranks, at the same point, for the next case to line up."""
    os.environ.update(LOCAL_RANK=str(rank), RANK=str(rank), WORLD_SIZE='2')
    work = osp.join(osp.dirname(init_file), f'work{rank}')
    results = []
    for size, batch, loop, round_up in [
            (1, 2, dict(type='ResumableEpochBasedTrainLoop', max_epochs=1), False),
            (3, 1, dict(type='ResumableEpochBasedTrainLoop', max_epochs=1), False),
            (3, 1, dict(type='IterBasedTrainLoop', max_iters=2), False)]:
        runner = Runner(
            model=dict(type='_WrapToyModel'), work_dir=work, launcher='pytorch',
            experiment_name=f'wrapper_ddp_{rank}_{next(_names)}',
            train_dataloader=dict(
                dataset=dict(type='RepeatDataset', times=1, dataset=dict(
                    type='_WrapToyDataset', size=size, ann_file='lists/train.txt')),
                batch_size=batch, num_workers=0, collate_fn=dict(type='default_collate'),
                sampler=dict(type='DefaultSampler', shuffle=False, round_up=round_up)),
            train_cfg=loop, optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
            default_hooks=dict(checkpoint=None, logger=None), default_scope='mmaction')
        try:
            runner.train()
            results.append(('trained', runner.iter))
        except (EmptyTrainDataloaderError, UnevenTrainDataloaderError) as e:
            results.append((type(e).__name__, str(e)))
    return results


def test_every_rank_refuses_a_shard_without_a_batch_on_one_rank(tmp_path):
    """2 gloo ranks, DefaultSampler(round_up=False). One sample: rank 1's shard is empty.
    Only rank 1 refused it, and rank 0 went on to its first collective, where it waited
    for a rank that had stopped (with gloo the peer's exit ended it; with NCCL, a hang).
    Both ranks now raise the same error, naming the ranks' counts and the annotation file.
    Three samples, batches of one: 2 and 1 batches per epoch, refused under the epoch loop
    (the ranks' gradient synchronizations would not pair up), trained under the iteration
    loop (every rank runs max_iters)."""
    from stan_mm.testing import run_ranks
    results = run_ranks(_ddp_cases, str(tmp_path / 'init'), timeout=90)
    assert all(isinstance(v, list) for v in results.values()), results
    assert results[0] == results[1], results
    (kind, empty), (kind2, uneven), trained = results[0]
    assert kind == 'EmptyTrainDataloaderError', empty
    assert empty == (
        'the training DataLoader yields no batch per epoch on rank 1 of 2, so nothing would '
        'be trained there and the other ranks would wait for it at their first gradient '
        'synchronization (a hang): 1 training samples from RepeatDataset of _WrapToyDataset '
        '(ann_file=lists/train.txt); samples per rank [1, 0], batches per rank [1, 0]; '
        'batch size 2, drop_last=False (the sampler gives rank 1 no sample; its '
        'round_up=False does not pad the shards to the same length). Fix: set --cfg-options '
        'train_dataloader.sampler.round_up=True (every rank then gets 1 sample), use at '
        'most 1 rank, or use more training data')
    assert kind2 == 'UnevenTrainDataloaderError', uneven
    assert 'samples per rank [2, 1], batches per rank [2, 1]' in uneven
    assert trained == ('trained', 2)
