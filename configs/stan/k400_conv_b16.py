# STAN-conv (C-STA) ViT-B/16, K = 4, 8 frames, Kinetics-400: the temporal module is the
# paper's Eq. 9 (point-wise down to D/8, Conv3d (3,1,1), GELU, point-wise up, residual).
# Paper (1x3 views): 83.1 / 96.0 top-1 / top-5, 714 GFLOPs over the 3 views.
_base_ = ['./k400_self_b16.py']

model = dict(backbone=dict(temporal_module='conv'))
