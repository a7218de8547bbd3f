# STAN-self (A-STA) ViT-B/16, K = 4, 8 frames, Kinetics-400.
# Paper (1x3 views): 84.2 / 96.5 top-1 / top-5, 593 GFLOPs over the 3 views.
#   train: bash tools/dist_train.sh configs/stan/k400_self_b16.py 8
#   test:  bash tools/dist_test.sh configs/stan/k400_self_b16.py CKPT 8
#          (4x3 views: add --cfg-options test_dataloader.dataset.pipeline.1.num_clips=4)
_base_ = [
    '../_base_/models/stan_recognition_b16.py', '../_base_/datasets/k400.py',
    '../_base_/schedules/recognition_adamw_cosine_30e.py', '../_base_/default_runtime.py'
]

model = dict(
    backbone=dict(depth=4, temporal_module='attn'),
    cls_head=dict(classnames=_base_.classnames),  # text classifier (default)
    # cls_head=dict(_base_.linear_head, num_classes=_base_.num_classes),  # linear head
)
