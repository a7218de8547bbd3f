# MSR-VTT text-video retrieval, CLIP4Clip layout (see STAN_REFERENCE.md section 7):
#   data/msrvtt/MSRVTT_data.json          captions (20 per video)
#   data/msrvtt/MSRVTT_train.9k.csv       training videos (column video_id)
#   data/msrvtt/MSRVTT_JSFUSION_test.csv  1k-A test: 1000 videos x 1 caption
#   data/msrvtt/videos/<video_id>.mp4
# Check a split first: python tools/data/prepare_retrieval.py msrvtt ... (see its docstring)
#
# 12 frames (one random frame per uniform segment at training, the segment's fixed frame at
# test), 32 tokens. These two variables are read when this file is evaluated: a child config
# or --cfg-options that changes them does NOT rebuild the pipelines; override the pipeline
# entries instead (e.g. train_dataloader.dataset.pipeline.1.clip_len=...).
dataset_type = 'RetrievalVideoTextDataset'
data_root = 'data/msrvtt'
num_frames = 12
context_length = 32
# the video's file, its index, caption numbers and sample index travel with every sample:
# the metric orders videos by sample_idx; a loss with duplicate_videos='mask' masks two
# captions of one video file in a batch (also across concatenated datasets)
meta_keys = ('sample_idx', 'video_idx', 'text_idx', 'video_id', 'filename')

train_pipeline = [
    dict(type='SafeDecordInit', io_backend='disk'),
    dict(type='UniformSample', clip_len=num_frames, num_clips=1),
    dict(type='SafeDecordDecode'),
    dict(type='Resize', scale=(-1, 256)),
    dict(type='RandomResizedCrop'),
    dict(type='Resize', scale=(224, 224), keep_ratio=False),
    dict(type='FormatShape', input_format='NCHW'),               # [T, C, H, W]
    dict(type='CLIPBPETokenize', context_length=context_length),  # caption -> [L]
    dict(type='PackActionInputs', collect_keys=('imgs', 'text'), meta_keys=meta_keys)
]
test_pipeline = [
    dict(type='SafeDecordInit', io_backend='disk'),
    dict(type='UniformSample', clip_len=num_frames, num_clips=1, test_mode=True),
    dict(type='SafeDecordDecode'),
    dict(type='Resize', scale=(-1, 224)),
    dict(type='CenterCrop', crop_size=224),
    dict(type='FormatShape', input_format='NCHW'),
    dict(type='CLIPBPETokenize', context_length=context_length),  # all captions -> [n, L]
    dict(type='PackActionInputs', collect_keys=('imgs', 'text'), meta_keys=meta_keys)
]

train_dataloader = dict(
    batch_size=16,  # x 8 GPUs = 128
    num_workers=8,
    persistent_workers=True,
    # a last batch of one pair (or of one video's captions) would train on a loss of
    # exactly 0 (SymmetricInfoNCELoss warns) while AdamW still decays the weights
    # (CLIP4Clip drops it too)
    drop_last=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        ann_format='msrvtt',
        ann_file='MSRVTT_train.9k.csv',
        caption_file='MSRVTT_data.json',
        data_root=data_root,
        data_prefix=dict(video='videos'),
        caption_sampling='all',  # one sample per (video, caption): 180k pairs per epoch
        pipeline=train_pipeline))
# ('random': one caption per video per epoch; then add
#  custom_hooks = [dict(type='ClassListCheckHook'), dict(type='CaptionSamplingEpochHook')]
#  keeping the default entry of default_runtime.py)
val_dataloader = dict(
    batch_size=16,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        ann_format='msrvtt',
        ann_file='MSRVTT_JSFUSION_test.csv',
        data_root=data_root,
        data_prefix=dict(video='videos'),
        test_mode=True,          # one sample per video with all its captions
        pipeline=test_pipeline))
# an alias evaluated here, once: a child config that overrides val_dataloader (another
# dataset, data_root, ann_format) must end with test_dataloader = val_dataloader too, or
# tools/test.py still tests on this file's data (train.py / test.py warn)
test_dataloader = val_dataloader

# t2v and v2t R@1/5/10, MdR, MnR. Inference tricks (STAN_REFERENCE.md section 5):
#   dual softmax:  dict(type='RetrievalRecallMetric', dsl=True)  (dsl_temp=0.01: softmax of
#                  100 x cosine; the reference code's 1000 is a training-loss value on
#                  logits = cosine / tau, i.e. dsl_temp = 1000 x tau here: docs/retrieval.md)
#   QB-Norm:       dict(type='RetrievalRecallMetric',
#                       qb_norm=dict(bank='work_dirs/bank_text_features.npy', beta=20, k=1))
val_evaluator = dict(type='RetrievalRecallMetric')
# (likewise: a child that overrides val_evaluator, e.g. dsl=True, repeats this line)
test_evaluator = val_evaluator
