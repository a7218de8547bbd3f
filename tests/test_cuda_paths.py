"""Branches that run only with CUDA, exercised on a CPU-only machine.

The GPU is simulated one level below the code under test: ``torch.cuda.is_available``,
``current_device`` and ``get_device_properties`` are replaced, and torch's own
``torch.cuda.is_bf16_supported`` runs unchanged on top of them, so these tests see what
that function answers on a real V100 (compute capability 7.0) or A100 (8.0).
"""
import types

import pytest
import torch

BF16_TRAINED = {'optim_wrapper': dict(type='AutoAmpOptimWrapper', dtype='bfloat16')}
FP32_TRAINED = {'optim_wrapper': dict(type='OptimWrapper')}


def _fake_gpu(monkeypatch, major: int, name: str):
    """A CUDA device of compute capability ``major``.0 as torch sees it. Returns the list
    of devices on which torch's bf16 emulation probe (which allocates a bf16 tensor) ran;
    on a real pre-Ampere GPU that probe succeeds, so it answers True here too."""
    probed = []

    def probe(device):
        probed.append(device)
        return True

    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: 0)
    monkeypatch.setattr(torch.cuda, 'get_device_properties',
                        lambda device=None: types.SimpleNamespace(major=major, minor=0,
                                                                  name=name))
    monkeypatch.setattr(torch.cuda, '_check_bf16_tensor_supported', probe)
    monkeypatch.setattr(torch.version, 'hip', None)
    return probed


def test_amp_auto_on_a_gpu_without_native_bf16_takes_fp16(monkeypatch):
    """On a V100 torch's ``is_bf16_supported()`` says True (emulation counts), so
    ``--amp`` picked bf16 where the docs promise "fp16 on a GPU without bf16", and its probe
    allocated on the current device (GPU 0 for every rank, before ``set_device``)."""
    from stan_mm.utils.amp import resolve_amp_dtype
    from stan_mm.utils.cli import CommandLineError
    probed = _fake_gpu(monkeypatch, 7, 'Tesla V100-SXM2-32GB')
    assert torch.cuda.is_bf16_supported()        # what torch itself answers on a V100
    probed.clear()
    dtype, why = resolve_amp_dtype('auto', BF16_TRAINED, 'cuda')
    assert dtype is torch.float16 and 'lacks' in why
    dtype, why = resolve_amp_dtype('auto', FP32_TRAINED, 'cuda')
    assert dtype is torch.float16 and 'no bf16' in why
    with pytest.raises(CommandLineError, match='has no bf16'):
        resolve_amp_dtype('bf16', BF16_TRAINED, 'cuda')
    assert probed == []                          # nothing allocated to find out
    from stan_mm.utils.amp import cuda_native_bf16
    assert not cuda_native_bf16()


def test_amp_auto_on_a_gpu_with_native_bf16_keeps_bf16(monkeypatch):
    from stan_mm.utils.amp import resolve_amp_dtype
    probed = _fake_gpu(monkeypatch, 8, 'NVIDIA A100-SXM4-80GB')
    assert resolve_amp_dtype('auto', BF16_TRAINED, 'cuda')[0] is torch.bfloat16
    assert resolve_amp_dtype('auto', FP32_TRAINED, 'cuda')[0] is torch.bfloat16
    assert resolve_amp_dtype('bf16', FP32_TRAINED, 'cuda')[0] is torch.bfloat16
    assert probed == []
    from stan_mm.utils.amp import cuda_native_bf16
    assert cuda_native_bf16()


def test_cuda_native_bf16_without_cuda(monkeypatch):
    from stan_mm.utils.amp import cuda_native_bf16
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert not cuda_native_bf16()


@pytest.mark.parametrize('dtype', ['bfloat16', torch.bfloat16])
def test_auto_amp_wrapper_warns_about_emulated_bf16(monkeypatch, dtype):
    """The recognition configs train under bf16 autocast (AutoAmpOptimWrapper). On a V100
    mmengine's check (``is_bf16_supported()``) lets bf16 through and the run silently
    trains with emulated bf16; the wrapper now says so and names the fix."""
    from mmengine.optim import AmpOptimWrapper
    from stan_mm.compat.optim import AutoAmpOptimWrapper
    from stan_mm.testing import logged_warning_messages
    _fake_gpu(monkeypatch, 7, 'Tesla V100-SXM2-32GB')
    optimizer = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1e-3)
    with logged_warning_messages() as warned:
        wrapper = AutoAmpOptimWrapper(optimizer, dtype=dtype)
    assert isinstance(wrapper, AmpOptimWrapper) and wrapper.cast_dtype is torch.bfloat16
    lines = [m for m in warned if 'no native bf16' in m]
    assert len(lines) == 1, warned
    assert 'Tesla V100' in lines[0] and '7.0' in lines[0]
    assert "optim_wrapper.dtype='float16'" in lines[0]


