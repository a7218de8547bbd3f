"""Readers for the video-text retrieval annotations users already have.

Every reader returns the same structure, a list of :class:`VideoEntry` in split order::

    VideoEntry(video_id='video7020', filename='video7020.mp4',
               captions=['a woman creating a fondant baby', ...], source='file:line',
               extra={...})

and raises :class:`AnnotationError` (a ``ValueError`` carrying ``file``, ``line``,
``field``) for any malformed record. Formats (CLIP4Clip layout; see
``STAN_REFERENCE.md`` section 7):

- ``msrvtt``: ``ann_file`` ``MSRVTT_train.9k.csv`` (column ``video_id``) with
  ``caption_file`` ``MSRVTT_data.json`` (required); or ``MSRVTT_JSFUSION_test.csv``
  (``key,vid_key,video_id,sentence``) alone (the ``sentence`` column, one caption per
  row), or with ``MSRVTT_data.json`` for all json captions of the listed videos.
  Default ``video_tmpl``: ``{video_id}.mp4``.
- ``didemo``: ``{split}_list.txt`` with ``caption_file`` ``{split}_data.json``; or
  ``{split}_data.json`` alone (videos in order of first appearance). ``{video_id}``.
- ``lsmdc``: ``LSMDC16_annos_{training,val}.csv`` /
  ``LSMDC16_challenge_1000_publictect.csv`` alone. ``{movie}/{video_id}.avi``.
- ``msvd``: ``{split}_list.txt`` with ``caption_file`` ``raw-captions.pkl`` (required).
  ``{video_id}.avi``.
- ``json``: MMAction2 ``VideoTextDataset`` JSON ``{"video.mp4": ["caption", ...]}``
  alone. ``{video_id}`` (the key is the file name).

Rules (all documented behaviour, each covered by ``tests/test_retrieval_datasets.py``):

- Captions are stripped of surrounding whitespace and otherwise kept verbatim: case,
  punctuation, internal whitespace, non-ASCII characters and length are untouched (the
  tokenizer normalizes whitespace and truncates to its context length). Files are read as
  UTF-8 (a BOM is allowed); invalid UTF-8 fails with the line of the first bad byte.
- Repeated captions of one video are kept (MSR-VTT has identical captions from different
  annotators); each is a separate query.
- A video with several records: LSMDC clips and JSFusion rows are grouped per video in
  order of first appearance (captions in file order). A video repeated in a split LIST
  (csv of ids, ``*_list.txt``, repeated JSON key) is a ``duplicate_video`` issue; so are
  two ids that name one path (``a.mp4`` and ``./a.mp4``), found by the dataset
  once the files are located (:func:`~stan_mm.datasets.retrieval.drop_same_file_entries`).
- Policies (``'error'`` | ``'drop'``, see :class:`AnnotationPolicy`): ``empty_caption``
  (default error), ``duplicate_video`` (error), ``unknown_video`` (drop with a warning;
  only DiDeMo's split-specific ``{split}_data.json`` can have them),
  ``video_without_captions`` (error). All issues are reported together.
- DiDeMo: the descriptions of a video are joined, in file order, into ONE paragraph with
  ``paragraph_sep`` (default ``' '``, as CLIP4Clip). The moment ``times`` (5-second
  segment indices per annotator) are validated and kept in ``extra['moments']`` as
  seconds with CLIP4Clip's formula ``(mean(start) * 5, (mean(end) + 1) * 5)``; they are
  NOT used: paragraph-to-video retrieval reads the video's first 31 s whatever the
  paragraph (the DiDeMo configs' ``SafeDecordInit(max_seconds=31)``).
- LSMDC: six tab-separated fields ``clip_id start_al end_al start_ex end_ex sentence``
  (trailing empty fields are tolerated). The four times position the clip inside its
  MOVIE; the distributed ``.avi`` clips are already cut, so they are kept in
  ``extra['movie_times']`` (seconds, ``None`` if unparseable) and not used. Video path
  rule ``{movie}/{video_id}.avi`` with ``movie = clip_id.rsplit('_', 1)[0]``
  (``1004_Juno_00.00.32.849-00.00.38.210`` -> ``1004_Juno/...``), the folder layout of
  the LSMDC release. CLIP4Clip instead searches the video folder recursively for a file
  whose stem is the clip id: use the dataset's ``video_lookup='scan'`` for that.
- MSVD: each caption of ``raw-captions.pkl`` is a token list joined with single spaces
  (a plain string is accepted too). The pickle is loaded with a restricted unpickler
  (:func:`load_restricted_pickle`); ids of other splits are ignored.
"""
import math
import os.path as osp
import re
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional

