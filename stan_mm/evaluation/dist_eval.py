"""The last step of a metric's ``evaluate`` in a distributed run, with errors on every rank.

mmengine's ``BaseMetric.evaluate`` computes the metrics on the main process and broadcasts
them; an exception there (a refused input: NaN scores, labels outside the classes, features
that do not fit) leaves the other ranks waiting in the broadcast until the distributed
timeout. :func:`compute_and_broadcast` broadcasts the outcome either way, so every rank
returns the metrics or raises.
"""
from typing import Callable, Dict, Optional

from mmengine.dist import broadcast_object_list, is_main_process


def compute_and_broadcast(metric, compute: Callable[[], Dict], name: str) -> Dict:
    """Run ``compute()`` (the main process's metrics, unprefixed) on the main process, add
    ``metric.prefix``, broadcast, clear ``metric.results``.

    Returns:
        the prefixed metrics, on every rank.

    Raises:
        the main process's exception, as it is, on the main process; on the other ranks a
        ``RuntimeError`` naming ``name`` and carrying the main process's message.
    """
    payload, error = [None], None
    if is_main_process():
        try:
            metrics = compute()
            if metric.prefix:
                metrics = {f'{metric.prefix}/{k}': v for k, v in metrics.items()}
            payload = [('ok', metrics)]
        except Exception as exc:  # noqa: BLE001 - re-raised on every rank below
            payload, error = [('error', f'{type(exc).__name__}: {exc}')], exc
    broadcast_object_list(payload)
    metric.results.clear()
    status, value = payload[0]
    if status == 'error':
        _raise(error, name, value)
    return value


def _raise(error: Optional[BaseException], name: str, message: str) -> None:
    if error is not None:
        raise error
    raise RuntimeError(f'{name} failed on the main process: {message}')
