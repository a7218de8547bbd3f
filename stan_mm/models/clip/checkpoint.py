"""Read CLIP weights from a local path in any common layout, as an open_clip state dict.

Accepted (detected automatically):

========================  ==============================================================
OpenAI TorchScript        the ``.pt`` archives OpenAI distributes (a zip holding ``code/``
                          and ``constants.pkl``); read with ``torch.jit.load(...).state_dict()``
OpenAI state dict         ``visual.conv1.weight``, ``transformer.resblocks.N.*``, ... (fp16)
open_clip                 ``torch.save`` of a state dict (``.pt``/``.pth``/``.bin``), possibly
                          wrapped as ``{'state_dict': ...}`` with ``module.`` prefixes, or
                          ``.safetensors``; or an open_clip directory
                          (``open_clip_config.json`` + ``open_clip_model.safetensors`` / ...)
HF ``transformers``       a directory with ``config.json`` + ``model.safetensors`` /
                          ``pytorch_model.bin`` (sharded ones too), or such a weights file
image tower alone         any of the above holding only ``visual.*`` keys; an open_clip /
                          OpenAI ``model.visual.state_dict()`` (``conv1.weight``,
                          ``class_embedding``, ``transformer.resblocks.N.*``, ``proj``: put
                          under ``visual.``); an HF ``CLIPVisionModelWithProjection``
                          (``vision_model.*`` + ``visual_projection.weight``; its
                          ``config.json`` is a ``CLIPVisionConfig``) or ``CLIPVisionModel``
                          (no projection; ``vision_model.`` prefix or none)
========================  ==============================================================

Such image-tower-only weights have no text tower (:attr:`ClipCheckpoint.has_text_tower`
is False) and no key of neither tower besides ``logit_scale`` / ``logit_bias``
(:attr:`ClipCheckpoint.stray_keys` is empty):
:func:`stan_mm.models.clip.build_clip_vision` (``CLIPSTAN``) loads them,
:func:`stan_mm.models.clip.build_clip` refuses them.

Everything is returned in open_clip's key layout and in fp32. Pickled files are read with
:func:`stan_mm.compat.safe_torch_load` (weights-only unpickling).

Activation (QuickGELU vs GELU) is not stored in weights. This module reports a *hint* from
the file when there is one: ``config.json`` ``hidden_act`` (HF), ``quick_gelu`` in
``open_clip_config.json``, and "OpenAI release" markers (TorchScript archive, the archive's
``input_resolution``/``context_length``/``vocab_size`` entries, or weights stored in fp16 as
OpenAI stores them) which mean QuickGELU. Without a hint the caller decides
(:func:`stan_mm.models.clip.build_clip` documents the rule).
"""
import json
import os
import os.path as osp
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from .hf_convert import hf_clip_to_openclip, is_hf_clip_state_dict, is_position_ids

Tensor = torch.Tensor

#: what tools/convert/clip_to_mm.py records as meta.converter in the files it writes
CLIP_TO_MM = 'tools/convert/clip_to_mm.py'
OPENAI_META_KEYS = ('input_resolution', 'context_length', 'vocab_size')
_OC_ANCHOR = 'visual.conv1.weight'
_HF_ANCHORS = ('vision_model.embeddings.patch_embedding.weight',
               'text_model.embeddings.token_embedding.weight')
# an image tower saved on its own (open_clip/OpenAI ``model.visual``; HF
# ``CLIPVisionTransformer`` as transformers >= 5 saves ``CLIPVisionModel``): anchor key and
# a sibling that tells it apart from other models with such a key (a ResNet's conv1)
_BARE_VISION = (('conv1.weight', 'class_embedding', 'visual.'),
                ('embeddings.patch_embedding.weight', 'pre_layrnorm.weight', 'vision_model.'))
#: open_clip-layout keys (or key prefixes) that belong to the text tower
TEXT_TOWER_KEYS = ('token_embedding.weight', 'positional_embedding', 'ln_final.weight',
                   'ln_final.bias', 'text_projection')
TEXT_TOWER_PREFIXES = ('transformer.',)
#: keys of neither tower that CLIP weights carry (the logit scale and bias)
OUTSIDE_TOWER_KEYS = ('logit_scale', 'logit_bias')
_HF_DIR_FILES = ('model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin',
                 'pytorch_model.bin.index.json')
