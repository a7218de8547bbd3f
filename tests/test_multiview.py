"""Multi-view testing: 1x3 and 4x3 views, softmax per view then mean over views.

The fusion is MMAction2 1.2.0's own (``Recognizer3D`` folds views into the batch,
``BaseHead.average_clip`` with ``average_clips='prob'``); these tests pin down that it does
what the paper's protocol says, on real videos through the real pipeline.
"""
import argparse
import os.path as osp
import sys

import pytest
import torch

sys.path.insert(0, osp.dirname(__file__))
from test_recognition import REPO, load_tool, write_tiny_config  # noqa: E402

import stan_mm  # noqa: E402,F401
from mmaction.registry import DATASETS, MODELS  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.dataset import pseudo_collate  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

test_tool = load_tool('tools/test.py', 'stan_test_tool_mv')


def cfg_options(*options):
    """Parse ``--cfg-options`` exactly as tools/test.py does (with the action its parser
    uses, stan_mm.utils.cli.ConfigOptionsAction)."""
    p = argparse.ArgumentParser()
    p.add_argument('--cfg-options', nargs='+', action=test_tool.ConfigOptionsAction)
    return p.parse_args(['--cfg-options', *options]).cfg_options


def test_average_clip_prob_is_mean_of_per_view_softmax():
    head = MODELS.build(dict(type='I3DHead', num_classes=5, in_channels=8, spatial_type=None,
                             average_clips='prob'))
    scores = torch.randn(2 * 6, 5) * 3                  # 2 samples x 6 views, views contiguous
    fused = head.average_clip(scores, num_segs=6)
    for n in range(2):
        ref = sum(torch.softmax(scores[n * 6 + v], dim=0) for v in range(6)) / 6
        torch.testing.assert_close(fused[n], ref)
    # ... and not the softmax of the mean score ('score' averaging), which differs here.
    assert not torch.allclose(fused[0], torch.softmax(scores[:6].mean(0), dim=0), atol=1e-3)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('multiview')
    # 30 frames: UniformSample's 4 test clips start at distinct offsets of each segment
    # (offsets are int(k * segment / 5); with 10 frames clips 0 and 1 would coincide).
    path = write_tiny_config(tmp, num_train=2, num_val=2, video_frames=30)
    cfg = Config.fromfile(path)
    init_default_scope(cfg.default_scope)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    with torch.no_grad():  # make the (zero-initialized) temporal modules matter
        for name, p in model.named_parameters():
            if name.startswith('backbone.branch') and 'temporal' in name:
                p.normal_(0, 0.2)
    return cfg, model.eval()


def _views(cfg, clips, crop_type):
    cfg = Config(cfg.to_dict())
    cfg.merge_from_dict(cfg_options(f'test_dataloader.dataset.pipeline.1.num_clips={clips}',
                                    f'test_dataloader.dataset.pipeline.4.type={crop_type}'))
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    return pseudo_collate([dataset[0]])


@pytest.mark.parametrize('clips, crop_type, n_views', [(1, 'ThreeCrop', 3),
                                                       (4, 'ThreeCrop', 12),
                                                       (1, 'CenterCrop', 1)])
def test_multiview_score_is_mean_of_per_view_softmax(tiny, clips, crop_type, n_views):
    cfg, model = tiny
    batch = _views(cfg, clips, crop_type)
    inputs = batch['inputs'][0]
    assert inputs.shape == (n_views, 3, 4, 32, 32)         # [views, C, T, H, W]
    with torch.no_grad():
        fused = model.test_step(batch)[0].pred_score          # [num_classes]
        # Independent reference: one model call per view, softmax, mean.
        data = model.data_preprocessor(batch, training=False)
        per_view = []
        for v in range(n_views):
            view = data['inputs'][:, v]                        # [1, C, T, H, W]
            per_view.append(torch.softmax(model.cls_head(model.backbone(view)), dim=1)[0])
    per_view = torch.stack(per_view)
    torch.testing.assert_close(fused, per_view.mean(dim=0), rtol=1e-5, atol=1e-6)
    if n_views > 1:
        # The views provably differ: pixels and scores of every pair of views.
        for a in range(n_views):
            for b in range(a + 1, n_views):
                assert not torch.equal(inputs[a], inputs[b]), (a, b)
                assert (per_view[a] - per_view[b]).abs().max() > 1e-6, (a, b)


