"""Benchmark helpers for ``tools/analysis/benchmark.py``.

Two benchmarks, each against its own baseline measured in the same process:

* **model**: CLIPSTAN (CLIP + STAN branch) against the same CLIP with mean pooling over
  frames (``CLIPSTAN(depth=0)``), forward (eval, ``no_grad``) and forward+backward (train
  mode, loss = mean of squared video embeddings; optionally an AdamW step). Runs ALTERNATE
  (A, B, A, B, ...) after warm-up runs that are not recorded; the reported figure is the
  median over runs and the time ratio is the median of the per-round ratios (each round
  times A and B back to back, so slow drifts of a shared machine cancel). On CPU both the
  wall time and the process CPU time are recorded (with one intra-op thread the CPU time
  ignores the time the process waits for a core on a loaded machine). The FLOPs ratio
  comes from :mod:`stan_mm.utils.flops` (multiply-accumulates per clip).
* **pipeline**: clips/s of a config's training pipeline (decord decoding + transforms,
  single process = one data worker) against bare decord decoding of the same frame
  indices (``decord.VideoReader(path, num_threads=1).get_batch(inds)``), alternating per
  video; or N such workers at once (:func:`parallel_pipeline_benchmark`), sharing the
  cores as data workers do in training.

Peak memory:

* CUDA: ``torch.cuda.max_memory_allocated`` over one step minus the memory allocated
  before it, plus the model's own resident bytes (parameters, buffers, optimizer state,
  input), i.e. what the model would need alone on the device (both models live in the
  benchmark process).
* CPU: a fresh child process (:func:`cpu_peak_memory`) builds the models one after the
  other, so the benchmark's own models and timing runs do not count: the peak resident set
  size (``VmHWM``, reset through ``/proc/self/clear_refs`` right before the step) minus
  the resident size just before the step, with glibc's mmap threshold lowered so freed
  tensors go back to the system; each model first runs one unmeasured forward step.
  Without ``clear_refs`` it falls back to ``getrusage`` (``ru_maxrss``), which is a lower
  bound of the step's extra memory when building the model peaked higher.
"""
import contextlib
import copy
import gc
import json
import os
import os.path as osp
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from . import bench_videos

MODES = ('forward', 'train')
# CLIPSTAN arguments that only concern the branch: dropped for the mean-pooling baseline
_BRANCH_ONLY = ('depth', 'temporal_module', 'spatial_module', 'levels', 'level_proj',
                'structure', 'multi_level', 'drop_path_rate', 'max_frames',
                'interpolate_time_embed', 'conv_reduction', 'branch_grad_checkpointing')
_SHARED_CLIP = ('arch', 'pretrained', 'precision', 'quick_gelu')


# ----------------------------------------------------------------------------- models
def clipstan_kwargs_from_config(cfg) -> Dict[str, Any]:
    """CLIPSTAN keyword arguments of a config's ``model.backbone`` (recognizer) or of a
    ``STANRetriever``'s video tower (``arch``/``precision``/``quick_gelu`` taken from
    ``model``). Weights are never loaded: ``pretrained`` is set to None."""
    model = cfg['model']
    model = model.to_dict() if hasattr(model, 'to_dict') else dict(model)
    backbone = copy.deepcopy(dict(model.get('backbone') or {}))
    typ = backbone.pop('type', 'CLIPSTAN')
    if str(typ).split('.')[-1] != 'CLIPSTAN':
        raise ValueError(f'benchmark: model.backbone.type={typ!r}; the model benchmark needs '
                         f'a CLIPSTAN backbone (use --arch for a bare CLIPSTAN)')
    for key in _SHARED_CLIP:
        if key in model and key not in backbone:       # STANRetriever owns them
            backbone[key] = model[key]
    backbone.pop('clip_model', None)
    backbone['pretrained'] = None
    init_cfg = backbone.get('init_cfg')
    if isinstance(init_cfg, Mapping) and init_cfg.get('type') == 'Pretrained':
        backbone['init_cfg'] = None
    return backbone


