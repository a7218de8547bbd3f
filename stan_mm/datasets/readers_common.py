"""Shared building blocks of the retrieval annotation readers.

Everything a reader needs to turn a user's annotation file into
:class:`VideoEntry` records and to fail with a message that names the file, the line and
the field:

- :class:`AnnotationError` (a ``ValueError``): the ONE error type the readers raise for bad
  annotation content. It carries ``file``, ``line`` (1-based, or ``None`` when unknown),
  ``field`` and, for aggregated problems, ``issues``.
- text decoding (UTF-8, optional BOM) with the line of an invalid byte, line-numbered
  iteration of text / CSV files, JSON loading whose errors are located on a line,
- caption and video-id validation, the video file-name template,
- :func:`load_restricted_pickle`: loads MSVD's ``raw-captions.pkl`` with an unpickler that
  only builds builtin containers, strings and numbers and refuses every other global.
- :class:`IssueLog` + :class:`AnnotationPolicy`: the "error or drop with a warning"
  handling of empty captions, duplicate videos, unknown video ids and videos without
  captions; all problems of one kind are reported at once.
"""
import bisect
import collections
import csv
import html
import io
import json
import json.decoder
import json.scanner
import logging
import os
import os.path as osp
import pickle
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from stan_mm.errors import ConfigValueError

__all__ = [
    'AnnotationError', 'VideoEntry', 'AnnotationPolicy', 'IssueLog', 'read_text',
    'iter_text_lines', 'iter_csv_rows', 'JsonDocument', 'clean_caption',
    'clean_video_id', 'short_repr', 'format_video_path', 'check_video_tmpl',
    'load_restricted_pickle', 'AnnotationFileNotFoundError',
    'AnnotationFileIsAFolderError', 'resolved_note',
]

#: How many individual problems an aggregated error message lists before "... and N more".
MAX_LISTED = 20


class AnnotationError(ValueError):
    """Bad annotation content, located in its file.

    Attributes:
        file (str): the annotation file.
        line (int | None): 1-based line of the offending record, ``None`` if unknown.
        column (int | None): 1-based column (JSON records: where the record starts;
            useful for single-line JSON such as ``MSRVTT_data.json``).
        field (str | None): the field / JSON path inside the record (e.g. ``'caption'``,
            ``'sentences[12].caption'``).
        issues (list[str]): for aggregated errors (e.g. all empty captions of a file), one
            located message per problem; empty otherwise.
    """

    def __init__(self, message: str, file: Optional[str] = None,
                 line: Optional[int] = None, field: Optional[str] = None,
                 issues: Optional[List[str]] = None, column: Optional[int] = None):
        self.file = file
        self.line = line
        self.column = column
        self.field = field
        self.issues = list(issues or [])
        self.reason = message
        super().__init__(_locate(file, line, field, column) + message)


class AnnotationFileNotFoundError(AnnotationError, FileNotFoundError):
    """An annotation file that does not exist (a ``FileNotFoundError`` too)."""


class AnnotationFileIsAFolderError(AnnotationError, IsADirectoryError):
    """A folder given where an annotation file is expected (an ``IsADirectoryError``
    too, as ``open`` raised before)."""


def resolved_note(path: str) -> str:
    """``' (resolved to <absolute path>, from the working directory <cwd>)'`` for a
    relative ``path`` (how the process read it), ``''`` for an absolute one: a "not
    found" message then says where the file was looked for."""
    path = os.fspath(path)
    if osp.isabs(path):
        return ''
    return f' (resolved to {osp.abspath(path)}, from the working directory {os.getcwd()})'


def _locate(file: Optional[str], line: Optional[int], field: Optional[str],
            column: Optional[int] = None) -> str:
    where = ''
    if file is not None:
        where = str(file)
        if line is not None:
            where += f':{line}'
            if column is not None:
                where += f':{column}'
        where += ': '
    if field:
        where += f'field {field!r}: '
    return where


@dataclass
class VideoEntry:
    """One video of a split with all its captions (the uniform reader output).

    Attributes:
        video_id (str): the dataset's id of the video (``video7020``, an LSMDC clip id, a
            DiDeMo file name, a VideoTextDataset JSON key).
        filename (str): path of the video file relative to the video root
            (``data_prefix['video']``), from the format's file-name template.
        captions (list[str]): stripped, non-empty captions in file order (DiDeMo: one
            paragraph).
        source (str): ``"file:line"`` (or ``"file:json.path"``) of the record that first
            named the video, for messages.
        extra (dict): format-specific facts that the pipeline does not use (DiDeMo
            ``descriptions`` and ``moments`` in seconds; LSMDC ``movie_times``).
    """
    video_id: str
    filename: str
    captions: List[str] = field(default_factory=list)
    source: str = ''
    extra: Dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- policies
