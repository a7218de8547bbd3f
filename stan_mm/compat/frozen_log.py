"""One log line for the frozen parameters instead of one warning per tensor, and one per
parameter group instead of one per tensor's settings.

mmengine 0.10.7's ``DefaultOptimWrapperConstructor`` logs a WARNING for every parameter
with ``requires_grad=False`` (``... is skipped since its requires_grad=False``). The
recognition configs freeze CLIP's text tower behind the text classifier, so every run
opened with about 200 such warnings (29 with the tests' two-layer tower), burying the
warnings that matter. Here those lines are collected while the optimizer is built and
logged once, grouped by module, at WARNING like the lines it replaces (so a run at
``log_level='WARNING'`` still shows it):

``optimizer: 196 frozen parameter tensors (requires_grad=False) left out: cls_head.text_encoder (196)``

With a ``paramwise_cfg`` (the recipes' ``norm_decay_mult``/``custom_keys``, the
quickstart's ``norm_decay_mult``/``bias_decay_mult``), the constructor also logs one INFO line
per setting of every parameter tensor (``paramwise_options -- backbone.branch.layers.3.mlp.
c_proj.bias:lr=...``: 331 lines for ``configs/stan/k400_self_b16.py``). Those go to DEBUG
(``log_level='DEBUG'`` shows them), and the built optimizer is summed up in one INFO line
per distinct (lr, weight decay): its tensors, parameters and the modules they belong to
(:func:`stan_mm.engine.optim_constructor.group_summary`). This applies to mmengine's
``DefaultOptimWrapperConstructor`` and every subclass that calls its ``__call__``
(``STANOptimWrapperConstructor``).

Every other message of the constructor is untouched.
"""
import logging
import threading
from collections import Counter

_SKIPPED = ' is skipped since its requires_grad=False'
_PARAMWISE = 'paramwise_options -- '
_state = threading.local()


def _group(name: str) -> str:
    """``cls_head.text_encoder.transformer.resblocks.0.attn.in_proj_weight`` ->
    ``cls_head.text_encoder`` (the first two components)."""
    return '.'.join(name.split('.')[:2])


def summary_line(names) -> str:
    """The one line that stands for the per-tensor warnings of ``names``."""
    groups = Counter(_group(n) for n in names)
    parts = ', '.join(f'{g} ({n})' for g, n in groups.most_common())
    return (f'optimizer: {len(names)} frozen parameter tensors (requires_grad=False) left '
            f'out: {parts}')


def apply_frozen_log_fix() -> None:
    """Install the collecting ``print_log`` and the summarising ``__call__`` (idempotent)."""
    from mmengine.logging import print_log
    from mmengine.optim.optimizer import default_constructor as dc

    if getattr(dc.DefaultOptimWrapperConstructor.__call__, '_stan_frozen_log', False):
        return
    original_log = dc.print_log

    def collecting_print_log(msg, logger=None, level=logging.INFO):
        names = getattr(_state, 'names', None)
        if names is not None and isinstance(msg, str) and msg.endswith(_SKIPPED):
            names.append(msg[:-len(_SKIPPED)])
            return
        if names is not None and isinstance(msg, str) and msg.startswith(_PARAMWISE):
            level = logging.DEBUG
        original_log(msg, logger=logger, level=level)

    original_call = dc.DefaultOptimWrapperConstructor.__call__

    def __call__(self, model):  # noqa: N807
        outer = getattr(_state, 'names', None)
        _state.names = []
        try:
            optim_wrapper = original_call(self, model)
        finally:
            names, _state.names = _state.names, outer
            if names:
                print_log(summary_line(names), logger='current', level=logging.WARNING)
        if self.paramwise_cfg and outer is None:
            from stan_mm.engine.optim_constructor import group_summary
            for line in group_summary(getattr(model, 'module', model),
                                      getattr(optim_wrapper, 'optimizer', None)):
                print_log(line, logger='current')
        return optim_wrapper

    __call__._stan_frozen_log = True
    dc.print_log = collecting_print_log
    dc.DefaultOptimWrapperConstructor.__call__ = __call__
