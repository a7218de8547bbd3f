"""Datasets and transforms (registered in MMAction2's ``DATASETS``/``TRANSFORMS``)."""
from . import transforms  # noqa: F401
