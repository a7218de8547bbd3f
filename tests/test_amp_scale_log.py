"""AmpScaleLogHook: the fp16 GradScaler's loss scale in every training log line.

A CPU ``GradScaler`` stands in for the CUDA one of ``AmpOptimWrapper`` (same class, same
rules). Expected scales follow the rules PyTorch documents for ``GradScaler``: an
iteration whose gradients are not finite skips the step and multiplies the scale by
``backoff_factor`` (0.5); ``growth_interval`` finite iterations in a row multiply it by
``growth_factor`` (2).
"""
import json
import os.path as osp

import pytest
import torch
from mmengine.optim import OptimWrapper
from mmaction.registry import OPTIM_WRAPPERS

from test_training_ops_review_fixes import _run

INIT, INTERVAL = 2.0 ** 4, 3


@OPTIM_WRAPPERS.register_module(force=True)
class _CpuScalerOptimWrapper(OptimWrapper):
    """AmpOptimWrapper's loss scaling (mmengine's refuses to start without a GPU)."""

    def __init__(self, dtype=None, **kwargs):
        super().__init__(**kwargs)
        self.cast_dtype = None if dtype is None else getattr(torch, dtype)
        self.loss_scaler = torch.amp.GradScaler('cpu', init_scale=INIT,
                                                growth_interval=INTERVAL)

    def backward(self, loss, **kwargs):
        self.loss_scaler.scale(loss).backward(**kwargs)
        self._inner_count += 1

    def step(self, **kwargs):
        self.loss_scaler.step(self.optimizer, **kwargs)
        self.loss_scaler.update()


def expected_scales(iterations, overflow_at):
    """The scale after each iteration, by GradScaler's documented rules."""
    scale, streak, out = INIT, 0, []
    for it in range(1, iterations + 1):
        if it in overflow_at:
            scale, streak = scale * 0.5, 0
        else:
            streak += 1
            if streak == INTERVAL:
                scale, streak = scale * 2.0, 0
        out.append(scale)
    return out


def logged(runner, key='amp_scale'):
    path = osp.join(runner.log_dir, 'vis_data', 'scalars.json')
    with open(path) as f:
        records = [json.loads(line) for line in f]
    return [r.get(key) for r in records if 'loss' in r]


def test_the_log_shows_the_scale_falling_at_overflows_and_growing_after(tmp_path):
    overflow = {2, 6, 7}              # inf loss: inf gradients, a skipped step
    runner, err, log = _run(tmp_path, dict(inf_loss_at=sorted(overflow)),
                            wrapper=dict(type='_CpuScalerOptimWrapper'), max_epochs=3)
    assert err is None, err
    iterations = runner.iter
    assert iterations == 12
    assert logged(runner) == expected_scales(iterations, overflow)
    assert 'amp_scale: 8.0000' in log          # after the overflow of iteration 2


@pytest.mark.parametrize('wrapper', [dict(type='_CpuScalerOptimWrapper', dtype='bfloat16'),
                                     dict(type='OptimWrapper')], ids=['bf16', 'fp32'])
def test_nothing_is_logged_without_fp16_scaling(tmp_path, wrapper):
    runner, err, log = _run(tmp_path, {}, wrapper=wrapper, max_epochs=1)
    assert err is None and runner.iter > 0
    assert set(logged(runner)) == {None} and 'amp_scale: ' not in log