_POLICY_HINT = {
    'empty_caption': 'set empty_caption=\'drop\' to skip empty captions',
    'duplicate_video': 'set duplicate_video=\'drop\' to keep only the first entry',
    'unknown_video': 'set unknown_video=\'drop\' to ignore captions of videos outside '
                     'the split',
    'video_without_captions': 'set video_without_captions=\'drop\' to leave such videos '
                              'out',
}


@dataclass
class AnnotationPolicy:
    """What to do with suspicious-but-parseable content: ``'error'`` or ``'drop'``.

    ``'error'`` collects every occurrence and raises ONE :class:`AnnotationError` listing
    them; ``'drop'`` leaves the item out and logs a warning with the count and the first
    few locations. Malformed records (wrong field count, wrong types, invalid JSON/UTF-8)
    always raise.

    Attributes:
        empty_caption: a caption that is empty after stripping whitespace, or after
            CLIP's text cleaning (e.g. ``'&nbsp;'``, see :func:`has_visible_text`).
        duplicate_video: a video id listed twice in a split list (or a JSON key repeated),
            or two ids naming one path (found once the files are located);
            ``'drop'`` keeps the first.
        unknown_video: a caption naming a video outside the split, for caption files that
            are split-specific (DiDeMo ``{split}_data.json``). Caption files that cover all
            splits (MSR-VTT ``MSRVTT_data.json``, MSVD ``raw-captions.pkl``) are filtered
            silently since that is their normal use.
        video_without_captions: a split video with no caption left.
    """
    empty_caption: str = 'error'
    duplicate_video: str = 'error'
    unknown_video: str = 'drop'
    video_without_captions: str = 'error'

    def __post_init__(self):
        for name in ('empty_caption', 'duplicate_video', 'unknown_video',
                     'video_without_captions'):
            value = getattr(self, name)
            if value not in ('error', 'drop'):
                raise ConfigValueError(f'{name} must be \'error\' or \'drop\', got {value!r}')


class IssueLog:
    """Collects policy issues of one read and resolves them at the end.

    Example:
        >>> log = IssueLog(AnnotationPolicy())
        >>> log.add('empty_caption', 'a.csv', 3, 'empty caption for video0')
        >>> log.resolve()     # empty_caption='error' (default): raised, with the line
        Traceback (most recent call last):
          ...
        stan_mm.datasets.readers_common.AnnotationError: a.csv:3: annotation problems found:
        1 x empty_caption (set empty_caption='drop' to skip empty captions):
          a.csv:3: empty caption for video0
    """

    def __init__(self, policy: AnnotationPolicy, logger: str = 'current'):
        self.policy = policy
        self.logger = logger
        # kind -> list of (file, line_or_None, field_or_None, message)
        self.issues: Dict[str, List[Tuple[str, Optional[int], Optional[str], str]]] = {}
        self._line_resolvers: Dict[str, Any] = {}

    def add(self, kind: str, file: str, line: Any, message: str,
            field: Optional[str] = None) -> None:
        """Record one issue; ``line`` is an int, ``None`` or a JSON path tuple that is
        resolved to a line only when an error is raised (see :class:`JsonDocument`)."""
        self.issues.setdefault(kind, []).append((file, line, field, message))

    def register_json(self, file: str, doc: 'JsonDocument') -> None:
        """Let JSON-path locations of ``file`` be turned into line numbers on error."""
        self._line_resolvers[file] = doc

    def count(self, kind: str) -> int:
        return len(self.issues.get(kind, []))

    def messages(self, kind: str, limit: Optional[int] = None,
                 resolve_lines: bool = True) -> List[str]:
        """Located messages (``file:line: ...``) of the issues of one kind."""
        items = self.issues.get(kind, [])[:limit]
        return [self._fmt(*it, resolve_lines=resolve_lines) for it in items]

    def _line(self, file, line):
        if isinstance(line, tuple):
            doc = self._line_resolvers.get(file)
            return doc.line_of(line) if doc is not None else None
        return line

    def _fmt(self, file, line, fld, msg, resolve_lines: bool) -> str:
        if isinstance(line, tuple):
            path = _json_path_str(line)
            fld = path + ('.' + fld if fld else '') if path else fld
            line = self._line(file, line) if resolve_lines else None
        return _locate(file, line, fld) + msg

    def resolve(self) -> None:
        """Raise one :class:`AnnotationError` for every kind whose policy is ``'error'``
        (all kinds together), log a warning for every ``'drop'`` kind."""
        policies = dict(vars(self.policy))
        errors = []
        for kind, items in self.issues.items():
            if not items:
                continue
            if policies.get(kind, 'error') == 'drop':
                shown = [self._fmt(*it, resolve_lines=False) for it in items[:5]]
                more = f' (and {len(items) - 5} more)' if len(items) > 5 else ''
                _log(f'{len(items)} x {kind} dropped: ' + '; '.join(shown) + more,
                     self.logger)
            else:
                errors.append((kind, items))
        if not errors:
            return
        lines, first = [], None
        for kind, items in errors:
            lines.append(f'{len(items)} x {kind} ({_POLICY_HINT.get(kind, "")}):')
            lines += head_lines(items, lambda it: '  ' + self._fmt(*it, resolve_lines=True))
            if first is None:
                first = items[0]
        file, line, fld, _ = first
        if isinstance(line, tuple):
            fld = _json_path_str(line) + ('.' + fld if fld else '')
            line = self._line(file, line)
        raise AnnotationError('annotation problems found:\n' + '\n'.join(lines),
                              file=file, line=line, field=fld, issues=lines)


