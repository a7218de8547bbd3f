"""Randomness review fixes: fresh augmentation per epoch and after a resume
(``ResumableEpochBasedTrainLoop`` seeds the workers started for epoch e > 0 from
``(seed, e)``, and ``tools/train.py --deterministic`` upgrades a per-epoch ``EpochSeedHook``);
``TwinGroupSampler`` orders that are not shifted copies across neighbouring seeds; the
retrieval dataset's shared epoch state surviving ``get_subset()``.

The training tests drive mmengine's ``Runner`` in-process on a toy dataset that returns the
numbers its loading drew from torch, NumPy and ``random`` (what a data pipeline's random
crops and flips draw from), loaded by 2 DataLoader workers; a hook records them per epoch.
The runs take their ``custom_hooks`` from ``configs/_base_/default_runtime.py``.
"""
import itertools
import json
import os.path as osp
import random

import numpy as np
import torch
from torch import nn

import stan_mm  # noqa: F401
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmaction.registry import DATASETS, HOOKS, MODELS

from stan_mm.datasets import samplers as samplers_mod
from stan_mm.datasets.samplers import TwinGroupSampler
from stan_mm.testing import load_script

init_default_scope('mmaction')

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..'))
RUNTIME = osp.join(REPO, 'configs', '_base_', 'default_runtime.py')
SIZE, BATCH = 8, 2
_names = itertools.count()


def load_tool(rel_path, name):
    return load_script(rel_path, name)


# ------------------------------------------------------------------ --deterministic
def test_deterministic_upgrades_a_per_epoch_hook(tmp_path, capsys):
    """--deterministic: a per-epoch hook becomes per_iteration=True (persistent
    workers stay); an explicit per_iteration=False is kept (persistent workers turned off)."""
    train = load_tool('tools/train.py', 'stan_train_tool_randomness_review')
    path = tmp_path / 'per_epoch.py'
    quickstart = osp.join(REPO, 'configs', 'quickstart', 'motion_stan_tiny.py')
    path.write_text(f"_base_ = [{quickstart!r}]\ncustom_hooks = [dict(type='ClassListCheckHook'), "
                    f"dict(type='EpochSeedHook')]\n")
    path = str(path)
    assert Config.fromfile(path).train_dataloader.persistent_workers is True
    args = train.parse_args([path, '--deterministic'])
    cfg = train.merge_args(Config.fromfile(path), args)
    assert cfg.custom_hooks == [dict(type='ClassListCheckHook'),
                                dict(type='EpochSeedHook', per_iteration=True)]
    assert cfg.train_dataloader.persistent_workers is True
    assert 'persistent_workers=False' not in capsys.readouterr().out
    again = train.merge_args(cfg, args)                       # idempotent, no second hook
    assert again.custom_hooks == [dict(type='ClassListCheckHook'),
                                  dict(type='EpochSeedHook', per_iteration=True)]
    # without --deterministic the per-epoch hook stays
    plain = train.merge_args(Config.fromfile(path), train.parse_args([path, '--seed', '1']))
    assert plain.custom_hooks == [dict(type='ClassListCheckHook'), dict(type='EpochSeedHook')]
    # a config that asks for per-epoch seeding explicitly keeps it
    explicit = Config.fromfile(path)
    explicit.custom_hooks = [dict(type='ClassListCheckHook'),
                             dict(type='EpochSeedHook', per_iteration=False)]
    cfg = train.merge_args(explicit, args)
    assert cfg.custom_hooks[1] == dict(type='EpochSeedHook', per_iteration=False)
    assert cfg.train_dataloader.persistent_workers is False
    assert 'persistent_workers=False' in capsys.readouterr().out


# ------------------------------------------------------------------ training runs
@DATASETS.register_module(force=True)
class _DrawingToyDataset(torch.utils.data.Dataset):
    """Sample ``i`` returns the numbers its loading drew from torch, NumPy and ``random``
    (where a pipeline's random augmentation draws them: in the DataLoader worker)."""
    metainfo = dict()

    def __len__(self):
        return SIZE

    def __getitem__(self, idx):
        draws = torch.tensor([float(torch.rand(())), float(np.random.rand()),
                              random.random()], dtype=torch.float64)
        return dict(inputs=torch.full((4, ), idx / SIZE), draws=draws)


@MODELS.register_module(force=True)
class _LinearToyModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 1)

    def forward(self, inputs, draws=None, data_samples=None, mode='loss'):
        return dict(loss=(self.fc(inputs) ** 2).mean())


@HOOKS.register_module(force=True)
class _RecordDraws(Hook):
    """Records {epoch (0-based): [draws of every sample, in loading order]}."""
    priority = 'LOWEST'

    def __init__(self):
        self.draws = {}

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        rows = data_batch['draws'].tolist()
        self.draws.setdefault(runner.epoch, []).extend(tuple(r) for r in rows)


def run(work_dir, epochs, persistent, resume_from=None, loop='ResumableEpochBasedTrainLoop'):
    hooks = [dict(h) for h in Config.fromfile(RUNTIME).custom_hooks]
    runner = Runner(
        model=dict(type='_LinearToyModel'),
        work_dir=str(work_dir),
        experiment_name=f'randomness_review_{next(_names)}',
        train_dataloader=dict(
            dataset=dict(type='_DrawingToyDataset'), batch_size=BATCH,
            sampler=dict(type='DefaultSampler', shuffle=True),
            num_workers=2, persistent_workers=persistent,
            collate_fn=dict(type='default_collate')),
        train_cfg=dict(type=loop, max_epochs=epochs),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        default_hooks=dict(logger=dict(type='LoggerHook', interval=1),
                           checkpoint=dict(type='AtomicCheckpointHook', interval=1)),
        custom_hooks=hooks + [dict(type='_RecordDraws')],
        randomness=dict(seed=0),
        resume=resume_from is not None,
        load_from=None if resume_from is None else str(resume_from),
        default_scope='mmaction')
    runner.train()
    return next(h for h in runner.hooks if isinstance(h, _RecordDraws)).draws


