"""Convert the public STAN checkpoints (HuggingFace CLIP naming) to stan-mm and back.

The public reproduction's mmengine checkpoints name the video tower like HuggingFace's
``CLIPVisionTransformer`` flattened under ``backbone.`` and the text tower like
``transformers.CLIPTextModel`` under ``text_backbone.``. stan-mm uses open_clip names:
:class:`~stan_mm.models.backbones.CLIPSTAN` keys under ``backbone.`` and
:class:`~stan_mm.models.clip.CLIPTextEncoder` keys under ``text_backbone.``.

Mapping (public -> stan-mm), ``B = backbone.``::

    B class_embedding                  [D]           B visual.class_embedding
    B patch_embedding.weight           [D, 3, p, p]  B visual.conv1.weight
    B position_embedding.weight        [1+P, D]      B visual.positional_embedding
    B pre_layrnorm.*                                 B visual.ln_pre.*
    B layers.i.<hf layer>                            B visual.transformer.resblocks.i.<oc block>
    B post_layernorm.*                               B visual.ln_post.*
    B visual_projection.weight         [E, D]        B visual.proj [D, E] (transposed)
    B STAN_S_layers.k.<hf layer>                     B branch.layers.k.spatial.<oc block>
    B STAN_T_layers.k.self_attn.{q,k,v}_proj.*       B branch.layers.k.temporal.attn.in_proj_*
    B STAN_T_layers.k.self_attn.out_proj.*           B branch.layers.k.temporal.attn.out_proj.*
    B STAN_T_layers.k.layer_norm1.*                  B branch.layers.k.temporal.norm.*
    B STAN_T_layers.k.temporal_fc.*                  B branch.layers.k.temporal.fc.*
    B STAN_time_embed.weight           [64, D]       B branch.embed.time_embed.weight
    text_backbone.text_model.*, text_backbone.text_projection.weight
                                                     text_backbone.<open_clip text keys>

where ``<hf layer>`` -> ``<oc block>`` is :func:`stan_mm.models.clip.hf_clip_block_to_openclip`
(q/k/v concatenated into ``attn.in_proj_*``, ``layer_norm1/2`` -> ``ln_1/2``,
``mlp.fc1/2`` -> ``mlp.c_fc/c_proj``). Every key that is not mapped is reported; derived
``position_ids`` buffers are dropped (and reported as such), and every stan-mm weight the
source lacks (a plain weight, part of a block, a whole block in a gap of the numbering, the
temporal embedding, the text tower's weights when it has any) is reported as missing
(:func:`missing_mm_keys`). A q/k/v set with a part
missing (spatial or temporal layer) cannot be stacked: ``KeyError`` naming the missing
keys. The public reproduction's conv temporal module was never defined, so only
``temporal_module='attn'`` checkpoints exist; stan-mm weights without a public
counterpart (``level_proj``, conv modules) are reported as unmapped by the exporter.

A retrieval checkpoint (stan-mm or public layout) also converts into the checkpoint of a
recognizer with a text-classifier head, its text tower becoming the head's
(:func:`retrieval_to_recognition`: ``backbone.*`` kept, ``text_backbone.*`` ->
``cls_head.text_encoder.*``).
"""
import os.path as osp
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Tuple

import torch

from stan_mm.models.clip.hf_convert import (hf_clip_block_to_openclip,
                                            hf_clip_text_to_openclip, in_proj_to_qkv,
                                            is_position_ids, layer_indices,
                                            openclip_block_to_hf_clip,
                                            openclip_text_to_hf_clip, qkv_to_in_proj)

Tensor = torch.Tensor

VIDEO_PREFIX = 'backbone.'
TEXT_PREFIX = 'text_backbone.'
#: where a recognizer's text-classifier head (TextClassifierHead) keeps its text tower
HEAD_TEXT_PREFIX = 'cls_head.text_encoder.'

