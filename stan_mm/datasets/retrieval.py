"""``RetrievalVideoTextDataset``: text-video retrieval datasets in MMAction2's ``DATASETS``.

One class reads MSR-VTT, DiDeMo, LSMDC, MSVD (CLIP4Clip annotation layout) and
MMAction2's ``VideoTextDataset`` JSON through the readers of :mod:`.readers`
(``ann_format='msrvtt' | 'didemo' | 'lsmdc' | 'msvd' | 'json'``)::

    train_dataloader = dict(dataset=dict(
        type='RetrievalVideoTextDataset', ann_format='msrvtt',
        ann_file='MSRVTT_train.9k.csv', caption_file='MSRVTT_data.json',
        data_root='data/msrvtt', data_prefix=dict(video='videos'),
        caption_sampling='random', pipeline=train_pipeline))
    custom_hooks = [dict(type='ClassListCheckHook'),            # the default
                    dict(type='CaptionSamplingEpochHook')]   # needed for 'random'
    test_dataloader = dict(dataset=dict(
        type='RetrievalVideoTextDataset', ann_format='msrvtt',
        ann_file='MSRVTT_JSFUSION_test.csv', data_root='data/msrvtt',
        data_prefix=dict(video='videos'), test_mode=True, pipeline=test_pipeline))

Contract with the pipeline, the retrieval model and the retrieval metric
-------------------------------------------------------------------------
The dataset holds V videos and C captions. Captions are numbered 0..C-1 in dataset order:
video 0's captions (file order), then video 1's, and so on.

Train mode (``test_mode=False``), one sample is one (video, caption) pair:

- ``caption_sampling='all'``: one sample per caption (C samples per epoch).
- ``caption_sampling='random'``: one sample per video (V samples per epoch) whose caption
  is drawn when the sample is fetched (:meth:`get_data_info`) from
  ``numpy.random.default_rng([seed, epoch, video_idx])``: the same seed and epoch always
  give the same caption for a video (whatever the worker, process count or fetch order)
  and a new epoch draws anew. ``seed`` is the ``seed`` argument, or else the runner's seed
  given by :class:`CaptionSamplingEpochHook`, or else 0. The epoch lives in a
  shared-memory tensor, so ``set_epoch`` reaches persistent DataLoader workers; the hook
  calls it before every training epoch (epoch-based loops; without the hook every epoch
  uses epoch 0).

``results`` keys: ``filename`` (str, ``data_prefix['video']`` joined with the
template/lookup path), ``text`` (str), ``video_idx`` (int in [0, V)), ``text_idx`` (int
in [0, C): the caption's global number), ``video_id`` (str), ``sample_idx`` (int, from
mmengine), ``modality``/``start_index`` (from ``BaseActionDataset``).

Test mode (``test_mode=True``), one sample per VIDEO with ALL its captions:
``text`` (list of str, n_caps >= 1), ``text_idx`` (list of int: the global numbers of
those captions, consecutive), ``video_idx`` (== ``sample_idx``), ``filename``,
``video_id``. The dataset exposes

- ``text_to_video``: ``np.ndarray`` int64 ``[C]``, the video index of every caption;
- ``num_captions`` (C) and ``num_videos`` (V);
- ``metainfo['text_to_video']`` (list), ``metainfo['num_captions']``,
  ``metainfo['num_videos']``: what an mmengine metric sees as ``self.dataset_meta``.

Per dataset: MSR-VTT JSFusion 1k-A test: 1000 videos x 1 caption. MSVD test: all
captions of every video (~40). DiDeMo: one paragraph per video (descriptions joined in
file order with ``paragraph_sep=' '``). LSMDC: one caption per clip. The moment times of
DiDeMo and the movie times of LSMDC are NOT put into ``results`` (the readers keep them
in ``VideoEntry.extra``): LSMDC clips are pre-cut, and the DiDeMo configs sample the
first 31 s of each video (``SafeDecordInit(max_seconds=31)``), the window its
annotations cover, whatever the paragraph.

Video files
-----------
``video_tmpl`` (default per format: see :data:`.readers.DEFAULT_VIDEO_TMPL`) maps an id
to a path under ``data_prefix['video']``, e.g. ``'{stem}.mp4'`` for DiDeMo videos
converted to mp4, ``'{video_id}.avi'`` for a flat LSMDC folder. ``video_lookup='scan'``
instead walks ``data_prefix['video']`` recursively once and matches file stems (with an
extension from ``video_exts``) to the id or the id without its extension (what CLIP4Clip
does for LSMDC, MSVD and DiDeMo); when several files match, the extension listed first in
``video_exts`` wins. ``check_files=True`` (default) checks that every video exists at
build time and reports ALL missing ids at once (``missing_video='error'``) or drops them
with a logged count (``'drop'``). Annotation problems follow ``empty_caption``,
``duplicate_video``, ``unknown_video`` and ``video_without_captions`` (see
:class:`.readers_common.AnnotationPolicy`); malformed records raise
:class:`.readers_common.AnnotationError` with the file, line and field.
"""
import logging
import os
import os.path as osp
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import torch
from mmengine.fileio import exists, get_file_backend, join_path
from mmengine.fileio.backends import LocalBackend
from mmengine.hooks import Hook
from mmengine.logging import print_log

