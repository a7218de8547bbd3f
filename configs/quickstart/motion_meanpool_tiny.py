# Baseline for the quickstart: the same tiny CLIP with mean pooling over frames (depth=0,
# Table 6 row 1 of the paper). It ignores frame order, so it cannot tell apart a class and
# its time-reversed partner:  python tools/quickstart.py --baseline
_base_ = ['./motion_stan_tiny.py']

model = dict(backbone=dict(depth=0))
