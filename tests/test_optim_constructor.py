"""STANOptimWrapperConstructor: the shipped schedules give no weight decay to any norm or
bias (STAN_REFERENCE.md Sec. 4: "no decay on norms and biases"), the STAN branch's
included, and the 10x learning rate to the branch. Expectations are written from the
rule itself (module type, parameter name), not from the constructor's code."""
import math
import os

import pytest
import torch
from mmaction.registry import MODELS
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from torch import nn

import stan_mm  # noqa: F401
from stan_mm.testing import tiny_clip_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEDULES = os.path.join(REPO, 'configs', '_base_', 'schedules')


def _retriever(learnable_temperature=False):
    init_default_scope('mmaction')
    torch.manual_seed(0)
    return MODELS.build(dict(
        type='STANRetriever', arch=tiny_clip_cfg(), learnable_temperature=learnable_temperature,
        backbone=dict(type='CLIPSTAN', depth=2, drop_path_rate=0.0, input_layout='NTCHW',
                      temporal_module='attn')))


def _recognizer(temporal_module='conv'):
    init_default_scope('mmaction')
    torch.manual_seed(0)
    return MODELS.build(dict(
        type='Recognizer3D',
        backbone=dict(type='CLIPSTAN', arch=tiny_clip_cfg(), depth=2,
                      temporal_module=temporal_module),
        cls_head=dict(type='I3DHead', num_classes=3, in_channels=32,
                      average_clips='prob')))


def _groups(model, optim_cfg):
    """{parameter name: its param group} for the optimizer built from ``optim_cfg``."""
    ow = build_optim_wrapper(model, Config(dict(optim=optim_cfg)).optim)
    by_id = {id(p): g for g in ow.optimizer.param_groups for p in g['params']}
    return {n: by_id[id(p)] for n, p in model.named_parameters()}


def _norm_or_bias(model):
    """Names of the parameters that are a norm layer's or a bias, read off the modules."""
    out = set()
    for mod_name, mod in model.named_modules():
        for p_name, _ in mod.named_parameters(recurse=False):
            if isinstance(mod, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm3d)) or \
                    p_name in ('bias', 'in_proj_bias'):
                out.add(f'{mod_name}.{p_name}')
    return out


@pytest.mark.parametrize('schedule,build', [
    ('retrieval_adamw_10e.py', _retriever),
    ('recognition_adamw_cosine_30e.py', _recognizer),
])
def test_schedules_never_decay_norms_and_biases(schedule, build):
    cfg = Config.fromfile(os.path.join(SCHEDULES, schedule))
    model = build()
    groups = _groups(model, cfg.optim_wrapper)
    base_lr, base_wd = cfg.optim_wrapper.optimizer.lr, cfg.optim_wrapper.optimizer.weight_decay
    exempt = _norm_or_bias(model)
    branch = [n for n in groups if '.branch.' in n]
    # the branch has LayerNorms, linear biases and attention in_proj_bias (the cases
    # mmengine's default constructor leaves decaying)
    assert any(n.endswith('norm.weight') or '.ln_' in n for n in branch)
    assert any(n.endswith('in_proj_bias') for n in groups)
    assert sum(n in exempt for n in branch) >= 6
    for name, g in groups.items():
        wd = g.get('weight_decay', base_wd)
        assert wd == (0.0 if name in exempt else base_wd), (name, wd)
        lr = g.get('lr', base_lr)
        new = '.branch.' in name or name.startswith('cls_head.fc_cls')
        assert math.isclose(lr, base_lr * (10 if new else 1)), (name, lr)
    # CLIP's class embedding is neither a norm nor a bias: it decays
    assert groups['backbone.visual.class_embedding']['weight_decay'] == base_wd


def test_default_constructor_decays_the_branch_norms():
    """Why the constructor exists: in this mmengine, a custom key switches the norm/bias
    rules off for the parameters it matches (if this ever fails, mmengine changed and the
    constructor may be dropped)."""
    cfg = Config.fromfile(os.path.join(SCHEDULES, 'retrieval_adamw_10e.py'))
    ow = cfg.optim_wrapper.copy()
    ow.pop('constructor')
    model = _retriever()
    groups = _groups(model, ow)
    wd = cfg.optim_wrapper.optimizer.weight_decay
    ln = [n for n in groups if '.branch.' in n and '.ln_1.' in n]
    assert ln and all(groups[n]['weight_decay'] == wd for n in ln)
    assert all(groups[n]['weight_decay'] == wd for n in groups
               if '.branch.' in n and n.endswith('.bias'))


def test_a_custom_decay_mult_keeps_the_last_word():
    """A custom key that sets decay_mult decides for all it matches (norms and biases too);
    the learnable temperature's key (decay_mult=0) is kept."""
    model = _retriever(learnable_temperature=True)
    optim = dict(type='OptimWrapper', constructor='STANOptimWrapperConstructor',
                 optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.1),
                 paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, custom_keys={
                     'backbone.branch': dict(lr_mult=10.0, decay_mult=0.5),
                     'logit_scale': dict(decay_mult=0.0)}))
    groups = _groups(model, optim)
    exempt = _norm_or_bias(model)
    branch = [n for n in groups if '.branch.' in n]
    assert any(n in exempt for n in branch)
    for n in branch:
        assert math.isclose(groups[n]['weight_decay'], 0.05), n
    assert groups['logit_scale']['weight_decay'] == 0.0
    clip_ln = 'backbone.visual.ln_post.weight'
    assert groups[clip_ln]['weight_decay'] == 0.0
    assert groups['backbone.visual.conv1.weight'].get('weight_decay', 0.1) == 0.1
    # a key's own weight_decay too
    optim['paramwise_cfg']['custom_keys']['backbone.branch'] = dict(lr_mult=10.0,
                                                                    weight_decay=0.3)
    groups = _groups(model, optim)
    assert all(groups[n]['weight_decay'] == 0.3 for n in branch)


def test_only_the_multipliers_given_act():
    """bias_decay_mult alone: every bias stops decaying (a norm's bias too, as mmengine's
    own precedence has it without norm_decay_mult), norm weights keep the base rate."""
    model = _recognizer('attn')
    optim = dict(type='OptimWrapper', constructor='STANOptimWrapperConstructor',
                 optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.1),
                 paramwise_cfg=dict(bias_decay_mult=0.0,
                                    custom_keys={'backbone.branch': dict(lr_mult=10.0)}))
    groups = _groups(model, optim)
    assert any('.branch.' in n and '.ln_1.weight' in n for n in groups)
    for name, g in groups.items():
        wd = g.get('weight_decay', 0.1)
        assert wd == (0.0 if name.rsplit('.', 1)[-1] in ('bias', 'in_proj_bias') else 0.1), \
            (name, wd)