_OC_DIR_FILES = ('open_clip_model.safetensors', 'open_clip_pytorch_model.safetensors',
                 'open_clip_pytorch_model.bin', 'open_clip_pytorch_model.pth')


@dataclass
class ClipCheckpoint:
    """CLIP weights read from ``path``.

    Attributes:
        state_dict: open_clip-layout weights, floating tensors in fp32.
        fmt: ``'openai-torchscript'``, ``'openai'`` (state dict with OpenAI markers),
            ``'open_clip'`` or ``'hf'``.
        path: what the user passed; ``weights_file``: the file(s) actually read.
        quick_gelu: activation hint from the file (``None``: the file does not tell).
        quick_gelu_reason: why, for the log line.
        heads: ``(vision_heads, text_heads)`` when a config file states them.
        vision_heads: the image tower's heads when a config file states them (also a
            vision-only config such as HF ``CLIPVisionConfig``).
        ignored_keys: keys dropped because they lie outside the CLIP prefix.
        bare_vision: the file held an image tower saved on its own (keys without the
            ``visual.`` / ``vision_model.`` prefix), now put under ``visual.``.
        file_tensors: how many tensors the file holds as CLIP weights, counted as stored
            (before the conversion to open_clip keys; :attr:`ignored_keys` not counted).
        file_key: one of those keys as the file spells it (the patch embedding where
            present), for messages; ``state_dict`` holds open_clip names instead.
    """
    state_dict: Dict[str, Tensor]
    fmt: str
    path: str
    weights_file: str
    quick_gelu: Optional[bool] = None
    quick_gelu_reason: str = ''
    heads: Optional[Tuple[int, int]] = None
    stored_dtype: Optional[torch.dtype] = None
    ignored_keys: List[str] = field(default_factory=list)
    vision_heads: Optional[int] = None
    bare_vision: bool = False
    file_tensors: Optional[int] = None
    file_key: Optional[str] = None

    @property
    def has_text_tower(self) -> bool:
        """Whether any text tower weight is present (:data:`TEXT_TOWER_KEYS`,
        ``transformer.*``); False for image-tower-only files."""
        return any(is_text_tower_key(k) for k in self.state_dict)

    @property
    def stray_keys(self) -> List[str]:
        """The keys of neither CLIP tower: not ``visual.*``, not the text tower's, not
        :data:`OUTSIDE_TOWER_KEYS` (none in CLIP weights; e.g. ``branch.*`` of a trained
        stan-mm backbone, ``text.*`` of an open_clip CustomTextCLIP)."""
        return [k for k in self.state_dict if not k.startswith('visual.')
                and not is_text_tower_key(k) and k not in OUTSIDE_TOWER_KEYS]


def is_text_tower_key(key: str) -> bool:
    """An open_clip-layout key of CLIP's text tower (:data:`TEXT_TOWER_KEYS`,
    :data:`TEXT_TOWER_PREFIXES`)."""
    return key in TEXT_TOWER_KEYS or key.startswith(TEXT_TOWER_PREFIXES)


# ---------------------------------------------------------------------------------------
# file readers
# ---------------------------------------------------------------------------------------
def is_torchscript_archive(file: str) -> bool:
    """A TorchScript archive is a zip with ``<name>/code/`` and ``<name>/constants.pkl``;
    ``torch.save`` zips have neither."""
    if not zipfile.is_zipfile(file):
        return False
    with zipfile.ZipFile(file) as zf:
        names = zf.namelist()
    return any(n.endswith('/constants.pkl') for n in names) and any(
        '/code/' in n for n in names)


def _read_torchscript(file: str) -> Dict[str, Tensor]:
    with warnings.catch_warnings():  # torch >= 2.9 marks torch.jit as deprecated
        warnings.simplefilter('ignore', FutureWarning)
        module = torch.jit.load(file, map_location='cpu')
    return dict(module.state_dict())


def _read_safetensors(file: str) -> Dict[str, Tensor]:
    from safetensors.torch import load_file
    return load_file(file, device='cpu')


def _read_pickle(file: str):
    from stan_mm.compat.checkpoint import safe_torch_load
    return safe_torch_load(file, map_location='cpu')


def _read_file(file: str) -> Tuple[object, bool]:
    """-> (loaded object, is_torchscript)."""
    if file.endswith('.safetensors'):
        return _read_safetensors(file), False
    if is_torchscript_archive(file):
        return _read_torchscript(file), True
    return _read_pickle(file), False