def _no_common_draw(a, b):
    values = lambda rows: {v for r in rows for v in r}  # noqa: E731
    return not values(a) & values(b)


def test_resumed_epoch_draws_new_augmentation_with_persistent_workers(tmp_path):
    """Resumed from epoch_1.pth, epoch 2's workers (started anew, persistent) must not
    replay epoch 1's draws: mmengine's worker_init_fn alone seeds them as at the start."""
    full = run(tmp_path / 'full', epochs=2, persistent=True)
    assert sorted(full) == [0, 1] and len(full[0]) == len(full[1]) == SIZE
    resumed = run(tmp_path / 'resumed', epochs=2, persistent=True,
                  resume_from=tmp_path / 'full' / 'epoch_1.pth')
    assert sorted(resumed) == [1] and len(resumed[1]) == SIZE
    assert _no_common_draw(resumed[1], full[0])
    # (the uninterrupted run's workers persist: its epoch 2 continues their streams)
    assert _no_common_draw(full[1], full[0])


def test_an_uninterrupted_run_draws_what_mmengines_loop_draws(tmp_path):
    """Persistent workers, no resume: the loop leaves epoch 0's worker seed as mmengine's,
    so a run draws the same augmentation as under mmengine's EpochBasedTrainLoop (the
    quickstart's recipe was measured with that stream)."""
    ours = run(tmp_path / 'ours', epochs=2, persistent=True)
    theirs = run(tmp_path / 'theirs', epochs=2, persistent=True, loop='EpochBasedTrainLoop')
    assert ours == theirs


def test_every_epoch_draws_new_augmentation_with_fresh_workers(tmp_path):
    """persistent_workers=False: workers started for each epoch must not repeat the
    previous epoch's draws; the draws are still a function of the seed."""
    first = run(tmp_path / 'a', epochs=2, persistent=False)
    assert _no_common_draw(first[1], first[0])
    again = run(tmp_path / 'b', epochs=2, persistent=False)
    assert again == first


# ------------------------------------------------------------------ TwinGroupSampler
class _Twins(list):
    def twin_groups(self):
        return [[i, i + 1] for i in range(0, len(self), 2)]


def _order(seed, epoch, n=40, **kwargs):
    sampler = TwinGroupSampler(_Twins(range(n)), seed=seed, **kwargs)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_neighbouring_seeds_do_not_give_shifted_orders():
    assert _order(0, 1) != _order(1, 0)
    assert _order(5, 3) != _order(6, 2) != _order(7, 1)
    orders = {tuple(_order(s, e)) for s in range(4) for e in range(4)}
    assert len(orders) == 16


def test_twin_order_is_a_function_of_seed_and_epoch(monkeypatch):
    sampler = TwinGroupSampler(_Twins(range(40)), seed=3)
    by_epoch = {}
    for epoch in (2, 0, 1, 2):
        sampler.set_epoch(epoch)
        by_epoch.setdefault(epoch, list(sampler))
        assert list(sampler) == by_epoch[epoch]
    assert by_epoch == {e: _order(3, e) for e in range(3)}
    assert len({tuple(v) for v in by_epoch.values()}) == 3
    for epoch in range(3):
        assert sorted(by_epoch[epoch]) == list(range(40))
    assert sorted(TwinGroupSampler(_Twins(range(6)), seed=-1)) == list(range(6))  # seed < 0
    # ranks: disjoint, padded to the same length, every index served
    for world_size in (2, 3):
        shards = []
        for rank in range(world_size):
            monkeypatch.setattr(samplers_mod, 'get_dist_info',
                                lambda r=rank: (r, world_size))
            shards.append(_order(3, 1, n=22))
        assert len({len(s) for s in shards}) == 1
        assert set().union(*shards) == set(range(22))
        if 11 % world_size == 0:
            assert sum(len(s) for s in shards) == 22


# ------------------------------------------------------------------ retrieval subset
def _random_caption_dataset(tmp_path):
    ann = {f'v{v}.mp4': [f'video {v} caption {c}' for c in range(8)] for v in range(4)}
    f = tmp_path / 'train.json'
    f.write_text(json.dumps(ann))
    return DATASETS.build(dict(
        type='RetrievalVideoTextDataset', ann_format='json', ann_file=str(f),
        data_prefix=dict(video=str(tmp_path / 'videos')), check_files=False, pipeline=[],
        caption_sampling='random', seed=0))


def test_random_caption_of_a_subset_reaches_persistent_workers(tmp_path):
    full = _random_caption_dataset(tmp_path)
    sub = full.get_subset([0, 2, 3])
    assert len(sub) == 3
    loader = torch.utils.data.DataLoader(sub, batch_size=None, num_workers=1,
                                         persistent_workers=True, collate_fn=lambda x: x)
    seen = []
    try:
        for epoch in range(6):
            sub.set_epoch(epoch)   # what CaptionSamplingEpochHook does before each epoch
            got = [s['text'] for s in loader]
            expected = [sub.get_data_info(i)['text'] for i in range(len(sub))]
            assert got == expected, epoch
            seen.append(tuple(got))
    finally:
        del loader
    assert len(set(seen)) > 1
    # each subset has its own epoch; the parent's is untouched
    other = full.get_subset([1])
    other.set_epoch(9)
    assert sub.epoch == 5 and full.epoch == 0 and other.epoch == 9
