"""Key mapping between HuggingFace ``transformers`` CLIP and open_clip (= OpenAI) layouts.

Pure tensor bookkeeping; ``transformers`` is never imported. Reused by the STAN checkpoint
converter, hence the ``prefix`` arguments (``'vision_model.'`` in a ``CLIPModel``, anything
else for a CLIP nested in a bigger model).

HF -> open_clip, per tower (``V`` = ``vision_model.``, ``T`` = ``text_model.``)::

    V embeddings.class_embedding             [D]          visual.class_embedding
    V embeddings.patch_embedding.weight      [D, 3, p, p] visual.conv1.weight
    V embeddings.position_embedding.weight   [1+g*g, D]   visual.positional_embedding
    V pre_layrnorm.{weight,bias}  (sic)                   visual.ln_pre.*
    V encoder.layers.i.*                                  visual.transformer.resblocks.i.*
    V post_layernorm.*                                    visual.ln_post.*
    visual_projection.weight                 [E, D]       visual.proj [D, E] (transposed)
    T embeddings.token_embedding.weight      [V, W]       token_embedding.weight
    T embeddings.position_embedding.weight   [C, W]       positional_embedding
    T encoder.layers.i.*                                  transformer.resblocks.i.*
    T final_layer_norm.*                                  ln_final.*
    text_projection.weight                   [E, W]       text_projection [W, E] (transposed)
    logit_scale                                           logit_scale

and inside one encoder layer::

    self_attn.{q,k,v}_proj.{weight,bias}  -> attn.in_proj_{weight,bias} (concatenated q, k, v)
    self_attn.out_proj.*                  -> attn.out_proj.*
    layer_norm1.* / layer_norm2.*         -> ln_1.* / ln_2.*
    mlp.fc1.* / mlp.fc2.*                 -> mlp.c_fc.* / mlp.c_proj.*

``position_ids`` buffers (derived, not weights) are dropped. Keys a function does not know
are left out of its output; the whole-model functions keep them under their original name,
so that loading reports them as unexpected.
"""
import re
from typing import Dict, List, Mapping, Optional

import torch

Tensor = torch.Tensor

_HF_BLOCK_PLAIN = {  # hf suffix -> open_clip suffix (inside one layer)
    'self_attn.out_proj.weight': 'attn.out_proj.weight',
    'self_attn.out_proj.bias': 'attn.out_proj.bias',
    'layer_norm1.weight': 'ln_1.weight', 'layer_norm1.bias': 'ln_1.bias',
    'layer_norm2.weight': 'ln_2.weight', 'layer_norm2.bias': 'ln_2.bias',
    'mlp.fc1.weight': 'mlp.c_fc.weight', 'mlp.fc1.bias': 'mlp.c_fc.bias',
    'mlp.fc2.weight': 'mlp.c_proj.weight', 'mlp.fc2.bias': 'mlp.c_proj.bias',
}
_HF_VISION_PLAIN = {
    'embeddings.class_embedding': 'class_embedding',
    'embeddings.patch_embedding.weight': 'conv1.weight',
    'embeddings.position_embedding.weight': 'positional_embedding',
    'pre_layrnorm.weight': 'ln_pre.weight', 'pre_layrnorm.bias': 'ln_pre.bias',
    'post_layernorm.weight': 'ln_post.weight', 'post_layernorm.bias': 'ln_post.bias',
}
_HF_TEXT_PLAIN = {
    'embeddings.token_embedding.weight': 'token_embedding.weight',
    'embeddings.position_embedding.weight': 'positional_embedding',
    'final_layer_norm.weight': 'ln_final.weight', 'final_layer_norm.bias': 'ln_final.bias',
}


def is_hf_clip_state_dict(sd: Mapping[str, Tensor], prefix: str = '') -> bool:
    """True when ``sd`` holds HF ``CLIPModel`` tower keys (under ``prefix``)."""
    return (prefix + 'vision_model.embeddings.patch_embedding.weight' in sd
            or prefix + 'text_model.embeddings.token_embedding.weight' in sd)


def layer_indices(sd: Mapping[str, Tensor], layers_prefix: str) -> List[int]:
    """Sorted numbers ``i`` of the keys ``<layers_prefix><i>.*`` in ``sd`` (e.g. the blocks
    under ``'vision_model.encoder.layers.'``); tensor shapes play no part."""
    pat = re.compile(re.escape(layers_prefix) + r'(\d+)\.')
    return sorted({int(m.group(1)) for k in sd for m in [pat.match(k)] if m})


def is_position_ids(key: str) -> bool:
    """True for a derived ``position_ids`` buffer (``[1, C]`` int64 in HF towers): not a
    weight, so converters drop it."""
    return key.endswith('position_ids')