from mmaction.datasets import BaseActionDataset
from mmaction.registry import DATASETS, HOOKS

from stan_mm.errors import ConfigValueError

from .pipeline_context import PipelineContextMixin
from .readers import ANN_FORMATS, read_annotations
from .readers_common import (AnnotationError, AnnotationPolicy, IssueLog, VideoEntry,
                             apply_missing_policy, check_missing_video, datasets_in)

__all__ = ['RetrievalVideoTextDataset', 'CaptionSamplingEpochHook', 'VIDEO_EXTS',
           'scan_video_files', 'locate_videos', 'drop_same_file_entries', 'FolderIndex']

VIDEO_EXTS = ('.mp4', '.webm', '.mkv', '.avi', '.mov', '.m4v', '.3gp', '.3gpp', '.mpg',
              '.mpeg', '.wmv', '.flv', '.ogv')
#: how many missing ids the error message spells out (the tool lists all)
MAX_MISSING_LISTED = 1000

#: :class:`FolderIndex` lists a folder only when at least this many of the paths are in
#: it: for fewer, one call per path costs fewer system calls than a listing
MIN_NAMES_TO_LIST = 4
#: a listing stops after ``LIST_SLACK + LIST_ENTRIES_PER_NAME * names`` entries (a huge
#: folder holding few of the videos); the names not met by then are checked one by one
LIST_ENTRIES_PER_NAME = 256
LIST_SLACK = 4096

_GONE, _FILE, _OTHER = 0, 1, 2  # FolderIndex facts: no folder / regular file / other


