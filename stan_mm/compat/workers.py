"""``num_workers=0`` with ``persistent_workers=True``.

Every dataset config sets ``persistent_workers=True`` next to ``num_workers=8``; overriding
only the worker count (``--cfg-options train_dataloader.num_workers=0``, the usual first
step when debugging a pipeline) makes torch's ``DataLoader`` raise
``persistent_workers option needs num_workers > 0``. The runner's dataloader builder now
drops ``persistent_workers`` when there are no worker processes to keep (it has no
meaning then).
"""
from mmengine.runner import Runner

_MARK = '_stan_mm_workers_fix'


def apply_workers_fix() -> bool:
    """Wrap ``Runner.build_dataloader`` (idempotent). Returns whether it was applied now."""
    original = Runner.build_dataloader
    if getattr(original, _MARK, False):
        return False

    def build_dataloader(dataloader, *args, **kwargs):
        if (isinstance(dataloader, dict) and dataloader.get('persistent_workers')
                and not dataloader.get('num_workers', 0)):
            dataloader = dict(dataloader, persistent_workers=False)
        return original(dataloader, *args, **kwargs)

    build_dataloader.__doc__ = original.__doc__
    setattr(build_dataloader, _MARK, True)
    Runner.build_dataloader = staticmethod(build_dataloader)
    return True