from stan_mm.errors import ConfigValueError

from .readers_common import (AnnotationError, _json_path_str, AnnotationPolicy, IssueLog, JsonDocument,
                             VideoEntry, check_video_tmpl, clean_caption, clean_video_id,
                             format_video_path, has_visible_text, iter_csv_rows,
                             iter_text_lines, load_restricted_pickle, short_repr, type_name)

__all__ = [
    'ANN_FORMATS', 'DEFAULT_VIDEO_TMPL', 'read_annotations', 'read_msrvtt',
    'read_didemo', 'read_lsmdc', 'read_msvd', 'read_video_text_json',
]

DEFAULT_VIDEO_TMPL = {
    'msrvtt': '{video_id}.mp4',
    'didemo': '{video_id}',
    'lsmdc': '{movie}/{video_id}.avi',
    'msvd': '{video_id}.avi',
    'json': '{video_id}',
}
ANN_FORMATS = tuple(DEFAULT_VIDEO_TMPL)


class _SplitBuilder:
    """Accumulates the videos of a split and their captions, applying the policies."""

    def __init__(self, video_tmpl: str, issues: IssueLog):
        self.tmpl = video_tmpl
        self.issues = issues
        self.videos: 'OrderedDict[str, VideoEntry]' = OrderedDict()
        self._dropped_captions: Dict[str, int] = {}
        self._where: Dict[str, tuple] = {}  # video id -> (file, line or JSON path)

    def add_video(self, vid: str, file: str, where: Any, group: bool = False
                  ) -> VideoEntry:
        """Add a video of the split; a repeat is a duplicate (or merged if ``group``)."""
        if vid in self.videos:
            entry = self.videos[vid]
            if not group:
                self.issues.add('duplicate_video', file, where,
                                f'video {vid!r} already listed at {entry.source}')
            return entry
        entry = VideoEntry(video_id=vid, filename=format_video_path(self.tmpl, vid),
                           source=_source(file, where))
        self.videos[vid] = entry
        self._where[vid] = (file, where)
        return entry

    def add_caption(self, entry: VideoEntry, raw: Any, file: str, where: Any,
                    error: Callable[[str], AnnotationError],
                    field: Optional[str] = None) -> Optional[str]:
        cap = clean_caption(raw, error)
        if not cap or not has_visible_text(cap):
            what = 'empty caption' if not cap else \
                f'caption {cap!r} is empty once cleaned (HTML entities, control characters)'
            self.issues.add('empty_caption', file, where,
                            f'{what} for video {entry.video_id!r}', field=field)
            self._dropped_captions[entry.video_id] = (
                self._dropped_captions.get(entry.video_id, 0) + 1)
            return None
        entry.captions.append(cap)
        return cap

    def finish(self, file: str) -> List[VideoEntry]:
        out = []
        for entry in self.videos.values():
            if entry.captions:
                out.append(entry)
                continue
            why = (f' (its {self._dropped_captions[entry.video_id]} caption(s) are empty)'
                   if entry.video_id in self._dropped_captions else '')
            self.issues.add('video_without_captions', *self._where[entry.video_id],
                            f'video {entry.video_id!r} has no caption{why}')
        if not out and not any(self.issues.issues.values()):
            raise AnnotationError('no videos with captions found', file=file)
        return out


