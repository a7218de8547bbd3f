"""TwinGroupSampler and SyntheticMotionDataset.twin_groups (stan_mm/datasets/samplers.py).

Twins are checked on the decoded videos (one is the other's frames reversed, up to codec
error), independently of the annotation records the dataset reads.
"""
import os.path as osp

import decord
import numpy as np
import pytest
from mmengine.dataset import BaseDataset

import stan_mm  # noqa: F401
from stan_mm.datasets import samplers as samplers_mod
from stan_mm.datasets.motion_dataset import SyntheticMotionDataset
from stan_mm.datasets.samplers import TwinGroupSampler

GEN = dict(num_train=12, num_val=2, num_test=2, num_frames=6, size=32, captions_per_video=2,
           seed=5, progress=False)


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('twins') / 'motion')
    return SyntheticMotionDataset(root, 'train', pipeline=[], generate=GEN)


def _frames(path):
    vr = decord.VideoReader(path)
    return vr.get_batch(list(range(len(vr)))).asnumpy().astype(np.float32)


def test_twin_groups_are_reversed_videos_with_partner_labels(dataset):
    groups = dataset.twin_groups()
    assert sorted(i for g in groups for i in g) == list(range(len(dataset)))
    assert all(len(g) == 2 for g in groups) and len(groups) == GEN['num_train'] // 2
    for a, b in groups:
        ia, ib = dataset.get_data_info(a), dataset.get_data_info(b)
        assert ia['label'] ^ 1 == ib['label']
        fa, fb = _frames(ia['filename']), _frames(ib['filename'])
        reversed_err = np.abs(fa - fb[::-1]).mean()
        assert reversed_err < 8.0 and np.abs(fa - fb).mean() > reversed_err


def _batches(indices, size):
    return [indices[i:i + size] for i in range(0, len(indices), size)]


def test_every_batch_holds_whole_groups_and_every_index_once(dataset):
    sampler = TwinGroupSampler(dataset, shuffle=True, seed=0)
    groups = {frozenset(g) for g in dataset.twin_groups()}
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(len(dataset))) and len(sampler) == len(order)
        for batch in _batches(order, 4):
            for j in range(0, len(batch), 2):
                assert frozenset(batch[j:j + 2]) in groups


def test_order_is_seeded_and_changes_per_epoch(dataset):
    a, b = TwinGroupSampler(dataset, seed=1), TwinGroupSampler(dataset, seed=1)
    first = list(a)
    assert first == list(b)
    a.set_epoch(1)
    assert list(a) != first and sorted(list(a)) == sorted(first)
    assert list(TwinGroupSampler(dataset, shuffle=False)) == list(range(len(dataset)))


def test_short_groups_are_served_last():
    class Odd(BaseDataset):
        def __init__(self):
            super().__init__(lazy_init=True, serialize_data=False)
            self.data_list, self._fully_initialized = [dict(i=i) for i in range(5)], True

        def __len__(self):
            return 5

        def twin_groups(self):
            return [[4], [0, 1], [2, 3]]
    order = list(TwinGroupSampler(Odd(), seed=0))
    assert order[-1] == 4 and sorted(order) == list(range(5))
    assert {frozenset(order[0:2]), frozenset(order[2:4])} == {frozenset({0, 1}),
                                                              frozenset({2, 3})}


def test_ranks_split_the_groups(dataset, monkeypatch):
    seen = []
    for rank in range(2):
        monkeypatch.setattr(samplers_mod, 'get_dist_info', lambda r=rank: (r, 2))
        s = TwinGroupSampler(dataset, seed=3)
        seen.append(list(s))
        assert len(s) == len(seen[-1])
    groups = [frozenset(g) for g in dataset.twin_groups()]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(len(dataset)))  # 6 groups, 3 per rank
    for order in seen:
        assert all(frozenset(order[j:j + 2]) in groups for j in range(0, len(order), 2))


class Uneven(BaseDataset):
    """Groups of 1 and 2 samples (twins missing), as in the helper's reproduction."""

    def __init__(self, groups):
        super().__init__(lazy_init=True, serialize_data=False)
        self.groups = groups
        n = sum(len(g) for g in groups)
        self.data_list, self._fully_initialized = [dict(i=i) for i in range(n)], True

    def __len__(self):
        return len(self.data_list)

    def twin_groups(self):
        return self.groups


