# STAN-self (A-STA) ViT-B/16, K = 4, LSMDC, 12 frames, 32 tokens.
# Paper: t2v R@1/5/10/MdR 27.1 / 49.3 / 58.7 / 6 (29.2 with DSL/QB-Norm).
# No public B/16 LSMDC recipe: LSMDC B/32's lr 1e-6 and wd 0.2 with MSR-VTT B/16's batch
# 8/GPU x 8 and tau 0.02; 10 epochs, linear warm-up over all 10.
_base_ = [
    '../_base_/models/stan_retrieval_b16.py', '../_base_/datasets/lsmdc_retrieval.py',
    '../_base_/schedules/retrieval_adamw_10e.py'
]

model = dict(backbone=dict(depth=4, temporal_module='attn'), temperature=0.02)
train_dataloader = dict(batch_size=8)
optim_wrapper = dict(optimizer=dict(lr=1e-6, weight_decay=0.2))
auto_scale_lr = dict(base_batch_size=64)
