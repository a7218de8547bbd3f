"""mmengine's dataset wrappers (``ConcatDataset``, ``RepeatDataset``) around the project's
datasets, in the tools and the retrieval metric: two retrieval test sets concatenated into
one gallery, ``tools/test.py --views`` and ``tools/extract_features.py --split`` on a
wrapped test set, the crop check of every dataset of a split."""
import copy
import os.path as osp

import pytest
import torch

import stan_mm  # noqa: F401
from mmengine.config import Config
from mmengine.registry import init_default_scope

from stan_mm.apis.video import CropSizeError, check_config_crops, split_items
from stan_mm.evaluation.retrieval_metric import RetrievalRecallMetric
from stan_mm.testing import load_script

init_default_scope('mmaction')

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
QUICKSTART = osp.join(REPO, 'configs', 'quickstart')
GEN = dict(num_train=4, num_val=4, num_test=6, num_frames=8, size=32, seed=0,
           captions_per_video=2, progress=False)
# the retrieval datasets' metainfo differs per split (their sizes, the caption -> video
# map): mmengine's ConcatDataset refuses that unless told to ignore those keys
IGNORE = ['num_videos', 'num_captions', 'text_to_video']


@pytest.fixture(scope='module')
def motion_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp('wrappers') / 'motion')


def retrieval_cfg(root, concat=True):
    cfg = Config.fromfile(osp.join(QUICKSTART, 'motion_retrieval_tiny.py'))
    for split in ('train', 'val', 'test'):
        loader = cfg[f'{split}_dataloader']
        loader.num_workers, loader.persistent_workers = 0, False
        loader.dataset.data_root, loader.dataset.generate = root, dict(GEN)
    if concat:
        test = copy.deepcopy(cfg.test_dataloader.dataset)
        val = copy.deepcopy(test)
        val.split = 'val'
        cfg.test_dataloader.dataset = dict(type='ConcatDataset', datasets=[test, val],
                                           ignore_keys=IGNORE)
    return cfg


# ------------------------------------------------------------------ retrieval metric
def _samples(features, names, first_idx=0):
    return [dict(sample_idx=first_idx + i, filename=name, video_feature=video,
                 text_feature=text) for i, (name, (video, text)) in
            enumerate(zip(names, features))]


def test_metric_tells_apart_the_samples_of_concatenated_datasets():
    """Two test sets in a ConcatDataset: each numbers its samples 0..n-1 (mmengine passes
    the inner sample_idx on). The metric used to keep one sample per sample_idx and stop
    with "10 distinct samples ... dataset of size 14 ... check the sampler"; it now ranks
    all 14 videos, as it does when the same samples carry distinct indices."""
    g = torch.Generator().manual_seed(0)
    feats = [(torch.randn(8, generator=g), torch.randn(2, 8, generator=g))
             for _ in range(14)]
    names = [f'/data/a/v{i}.mp4' for i in range(10)] + [f'/data/b/v{i}.mp4'
                                                        for i in range(4)]
    concat = _samples(feats[:10], names[:10]) + _samples(feats[10:], names[10:])
    distinct = _samples(feats[:10], names[:10]) + _samples(feats[10:], names[10:], 10)

    def evaluate(samples):
        metric = RetrievalRecallMetric()
        metric.results = list(samples)
        return metric.evaluate(14)

    assert evaluate(concat) == evaluate(distinct)
    # the padding of DefaultSampler(round_up=True), a sample seen twice, is still dropped
    assert evaluate(concat + concat[:2]) == evaluate(distinct)


def test_concatenated_test_sets_without_filename_are_refused_with_the_fix():
    g = torch.Generator().manual_seed(1)
    samples = [dict(sample_idx=i % 3, video_feature=torch.randn(4, generator=g),
                    text_feature=torch.randn(1, 4, generator=g)) for i in range(6)]
    metric = RetrievalRecallMetric()
    metric.results = samples
    with pytest.raises(ValueError, match=r"ConcatDataset.*'filename'"):
        metric.evaluate(6)