@pytest.mark.parametrize('major, dtype', [(8, 'bfloat16'), (7, 'float16'), (7, None)])
def test_auto_amp_wrapper_quiet_where_bf16_is_native_or_not_asked(monkeypatch, major, dtype):
    from stan_mm.compat.optim import AutoAmpOptimWrapper
    from stan_mm.testing import logged_warning_messages
    _fake_gpu(monkeypatch, major, 'some GPU')
    optimizer = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1e-3)
    kwargs = {} if dtype is None else dict(dtype=dtype)
    with logged_warning_messages() as warned:
        AutoAmpOptimWrapper(optimizer, **kwargs)
    assert not [m for m in warned if 'bf16' in m], warned


def test_retrieval_eval_benchmark_measures_the_device_it_ran_on(monkeypatch):
    """``benchmark_retrieval_eval.py --device cuda:1``: the synchronization and the peak
    memory must be those of cuda:1; ``torch.cuda.max_memory_allocated()`` without a device
    read the current device (GPU 0), where nothing of the run was allocated."""
    import stan_mm.evaluation
    from stan_mm.testing import load_script
    tool = load_script('tools/analysis/benchmark_retrieval_eval.py')
    calls = []
    monkeypatch.setattr(torch.cuda, 'synchronize',
                        lambda device=None: calls.append(('synchronize', device)))

    def peak(device=None):
        calls.append(('max_memory_allocated', device))
        return 3 * 2 ** 20
    monkeypatch.setattr(torch.cuda, 'max_memory_allocated', peak)
    # the embeddings stay on the CPU and the ranking is not run: only the device the
    # measurements name is checked
    monkeypatch.setattr(tool, '_normalized_randn',
                        lambda rows, dim, *a, **k: torch.zeros(rows, dim))
    monkeypatch.setattr(stan_mm.evaluation, 'retrieval_metrics_from_embeddings',
                        lambda *a, **k: {})
    monkeypatch.setattr(torch, 'set_num_threads', lambda n: None)   # (this process's)
    args = tool.parse_args(['--worker', 'plain', '--num-texts', '4', '--num-videos', '4',
                            '--dim', '2', '--device', 'cuda:1', '--threads', '1'])
    result = tool.worker(args)
    assert result['cuda_peak_mb'] == 3.0
    assert calls and all(device is not None and torch.device(device) == torch.device('cuda:1')
                         for _, device in calls), calls


class _BlockingCopies(torch.overrides.TorchFunctionMode):
    """Records every ``Tensor.to`` / ``.cuda`` / ``copy_`` that moves a CPU tensor to
    another device without ``non_blocking=True``: on a GPU such a copy of pageable memory
    is ``cudaMemcpyAsync`` + ``cudaStreamSynchronize``, a wait for all the work queued
    before it (in a training step: the whole forward pass)."""

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in (torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.copy_) and args \
                and torch.is_tensor(args[0]) and torch.is_tensor(out):
            source = args[1] if func is torch.Tensor.copy_ else args[0]
            moved = source.device.type == 'cpu' and out.device.type != 'cpu'
            if moved and not kwargs.get('non_blocking', False):
                self.found.append((func.__name__, tuple(source.shape)))
        return out


@pytest.mark.parametrize('learnable', [False, True])
def test_retrieval_loss_makes_no_blocking_host_to_device_copy(learnable):
    """``STANRetriever.loss`` with the default fixed temperature moved ``torch.tensor(1 /
    tau)`` from the CPU to the features' device, and ``SymmetricInfoNCELoss`` the video ids
    (handed over on the CPU on purpose, to avoid a device read-back), both with blocking
    copies: two stream synchronizations per training step between the forward pass and
    the loss. Run on the meta device, which stands for the GPU here."""
    from mmaction.structures import ActionDataSample
    from stan_mm.models.retrievers import STANRetriever
    from stan_mm.testing import tiny_clip_cfg
    model = STANRetriever(backbone=dict(type='CLIPSTAN', depth=1, input_layout='NTCHW'),
                          arch=tiny_clip_cfg(), learnable_temperature=learnable).to('meta')
    model.train()
    imgs = torch.empty(3, 2, 3, 32, 32, device='meta')
    text = torch.zeros(3, 8, dtype=torch.long, device='meta')
    samples = [ActionDataSample(metainfo=dict(filename=f'v{i}.mp4')) for i in (0, 1, 1)]
    with _BlockingCopies() as mode:
        out = model.loss(dict(imgs=imgs, text=text), samples)
    assert out['loss'].device.type == 'meta'
    assert mode.found == [], mode.found
