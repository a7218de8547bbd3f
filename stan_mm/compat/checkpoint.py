"""Safe checkpoint loading under torch >= 2.6 (``weights_only=True`` by default).

mmengine 0.10.7 calls ``torch.load(filename, map_location)`` and its checkpoints carry
``HistoryBuffer`` objects and numpy arrays/scalars in ``meta['message_hub']``, which the
weights-only unpickler refuses. This module allow-lists exactly those types and replaces
mmengine's local-file loader with :func:`safe_torch_load`, so resuming and ``load_from`` work
while a checkpoint whose pickle would import anything else (and could run code) is refused.

URLs go the same way: mmengine's ``http://`` / ``https://`` loader (which ``open-mmlab://``,
``openmmlab://``, ``torchvision://``, ``modelzoo://`` and ``mmcls://`` resolve to) downloads
into torch.hub's cache as before, but the cached file is read with :func:`safe_torch_load`
instead of ``torch.hub.load_state_dict_from_url``'s full unpickling (``weights_only=False``);
a refusal names the URL and the cached file. ``load_from=URL``, ``--resume URL`` and
``init_cfg=dict(type='Pretrained', checkpoint=URL)`` are covered.

Trusting a file is an explicit opt-in, for files whose origin you know:

- environment variable ``STAN_MM_TRUST_CHECKPOINTS=1`` (all files), or
- ``with stan_mm.compat.trusted_checkpoints(): ...`` in Python code (loads of the thread
  that runs the block: another thread of the process, e.g. a service loading a file a
  user sent, keeps the allow-list meanwhile), or
- ``safe_torch_load(path, trust=True)``.

torch's own environment opt-out, ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``, which mmengine's
loaders honour without stan-mm, is honoured by the loaders that replace them (local files:
mmengine's own loader runs; URLs: full unpickling), so importing stan-mm does not undo it
for other models. stan-mm's own loaders of CLIP weights do not read it.

The allow-list needs ``torch.serialization.safe_globals`` (torch 2.5) with
``(callable, 'module.name')`` entries (torch 2.6), and the fix only matters where
``torch.load`` defaults to ``weights_only=True`` (torch 2.6). On an older torch (or one
without ``safe_globals``) mmengine's own loader is left as it is, so other models load as
they do without stan-mm; :func:`safe_torch_load` then still loads tensors and containers
with ``weights_only=True`` and refuses the rest. stan-mm supports torch >= 2.6
(``tools/install.sh`` stops on an older one).
"""
import contextlib
import os
import pickle
import struct
import threading
from typing import Any, Iterator, List

import torch

TRUST_ENV = 'STAN_MM_TRUST_CHECKPOINTS'
# depth of trusted_checkpoints() blocks, per thread (a process-wide count let every other
# thread's loads run pickled code while one thread was inside a block)
_trust = threading.local()
# the oldest torch whose safe_globals takes (callable, 'module.name') entries and whose
# torch.load defaults to weights_only=True
SAFE_LOAD_MIN_TORCH = (2, 6)


def _torch_version() -> tuple:
    """``(major, minor)`` of the running torch ('2.14.1+cu130' -> (2, 14))."""
    out = []
    for part in str(torch.__version__).split('+')[0].split('.')[:2]:
        digits = ''
        for ch in part:
            if not ch.isdigit():
                break
            digits += ch
        out.append(int(digits or 0))
    return tuple(out)


