"""Something-Something-v2 -> MMAction2 video lists and class names.

    python tools/data/build_ssv2_lists.py --anno-dir data/sthv2/annotations \\
        --out-dir data/sthv2 [--video-dir data/sthv2/videos] [--ext webm]

Reads the official annotation files (from the dataset's ``labels`` archive):

- ``labels.json``: ``{"Approaching something with your camera": "0", ...}``, class name
  (the template without brackets) -> class id as a string, ids 0..173;
- ``something-something-v2-train.json`` / ``-validation.json`` (the 20BN names; the
  current archive's ``train.json`` / ``validation.json`` are read when those are absent,
  ``--train`` / ``--val`` / ``--labels`` name any other files): a list of
  ``{"id": "78687", "label": "...", "template": "Holding [something] next to [something]",
  "placeholders": [...]}``; the video is ``<id>.webm``.

Writes into ``--out-dir``:

- ``train_list.txt``, ``val_list.txt``: ``<id>.<ext> <class id>`` per line
  (MMAction2 ``VideoDataset``, paths relative to the video folder);
- ``classnames.txt``: the 174 class names in id order, one per line, for the
  text-classifier head. A class name is its template with the placeholders left as plain
  words ("Holding something next to something"), which reads as a caption.

With ``--video-dir``, videos that are not there are left out of the lists, counted, and
written to ``missing_train.txt`` / ``missing_val.txt``. Malformed entries stop the tool
with the file, the entry index and its id. Each file is replaced in one step (an interrupt
leaves the one there before). Exit status: 0 written, 2 an error (a malformed or missing
annotation file, a bad ``--ext`` or ``--out-dir``: found before anything is written).
"""
import argparse
import json
import os.path as osp
import re
import sys
from typing import Dict, List, Sequence, Tuple

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from list_files import (check_input_file, check_output_dir, make_output_dir,  # noqa: E402
                        not_utf8, refuse_empty_splits, write_lines, write_missing)

SPLIT_FILES = {'train': 'something-something-v2-train.json',
               'val': 'something-something-v2-validation.json'}
#: the names of the current release's label archive (tried when SPLIT_FILES are absent)
SPLIT_FILES_NEW = {'train': 'train.json', 'val': 'validation.json'}


class AnnotationError(ValueError):
    """A malformed annotation file or entry (the message names the file and the entry)."""


def class_name(template: str) -> str:
    """``'Putting [something] onto [something]'`` -> ``'Putting something onto something'``
    (brackets dropped, whitespace squeezed). labels.json keys are already in this form."""
    return re.sub(r'\s+', ' ', template.replace('[', '').replace(']', '')).strip()