class FolderIndex:
    """``os.path.isfile`` / ``exists`` / ``realpath`` of many local paths, answered from
    one listing per folder instead of one or more ``stat`` calls per path.

    A dataset build checked every video with a ``stat`` (``exists`` or ``isfile``) and
    resolved it with ``realpath`` (one ``lstat`` per path component): on a network file
    system (NFS, Lustre) with many ranks that is millions of metadata requests at every
    start. Here the paths are grouped by parent folder (the path up to its last
    ``/``); a folder holding at least :data:`MIN_NAMES_TO_LIST` of the names is listed
    once with :func:`os.scandir` (stopping once every name is met), which reports each
    entry's type from the directory itself (``d_type``: no ``stat`` on most file
    systems; where the file system does not give it, one ``lstat`` per name asked
    about, as before; entries not asked about are never examined).

    Only what a listing proves is taken from it: a name met as an entry that is not a
    symbolic link is a regular file (``isfile`` and ``exists`` true) or something else, a
    folder for instance (``exists`` true, ``isfile`` false), and its ``realpath`` is the
    folder's ``realpath`` (computed once) joined with the name; a folder that does not
    exist or is not a folder has no entries. Every other case is answered by the very
    call the index stands for (``os.path.isfile(path)`` ...): a name not met (missing, or
    spelled differently on a case-insensitive or normalizing file system), a symbolic
    link (followed: a link to a file counts as a file, a dangling link as missing), a
    folder that cannot be listed (no read permission), a path ending in ``/``, ``.`` or
    ``..``, few names in a folder, a URI. So every answer equals that call's; missing
    videos still cost one ``stat`` each.

    Args:
        paths: the local paths that will be asked about (URIs are ignored).
    """

    def __init__(self, paths: Iterable[str]) -> None:
        self._facts: Dict[str, int] = {}  # path -> _GONE / _FILE / _OTHER
        self._real_dirs: Dict[str, str] = {}
        groups: Dict[str, Dict[str, str]] = {}  # folder -> name -> path (folder + name)
        for path in paths:  # self._split inlined: this loop runs once per video
            if '://' in path:
                continue
            cut = path.rfind('/') + 1
            name = path[cut:]
            if name in ('', '.', '..'):
                continue
            names = groups.get(path[:cut])
            if names is None:
                names = groups[path[:cut]] = {}
            names[name] = path
        for folder, names in groups.items():
            if len(names) >= MIN_NAMES_TO_LIST:
                self._list(folder, names)

    @staticmethod
    def _split(path: str) -> tuple:
        """(folder, name) with ``folder + name == path`` (the folder keeps its ``/``), or
        (None, None) for the paths the index leaves alone."""
        if '://' in path:
            return None, None
        cut = path.rfind('/') + 1
        name = path[cut:]
        if name in ('', '.', '..'):
            return None, None
        return path[:cut], name

    def _list(self, folder: str, names: Dict[str, str]) -> None:
        pending = dict(names)
        facts = self._facts
        budget = LIST_SLACK + LIST_ENTRIES_PER_NAME * len(pending)
        try:
            with os.scandir(folder or '.') as listing:
                for entry in listing:
                    path = pending.pop(entry.name, None)
                    if path is not None and not entry.is_symlink():
                        facts[path] = (_FILE if entry.is_file(follow_symlinks=False)
                                       else _OTHER)
                    budget -= 1
                    if not pending or budget <= 0:
                        break
        except (FileNotFoundError, NotADirectoryError):
            # no such folder: nothing under it exists (stat fails alike)
            facts.update(dict.fromkeys(names.values(), _GONE))
        except OSError:
            pass  # cannot be listed (permissions...): each path is checked on its own

    def isfile(self, path: str) -> bool:
        """``os.path.isfile(path)``."""
        fact = self._facts.get(path)
        return osp.isfile(path) if fact is None else fact == _FILE

    def exists(self, path: str) -> bool:
        """``os.path.exists(path)``."""
        fact = self._facts.get(path)
        return osp.exists(path) if fact is None else fact != _GONE

    def realpath(self, path: str) -> str:
        """``os.path.realpath(path)``."""
        if self._facts.get(path) not in (_FILE, _OTHER):
            return osp.realpath(path)
        folder, name = self._split(path)
        real = self._real_dirs.get(folder)
        if real is None:
            real = self._real_dirs[folder] = osp.realpath(folder)
        return osp.join(real, name)


