# STAN-self (A-STA) ViT-B/16, K = 4, 16 frames, Kinetics-400.
# Paper (1x3 views): 84.9 / 96.7 top-1 / top-5, 1187 GFLOPs over the 3 views.
# Same recipe as k400_self_b16.py; the samplers take 16 frames (pipeline index 1).
_base_ = ['./k400_self_b16.py']

num_frames = 16

train_pipeline = [
    _base_.train_pipeline[0],
    dict(type='UniformSample', clip_len=num_frames), *_base_.train_pipeline[2:]
]
val_pipeline = [
    _base_.val_pipeline[0],
    dict(type='UniformSample', clip_len=num_frames, num_clips=1, test_mode=True),
    *_base_.val_pipeline[2:]
]
test_pipeline = [
    _base_.test_pipeline[0],
    dict(type='UniformSample', clip_len=num_frames, num_clips=_base_.test_num_clips,
         test_mode=True), *_base_.test_pipeline[2:]
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=val_pipeline))
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