def head_lines(items: Sequence, fmt: Callable[[Any], str]) -> List[str]:
    """``fmt`` of the first :data:`MAX_LISTED` items (only those are formatted), then
    ``'  ... and N more'`` when there are more."""
    lines = [fmt(it) for it in items[:MAX_LISTED]]
    if len(items) > MAX_LISTED:
        lines.append(f'  ... and {len(items) - MAX_LISTED} more')
    return lines


def check_missing_video(policy: str) -> str:
    """The datasets' ``missing_video`` argument: ``'error'`` or ``'drop'``."""
    if policy not in ('error', 'drop'):
        raise ValueError(f"missing_video must be 'error' or 'drop', got {policy!r}")
    return policy


def apply_missing_policy(items: list, missing: list, policy: str, where: str, listed: str,
                         fix: str, ann_file: str) -> list:
    """The datasets' rule for videos without a file.

    Args:
        items: every sample (or video entry); ``missing``: those without a file (the same
            objects).
        policy: ``'drop'`` (return the others, with a warning) or ``'error'``.
        where: what is missing where (``'3 of 40 videos have no file under ...'``);
            ``listed``: which ones; ``fix``: what to change (``'Fix data_prefix'``).
        ann_file: the annotation file the error names.

    Raises:
        AnnotationError: ``'error'``, or nothing left after ``'drop'``.
    """
    if policy == 'drop':
        _log(f'{where}; left out: {listed}')
        gone = {id(x) for x in missing}
        kept = [x for x in items if id(x) not in gone]
        if not kept:
            raise AnnotationError(f'{where}: no video left', file=ann_file)
        return kept
    raise AnnotationError(f"{where}: {listed}. {fix}, or set missing_video='drop' to leave "
                          'them out (check_files=False skips the check)', file=ann_file)


def _log(msg: str, logger: str = 'current', level: int = logging.WARNING) -> None:
    from mmengine.logging import print_log
    print_log(msg, logger=logger, level=level)


# ----------------------------------------------------------------------------- text files
def read_text(path: str) -> str:
    """Read a UTF-8 text file (a leading BOM is dropped).

    Raises:
        AnnotationFileNotFoundError: the file does not exist (a FileNotFoundError too).
        AnnotationFileIsAFolderError: ``path`` is a folder (an IsADirectoryError too).
        AnnotationError: invalid UTF-8, with the line of the first bad byte.

    Both errors name the absolute path and the working directory a relative ``path`` was
    resolved from (:func:`resolved_note`).
    """
    if not osp.isfile(path):
        check = ("a relative ann_file is read below the dataset's data_root: check both "
                 '(e.g. --cfg-options train_dataloader.dataset.data_root=... / '
                 '.ann_file=...)')
        if osp.isdir(path):
            raise AnnotationFileIsAFolderError(
                f'is a folder, not an annotation file{resolved_note(path)}; give the '
                f'annotation file (list, CSV or JSON) inside it. {check[0].upper()}'
                f'{check[1:]}', file=path)
        raise AnnotationFileNotFoundError(
            f'annotation file not found (no such file){resolved_note(path)}; {check}',
            file=path)
    with open(path, 'rb') as f:
        data = f.read()
    try:
        return data.decode('utf-8-sig')
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b'\n') + 1
        raise AnnotationError(
            f'not valid UTF-8 (byte {data[e.start:e.start + 1]!r} at offset {e.start}); '
            're-encode the file as UTF-8', file=path, line=line) from None


