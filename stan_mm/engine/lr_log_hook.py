"""Log the learning rate of every parameter group that has one of its own, not only the
first group's.

mmengine's ``RuntimeInfoHook`` logs ``lr``: the learning rate of parameter group 0. The
STAN recipes give the STAN branch 10x the CLIP learning rate (``paramwise_cfg.custom_keys
= {'backbone.branch': dict(lr_mult=10.0)}``), and ``--auto-scale-lr`` and the schedulers
scale both, so the log line never showed the rate the branch actually trains with.

:class:`ParamGroupLrHook` adds, before every training iteration, one scalar per distinct
learning rate among the parameter groups other than group 0's, e.g. ``branch_lr`` for the
STAN configs (one extra field in the log line, ``branch_lr: 2.0000e-05``, next to ``lr``;
also in ``vis_data/scalars.json``). Groups are told apart by their learning rate when the
schedulers were built (``initial_lr``; the current one without a scheduler), once: the set
of logged names does not change during training, even when a schedule brings two rates
together. A set of groups is named, in this order, after:

1. the ``name`` all its groups share (a group tag set by a custom constructor);
2. the ``paramwise_cfg.custom_keys`` key with an ``lr_mult`` that matches most of its
   parameters (mmengine's matching: the longest key contained in the parameter's name),
   last dotted part: ``'backbone.branch'`` -> ``branch_lr``;
3. the module path its parameters share, last part; else ``group<i>_lr`` (``i`` its first
   group's index).

The name ends with ``lr``, so mmengine's ``LogProcessor`` prints it as a learning rate
(``%.4e``, the current value) rather than as a 10-iteration mean with 4 decimals.

No device work: learning rates are Python floats (a tensor learning rate on an
accelerator is skipped rather than read back). Parameter names come from
``model.named_parameters()`` (matched to the optimizer's tensors by identity) once per
optimizer. With an ``OptimWrapperDict`` each optimizer's names get its key as prefix, as
``RuntimeInfoHook`` does (``<key>.branch_lr``); a wrapper without an ``optimizer`` (or an
optimizer without ``param_groups``) is skipped.

Priority ``LOW``: its ``before_train_iter`` runs after ``RuntimeInfoHook`` (``VERY_HIGH``)
has logged ``lr``, and reads the rates of the same iteration (``ParamSchedulerHook``
changes them in ``after_train_iter`` / ``after_train_epoch``, after ``LoggerHook`` has
printed the iteration).
"""
import logging
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapperDict
from mmaction.registry import HOOKS

#: ``(message-hub key, index of the group whose lr it logs)`` for one optimizer
Plan = List[Tuple[str, int]]


def _as_float(value) -> Optional[float]:
    """A learning rate as a Python float, without a device read-back (None if that would
    need one, or if it is not a number)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    device = getattr(value, 'device', None)
    if device is not None and getattr(device, 'type', None) == 'cpu' and \
            getattr(value, 'numel', lambda: 0)() == 1:
        return float(value)
    return None


def _match(name: str, keys: Sequence[str]) -> Optional[str]:
    """mmengine's custom-key rule: the first of the keys (longest first, ties
    alphabetically) contained in the parameter's name."""
    return next((k for k in keys if k in name), None)


def _label(text: str) -> str:
    """The last dotted part of a key or module path, as an identifier."""
    last = text.strip('.').split('.')[-1]
    return re.sub(r'[^0-9A-Za-z_]+', '_', last).strip('_')


def _common_prefix(names: Sequence[str]) -> str:
    """The module path (dotted parts) all ``names`` share, without the parameter's own
    name."""
    parts = [n.split('.')[:-1] for n in names]
    if not parts:
        return ''
    out = []
    for level in zip(*parts):
        if any(p != level[0] for p in level):
            break
        out.append(level[0])
    return '.'.join(out)


