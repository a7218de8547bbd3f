"""Each stack fix of stan_mm.compat, shown failing without the fix and working with it.

The "without" halves run in fresh subprocesses that never import stan_mm, so they observe the
stack as installed. When the installed stack does not have a given problem (e.g. an mmaction2
build that ships ``drn``), the "without" half is skipped, not faked.
"""
import os
import pathlib
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMPAT = ROOT / 'stan_mm' / 'compat'


def run_py(code, env_extra=None, cwd=None, timeout=240):
    env = dict(os.environ)
    env.pop('STAN_MM_TRUST_CHECKPOINTS', None)
    env['PYTHONPATH'] = os.pathsep.join(
        [p for p in [(env_extra or {}).pop('PYTHONPATH', None), str(ROOT)] if p])
    env.update(env_extra or {})
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], env=env,
                          cwd=cwd or str(ROOT), capture_output=True, text=True,
                          timeout=timeout)


# Loads one compat file by path, without importing the stan_mm package (whose __init__
# applies every fix at once).
LOAD_BY_PATH = f'''
import importlib.util
def load(name):
    spec = importlib.util.spec_from_file_location('_c_' + name, r'{COMPAT}/' + name + '.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod); return mod
'''


# ----------------------------------------------------------------------------- mmaction import
def test_mmaction_models_import_needs_drn_and_multimodal_fixes():
    plain = run_py('import mmaction.models')
    if plain.returncode == 0:
        pytest.skip('installed mmaction2 imports cleanly; nothing to fix here')
    assert 'drn' in plain.stderr or 'apply_chunking_to_forward' in plain.stderr, plain.stderr

    only_drn = run_py(LOAD_BY_PATH + '''
m = load('mmaction'); assert m.apply_drn_fix()
import mmaction.models
''')
    fixed = run_py(LOAD_BY_PATH + '''
m = load('mmaction'); m.apply_drn_fix(); m.apply_multimodal_fix()
import mmaction.models
from mmaction.registry import MODELS
assert MODELS.get('Recognizer3D') is not None
print('IMPORTED')
''')
    assert fixed.returncode == 0 and 'IMPORTED' in fixed.stdout, fixed.stderr
    try:
        import transformers  # noqa: F401
        has_tf5 = int(transformers.__version__.split('.')[0]) >= 5
    except ImportError:
        has_tf5 = False
    if has_tf5:
        # the drn stand-in alone is not enough with transformers 5: VindLU crashes
        assert only_drn.returncode != 0
        assert 'apply_chunking_to_forward' in only_drn.stderr, only_drn.stderr


def test_drn_placeholder_raises_clear_error():
    import stan_mm  # noqa: F401
    from stan_mm.compat.mmaction import DRN, _real_drn_present
    if _real_drn_present():
        pytest.skip('real drn present')
    with pytest.raises(ImportError, match='mmaction2 from its git repository'):
        DRN()


def test_drn_placeholder_is_registered():
    """Building DRN from a config names what to install, instead of mmengine's generic
    "DRN is not in the mmaction::model registry"."""
    import stan_mm  # noqa: F401
    from mmaction.registry import MODELS
    from stan_mm.compat.mmaction import _real_drn_present
    if _real_drn_present():
        pytest.skip('real drn present')
    with pytest.raises(ImportError, match='install mmaction2 from its git repository'):
        MODELS.build(dict(type='DRN'))


