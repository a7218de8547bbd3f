"""``build_clip``: an open_clip ``CLIP`` from an arch (name or dict) and/or local weights.

Activation rule (weights do not store it), first that applies:

1. ``build_clip(..., quick_gelu=True/False)``;
2. the arch states it: ``quick_gelu`` key of a clip_cfg dict, a name ending in
   ``-quickgelu``, or an OpenAI spelling (``'ViT-B/16'``: OpenAI models use QuickGELU);
3. the weights hint at it (:mod:`.checkpoint`): HF ``config.json`` ``hidden_act``, open_clip
   ``open_clip_config.json``, or an OpenAI release (TorchScript archive, OpenAI archive
   entries, fp16 storage) -> QuickGELU;
4. an arch without that statement (``'ViT-B-16'``, a dict without ``quick_gelu``) means
   what open_clip means by it: GELU;
5. nothing at all (``arch=None``, fp32 weights without a hint) -> QuickGELU
   (:data:`DEFAULT_QUICK_GELU`), because STAN starts from OpenAI's CLIP; a warning says so.
   LAION/DataComp weights need ``arch='ViT-B-16'`` (GELU) or ``quick_gelu=False``.

The choice and its reason are logged. Weights are loaded in fp32; ``precision='fp16'`` or
``'bf16'`` then casts like open_clip does (LayerNorms compute in fp32).
"""
import logging
from typing import Dict, Optional, Tuple

import torch
from mmengine.logging import print_log

from .arch import infer_clip_cfg, infer_clip_shapes, resolve_arch, shape_mismatches
from .checkpoint import ClipCheckpoint, read_clip_checkpoint

DEFAULT_QUICK_GELU = True
_PRECISIONS = {'fp32': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}
_MAX_LISTED = 25


class CLIPArchMismatchError(ValueError):
    """The given ``arch`` disagrees with the shapes of the ``pretrained`` weights."""


class CLIPKeysMismatchError(RuntimeError):
    """The weights have missing or unexpected keys for the built model (``strict=True``)."""


def _weights_cfg(ckpt: ClipCheckpoint) -> Dict:
    try:
        return infer_clip_cfg(ckpt.state_dict, heads=ckpt.heads)
    except (KeyError, ValueError) as e:
        from stan_mm.utils.cli import describe
        reason = describe(e)
        raise CLIPArchMismatchError(
            f'{ckpt.path}: {reason}. `pretrained` takes CLIP weights with both towers (a '
            'trained stan-mm / MMAction2 checkpoint goes to load_from, or to tools/test.py '
            'as CKPT)') from e


def load_clip_state_dict(path) -> Tuple[Dict[str, torch.Tensor], Dict]:
    """Read CLIP weights (OpenAI .pt/TorchScript, open_clip .pt/.bin/.safetensors, HF folder
    or file) as ``(open_clip-layout state dict in fp32, inferred clip_cfg)``.

    The clip_cfg's ``quick_gelu`` is the file's hint, or :data:`DEFAULT_QUICK_GELU` when the
    file gives none (rule 5 of the module docstring).
    """
    ckpt = read_clip_checkpoint(path)
    cfg = _weights_cfg(ckpt)
    cfg['quick_gelu'] = DEFAULT_QUICK_GELU if ckpt.quick_gelu is None else ckpt.quick_gelu
    return ckpt.state_dict, cfg


def _choose_activation(quick_gelu, arch, arch_cfg, ckpt) -> Tuple[bool, str, bool]:
    """-> (quick_gelu, reason, guessed)."""
    if quick_gelu is not None:
        return bool(quick_gelu), 'quick_gelu argument of build_clip', False
    if arch_cfg is not None and 'quick_gelu' in arch_cfg:
        return arch_cfg['quick_gelu'], f'stated by arch {arch!r}' if isinstance(
            arch, str) else 'quick_gelu key of the arch dict', False
    if ckpt is not None and ckpt.quick_gelu is not None:
        return ckpt.quick_gelu, ckpt.quick_gelu_reason, False
    if arch_cfg is not None:
        return False, ('open_clip\'s meaning of an arch without quick_gelu; use '
                       'arch "<name>-quickgelu" or quick_gelu=True for OpenAI weights'), \
            ckpt is not None
    return DEFAULT_QUICK_GELU, ('default for weights without an activation hint (STAN uses '
                                'OpenAI CLIP); for LAION/DataComp weights pass '
                                'arch=\'ViT-B-16\' (GELU) or quick_gelu=False'), True


def _list(keys) -> str:
    keys = list(keys)
    more = f' ... and {len(keys) - _MAX_LISTED} more' if len(keys) > _MAX_LISTED else ''
    return ', '.join(keys[:_MAX_LISTED]) + more


def _check_agreement(arch, arch_cfg: Dict, ckpt: ClipCheckpoint) -> None:
    try:
        weights = infer_clip_shapes(ckpt.state_dict)
    except (KeyError, ValueError) as e:
        raise CLIPArchMismatchError(f'{ckpt.path}: cannot read the architecture of the '
                                    f'weights to compare with arch {arch!r}: {e}') from e
    problems = shape_mismatches(arch_cfg, weights)
    if ckpt.heads is not None:
        v_heads = arch_cfg['vision_cfg']['width'] // arch_cfg['vision_cfg']['head_width']
        arch_heads = (v_heads, arch_cfg['text_cfg']['heads'])
        if arch_heads != tuple(ckpt.heads):
            problems.append(f'(vision heads, text heads): arch {arch_heads}, config file '
                            f'{tuple(ckpt.heads)}')
    if problems:
        what = f'arch {arch!r}' if isinstance(arch, str) else 'the arch dict'
        raise CLIPArchMismatchError(
            f'{what} does not match the weights in {ckpt.path}:\n  ' + '\n  '.join(
                problems) + '\nPass arch=None to infer the architecture from the weights, '
            'or the arch these weights were trained with.')