# public (under backbone.) -> stan-mm (under backbone.), tensors copied unchanged
_VISION_PLAIN = {
    'class_embedding': 'visual.class_embedding',
    'patch_embedding.weight': 'visual.conv1.weight',
    'position_embedding.weight': 'visual.positional_embedding',
    'pre_layrnorm.weight': 'visual.ln_pre.weight', 'pre_layrnorm.bias': 'visual.ln_pre.bias',
    'post_layernorm.weight': 'visual.ln_post.weight',
    'post_layernorm.bias': 'visual.ln_post.bias',
    'STAN_time_embed.weight': 'branch.embed.time_embed.weight',
}
_TEMPORAL_PLAIN = {  # inside STAN_T_layers.k -> inside branch.layers.k.temporal
    'self_attn.out_proj.weight': 'attn.out_proj.weight',
    'self_attn.out_proj.bias': 'attn.out_proj.bias',
    'layer_norm1.weight': 'norm.weight', 'layer_norm1.bias': 'norm.bias',
    'temporal_fc.weight': 'fc.weight', 'temporal_fc.bias': 'fc.bias',
}


# the weights of one open_clip ResidualAttentionBlock, of the attention temporal module,
# and the plain weights of the towers (stan-mm names)
_BLOCK_KEYS = ('ln_1.weight', 'ln_1.bias', 'attn.in_proj_weight', 'attn.in_proj_bias',
               'attn.out_proj.weight', 'attn.out_proj.bias', 'ln_2.weight', 'ln_2.bias',
               'mlp.c_fc.weight', 'mlp.c_fc.bias', 'mlp.c_proj.weight', 'mlp.c_proj.bias')
_TEMPORAL_KEYS = ('norm.weight', 'norm.bias', 'attn.in_proj_weight', 'attn.in_proj_bias',
                  'attn.out_proj.weight', 'attn.out_proj.bias', 'fc.weight', 'fc.bias')
_VISION_KEYS = ('visual.class_embedding', 'visual.conv1.weight',
                'visual.positional_embedding', 'visual.ln_pre.weight', 'visual.ln_pre.bias',
                'visual.ln_post.weight', 'visual.ln_post.bias', 'visual.proj')
_TEXT_KEYS = ('token_embedding.weight', 'positional_embedding', 'ln_final.weight',
              'ln_final.bias', 'text_projection')


def missing_mm_keys(out: Mapping[str, Tensor]) -> List[str]:
    """The stan-mm weights a converted state dict should hold and does not: every plain
    weight of the video tower, every weight of each CLIP block and STAN layer from 0 to the
    highest number found (a gap is a missing block), the temporal embedding when there is a
    branch, and, when any text weight is there, the whole text tower. A model built from
    the result would keep its initialization there (``tools/test.py`` refuses it)."""
    B, T = VIDEO_PREFIX, TEXT_PREFIX
    expected = [B + k for k in _VISION_KEYS]

    def numbered(prefix):
        found = layer_indices(out, prefix)
        return range(found[-1] + 1) if found else range(0)
    for i in numbered(B + 'visual.transformer.resblocks.'):
        expected += [f'{B}visual.transformer.resblocks.{i}.{k}' for k in _BLOCK_KEYS]
    branch = numbered(B + 'branch.layers.')
    if len(branch):
        expected.append(B + 'branch.embed.time_embed.weight')
    for k in branch:
        expected += [f'{B}branch.layers.{k}.spatial.{n}' for n in _BLOCK_KEYS]
        expected += [f'{B}branch.layers.{k}.temporal.{n}' for n in _TEMPORAL_KEYS]
    if any(k.startswith(T) for k in out):
        expected += [T + k for k in _TEXT_KEYS]
        for i in numbered(T + 'transformer.resblocks.'):
            expected += [f'{T}transformer.resblocks.{i}.{k}' for k in _BLOCK_KEYS]
    return [k for k in expected if k not in out]


