"""Distributed training on machines without CUDA (torchrun or srun + gloo), code as on GPUs.

mmengine 0.10.7 calls ``torch.cuda.set_device(local_rank)`` unconditionally when launched by
torchrun or by Slurm's ``srun`` and wraps models in DDP with ``device_ids=[LOCAL_RANK]``;
all of it fails on CPU. Here:

- ``mmengine.dist.utils._init_dist_pytorch`` (``--launcher pytorch``) is wrapped: without
  CUDA (and without the NPU / MLU / MUSA devices mmengine handles itself) it skips
  ``set_device`` and uses ``gloo`` (``nccl`` needs GPUs);
- ``mmengine.dist.utils._init_dist_slurm`` (``--launcher slurm``, ``tools/slurm_*.sh``) is
  wrapped the same way. Without an accelerator it does what mmengine's does minus the
  device: ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` from ``SLURM_PROCID`` /
  ``SLURM_NTASKS`` / ``SLURM_LOCALID``, ``MASTER_ADDR`` (unless set) from the first host of
  ``scontrol show hostnames $SLURM_NODELIST``, ``MASTER_PORT`` from ``dist_cfg.port``, the
  environment, or 29500; then ``gloo`` for ``nccl``. Two differences besides the device,
  both for errors only: without ``SLURM_LOCALID`` the local rank is not
  ``SLURM_PROCID % torch.cuda.device_count()`` (a division by zero without GPUs), and a
  failing ``scontrol`` raises an error naming it (mmengine would take the shell's error
  message for the master's host name). Covered by ``tests/test_slurm_scripts.py``, which
  runs the Slurm scripts under a simulated ``srun``;
- ``MMDistributedDataParallel`` drops ``device_ids``/``output_device`` when every
  parameter of the wrapped module is on the CPU. The class itself is patched (not a child
  registry entry), because the runner instantiates it directly when ``model_wrapper_cfg``
  is unset.

With CUDA (or NPU / MLU / MUSA) both launchers run mmengine's own code unchanged.
"""
import functools
import os
import subprocess
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


def _cpu_backend(backend: str, init_backend: str) -> str:
    """The backend to use without an accelerator (``nccl`` -> ``gloo``)."""
    if backend == 'nccl':
        _say_gloo('env_cfg.dist_cfg.backend, which the config dump and the config copied '
                  'to the work dir still show')
        backend = 'gloo'
    if init_backend != 'torch':
        raise RuntimeError(
            f'init_backend={init_backend!r} needs CUDA; on CPU use init_backend="torch"')
    return backend


def cpu_config_backend(cfg) -> bool:
    """For ``tools/train.py`` / ``tools/test.py``: on a machine without an accelerator, a
    distributed run's ``env_cfg.dist_cfg.backend='nccl'`` becomes ``'gloo'`` in ``cfg``
    itself, before the runner is built, so that the config dumped to the work dir and the
    log say what ran (the switch inside ``init_dist`` cannot reach the runner's copy).
    Returns whether it changed ``cfg``."""
    dist_cfg = (cfg.get('env_cfg') or {}).get('dist_cfg') or {}
    if (cfg.get('launcher', 'none') == 'none' or dist_cfg.get('backend') != 'nccl'
            or _accelerator_available()):
        return False
    cfg.env_cfg.dist_cfg.backend = 'gloo'
    _say_gloo('env_cfg.dist_cfg.backend is gloo in the config of this run')
    return True


def _say_gloo(note: str) -> None:
    """The one line (first rank; every rank switches) saying that nccl became gloo, as a
    warning and in the run's log file (tools/train.py, tools/test.py)."""
    from stan_mm.utils.cli import is_first_rank, log_later
    if is_first_rank():
        message = f'CUDA is not available: using the gloo backend instead of nccl ({note})'
        warnings.warn(message)
        log_later(message)


def _first_slurm_host(node_list: str) -> str:
    """The first host name of a Slurm node list (``node[01-04]`` -> ``node01``)."""
    cmd = ['scontrol', 'show', 'hostnames', node_list]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f'--launcher slurm: `{" ".join(cmd)}` failed ({e}); '
                           'set MASTER_ADDR to the host of rank 0') from e
    hosts = r.stdout.split()
    if r.returncode != 0 or not hosts:
        raise RuntimeError(f'--launcher slurm: `{" ".join(cmd)}` exited with {r.returncode} '
                           f'and printed no host name ({r.stderr.strip()[-300:]!r}); '
                           'set MASTER_ADDR to the host of rank 0')
    return hosts[0]


def _set_slurm_env(port=None) -> None:
    """``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` from the
    variables ``srun`` sets, as mmengine 0.10.7's ``_init_dist_slurm`` does."""
    proc_id = int(os.environ['SLURM_PROCID'])
    ntasks = int(os.environ['SLURM_NTASKS'])
    node_list = os.environ['SLURM_NODELIST']
    if 'SLURM_LOCALID' in os.environ:
        local_rank = int(os.environ['SLURM_LOCALID'])
    elif os.environ.get('SLURM_NTASKS_PER_NODE', '').isdigit():
        local_rank = proc_id % int(os.environ['SLURM_NTASKS_PER_NODE'])
    else:  # only names a device on GPUs; on the CPU it is informative
        local_rank = proc_id
    if port is not None:
        os.environ['MASTER_PORT'] = str(port)
    elif 'MASTER_PORT' not in os.environ:
        os.environ['MASTER_PORT'] = '29500'  # torch.distributed's default, like mmengine
    if 'MASTER_ADDR' not in os.environ:
        os.environ['MASTER_ADDR'] = _first_slurm_host(node_list)
    os.environ['WORLD_SIZE'] = str(ntasks)
    os.environ['LOCAL_RANK'] = str(local_rank)
    os.environ['RANK'] = str(proc_id)


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
            backend = _cpu_backend(backend, init_backend)
            torch.distributed.init_process_group(backend=backend, **kwargs)

        _init_dist_pytorch._stan_mm_patched = True
        dist_utils._init_dist_pytorch = _init_dist_pytorch

    if not getattr(dist_utils._init_dist_slurm, '_stan_mm_patched', False):
        original_slurm = dist_utils._init_dist_slurm

        @functools.wraps(original_slurm)
        def _init_dist_slurm(backend='nccl', port=None, init_backend='torch', **kwargs):
            if _accelerator_available():   # mmengine's own code (``__wrapped__``)
                return _init_dist_slurm.__wrapped__(backend, port=port,
                                                    init_backend=init_backend, **kwargs)
            backend = _cpu_backend(backend, init_backend)
            _set_slurm_env(port)
            torch.distributed.init_process_group(backend=backend, **kwargs)

        _init_dist_slurm._stan_mm_patched = True
        dist_utils._init_dist_slurm = _init_dist_slurm

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