@HOOKS.register_module()
class ParamGroupLrHook(Hook):
    """Log ``train/<name>_lr`` for each distinct learning rate of the parameter groups
    beyond group 0's (see the module docstring).

    Args:
        custom_keys: the keys to name groups by (a list, or a ``custom_keys`` dict); None
            (default): those of the config's ``optim_wrapper.paramwise_cfg.custom_keys``
            that set ``lr_mult``.
    """

    priority = 'LOW'

    def __init__(self, custom_keys: Union[Sequence[str], Mapping, None] = None) -> None:
        self.custom_keys = None if custom_keys is None else list(custom_keys)
        self._plans: Dict[int, Tuple[object, int, Plan]] = {}
        self._warned: set = set()

    # ------------------------------------------------------------------ runner events
    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        hub = runner.message_hub
        for prefix, optimizer in self._optimizers(runner):
            for key, index in self._plan(runner, prefix, optimizer):
                groups = optimizer.param_groups
                if index < len(groups):
                    lr = _as_float(groups[index].get('lr'))
                    if lr is not None:
                        hub.update_scalar(key, lr)

    # ------------------------------------------------------------------ helpers
    def _optimizers(self, runner) -> List[Tuple[str, object]]:
        """``[(name prefix, torch optimizer)]`` of the runner's optimizer wrapper."""
        wrapper = getattr(runner, 'optim_wrapper', None)
        if isinstance(wrapper, OptimWrapperDict):
            items = [(f'{name}.', w) for name, w in wrapper.items()]
        else:
            items = [('', wrapper)]
        out = []
        for prefix, w in items:
            optimizer = getattr(w, 'optimizer', None)
            if isinstance(getattr(optimizer, 'param_groups', None), list):
                out.append((prefix, optimizer))
            elif type(w).__name__ not in self._warned:
                self._warned.add(type(w).__name__)
                print_log(f'ParamGroupLrHook: {type(w).__name__} has no optimizer with '
                          'param_groups: its learning rates are not logged', logger='current',
                          level=logging.WARNING)
        return out

    def _plan(self, runner, prefix: str, optimizer) -> Plan:
        cached = self._plans.get(id(optimizer))
        groups = optimizer.param_groups
        if cached is not None and cached[0] is optimizer and cached[1] == len(groups):
            return cached[2]
        plan = self._build_plan(runner, prefix, optimizer)
        self._plans[id(optimizer)] = (optimizer, len(groups), plan)
        return plan

    def _keys(self, runner, prefix: str) -> List[str]:
        if self.custom_keys is not None:
            keys = self.custom_keys
        else:
            keys = []
            try:
                cfg = runner.cfg.get('optim_wrapper') or {}
                if prefix:                      # OptimWrapperDict: one config per key
                    cfg = cfg.get(prefix[:-1]) or {}
                custom = (cfg.get('paramwise_cfg') or {}).get('custom_keys') or {}
                keys = [k for k, v in custom.items()
                        if isinstance(v, Mapping) and 'lr_mult' in v]
            except Exception:                   # no config, or one of another shape
                keys = []
        keys = [k for k in keys if isinstance(k, str) and k]
        return sorted(sorted(keys), key=len, reverse=True)

    def _build_plan(self, runner, prefix: str, optimizer) -> Plan:
        groups = optimizer.param_groups
        if len(groups) < 2:
            return []
        model = getattr(runner, 'model', None)
        if model is not None and is_model_wrapper(model):
            model = model.module
        names = {}
        if model is not None and hasattr(model, 'named_parameters'):
            names = {id(p): n for n, p in model.named_parameters()}

        def start_lr(group):
            return _as_float(group.get('initial_lr', group.get('lr')))

        base = start_lr(groups[0])
        classes: Dict[float, List[int]] = {}           # lr -> group indices, in order
        for i, group in enumerate(groups[1:], start=1):
            lr = start_lr(group)
            if lr is not None and lr != base:
                classes.setdefault(lr, []).append(i)

        keys = self._keys(runner, prefix)
        plan: Plan = []
        used = {'lr', 'base_lr'}   # RuntimeInfoHook's keys
        described = []
        for lr, indices in classes.items():
            label = self._name(groups, indices, names, keys)
            name = f'{label}_lr'
            if name in used:
                name = f'{label}{indices[0]}_lr'
            used.add(name)
            plan.append((f'train/{prefix}{name}', indices[0]))
            ratio = f' (x{lr / base:g} of lr)' if base else ''
            described.append(f'{prefix}{name}: {len(indices)} groups{ratio}')
        if described:
            print_log('ParamGroupLrHook: logging ' + '; '.join(described), logger='current')
        return plan

    @staticmethod
    def _name(groups: list, indices: List[int], names: Dict[int, str],
              keys: Sequence[str]) -> str:
        tags = {groups[i].get('name') for i in indices}
        if len(tags) == 1:
            tag = tags.pop()
            if isinstance(tag, str) and _label(tag):
                return _label(tag)
        params = [names[id(p)] for i in indices for p in groups[i].get('params', [])
                  if id(p) in names]
        if keys and params:
            counts: Dict[str, int] = {}
            for n in params:
                key = _match(n, keys)
                if key is not None:
                    counts[key] = counts.get(key, 0) + 1
            if counts:
                order = {k: j for j, k in enumerate(keys)}
                best = max(counts, key=lambda k: (counts[k], -order[k]))
                if _label(best):
                    return _label(best)
        common = _label(_common_prefix(params)) if params else ''
        return common or f'group{indices[0]}'
