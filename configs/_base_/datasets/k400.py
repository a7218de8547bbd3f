# Kinetics-400, videos decoded with decord, 8 frames (one per uniform segment), 224x224.
#
# Layout (tools/data/build_k400_lists.py writes the lists and classnames.txt):
#   data/kinetics400/videos_train/<youtube_id>_<start:06d>_<end:06d>.mp4
#   data/kinetics400/videos_val/...
#   data/kinetics400/{train_list.txt, val_list.txt, classnames.txt}
#
# Test views (default 1x3: one clip, three crops, as in the paper): softmax per view, mean
# over views (cls_head average_clips='prob'). The two variables below are read once, when
# this file is evaluated; mmengine does NOT re-evaluate them after --cfg-options, so a
# command-line `test_num_clips=4` changes nothing. On the command line override the
# views with tools/test.py's --views flag (or override the pipeline entries):
#   4x3 views: python tools/test.py CONFIG CKPT --views 4x3
#              (= --cfg-options test_dataloader.dataset.pipeline.1.num_clips=4)
#   1x1 views: python tools/test.py CONFIG CKPT --views 1x1
test_num_clips = 1  # temporal views: clips at different offsets in each segment
test_crops = 3      # spatial views: 3 = ThreeCrop, 1 = CenterCrop

# MMAction2's VideoDataset with its list checked line by line (a missing label, a label
# >= num_classes, a header, a name with spaces: file:line errors at build time)
dataset_type = 'CheckedVideoDataset'
# paths below data_root (the datasets join them), so that one override moves the data:
#   --cfg-options train_dataloader.dataset.data_root=/datasets/k400 (and val_/test_)
#   model.cls_head.classnames=/datasets/k400/classnames.txt
data_root = 'data/kinetics400'
data_root_train = 'videos_train'
data_root_val = 'videos_val'
ann_file_train = 'train_list.txt'
ann_file_val = 'val_list.txt'
ann_file_test = 'val_list.txt'
classnames = f'{data_root}/classnames.txt'
num_classes = 400
# Frames per clip of the three samplers below (pipeline index 1). Read when this file is
# evaluated: a child config or --cfg-options that sets only num_frames does NOT rebuild
# the pipelines (tools/train.py and tools/test.py warn); override the sampler entries
# instead, as configs/stan/*_16f.py do (or --cfg-options
# train_dataloader.dataset.pipeline.1.clip_len=16, and val_/test_).
num_frames = 8

file_client_args = dict(io_backend='disk')
train_pipeline = [
    dict(type='SafeDecordInit', **file_client_args),
    dict(type='UniformSample', clip_len=num_frames),
    dict(type='SafeDecordDecode'),
    dict(type='Resize', scale=(-1, 256)),
    dict(type='RandomResizedCrop'),
    dict(type='Resize', scale=(224, 224), keep_ratio=False),
    dict(type='Flip', flip_ratio=0.5),
    # torchvision's RandAugment, same ops for every frame of a clip. ClipRandAugment draws
    # and applies them as TorchVisionWrapper(op='RandAugment', ...) does on a uint8
    # [T, C, H, W] tensor (same torch random calls, same pixels), with OpenCV on the HWC
    # frames: about 5x cheaper. 2 ops at magnitude 21/30 ~ pytorchvideo's m7 of 10 used by
    # MMAction2's CLIP-video recipes (4 ops, each with p=0.5).
    dict(type='ClipRandAugment', num_ops=2, magnitude=21, num_magnitude_bins=31),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs')
]
val_pipeline = [
    dict(type='SafeDecordInit', **file_client_args),
    dict(type='UniformSample', clip_len=num_frames, num_clips=1, test_mode=True),
    dict(type='SafeDecordDecode'),
    dict(type='Resize', scale=(-1, 224)),
    dict(type='CenterCrop', crop_size=224),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs')
]
test_pipeline = [
    dict(type='SafeDecordInit', **file_client_args),
    dict(type='UniformSample', clip_len=num_frames, num_clips=test_num_clips,
         test_mode=True),                                                  # index 1
    dict(type='SafeDecordDecode'),
    dict(type='Resize', scale=(-1, 224)),
    dict(type='ThreeCrop' if test_crops == 3 else 'CenterCrop', crop_size=224),  # index 4
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs')
]

train_dataloader = dict(
    batch_size=16,  # x 8 GPUs = 128, the paper's batch
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        num_classes=num_classes,  # labels checked against it when the list is read
        data_root=data_root,
        ann_file=ann_file_train,
        data_prefix=dict(video=data_root_train),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=16,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        num_classes=num_classes,  # labels checked against it when the list is read
        data_root=data_root,
        ann_file=ann_file_val,
        data_prefix=dict(video=data_root_val),
        pipeline=val_pipeline,
        test_mode=True))
test_dataloader = dict(
    batch_size=1,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        num_classes=num_classes,  # labels checked against it when the list is read
        data_root=data_root,
        ann_file=ann_file_test,
        data_prefix=dict(video=data_root_val),
        pipeline=test_pipeline,
        test_mode=True))

val_evaluator = dict(type='RecognitionAccMetric')
test_evaluator = val_evaluator
