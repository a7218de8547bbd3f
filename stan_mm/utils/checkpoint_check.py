"""Refuse to evaluate a checkpoint that does not fit the model.

mmengine's ``Runner.load_checkpoint`` (``load_from``, used by ``tools/test.py``) loads with
``strict=False``: missing keys, unexpected keys and shape mismatches only produce a WARNING
in the log, and the test then runs with randomly initialized weights where the checkpoint
did not fit. :func:`check_checkpoint_fits` compares the checkpoint with the model first and
raises :class:`CheckpointMismatchError` listing what differs, grouped by module, with hints
for the usual causes (a recognition checkpoint given to a retrieval model, a STAN branch of
another depth, CLIP-only or unconverted weights)::

    runner = Runner.from_cfg(cfg)
    check_checkpoint_fits(runner.model, args.checkpoint)
    runner.test()
"""
import re
from collections import OrderedDict
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

__all__ = ['CheckpointMismatchError', 'checkpoint_state_dict', 'compare_state_dicts',
           'check_checkpoint_fits']

_MAX_GROUPS = 12
_BRANCH_LAYER = re.compile(r'(?:^|\.)branch\.layers\.(\d+)\.')
_DEFAULT_REVISE = ((r'^module\.', ''), )


class CheckpointMismatchError(RuntimeError):
    """The checkpoint's weights do not fit the model (the message lists the differences)."""


def checkpoint_state_dict(checkpoint, revise_keys: Sequence[Tuple[str, str]] = _DEFAULT_REVISE
                          ) -> Dict[str, torch.Tensor]:
    """The model weights of a checkpoint: a path (loaded with mmengine's loader, i.e. the
    weights-only loader of :mod:`stan_mm.compat`) or a loaded dict, with ``state_dict``
    unwrapped and ``revise_keys`` (regex, replacement) applied like mmengine does."""
    if not isinstance(checkpoint, Mapping):
        from mmengine.runner.checkpoint import _load_checkpoint
        checkpoint = _load_checkpoint(checkpoint, map_location='cpu')
    state = checkpoint.get('state_dict', checkpoint)
    if not isinstance(state, Mapping):
        raise CheckpointMismatchError(f'the checkpoint holds no state dict (its state_dict '
                                      f'is a {type(state).__name__})')
    out = OrderedDict()
    for key, value in state.items():
        for pattern, repl in revise_keys:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def compare_state_dicts(model_state: Mapping[str, torch.Tensor],
                        ckpt_state: Mapping[str, torch.Tensor]) -> dict:
    """``{'missing': [keys of the model absent from the checkpoint], 'unexpected': [keys of
    the checkpoint the model lacks], 'shape': [(key, checkpoint shape, model shape)]}``."""
    missing = [k for k in model_state if k not in ckpt_state]
    unexpected = [k for k in ckpt_state if k not in model_state]
    shape = [(k, tuple(ckpt_state[k].shape), tuple(model_state[k].shape))
             for k in model_state if k in ckpt_state
             and hasattr(ckpt_state[k], 'shape')
             and tuple(ckpt_state[k].shape) != tuple(model_state[k].shape)]
    return dict(missing=missing, unexpected=unexpected, shape=shape)


def _group(key: str) -> str:
    """Module a key belongs to, cut after the first block index:
    ``backbone.branch.layers.4.temporal.attn.in_proj_weight`` -> ``backbone.branch.layers.4``,
    ``cls_head.fc_cls.weight`` -> ``cls_head.fc_cls``."""
    parts = key.split('.')
    for i, p in enumerate(parts[:-1]):
        if p.isdigit():
            return '.'.join(parts[:i + 1])
    return '.'.join(parts[:-1]) or key


def _grouped(keys: Iterable[str]) -> str:
    groups: 'OrderedDict[str, int]' = OrderedDict()
    for k in keys:
        g = _group(k)
        groups[g] = groups.get(g, 0) + 1
    items = [f'{g}.* ({n})' for g, n in groups.items()]
    more = len(items) - _MAX_GROUPS
    return ', '.join(items[:_MAX_GROUPS]) + (f', ... and {more} more modules' if more > 0
                                             else '')