def baseline_kwargs(stan_kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    """The same CLIP with mean pooling over frames: ``stan_kwargs`` with ``depth=0`` and
    the branch-only arguments removed."""
    out = {k: v for k, v in stan_kwargs.items() if k not in _BRANCH_ONLY}
    out['depth'] = 0
    return out


def build_clipstan(kwargs: Mapping[str, Any], device='cpu') -> nn.Module:
    """``CLIPSTAN(**kwargs)`` on ``device`` (``'meta'``: shapes only)."""
    from stan_mm.models.backbones import CLIPSTAN
    with torch.device(device):
        return CLIPSTAN(**kwargs)


def flops_per_clip(stan_kwargs: Mapping[str, Any], frames: int) -> Dict[str, float]:
    """Multiply-accumulates of one clip ``[1, T, 3, H, W]`` for CLIPSTAN and its
    mean-pooling baseline (counted with :func:`stan_mm.utils.flops.count_macs` on the meta
    device) and their ratio."""
    from stan_mm.utils.flops import count_macs
    out = {}
    for name, kw in (('stan', stan_kwargs), ('clip', baseline_kwargs(stan_kwargs))):
        model = build_clipstan(kw, 'meta')
        size = tuple(model.visual.image_size)
        x = torch.empty(1, frames, 3, *size, device='meta')
        res = count_macs(model, (x, ))
        if res.skipped:
            raise RuntimeError(f'benchmark: FLOPs counter missed ops {res.skipped}')
        out[f'{name}_macs'] = res.macs
    out['ratio'] = out['stan_macs'] / out['clip_macs']
    return out


def image_size(model: nn.Module) -> tuple:
    return tuple(int(s) for s in model.visual.image_size)


def model_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers."""
    return sum(t.numel() * t.element_size()
               for t in list(model.parameters()) + list(model.buffers()))


def optimizer_state_bytes(optimizer: Optional[torch.optim.Optimizer]) -> int:
    if optimizer is None:
        return 0
    return sum(v.numel() * v.element_size() for state in optimizer.state.values()
               for v in state.values() if torch.is_tensor(v))


def set_grad_checkpointing(model: nn.Module, enabled: bool) -> None:
    """Recompute CLIP blocks and branch layers in backward (CLIPSTAN's two flags)."""
    model.grad_checkpointing = enabled
    if getattr(model, 'branch', None) is not None:
        model.branch.grad_checkpointing = enabled


def make_step(model: nn.Module, x: torch.Tensor, mode: str,
              amp_dtype: Optional[torch.dtype] = None,
              optimizer: Optional[torch.optim.Optimizer] = None) -> Callable[[], None]:
    """One benchmark step on ``x`` ``[N, T, 3, H, W]``.

    ``'forward'``: eval mode, ``no_grad``. ``'train'``: train mode, loss = mean of the
    squared video embeddings ``[N, E]``, backward, then ``optimizer.step()`` when given;
    gradients are released (``set_to_none``) after every step. ``amp_dtype``: autocast
    dtype (e.g. ``torch.bfloat16`` on CUDA) or None for full precision.
    """
    if mode not in MODES:
        raise ValueError(f'benchmark: mode={mode!r}; expected one of {MODES}')
    device_type = x.device.type

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=amp_dtype)

    if mode == 'forward':
        def step():
            model.train(False)
            with torch.no_grad(), autocast():
                model(x)
        return step

    params = [p for p in model.parameters() if p.requires_grad]

    def train_step():
        model.train(True)
        with autocast():
            out = model(x)
        loss = out.float().pow(2).mean()
        loss.backward()
        if optimizer is not None:
            optimizer.step()
        for p in params:
            p.grad = None
    return train_step


# ----------------------------------------------------------------------------- timing
@dataclass
class Timing:
    """Seconds per step of every recorded (non-warm-up) run, in run order."""
    wall: List[float] = field(default_factory=list)
    cpu: List[float] = field(default_factory=list)


def alternate(steps: Mapping[str, Callable[[], None]], warmup: int = 1, repeats: int = 5,
              iters: int = 1, sync: Callable[[], None] = lambda: None) -> Dict[str, Timing]:
    """Time the steps in alternation: round r runs every step once, in the given order
    (A, B, A, B, ...). The first ``warmup`` rounds are not recorded. One run is ``iters``
    consecutive calls; its time per call is recorded (wall clock and process CPU time).
    ``sync`` waits for queued device work (``torch.cuda.synchronize`` on CUDA)."""
    if repeats < 1 or warmup < 0 or iters < 1:
        raise ValueError(f'benchmark: need repeats >= 1, warmup >= 0, iters >= 1 (got '
                         f'{repeats}, {warmup}, {iters})')
    out = {name: Timing() for name in steps}
    for r in range(warmup + repeats):
        for name, step in steps.items():
            sync()
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(iters):
                step()
            sync()
            w, c = time.perf_counter() - w0, time.process_time() - c0
            if r >= warmup:
                out[name].wall.append(w / iters)
                out[name].cpu.append(c / iters)
    return out


def summarize(values: Sequence[float]) -> Dict[str, Any]:
    """median, min, max, relative spread ``(max - min) / median`` and the values."""
    values = [float(v) for v in values]
    med = statistics.median(values)
    return dict(median=med, min=min(values), max=max(values),
                spread=(max(values) - min(values)) / med if med else float('nan'),
                values=values)


def paired_ratios(a: Sequence[float], b: Sequence[float]) -> List[float]:
    """Per-round ratios ``a[r] / b[r]``."""
    return [x / y for x, y in zip(a, b)]


# ----------------------------------------------------------------------------- memory
def cuda_peak_memory(step: Callable[[], None], device=None) -> Dict[str, int]:
    """Peak allocated CUDA memory of one ``step`` above what was allocated before it."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return dict(before=before, peak=peak, delta=peak - before)


def _status_kb(field_name: str) -> Optional[int]:
    try:
        with open('/proc/self/status') as f:
            m = re.search(rf'^{field_name}:\s+(\d+)\s+kB', f.read(), re.M)
    except OSError:
        return None
    return int(m.group(1)) * 1024 if m else None


def current_rss() -> Optional[int]:
    """Resident set size of this process in bytes (``/proc/self/status`` VmRSS)."""
    return _status_kb('VmRSS')


def _reset_peak_rss() -> bool:
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')        # Linux >= 4.0: reset VmHWM to the current RSS
        return True
    except OSError:
        return False


def _peak_rss_since_reset(reset_ok: bool) -> tuple:
    if reset_ok:
        hwm = _status_kb('VmHWM')
        if hwm is not None:
            return hwm, 'VmHWM after /proc/self/clear_refs reset'
    return (maxrss_bytes(),
            'ru_maxrss (process-lifetime high-water mark; lower bound)')


def maxrss_bytes() -> int:
    """``getrusage(RUSAGE_SELF).ru_maxrss`` in bytes: macOS (``sys.platform ==
    'darwin'``) gives it in bytes, Linux and the other systems in KiB."""
    import resource
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss) if sys.platform == 'darwin' else int(maxrss) * 1024


def measure_step_rss(step: Callable[[], None]) -> Dict[str, Any]:
    """Peak resident memory of one ``step`` (in this process) above the RSS before it.

    Without ``/proc`` (macOS) the RSS before the step is not known: the process's
    ``ru_maxrss`` before the step stands for it (at least the RSS then), so ``delta`` is a
    lower bound, 0 when the step did not raise the process's high-water mark."""
    gc.collect()
    ok = _reset_peak_rss()
    before = current_rss()
    if before is None:
        before = maxrss_bytes()
    step()
    peak, method = _peak_rss_since_reset(ok)
    # the kernel's RSS counters are batched per CPU: a few pages of slack either way
    peak = max(peak, before)
    return dict(before=before, peak=peak, delta=peak - before, method=method)


def _memory_child() -> None:
    """Entry point of the CPU memory child process: JSON job on stdin, JSON on stdout."""
    job = json.loads(sys.stdin.read())
    torch.set_num_threads(job.get('threads', 1))
    import stan_mm  # noqa: F401  (registers models, applies the stack fixes)
    amp = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(job.get('amp') or 'none')
    out = {}
    for name, kwargs in job['models'].items():
        torch.manual_seed(job.get('seed', 0))
        model = build_clipstan(kwargs, 'cpu')
        x = torch.randn(job['batch'], job['frames'], 3, *image_size(model))
        set_grad_checkpointing(model, bool(job.get('grad_checkpointing')))
        res = dict(model_bytes=model_bytes(model), input_bytes=x.numel() * x.element_size())
        # the timed step's settings: autocast, and AdamW in training steps (its state is
        # allocated by the first training step, which is the measured one)
        optim = (torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                   lr=1e-6) if job.get('optim_step') else None)
        make_step(model, x, 'forward', amp)()     # one-time initialisations are not counted
        for mode in job['modes']:
            res[mode] = measure_step_rss(make_step(model, x, mode, amp,
                                                   optim if mode == 'train' else None))
        out[name] = res
        del model, x
        gc.collect()
    sys.stdout.write('\n@@BENCH_JSON@@' + json.dumps(out) + '\n')


