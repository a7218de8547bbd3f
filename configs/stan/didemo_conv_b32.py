# STAN-conv (C-STA) ViT-B/32, K = 4, DiDeMo. Paper: 46.5 / 71.5 / 80.9 / 2.
# Recipe as didemo_self_b32.py.
_base_ = ['./didemo_self_b32.py']

model = dict(backbone=dict(temporal_module='conv'))
