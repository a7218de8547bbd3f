"""Runner pieces: crash-safe checkpointing (registered in MMAction2's ``HOOKS``)."""
from .checkpoint_hook import AtomicCheckpointHook, atomic_write_bytes  # noqa: F401