def iter_text_lines(path: str, text: Optional[str] = None) -> Iterator[Tuple[int, str]]:
    """Yield ``(line_number, line)`` (1-based) of the non-blank lines of a text file.

    Only ``\\n`` ends a line (``\\r`` before it is dropped), so that unusual Unicode line
    separators inside a caption neither split the record nor shift line numbers.
    """
    text = read_text(path) if text is None else text
    for i, line in enumerate(text.split('\n'), start=1):
        line = line[:-1] if line.endswith('\r') else line
        if line.strip():
            yield i, line


def iter_csv_rows(path: str, delimiter: str = ','
                  ) -> Iterator[Tuple[int, List[str]]]:
    """Yield ``(line_number, row)`` of a CSV file, skipping blank rows.

    ``line_number`` is the line where the (possibly multi-line quoted) record ends.
    CSV syntax errors become :class:`AnnotationError` with the line.
    """
    text = read_text(path)
    reader = csv.reader(io.StringIO(text, newline=''), delimiter=delimiter)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise AnnotationError(f'CSV syntax error: {e}', file=path,
                                  line=reader.line_num) from None
        if row and any(cell.strip() for cell in row):
            yield reader.line_num, row


# ----------------------------------------------------------------------------- JSON
def _json_path_str(path: Sequence) -> str:
    out = ''
    for key in path:
        if isinstance(key, int):
            out += f'[{key}]'
        else:
            out += ('.' if out else '') + str(key)
    return out


class JsonDocument:
    """A parsed JSON file that can tell the line of any object/array inside it.

    Parsing uses the fast C decoder. Line numbers are needed only for error messages, so
    they come from a second, position-tracking parse that is run lazily, the first time
    :meth:`line_of` is called.

    Args:
        path (str): the JSON file.
        object_pairs_hook: passed to :func:`json.loads` (e.g. to detect duplicate keys).
    """

    def __init__(self, path: str, object_pairs_hook=None):
        self.path = path
        self.text = read_text(path)
        try:
            self.data = json.loads(self.text, object_pairs_hook=object_pairs_hook)
        except json.JSONDecodeError as e:
            raise AnnotationError(f'invalid JSON: {e.msg}', file=path, line=e.lineno,
                                  column=e.colno) from None
        except RecursionError:
            raise AnnotationError('invalid JSON: nesting too deep', file=path) from None
        except ValueError as e:  # e.g. integers beyond Python's digit limit
            raise AnnotationError(f'invalid JSON: {e}', file=path) from None
        self._positions: Optional[Dict[int, int]] = None
        self._tree = None
        self._newlines: Optional[List[int]] = None

    def _track(self) -> None:
        positions: Dict[int, int] = {}
        decoder = json.JSONDecoder()

        def parse_object(s_and_end, *args):
            obj, end = json.decoder.JSONObject(s_and_end, *args)
            positions[id(obj)] = s_and_end[1] - 1
            return obj, end

        def parse_array(s_and_end, scan_once):
            obj, end = json.decoder.JSONArray(s_and_end, scan_once)
            positions[id(obj)] = s_and_end[1] - 1
            return obj, end

        class _Ctx:
            strict = True
            object_hook = None
            object_pairs_hook = None
            parse_float = float
            parse_int = int
            parse_constant = decoder.parse_constant
            parse_string = json.decoder.scanstring
            memo: dict = {}

        ctx = _Ctx()
        ctx.parse_object = parse_object
        ctx.parse_array = parse_array
        scan = json.scanner.py_make_scanner(ctx)
        start = len(self.text) - len(self.text.lstrip())
        try:
            self._tree, _ = scan(self.text, start)
        except (ValueError, StopIteration, RecursionError):
            self._tree = None
        self._positions = positions
        self._newlines = [m.start() for m in re.finditer('\n', self.text)]

    def line_of(self, path: Sequence) -> Optional[int]:
        """Line (1-based) where the object/array at JSON ``path`` starts; for a scalar,
        the line of its closest enclosing container. ``None`` if it cannot be found."""
        return self.line_col_of(path)[0]

    def line_col_of(self, path: Sequence) -> Tuple[Optional[int], Optional[int]]:
        """``(line, column)``, both 1-based, of :meth:`line_of`'s position."""
        if self._positions is None:
            self._track()
        node, best = self._tree, None
        if node is None:
            return None, None
        best = self._positions.get(id(node))
        for key in path:
            try:
                node = node[key]
            except (KeyError, IndexError, TypeError):
                break
            pos = self._positions.get(id(node))
            if pos is not None:
                best = pos
        if best is None:
            return None, None
        line = bisect.bisect_left(self._newlines, best)
        line_start = self._newlines[line - 1] + 1 if line > 0 else 0
        return line + 1, best - line_start + 1

    def error(self, path: Sequence, message: str, field: Optional[str] = None
              ) -> AnnotationError:
        """An :class:`AnnotationError` located at JSON ``path`` (+ ``field``)."""
        fld = _json_path_str(path)
        if field:
            fld = f'{fld}.{field}' if fld else field
        line, column = self.line_col_of(path)
        return AnnotationError(message, file=self.path, line=line, field=fld or None,
                               column=column)


