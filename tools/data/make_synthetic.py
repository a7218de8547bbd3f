#!/usr/bin/env python3
"""Generate the synthetic motion benchmark (real .mp4 videos + recognition/retrieval annotations).

Classes come in time-reversed pairs (moving left / right, up / down, rotating clockwise /
counterclockwise, growing / shrinking, appearing / disappearing), so a model that ignores frame
order (CLIP + mean pooling) is at chance within each pair. See stan_mm/datasets/synthetic.py.

Example::

    python tools/data/make_synthetic.py --out data/motion
    python tools/data/make_synthetic.py --out data/motion_tiny --num-train 40 --num-val 20 \
        --num-test 20 --pairs horizontal rotation
"""
import argparse
import os.path as osp
import sys
import time


def parse_args(argv=None):
    from stan_mm.datasets.synthetic import DEFAULT_PAIRS, MOTION_PAIRS
    parser = argparse.ArgumentParser(
        description='Generate the synthetic motion benchmark (time-reversed class pairs).')
    parser.add_argument('--out', required=True, type=osp.expanduser,
                        help='output directory, e.g. data/motion (a leading ~ is expanded)')
    parser.add_argument('--num-train', type=int, default=480, help='training videos')
    parser.add_argument('--num-val', type=int, default=160, help='validation videos')
    parser.add_argument('--num-test', type=int, default=160, help='test videos')
    parser.add_argument('--num-frames', type=int, default=16, help='frames per video')
    parser.add_argument('--size', type=int, default=64, help='frame side in pixels (even)')
    parser.add_argument('--fps', type=float, default=8.0, help='frame rate of the mp4 files')
    parser.add_argument('--pairs', nargs='+', default=list(DEFAULT_PAIRS),
                        choices=list(MOTION_PAIRS), help='motion pairs, in label order')
    parser.add_argument('--captions-per-video', type=int, default=5,
                        help='distinct captions per video (retrieval)')
    parser.add_argument('--no-twins', action='store_true',
                        help='sample every video independently instead of writing each '
                        'trajectory forward and backward')
    parser.add_argument('--seed', type=int, default=0, help='random seed')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace a synthetic dataset this tool made with other '
                        'parameters (a folder it did not make is never replaced)')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from stan_mm.datasets.synthetic import generate_motion_dataset
    start = time.perf_counter()
    meta = generate_motion_dataset(
        args.out, num_train=args.num_train, num_val=args.num_val, num_test=args.num_test,
        num_frames=args.num_frames, size=args.size, fps=args.fps, pairs=args.pairs,
        captions_per_video=args.captions_per_video, twins=not args.no_twins, seed=args.seed,
        overwrite=args.overwrite, progress=not args.quiet)
    elapsed = time.perf_counter() - start
    out = osp.abspath(args.out)
    counts = ', '.join(f"{split} {c['videos']}" for split, c in meta['counts'].items())
    print(f'{out}: {meta["num_classes"]} classes, videos: {counts} ({elapsed:.1f} s)')
    print(f'  chance top-1 {meta["chance_level"]:.3f}; any order-invariant model '
          f'<= {meta["order_invariant_ceiling"]:.2f}')
    print(f'  recognition: ann_file={osp.join(out, "train.txt")}, '
          f'data_prefix=dict(video={osp.join(out, meta["files"]["videos"])!r})')
    print(f'  retrieval:   {osp.join(out, "retrieval")}/{{train,val,test}}.json, '
          f'MSR-VTT layout in {osp.join(out, "msrvtt")}')
    return meta


if __name__ == '__main__':
    try:
        main()
    except (FileExistsError, ValueError) as e:
        sys.exit(f'make_synthetic.py: error: {e}')
