"""CLIP architecture descriptions ("clip_cfg" dicts): names, validation, inference from weights.

A *clip_cfg* is the dict open_clip keeps in its model-config JSON files::

    {'embed_dim': 512, 'quick_gelu': True,
     'vision_cfg': {'image_size': 224, 'patch_size': 16, 'width': 768, 'layers': 12,
                    'head_width': 64},
     'text_cfg': {'context_length': 77, 'vocab_size': 49408, 'width': 512, 'heads': 8,
                  'layers': 12}}

A *vision clip_cfg* (image tower alone, for weights without the text tower) has only the
top-level ``embed_dim`` (the projection's output width), ``vision_cfg`` and optionally
``quick_gelu``; :func:`resolve_vision_arch` and :func:`infer_vision_cfg` produce one.

Only ViT image towers with open_clip's own text transformer are supported (every CLIP that
STAN uses); ResNet, timm, HuggingFace-text and SigLIP configs are refused with a clear error.

What weights cannot tell: the activation (QuickGELU vs GELU, see :mod:`.checkpoint`) and
the number of attention heads. Heads are taken tower by tower (the same rule whether the
file holds one tower or both): from a config file next to the weights when there is one;
else from open_clip's bundled configs whose tower has the same transformer shape (width,
layers, MLP ratio), so ViT-H/14 gets its 80-wide heads whatever its text tower or image
size; else from CLIP's rule ``heads = width // 64``, with a warning naming the weights
(pass ``arch`` for a model trained with other heads). For a width that is not a multiple
of 64 (tiny test models) the heads cannot be inferred and the caller must pass ``arch``.
"""
import copy
import logging
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from mmengine.logging import print_log

from stan_mm.errors import ConfigValueError

from .hf_convert import layer_indices

# OpenAI spellings of the released models -> open_clip config names (QuickGELU variants,
# since every OpenAI release was trained with QuickGELU).
OPENAI_NAMES = {
    'ViT-B/32': 'ViT-B-32-quickgelu',
    'ViT-B/16': 'ViT-B-16-quickgelu',
    'ViT-L/14': 'ViT-L-14-quickgelu',
    'ViT-L/14@336px': 'ViT-L-14-336-quickgelu',
}
CLIP_HEAD_WIDTH = 64

_VISION_REQUIRED = ('image_size', 'patch_size', 'width', 'layers')
_TEXT_REQUIRED = ('context_length', 'vocab_size', 'width', 'heads', 'layers')
# Top-level keys of an open_clip config that open_clip.model.CLIP accepts.
_TOP_KEYS = ('embed_dim', 'vision_cfg', 'text_cfg', 'quick_gelu', 'init_logit_scale')
# Fields that the weights determine; arch and weights must agree on them.
SHAPE_FIELDS = (
    ('embed_dim', ),
    ('vision_cfg', 'image_size'), ('vision_cfg', 'patch_size'), ('vision_cfg', 'width'),
    ('vision_cfg', 'layers'), ('vision_cfg', 'mlp_ratio'),
    ('text_cfg', 'context_length'), ('text_cfg', 'vocab_size'), ('text_cfg', 'width'),
    ('text_cfg', 'layers'), ('text_cfg', 'mlp_ratio'),
)
#: the fields of :data:`SHAPE_FIELDS` that the image tower's weights determine
VISION_SHAPE_FIELDS = tuple(f for f in SHAPE_FIELDS if f[0] != 'text_cfg')


def normalize_arch_name(name: str) -> str:
    """Map an OpenAI spelling (``'ViT-B/16'``) to open_clip's (``'ViT-B-16-quickgelu'``).

    open_clip names pass through unchanged. Raises ``ValueError`` for a name that is not
    one of open_clip's bundled configs, listing the ViT CLIP names that are.
    """
    import open_clip
    if name in OPENAI_NAMES:
        return OPENAI_NAMES[name]
    if open_clip.get_model_config(name) is None:
        vits = [n for n in open_clip.list_models() if _plain_vit_problem(
            open_clip.get_model_config(n)) is None]
        raise ConfigValueError(
            f'Unknown CLIP arch name {name!r}. Use an OpenAI spelling '
            f'({", ".join(OPENAI_NAMES)}), one of open_clip\'s ViT CLIP configs '
            f'({", ".join(vits[:40])}{", ..." if len(vits) > 40 else ""}), '
            f'or a clip_cfg dict (see stan_mm.models.clip.arch).')
    return name


