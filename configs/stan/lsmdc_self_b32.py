# STAN-self (A-STA) ViT-B/32, K = 4, LSMDC (1000 test clips), 12 frames, 32 tokens.
# Paper: t2v R@1/5/10/MdR 23.7 / 42.7 / 51.8 / 9.
# Recipe (public reproduction): 16/GPU x 8, lr 1e-6 (branch 1e-5), wd 0.2, tau 0.01. Its
# epoch count is not documented: this config uses the MSR-VTT schedule (10 epochs, linear
# warm-up over all 10).
_base_ = [
    '../_base_/models/stan_retrieval_b32.py', '../_base_/datasets/lsmdc_retrieval.py',
    '../_base_/schedules/retrieval_adamw_10e.py'
]

model = dict(backbone=dict(depth=4, temporal_module='attn'), temperature=0.01)
train_dataloader = dict(batch_size=16)
optim_wrapper = dict(optimizer=dict(lr=1e-6, weight_decay=0.2))
