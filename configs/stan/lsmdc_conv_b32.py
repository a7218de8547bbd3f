# STAN-conv (C-STA) ViT-B/32, K = 4, LSMDC. Paper: 23.1 / 42.2 / 51.0 / 9.
# Recipe as lsmdc_self_b32.py.
_base_ = ['./lsmdc_self_b32.py']

model = dict(backbone=dict(temporal_module='conv'))
