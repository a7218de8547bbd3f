"""Stand-in for ``mmaction.models.localizers.drn``, missing from the mmaction2 1.2.0 wheel,
and placeholders for mmaction2 1.2.0's VindLU models under transformers >= 5."""
import importlib.metadata
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
        # upstream's drn/ has no __init__.py: in a source checkout it is a namespace
        # package whose drn/drn.py is what mmaction imports
        if any(os.path.exists(p) for p in (os.path.join(drn, '__init__.py'),
                                           os.path.join(drn, 'drn.py'), drn + '.py')):
            return True
    return False


DRN_MISSING = (
    'mmaction2 1.2.0 as installed from PyPI lacks mmaction/models/localizers/drn; '
    'stan-mm registered a stand-in so that `import mmaction.models` works. '
    'To use DRN, install mmaction2 from its git repository in editable mode '
    '(git clone https://github.com/open-mmlab/mmaction2 && pip install -e ./mmaction2): '
    'upstream drn/ has no __init__.py, so wheels and regular installs leave it out.')


class DRN:
    """Placeholder for MMAction2's DRN localizer, absent from the installed wheel; it is
    registered as ``DRN`` in MMAction2's MODELS, so building one names what to install."""

    def __init__(self, *args, **kwargs):
        raise ImportError(DRN_MISSING)


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
    # the real drn.py registers DRN in MMAction2's MODELS; without this, building one
    # would only say that 'DRN' is not in the registry (module_dict, not get(): get would
    # import mmaction.models, which must wait for the multimodal fix)
    from mmaction.registry import MODELS
    if 'DRN' not in MODELS.module_dict:
        MODELS.register_module(name='DRN', module=DRN)
    return True


def _transformers_version():
    try:
        return importlib.metadata.version('transformers')
    except importlib.metadata.PackageNotFoundError:
        return None


def _vindlu_importable() -> bool:
    """mmaction2 1.2.0's VindLU code imports names that transformers 5 removed
    (``transformers.modeling_utils.apply_chunking_to_forward``, ...). Decided from the
    installed version, without importing transformers (importing
    ``transformers.modeling_utils`` to find out took 3-7 s of every ``import stan_mm``)."""
    version = _transformers_version()
    if version is None:
        return False
    major = version.split('.')[0]
    return not (major.isdigit() and int(major) >= 5)


def multimodal_message(name: str, version: str) -> str:
    return (f'{name} is not available: transformers {version} is installed, but mmaction2 '
            f'1.2.0\'s multimodal models (VindLU) need transformers >= 4.28 and < 5 '
            f'(their code imports names transformers 5 removed). stan-mm switched them off '
            f'so that `import mmaction.models` works; to use {name}, install '
            f'"transformers>=4.28,<5" (stan-mm runs with either).')


def _register_transformers5_placeholders(names, registry):
    """Stand-in for mmaction's ``register_multimodal_placeholder``, whose message ("please
    install mmaction2[multimodal]") would be wrong here: the dependency is installed, in a
    version too new."""
    version = _transformers_version()
    for name in names:
        def placeholder(*args, _name=name, **kwargs):
            raise ImportError(multimodal_message(_name, version))
        placeholder.__name__ = placeholder.__qualname__ = name
        registry.register_module(name=name, module=placeholder)


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
        # read by mmaction.models.multimodal when it registers the VindLU placeholders
        dependency.register_multimodal_placeholder = _register_transformers5_placeholders
        return True
    return False
