#!/usr/bin/env python
"""Throughput, peak memory and FLOPs of CLIPSTAN against the same CLIP with mean pooling,
and of a config's training data pipeline against bare decord decoding.

    # CPU, a config (its model.backbone and train pipeline; weights are never loaded)
    python tools/analysis/benchmark.py configs/stan/k400_self_b16.py --batch 1 --out r.json
    # CPU, a bare CLIPSTAN
    python tools/analysis/benchmark.py --arch ViT-B-16 --frames 8 --depth 4 \\
        --temporal-module attn --batch 2 --out r.json
    # GPU training step: bf16 autocast, AdamW step, with and without gradient checkpointing
    python tools/analysis/benchmark.py --arch ViT-B-16 --frames 8 --depth 4 --batch 16 \\
        --device cuda --modes train --grad-ckpt both --optim-step --skip-pipeline \\
        --out gpu.json
    # data pipeline only (generates 340x256, 64-frame mp4 videos unless --videos DIR)
    python tools/analysis/benchmark.py configs/stan/k400_self_b16.py --skip-model
    # ... with 8 data workers at once (all cores busy on an 8-core machine)
    python tools/analysis/benchmark.py configs/stan/k400_self_b16.py --skip-model \\
        --pipeline-workers 8
    # ... on Kinetics-like videos: 10 s at 30 fps, H.264 (needs `pip install av`)
    python tools/analysis/benchmark.py configs/stan/k400_self_b16.py --skip-model \\
        --video-frames 300 --video-codec h264
    # ... on Something-Something-v2-like videos: VP9 .webm, 426x240, 4 s at 12 fps
    python tools/analysis/benchmark.py configs/stan/ssv2_self_b16.py --skip-model \\
        --video-size 426 240 --video-frames 48 --video-fps 12 --video-codec vp9

Model benchmark: ``forward`` (eval, no_grad) and ``train`` (forward + backward of the mean
squared video embedding, + AdamW step with --optim-step) of CLIPSTAN ("STAN") and of
``CLIPSTAN(depth=0)`` ("CLIP", mean pooling over frames), ALTERNATING runs (STAN, CLIP,
STAN, CLIP, ...), warm-up rounds excluded, medians over --repeats rounds. The time ratio is
the median of the per-round STAN/CLIP ratios; it is printed next to the FLOPs ratio
(multiply-accumulates per clip from stan_mm.utils.flops) and ``time_ratio / flops_ratio``
(1.0 = the branch costs exactly what its FLOPs say). On CPU the process CPU time is
reported too (with --threads 1 it ignores the time spent waiting for a core on a shared
machine). CUDA: bf16 autocast (--amp), torch.cuda.max_memory_allocated, MFU =
3 (train) or 1 (forward) x forward FLOPs (2 per multiply-accumulate) x clips/s /
(--peak-tflops x 1e12; default 989 = H100 SXM dense bf16). CPU peak memory: measured in
a child process, peak RSS of one step above the RSS before it (see
stan_mm/utils/benchmark.py). Pipeline benchmark: clips/s of the config's train pipeline
(decord + transforms, one process = one data worker, torch and OpenCV single-threaded as
in DataLoader workers under mmengine) against bare decord decoding of the same frame
indices, alternating per video; --pipeline-workers N runs N such workers at once in
separate processes (the cores shared as in training). Writes every number to --out
(JSON). See
docs/benchmarks.md.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

import torch

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tools/
from _cfg_options import ConfigOptions  # noqa: E402  (no stan_mm import: a fast --help)

COMPILE_MODES = ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')
VIDEO_CODECS = ('mp4v', 'h264', 'vp9')   # stan_mm.utils.bench_videos.CODECS (tested)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config', nargs='?', type=os.path.expanduser,
                   help='config file (omit with --arch)')
    p.add_argument('--cfg-options', nargs='+', action=ConfigOptions, default={},
                   metavar='KEY=VALUE',
                   help='override config entries, as in tools/train.py (spaces in a value '
                   'are kept: "train_dataloader.dataset.data_root=/data/my videos")')
    g = p.add_argument_group('CLIPSTAN without a config')
    g.add_argument('--arch', help="CLIP arch name, e.g. ViT-B-16, 'ViT-B/32'")
    g.add_argument('--frames', type=int, help='frames per clip (default: the config\'s '
                   'train pipeline clip_len, else 8)')
    g.add_argument('--depth', type=int, default=4)
    g.add_argument('--temporal-module', default='attn', help='attn | conv | none')
    g.add_argument('--no-spatial', action='store_true', help='spatial_module=False')
    g = p.add_argument_group('model benchmark')
    g.add_argument('--device', default='cpu', help='cpu | cuda | cuda:N')
    g.add_argument('--batch', type=int, help='clips per step (default: 2 on CPU, 16 on CUDA)')
    g.add_argument('--modes', nargs='+', default=['forward', 'train'],
                   choices=['forward', 'train'])
    g.add_argument('--grad-ckpt', choices=['off', 'on', 'both'],
                   help='gradient checkpointing of CLIP blocks and branch layers in train '
                        'mode (default: off on CPU, both on CUDA)')
    g.add_argument('--amp', choices=['bf16', 'fp16', 'none'],
                   help='autocast dtype (default: bf16 on CUDA, none on CPU)')
    g.add_argument('--optim-step', action='store_true',
                   help='train mode includes an AdamW step (a full training step)')
    g.add_argument('--fused-adamw', action='store_true',
                   help='AdamW(fused=True) for the optimizer step (CUDA; as '
                        "optim_wrapper=dict(optimizer=dict(type='AdamW', fused=True)))")
    g.add_argument('--compile', action='store_true',
                   help='run both models through torch.compile (default mode); the '
                        'warm-up round(s) absorb the compilation')
    g.add_argument('--compile-mode', choices=COMPILE_MODES,
                   help='torch.compile mode (implies --compile): max-autotune searches '
                        'matmul/attention kernels, reduce-overhead adds CUDA graphs; give '
                        'enough --warmup rounds for the search')
    g.add_argument('--warmup', type=int, default=1, help='unrecorded rounds')
    g.add_argument('--repeats', type=int, default=5, help='recorded rounds')
    g.add_argument('--iters', type=int, help='steps per timed run (default: 1 on CPU, 10 '
                   'on CUDA)')
    g.add_argument('--threads', type=int, default=1,
                   help='torch intra-op threads on CPU (default 1: stable on shared cores)')
    g.add_argument('--peak-tflops', type=float, default=989.0,
                   help='peak dense TFLOP/s for MFU (default 989: H100 SXM bf16)')
    g.add_argument('--no-memory', action='store_true', help='skip peak memory')
    g.add_argument('--seed', type=int, default=0)
    g = p.add_argument_group('data pipeline benchmark')
    g.add_argument('--pipeline-config', type=os.path.expanduser,
                   help='config whose train pipeline is measured (default: CONFIG)')
    g.add_argument('--videos', type=os.path.expanduser,
                   help='your videos: a folder (searched recursively, as '
                   'tools/extract_features.py does) or a text file with one path per '
                   'line; the first --num-videos are used (default: generate some)')
    g.add_argument('--num-videos', type=int, default=6)
    g.add_argument('--video-size', type=int, nargs=2, default=[340, 256],
                   metavar=('W', 'H'))
    g.add_argument('--video-frames', type=int, default=64)
    g.add_argument('--video-fps', type=float, default=30.0)
    g.add_argument('--video-codec', choices=VIDEO_CODECS, default='mp4v',
                   help='codec of the generated videos: mp4v (OpenCV, short groups of '
                   'pictures, cheap to decode: the hard case), h264 (libx264 with '
                   "ffmpeg's defaults, as re-encoded Kinetics videos) or vp9 (.webm, as "
                   'Something-Something-v2); h264 and vp9 need PyAV (`pip install av`)')
    g.add_argument('--video-cache', type=os.path.expanduser,
                   help='where generated videos are kept (default: a temporary folder, '
                   'removed afterwards)')
    g.add_argument('--pipeline-workers', type=int, default=1,
                   help='data workers measured at the same time, each in its own process '
                        '(default 1: one worker alone on the machine; the number of cores: '
                        'all cores busy, as in training with that many workers)')
    g.add_argument('--compare-fast-paths', action='store_true',
                   help="also time the pipeline without stan_mm's exact fast paths "
                        "(MMAction2's own Resize/FormatShape/UniformSample code, decord's "
                        'batch copied), alternating with it; single process only')
    g.add_argument('--pipeline-warmup', type=int, default=1)
    g.add_argument('--pipeline-repeats', type=int, default=5)
    g = p.add_argument_group('what to run / output')
    g.add_argument('--skip-model', action='store_true')
    g.add_argument('--skip-pipeline', action='store_true')
    g.add_argument('--out', type=os.path.expanduser, help='write the results as JSON here')
    args = p.parse_args(argv)
    if args.pipeline_workers < 1:
        p.error(f'--pipeline-workers must be >= 1, got {args.pipeline_workers}')
    if args.compare_fast_paths and args.pipeline_workers > 1:
        p.error('--compare-fast-paths measures one worker: use it without --pipeline-workers')
    return args


def _load_config(path, options, flag='CONFIG'):
    from stan_mm.utils.cli import read_config
    cfg = read_config(path, flag)
    if options:
        cfg.merge_from_dict(options)
    return cfg


def _train_clip_len(cfg):
    from stan_mm.utils.benchmark import train_pipeline_from_config
    from stan_mm.utils.flops import shape_from_config
    try:
        for step in train_pipeline_from_config(cfg):
            if 'clip_len' in step:
                return int(step['clip_len']) * int(step.get('num_clips', 1))
    except ValueError:
        pass
    shape = shape_from_config(cfg)
    return shape[0] if shape else None


def _model_setup(args, cfg):
    from stan_mm.utils.benchmark import clipstan_kwargs_from_config
    if cfg is not None:
        kwargs = clipstan_kwargs_from_config(cfg)
        frames = args.frames or _train_clip_len(cfg) or 8
    else:
        tm = None if args.temporal_module == 'none' else args.temporal_module
        kwargs = dict(arch=args.arch, pretrained=None, depth=args.depth,
                      temporal_module=tm, spatial_module=not args.no_spatial)
        frames = args.frames or 8
    kwargs['input_layout'] = 'NTCHW'          # the benchmark feeds [N, T, C, H, W]
    kwargs['max_frames'] = max(kwargs.get('max_frames', 64), frames)
    return kwargs, frames


def _combos(modes, grad_ckpt):
    ckpts = {'off': [False], 'on': [True], 'both': [False, True]}[grad_ckpt]
    out = []
    for mode in modes:
        for ck in (ckpts if mode == 'train' else [False]):
            out.append((mode, ck))
    return out


def run_model_benchmark(args, kwargs, frames, on_run=None):
    """Model rows (``on_run(partial_result)`` after each mode / checkpointing setting, so
    that a run killed later keeps what it measured)."""
    from stan_mm.utils import benchmark as B
    device = torch.device(args.device)
    is_cuda = device.type == 'cuda'
    if is_cuda and not torch.cuda.is_available():
        raise SystemExit('benchmark: --device cuda but torch.cuda.is_available() is False')
    amp = args.amp or ('bf16' if is_cuda else 'none')
    amp_dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16, 'none': None}[amp]
    batch = args.batch or (16 if is_cuda else 2)
    iters = args.iters or (10 if is_cuda else 1)
    grad_ckpt = args.grad_ckpt or ('both' if is_cuda else 'off')

    flops = B.flops_per_clip(kwargs, frames)
    torch.manual_seed(args.seed)
    models = {'stan': B.build_clipstan(kwargs, device),
              'clip': B.build_clipstan(B.baseline_kwargs(kwargs), device)}
    size = B.image_size(models['stan'])
    x = torch.randn(batch, frames, 3, *size, device=device)
    fused = dict(fused=True) if args.fused_adamw else {}
    optims = {n: (torch.optim.AdamW([p for p in m.parameters() if p.requires_grad],
                                    lr=1e-6, **fused) if args.optim_step else None)
              for n, m in models.items()}
    sync = (lambda: torch.cuda.synchronize(device)) if is_cuda else (lambda: None)
    # torch.compile wraps each model; the wrapper shares parameters, train()/eval() and
    # attributes (gradient checkpointing flags) with the original module.
    compile_mode = args.compile_mode or ('default' if args.compile else None)
    runners = ({n: torch.compile(m, mode=compile_mode) for n, m in models.items()}
               if compile_mode else models)
    setup = dict(frames=frames, image_size=list(size), batch=batch, device=str(device),
                 amp=amp, iters=iters, warmup=args.warmup, repeats=args.repeats,
                 threads=torch.get_num_threads(), optim_step=args.optim_step,
                 compile=compile_mode or False, fused_adamw=bool(args.fused_adamw),
                 kwargs={k: v for k, v in kwargs.items()},
                 params={n: sum(p.numel() for p in m.parameters())
                         for n, m in models.items()})
    runs = []
    for mode, ck in _combos(args.modes, grad_ckpt):
        steps = {}
        for name, model in models.items():
            B.set_grad_checkpointing(model, ck)
            steps[name] = B.make_step(runners[name], x, mode, amp_dtype,
                                      optims[name] if mode == 'train' else None)
        print(f'... {mode}, grad_checkpointing={ck}: {args.warmup} warm-up + '
              f'{args.repeats} alternating rounds', flush=True)
        t = B.alternate(steps, args.warmup, args.repeats, iters, sync)
        run = dict(mode=mode, grad_checkpointing=ck, flops_ratio=flops['ratio'])
        for name in models:
            wall = B.summarize(t[name].wall)
            entry = dict(clips_per_s=batch / wall['median'], time_s=wall)
            if not is_cuda:
                cpu = B.summarize(t[name].cpu)
                entry.update(cpu_time_s=cpu, cpu_clips_per_s=batch / cpu['median'])
            if is_cuda:
                fwd_flops = 2 * flops[f'{name}_macs']
                factor = 3 if mode == 'train' else 1
                entry['mfu'] = (factor * fwd_flops * entry['clips_per_s']
                                / (args.peak_tflops * 1e12))
                if not args.no_memory:
                    mem = B.cuda_peak_memory(steps[name], device)
                    # AdamW state exists only for (and after) training steps
                    resident = (B.model_bytes(models[name]) + x.numel() * x.element_size()
                                + (B.optimizer_state_bytes(optims[name])
                                   if mode == 'train' else 0))
                    entry['memory'] = dict(mem, resident=resident,
                                           peak_alone=resident + mem['delta'],
                                           method='torch.cuda.max_memory_allocated')
            run[name] = entry
        ratio = B.summarize(B.paired_ratios(t['stan'].wall, t['clip'].wall))
        run['time_ratio'] = ratio
        run['time_over_flops'] = ratio['median'] / flops['ratio']
        if not is_cuda:
            cratio = B.summarize(B.paired_ratios(t['stan'].cpu, t['clip'].cpu))
            run['cpu_time_ratio'] = cratio
            run['cpu_time_over_flops'] = cratio['median'] / flops['ratio']
        runs.append(run)
        if on_run is not None:
            on_run(dict(setup=setup, flops=flops, runs=list(runs), partial=True))
    if not is_cuda and not args.no_memory:
        print('... CPU peak memory (in a child process)', flush=True)
        del models, optims
        for ck in sorted({ck for _, ck in _combos(args.modes, grad_ckpt)}):
            modes = [m for m, c in _combos(args.modes, grad_ckpt) if c == ck]
            mem = B.cpu_peak_memory({'stan': kwargs, 'clip': B.baseline_kwargs(kwargs)},
                                    batch, frames, modes, args.threads, ck, amp=amp,
                                    optim_step=bool(args.optim_step))
            for run in runs:
                for name in ('stan', 'clip'):
                    if run['grad_checkpointing'] == ck and run['mode'] in mem[name]:
                        run[name]['memory'] = dict(mem[name][run['mode']],
                                                   model_bytes=mem[name]['model_bytes'])
    return dict(setup=setup, flops=flops, runs=runs)


def run_pipeline_benchmark(args, cfg):
    from stan_mm.utils import benchmark as B
    pipeline = B.train_pipeline_from_config(cfg)
    tmp = None
    threads = torch.get_num_threads()
    try:   # (the temporary videos are removed also when writing them fails or is stopped)
        if args.videos:
            from stan_mm.apis.video import list_videos
            try:
                root, found = list_videos(args.videos)
            except (OSError, ValueError) as e:
                raise SystemExit(f'benchmark: {e}')
            videos = [os.path.join(root, v) for v in found[:args.num_videos]]
        else:
            folder = args.video_cache or tempfile.mkdtemp(prefix='stan_bench_videos_')
            tmp = None if args.video_cache else folder
            w, h = args.video_size
            print(f'... {args.num_videos} videos {w}x{h}, {args.video_frames} frames '
                  f'({args.video_codec}) in {folder} (written unless already there)',
                  flush=True)
            videos = B.write_benchmark_videos(folder, args.num_videos, w, h,
                                              args.video_frames, fps=args.video_fps,
                                              seed=args.seed, codec=args.video_codec)
        import cv2
        cv2.setNumThreads(0)     # mmengine's default env_cfg for data workers
        torch.set_num_threads(1)     # a DataLoader worker's torch runs one thread
        print(f'... pipeline: {args.pipeline_warmup} warm-up + {args.pipeline_repeats} '
              f'rounds over {len(videos)} videos', flush=True)
        if args.pipeline_workers > 1:
            print(f'... {args.pipeline_workers} pipeline workers at once', flush=True)
            res = B.parallel_pipeline_benchmark(pipeline, videos, args.pipeline_workers,
                                                args.pipeline_warmup, args.pipeline_repeats)
        else:
            res = B.pipeline_benchmark(pipeline, videos, args.pipeline_warmup,
                                       args.pipeline_repeats,
                                       compare_fast_paths=args.compare_fast_paths)
        res['videos'] = [dict(B.video_info(v), file=os.path.basename(v)) for v in videos]
        res['transforms'] = [t.get('type') for t in pipeline]
    finally:
        torch.set_num_threads(threads)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return res


# ----------------------------------------------------------------------------- printing
def _mb(n):
    return f'{n / 2**20:,.0f} MiB'


def format_model(res) -> str:
    s, f = res['setup'], res['flops']
    kw = s['kwargs']
    arch = kw.get('arch')
    if isinstance(arch, dict):
        v = arch.get('vision_cfg', {})
        arch = (f"custom (width {v.get('width')}, layers {v.get('layers')}, patch "
                f"{v.get('patch_size')})")
    lines = [f"CLIPSTAN vs CLIP mean pooling: arch {arch}, depth "
             f"{kw.get('depth', 4)}, temporal {kw.get('temporal_module', 'attn')}, "
             f"{s['frames']} frames {s['image_size'][0]}x{s['image_size'][1]}, batch "
             f"{s['batch']}, {s['device']}, amp {s['amp']}, threads {s['threads']}, "
             f"optimizer step {s['optim_step']}, torch.compile {s.get('compile', False)}, "
             f"fused AdamW {s.get('fused_adamw', False)}",
             f"FLOPs per clip (G multiply-accumulates): STAN {f['stan_macs'] / 1e9:.2f}, "
             f"CLIP {f['clip_macs'] / 1e9:.2f}, ratio {f['ratio']:.4f}",
             f"{'mode':<8}{'ckpt':<6}{'model':<6}{'clips/s':>10}"
             f"{'  s/step (median [min, max])':<28}{'cpu s/step':>12}{'peak mem':>18}"
             f"{'MFU':>8}"]
    for run in res['runs']:
        for name in ('stan', 'clip'):
            e = run[name]
            t = e['time_s']
            cpu = f"{e['cpu_time_s']['median']:.3f}" if 'cpu_time_s' in e else '-'
            mem = e.get('memory')
            mem_s = _mb(mem.get('peak_alone', mem['delta'])) if mem else '-'
            mfu = f"{100 * e['mfu']:.1f}%" if 'mfu' in e else '-'
            lines.append(f"{run['mode']:<8}{'on' if run['grad_checkpointing'] else 'off':<6}"
                         f"{name.upper():<6}{e['clips_per_s']:>10.3f}"
                         f"{t['median']:>12.3f} [{t['min']:.3f}, {t['max']:.3f}]".ljust(58)
                         + f"{cpu:>12}{mem_s:>18}{mfu:>8}")
        r = run['time_ratio']
        line = (f"  -> time ratio STAN/CLIP {r['median']:.3f} (per-round range "
                f"{r['min']:.3f}-{r['max']:.3f}), FLOPs ratio {run['flops_ratio']:.3f}, "
                f"time/FLOPs {run['time_over_flops']:.3f}")
        if 'cpu_time_ratio' in run:
            c = run['cpu_time_ratio']
            line += (f"; CPU-time ratio {c['median']:.3f} ({c['min']:.3f}-{c['max']:.3f}), "
                     f"CPU-time/FLOPs {run['cpu_time_over_flops']:.3f}")
        lines.append(line)
    if any('memory' in run['stan'] for run in res['runs']):
        lines.append('peak mem: ' + (
            'parameters + optimizer state + input + (max_memory_allocated over one step - '
            'memory allocated before it), i.e. the model alone on the device'
            if s['device'].startswith('cuda') else
            'resident memory one step adds (peak RSS of the step - RSS before it, measured '
            'in a child process)'))
    return '\n'.join(lines)


def format_pipeline(res) -> str:
    v = res['videos'][0]
    workers = res.get('workers', 1)
    header = (f"data pipeline ({' > '.join(res['transforms'])}) on {res['num_videos']} "
              f"videos {v['width']}x{v['height']}, {v['frames']} frames, "
              f"{res['frames_per_clip']} frames per clip, "
              + (f'{workers} worker processes at once' if workers > 1 else 'single process'))
    if 'aggregate' in res:
        a = res['aggregate']
        return '\n'.join([
            header,
            f"  train pipeline {a['pipeline_clips_per_s']:.1f} clips/s, bare decord "
            f"{a['bare_clips_per_s']:.1f} clips/s (sums over the workers)",
            f"  -> overhead pipeline/bare {a['overhead']:.3f}; per worker (paired rounds) "
            + ', '.join(f'{x:.3f}' for x in res['overhead_per_worker'])])
    o, co = res['overhead'], res['cpu_overhead']
    extra = []
    if 'without_fast_paths' in res:
        w, r, rc = (res['without_fast_paths'], res['fast_paths_time_ratio'],
                    res['fast_paths_cpu_ratio'])
        extra = [f"  without stan_mm's fast paths {w['clips_per_s']:.1f} clips/s, overhead "
                 f"over bare {w['overhead']['median']:.3f} (CPU time "
                 f"{w['cpu_overhead']['median']:.3f}); time with / without "
                 f"{r['median']:.3f} ({r['min']:.3f}-{r['max']:.3f}), CPU time "
                 f"{rc['median']:.3f}"]
    return '\n'.join([
        header,
        f"  train pipeline {res['pipeline']['clips_per_s']:.1f} clips/s, bare decord "
        f"{res['bare']['clips_per_s']:.1f} clips/s",
        f"  -> overhead pipeline/bare {o['median']:.3f} (per-round range {o['min']:.3f}-"
        f"{o['max']:.3f}); CPU time {co['median']:.3f} ({co['min']:.3f}-{co['max']:.3f})",
        '  CPU ms per clip: ' + ', '.join(f'{name} {ms:.2f}'
                                          for name, ms in res['per_transform_cpu_ms'])
        + f"; bare decord {res['bare']['cpu_ms_per_clip']:.2f}"] + extra)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    import stan_mm  # noqa: F401  (registers models and transforms)
    from stan_mm.utils.benchmark import machine_info
    if bool(args.config) == bool(args.arch):
        print('benchmark: give either CONFIG or --arch', file=sys.stderr)
        return 2
    cfg = _load_config(args.config, args.cfg_options) if args.config else None
    pipe_cfg = (_load_config(args.pipeline_config, None, '--pipeline-config')
                if args.pipeline_config else cfg)
    out = dict(machine=machine_info(args.device), config=args.config,
               argv=list(sys.argv[1:] if argv is None else argv))

    def write(result) -> None:
        if args.out:
            # (atomic, through a unique temp file: a link planted at a fixed name would
            # have been written through)
            from stan_mm.engine.checkpoint_hook import atomic_write_bytes
            atomic_write_bytes(json.dumps(result, indent=1, default=str).encode(), args.out)

    def partial_model(model) -> None:
        # each finished setting is printed and saved at once: a run killed at a time
        # limit (the borrowed GPU machine's) keeps the rows it measured
        print(format_model(model), flush=True)
        write(dict(out, model=model, partial=True))

    if not args.skip_model:
        kwargs, frames = _model_setup(args, cfg)
        out['model'] = run_model_benchmark(args, kwargs, frames, on_run=partial_model)
        print(format_model(out['model']), flush=True)
    if not args.skip_pipeline:
        if pipe_cfg is None:
            print('(pipeline benchmark skipped: give CONFIG or --pipeline-config)')
        else:
            out['pipeline'] = run_pipeline_benchmark(args, pipe_cfg)
            print(format_pipeline(out['pipeline']), flush=True)
    try:
        out['machine']['loadavg_end'] = list(os.getloadavg())
    except OSError:
        pass
    if args.out:
        write(out)
        print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    parse_args()    # --help and a mistyped option answered before stan_mm is imported
    from stan_mm.utils.cli import run_tool    # (a missing _base_ file: one line, exit 2)
    sys.exit(run_tool(main, 'benchmark.py'))