def arch_name_quick_gelu(name: str) -> Optional[bool]:
    """Activation that an arch *name* states explicitly: ``True`` for OpenAI spellings and
    names ending in ``-quickgelu``, ``None`` otherwise (a plain open_clip name describes the
    shapes; see :func:`stan_mm.models.clip.build_clip` for how the activation is chosen)."""
    return True if (name in OPENAI_NAMES or name.endswith('-quickgelu')) else None


def _plain_vit_problem(cfg: Optional[Mapping]) -> Optional[str]:
    """Why ``cfg`` is not a plain ViT CLIP (``None`` when it is)."""
    if cfg is None:
        return 'no config'
    if cfg.get('custom_text') or 'init_logit_bias' in cfg:
        return 'it is a CustomTextCLIP/SigLIP model'
    v, t = cfg.get('vision_cfg', {}), cfg.get('text_cfg', {})
    if v.get('timm_model_name'):
        return 'its image tower is a timm model'
    if isinstance(v.get('layers'), (list, tuple)):
        return 'its image tower is a ResNet'
    if t.get('hf_model_name'):
        return 'its text tower is a HuggingFace model'
    return None


def arch_from_name(name: str) -> Dict:
    """clip_cfg of an open_clip (or OpenAI-spelled) model name, from open_clip's bundled
    configs (nothing is downloaded). ``quick_gelu`` is present only when the name states it.
    """
    import open_clip
    oc_name = normalize_arch_name(name)
    cfg = open_clip.get_model_config(oc_name)
    problem = _plain_vit_problem(cfg)
    if problem:
        raise ConfigValueError(f'CLIP arch {name!r} is not supported ({problem}); STAN needs a ViT '
                               f'CLIP such as {", ".join(OPENAI_NAMES)}.')
    cfg = copy.deepcopy(cfg)
    cfg.pop('quick_gelu', None)
    if arch_name_quick_gelu(name):
        cfg['quick_gelu'] = True
    return cfg


def validate_clip_cfg(cfg: Mapping, what: str = 'arch', vision_only: bool = False) -> Dict:
    """Check a clip_cfg dict and return a normalized deep copy.

    Fills ``vision_cfg.head_width`` with 64 when absent (open_clip's default). Raises
    ``ValueError`` naming the offending field and what was expected. ``vision_only``: a
    vision clip_cfg without ``text_cfg`` is accepted too (a ``text_cfg`` that is present
    is still checked).
    """
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg
    if not isinstance(cfg, Mapping):
        raise TypeError(f'{what} must be a dict (clip_cfg), got {type(cfg).__name__}')
    cfg = copy.deepcopy(dict(cfg))
    required_top = ('embed_dim', 'vision_cfg') if vision_only else (
        'embed_dim', 'vision_cfg', 'text_cfg')
    for key in required_top:
        if key not in cfg:
            raise ConfigValueError(f'{what} is missing {key!r}; a clip_cfg needs embed_dim, '
                                   f'vision_cfg {_VISION_REQUIRED} and text_cfg {_TEXT_REQUIRED}'
                                   + (' (text_cfg may be left out for the image tower alone)'
                                      if vision_only else ''))
    unknown = sorted(set(cfg) - set(_TOP_KEYS))
    if unknown:
        raise ConfigValueError(f'{what} has unsupported keys {unknown}; allowed: {list(_TOP_KEYS)}')
    problem = _plain_vit_problem(cfg)
    if problem:
        raise ConfigValueError(f'{what} is not supported: {problem}')
    towers = (('vision_cfg', _VISION_REQUIRED, CLIPVisionCfg),
              ('text_cfg', _TEXT_REQUIRED, CLIPTextCfg))
    for sub, required, dc in (t for t in towers if t[0] in cfg):
        part = cfg[sub]
        if not isinstance(part, Mapping):
            raise ConfigValueError(f'{what}.{sub} must be a dict, got {type(part).__name__}')
        part = cfg[sub] = dict(part)
        missing = [k for k in required if k not in part]
        if missing:
            raise ConfigValueError(f'{what}.{sub} is missing {missing} (needs {list(required)})')
        allowed = set(dc.__dataclass_fields__)
        bad = sorted(set(part) - allowed)
        if bad:
            raise ConfigValueError(f'{what}.{sub} has unknown keys {bad}; allowed: '
                                   f'{sorted(allowed)}')
    v, t = cfg['vision_cfg'], cfg.get('text_cfg')
    v.setdefault('head_width', CLIP_HEAD_WIDTH)
    if v['width'] % v['head_width']:
        raise ConfigValueError(f'{what}.vision_cfg.width={v["width"]} is not a multiple of '
                               f'head_width={v["head_width"]}')
    if t is not None and t['width'] % t['heads']:
        raise ConfigValueError(f'{what}.text_cfg.width={t["width"]} is not a multiple of '
                               f'heads={t["heads"]}')
    if v['image_size'] % v['patch_size']:
        raise ConfigValueError(f'{what}.vision_cfg.image_size={v["image_size"]} is not a multiple '
                               f'of patch_size={v["patch_size"]}')
    if 'quick_gelu' in cfg and not isinstance(cfg['quick_gelu'], bool):
        raise ConfigValueError(f'{what}.quick_gelu must be True or False, got '
                               f'{cfg["quick_gelu"]!r}')
    return cfg


