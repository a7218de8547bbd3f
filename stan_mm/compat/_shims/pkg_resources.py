"""stan-mm shim: a minimal ``pkg_resources`` over ``importlib.metadata`` for setuptools >= 82.

mmengine 0.10.7 resolves ``_base_ = 'mmaction::...'`` configs through
``pkg_resources.get_distribution`` (``mmengine/utils/package_utils.py``). The install files
pin ``setuptools<82``; this shim keeps stan-mm working in environments where a newer
setuptools was installed afterwards. It is installed only when the real module is missing.
"""
import importlib.metadata as importlib_metadata


class DistributionNotFound(Exception):
    """Raised by :func:`get_distribution` for a package that is not installed."""


class _Distribution:

    def __init__(self, dist: importlib_metadata.Distribution):
        self._dist = dist
        self.project_name = dist.metadata['Name']
        self.version = dist.version
        self.location = str(dist.locate_file(''))

    def has_metadata(self, name: str) -> bool:
        return self._dist.read_text(name) is not None

    def get_metadata(self, name: str) -> str:
        text = self._dist.read_text(name)
        if text is None:
            raise FileNotFoundError(name)
        return text


def get_distribution(name: str) -> _Distribution:
    try:
        return _Distribution(importlib_metadata.distribution(name))
    except importlib_metadata.PackageNotFoundError as e:
        raise DistributionNotFound(name) from e
