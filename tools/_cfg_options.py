"""``--cfg-options`` for the tools whose ``--help`` must be fast, shared by
tools/extract_features.py, tools/demo/recognize.py, tools/demo/search.py,
tools/analysis/get_flops.py and tools/analysis/benchmark.py.

Not a tool of its own: they import it (``from _cfg_options import ConfigOptions``, with
``tools`` on ``sys.path``). It imports nothing of stan-mm: ``import stan_mm.utils.cli``
runs ``stan_mm/__init__.py``, which imports MMAction2's models (seconds), and ``--help``
needs none of it.
"""
import argparse
import sys


class ConfigOptions(argparse.Action):
    """``--cfg-options``: :class:`stan_mm.utils.cli.ConfigOptionsAction` (mmengine's
    DictAction with the spaces in values kept, a malformed ``KEY=VALUE`` refused in one
    argparse line), imported when the option is given."""

    def __call__(self, parser, namespace, values, option_string=None):
        from stan_mm.utils.cli import ConfigOptionsAction
        # (ConfigOptionsAction.__call__ reads only self.dest of the action)
        ConfigOptionsAction.__call__(self, parser, namespace, values, option_string)


if __name__ == '__main__':
    sys.exit('tools/_cfg_options.py is not a tool: it gives --cfg-options to '
             'tools/extract_features.py, tools/demo/recognize.py, tools/demo/search.py, '
             'tools/analysis/get_flops.py and tools/analysis/benchmark.py')
