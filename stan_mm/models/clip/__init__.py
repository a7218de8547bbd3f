"""CLIP towers from open_clip, loaded offline from OpenAI, open_clip or HuggingFace weights.

- :func:`build_clip` builds an ``open_clip.model.CLIP`` (ViT) from a name or clip_cfg dict
  and/or a local weights path (layout detected, architecture inferred).
- :func:`build_clip_vision` builds the image tower alone, also from weights that hold
  only it (``visual.*``, open_clip ``model.visual``, HF ``CLIPVisionModelWithProjection``).
- :func:`load_clip_state_dict`, :func:`infer_clip_cfg`: the reading and inference steps.
- ``hf_clip_*`` / ``openclip_*``: HuggingFace <-> open_clip key mapping (reused by the STAN
  checkpoint converter).
- :class:`CLIPTextEncoder` (registered in MMAction2's ``MODELS``): the text tower.
"""
from .arch import (OPENAI_NAMES, arch_from_name, infer_clip_cfg,  # noqa: F401
                   infer_clip_shapes, infer_vision_cfg,
                   normalize_arch_name, validate_clip_cfg)
from .builder import (DEFAULT_QUICK_GELU, CLIPArchMismatchError,  # noqa: F401
                      CLIPKeysMismatchError, CLIPTextTowerMissingError, build_clip,
                      build_clip_vision, load_clip_state_dict, require_clip_bpe_vocab)
from .checkpoint import (ClipCheckpoint, is_torchscript_archive,  # noqa: F401
                         read_clip_checkpoint)
from .hf_convert import (hf_clip_block_to_openclip, hf_clip_text_to_openclip,  # noqa: F401
                         hf_clip_to_openclip, hf_clip_vision_to_openclip,
                         is_hf_clip_state_dict, openclip_block_to_hf_clip,
                         openclip_text_to_hf_clip, openclip_to_hf_clip,
                         openclip_vision_to_hf_clip)
from .text_encoder import CLIPTextEncoder, causal_mask  # noqa: F401

__all__ = [
    'build_clip', 'build_clip_vision', 'load_clip_state_dict', 'infer_clip_cfg',
    'infer_clip_shapes', 'infer_vision_cfg',
    'require_clip_bpe_vocab',
    'CLIPTextTowerMissingError',
    'read_clip_checkpoint', 'ClipCheckpoint', 'CLIPTextEncoder', 'CLIPArchMismatchError',
    'CLIPKeysMismatchError', 'hf_clip_to_openclip', 'openclip_to_hf_clip',
    'hf_clip_vision_to_openclip', 'hf_clip_text_to_openclip', 'openclip_vision_to_hf_clip',
    'openclip_text_to_hf_clip', 'hf_clip_block_to_openclip', 'openclip_block_to_hf_clip',
    'normalize_arch_name', 'arch_from_name', 'validate_clip_cfg', 'OPENAI_NAMES',
]
