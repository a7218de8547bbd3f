"""Is ``/dev/shm`` large enough for the DataLoaders of a config?

DataLoader worker processes hand their batches to the main process through shared memory
(``/dev/shm`` on Linux). A container started without ``--shm-size`` or ``--ipc=host`` has
64 MB there (Docker's default); a worker whose batch does not fit logs ``unable to allocate
shared memory(shm)`` and, with mmengine's ``pseudo_collate``, the main process can then wait
for that batch forever (found in the portability review: the run hung until SIGKILL).

:func:`shm_shortfall` estimates, from a config alone, the shared memory a DataLoader holds
at once: ``num_workers x prefetch_factor`` batches in flight, each of ``batch_size``
samples of ``frames x views x 3 x side x side`` bytes (uint8 clips: ``clip_len x
num_clips`` frames of the sampling transform, 3 views for ``ThreeCrop``, 10 for
``TenCrop``, the side of the last fixed-size crop or resize; 8 frames of 224 x 224 where the
pipeline does not say), and compares the largest loader's need with the space free in
``/dev/shm``. It is an estimate of the main term (the video tensors), not a bound: text
tokens and metadata add little.
"""
import os
from typing import Optional, Tuple

SHM = '/dev/shm'
DEFAULT_FRAMES, DEFAULT_SIDE = 8, 224
_LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


def _side(value) -> Optional[int]:
    """The side of a square output: ``224`` or ``(224, 224)``; None otherwise."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, int) and v > 0 for v in value)):
        return max(value)
    return None


def sample_bytes(pipeline) -> int:
    """Bytes of one sample's video tensor that ``pipeline`` (a list of transform dicts)
    produces (see the module docstring)."""
    frames, views, side = DEFAULT_FRAMES, 1, DEFAULT_SIDE
    for step in pipeline or ():
        if not hasattr(step, 'get'):
            continue
        kind = str(step.get('type', '')).rsplit('.', 1)[-1]
        clip_len = step.get('clip_len')
        if isinstance(clip_len, int) and clip_len > 0:
            num_clips = step.get('num_clips', 1)
            frames = clip_len * (num_clips if isinstance(num_clips, int) and num_clips > 0
                                 else 1)
        if kind == 'ThreeCrop':
            views = 3
        elif kind == 'TenCrop':
            views = 10
        fixed = _side(step.get('crop_size'))
        if fixed is None and kind == 'Resize' and step.get('keep_ratio') is False:
            fixed = _side(step.get('scale'))
        if fixed is not None:
            side = fixed
    return frames * views * 3 * side * side


def loader_shm_bytes(loader) -> int:
    """Shared memory a DataLoader config keeps in flight (0 without workers)."""
    if not hasattr(loader, 'get'):
        return 0
    workers = loader.get('num_workers', 0)
    batch = loader.get('batch_size', 1)
    prefetch = loader.get('prefetch_factor', 2)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (workers, batch,
                                                                           prefetch)):
        return 0
    if workers <= 0:
        return 0
    dataset = loader.get('dataset') or {}
    pipeline = dataset.get('pipeline') if hasattr(dataset, 'get') else None
    return workers * max(prefetch, 1) * batch * sample_bytes(pipeline)


def free_shm(path: str = SHM) -> Optional[int]:
    """Bytes free in ``path``, or None where it does not exist (not Linux)."""
    try:
        info = os.statvfs(path)
    except (OSError, AttributeError):
        return None
    return info.f_bavail * info.f_frsize


def _mb(n: int) -> str:
    return f'{n / 2**20:.0f} MB'


def shm_shortfall(cfg, loaders: Tuple[str, ...] = _LOADERS,
                  free: Optional[int] = None) -> Optional[str]:
    """A warning when the largest of ``cfg``'s DataLoaders ``loaders`` needs more shared
    memory than ``/dev/shm`` has free (``free``: that figure, for tests); None when it
    fits, when no loader has workers, or where there is no ``/dev/shm``."""
    needs = [(loader_shm_bytes(cfg.get(name)), name) for name in loaders]
    need, name = max(needs, key=lambda n: n[0]) if needs else (0, None)   # (the first)
    if need <= 0:
        return None
    # every process of this node shares /dev/shm (torchrun sets LOCAL_WORLD_SIZE)
    try:
        ranks = max(int(os.environ.get('LOCAL_WORLD_SIZE', '1')), 1)
    except ValueError:
        ranks = 1
    total = need * ranks
    free = free_shm() if free is None else free
    if free is None or free >= total:
        return None
    loader = cfg.get(name)
    per_node = f' x {ranks} processes on this node = {_mb(total)}' if ranks > 1 else ''
    size_gb = max(1, -(-2 * total // 2**30))        # twice the need, in whole GB
    return (f'{SHM} has {_mb(free)} free, but {name} (num_workers='
            f'{loader.get("num_workers")}, batch_size={loader.get("batch_size")}) keeps about '
            f'{_mb(need)} of batches in it{per_node}: DataLoader workers pass batches through '
            f'shared memory, and a worker that cannot allocate it can leave the run waiting '
            f'forever. In a container, start it with --shm-size={size_gb}g or --ipc=host; '
            f'else lower {name}.num_workers (0 uses no shared memory) or its batch_size '
            f'(docs/install.md, "Platforms")')


def warn_shm_shortfall(cfg, tool: str, loaders: Tuple[str, ...]) -> None:
    """Print :func:`shm_shortfall`'s warning for ``loaders`` as ``tool``'s config warning
    (first rank; also written to the run's log): a container's 64 MB ``/dev/shm`` is a
    hang, not an error."""
    shortfall = shm_shortfall(cfg, loaders=loaders)
    if shortfall is not None:
        from stan_mm.utils.cli import config_warning
        config_warning(tool, shortfall)