def cpu_peak_memory(models: Mapping[str, Mapping[str, Any]], batch: int, frames: int,
                    modes: Sequence[str], threads: int = 1,
                    grad_checkpointing: bool = False, timeout: float = 3600,
                    amp: Optional[str] = None, optim_step: bool = False) -> Dict:
    """Peak memory of one step per mode (:func:`measure_step_rss`) of each CLIPSTAN in
    ``models`` (name -> kwargs), measured one model after the other in a fresh Python
    process (so the benchmark's own models and runs do not count); each model first runs
    one unmeasured forward step. ``amp`` (``'bf16'``, ``'fp16'`` or None) and
    ``optim_step`` (an AdamW step in training steps) as in the timed steps; the steps run
    eager (``--compile`` is not applied there). glibc's mmap threshold is lowered in that
    process so freed tensors are returned to the system and the RSS follows live memory.
    Returns ``{name: {mode: {before, peak, delta, method}, 'model_bytes', 'input_bytes'}}``.
    """
    job = dict(models={k: dict(v) for k, v in models.items()}, batch=batch, frames=frames,
               modes=list(modes), threads=threads, grad_checkpointing=grad_checkpointing,
               amp=amp, optim_step=optim_step)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='131072', MALLOC_TRIM_THRESHOLD_='131072',
               OMP_NUM_THREADS=str(threads))
    proc = subprocess.run(
        [sys.executable, '-c', 'from stan_mm.utils.benchmark import _memory_child; '
         '_memory_child()'], input=json.dumps(job), capture_output=True, text=True,
        env=env, timeout=timeout)
    marker = '@@BENCH_JSON@@'
    if proc.returncode != 0 or marker not in proc.stdout:
        raise RuntimeError(f'benchmark: CPU memory child failed (exit {proc.returncode}):\n'
                           f'{proc.stderr[-3000:]}')
    return json.loads(proc.stdout.rsplit(marker, 1)[1].strip())


