"""Every full-size recognition config in configs/stan/ builds and runs.

A ViT-B/16 forward over 8 frames takes 5-20 s on this CPU, so every config is built and run
at full size on PyTorch's ``meta`` device (all shapes, the real code path, no arithmetic),
and one config runs a real CPU forward. The configs' data pipelines run on a generated
video (RandAugment included), and the recipe values are checked against the paper.
"""
import os.path as osp
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, osp.dirname(__file__))
from test_recognition import REPO  # noqa: E402

import stan_mm  # noqa: E402,F401
from mmaction.registry import MODELS, TRANSFORMS  # noqa: E402
from mmaction.structures import ActionDataSample  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

CONFIGS = {  # name: (dataset, depth K, temporal module, frames)
    'k400_self_b16': ('k400', 4, 'attn', 8),
    'k400_self_b16_16f': ('k400', 4, 'attn', 16),
    'k400_conv_b16': ('k400', 4, 'conv', 8),
    'ssv2_self_b16': ('ssv2', 6, 'attn', 8),
    'ssv2_self_b16_16f': ('ssv2', 6, 'attn', 16),
    'ssv2_conv_b16': ('ssv2', 6, 'conv', 8),
}
NUM_CLASSES = {'k400': 400, 'ssv2': 174}


def load(name, random_weights=True):
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'stan', f'{name}.py'))
    init_default_scope(cfg.default_scope)
    if random_weights:
        cfg.model.backbone.pretrained = None
        if 'text_encoder' in cfg.model.cls_head:
            cfg.model.cls_head.text_encoder.pretrained = None
            # classnames.txt is written by tools/data/build_*_lists.py; not here.
            cfg.model.cls_head.classnames = [f'class {i}' for i in range(cfg.num_classes)]
    return cfg


def meta_predict(model_cfg, frames, views=1):
    """Build on the meta device and run Recognizer3D's predict path:
    inputs [1, views, 3, T, 224, 224] -> pred_score [num_classes]."""
    with torch.device('meta'):
        model = MODELS.build(model_cfg).eval()
    x = torch.empty(1, views, 3, frames, 224, 224, device='meta')
    with torch.no_grad():
        out = model(x, [ActionDataSample().set_gt_label(torch.tensor([0]))], mode='predict')
    return model, out[0].pred_score


def test_all_configs_are_covered():
    import glob
    found = {osp.splitext(osp.basename(p))[0]
             for p in glob.glob(osp.join(REPO, 'configs', 'stan', '*.py'))
             if osp.basename(p).startswith(('k400_', 'ssv2_'))}
    assert found == set(CONFIGS)


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_config_recipe_and_full_size_meta_forward(name):
    dataset, depth, temporal, frames = CONFIGS[name]
    raw = load(name, random_weights=False)
    # Recipe (STAN_REFERENCE.md section 4 and the configs' comments).
    bb, head = raw.model.backbone, raw.model.cls_head
    assert (bb.type, bb.arch, bb.depth, bb.temporal_module) == (
        'CLIPSTAN', 'ViT-B/16', depth, temporal)
    assert bb.pretrained == head.text_encoder.pretrained == 'checkpoints/clip/ViT-B-16.pt'
    assert head.type == 'TextClassifierHead' and head.average_clips == 'prob'
    assert head.classnames == raw.classnames
    assert raw.num_classes == NUM_CLASSES[dataset]
    ow = raw.optim_wrapper
    assert ow.type == 'AutoAmpOptimWrapper' and ow.dtype == 'bfloat16'
    assert (ow.optimizer.type, ow.optimizer.lr, ow.optimizer.weight_decay,
            tuple(ow.optimizer.betas)) == ('AdamW', 2e-6, 0.02, (0.9, 0.98))
    assert ow.paramwise_cfg.custom_keys['backbone.branch'].lr_mult == 10
    assert raw.train_dataloader.batch_size * 8 == 128 == raw.auto_scale_lr.base_batch_size
    assert any(s.type == 'CosineAnnealingLR' for s in raw.param_scheduler)
    # the public reproduction's text classifier: bare class names, plain cross-entropy
    assert list(head.templates) == ['{}'] and head.label_smooth_eps == 0.0
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        pipeline = raw[loader].dataset.pipeline
        assert pipeline[1].type == 'UniformSample' and pipeline[1].clip_len == frames
    train_types = [t.type for t in raw.train_dataloader.dataset.pipeline]
    assert ('Flip' in train_types) == (dataset == 'k400')  # SSv2: never flipped
    assert 'ClipRandAugment' in train_types and 'PytorchVideoWrapper' not in train_types
    test = raw.test_dataloader.dataset.pipeline
    assert (test[1].num_clips, test[4].type) == (1, 'ThreeCrop')  # 1x3 views

    # Full-size build and forward (meta device), one view, the config's frame count.
    cfg = load(name)
    model, score = meta_predict(cfg.model, frames)
    assert score.shape == (NUM_CLASSES[dataset], )
    assert model.backbone.depth == depth and len(model.backbone.branch.layers) == depth
    # 3 views (the paper's 1x3) fold into the batch and fuse back to one score.
    _, score = meta_predict(cfg.model, frames, views=3)
    assert score.shape == (NUM_CLASSES[dataset], )


