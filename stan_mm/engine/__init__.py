"""Runner pieces (registered in MMAction2's ``HOOKS`` and ``LOOPS``, mmengine's optimizer
wrapper constructors): the optimizer groups of the STAN recipes, crash-safe
checkpointing (never of NaN weights), the stop of a run whose loss or weights became
NaN / inf, a checkpoint and a clean stop on SIGTERM / SIGUSR1 (preemption), the learning rate of every parameter group and the fp16 loss scale in the log, the report of skipped unreadable videos, reseeding for exact resumption, an
epoch loop that resumes inside an epoch, the check that the head and the datasets agree on
the classes."""
from .checkpoint_hook import (AtomicCheckpointHook, atomic_write_bytes,  # noqa: F401
                              recover_last_checkpoint)
from .nonfinite_hook import NonFiniteLossHook, NonFiniteTrainingError  # noqa: F401
from .lr_log_hook import ParamGroupLrHook  # noqa: F401
from .skip_hook import SkippedVideosHook  # noqa: F401
from .loops import ResumableEpochBasedTrainLoop  # noqa: F401
from .seed_hook import EpochSeedHook  # noqa: F401
from .class_check_hook import ClassListCheckHook  # noqa: F401
from .optim_constructor import STANOptimWrapperConstructor  # noqa: F401
from .preemption_hook import PreemptionHook, TrainingPreempted  # noqa: F401
from .amp_scale_hook import AmpScaleLogHook  # noqa: F401
