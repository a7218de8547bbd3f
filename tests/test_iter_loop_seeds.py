"""IterBasedTrainLoop: every pass over the data draws new, reproducible augmentation.

mmengine's endless iterator calls ``iter(loader)`` again each time a finite sampler
(``DefaultSampler``) is exhausted; with ``persistent_workers=False`` that starts fresh
workers, which mmengine's ``worker_init_fn`` seeds with ``seed + worker_id + rank *
num_workers`` every time, so every pass repeated the first pass's draws. stan-mm's endless
iterator (:mod:`stan_mm.compat.worker_shutdown`) gives the workers of pass ``k > 0`` a seed
derived from ``(seed, k)``; pass 0 keeps mmengine's.

The training runs drive mmengine's ``Runner`` in-process on a toy dataset whose samples
return the numbers their loading drew from torch, NumPy and ``random`` in the DataLoader
worker (where a pipeline's random crops and flips draw them). Expected draws are computed
here by hand: worker ``w`` (rank ``r``) of a loader with 2 workers seeds all three
generators with ``seed + w + 2 * r`` and loads the batches ``w, w + 2, ...`` of its pass,
in order. mmengine's 2 s sleep between passes is skipped.
"""
import functools
import itertools
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import stan_mm  # noqa: F401  (applies the compat fixes)
import mmengine.runner.loops as mm_loops
from mmengine.dataset import worker_init_fn as mmengine_worker_init_fn
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmaction.registry import DATASETS, HOOKS, MODELS

init_default_scope('mmaction')

SIZE, BATCH, WORKERS, SEED = 8, 2, 2, 5
PER_PASS = SIZE // BATCH          # iterations per pass over the data
PASSES = 3
_names = itertools.count()


@pytest.fixture(autouse=True)
def _no_sleep_between_passes(monkeypatch):
    monkeypatch.setattr(mm_loops, 'time', SimpleNamespace(sleep=lambda seconds: None))


def derived(seed, *entropy):
    """The derived seed, written out: NumPy's SeedSequence of (seed mod 2**32, *entropy)."""
    words = [seed % 2**32, *entropy]
    return int(np.random.SeedSequence(words).generate_state(1)[0] % 2**31)


def expected_pass(seed, rank=0, streams=None):
    """The draws of samples 0..SIZE-1 of one pass with fresh workers seeded from ``seed``
    by mmengine's formula; ``streams`` (worker -> generators) continues given streams
    (persistent workers) instead."""
    rows = {}
    for w in range(WORKERS):
        if streams is not None:
            gens = streams[w]
        else:
            s = seed + w + WORKERS * rank
            gens = (torch.Generator().manual_seed(s), np.random.RandomState(s),
                    random.Random(s))
        for b in range(w, PER_PASS, WORKERS):
            for i in range(b * BATCH, (b + 1) * BATCH):
                rows[i] = (float(torch.rand((), generator=gens[0])), gens[1].rand(),
                           gens[2].random())
    return [rows[i] for i in range(SIZE)]


def worker_streams(seed):
    return {w: (torch.Generator().manual_seed(seed + w), np.random.RandomState(seed + w),
                random.Random(seed + w)) for w in range(WORKERS)}


# ------------------------------------------------------------------ training runs
@DATASETS.register_module(force=True)
class _PassDrawsDataset(torch.utils.data.Dataset):
    """Sample ``i`` returns its index and the numbers its loading drew from torch, NumPy
    and ``random``."""
    metainfo = dict()

    def __len__(self):
        return SIZE

    def __getitem__(self, idx):
        draws = torch.tensor([float(torch.rand(())), float(np.random.rand()),
                              random.random()], dtype=torch.float64)
        return dict(inputs=torch.full((4, ), idx / SIZE), index=idx, draws=draws)


@MODELS.register_module(force=True)
class _PassToyModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 1)

    def forward(self, inputs, index=None, draws=None, data_samples=None, mode='loss'):
        return dict(loss=(self.fc(inputs) ** 2).mean())


@HOOKS.register_module(force=True)
class _RecordPassDraws(Hook):
    """Records {iteration (0-based): [(index, draws) of its samples]}."""
    priority = 'LOWEST'

    def __init__(self):
        self.draws = {}

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.draws[runner.iter] = [
            (int(i), tuple(r)) for i, r in zip(data_batch['index'],
                                               data_batch['draws'].tolist())]