def _read_sharded(index_file: str) -> Dict[str, Tensor]:
    with open(index_file) as f:
        weight_map = json.load(f).get('weight_map')
    if not isinstance(weight_map, dict):
        raise ValueError(f'{index_file} has no "weight_map"; is it a sharded checkpoint index?')
    sd = {}
    folder = osp.dirname(index_file)
    for shard in sorted(set(weight_map.values())):
        obj, _ = _read_file(osp.join(folder, shard))
        sd.update(obj)
    return sd


# ---------------------------------------------------------------------------------------
# unwrapping and layout detection
# ---------------------------------------------------------------------------------------
def _unwrap(obj, file: str) -> Dict[str, Tensor]:
    """Find the state dict in what ``torch.load`` returned."""
    for _ in range(3):  # {'state_dict': {...}}, {'model': {...}}, mmengine checkpoints ...
        if not isinstance(obj, Mapping):
            break
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        for key in ('state_dict', 'model', 'module', 'model_state_dict'):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        else:
            break
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping) or not any(isinstance(v, torch.Tensor)
                                               for v in obj.values()):
        kind = type(obj).__name__
        keys = list(obj)[:10] if isinstance(obj, Mapping) else ''
        raise ValueError(f'{file} does not hold a state dict of tensors (found {kind} {keys}); '
                         f'expected CLIP weights in OpenAI, open_clip or HuggingFace layout')
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _bare_vision_tower(sd: Dict[str, Tensor]) -> Optional[Tuple[Dict[str, Tensor], List[str]]]:
    """An image tower saved on its own (:data:`_BARE_VISION`), possibly under a common
    prefix, -> (its keys under ``visual.`` / ``vision_model.``, ignored keys); else None."""
    for anchor, sibling, tower in _BARE_VISION:
        for k in sd:
            prefix = k[:-len(anchor)]
            if k.endswith(anchor) and (not prefix or prefix.endswith('.')) \
                    and prefix + sibling in sd:
                inside = {tower + q[len(prefix):]: v for q, v in sd.items()
                          if q.startswith(prefix)}
                return inside, [q for q in sd if not q.startswith(prefix)]
    return None


def _strip_prefix(sd: Dict[str, Tensor], file: str
                  ) -> Tuple[Dict[str, Tensor], List[str], bool]:
    """Remove a common prefix in front of the CLIP keys (``module.``, ``clip.``, ...).

    Returns (CLIP keys, ignored keys, whether the keys were an image tower saved alone)."""
    anchor = next((k for k in sd if k.endswith(_OC_ANCHOR)
                   or any(k.endswith(a) for a in _HF_ANCHORS)), None)
    if anchor is None:
        bare = _bare_vision_tower(sd)
        if bare is not None:
            return bare + (True,)
        sample = list(sd)[:8]
        raise ValueError(
            f'{file}: no CLIP image tower found (looked for a key ending in {_OC_ANCHOR!r} '
            f'(OpenAI/open_clip) or {_HF_ANCHORS[0]!r} (HuggingFace), or an image tower '
            f'saved alone: conv1.weight + class_embedding (open_clip model.visual), '
            f'embeddings.patch_embedding.weight + pre_layrnorm.weight (HuggingFace)); '
            f'first keys: {sample}')
    for a in (_OC_ANCHOR,) + _HF_ANCHORS:
        if anchor.endswith(a):
            prefix = anchor[:-len(a)]
            break
    if not prefix:
        return sd, [], False
    model_keys = [k for k in sd if k.startswith(('backbone.branch.', 'text_backbone.',
                                                 'cls_head.'))]
    if prefix == 'backbone.' and model_keys:
        raise ValueError(
            f'{file}: this is a model checkpoint (stan-mm or MMAction2; keys such as '
            f'{model_keys[0]!r}), not CLIP weights: test or fine-tune it with load_from= / '
            f'tools/test.py CONFIG {file}; pretrained= and tools/convert/clip_to_mm.py take '
            f'OpenAI, open_clip or HuggingFace CLIP weights')
    inside = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    ignored = [k for k in sd if not k.startswith(prefix)]
    return inside, ignored, False


