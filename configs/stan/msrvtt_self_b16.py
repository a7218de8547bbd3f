# STAN-self (A-STA) ViT-B/16, K = 4, MSR-VTT, 12 frames, 32 tokens.
# Paper: t2v R@1/5/10/MdR 50.0 / 75.2 / 84.1 / 1.5 (55.1 with DSL/QB-Norm: see the
# evaluator comment in _base_/datasets/msrvtt_retrieval.py).
# Recipe (public reproduction): 8/GPU x 8, lr 2e-6 (branch 2e-5), wd 0.05, 10 epochs, tau 0.02.
_base_ = [
    '../_base_/models/stan_retrieval_b16.py', '../_base_/datasets/msrvtt_retrieval.py',
    '../_base_/schedules/retrieval_adamw_10e.py'
]

model = dict(backbone=dict(depth=4, temporal_module='attn'), temperature=0.02)
train_dataloader = dict(batch_size=8)
optim_wrapper = dict(optimizer=dict(lr=2e-6, weight_decay=0.05))
auto_scale_lr = dict(base_batch_size=64)