def train(work_dir, persistent=False, resume_from=None, extra_hooks=(),
          sampler='DefaultSampler'):
    runner = Runner(
        model=dict(type='_PassToyModel'),
        work_dir=str(work_dir),
        experiment_name=f'iter_loop_seeds_{next(_names)}',
        train_dataloader=dict(
            dataset=dict(type='_PassDrawsDataset'), batch_size=BATCH,
            sampler=dict(type=sampler, shuffle=False),
            num_workers=WORKERS, persistent_workers=persistent,
            collate_fn=dict(type='default_collate')),
        train_cfg=dict(type='IterBasedTrainLoop', max_iters=PASSES * PER_PASS),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        default_hooks=dict(logger=dict(type='LoggerHook', interval=1),
                           checkpoint=dict(type='CheckpointHook', by_epoch=False,
                                           interval=PER_PASS + 2)),
        log_processor=dict(by_epoch=False),
        custom_hooks=[*extra_hooks, dict(type='_RecordPassDraws')],
        randomness=dict(seed=SEED),
        resume=resume_from is not None,
        load_from=None if resume_from is None else str(resume_from),
        default_scope='mmaction')
    runner.train()
    return next(h for h in runner.hooks if isinstance(h, _RecordPassDraws)).draws


def passes(draws):
    """{pass: [draws of samples 0..SIZE-1]} of a run's record (sampler without shuffle)."""
    out = {}
    for it in sorted(draws):
        out.setdefault(it // PER_PASS, []).extend(draws[it])
    for rows in out.values():
        assert [index for index, _ in rows] == list(range(SIZE))
    return {k: [row for _, row in rows] for k, rows in out.items()}


def test_each_pass_draws_new_augmentation_reproducibly_and_resumes(tmp_path):
    """Fresh workers every pass: pass 0 draws what mmengine's seeding gives (seed + worker
    id), pass k > 0 what the seed derived from (seed, k) gives, so no pass repeats another;
    a second run draws the same; a run resumed from iter_6.pth (inside pass 1) draws what
    the uninterrupted run drew from iteration 7 on."""
    full = train(tmp_path / 'full')
    by_pass = passes(full)
    assert sorted(by_pass) == list(range(PASSES))
    assert by_pass[0] == expected_pass(SEED)                       # mmengine's pass 0
    values = [{v for row in by_pass[k] for v in row} for k in range(PASSES)]
    for a, b in itertools.combinations(range(PASSES), 2):
        assert not values[a] & values[b], (a, b)
    for k in range(1, PASSES):
        assert by_pass[k] == expected_pass(derived(SEED, k)), k
    assert train(tmp_path / 'again') == full
    resumed = train(tmp_path / 'resumed',
                    resume_from=tmp_path / 'full' / f'iter_{PER_PASS + 2}.pth')
    assert sorted(resumed) == list(range(PER_PASS + 2, PASSES * PER_PASS))
    assert resumed == {it: full[it] for it in resumed}


def test_persistent_workers_keep_their_streams(tmp_path):
    """persistent_workers=True: the workers are started once and continue their streams
    from pass to pass, as under mmengine."""
    by_pass = passes(train(tmp_path / 'p', persistent=True))
    streams = worker_streams(SEED)
    assert [by_pass[k] for k in range(PASSES)] == [
        expected_pass(None, streams=streams) for _ in range(PASSES)]


def test_epoch_seed_hook_reaches_the_workers_of_an_iteration_loop(tmp_path):
    """EpochSeedHook (per epoch) sets the workers' seed in before_train_epoch, before the
    endless iterator starts them: pass 0 draws from the hook's epoch seed (seed, 0), pass
    k from the seed derived from (that seed, k)."""
    by_pass = passes(train(tmp_path / 'h', extra_hooks=[dict(type='EpochSeedHook')]))
    hook_seed = derived(SEED, 0)
    assert by_pass[0] == expected_pass(hook_seed)
    for k in range(1, PASSES):
        assert by_pass[k] == expected_pass(derived(hook_seed, k)), k


# ------------------------------------------------------------------ the endless iterator
class _WorkerSeed(torch.utils.data.Dataset):
    """Sample ``i``: ``(i, the worker's torch seed)``."""

    def __len__(self):
        return 4

    def __getitem__(self, idx):
        return torch.tensor([idx, torch.initial_seed()])


def _seeds_of_passes(loader, n_passes):
    """[(index, worker seed) of every sample] per pass, read through mmengine's endless
    iterator (stan-mm's lazy one)."""
    endless = mm_loops._InfiniteDataloaderIterator(loader)
    try:
        out = []
        for _ in range(n_passes):
            rows = [tuple(r) for _ in range(len(loader)) for r in next(endless).tolist()]
            out.append(rows)
        return out, endless
    finally:
        iterator = endless._iterator
        if hasattr(iterator, '_shutdown_workers'):
            iterator._shutdown_workers()


def test_ddp_rank_offset_is_kept():
    """Rank 1 of a DDP run: every pass keeps mmengine's worker and rank offsets (seed +
    worker id + 2 * rank), around the pass's seed."""
    init_fn = functools.partial(mmengine_worker_init_fn, num_workers=2, rank=1, seed=SEED)
    loader = torch.utils.data.DataLoader(_WorkerSeed(), batch_size=1, num_workers=2,
                                         worker_init_fn=init_fn)
    seeds, endless = _seeds_of_passes(loader, 3)
    for k, rows in enumerate(seeds):
        base = SEED if k == 0 else derived(SEED, k)
        # batch j (one sample) is loaded by worker j % 2
        assert rows == [(j, base + j % 2 + 2) for j in range(4)], k
    assert endless._epoch == 2


def test_loaders_without_mmengines_seeding_and_infinite_samplers_are_left_alone():
    """A worker_init_fn that is not a partial with a seed is not replaced; an
    InfiniteSampler never ends a pass: its workers are started once."""
    from mmengine.dataset import InfiniteSampler
    calls = []

    def own_init(worker_id):
        calls.append(worker_id)

    loader = torch.utils.data.DataLoader(_WorkerSeed(), batch_size=1, num_workers=2,
                                         worker_init_fn=own_init)
    _, endless = _seeds_of_passes(loader, 2)
    assert loader.worker_init_fn is own_init and endless._epoch == 1

    init_fn = functools.partial(mmengine_worker_init_fn, num_workers=2, rank=0, seed=SEED)
    loader = torch.utils.data.DataLoader(
        _WorkerSeed(), batch_size=1, num_workers=2, worker_init_fn=init_fn,
        sampler=InfiniteSampler(_WorkerSeed(), shuffle=False))
    seeds, endless = _seeds_of_passes(loader, 3)
    assert endless._epoch == 0 and loader.worker_init_fn is init_fn
    assert [r[1] for rows in seeds for r in rows] == [SEED + j % 2 for j in range(12)]


def test_one_helper_replaces_the_seed_for_the_loop_the_hook_and_the_endless_iterator(
        monkeypatch):
    """The seed of mmengine's seeding partial is replaced in one place
    (``set_worker_seed``): its other arguments and a wrapper around its function
    (PreemptionHook's) are kept; anything else is left alone. ResumableEpochBasedTrainLoop
    (per epoch), EpochSeedHook(reseed_workers=True) and the endless iterator (per pass) go
    through it."""
    from stan_mm.compat import worker_shutdown
    from stan_mm.engine import loops, seed_hook
    from stan_mm.engine.preemption_hook import _IgnoreSignals
    wrapped = _IgnoreSignals(mmengine_worker_init_fn, ())
    loader = SimpleNamespace(worker_init_fn=functools.partial(
        wrapped, num_workers=2, rank=1, seed=SEED))
    assert worker_shutdown.set_worker_seed(loader, 11)
    fn = loader.worker_init_fn
    assert fn.func is wrapped and fn.args == () and fn.keywords == dict(
        num_workers=2, rank=1, seed=11)
    for other in (None, print, functools.partial(mmengine_worker_init_fn, num_workers=2)):
        plain = SimpleNamespace(worker_init_fn=other)
        assert not worker_shutdown.set_worker_seed(plain, 11)
        assert plain.worker_init_fn is other
    assert loops.set_worker_seed is seed_hook.set_worker_seed is \
        worker_shutdown.set_worker_seed
    calls = []
    monkeypatch.setattr(worker_shutdown, 'set_worker_seed',
                        lambda loader, seed: calls.append(seed) or True)
    worker_shutdown._seed_workers_for_pass(loader, SEED, 2)
    assert calls == [derived(SEED, 2)]