def scan_video_files(root: str, exts: Sequence[str] = VIDEO_EXTS) -> Dict[str, str]:
    """Map file stem -> path relative to ``root`` for every video under ``root``.

    Symbolic links are followed (each real folder is visited once). Files whose
    (case-insensitive) extension is not in ``exts`` are ignored. When a stem occurs more
    than once, the extension listed first in ``exts`` wins, then the
    lexicographically first path.
    """
    if not osp.isdir(root):
        raise FileNotFoundError(f'video_lookup=\'scan\' needs a local video folder; '
                                f'{root!r} is not a directory')
    rank = {e.lower(): i for i, e in enumerate(exts)}
    best: Dict[str, tuple] = {}
    seen_dirs = set()
    for dirpath, dirnames, files in os.walk(root, followlinks=True):
        real = osp.realpath(dirpath)
        if real in seen_dirs:  # a symlink cycle or a folder linked twice
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames.sort()
        for name in files:
            stem, ext = osp.splitext(name)
            if ext.lower() not in rank:
                continue
            rel = osp.relpath(osp.join(dirpath, name), root)
            key = (rank[ext.lower()], rel)
            if stem not in best or key < best[stem]:
                best[stem] = key
    return {stem: key[1] for stem, key in best.items()}


def locate_videos(entries: List[VideoEntry], root: str, video_lookup: str = 'template',
                  video_exts: Sequence[str] = VIDEO_EXTS,
                  check_files: bool = True) -> List[VideoEntry]:
    """Settle ``entry.filename`` (relative to ``root``) and find the missing videos.

    ``'template'``: keep the reader's template path; check its existence under ``root``
    when ``check_files``. ``'scan'``: match the id, or the id without a video extension,
    to the stems of :func:`scan_video_files` (always checked).

    Returns:
        list[VideoEntry]: the entries without a video file (``filename`` untouched).
    """
    if video_lookup == 'scan':
        found = scan_video_files(root, video_exts)
        exts = {e.lower() for e in video_exts}
        missing = []
        for entry in entries:
            stem, ext = osp.splitext(entry.video_id)
            rel = found.get(entry.video_id)
            if rel is None and ext.lower() in exts:
                rel = found.get(stem)
            if rel is None:
                missing.append(entry)
            else:
                entry.filename = rel
        return missing
    if video_lookup != 'template':
        raise ConfigValueError(f'video_lookup must be \'template\' or \'scan\', got '
                               f'{video_lookup!r}')
    if not check_files or not entries:
        return []
    # mmengine's join_path/exists, with the backend looked up once and local paths
    # answered from one listing per folder (FolderIndex: same answers as os.path.exists)
    join = get_file_backend(root, enable_singleton=True).join_path
    paths = [join(root, e.filename) for e in entries]
    local = isinstance(get_file_backend('', enable_singleton=True), LocalBackend)
    index = FolderIndex(paths if local else ())
    return [e for e, path in zip(entries, paths)
            if not (index.exists(path) if local and '://' not in path else exists(path))]


def _path_key(path: str) -> str:
    """The path with ``.``, ``..`` and repeated separators resolved, without touching the
    file system (URIs such as ``s3://...`` are compared as written)."""
    return path if '://' in path else osp.normpath(osp.abspath(path))


def drop_same_file_entries(entries: List[VideoEntry], issues: IssueLog, ann_file: str,
                           root: Optional[str] = None, check_links: bool = True
                           ) -> List[VideoEntry]:
    """Find videos listed under two ids that name one path (``clip3.mp4`` and
    ``./clip3.mp4``, ``sub/../clip3.mp4``): a ``duplicate_video`` issue for each later one.

    The gallery would otherwise hold the same video twice: an exact tie that ranks ahead
    of the ground truth for half of its captions, a silently lower score. Two different
    paths that are links to one file (a symlink farm, or a content-addressed store such
    as git-annex or a hub cache, where identical videos share one blob) are only warned
    about: the dataset may list such a pair on purpose.

    Args:
        entries: the videos, ``filename`` settled (:func:`locate_videos`).
        issues: where the issues go (its policy decides: error or drop).
        ann_file: the annotation file the messages name.
        root: joined in front of each ``filename`` (``None``: the names as they are).
        check_links: also resolve symlinks (``realpath``, see :class:`FolderIndex`) for
            the warning.

    Returns:
        list[VideoEntry]: ``entries`` without the later entries of each path.
    """
    first: Dict[str, VideoEntry] = {}
    kept = []
    for entry in entries:
        path = join_path(root, entry.filename) if root else entry.filename
        key = _path_key(path)
        if key in first:
            issues.add('duplicate_video', ann_file, None,
                       f'video {entry.video_id!r} ({entry.source or "?"}) is the file '
                       f'{key!r}, already listed as video {first[key].video_id!r} '
                       f'({first[key].source or "?"})')
            continue
        first[key] = entry
        kept.append(entry)
    if check_links:
        _warn_linked(kept, root, ann_file)
    return kept


