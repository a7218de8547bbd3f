"""stan-mm: STAN (Spatial-Temporal Auxiliary Network, CVPR 2023) for MMAction2 1.x.

``import stan_mm`` (or ``custom_imports = dict(imports=['stan_mm'])`` in a config) first
applies the stack fixes of :mod:`stan_mm.compat`, then registers every model, dataset,
transform and metric of the project in MMAction2's registries.
"""
from .compat import apply_all as _apply_compat_fixes
from .version import __version__  # noqa: F401

_apply_compat_fixes()

import warnings  # noqa: E402

with warnings.catch_warnings():
    # mmcv-lite (what tools/install.sh installs) lacks the compiled MultiScaleDeformable-
    # Attention op, which no MMAction2 video model uses; mmcv warns about it on import
    warnings.filterwarnings('ignore', message='Fail to import ``MultiScaleDeformableAttention',
                            category=UserWarning)
    import mmaction.models  # noqa: E402,F401  (registers MMAction2's own modules first)

from . import datasets  # noqa: E402,F401
from . import engine  # noqa: E402,F401
from . import evaluation  # noqa: E402,F401
from . import models  # noqa: E402,F401