def qkv_to_in_proj(sd: Mapping[str, Tensor], src: str, dst: str) -> Dict[str, Tensor]:
    """HF attention projections -> one open_clip ``nn.MultiheadAttention`` input projection.

    ``src + 'self_attn.{q,k,v}_proj.weight'`` (each ``[D, D]``) are stacked in q, k, v order
    into ``dst + 'attn.in_proj_weight'`` ``[3D, D]``, the biases (each ``[D]``) into
    ``dst + 'attn.in_proj_bias'`` ``[3D]``. A kind (weight or bias) absent altogether is
    left out of the result.

    Raises:
        KeyError: some but not all of q, k, v of one kind are present; the message names
            the missing keys.
    """
    out = {}
    for kind in ('weight', 'bias'):
        parts = [f'{src}self_attn.{n}_proj.{kind}' for n in 'qkv']
        missing = [p for p in parts if p not in sd]
        if not missing:
            out[f'{dst}attn.in_proj_{kind}'] = torch.cat([sd[p] for p in parts], 0)
        elif len(missing) < len(parts):
            raise KeyError(f'incomplete attention weights: {missing} missing')
    return out


def in_proj_to_qkv(sd: Mapping[str, Tensor], src: str, dst: str) -> Dict[str, Tensor]:
    """Inverse of :func:`qkv_to_in_proj`: ``src + 'attn.in_proj_weight'`` ``[3D, D]`` is cut
    into ``dst + 'self_attn.{q,k,v}_proj.weight'`` ``[D, D]`` each, ``in_proj_bias``
    ``[3D]`` into the ``[D]`` biases. The parts are views of the input tensors."""
    out = {}
    for kind in ('weight', 'bias'):
        key = f'{src}attn.in_proj_{kind}'
        if key in sd:
            for n, part in zip('qkv', sd[key].chunk(3, dim=0)):
                out[f'{dst}self_attn.{n}_proj.{kind}'] = part
    return out


# ---------------------------------------------------------------------------------------
# one encoder block
# ---------------------------------------------------------------------------------------
def hf_clip_block_to_openclip(sd: Mapping[str, Tensor], hf_prefix: str,
                              oc_prefix: str) -> Dict[str, Tensor]:
    """One HF ``CLIPEncoderLayer`` under ``hf_prefix`` (e.g. ``'vision_model.encoder.layers.3.'``)
    -> one open_clip ``ResidualAttentionBlock`` under ``oc_prefix``
    (e.g. ``'visual.transformer.resblocks.3.'``). q/k/v [D, D] are stacked into
    ``attn.in_proj_weight`` [3D, D] (and biases [3D])."""
    out = qkv_to_in_proj(sd, hf_prefix, oc_prefix)
    for hf, oc in _HF_BLOCK_PLAIN.items():
        if hf_prefix + hf in sd:
            out[oc_prefix + oc] = sd[hf_prefix + hf]
    return out


def openclip_block_to_hf_clip(sd: Mapping[str, Tensor], oc_prefix: str,
                              hf_prefix: str) -> Dict[str, Tensor]:
    """Inverse of :func:`hf_clip_block_to_openclip` (``in_proj`` split into q, k, v)."""
    out = in_proj_to_qkv(sd, oc_prefix, hf_prefix)
    for hf, oc in _HF_BLOCK_PLAIN.items():
        if oc_prefix + oc in sd:
            out[hf_prefix + hf] = sd[oc_prefix + oc]
    return out


# ---------------------------------------------------------------------------------------
# towers
# ---------------------------------------------------------------------------------------
def hf_clip_vision_to_openclip(sd: Mapping[str, Tensor], prefix: str = 'vision_model.',
                               projection_key: Optional[str] = 'visual_projection.weight',
                               out_prefix: str = 'visual.') -> Dict[str, Tensor]:
    """HF ``CLIPVisionTransformer`` weights under ``prefix`` (+ the ``visual_projection``
    Linear at ``projection_key``, transposed into ``proj`` [D, E]) -> open_clip
    ``VisionTransformer`` keys under ``out_prefix``."""
    out = {out_prefix + oc: sd[prefix + hf] for hf, oc in _HF_VISION_PLAIN.items()
           if prefix + hf in sd}
    for i in layer_indices(sd, prefix + 'encoder.layers.'):
        out.update(hf_clip_block_to_openclip(sd, f'{prefix}encoder.layers.{i}.',
                                             f'{out_prefix}transformer.resblocks.{i}.'))
    if projection_key is not None and projection_key in sd:
        out[out_prefix + 'proj'] = sd[projection_key].t().contiguous()
    return out


