"""Recognition: heads on dummy features, the tiny recognizer, training through tools/train.py.

Also holds the helpers that the other recognition tests import (``write_videos``,
``write_tiny_config``): small mp4 videos written with OpenCV and a tiny config that inherits
the real ``configs/_base_`` files and only shrinks sizes.
"""
import json
import math
import os
import os.path as osp

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import stan_mm  # noqa: F401  (registers everything)
from mmaction.registry import MODELS
from mmaction.structures import ActionDataSample
from stan_mm.testing import load_script, tiny_clip, tiny_clip_cfg

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..'))
EMBED = tiny_clip_cfg()['embed_dim']


# ============================================================================ helpers
def assert_same_dumps(dump_a, dump_b, list_file, num):
    """Two ``tools/test.py --dump`` files of one tiny 3-class, 3-crop test set: ``num``
    results each, in the list's order, with the list's labels and equal scores.
    Returns the two loaded dumps."""
    import pickle
    with open(dump_a, 'rb') as f:
        a = pickle.load(f)
    with open(dump_b, 'rb') as f:
        b = pickle.load(f)
    labels = [int(line.split()[1]) for line in open(list_file)]
    assert len(a) == len(b) == num
    assert [int(d['gt_label']) for d in a] == labels == [int(d['gt_label']) for d in b]
    for x, y in zip(a, b):
        assert x['pred_score'].shape == (3, )  # 1 clip x 3 crops fused into one score
        torch.testing.assert_close(x['pred_score'], y['pred_score'], rtol=1e-5, atol=1e-6)
    return a, b


def run_logged(cmd, log, cwd=REPO, **env_extra):
    """Run ``cmd`` (one thread per process, stan_mm from this checkout first on the path),
    its output into the file ``log``; assert it succeeds; return the output."""
    import subprocess
    env = dict(os.environ, OMP_NUM_THREADS='1', **env_extra,
               PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get('PYTHONPATH')])))
    with open(log, 'w') as f:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT,
                              timeout=400)
    text = open(log).read()
    assert proc.returncode == 0, f'{" ".join(map(str, cmd))} failed:\n{text[-6000:]}'
    return text


def load_tool(rel_path, name):
    return load_script(rel_path, name)


def write_videos(folder, n, num_frames=10, size=(64, 48), seed=0, num_classes=3):
    """``n`` small mp4 videos (mp4v), ``size`` = (width, height): a bright square moving
    over a noisy background, its colour depends on the label. Wider than high, so that
    ThreeCrop's three crops differ (decord wants widths of a multiple of 32).
    Returns [(file name, label)]."""
    import cv2
    os.makedirs(folder, exist_ok=True)
    rng = np.random.RandomState(seed)
    items = []
    for i in range(n):
        label = i % num_classes
        name = f'v{seed}_{i}.mp4'
        writer = cv2.VideoWriter(osp.join(folder, name), cv2.VideoWriter_fourcc(*'mp4v'),
                                 8.0, tuple(size))
        assert writer.isOpened()
        colour = np.array([(80 * label) % 256, 200, (255 - 70 * label) % 256], np.uint8)
        for t in range(num_frames):
            frame = rng.randint(0, 60, (size[1], size[0], 3)).astype(np.uint8)
            x = (3 * t + 5 * i) % (size[0] - 10)
            frame[10:20, x:x + 10] = colour
            writer.write(frame)
        writer.release()
        items.append((name, label))
    return items


