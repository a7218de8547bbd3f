"""``DumpResults`` with a prefix, registered in MMAction2's registry under mmengine's name.

mmengine's ``DumpResults`` (what ``tools/test.py --dump`` adds to ``test_evaluator``) takes
no ``prefix`` argument and has no ``default_prefix``, so every run that builds it logged
``The prefix is not set in metric class DumpResults.`` (mmengine's ``BaseMetric`` warns
about a metric whose keys would be unprefixed). It returns no keys at all, so the warning
said nothing. This subclass has the prefix ``'dump'``; arguments, the dumped file and its
format are mmengine's. A config of the ``mmaction`` scope (every stan-mm config) that
names ``type='DumpResults'`` builds it.
"""
from typing import Optional

from mmaction.registry import METRICS
from mmengine.evaluator import DumpResults as _MMEngineDumpResults


@METRICS.register_module(name='DumpResults')
class DumpResults(_MMEngineDumpResults):
    """mmengine's ``DumpResults`` (same file, same format) with ``prefix='dump'``: no
    ``prefix is not set`` warning. ``prefix`` may be given as for other metrics."""

    default_prefix = 'dump'

    def __init__(self, out_file_path: str, collect_device: str = 'cpu',
                 collect_dir: Optional[str] = None, prefix: Optional[str] = None) -> None:
        super().__init__(out_file_path, collect_device=collect_device,
                         collect_dir=collect_dir)
        self.prefix = prefix or self.default_prefix
