# STANRetriever with CLIP ViT-B/16 (see stan_retrieval_b32.py). Weights: OpenAI's ViT-B/16
# release (`ViT-B-16.pt`, OpenAI layout) placed by the user at checkpoints/clip/ViT-B-16.pt.
_base_ = ['./stan_retrieval_b32.py']

# Read when this file is evaluated, like those of stan_retrieval_b32.py: setting them
# in a child config or with --cfg-options changes nothing; set model.arch / .pretrained.
clip_arch = 'ViT-B/16'
clip_pretrained = 'checkpoints/clip/ViT-B-16.pt'

model = dict(arch=clip_arch, pretrained=clip_pretrained)