def write_tiny_config(tmp, num_train=6, num_val=5, num_frames=4, num_classes=3,
                      head='text', max_epochs=1, video_frames=10):
    """Videos, lists, classnames.txt and a tiny config (tiny CLIP, depth 2, ``num_frames``
    frames of 32x32) inheriting the real _base_ files. Returns the config path."""
    tmp = str(tmp)
    videos = osp.join(tmp, 'videos')
    train = write_videos(videos, num_train, video_frames, seed=1, num_classes=num_classes)
    val = write_videos(videos, num_val, video_frames, seed=2, num_classes=num_classes)
    for split, items in (('train', train), ('val', val)):
        with open(osp.join(tmp, f'{split}_list.txt'), 'w') as f:
            f.writelines(f'{name} {label}\n' for name, label in items)
    with open(osp.join(tmp, 'classnames.txt'), 'w') as f:
        f.writelines(f'class {chr(97 + c)}\n' for c in range(num_classes))
    base = osp.join(REPO, 'configs', '_base_')
    head_cfg = (
        "dict(classnames=f'{root}/classnames.txt', in_channels=%d, context_length=16,\n"
        "             text_encoder=dict(arch=tiny, pretrained=None))" % EMBED
        if head == 'text' else
        "dict(_base_.linear_head, num_classes=%d, in_channels=%d)" % (num_classes, EMBED))
    cfg = f'''
_base_ = [
    {osp.join(base, 'models', 'stan_recognition_b16.py')!r},
    {osp.join(base, 'datasets', 'k400.py')!r},
    {osp.join(base, 'schedules', 'recognition_adamw_cosine_30e.py')!r},
    {osp.join(base, 'default_runtime.py')!r},
]
root = {tmp!r}
tiny = dict(_delete_=True, **{tiny_clip_cfg()!r})  # a clip_cfg dict replaces 'ViT-B/16'
model = dict(
    backbone=dict(arch=tiny, pretrained=None, depth=2, drop_path_rate=0.0),
    cls_head={head_cfg})
train_pipeline = [
    dict(type='DecordInit'),
    dict(type='UniformSample', clip_len={num_frames}),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 36)),
    dict(type='RandomResizedCrop'),
    dict(type='Resize', scale=(32, 32), keep_ratio=False),
    dict(type='Flip', flip_ratio=0.5),
    dict(type='TorchVisionWrapper', op='RandAugment', num_ops=2, magnitude=21,
         num_magnitude_bins=31),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs'),
]
val_pipeline = [
    dict(type='DecordInit'),
    dict(type='UniformSample', clip_len={num_frames}, num_clips=1, test_mode=True),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 32)),
    dict(type='CenterCrop', crop_size=32),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs'),
]
test_pipeline = [
    dict(type='DecordInit'),
    dict(type='UniformSample', clip_len={num_frames}, num_clips=1, test_mode=True),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 32)),
    dict(type='ThreeCrop', crop_size=32),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs'),
]
_loader = dict(num_workers=0, persistent_workers=False)
train_dataloader = dict(
    batch_size=2, **_loader,
    dataset=dict(ann_file=f'{{root}}/train_list.txt', data_prefix=dict(video=f'{{root}}/videos'),
                 num_classes={num_classes}, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=2, **_loader,
    dataset=dict(ann_file=f'{{root}}/val_list.txt', data_prefix=dict(video=f'{{root}}/videos'),
                 num_classes={num_classes}, pipeline=val_pipeline))
test_dataloader = dict(
    batch_size=1, **_loader,
    dataset=dict(ann_file=f'{{root}}/val_list.txt', data_prefix=dict(video=f'{{root}}/videos'),
                 num_classes={num_classes}, pipeline=test_pipeline))
train_cfg = dict(max_epochs={max_epochs})
warmup_epochs = 1
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max={max_epochs}, by_epoch=True, begin=1,
         end={max_epochs + 1}, convert_to_iter_based=True),
]
optim_wrapper = dict(optimizer=dict(lr=1e-3))
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(interval=1, save_best=None, max_keep_ckpts=-1))
randomness = dict(seed=0)
'''
    path = osp.join(tmp, 'tiny_recognition.py')
    with open(path, 'w') as f:
        f.write(cfg)
    return path


def text_head(clip=None, classnames=('walking', 'running', 'jumping'), **kwargs):
    """A TextClassifierHead sharing the text tower of an open_clip ``clip``."""
    from stan_mm.models.clip import CLIPTextEncoder
    clip = clip if clip is not None else tiny_clip(seed=3)
    encoder = CLIPTextEncoder.from_clip(clip, frozen=not kwargs.get('finetune_text', False))
    if not isinstance(classnames, str):
        classnames = list(classnames)
    cfg = dict(type='TextClassifierHead', classnames=classnames, in_channels=EMBED,
               text_encoder=encoder)
    cfg.update(kwargs)
    return MODELS.build(cfg)


def count_calls(module):
    calls = []
    module.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    return calls


def samples(labels):
    return [ActionDataSample().set_gt_label(torch.tensor([y])) for y in labels]


# ============================================================================ text head
def reference_class_embeddings(clip, classnames, templates):
    """Independent reference: open_clip's own tokenizer and ``encode_text``, templates
    averaged after normalization, renormalized."""
    import open_clip
    rows = []
    with torch.no_grad():
        for name in classnames:
            prompts = [t.format(name) for t in templates]
            emb = clip.encode_text(open_clip.tokenize(prompts))        # [M, E]
            emb = emb / emb.norm(dim=-1, keepdim=True)
            mean = emb.mean(dim=0)
            rows.append(mean / mean.norm())
    return torch.stack(rows)                                           # [C, E]


@pytest.mark.parametrize('templates', [['a video of {}.'],
                                       ['a video of {}.', 'a photo of a person {}', '{}']])
