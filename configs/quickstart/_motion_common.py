# Shared by the quickstart configs: the synthetic motion benchmark (generated under
# data_root on first use; every config reading it must ask for the same parameters) and the
# tiny CLIP they train from random weights.
data_root = 'data/motion'
# Keyword arguments of stan_mm.datasets.synthetic.generate_motion_dataset.
# Four motion pairs (8 classes): the rotation pair is left out, as this tiny model does not
# learn turning direction at 32x32 in the quickstart's budget (docs/quickstart.md); add it
# with pairs=('horizontal', 'vertical', 'rotation', 'scale', 'fade').
motion = dict(num_train=4800, num_val=160, num_test=160, num_frames=16, size=64, seed=0,
              pairs=('horizontal', 'vertical', 'scale', 'fade'), progress=True)
num_frames = 8
context_length = 32

# A tiny CLIP (random init): 32x32 frames, 4x4 patches of 8 px, width 64, 2 layers of 2
# heads; text width 64, 2 layers, 32 tokens.
clip_cfg = dict(
    embed_dim=64,
    quick_gelu=False,
    vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32),
    text_cfg=dict(context_length=context_length, vocab_size=49408, width=64, heads=2,
                  layers=2))
