# DiDeMo paragraph-to-video retrieval, CLIP4Clip layout (STAN_REFERENCE.md section 7):
#   data/didemo/{train,val,test}_list.txt   video ids, one per line
#   data/didemo/{train,val,test}_data.json  descriptions (fields video, description, times)
#   data/didemo/videos/...                   the videos, found by file stem (video_lookup='scan':
#                                            DiDeMo files keep their original extensions)
# All descriptions of a video are joined, in file order, into ONE paragraph (train and test);
# frames are sampled from the first 31 s of each video (SafeDecordInit max_seconds): DiDeMo's
# moments annotate only the first 30 s, and CLIP4Clip-style loaders decode the same window
# (whole videos: max_seconds=None on pipeline entry 0 of the train_, val_ and test_dataloader,
# e.g. --cfg-options test_dataloader.dataset.pipeline.0.max_seconds=None). The moment times
# themselves are not used.
#
# 64 frames, 77 tokens (public reproduction; the paper says 64 tokens). These variables are
# read when this file is evaluated: changing them in a child config does NOT rebuild the
# pipelines; override the pipeline entries instead.
dataset_type = 'RetrievalVideoTextDataset'
data_root = 'data/didemo'
num_frames = 64
context_length = 77
max_seconds = 31
# the video's file, its index, caption numbers and sample index travel with every sample:
# the metric orders videos by sample_idx; a loss with duplicate_videos='mask' masks two
# captions of one video file in a batch (also across concatenated datasets)
meta_keys = ('sample_idx', 'video_idx', 'text_idx', 'video_id', 'filename')

train_pipeline = [
    dict(type='SafeDecordInit', io_backend='disk', max_seconds=max_seconds),
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
    dict(type='SafeDecordInit', io_backend='disk', max_seconds=max_seconds),
    dict(type='UniformSample', clip_len=num_frames, num_clips=1, test_mode=True),
    dict(type='SafeDecordDecode'),
    dict(type='Resize', scale=(-1, 224)),
    dict(type='CenterCrop', crop_size=224),
    dict(type='FormatShape', input_format='NCHW'),
    dict(type='CLIPBPETokenize', context_length=context_length),  # all captions -> [n, L]
    dict(type='PackActionInputs', collect_keys=('imgs', 'text'), meta_keys=meta_keys)
]

train_dataloader = dict(
    batch_size=8,  # x 8 GPUs = 64
    num_workers=8,
    persistent_workers=True,
    # a last batch of one pair (or of one video's captions) would train on a loss of
    # exactly 0 (SymmetricInfoNCELoss warns) while AdamW still decays the weights
    # (CLIP4Clip drops it too)
    drop_last=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        ann_format='didemo',
        ann_file='train_list.txt',
        caption_file='train_data.json',
        data_root=data_root,
        data_prefix=dict(video='videos'),
        video_lookup='scan',
        caption_sampling='all',  # one paragraph per video
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=16,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        ann_format='didemo',
        ann_file='test_list.txt',
        caption_file='test_data.json',
        data_root=data_root,
        data_prefix=dict(video='videos'),
        video_lookup='scan',
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