# ----------------------------------------------------------------------------- machine
def machine_info(device: str = 'cpu') -> Dict[str, Any]:
    """CPU model, cores, torch version and threads, load average, GPU name."""
    cpu = platform.processor() or ''
    try:
        with open('/proc/cpuinfo') as f:
            m = re.search(r'^model name\s*:\s*(.+)$', f.read(), re.M)
        cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    info = dict(cpu=cpu, cpu_count=os.cpu_count(), torch=torch.__version__,
                torch_threads=torch.get_num_threads(), python=platform.python_version(),
                platform=platform.platform())
    try:
        info['loadavg'] = list(os.getloadavg())
    except OSError:
        pass
    if device.startswith('cuda') and torch.cuda.is_available():
        info['gpu'] = torch.cuda.get_device_name(torch.device(device))
        info['cuda'] = torch.version.cuda
    return info


# ----------------------------------------------------------------------------- videos
VIDEO_CODECS = bench_videos.CODECS


def write_benchmark_videos(out_dir: str, num_videos: int = 6, width: int = 340,
                           height: int = 256, num_frames: int = 64, fps: float = 30.0,
                           seed: int = 0, codec: str = 'mp4v') -> List[str]:
    """Write ``num_videos`` mp4 files (``width`` x ``height``, ``num_frames`` frames) with
    realistic content for decoding benchmarks: a textured background panning across the
    frame (fine noise on smooth blobs, so the encoder has residual detail to code) and a
    few moving, colour-changing ellipses. Files that exist already are reused. Returns the
    paths.

    ``codec``: ``'mp4v'`` (MPEG-4 part 2 through OpenCV, ``.mp4``: short groups of
    pictures, cheap to decode, the hard case for a pipeline-overhead ratio), ``'h264'``
    (libx264 through PyAV, ``.mp4``, with x264's defaults as ffmpeg applies them: CRF 23,
    B-frames, key frames up to 250 frames apart; how Kinetics videos re-encoded with ffmpeg
    look) or ``'vp9'`` (libvpx-vp9 through PyAV, ``.webm``, as Something-Something-v2 is
    distributed). PyAV: ``pip install av`` (its wheels bundle both encoders).
    Note: decord 0.6.0 cannot copy out frames of some small widths (e.g. 48 px; 64, 96,
    320 and 340 work), so keep the width >= 64 for bare decord decoding."""
    if codec not in VIDEO_CODECS:
        raise ValueError(f'write_benchmark_videos: codec must be one of {VIDEO_CODECS}, '
                         f'got {codec!r}')
    if num_videos < 1 or num_frames < 1 or width < 16 or height < 16:
        raise ValueError('write_benchmark_videos: need num_videos >= 1, num_frames >= 1 '
                         f'and a frame of at least 16x16 (got {num_videos}, {num_frames}, '
                         f'{width}x{height})')
    if codec != 'mp4v' and (width % 2 or height % 2):
        raise ValueError(f'write_benchmark_videos: {codec} (yuv420p) needs an even width '
                         f'and height, got {width}x{height}')
    os.makedirs(out_dir, exist_ok=True)
    tag = ('' if fps == 30 else f'_{fps:g}fps') + ('' if codec == 'mp4v' else f'_{codec}')
    ext = bench_videos.EXTENSIONS[codec]
    paths = []
    for i in range(num_videos):
        path = osp.join(out_dir, f'bench_{width}x{height}_{num_frames}f_s{seed}_{i}{tag}{ext}')
        paths.append(path)
        if osp.exists(path) and osp.getsize(path) > 0:
            continue
        _remove_stale_video_tmps(path, ext)
        tmp = _new_temp_video(path, ext)
        job = dict(path=tmp, seed=[seed, i], width=width, height=height,
                   num_frames=num_frames, fps=fps, codec=codec)
        try:
            if codec == 'mp4v':
                bench_videos.write_video(**job)
            else:
                _write_in_child(job)
            os.replace(tmp, path)
        except BaseException:
            if osp.lexists(tmp):          # never leave a partial video behind
                os.remove(tmp)
            raise
    return paths