def safe_loading_supported() -> bool:
    """Whether this torch has what the allow-listing loader needs (see the module doc):
    checked on every load, not only at import, so a torch without it never reaches
    ``torch.serialization.safe_globals``."""
    return (hasattr(torch.serialization, 'safe_globals')
            and _torch_version() >= SAFE_LOAD_MIN_TORCH)


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint needs more than the weights-only unpickler allows."""


class CorruptCheckpointError(ValueError):
    """A file that is not a readable PyTorch checkpoint: empty, truncated, another format."""


def _check_header(filename, name=None) -> None:
    """``torch.save`` writes a zip archive (``PK``); its legacy format and plain pickles
    start with the pickle protocol byte ``0x80``. Anything else is named as such instead of
    the unpickler's ``invalid load key`` or ``KeyError: <number>``. ``name``: how messages
    call the file (default: ``filename``)."""
    name = filename if name is None else name
    with open(filename, 'rb') as f:
        head = f.read(4)
    if not head:
        raise CorruptCheckpointError(f'{name} is empty (0 bytes); expected a PyTorch '
                                     f'checkpoint written by torch.save')
    if head[:2] != b'PK' and head[:1] != b'\x80':
        raise CorruptCheckpointError(
            f'{name} is not a PyTorch checkpoint: it starts with {head!r}, not with a '
            f'zip archive (torch.save) or a pickle. A .safetensors file needs that extension')


def _is_weights_only_refusal(err: Exception) -> bool:
    """The weights-only unpickler refused a global (code it would have to import), as
    opposed to a pickle it cannot parse: an opcode ``torch.save``'s protocol-2 pickles never
    contain ('Unsupported operand'), or a damaged stream."""
    text = str(err)
    refused = 'WeightsUnpickler error' in text or 'Weights only load failed' in text
    return refused and 'Unsupported operand' not in text


def _corrupt(filename, err: Exception) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f'cannot read checkpoint {filename} ({type(err).__name__}: {_reason(err)}); the file '
        f'is probably truncated (an interrupted copy or download) or not a PyTorch checkpoint')


def _safe_globals() -> List[Any]:
    import numpy as np
    items: List[Any] = [np.ndarray, np.dtype]
    # numpy 1.x and 2.x moved the reconstruct helpers; take whichever exist.
    for modname in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        try:
            mod = __import__(modname, fromlist=['_reconstruct', 'scalar'])
        except ImportError:
            continue
        items += [getattr(mod, '_reconstruct'), getattr(mod, 'scalar')]
    # numpy >= 1.25 pickles dtypes as numpy.dtypes.<Name>DType classes.
    try:
        import numpy.dtypes as npd
        items += [getattr(npd, n) for n in dir(npd) if n.endswith('DType')]
    except ImportError:
        pass
    try:
        from mmengine.logging.history_buffer import HistoryBuffer
        items.append(HistoryBuffer)
        # HistoryBuffer pickles its statistics as bound methods, i.e. as calls of the
        # builtin ``getattr``; allowing that builtin would open every attribute of every
        # allowed object, so a restricted stand-in takes its name instead.
        items += [(_restricted_getattr, name)
                  for name in ('builtins.getattr', '__builtin__.getattr')]
    except ImportError:
        pass
    try:
        # mmengine's OneCycle schedulers store their annealing function in their state
        # (``anneal_func``, a static method reached through getattr of the class)
        from mmengine.optim.scheduler.param_scheduler import OneCycleParamScheduler
        items.append(OneCycleParamScheduler)
    except ImportError:
        pass
    try:
        from mmengine.config import ConfigDict
        items.append(ConfigDict)
    except ImportError:
        pass
    return items


_HISTORY_STATS = frozenset({'min', 'max', 'mean', 'current'})


_ONE_CYCLE_ANNEALING = frozenset({'_annealing_cos', '_annealing_linear'})


def _restricted_getattr(obj, name):
    """``getattr`` restricted to what mmengine's checkpoints pickle as bound methods: the
    statistics methods of ``HistoryBuffer`` (message hub) and the annealing functions of
    ``OneCycleParamScheduler`` (a OneCycleLR / OneCycleMomentum scheduler's state)."""
    from mmengine.logging.history_buffer import HistoryBuffer
    # ``_statistics_methods`` is filled when the first HistoryBuffer is created, so in a fresh
    # process it can still be empty: the built-in statistics are always allowed.
    allowed = _HISTORY_STATS | set(HistoryBuffer._statistics_methods)
    if (obj is HistoryBuffer or isinstance(obj, HistoryBuffer)) and name in allowed:
        return getattr(obj, name)
    try:
        from mmengine.optim.scheduler.param_scheduler import OneCycleParamScheduler
    except ImportError:      # pragma: no cover - an mmengine without it
        OneCycleParamScheduler = None
    if (OneCycleParamScheduler is not None and obj is OneCycleParamScheduler
            and name in _ONE_CYCLE_ANNEALING):
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'checkpoint asks for attribute {name!r} of a {type(obj).__name__}; only the '
        f'statistics methods of mmengine HistoryBuffer and the annealing functions of '
        f'its OneCycle schedulers are allowed')


def _trusted() -> bool:
    return getattr(_trust, 'depth', 0) > 0 or os.environ.get(TRUST_ENV, '') not in ('', '0')


def checkpoints_trusted() -> bool:
    """Whether the user opted in to trusting checkpoints: ``STAN_MM_TRUST_CHECKPOINTS`` set
    (not ``0``) or inside :func:`trusted_checkpoints` (in this thread). Loaders of other
    formats that can run code (TorchScript archives, :mod:`stan_mm.models.clip.checkpoint`)
    ask this too."""
    return _trusted()


