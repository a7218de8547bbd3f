# Quickstart: a tiny STAN trained from random weights on the synthetic motion benchmark
# (generated under data/motion on first use; no download, no GPU). Runs on 2 CPU cores in a
# few minutes:  python tools/quickstart.py   (or: python tools/train.py THIS_CONFIG)
# Every class has a partner class whose videos are the same frames played backwards, so a
# model that ignores frame order (motion_meanpool_tiny.py) is at chance within each pair.
_base_ = ['../_base_/default_runtime.py', './_motion_common.py']

num_classes = 10

model = dict(
    type='Recognizer3D',
    backbone=dict(
        type='CLIPSTAN',
        arch=_base_.clip_cfg,
        pretrained=None,
        depth=2,                  # K = 2 branch layers on CLIP blocks 3..4
        temporal_module='attn',
        drop_path_rate=0.0,
        input_layout='NCTHW'),
    cls_head=dict(
        type='I3DHead',
        in_channels=64,
        num_classes=num_classes,
        spatial_type=None,
        dropout_ratio=0.0,
        init_std=0.02,
        average_clips='prob'),
    data_preprocessor=dict(
        type='ActionDataPreprocessor',
        mean=[122.771, 116.746, 104.093],
        std=[68.500, 66.632, 70.323],
        format_shape='NCTHW'))

# No horizontal flip: it would swap "moving left" and "moving right".
train_pipeline = [
    dict(type='SafeDecordInit'),
    dict(type='UniformSample', clip_len=_base_.num_frames, num_clips=1),
    dict(type='SafeDecordDecode'),
    dict(type='Resize', scale=(-1, 36)),
    dict(type='RandomCrop', size=32),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs')
]
test_pipeline = [
    dict(type='SafeDecordInit'),
    dict(type='UniformSample', clip_len=_base_.num_frames, num_clips=1, test_mode=True),
    dict(type='SafeDecordDecode'),
    dict(type='Resize', scale=(-1, 32)),
    dict(type='CenterCrop', crop_size=32),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs')
]

train_dataloader = dict(
    batch_size=16,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
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
val_evaluator = [dict(type='AccMetric'), dict(type='MotionPairMetric')]
test_evaluator = val_evaluator

max_epochs = 30
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_begin=1,
                 val_interval=5)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

optim_wrapper = dict(
    type='AutoAmpOptimWrapper',   # bf16 autocast on GPU, fp32 on CPU
    dtype='bfloat16',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0),
    clip_grad=dict(max_norm=5.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=2,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - 2, eta_min=1e-5, by_epoch=True,
         begin=2, end=max_epochs, convert_to_iter_based=True)
]

default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=5, max_keep_ckpts=2))
randomness = dict(seed=0, deterministic=False)
auto_scale_lr = dict(enable=False, base_batch_size=16)
