# STAN-self (A-STA) ViT-B/32, K = 4, MSR-VTT 9k train / 1k-A test, 12 frames, 32 tokens.
# Paper: t2v R@1/5/10/MdR 46.9 / 72.8 / 82.8 / 2.
#   train: bash tools/dist_train.sh configs/stan/msrvtt_self_b32.py 8
#   test:  bash tools/dist_test.sh configs/stan/msrvtt_self_b32.py CKPT 8
# Recipe (public reproduction): 16/GPU x 8, lr 2e-6 (branch 2e-5), wd 0.05, 10 epochs with
# linear warm-up over all 10, tau 0.01.
_base_ = [
    '../_base_/models/stan_retrieval_b32.py', '../_base_/datasets/msrvtt_retrieval.py',
    '../_base_/schedules/retrieval_adamw_10e.py'
]

model = dict(backbone=dict(depth=4, temporal_module='attn'), temperature=0.01)
train_dataloader = dict(batch_size=16)
optim_wrapper = dict(optimizer=dict(lr=2e-6, weight_decay=0.05))
