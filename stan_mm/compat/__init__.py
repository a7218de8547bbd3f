"""Fixes for the pinned OpenMMLab stack, applied once when ``stan_mm`` is imported.

Every fix here answers one known breakage of that stack (the table below says which) and
is covered by a test in ``tests/test_compat.py`` that fails without it:

=====  ==========================================================================
``drn``         mmaction2 1.2.0 wheels lack ``mmaction/models/localizers/drn``;
                a stand-in package is registered only when the real one is missing,
                and a ``DRN`` placeholder in MODELS says what to install.
``multimodal``  with transformers >= 5 installed, mmaction2 1.2.0's VindLU import
                crashes ``import mmaction.models``; placeholders are used instead, whose
                error names the installed transformers and the version VindLU needs.
``pkg_resources`` setuptools >= 82 removed it; mmengine uses three of its functions
                to resolve ``mmaction::`` base configs. A shim over
                ``importlib.metadata`` is installed only when it cannot be found
                (nothing is imported to tell). The real one is left to mmengine to
                import when it needs it, its "pkg_resources is deprecated" warning
                ignored by a ``sys.meta_path`` finder for that name only.
``checkpoint``  torch >= 2.6 loads with ``weights_only=True``; mmengine checkpoints
                hold ``HistoryBuffer`` and numpy objects. They are allow-listed, and a
                checkpoint that needs anything else is refused with a message naming
                the file and the opt-in (see :mod:`stan_mm.compat.checkpoint`). URLs
                (``http(s)://``, ``open-mmlab://``, ``torchvision://``, ``mmcls://``)
                download to torch.hub's cache as before and load through the same
                loader (mmengine's ``load_url`` fully unpickled them); a refusal names
                the URL (test in ``tests/test_security_checkpoints.py``). On a
                torch without what the allow-list needs (< 2.6, or no
                ``torch.serialization.safe_globals``) mmengine's loader is left alone;
                torch's own opt-out ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` is honoured
                as mmengine honours it. mmengine's local file writes
                (``LocalBackend.put``/``put_text``: checkpoints, ``mmengine.dump``, any
                local ``fileio.put``) become atomic (temporary file, fsync, rename) for
                every caller; a FIFO or device (``/dev/null``, ``/dev/stdout``) is
                written into as before, not replaced (tests in
                ``tests/test_plugin_hygiene.py``).
``dist``        on a machine without CUDA, ``torch.cuda.set_device`` is skipped,
                ``nccl`` falls back to ``gloo``, and DDP is built without
                ``device_ids``, for ``--launcher pytorch`` (torchrun) and
                ``--launcher slurm`` (srun; tested with a simulated ``srun`` in
                ``tests/test_slurm_scripts.py``) (see :mod:`stan_mm.compat.dist`).
``amp``         ``AutoAmpOptimWrapper`` picks ``AmpOptimWrapper`` on GPU and a plain
                ``OptimWrapper`` on CPU.
``workers``     ``num_workers=0`` with the configs' ``persistent_workers=True`` no
                longer raises: the runner drops ``persistent_workers`` when there
                are no workers (see :mod:`stan_mm.compat.workers`).
``decord_fork`` (found in this project's CI, not in the notes) a decord ``VideoReader``
                inherited by a forked DataLoader worker and garbage-collected there
                hangs or aborts the worker; such readers are no longer freed in the
                child (see :mod:`stan_mm.compat.decord_fork`).
``worker_shutdown`` (found in this project's tests, not in the notes) DataLoader
                workers (persistent ones, kept in ``loader._iterator``) are stopped
                when ``Runner.train/val/test`` returns or raises; left to the garbage
                collector, the finished runner's cycles made each worker wait out a
                5 s join before being killed; torch's worker shutdown kills (SIGKILL)
                workers its ``terminate()`` left alive (they ignore SIGTERM under
                ``PreemptionHook``); ``IterBasedTrainLoop``'s endless iterator starts
                its workers at its first batch, not when the loop is built, so that
                hooks reach their ``worker_init_fn``, and gives the fresh workers of
                each pass over a finite sampler a seed of their own (mmengine's
                repeated the first pass's augmentation every pass; see
                :mod:`stan_mm.compat.worker_shutdown`).
``default_hooks`` (found in review) an entry of ``default_hooks`` other than mmengine's
                six set to ``None`` failed a bare assert when the runner was built;
                such entries are dropped, so ``default_hooks.nonfinite=None`` switches
                the stan runtime's NaN guard off (see
                :mod:`stan_mm.compat.default_hooks`).
``frozen_log``  (log noise, not in the notes) the optimizer constructor's WARNING per
                frozen tensor (~200 per run with the text classifier's frozen tower)
                becomes one WARNING line grouped by module (see
                :mod:`stan_mm.compat.frozen_log`).
``fileclient_log`` (log noise) the ``FileClient`` / ``HardDiskBackend`` deprecation
                WARNINGs of ``CheckpointHook.before_train`` and ``Runner.save_checkpoint``
                (a ``FileClient`` built and not used) at the start of every training run
                and at every checkpoint are dropped when no ``file_client_args`` is
                given (see :mod:`stan_mm.compat.fileclient_log`; its test is in
                ``tests/test_log_review_fixes2.py``).
``empty_loader`` (found in review) a training DataLoader without a batch (a set smaller
                than one batch with ``drop_last=True``, or an empty one) is refused
                when mmengine's ``EpochBasedTrainLoop`` or ``IterBasedTrainLoop`` is
                built, in one line with the sizes and the fix; mmengine failed on a
                bare assertion, trained nothing, or raised ``StopIteration``.
                Distributed, every rank refuses it when any rank's shard has no batch
                (one all-gather of the counts), and an epoch loop whose ranks have
                different numbers of batches (see :mod:`stan_mm.compat.empty_loader`;
                the DDP test is in ``tests/test_wrapper_resume.py``).
``iter_loop_order`` (found in review) mmengine's ``IterBasedTrainLoop`` resumed with
                ``randomness.seed`` unset gives its training sampler (``InfiniteSampler``,
                ``DefaultSampler``) the interrupted run's seed back, recorded in every
                checkpoint; mmengine built it with the new run's seed, so the resumed
                run trained other samples (see :mod:`stan_mm.compat.iter_loop_order`; its
                test is in ``tests/test_wrapper_resume.py``).
``macos``       (found in review) ``env_cfg.mp_cfg.mp_start_method='fork'`` (the configs')
                becomes ``spawn`` on macOS, where forking a threaded process is not
                safe, with a WARNING (see :mod:`stan_mm.compat.macos`).
=====  ==========================================================================
"""
from .checkpoint import (CorruptCheckpointError, UnsafeCheckpointError,  # noqa: F401
                         apply_checkpoint_fix, safe_loading_supported, safe_torch_load,
                         trusted_checkpoints)
