"""Kinetics-400 CSV annotations -> MMAction2 video lists and class names.

    python tools/data/build_k400_lists.py --train-csv data/kinetics400/annotations/train.csv \\
        --val-csv data/kinetics400/annotations/validate.csv --out-dir data/kinetics400 \\
        [--train-video-dir data/kinetics400/videos_train \\
         --val-video-dir data/kinetics400/videos_val] \\
        [--name-format '{youtube_id}_{time_start:06d}_{time_end:06d}.mp4']

The CSVs are the official ones: header ``label,youtube_id,time_start,time_end,split``
(extra columns such as ``is_cc`` are ignored). Writes into ``--out-dir``:

- ``train_list.txt``, ``val_list.txt``: ``<video file> <class id>`` per line (MMAction2
  ``VideoDataset``; paths relative to the split's video folder);
- ``classnames.txt``: the class names, one per line; class id = line number - 1. The order
  is the sorted set of train labels (MMAction2's Kinetics label map order), or the order of
  ``--classnames`` when given (to match an existing label map). A rerun keeps the
  ``classnames.txt`` already in ``--out-dir`` (the lists there use its ids); without one, a
  run with ``--val-csv`` alone sorts the val labels.

Video file names follow ``--name-format`` (Python format fields: ``youtube_id``,
``time_start``, ``time_end`` (ints), ``label``, ``label_dir`` (the label with spaces
replaced by underscores), ``split``); the default is the common
``<youtube_id>_<start:06d>_<end:06d>.mp4``; ``'{label_dir}/{youtube_id}_...'`` for class
folders. With ``--train-video-dir`` / ``--val-video-dir``, videos that are not there (many
YouTube videos are gone) are left out of the lists, counted and written to
``missing_<split>.txt``; a folder that holds none of a split's videos (a wrong
``--name-format``) stops the tool before anything is written. Malformed rows stop the tool
with the file and line number. Each file is replaced in one step (an interrupt leaves the
one there before). Exit status: 0 written, 2 an error (a malformed, missing or non-UTF-8
CSV or class list, a bad ``--name-format`` or ``--out-dir``: found before anything is
written).
"""
import argparse
import csv
import math
import os.path as osp
import sys
from typing import Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from list_files import (check_input_file, check_output_dir, make_output_dir,  # noqa: E402
                        not_utf8, refuse_empty_splits, write_lines, write_missing)

REQUIRED = ('label', 'youtube_id', 'time_start', 'time_end')
DEFAULT_NAME_FORMAT = '{youtube_id}_{time_start:06d}_{time_end:06d}.mp4'


class AnnotationError(ValueError):
    """A malformed CSV file or row (the message names the file and line)."""


Row = Dict[str, object]


def _int(value: str, where: str, field: str) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise AnnotationError(f'{where}: {field}={value!r} is not a number') from None
    if not math.isfinite(f) or f != int(f) or f < 0:
        raise AnnotationError(f'{where}: {field}={value!r} must be a non-negative whole '
                              f'number of seconds')
    return int(f)