@pytest.mark.parametrize('name', ['k400_self_b16', 'ssv2_conv_b16'])
def test_linear_head_is_a_one_line_switch(tmp_path, name):
    """The commented `cls_head=dict(_base_.linear_head, ...)` line of the configs works."""
    leaf = osp.join(REPO, 'configs', 'stan', f'{name}.py')
    path = tmp_path / 'linear.py'
    path.write_text(f'_base_ = [{leaf!r}]\nmodel = dict(cls_head=dict(_base_.linear_head, '
                    f'num_classes=_base_.num_classes))\n')
    cfg = Config.fromfile(str(path))
    cfg.model.backbone.pretrained = None
    assert cfg.model.cls_head.type == 'I3DHead' and 'classnames' not in cfg.model.cls_head
    model, score = meta_predict(cfg.model, CONFIGS[name][3])
    assert type(model.cls_head).__name__ == 'I3DHead'
    assert score.shape == (cfg.num_classes, )


def test_paramwise_learning_rates_on_full_model():
    """2e-6 for CLIP, 2e-5 (lr_mult 10) for every STAN branch parameter; the frozen text
    tower is not optimized."""
    from mmengine.optim import build_optim_wrapper
    cfg = load('ssv2_self_b16')
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
    optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    lr = {id(p): g['lr'] for g in optimizer.param_groups for p in g['params']}
    seen = 0
    for name, p in model.named_parameters():
        if name.startswith('cls_head.text_encoder'):
            assert id(p) not in lr and not p.requires_grad
        elif name.startswith('backbone.branch'):
            assert lr[id(p)] == pytest.approx(2e-5), name
            seen += 1
        elif name.startswith('backbone.visual'):
            assert lr[id(p)] == pytest.approx(2e-6), name
    assert seen > 6 * 10  # six branch layers' parameters


def test_real_forward_one_full_config():
    """One real (CPU) forward of the full k400_self_b16 model through the data
    preprocessor: batch 1, one view, 2 frames and 3 class names with 16-token prompts (the
    model is the same for any T and class list; 8 frames and 400 classes would take
    minutes here; the meta test covers the configured sizes)."""
    cfg = load('k400_self_b16')
    cfg.model.cls_head.classnames = ['abseiling', 'air drumming', 'yoga']
    cfg.model.cls_head.context_length = 16
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).eval()
    x = torch.randint(0, 256, (1, 3, 2, 224, 224), dtype=torch.uint8)
    sample = ActionDataSample().set_gt_label(torch.tensor([1]))
    with torch.no_grad():
        data = model.data_preprocessor(dict(inputs=[x], data_samples=[sample]))
        out = model(**data, mode='predict')
        emb = model.backbone(data['inputs'][:, 0])
    score = out[0].pred_score
    assert score.shape == (3, ) and torch.isfinite(score).all()
    torch.testing.assert_close(score.sum(), torch.tensor(1.0))
    assert emb.shape == (1, 512)


# ----------------------------------------------------------------------------- pipelines
@pytest.fixture(scope='module')
def still_video(tmp_path_factory):
    """A 24-frame 320x256 mp4 whose frames are all the same image."""
    import cv2
    path = str(tmp_path_factory.mktemp('pipeline') / 'still.mp4')
    rng = np.random.RandomState(0)
    frame = cv2.resize(rng.randint(0, 256, (16, 20, 3)).astype(np.uint8), (320, 256),
                       interpolation=cv2.INTER_NEAREST)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), 10.0, (320, 256))
    for _ in range(24):
        writer.write(frame)
    writer.release()
    return path


def _run_pipeline(pipeline, path):
    from mmengine.dataset import Compose
    results = dict(filename=path, label=0, start_index=0, modality='RGB')
    return Compose([TRANSFORMS.build(t) for t in pipeline])(results)


@pytest.mark.parametrize('name', ['k400_self_b16', 'ssv2_self_b16_16f'])
def test_config_pipelines_run_on_a_video(name, still_video):
    cfg = load(name, random_weights=False)
    frames = CONFIGS[name][3]
    torch.manual_seed(0)
    np.random.seed(0)
    for _ in range(3):  # RandAugment picks different ops each time
        out = _run_pipeline(cfg.train_dataloader.dataset.pipeline, still_video)
        imgs = out['inputs']
        assert imgs.shape == (1, 3, frames, 224, 224) and imgs.dtype == torch.uint8
        # Same augmentation for every frame: a still video stays still (decoding of a
        # still mp4 may differ by a grey level).
        diff = (imgs.int() - imgs[:, :, :1].int()).abs().float().mean()
        assert diff < 2.0, diff
    out = _run_pipeline(cfg.val_dataloader.dataset.pipeline, still_video)
    assert out['inputs'].shape == (1, 3, frames, 224, 224)
    out = _run_pipeline(cfg.test_dataloader.dataset.pipeline, still_video)
    assert out['inputs'].shape == (3, 3, frames, 224, 224)  # 1 clip x 3 crops
