"""Review of the 2026-12-07 changes (second pass): gaps found in the new checks.

1. ``check_train_clips`` (tools/train.py) followed ``dataset.dataset...`` only and looked at
   the first pipeline step with a ``clip_len``: a ``ConcatDataset`` training set
   (``datasets=[...]``) or a frame sampler after another ``clip_len`` step was not checked,
   and MMAction2 stopped in the first batch's loss again.
2. ``refuse_empty_train_loader`` under DDP let every rank through when any rank's loader
   had no length, also a rank whose loader has no batch (which then stopped alone).
3. ``IterBasedTrainLoop`` resumed on another world size: the sampler's seed is (rightly)
   not given back, but the run said nothing while it trained other samples than the
   interrupted run would have (the epoch loops say so).
"""
from types import SimpleNamespace

import pytest
import torch

import stan_mm  # noqa: F401
from mmengine.config import Config
from mmengine.dataset import DefaultSampler
from mmengine.logging import MessageHub

from stan_mm.engine import loops
from stan_mm.utils.cli import ConfigOptionError, check_train_clips
from test_train_clips import TINY, _sampler_index
from test_wrapper_resume import toy_loader  # noqa: F401  (registers the toy dataset)


# ------------------------------------------------------------------ 1: num_clips everywhere
def test_train_clips_are_checked_in_every_dataset_and_step():
    """A ConcatDataset of two copies of the tiny config's training set, the second one
    sampling 3 clips per video: refused naming that entry, and the suggested
    --cfg-options value makes the config pass. A second frame sampler later in the
    pipeline is checked too."""
    cfg = Config.fromfile(TINY)
    i = _sampler_index(cfg)
    one = cfg.train_dataloader.dataset.to_dict()
    three = cfg.train_dataloader.dataset.to_dict()
    three['pipeline'][i]['num_clips'] = 3
    cfg.train_dataloader.dataset = dict(type='ConcatDataset', datasets=[one, three])
    option = f'train_dataloader.dataset.datasets.1.pipeline.{i}.num_clips'
    with pytest.raises(ConfigOptionError) as err:
        check_train_clips(cfg, 'train.py')
    assert f'train.py: {option}=3: ' in str(err.value)
    assert f'Set --cfg-options {option}=1 ' in str(err.value)
    cfg.merge_from_dict({option: 1})                     # the fix it names
    check_train_clips(cfg, 'train.py')

    # a frame sampler that is not the pipeline's first step with a clip_len
    cfg = Config.fromfile(TINY)
    pipeline = cfg.train_dataloader.dataset.pipeline
    pipeline.insert(i + 1, dict(pipeline[i], num_clips=2))
    with pytest.raises(ConfigOptionError,
                       match=rf'train_dataloader\.dataset\.pipeline\.{i + 1}\.num_clips=2'):
        check_train_clips(cfg, 'train.py')


# ------------------------------------------------------------------ 2: DDP, unsized loaders
def test_a_rank_without_a_batch_is_refused_when_another_rank_has_no_length(monkeypatch):
    """Rank 1 of 2 has an empty shard, rank 0 a loader without a length (the all-gather
    stands in for the two ranks): rank 1 refuses it, naming the ranks' counts (it used to
    return on every rank, so rank 1 stopped alone later and rank 0 waited for it)."""
    import mmengine.dist
    from mmengine.dataset import ConcatDataset

    monkeypatch.setattr(mmengine.dist, 'is_distributed', lambda *a, **k: True)
    monkeypatch.setattr(loops, 'get_world_size', lambda *a, **k: 2)
    monkeypatch.setattr(loops, '_rank_counts', lambda samples, batches: [(None, None),
                                                                         (samples, batches)])
    empty = ConcatDataset([dict(type='_WrapToyDataset', size=0, ann_file='lists/t.txt')])
    with pytest.raises(loops.EmptyTrainDataloaderError) as err:
        loops.refuse_empty_train_loader(toy_loader(empty, 2), epoch_based=False)
    assert str(err.value).startswith(
        'the training DataLoader yields no batch per epoch on rank 1 of 2, so nothing would '
        'be trained there')
    assert 'samples per rank [None, 0], batches per rank [None, 0]' in str(err.value)
    # every rank with a batch, one of them unsized: nothing to compare, no refusal
    monkeypatch.setattr(loops, '_rank_counts', lambda samples, batches: [(None, None),
                                                                         (3, 1)])
    full = ConcatDataset([dict(type='_WrapToyDataset', size=3)])
    loops.refuse_empty_train_loader(toy_loader(full, 2), epoch_based=True)


# ------------------------------------------------------------------ 3: another world size
def test_iteration_loop_resumed_on_another_world_size_says_so():
    """Checkpoint of a 2-rank run, resumed on 1: the seed is not given back (other shards)
    and a warning names both world sizes; on the same world size there is no such
    warning."""
    from stan_mm.engine.loops import ITER_ORDER_KEY, restore_iter_loop_sampler_seed
    dataset = list(range(6))
    said = []
    hub = MessageHub.get_instance('diff_review_1207b_world')

    def resume(saved_world_size):
        sampler = DefaultSampler(dataset, seed=3)
        loader = torch.utils.data.DataLoader(dataset, batch_size=2, sampler=sampler)
        hub.update_info(ITER_ORDER_KEY, dict(sampler_seed=7, world_size=saved_world_size))
        restore_iter_loop_sampler_seed(SimpleNamespace(
            dataloader=loader, iter=4, runner=SimpleNamespace(
                message_hub=hub, logger=SimpleNamespace(
                    info=lambda m: said.append(('info', m)),
                    warning=lambda m: said.append(('warning', m))))))
        return sampler.seed

    assert resume(2) == 3
    assert said == [('warning',
                     'IterBasedTrainLoop: resumed at iteration 4 on 1 rank, but the '
                     'checkpoint\'s run had 2: the ranks\' shards of the data differ, so the '
                     'resumed run trains other samples than the interrupted run would have '
                     '(its sampler keeps this run\'s seed). Resume on 2 ranks to go on in '
                     'the interrupted run\'s order')]
    assert hub.get_info(ITER_ORDER_KEY)['world_size'] == 1
    said.clear()
    assert resume(1) == 7                                # same world size: given back
    assert [level for level, _ in said] == ['info']
