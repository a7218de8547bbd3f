"""Log the loss scale of fp16 mixed-precision training.

With ``AmpOptimWrapper`` in fp16 (the stan-mm retrieval configs on a GPU), a ``GradScaler``
multiplies the loss by a scale before the backward pass. When a gradient overflows it skips
the optimizer step and halves the scale; after ``growth_interval`` (2000) steps without an
overflow it doubles it. mmengine logs none of it, so a run that skips steps (a scale
falling iteration after iteration, down to values such as 1e-3 where fp16 gradients
underflow) looked like a run that trains.

:class:`AmpScaleLogHook` adds the scale the next iteration will use, ``amp_scale``, to every
training log line and to ``vis_data/scalars.json`` (``<name>.amp_scale`` per optimizer of an
``OptimWrapperDict``). Only for fp16: a bf16 ``AmpOptimWrapper`` keeps a scaler too, but
bf16 does not overflow where fp32 would not, and its scale says nothing; plain fp32
(``OptimWrapper``, what ``AutoAmpOptimWrapper`` picks on CPU) has none. Nothing is logged
then.

Cost: one read-back of the scale (one float) per iteration, after mmengine's
``RuntimeInfoHook`` has read every loss back (the device is already waited for).
"""
from typing import Iterator, Tuple

import torch
from mmengine.hooks import Hook
from mmengine.optim import OptimWrapperDict
from mmaction.registry import HOOKS


def fp16_scalers(optim_wrapper) -> Iterator[Tuple[str, object]]:
    """``(prefix, GradScaler)`` for every optimizer wrapper in ``optim_wrapper`` that scales
    its loss for fp16 (an enabled ``loss_scaler`` and a cast dtype of fp16, or None, which
    autocasts to fp16 on CUDA); ``prefix`` is ``'<name>.'`` inside an ``OptimWrapperDict``,
    else ``''``."""
    if isinstance(optim_wrapper, OptimWrapperDict):
        items = [(f'{name}.', w) for name, w in optim_wrapper.items()]
    else:
        items = [('', optim_wrapper)]
    for prefix, wrapper in items:
        scaler = getattr(wrapper, 'loss_scaler', None)
        if scaler is None or not hasattr(scaler, 'get_scale'):
            continue
        if hasattr(scaler, 'is_enabled') and not scaler.is_enabled():
            continue
        if getattr(wrapper, 'cast_dtype', None) not in (None, torch.float16):
            continue
        yield prefix, scaler


@HOOKS.register_module()
class AmpScaleLogHook(Hook):
    """Log ``amp_scale``, the fp16 ``GradScaler``'s loss scale, after every training
    iteration (see the module docstring). No-op without fp16 loss scaling.

    Registered as ``default_hooks.amp_scale`` in ``configs/_base_/default_runtime.py``
    (``amp_scale=None`` removes it).
    """
    # after RuntimeInfoHook (VERY_HIGH) and the optimizer step, before LoggerHook
    # (BELOW_NORMAL) prints the iteration
    priority = 'NORMAL'

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        for prefix, scaler in fp16_scalers(getattr(runner, 'optim_wrapper', None)):
            runner.message_hub.update_scalar(f'train/{prefix}amp_scale',
                                             float(scaler.get_scale()))
