"""stan-mm: STAN for MMAction2 1.x. Install with ``bash tools/install.sh`` (see README)."""
import os.path as osp

from setuptools import find_packages, setup

# every file is read relative to this file, not to the current directory
HERE = osp.dirname(osp.abspath(__file__))
# the oldest torch stan-mm supports (tools/install.sh stops on an older one): torch 2.6 is
# the first whose torch.load defaults to weights_only=True and whose safe_globals takes
# (callable, name) entries, as stan_mm.compat.checkpoint's allow-list needs;
# tools/test.py --amp needs torch.get_autocast_dtype (2.4).
TORCH_MIN = '2.6'


def _read(path):
    with open(osp.join(HERE, path), encoding='utf-8') as f:
        return f.read()


def _read_requirements(path):
    return [ln.split('#')[0].strip() for ln in _read(path).splitlines()
            if ln.split('#')[0].strip()]


def _version():
    scope = {}
    exec(_read(osp.join('stan_mm', 'version.py')), scope)
    return scope['__version__']


setup(
    name='stan-mm',
    version=_version(),
    description='STAN (CVPR 2023) for MMAction2 1.x: CLIP-based video recognition and '
                'video-text retrieval',
    long_description=_read('README.md') if osp.exists(osp.join(HERE, 'README.md')) else '',
    long_description_content_type='text/markdown',
    packages=find_packages(where=HERE, include=['stan_mm', 'stan_mm.*']),
    package_data={'stan_mm': ['compat/_shims/*.py']},
    python_requires='>=3.10',
    # torch (here only as a lower bound), torchvision and mmcv are installed by
    # tools/install.sh, which installs stan-mm itself with --no-deps, so that an existing CUDA
    # torch or full mmcv is never replaced.
    install_requires=_read_requirements('requirements.txt') + [f'torch>={TORCH_MIN}'],
    extras_require={'tests': _read_requirements('requirements/tests.txt')},
    license='Apache-2.0',   # LICENSE: picked up by setuptools' default license_files
)
