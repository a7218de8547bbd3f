"""Runner pieces (registered in MMAction2's ``HOOKS`` and ``LOOPS``): crash-safe
checkpointing, the report of skipped unreadable videos, reseeding for exact resumption, an
epoch loop that resumes inside an epoch."""
from .checkpoint_hook import AtomicCheckpointHook, atomic_write_bytes  # noqa: F401
from .skip_hook import SkippedVideosHook  # noqa: F401
from .loops import ResumableEpochBasedTrainLoop  # noqa: F401
from .seed_hook import EpochSeedHook  # noqa: F401
