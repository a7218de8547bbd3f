# Recognizer3D with the CLIPSTAN ViT-B/16 backbone (STAN-self, K = 4) and a text-classifier
# head. Dataset configs set the head's class list: cls_head=dict(classnames=...).
#
# Weights: `clip_pretrained` is OpenAI's ViT-B/16 release (state dict or the TorchScript
# archive `ViT-B-16.pt`, OpenAI layout), placed by the user at checkpoints/clip/ViT-B-16.pt;
# nothing is downloaded. open_clip and HuggingFace layouts load too (see stan_mm.models.clip).
# The text tower of the head is built from the same file. To test a trained checkpoint
# without that file: --cfg-options model.backbone.pretrained=None
# model.cls_head.text_encoder.pretrained=None (the checkpoint holds every weight).
#
# Zero-shot test on another class list (class names are not stored in checkpoints):
#   python tools/test.py CONFIG CKPT --cfg-options \
#       model.cls_head.classnames=data/ucf101/classnames.txt \
#       test_dataloader.dataset.data_root=data/ucf101 \
#       test_dataloader.dataset.ann_file=val_list.txt \
#       test_dataloader.dataset.data_prefix.video=videos
# The three variables below are read when this file is evaluated: a child config or
# --cfg-options that sets only them does NOT rebuild the model (tools/train.py and
# tools/test.py warn about clip_arch). For another CLIP set the entries that use them:
# model.backbone.arch / .pretrained, model.cls_head.in_channels and
# model.cls_head.text_encoder.arch / .pretrained (docs/training_testing.md, "Model
# variants").
clip_arch = 'ViT-B/16'  # OpenAI spelling: QuickGELU, as the OpenAI weights were trained
clip_pretrained = 'checkpoints/clip/ViT-B-16.pt'
clip_embed_dim = 512
# CLIP's normalization in 0..255 pixel units.
clip_mean = [122.771, 116.746, 104.093]
clip_std = [68.500, 66.632, 70.323]

# Default head: cosine(video, text(class name)) / 0.01 with a plain cross-entropy, as the
# public reproduction scores classes (STAN_REFERENCE.md Sec. 4: the bare class names are
# tokenized and encoded). A prompt and label smoothing are one override away:
#   cls_head=dict(templates=['a video of {}.'], label_smooth_eps=0.1)
text_head = dict(
    type='TextClassifierHead',
    in_channels=clip_embed_dim,
    classnames=None,  # set by the dataset config (classnames.txt path or a list)
    text_encoder=dict(
        type='CLIPTextEncoder', arch=clip_arch, pretrained=clip_pretrained),
    templates=['{}'],  # the bare class name
    context_length=77,
    temperature=0.01,
    learnable_temperature=False,
    finetune_text=False,
    label_smooth_eps=0.0,
    average_clips='prob')  # multi-view: softmax per view, mean over views

# MMAction2's linear head on the [N, E] video embedding (spatial_type=None: no pooling).
# Switch in a config: cls_head=dict(_base_.linear_head, num_classes=_base_.num_classes)
linear_head = dict(
    _delete_=True,
    type='I3DHead',
    in_channels=clip_embed_dim,
    num_classes=None,  # set by the dataset config
    spatial_type=None,
    dropout_ratio=0.5,
    init_std=0.02,
    label_smooth_eps=0.1,
    average_clips='prob')

model = dict(
    type='Recognizer3D',
    backbone=dict(
        type='CLIPSTAN',
        arch=clip_arch,
        pretrained=clip_pretrained,
        depth=4,                  # K branch layers on CLIP blocks 9..12
        temporal_module='attn',   # 'attn' (STAN-self / A-STA) or 'conv' (STAN-conv / C-STA)
        drop_path_rate=0.1,
        input_layout='NCTHW',
        grad_checkpointing=False,
        branch_grad_checkpointing=False),
    cls_head=text_head,
    data_preprocessor=dict(
        type='ActionDataPreprocessor',
        mean=clip_mean,
        std=clip_std,
        format_shape='NCTHW'))