def _transformers_major():
    import importlib.metadata
    try:
        return int(importlib.metadata.version('transformers').split('.')[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None


def test_vindlu_placeholder_names_the_transformers_version():
    """With transformers >= 5 the VindLU placeholders do not tell users to install
    mmaction2[multimodal] (they have it, in a version too new): they name the installed
    transformers and the version mmaction2 1.2.0's multimodal models need."""
    if (_transformers_major() or 0) < 5:
        pytest.skip('needs transformers >= 5 installed')
    import importlib.metadata

    import stan_mm  # noqa: F401
    from mmaction.registry import MODELS
    version = importlib.metadata.version('transformers')
    for name in ('VindLURetrieval', 'VindLURetrievalMC', 'VindLUVQA'):
        with pytest.raises(ImportError) as e:
            MODELS.build(dict(type=name))
        msg = str(e.value)
        assert f'transformers {version} is installed' in msg and '< 5' in msg, msg
        assert msg.startswith(name) and 'mmaction2[multimodal]' not in msg, msg


def test_vindlu_check_does_not_import_transformers_models():
    """Whether VindLU would import is decided from transformers' version, without importing
    transformers.modeling_utils (3-7 s of every `import stan_mm`), and the answer is the
    one the import gives."""
    r = run_py(LOAD_BY_PATH + '''
import sys
m = load('mmaction')
ok = m._vindlu_importable()
assert 'transformers.modeling_utils' not in sys.modules, 'imported transformers.modeling_utils'
try:
    from transformers.modeling_utils import apply_chunking_to_forward  # noqa: F401
    imports = True
except Exception:
    imports = False
assert ok == imports, (ok, imports)
print('SAME', ok)
''')
    assert r.returncode == 0 and 'SAME' in r.stdout, r.stdout + r.stderr[-3000:]


# ----------------------------------------------------------------------------- pkg_resources
def test_pkg_resources_shim(tmp_path):
    blocker = tmp_path / 'blocker'
    blocker.mkdir()
    (blocker / 'pkg_resources.py').write_text(
        "raise ImportError('simulated: setuptools>=82 has no pkg_resources')\n")
    cfg = tmp_path / 'cfg.py'
    cfg.write_text("_base_ = 'mmaction::_base_/default_runtime.py'\nx = 1\n")
    code = f'''
from mmengine.config import Config
c = Config.fromfile(r'{cfg}')
assert c.default_scope == 'mmaction' and c.x == 1
print('RESOLVED')
'''
    without = run_py(code, env_extra={'PYTHONPATH': str(blocker)})
    assert without.returncode != 0 and 'simulated' in without.stderr, without.stderr
    # (the blocker is found, so the fix expects the real module, and runs the shim in its
    # place when it fails to import; a pkg_resources that is not found at all:
    # test_known_gaps_1207.py)
    with_fix = run_py(LOAD_BY_PATH + '''
m = load('pkg_resources_shim'); m.apply_pkg_resources_fix()
import pkg_resources; assert getattr(pkg_resources, 'DistributionNotFound')
assert pkg_resources.__doc__.startswith('stan-mm shim')
''' + code, env_extra={'PYTHONPATH': str(blocker)})
    assert with_fix.returncode == 0 and 'RESOLVED' in with_fix.stdout, with_fix.stderr


def test_pkg_resources_shim_api():
    sys.path.insert(0, str(COMPAT / '_shims'))
    try:
        import importlib
        shim = importlib.import_module('pkg_resources')
        if not getattr(shim, '__doc__', '').startswith('stan-mm shim'):
            # the real module was found first: load the shim file directly
            spec = importlib.util.spec_from_file_location(
                '_shim', str(COMPAT / '_shims' / 'pkg_resources.py'))
            shim = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(shim)
    finally:
        sys.path.remove(str(COMPAT / '_shims'))
    d = shim.get_distribution('mmengine')
    assert d.version == __import__('mmengine').__version__
    assert os.path.isdir(os.path.join(d.location, 'mmengine'))
    assert 'mmengine' in d.get_metadata('top_level.txt')
    with pytest.raises(shim.DistributionNotFound):
        shim.get_distribution('surely-not-installed-package-xyz')


# ----------------------------------------------------------------------------- checkpoints
def _mmengine_like_checkpoint():
    from mmengine.logging import MessageHub
    hub = MessageHub.get_instance('stan_mm_compat_test')
    for i in range(3):
        hub.update_scalar('train/loss', 1.0 / (i + 1))
    return {
        'meta': {'epoch': 2, 'iter': 30, 'seed': 0, 'message_hub': hub.state_dict(),
                 'dataset_meta': {'classes': ['a', 'b']}, 'mmengine_version': '0.10.7',
                 'np_value': np.float64(0.5), 'arr': np.arange(3)},
        'state_dict': {'w': torch.randn(3, 3)},
        'optimizer': {'state': {}, 'param_groups': [{'lr': 0.1, 'params': [0]}]},
    }


class _Payload:
    """Pickles into a call of ``pathlib.Path.touch`` — stands in for malicious code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_mmengine_checkpoint_loads_weights_only(tmp_path):
    path = tmp_path / 'epoch_2.pth'
    torch.save(_mmengine_like_checkpoint(), path)
    # without the allow-list torch >= 2.6 refuses mmengine's own checkpoints
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, map_location='cpu', weights_only=True)
    import stan_mm  # noqa: F401
    from mmengine.runner.checkpoint import _load_checkpoint
    ckpt = _load_checkpoint(str(path), map_location='cpu')
    hist = ckpt['meta']['message_hub']['log_scalars']['train/loss']
    assert type(hist).__name__ == 'HistoryBuffer'
    assert np.isclose(hist.mean(), np.mean([1.0, 0.5, 1 / 3]))
    assert torch.equal(ckpt['state_dict']['w'], torch.load(path, weights_only=False)
                       ['state_dict']['w'])


def test_mmengine_checkpoint_loads_in_fresh_process(tmp_path):
    """A new process has created no HistoryBuffer yet (its statistics registry is empty)."""
    path = tmp_path / 'epoch_1.pth'
    torch.save(_mmengine_like_checkpoint(), path)
    r = run_py(f'''
import stan_mm
from mmengine.runner.checkpoint import _load_checkpoint
ckpt = _load_checkpoint(r'{path}', map_location='cpu')
print('LOADED', ckpt['meta']['message_hub']['log_scalars']['train/loss'].current())
''')
    assert r.returncode == 0 and 'LOADED' in r.stdout, r.stderr[-2000:]


def test_code_running_checkpoint_is_refused(tmp_path):
    import stan_mm  # noqa: F401
    from mmengine.runner.checkpoint import _load_checkpoint

    from stan_mm.compat import UnsafeCheckpointError, safe_torch_load, trusted_checkpoints
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'x': _Payload(marker)}, path)
    with pytest.raises(UnsafeCheckpointError) as e:
        _load_checkpoint(str(path), map_location='cpu')
    assert str(path) in str(e.value) and 'STAN_MM_TRUST_CHECKPOINTS' in str(e.value)
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError):
        safe_torch_load(path)
    assert not marker.exists()
    # explicit opt-in: the file is trusted, its code runs
    with trusted_checkpoints():
        _load_checkpoint(str(path), map_location='cpu')
    assert marker.exists()


class _GetattrPayload:
    """Pickles into ``getattr(OneCycleParamScheduler, <name>)`` for any name: the restricted
    getattr must refuse everything but the two annealing functions."""

    def __init__(self, name):
        self.name = name

    def __reduce__(self):
        from mmengine.optim.scheduler.param_scheduler import OneCycleParamScheduler
        return (getattr, (OneCycleParamScheduler, self.name))


@pytest.mark.parametrize('strategy', ['cos', 'linear'])
def test_checkpoint_with_a_one_cycle_scheduler_loads(tmp_path, strategy):
    """mmengine's OneCycleLR keeps its annealing function in its state (a static method
    pickled as getattr of the class): a run with it could not be resumed or tested without
    STAN_MM_TRUST_CHECKPOINTS. It loads now, and the state resumes a scheduler; other
    attributes of the class stay refused."""
    from mmengine.optim.scheduler import OneCycleLR
    from mmengine.optim.scheduler.param_scheduler import OneCycleParamScheduler
    from stan_mm.compat import UnsafeCheckpointError, safe_torch_load
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = OneCycleLR(opt, eta_max=0.01, total_steps=10, anneal_strategy=strategy)
    for _ in range(3):
        opt.step()
        sched.step()
    path = tmp_path / 'epoch_1.pth'
    torch.save({'state_dict': {}, 'param_schedulers': [sched.state_dict()]}, path)
    state = safe_torch_load(path)['param_schedulers'][0]
    assert state['anneal_func'] is getattr(OneCycleParamScheduler, f'_annealing_{strategy}')
    fresh = OneCycleLR(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1),
                       eta_max=0.01, total_steps=10)
    fresh.load_state_dict(state)
    assert fresh.last_step == sched.last_step and fresh.anneal_func(0.0, 1.0, 0.5) == \
        sched.anneal_func(0.0, 1.0, 0.5)
    evil = tmp_path / 'evil.pth'
    torch.save({'x': _GetattrPayload('__init__')}, evil)
    with pytest.raises(UnsafeCheckpointError):
        safe_torch_load(evil)


def test_corrupt_checkpoints_are_named_as_such(tmp_path):
    """Empty, truncated and non-checkpoint files: an error naming the file and saying
    what is wrong, not the unpickler's 'invalid load key' or 'KeyError: <number>' (nor the
    refusal meant for pickles that would run code)."""
    from stan_mm.compat import CorruptCheckpointError, safe_torch_load
    good = tmp_path / 'good.pth'
    torch.save({'state_dict': {'w': torch.randn(64, 64)}}, good)
    data = good.read_bytes()
    files = {'empty.pth': (b'', 'is empty'),
             'text.pth': (b'hello world\n', 'is not a PyTorch checkpoint'),
             'random.pth': (bytes(range(7, 250)) * 4, 'is not a PyTorch checkpoint'),
             'truncated.pth': (data[:len(data) // 2], 'probably truncated'),
             'truncated_pickle.pth': (pickle.dumps({'w': list(range(100))})[:40],
                                      'probably truncated')}
    for name, (content, expected) in files.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CorruptCheckpointError, match=expected) as info:
            safe_torch_load(tmp_path / name)
        assert name in str(info.value)
    assert set(safe_torch_load(good)['state_dict']) == {'w'}


def test_missing_checkpoint_names_path(tmp_path):
    from stan_mm.compat import safe_torch_load
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        safe_torch_load(tmp_path / 'nope.pth')


def test_mmengine_loader_works_without_safe_globals(tmp_path, monkeypatch):
    """torch < 2.5 has no torch.serialization.safe_globals: loading any checkpoint through
    mmengine must not fail with AttributeError once stan_mm is imported (mmengine's own
    loader is used), and safe_torch_load still loads tensors, refusing the rest with a
    message that names the torch it needs."""
    import stan_mm  # noqa: F401
    from mmengine.runner import CheckpointLoader

    from stan_mm.compat import UnsafeCheckpointError, safe_torch_load
    plain = tmp_path / 'plain.pth'
    torch.save({'a': torch.ones(1)}, plain)
    full = tmp_path / 'epoch_1.pth'
    torch.save(_mmengine_like_checkpoint(), full)
    monkeypatch.delattr(torch.serialization, 'safe_globals')
    assert torch.equal(CheckpointLoader.load_checkpoint(str(plain))['a'], torch.ones(1))
    from stan_mm.compat.checkpoint import safe_loading_supported
    assert not safe_loading_supported()
    assert torch.equal(safe_torch_load(plain)['a'], torch.ones(1))
    with pytest.raises(UnsafeCheckpointError, match=r'torch >= 2\.6'):
        safe_torch_load(full)


class _LoadSpy:
    def __init__(self, monkeypatch):
        self.calls = []
        real = torch.load

        def spy(*args, **kwargs):
            self.calls.append(kwargs)
            return real(*args, **kwargs)
        monkeypatch.setattr(torch, 'load', spy)


def test_mmengine_loader_is_stock_before_torch_2_6(tmp_path, monkeypatch):
    """On torch < 2.6 torch.load defaults to weights_only=False and safe_globals takes no
    (callable, name) entries: mmengine's loader is left as it is there (other models load as
    without stan-mm), and is replaced (weights_only=True + allow-list) on torch >= 2.6."""
    import collections

    import stan_mm  # noqa: F401
    from mmengine.runner import CheckpointLoader
    from mmengine.runner.checkpoint import load_from_local

    from stan_mm.compat import apply_checkpoint_fix
    path = tmp_path / 'plain.pth'
    torch.save({'a': torch.ones(1)}, path)
    spy = _LoadSpy(monkeypatch)
    CheckpointLoader.load_checkpoint(str(path))
    assert spy.calls[-1].get('weights_only') is True      # this torch: stan-mm's loader
    monkeypatch.setattr(torch, '__version__', '2.5.1')
    CheckpointLoader.load_checkpoint(str(path))
    assert 'weights_only' not in spy.calls[-1]          # mmengine's: torch's own default
    # applied on such a torch, the fix does not replace mmengine's loader at all
    schemes = collections.OrderedDict(CheckpointLoader._schemes)
    schemes[''] = load_from_local
    monkeypatch.setattr(CheckpointLoader, '_schemes', schemes)
    apply_checkpoint_fix()
    assert CheckpointLoader._schemes[''] is load_from_local


# ----------------------------------------------------------------------------- CPU DDP
DDP_SCRIPT = '''
import os, sys, torch
if os.environ.get('WITH_FIX') == '1':
    import stan_mm  # noqa
from mmengine.dist import init_dist, get_rank, get_world_size
from mmengine.model import MMDistributedDataParallel
init_dist('pytorch', backend='nccl')
model = torch.nn.Linear(4, 2)
ddp = MMDistributedDataParallel(module=model, device_ids=[int(os.environ['LOCAL_RANK'])])
torch.manual_seed(get_rank())
x = torch.randn(8, 4)
ddp(x).sum().backward()
g = model.weight.grad.clone()
gathered = [torch.zeros_like(g) for _ in range(get_world_size())]
torch.distributed.all_gather(gathered, g)
assert torch.allclose(gathered[0], gathered[1])  # DDP averaged the gradients
open(os.path.join(os.environ['OUT_DIR'], f'rank{get_rank()}'), 'w').write(
    f'DDP_OK {get_rank()} {get_world_size()}')
torch.distributed.barrier()
# clean gloo shutdown: release DDP's reducer (it holds the process group and its threads)
# before the group itself; left to interpreter exit, either can abort the process
del ddp
import gc
gc.collect()
torch.distributed.destroy_process_group()
'''


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU-only problem needs no CUDA')
@pytest.mark.parametrize('with_fix', [False, True])
def test_cpu_torchrun_ddp(tmp_path, with_fix):
    script = tmp_path / 'ddp.py'
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT), WITH_FIX='1' if with_fix else '0',
               OMP_NUM_THREADS='1', OUT_DIR=str(tmp_path))
    from stan_mm.testing import free_port
    port = free_port()
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
                        f'--master_port={port}', str(script)], env=env,
                       capture_output=True, text=True, timeout=300)
    if with_fix:
        assert r.returncode == 0, r.stderr[-3000:]
        # each rank reports in its own file (their stdout lines may interleave)
        assert (tmp_path / 'rank0').read_text() == 'DDP_OK 0 2'
        assert (tmp_path / 'rank1').read_text() == 'DDP_OK 1 2'
    else:
        assert r.returncode != 0


# ----------------------------------------------------------------------------- AMP wrapper
@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU fallback')
def test_dist_fix_leaves_other_accelerators_to_mmengine(monkeypatch):
    """Without CUDA the fix replaces mmengine's init by gloo on the CPU, but a device that
    mmengine sets up itself (NPU, MLU, MUSA: device and hccl/cncl/mccl backend) keeps
    mmengine's own code; DDP keeps device_ids for modules that are not on the CPU."""
    import mmengine.device as device
    import mmengine.dist.utils as dist_utils
    import stan_mm  # noqa: F401
    from stan_mm.compat import dist as dist_fix
    patched = dist_utils._init_dist_pytorch
    calls = []
    monkeypatch.setattr(patched, '__wrapped__', lambda backend, init_backend='torch', **k:
                        calls.append(('mmengine', backend)))
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(torch.distributed, 'init_process_group',
                        lambda **k: calls.append(('gloo', k.get('backend'))))
    with pytest.warns(UserWarning, match='gloo backend instead of nccl'):
        patched(backend='nccl')
    monkeypatch.setattr(device, 'is_npu_available', lambda: True)
    patched(backend='nccl')
    assert calls[0] == ('gloo', 'gloo') and calls[1] == ('mmengine', 'nccl')
    assert dist_fix._module_on_cpu(torch.nn.Linear(2, 2))
    assert not dist_fix._module_on_cpu(torch.nn.Linear(2, 2).to('meta'))


