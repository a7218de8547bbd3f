# STANRetriever: CLIPSTAN video tower (STAN-self, K = 4 branch layers on CLIP blocks 9..12)
# and CLIP text tower, BOTH built from ONE local CLIP checkpoint; symmetric InfoNCE (the two
# directions summed) over the features of all GPUs, gathered with gradient; fixed logit
# scale 1/temperature (public STAN reproduction).
#
# Weights: OpenAI's ViT-B/32 release (the state dict or the TorchScript archive
# `ViT-B-32.pt`, OpenAI layout) placed by the user at checkpoints/clip/ViT-B-32.pt; nothing
# is downloaded. open_clip and HuggingFace layouts load too (see stan_mm.models.clip).
# A converted public STAN checkpoint (tools/convert/stan_public_to_mm.py) loads with
# `load_from=...` on top.
# The two variables below are read when this file is evaluated: a child config or
# --cfg-options that sets only them does NOT rebuild the model (tools/train.py and
# tools/test.py warn about clip_arch); set model.arch and model.pretrained
# (docs/training_testing.md, "Model variants").
clip_arch = 'ViT-B/32'  # OpenAI spelling: QuickGELU, as the OpenAI weights were trained
clip_pretrained = 'checkpoints/clip/ViT-B-32.pt'
# CLIP's normalization in 0..255 pixel units.
clip_mean = [122.771, 116.746, 104.093]
clip_std = [68.500, 66.632, 70.323]

model = dict(
    type='STANRetriever',
    arch=clip_arch,
    pretrained=clip_pretrained,
    backbone=dict(
        type='CLIPSTAN',
        depth=4,                  # K branch layers
        temporal_module='attn',   # 'attn' (STAN-self / A-STA) or 'conv' (STAN-conv / C-STA)
        drop_path_rate=0.1,
        input_layout='NTCHW',     # retrieval batches are [N, T, C, H, W]
        grad_checkpointing=False,
        branch_grad_checkpointing=False),
    text_backbone=dict(frozen=False, with_cp=False),
    # duplicate_videos='keep' (the public reproduction's recipe): two captions of one video
    # in a global batch count as each other's negatives. 'mask' removes those pairs (a
    # deviation from the recipe; about 1 such pair per batch of 128 on MSR-VTT, 7 on MSVD)
    loss=dict(type='SymmetricInfoNCELoss', gather=True, duplicate_videos='keep'),
    temperature=0.01,             # logit scale 1/tau = 100
    learnable_temperature=False,  # True: CLIP's learnable logit_scale, exp clamped at 100
    data_preprocessor=dict(
        type='RetrievalDataPreprocessor', mean=clip_mean, std=clip_std))