def test_text_head_logits_are_cosine_over_temperature(templates):
    clip = tiny_clip(seed=3)
    names = ['walking', 'running', 'jumping', 'playing the violin']
    head = text_head(clip, names, templates=templates, temperature=0.05).eval()
    x = torch.randn(5, EMBED)
    logits = head(x)
    assert logits.shape == (5, len(names))
    w = reference_class_embeddings(clip, names, templates)
    xn = x / x.norm(dim=-1, keepdim=True)
    expected = torch.stack([torch.stack([torch.dot(xn[n], w[c]) for c in range(len(names))])
                            for n in range(5)]) / 0.05
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-4)
    # Default temperature is 0.01 (CLIP's logit scale 100).
    head2 = text_head(clip, names, templates=templates).eval()
    torch.testing.assert_close(head2(x), expected * 0.05 / 0.01, rtol=1e-5, atol=1e-3)


def test_text_head_short_context_length_matches_77():
    clip = tiny_clip(seed=4)
    x = torch.randn(3, EMBED)
    a = text_head(clip, context_length=77).eval()(x)
    b = text_head(clip, context_length=16).eval()(x)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_text_head_zero_shot_class_swap(tmp_path):
    clip = tiny_clip(seed=3)
    head = text_head(clip, ['walking', 'running', 'jumping']).eval()
    x = torch.randn(2, EMBED)
    assert head(x).shape == (2, 3)
    new = ['swimming', 'cooking', 'dancing', 'typing', 'singing']
    path = tmp_path / 'classnames.txt'
    path.write_text('\n'.join(new) + '\n\n')
    head.set_classnames(str(path))
    assert head.num_classes == 5 and head.classnames == new
    out = head(x)
    assert out.shape == (2, 5)
    xn = F.normalize(x, dim=-1)
    torch.testing.assert_close(out, 100 * xn @ reference_class_embeddings(
        clip, new, ['a video of {}.']).t(), rtol=1e-5, atol=1e-3)
    # The same from the config argument (what --cfg-options model.cls_head.classnames=...
    # does at test time): the head is built on the new list.
    head2 = text_head(clip, classnames=str(path)).eval()
    torch.testing.assert_close(head2(x), out)


def test_zero_shot_class_swap_from_the_command_line(tmp_path):
    """The documented --cfg-options command swaps the class list of a built model."""
    import argparse
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    path = tmp_path / 'ucf_classnames.txt'
    path.write_text('\n'.join(['archery', 'bowling', 'diving', 'fencing', 'rowing']) + '\n')
    test_tool = load_tool('tools/test.py', 'stan_test_tool_zs')
    p = argparse.ArgumentParser()     # --cfg-options read with the action of tools/test.py
    p.add_argument('--cfg-options', nargs='+', action=test_tool.ConfigOptionsAction)
    opts = p.parse_args(['--cfg-options', f'model.cls_head.classnames={path}',
                         'model.backbone.pretrained=None',
                         'model.cls_head.text_encoder.pretrained=None']).cfg_options
    args = argparse.Namespace(cfg_options=opts, launcher='none', work_dir=str(tmp_path),
                              checkpoint=__file__, dump=None)
    cfg = test_tool.merge_args(Config.fromfile(write_tiny_config(tmp_path)), args)
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model).eval()
    assert model.cls_head.classnames[0] == 'archery' and model.cls_head.num_classes == 5
    with torch.no_grad():
        assert model.cls_head(torch.randn(2, EMBED)).shape == (2, 5)


def test_text_head_cache_frozen_not_recomputed_per_forward():
    head = text_head(tiny_clip(seed=3), ['a', 'b', 'c'])
    calls = count_calls(head.text_encoder)
    x = torch.randn(4, EMBED, requires_grad=True)
    head.train()
    for _ in range(3):
        head(x).sum().backward()
    head.eval()
    with torch.no_grad():
        head(x)
        head(x)
    assert calls == [3], calls  # one encoder call for all 3 prompts, then the cache
    assert all(not p.requires_grad for p in head.text_encoder.parameters())
    assert not head.text_encoder.training  # frozen tower stays in eval mode
    assert x.grad is not None and x.grad.abs().sum() > 0
    # Loading weights drops the cache (the tower may have new weights).
    head.load_state_dict(head.state_dict())
    head(x)
    assert calls == [3, 3]


