# STAN-conv (C-STA, 3D-conv temporal module, Eq. 9) ViT-B/32, K = 4, MSR-VTT.
# Paper: t2v R@1/5/10/MdR 46.6 / 72.8 / 82.2 / 2. Recipe as msrvtt_self_b32.py.
_base_ = ['./msrvtt_self_b32.py']

model = dict(backbone=dict(temporal_module='conv'))