from .decord_fork import apply_decord_fork_fix  # noqa: F401
from .default_hooks import apply_default_hooks_fix  # noqa: F401
from .empty_loader import apply_empty_loader_fix  # noqa: F401
from .iter_loop_order import apply_iter_loop_order_fix  # noqa: F401
from .dist import apply_dist_fix  # noqa: F401
from .fileclient_log import apply_fileclient_log_fix  # noqa: F401
from .macos import apply_macos_fix  # noqa: F401
from .frozen_log import apply_frozen_log_fix  # noqa: F401
from .mmaction import apply_drn_fix, apply_multimodal_fix  # noqa: F401
from .pkg_resources_shim import apply_pkg_resources_fix  # noqa: F401
from .workers import apply_workers_fix  # noqa: F401
from .worker_shutdown import (apply_worker_shutdown_fix,  # noqa: F401
                              shutdown_loader_workers)

_APPLIED = False


def apply_all() -> None:
    """Apply every fix (idempotent). Called by ``import stan_mm``."""
    global _APPLIED
    if _APPLIED:
        return
    apply_pkg_resources_fix()
    apply_drn_fix()
    apply_multimodal_fix()
    apply_checkpoint_fix()
    apply_dist_fix()
    apply_decord_fork_fix()
    apply_workers_fix()
    apply_worker_shutdown_fix()
    apply_frozen_log_fix()
    apply_fileclient_log_fix()
    apply_default_hooks_fix()
    apply_empty_loader_fix()
    apply_iter_loop_order_fix()
    apply_macos_fix()
    from . import optim  # noqa: F401  (registers AutoAmpOptimWrapper)
    _APPLIED = True