def test_text_head_finetune_text_recomputes_with_grad_and_caches_in_eval():
    head = text_head(tiny_clip(seed=3), ['a', 'b', 'c'], finetune_text=True)
    calls = count_calls(head.text_encoder)
    x = torch.randn(4, EMBED)
    head.train()
    loss = head(x).logsumexp(dim=1).sum()
    loss.backward()
    grads = [p.grad for p in head.text_encoder.parameters() if p.requires_grad]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)
    head(x)
    assert len(calls) == 2  # recomputed at every training forward
    with torch.no_grad():
        head.text_encoder.token_embedding.weight.mul_(1.5)  # "an optimizer step"
    head.eval()
    before = head(x)
    head(x)
    assert len(calls) == 3  # eval: once, then cached
    head.train()
    head.eval()  # a new eval phase recomputes (weights may have changed)
    head(x)
    assert len(calls) == 4
    torch.testing.assert_close(head(x), before)
    # training mode without grad (a hook, a probe): fresh embeddings, never the cache
    head.train()
    with torch.no_grad():
        first = head(x)
        head.text_encoder.token_embedding.weight.mul_(1.5)     # another "optimizer step"
        second = head(x)
    assert len(calls) == 6 and not torch.allclose(first, second)


def test_text_head_learnable_temperature_and_loss_with_label_smoothing():
    head = text_head(tiny_clip(seed=3), ['a', 'b', 'c'], temperature=0.07,
                     learnable_temperature=True, label_smooth_eps=0.1)
    assert isinstance(head.logit_scale, torch.nn.Parameter)
    assert math.isclose(float(head.scale().detach()), 1 / 0.07, rel_tol=1e-6)
    x = torch.randn(4, EMBED)
    labels = [0, 2, 1, 2]
    losses = head.loss(x, samples(labels))
    logits = head(x).detach()
    soft = torch.full((4, 3), 0.1 / 3)
    soft[torch.arange(4), torch.tensor(labels)] += 0.9
    expected = -(soft * logits.log_softmax(dim=1)).sum(dim=1).mean()
    torch.testing.assert_close(losses['loss_cls'].detach(), expected)
    losses['loss_cls'].backward()
    assert head.logit_scale.grad is not None and head.logit_scale.grad != 0
    # above the bound (an optimizer step past it, or a checkpoint value): the parameter is
    # clamped and still gets a gradient
    head.zero_grad()
    with torch.no_grad():
        head.logit_scale.fill_(math.log(100.0) + 0.01)
    head.loss(x, samples(labels))['loss_cls'].backward()
    assert head.logit_scale.item() <= math.log(100.0) + 1e-6
    assert head.logit_scale.grad is not None and head.logit_scale.grad != 0
    # A fixed temperature is not a parameter (nothing to optimize, nothing in the checkpoint).
    fixed = text_head(tiny_clip(seed=3), ['a', 'b'])
    assert 'logit_scale' not in dict(fixed.named_parameters())
    assert 'logit_scale' not in fixed.state_dict()


def test_text_head_logits_stay_fp32_under_bf16_autocast():
    head = text_head(tiny_clip(seed=3), ['a', 'b', 'c']).eval()
    x = torch.randn(4, EMBED)
    ref = head(x)
    head.invalidate_cache()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = head(x.bfloat16())
    assert out.dtype == torch.float32 and head.class_embeddings().dtype == torch.float32
    # Only the bf16 rounding of the input embedding remains (logits are cos * 100).
    torch.testing.assert_close(out, ref, rtol=0, atol=100 * 2 ** -7)
    assert 'temperature=0.01' in repr(head)