@pytest.mark.parametrize('config', ['k400_self_b16.py', 'ssv2_self_b16.py'])
def test_documented_view_switches_on_full_configs(config):
    """The commands documented in the dataset configs switch the views of the real configs
    (through tools/test.py's own option handling)."""
    path = osp.join(REPO, 'configs', 'stan', config)
    default = Config.fromfile(path).test_dataloader.dataset.pipeline
    assert default[1].type == 'UniformSample' and default[1].num_clips == 1
    assert default[4].type == 'ThreeCrop'  # the paper's 1x3

    def switched(*options):
        args = argparse.Namespace(cfg_options=cfg_options(*options), launcher='none',
                                  work_dir='/tmp/unused', checkpoint=__file__, dump=None)
        return test_tool.merge_args(Config.fromfile(path), args).test_dataloader.dataset.pipeline

    p = switched('test_dataloader.dataset.pipeline.1.num_clips=4')
    assert (p[1].type, p[1].num_clips, p[1].test_mode, p[4].type) == (
        'UniformSample', 4, True, 'ThreeCrop')
    p = switched('test_dataloader.dataset.pipeline.4.type=CenterCrop')
    assert (p[1].num_clips, p[4].type, p[4].crop_size) == (1, 'CenterCrop', 224)


def test_tencrop_is_refused_where_training_never_mirrors():
    """TenCrop's 10 views include 5 horizontally mirrored crops: fine for K400 (trained
    with Flip), wrong for SSv2's direction-sensitive labels (trained without it)."""
    from stan_mm.apis.video import inference_pipeline, trains_with_flip

    def views(config, v):
        cfg = Config.fromfile(osp.join(REPO, 'configs', 'stan', config))
        args = argparse.Namespace(cfg_options=None, launcher='none', work_dir='/tmp/unused',
                                  checkpoint=__file__, dump=None, views=v)
        return cfg, test_tool.merge_args(cfg, args).test_dataloader.dataset.pipeline

    cfg, p = views('k400_self_b16.py', '2x10')
    assert trains_with_flip(cfg) is True
    assert (p[1].num_clips, p[4].type) == (2, 'TenCrop')
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'stan', 'ssv2_self_b16.py'))
    assert trains_with_flip(cfg) is False
    with pytest.raises(ValueError, match='TenCrop mirrors 5 of its 10 views.*Use 1x3'):
        views('ssv2_self_b16.py', '1x10')
    with pytest.raises(ValueError, match='TenCrop mirrors'):
        inference_pipeline(cfg, '1x10')
    _, p = views('ssv2_self_b16.py', '4x3')                     # other views unaffected
    assert (p[1].num_clips, p[4].type) == (4, 'ThreeCrop')
    # SSv2 trained with a label-swapping Flip (MMAction2's own SSv2 recipes): a mirrored
    # view is another class, which TenCrop does not know, so it is refused as well
    swap = Config.fromfile(osp.join(REPO, 'configs', 'stan', 'ssv2_self_b16.py'))
    swap.train_dataloader.dataset.pipeline.insert(
        3, dict(type='Flip', flip_ratio=0.5, flip_label_map={86: 87, 87: 86}))
    assert trains_with_flip(swap) is False
    with pytest.raises(ValueError, match='TenCrop mirrors.*flip_label_map'):
        inference_pipeline(swap, '1x10')
    # a retrieval model embeds one view: 1x3 would reach it as one clip of 3 x T frames
    with pytest.raises(ValueError, match='one view per video'):
        views('msrvtt_self_b32.py', '1x3')
    _, p = views('msrvtt_self_b32.py', '1x1')
    assert [t.type for t in p if 'Crop' in t.type] == ['CenterCrop']


def test_single_clip_sampler_takes_crop_views_only():
    """The motion quickstart tests on SymmetricSample (one clip): 1x3 changes the crop,
    4x3 is refused naming the sampler, 1x10 is refused (trained without Flip)."""
    from stan_mm.apis.video import set_config_views, config_test_pipeline
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'quickstart', 'motion_stan_tiny.py'))
    pipe = set_config_views(cfg, config_test_pipeline(cfg), '1x3')
    assert [t['type'] for t in pipe if 'Crop' in t['type']] == ['ThreeCrop']
    sampler = [t for t in pipe if t['type'] == 'SymmetricSample'][0]
    assert 'num_clips' not in sampler
    with pytest.raises(ValueError, match=r"'4x3'.*SymmetricSample.*one clip.*use 1x3"):
        set_config_views(cfg, config_test_pipeline(cfg), '4x3')
    with pytest.raises(ValueError, match='TenCrop mirrors'):
        set_config_views(cfg, config_test_pipeline(cfg), '1x10')


