"""Which half precision ``--amp`` runs in (``tools/test.py``, ``tools/extract_features.py``).

A model should be tested in the precision it was trained in. fp16 has 10 mantissa bits but
overflows above 65504; bf16 has the range of fp32 and 7 mantissa bits. A model trained
under bf16 autocast (the recognition configs) can carry activations that fp16 turns into
inf, and then NaN scores; a model trained in fp16 (the retrieval configs, as the public
reproduction) is tested in fp16 by its authors. So ``--amp`` (``auto``) takes the dtype the
training ran in (the training config stored in the checkpoint, else the config's own
``optim_wrapper``; bf16 for a model trained in fp32); ``--amp bf16`` / ``--amp fp16``
choose.

On the CPU autocast runs in bf16 only (torch's CPU autocast and mmengine's ``autocast``).

A CUDA device "has bf16" here when it computes in bf16 natively: compute capability 8.0 or
newer (A100, H100, RTX 30xx and later; :func:`cuda_native_bf16`). ``torch.cuda.
is_bf16_supported()`` alone also says yes for older GPUs (V100, T4), on which a bf16 tensor
can merely be created: their tensor cores have no bf16, so bf16 is emulated there and brings
none of fp16's speed-up.
"""
from typing import Optional, Tuple

import torch

from .cli import CommandLineError

AMP_CHOICES = ('auto', 'bf16', 'fp16')
_NAMES = {torch.bfloat16: 'bf16', torch.float16: 'fp16'}
_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}
# what an optim_wrapper's ``dtype`` may say
_ALIASES = {'bfloat16': 'bf16', 'bf16': 'bf16', 'float16': 'fp16', 'fp16': 'fp16',
            'half': 'fp16', torch.bfloat16: 'bf16', torch.float16: 'fp16'}
_AMP_WRAPPERS = ('AmpOptimWrapper', 'AutoAmpOptimWrapper')


def cuda_native_bf16() -> bool:
    """Whether the current CUDA device computes in bf16 natively (compute capability >= 8.0,
    or ROCm). False without CUDA.

    ``torch.cuda.is_bf16_supported()`` (torch >= 2.3) counts emulation by default: on a
    V100 or a T4 it creates a bf16 tensor on the current device and says True, so a
    "fp16 on a GPU without bf16" rule never fired, and in a distributed run that probe ran
    before ``torch.cuda.set_device`` put each rank on its own GPU (``tools/test.py --amp``
    resolves the dtype before the runner starts): every rank opened a context on GPU 0.
    ``including_emulation=False`` asks about the hardware only, without allocating."""
    if not torch.cuda.is_available():
        return False
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:    # torch < 2.3: no emulation counted, no argument
        return bool(torch.cuda.is_bf16_supported())


def training_amp_dtype(cfg) -> Optional[str]:
    """``'bf16'`` / ``'fp16'``: the dtype the config's ``optim_wrapper`` autocasts in on
    CUDA (``AmpOptimWrapper`` / ``AutoAmpOptimWrapper``; without a ``dtype``, mmengine's
    fp16), or None when the config trains in fp32 (or names something else)."""
    wrapper = cfg.get('optim_wrapper') if hasattr(cfg, 'get') else None
    if not hasattr(wrapper, 'get'):
        return None
    kind = wrapper.get('type', 'OptimWrapper')
    name = kind if isinstance(kind, str) else getattr(kind, '__name__', '')
    if name.split('.')[-1] not in _AMP_WRAPPERS:
        return None
    dtype = wrapper.get('dtype')
    if dtype is None:
        return 'fp16'
    return _ALIASES.get(dtype.lower() if isinstance(dtype, str) else dtype)


def _trained_in(cfg, checkpoint) -> Tuple[Optional[str], str]:
    """(training dtype, where it was read): the training config stored in the checkpoint
    (``meta['cfg']``, what the run really used, ``train.py --amp`` included) when it has a
    plain ``optim_wrapper``, else ``cfg``."""
    if checkpoint is not None:
        from .checkpoint_check import _saved_config_values
        saved = _saved_config_values(checkpoint, ('optim_wrapper', ))
        if isinstance(saved.get('optim_wrapper'), dict):
            return training_amp_dtype(saved), "the checkpoint's training config"
    return training_amp_dtype(cfg), 'the config'


def resolve_amp_dtype(choice: str, cfg, device_type: str, flag: str = '--amp',
                      checkpoint=None) -> Tuple[torch.dtype, str]:
    """The autocast dtype for ``choice`` (one of :data:`AMP_CHOICES`) on ``device_type``
    (``'cuda'`` / ``'cpu'``), and a few words on why.

    ``auto``: the dtype the training ran in (:func:`training_amp_dtype` of the training
    config stored in ``checkpoint``, a loaded checkpoint dict, else of ``cfg``); for a
    model trained in fp32, bf16 (fp32's range), or fp16 on a CUDA device without bf16
    (:func:`cuda_native_bf16`: compute capability below 8.0, e.g. a V100).

    Raises:
        CommandLineError: ``fp16`` asked for on the CPU; ``bf16`` asked for on a CUDA
            device without bf16.
    """
    if choice not in AMP_CHOICES:
        raise CommandLineError(f'{flag} takes one of {", ".join(AMP_CHOICES)}, got {choice!r}')
    trained, source = _trained_in(cfg, checkpoint)
    if device_type != 'cuda':
        if choice == 'fp16':
            raise CommandLineError(
                f'{flag} fp16: autocast on the CPU runs bf16 only (torch and mmengine); use '
                f'{flag} bf16 (or {flag} alone), or run on a CUDA device')
        return torch.bfloat16, 'the CPU autocasts in bf16 only'
    has_bf16 = not torch.cuda.is_available() or cuda_native_bf16()
    if choice == 'auto':
        if trained is None:
            name = 'bf16' if has_bf16 else 'fp16'
            why = (f'{source} trains in fp32; ' + (
                "bf16 has fp32's range" if has_bf16 else 'this device has no bf16'))
        else:
            name, why = trained, f'the dtype {source} trains in'
            if trained == 'bf16' and not has_bf16:
                name, why = 'fp16', f'{source} trains in bf16, which this device lacks'
        return _DTYPES[name], why + f'; {flag} bf16 / fp16 choose'
    why = f'{flag} {choice}'
    if trained is not None and trained != choice:
        why += f'; note: {source} trains in {trained}' + (
            ', and fp16 overflows above 65504 where bf16 does not: check the metric against '
            f'a run without {flag}' if choice == 'fp16' else '')
    if choice == 'bf16' and not has_bf16:
        raise CommandLineError(f'{flag} bf16: this CUDA device has no bf16 (compute '
                               f'capability below 8.0, where torch only emulates it); use '
                               f'{flag} fp16, or leave {flag} out')
    return _DTYPES[choice], why


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``'bf16'``, ``torch.float16`` -> ``'fp16'``."""
    return _NAMES[dtype]