def test_text_head_errors(tmp_path):
    clip = tiny_clip(seed=3)
    with pytest.raises(ValueError, match='num_classes=4 but 3 class names'):
        text_head(clip, num_classes=4)
    with pytest.raises(ValueError, match='exactly one "{}"'):
        text_head(clip, templates=['a video'])
    with pytest.raises(ValueError, match=r'in_channels=16 but the text encoder outputs 32'):
        text_head(clip, in_channels=16)
    bad = tmp_path / 'bad.txt'
    bad.write_text('a\n\nb\n')
    with pytest.raises(ValueError, match=r'bad\.txt: blank line\(s\) \[2\]'):
        text_head(clip, classnames=str(bad))
    bad.write_text('a\nb\na\n')
    with pytest.raises(ValueError, match=r"'a' \(label 0\) and 'a' \(label 2\) are the same"):
        text_head(clip, classnames=str(bad))
    # names CLIP's tokenizer cannot tell apart (case, extra spaces) are duplicates too
    for names in (['Run', 'run'], ['air drumming', 'air  drumming'], ['run', 'run ']):
        with pytest.raises(ValueError, match=r'same text for CLIP.s tokenizer'):
            text_head(clip, classnames=names)
    # ... and so are names that differ only in what CLIP's cleaning removes (tokens equal)
    from stan_mm.datasets.transforms import tokenize
    for names in (["can't roll", 'can’t roll'], ['this, then', 'this ,then'],
                  ['salt & pepper', 'salt &amp; pepper']):
        assert torch.equal(tokenize(names[0]), tokenize(names[1]))      # the reason
        with pytest.raises(ValueError, match=r'give identical tokens after CLIP.s text '
                                             r'cleaning'):
            text_head(clip, classnames=names)
        # ... also when another, unrelated class is cut by a short context
        with pytest.raises(ValueError, match=r'after CLIP.s text cleaning.*apart$'):
            text_head(clip, classnames=names + ['x ' * 40], context_length=16)
    # SSv2 names that differ only past a short context: the cut is warned about, and a cut
    # that merges two classes is refused
    import mmengine.logging
    logged = []
    real_print_log = mmengine.logging.print_log
    mmengine.logging.print_log = lambda msg, **kw: logged.append(msg)
    try:
        ssv2 = ['Pushing something from left to right', 'Pushing something from right to left']
        text_head(clip, classnames=ssv2, context_length=16)                 # fits: silent
        assert not [m for m in logged if 'class prompts' in m]
        with pytest.raises(ValueError, match=r"'Pushing something from left to right' "
                           r"\(label 0\) and .* identical tokens after the cut to "
                           r'context_length=8.*or a larger context_length'):
            text_head(clip, classnames=ssv2, context_length=8)
        cut = [m for m in logged if 'class prompts' in m]
        assert len(cut) == 1 and '2 of 2 class prompts are longer than context_length=8' in cut[0]
    finally:
        mmengine.logging.print_log = real_print_log
    with pytest.raises(FileNotFoundError, match='class names file not found'):
        text_head(clip, classnames=str(tmp_path / 'none.txt'))
    head = text_head(clip)
    with pytest.raises(ValueError, match=r'expects video embeddings \[N, 32\], got \(2, 4, 32\)'):
        head(torch.randn(2, 4, EMBED))


def test_text_head_from_config_builds_its_own_tower():
    head = MODELS.build(dict(
        type='TextClassifierHead', classnames=['a', 'b'], in_channels=EMBED,
        text_encoder=dict(type='CLIPTextEncoder', arch=tiny_clip_cfg()), context_length=16))
    assert head.text_encoder.frozen
    assert head(torch.randn(3, EMBED)).shape == (3, 2)
    with pytest.raises(ValueError, match='contradicts finetune_text'):
        MODELS.build(dict(
            type='TextClassifierHead', classnames=['a', 'b'], in_channels=EMBED,
            text_encoder=dict(type='CLIPTextEncoder', arch=tiny_clip_cfg(), frozen=False)))


# ============================================================================ linear head
def test_i3d_head_is_a_linear_head_on_2d_embeddings():
    """MMAction2's I3DHead with spatial_type=None maps [N, E] -> [N, C] as x W^T + b."""
    head = MODELS.build(dict(type='I3DHead', num_classes=7, in_channels=EMBED,
                             spatial_type=None, dropout_ratio=0.5))
    head.init_weights()
    head.eval()
    x = torch.randn(4, EMBED)
    w, b = head.fc_cls.weight, head.fc_cls.bias
    expected = torch.stack([torch.stack([(x[n] * w[c]).sum() + b[c] for c in range(7)])
                            for n in range(4)])
    torch.testing.assert_close(head(x), expected)


# ============================================================================ recognizer
def _tiny_model(tmp_path, head='text'):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(write_tiny_config(tmp_path, head=head))
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return cfg, model


@pytest.mark.parametrize('head', ['text', 'linear'])
def test_tiny_recognizer_loss_and_predict(tmp_path, head):
    cfg, model = _tiny_model(tmp_path, head)
    assert type(model.cls_head).__name__ == ('TextClassifierHead' if head == 'text'
                                             else 'I3DHead')
    inputs = torch.randint(0, 255, (2, 1, 3, 4, 32, 32)).float()   # [N, views, C, T, H, W]
    data = model.data_preprocessor(dict(inputs=list(inputs), data_samples=samples([0, 2])),
                                   training=True)
    losses = model(**data, mode='loss')
    assert torch.isfinite(losses['loss_cls'])
    losses['loss_cls'].backward()
    branch_grads = [p.grad for n, p in model.named_parameters() if n.startswith(
        'backbone.branch') and p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in branch_grads)
    model.eval()
    with torch.no_grad():
        out = model(**model.data_preprocessor(
            dict(inputs=list(inputs), data_samples=samples([0, 2]))), mode='predict')
    assert len(out) == 2 and out[0].pred_score.shape == (3, )
    torch.testing.assert_close(out[0].pred_score.sum(), torch.tensor(1.0))


