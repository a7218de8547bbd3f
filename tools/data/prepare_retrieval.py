"""Validate a retrieval dataset folder and optionally write MMAction2 VideoTextDataset JSON.

``RetrievalVideoTextDataset`` reads the CLIP4Clip annotation files directly, so no
conversion is needed to train or test with stan-mm. This tool checks a split before a
long run and converts it for users of MMAction2's own ``VideoTextDataset``::

    python tools/data/prepare_retrieval.py msrvtt data/msrvtt/MSRVTT_JSFUSION_test.csv \\
        --video-root data/msrvtt/videos [--out-json data/msrvtt/test_jsfusion.json]
    python tools/data/prepare_retrieval.py msrvtt data/msrvtt/MSRVTT_train.9k.csv \\
        --caption-file data/msrvtt/MSRVTT_data.json --video-root data/msrvtt/videos
    python tools/data/prepare_retrieval.py didemo data/didemo/test_list.txt \\
        --caption-file data/didemo/test_data.json --video-root data/didemo/videos \\
        --video-lookup scan
    python tools/data/prepare_retrieval.py lsmdc data/lsmdc/LSMDC16_annos_training.csv \\
        --video-root data/lsmdc/avi
    python tools/data/prepare_retrieval.py msvd data/msvd/test_list.txt \\
        --caption-file data/msvd/raw-captions.pkl --video-root data/msvd/YouTubeClips

The report gives the numbers of videos and captions, captions per video, caption lengths
(words, characters), non-ASCII and repeated captions, every annotation issue (empty
captions, videos listed twice (also under two ids that name one path), captions of videos outside the split, videos without
captions: located by file and line) and the videos whose file is missing under
``--video-root`` (all of them with ``--list-missing``). Malformed records stop the tool
with the file and line. Exit status: 0 clean, 1 issues or missing videos, 2 malformed
files or a usage error (a ``--video-root`` that is not a folder, an ``--out-json`` that
cannot be written or would hold no video).

``--out-json`` writes ``{"<video file relative to --video-root>": ["caption", ...]}``
(issues dropped; missing videos dropped too with ``--drop-missing``), replacing the file
in one step; a JSON without any video (every file missing under a wrong ``--video-root``)
is not written, and the file there before is kept. Note that
MMAction2's ``VideoTextDataset`` makes one sample per caption and its
``RetrievalMetric`` assumes one caption per video, so a multi-caption TEST split (MSVD,
MSR-VTT with all captions) only makes sense with ``RetrievalVideoTextDataset``.
"""
import argparse
import json
import os.path as osp
import sys
from typing import Dict, List, Optional

from stan_mm.datasets.readers import ANN_FORMATS, read_annotations
from stan_mm.datasets.readers_common import AnnotationError, AnnotationPolicy, IssueLog
from stan_mm.datasets.retrieval import VIDEO_EXTS, drop_same_file_entries, locate_videos

ISSUE_KINDS = ('empty_caption', 'duplicate_video', 'unknown_video',
               'video_without_captions')


def _stats(values: List[int]) -> str:
    if not values:
        return 'n/a'
    return (f'min {min(values)}, mean {sum(values) / len(values):.1f}, '
            f'max {max(values)}')


def validate(ann_format: str, ann_file: str, caption_file: Optional[str] = None,
             video_root: Optional[str] = None, video_tmpl: Optional[str] = None,
             video_lookup: str = 'template', paragraph_sep: str = ' ') -> Dict:
    """Read a split leniently and gather the report.

    Returns:
        dict: ``entries`` (list of VideoEntry, issues dropped), ``issues`` (kind -> list
        of located messages), ``missing`` (video ids without a file; ``None`` when no
        ``video_root``) and summary numbers.

    Raises:
        AnnotationError: a malformed record (file, line, field in the message).
    """
    log = IssueLog(AnnotationPolicy(*(['drop'] * 4)))
    entries = read_annotations(ann_format, ann_file, caption_file, video_tmpl=video_tmpl,
                               paragraph_sep=paragraph_sep, issues=log)
    missing = None
    if video_root is not None:
        missing = [e.video_id for e in locate_videos(entries, video_root, video_lookup,
                                                     VIDEO_EXTS, check_files=True)]
    # two ids naming one path (``a.mp4`` and ``./a.mp4``): the later one dropped (links to
    # one file: a warning)
    entries = drop_same_file_entries(entries, log, ann_file, video_root,
                                     check_links=video_root is not None)
    captions = [c for e in entries for c in e.captions]
    return dict(
        entries=entries,
        issues={k: log.messages(k) for k in ISSUE_KINDS if log.count(k)},
        missing=missing,
        num_videos=len(entries),
        num_captions=len(captions),
        captions_per_video=[len(e.captions) for e in entries],
        words=[len(c.split()) for c in captions],
        chars=[len(c) for c in captions],
        non_ascii=sum(not c.isascii() for c in captions),
        repeated=sum(len(e.captions) - len(set(e.captions)) for e in entries),
    )