#: the opt-in, as messages state it
TRUST_HINT = (f'If you trust where this file comes from, set {TRUST_ENV}=1 or load it '
              f'inside stan_mm.compat.trusted_checkpoints().')


@contextlib.contextmanager
def trusted_checkpoints() -> Iterator[None]:
    """Within this block, checkpoints that this thread loads load with full unpickling
    (they may run code); other threads keep the allow-list."""
    _trust.depth = getattr(_trust, 'depth', 0) + 1
    try:
        yield
    finally:
        _trust.depth -= 1


def safe_torch_load(filename, map_location='cpu', trust: bool = False, source=None,
                    **kwargs):
    """``torch.load`` restricted to tensors, containers, numpy and mmengine's buffers.

    ``source``: how messages name the file (e.g. the URL it was downloaded from);
    default ``filename``.

    Raises:
        FileNotFoundError: when ``filename`` does not exist.
        UnsafeCheckpointError: when the file needs other types; the message names the file,
            the offending global and how to opt in.
    """
    is_path = isinstance(filename, (str, os.PathLike))
    if is_path and not os.path.isfile(filename):
        raise FileNotFoundError(f'checkpoint file not found: {filename}')
    name = filename if source is None else source
    if is_path:
        _check_header(filename, name)
    try:
        if trust or _trusted():
            return torch.load(filename, map_location=map_location, weights_only=False,
                              **kwargs)
        if not safe_loading_supported():
            # no allow-list on this torch: tensors and containers only
            return torch.load(filename, map_location=map_location, weights_only=True,
                              **kwargs)
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(filename, map_location=map_location, weights_only=True,
                              **kwargs)
    except pickle.UnpicklingError as e:
        if not _is_weights_only_refusal(e):
            raise _corrupt(name, e) from e
        first = _reason(e)
        old_torch = '' if safe_loading_supported() else (
            f' With torch {torch.__version__} numpy arrays and mmengine buffers cannot be '
            f'allow-listed either: that needs torch >= '
            f'{".".join(map(str, SAFE_LOAD_MIN_TORCH))} (torch.serialization.safe_globals '
            f'with named entries), which stan-mm requires.')
        raise UnsafeCheckpointError(
            f'Refused to load checkpoint {name}: its pickle needs objects beyond '
            f'tensors, containers, numpy arrays and mmengine buffers, and unpickling it '
            f'could run code ({first}). {TRUST_HINT}{old_torch}') from e
    except (EOFError, KeyError, OSError, struct.error) as e:
        raise _corrupt(name, e) from e
    except RuntimeError as e:
        if 'TorchScript' in str(e) and 'weights_only' in str(e):
            raise UnsafeCheckpointError(
                f'Refused to load checkpoint {name}: it is a TorchScript archive, which '
                f'torch.load reads with torch.jit.load, running the code stored in it. '
                f'{TRUST_HINT}') from e
        if 'PytorchStreamReader' in str(e) or 'zip archive' in str(e):
            raise _corrupt(name, e) from e
        raise