def test_paramwise_lr_mult_on_branch_and_head(tmp_path):
    """The schedule's custom_keys put the STAN branch (CLIPSTAN docstring prefix
    'backbone.branch') and the head's new parameters at 10x the CLIP learning rate."""
    from mmengine.optim import build_optim_wrapper
    cfg, model = _tiny_model(tmp_path, head='linear')
    ow = build_optim_wrapper(model, cfg.optim_wrapper)
    base = cfg.optim_wrapper.optimizer.lr
    by_param = {id(p): g for g in ow.optimizer.param_groups for p in g['params']}
    names = dict(model.named_parameters())
    assert any(n.startswith('backbone.branch') for n in names)
    for n, p in names.items():
        lr = by_param[id(p)]['lr']
        new = n.startswith('backbone.branch') or n.startswith('cls_head')
        assert math.isclose(lr, base * (10 if new else 1)), (n, lr)
    # CLIP's LayerNorm weights and biases have no weight decay, its matrices do.
    assert by_param[id(names['backbone.visual.ln_post.weight'])]['weight_decay'] == 0
    assert by_param[id(names['backbone.visual.conv1.weight'])]['weight_decay'] == 0.02


def test_finetuned_text_tower_follows_clip_rules(tmp_path):
    """With finetune_text=True the text classifier's tower is CLIP, not a new parameter:
    CLIP's learning rate and no decay on its norms and biases; the learnable temperature
    is new (10x) and never decays."""
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(write_tiny_config(tmp_path, head='text'))
    cfg.model.cls_head.update(finetune_text=True, learnable_temperature=True)
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    ow = build_optim_wrapper(model, cfg.optim_wrapper)
    base = cfg.optim_wrapper.optimizer.lr
    by_param = {id(p): g for g in ow.optimizer.param_groups for p in g['params']}
    names = dict(model.named_parameters())
    text = [n for n in names if n.startswith('cls_head.text_encoder.')]
    assert text and all(names[n].requires_grad for n in text)
    for n in text:
        assert math.isclose(by_param[id(names[n])]['lr'], base), n
        if n.endswith('.bias') or '.ln_' in n:
            assert by_param[id(names[n])]['weight_decay'] == 0, n
    scale = by_param[id(names['cls_head.logit_scale'])]
    assert math.isclose(scale['lr'], 10 * base) and scale['weight_decay'] == 0


def test_train_through_tools_train_validates_and_checkpoints(tmp_path):
    """tools/train.py on the tiny config: 1 epoch, validation, checkpoint."""
    cfg_path = write_tiny_config(tmp_path, max_epochs=1)
    train = load_tool('tools/train.py', 'stan_train_tool')
    work = tmp_path / 'work'
    train.main([cfg_path, '--work-dir', str(work)])
    assert (work / 'epoch_1.pth').is_file()
    from stan_mm.compat import safe_torch_load  # the loader tools/test.py uses
    ckpt = safe_torch_load(str(work / 'epoch_1.pth'))
    assert any(k.startswith('backbone.branch.') for k in ckpt['state_dict'])
    # Validation ran: a scalars log with the top-1 accuracy.
    logs = list(work.glob('*/vis_data/scalars.json'))
    assert logs, list(work.rglob('*'))
    records = [json.loads(line) for line in logs[0].read_text().splitlines()]
    val = [r for r in records if 'acc/top1' in r]
    assert len(val) == 1 and 0 <= val[0]['acc/top1'] <= 1
    train_rec = [r for r in records if 'loss' in r]
    assert train_rec and all(math.isfinite(r['loss']) for r in train_rec)