def _same_file(a: str, b: str) -> bool:
    """Whether paths ``a`` and ``b`` name one existing file (device and inode)."""
    try:
        return osp.samefile(a, b)
    except OSError:
        return False


def _warn_linked(entries: List[VideoEntry], root: Optional[str], ann_file: str) -> None:
    """Log the videos whose different paths resolve (through links, or a file system that
    ignores case) to one file."""
    target: Dict[str, VideoEntry] = {}
    pairs = []
    paths = [join_path(root, entry.filename) if root else entry.filename
             for entry in entries]
    index = FolderIndex(paths)  # one realpath per folder, not one lstat per component
    by_case: Dict[str, str] = {}   # lower-cased real path -> the first real path
    for entry, path in zip(entries, paths):
        if '://' in path:
            continue
        real = index.realpath(path)
        # a case-insensitive file system (macOS, Windows) finds Clip.mp4 and clip.mp4 to
        # be one file, which realpath does not say: names that differ in case alone are
        # compared by file identity (only those: one stat each, not one per video)
        first = by_case.setdefault(real.lower(), real)
        if first != real and first in target and _same_file(first, real):
            real = first
        if real in target:
            pairs.append(f'{entry.video_id!r} and {target[real].video_id!r} -> {real!r}')
        else:
            target[real] = entry
    if pairs:
        print_log(f'{ann_file}: {len(pairs)} pair(s) of videos are links to one file, so '
                  'their embeddings tie exactly in retrieval (kept: a dataset may list '
                  'identical videos on purpose): ' + '; '.join(pairs[:5])
                  + (' ...' if len(pairs) > 5 else ''), logger='current',
                  level=logging.WARNING)


