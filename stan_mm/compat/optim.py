"""``AutoAmpOptimWrapper``: mixed precision on GPU, plain fp32 on CPU, one config for both.

mmengine's ``AmpOptimWrapper`` asserts that a GPU is present, so a config written for a
cluster fails on a laptop. Use ``optim_wrapper = dict(type='AutoAmpOptimWrapper',
dtype='bfloat16', optimizer=...)`` instead: on CUDA it builds ``AmpOptimWrapper`` with
those arguments; elsewhere an ``OptimWrapper`` (the AMP-only arguments ``dtype`` and
``loss_scale`` are dropped).
"""
import torch
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS

_AMP_ONLY = ('dtype', 'loss_scale', 'use_fsdp')


@OPTIM_WRAPPERS.register_module(force=True)
def AutoAmpOptimWrapper(optimizer, **kwargs):  # noqa: N802 (registered like a class)
    """Build ``AmpOptimWrapper`` when CUDA is available, else ``OptimWrapper``."""
    if torch.cuda.is_available():
        return AmpOptimWrapper(optimizer=optimizer, **kwargs)
    dropped = {key: kwargs.pop(key) for key in _AMP_ONLY if key in kwargs}
    from mmengine.logging import print_log
    print_log('AutoAmpOptimWrapper: no CUDA device, training in plain fp32 (OptimWrapper)'
              + (f'; {", ".join(f"{k}={v!r}" for k, v in dropped.items())} applies on GPU'
                 if dropped else ''), logger='current')
    return OptimWrapper(optimizer=optimizer, **kwargs)
