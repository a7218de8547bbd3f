"""Runner pieces (registered in MMAction2's ``HOOKS``): crash-safe checkpointing, the
report of skipped unreadable videos, per-epoch reseeding for exact resumption."""
from .checkpoint_hook import AtomicCheckpointHook, atomic_write_bytes  # noqa: F401
from .skip_hook import SkippedVideosHook  # noqa: F401
from .seed_hook import EpochSeedHook  # noqa: F401
