"""Packaging review fixes: an sdist that installs (MANIFEST.in), a setup.py that reads its
files relative to itself, the LICENSE that setup.py names, and tools/install.sh stopping on
a torch older than the oldest one stan-mm supports."""
import hashlib
import os
import pathlib
import runpy
import shutil
import subprocess
import sys
import tarfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
VERSION = runpy.run_path(str(ROOT / 'stan_mm' / 'version.py'))['__version__']
# sha256 of the Apache License 2.0 text as www.apache.org/licenses/LICENSE-2.0.txt has it
APACHE_2_0_SHA256 = 'cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30'
TORCH_MIN = '2.6'


def _setup_py(args, cwd, setup_py=ROOT / 'setup.py'):
    return subprocess.run([sys.executable, str(setup_py), *args], cwd=str(cwd),
                          capture_output=True, text=True, timeout=120)


def _last_line(text):
    return [ln for ln in text.splitlines() if ln.strip()][-1].strip()


def test_setup_py_reads_its_files_from_another_directory(tmp_path):
    """`python <repo>/setup.py --version` from elsewhere (as tools that build from a path
    do): the version file, README and requirements are found next to setup.py."""
    r = _setup_py(['--version'], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _last_line(r.stdout) == VERSION
    # the version stan_mm reports is the one setup.py gives
    import importlib
    if 'stan_mm' in sys.modules:
        assert importlib.import_module('stan_mm').__version__ == VERSION


def test_sdist_carries_what_setup_py_reads(tmp_path):
    """The sdist holds requirements.txt, requirements/*.txt, README.md and LICENSE, and
    setup.py run from the unpacked sdist (from another directory) gives the version and
    the dependencies, torch's lower bound included."""
    src = tmp_path / 'src'
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        '.git', '__pycache__', '*.egg-info', '.pytest_cache', '.hypothesis', '.benchmarks',
        'work_dirs', 'data', 'checkpoints', '*.pth', 'build', 'dist', '.whl'))
    r = subprocess.run([sys.executable, 'setup.py', '-q', 'sdist', '-d', str(tmp_path / 'dist')],
                       cwd=str(src), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    (archive,) = (tmp_path / 'dist').glob('*.tar.gz')
    top = f'stan_mm-{VERSION}'
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        extra = {'filter': 'data'} if hasattr(tarfile, 'data_filter') else {}
        tar.extractall(tmp_path / 'unpacked', **extra)
    wanted = ['requirements.txt', 'README.md', 'LICENSE', 'MANIFEST.in',
              'stan_mm/compat/_shims/pkg_resources.py']
    wanted += [f'requirements/{p.name}' for p in (ROOT / 'requirements').glob('*.txt')]
    missing = [w for w in wanted if f'{top}/{w}' not in names]
    assert not missing, f'left out of the sdist: {missing}'

    unpacked = tmp_path / 'unpacked' / top
    r = _setup_py(['--version'], cwd=tmp_path, setup_py=unpacked / 'setup.py')
    assert r.returncode == 0, r.stderr[-2000:]
    assert _last_line(r.stdout) == VERSION
    requires = (unpacked / 'stan_mm.egg-info' / 'requires.txt').read_text()
    assert f'torch>={TORCH_MIN}' in requires.splitlines(), requires
    assert 'mmaction2==1.2.0' in requires.splitlines(), requires


def test_license_file_is_the_apache_2_0_text():
    """setup.py says Apache-2.0; LICENSE holds that license's text, unchanged."""
    assert "license='Apache-2.0'" in (ROOT / 'setup.py').read_text()
    data = (ROOT / 'LICENSE').read_bytes()
    assert hashlib.sha256(data).hexdigest() == APACHE_2_0_SHA256


# ------------------------------------------------------------------ tools/install.sh + torch
FAKE_PYTHON = '''#!/usr/bin/env bash
# stands in for python: pip only echoes; torch/torchvision come from FAKE_SITE
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then echo "FAKEPIP $*"; exit 0; fi
case "$*" in *"import stan_mm"*) echo "FAKE import stan_mm"; exit 0;; esac
PYTHONPATH="{site}" exec "{python}" "$@"
'''


@pytest.fixture
def fake_python(tmp_path):
    """A PYTHON for tools/install.sh whose torch reports the version it is given and
    whose pip installs nothing."""
    def make(torch_version):
        site = tmp_path / f'site_{torch_version}'
        for mod in ('torch', 'torchvision'):
            (site / mod).mkdir(parents=True, exist_ok=True)
            (site / mod / '__init__.py').write_text(f'__version__ = {torch_version!r}\n')
        exe = tmp_path / f'python_{torch_version}'
        exe.write_text(FAKE_PYTHON.format(site=site, python=sys.executable))
        exe.chmod(0o755)
        return str(exe)
    return make


def _install(python, stan_torch=None):
    env = {k: v for k, v in os.environ.items() if k not in ('STAN_TORCH', 'PYTHON')}
    env['PYTHON'] = python
    if stan_torch:
        env['STAN_TORCH'] = stan_torch
    return subprocess.run(['bash', str(ROOT / 'tools' / 'install.sh')], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize('old', ['2.5.1', '2.4.0+cu121', '1.13.1'])
def test_install_stops_on_a_torch_older_than_supported(fake_python, old):
    r = _install(fake_python(old))
    assert r.returncode == 1, r.stdout + r.stderr
    assert f'torch {old} is installed; stan-mm needs torch >= {TORCH_MIN}' in r.stderr
    assert 'safe_globals' in r.stderr and 'STAN_TORCH=' in r.stderr, r.stderr
    assert 'FAKEPIP' not in r.stdout, 'it installed something before stopping'


@pytest.mark.parametrize('new', ['2.6.0', '2.14.1+cu130', '2.10.0a0+git1234'])
def test_install_keeps_a_supported_torch(fake_python, new):
    r = _install(fake_python(new))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f'keeping torch {new}' in r.stdout
    assert 'FAKEPIP -m pip install torch' not in r.stdout
    # stan-mm itself without dependencies: its torch>=2.6 never triggers a torch download
    assert 'FAKEPIP -m pip install --no-build-isolation --no-deps -e .' in r.stdout, r.stdout


def test_install_stops_when_stan_torch_is_too_old(fake_python):
    # a pinned torch==X.Y below the minimum: refused before it replaces the working pair
    r = _install(fake_python('2.14.1'), stan_torch='torch==2.5.1 torchvision==0.20.1')
    assert r.returncode == 1, r.stdout + r.stderr
    assert 'FAKEPIP' not in r.stdout, 'it installed something before stopping'
    assert f'names a torch older than {TORCH_MIN}' in r.stderr, r.stderr
    # a pair without a pinned version that turns out too old: stopped right after it
    r = _install(fake_python('2.5.1'), stan_torch='torch torchvision')
    assert r.returncode == 1, r.stdout + r.stderr
    assert 'FAKEPIP -m pip install torch torchvision' in r.stdout
    assert f'needs torch >= {TORCH_MIN}' in r.stderr and 'STAN_TORCH=' in r.stderr
    assert 'install -r requirements.txt' not in r.stdout