def type_name(value: Any) -> str:
    """The type of ``value`` for messages: ``dict`` / ``list`` for JSON objects and
    arrays (whatever class the parser used), else the class name."""
    for base in (dict, list):
        if isinstance(value, base):
            return base.__name__
    return type(value).__name__


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr`` for messages that never recurses into (possibly huge or deeply nested)
    containers: scalars are shown, containers by type and length."""
    if isinstance(value, (str, bytes, bool, int, float, type(None))):
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
            return f'<int with {value.bit_length()} bits>'
        text = repr(value)
        return text if len(text) <= limit else text[:limit - 3] + '...'
    try:
        return f'<{type_name(value)} of length {len(value)}>'
    except TypeError:
        return f'<{type_name(value)}>'


# ----------------------------------------------------------------------------- captions
def clean_caption(raw: Any, where_error) -> str:
    """Validate one caption and strip surrounding whitespace.

    Args:
        raw: the caption as read (must be ``str``).
        where_error: ``callable(message) -> AnnotationError`` locating the record.

    Returns:
        str: the stripped caption; ``''`` means empty (the caller applies the policy).
        Internal whitespace, case, punctuation and non-ASCII characters are kept as
        they are (the tokenizer normalizes whitespace and truncates long captions).

    Raises:
        AnnotationError: not a string, or not encodable as UTF-8 (lone surrogates from
        ``\\udxxx`` JSON escapes).
    """
    if not isinstance(raw, str):
        raise where_error(f'caption must be a string, got {type_name(raw)}: '
                          + short_repr(raw))
    try:
        raw.encode('utf-8')
    except UnicodeEncodeError:
        raise where_error('caption is not valid Unicode text (lone surrogate escape); '
                          'fix the \\udxxx escapes in the file') from None
    return raw.strip()


def has_visible_text(caption: str) -> bool:
    """Whether CLIP's text cleaning (HTML unescaped twice, control characters dropped,
    whitespace squeezed) leaves anything of ``caption``: ``'&nbsp;'`` or ``'\\x00'``
    tokenize to an empty caption."""
    text = html.unescape(html.unescape(caption))
    return any(ch.isprintable() and not ch.isspace() for ch in text)


def clean_video_id(raw: Any, where_error) -> str:
    """Validate one video id: a non-empty string (stripped) without control characters
    (they cannot be part of a file name).

    Raises:
        AnnotationError: otherwise.
    """
    if not isinstance(raw, str):
        raise where_error(f'video id must be a string, got {type_name(raw)}: '
                          + short_repr(raw))
    vid = raw.strip()
    if not vid:
        raise where_error('empty video id')
    if any(ord(c) < 32 or ord(c) == 127 for c in vid):
        raise where_error(f'video id {short_repr(vid)} contains control characters')
    try:
        vid.encode('utf-8')
    except UnicodeEncodeError:
        raise where_error('video id is not valid Unicode text (lone surrogate)') from None
    return vid


# ----------------------------------------------------------------------------- file names
def _tmpl_fields(video_id: str) -> Dict[str, str]:
    stem, _ = osp.splitext(video_id)
    return dict(video_id=video_id, stem=stem or video_id,
                movie=video_id.rsplit('_', 1)[0])


def format_video_path(tmpl: str, video_id: str) -> str:
    """File name of a video from a template.

    Fields: ``{video_id}``; ``{stem}`` (the id without its extension: DiDeMo ids are file
    names such as ``123@N00_456_abc.mov``); ``{movie}`` (the id up to its last ``_``: the
    movie folder of an LSMDC clip ``1004_Juno_00.00.32.849-00.00.38.210`` is
    ``1004_Juno``). Example: ``'{movie}/{video_id}.avi'``.
    """
    return tmpl.format_map(_tmpl_fields(video_id))


def check_video_tmpl(tmpl: Any) -> str:
    """Fail early (``ValueError``) on a template with unknown fields or bad syntax."""
    if not isinstance(tmpl, str) or not tmpl:
        raise ConfigValueError(f'video_tmpl must be a non-empty string, got {tmpl!r}')
    try:
        format_video_path(tmpl, 'a_b.mp4')
    except (KeyError, IndexError, ValueError, AttributeError) as e:
        raise ConfigValueError(f'bad video_tmpl {tmpl!r} ({type(e).__name__}: {e}); available '
                               'fields: {video_id}, {stem}, {movie}') from None
    return tmpl


# ----------------------------------------------------------------------------- pickle
#: the largest caption pickle read (MSVD's raw-captions.pkl is a few MB); a bigger file is
#: refused before it is read
MAX_CAPTION_PICKLE_BYTES = 256 << 20
#: the loaded object may hold at most this many items and characters per byte of the file
#: (at least :data:`_MIN_EXPANDED_SIZE`): shared references repeat one container or
#: string, so a pickle of a few hundred bytes can name a list of 2**40 items
_EXPANSION_PER_BYTE = 16
_MIN_EXPANDED_SIZE = 1 << 20
#: deeper nesting is refused (caption pickles nest three levels deep)
_MAX_PICKLE_DEPTH = 64
#: ints in (-M, M) hash to distinct values (but -1 and -2): a dict or set of them cannot
#: be made to collide into quadratic time
_HASH_MODULUS = sys.hash_info.modulus


class _UnsafePickle(Exception):
    """A construct caption pickles have no use for; :func:`load_restricted_pickle` turns it
    into an :class:`AnnotationError` naming the file."""


def _check_key(key: Any, what: str) -> None:
    """Refuse a dict key / set member whose hashing could take long: a tuple or frozenset
    hashes all its items (nested ones every path: a pickle of a few hundred bytes can nest a
    tuple whose hash never ends), and floats or big ints can be chosen to share a hash.
    Video ids are strings; small ints, bools and None are accepted too."""
    kind = type(key)
    if kind is str or kind is bytes or kind is bool or key is None:
        return
    if kind is int and -_HASH_MODULUS < key < _HASH_MODULUS:
        return
    raise _UnsafePickle(f'refusing a {what} of type {kind.__name__}: only str, bytes, small '
                        f'ints, bools and None are allowed there')


def _checked_pairs(args: tuple, name: str) -> list:
    """The ``(key, value)`` pairs ``dict(*args)`` would take, keys checked."""
    if len(args) > 1:
        raise _UnsafePickle(f'refusing {name}() with {len(args)} arguments')
    if not args:
        return []
    source = args[0]
    pairs = list(source.items()) if isinstance(source, dict) else list(source)
    for pair in pairs:
        if type(pair) not in (tuple, list) or len(pair) != 2:
            raise _UnsafePickle(f'refusing {name}() of a {type(pair).__name__} item '
                                f'(expected (key, value) pairs)')
        _check_key(pair[0], f'{name} key')
    return pairs


def _checked_items(args: tuple, name: str) -> list:
    """The items ``set(*args)`` would take, each checked."""
    if len(args) > 1:
        raise _UnsafePickle(f'refusing {name}() with {len(args)} arguments')
    items = list(args[0]) if args else []
    for item in items:
        _check_key(item, f'{name} member')
    return items


def _dict(*args):
    return dict(_checked_pairs(args, 'dict'))


def _ordered_dict(*args):
    return collections.OrderedDict(_checked_pairs(args, 'OrderedDict'))


def _set(*args):
    return set(_checked_items(args, 'set'))


def _frozenset(*args):
    return frozenset(_checked_items(args, 'frozenset'))


def _defaultdict(*args):
    """``defaultdict(factory[, items])`` whose factory can only make an empty container."""
    factory = args[0] if args else None
    if factory is not None and factory not in _CONTAINER_TYPES:
        raise _UnsafePickle('refusing a defaultdict whose default factory is not list, '
                            'tuple, dict, OrderedDict, set or frozenset')
    return collections.defaultdict(_CONTAINER_TYPES.get(factory),
                                   _checked_pairs(args[1:], 'defaultdict'))


#: the container globals :meth:`_RestrictedUnpickler.find_class` hands out -> the type
#: each makes (a defaultdict's factory is stored as that type)
_CONTAINER_TYPES = {list: list, tuple: tuple, _dict: dict,
                    _ordered_dict: collections.OrderedDict, _set: set, _frozenset: frozenset}
_SAFE_GLOBALS = {
    ('builtins', 'set'): _set, ('builtins', 'frozenset'): _frozenset,
    ('builtins', 'list'): list, ('builtins', 'dict'): _dict,
    ('builtins', 'tuple'): tuple,
    ('collections', 'OrderedDict'): _ordered_dict,
    ('collections', 'defaultdict'): _defaultdict,
}
_PY2_MODULES = {'__builtin__': 'builtins', 'copy_reg': 'copyreg'}


class _RestrictedUnpickler(pickle._Unpickler):  # pure-Python: memo is a dict
    """Unpickler that only builds builtin containers, strings and numbers.

    The pure-Python implementation is used on purpose: its memo is a dict, so a crafted
    memo index cannot make it allocate gigabytes, and every global goes through
    :meth:`find_class`. The globals are the container types, through wrappers that check
    their arguments; ``str`` is not one (called on a self-repeating nested list of a few
    hundred bytes it built a string of gigabytes; strings have opcodes of their own).
    Dict keys and set members, however they are built, must hash in constant time
    (:func:`_check_key`); the opcodes that build objects (``BUILD``, ``NEWOBJ``) are refused.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, path: str, budget: Optional[int] = None):
        super().__init__(file, encoding='utf-8')
        self._path = path
        # items the container calls may copy in all (a list of N memo references copied
        # by K calls of a few bytes each allocates N x K before the loaded object could
        # be measured): refused as soon as it is spent
        self._budget = budget

    def load_reduce(self):
        args = self.stack[-1]
        if self._budget is not None and isinstance(args, tuple):
            for arg in args:
                copied = len(arg) if isinstance(arg, (list, tuple, dict, set, frozenset)) \
                    else 0
                self._budget -= copied
                if self._budget < 0:
                    raise _UnsafePickle('refusing a pickle whose container calls copy more '
                                        'items than its size allows (a pickle bomb?)')
        super().load_reduce()
    dispatch[pickle.REDUCE[0]] = load_reduce

    def find_class(self, module, name):
        module = _PY2_MODULES.get(module, module)
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        raise AnnotationError(
            f'refusing to unpickle {module}.{name}: only dict/list/tuple/set of strings and '
            'numbers are allowed in a caption pickle (never arbitrary objects nor calls); '
            'convert the file to plain builtin types (e.g. {video_id: [[token, ...], ...]})',
            file=self._path)

    def persistent_load(self, pid):
        raise AnnotationError('refusing persistent ids in a caption pickle',
                              file=self._path)

    def _marked_keys(self, step: int, what: str) -> list:
        items = self.pop_mark()
        for key in items[::step]:
            _check_key(key, what)
        return items

    def load_dict(self):
        items = self._marked_keys(2, 'dict key')
        self.append({items[i]: items[i + 1] for i in range(0, len(items), 2)})
    dispatch[pickle.DICT[0]] = load_dict

    def load_setitem(self):
        _check_key(self.stack[-2], 'dict key')
        super().load_setitem()
    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self):
        items = self._marked_keys(2, 'dict key')
        target = self.stack[-1]
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]
    dispatch[pickle.SETITEMS[0]] = load_setitems

    def load_additems(self):
        items = self._marked_keys(1, 'set member')
        add = self.stack[-1].add
        for item in items:
            add(item)
    dispatch[pickle.ADDITEMS[0]] = load_additems

    def load_frozenset(self):
        items = self._marked_keys(1, 'frozenset member')   # (before self.append: a new stack)
        self.append(frozenset(items))
    dispatch[pickle.FROZENSET[0]] = load_frozenset

    def load_object_opcode(self):
        raise _UnsafePickle('refusing an object-building opcode (BUILD / NEWOBJ): caption '
                            'pickles hold builtin containers, strings and numbers only')
    for _op in (pickle.BUILD, pickle.NEWOBJ, pickle.NEWOBJ_EX):
        dispatch[_op[0]] = load_object_opcode
    del _op


