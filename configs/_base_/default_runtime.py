# Runtime shared by every stan-mm config (MMAction2 1.x style).
default_scope = 'mmaction'
custom_imports = dict(imports=['stan_mm'], allow_failed_imports=False)

default_hooks = dict(
    runtime_info=dict(type='RuntimeInfoHook'),
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=20, ignore_last=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='AtomicCheckpointHook', interval=1, save_best='auto', max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    sync_buffers=dict(type='SyncBuffersHook'),
    # stops the run after 5 non-finite (NaN/inf) losses in a row, or at once when the weights
    # are no longer finite (docs/robustness.md, "NaN guard"). Here rather than in
    # custom_hooks so that a config's own custom_hooks list does not drop it;
    # nonfinite=None removes it.
    nonfinite=dict(type='NonFiniteLossHook', patience=5),
    # SIGTERM / SIGUSR1 (Slurm preemption or time limit, scancel, torchrun's shutdown):
    # finish the iteration, save a checkpoint, stop with status 128 + signal; --resume
    # goes on from it (docs/robustness.md, "Preemption"). preemption=None removes it.
    preemption=dict(type='PreemptionHook', signals=('SIGTERM', 'SIGUSR1')),
    # the log line shows lr (parameter group 0: CLIP) and, next to it, the other groups'
    # rates, e.g. branch_lr for the STAN branch (lr_mult=10)
    param_group_lr=dict(type='ParamGroupLrHook'),
    # fp16 mixed precision (retrieval on a GPU): the GradScaler's loss scale, amp_scale, in
    # the log line (a falling scale means skipped steps); nothing under bf16 / fp32
    amp_scale=dict(type='AmpScaleLogHook'))

# recognition: the head's class list against every dataset's labels and num_classes, when
# training / testing starts (no-op for retrieval). A config that sets its own custom_hooks
# replaces this list: keep the entry there.
# (Workers started after the first epoch, and a resumed run's, draw augmentation of their
# own: ResumableEpochBasedTrainLoop, the configs' train loop, derives their seed from
# (seed, epoch). EpochSeedHook reseeds every generator per epoch, or per iteration with
# tools/train.py --deterministic: docs/robustness.md, "Exact resumption".)
custom_hooks = [dict(type='ClassListCheckHook')]

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    # nccl on GPUs; stan_mm.compat switches to gloo when CUDA is unavailable.
    dist_cfg=dict(backend='nccl'))

# nce_t2v / nce_v2t (retrieval) averaged over the window as loss is, so that they add up
log_processor = dict(type='LogProcessor', window_size=20, by_epoch=True,
                     mean_pattern=r'.*(loss|time|data_time|grad_norm|nce_).*')
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='ActionVisualizer', vis_backends=vis_backends)
log_level = 'INFO'
load_from = None
resume = False