def read_csv(path: str, flag: str = 'CSV') -> List[Row]:
    """Rows of a Kinetics CSV as dicts with ``label``, ``youtube_id``, ``time_start``,
    ``time_end`` (ints), ``split`` and ``line`` (1-based line number). ``flag``: the
    option that names the file, for the errors."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'{flag} {path!r}: Kinetics CSV not found')
    try:
        return _read_csv(path)
    except UnicodeDecodeError as e:
        raise not_utf8(path, flag, e) from None


def _read_csv(path: str) -> List[Row]:
    rows = []
    with open(path, newline='', encoding='utf-8-sig') as f:   # a BOM (Excel) is no header
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        absent = [c for c in REQUIRED if c not in header]
        if absent:
            raise AnnotationError(f'{path}: header {header} lacks columns {absent}; expected '
                                  f'label,youtube_id,time_start,time_end,split')
        reader.fieldnames = header
        for row in reader:
            where = f'{path}: line {reader.line_num}'
            if None in row or any(row.get(c) is None for c in REQUIRED):
                raise AnnotationError(f'{where}: expected {len(header)} comma-separated '
                                      f'fields ({",".join(header)})')
            label, yid = row['label'].strip(), row['youtube_id'].strip()
            if not label:
                raise AnnotationError(f'{where}: empty label')
            if not yid or any(c.isspace() for c in yid):
                raise AnnotationError(f'{where}: youtube_id {row["youtube_id"]!r} is empty '
                                      f'or contains whitespace')
            start = _int(row['time_start'], where, 'time_start')
            end = _int(row['time_end'], where, 'time_end')
            if end <= start:
                raise AnnotationError(f'{where}: time_end={end} is not after '
                                      f'time_start={start}')
            rows.append(dict(label=label, youtube_id=yid, time_start=start, time_end=end,
                             split=(row.get('split') or '').strip(), line=reader.line_num))
    if not rows:
        raise AnnotationError(f'{path}: no rows')
    return rows


def video_name(row: Row, name_format: str) -> str:
    fields = {k: row[k] for k in ('label', 'youtube_id', 'time_start', 'time_end', 'split')}
    fields['label_dir'] = str(row['label']).replace(' ', '_')
    try:
        name = name_format.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f'--name-format {name_format!r} is invalid ({e!r}); fields: '
                         f'{{youtube_id}}, {{time_start}}, {{time_end}} (ints), {{label}}, '
                         f'{{label_dir}}, {{split}}') from None
    if any(c in name for c in '\n\r') or ' ' in name:
        # MMAction2 list files are space-separated: a space would break the line.
        raise ValueError(f'video name {name!r} (from --name-format {name_format!r}) contains '
                         f'a space; MMAction2 list files are space separated. Use '
                         f'{{label_dir}} (spaces -> underscores) instead of {{label}}')
    return name


def read_classnames(path: str, flag: str = '--classnames') -> List[str]:
    check_input_file(path, flag, 'class-name file (one class per line)')
    try:
        with open(path, encoding='utf-8') as f:
            names = [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError as e:
        raise not_utf8(path, flag, e) from None
    if len(set(names)) != len(names):
        raise AnnotationError(f'{path}: duplicate class names')
    return names


def label_rows(rows: Sequence[Row], class_ids: Dict[str, int], path: str,
               name_format: str) -> List[Tuple[str, int]]:
    out, seen = [], {}
    for row in rows:
        if row['label'] not in class_ids:
            raise AnnotationError(f'{path}: line {row["line"]}: label {row["label"]!r} is not '
                                  f'one of the {len(class_ids)} classes')
        name = video_name(row, name_format)
        if name in seen:
            raise AnnotationError(f'{path}: lines {seen[name]} and {row["line"]} name the '
                                  f'same video {name!r}')
        seen[name] = row['line']
        out.append((name, class_ids[row['label']]))
    return out


def split_missing(items, video_dir: str):
    """-> (items whose video exists under ``video_dir``, missing file names)."""
    if not osp.isdir(video_dir):
        raise FileNotFoundError(f'video folder {video_dir} does not exist')
    present, missing = [], []
    for name, label in items:
        if osp.isfile(osp.join(video_dir, name)):
            present.append((name, label))
        else:
            missing.append(name)
    return present, missing


def build_lists(csvs: Dict[str, str], out_dir: str,
                name_format: str = DEFAULT_NAME_FORMAT,
                video_dirs: Optional[Dict[str, str]] = None,
                classnames: Optional[str] = None) -> Dict[str, Dict[str, int]]:
    """Write ``{split}_list.txt`` for each ``csvs`` entry (``{'train': path, 'val': path}``)
    and ``classnames.txt``; returns ``{split: {'written': n, 'missing': m}}``."""
    video_dirs = video_dirs or {}
    check_output_dir(out_dir, '--out-dir')
    rows = {split: read_csv(path, f'--{split}-csv') for split, path in csvs.items()}
    existing = osp.join(out_dir, 'classnames.txt')
    flag = '--classnames'
    if classnames is None and osp.isfile(existing):
        # a rerun keeps the class ids of the lists already there (a list not rebuilt now
        # holds them; a val CSV that lacks some classes, or an earlier --classnames order,
        # would otherwise renumber the classes under it)
        classnames, flag = existing, "--out-dir's class list"
        print(f'class order: {existing} (already there; --classnames to choose another, '
              f'or delete it for the sorted train labels)')
    if classnames is not None:
        names = read_classnames(classnames, flag)
    else:
        source = 'train' if 'train' in rows else next(iter(rows))
        names = sorted({r['label'] for r in rows[source]})
    class_ids = {n: i for i, n in enumerate(names)}
    labelled = {split: label_rows(rows[split], class_ids, csvs[split], name_format)
                for split in rows}
    # every check first (a bad video folder fails before anything is written)
    found = {split: split_missing(items, video_dirs[split]) if video_dirs.get(split)
             else (items, []) for split, items in labelled.items()}
    refuse_empty_splits(found, f'Check --name-format (now {name_format!r}; class folders: '
                               f"'{{label_dir}}/' + the file name) and the video folder")
    make_output_dir(out_dir, '--out-dir')
    write_lines(osp.join(out_dir, 'classnames.txt'), names)
    report = {}
    for split, (items, missing) in found.items():
        write_missing(out_dir, split, missing)
        write_lines(osp.join(out_dir, f'{split}_list.txt'),
                    [f'{name} {label}' for name, label in items])
        report[split] = {'written': len(items), 'missing': len(missing)}
    return report


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Build MMAction2 video lists and classnames.txt '
                                'from the official Kinetics-400 CSV files')
    # (paths: a leading ~ expanded, as stan_mm.utils.cli.user_path; the shell leaves
    # --out-dir=~/k400 as it is)
    p.add_argument('--train-csv', type=osp.expanduser,
                   help='train CSV (label,youtube_id,time_start,time_end,split)')
    p.add_argument('--val-csv', type=osp.expanduser, help='validation CSV (same columns)')
    p.add_argument('--out-dir', default='data/kinetics400', type=osp.expanduser,
                   help='where the lists go')
    p.add_argument('--name-format', default=DEFAULT_NAME_FORMAT,
                   help='video file name (Python format) relative to the video folder; '
                   f'default {DEFAULT_NAME_FORMAT!r}')
    p.add_argument('--train-video-dir', type=osp.expanduser,
                   help='check train videos exist here; missing ones are left out and '
                   'listed in missing_train.txt')
    p.add_argument('--val-video-dir', type=osp.expanduser,
                   help='same for the validation videos')
    p.add_argument('--classnames', type=osp.expanduser,
                   help='use this classnames file (one per line) for the class order '
                   'instead of the sorted train labels')
    args = p.parse_args(argv)
    if not args.train_csv and not args.val_csv:
        p.error('give --train-csv and/or --val-csv')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    csvs = {k: v for k, v in (('train', args.train_csv), ('val', args.val_csv)) if v}
    video_dirs = {'train': args.train_video_dir, 'val': args.val_video_dir}
    try:
        check_output_dir(args.out_dir, '--out-dir')
        for split, path in csvs.items():
            check_input_file(path, f'--{split}-csv', 'Kinetics CSV')
        if args.classnames:
            check_input_file(args.classnames, '--classnames',
                             'class-name file (one class per line)')
        for split, folder in video_dirs.items():
            if folder and not osp.isdir(folder):
                raise ValueError(f'--{split}-video-dir {folder!r} is not a folder')
        report = build_lists(csvs, args.out_dir, args.name_format, video_dirs,
                             args.classnames)
    except (OSError, ValueError) as e:   # (AnnotationError is a ValueError)
        print(f'build_k400_lists: error: {e}', file=sys.stderr)
        return 2
    for split, r in report.items():
        extra = (f', {r["missing"]} missing videos left out (see '
                 f'{osp.join(args.out_dir, f"missing_{split}.txt")})' if r['missing'] else '')
        print(f'{split}: {r["written"]} videos -> '
              f'{osp.join(args.out_dir, f"{split}_list.txt")}{extra}')
    print(f'classnames -> {osp.join(args.out_dir, "classnames.txt")}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