@dataclass
class ConversionReport:
    """What a conversion did: ``unmapped`` source keys (kept out of the output),
    ``missing`` weights of the converted model the source did not have, ``dropped``
    derived buffers, and the architecture read from the weights."""
    unmapped: List[str] = field(default_factory=list)
    dropped: List[str] = field(default_factory=list)
    info: Dict[str, object] = field(default_factory=dict)
    missing: List[str] = field(default_factory=list)

    def format(self) -> str:
        lines = [f'{k}: {v}' for k, v in self.info.items()]
        lines.append(f'unmapped keys ({len(self.unmapped)}):'
                     + ''.join(f'\n  {k}' for k in self.unmapped) if self.unmapped
                     else 'unmapped keys: none')
        lines.append(f'missing weights ({len(self.missing)}; the source lacks them, a model '
                     f'loading the output keeps its initialization there):'
                     + ''.join(f'\n  {k}' for k in self.missing) if self.missing
                     else 'missing weights: none')
        if self.dropped:
            lines.append(f'dropped derived buffers ({len(self.dropped)}): '
                         + ', '.join(self.dropped))
        return '\n'.join(lines)


def _public_to_mm_keys(sd: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    B, T = VIDEO_PREFIX, TEXT_PREFIX
    out: Dict[str, Tensor] = {}
    for src, dst in _VISION_PLAIN.items():
        if B + src in sd:
            out[B + dst] = sd[B + src]
    if B + 'visual_projection.weight' in sd:
        out[B + 'visual.proj'] = sd[B + 'visual_projection.weight'].t().contiguous()
    for i in layer_indices(sd, B + 'layers.'):
        out.update(hf_clip_block_to_openclip(sd, f'{B}layers.{i}.',
                                             f'{B}visual.transformer.resblocks.{i}.'))
    for k in layer_indices(sd, B + 'STAN_S_layers.'):
        out.update(hf_clip_block_to_openclip(sd, f'{B}STAN_S_layers.{k}.',
                                             f'{B}branch.layers.{k}.spatial.'))
    for k in layer_indices(sd, B + 'STAN_T_layers.'):
        src, dst = f'{B}STAN_T_layers.{k}.', f'{B}branch.layers.{k}.temporal.'
        out.update(qkv_to_in_proj(sd, src, dst))
        for s, d in _TEMPORAL_PLAIN.items():
            if src + s in sd:
                out[dst + d] = sd[src + s]
    out.update(hf_clip_text_to_openclip(sd, prefix=T + 'text_model.',
                                        projection_key=T + 'text_projection.weight',
                                        out_prefix=T))
    return out


def _mm_to_public_keys(sd: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    B, T = VIDEO_PREFIX, TEXT_PREFIX
    out: Dict[str, Tensor] = {}
    for dst, src in _VISION_PLAIN.items():
        if B + src in sd:
            out[B + dst] = sd[B + src]
    if B + 'visual.proj' in sd:
        out[B + 'visual_projection.weight'] = sd[B + 'visual.proj'].t().contiguous()
    for i in layer_indices(sd, B + 'visual.transformer.resblocks.'):
        out.update(openclip_block_to_hf_clip(sd, f'{B}visual.transformer.resblocks.{i}.',
                                             f'{B}layers.{i}.'))
    for k in layer_indices(sd, B + 'branch.layers.'):
        out.update(openclip_block_to_hf_clip(sd, f'{B}branch.layers.{k}.spatial.',
                                             f'{B}STAN_S_layers.{k}.'))
        src, dst = f'{B}branch.layers.{k}.temporal.', f'{B}STAN_T_layers.{k}.'
        if src + 'fc.weight' in sd:           # the attention temporal module only
            out.update(in_proj_to_qkv(sd, src, dst))
            for d, s in _TEMPORAL_PLAIN.items():
                if src + s in sd:
                    out[dst + d] = sd[src + s]
    out.update(openclip_text_to_hf_clip(sd, prefix=T, out_prefix=T + 'text_model.',
                                        projection_key=T + 'text_projection.weight'))
    return out


def public_to_mm(state_dict: Mapping[str, Tensor]) -> Tuple[Dict[str, Tensor],
                                                             ConversionReport]:
    """Public STAN state dict -> stan-mm state dict (see the module docstring).

    Returns the new state dict and a :class:`ConversionReport`: source keys that were not
    mapped are listed there and left out of the output.
    """
    B = VIDEO_PREFIX
    out = _public_to_mm_keys(state_dict)
    consumed = set(_mm_to_public_keys(out))
    report = ConversionReport()
    for k in state_dict:
        if k not in consumed:
            (report.dropped if is_position_ids(k) else report.unmapped).append(k)
    report.missing = missing_mm_keys(out)
    report.info = {
        'CLIP vision blocks': len(layer_indices(state_dict, B + 'layers.')),
        'STAN depth (STAN_S_layers)': len(layer_indices(state_dict, B + 'STAN_S_layers.')),
        'STAN temporal self-attention layers (STAN_T_layers)':
            len(layer_indices(state_dict, B + 'STAN_T_layers.')),
        'text tower': any(k.startswith(TEXT_PREFIX) for k in out),
    }
    if B + 'visual.conv1.weight' in out:
        report.info['vision width'] = out[B + 'visual.conv1.weight'].shape[0]
    return out, report


def mm_to_public(state_dict: Mapping[str, Tensor]) -> Tuple[Dict[str, Tensor],
                                                             ConversionReport]:
    """stan-mm state dict -> public STAN layout (inverse of :func:`public_to_mm`).

    stan-mm weights the public layout cannot hold (``level_proj`` fusion, conv temporal
    modules, anything else) are reported as unmapped and left out.
    """
    out = _mm_to_public_keys(state_dict)
    consumed = set(_public_to_mm_keys(out))
    return out, ConversionReport(unmapped=[k for k in state_dict if k not in consumed])


def retrieval_to_recognition(state_dict: Mapping[str, Tensor]
                             ) -> Tuple[Dict[str, Tensor], ConversionReport]:
    """Retrieval state dict (stan-mm :class:`~stan_mm.models.retrievers.STANRetriever`, or
    the public layout, converted first by :func:`public_to_mm`) -> the state dict of a
    recognizer with a text-classifier head (``Recognizer3D`` + ``CLIPSTAN`` +
    ``TextClassifierHead``, the recognition configs' model)::

        backbone.*            backbone.*                     (the same CLIPSTAN names)
        text_backbone.<k>     cls_head.text_encoder.<k>      (the same CLIPTextEncoder)

    The class embeddings of the head are computed from the class names by that text
    tower (nothing else of the head is stored, unless it learns its temperature), so a
    class prompt is embedded as the retriever embedded the same text. A learned
    ``logit_scale`` of the retriever is not carried (the report names the
    ``model.cls_head.temperature`` it stands for); any other key is reported as unmapped.

    Raises:
        ValueError: a state dict that is a recognizer's already (``cls_head.*``), that
            holds no video tower, or no text tower (the backbone alone needs no conversion:
            ``load_from`` takes it as it is).
    """
    source = 'stan-mm retrieval'
    if any(k.startswith('cls_head.') for k in state_dict):
        raise ValueError('it holds cls_head.* weights: a recognition checkpoint already '
                         '(use it as load_from as it is)')
    report = ConversionReport()
    if not any(k.startswith(VIDEO_PREFIX + 'visual.') for k in state_dict):
        kept = {k: state_dict[k] for k in ('logit_scale', ) if k in state_dict}
        state_dict, public = public_to_mm(state_dict)       # the public layout?
        state_dict.update(kept)                             # (CLIP's name in both layouts)
        report.unmapped = [k for k in public.unmapped if k not in kept]
        report.dropped = public.dropped
        source = 'public STAN (converted with public_to_mm first)'
        if not any(k.startswith(VIDEO_PREFIX + 'visual.') for k in state_dict):
            sample = ', '.join(list(state_dict)[:5])
            raise ValueError(f'no video tower found (expected {VIDEO_PREFIX}visual.* of '
                             f'stan-mm or the public layout\'s {VIDEO_PREFIX}layers.N.*): '
                             f'not a STAN retrieval checkpoint (it starts with: {sample})')
    if not any(k.startswith(TEXT_PREFIX) for k in state_dict):
        raise ValueError(f'no text tower ({TEXT_PREFIX}*) found: nothing to give the text '
                         f'head. A backbone alone needs no conversion: load_from takes '
                         f'its {VIDEO_PREFIX}* weights as they are')

    def renamed(key: str) -> str:
        return HEAD_TEXT_PREFIX + key[len(TEXT_PREFIX):] if key.startswith(TEXT_PREFIX) \
            else key
    out: Dict[str, Tensor] = {}
    scale = None
    for key, value in state_dict.items():
        if key.startswith((VIDEO_PREFIX, TEXT_PREFIX)):
            out[renamed(key)] = value
        elif key == 'logit_scale' and isinstance(value, Tensor) and value.numel() == 1:
            scale = float(value.float().exp())
        else:
            report.unmapped.append(key)
    report.missing = [renamed(k) for k in missing_mm_keys(state_dict)]
    report.info = {
        'source layout': source,
        'CLIP vision blocks': len(layer_indices(out, VIDEO_PREFIX
                                                + 'visual.transformer.resblocks.')),
        'STAN depth (branch layers)': len(layer_indices(out, VIDEO_PREFIX + 'branch.layers.')),
        'text tower blocks (-> cls_head.text_encoder)':
            len(layer_indices(out, HEAD_TEXT_PREFIX + 'transformer.resblocks.'))}
    if scale is not None:
        report.info['retrieval logit scale (not carried)'] = (
            f'{scale:.4g}; the text head scores with 1 / model.cls_head.temperature (0.01 '
            f'in the configs): --cfg-options model.cls_head.temperature={1 / scale:.4g} '
            f'to score with it')
    return out, report


def _state_dict_of(ckpt) -> Dict[str, Tensor]:
    if isinstance(ckpt, Mapping) and 'state_dict' in ckpt:
        ckpt = ckpt['state_dict']
    if not isinstance(ckpt, Mapping) or not all(isinstance(v, Tensor) for v in ckpt.values()):
        raise ValueError('expected an mmengine checkpoint ({"state_dict": {...}}) or a plain '
                         'state dict of tensors')
    return dict(ckpt)


def same_file(a: str, b: str) -> bool:
    """Whether paths ``a`` and ``b`` name one file (the same real path, or, both existing,
    the same inode: a hard link)."""
    if osp.realpath(a) == osp.realpath(b):
        return True
    try:
        return osp.samefile(a, b)
    except OSError:
        return False


def check_not_input(in_path: str, out_path: str) -> None:
    """Raise ``ValueError`` when ``out_path`` is ``in_path`` (writing would destroy it)."""
    if same_file(in_path, out_path):
        raise ValueError(f'output {out_path} would overwrite the input {in_path}; give '
                         f'another output file')


def save_atomic(obj, out_path: str) -> None:
    """``torch.save(obj, out_path)`` through a temporary file in the same folder, renamed
    over ``out_path`` once complete: a reader never sees a half-written file, and a failed
    write leaves an existing ``out_path`` as it was (and no temporary file).

    The temporary file is made by ``tempfile.mkstemp`` (``.<name>.<8 random
    characters>.tmp``, created exclusively and written through its descriptor): a file or
    symbolic link someone put at a name they could guess is never written through. It
    gets the mode ``open`` would give (that of the file it replaces, else ``0o666`` less
    the umask; mkstemp's ``0o600`` would hide the checkpoint from the group). See
    :mod:`stan_mm.utils.atomic`. Temporary files of ``out_path`` that a killed conversion
    left (a model-sized copy each) are removed first once 10 minutes old (a conversion
    still writing keeps its file newer)."""
    from stan_mm.utils.atomic import remove_stale_temps_of, replacing
    remove_stale_temps_of(out_path)      # left by killed conversions to the same file
    with replacing(out_path) as f:
        torch.save(obj, f)


def convert_public_checkpoint(in_path: str, out_path: str, trust: bool = False
                              ) -> ConversionReport:
    """Read a public STAN checkpoint, write a stan-mm checkpoint
    (``{'meta': {...}, 'state_dict': {...}}``), return the report.

    Raises ``ValueError`` when nothing in the file looks like a public STAN checkpoint, or
    when ``out_path`` is ``in_path``. The file is written atomically (:func:`save_atomic`);
    an existing ``out_path`` is replaced.
    """
    from stan_mm.compat import safe_torch_load
    check_not_input(in_path, out_path)
    sd = _state_dict_of(safe_torch_load(in_path, map_location='cpu', trust=trust))
    out, report = public_to_mm(sd)
    if not any(k.startswith(VIDEO_PREFIX + 'visual.') for k in out):
        sample = ', '.join(list(sd)[:5])
        raise ValueError(f'{in_path}: no public STAN video-tower keys found (expected '
                         f'backbone.patch_embedding.weight, backbone.layers.N.*, ...; the '
                         f'file starts with: {sample})')
    _save_converted(out, report, in_path, out_path, 'public_to_mm')
    return report


def _save_converted(state_dict: Dict[str, Tensor], report: ConversionReport, in_path: str,
                    out_path: str, converter: str) -> None:
    """Write a converted ``state_dict`` as an mmengine checkpoint whose ``meta`` names the
    input, the converter function of this module and the report's unmapped and missing
    keys (atomically: :func:`save_atomic`)."""
    save_atomic({'meta': {'converted_from': str(in_path),
                          'converter': f'stan_mm.utils.stan_convert.{converter}',
                          'unmapped_keys': report.unmapped,
                          'missing_keys': report.missing},
                 'state_dict': state_dict}, out_path)


def _note_ema(ckpt, report: ConversionReport) -> None:
    """Say in ``report`` which weights of a checkpoint saved by mmengine's ``EMAHook`` were
    converted: its ``state_dict``, the moving average (``ema_state_dict``, the weights of
    the last training step, is left out)."""
    if isinstance(ckpt, Mapping) and isinstance(ckpt.get('ema_state_dict'), Mapping):
        report.info['EMAHook checkpoint'] = ('its state_dict, the moving average of the '
                                             'weights, is converted (the last training '
                                             'step\'s, ema_state_dict, are left out)')


def convert_to_recognition(in_path: str, out_path: str, trust: bool = False
                           ) -> ConversionReport:
    """Read a retrieval checkpoint (stan-mm or public layout), write the checkpoint of a
    recognizer with a text-classifier head (:func:`retrieval_to_recognition`;
    ``{'meta': {...}, 'state_dict': {...}}``), return the report. ``module.`` prefixes
    (DDP) are removed first.

    Raises ``ValueError`` (naming ``in_path``) for a checkpoint that
    :func:`retrieval_to_recognition` refuses, or when ``out_path`` is ``in_path``. The
    file is written atomically (:func:`save_atomic`); an existing ``out_path`` is
    replaced."""
    from stan_mm.compat import safe_torch_load
    check_not_input(in_path, out_path)
    ckpt = safe_torch_load(in_path, map_location='cpu', trust=trust)
    sd = {(k[7:] if k.startswith('module.') else k): v
          for k, v in _state_dict_of(ckpt).items()}
    try:
        out, report = retrieval_to_recognition(sd)
    except ValueError as e:
        raise ValueError(f'{in_path}: {e}') from None
    _note_ema(ckpt, report)
    _save_converted(out, report, in_path, out_path, 'retrieval_to_recognition')
    return report


def export_public_checkpoint(state_dict: Mapping[str, Tensor], out_path: str,
                             source: str = 'the state dict') -> ConversionReport:
    """Write a stan-mm state dict in the public STAN layout (mmengine checkpoint).

    Raises ``ValueError`` (naming ``source``) when it holds no stan-mm video tower, e.g. a
    checkpoint that is already in the public layout; nothing is written then. The file is
    written atomically (:func:`save_atomic`); an existing ``out_path`` is replaced."""
    sd = _state_dict_of(state_dict)
    if not any(k.startswith(VIDEO_PREFIX + 'visual.') for k in sd):
        sample = ', '.join(list(sd)[:5])
        raise ValueError(f'{source}: no stan-mm video-tower keys found (expected '
                         f'{VIDEO_PREFIX}visual.*, {VIDEO_PREFIX}branch.*; the file starts '
                         f'with: {sample}). A checkpoint in the public layout converts the '
                         f'other way: drop --export.')
    out, report = mm_to_public(sd)
    _note_ema(state_dict, report)
    save_atomic({'meta': {'converter': 'stan_mm.utils.stan_convert.mm_to_public',
                          'unmapped_keys': report.unmapped}, 'state_dict': out}, out_path)
    return report
