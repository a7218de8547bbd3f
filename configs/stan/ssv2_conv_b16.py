# STAN-conv (C-STA) ViT-B/16, K = 6, 8 frames, Something-Something-v2.
# Paper (1x3 views): 65.2 / 90.5 top-1 / top-5, 845 GFLOPs over the 3 views.
_base_ = ['./ssv2_self_b16.py']

model = dict(backbone=dict(temporal_module='conv'))