def test_pipeline_views_match_fused_batch_layout(tiny):
    """Recognizer3D folds [N, V, ...] into [N*V, ...] sample-major, which is the layout
    average_clip assumes (views of one sample contiguous)."""
    cfg, model = tiny
    b1 = _views(cfg, 1, 'ThreeCrop')
    batch = dict(inputs=b1['inputs'] * 2, data_samples=b1['data_samples'] * 2)
    batch['inputs'][1] = batch['inputs'][1].flip(-1)   # a different second sample
    with torch.no_grad():
        out = model.test_step(batch)
        singles = [model.test_step(dict(inputs=[x], data_samples=[s]))[0].pred_score
                   for x, s in zip(batch['inputs'], b1['data_samples'] * 2)]
    for o, s in zip(out, singles):
        torch.testing.assert_close(o.pred_score, s, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out[0].pred_score, out[1].pred_score)


def test_mean_class_accuracy_averages_over_the_test_classes():
    """mean1 by hand: class 0 has 2 of 2 right, class 1 has 1 of 2 right -> 0.75. Class 2
    is predicted once but has no test sample: MMAction2's AccMetric counts it as a class
    with accuracy 0 (0.5); the recognition configs' RecognitionAccMetric does not."""
    import numpy as np
    from mmaction.evaluation.metrics import AccMetric
    from stan_mm.evaluation import RecognitionAccMetric
    scores = [np.array(s) for s in ([.9, .05, .05, 0], [.9, .05, .05, 0], [.05, .9, .05, 0],
                                    [.05, .05, .9, 0])]
    labels = [0, 0, 1, 1]
    got = RecognitionAccMetric().calculate(scores, labels)
    assert got['mean1'] == pytest.approx(0.75) and got['top1'] == pytest.approx(0.75)
    assert AccMetric().calculate(scores, labels)['mean1'] == pytest.approx(0.5)  # upstream
    # every class present: both agree (random scores, 7 classes, 50 samples)
    gen = np.random.default_rng(0)
    scores = list(gen.random((50, 7)))
    labels = [int(c) for c in gen.permutation(np.arange(50) % 7)]
    assert RecognitionAccMetric().calculate(scores, labels)['mean1'] == pytest.approx(
        AccMetric().calculate(scores, labels)['mean1'])
    for config in ('k400_self_b16.py', 'ssv2_self_b16.py'):
        cfg = Config.fromfile(osp.join(REPO, 'configs', 'stan', config))
        assert cfg.test_evaluator['type'] == 'RecognitionAccMetric'


def test_accuracy_refuses_labels_the_model_cannot_score():
    """A label -1 (a list line without a label, in MMAction2's VideoDataset) or >= the
    number of scored classes: MMAction2's AccMetric reports a number; ours refuses."""
    import numpy as np
    from mmaction.evaluation.metrics import AccMetric
    from stan_mm.evaluation import RecognitionAccMetric
    scores = [np.array(s) for s in ([.8, .1, .1], [.1, .8, .1], [.1, .1, .8])]
    for labels, shown in (([0, -1, 2], 'sample 1: -1'), ([0, 1, 3], 'sample 2: 3')):
        AccMetric().calculate(scores, labels)           # upstream: a number, no word
        with pytest.raises(ValueError, match=f'1 of 3 samples have a label outside 0..2.*'
                                             f'{shown}'):
            RecognitionAccMetric().calculate(scores, labels)
    assert RecognitionAccMetric().calculate(scores, [0, 1, 2])['top1'] == pytest.approx(1.0)


