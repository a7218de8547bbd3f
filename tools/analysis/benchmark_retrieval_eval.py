"""Time and peak memory of the chunked retrieval evaluation on random embeddings.

    python tools/analysis/benchmark_retrieval_eval.py [--num-texts 100000] \
        [--num-videos 100000] [--dim 512] [--bank 10000] [--chunk-size 256] [--threads 2] \
        [--configs plain dsl qb dsl_qb] [--device cpu] [--noise 6.0] \
        [--out benchmark_retrieval_eval.json]

Every configuration runs in a fresh subprocess (``--worker``), so its peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, the high-water mark of the process) is its
own. A worker: imports ``stan_mm`` (MMAction2 included: that is what a user's process holds),
builds L2-normalized random embeddings (videos ``[Nv, E]``, one noisy caption per video
``[Nt, E]``, bank captions ``[Nb, E]``), then times
``retrieval_metrics_from_embeddings`` (t2v and v2t). Reported per configuration:
``seconds`` (evaluation only), ``peak_rss_mb`` (whole process), ``rss_before_eval_mb`` (peak
before the evaluation started: interpreter, libraries and the embeddings) and
``eval_extra_mb`` (the difference: what the evaluation itself added). A table is printed
and everything is written to ``--out`` as JSON.
"""
import argparse
import json
import os
import subprocess
import sys
import time