def _branch_depth(keys: Iterable[str]) -> Optional[int]:
    found = {int(m.group(1)) for k in keys for m in [_BRANCH_LAYER.search(k)] if m}
    return max(found) + 1 if found else None


def _hints(model_keys: List[str], ckpt_keys: List[str]) -> List[str]:
    hints = []
    if not set(model_keys) & set(ckpt_keys):
        hints.append('no key in common: this is a checkpoint of another model or of another '
                     'layout. CLIP weights go in model.backbone.pretrained (any layout); the '
                     'public STAN checkpoints convert with tools/convert/stan_public_to_mm.py')
    m_head = any(k.startswith('cls_head.') for k in model_keys)
    c_head = any(k.startswith('cls_head.') for k in ckpt_keys)
    if c_head and not m_head:
        hints.append('the checkpoint has a classification head (cls_head.*), so it is a '
                     'recognition checkpoint; the model has none (a retrieval model?)')
    elif m_head and not c_head and set(model_keys) & set(ckpt_keys):
        hints.append('the model has a classification head (cls_head.*) that the checkpoint '
                     'lacks: it is not a recognition checkpoint of this model (retrieval or '
                     'backbone only?)')
    m_depth, c_depth = _branch_depth(model_keys), _branch_depth(ckpt_keys)
    if m_depth != c_depth and (m_depth or c_depth):
        hints.append(f'the checkpoint has a STAN branch of depth {c_depth or 0} and the model '
                     f'{m_depth or 0}: set model.backbone.depth={c_depth or 0} (and levels, '
                     f'if set) as in the config it was trained with')
    return hints


def check_checkpoint_fits(model: torch.nn.Module, checkpoint, *,
                          allow_missing: Sequence[str] = (),
                          allow_unexpected: Sequence[str] = (),
                          revise_keys: Sequence[Tuple[str, str]] = _DEFAULT_REVISE,
                          name: Optional[str] = None) -> None:
    """Raise :class:`CheckpointMismatchError` unless every model weight is in the checkpoint
    with the right shape and the checkpoint holds nothing else.

    Args:
        model: the model (a DDP/mmengine wrapper is unwrapped).
        checkpoint: a checkpoint path or a loaded checkpoint dict.
        allow_missing / allow_unexpected: regexes (``re.search``) of keys that may be
            missing from / extra in the checkpoint.
        revise_keys: key rewrites applied to the checkpoint first (mmengine's default
            strips ``module.``).
        name: how to call the checkpoint in the message (default: the path).
    """
    from mmengine.model import is_model_wrapper
    if is_model_wrapper(model):
        model = model.module
    name = name or (str(checkpoint) if not isinstance(checkpoint, Mapping) else 'checkpoint')
    model_state = model.state_dict()
    ckpt_state = checkpoint_state_dict(checkpoint, revise_keys)
    diff = compare_state_dicts(model_state, ckpt_state)
    missing = [k for k in diff['missing']
               if not any(re.search(p, k) for p in allow_missing)]
    unexpected = [k for k in diff['unexpected']
                  if not any(re.search(p, k) for p in allow_unexpected)]
    shape = diff['shape']
    if not (missing or unexpected or shape):
        return
    lines = [f'checkpoint {name} does not fit {type(model).__name__} '
             f'({len(model_state)} model keys, {len(ckpt_state)} checkpoint keys):']
    if missing:
        lines.append(f'  {len(missing)} model weights are missing from the checkpoint (they '
                     f'would keep their random init): {_grouped(missing)}')
    if unexpected:
        lines.append(f'  {len(unexpected)} checkpoint weights have no place in the model: '
                     f'{_grouped(unexpected)}')
    if shape:
        listed = '; '.join(f'{k}: checkpoint {list(c)} vs model {list(m)}'
                           for k, c, m in shape[:_MAX_GROUPS])
        more = len(shape) - _MAX_GROUPS
        lines.append(f'  {len(shape)} shape mismatches: {listed}'
                     + (f'; ... and {more} more' if more > 0 else ''))
    lines += [f'  hint: {h}' for h in _hints(list(model_state), list(ckpt_state))]
    lines.append('  Use the config the checkpoint was trained with (or fix the model '
                 'settings above).')
    raise CheckpointMismatchError('\n'.join(lines))