def _file_keys(sd: Dict[str, Tensor], ignored: List[str]) -> Tuple[int, Optional[str]]:
    """The file's CLIP tensors as stored (``sd`` less ``ignored``) -> (their count, one of
    their keys: the image tower's patch embedding where present, else the first)."""
    skip = set(ignored)
    keys = [k for k in sd if k not in skip]
    anchors = (_OC_ANCHOR,) + _HF_ANCHORS[:1] + tuple(a for a, _, _ in _BARE_VISION)
    for a in anchors:
        key = next((k for k in keys if k == a or k.endswith('.' + a)), None)
        if key is not None:
            return len(keys), key
    return len(keys), keys[0] if keys else None


def _is_hf_vision_config(cfg) -> bool:
    """An HF ``CLIPVisionConfig`` (``CLIPVisionModel[WithProjection]``'s config.json)."""
    return isinstance(cfg, dict) and (cfg.get('model_type') == 'clip_vision_model' or (
        'vision_config' not in cfg and 'hidden_size' in cfg and 'patch_size' in cfg))


def _hf_config_hints(config_file: str):
    """-> (quick_gelu, reason, (vision_heads, text_heads) or None, vision_heads or None)."""
    with open(config_file) as f:
        cfg = json.load(f)
    if _is_hf_vision_config(cfg):
        # transformers' CLIPVisionConfig default is quick_gelu too
        act = cfg.get('hidden_act', 'quick_gelu')
        if act not in ('quick_gelu', 'gelu'):
            raise ValueError(f'{config_file}: hidden_act {act!r} is not supported; open_clip '
                             f'uses "quick_gelu" or "gelu"')
        v_heads = cfg.get('num_attention_heads')
        return (act == 'quick_gelu', f'hidden_act={act!r} in {config_file}', None,
                int(v_heads) if v_heads is not None else None)
    vc, tc = cfg.get('vision_config') or {}, cfg.get('text_config') or {}
    # transformers' CLIP default is quick_gelu when a config omits hidden_act.
    acts = {vc.get('hidden_act', 'quick_gelu'), tc.get('hidden_act', 'quick_gelu')}
    if len(acts) != 1 or not acts <= {'quick_gelu', 'gelu'}:
        raise ValueError(f'{config_file}: hidden_act {sorted(acts)} is not supported; open_clip '
                         f'uses one activation, "quick_gelu" or "gelu", for both towers')
    act = acts.pop()
    heads = None
    if 'num_attention_heads' in vc and 'num_attention_heads' in tc:
        heads = (int(vc['num_attention_heads']), int(tc['num_attention_heads']))
    v_heads = int(vc['num_attention_heads']) if 'num_attention_heads' in vc else None
    return act == 'quick_gelu', f'hidden_act={act!r} in {config_file}', heads, v_heads


def _model_cfg_hints(model_cfg: Mapping, where: str):
    """Activation and head counts stated by an open_clip model config."""
    q = bool(model_cfg.get('quick_gelu', False))
    heads = v_heads = None
    v, t = model_cfg.get('vision_cfg', {}), model_cfg.get('text_cfg', {})
    if 'width' in v:
        v_heads = v['width'] // v.get('head_width', 64)
    if v_heads is not None and 'heads' in t:
        heads = (v_heads, t['heads'])
    return q, f'quick_gelu={q} in {where}', heads, v_heads


def _open_clip_config_hints(config_file: str):
    with open(config_file) as f:
        cfg = json.load(f)
    return _model_cfg_hints(cfg.get('model_cfg', cfg), config_file)


def _converted_clip_cfg(raw) -> Optional[Mapping]:
    """The ``clip_cfg`` that tools/convert/clip_to_mm.py stores in a single-file output
    (``{'meta': {'converter': ..., 'clip_cfg': ...}, 'state_dict': ...}``), else None."""
    meta = raw.get('meta') if isinstance(raw, Mapping) else None
    if (isinstance(meta, Mapping) and meta.get('converter') == CLIP_TO_MM
            and isinstance(meta.get('clip_cfg'), Mapping)):
        return meta['clip_cfg']
    return None


def _is_hf_clip_config(config_file: str) -> bool:
    """A readable HuggingFace CLIP ``config.json`` (both tower configs present, or a
    ``CLIPVisionConfig``)."""
    try:
        with open(config_file) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return False
    return (isinstance(cfg, dict) and isinstance(cfg.get('vision_config'), dict)
            and isinstance(cfg.get('text_config'), dict)) or _is_hf_vision_config(cfg)


