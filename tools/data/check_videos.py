#!/usr/bin/env python
"""Open and decode every video before a run, as the data pipelines read them, and list the
ones that fail (a broken file otherwise stops training when its sample is reached).

    # the videos of a config's splits (the files its datasets would read)
    python tools/data/check_videos.py --config configs/stan/k400_self_b16.py \
        --splits train val --workers 8 --out work_dirs/k400_bad_videos.txt
    # a folder (searched recursively) or a text file with one path per line
    python tools/data/check_videos.py data/msrvtt/videos --workers 8

Per video: ``SafeDecordInit`` and ``SafeDecordDecode`` of the first, middle and last frame
(``--frames all``: every frame; much slower, finds damage anywhere). Prints each unreadable
video with the reason; ``--out`` writes their paths, one per line (e.g. for
``grep -v -F -f bad.txt train_list.txt``). Exit status: 0 every video reads, 1 some do not,
2 a usage error (no such folder, a config without the split).
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

SHOWN = 20


def parse_args(argv=None):
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('source', nargs='?', help='a folder of videos (recursive) or a text file '
                   'with one video path per line (omit with --config)')
    p.add_argument('--config', help='check the videos of this config\'s datasets')
    p.add_argument('--splits', nargs='+', default=['train', 'val', 'test'],
                   choices=['train', 'val', 'test'],
                   help='with --config: the <split>_dataloader datasets (default: all three; '
                   'a split the config lacks is skipped)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                   metavar='KEY=VALUE', help='override config entries')
    p.add_argument('--frames', choices=['ends', 'all'], default='ends',
                   help='decode the first, middle and last frame (default) or every frame')
    p.add_argument('--workers', type=int, default=0,
                   help='processes decoding at once (default 0: this one)')
    p.add_argument('--out', help='write the unreadable videos\' paths here, one per line')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    args = p.parse_args(argv)
    if bool(args.source) == bool(args.config):
        p.error('give either SOURCE (a folder or a list file) or --config')
    if args.workers < 0:
        p.error(f'--workers must be >= 0, got {args.workers}')
    return args


def videos_of(args):
    """The absolute paths to check (each once, in order)."""
    if args.source:
        from stan_mm.apis.video import list_videos
        root, found = list_videos(args.source)
        return [osp.join(root, v) if not osp.isabs(v) else v for v in found]
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from stan_mm.apis.video import split_items
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmaction'))
    videos, seen = [], set()
    for split in args.splits:
        if not cfg.get(f'{split}_dataloader'):
            print(f'check_videos: {args.config} has no {split}_dataloader; skipped',
                  file=sys.stderr)
            continue
        found = split_items(cfg, split, check_files=False)[0]
        print(f'{split}: {len(found)} videos')
        videos += [v for v in found if not (v in seen or seen.add(v))]
    return videos


def main(argv=None) -> int:
    args = parse_args(argv)
    import stan_mm  # noqa: F401  (registers datasets and transforms)
    from stan_mm.apis.video_check import check_videos
    try:
        videos = videos_of(args)
    except (OSError, ValueError) as e:      # no such folder / list / config split
        print(f'check_videos: error: {e}', file=sys.stderr)
        return 2
    if not videos:
        print('check_videos: error: no videos to check', file=sys.stderr)
        return 2
    bad = check_videos(videos, args.frames, args.workers, progress=not args.no_progress)
    print(f'checked {len(videos)} videos ({args.frames} frames): {len(bad)} unreadable')
    for path, reason in bad[:SHOWN]:
        print(f'  {path}: {reason}')
    if len(bad) > SHOWN:
        print(f'  ... and {len(bad) - SHOWN} more' + (f' (all in {args.out})' if args.out
                                                      else ' (--out FILE lists them all)'))
    if args.out:
        from stan_mm.engine.checkpoint_hook import atomic_write_bytes
        atomic_write_bytes(''.join(f'{p}\n' for p, _ in bad).encode('utf-8'), args.out)
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
