# Retrieval fine-tuning, public STAN reproduction (DiDeMo): the optimizer of
# retrieval_adamw_10e.py, 20 epochs: linear warm-up over 4 epochs, then cosine to 0.
_base_ = ['./retrieval_adamw_10e.py']

max_epochs = 20
warmup_epochs = 4

train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs, eta_min=0.0,
         by_epoch=True, begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
]
# total batch 64 (8 GPUs x 8)
auto_scale_lr = dict(enable=False, base_batch_size=64)