def _expanded_size(obj: Any, limit: int) -> int:
    """Items and characters of ``obj`` counted as a reader walking it meets them (a
    container or string that appears N times counts N times), computed once per distinct
    container. Raises :class:`_UnsafePickle` past ``limit``, past
    :data:`_MAX_PICKLE_DEPTH` levels, or for a container inside itself."""
    sizes: Dict[int, int] = {}

    def size(node, depth: int) -> int:
        if isinstance(node, (str, bytes)):
            return 1 + len(node)
        if not isinstance(node, (list, tuple, dict, set, frozenset)):
            return 1
        known = sizes.get(id(node))
        if known is not None:
            if known < 0:
                raise _UnsafePickle('refusing a container that holds itself')
            return known
        if depth > _MAX_PICKLE_DEPTH:
            raise _UnsafePickle(f'refusing nesting deeper than {_MAX_PICKLE_DEPTH} levels')
        sizes[id(node)] = -1
        total = 1
        for child in (node if not isinstance(node, dict) else
                      (x for pair in node.items() for x in pair)):
            total += size(child, depth + 1)
            if total > limit:
                raise _UnsafePickle(f'refusing a pickle that expands to more than {limit} '
                                    f'items and characters (shared references repeat the '
                                    f'same data)')
        sizes[id(node)] = total
        return total
    return size(obj, 0)


