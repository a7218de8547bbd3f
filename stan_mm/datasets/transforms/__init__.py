"""Data transforms, registered in MMAction2's ``TRANSFORMS`` on import."""
from .tokenize import CLIPBPETokenize, tokenize  # noqa: F401
from . import video_io  # noqa: F401  (SafeDecordInit, SafeDecordDecode, SkipUnreadable)
from .video_io import VideoReadError  # noqa: F401
from . import clip_randaugment  # noqa: F401  (ClipRandAugment)
from . import symmetric_sample  # noqa: F401  (SymmetricSample)
from . import fast_paths  # noqa: F401  (exact fast paths for MMAction2's Resize, FormatShape, UniformSample)