def _reason(err: Exception) -> str:
    """The informative line of torch's weights-only error (what the pickle asked for)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if 'WeightsUnpickler error' in ln:
            rest = ln.split('WeightsUnpickler error:', 1)[-1].strip()
            return rest or (lines[i + 1] if i + 1 < len(lines) else ln)
    return lines[0] if lines else repr(err)


def torch_weights_only_opted_out() -> bool:
    """Whether torch's own opt-out of weights-only loading is set in the environment
    (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``, as ``torch.load`` reads it, and not overridden by
    ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``). mmengine's loaders honour it without stan-mm
    (``torch.load`` without ``weights_only``), so the loaders that replace them do too."""
    true_values = ('1', 'y', 'yes', 'true')
    return (os.getenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '0').lower() in true_values
            and os.getenv('TORCH_FORCE_WEIGHTS_ONLY_LOAD', '0').lower() not in true_values)


def _mmengine_load_from_local(filename, map_location):
    from mmengine.runner.checkpoint import load_from_local
    return load_from_local(filename, map_location)


def _load_from_local(filename, map_location):
    """Replacement for mmengine's loader of the '' (local path) scheme; mmengine's own
    where this torch lacks what :func:`safe_torch_load` allow-lists with, or where torch's
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set (:func:`torch_weights_only_opted_out`)."""
    if not safe_loading_supported() or torch_weights_only_opted_out():
        return _mmengine_load_from_local(filename, map_location)
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return safe_torch_load(filename, map_location=map_location)


def _download_cached(url: str, model_dir=None, progress: bool = True,
                     check_hash: bool = False, file_name=None) -> str:
    """Download ``url`` into torch.hub's cache as ``torch.hub.load_state_dict_from_url``
    does (``<hub dir>/checkpoints/<name>``, kept when present) -> the cached file."""
    import sys
    from urllib.parse import urlparse

    import torch.hub as hub
    if model_dir is None:
        model_dir = os.path.join(hub.get_dir(), 'checkpoints')
    os.makedirs(model_dir, exist_ok=True)
    filename = file_name if file_name is not None else os.path.basename(
        urlparse(url).path)
    cached = os.path.join(model_dir, filename)
    if not os.path.exists(cached):
        sys.stdout.write(f'Downloading: "{url}" to {cached}\n')
        hash_prefix = None
        if check_hash:
            match = hub.HASH_REGEX.search(filename)
            hash_prefix = match.group(1) if match else None
        hub.download_url_to_file(url, cached, hash_prefix, progress=progress)
    return cached


def _legacy_zip_member(cached: str, model_dir: str):
    """torch < 1.6 checkpoints zipped by hand (a zip holding one file, which torch.hub
    extracts and loads) -> the extracted file; None for any other file. A member whose
    path would leave ``model_dir`` is refused."""
    import zipfile
    if not zipfile.is_zipfile(cached):
        return None
    with zipfile.ZipFile(cached) as zf:
        members = zf.infolist()
        if len(members) != 1 or members[0].is_dir():
            return None
        root = os.path.realpath(model_dir)
        target = os.path.realpath(os.path.join(root, members[0].filename))
        if os.path.commonpath([root, target]) != root:
            raise CorruptCheckpointError(
                f'{cached}: the zip member {members[0].filename!r} would be extracted '
                f'outside {model_dir}; refused')
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with zf.open(members[0]) as src, open(target, 'wb') as dst:
            dst.write(src.read())
    return target


def _safe_load_url(url, model_dir=None, map_location=None, progress=True,
                   check_hash=False, file_name=None, weights_only=None):
    """Replacement for ``mmengine.runner.checkpoint.load_url`` (torch.hub's
    ``load_state_dict_from_url``, which unpickles fully): same download and cache, then
    :func:`safe_torch_load` of the cached file. ``weights_only`` is ignored: the trust
    opt-in (:func:`trusted_checkpoints`, ``STAN_MM_TRUST_CHECKPOINTS``, or torch's own
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``) decides."""
    if model_dir is None:
        import torch.hub as hub
        model_dir = os.path.join(hub.get_dir(), 'checkpoints')
    cached = _download_cached(url, model_dir, progress=progress, check_hash=check_hash,
                              file_name=file_name)
    target = _legacy_zip_member(cached, model_dir) or cached
    return safe_torch_load(target, map_location=map_location,
                           trust=torch_weights_only_opted_out(),
                           source=f'{url} (downloaded to {target})')


def _atomic_put(self, obj: bytes, filepath) -> None:
    from stan_mm.engine.checkpoint_hook import atomic_write_bytes
    atomic_write_bytes(obj, str(filepath))


def _atomic_put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
    _atomic_put(self, obj.encode(encoding), filepath)


def apply_checkpoint_fix() -> None:
    """Route mmengine's local and URL checkpoint loading through :func:`safe_torch_load`
    (only on a torch where :func:`safe_loading_supported`; elsewhere mmengine's loaders
    stay), and make its local file writes (``LocalBackend.put`` / ``put_text``: checkpoints,
    ``mmengine.dump``, every local ``mmengine.fileio.put``) atomic: temporary file + fsync
    + rename; a FIFO or device is written into as before (see
    :func:`~stan_mm.engine.checkpoint_hook.atomic_write_bytes`).

    URLs: ``load_from_http`` (which the ``open-mmlab://``, ``torchvision://`` and
    ``mmcls://`` loaders call directly, not through the scheme table) calls the module
    global ``load_url`` of ``mmengine.runner.checkpoint``; that global is replaced."""
    from mmengine.fileio.backends.local_backend import LocalBackend
    from mmengine.runner import checkpoint as mm_checkpoint
    from mmengine.runner.checkpoint import CheckpointLoader
    if safe_loading_supported():
        CheckpointLoader.register_scheme(prefixes='', loader=_load_from_local, force=True)
        mm_checkpoint.load_url = _safe_load_url
    LocalBackend.put = _atomic_put
    LocalBackend.put_text = _atomic_put_text