def resolve_arch(arch) -> Tuple[Dict, str]:
    """``arch`` (name or dict) -> (validated clip_cfg, human-readable description:
    ``architecture 'ViT-B-16'``, ``architecture from the arch dict``)."""
    if isinstance(arch, str):
        return (validate_clip_cfg(arch_from_name(arch), what=f'arch {arch!r}'),
                f'architecture {arch!r}')
    if isinstance(arch, Mapping):
        return validate_clip_cfg(arch), 'architecture from the arch dict'
    raise TypeError(f'arch must be None, an open_clip/OpenAI model name or a clip_cfg dict, '
                    f'got {type(arch).__name__}')


def is_vision_only_arch(arch) -> bool:
    """True for a clip_cfg dict without ``text_cfg`` (describes the image tower alone)."""
    return isinstance(arch, Mapping) and 'text_cfg' not in arch


def resolve_vision_arch(arch) -> Tuple[Dict, str]:
    """``arch`` (name, clip_cfg dict, or vision clip_cfg dict without ``text_cfg``) ->
    (validated vision clip_cfg ``{'embed_dim', 'vision_cfg', 'quick_gelu'?}``,
    human-readable description). The text tower of a full arch is checked, then dropped."""
    if isinstance(arch, Mapping):
        cfg, desc = (validate_clip_cfg(arch, vision_only=True),
                     'architecture from the arch dict')
    else:   # a name (or a wrong type: resolve_arch's TypeError)
        cfg, desc = resolve_arch(arch)
    return {k: v for k, v in cfg.items() if k != 'text_cfg'}, desc


# ---------------------------------------------------------------------------------------
# Inference from an open_clip-layout state dict
# ---------------------------------------------------------------------------------------
def _count_blocks(keys, prefix: str) -> int:
    idx = layer_indices(keys, prefix)
    if idx != list(range(len(idx))):
        raise ValueError(f'blocks under {prefix!r} are not numbered 0..N-1: {idx}')
    return len(idx)


def _mlp_ratio(sd, block_prefix: str, width: int) -> float:
    hidden = sd[block_prefix + '0.mlp.c_fc.weight'].shape[0]
    ratio = hidden / width
    if int(width * ratio) != hidden:  # guard float truncation inside open_clip
        ratio += 1e-9
    return ratio


def _need(sd, keys: List[str]):
    missing = [k for k in keys if k not in sd]
    if missing:
        raise KeyError(f'cannot infer the CLIP architecture: the weights lack {missing} '
                       f'(is this a ViT CLIP checkpoint in OpenAI/open_clip layout?)')


