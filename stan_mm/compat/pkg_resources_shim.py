"""Install a minimal ``pkg_resources`` when setuptools >= 82 removed it, without importing
the real one.

mmengine 0.10.7 resolves ``_base_ = 'mmaction::...'`` configs through
``pkg_resources.get_distribution`` and reloads the module with ``importlib.reload``, so the
shim is a real module file (``_shims/pkg_resources.py``) made importable by putting its
folder at the front of ``sys.path``; that happens only when the real module cannot be found
(``importlib.util.find_spec``: nothing is imported).

When the real module exists (setuptools < 82, the pinned stack), it is left to be imported
by whoever needs it (mmengine, inside the functions that resolve ``mmaction::`` bases):
importing it costs 50-180 ms that ``import stan_mm`` used to pay for every tool. setuptools
81 warns ``pkg_resources is deprecated`` on that import and on every ``importlib.reload``
of it, which mmengine does for each ``mmaction::`` base; the warning would only puzzle
users (requirements.txt pins setuptools<82 and the shim takes over beyond). A finder at the
front of ``sys.meta_path`` (:class:`QuietPkgResourcesFinder`) therefore runs the module's
code under ``warnings.catch_warnings`` with that one message ignored, whenever something
imports or reloads it. Nothing else changes: the global warning filters stay as they were,
the module and its loader are setuptools' own, and other imports pass the finder by (one
name compared). A ``pkg_resources`` that fails to run (a broken setuptools) is replaced by
the shim at that point, as a missing one is here.
"""
import importlib.util
import os
import sys
import warnings

SHIM_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), '_shims')
SHIM_FILE = os.path.join(SHIM_DIR, 'pkg_resources.py')
DEPRECATION = 'pkg_resources is deprecated'


def _exec_shim(module) -> None:
    """Run the shim's code in ``module`` (a ``pkg_resources`` whose own code failed): its
    names replace whatever that code defined before it failed."""
    keep = ('__name__', '__spec__', '__loader__', '__package__', '__path__', '__builtins__')
    for name in [n for n in vars(module) if n not in keep]:
        delattr(module, name)
    with open(SHIM_FILE, encoding='utf-8') as f:
        code = compile(f.read(), SHIM_FILE, 'exec')
    module.__file__ = SHIM_FILE
    exec(code, vars(module))   # noqa: S102  (our own file)


class _QuietLoader:
    """Runs the real loader's ``exec_module`` with the deprecation warning ignored; the
    module keeps the real loader (``__loader__``, ``__spec__.loader``)."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        create = getattr(self.loader, 'create_module', None)
        return create(spec) if create is not None else None

    def exec_module(self, module) -> None:
        module.__loader__ = self.loader
        if getattr(module, '__spec__', None) is not None:
            module.__spec__.loader = self.loader
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings('ignore', message=DEPRECATION, category=UserWarning)
                self.loader.exec_module(module)
        except Exception:   # a broken setuptools (ImportError ...): the shim instead
            _exec_shim(module)


class QuietPkgResourcesFinder:
    """``sys.meta_path`` entry for the name ``pkg_resources`` only: finds the real module
    with the finders after it and wraps its loader in :class:`_QuietLoader`."""

    def find_spec(self, name, path=None, target=None):
        if name != 'pkg_resources':
            return None
        for finder in sys.meta_path:
            find = getattr(finder, 'find_spec', None)
            if finder is self or isinstance(finder, QuietPkgResourcesFinder) or find is None:
                continue
            spec = find(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, 'exec_module'):
                    spec.loader = _QuietLoader(spec.loader)
                return spec
        return None


def _real_module_exists() -> bool:
    """Whether ``import pkg_resources`` finds a module, found without importing it (an
    import hook that refuses the name counts as missing)."""
    try:
        return importlib.util.find_spec('pkg_resources') is not None
    except (ImportError, ValueError):
        return False


def apply_pkg_resources_fix() -> bool:
    """Make ``import pkg_resources`` work, lazily and without the deprecation warning
    (module docstring). Returns True if the shim was installed (the real module is
    missing)."""
    module = sys.modules.get('pkg_resources')
    if module is not None or _real_module_exists():
        # (imported already: a later importlib.reload still goes through the finder)
        if not any(isinstance(f, QuietPkgResourcesFinder) for f in sys.meta_path):
            sys.meta_path.insert(0, QuietPkgResourcesFinder())
        return False
    sys.modules.pop('pkg_resources', None)
    if SHIM_DIR not in sys.path:
        sys.path.insert(0, SHIM_DIR)
    import pkg_resources  # noqa: F401  (the shim)
    return True