CONFIGS = {
    'plain': dict(dsl=False, qb=False),
    'dsl': dict(dsl=True, qb=False),
    'qb': dict(dsl=False, qb=True),
    'dsl_qb': dict(dsl=True, qb=True),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--num-texts', type=int, default=100_000)
    parser.add_argument('--num-videos', type=int, default=100_000)
    parser.add_argument('--dim', type=int, default=512)
    parser.add_argument('--bank', type=int, default=10_000, help='querybank texts')
    parser.add_argument('--chunk-size', type=int, default=256)
    parser.add_argument('--threads', type=int, default=2, help='torch / BLAS threads')
    parser.add_argument('--configs', nargs='+', default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--noise', type=float, default=6.0,
                        help='norm of the noise added to a video embedding to make its caption '
                             '(6.0 at dim 512 and 100k videos leaves R@1 well below 100)')
    parser.add_argument('--out', type=os.path.expanduser,
                        default='benchmark_retrieval_eval.json')
    parser.add_argument('--worker', choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    problem = check_args(args)
    if problem:   # before any worker starts: one line, exit 2, no JSON written
        parser.exit(2, f'{parser.prog}: error: {problem}\n')
    return args


def check_args(args):
    """What is wrong with the numbers of ``args`` (one line), or None; and, outside a
    worker, an ``--out`` that cannot be written (a folder, a folder through a file)."""
    for flag, value in (('--num-texts', args.num_texts), ('--num-videos', args.num_videos),
                        ('--dim', args.dim), ('--chunk-size', args.chunk_size),
                        ('--threads', args.threads)):
        if value < 1:
            return f'{flag} must be >= 1, got {value}'
    if args.num_texts < args.num_videos:
        return (f'--num-texts must be >= --num-videos (every video needs a caption), got '
                f'{args.num_texts} < {args.num_videos}')
    qb = [c for c in (args.worker and [args.worker] or args.configs) if CONFIGS[c]['qb']]
    if qb and args.bank < 1:
        return f'--bank must be >= 1 for the querybank configs ({" ".join(qb)}), got {args.bank}'
    if args.bank < 0:
        return f'--bank must be >= 0, got {args.bank}'
    if not args.noise >= 0:     # (also NaN)
        return f'--noise must be >= 0, got {args.noise}'
    if not args.worker:
        from stan_mm.utils.cli import CommandLineError, check_output_file
        try:
            check_output_file(args.out, '--out')
        except CommandLineError as e:
            return str(e)
    return None


def _peak_mb() -> float:
    # (ru_maxrss: KiB on Linux, bytes on macOS: stan_mm.utils.benchmark.maxrss_bytes)
    from stan_mm.utils.benchmark import maxrss_bytes
    return maxrss_bytes() / 2**20


def _normalized_randn(rows, dim, gen, device, base=None, base_index=None, noise=1.0,
                      block=8192):
    """``[rows, dim]`` L2-normalized float32, built in blocks to keep temporaries small."""
    import torch
    out = torch.empty(rows, dim, device=device)
    for start in range(0, rows, block):
        stop = min(start + block, rows)
        x = torch.randn(stop - start, dim, generator=gen) * noise
        if base is not None:
            x += base[base_index[start:stop]].cpu()
        out[start:stop] = torch.nn.functional.normalize(x, dim=1).to(device)
    return out


def worker(args) -> dict:
    import torch
    torch.set_num_threads(args.threads)
    import stan_mm  # noqa: F401
    from stan_mm.evaluation import retrieval_metrics_from_embeddings

    cfg = CONFIGS[args.worker]
    gen = torch.Generator().manual_seed(args.seed)
    nt, nv = args.num_texts, args.num_videos
    t2v = torch.arange(nt) % nv  # every video has a caption when nt >= nv
    if nt < nv:
        raise SystemExit('--num-texts must be >= --num-videos (every video needs a caption)')
    video = _normalized_randn(nv, args.dim, gen, args.device)
    # caption = its video (unit norm) + Gaussian noise of norm ~args.noise
    text = _normalized_randn(nt, args.dim, gen, args.device, base=video, base_index=t2v,
                             noise=args.noise / args.dim ** 0.5)
    bank = _normalized_randn(args.bank, args.dim, gen, args.device) if cfg['qb'] else None
    rss_before = _peak_mb()
    start = time.perf_counter()
    metrics = retrieval_metrics_from_embeddings(
        text, video, t2v, dsl=cfg['dsl'], qb_bank_emb=bank, chunk_size=args.chunk_size)
    # (the device asked for: without it both calls would mean the current device, GPU 0,
    # and --device cuda:1 reported GPU 0's peak)
    cuda = torch.device(args.device) if args.device.startswith('cuda') else None
    if cuda is not None:
        torch.cuda.synchronize(cuda)
    seconds = time.perf_counter() - start
    peak = _peak_mb()
    result = dict(config=args.worker, seconds=round(seconds, 2), peak_rss_mb=round(peak, 1),
                  rss_before_eval_mb=round(rss_before, 1),
                  eval_extra_mb=round(peak - rss_before, 1), metrics=metrics)
    if cuda is not None:
        result['cuda_peak_mb'] = round(torch.cuda.max_memory_allocated(cuda) / 2 ** 20, 1)
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads))
    settings = dict(num_texts=args.num_texts, num_videos=args.num_videos, dim=args.dim,
                    bank=args.bank, chunk_size=args.chunk_size, threads=args.threads,
                    device=args.device, seed=args.seed, noise=args.noise)
    print('settings: ' + json.dumps(settings), flush=True)
    results = []
    for name in args.configs:
        cmd = [sys.executable, os.path.abspath(__file__), '--worker', name]
        for key in ('num_texts', 'num_videos', 'dim', 'bank', 'chunk_size', 'threads',
                    'device', 'seed', 'noise'):
            cmd += [f'--{key.replace("_", "-")}', str(getattr(args, key))]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(f'{name}: worker failed (exit {proc.returncode})\n{proc.stderr[-3000:]}',
                  file=sys.stderr)
            results.append(dict(config=name, error=proc.stderr[-3000:]))
            continue
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(result)
        print(f"{name}: {result['seconds']} s, peak RSS {result['peak_rss_mb']} MB", flush=True)
    header = f"{'config':8s} {'seconds':>9s} {'peak RSS MB':>12s} {'before eval MB':>15s} " \
             f"{'eval adds MB':>13s} {'t2v_R1':>7s} {'v2t_R1':>7s}"
    print(header)
    for r in results:
        if 'error' in r:
            print(f"{r['config']:8s} failed")
            continue
        print(f"{r['config']:8s} {r['seconds']:9.1f} {r['peak_rss_mb']:12.1f} "
              f"{r['rss_before_eval_mb']:15.1f} {r['eval_extra_mb']:13.1f} "
              f"{r['metrics']['t2v_R1']:7.2f} {r['metrics']['v2t_R1']:7.2f}")
    with open(args.out, 'w') as f:
        json.dump(dict(settings=settings, results=results), f, indent=2)
    print(f'written: {args.out}')
    return 0 if all('error' not in r for r in results) else 1


if __name__ == '__main__':
    sys.exit(main())