@DATASETS.register_module()
class RetrievalVideoTextDataset(PipelineContextMixin, BaseActionDataset):
    """Video-text retrieval dataset over the usual annotation formats.

    Args:
        ann_file (str): the split file (``MSRVTT_train.9k.csv``,
            ``MSRVTT_JSFUSION_test.csv``, ``{split}_list.txt``, ``LSMDC16_*.csv``,
            a VideoTextDataset JSON); relative paths are joined with ``data_root``.
        pipeline (list): data transforms.
        ann_format (str): ``'msrvtt' | 'didemo' | 'lsmdc' | 'msvd' | 'json'``.
        caption_file (str, optional): captions kept apart from the split list
            (``MSRVTT_data.json``, DiDeMo ``{split}_data.json``, MSVD
            ``raw-captions.pkl``); joined with ``data_root`` like ``ann_file``.
        data_prefix (dict): ``dict(video=<video folder>)``.
        test_mode (bool): one sample per video with all its captions (see module doc).
        caption_sampling (str): train mode only: ``'all'`` (a sample per caption) or
            ``'random'`` (a sample per video, caption drawn per epoch).
        seed (int, optional): seed of the ``'random'`` caption draw (see module doc).
        video_tmpl (str, optional): file name template; ``None`` = format default.
        video_lookup (str): ``'template'`` or ``'scan'`` (see module doc).
        video_exts (sequence of str): extensions considered by ``'scan'``, by priority.
        check_files (bool): check at build time that every video file exists.
        missing_video (str): ``'error'`` (report all missing ids) or ``'drop'``.
        paragraph_sep (str): DiDeMo paragraph separator.
        empty_caption, duplicate_video, unknown_video, video_without_captions (str):
            ``'error'`` or ``'drop'``: see :class:`AnnotationPolicy`.
        **kwargs: ``BaseActionDataset`` / mmengine ``BaseDataset`` arguments
            (``data_root``, ``indices``, ``serialize_data``, ``lazy_init``, ...).
    """

    def __init__(self,
                 ann_file: str,
                 pipeline: List[Union[dict, Callable]],
                 ann_format: str = 'json',
                 caption_file: Optional[str] = None,
                 data_prefix: dict = dict(video=''),
                 test_mode: bool = False,
                 caption_sampling: str = 'all',
                 seed: Optional[int] = None,
                 video_tmpl: Optional[str] = None,
                 video_lookup: str = 'template',
                 video_exts: Sequence[str] = VIDEO_EXTS,
                 check_files: bool = True,
                 missing_video: str = 'error',
                 paragraph_sep: str = ' ',
                 empty_caption: str = 'error',
                 duplicate_video: str = 'error',
                 unknown_video: str = 'drop',
                 video_without_captions: str = 'error',
                 **kwargs) -> None:
        if ann_format not in ANN_FORMATS:
            raise ConfigValueError(f'ann_format must be one of {ANN_FORMATS}, got '
                                   f'{ann_format!r}')
        if ann_format in ('json', 'lsmdc') and caption_file is not None:
            # a child of the MSR-VTT base config inherits its caption_file (mmengine merges
            # dicts): found here, not at the first sample with a raw traceback
            raise AnnotationError(
                f'ann_format={ann_format!r} takes no caption_file (got {caption_file!r}): '
                f'the captions are in ann_file. caption_file is probably inherited from the '
                f'base config; set caption_file=None in this dataloader\'s dataset for '
                f'ann_format={ann_format!r}')
        if caption_sampling not in ('all', 'random'):
            raise ConfigValueError('caption_sampling must be \'all\' or \'random\', got '
                                   f'{caption_sampling!r}')
        if video_lookup not in ('template', 'scan'):
            raise ConfigValueError('video_lookup must be \'template\' or \'scan\', got '
                                   f'{video_lookup!r}')
        check_missing_video(missing_video)
        if 'video' not in (data_prefix or {}):
            raise ConfigValueError('data_prefix must contain the video folder: '
                                   f'dict(video=...), got {data_prefix!r}')
        self.ann_format = ann_format
        self.caption_file = caption_file
        self.caption_sampling = caption_sampling
        self.video_tmpl = video_tmpl
        self.video_lookup = video_lookup
        self.video_exts = tuple(video_exts)
        self.check_files = check_files
        self.missing_video = missing_video
        self.paragraph_sep = paragraph_sep
        self.policy = AnnotationPolicy(
            empty_caption=empty_caption, duplicate_video=duplicate_video,
            unknown_video=unknown_video, video_without_captions=video_without_captions)
        # [seed, epoch] in shared memory: set_epoch() in the main process reaches
        # (persistent) DataLoader workers, forked or spawned.
        self._seed_given = seed is not None
        self._epoch_state = self._shared_epoch_state([int(seed or 0), 0])
        self.text_to_video = np.zeros(0, dtype=np.int64)
        self.num_videos = 0
        self.num_captions = 0
        super().__init__(ann_file, pipeline=pipeline, data_prefix=data_prefix,
                         test_mode=test_mode, **kwargs)
        if caption_sampling == 'random' and not test_mode:
            print_log('caption_sampling=\'random\': add dict(type='
                      '\'CaptionSamplingEpochHook\') to custom_hooks (keeping the default '
                      'runtime\'s entries) so that every epoch draws new captions',
                      logger='current')

    # ------------------------------------------------------------------ paths
    def _join_prefix(self):
        super()._join_prefix()
        if self.caption_file and self.data_root and not osp.isabs(self.caption_file):
            self.caption_file = join_path(self.data_root, self.caption_file)

    # ------------------------------------------------------------------ loading
    def load_data_list(self) -> List[dict]:
        """Read the annotations into :class:`VideoEntry` records, resolve and check the
        video files, and lay the samples out as described in the module docstring."""
        entries = read_annotations(
            self.ann_format, self.ann_file, self.caption_file, video_tmpl=self.video_tmpl,
            paragraph_sep=self.paragraph_sep, policy=self.policy)
        entries = self._resolve_files(entries)
        data_list = []
        for entry in entries:
            base = dict(filename=entry.filename, video_id=entry.video_id)
            if self.test_mode:
                data_list.append(dict(base, text=list(entry.captions)))
            elif self.caption_sampling == 'all':
                data_list.extend(dict(base, text=cap) for cap in entry.captions)
            else:
                data_list.append(dict(base, captions=list(entry.captions)))
        n_caps = sum(len(e.captions) for e in entries)
        # test_mode is the evaluation layout (validation too), not the test split
        print_log(f'{type(self).__name__}({self.ann_format}, '
                  f'{"eval" if self.test_mode else "train"}): {len(entries)} videos, '
                  f'{n_caps} captions, {len(data_list)} samples from '
                  f'{osp.basename(self.ann_file)}', logger='current')
        return data_list

    def _resolve_files(self, entries: List[VideoEntry]) -> List[VideoEntry]:
        root = self.data_prefix['video']
        missing = locate_videos(entries, root, self.video_lookup, self.video_exts,
                                self.check_files)
        for entry in entries:
            entry.filename = join_path(root, entry.filename) if root else entry.filename
        if missing:
            entries = self._handle_missing(entries, missing, root)
        issues = IssueLog(self.policy)
        entries = drop_same_file_entries(entries, issues, self.ann_file,
                                         check_links=self.check_files)
        issues.resolve()
        return entries

    def _handle_missing(self, entries: List[VideoEntry], missing: List[VideoEntry],
                        root: str) -> List[VideoEntry]:
        ids = [e.video_id for e in missing]
        where = (f'{len(missing)} of {len(entries)} videos of {self.ann_file} have no file '
                 f'under {root!r} (video_lookup={self.video_lookup!r}'
                 + ('' if self.video_lookup == 'scan' else
                    f', e.g. {missing[0].filename!r}') + ')')
        listed = ', '.join(ids[:MAX_MISSING_LISTED])
        if len(ids) > MAX_MISSING_LISTED:
            listed += (f', ... and {len(ids) - MAX_MISSING_LISTED} more (python '
                       'tools/data/prepare_retrieval.py lists all)')
        return apply_missing_policy(entries, missing, self.missing_video, where, listed,
                                    'Fix data_prefix/video_tmpl/video_lookup', self.ann_file)

    def full_init(self) -> None:
        """mmengine's ``full_init`` (load, filter, ``indices``) followed by numbering the
        videos and captions of the final sample list, then serialization."""
        if self._fully_initialized:
            return
        serialize = self.serialize_data
        self.serialize_data = False
        try:
            super().full_init()
        finally:
            self.serialize_data = serialize
        self.data_list = self._number(self.data_list)
        if serialize:
            self.data_bytes, self.data_address = self._serialize_data()

    def _number(self, items: List[dict]) -> List[dict]:
        """Give every sample its ``video_idx`` (order of first appearance) and
        ``text_idx``; build ``text_to_video`` and the counts."""
        video_of: Dict[str, int] = {}
        t2v: List[int] = []
        for item in items:
            v = video_of.setdefault(item['video_id'], len(video_of))
            item['video_idx'] = v
            if 'captions' in item:  # train, random caption per epoch
                item['text_idx'] = len(t2v)
                t2v.extend([v] * len(item['captions']))
            elif isinstance(item['text'], list):  # test
                item['text_idx'] = list(range(len(t2v), len(t2v) + len(item['text'])))
                t2v.extend([v] * len(item['text']))
            else:  # train, every caption
                item['text_idx'] = len(t2v)
                t2v.append(v)
        self.text_to_video = np.asarray(t2v, dtype=np.int64)
        self.num_videos = len(video_of)
        self.num_captions = len(t2v)
        self._metainfo.update(num_videos=self.num_videos, num_captions=self.num_captions)
        if self.test_mode:
            self._metainfo['text_to_video'] = self.text_to_video.tolist()
        return items

    def _raw_items(self) -> List[dict]:
        if not self.serialize_data:
            return self.data_list
        import pickle
        out, start = [], 0
        for end in self.data_address.tolist():
            out.append(pickle.loads(memoryview(self.data_bytes[start:end])))
            start = end
        return out

    def _renumber(self) -> None:
        items = self._number(self._raw_items())
        self.data_list = items
        if self.serialize_data:
            self.data_bytes, self.data_address = self._serialize_data()

    def get_subset_(self, indices) -> None:
        super().get_subset_(indices)
        self._renumber()

    def get_subset(self, indices) -> 'RetrievalVideoTextDataset':
        sub = super().get_subset(indices)
        # mmengine deep-copies the attributes: the copy of the epoch state would be an
        # ordinary tensor (set_epoch() would no longer reach persistent workers), and its
        # copy memo (a default argument kept across calls) would give every subset of this
        # dataset the same one. A subset gets its own state, in shared memory.
        sub._epoch_state = self._shared_epoch_state(self._epoch_state.tolist())
        sub._renumber()
        return sub

    @staticmethod
    def _shared_epoch_state(values) -> torch.Tensor:
        state = torch.tensor(values, dtype=torch.long)
        try:
            state.share_memory_()
        except (RuntimeError, OSError):  # no shared memory: workers keep epoch 0
            pass
        return state

    # ------------------------------------------------------------------ sampling
    def set_epoch(self, epoch: int, seed: Optional[int] = None) -> None:
        """Set the epoch of the ``'random'`` caption draw (and the seed, if the dataset
        was built without one). Visible to existing DataLoader workers."""
        self._epoch_state[1] = int(epoch)
        if seed is not None and not self._seed_given:
            self._epoch_state[0] = int(seed)

    @property
    def epoch(self) -> int:
        return int(self._epoch_state[1])

    @property
    def seed(self) -> int:
        return int(self._epoch_state[0])

    def choose_caption(self, video_idx: int, n_captions: int) -> int:
        """Index of the caption drawn for ``video_idx`` at the current seed/epoch."""
        seed, epoch = (int(x) for x in self._epoch_state.tolist())
        rng = np.random.default_rng([seed & 0xFFFFFFFFFFFFFFFF, max(epoch, 0), video_idx])
        return int(rng.integers(n_captions))

    def get_data_info(self, idx: int) -> dict:
        info = super().get_data_info(idx)
        if 'captions' in info:
            captions = info.pop('captions')
            k = self.choose_caption(info['video_idx'], len(captions))
            info['text'] = captions[k]
            info['text_idx'] = info['text_idx'] + k
        return info


@HOOKS.register_module()
class CaptionSamplingEpochHook(Hook):
    """Tell retrieval datasets the epoch before each training epoch (and the runner's
    seed when the dataset has none), so ``caption_sampling='random'`` draws a new,
    reproducible caption per video every epoch. Epoch-based training loops only."""

    priority = 'NORMAL'

    def before_train_epoch(self, runner) -> None:
        dataset = runner.train_loop.dataloader.dataset
        for ds in datasets_in(dataset):
            if isinstance(ds, RetrievalVideoTextDataset):
                ds.set_epoch(runner.epoch, seed=runner.seed)