def format_report(report: Dict, ann_file: str, list_missing: bool = False) -> str:
    lines = [f'== {ann_file}',
             f'videos: {report["num_videos"]}',
             f'captions: {report["num_captions"]}',
             f'captions per video: {_stats(report["captions_per_video"])}',
             f'caption words: {_stats(report["words"])}',
             f'caption characters: {_stats(report["chars"])}',
             f'non-ASCII captions: {report["non_ascii"]}',
             f'repeated captions within a video (kept): {report["repeated"]}']
    for kind, msgs in report['issues'].items():
        lines.append(f'{kind}: {len(msgs)} (left out)')
        lines.extend('  ' + m for m in msgs[:None if list_missing else 20])
        if not list_missing and len(msgs) > 20:
            lines.append(f'  ... and {len(msgs) - 20} more (--list-missing lists all)')
    missing = report['missing']
    if missing is None:
        lines.append('video files: not checked (no --video-root)')
    else:
        lines.append(f'missing video files: {len(missing)}')
        shown = missing if list_missing else missing[:20]
        lines.extend('  ' + vid for vid in shown)
        if len(shown) < len(missing):
            lines.append(f'  ... and {len(missing) - len(shown)} more (--list-missing)')
    return '\n'.join(lines)


def video_text_json(entries, skip_ids=()) -> Dict[str, List[str]]:
    """``{video file: [caption, ...]}`` of ``entries`` but ``skip_ids``."""
    skip = set(skip_ids)
    return {e.filename: list(e.captions) for e in entries if e.video_id not in skip}


def write_video_text_json(entries, out: str, skip_ids=()) -> int:
    """Write MMAction2 VideoTextDataset JSON (atomically: a reader, or an interrupt, never
    meets a half-written file); returns the number of videos written."""
    from stan_mm.engine.checkpoint_hook import atomic_write_bytes
    data = video_text_json(entries, skip_ids)
    atomic_write_bytes(json.dumps(data, ensure_ascii=False, indent=1).encode('utf-8'), out)
    return len(data)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('format', choices=ANN_FORMATS)
    # (paths: a leading ~ expanded, as stan_mm.utils.cli.user_path)
    p.add_argument('ann_file', type=osp.expanduser,
                   help='split file (csv / *_list.txt / json)')
    p.add_argument('--caption-file', type=osp.expanduser,
                   help='MSRVTT_data.json, {split}_data.json or raw-captions.pkl')
    p.add_argument('--video-root', type=osp.expanduser,
                   help='folder of the videos (enables the file check)')
    p.add_argument('--video-tmpl', help='file name template, e.g. "{video_id}.mp4", '
                   '"{stem}.mp4", "{movie}/{video_id}.avi" (default: per format)')
    p.add_argument('--video-lookup', choices=('template', 'scan'), default='template')
    p.add_argument('--paragraph-sep', default=' ', help='DiDeMo paragraph separator')
    p.add_argument('--out-json', type=osp.expanduser,
                   help='write MMAction2 VideoTextDataset JSON here')
    p.add_argument('--drop-missing', action='store_true',
                   help='leave videos without a file out of --out-json')
    p.add_argument('--list-missing', action='store_true',
                   help='list every missing video and issue (default: first 20)')
    return p.parse_args(argv)


def _error(message: str) -> int:
    print(f'prepare_retrieval: error: {message}', file=sys.stderr)
    return 2


def main(argv=None) -> int:
    from stan_mm.utils.cli import CommandLineError, check_output_file
    args = parse_args(argv)
    if args.video_lookup == 'scan' and args.video_root is None:
        return _error('--video-lookup scan needs --video-root')
    if args.video_root is not None and not osp.isdir(args.video_root):
        # (a mistyped folder would report every video missing, and --drop-missing would
        # write a JSON without any)
        return _error(f'--video-root {args.video_root!r} is not a folder' + (
            ' (it is a file)' if osp.exists(args.video_root) else ' (no such folder)'))
    if args.out_json:
        try:
            check_output_file(args.out_json, '--out-json')
        except CommandLineError as e:
            return _error(str(e))
    try:
        report = validate(args.format, args.ann_file, args.caption_file, args.video_root,
                          args.video_tmpl, args.video_lookup, args.paragraph_sep)
    except (ValueError, OSError) as e:
        # AnnotationError is a ValueError; usage errors (a missing --caption-file, a bad
        # --video-tmpl) are ValueErrors too: all exit 2, never 1 ("data issues")
        print(f'prepare_retrieval: error: {e}', file=sys.stderr)
        return 2
    print(format_report(report, args.ann_file, args.list_missing))
    if args.out_json:
        skip = report['missing'] if (args.drop_missing and report['missing']) else ()
        if not video_text_json(report['entries'], skip):
            if report['entries'] and skip:
                why = (f'all {len(report["entries"])} videos are missing under --video-root '
                       f'{args.video_root!r} (--drop-missing leaves them out); check the '
                       f'folder and --video-tmpl')
            else:
                why = 'no video of the split is left once the issues above are dropped'
            return _error(f'--out-json {args.out_json!r} not written: {why}' + (
                '; the file there is unchanged' if osp.exists(args.out_json) else ''))
        try:
            n = write_video_text_json(report['entries'], args.out_json, skip)
        except OSError as e:
            return _error(f'--out-json {args.out_json!r} cannot be written: '
                          f'{e.strerror or e}')
        print(f'wrote {n} videos to {args.out_json} (VideoTextDataset: '
              f'data_prefix=dict(video={osp.abspath(args.video_root or ".")!r}))')
    return 1 if (report['issues'] or report['missing']) else 0


if __name__ == '__main__':
    sys.exit(main())