def _load_json(path: str, flag: str = 'annotation file'):
    """The JSON of ``path`` (``flag``: the option that names it, for the errors)."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'{flag} {path!r}: SSv2 annotation file not found')
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except UnicodeDecodeError as e:
        raise not_utf8(path, flag, e) from None
    except json.JSONDecodeError as e:
        raise AnnotationError(f'{path}: not valid JSON ({e})') from None


def check_ext(ext: str) -> str:
    """The video file extension without its dot (``webm``, ``.mp4`` -> ``mp4``)."""
    bare = ext.lstrip('.')
    if not bare or any(c.isspace() for c in bare) or '/' in bare:
        raise ValueError(f'--ext {ext!r}: give the video file extension, e.g. webm or mp4 '
                         f'(the list names <id>.<ext>)')
    return bare


def read_labels(path: str, flag: str = '--labels') -> List[str]:
    """labels.json -> class names in id order (index = class id)."""
    data = _load_json(path, flag)
    if not isinstance(data, dict) or not data:
        raise AnnotationError(f'{path}: expected a non-empty JSON object mapping class '
                              f'template -> class id string, got {type(data).__name__}')
    by_id: Dict[int, str] = {}
    for key, value in data.items():
        try:
            cid = int(value)
        except (TypeError, ValueError):
            raise AnnotationError(f'{path}: entry {key!r}: class id {value!r} is not an '
                                  f'integer (string)') from None
        name = class_name(key)
        if cid in by_id:
            raise AnnotationError(f'{path}: entries {by_id[cid]!r} and {key!r} share class '
                                  f'id {cid}')
        by_id[cid] = name
    ids = sorted(by_id)
    if ids != list(range(len(ids))):
        missing = sorted(set(range(max(ids) + 1)) - set(ids))
        raise AnnotationError(f'{path}: class ids must be 0..{len(ids) - 1} without gaps; '
                              f'missing {missing[:10]}, range {ids[0]}..{ids[-1]}')
    names = [by_id[i] for i in ids]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise AnnotationError(f'{path}: class names {dup[:5]} appear more than once')
    return names


def read_split(path: str, class_ids: Dict[str, int], flag: str = 'split file'
               ) -> List[Tuple[str, int]]:
    """A split file -> ``[(video id, class id)]`` in file order."""
    data = _load_json(path, flag)
    if not isinstance(data, list):
        raise AnnotationError(f'{path}: expected a JSON list of entries with "id" and '
                              f'"template", got {type(data).__name__}')
    out = []
    for i, entry in enumerate(data):
        where = f'{path}: entry {i}'
        if not isinstance(entry, dict):
            raise AnnotationError(f'{where}: expected an object, got {entry!r:.80}')
        if 'id' in entry:
            where += f' (id {entry["id"]!r})'
        for key in ('id', 'template'):
            if key not in entry:
                raise AnnotationError(f'{where}: missing field {key!r} (fields present: '
                                      f'{sorted(entry)})')
        vid = entry['id']
        if isinstance(vid, bool) or not isinstance(vid, (str, int)) or not str(vid).strip():
            raise AnnotationError(f'{where}: field "id" must be a non-empty string or '
                                  f'integer, got {vid!r}')
        vid = str(vid).strip()
        if any(c.isspace() for c in vid) or '/' in vid:
            raise AnnotationError(f'{where}: video id {vid!r} contains whitespace or "/"')
        template = entry['template']
        if not isinstance(template, str):
            raise AnnotationError(f'{where}: field "template" must be a string, got '
                                  f'{template!r}')
        name = class_name(template)
        if name not in class_ids:
            raise AnnotationError(f'{where}: template {template!r} ({name!r}) is not a class '
                                  f'of labels.json')
        out.append((vid, class_ids[name]))
    ids = [v for v, _ in out]
    if len(set(ids)) != len(ids):
        seen, dups = set(), []
        for v in ids:
            if v in seen:
                dups.append(v)
            seen.add(v)
        raise AnnotationError(f'{path}: video ids {dups[:5]} appear more than once')
    return out


def split_missing(items: Sequence[Tuple[str, int]], video_dir: str, ext: str):
    """-> (present items, missing file names)."""
    if not osp.isdir(video_dir):
        raise FileNotFoundError(f'--video-dir {video_dir} is not a folder')
    present, missing = [], []
    for vid, label in items:
        fname = f'{vid}.{ext}'
        if osp.isfile(osp.join(video_dir, fname)):
            present.append((vid, label))
        else:
            missing.append(fname)
    return present, missing


def build_lists(labels: str, splits: Dict[str, str], out_dir: str, ext: str = 'webm',
                video_dir: str = None) -> Dict[str, Dict[str, int]]:
    """Write ``{split}_list.txt`` for each ``splits`` entry (``{'train': path, ...}``) and
    ``classnames.txt``; returns ``{split: {'written': n, 'missing': m}}``."""
    ext = check_ext(ext)
    check_output_dir(out_dir, '--out-dir')
    names = read_labels(labels)
    class_ids = {n: i for i, n in enumerate(names)}
    parsed = {split: read_split(path, class_ids, f'--{split}')
              for split, path in splits.items()}
    # every check first (a bad video folder fails before anything is written)
    found = {split: split_missing(items, video_dir, ext) if video_dir is not None
             else (items, []) for split, items in parsed.items()}
    refuse_empty_splits(found, f'Check --ext (now {ext!r}; webm as distributed) and '
                               f'--video-dir')
    make_output_dir(out_dir, '--out-dir')
    write_lines(osp.join(out_dir, 'classnames.txt'), names)
    report = {}
    for split, (items, missing) in found.items():
        write_missing(out_dir, split, missing)
        write_lines(osp.join(out_dir, f'{split}_list.txt'),
                    [f'{vid}.{ext} {label}' for vid, label in items])
        report[split] = {'written': len(items), 'missing': len(missing)}
    return report


def default_split_file(anno_dir: str, split: str) -> str:
    """The split's JSON in ``anno_dir``: the 20BN / MMAction2 name
    (``something-something-v2-train.json``), else the current archive's (``train.json``)."""
    old, new = (osp.join(anno_dir, names[split]) for names in (SPLIT_FILES, SPLIT_FILES_NEW))
    return new if not osp.isfile(old) and osp.isfile(new) else old


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Build MMAction2 video lists and classnames.txt '
                                'from the official Something-Something-v2 JSON files')
    # (paths: a leading ~ expanded, as stan_mm.utils.cli.user_path; the shell leaves
    # --out-dir=~/sthv2 as it is)
    p.add_argument('--anno-dir', default='data/sthv2/annotations', type=osp.expanduser,
                   help='folder with labels.json and something-something-v2-*.json')
    p.add_argument('--labels', type=osp.expanduser,
                   help='labels.json (default: <anno-dir>/labels.json)')
    p.add_argument('--train', type=osp.expanduser,
                   help=f'train JSON (default: <anno-dir>/{SPLIT_FILES["train"]}, '
                   f'else <anno-dir>/{SPLIT_FILES_NEW["train"]})')
    p.add_argument('--val', type=osp.expanduser,
                   help=f'validation JSON (default: <anno-dir>/{SPLIT_FILES["val"]}, '
                   f'else <anno-dir>/{SPLIT_FILES_NEW["val"]})')
    p.add_argument('--out-dir', default='data/sthv2', type=osp.expanduser,
                   help='where the lists go')
    p.add_argument('--ext', default='webm',
                   help='video file extension (webm as distributed; mp4 if re-encoded)')
    p.add_argument('--video-dir', type=osp.expanduser,
                   help='check that every video exists here; missing ones are left out and '
                   'listed in missing_<split>.txt')
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    labels = args.labels or osp.join(args.anno_dir, 'labels.json')
    splits = {split: given or default_split_file(args.anno_dir, split)
              for split, given in (('train', args.train), ('val', args.val))}
    try:
        check_ext(args.ext)
        check_output_dir(args.out_dir, '--out-dir')
        for flag, given, path in (('--labels', args.labels, labels),
                                  ('--train', args.train, splits['train']),
                                  ('--val', args.val, splits['val'])):
            what = 'SSv2 annotation file' + ('' if given else
                                             f' (default of --anno-dir; or give {flag})')
            check_input_file(path, flag, what)
        report = build_lists(labels, splits, args.out_dir, args.ext, args.video_dir)
    except (OSError, ValueError) as e:   # (AnnotationError is a ValueError)
        print(f'build_ssv2_lists: error: {e}', file=sys.stderr)
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