@pytest.mark.parametrize('world_size', [2, 3])
@pytest.mark.parametrize('shuffle', [False, True])
def test_ranks_get_equal_sample_counts_when_groups_differ_in_size(monkeypatch, world_size,
                                                                  shuffle):
    # unshuffled, 2 ranks: groups 0, 2, 4 (1 sample each) go to rank 0 and groups 1, 3, 5
    # (2 each) to rank 1: 3 vs 6 samples, i.e. 2 vs 3 batches of 2 -- a hang under DDP
    groups = [[0], [1, 2], [3], [4, 5], [6], [7, 8]]
    orders = []
    for rank in range(world_size):
        monkeypatch.setattr(samplers_mod, 'get_dist_info', lambda r=rank: (r, world_size))
        s = TwinGroupSampler(Uneven(groups), shuffle=shuffle, seed=5)
        orders.append(list(s))
        assert len(s) == len(orders[-1])
    assert len({len(o) for o in orders}) == 1
    assert set().union(*orders) == set(range(9))          # nothing lost
    for order in orders:          # whole groups stay together (first occurrences)
        for g in groups:
            if len(g) == 2 and g[0] in order:
                assert order[order.index(g[0]) + 1] == g[1]
    if not shuffle and world_size == 2:
        assert orders[0] == [0, 3, 6, 0, 3, 6] and orders[1] == [1, 2, 4, 5, 7, 8]
    # without round_up the counts may differ (as DefaultSampler's)
    monkeypatch.setattr(samplers_mod, 'get_dist_info', lambda: (0, 2))
    assert len(TwinGroupSampler(Uneven(groups), shuffle=False, round_up=False)) == 3


def test_clear_errors():
    class NoGroups(BaseDataset):
        def __init__(self):
            super().__init__(lazy_init=True, serialize_data=False)

        def __len__(self):
            return 3
    with pytest.raises(TypeError, match='twin_groups.*DefaultSampler'):
        TwinGroupSampler(NoGroups())

    class Bad(NoGroups):
        def twin_groups(self):
            return [[0, 1], [1, 2]]
    with pytest.raises(ValueError, match='exactly once'):
        TwinGroupSampler(Bad())


def test_builds_from_a_dataloader_config(dataset):
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner
    with DefaultScope.overwrite_default_scope('mmaction'):  # as configs set default_scope
        loader = Runner.build_dataloader(dict(
            batch_size=4, num_workers=0, sampler=dict(type='TwinGroupSampler', shuffle=True),
            dataset=dataset, collate_fn=dict(type='default_collate')), seed=0)
    assert isinstance(loader.sampler, TwinGroupSampler)
    assert osp.isdir(dataset.motion_root)


def test_text_dataset_pairs_the_twins_kth_captions(dataset):
    """Retrieval training set (one sample per caption): a group holds the k-th caption of a
    video and the k-th caption of its reversed twin, which differ only in the motion."""
    from stan_mm.datasets.motion_dataset import SyntheticMotionTextDataset
    text_ds = SyntheticMotionTextDataset(dataset.motion_root, 'train', pipeline=[],
                                         generate=GEN)
    groups = text_ds.twin_groups()
    assert sorted(i for g in groups for i in g) == list(range(len(text_ds)))
    assert len(groups) == GEN['num_train'] // 2 * GEN['captions_per_video']
    video_twins = {frozenset(osp.basename(dataset.get_data_info(i)['filename']) for i in g)
                   for g in dataset.twin_groups()}
    for a, b in groups:
        ia, ib = text_ds.get_data_info(a), text_ds.get_data_info(b)
        names = frozenset(osp.basename(i['filename']) for i in (ia, ib))
        assert names in video_twins
        wa, wb = ia['text'].split(), ib['text'].split()
        assert wa != wb and len(set(wa) ^ set(wb)) <= 6, (ia['text'], ib['text'])
    sampler = TwinGroupSampler(text_ds, shuffle=True, seed=1)
    order = list(sampler)
    assert sorted(order) == list(range(len(text_ds)))
    pairs = {frozenset(g) for g in groups}
    assert all(frozenset(order[j:j + 2]) in pairs for j in range(0, len(order), 2))