def test_train_flags_reach_configs_that_lack_the_keys(tmp_path):
    """--seed / --deterministic / --auto-scale-lr on configs without randomness,
    custom_hooks or auto_scale_lr (every configs/stan file lacks randomness; their
    custom_hooks hold ClassListCheckHook): the values must land in the config (mmengine's
    Config.setdefault returns a detached copy), beside the config's hooks."""
    from mmengine.config import Config
    train = load_tool('tools/train.py', 'stan_train_tool_flags')
    bare = tmp_path / 'bare.py'
    bare.write_text('optim_wrapper = dict(optimizer=dict(type="SGD", lr=0.1))\n')
    stan = osp.join(REPO, 'configs', 'stan', 'msrvtt_self_b32.py')
    for path, own in ((str(bare), []), (stan, ['ClassListCheckHook'])):
        args = train.parse_args([path, '--seed', '7', '--deterministic', '--auto-scale-lr'])
        cfg = train.merge_args(Config.fromfile(path), args)
        assert cfg.randomness.seed == 7 and cfg.randomness.deterministic is True, path
        assert [h['type'] for h in cfg.custom_hooks] == own + ['EpochSeedHook'], path
        assert cfg.auto_scale_lr.enable is True, path
        again = train.merge_args(cfg, args)                      # no second hook
        assert [h['type'] for h in again.custom_hooks] == own + ['EpochSeedHook']
    # --deterministic adds the per-iteration EpochSeedHook, which seeds every sample where
    # it is loaded, so persistent workers stay; a config's own per-epoch EpochSeedHook
    # needs fresh workers each epoch: then persistence is turned off
    path = osp.join(REPO, 'configs', 'stan', 'msrvtt_self_b32.py')
    assert Config.fromfile(path).train_dataloader.persistent_workers is True
    for flags, persistent in (([], True), (['--deterministic'], True)):
        cfg = train.merge_args(Config.fromfile(path), train.parse_args([path, *flags]))
        assert cfg.train_dataloader.persistent_workers is persistent, flags
    cfg = train.merge_args(Config.fromfile(path), train.parse_args([path, '--deterministic']))
    assert cfg.custom_hooks == [dict(type='ClassListCheckHook'),
                                dict(type='EpochSeedHook', per_iteration=True)]
    per_epoch = Config.fromfile(path)
    per_epoch.custom_hooks = [dict(type='EpochSeedHook', per_iteration=False)]
    cfg = train.merge_args(per_epoch, train.parse_args([path, '--deterministic']))
    assert cfg.train_dataloader.persistent_workers is False
    cfg = train.merge_args(Config.fromfile(str(bare)), train.parse_args([str(bare), '--amp']))
    assert cfg.optim_wrapper.type == 'AutoAmpOptimWrapper'
    assert cfg.optim_wrapper.dtype == 'bfloat16'


def test_deterministic_warns_about_mmengines_epoch_loop(tmp_path, capsys):
    """--deterministic with mmengine's EpochBasedTrainLoop (a config of the user's own):
    exact only from epoch-end checkpoints, and the tool says so; this repo's configs (the
    resumable loop) get no such warning."""
    from mmengine.config import Config
    train = load_tool('tools/train.py', 'stan_train_tool_loop_warning')
    for loop in (dict(by_epoch=True, max_epochs=2), dict(type='EpochBasedTrainLoop',
                                                         max_epochs=2)):
        path = tmp_path / 'own.py'
        path.write_text(f'train_cfg = {loop!r}\n')
        train.merge_args(Config.fromfile(str(path)),
                         train.parse_args([str(path), '--deterministic']))
        err = capsys.readouterr().err
        assert "train_cfg.type='EpochBasedTrainLoop' restarts an epoch" in err, loop
        assert "train_cfg.type='ResumableEpochBasedTrainLoop'" in err
    path = osp.join(REPO, 'configs', 'stan', 'msrvtt_self_b32.py')
    train.merge_args(Config.fromfile(path), train.parse_args([path, '--deterministic']))
    assert 'restarts an epoch' not in capsys.readouterr().err


def test_resume_without_last_checkpoint_refuses_to_overwrite(tmp_path):
    """--resume reads last_checkpoint; without it mmengine would start from scratch and
    overwrite the folder's checkpoints. The tool names them and the flag to use."""
    from mmengine.config import Config
    train = load_tool('tools/train.py', 'stan_train_tool_resume')
    bare = tmp_path / 'bare.py'
    bare.write_text('optim_wrapper = dict(optimizer=dict(type="SGD", lr=0.1))\n')
    work = tmp_path / 'work'
    work.mkdir()
    args = train.parse_args([str(bare), '--work-dir', str(work), '--resume'])
    # empty: nothing to resume, a new run (which keeps the config's load_from)
    assert train.merge_args(Config.fromfile(str(bare)), args).resume is False
    (work / 'iter_23.pth').write_bytes(b'x')
    from stan_mm.utils.cli import CommandLineError    # (one line, exit status 2)
    with pytest.raises(CommandLineError, match=r'no last_checkpoint in .*work.*iter_23\.pth.*'
                                               r'--resume .*iter_23\.pth'):
        train.merge_args(Config.fromfile(str(bare)), args)
    (work / 'last_checkpoint').write_text(str(work / 'iter_23.pth'))
    cfg = train.merge_args(Config.fromfile(str(bare)), args)
    assert cfg.resume is True and cfg.load_from is None     # mmengine reads last_checkpoint


