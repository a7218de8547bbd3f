"""``STANOptimWrapperConstructor``: mmengine's parameter-wise rules, with "no weight decay
on norms and biases" applied to every norm and bias of the model.

The STAN recipes (STAN_REFERENCE.md Sec. 4, public reproduction) train with AdamW and no
weight decay on norms and biases, and a 10x learning rate on the STAN branch
(``custom_keys={'backbone.branch': dict(lr_mult=10.0)}``). mmengine's
``DefaultOptimWrapperConstructor`` skips its ``norm_decay_mult`` / ``bias_decay_mult``
rules for every parameter a custom key matches, so with the default constructor the
branch's LayerNorms and biases decay at the full rate; its bias rule also looks only at
parameters named exactly ``bias``, so the ``in_proj_bias`` of ``nn.MultiheadAttention``
(CLIP's and the branch's attention) is left to ``flat_decay_mult``.

This constructor builds the groups exactly as the default one does, then sets, for
every parameter:

* of a norm layer (BatchNorm, InstanceNorm, GroupNorm, LayerNorm and their subclasses,
  open_clip's included), when ``norm_decay_mult`` is set:
  ``weight_decay = base_wd * norm_decay_mult``;
* else whose name ends with ``bias`` (``bias``, ``in_proj_bias``), when
  ``bias_decay_mult`` is set: ``weight_decay = base_wd * bias_decay_mult``;

whether or not a custom key matched the parameter (the precedence of mmengine's rules). A
custom key that sets ``decay_mult`` or ``weight_decay`` itself keeps the last word for the
parameters it matches. Learning rates (``lr_mult``) are unchanged. Use it with
``optim_wrapper = dict(constructor='STANOptimWrapperConstructor', paramwise_cfg=...)``.

With a ``paramwise_cfg``, mmengine's constructor logs one INFO line per setting of every
parameter tensor; ``stan_mm.compat`` (:mod:`stan_mm.compat.frozen_log`) logs those at DEBUG
for every constructor, this one included, and instead one INFO line per distinct (lr,
weight decay) of the optimizer (:func:`group_summary`).
"""
from collections import Counter, OrderedDict
from typing import Dict, List, Optional, Union

from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

__all__ = ['STANOptimWrapperConstructor', 'NORM_LAYERS']

#: module classes whose parameters count as norm parameters (as mmengine's own rule)
NORM_LAYERS = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm)


def _count(numel: int) -> str:
    """``86.2M``, ``12.3K``, ``512``."""
    for scale, suffix in ((1e9, 'G'), (1e6, 'M'), (1e3, 'K')):
        if numel >= scale:
            return f'{numel / scale:.1f}{suffix}'
    return str(numel)


def group_summary(model: nn.Module, optimizer) -> List[str]:
    """One line per distinct (lr, weight_decay) among the param groups of ``optimizer``:
    the tensors and parameters it holds, and the modules they belong to (the first two
    components of their names, the largest first), e.g. ``optimizer: lr 2e-05, weight
    decay 0.02: 48 tensors, 9.5M params (backbone.branch 48)``. ``lr`` is the configured
    one (a runner's ``auto_scale_lr`` rescales every group afterwards)."""
    names = {id(p): n for n, p in model.named_parameters()}
    groups: 'OrderedDict[tuple, list]' = OrderedDict()
    for group in getattr(optimizer, 'param_groups', ()):
        key = (group.get('lr'), group.get('weight_decay'))
        groups.setdefault(key, []).extend(group['params'])
    lines = []
    for (lr, wd), tensors in groups.items():
        owners = Counter('.'.join(names.get(id(p), '?').split('.')[:2]) for p in tensors)
        shown = ', '.join(f'{o} {n}' for o, n in owners.most_common(4)) + (
            f', ... ({len(owners)} modules)' if len(owners) > 4 else '')
        lines.append(f'optimizer: lr {lr:g}, weight decay {wd:g}: {len(tensors)} tensors, '
                     f'{_count(sum(p.numel() for p in tensors))} params ({shown})'
                     if isinstance(lr, (int, float)) and isinstance(wd, (int, float)) else
                     f'optimizer: lr {lr}, weight decay {wd}: {len(tensors)} tensors '
                     f'({shown})')
    if lines:
        lines[-1] += " (log_level='DEBUG' lists the settings of every tensor)"
    return lines


@OPTIM_WRAPPER_CONSTRUCTORS.register_module(force=True)
class STANOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor`` whose ``norm_decay_mult`` and ``bias_decay_mult``
    also reach parameters matched by a custom key and biases not named ``bias`` (see the
    module docstring). Without ``paramwise_cfg``, or without a base ``weight_decay``, it
    is the default constructor."""

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '',
                   is_dcn_module: Optional[Union[int, float]] = None) -> None:
        super().add_params(params, module, prefix, is_dcn_module)
        if prefix == '':     # the call for the whole model: every group is built
            self._norm_bias_decay(params, module)

    def _norm_bias_decay(self, params: List[dict], model: nn.Module) -> None:
        norm_mult = self.paramwise_cfg.get('norm_decay_mult')
        bias_mult = self.paramwise_cfg.get('bias_decay_mult')
        if self.base_wd is None or (norm_mult is None and bias_mult is None):
            return
        custom_keys: Dict[str, dict] = self.paramwise_cfg.get('custom_keys', {})
        # mmengine's matching: the longest key first (ties alphabetically), a substring
        # of '<module path>.<parameter name>'
        keys = sorted(sorted(custom_keys), key=len, reverse=True)
        owner = {}
        for mod_name, mod in model.named_modules():
            for p_name, p in mod.named_parameters(recurse=False):
                owner.setdefault(id(p), (f'{mod_name}.{p_name}', p_name, mod))
        changed = []
        for group in params:
            if len(group['params']) != 1 or id(group['params'][0]) not in owner:
                continue
            path, p_name, mod = owner[id(group['params'][0])]
            key = next((k for k in keys if k in path), None)
            if key is not None and ('decay_mult' in custom_keys[key]
                                    or 'weight_decay' in custom_keys[key]):
                continue
            if isinstance(mod, NORM_LAYERS) and norm_mult is not None:
                mult = norm_mult
            elif p_name.endswith('bias'):     # a norm's bias too when norm_mult is unset
                mult = bias_mult
            else:
                continue
            if mult is None:
                continue
            wd = self.base_wd * mult
            if group.get('weight_decay', self.base_wd) != wd:
                group['weight_decay'] = wd
                changed.append(path.lstrip('.'))
        if changed:
            shown = ', '.join(changed[:5]) + (f', ... ({len(changed)} in all)'
                                              if len(changed) > 5 else '')
            rules = ' and '.join(f'{what} x{mult}' for what, mult in (
                ('norms', norm_mult), ('biases', bias_mult)) if mult is not None)
            print_log(f'STANOptimWrapperConstructor: weight decay of {rules} also for '
                      f'{len(changed)} parameters the default rules give another rate '
                      f'(custom-key matches, in_proj_bias): {shown}', logger='current')
