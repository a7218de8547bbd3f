# Fine-tuning schedule for CLIPSTAN recognition.
# Paper (STAN, Sec. 4): batch 128, lr 2e-6 for CLIP and 2e-5 for STAN (lr_mult=10 on the
# branch, as the public reproduction does), cosine schedule, weight decay 0.02.
# MMAction2 / CLIP-video practice where the paper is silent: AdamW betas (0.9, 0.98),
# eps 1e-8 (public reproduction), 30 epochs with 5 linear warm-up epochs (X-CLIP-style),
# grad-clip 5 (public reproduction), bf16 autocast on GPU (fp32 on CPU).
max_epochs = 30
warmup_epochs = 5

train_cfg = dict(
    type='ResumableEpochBasedTrainLoop', max_epochs=max_epochs, val_begin=1, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

optim_wrapper = dict(
    type='AutoAmpOptimWrapper',  # AmpOptimWrapper on GPU, OptimWrapper on CPU (stan_mm.compat)
    dtype='bfloat16',
    optimizer=dict(
        type='AdamW', lr=2e-6, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.02),
    # No decay on norms and biases (STAN_REFERENCE.md Sec. 4), those of the STAN branch and
    # the head included: mmengine's default constructor skips its norm/bias rules for
    # parameters matched by a custom key and for attention in_proj_bias;
    # STANOptimWrapperConstructor applies them to every norm and bias. All other
    # parameters decay (CLIP's class embedding too). The custom keys name only the head's
    # new parameters, so a fine-tuned CLIP text tower (cls_head.text_encoder, with
    # finetune_text=True) keeps CLIP's learning rate, 2e-6.
    constructor='STANOptimWrapperConstructor',
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        custom_keys={
            'backbone.branch': dict(lr_mult=10.0),  # STAN branch: 2e-5
            # new head parameters, 2e-5: the linear head's classifier, the text
            # classifier's learnable temperature (learnable_temperature=True; no decay)
            'cls_head.fc_cls': dict(lr_mult=10.0),
            'cls_head.logit_scale': dict(lr_mult=10.0, decay_mult=0.0),
        }),
    clip_grad=dict(max_norm=5.0, norm_type=2))

param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=True, begin=0,
         end=warmup_epochs, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs, eta_min=0.0,
         by_epoch=True, begin=warmup_epochs, end=max_epochs,
         convert_to_iter_based=True),
]

# The learning rates above are for a total batch of 128 (8 GPUs x 16); with
# `--auto-scale-lr` they are scaled linearly to the actual total batch.
auto_scale_lr = dict(enable=False, base_batch_size=128)
