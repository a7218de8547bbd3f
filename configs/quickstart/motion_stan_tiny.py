# Quickstart: a tiny STAN trained from random weights on the synthetic motion benchmark
# (generated under data/motion on first use; no download, no GPU). Runs on 2 CPU cores in a
# few minutes:  python tools/quickstart.py   (or: python tools/train.py THIS_CONFIG)
# Every class has a partner class whose videos are the same frames played backwards, so a
# model that ignores frame order (motion_meanpool_tiny.py) is at chance within each pair.
_base_ = ['../_base_/default_runtime.py', './_motion_common.py']

num_classes = 2 * len(_base_.motion.pairs)   # 4 motion pairs x 2 directions = 8

model = dict(
    type='Recognizer3D',
    backbone=dict(
        type='CLIPSTAN',
        arch=_base_.clip_cfg,
        pretrained=None,
        depth=2,                  # K = 2 branch layers on CLIP blocks 1..2
        temporal_module='attn',
        drop_path_rate=0.0,
        input_layout='NCTHW',
        # From random weights (see CLIPSTAN's docstring and docs/quickstart.md): a
        # positional embedding strong enough for the branch to tell where a shape is, and a
        # temporal path that contributes from the first step.
        pos_embed_init_std=1.0,
        temporal_out_init_std=0.02),
    cls_head=dict(
        type='I3DHead',
        in_channels=64,
        num_classes=num_classes,
        spatial_type=None,
        dropout_ratio=0.0,
        init_std=0.1,             # a 0.02 head slowed learning from random weights
        average_clips='prob'),
    data_preprocessor=dict(
        type='ActionDataPreprocessor',
        mean=[122.771, 116.746, 104.093],
        std=[68.500, 66.632, 70.323],
        format_shape='NCTHW'))

# No horizontal flip: it would swap "moving left" and "moving right".
train_pipeline = [
    dict(type='SafeDecordInit'),
    # one frame at a random offset inside each of 8 equal segments (strictly increasing)
    dict(type='UniformSampleFrames', clip_len=_base_.num_frames, num_clips=1),
    dict(type='SafeDecordDecode'),
    dict(type='Resize', scale=(-1, 36), interpolation='area'),  # area: no aliasing
    dict(type='RandomCrop', size=32),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs')
]
test_pipeline = [
    dict(type='SafeDecordInit'),
    # frames symmetric in time: an order-blind model sees the same frames of a video and
    # of its time-reversed twin (MMAction2's UniformSample(test_mode=True) does not)
    dict(type='SymmetricSample', clip_len=_base_.num_frames),
    dict(type='SafeDecordDecode'),
    dict(type='Resize', scale=(-1, 32), interpolation='area'),
    dict(type='CenterCrop', crop_size=32),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs')
]

# TwinGroupSampler serves a video and its time-reversed twin (same frames, partner label)
# next to each other, so every batch of 16 holds 8 twin pairs: each step's gradient is
# about frame order.
train_dataloader = dict(
    batch_size=16,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='TwinGroupSampler', shuffle=True),
    dataset=dict(type='SyntheticMotionDataset', data_root=_base_.data_root, split='train',
                 generate=_base_.motion, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=16,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='SyntheticMotionDataset', data_root=_base_.data_root, split='val',
                 generate=_base_.motion, pipeline=test_pipeline, test_mode=True))
test_dataloader = dict(
    batch_size=16,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='SyntheticMotionDataset', data_root=_base_.data_root, split='test',
                 generate=_base_.motion, pipeline=test_pipeline, test_mode=True))
val_evaluator = [dict(type='RecognitionAccMetric'), dict(type='MotionPairMetric')]
test_evaluator = val_evaluator

max_epochs = 10                # 300 iterations of 16 clips per epoch
train_cfg = dict(type='ResumableEpochBasedTrainLoop', max_epochs=max_epochs, val_begin=1,
                 val_interval=2)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

optim_wrapper = dict(
    type='AutoAmpOptimWrapper',   # bf16 autocast on GPU, fp32 on CPU
    dtype='bfloat16',
    optimizer=dict(type='AdamW', lr=3e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0),
    clip_grad=dict(max_norm=5.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.02, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=3e-5, by_epoch=True,
         begin=0, end=max_epochs, convert_to_iter_based=True)
]

default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=5, max_keep_ckpts=2))
randomness = dict(seed=0, deterministic=False)
auto_scale_lr = dict(enable=False, base_batch_size=16)