def _resolve_dir(path: str) -> Tuple[str, Optional[str], Optional[str]]:
    """Directory -> (weights file, HF config.json or None, open_clip config or None)."""
    names = set(os.listdir(path))
    for fname in _OC_DIR_FILES:
        if fname in names:
            oc_cfg = osp.join(path, 'open_clip_config.json')
            if osp.isfile(oc_cfg):
                return osp.join(path, fname), None, oc_cfg
            # hub folders that ship both layouts without open_clip_config.json: the HF
            # config.json describes the same model (activation, heads)
            hf_cfg = osp.join(path, 'config.json')
            return (osp.join(path, fname), hf_cfg if _is_hf_clip_config(hf_cfg) else None,
                    None)
    for fname in _HF_DIR_FILES:
        if fname in names:
            hf_cfg = osp.join(path, 'config.json')
            return osp.join(path, fname), hf_cfg if osp.isfile(hf_cfg) else None, None
    raise FileNotFoundError(
        f'{path} is a directory without CLIP weights: expected a HuggingFace CLIP folder '
        f'(config.json + one of {list(_HF_DIR_FILES)}) or an open_clip folder '
        f'(one of {list(_OC_DIR_FILES)}); found {sorted(names)[:20]}')


def read_clip_checkpoint(path) -> ClipCheckpoint:
    """Read CLIP weights from a local file or directory (see the module docstring).

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it).
        ValueError: the file holds no CLIP weights in a known layout.
    """
    path = os.fspath(path)
    full = osp.abspath(osp.expanduser(path))
    if not osp.exists(full):
        raise FileNotFoundError(f'CLIP weights not found: {path!r} (resolved to {full}); '
                                f'pass a local weights file or directory')
    hf_cfg = oc_cfg = None
    if osp.isdir(full):
        file, hf_cfg, oc_cfg = _resolve_dir(full)
    else:
        file = full
    if file.endswith('.index.json'):
        raw, torchscript = _read_sharded(file), False
    else:
        raw, torchscript = _read_file(file)
    converted_cfg = _converted_clip_cfg(raw)
    sd = _unwrap(raw, file)
    file_sd = sd
    sd, ignored, bare_vision = _strip_prefix(sd, file)
    file_tensors, file_key = _file_keys(file_sd, ignored)

    present_meta = [k for k in OPENAI_META_KEYS if k in sd]
    for k in OPENAI_META_KEYS:
        sd.pop(k, None)
    sd = {k: v for k, v in sd.items() if not is_position_ids(k)}

    hf = is_hf_clip_state_dict(sd)
    anchor = _HF_ANCHORS[0] if hf else _OC_ANCHOR
    stored_dtype = sd[anchor].dtype if anchor in sd else None
    if hf:
        sd = hf_clip_to_openclip(sd)
        fmt = 'hf'
    elif torchscript:
        fmt = 'openai-torchscript'
    elif present_meta or stored_dtype == torch.float16:
        fmt = 'openai'
    else:
        fmt = 'open_clip'

    ckpt = ClipCheckpoint(
        state_dict={k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()},
        fmt=fmt, path=path, weights_file=file, stored_dtype=stored_dtype, ignored_keys=ignored,
        bare_vision=bare_vision, file_tensors=file_tensors, file_key=file_key)

    hints = None
    if hf_cfg is not None:
        hints = _hf_config_hints(hf_cfg)
    elif oc_cfg is not None:
        hints = _open_clip_config_hints(oc_cfg)
    elif converted_cfg is not None:
        hints = _model_cfg_hints(converted_cfg, f'the clip_cfg {CLIP_TO_MM} stored in {file}')
    if hints is not None:
        ckpt.quick_gelu, ckpt.quick_gelu_reason, ckpt.heads, ckpt.vision_heads = hints
    elif torchscript:
        ckpt.quick_gelu, ckpt.quick_gelu_reason = True, 'a TorchScript archive (OpenAI release)'
    elif present_meta:
        ckpt.quick_gelu = True
        ckpt.quick_gelu_reason = f'OpenAI archive entries {present_meta} in the weights'
    elif fmt == 'openai':
        ckpt.quick_gelu = True
        ckpt.quick_gelu_reason = 'weights stored in fp16, as OpenAI releases them'
    return ckpt