def hf_clip_text_to_openclip(sd: Mapping[str, Tensor], prefix: str = 'text_model.',
                             projection_key: Optional[str] = 'text_projection.weight',
                             out_prefix: str = '') -> Dict[str, Tensor]:
    """HF ``CLIPTextTransformer`` weights under ``prefix`` (+ the ``text_projection`` Linear,
    transposed into ``text_projection`` [W, E]) -> open_clip CLIP text keys under
    ``out_prefix``."""
    out = {out_prefix + oc: sd[prefix + hf] for hf, oc in _HF_TEXT_PLAIN.items()
           if prefix + hf in sd}
    for i in layer_indices(sd, prefix + 'encoder.layers.'):
        out.update(hf_clip_block_to_openclip(sd, f'{prefix}encoder.layers.{i}.',
                                             f'{out_prefix}transformer.resblocks.{i}.'))
    if projection_key is not None and projection_key in sd:
        out[out_prefix + 'text_projection'] = sd[projection_key].t().contiguous()
    return out


def openclip_vision_to_hf_clip(sd: Mapping[str, Tensor], prefix: str = 'visual.',
                               out_prefix: str = 'vision_model.',
                               projection_key: Optional[str] = 'visual_projection.weight'
                               ) -> Dict[str, Tensor]:
    """Inverse of :func:`hf_clip_vision_to_openclip`."""
    out = {out_prefix + hf: sd[prefix + oc] for hf, oc in _HF_VISION_PLAIN.items()
           if prefix + oc in sd}
    for i in layer_indices(sd, prefix + 'transformer.resblocks.'):
        out.update(openclip_block_to_hf_clip(sd, f'{prefix}transformer.resblocks.{i}.',
                                             f'{out_prefix}encoder.layers.{i}.'))
    if projection_key is not None and prefix + 'proj' in sd:
        out[projection_key] = sd[prefix + 'proj'].t().contiguous()
    return out


def openclip_text_to_hf_clip(sd: Mapping[str, Tensor], prefix: str = '',
                             out_prefix: str = 'text_model.',
                             projection_key: Optional[str] = 'text_projection.weight'
                             ) -> Dict[str, Tensor]:
    """Inverse of :func:`hf_clip_text_to_openclip`."""
    out = {out_prefix + hf: sd[prefix + oc] for hf, oc in _HF_TEXT_PLAIN.items()
           if prefix + oc in sd}
    for i in layer_indices(sd, prefix + 'transformer.resblocks.'):
        out.update(openclip_block_to_hf_clip(sd, f'{prefix}transformer.resblocks.{i}.',
                                             f'{out_prefix}encoder.layers.{i}.'))
    if projection_key is not None and prefix + 'text_projection' in sd:
        out[projection_key] = sd[prefix + 'text_projection'].t().contiguous()
    return out


# ---------------------------------------------------------------------------------------
# whole CLIPModel
# ---------------------------------------------------------------------------------------
def hf_clip_to_openclip(sd: Mapping[str, Tensor], prefix: str = '') -> Dict[str, Tensor]:
    """A whole HF ``CLIPModel`` state dict (keys under ``prefix``) -> open_clip ``CLIP`` keys.

    Keys under ``prefix`` that are not part of the mapping are kept unchanged (minus
    ``prefix``) so that loading reports them as unexpected; ``position_ids`` are dropped.
    """
    out = hf_clip_vision_to_openclip(sd, prefix + 'vision_model.',
                                     prefix + 'visual_projection.weight')
    out.update(hf_clip_text_to_openclip(sd, prefix + 'text_model.',
                                        prefix + 'text_projection.weight'))
    if prefix + 'logit_scale' in sd:
        out['logit_scale'] = sd[prefix + 'logit_scale']
    consumed = set(openclip_to_hf_clip(out, out_prefix=prefix))
    for k, v in sd.items():
        if k.startswith(prefix) and k not in consumed and not is_position_ids(k):
            out[k[len(prefix):]] = v
    return out


def openclip_to_hf_clip(sd: Mapping[str, Tensor], out_prefix: str = '') -> Dict[str, Tensor]:
    """Inverse of :func:`hf_clip_to_openclip`: open_clip ``CLIP`` keys -> HF ``CLIPModel``
    keys (under ``out_prefix``). Loads into ``transformers.CLIPModel`` with only the derived
    ``position_ids`` buffers missing (they are non-persistent in transformers >= 4.31)."""
    out = openclip_vision_to_hf_clip(sd, 'visual.', out_prefix + 'vision_model.',
                                     out_prefix + 'visual_projection.weight')
    out.update(openclip_text_to_hf_clip(sd, '', out_prefix + 'text_model.',
                                        out_prefix + 'text_projection.weight'))
    if 'logit_scale' in sd:
        out[out_prefix + 'logit_scale'] = sd['logit_scale']
    return out