def test_auto_amp_optim_wrapper_on_cpu():
    import stan_mm  # noqa: F401
    from mmaction.registry import OPTIM_WRAPPERS
    from mmengine.optim import AmpOptimWrapper, OptimWrapper
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(AssertionError):  # the stock wrapper refuses CPU
        OPTIM_WRAPPERS.build(dict(type='AmpOptimWrapper', dtype='bfloat16', optimizer=opt))
    from unittest import mock
    with mock.patch('mmengine.logging.print_log') as log:
        w = OPTIM_WRAPPERS.build(dict(type='AutoAmpOptimWrapper', dtype='bfloat16',
                                      optimizer=opt, clip_grad=dict(max_norm=5.0)))
    assert type(w) is OptimWrapper and not isinstance(w, AmpOptimWrapper)
    said = ' | '.join(c[0][0] for c in log.call_args_list)   # the log names the precision
    assert 'plain fp32' in said and "dtype='bfloat16' applies on GPU" in said
    w.update_params(model(torch.ones(1, 2)).sum())  # a real step runs


def test_num_workers_zero_overrides_persistent_workers():
    """The configs' persistent_workers=True plus a command-line num_workers=0 builds a
    loader (torch alone raises); with workers, persistent_workers is kept."""
    import stan_mm  # noqa: F401
    from mmengine.runner import Runner
    cfg = dict(batch_size=2, num_workers=0, persistent_workers=True,
               sampler=dict(type='DefaultSampler', shuffle=False),
               dataset=list(range(5)), collate_fn=dict(type='default_collate'))
    with pytest.raises(ValueError, match='persistent_workers'):   # the rule itself
        torch.utils.data.DataLoader(list(range(5)), num_workers=0, persistent_workers=True)
    loader = Runner.build_dataloader(cfg)
    assert loader.num_workers == 0 and not loader.persistent_workers
    assert [b.tolist() for b in loader] == [[0, 1], [2, 3], [4]]
    assert cfg['persistent_workers'] is True                      # the caller's dict unchanged
    loader = Runner.build_dataloader(dict(cfg, num_workers=1))
    assert loader.persistent_workers


