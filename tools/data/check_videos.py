#!/usr/bin/env python
"""Open and decode every video before a run, as the data pipelines read them, and list the
ones that fail (a broken file otherwise stops training when its sample is reached).

    # the videos of a config's splits (the files its datasets would read)
    python tools/data/check_videos.py --config configs/stan/k400_self_b16.py \
        --splits train val --workers 8 --out work_dirs/k400_bad_videos.txt
    # a folder (searched recursively), a text file with one path per line, or one video
    python tools/data/check_videos.py data/msrvtt/videos --workers 8

Per video: ``SafeDecordInit`` and ``SafeDecordDecode`` of the first, middle and last frame
(``--frames all``: every frame; much slower, finds damage anywhere). Prints each unreadable
video with the reason. ``--out`` writes their names as the source lists them, one per line:
relative to the folder or list file, or with ``--config`` to the dataset's video folder (the
first field of its list lines), so that they can be left out of a list. It is replaced once
the videos are checked (an error before that leaves it as it was; an interrupted check
removes it, as it would name the videos of an earlier run); an input of the run (the list,
the config, a split's annotation file) is refused as ``--out``::

    awk 'NR==FNR {bad[$0]; next} !($1 in bad)' bad.txt train_list.txt > train_list.ok.txt

An MMAction2 list of ``<video> <label>`` lines is checked through its config (its names are
relative to the dataset's ``data_prefix``). A split whose dataset is a ``ConcatDataset`` is
checked dataset by dataset, each with its own video folder and decoder settings. Exit status: 0 every video reads, 1 some do not,
2 a usage error (no such folder, a file that is neither a video nor a UTF-8 list, a labelled
list without --config, a config without the split, an --out that cannot be written).
"""
import argparse
import json
import os
import os.path as osp
import re
import sys
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

SHOWN = 20


def parse_args(argv=None):
    from stan_mm.utils.cli import ConfigOptionsAction, user_path
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('source', nargs='?', metavar='SOURCE', type=user_path,
                   help='a folder of videos (recursive), a text file with one video path '
                   'per line, or one video file (omit with --config)')
    p.add_argument('--config', type=user_path, help='check the videos of this config\'s datasets')
    p.add_argument('--splits', nargs='+', default=['train', 'val', 'test'],
                   choices=['train', 'val', 'test'],
                   help='with --config: the <split>_dataloader datasets (default: all three; '
                   'a split the config lacks is skipped)')
    p.add_argument('--cfg-options', nargs='+', action=ConfigOptionsAction, default={},
                   metavar='KEY=VALUE', help='override config entries (spaces in a value '
                   'are kept: "data_root=/data/my videos")')
    from stan_mm.apis.video_check import FRAME_MODES
    p.add_argument('--frames', choices=FRAME_MODES, default='ends',
                   help='decode the first, middle and last frame (default) or every frame')
    p.add_argument('--workers', type=int, default=1,
                   help='processes decoding at once (default 1); a video that crashes its '
                   'decoder is reported. 0: decode in this process (a crash ends the tool)')
    p.add_argument('--out', type=user_path,
                   help='write the unreadable videos\' paths here, one per line')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    args = p.parse_args(argv)
    if bool(args.source) == bool(args.config):
        p.error('give either SOURCE (a folder or a list file) or --config')
    if args.workers < 0:
        p.error(f'--workers must be >= 0, got {args.workers}')
    return args


LABELLED_LINE = re.compile(r'^\S+(\s+-?\d+)+\s*$')


def _refuse_labelled_list(source: str, root: str, found: List[str]) -> None:
    """A list of ``<video> <label>`` lines (MMAction2's) holds names relative to a dataset's
    video folder, which only the config knows."""
    if found and all(LABELLED_LINE.match(v) for v in found[:100]) and \
            not osp.exists(osp.join(root, found[0])):
        raise ValueError(f'{source} looks like an MMAction2 video list ("<video> <label>" '
                         f'lines, e.g. {found[0]!r}): its names are relative to the dataset\'s '
                         f'video folder (data_prefix). Check it through its config: '
                         f'--config CONFIG [--splits train val]')


def _name_under(path: str, folder: str) -> str:
    if '://' in path:
        return path[len(folder):].lstrip('/') if path.startswith(folder) else path
    rel = osp.relpath(path, folder)
    return path if rel.startswith('..') else rel


def _decord_inits() -> Tuple[str, ...]:
    from stan_mm.apis.video import SAFE_TRANSFORMS
    return ('DecordInit', SAFE_TRANSFORMS['DecordInit'])


def _init_args(pipeline) -> Optional[Dict]:
    """``SafeDecordInit`` arguments from a pipeline's decord init step (its storage and
    ``max_seconds``), or None."""
    for step in pipeline or []:
        if isinstance(step, dict) and step.get('type') in _decord_inits():
            return {k: v for k, v in step.items() if k not in ('type', 'num_threads')}
    return None


def _list_source(source: str) -> Tuple[str, List[str]]:
    """``(root, names)`` of SOURCE: a folder, a list file, or one video file
    (:func:`stan_mm.apis.video.list_videos`, which names a file that is neither a video nor
    a UTF-8 text list).

    Raises:
        CommandLineError: SOURCE is missing.
    """
    from stan_mm.apis.video import list_videos
    from stan_mm.utils.cli import CommandLineError
    if not osp.exists(source):
        raise CommandLineError(f'SOURCE {source!r}: no such folder, video or list file')
    # names as listed (--out lists them so): a name without an extension is read as the
    # decoder reads it, 'clip' if that file exists, else 'clip.mp4'
    return list_videos(source, option='SOURCE', resolve=False)