def test_recognizer_video_embedding_averages_each_videos_own_views(tiny):
    """stan_mm.apis.embed_video_batch on two videos x 4x3 views in one batch: each video's
    embedding is the normalized mean of its own normalized per-view backbone outputs, each
    view run through the backbone alone, one video at a time."""
    import torch.nn.functional as F
    from stan_mm.apis.embed import embed_video_batch
    cfg, model = tiny
    cfg = Config(cfg.to_dict())
    cfg.merge_from_dict(cfg_options('test_dataloader.dataset.pipeline.1.num_clips=4'))
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    samples = [dataset[0], dataset[1]]
    got = embed_video_batch(model, samples)                    # [2, E]
    refs = []
    with torch.no_grad():
        for sample in samples:
            views = model.data_preprocessor(pseudo_collate([sample]), False)['inputs'][0]
            assert views.shape == (12, 3, 4, 32, 32)           # [V, C, T, H, W]
            per_view = torch.cat([F.normalize(model.backbone(views[v:v + 1]), dim=-1)
                                  for v in range(len(views))])  # [V, E]
            refs.append(F.normalize(per_view.mean(dim=0), dim=0))
    torch.testing.assert_close(got, torch.stack(refs), rtol=1e-5, atol=1e-5)
    # the two videos are told apart, so a mix-up of views between them would show
    assert (refs[0] - refs[1]).abs().max() > 1e-3


def test_test_tool_refuses_views_with_one_error_line(tmp_path):
    """tools/test.py --views 1x10 on an SSv2 config: exit status 2 and the reason on one
    line, no traceback (the refusal happens before any weights are read)."""
    import subprocess
    import sys
    ckpt = tmp_path / 'unused.pth'
    ckpt.write_bytes(b'')
    r = subprocess.run([sys.executable, osp.join(REPO, 'tools', 'test.py'),
                        osp.join(REPO, 'configs', 'stan', 'ssv2_self_b16.py'), str(ckpt),
                        '--views', '1x10', '--work-dir', str(tmp_path / 'w')],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "test.py: error: ViewsError: views '1x10': TenCrop mirrors" in r.stderr
    assert 'Traceback' not in r.stderr
    # a checkpoint path that does not exist: the same kind of ending
    r = subprocess.run([sys.executable, osp.join(REPO, 'tools', 'test.py'),
                        osp.join(REPO, 'configs', 'stan', 'ssv2_self_b16.py'),
                        str(tmp_path / 'nope.pth'), '--work-dir', str(tmp_path / 'w')],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    assert (f"test.py: error: CommandLineError: checkpoint not found: "
            f"'{tmp_path / 'nope.pth'}'") in r.stderr
    assert 'Traceback' not in r.stderr


def test_retrieval_evaluator_options_reach_a_list_evaluator():
    """docs/retrieval.md's test_evaluator.dsl=True also works where test_evaluator is a
    list (the retrieval quickstart: recall metric + twin metric)."""
    path = osp.join(REPO, 'configs', 'quickstart', 'motion_retrieval_tiny.py')
    args = argparse.Namespace(cfg_options={'test_evaluator.dsl': True,
                                           'test_evaluator.qb_norm.k': 3},
                              launcher='none', work_dir='/tmp/unused', checkpoint=__file__,
                              dump=None, views=None)
    cfg = test_tool.merge_args(Config.fromfile(path), args)
    types = [e['type'] for e in cfg.test_evaluator]
    i = types.index('RetrievalRecallMetric')
    assert cfg.test_evaluator[i]['dsl'] is True and cfg.test_evaluator[i]['qb_norm']['k'] == 3
    assert all('dsl' not in e for j, e in enumerate(cfg.test_evaluator) if j != i)
    # a single-dict evaluator is untouched; an explicit index passes as written
    single = osp.join(REPO, 'configs', 'stan', 'msrvtt_self_b32.py')
    cfg = test_tool.merge_args(Config.fromfile(single), args)
    assert cfg.test_evaluator['dsl'] is True
    args.cfg_options = {f'test_evaluator.{i}.dsl': True}
    assert test_tool.merge_args(Config.fromfile(path), args).test_evaluator[i]['dsl'] is True
    # a tuple of evaluators takes the options too; 'type' (which entry?) is refused
    cfg = Config.fromfile(path)
    cfg.test_evaluator = tuple(cfg.test_evaluator)
    args.cfg_options = {'test_evaluator.dsl': True}
    assert test_tool.merge_args(cfg, args).test_evaluator[i]['dsl'] is True
    from stan_mm.utils.cli import ConfigOptionError
    args.cfg_options = {'test_evaluator.type': 'AccMetric'}
    with pytest.raises(ConfigOptionError, match=r'test_evaluator\.type: test_evaluator is a '
                                                r'list of .*test_evaluator\.<index>\.type'):
        test_tool.merge_args(Config.fromfile(path), args)
