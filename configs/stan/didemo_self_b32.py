# STAN-self (A-STA) ViT-B/32, K = 4, DiDeMo paragraph-to-video, 64 frames from the first
# 31 s of each video, 77 tokens.
# Paper: t2v R@1/5/10/MdR 46.2 / 70.4 / 80.0 / 2.
# Recipe (public reproduction): 8/GPU x 8, lr 2e-6 (branch 2e-5), wd 0.01, 20 epochs (warm-up
# 4, cosine), tau 0.05, gradient checkpointing (64 frames per video).
_base_ = [
    '../_base_/models/stan_retrieval_b32.py', '../_base_/datasets/didemo_retrieval.py',
    '../_base_/schedules/retrieval_adamw_cosine_20e.py'
]

model = dict(
    backbone=dict(depth=4, temporal_module='attn', grad_checkpointing=True,
                  branch_grad_checkpointing=True),
    text_backbone=dict(with_cp=True),
    temperature=0.05)
train_dataloader = dict(batch_size=8)
optim_wrapper = dict(optimizer=dict(lr=2e-6, weight_decay=0.01))
