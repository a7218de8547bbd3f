"""Models: CLIP towers (``clip``), the CLIPSTAN backbone (``backbones``), heads,
retrieval models and losses. Importing this package registers them all in MMAction2's
``MODELS`` registry."""
from . import clip  # noqa: F401
from . import backbones  # noqa: F401
from . import heads  # noqa: F401
from . import losses  # noqa: F401
from . import retrievers  # noqa: F401