# ----------------------------------------------------------------------------- decord + fork
FORK_GC = '''
import gc, multiprocessing as mp, sys
import cv2, numpy as np
{setup}
import decord
path = sys.argv[1] if len(sys.argv) > 1 else {path!r}
writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), 8.0, (32, 32))
for t in range(8):
    writer.write(np.full((32, 32, 3), 30 * t, np.uint8))
writer.release()
gc.disable()
class Holder: pass
h = Holder(); h.cycle = h                      # kept alive by a cycle until a gc run
h.reader = decord.VideoReader(path, num_threads=1)
h.reader.get_batch([0, 5])
del h
def child():
    gc.collect()                               # frees the inherited reader
    print('child collected', flush=True)
p = mp.get_context('fork').Process(target=child)
p.start(); p.join(timeout=15)
code = p.exitcode
if code is None:
    p.kill(); p.join()
print('child exit code', code, flush=True)
gc.enable(); gc.collect()                      # the parent still frees its own reader
print('parent collected', flush=True)
'''


@pytest.mark.parametrize('with_fix', [False, True])
def test_decord_reader_inherited_through_fork(tmp_path, with_fix):
    """A VideoReader that a forked worker inherits as cyclic garbage: decord frees it in the
    child, which hangs or aborts (the decoder's threads live in the parent); with the fix
    the child drops it and exits normally."""
    pytest.importorskip('decord')
    setup = ('import stan_mm.compat as c; c.apply_decord_fork_fix()' if with_fix
             else 'pass')
    r = run_py(FORK_GC.format(setup=setup, path=str(tmp_path / 'v.mp4')), timeout=120)
    assert 'parent collected' in r.stdout, r.stdout + r.stderr
    if with_fix:
        assert 'child collected' in r.stdout and 'child exit code 0' in r.stdout, r.stdout
    elif 'child exit code 0' in r.stdout:
        pytest.skip('this decord frees a reader inherited through fork without harm')