def videos_of(args, inputs: Optional[List[str]] = None) -> List[Tuple[str, str, Optional[Dict]]]:
    """``(path, name, init)`` of the videos to check, each once, in order: the absolute
    path (or URL); the name the source lists, relative to the folder or list file, or to
    the dataset's video folder (the first field of its list lines); the
    ``SafeDecordInit`` arguments of the split's pipeline (None for a folder or list).
    ``inputs``: a list that gets the files the run reads (list file, config, annotation
    files), which ``--out`` must not replace."""
    inputs = [] if inputs is None else inputs
    if args.source:
        root, found = _list_source(args.source)
        if osp.isfile(args.source):
            inputs.append(args.source)
            _refuse_labelled_list(args.source, root, found)
        return [(v if osp.isabs(v) else osp.join(root, v), v, None) for v in found]
    from mmengine.registry import init_default_scope
    from stan_mm.apis.video import dataset_cfg, dataset_cfgs, split_items
    from stan_mm.utils.cli import read_config
    inputs.append(args.config)
    cfg = read_config(args.config, '--config')
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmaction'))
    videos, seen = [], set()
    for split in args.splits:
        loader = cfg.get(f'{split}_dataloader')
        if not loader:
            print(f'check_videos: {args.config} has no {split}_dataloader; skipped',
                  file=sys.stderr)
            continue
        # (a loader without a dataset: split_items names it)
        leaves = dataset_cfgs(loader) or [loader.get('dataset')]
        for k, leaf in enumerate(leaves):
            # each dataset of a ConcatDataset (through any wrappers) on its own
            one = cfg.copy()
            one[f'{split}_dataloader'] = dict(loader, dataset=leaf)
            found = split_items(one, split, check_files=False)[0]
            ds = dataset_cfg(one[f'{split}_dataloader']) or {}
            ann = ds.get('ann_file')
            if isinstance(ann, str) and ann and '://' not in ann:
                inputs.append(ann if osp.isabs(ann) else osp.join(ds.get('data_root') or '',
                                                                  ann))
            prefix = osp.join(ds.get('data_root') or '',
                              (ds.get('data_prefix') or {}).get('video') or '')
            prefix = prefix if '://' in prefix else osp.abspath(prefix)
            init = _init_args(ds.get('pipeline'))
            part = f' (dataset {k + 1} of {len(leaves)})' if len(leaves) > 1 else ''
            print(f'{split}{part}: {len(found)} videos')
            videos += [(v, _name_under(v, prefix), init) for v in found
                       if not (v in seen or seen.add(v))]
    return videos


def _same_file(a: str, b: str) -> bool:
    try:
        return osp.samefile(a, b)
    except OSError:                  # (one of them is not there)
        return osp.realpath(a) == osp.realpath(b)


def main(argv=None) -> int:
    args = parse_args(argv)
    from stan_mm.utils.cli import CommandLineError, check_output_file
    try:
        if args.out:
            args.out = check_output_file(args.out, '--out')
    except CommandLineError as e:
        print(f'check_videos: error: {e}', file=sys.stderr)
        return 2
    import stan_mm  # noqa: F401  (registers datasets and transforms)
    from stan_mm.apis.video_check import check_videos
    inputs: List[str] = []
    try:
        videos = videos_of(args, inputs)
    except CommandLineError as e:
        print(f'check_videos: error: {e}', file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - no such folder / list / split, a bad config
        print(f'check_videos: error: cannot list the videos to check: '
              f'{type(e).__name__}: {e}', file=sys.stderr)
        return 2
    if not videos:
        print('check_videos: error: no videos to check', file=sys.stderr)
        return 2
    if args.out:
        same = [f for f in inputs if _same_file(args.out, f)]
        if same:
            print(f'check_videos: error: --out {args.out!r} is {same[0]!r}, an input of this '
                  f'run; give another file for the list of unreadable videos', file=sys.stderr)
            return 2
    names = {path: name for path, name, _ in videos}
    groups: Dict[str, list] = {}          # one run per decord init (storage, max_seconds)
    for path, _, init in videos:
        groups.setdefault(json.dumps(init, sort_keys=True, default=str), [init, []])[1] \
            .append(path)
    try:
        found = {}
        for init, paths in groups.values():
            found.update(check_videos(paths, args.frames, args.workers,
                                      progress=not args.no_progress, init=init))
    except KeyboardInterrupt:
        stale = ''
        if args.out and osp.isfile(args.out):
            os.remove(args.out)      # it lists the unreadable videos of an earlier run
            stale = f'; removed the --out list of an earlier run ({args.out})'
        print(f'check_videos: interrupted{stale}', file=sys.stderr)
        return 130
    bad = [(p, found[p]) for p, _, _ in videos if p in found]
    print(f'checked {len(videos)} videos ({args.frames} frames): {len(bad)} unreadable')
    for path, reason in bad[:SHOWN]:
        print(f'  {path}: {reason}')
    if len(bad) > SHOWN:
        print(f'  ... and {len(bad) - SHOWN} more' + (f' (all in {args.out})' if args.out
                                                      else ' (--out FILE lists them all)'))
    if args.out:
        from stan_mm.engine.checkpoint_hook import atomic_write_bytes
        atomic_write_bytes(''.join(f'{names[p]}\n' for p, _ in bad).encode('utf-8'),
                           args.out)
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
