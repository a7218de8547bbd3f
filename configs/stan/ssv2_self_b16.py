# STAN-self (A-STA) ViT-B/16, K = 6 (the paper's depth for SSv2), 8 frames,
# Something-Something-v2 (no horizontal flip: direction-sensitive labels).
# Paper (1x3 views): 67.6 / 91.4 top-1 / top-5, 688 GFLOPs over the 3 views.
#   train: bash tools/dist_train.sh configs/stan/ssv2_self_b16.py 8
#   test:  bash tools/dist_test.sh configs/stan/ssv2_self_b16.py CKPT 8
_base_ = [
    '../_base_/models/stan_recognition_b16.py', '../_base_/datasets/ssv2.py',
    '../_base_/schedules/recognition_adamw_cosine_30e.py', '../_base_/default_runtime.py'
]

model = dict(
    backbone=dict(depth=6, temporal_module='attn'),
    cls_head=dict(classnames=_base_.classnames),  # text classifier (default)
    # cls_head=dict(_base_.linear_head, num_classes=_base_.num_classes),  # linear head
)
