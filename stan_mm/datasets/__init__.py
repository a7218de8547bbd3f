"""Datasets and transforms (registered in MMAction2's ``DATASETS``/``TRANSFORMS``)."""
from . import transforms  # noqa: F401
from . import synthetic  # noqa: F401
from . import motion_dataset  # noqa: F401
from . import retrieval  # noqa: F401
from . import samplers  # noqa: F401
from . import video_list  # noqa: F401
