"""Distributed training on machines without CUDA (torchrun + gloo), same code as NCCL on GPUs.

mmengine 0.10.7 calls ``torch.cuda.set_device(local_rank)`` unconditionally when launched by
torchrun and wraps models in DDP with ``device_ids=[LOCAL_RANK]``; both fail on CPU. Here:

- ``mmengine.dist.utils._init_dist_pytorch`` is wrapped: without CUDA (and without the
  NPU / MLU / MUSA devices mmengine handles itself) it skips ``set_device`` and uses
  ``gloo`` (``nccl`` needs GPUs);
- ``MMDistributedDataParallel`` drops ``device_ids``/``output_device`` when every
  parameter of the wrapped module is on the CPU. The class itself is patched (not a child
  registry entry), because the runner instantiates it directly when ``model_wrapper_cfg``
  is unset.
"""
import functools
import warnings

import torch


def _module_on_cpu(module: torch.nn.Module) -> bool:
    return all(p.device.type == 'cpu' for p in module.parameters())


def _accelerator_available() -> bool:
    """CUDA, or a device mmengine's own ``_init_dist_pytorch`` sets up (NPU, MLU, MUSA)."""
    if torch.cuda.is_available():
        return True
    import mmengine.device as device
    return any(getattr(device, name, lambda: False)()
               for name in ('is_npu_available', 'is_mlu_available', 'is_musa_available'))


def apply_dist_fix() -> None:
    import mmengine.dist.utils as dist_utils
    from mmengine.model.wrappers import MMDistributedDataParallel

    if not getattr(dist_utils._init_dist_pytorch, '_stan_mm_patched', False):
        original = dist_utils._init_dist_pytorch

        @functools.wraps(original)
        def _init_dist_pytorch(backend='nccl', init_backend='torch', **kwargs):
            if _accelerator_available():   # mmengine's own code (``__wrapped__``)
                return _init_dist_pytorch.__wrapped__(backend, init_backend=init_backend,
                                                      **kwargs)
            if backend == 'nccl':
                warnings.warn('CUDA is not available: using the gloo backend instead of nccl')
                backend = 'gloo'
            if init_backend != 'torch':
                raise RuntimeError(
                    f'init_backend={init_backend!r} needs CUDA; on CPU use init_backend="torch"')
            torch.distributed.init_process_group(backend=backend, **kwargs)

        _init_dist_pytorch._stan_mm_patched = True
        dist_utils._init_dist_pytorch = _init_dist_pytorch

    if not getattr(MMDistributedDataParallel.__init__, '_stan_mm_patched', False):
        original_init = MMDistributedDataParallel.__init__

        @functools.wraps(original_init)
        def __init__(self, module, detect_anomalous_params=False, **kwargs):
            if _module_on_cpu(module):
                kwargs.pop('device_ids', None)
                kwargs.pop('output_device', None)
            original_init(self, module=module,
                          detect_anomalous_params=detect_anomalous_params, **kwargs)

        __init__._stan_mm_patched = True
        MMDistributedDataParallel.__init__ = __init__