def _source(file: str, where: Any) -> str:
    if isinstance(where, tuple):
        # a JSON path: ``ann.json:./clip3.mp4`` for the key ``./clip3.mp4``
        return f'{osp.basename(file)}:{_json_path_str(where)}'
    return f'{osp.basename(file)}:{where}' if where is not None else osp.basename(file)


def _line_error(file: str, line: Optional[int], field: Optional[str] = None):
    return lambda msg: AnnotationError(msg, file=file, line=line, field=field)


def _run(reader: Callable, issues: Optional[IssueLog], policy: Optional[AnnotationPolicy],
         *args, **kwargs) -> List[VideoEntry]:
    """Call ``reader`` with an issue log; resolve it unless the caller owns it."""
    own = issues is None
    log = IssueLog(policy or AnnotationPolicy()) if own else issues
    entries = reader(*args, issues=log, **kwargs)
    if own:
        log.resolve()
        if not entries:
            raise AnnotationError('no videos with captions left after dropping',
                                  file=args[0])
    return entries


# ----------------------------------------------------------------------------- lists
def _read_id_list(path: str, builder: _SplitBuilder) -> None:
    """``*_list.txt``: one video id per line (blank lines skipped)."""
    for line_no, line in iter_text_lines(path):
        vid = clean_video_id(line, _line_error(path, line_no))
        builder.add_video(vid, path, line_no)


# ----------------------------------------------------------------------------- MSR-VTT
def _msrvtt(ann_file: str, caption_file: Optional[str], video_tmpl: str,
            issues: IssueLog) -> List[VideoEntry]:
    builder = _SplitBuilder(video_tmpl, issues)
    header, columns = None, {}
    pairs = []  # (line, video entry, sentence) of a pairs csv
    for line_no, row in iter_csv_rows(ann_file):
        if header is None:
            header = [c.strip().lstrip('\ufeff') for c in row]
            columns = {name: i for i, name in enumerate(header)}
            if 'video_id' not in columns:
                raise AnnotationError(
                    f'the header must contain a "video_id" column (got {header}); '
                    'expected MSRVTT_train.9k.csv (video_id) or MSRVTT_JSFUSION_test.csv '
                    '(key,vid_key,video_id,sentence)', file=ann_file, line=line_no)
            continue
        if len(row) != len(header):
            raise AnnotationError(
                f'expected {len(header)} fields ({",".join(header)}), got {len(row)}',
                file=ann_file, line=line_no)
        err = _line_error(ann_file, line_no, 'video_id')
        vid = clean_video_id(row[columns['video_id']], err)
        if 'sentence' in columns and caption_file is None:
            entry = builder.add_video(vid, ann_file, line_no, group=True)
            pairs.append((line_no, entry, row[columns['sentence']]))
        else:
            builder.add_video(vid, ann_file, line_no)
    if header is None:
        raise AnnotationError('empty file: expected a CSV header with a video_id column',
                              file=ann_file, line=1)
    if caption_file is None:
        if 'sentence' not in columns:
            raise AnnotationError(
                'this CSV lists video ids only; pass caption_file=MSRVTT_data.json to get '
                'their captions', file=ann_file, line=1)
        for line_no, entry, sentence in pairs:
            builder.add_caption(entry, sentence, ann_file, line_no,
                                _line_error(ann_file, line_no, 'sentence'),
                                field='sentence')
        return builder.finish(ann_file)

    doc = JsonDocument(caption_file)
    issues.register_json(caption_file, doc)
    data = doc.data
    if not isinstance(data, dict) or not isinstance(data.get('sentences'), list):
        raise doc.error((), 'expected an object with a "sentences" list '
                        '(MSRVTT_data.json: {"videos": [...], "sentences": [{"video_id", '
                        f'"caption"}}, ...]}}), got {type_name(data)}'
                        + (f' with keys {list(data)[:5]}' if isinstance(data, dict) else ''))
    for i, rec in enumerate(data['sentences']):
        path = ('sentences', i)
        if not isinstance(rec, dict):
            raise doc.error(path, f'expected an object, got {type_name(rec)}')
        for key in ('video_id', 'caption'):
            if key not in rec:
                raise doc.error(path, f'missing field "{key}"', field=key)
        vid = clean_video_id(rec['video_id'],
                             lambda m: doc.error(path, m, field='video_id'))
        entry = builder.videos.get(vid)
        if entry is None:
            continue  # MSRVTT_data.json holds all splits: other videos are expected
        builder.add_caption(entry, rec['caption'], caption_file, path,
                            lambda m: doc.error(path, m, field='caption'),
                            field='caption')
    return builder.finish(ann_file)