#: per tower, the shape fields that fix its heads in open_clip's bundled configs (image size,
#: patch size, context length, vocabulary and embed_dim do not)
_HEAD_SHAPE_FIELDS = {
    'vision': (('vision_cfg', 'width'), ('vision_cfg', 'layers'), ('vision_cfg', 'mlp_ratio')),
    'text': (('text_cfg', 'width'), ('text_cfg', 'layers'), ('text_cfg', 'mlp_ratio')),
}


def _heads_of(cfg: Mapping, tower: str) -> Optional[int]:
    """The number of attention heads a clip_cfg states for ``tower`` (``None``: not
    stated)."""
    part = cfg.get(f'{tower}_cfg', {})
    if tower == 'text':
        return part.get('heads')
    return part['width'] // part.get('head_width', CLIP_HEAD_WIDTH)


def _bundled_heads(cfg: Dict, tower: str) -> Optional[int]:
    """The heads of ``cfg``'s ``tower`` (``'vision'``/``'text'``) in the bundled open_clip
    ViT CLIP configs whose tower has the same transformer shape
    (:data:`_HEAD_SHAPE_FIELDS`); ``None`` when none has it or they disagree."""
    import open_clip
    heads = set()
    for name in open_clip.list_models():
        ref = open_clip.get_model_config(name)
        if _plain_vit_problem(ref) is not None or shape_mismatches(
                cfg, ref, _HEAD_SHAPE_FIELDS[tower]):
            continue
        n = _heads_of(ref, tower)
        if n is not None:
            heads.add(n)
    return heads.pop() if len(heads) == 1 else None


def _infer_heads(cfg: Dict, tower: str, stated: Optional[int], source: str) -> int:
    """Heads of ``cfg``'s ``tower``: ``stated`` (a config file), else
    :func:`_bundled_heads`, else CLIP's ``width // 64`` (warned, naming ``source``); raises
    ``ValueError`` when none applies."""
    part, field = cfg[f'{tower}_cfg'], ('vision_cfg.head_width' if tower == 'vision'
                                        else 'text_cfg.heads')
    width = part['width']
    if stated is not None:
        if width % stated:
            raise ValueError(f'{stated} {tower} heads (stated by the config file) do not '
                             f'divide the {tower} width {width}')
        return int(stated)
    heads = _bundled_heads(cfg, tower)
    if heads is not None:
        return heads
    if width % CLIP_HEAD_WIDTH:
        raise ValueError(
            f'cannot infer the number of attention heads of the {tower} tower: width '
            f'{width} is not a multiple of CLIP\'s head width {CLIP_HEAD_WIDTH} and no '
            f'bundled open_clip config has a {tower} tower of this shape. Heads are not '
            f'stored in the weights; pass arch=dict(...) with {field}.')
    heads = width // CLIP_HEAD_WIDTH
    print_log(
        f'{source}: the number of attention heads of the {tower} tower is stored neither '
        f'in the weights nor in a config file next to them, and no bundled open_clip '
        f'config has a {tower} tower of this shape (width {width}, {part["layers"]} '
        f'layers): using CLIP\'s rule width // {CLIP_HEAD_WIDTH} = {heads} head(s). If this '
        f'model was trained with other heads, its outputs will be wrong: pass arch (an '
        f'open_clip name or a clip_cfg dict with {field}).',
        logger='current', level=logging.WARNING)
    return heads


def _vision_shapes(sd: Mapping[str, torch.Tensor]) -> Dict:
    """``embed_dim`` and the shape fields of ``vision_cfg`` from ``visual.*`` keys (present:
    checked by the callers; without ``visual.proj`` there is no ``embed_dim``)."""
    conv = sd['visual.conv1.weight']
    width, patch = conv.shape[0], conv.shape[-1]
    n_pos = sd['visual.positional_embedding'].shape[0] - 1
    grid = round(n_pos ** 0.5)
    if grid * grid != n_pos:
        raise ValueError(f'visual.positional_embedding has {n_pos} patch positions, not a '
                         f'square grid; non-square images are not supported')
    proj = sd.get('visual.proj')
    if proj is not None and (proj.dim() != 2 or proj.shape[0] != width):
        raise ValueError(f'visual.proj has shape {tuple(proj.shape)}; expected [width '
                         f'{width}, embed_dim] (an open_clip/OpenAI projection matrix)')
    v_layers = _count_blocks(sd, 'visual.transformer.resblocks.')
    if v_layers == 0:
        raise KeyError('cannot infer the CLIP architecture: no transformer blocks found '
                       '(expected visual.transformer.resblocks.N.*)')
    vision = {'image_size': int(grid * patch), 'patch_size': int(patch), 'width': int(width),
              'layers': v_layers}
    _need(sd, ['visual.transformer.resblocks.0.mlp.c_fc.weight'])
    ratio = _mlp_ratio(sd, 'visual.transformer.resblocks.', width)
    if ratio != 4.0:
        vision['mlp_ratio'] = ratio
    if proj is None:
        return {'vision_cfg': vision}
    return {'embed_dim': int(proj.shape[1]), 'vision_cfg': vision}


