# STAN-self (A-STA) ViT-B/32, K = 4, MSVD (670 test videos, all ~40 captions each as
# queries), 12 frames, 32 tokens. The paper reports no MSVD result and neither paper nor
# public reproduction gives a recipe; this config uses MSR-VTT B/32's: 16/GPU x 8, lr 2e-6
# (branch 2e-5), wd 0.05, 10 epochs with linear warm-up over all 10, tau 0.01, training on
# every (video, caption) pair.
_base_ = [
    '../_base_/models/stan_retrieval_b32.py', '../_base_/datasets/msvd_retrieval.py',
    '../_base_/schedules/retrieval_adamw_10e.py'
]

model = dict(backbone=dict(depth=4, temporal_module='attn'), temperature=0.01)
train_dataloader = dict(batch_size=16)
optim_wrapper = dict(optimizer=dict(lr=2e-6, weight_decay=0.05))
