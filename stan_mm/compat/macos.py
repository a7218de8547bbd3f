"""``mp_start_method='fork'`` on macOS becomes ``spawn`` (found in the portability review).

mmengine's runner sets the start method of every process it starts (DataLoader workers)
from ``env_cfg.mp_cfg.mp_start_method``, and MMAction2's runtime, like this repository's
(``configs/_base_/default_runtime.py``), says ``fork``. On macOS, forking a process that
has started threads (PyTorch, OpenCV, the Objective-C runtime of system libraries) is not
safe and can crash or hang the child; Python has made ``spawn`` the default there since
3.8. On macOS a ``fork`` asked for by the config is replaced by ``spawn``, with a WARNING
saying so; every other platform and every other method are left alone. Everything stan-mm
runs in DataLoader workers works under ``spawn`` (the portability review ran training with
workers, resumption, testing and feature extraction that way).
"""
import functools
import logging
import sys

_MARK = '_stan_mm_macos_fix'


def start_method_for_platform(method, platform: str = None):
    """``method``, or ``'spawn'`` in place of ``'fork'`` on macOS (``platform``:
    ``sys.platform`` unless given)."""
    platform = sys.platform if platform is None else platform
    return 'spawn' if platform == 'darwin' and method == 'fork' else method


def apply_macos_fix() -> bool:
    """Wrap the ``set_multi_processing`` mmengine's runner calls (idempotent). Returns
    whether it was applied now."""
    import mmengine.runner.runner as runner_module
    original = runner_module.set_multi_processing
    if getattr(original, _MARK, False):
        return False

    @functools.wraps(original)
    def set_multi_processing(mp_start_method: str = 'fork', *args, **kwargs):
        method = start_method_for_platform(mp_start_method)
        if method != mp_start_method:
            from mmengine.logging import print_log
            from stan_mm.utils.cli import is_first_rank, log_later
            message = (f'env_cfg.mp_cfg.mp_start_method={mp_start_method!r} is not safe on '
                       f'macOS: DataLoader workers start with {method!r} instead')
            print_log(message, logger='current', level=logging.WARNING)
            if is_first_rank():       # (the run's log file does not exist yet)
                log_later(message)
        return original(method, *args, **kwargs)

    setattr(set_multi_processing, _MARK, True)
    runner_module.set_multi_processing = set_multi_processing
    return True
