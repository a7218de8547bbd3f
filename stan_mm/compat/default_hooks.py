"""``default_hooks`` entries set to ``None``.

mmengine's ``Runner.register_default_hooks`` removes a ``default_hooks`` entry set to
``None`` only for its own six names (``timer``, ``logger``, ...); any other key set to
``None`` fails a bare ``assert hook is not None`` while the runner is built. The stan
runtime (``configs/_base_/default_runtime.py``) puts more hooks there
(``sync_buffers``, ``nonfinite``, ``preemption``, ``param_group_lr``, ``amp_scale``),
because a config's own ``custom_hooks`` list would replace them;
``default_hooks.nonfinite=None`` in a child config or ``--cfg-options`` is how one is
switched off. Such ``None`` entries are now
dropped before mmengine sees them, for every key.
"""
from mmengine.runner import Runner

_MARK = '_stan_mm_default_hooks_fix'


def apply_default_hooks_fix() -> bool:
    """Wrap ``Runner.register_default_hooks`` (idempotent). Returns whether it was applied
    now."""
    original = Runner.register_default_hooks
    if getattr(original, _MARK, False):
        return False

    def register_default_hooks(self, hooks=None):
        if hooks is not None and hasattr(hooks, 'items'):
            own = ('runtime_info', 'timer', 'sampler_seed', 'logger', 'param_scheduler',
                   'checkpoint')      # mmengine's: its None removes its default
            hooks = {name: hook for name, hook in hooks.items()
                     if hook is not None or name in own}
        return original(self, hooks)

    register_default_hooks.__doc__ = original.__doc__
    setattr(register_default_hooks, _MARK, True)
    Runner.register_default_hooks = register_default_hooks
    return True