def read_msrvtt(ann_file: str, caption_file: Optional[str] = None, *,
                video_tmpl: str = DEFAULT_VIDEO_TMPL['msrvtt'],
                policy: Optional[AnnotationPolicy] = None,
                issues: Optional[IssueLog] = None) -> List[VideoEntry]:
    """Read an MSR-VTT split.

    Args:
        ann_file: ``MSRVTT_train.9k.csv`` (column ``video_id``; needs ``caption_file``) or
            ``MSRVTT_JSFUSION_test.csv`` (``key,vid_key,video_id,sentence``: one caption
            per row, the 1k-A test). Any CSV with a ``video_id`` column works.
        caption_file: ``MSRVTT_data.json`` (``sentences[{video_id, caption}]``). With a
            JSFusion CSV it replaces the ``sentence`` column: all json captions of the
            listed videos (the "full" 20-caption protocol).
        video_tmpl: file name template (default ``'{video_id}.mp4'``).
        policy / issues: see :class:`AnnotationPolicy` / :class:`IssueLog`.

    Returns:
        list[VideoEntry]: videos in CSV order, captions in file order.
    """
    return _run(_msrvtt, issues, policy, ann_file, caption_file,
                check_video_tmpl(video_tmpl))


# ----------------------------------------------------------------------------- DiDeMo
def _finite_number(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def _didemo_moment(times: Any, err) -> Optional[List[float]]:
    if not isinstance(times, list) or not times:
        raise err('"times" must be a non-empty list of [start, end] segment pairs, got '
                  + short_repr(times))
    starts, ends = [], []
    for t in times:
        if (not isinstance(t, list) or len(t) != 2
                or not all(_finite_number(v) for v in t)):
            raise err('each "times" item must be a [start, end] pair of finite numbers, '
                      'got ' + short_repr(t))
        starts.append(float(t[0]))
        ends.append(float(t[1]))
    return [sum(starts) / len(starts) * 5.0, (sum(ends) / len(ends) + 1.0) * 5.0]


def _didemo(ann_file: str, caption_file: Optional[str], video_tmpl: str,
            paragraph_sep: str, issues: IssueLog) -> List[VideoEntry]:
    builder = _SplitBuilder(video_tmpl, issues)
    if caption_file is None:
        data_file, listed = ann_file, False
    else:
        _read_id_list(ann_file, builder)
        data_file, listed = caption_file, True
    doc = JsonDocument(data_file)
    issues.register_json(data_file, doc)
    data = doc.data
    if not isinstance(data, list):
        raise doc.error((), 'expected a list of {"video", "description", "times"} '
                        f'objects (DiDeMo {{split}}_data.json), got {type_name(data)}')
    for i, rec in enumerate(data):
        path = (i,)
        if not isinstance(rec, dict):
            raise doc.error(path, f'expected an object, got {type_name(rec)}')
        for key in ('video', 'description'):
            if key not in rec:
                raise doc.error(path, f'missing field "{key}"', field=key)
        vid = clean_video_id(rec['video'], lambda m: doc.error(path, m, field='video'))
        moment = None
        if 'times' in rec:
            moment = _didemo_moment(rec['times'],
                                    lambda m: doc.error(path, m, field='times'))
        if listed:
            entry = builder.videos.get(vid)
            if entry is None:
                issues.add('unknown_video', data_file, path,
                           f'video {vid!r} is not in {osp.basename(ann_file)}',
                           field='video')
                continue
        else:
            entry = builder.add_video(vid, data_file, path, group=True)
        cap = builder.add_caption(entry, rec['description'], data_file, path,
                                  lambda m: doc.error(path, m, field='description'),
                                  field='description')
        if cap is not None:
            entry.extra.setdefault('descriptions', []).append(cap)
            entry.extra.setdefault('moments', []).append(moment)
    for entry in builder.videos.values():
        if entry.captions:  # one paragraph query per video
            entry.captions = [paragraph_sep.join(entry.captions)]
    return builder.finish(ann_file)


def read_didemo(ann_file: str, caption_file: Optional[str] = None, *,
                video_tmpl: str = DEFAULT_VIDEO_TMPL['didemo'], paragraph_sep: str = ' ',
                policy: Optional[AnnotationPolicy] = None,
                issues: Optional[IssueLog] = None) -> List[VideoEntry]:
    """Read a DiDeMo split as paragraph queries (one caption per video).

    Args:
        ann_file: ``{split}_list.txt`` (one video name per line) with ``caption_file``;
            or ``{split}_data.json`` alone (videos in order of first appearance).
        caption_file: ``{split}_data.json``: a list of ``{"video", "description",
            "times"}``; ``times`` is optional.
        video_tmpl: default ``'{video_id}'`` (DiDeMo ids are file names with their
            original extension); ``'{stem}.mp4'`` for videos converted to mp4.
        paragraph_sep: joins a video's descriptions, in file order (default ``' '``).

    Returns:
        list[VideoEntry]: ``captions == [paragraph]``; ``extra['descriptions']`` and
        ``extra['moments']`` (``[start_s, end_s]`` or ``None`` per description).
    """
    if not isinstance(paragraph_sep, str):
        raise ValueError(f'paragraph_sep must be a str, got {paragraph_sep!r}')
    return _run(_didemo, issues, policy, ann_file, caption_file,
                check_video_tmpl(video_tmpl), paragraph_sep)


# ----------------------------------------------------------------------------- LSMDC
_LSMDC_FIELDS = ('clip_id', 'start_aligned', 'end_aligned', 'start_extracted',
                 'end_extracted', 'sentence')
_LSMDC_TIME = re.compile(r'^([0-9]{1,6})\.([0-9]{1,2})\.([0-9]{1,2})(?:\.([0-9]{1,9}))?$')


def _lsmdc_seconds(text: str) -> Optional[float]:
    """``'01.02.03.450'`` (h.m.s.ms, LSMDC) or a plain number -> seconds; else None."""
    text = text.strip()
    m = _LSMDC_TIME.match(text)
    if m:
        h, mi, s, frac = m.groups()
        return int(h) * 3600 + int(mi) * 60 + int(s) + (float('0.' + frac) if frac else 0.)
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _lsmdc(ann_file: str, video_tmpl: str, issues: IssueLog) -> List[VideoEntry]:
    builder = _SplitBuilder(video_tmpl, issues)
    for line_no, line in iter_text_lines(ann_file):
        fields = line.split('\t')
        while len(fields) > 6 and not fields[-1].strip():
            fields.pop()
        if len(fields) != 6:
            raise AnnotationError(
                f'expected 6 tab-separated fields ({" ".join(_LSMDC_FIELDS)}), got '
                f'{len(fields)}: {line!r:.120}', file=ann_file, line=line_no)
        vid = clean_video_id(fields[0], _line_error(ann_file, line_no, 'clip_id'))
        entry = builder.add_video(vid, ann_file, line_no, group=True)
        cap = builder.add_caption(entry, fields[5], ann_file, line_no,
                                  _line_error(ann_file, line_no, 'sentence'),
                                  field='sentence')
        if cap is not None:
            entry.extra.setdefault('movie_times', []).append(
                tuple(_lsmdc_seconds(f) for f in fields[1:5]))
    return builder.finish(ann_file)


def read_lsmdc(ann_file: str, *, video_tmpl: str = DEFAULT_VIDEO_TMPL['lsmdc'],
               policy: Optional[AnnotationPolicy] = None,
               issues: Optional[IssueLog] = None) -> List[VideoEntry]:
    """Read an LSMDC split (``LSMDC16_annos_{training,val}.csv``,
    ``LSMDC16_challenge_1000_publictect.csv``): tab-separated
    ``clip_id start_al end_al start_ex end_ex sentence``; sentences of a clip are grouped
    in file order (the 1000-clip test file has one per clip).

    Args:
        video_tmpl: default ``'{movie}/{video_id}.avi'``; ``'{video_id}.avi'`` for a flat
            folder.
    """
    return _run(_lsmdc, issues, policy, ann_file, check_video_tmpl(video_tmpl))


# ----------------------------------------------------------------------------- MSVD
def _msvd(ann_file: str, caption_file: str, video_tmpl: str,
          issues: IssueLog) -> List[VideoEntry]:
    builder = _SplitBuilder(video_tmpl, issues)
    _read_id_list(ann_file, builder)
    captions = load_restricted_pickle(caption_file)
    if not isinstance(captions, dict):
        raise AnnotationError(f'expected a dict {{video_id: [[token, ...], ...]}}, got '
                              f'{type_name(captions)}', file=caption_file)
    for vid, entry in builder.videos.items():
        if vid not in captions:
            continue  # reported by finish() as a video without captions
        caps = captions[vid]
        if not isinstance(caps, (list, tuple)):
            raise AnnotationError(f'expected a list of captions, got {type_name(caps)}',
                                  file=caption_file, field=vid)
        for j, cap in enumerate(caps):
            fld = f'{vid}[{j}]'
            err = _line_error(caption_file, None, fld)
            if isinstance(cap, (list, tuple)):
                for tok in cap:
                    if not isinstance(tok, str):
                        raise err('caption tokens must be strings, got '
                                  + short_repr(tok))
                cap = ' '.join(tok.strip() for tok in cap if tok.strip())
            builder.add_caption(entry, cap, caption_file, None, err, field=fld)
    return builder.finish(ann_file)


def read_msvd(ann_file: str, caption_file: str, *,
              video_tmpl: str = DEFAULT_VIDEO_TMPL['msvd'],
              policy: Optional[AnnotationPolicy] = None,
              issues: Optional[IssueLog] = None) -> List[VideoEntry]:
    """Read an MSVD split: ``{split}_list.txt`` + ``raw-captions.pkl`` (video id -> list
    of token lists, tokens joined with single spaces). Several captions per video (about
    40 on average). The pickle is loaded with :func:`load_restricted_pickle`.
    """
    if caption_file is None:
        raise ValueError('MSVD needs caption_file=raw-captions.pkl')
    return _run(_msvd, issues, policy, ann_file, caption_file,
                check_video_tmpl(video_tmpl))


# ----------------------------------------------------------------------------- JSON
class _KeyedDict(dict):
    """dict built from JSON pairs keeping the FIRST value of a repeated key."""
    duplicates: List[str]


def _pairs_first(pairs):
    out = _KeyedDict()
    out.duplicates = []
    for k, v in pairs:
        if k in out:
            out.duplicates.append(k)
        else:
            out[k] = v
    return out


def _key_line(text: str, key: str, occurrence: int) -> Optional[int]:
    """Line of the ``occurrence``-th (0-based) appearance of JSON key ``key``."""
    import json
    hits = []
    for enc in {json.dumps(key), json.dumps(key, ensure_ascii=False)}:
        hits += [m.start() for m in re.finditer(re.escape(enc) + r'\s*:', text)]
    hits = sorted(set(hits))
    if len(hits) <= occurrence:
        return None
    return text.count('\n', 0, hits[occurrence]) + 1


def _video_text_json(ann_file: str, video_tmpl: str, issues: IssueLog
                     ) -> List[VideoEntry]:
    builder = _SplitBuilder(video_tmpl, issues)
    doc = JsonDocument(ann_file, object_pairs_hook=_pairs_first)
    issues.register_json(ann_file, doc)
    data = doc.data
    if not isinstance(data, dict):
        raise doc.error((), 'expected an object {"video.mp4": ["caption", ...], ...} '
                        f'(MMAction2 VideoTextDataset), got {type_name(data)}')
    if 'sentences' in data and 'videos' in data:
        raise doc.error((), 'this is an MSR-VTT caption file (MSRVTT_data.json: "videos" and '
                        '"sentences"), not a VideoTextDataset JSON {"video.mp4": '
                        '["caption", ...]}; use ann_format=\'msrvtt\' with it as '
                        'caption_file and a split csv as ann_file')
    seen: Dict[str, int] = {}
    for key in getattr(data, 'duplicates', []):
        seen[key] = seen.get(key, 0) + 1
        issues.add('duplicate_video', ann_file, _key_line(doc.text, key, seen[key]),
                   f'video {key!r} appears more than once (duplicate_video=\'drop\' '
                   'keeps the first entry)')
    for key, texts in data.items():
        path = (key,)
        vid = clean_video_id(key, lambda m: doc.error((), m, field=key))
        if isinstance(texts, str):
            raise doc.error((), 'expected a list of captions, got a single string; write '
                            '["caption"] (MMAction2 would iterate its characters)',
                            field=key)
        if not isinstance(texts, list):
            raise doc.error((), f'expected a list of captions, got {type_name(texts)}',
                            field=key)
        entry = builder.add_video(vid, ann_file, path)
        for j, text in enumerate(texts):
            builder.add_caption(entry, text, ann_file, path,
                                lambda m, j=j: doc.error(path, m, field=f'[{j}]'),
                                field=f'[{j}]')
    return builder.finish(ann_file)


def read_video_text_json(ann_file: str, *, video_tmpl: str = DEFAULT_VIDEO_TMPL['json'],
                         policy: Optional[AnnotationPolicy] = None,
                         issues: Optional[IssueLog] = None) -> List[VideoEntry]:
    """Read MMAction2's ``VideoTextDataset`` annotation: a JSON object mapping a video
    file name (relative to ``data_prefix['video']``) to a list of captions. The key is
    both the video id and (with the default template) the file name."""
    return _run(_video_text_json, issues, policy, ann_file, check_video_tmpl(video_tmpl))


# ----------------------------------------------------------------------------- dispatch
def read_annotations(ann_format: str, ann_file: str, caption_file: Optional[str] = None,
                     *, video_tmpl: Optional[str] = None, paragraph_sep: str = ' ',
                     policy: Optional[AnnotationPolicy] = None,
                     issues: Optional[IssueLog] = None) -> List[VideoEntry]:
    """Read any supported format (``'msrvtt' | 'didemo' | 'lsmdc' | 'msvd' | 'json'``).

    ``video_tmpl=None`` picks the format's default (:data:`DEFAULT_VIDEO_TMPL`).
    """
    if ann_format not in DEFAULT_VIDEO_TMPL:
        raise ConfigValueError(f'unknown ann_format {ann_format!r}; choose one of '
                               f'{", ".join(ANN_FORMATS)}')
    tmpl = DEFAULT_VIDEO_TMPL[ann_format] if video_tmpl is None else video_tmpl
    common = dict(video_tmpl=tmpl, policy=policy, issues=issues)
    if ann_format in ('lsmdc', 'json') and caption_file is not None:
        raise ConfigValueError(f'ann_format={ann_format!r} takes no caption_file '
                               f'(got {caption_file!r})')
    if ann_format == 'msrvtt':
        return read_msrvtt(ann_file, caption_file, **common)
    if ann_format == 'didemo':
        return read_didemo(ann_file, caption_file, paragraph_sep=paragraph_sep, **common)
    if ann_format == 'lsmdc':
        return read_lsmdc(ann_file, **common)
    if ann_format == 'msvd':
        return read_msvd(ann_file, caption_file, **common)
    return read_video_text_json(ann_file, **common)
