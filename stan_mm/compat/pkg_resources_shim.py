"""Install a minimal ``pkg_resources`` when setuptools >= 82 removed it.

mmengine 0.10.7 resolves ``_base_ = 'mmaction::...'`` configs through
``pkg_resources.get_distribution`` and reloads the module with ``importlib.reload``, so the
shim is a real module file (``_shims/pkg_resources.py``) made importable by putting its
folder at the front of ``sys.path``; that happens only when the real module cannot be imported.
"""
import os
import sys
import warnings

SHIM_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), '_shims')


def apply_pkg_resources_fix() -> bool:
    """Make ``import pkg_resources`` work. Returns True if the shim was installed."""
    if sys.modules.get('pkg_resources') is not None:
        return False
    try:
        # setuptools 81 warns on every first import that pkg_resources is deprecated ("pin
        # to Setuptools<81"); the stack needs it (requirements.txt pins setuptools<82 and
        # the shim takes over beyond), so the warning would only puzzle users of every tool
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', message='pkg_resources is deprecated',
                                    category=UserWarning)
            import pkg_resources  # noqa: F401
        return False
    except Exception:  # ImportError (setuptools >= 82), or a broken setuptools
        pass
    sys.modules.pop('pkg_resources', None)
    if SHIM_DIR not in sys.path:
        sys.path.insert(0, SHIM_DIR)
    import pkg_resources  # noqa: F401,F811  (the shim)
    return True
