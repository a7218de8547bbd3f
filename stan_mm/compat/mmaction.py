"""Stand-in for ``mmaction.models.localizers.drn``, missing from the mmaction2 1.2.0 wheel."""
import importlib.util
import os
import sys
import types


def _real_drn_present() -> bool:
    spec = importlib.util.find_spec('mmaction')
    if spec is None or not spec.submodule_search_locations:
        return True  # mmaction not installed: nothing to fix
    for root in spec.submodule_search_locations:
        drn = os.path.join(root, 'models', 'localizers', 'drn')
        if os.path.exists(os.path.join(drn, '__init__.py')) or os.path.exists(drn + '.py'):
            return True
    return False


class DRN:  # pragma: no cover - only raised if someone builds the localizer
    """Placeholder for MMAction2's DRN localizer, absent from the installed wheel."""

    def __init__(self, *args, **kwargs):
        raise ImportError(
            'mmaction2 1.2.0 as installed from PyPI lacks mmaction/models/localizers/drn; '
            'stan-mm registered a stand-in so that `import mmaction.models` works. '
            'To use DRN, install mmaction2 from its git repository.')


def apply_drn_fix() -> bool:
    """Register the stand-in modules when the real ``drn`` package is missing.

    Must run before ``mmaction.models`` is imported. Returns True when the stand-in was
    installed.
    """
    name = 'mmaction.models.localizers.drn'
    if name in sys.modules or _real_drn_present():
        return False
    pkg = types.ModuleType(name)
    pkg.__path__ = []  # a package, so that `from .drn.drn import DRN` resolves
    pkg.__doc__ = 'stan-mm stand-in: the installed mmaction2 wheel lacks this package.'
    sub = types.ModuleType(name + '.drn')
    sub.DRN = DRN
    pkg.drn = sub
    pkg.DRN = DRN
    sys.modules[name] = pkg
    sys.modules[name + '.drn'] = sub
    return True


def _vindlu_importable() -> bool:
    """mmaction2 1.2.0's VindLU code imports names that transformers 5 removed."""
    try:
        from transformers.modeling_utils import apply_chunking_to_forward  # noqa: F401
        return True
    except Exception:
        return False


def apply_multimodal_fix() -> bool:
    """Register VindLU placeholders instead of crashing when transformers >= 5 is installed.

    mmaction2 1.2.0 imports its VindLU models whenever ``transformers>=4.28`` is installed,
    and those modules fail on transformers 5 (``apply_chunking_to_forward`` moved). stan-mm
    does not use VindLU; the flag is switched off only when the import would fail, so
    ``import mmaction.models`` keeps working. Returns True when the flag was switched off.
    """
    if 'mmaction.models' in sys.modules:
        return False
    import mmaction.utils.dependency as dependency
    if dependency.WITH_MULTIMODAL and not _vindlu_importable():
        dependency.WITH_MULTIMODAL = False
        return True
    return False