def test_import_prints_no_stack_warnings():
    """A fresh `import stan_mm` does not greet users with the setuptools deprecation of
    pkg_resources ('pin to Setuptools<81') or mmcv-lite's missing compiled op, neither of
    which they can or need to act on."""
    out = subprocess.run([sys.executable, '-W', 'default', '-c', 'import stan_mm'],
                         capture_output=True, text=True, timeout=300, cwd=str(ROOT),
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr
    assert 'pkg_resources is deprecated' not in out.stderr
    assert 'MultiScaleDeformableAttention' not in out.stderr


FROZEN_CODE = '''
{prefix}
import torch
from mmengine.logging import MMLogger
from mmengine.optim import build_optim_wrapper
MMLogger.get_instance('t', log_level='{level}')
model = torch.nn.ModuleDict(dict(
    head=torch.nn.ModuleDict(dict(text=torch.nn.Linear(3, 3), fc=torch.nn.Linear(3, 2))),
    stem=torch.nn.Linear(3, 3)))
for p in [*model.head.text.parameters(), model.stem.weight]:
    p.requires_grad_(False)
build_optim_wrapper(model, dict(optimizer=dict(type='SGD', lr=0.1),
                               paramwise_cfg=dict(bias_lr_mult=1.0)))
build_optim_wrapper(torch.nn.Linear(2, 2), dict(optimizer=dict(type='SGD', lr=0.1),
                    paramwise_cfg=dict(bias_lr_mult=1.0)))
'''


@pytest.mark.parametrize('with_fix', [False, True])
def test_frozen_parameters_logged_once(with_fix):
    """mmengine warns once per frozen tensor; with the fix one WARNING line per optimizer
    names the groups and their counts, and nothing else changes."""
    prefix = 'import stan_mm' if with_fix else ''
    r = run_py(FROZEN_CODE.format(prefix=prefix, level='INFO'))
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    per_tensor = [ln for ln in out.splitlines() if 'is skipped since its requires_grad' in ln]
    summary = [ln for ln in out.splitlines() if 'frozen parameter tensors' in ln]
    if not with_fix:
        assert len(per_tensor) == 3 and not summary, out
        return
    assert not per_tensor, out
    assert len(summary) == 1, out       # the second optimizer has nothing frozen: no line
    assert summary[0].endswith('optimizer: 3 frozen parameter tensors (requires_grad=False) '
                               'left out: head.text (2), stem.weight (1)'), summary[0]


def test_frozen_parameters_summary_survives_log_level_warning():
    """mmengine's per-tensor lines are WARNINGs, so a run at log_level='WARNING' showed
    them; the summary that replaces them is a WARNING too and still shows."""
    r = run_py(FROZEN_CODE.format(prefix='import stan_mm', level='WARNING'))
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    summary = [ln for ln in out.splitlines() if 'frozen parameter tensors' in ln]
    assert len(summary) == 1 and 'WARNING' in summary[0], out
    assert 'is skipped since its requires_grad' not in out, out


# ------------------------------------------------------------- DataLoader workers of a run
WORKERS_CODE = '''
{setup}
import json
import torch
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter


class Model(BaseModel):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(1, 1)

    def forward(self, inputs, mode='tensor'):
        out = self.fc(inputs)
        return dict(loss=out.pow(2).mean()) if mode == 'loss' else list(out.flatten())


class Sum(BaseMetric):
    def process(self, data_batch, data_samples):
        self.results.extend(float(x) for x in data_samples)

    def compute_metrics(self, results):
        return dict(total=round(sum(results), 5))


class Watch(Hook):
    """Keeps every multiprocessing iterator the loops used; raises at iteration `fail`."""
    def __init__(self, fail=None):
        self.iterators, self.fail, self.metrics = [], fail, []

    def _keep(self, loader):
        it = loader._iterator
        if isinstance(it, _MultiProcessingDataLoaderIter) and it not in self.iterators:
            self.iterators.append(it)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self._keep(runner.train_dataloader)
        if runner.iter + 1 == self.fail:
            raise RuntimeError('stopped mid-epoch')

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self._keep(runner.val_dataloader)

    def after_val_epoch(self, runner, metrics=None):
        self.metrics.append(metrics['total'])


def loader(workers):
    return dict(dataset=[dict(inputs=torch.tensor([i / 8])) for i in range(8)],
                batch_size=2, num_workers=workers, persistent_workers=workers > 0,
                sampler=dict(type='DefaultSampler', shuffle=True),
                collate_fn=dict(type='default_collate'))


case, workers, work_dir = {case!r}, {workers}, {work_dir!r}
watch = Watch(fail=3 if case == 'raises' else None)
runner = Runner(
    model=Model(), work_dir=work_dir, train_dataloader=loader(workers),
    train_cfg=dict(by_epoch=True, max_epochs=2, val_begin=1 if case != 'no_val' else 9),
    optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
    val_dataloader=loader(workers), val_cfg=dict(), val_evaluator=[Sum()],
    test_dataloader=loader(workers), test_cfg=dict(), test_evaluator=[Sum()],
    custom_hooks=[watch], default_hooks=dict(checkpoint=None, logger=None),
    randomness=dict(seed=0), default_scope=None)
raised = None
try:
    runner.train()
except RuntimeError as exc:
    raised = str(exc)
iterators = watch.iterators
report = dict(
    raised=raised, iterators=len(iterators),
    alive=sum(w.is_alive() for it in iterators for w in it._workers),
    shut_down=[it._shutdown for it in iterators],
    kept=[n for n in ('train', 'val')
          if getattr(getattr(runner, '_' + n + '_loop').dataloader, '_iterator', None)],
    test_loop_built=not isinstance(runner._test_loop, dict))
if case == 'done':
    report['last_val'] = watch.metrics[-1]
    report['val_again'] = runner.val()['total']          # fresh workers, same numbers
    report['alive_after_val'] = sum(
        w.is_alive() for it in [runner.val_dataloader._iterator] if it for w in it._workers)
print('REPORT', json.dumps(report), flush=True)
'''


@pytest.mark.parametrize('with_fix, case, workers', [
    (False, 'done', 2), (True, 'done', 2), (True, 'raises', 2), (True, 'no_val', 2),
    (True, 'done', 0)])
def test_loader_workers_stop_when_the_run_ends(tmp_path, with_fix, case, workers):
    """Persistent DataLoader workers outlive runner.train(); left to the garbage collector,
    the runner's reference cycles made each take 5 s (a 2-worker loader 10 s) to stop. With
    the fix they are stopped when train() returns or raises, validation after it starts
    fresh workers and gives the same numbers, a loader never iterated (no_val: validation
    never due) and num_workers=0 are left alone, the test loop is not built for it."""
    import json
    setup = 'import stan_mm' if with_fix else 'pass'
    r = run_py(WORKERS_CODE.format(setup=setup, case=case, workers=workers,
                                   work_dir=str(tmp_path / 'work')), timeout=180)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith('REPORT ')]
    assert r.returncode == 0 and lines, r.stdout[-2000:] + r.stderr[-3000:]
    report = json.loads(lines[0][len('REPORT '):])
    assert report['raised'] == ('stopped mid-epoch' if case == 'raises' else None)
    assert not report['test_loop_built']
    if workers == 0:
        assert report['iterators'] == 0 and not report['kept']
        return
    used = {'done': 2, 'raises': 1, 'no_val': 1}[case]   # train (and val) loaders
    assert report['iterators'] == used, report
    if not with_fix:     # the problem: the workers are still running after the run
        assert report['alive'] == 2 * used and report['kept'], report
        return
    assert report['alive'] == 0 and all(report['shut_down']) and not report['kept'], report
    if case == 'done':
        assert report['val_again'] == report['last_val'], report
        assert report['alive_after_val'] == 0, report