def _refuse_resnet(sd: Mapping[str, torch.Tensor]) -> None:
    if 'visual.layer1.0.conv1.weight' in sd or 'visual.attnpool.positional_embedding' in sd:
        raise ValueError('ResNet CLIP weights (RN50, ...) are not supported: STAN needs a ViT '
                         'CLIP (ViT-B/32, ViT-B/16, ViT-L/14, ...).')


def infer_vision_shapes(state_dict: Mapping[str, torch.Tensor],
                        require_proj: bool = True) -> Dict:
    """The shape fields of a vision clip_cfg (:data:`VISION_SHAPE_FIELDS`) from the image
    tower's weights alone (open_clip/OpenAI keys ``visual.*``; HF layout converted first).

    Shapes read: ``visual.conv1.weight`` [W, 3, p, p] -> width W, patch p;
    ``visual.positional_embedding`` [1 + g*g, W] -> image size g*p; the count of
    ``visual.transformer.resblocks.N`` -> layers; ``mlp.c_fc.weight`` [r*W, W] -> mlp_ratio
    r (kept only when not 4); ``visual.proj`` [W, E] -> embed_dim E (``require_proj=False``:
    a tower without it gives no ``embed_dim``).
    """
    from .hf_convert import hf_clip_to_openclip, is_hf_clip_state_dict
    if is_hf_clip_state_dict(state_dict):
        state_dict = hf_clip_to_openclip(state_dict)
    _refuse_resnet(state_dict)
    _need(state_dict, ['visual.conv1.weight', 'visual.positional_embedding']
          + (['visual.proj'] if require_proj else []))
    return _vision_shapes(state_dict)


def infer_vision_cfg(state_dict: Mapping[str, torch.Tensor],
                     vision_heads: Optional[int] = None, source: str = 'these weights'
                     ) -> Dict:
    """Infer the vision clip_cfg (``{'embed_dim', 'vision_cfg'}``, no ``quick_gelu``) of a
    ViT CLIP image tower from its weights alone (:func:`infer_vision_shapes`).

    Heads, by the rule of :func:`infer_clip_cfg` for the image tower (so a full file and
    its image tower alone give the same): ``vision_heads`` when given (a config file next
    to the weights); else those of the bundled open_clip configs whose image tower has this
    transformer shape, when they agree; else CLIP's ``width // 64``, with a warning naming
    ``source``; a width that is not a multiple of 64 with no other source raises
    ``ValueError`` (pass ``arch``).
    """
    cfg = infer_vision_shapes(state_dict)
    v = cfg['vision_cfg']
    v['head_width'] = v['width'] // _infer_heads(cfg, 'vision', vision_heads, source)
    return cfg