def test_resume_in_a_moved_or_copied_work_dir(tmp_path, capsys):
    """last_checkpoint holds an absolute path. In a moved work dir it named a file that is
    gone: the work dir's file of that name is taken (with a note). In a copy it named the
    original's file, and the copy silently resumed from there: with both files present the
    tool asks which one. A checkpoint elsewhere with no file of its name here (a
    CheckpointHook out_dir) is left to mmengine."""
    from mmengine.config import Config
    train = load_tool('tools/train.py', 'stan_train_tool_resume_copy')
    bare = tmp_path / 'bare.py'
    bare.write_text('optim_wrapper = dict(optimizer=dict(type="SGD", lr=0.1))\n')
    original, copy = tmp_path / 'original', tmp_path / 'copy'
    for work in (original, copy):
        work.mkdir()
        (work / 'epoch_3.pth').write_bytes(work.name.encode())
        (work / 'last_checkpoint').write_text(str(original / 'epoch_3.pth'))

    def resume(work):
        args = train.parse_args([str(bare), '--work-dir', str(work), '--resume'])
        return train.merge_args(Config.fromfile(str(bare)), args)
    from stan_mm.utils.cli import CommandLineError    # (one line, exit status 2)
    with pytest.raises(CommandLineError, match=r'outside this work dir.*--resume .*original.*'
                                               r'epoch_3\.pth, or --resume .*copy.*epoch_3\.pth'):
        resume(copy)
    assert resume(original).load_from is None
    (original / 'epoch_3.pth').unlink()                           # moved: the original gone
    cfg = resume(copy)
    assert cfg.resume is True and cfg.load_from == str(copy / 'epoch_3.pth')
    assert 'which is gone' in capsys.readouterr().err
    (copy / 'epoch_3.pth').unlink()
    (copy / 'last_checkpoint').write_text(str(tmp_path / 'out_dir' / 'epoch_3.pth'))
    assert resume(copy).load_from is None
    (copy / 'epoch_3.pth').write_bytes(b'older')            # remote out_dir: left to mmengine
    (copy / 'last_checkpoint').write_text('s3://bucket/ckpts/copy/epoch_3.pth')
    assert resume(copy).load_from is None


def test_shortened_training_warns_about_the_base_schedule(tmp_path, capsys):
    """max_epochs cut below the schedule's epochs: the LR would stay in warm-up (the base's
    cosine starts at epoch 5 of 30); the tool says which scheduler and what to do."""
    from mmengine.config import Config
    train = load_tool('tools/train.py', 'stan_train_tool_sched')
    path = osp.join(REPO, 'configs', 'stan', 'k400_self_b16.py')
    train.merge_args(Config.fromfile(path), train.parse_args([path]))
    assert 'param_scheduler' not in capsys.readouterr().err          # the recipe: silent
    train.merge_args(Config.fromfile(path), train.parse_args(
        [path, '--cfg-options', 'train_cfg.max_epochs=3']))
    err = capsys.readouterr().err
    assert 'param_scheduler[0] (LinearLR) runs over epochs 0..5, but max_epochs=3: it is cut' \
        in err
    assert 'param_scheduler[1] (CosineAnnealingLR) runs over epochs 5..30, but max_epochs=3: ' \
        'it never starts' in err


def test_misspelled_top_level_key_is_warned_about(tmp_path, capsys):
    """mmengine ignores unknown top-level keys: `train_dataloder=dict(batch_size=2)` trained
    with the base's batch without a word. The train tool names the key it resembles."""
    from mmengine.config import Config
    train = load_tool('tools/train.py', 'stan_train_tool_typo')
    path = osp.join(REPO, 'configs', 'stan', 'k400_self_b16.py')
    child = tmp_path / 'child.py'
    child.write_text(f'_base_ = [{path!r}]\ntrain_dataloder = dict(batch_size=2)\n'
                     'num_frames_ = 8\n')
    train.merge_args(Config.fromfile(str(child)), train.parse_args([str(child)]))
    err = capsys.readouterr().err
    assert "the config sets 'train_dataloder', which nothing reads; did you mean " \
        "'train_dataloader'?" in err
    assert err.count('which nothing reads') == 1                  # no false alarm
    train.merge_args(Config.fromfile(path), train.parse_args([path]))
    assert 'which nothing reads' not in capsys.readouterr().err


def test_a_second_training_run_into_a_locked_work_dir_is_refused(tmp_path):
    """Two runs writing one work dir overwrite each other's checkpoints; the second is
    refused at once (the first holds a lock on the folder, released when it ends)."""
    import subprocess
    import sys as _sys
    work = tmp_path / 'work'
    work.mkdir()
    holder = subprocess.Popen(
        [_sys.executable, '-c', 'import fcntl, os, sys, time; '
         f'fd = os.open({str(work)!r}, os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); '
         'print("locked", flush=True); time.sleep(120)'], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        cfg = write_tiny_config(tmp_path)
        r = subprocess.run([_sys.executable, 'tools/train.py', cfg, '--work-dir', str(work)],
                           cwd=REPO, capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, OMP_NUM_THREADS='1'))
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 2, r.stderr[-2000:]
    assert f'{work} is being written by another training run' in r.stderr
    assert os.listdir(work) == []                   # nothing written by the refused run