def _new_temp_video(path: str, ext: str) -> str:
    """A new empty file beside ``path`` for its video to be encoded into, then renamed to
    ``path``: ``.<name>.<8 random characters>.tmp<ext>`` (the encoders pick the container
    by the extension), made by ``tempfile.mkstemp`` (created exclusively, so a file or
    symbolic link put at a name someone could guess is never written through) with the
    mode ``open`` gives (``0o666`` less the umask)."""
    from stan_mm.utils.atomic import new_temp_beside
    fd, tmp = new_temp_beside(path, suffix='.tmp' + ext)
    os.close(fd)
    return tmp


def _remove_stale_video_tmps(path: str, ext: str) -> List[str]:
    """Delete the temporary videos (:func:`_new_temp_video`) of ``path`` that killed runs
    left: regular files of exactly that name pattern (or the fixed ``<name>.tmp<ext>`` of
    earlier versions) unchanged for 10 minutes
    (:func:`~stan_mm.utils.atomic.remove_stale_temps_of`). Returns the removed
    paths."""
    from stan_mm.utils.atomic import remove_stale_temps_of
    return remove_stale_temps_of(path, suffix='.tmp' + ext,
                                 also=(osp.basename(path) + '.tmp' + ext, ))


def _write_in_child(job: Mapping[str, Any]) -> None:
    """Encode one PyAV video in a fresh interpreter. decord and PyAV bundle two builds of
    FFmpeg; loaded into one process they break each other (after ``import decord``,
    PyAV's libvpx-vp9 encoder fails to open with EINVAL; after ``import av``, decord cannot
    read the VP9 file it wrote), so PyAV never runs in the benchmark's own process."""
    runner = 'import runpy, sys; runpy.run_path(sys.argv[1], run_name="__main__")'
    proc = subprocess.run([sys.executable, '-c', runner, bench_videos.__file__,
                           json.dumps(dict(job))], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise RuntimeError(lines[-1] if lines else
                           f'write_benchmark_videos: writing {job["path"]} failed '
                           f'(exit code {proc.returncode})')


# ----------------------------------------------------------------------------- pipeline
def train_pipeline_from_config(cfg) -> List[dict]:
    """The transform configs of ``train_dataloader.dataset`` (wrappers unwrapped)."""
    loader = cfg.get('train_dataloader') or {}
    ds = loader.get('dataset', {}) if isinstance(loader, Mapping) else {}
    while isinstance(ds, Mapping) and 'pipeline' not in ds and 'dataset' in ds:
        ds = ds['dataset']
    pipeline = ds.get('pipeline') if isinstance(ds, Mapping) else None
    if not pipeline:
        raise ValueError('benchmark: the config has no train_dataloader.dataset.pipeline '
                         '(needed for the data pipeline benchmark)')
    return [dict(t.to_dict() if hasattr(t, 'to_dict') else t) for t in pipeline]


def initial_results(path: str, caption: str = 'a person is doing something') -> dict:
    """The sample dict a video dataset hands to its pipeline (VideoDataset keys plus the
    retrieval keys a text-video pipeline reads)."""
    return dict(filename=path, label=0, start_index=0, modality='RGB', text=caption,
                sample_idx=0, video_idx=0, text_idx=0, video_id=osp.basename(path))


class PipelineRunner:
    """Builds a transform list from MMAction2's ``TRANSFORMS`` and runs it on one video,
    recording the frame indices handed to the decoder (the last ``frame_inds`` set before
    ``imgs`` appears) and, per transform, the process CPU seconds spent in it
    (``cpu_seconds``, summed over calls)."""

    def __init__(self, pipeline: Sequence[Mapping]):
        import stan_mm  # noqa: F401  (registers the project's transforms)
        from mmaction.registry import TRANSFORMS
        from mmengine.registry import init_default_scope
        init_default_scope('mmaction')
        self.names = [str(t.get('type')) for t in pipeline]
        self.transforms = [TRANSFORMS.build(dict(t)) for t in pipeline]
        self.cpu_seconds = [0.0] * len(self.transforms)

    def __call__(self, path: str):
        results = initial_results(path)
        inds = None
        for i, t in enumerate(self.transforms):
            c0 = time.process_time()
            results = t(results)
            self.cpu_seconds[i] += time.process_time() - c0
            if results is None:
                raise RuntimeError(f'benchmark: transform {t!r} dropped the sample {path}')
            if isinstance(results, dict) and 'frame_inds' in results and 'imgs' not in results:
                inds = np.asarray(results['frame_inds']).reshape(-1).copy()
        if inds is None:
            raise RuntimeError('benchmark: the pipeline never set frame_inds before decoding '
                               '(is it a decord video pipeline?)')
        return results, inds


def bare_decode(path: str, inds: Sequence[int]) -> np.ndarray:
    """Bare decord decoding: ``[T', H, W, 3]`` uint8 frames ``inds`` of ``path`` (one
    decoder thread, as MMAction2's ``DecordInit``)."""
    import decord
    reader = decord.VideoReader(osp.abspath(path), num_threads=1)
    return reader.get_batch(list(map(int, inds))).asnumpy()


def pipeline_benchmark(pipeline: Sequence[Mapping], videos: Sequence[str], warmup: int = 1,
                       repeats: int = 5, compare_fast_paths: bool = False) -> Dict[str, Any]:
    """Alternate, per video, the training pipeline and bare decoding of the frames that
    pipeline call decoded. One round visits every video; clips/s of a round = videos /
    seconds. Returns per-round figures, medians and the paired ratio.

    ``compare_fast_paths``: also run the pipeline without stan_mm's exact fast paths
    (``stan_mm.datasets.transforms.fast_paths.disabled()``: MMAction2's own ``Resize``,
    ``FormatShape`` and ``UniformSample`` code, decord's batch copied), per video before or
    after the pipeline with them (the order alternates), on its own random draws. Adds
    ``without_fast_paths`` (clips/s, CPU clips/s, overhead over bare decoding) and
    ``fast_paths_time_ratio`` / ``fast_paths_cpu_ratio``: paired per-round ratios of the
    time with them to the time without (below 1: they save time)."""
    if not videos:
        raise ValueError('benchmark: no videos for the pipeline benchmark')
    from stan_mm.datasets.transforms.fast_paths import disabled
    runner = PipelineRunner(pipeline)
    stock = PipelineRunner(pipeline) if compare_fast_paths else None
    keys = ['pipeline', 'bare'] + (['stock'] if compare_fast_paths else [])
    rounds = {f'{k}_{t}': [] for k in keys for t in ('wall', 'cpu')}
    frames_per_clip = None

    def timed(key, acc, fn):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        acc[f'{key}_wall'] += time.perf_counter() - w0
        acc[f'{key}_cpu'] += time.process_time() - c0
        return out

    def run_stock(path):
        with disabled():
            return stock(path)

    for r in range(warmup + repeats):
        acc = dict.fromkeys(rounds, 0.0)
        for i, path in enumerate(videos):
            if stock is not None and (r + i) % 2:
                timed('stock', acc, lambda: run_stock(path))
            _, inds = timed('pipeline', acc, lambda: runner(path))
            if stock is not None and not (r + i) % 2:
                timed('stock', acc, lambda: run_stock(path))
            frames = timed('bare', acc, lambda: bare_decode(path, inds))
            frames_per_clip = len(frames)
        if r >= warmup:
            for k, v in acc.items():
                rounds[k].append(v)
        else:
            runner.cpu_seconds = [0.0] * len(runner.cpu_seconds)
    n = len(videos)
    out = dict(num_videos=n, frames_per_clip=frames_per_clip, warmup=warmup,
               repeats=repeats)
    for key in keys:
        out['without_fast_paths' if key == 'stock' else key] = dict(
            clips_per_s=n / statistics.median(rounds[f'{key}_wall']),
            cpu_clips_per_s=n / statistics.median(rounds[f'{key}_cpu']),
            round_time_s=summarize(rounds[f'{key}_wall']),
            round_cpu_time_s=summarize(rounds[f'{key}_cpu']))
    out['per_transform_cpu_ms'] = [
        [name, 1e3 * sec / (n * repeats)] for name, sec in zip(runner.names,
                                                                runner.cpu_seconds)]
    out['bare']['cpu_ms_per_clip'] = 1e3 * sum(rounds['bare_cpu']) / (n * repeats)

    def ratio(a: str, b: str, clock: str) -> Dict[str, Any]:
        return summarize(paired_ratios(rounds[f'{a}_{clock}'], rounds[f'{b}_{clock}']))

    out['overhead'] = ratio('pipeline', 'bare', 'wall')
    out['cpu_overhead'] = ratio('pipeline', 'bare', 'cpu')
    if stock is not None:
        out['without_fast_paths'].update(overhead=ratio('stock', 'bare', 'wall'),
                                         cpu_overhead=ratio('stock', 'bare', 'cpu'))
        out['fast_paths_time_ratio'] = ratio('pipeline', 'stock', 'wall')
        out['fast_paths_cpu_ratio'] = ratio('pipeline', 'stock', 'cpu')
    return out


def _pipeline_worker(job: Mapping[str, Any], barrier, queue) -> None:
    """One data worker of :func:`parallel_pipeline_benchmark` (a spawned process): OpenCV
    and torch single-threaded, as mmengine's DataLoader workers; waits for the others,
    then runs :func:`pipeline_benchmark` and puts ``(rank, result, error)`` on ``queue``."""
    import traceback
    try:
        import cv2
        cv2.setNumThreads(0)
        torch.set_num_threads(1)
        import stan_mm  # noqa: F401
        barrier.wait(timeout=600)
        res = pipeline_benchmark(job['pipeline'], job['videos'], job['warmup'],
                                 job['repeats'])
        queue.put((job['rank'], res, None))
    except BaseException:  # noqa: BLE001  (reported to the parent with the traceback)
        queue.put((job['rank'], None, traceback.format_exc()))


def parallel_pipeline_benchmark(pipeline: Sequence[Mapping], videos: Sequence[str],
                                workers: int, warmup: int = 1, repeats: int = 5,
                                timeout: float = 3600) -> Dict[str, Any]:
    """``workers`` processes run :func:`pipeline_benchmark` at the same time, each over
    every video, started together: data workers sharing the machine's cores, as in
    training with as many workers as cores, where decord's helper thread no longer runs
    on an idle core. Each worker pairs its own pipeline and bare rounds.

    Returns ``per_worker`` (each worker's :func:`pipeline_benchmark` result) and
    ``aggregate``: clips/s of the pipeline and of bare decoding summed over the workers,
    and ``overhead`` = bare clips/s / pipeline clips/s (the time ratio of all workers
    together); ``overhead_per_worker`` lists each worker's median paired ratio."""
    import multiprocessing as mp
    import queue as queue_mod
    if workers < 2:
        raise ValueError(f'benchmark: parallel pipeline benchmark needs >= 2 workers, got '
                         f'{workers}')
    ctx = mp.get_context('spawn')
    barrier, results = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_pipeline_worker, daemon=True, args=(
        dict(rank=r, pipeline=[dict(t) for t in pipeline], videos=list(videos),
             warmup=warmup, repeats=repeats), barrier, results)) for r in range(workers)]
    for p in procs:
        p.start()
    per_worker: List[Optional[dict]] = [None] * workers
    deadline = time.monotonic() + timeout
    try:
        for _ in range(workers):
            while True:
                try:
                    rank, res, err = results.get(timeout=2.0)
                    break
                except queue_mod.Empty:
                    dead = [r for r, p in enumerate(procs)
                            if p.exitcode not in (None, 0) and per_worker[r] is None]
                    if dead or time.monotonic() > deadline:
                        why = (f'exited with code {procs[dead[0]].exitcode}' if dead
                               else f'did not finish within {timeout:.0f} s')
                        raise RuntimeError(f'benchmark: pipeline worker '
                                           f'{dead[0] if dead else "?"} {why}')
            if err is not None:
                raise RuntimeError(f'benchmark: pipeline worker {rank} failed:\n{err}')
            per_worker[rank] = res
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join(timeout=10)
    pipe = sum(r['pipeline']['clips_per_s'] for r in per_worker)
    bare = sum(r['bare']['clips_per_s'] for r in per_worker)
    return dict(workers=workers, num_videos=len(videos),
                frames_per_clip=per_worker[0]['frames_per_clip'], warmup=warmup,
                repeats=repeats, per_worker=per_worker,
                overhead_per_worker=[r['overhead']['median'] for r in per_worker],
                aggregate=dict(pipeline_clips_per_s=pipe, bare_clips_per_s=bare,
                               overhead=bare / pipe))


def video_info(path: str) -> Dict[str, Any]:
    import decord
    reader = decord.VideoReader(osp.abspath(path), num_threads=1)
    h, w = reader[0].shape[:2]
    return dict(frames=len(reader), width=int(w), height=int(h),
                fps=float(reader.get_avg_fps()))
