# Quickstart: text-video retrieval with a tiny STANRetriever trained from random weights on
# the synthetic motion benchmark (generated under data/motion on first use, with the same
# parameters as motion_stan_tiny.py; no download, no GPU). Runs on 2 CPU cores in minutes:
#   python tools/train.py configs/quickstart/motion_retrieval_tiny.py
#   python tools/test.py configs/quickstart/motion_retrieval_tiny.py \
#       work_dirs/motion_retrieval_tiny/epoch_1.pth [--dump work_dirs/retrieval_test.pkl]
# 160 test videos with 5 captions each (800 text queries): chance R@1 is 1/160 = 0.6 % (t2v).
# Videos come in twin pairs (the same frames played forwards and backwards, captions that
# differ only in the motion phrase), so only a model that uses frame order can rank the
# right twin first.
# Measured on 2 CPU cores (the README's machine), this config as is (4,800 training videos
# x 5 captions, 1 epoch = 750 steps of 32): train + test 4 min 03 s; test t2v R@1/R@5/R@10
# 11.3/52.9/81.3, MdR 5; v2t R@1 9.4. Time direction is NOT learned at this budget:
# motion/twin_t2v_acc (captions closer to their own video than to its reversed twin) is
# 50.1, chance level. Tried without success: twin batches (TwinGroupSampler, the
# SyntheticMotionTextDataset.twin_groups() pairs) with the recognition quickstart's
# initialisation, lr 3e-3 and 2 epochs: val t2v R@1 16.4, twin_t2v_acc 51.8 (8 min).
#
# SyntheticMotionTextDataset generates the data on first use: training reads every
# (video, caption) pair; validation/testing (test_mode=True) one sample per video with all
# its captions, the contract of RetrievalRecallMetric.
_base_ = ['../_base_/default_runtime.py', './_motion_common.py']

model = dict(
    type='STANRetriever',
    arch=_base_.clip_cfg,
    pretrained=None,
    backbone=dict(
        type='CLIPSTAN',
        depth=2,                  # K = 2 branch layers on CLIP blocks 1..2
        temporal_module='attn',
        drop_path_rate=0.0,
        input_layout='NTCHW'),
    text_backbone=dict(frozen=False),
    loss=dict(type='SymmetricInfoNCELoss', gather=True, duplicate_videos='mask'),
    temperature=0.05,
    data_preprocessor=dict(
        type='RetrievalDataPreprocessor',
        mean=[122.771, 116.746, 104.093],
        std=[68.500, 66.632, 70.323]))

meta_keys = ('sample_idx', 'video_idx', 'text_idx', 'video_id', 'filename')
# No horizontal flip: it would swap "moving left" and "moving right".
train_pipeline = [
    dict(type='SafeDecordInit'),
    dict(type='UniformSample', clip_len=_base_.num_frames, num_clips=1),
    dict(type='SafeDecordDecode'),
    dict(type='Resize', scale=(-1, 36)),
    dict(type='RandomCrop', size=32),
    dict(type='FormatShape', input_format='NCHW'),
    dict(type='CLIPBPETokenize', context_length=_base_.context_length),
    dict(type='PackActionInputs', collect_keys=('imgs', 'text'), meta_keys=meta_keys)
]
test_pipeline = [
    dict(type='SafeDecordInit'),
    dict(type='UniformSample', clip_len=_base_.num_frames, num_clips=1, test_mode=True),
    dict(type='SafeDecordDecode'),
    dict(type='Resize', scale=(-1, 32)),
    dict(type='CenterCrop', crop_size=32),
    dict(type='FormatShape', input_format='NCHW'),
    dict(type='CLIPBPETokenize', context_length=_base_.context_length),
    dict(type='PackActionInputs', collect_keys=('imgs', 'text'), meta_keys=meta_keys)
]

train_dataloader = dict(
    batch_size=32,
    num_workers=2,
    persistent_workers=True,
    # 4,800 videos x 5 captions = 24,000 pairs = 750 full batches of 32: nothing is dropped
    # here. A smaller last batch (other sizes) would be dropped: one pair, or one video's
    # captions, trains on a loss of exactly 0 while AdamW still decays the weights.
    drop_last=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type='SyntheticMotionTextDataset', data_root=_base_.data_root, split='train',
                 generate=_base_.motion, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=16,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='SyntheticMotionTextDataset', data_root=_base_.data_root, split='val',
                 generate=_base_.motion, test_mode=True, pipeline=test_pipeline))
test_dataloader = dict(
    batch_size=16,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='SyntheticMotionTextDataset', data_root=_base_.data_root, split='test',
                 generate=_base_.motion, test_mode=True, pipeline=test_pipeline))
val_evaluator = [
    dict(type='RetrievalRecallMetric'),
    # time direction: does a caption prefer its own video over the time-reversed twin?
    dict(type='MotionTwinRetrievalMetric'),   # finds the benchmark through the dataset
]
test_evaluator = val_evaluator

max_epochs = 1                 # 4,800 videos x 5 captions = 750 steps of 32
train_cfg = dict(type='ResumableEpochBasedTrainLoop', max_epochs=max_epochs, val_begin=1,
                 val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

optim_wrapper = dict(
    type='AutoAmpOptimWrapper',   # bf16 autocast on GPU, fp32 on CPU
    dtype='bfloat16',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0),
    clip_grad=dict(max_norm=5.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=1e-5, by_epoch=True,
         begin=0, end=max_epochs, convert_to_iter_based=True)
]

default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=2, max_keep_ckpts=2, save_best='retrieval/t2v_R1',
                    rule='greater'))
randomness = dict(seed=0, deterministic=False)
auto_scale_lr = dict(enable=False, base_batch_size=32)