def infer_clip_shapes(state_dict: Mapping[str, torch.Tensor]) -> Dict:
    """The shape fields of a clip_cfg (:data:`SHAPE_FIELDS`, no heads, no activation) read
    from an open_clip/OpenAI-layout state dict (HuggingFace layout is converted first).

    Shapes read: ``visual.conv1.weight`` [W, 3, p, p] -> vision width W, patch p;
    ``visual.positional_embedding`` [1 + g*g, W] -> image size g*p; resblock count ->
    layers; ``mlp.c_fc.weight`` [r*W, W] -> mlp_ratio r (kept only when not 4);
    ``text_projection`` [Wt, E] -> embed_dim E; ``positional_embedding`` [C, Wt] -> context
    length C; ``token_embedding.weight`` [V, Wt] -> vocab size V; ``ln_final.weight`` [Wt].
    """
    from .hf_convert import hf_clip_to_openclip, is_hf_clip_state_dict
    if is_hf_clip_state_dict(state_dict):
        state_dict = hf_clip_to_openclip(state_dict)
    sd = state_dict
    _refuse_resnet(sd)
    _need(sd, ['visual.conv1.weight', 'visual.positional_embedding', 'visual.proj',
               'text_projection', 'positional_embedding', 'token_embedding.weight',
               'ln_final.weight'])
    t_width = sd['ln_final.weight'].shape[0]
    t_layers = _count_blocks(sd, 'transformer.resblocks.')
    if t_layers == 0 or not any(k.startswith('visual.transformer.resblocks.') for k in sd):
        raise KeyError('cannot infer the CLIP architecture: no transformer blocks found '
                       '(expected visual.transformer.resblocks.N.* and transformer.resblocks.N.*)')
    cfg = _vision_shapes(sd)
    embed_dim = sd['text_projection'].shape[1]
    if cfg['embed_dim'] != embed_dim:
        raise ValueError(f'visual.proj {tuple(sd["visual.proj"].shape)} and text_projection '
                         f'{tuple(sd["text_projection"].shape)} disagree on embed_dim')
    cfg['text_cfg'] = {'context_length': int(sd['positional_embedding'].shape[0]),
                       'vocab_size': int(sd['token_embedding.weight'].shape[0]),
                       'width': int(t_width), 'layers': t_layers}
    _need(sd, ['transformer.resblocks.0.mlp.c_fc.weight'])
    ratio = _mlp_ratio(sd, 'transformer.resblocks.', t_width)
    if ratio != 4.0:
        cfg['text_cfg']['mlp_ratio'] = ratio
    return cfg


def infer_clip_cfg(state_dict: Mapping[str, torch.Tensor],
                   heads: Optional[Tuple[int, int]] = None,
                   source: str = 'these weights') -> Dict:
    """Infer the clip_cfg of a ViT CLIP from its weights (open_clip/OpenAI key layout;
    HuggingFace ``transformers`` layout is converted first).

    Shapes: see :func:`infer_clip_shapes`. Heads (not stored in weights), tower by tower:
    ``heads`` = ``(vision_heads, text_heads)`` when given (e.g. from a config file); else
    those of the bundled open_clip configs whose tower has the same transformer shape
    (width, layers, MLP ratio), when they agree (so ViT-H/14 gets 80-wide heads, also with
    another text tower); else CLIP's rule ``width // 64``, with a warning naming
    ``source``. A width that is not a multiple of 64 with no other source raises
    ``ValueError`` (pass ``arch`` explicitly). The result has no ``quick_gelu`` key
    (weights do not store the activation; see :func:`stan_mm.models.clip.build_clip`).
    """
    cfg = infer_clip_shapes(state_dict)
    v, t = cfg['vision_cfg'], cfg['text_cfg']
    v_heads, t_heads = heads if heads is not None else (None, None)
    v['head_width'] = v['width'] // _infer_heads(cfg, 'vision', v_heads, source)
    t['heads'] = _infer_heads(cfg, 'text', t_heads, source)
    return cfg


def _get(cfg: Mapping, path: Tuple[str, ...]):
    node = cfg
    for p in path:
        node = node.get(p) if isinstance(node, Mapping) else None
    if node is None and path[-1] == 'mlp_ratio':
        return 4.0
    return node


def shape_mismatches(arch_cfg: Mapping, weights_cfg: Mapping,
                     fields=SHAPE_FIELDS) -> List[str]:
    """Fields of ``fields`` (default :data:`SHAPE_FIELDS`; :data:`VISION_SHAPE_FIELDS` for
    the image tower alone) on which two clip_cfgs disagree, as readable lines."""
    out = []
    for path in fields:
        a, w = _get(arch_cfg, path), _get(weights_cfg, path)
        if isinstance(a, float) or isinstance(w, float):
            same = a is not None and w is not None and abs(a - w) < 1e-3
        else:
            same = a == w
        if not same:
            out.append(f'{".".join(path)}: arch {a}, weights {w}')
    return out