def _load_weights(model: torch.nn.Module, ckpt: ClipCheckpoint, strict: bool) -> None:
    try:
        result = model.load_state_dict(ckpt.state_dict, strict=False)
    except RuntimeError as e:  # shape mismatches raise even with strict=False
        raise CLIPArchMismatchError(f'weights in {ckpt.path} do not fit the built CLIP: '
                                    f'{e}') from e
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if not missing and not unexpected:
        return
    msg = (f'CLIP weights {ckpt.path} ({ckpt.fmt} layout): '
           f'{len(missing)} missing keys [{_list(missing)}]; '
           f'{len(unexpected)} unexpected keys [{_list(unexpected)}]')
    if strict:
        raise CLIPKeysMismatchError(msg + '. Pass strict=False to load anyway (missing '
                                    'weights keep their random init).')
    print_log(msg, logger='current', level=logging.WARNING)


def build_clip(arch=None, pretrained=None, *, precision: str = 'fp32', strict: bool = True,
               quick_gelu: Optional[bool] = None):
    """Build an ``open_clip.model.CLIP`` (ViT) and optionally load local weights.

    Args:
        arch: ``None`` (infer from ``pretrained``), an open_clip model name (``'ViT-B-16'``,
            ``'ViT-B-16-quickgelu'``, ``'ViT-L-14-336'``, ...) or OpenAI spelling
            (``'ViT-B/32'``, ``'ViT-B/16'``, ``'ViT-L/14'``, ``'ViT-L/14@336px'``), built from
            open_clip's bundled configs (nothing is downloaded); or a clip_cfg dict
            ``{'embed_dim', 'quick_gelu'?, 'vision_cfg': {'image_size', 'patch_size',
            'width', 'layers', 'head_width'}, 'text_cfg': {'context_length', 'vocab_size',
            'width', 'heads', 'layers'}}``.
        pretrained: local weights file or directory in OpenAI, open_clip or HF layout
            (see :mod:`stan_mm.models.clip.checkpoint`), or ``None`` for random init.
        precision: ``'fp32'`` (default), ``'fp16'`` or ``'bf16'``.
        strict: raise :class:`CLIPKeysMismatchError` on missing/unexpected keys (listed);
            ``False`` only warns.
        quick_gelu: force the activation (see the module docstring for the default rule).

    Returns:
        ``open_clip.model.CLIP`` in fp32 (unless ``precision`` says otherwise), with the
        final clip_cfg in its ``clip_cfg`` attribute.

    Raises:
        ValueError: neither ``arch`` nor ``pretrained`` given; bad arch.
        FileNotFoundError: ``pretrained`` does not exist.
        CLIPArchMismatchError: ``arch`` and the weights disagree (fields listed).
        CLIPKeysMismatchError: missing/unexpected keys with ``strict=True``.
    """
    from open_clip.model import CLIP, convert_weights_to_lp
    if arch is None and pretrained is None:
        raise ValueError(
            'build_clip needs arch (an open_clip/OpenAI name such as \'ViT-B/16\' or a '
            'clip_cfg dict) for a randomly initialized CLIP, pretrained (a local weights '
            'file or directory) to infer the architecture from, or both.')
    if precision not in _PRECISIONS:
        raise ValueError(f'precision must be one of {list(_PRECISIONS)}, got {precision!r}')

    ckpt = read_clip_checkpoint(pretrained) if pretrained is not None else None
    arch_cfg = None
    if arch is not None:
        arch_cfg, desc = resolve_arch(arch)
        if ckpt is not None:
            _check_agreement(arch, arch_cfg, ckpt)
        cfg = arch_cfg
    else:
        cfg, desc = _weights_cfg(ckpt), 'inferred from the weights'

    q, reason, guessed = _choose_activation(quick_gelu, arch, arch_cfg, ckpt)
    cfg = dict(cfg, quick_gelu=q)
    model = CLIP(embed_dim=cfg['embed_dim'], vision_cfg=dict(cfg['vision_cfg']),
                 text_cfg=dict(cfg['text_cfg']), quick_gelu=q,
                 cast_dtype=_PRECISIONS[precision],
                 **({'init_logit_scale': cfg['init_logit_scale']}
                    if 'init_logit_scale' in cfg else {}))
    act = 'QuickGELU' if q else 'GELU'
    if ckpt is None:
        print_log(f'CLIP {desc}: random init, activation {act} ({reason})', logger='current')
    else:
        if ckpt.ignored_keys:
            print_log(f'{ckpt.path}: ignored {len(ckpt.ignored_keys)} keys outside the CLIP '
                      f'weights: [{_list(ckpt.ignored_keys)}]', logger='current',
                      level=logging.WARNING)
        _load_weights(model, ckpt, strict)
        print_log(f'CLIP {desc}: loaded {ckpt.fmt} weights from {ckpt.weights_file}; '
                  f'activation {act} ({reason})', logger='current',
                  level=logging.WARNING if guessed else logging.INFO)
    if _PRECISIONS[precision] is not None:
        convert_weights_to_lp(model, dtype=_PRECISIONS[precision])
    model.clip_cfg = cfg
    return model
