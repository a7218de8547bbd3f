"""stan-mm: STAN for MMAction2 1.x. Install with ``bash tools/install.sh`` (see README)."""
import os.path as osp

from setuptools import find_packages, setup


def _read_requirements(path):
    with open(osp.join(osp.dirname(osp.abspath(__file__)), path)) as f:
        return [ln.split('#')[0].strip() for ln in f if ln.split('#')[0].strip()]


def _version():
    scope = {}
    with open(osp.join('stan_mm', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


setup(
    name='stan-mm',
    version=_version(),
    description='STAN (CVPR 2023) for MMAction2 1.x: CLIP-based video recognition and '
                'video-text retrieval',
    long_description=open('README.md').read() if osp.exists('README.md') else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['stan_mm', 'stan_mm.*']),
    package_data={'stan_mm': ['compat/_shims/*.py']},
    python_requires='>=3.10',
    # torch, torchvision and mmcv are left to tools/install.sh so that an existing CUDA torch
    # or full mmcv is never replaced.
    install_requires=_read_requirements('requirements.txt'),
    extras_require={'tests': _read_requirements('requirements/tests.txt')},
    license='Apache-2.0',
)
