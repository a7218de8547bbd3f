"""``AutoAmpOptimWrapper``: mixed precision on GPU, plain fp32 on CPU, one config for both.

mmengine's ``AmpOptimWrapper`` asserts that a GPU is present, so a config written for a
cluster fails on a laptop. Use ``optim_wrapper = dict(type='AutoAmpOptimWrapper',
dtype='bfloat16', optimizer=...)`` instead: on CUDA it builds ``AmpOptimWrapper`` with
those arguments; elsewhere an ``OptimWrapper`` (the AMP-only arguments ``dtype`` and
``loss_scale`` are dropped).

bf16 on a CUDA GPU without native bf16 (compute capability below 8.0: V100, T4) is built as
asked but logs a warning: torch emulates bf16 there (``torch.cuda.is_bf16_supported()`` says
True, so mmengine's own check lets it through), and the run gets none of mixed precision's
speed-up; ``dtype='float16'`` uses those GPUs' tensor cores.
"""
import torch
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS

_AMP_ONLY = ('dtype', 'loss_scale', 'use_fsdp')


@OPTIM_WRAPPERS.register_module(force=True)
def AutoAmpOptimWrapper(optimizer, **kwargs):  # noqa: N802 (registered like a class)
    """Build ``AmpOptimWrapper`` when CUDA is available, else ``OptimWrapper``."""
    if torch.cuda.is_available():
        if kwargs.get('dtype') in ('bfloat16', torch.bfloat16):
            _warn_emulated_bf16(kwargs['dtype'])
        return AmpOptimWrapper(optimizer=optimizer, **kwargs)
    dropped = {key: kwargs.pop(key) for key in _AMP_ONLY if key in kwargs}
    from mmengine.logging import print_log
    print_log('AutoAmpOptimWrapper: no CUDA device, training in plain fp32 (OptimWrapper)'
              + (f'; {", ".join(f"{k}={v!r}" for k, v in dropped.items())} applies on GPU'
                 if dropped else ''), logger='current')
    return OptimWrapper(optimizer=optimizer, **kwargs)


def _warn_emulated_bf16(dtype) -> None:
    """Warn when the current CUDA device has no native bf16 (see the module docstring)."""
    from stan_mm.utils.amp import cuda_native_bf16
    if cuda_native_bf16():
        return
    import logging

    from mmengine.logging import print_log
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    print_log(f'AutoAmpOptimWrapper: dtype={dtype!r} on {props.name} (compute capability '
              f'{props.major}.{props.minor}), which has no native bf16: torch emulates it, '
              'so this run gets none of mixed precision\'s speed-up. On this GPU set '
              "optim_wrapper.dtype='float16' (e.g. --cfg-options optim_wrapper.dtype=float16; "
              'fp16 overflows above 65504, where the dynamic loss scale skips steps), or '
              'train on a GPU of compute capability 8.0 or newer', logger='current',
              level=logging.WARNING)