def test_runner_tests_two_concatenated_retrieval_test_sets(motion_root, tmp_path):
    """The quickstart retrieval model tested on test + val as one gallery (6 + 4 videos,
    2 captions each) through mmengine's Runner."""
    from mmengine.runner import Runner
    cfg = retrieval_cfg(motion_root)
    cfg.test_dataloader.batch_size = 3
    cfg.test_evaluator = [dict(type='RetrievalRecallMetric')]
    cfg.work_dir = str(tmp_path / 'work')
    cfg.launcher = 'none'
    runner = Runner.from_cfg(cfg)
    assert len(runner.test_dataloader.dataset) == 10
    metrics = runner.test()
    # 20 captions over 10 videos: mean ranks lie in [1, 10]
    assert 1 <= metrics['retrieval/t2v_MnR'] <= 10
    assert 1 <= metrics['retrieval/v2t_MnR'] <= 10


# ------------------------------------------------------------------ tools on wrappers
def test_extract_features_split_reads_every_dataset_of_a_concat(motion_root):
    """``split_items`` (tools/extract_features.py --split) built the ConcatDataset config
    with ``pipeline=[]`` and stopped in ConcatDataset.__init__ (unexpected keyword
    'pipeline'); it now lists the videos and captions of each dataset in order."""
    test_v, test_t, test_t2v = split_items(retrieval_cfg(motion_root, concat=False), 'test')
    val_cfg = retrieval_cfg(motion_root, concat=False)
    val_cfg.test_dataloader.dataset.split = 'val'
    val_v, val_t, val_t2v = split_items(val_cfg, 'test')
    videos, texts, t2v = split_items(retrieval_cfg(motion_root), 'test')
    assert (len(test_v), len(val_v)) == (6, 4)
    assert videos == test_v + val_v
    assert texts == test_t + val_t
    assert t2v == test_t2v + [v + len(test_v) for v in val_t2v]
    # a RepeatDataset adds nothing to the list: its dataset, once
    repeat = retrieval_cfg(motion_root, concat=False)
    repeat.test_dataloader.dataset = dict(type='RepeatDataset', times=3,
                                          dataset=repeat.test_dataloader.dataset)
    assert split_items(repeat, 'test') == (test_v, test_t, test_t2v)


@pytest.mark.parametrize('wrapper', ['RepeatDataset', 'ConcatDataset'])
def test_test_views_reach_every_dataset_of_a_wrapped_test_set(wrapper):
    """``tools/test.py --views`` read ``cfg.test_dataloader.dataset.pipeline`` and stopped
    with AttributeError on a wrapped test set; every wrapped dataset now gets the views."""
    test_tool = load_script(osp.join(REPO, 'tools', 'test.py'))
    cfg = Config.fromfile(osp.join(QUICKSTART, 'motion_stan_tiny.py'))
    ds = cfg.test_dataloader.dataset
    cfg.test_dataloader.dataset = (
        dict(type='RepeatDataset', times=2, dataset=ds) if wrapper == 'RepeatDataset'
        else dict(type='ConcatDataset', datasets=[ds, copy.deepcopy(ds)]))
    test_tool.set_views(cfg, '1x3')
    wrapped = cfg.test_dataloader.dataset
    leaves = [wrapped.dataset] if wrapper == 'RepeatDataset' else wrapped.datasets
    for leaf in leaves:
        crops = [t['type'] for t in leaf['pipeline'] if 'Crop' in t['type']]
        assert crops == ['ThreeCrop']


def test_crop_check_covers_every_dataset_of_a_concat():
    """train.py's crop check read only what ``dataset_cfg`` found: nothing under a
    ConcatDataset. A crop larger than the resized frame in its second dataset is refused."""
    cfg = Config.fromfile(osp.join(QUICKSTART, 'motion_stan_tiny.py'))
    ds = cfg.val_dataloader.dataset
    bad = copy.deepcopy(ds)
    for t in bad.pipeline:
        if t['type'] == 'CenterCrop':
            t['crop_size'] = 48          # after Resize(scale=(-1, 32))
    cfg.val_dataloader.dataset = dict(type='ConcatDataset', datasets=[ds, bad])
    with pytest.raises(CropSizeError, match='CenterCrop'):
        check_config_crops(cfg, splits=('val', ))