def load_restricted_pickle(path: str) -> Any:
    """Load a pickle of builtin containers / str / numbers, refusing anything else.

    Bounded: files over :data:`MAX_CAPTION_PICKLE_BYTES` are not read, and a loaded object
    that expands (shared references counted every time) to more than
    :data:`_EXPANSION_PER_BYTE` items and characters per byte of the file is refused,
    as are keys that could make hashing slow (:class:`_RestrictedUnpickler`).

    Raises:
        FileNotFoundError: missing file (:class:`AnnotationFileNotFoundError`).
        IsADirectoryError: ``path`` is a folder (:class:`AnnotationFileIsAFolderError`).
        AnnotationError: corrupt data, a forbidden global (``os.system``, numpy arrays,
        ...), a file too large, or a pickle bomb, with the file name.
    """
    if osp.isdir(path):
        raise AnnotationFileIsAFolderError(
            f'is a folder, not a caption pickle{resolved_note(path)}', file=path)
    if not osp.isfile(path):
        raise AnnotationFileNotFoundError(
            f'caption pickle not found (no such file){resolved_note(path)}', file=path)
    with open(path, 'rb') as f:
        data = f.read(MAX_CAPTION_PICKLE_BYTES + 1)
    if len(data) > MAX_CAPTION_PICKLE_BYTES:
        raise AnnotationError(f'caption pickle larger than {MAX_CAPTION_PICKLE_BYTES >> 20} '
                              f'MiB, not read (MSVD\'s raw-captions.pkl is a few MB); give '
                              f'the right file, or its captions as a VideoTextDataset JSON',
                              file=path)
    fix = ('write the captions as a plain {video_id: [[token, ...], ...]} dict (or as a '
           'VideoTextDataset JSON)')
    try:
        limit = max(_EXPANSION_PER_BYTE * len(data), _MIN_EXPANDED_SIZE)
        loaded = _RestrictedUnpickler(io.BytesIO(data), path, budget=limit).load()
        _expanded_size(loaded, limit)
        return loaded
    except AnnotationError:
        raise
    except _UnsafePickle as e:
        raise AnnotationError(f'not a plain caption pickle ({e}); {fix}', file=path) from None
    except RecursionError:
        raise AnnotationError('corrupt pickle: nesting too deep', file=path) from None
    except Exception as e:  # any decoding failure of untrusted bytes  # noqa: BLE001
        raise AnnotationError(f'not a readable caption pickle ({type(e).__name__}: '
                              f'{str(e)[:200]})', file=path) from None


def datasets_in(dataset) -> list:
    """The dataset and every dataset wrapped inside it (Concat/Repeat/ClassBalanced)."""
    out, stack = [], [dataset]
    while stack:
        ds = stack.pop()
        out.append(ds)
        stack.extend(getattr(ds, 'datasets', []) or [])
        inner = getattr(ds, 'dataset', None)
        if inner is not None:
            stack.append(inner)
    return out
