"""Resumable video / text feature extraction into a folder (the format of
``tools/extract_features.py``, also the gallery cache of ``tools/demo/search.py``).

Output folder ``OUT``::

    videos.npy        [Nv, E] float32, every row L2-normalized
    videos.txt        Nv lines: row i's video, relative to meta.json "video_root"
                      (absolute paths stay absolute)
    texts.npy         [Nt, E] float32, L2-normalized        (when texts were given)
    texts.txt         Nt lines, row i's text (line breaks inside a text become spaces)
    video_stamps.npy  [Nv, 2] int64: size (bytes) and modification time (ns) of each video
                      when it was embedded (a changed file is embedded again)
    text_to_video.npy [Nt] int64: row of videos.npy that text i describes (dataset splits)
    bad_videos.txt    "<path>\\t<reason>" per unreadable video (with skip_bad)
    meta.json         written last: config, checkpoint, model key, dims, normalization,
                      views, pipeline, counts (videos and texts given, and kept: see
                      :func:`skipped_videos_message`), unreadable videos, and what made the
                      text embeddings (:func:`text_model_record`), and the precision
                      they were made in (``precision``: ``'fp32'``, or ``'bf16'`` /
                      ``'fp16'`` under autocast; ``amp``: the same as ``false`` /
                      ``'bf16'`` / ``'fp16'``)
    .partial/         shards of an unfinished run, and run.json (model key, precision);
                      removed once meta.json is written

``texts.npy @ videos.npy.T`` is the cosine similarity ``[Nt, Nv]`` (texts are the rows, as
``tools/analysis/eval_retrieval.py --sim`` expects).

Resumption: video embeddings are written in shards (``.partial/shard-*.npz``, each one
written to a temporary name and renamed) every ``shard_size`` videos, when the run is
interrupted (Ctrl-C, SIGTERM under :func:`sigterm_as_interrupt`, which both tools hold)
and when a video fails. A new run with the
same model key (config + checkpoint + views) reuses every shard and every row of a finished
output whose video still has the same path, size and modification time, and embeds only the
rest. A video reached by another path of the same file (a link to it or to a folder above
it, another mount of its folder: ``/data/vids`` -> ``/gpfs/own/vids``) is reused too when
the file is the same one (device and inode, or real path) with the size and modification
time it was embedded with (a copy, or another file of the same name, is embedded again);
so is a video of a moved folder (``mv DIR DIR2``, a drive or bind mount mounted elsewhere:
:func:`_moved_files`), gone from its recorded place, by its path in the folder, size and
modification time; ``videos.txt`` then names it as this run gave it. A different model
key is refused (``overwrite=True`` starts over). So is another precision
(:class:`PrecisionMismatchError`): shards, or finished video rows, embedded in bf16
(``--amp bf16``) are not mixed with fp32 ones in one ``videos.npy`` (nor the reverse);
``overwrite=True`` replaces them. Folders written before the precision was
recorded are accepted: a ``meta.json`` with ``amp`` but no ``precision`` is read by its
``amp``; without either (or a ``run.json`` without it) the precision is unknown and not
checked (shards of unknown precision are reused with a warning). Text embeddings are made
again by every run, in its precision. Finished or shard rows holding NaN or inf (saved as
they were by stan-mm versions before such embeddings were refused) are not reused: their
videos are embedded again, with a warning naming the file and the videos
(:func:`load_features` refuses such a folder instead: :func:`check_saved_rows`). The final
files are written to temporary names and renamed; ``meta.json`` is removed first and
written last, so a folder with ``meta.json`` is always complete.

Errors name the file: a write that fails (e.g. a full disk) removes its temporary file and
raises :class:`FeatureWriteError`; a finished file that cannot be read (truncated, missing)
raises :class:`DamagedFeatureFolder`. Nothing saved before is removed by either.

A folder's ``texts.npy`` serves as a QB-Norm querybank (``extract_features.py --split train
--skip-videos``); :func:`check_bank_matches` refuses one made by another model than the one
tested.
"""
import contextlib
import datetime
import errno
import glob
import hashlib
import inspect
import json
import logging
import os
import os.path as osp
import re
import shutil
import signal
import threading
import zipfile
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.logging import print_log

from stan_mm.datasets.transforms.video_io import VideoReadError

FORMAT = 'stan_mm.features'
FORMAT_VERSION = 1
PARTIAL = '.partial'
# meta.json last (written last, removed first); sim.npy is written by extract_features
# --save-sim after the rest, and removed with it so that no run leaves a stale matrix
OUTPUT_FILES = ('videos.npy', 'videos.txt', 'video_stamps.npy', 'texts.npy', 'texts.txt',
                'text_to_video.npy', 'bad_videos.txt', 'sim.npy', 'meta.json')
NORMALIZATION = ('L2: every row of videos.npy and texts.npy has unit norm, so '
                 'texts @ videos.T is the cosine similarity')


class FeatureFolderError(RuntimeError):
    """An output folder that holds results of another model (or is unusable)."""


class FeatureWriteError(FeatureFolderError):
    """A file of the folder could not be written (``path``; e.g. the disk is full). Its
    temporary file is removed; what was saved before is kept."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path


class DamagedFeatureFolder(FeatureFolderError):
    """A file of a finished folder cannot be read (``path``; truncated, missing, not an
    ``.npy``); ``reason``: what numpy (or the OS) said."""

    def __init__(self, path: str, reason: str, message: str):
        super().__init__(message)
        self.path, self.reason = path, reason


PRECISIONS = ('fp32', 'bf16', 'fp16')


def _precision_note(precision: str) -> str:
    """``'fp32 (no --amp)'`` / ``'bf16 (--amp bf16)'``: how the tool makes that precision."""
    return f'{precision} (no --amp)' if precision == 'fp32' else \
        f'{precision} (--amp {precision})'


class PrecisionMismatchError(FeatureFolderError):
    """``out_dir`` holds embeddings (partial shards or a finished ``videos.npy``) made in
    another precision (``recorded``: ``'fp32'``, ``'bf16'`` or ``'fp16'``) than the run's
    (``requested``): resuming or extending it would mix both in one ``videos.npy``."""

    def __init__(self, out_dir: str, recorded: str, requested: str, message: str):
        super().__init__(message)
        self.out_dir, self.recorded, self.requested = out_dir, recorded, requested


def recorded_precision(meta: Optional[dict]) -> Optional[str]:
    """The precision a finished folder's embeddings were made in, from its ``meta.json``:
    ``precision``, else (folders written before it was recorded) ``amp`` (``false`` ->
    ``'fp32'``, ``'bf16'`` / ``'fp16'``), else None (unknown)."""
    if not meta:
        return None
    if meta.get('precision') in PRECISIONS:
        return meta['precision']
    if 'amp' not in meta:
        return None
    amp = meta['amp']
    if amp is False or amp is None:
        return 'fp32'
    return amp if amp in PRECISIONS else None


def _write_error(path: str, e: OSError, kept: str) -> FeatureWriteError:
    full = e.errno in (errno.ENOSPC, getattr(errno, 'EDQUOT', errno.ENOSPC))
    todo = 'free some disk space' if full else 'fix that'
    return FeatureWriteError(path, f'cannot write {path}: {e.strerror or e}. '
                             f'{todo.capitalize()} and rerun the same command: {kept}')


_KEPT = 'what was saved before is kept'


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While held, SIGTERM (``kill``, Slurm preemption) raises :class:`KeyboardInterrupt`
    like Ctrl-C, so that an extraction saves the videos embedded so far (its last shard)
    before the process ends. The previous handler is restored on exit. Used by
    ``tools/extract_features.py`` and ``tools/demo/search.py``; a no-op outside the main
    thread (where signal handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def model_key(cfg, checkpoint_fp: str, views: Optional[str],
              build_note: Optional[str] = None) -> str:
    """16 hex digits identifying (config content, checkpoint file, views, and
    ``build_note``: how the built model departs from what the config means, e.g. the
    activation :func:`~stan_mm.apis.init_model` assumed because the CLIP weights file
    was missing, see ``model.build_note``; None keeps the key of the config's model)."""
    text = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
    parts = [text, checkpoint_fp, str(views)] + ([build_note] if build_note else [])
    h = hashlib.sha256('\n'.join(parts).encode('utf-8'))
    return h.hexdigest()[:16]


def loaded_model_key(model, checkpoint: Optional[str], views: Optional[str] = None) -> str:
    """:func:`model_key` of a model from :func:`~stan_mm.apis.init_model` (its config, the
    checkpoint file it was loaded from, its ``build_note``)."""
    from .inference import checkpoint_fingerprint
    return model_key(model.cfg, checkpoint_fingerprint(checkpoint), views,
                     getattr(model, 'build_note', None))


def _stamp(path: str) -> Tuple[int, int]:
    try:
        st = os.stat(path)
        return int(st.st_size), int(st.st_mtime_ns)
    except OSError:
        return -1, -1


def _item_key(rel: str, stamp: Sequence[int]) -> str:
    return f'{rel}\t{int(stamp[0])}\t{int(stamp[1])}'


def _abs(root: str, rel: str) -> str:
    return rel if osp.isabs(rel) else osp.join(root, rel)


#: ``<file>.<8 random characters><suffix>``: the temporary names :func:`_replacing` writes
#: ``<file>`` through (``tempfile.mkstemp``'s), matched by :func:`_is_temp_of`
_TEMP_NAME = r'{name}\.[A-Za-z0-9_]{{8}}{suffix}'


def _is_temp_of(entry: str, name: str, suffix: str) -> bool:
    """Whether the folder entry ``entry`` is a temporary file of ``name`` written with
    ``suffix`` (by :func:`_replacing`, or ``<name><suffix>``: the fixed name of versions
    before it)."""
    return entry == name + suffix or re.fullmatch(
        _TEMP_NAME.format(name=re.escape(name), suffix=re.escape(suffix)), entry) is not None


@contextlib.contextmanager
def _replacing(path: str, suffix: str, kept: str = _KEPT, text: bool = False,
               fsync: bool = False) -> Iterator:
    """A new file beside ``path`` to write ``path``'s new contents to, opened (``'wb'``, or
    ``'w'`` in UTF-8 with ``text``) and yielded; once the block is done (and, with
    ``fsync``, the data is on disk) it is renamed to ``path``. The temporary file is made by
    ``tempfile.mkstemp`` (``<name>.<8 random characters><suffix>``, created exclusively: a
    file or symbolic link put at a name another user could guess is never written
    through), with the mode ``open`` gives (that of the file it replaces, else ``0o666``
    less the umask; mkstemp's ``0o600`` would hide the folder's files from the group):
    :func:`stan_mm.utils.atomic.replacing`. A block that fails removes it; an
    ``OSError`` becomes :class:`FeatureWriteError` naming ``path`` (``kept``: what
    survives, for the message)."""
    from stan_mm.utils.atomic import replacing
    name = osp.basename(osp.abspath(path))
    try:
        with replacing(path, text=text, prefix=name + '.', suffix=suffix, fsync=fsync) as f:
            yield f
    except OSError as e:
        raise _write_error(path, e, kept) from e


def atomic_save_npy(path: str, array: np.ndarray) -> None:
    """``np.save`` to ``path`` so that it is complete or absent (temporary file of an
    unpredictable name + rename: :func:`_replacing`); a failed write raises
    :class:`FeatureWriteError` and leaves no temporary file."""
    with _replacing(path, '.tmp.npy') as f:
        np.save(f, array)


def atomic_save_product_npy(path: str, left: np.ndarray, right: np.ndarray,
                            chunk_size: Optional[int] = None) -> Tuple[int, int]:
    """``left [N, E] @ right [M, E].T`` as float32 ``[N, M]`` saved to ``path`` (``.npy``),
    complete or absent (:func:`atomic_save_npy`'s rule), computed and appended to the file
    ``chunk_size`` rows at a time: the matrix is never held in memory (``--save-sim`` at
    50k x 50k is a 10 GB file).

    The rows are computed exactly as the retrieval metric computes them from embeddings
    (:class:`~stan_mm.evaluation.similarity.EmbeddingSimilarity` row blocks of the metric's
    chunk size, one matrix-product shape for every block), so ``eval_retrieval.py`` on
    ``sim.npy`` ranks as ``tools/test.py`` does: duplicate videos or captions stay exact
    ties. (A numpy product per block let the BLAS kernel differ between a full block and
    the last one, and between columns: duplicates lost their ties in about half the rows,
    moving R@1 by 0.3 points on a gallery with 50 duplicated videos.) Non-finite
    embeddings are refused (``ValueError``) as the metric refuses them.

    Returns:
        the shape ``(N, M)``.
    """
    from stan_mm.evaluation.rescoring import DEFAULT_CHUNK_SIZE
    from stan_mm.evaluation.similarity import EmbeddingSimilarity
    left = np.asarray(left, dtype=np.float32)
    right = np.asarray(right, dtype=np.float32)
    if left.ndim != 2 or right.ndim != 2 or left.shape[1] != right.shape[1]:
        raise ValueError(f'{path}: cannot multiply embeddings of shapes {left.shape} and '
                         f'{right.shape} (expected [N, E] and [M, E])')
    n, m = left.shape[0], right.shape[0]
    chunk = int(chunk_size or DEFAULT_CHUNK_SIZE)
    source = EmbeddingSimilarity(torch.from_numpy(left), torch.from_numpy(right),
                                 name=path) if n and m else None
    with _replacing(path, '.tmp.npy') as f:
        np.lib.format.write_array_header_1_0(f, dict(
            descr=np.lib.format.dtype_to_descr(np.dtype(np.float32)),
            fortran_order=False, shape=(n, m)))
        for start in range(0, n if source is not None else 0, chunk):
            stop = min(start + chunk, n)
            source.rows(start, stop, pad_to=chunk).numpy().tofile(f)
    return n, m


def _atomic_write_text(path: str, text: str) -> None:
    with _replacing(path, '.tmp', text=True) as f:
        f.write(text)


# what to do about a damaged finished file (search_gallery says it for its cache instead)
RECOMPUTE = ('rerun tools/extract_features.py with --overwrite to embed its videos again '
             '(or delete the folder)')


def _read_finished(path: str, read: Callable[[str], object], state: str):
    """``read(path)`` of a finished folder's file; a missing or unreadable one raises
    :class:`DamagedFeatureFolder` naming it (``'<path> is damaged or <state>'``) with
    :data:`RECOMPUTE`."""
    try:
        return read(path)
    except (OSError, ValueError, EOFError) as e:     # (UnicodeDecodeError is a ValueError)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise DamagedFeatureFolder(path, reason, f'{path} is damaged or {state} ({reason}); '
                                   f'{RECOMPUTE}') from None


def _load_npy(path: str) -> np.ndarray:
    return _read_finished(path, lambda p: np.load(p, allow_pickle=False), 'incomplete')


def _read_lines_of(path: str) -> List[str]:
    return _read_finished(path, read_lines, 'missing')


def _lines(items: Sequence[str], what: str) -> str:
    for s in items:
        if '\n' in s or '\r' in s:
            raise ValueError(f'{what} {s!r} contains a line break; videos.txt/texts.txt hold '
                             f'one entry per line')
    return ''.join(f'{s}\n' for s in items)


def read_lines(path: str) -> List[str]:
    """Lines of a ``videos.txt`` / ``texts.txt`` file (line breaks removed, order kept)."""
    with open(path, encoding='utf-8') as f:
        return f.read().split('\n')[:-1]


# ---------------------------------------------------------------------------------------
# shards
# ---------------------------------------------------------------------------------------
class ShardStore:
    """``OUT/.partial``: ``shard-<n>.npz`` files holding ``keys`` (video path + size +
    mtime), ``emb`` ``[n, E]`` and ``root`` (the folder the relative paths of ``keys`` are
    relative to; absent from shards written before it was stored, whose videos are then
    only reused under the same path), plus ``run.json`` with the model key and the precision
    the shards were made in (absent from runs started before it was recorded)."""

    def __init__(self, out_dir: str):
        self.dir = osp.join(out_dir, PARTIAL)

    def exists(self) -> bool:
        return osp.isfile(osp.join(self.dir, 'run.json'))

    def _run(self) -> dict:
        try:
            with open(osp.join(self.dir, 'run.json')) as f:
                run = json.load(f)
            return run if isinstance(run, dict) else {}
        except (OSError, ValueError):
            return {}

    def model_key(self) -> Optional[str]:
        return self._run().get('model_key')

    def precision(self) -> Optional[str]:
        """The precision the shards were made in; None when ``run.json`` does not say (a
        run started before it was recorded)."""
        precision = self._run().get('precision')
        return precision if precision in PRECISIONS else None

    def has_shards(self) -> bool:
        return any(not p.endswith('.tmp.npz')
                   for p in glob.glob(osp.join(self.dir, 'shard-*.npz')))

    def start(self, key: str, precision: str = 'fp32') -> None:
        os.makedirs(self.dir, exist_ok=True)
        _atomic_write_text(osp.join(self.dir, 'run.json'),
                           json.dumps({'model_key': key, 'precision': precision}))
        for tmp in glob.glob(osp.join(self.dir, '*.tmp.npz')):  # an interrupted write
            os.remove(tmp)

    def _next_name(self) -> str:
        n = len(glob.glob(osp.join(self.dir, 'shard-*.npz')))
        while osp.exists(osp.join(self.dir, f'shard-{n:06d}.npz')):
            n += 1
        return osp.join(self.dir, f'shard-{n:06d}.npz')

    def write(self, keys: Sequence[str], emb: np.ndarray, root: Optional[str] = None
              ) -> None:
        """One more shard; a failed write (e.g. a full disk) leaves no temporary file and
        raises :class:`FeatureWriteError` (the shards written before are kept). ``root``:
        the folder its relative keys are relative to (the run's ``video_root``), stored
        with them (as an absolute path) so that a later run can find those videos again
        under another path (:func:`_same_files`)."""
        if not len(keys):
            return
        extra = {} if root is None else {'root': np.array(osp.abspath(root))}
        path = self._next_name()
        kept = (f'the videos embedded before are kept in {self.dir} and only the others are '
                f'embedded')
        # (temporary name shard-<n>.npz.<random>.tmp.npz: skipped by read, removed by start;
        # fsync'ed before the rename: a power loss leaves no 0-byte shard)
        with _replacing(path, '.tmp.npz', kept, fsync=True) as f:
            np.savez(f, keys=np.array(list(keys), dtype=str), emb=emb.astype(np.float32),
                     **extra)

    def read(self) -> Dict[str, np.ndarray]:
        """key -> embedding row, over every complete shard."""
        return self.read_with_roots()[0]

    def read_with_roots(self) -> Tuple[Dict[str, np.ndarray], Dict[str, Optional[str]]]:
        """:meth:`read`, and key -> the folder its path is relative to (the ``root`` its
        shard was written with; None for shards written before roots were stored)."""
        done: Dict[str, np.ndarray] = {}
        roots: Dict[str, Optional[str]] = {}
        for path in sorted(glob.glob(osp.join(self.dir, 'shard-*.npz'))):
            if path.endswith('.tmp.npz'):
                continue
            try:
                with np.load(path, allow_pickle=False) as z:
                    keys, emb = z['keys'], z['emb']
                    root = str(z['root']) if 'root' in z.files else None
                if len(keys) != len(emb):
                    raise ValueError(f'{len(keys)} keys for {len(emb)} rows')
            except (ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
                # a damaged shard (e.g. truncated by a crash): its videos are embedded again
                print_log(f'{path} is damaged ({type(e).__name__}: {e}); removed, its '
                          f'videos will be embedded again', logger='current',
                          level=logging.WARNING)
                os.remove(path)
                continue
            keys, emb = finite_rows(  # NaN rows written by an older stan-mm: embedded again
                path, keys.tolist(), emb, lambda k: _key_parts(k)[0],
                lambda m: print_log(m, logger='current', level=logging.WARNING))
            done.update(zip(keys, emb))
            roots.update((k, root) for k in keys)
        return done, roots

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# reading a finished folder
# ---------------------------------------------------------------------------------------
# elements of a memory-mapped array that one np.isfinite block reads (64 MB of float32)
_FINITE_BLOCK = 1 << 24


def _row_blocks(array: np.ndarray) -> Iterator[Tuple[int, np.ndarray]]:
    """``(start, array[start:stop])`` over ``array`` ``[N, ...]``: one block for an array
    in memory, blocks of about :data:`_FINITE_BLOCK` elements for a memory-mapped one
    (``np.load(..., mmap_mode='r')``: never read whole, nor a mask of its size made)."""
    if not isinstance(array, np.memmap) or array.size <= _FINITE_BLOCK:
        yield 0, array
        return
    step = max(1, _FINITE_BLOCK // max(1, array.size // max(1, len(array))))
    for start in range(0, len(array), step):
        yield start, array[start:start + step]


def all_finite(array: np.ndarray) -> bool:
    """Whether every entry of a saved array is finite (integers are): one
    ``np.isfinite(...).all()`` pass, block by block when it is memory-mapped."""
    if array.dtype.kind not in 'fc':
        return True
    return all(bool(np.isfinite(block).all()) for _, block in _row_blocks(array))


def nonfinite_rows(array: np.ndarray) -> List[int]:
    """Indices of the rows of ``array`` ``[N, ...]`` that hold NaN or inf (a second pass:
    for the message after :func:`all_finite` said no)."""
    if array.dtype.kind not in 'fc':
        return []
    bad: List[int] = []
    for start, block in _row_blocks(array):
        if not len(block):
            continue
        ok = np.isfinite(block).reshape(len(block), -1).all(axis=1)
        bad.extend(start + int(i) for i in np.flatnonzero(~ok))
    return bad


def nonfinite_columns(array: np.ndarray) -> List[int]:
    """Indices of the columns of a 2-D ``array`` that hold NaN or inf (block by block, as
    :func:`nonfinite_rows`)."""
    if array.dtype.kind not in 'fc':
        return []
    bad = np.zeros(array.shape[1], dtype=bool)
    for _, block in _row_blocks(array):
        bad |= ~np.isfinite(block).all(axis=0)
    return np.flatnonzero(bad).tolist()


def shown_names(names: Sequence[str], limit: int = 3) -> str:
    """``'a.mp4', 'b.mp4', 'c.mp4' and 4 more``: the first ``limit`` names (long ones
    shortened; numbers as they are) for a one-line message."""
    shown = ', '.join(repr(n if not isinstance(n, str) or len(n) <= 80 else n[:77] + '...')
                      for n in names[:limit])
    return shown + (f' and {len(names) - limit} more' if len(names) > limit else '')


def finite_rows(path: str, keys: List[str], emb: np.ndarray, video_of: Callable[[str], str],
                warn: Callable[[str], None]) -> Tuple[List[str], np.ndarray]:
    """``(keys, emb)`` of a saved embedding file ``path`` (``emb`` ``[N, E]``, ``keys[i]``
    row i's key) less the rows that hold NaN or inf (saved as they were by stan-mm
    versions before such embeddings were refused), with one ``warn`` line naming the file
    and those rows' videos (``video_of(key)``): the run embeds them again. Unchanged, after
    one :func:`all_finite` pass, when every row is finite."""
    if all_finite(emb):
        return keys, emb
    bad = set(nonfinite_rows(emb))
    warn(f'{path}: {len(bad)} of {len(keys)} rows hold NaN or inf (videos '
         f'{shown_names([video_of(keys[i]) for i in sorted(bad)])}), saved by an older '
         f'stan-mm; those videos are embedded again')
    good = [i for i in range(len(keys)) if i not in bad]
    return [keys[i] for i in good], emb[good]


# what to do about a finished folder holding NaN rows (its text embeddings are made again
# by every run, its video rows by the run after _finished_rows dropped them)
REEXTRACT = ('extract them again with the current stan-mm: rerun the '
             'tools/extract_features.py command that wrote the folder (it embeds those rows '
             'again and refuses to save NaN, naming the cause)')


def check_saved_rows(path: str, array: Optional[np.ndarray], names: Sequence[str],
                     what: str) -> None:
    """Refuse a loaded embedding file ``path`` (``[N, E]``; ``names[i]``: row i's video or
    text, ``what``: 'video' or 'text') that holds NaN or inf rows: such rows were saved as
    they were by stan-mm versions before NaN embeddings were refused, and a search or a
    metric then ranked them last without a word. Raises
    :class:`~stan_mm.apis.embed.NonFiniteEmbeddingError` naming the file, the number of
    rows, the first few names and :data:`REEXTRACT`. Cheap when the rows are finite (one
    :func:`all_finite` pass)."""
    if array is None or all_finite(array):
        return
    from .embed import NonFiniteEmbeddingError
    bad = nonfinite_rows(array)
    items = [names[i] if i < len(names) else f'row {i}' for i in bad]
    raise NonFiniteEmbeddingError(items, (
        f'{path}: {len(bad)} of {len(array)} rows hold NaN or inf ({what}s '
        f'{shown_names(items)}), saved by an older stan-mm that did not refuse them (a '
        f'search or metric would rank them last without a word); {REEXTRACT}'))


def load_meta(out_dir: str) -> Optional[dict]:
    """``OUT/meta.json`` or None when the folder holds no finished output."""
    path = osp.join(out_dir, 'meta.json')
    if not osp.isfile(path):
        return None
    try:
        with open(path, encoding='utf-8') as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise DamagedFeatureFolder(path, str(e), (
            f'{path} is damaged ({e}); rerun tools/extract_features.py with --overwrite, or '
            f'delete it and rerun the same command (the folder then counts as unfinished and '
            f'its videos are embedded again)')) from None
    if meta.get('format') != FORMAT:
        raise FeatureFolderError(f'{path} is not a stan-mm feature folder (format '
                                 f'{meta.get("format")!r})')
    return meta


def load_features(out_dir: str) -> dict:
    """A finished folder as a dict: ``meta``, ``videos`` ``[Nv, E]`` + ``video_paths``
    (absolute), ``texts`` ``[Nt, E]`` + ``text_lines``, ``text_to_video`` (or None).
    A file that cannot be read raises :class:`DamagedFeatureFolder` naming it; a
    ``videos.npy`` or ``texts.npy`` with NaN or inf rows (written by an older stan-mm)
    raises :class:`~stan_mm.apis.embed.NonFiniteEmbeddingError` (:func:`check_saved_rows`)."""
    meta = load_meta(out_dir)
    if meta is None:
        raise FeatureFolderError(f'{out_dir} has no meta.json: extraction has not finished '
                                 f'(rerun the same command to complete it)')
    res = dict(meta=meta, videos=None, video_paths=[], texts=None, text_lines=[],
               text_to_video=None)
    if meta['num_videos']:
        res['videos'] = _load_npy(osp.join(out_dir, 'videos.npy'))
        rel = _read_lines_of(osp.join(out_dir, 'videos.txt'))
        res['video_paths'] = [_abs(meta['video_root'], p) for p in rel]
        check_saved_rows(osp.join(out_dir, 'videos.npy'), res['videos'], rel, 'video')
    if meta['num_texts']:
        res['texts'] = _load_npy(osp.join(out_dir, 'texts.npy'))
        res['text_lines'] = _read_lines_of(osp.join(out_dir, 'texts.txt'))
        check_saved_rows(osp.join(out_dir, 'texts.npy'), res['texts'], res['text_lines'],
                         'text')
    if meta.get('has_text_to_video'):
        res['text_to_video'] = _load_npy(osp.join(out_dir, 'text_to_video.npy'))
    return res


SPLITS = ('train', 'val', 'test')


def skipped_videos_message(meta: dict, folder: str) -> Optional[str]:
    """A warning for a finished folder whose ``meta.json`` records unreadable videos that
    were skipped (``skip_bad``, ``--skip-bad``): its embeddings, and metrics computed from
    them, cover fewer videos (and, with ``text_to_video``, fewer texts: those of the skipped
    videos are dropped) than the list or split it was given. None when none was skipped.

    ``meta.json`` counts: ``num_bad_videos`` (skipped) and ``bad_videos`` (their paths),
    ``num_videos`` / ``num_texts`` (kept), ``num_videos_given`` / ``num_texts_given`` (given;
    absent from folders written before they were recorded: the videos given are then
    ``num_videos + num_bad_videos`` and the texts given are not known).
    """
    bad = int(meta.get('num_bad_videos') or 0)
    if not bad:
        return None
    kept = int(meta.get('num_videos') or 0)
    given = int(meta.get('num_videos_given') or kept + bad)
    source = meta.get('source')
    what = f'the {source} split' if source in SPLITS else (f'{source}' if source else
                                                             'the videos given')
    names = [str(entry[0]) for entry in (meta.get('bad_videos') or [])]
    shown = ', '.join(names[:3]) + (f' and {len(names) - 3} more' if len(names) > 3 else '')
    texts = ''
    if meta.get('has_text_to_video') and meta.get('num_texts_given') is not None:
        texts = (f' and {meta.get("num_texts")} of its {meta["num_texts_given"]} texts (the '
                 f'captions of the skipped videos were dropped)')
    elif meta.get('has_text_to_video'):
        texts = ' and only their captions (those of the skipped videos were dropped)'
    verb = 'was' if bad == 1 else 'were'
    return (f'{osp.join(folder, "meta.json")}: {bad} of the {given} videos of {what} {verb} '
            f'unreadable and skipped at extraction (--skip-bad): {shown}. The features '
            f'cover {kept} videos{texts}, so metrics computed from them are not comparable to '
            f'results on the full {"split" if source in SPLITS else "set"}. Make those videos '
            f'readable (or replace them) and extract again for full numbers')


# ---------------------------------------------------------------------------------------
# which model made a querybank
# ---------------------------------------------------------------------------------------
class BankMismatchError(ValueError):
    """A QB-Norm querybank (``texts.npy`` of a feature folder) made by another model than
    the one tested: another checkpoint file, model config, text tokenizer or build."""


def _jsonable(obj):
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def checkpoint_digest(checkpoint: Optional[str]) -> Optional[str]:
    """``'sha256:<hex>'`` of a checkpoint file's bytes (None for None): the same for a copy,
    a link or a move of the file, other for other contents. Reads the whole file (about a
    second per GB)."""
    if checkpoint is None:
        return None
    digest = hashlib.sha256()
    with open(checkpoint, 'rb') as f:
        for block in iter(lambda: f.read(1 << 23), b''):
            digest.update(block)
    return 'sha256:' + digest.hexdigest()


def text_model_record(cfg, checkpoint: Optional[str], build_note: Optional[str] = None,
                      digest: Optional[str] = None) -> dict:
    """What makes a model's text embeddings, as ``meta.json`` records it (compared by
    :func:`check_bank_matches`): ``model_cfg`` (the config's ``model`` entry),
    ``text_tokenizer`` (the test pipeline's ``CLIPBPETokenize`` step: context length and
    truncation of the texts, or None), ``checkpoint_sha256`` (:func:`checkpoint_digest`)
    and ``build_note`` (see :func:`model_key`). ``digest``: the checkpoint's digest when
    already computed (the file is not read again).

    Raises:
        OSError: ``checkpoint`` cannot be read.
    """
    from .embed import _pipeline_tokenizer
    return dict(model_cfg=_jsonable(cfg.to_dict().get('model')),
                text_tokenizer=_jsonable(_pipeline_tokenizer(cfg)),
                checkpoint_sha256=digest or checkpoint_digest(checkpoint),
                build_note=build_note)


_ABSENT = object()


def _differences(bank, tested, path: str) -> List[str]:
    """``'<path>: <bank value> (bank) vs <tested value> (tested)'`` for every leaf of two
    JSON-like values that differs."""
    if isinstance(bank, dict) and isinstance(tested, dict):
        out: List[str] = []
        for key in sorted(set(bank) | set(tested), key=str):
            out += _differences(bank.get(key, _ABSENT), tested.get(key, _ABSENT),
                                f'{path}.{key}')
        return out
    if isinstance(bank, list) and isinstance(tested, list) and len(bank) == len(tested):
        return [d for i, (b, t) in enumerate(zip(bank, tested))
                for d in _differences(b, t, f'{path}.{i}')]
    if bank == tested:
        return []

    def show(value):
        text = 'absent' if value is _ABSENT else repr(value)
        return text if len(text) <= 60 else text[:57] + '...'
    return [f'{path}: {show(bank)} (bank) vs {show(tested)} (tested)']


def _checkpoint_difference(bank: dict, tested: dict, bank_path: Optional[str],
                           tested_path: Optional[str]) -> List[str]:
    """Checkpoints are the same when their bytes are (a copy, a link or a move of the file
    is the same checkpoint)."""
    if bank['checkpoint_sha256'] == tested['checkpoint_sha256']:
        return []
    if bank_path and tested_path and osp.realpath(bank_path) == osp.realpath(tested_path):
        return [f'checkpoint: {tested_path} holds other bytes than when the bank was '
                f'extracted (rewritten since)']
    return [f'checkpoint: {bank_path} (bank) vs {tested_path} (tested), other contents']


def _without_weight_paths(node):
    """A model config without its ``pretrained`` entries: the checkpoint holds every weight,
    so where the initial weights came from does not change the embeddings."""
    if isinstance(node, dict):
        return {k: _without_weight_paths(v) for k, v in node.items() if k != 'pretrained'}
    if isinstance(node, list):
        return [_without_weight_paths(v) for v in node]
    return node


def _record_differences(bank: dict, tested: dict, bank_path: Optional[str],
                        tested_path: Optional[str]) -> Tuple[List[str], List[str]]:
    """``(certain, possible)`` differences between two :func:`text_model_record` s (of the
    checkpoint files ``bank_path`` and ``tested_path``): another checkpoint or text
    tokenizer certainly gives other text embeddings; another model entry or build may (most
    model options, e.g. drop rates or the loss, do not change them)."""
    certain = _checkpoint_difference(bank, tested, bank_path, tested_path)
    certain += _differences(bank['text_tokenizer'], tested['text_tokenizer'],
                            'test pipeline CLIPBPETokenize')
    possible = _differences(_without_weight_paths(bank['model_cfg']),
                            _without_weight_paths(tested['model_cfg']), 'model')
    if bank.get('build_note') != tested.get('build_note'):
        possible.append(f'build: {bank.get("build_note") or "as the config says"} (bank) vs '
                        f'{tested.get("build_note") or "as the config says"} (tested)')
    return certain, possible


def _first_five(items: List[str]) -> str:
    return '; '.join(items[:5]) + (f'; and {len(items) - 5} more' if len(items) > 5 else '')


def check_bank_matches(bank_path: str, cfg, checkpoint: Optional[str],
                       build_note: Optional[str] = None) -> Optional[dict]:
    """Refuse a QB-Norm querybank made by another model than ``cfg``'s ``model`` loaded from
    ``checkpoint``: its bank queries would be scored with another model's text embeddings.

    The bank is a feature folder's ``texts.npy`` (``tools/extract_features.py --split train
    --skip-videos``); its ``meta.json`` records :func:`text_model_record`, which is compared
    with the tested model's. Folders written before that record existed hold the config
    file, its ``cfg_options``, the checkpoint path and :func:`model_key`: a bank of another
    checkpoint file is refused; for the same file, where the config ``meta.json`` names is
    the tested config's own file (``cfg.filename``), that file is read again with the
    recorded ``cfg_options`` and its key recomputed with ``checkpoint`` as it is now. Equal
    keys show that the bank was made from this checkpoint file, unchanged, and from that
    config, whose model entry and text tokenizer are then compared. ``meta.json`` is data
    only: a config file it names is never read (a Python config runs code, and a shared
    bank folder must not run code of its author's choosing), so a bank made with another
    config file cannot be verified. Where it cannot be decided (another config file, the
    config file was changed, the checkpoint was rewritten since, the model was built
    without its CLIP weights file) or the checkpoint cannot be read, a warning (one line,
    with the command that extracts the bank again with the current tool) is logged
    instead.

    ``model_key`` itself is not compared: it covers the whole config (data paths, work_dir,
    the run's ``cfg_options``), which differs between an extraction and a test run of one
    model.

    Args:
        bank_path: the bank ``.npy``; without a ``meta.json`` next to it nothing is checked.
        cfg: the tested config (``tools/test.py``'s, after ``--cfg-options``).
        checkpoint: the tested checkpoint file.
        build_note: how the tested model departs from ``cfg.model`` (``model.build_note``
            of :func:`~stan_mm.apis.init_model`); None for a model built from ``cfg.model``
            as it is, as ``tools/test.py``'s runner builds it.

    Returns:
        the bank folder's meta (None without one).

    Raises:
        BankMismatchError: another checkpoint file or text tokenizer; the message lists what
            differs and the command that extracts the bank again. Another model entry
            (``pretrained`` paths aside) or build is only warned about: most model options
            leave the text embeddings of a checkpoint as they are.
    """
    from .inference import ModelLoadError, load_config

    folder = osp.dirname(osp.abspath(bank_path))
    meta = None

    def warn(why: str) -> None:
        print_log(f'QB-Norm bank {bank_path}: {why}; cannot tell whether it was made by the '
                  f'tested model (config {cfg.filename}, checkpoint {checkpoint}). If not, '
                  f'its scores are normalized with another model\'s text embeddings: '
                  f'extract it again with this checkpoint to be sure: '
                  f'{_bank_command(meta, cfg, checkpoint, folder)}', logger='current',
                  level=logging.WARNING)

    try:
        meta = load_meta(folder)
    except FeatureFolderError as e:
        warn(f'its meta.json cannot be used ({e})')
        return None
    if meta is None:
        return None
    try:
        tested = text_model_record(cfg, checkpoint, build_note)
    except OSError as e:
        warn(f'the checkpoint cannot be read ({e})')
        return meta
    possible: List[str] = []
    if all(k in meta for k in ('model_cfg', 'text_tokenizer', 'checkpoint_sha256')):
        differences, possible = _record_differences(meta, tested, meta.get('checkpoint'),
                                                    checkpoint)
    else:   # a folder written before the record existed (meta.json: data, never run)
        recorded = meta.get('checkpoint')
        if not isinstance(recorded, str) or not recorded or not checkpoint:
            warn('its meta.json names no checkpoint')
            return meta
        if osp.realpath(recorded) != osp.realpath(checkpoint):
            differences = [f'checkpoint: {recorded} (bank) vs {osp.abspath(checkpoint)} '
                           f'(tested)']
        else:
            named, own = meta.get('config'), cfg.filename
            if not (isinstance(named, str) and own and
                    osp.realpath(osp.expanduser(named)) == osp.realpath(own)):
                warn(f'its meta.json (written before the model record existed) names the '
                     f'config {named!r}, not the tested config file: a config named in '
                     f'meta.json is never read (it would run its code), so only the '
                     f'checkpoint path could be checked, not the model nor its text '
                     f'tokenizer')
                return meta
            options = meta.get('cfg_options')
            try:
                if options is not None and not isinstance(options, dict):
                    raise ValueError(f'cfg_options is a {type(options).__name__}, not a '
                                     f'dict')
                # (the tested config's own file, as tools/test.py read it; meta.json only
                # supplies the options merged in, as data)
                bank_cfg = load_config(own, options)
            except (OSError, ValueError, KeyError, TypeError, AttributeError,
                    ModelLoadError) as e:
                warn(f'its meta.json (written before the model record existed) records '
                     f'config options that cannot be merged into the tested config ({e})')
                return meta
            from .inference import checkpoint_fingerprint
            key = model_key(bank_cfg, checkpoint_fingerprint(checkpoint), meta.get('views'))
            if key != meta.get('model_key'):
                warn(f'its meta.json (written before the model record existed) names the '
                     f'config {meta["config"]} and the checkpoint {recorded}, one of which '
                     f'changed since (or the model was built without its CLIP weights file)')
                return meta
            # (equal keys also mean the bank's model was built as its config says)
            bank = text_model_record(bank_cfg, checkpoint,
                                     digest=tested['checkpoint_sha256'])   # the same file
            differences, possible = _record_differences(bank, tested, checkpoint, checkpoint)
    if possible and not differences:
        shown = _first_five(possible)
        print_log(f'QB-Norm bank {bank_path}: made from this checkpoint, with other model '
                  f'settings ({shown}); if any of them changes the text embeddings, extract '
                  f'the bank again with this config', logger='current', level=logging.WARNING)
    if differences:
        shown = _first_five(differences)
        raise BankMismatchError(
            f'QB-Norm bank {bank_path} was made by another model than the one tested '
            f'({shown}), so its queries are scored with other text embeddings than the test '
            f'captions. Extract the bank again with this config and checkpoint: '
            f'{_bank_command(meta, cfg, checkpoint, folder)}')
    return meta


def _bank_command(meta: Optional[dict], cfg, checkpoint: Optional[str], folder: str) -> str:
    """The ``tools/extract_features.py`` command that makes the QB-Norm bank ``folder``
    again with the tested config and checkpoint (the split its ``meta.json`` names)."""
    source = meta.get('source') if isinstance(meta, dict) else None
    inputs = f'--split {source} --skip-videos' if source in SPLITS else \
        '--texts <the bank texts, one per line>'
    return (f'python tools/extract_features.py {cfg.filename or "CONFIG"} {checkpoint} '
            f'{inputs} --out {folder} --overwrite')


def check_qb_norm_banks(cfg, checkpoint: Optional[str]) -> List[str]:
    """:func:`check_bank_matches` for every QB-Norm bank file of ``cfg.test_evaluator``
    (a ``RetrievalRecallMetric`` with ``qb_norm=dict(bank='....npy', ...)``, alone or in a
    list). Returns the bank files checked."""
    evaluators = cfg.get('test_evaluator')
    if not isinstance(evaluators, (list, tuple)):
        evaluators = [evaluators]
    checked = []
    for evaluator in evaluators:
        qb_norm = evaluator.get('qb_norm') if isinstance(evaluator, dict) else None
        bank = qb_norm.get('bank') if isinstance(qb_norm, dict) else None
        if isinstance(bank, str):
            check_bank_matches(bank, cfg, checkpoint)
            checked.append(bank)
    return checked


# ---------------------------------------------------------------------------------------
# extraction
# ---------------------------------------------------------------------------------------
class _VideoItems(torch.utils.data.Dataset):
    """Index -> ``(index, packed sample or None, error reason or None)``; never raises for
    an unreadable video, so a DataLoader worker does not die on it."""

    def __init__(self, pipeline, paths: Sequence[str]):
        self.pipeline, self.paths = pipeline, list(paths)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return i, self.pipeline(self.paths[i], i), None
        except VideoReadError as e:
            return i, None, e.reason


def _collate(items):
    return items


@dataclass
class ExtractionResult:
    """What a run did. ``complete``: the final files exist (False after ``limit``)."""
    out_dir: str
    complete: bool
    num_videos: int = 0
    new: int = 0
    reused: int = 0
    remaining: int = 0
    bad: List[Tuple[str, str]] = field(default_factory=list)
    num_texts: int = 0


def _temp_suffix(name: str) -> str:
    """The suffix of the temporary files this module writes ``name`` (one of
    :data:`OUTPUT_FILES`) through (:func:`_replacing`): :func:`atomic_save_npy` /
    :func:`atomic_save_product_npy` for ``.npy``, :func:`_atomic_write_text` for the
    others."""
    return '.tmp.npy' if name.endswith('.npy') else '.tmp'


def _remove_temp_files(out_dir: str, log: Callable[[str], None] = print) -> List[str]:
    """Delete the temporary files of :data:`OUTPUT_FILES` that a killed run left in
    ``out_dir`` (``sim.npy.<random>.tmp.npy`` of ``--save-sim`` can be 10 GB, and a run
    without it would never replace it) and ``log`` each; return their names. Only those
    names (:func:`_is_temp_of`: the ``mkstemp`` names of :func:`_replacing`, and the fixed
    ``<name>.tmp.npy`` / ``<name>.tmp`` of earlier versions), none of the user's files,
    and only regular files (a symbolic link there is left alone). Call it while
    :func:`folder_lock` holds ``out_dir`` (another run's file being written would be
    deleted otherwise)."""
    removed = []
    try:
        entries = sorted(os.listdir(out_dir))
    except OSError:
        return removed
    for name in OUTPUT_FILES:
        for tmp in entries:
            if not _is_temp_of(tmp, name, _temp_suffix(name)):
                continue
            path = osp.join(out_dir, tmp)
            if not osp.isfile(path) or osp.islink(path):
                continue
            size = osp.getsize(path)
            try:
                os.remove(path)
            except FileNotFoundError:
                continue
            removed.append(tmp)
            log(f'removed {path} ({size / 2 ** 20:.1f} MiB), the partial write of {name} '
                f'by a run that was stopped')
    return removed


def _remove_outputs(out_dir: str, names: Sequence[str] = OUTPUT_FILES) -> None:
    """Delete the finished-output files ``names`` of ``out_dir`` that exist (in order)."""
    for name in names:
        if osp.exists(osp.join(out_dir, name)):
            os.remove(osp.join(out_dir, name))


def _check_folder(out_dir: str, key: str, overwrite: bool, store: ShardStore,
                  precision: str = 'fp32', log: Callable[[str], None] = print
                  ) -> Optional[dict]:
    """Refuse a folder with another model's results, or with embeddings of another
    ``precision`` (or clear it with ``overwrite``); return the finished meta of the same
    model, if any. A damaged ``meta.json`` is cleared with ``overwrite`` (its folder then
    counts as unfinished)."""
    try:
        meta = load_meta(out_dir)
    except DamagedFeatureFolder:
        if not overwrite:
            raise
        _remove_outputs(out_dir)
        meta = None
    other = []
    if meta is not None and meta.get('model_key') != key:
        other.append(f'finished results (meta.json: config {meta.get("config")}, '
                     f'checkpoint {meta.get("checkpoint")})')
    if store.exists() and store.model_key() != key:
        other.append('partial results of an unfinished run')
    if not other:
        return _check_precision(out_dir, precision, overwrite, store, meta, log)
    if not overwrite:
        raise FeatureFolderError(
            f'{out_dir} holds {" and ".join(other)} of another model, config, checkpoint or '
            f'views (model key {key} differs). Use another output folder, or --overwrite to '
            f'replace them')
    _remove_outputs(out_dir)
    store.remove()
    return None


def _check_precision(out_dir: str, precision: str, overwrite: bool, store: ShardStore,
                     meta: Optional[dict], log: Callable[[str], None]) -> Optional[dict]:
    """Refuse (or clear with ``overwrite``) the embeddings of ``out_dir`` that this run would
    reuse, or keep next to its own, and that were made in another precision: the video rows
    of a finished folder and the shards of an unfinished run. A precision not recorded
    (folders written before it was) is accepted (with a warning for shards). Returns
    ``meta`` (None once cleared)."""
    held = []                      # (what, recorded precision or None)
    if meta is not None and meta.get('num_videos'):
        # (a meta.json without precision nor amp was written before --amp existed, or by
        # a search: in fp32 unless an API caller autocast; accepted silently)
        held.append((f'finished video embeddings ({osp.join(out_dir, "meta.json")})',
                     recorded_precision(meta)))
    shards = store.has_shards()
    shard_precision = store.precision() if shards else None
    if shards:
        held.append((f'partial results of an unfinished run '
                     f'({osp.join(store.dir, "run.json")})', shard_precision))
    if shards and shard_precision is None:
        log(f'WARNING: {store.dir} holds shards of a run started before the precision was '
            f'recorded: they are reused as {precision}. If they were embedded in another '
            f'precision (another --amp setting), start over: --overwrite, or delete '
            f'{store.dir}')
    other = [(what, recorded) for what, recorded in held
             if recorded is not None and recorded != precision]
    if not other:
        return meta
    recorded = sorted({r for _, r in other})
    if overwrite:
        log(f'{out_dir}: replacing {" and ".join(w for w, _ in other)} made in '
            f'{", ".join(recorded)} by {precision} ones (overwrite)')
        _remove_outputs(out_dir)
        store.remove()
        return None
    if len(recorded) == 1:   # one recorded precision: how to continue in it
        flag = 'without --amp' if recorded[0] == 'fp32' else f'with --amp {recorded[0]}'
        fix = f'Rerun {flag} to continue in {recorded[0]}, use another output folder'
    else:
        fix = 'Use another output folder'
    held_text = ' and '.join(f'{w} made in {_precision_note(r)}' for w, r in other)
    raise PrecisionMismatchError(
        out_dir, recorded[0], precision,
        f'{out_dir} holds {held_text}, but this run embeds in {_precision_note(precision)}: '
        f'the rows of both precisions would be mixed in one videos.npy. {fix}, or '
        f'--overwrite to replace them')


def _finished_rows(out_dir: str, meta: dict, video_root: str,
                   log: Callable[[str], None] = print):
    """``(keys, embeddings)`` of a finished output (keys relative to ``video_root``), or
    None when it holds no videos or its files disagree; an unreadable ``.npy`` raises
    :class:`DamagedFeatureFolder`. Rows that hold NaN or inf (saved by an older stan-mm)
    are left out, with a one-line warning naming the file and their videos: this run
    embeds those videos again."""
    if not meta.get('num_videos'):
        return None
    path = osp.join(out_dir, 'videos.npy')
    emb = _load_npy(path)
    rel = _read_lines_of(osp.join(out_dir, 'videos.txt'))
    stamps = _load_npy(osp.join(out_dir, 'video_stamps.npy')).tolist()
    if len(rel) != len(emb) or len(stamps) != len(emb):
        return None  # inconsistent: recompute
    root = meta['video_root']
    keys = [_item_key(_rebase(root, p, video_root), s) for p, s in zip(rel, stamps)]
    return finite_rows(path, keys, emb, lambda k: _key_parts(k)[0],
                       lambda m: log(f'WARNING: {m}'))


def _known_bad(meta: dict, video_root: str) -> Dict[str, str]:
    """Key -> reason of the unreadable videos a finished folder recorded (with their size
    and modification time: a changed file is tried again)."""
    out = {}
    for entry in meta.get('bad_videos') or []:
        path, size, mtime, reason = entry
        out[_item_key(_rebase(meta['video_root'], path, video_root), (size, mtime))] = reason
    return out


def _rebase(old_root: str, rel: str, new_root: str) -> str:
    """A path relative to ``old_root`` as the path relative to ``new_root`` (keys use the
    current root so that moving between a folder and a list file keeps the cache)."""
    if osp.isabs(rel):
        return rel
    full = osp.normpath(osp.join(old_root, rel))
    return osp.relpath(full, new_root).replace(os.sep, '/') if new_root else full


def _keyed_for_root(done: Dict[str, np.ndarray], roots: Dict[str, Optional[str]], video_root: str
             ) -> Tuple[Dict[str, np.ndarray], Dict[str, Optional[str]]]:
    """Shard rows (:meth:`ShardStore.read_with_roots`) keyed relative to ``video_root``:
    a relative key of a shard written by a run with another root names another file (the
    same name under another folder) than this run's same key. Shards without a root (the
    format before) keep their keys."""
    root = osp.abspath(video_root)
    out: Dict[str, np.ndarray] = {}
    out_roots: Dict[str, Optional[str]] = {}
    for k, emb in done.items():
        old = roots.get(k)
        if old is not None and old != root:
            rel, stamp = _key_parts(k)
            k = _item_key(_rebase(old, rel, video_root), stamp)
            old = root
        out[k] = emb
        out_roots[k] = old
    return out, out_roots


def _key_parts(key: str) -> Tuple[str, Tuple[int, int]]:
    """``(path, (size, mtime_ns))`` of an :func:`_item_key`."""
    rel, size, mtime = key.rsplit('\t', 2)
    return rel, (int(size), int(mtime))


class _FileIds:
    """What identifies a file now, whatever path reaches it: its device and inode, and its
    real path (links resolved), each with the size and modification time it was stamped
    with; none when the file is missing or no longer has that size and time (it changed
    since). Folders' real paths are cached."""

    def __init__(self):
        self._dirs: Dict[str, str] = {}

    def __call__(self, path: str, stamp: Tuple[int, int]) -> List[tuple]:
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            return []
        if (int(st.st_size), int(st.st_mtime_ns)) != tuple(stamp):
            return []
        ids = [('inode', st.st_dev, st.st_ino, *stamp)] if st.st_ino else []
        head, tail = osp.split(osp.abspath(path))
        real_head = self._dirs.get(head)
        if real_head is None:
            real_head = self._dirs[head] = osp.realpath(head)
        real = osp.join(real_head, tail)
        ids.append(('path', osp.realpath(real) if osp.islink(real) else real, *stamp))
        return ids


def _same_files(keys: Sequence[str], video_root: str,
                held: Dict[str, Optional[str]]) -> Dict[str, str]:
    """This run's ``keys`` (relative to ``video_root``) that are not ``held`` -> a held key
    of the same file reached by another path: a link to the file or to a folder above it,
    another mount of its folder (``/data/vids`` -> ``/gpfs/own/vids``). ``held``: key ->
    the folder its relative path is relative to (None: unknown, only an absolute path is
    matched). The file must be the same one (device and inode, or real path) and
    unchanged (the size and modification time of both keys): a copy, or another file of
    the same name, is not matched. Only the held keys with the stamp of a missing one are
    looked at (a run whose paths all match costs nothing)."""
    missing = [k for k in keys if k not in held]
    if not missing or not held:
        return {}
    stamps = {_key_parts(k)[1] for k in missing}
    ids = _FileIds()
    index: Dict[tuple, str] = {}
    for k, root in held.items():
        rel, stamp = _key_parts(k)
        if stamp not in stamps or (not osp.isabs(rel) and root is None):
            continue
        # (lexically, as _rebase made the key: '..' is not taken after a link)
        for i in ids(osp.normpath(osp.join(root or '', rel)), stamp):
            index.setdefault(i, k)
    if not index:
        return {}
    found = {i[-2:] for i in index}
    root = osp.abspath(video_root)
    out: Dict[str, str] = {}
    for k in missing:
        rel, stamp = _key_parts(k)
        if stamp not in found:
            continue
        match = [index[i] for i in ids(osp.normpath(osp.join(root, rel)), stamp)
                 if i in index]
        if match:
            out[k] = match[0]
    return out


def _recorded_roots(keys: Sequence[str], old_root: Optional[str], video_root: str,
                    rebased: bool = False) -> Dict[str, str]:
    """``keys`` (relative to ``old_root``, the root a folder or shard recorded; with
    ``rebased``, already keyed for ``video_root`` by :func:`_rebase`) -> that root
    (absolute), keyed as :func:`_rebase` keys them for ``video_root``; none when the root
    is unknown or this run's, and no absolute path (for :func:`_moved_files`)."""
    if not old_root:
        return {}
    old = osp.abspath(old_root)
    if old == osp.abspath(video_root):
        return {}
    out = {}
    for k in keys:
        rel, stamp = _key_parts(k)
        if not osp.isabs(rel):
            out[k if rebased else _item_key(_rebase(old, rel, video_root), stamp)] = old
    return out


def _moved_files(keys: Sequence[str], video_root: str, held: Dict[str, str]
                 ) -> Dict[str, str]:
    """This run's ``keys`` (relative to ``video_root``, none of them held) -> a held key
    of the same video in a moved folder: ``held``: key (relative to ``video_root``, as
    :func:`_recorded_roots` gives it) -> the root it was recorded under. A held video is
    matched by its path relative to that root, under ``video_root``, with the size and
    modification time it was embedded with, when it is gone from its recorded place (the
    folder was moved, or is mounted elsewhere now: another drive letter or mount point, a
    Docker bind mount). A video still at its recorded place is not (a copy of the folder
    is embedded again, as a changed file is)."""
    if not keys or not held:
        return {}
    root = osp.abspath(video_root)
    wanted = {k for k in keys if not osp.isabs(_key_parts(k)[0])}
    gone: Dict[str, bool] = {}    # recorded root -> missing (then so are all its files)
    out: Dict[str, str] = {}
    for h, old in held.items():
        rel, stamp = _key_parts(h)
        was = osp.normpath(osp.join(root, rel))     # (lexically, as _rebase made the key)
        there = _rebase(root, osp.relpath(was, old), root)   # the same path in root
        k = _item_key(there, stamp)
        if k not in wanted or k in out:
            continue
        if old not in gone:
            gone[old] = not osp.isdir(old)
        if gone[old] or not osp.lexists(was):
            out[k] = h
    return out


def _log_moved(moved: Dict[str, str], held: Dict[str, str], video_root: str,
               log: Callable[[str], None]) -> None:
    """One line: the folder recognised as moved (recorded root -> this run's) and how many
    of its videos were reused (:func:`_moved_files`)."""
    if not moved:
        return
    counts: Dict[str, int] = {}
    for old in moved.values():
        counts[held[old]] = counts.get(held[old], 0) + 1
    old, n = max(counts.items(), key=lambda kv: kv[1])
    rest = len(moved) - n
    log(f'videos folder recognised as moved, {old} -> {osp.abspath(video_root)}: {n} '
        f'videos reused (same path in it, size and modification time)'
        + (f'; {rest} more from {len(counts) - 1} other moved folder(s)' if rest else ''))


class _Holder:
    """A folder :func:`folder_lock` holds in this process: the thread that took it, how
    many ``folder_lock`` of that thread are open on it, and the descriptor that holds the
    OS lock (None: none held), released when the count reaches 0."""

    def __init__(self, owner: int):
        self.owner = owner
        self.count = 1
        self.fd: Optional[int] = None
        self.locked = False

    def release(self, key: str) -> None:
        """One ``folder_lock`` of ``key`` ends; the last one unlocks (under _HELD_LOCK)."""
        self.count -= 1
        if self.count > 0:
            return
        if _HELD.get(key) is self:
            del _HELD[key]
            _HELD_FREED.notify_all()      # threads waiting in folder_lock(wait=True)
        if self.fd is not None:
            try:
                if self.locked:
                    import fcntl
                    fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None


# real path -> _Holder of the folders this process holds; read and changed under _HELD_LOCK
_HELD: Dict[str, _Holder] = {}
_HELD_LOCK = threading.Lock()
_HELD_FREED = threading.Condition(_HELD_LOCK)   # notified when a folder leaves _HELD


def make_feature_folder(out_dir: str) -> str:
    """Create the feature folder ``out_dir`` (and its parents) if missing.

    Raises:
        FeatureWriteError: ``out_dir`` (or a folder above it) is a file, or the folder
            cannot be created (the OS reason is named), instead of the OS error's traceback.
    """
    if osp.isdir(out_dir):
        return out_dir
    # (isdir again: another run, or thread, may have made the folder since the first look;
    # it was then reported as a file)
    if osp.lexists(out_dir) and not osp.isdir(out_dir):
        raise FeatureWriteError(out_dir, f'the feature folder {out_dir!r} is a file, not a '
                                f'folder: give a folder (it is created when missing)')
    above = osp.dirname(osp.abspath(out_dir))
    while above and not osp.exists(above) and osp.dirname(above) != above:
        above = osp.dirname(above)
    if osp.exists(above) and not osp.isdir(above):
        raise FeatureWriteError(out_dir, f'the feature folder {out_dir!r} cannot be created: '
                                f'{above!r} is a file, not a folder')
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise FeatureWriteError(out_dir, f'the feature folder {out_dir!r} cannot be created: '
                                f'{e.strerror or e}') from None
    return out_dir


@contextlib.contextmanager
def folder_lock(out_dir: str, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the folder ``out_dir`` itself (released by the OS even
    when the process is killed; no file is created, so read-only folders work) so that
    two runs never write one folder at once: one would delete the other's partial results.
    Another process is refused at once with :class:`FeatureFolderError`, and so is another
    thread of this process (the OS lock belongs to the process, so the thread that took
    it records itself as the owner; a second thread let in would write beside the first,
    which would unlock the folder on leaving while the second still writes). The owning
    thread may nest it: the OS lock is released when the last of its ``folder_lock`` ends.
    ``wait=True``: another thread of this process holding the folder is waited for instead
    (its ``folder_lock`` ends, then this one takes the folder; another process is still
    refused at once): what a search of a gallery whose cache another thread is writing
    does (``search_gallery``: the second search then reuses the first one's embeddings).
    Where the file system has no locks, the run goes on unlocked (a warning). The folder
    is created if needed (:func:`make_feature_folder`: a path that is a file, or one that
    cannot be created, raises :class:`FeatureWriteError` naming it).
    """
    make_feature_folder(out_dir)
    key = osp.realpath(out_dir)
    me = threading.get_ident()
    with _HELD_LOCK:
        holder = _HELD.get(key)
        while wait and holder is not None and holder.owner != me:
            _HELD_FREED.wait()
            holder = _HELD.get(key)
        if holder is not None and holder.owner != me:
            owner = next((t.name for t in threading.enumerate() if t.ident == holder.owner),
                         f'id {holder.owner}')
            raise FeatureFolderError(
                f'{out_dir} is being written by another thread of this process ({owner}; '
                f'it holds a lock on the folder): wait for it to finish, or use another '
                f'output folder')
        nested = holder is not None
        if nested:
            holder.count += 1           # nested in this thread: the OS lock is held
        else:   # reserved before the flock: another thread is refused as a thread
            holder = _HELD[key] = _Holder(me)
    try:
        if not nested:
            _lock_os(holder, key, out_dir)
        yield
    finally:
        with _HELD_LOCK:
            holder.release(key)


def _lock_os(holder: _Holder, key: str, out_dir: str) -> None:
    """Take the OS lock of :func:`folder_lock` on the folder ``key`` for ``holder``
    (``out_dir``: the folder as the caller named it, for the messages)."""
    try:
        import fcntl
    except ImportError:      # not POSIX: no OS lock (threads are still kept apart)
        return
    holder.fd = os.open(key, os.O_RDONLY)
    try:
        fcntl.flock(holder.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.locked = True
    except BlockingIOError:
        raise FeatureFolderError(
            f'{out_dir} is being written by another run (it holds a lock on the '
            f'folder): wait for it to finish, or use another output folder') from None
    except OSError as e:   # e.g. ENOLCK on some network file systems
        print_log(f'{out_dir}: cannot lock the folder ({e}); going on without a '
                  f'lock (do not run two jobs that write it at once)',
                  logger='current', level=logging.WARNING)


def extract_features(model, out_dir: str, **kwargs) -> 'ExtractionResult':
    with folder_lock(out_dir):
        return _extract_features(model, out_dir, **kwargs)


def _extract_features(model, out_dir: str, *, videos: Optional[Sequence[str]] = None,
                     video_root: str = '', texts: Optional[Sequence[str]] = None,
                     text_to_video: Optional[Sequence[int]] = None, key: str,
                     views: Optional[str] = None, batch_size: int = 8,
                     num_workers: int = 2, skip_bad: bool = False,
                     limit: Optional[int] = None, shard_size: int = 256,
                     overwrite: bool = False, progress: bool = True,
                     extra_meta: Optional[dict] = None, precision: str = 'fp32',
                     log: Callable[[str], None] = print) -> ExtractionResult:
    """Embed ``videos`` (paths relative to ``video_root`` or absolute) and ``texts`` with
    ``model`` into ``out_dir`` (format: module docstring).

    Args:
        model: from :func:`stan_mm.apis.init_model` (``model.cfg`` gives the pipeline).
        key: :func:`model_key` of the model (a folder holding another key is refused).
        text_to_video: for each text, the index in ``videos`` it describes (written as
            ``text_to_video.npy``, remapped when unreadable videos are skipped; their texts
            are dropped).
        views: ``'CLIPSxCROPS'`` test views (recognizers), or None (the config's).
        skip_bad: list unreadable videos in ``bad_videos.txt`` and go on; otherwise the
            first one raises :class:`VideoReadError` naming the file (after the finished
            embeddings were saved). A video or text whose embedding holds NaN or inf is
            never skipped: :class:`~stan_mm.apis.embed.NonFiniteEmbeddingError` (a
            ``ValueError``) names it, after the finite embeddings were saved.
        limit: embed at most this many new videos, save them and return
            (``complete=False``); a later call continues.
        shard_size: videos per shard file.
        overwrite: replace results of another model (or precision) in ``out_dir``, and
            embed again the videos of a finished folder whose files are damaged (otherwise
            :class:`DamagedFeatureFolder`).
        extra_meta: more entries for ``meta.json`` (``precision`` and ``amp`` are this
            function's, from ``precision``).
        precision: what the model computes in while embedding: ``'fp32'``, or ``'bf16'`` /
            ``'fp16'`` when the caller runs it under autocast (``tools/extract_features.py
            --amp``; this function does not enable autocast). Recorded in
            ``.partial/run.json`` and ``meta.json`` (``precision``, and ``amp``: ``false``
            or the dtype); shards or finished video rows of another precision are refused
            with :class:`PrecisionMismatchError` (``overwrite`` replaces them).

    Returns:
        :class:`ExtractionResult`.
    """
    from .embed import embed_video_batch, require_text_tower
    from .inference import model_kind
    from .video import VideoPipeline, check_views
    check_views(model_kind(model), views)
    if precision not in PRECISIONS:
        raise ValueError(f'extract_features: precision must be one of {PRECISIONS}, got '
                         f'{precision!r}')
    make_feature_folder(out_dir)
    _remove_temp_files(out_dir, log)   # (extract_features holds the folder's lock)
    videos = list(videos or [])
    texts = None if texts is None else list(texts)
    if text_to_video is not None and (texts is None or len(text_to_video) != len(texts)):
        raise ValueError('text_to_video needs one video index per text')
    if texts:
        require_text_tower(model)  # fail before the long video pass
    store = ShardStore(out_dir)
    finished = _check_folder(out_dir, key, overwrite, store, precision, log)
    if finished is not None and not overwrite:
        # a finished folder is rewritten with what this run embeds: refuse to drop the
        # video (or text) embeddings of an earlier run that this one does not redo
        kinds = (('num_videos', 'video embeddings', videos),
                 ('num_texts', 'text embeddings', texts))
        dropped = [f'{finished[n]} {what}' for n, what, given in kinds
                   if finished.get(n) and not given]
        if dropped:
            raise FeatureFolderError(
                f'{out_dir} holds {" and ".join(dropped)} of an earlier run, which this run '
                f'would drop (it embeds none). Pass those inputs again to keep them, use '
                f'another output folder, or --overwrite to replace them')
    result = ExtractionResult(out_dir=out_dir, complete=False, num_videos=len(videos))
    stamps = [_stamp(_abs(video_root, p)) for p in videos]
    keys = [_item_key(_rebase(video_root, p, video_root), s) for p, s in zip(videos, stamps)]
    rows = None
    if finished is not None:
        try:
            rows = _finished_rows(out_dir, finished, video_root, log)
        except DamagedFeatureFolder as e:
            if not overwrite:
                raise
            log(f'{e.path} is damaged ({e.reason}): its videos are embedded again '
                f'(overwrite)')
    known_bad = _known_bad(finished, video_root) if (finished and skip_bad) else {}
    if known_bad:    # the same unreadable files reached by other paths (links, mounts)
        named = set(rows[0]) if rows is not None else set()
        held = dict.fromkeys(known_bad, osp.abspath(video_root))
        for k, old in _same_files([k for k in keys if k not in named], video_root,
                                  held).items():
            known_bad[k] = known_bad[old]
        # (and in a moved folder: by their path in it, size and modification time)
        bad_roots = _recorded_roots(list(known_bad), finished['video_root'], video_root,
                                    rebased=True)
        unnamed = [k for k in keys if k not in named and k not in known_bad]
        for k, old in _moved_files(unnamed, video_root, bad_roots).items():
            known_bad[k] = known_bad[old]
    good = [k for k in keys if k not in known_bad]
    result.bad = [(p, known_bad[k]) for p, k in zip(videos, keys) if k in known_bad]
    if (rows is not None and rows[0] == good and texts is None and not finished['num_texts']
            and not store.exists()):
        log(f'{len(videos)} videos: all already embedded in {out_dir} (reused)'
            + (f'; {len(result.bad)} unreadable, unchanged since they failed (not retried)'
               if result.bad else ''))
        result.complete, result.reused, result.num_videos = True, len(good), len(good)
        return result
    store.start(key, precision)
    if rows is not None:   # the finished rows become reusable partial results
        store.write(*rows, root=video_root)
    shards, shard_roots = store.read_with_roots()
    # key (relative to video_root) -> the other root it was recorded under: the finished
    # folder's, the shards'
    recorded: Dict[str, str] = {}
    for old in set(shard_roots.values()):
        recorded.update(_recorded_roots([k for k, r in shard_roots.items() if r == old],
                                        old, video_root))
    if rows is not None:
        recorded.update(_recorded_roots(rows[0], finished['video_root'], video_root,
                                        rebased=True))
    done, roots = _keyed_for_root(shards, shard_roots, video_root)
    # rows of the same files embedded under other paths (a link to the folder, another
    # mount of it): reused, and written under this run's paths
    aliased = {k: old for k, old in _same_files(keys, video_root, roots).items()
               if k not in known_bad}
    for k, old in aliased.items():
        done[k] = done[old]
    # rows of a moved folder (its recorded root is gone): matched by their path in it,
    # size and modification time
    moved = _moved_files([k for k in keys if k not in done and k not in known_bad],
                         video_root, {k: r for k, r in recorded.items() if k in done})
    for k, old in moved.items():
        done[k] = done[old]
    todo = [i for i, k in enumerate(keys) if k not in done and k not in known_bad]
    result.reused = len(videos) - len(todo) - len(result.bad)
    if videos:   # the three counts add up to len(videos)
        log(f'{len(videos)} videos: {result.reused} already embedded (reused), '
            f'{len(todo)} to embed'
            + (f', {len(result.bad)} unreadable, unchanged since they failed (not retried)'
               if result.bad else ''))
    if aliased:
        first = next(iter(aliased.values()))
        was = osp.normpath(osp.join(roots[first] or '', _key_parts(first)[0]))
        log(f'{len(aliased)} of the reused videos were embedded under another path of the '
            f'same file (e.g. {was}: a link, or another mount of its folder); {out_dir} '
            f'now names them by the paths given in this run')
    _log_moved(moved, recorded, video_root, log)
    if limit is not None and len(todo) > limit:
        result.remaining = len(todo) - limit
        todo = todo[:limit]

    pipeline = VideoPipeline(model.cfg, views) if todo else None
    new_rows: Dict[str, np.ndarray] = {}
    if todo:
        _embed_missing(model, pipeline, videos, video_root, keys, todo, store, new_rows,
                       result, batch_size, num_workers, skip_bad, shard_size, progress,
                       log, embed_video_batch)
    if videos:
        log(f'embedded {result.new} new videos, reused {result.reused}, '
            f'{len(result.bad)} unreadable')
    if result.remaining:
        log(f'stopped after {limit} new videos (limit); {result.remaining} left: run the '
            f'same command again to continue')
        return result
    done.update(new_rows)
    if videos and pipeline is None:
        pipeline = VideoPipeline(model.cfg, views)
    meta = dict(format=FORMAT, version=FORMAT_VERSION, model_key=key,
                model_type=type(model).__name__, normalization=NORMALIZATION, views=views,
                pipeline=pipeline.describe() if pipeline is not None else None,
                video_root=video_root, num_bad_videos=len(result.bad),
                created=datetime.datetime.now().isoformat(timespec='seconds'))
    meta.update(extra_meta or {})
    # the precision of every row (mixed ones are refused by _check_folder); amp: as the
    # tool recorded it before precision was (false, 'bf16', 'fp16')
    meta.update(precision=precision, amp=False if precision == 'fp32' else precision)
    _finalize(model, out_dir, meta, videos, keys, stamps, done, texts, text_to_video,
              result, batch_size, log, progress)
    store.remove()
    return result


def _finalize(model, out_dir, meta, videos, keys, stamps, done, texts, text_to_video,
              result, batch_size, log, progress: bool = True) -> None:
    """Assemble the rows of the readable videos in list order, embed the texts (dropping
    those of unreadable videos), write the final files (``result`` updated)."""
    from .embed import embed_dim, embed_texts
    bad_set = {p for p, _ in result.bad}
    kept = [i for i, p in enumerate(videos) if p not in bad_set]
    num_texts_given = None if texts is None else len(texts)
    if videos and not kept:
        raise VideoReadError(videos[0], f'none of the {len(videos)} videos could be read; '
                             f'first reason: {result.bad[0][1]}')
    dim = embed_dim(model)
    video_emb = (np.stack([done[keys[i]] for i in kept]).astype(np.float32) if kept
                 else np.zeros((0, dim), np.float32))
    text_emb, t2v = None, None
    if texts is not None:
        if text_to_video is not None:
            new_index = {old: new for new, old in enumerate(kept)}
            pairs = [(t, new_index[v]) for t, v in zip(texts, text_to_video)
                     if v in new_index]
            if len(pairs) != len(texts):
                log(f'{len(texts) - len(pairs)} texts of unreadable videos dropped')
            texts = [t for t, _ in pairs]
            t2v = np.array([v for _, v in pairs], dtype=np.int64)
        log(f'embedding {len(texts)} texts')
        text_emb = embed_texts(model, texts, batch_size=max(batch_size, 64),
                               progress=progress).numpy()
    stamp_of = dict(zip(videos, stamps))
    meta.update(embed_dim=int(dim), dtype='float32', num_videos=len(kept),
                num_texts=0 if texts is None else len(texts), num_videos_given=len(videos),
                num_texts_given=num_texts_given,
                has_text_to_video=t2v is not None,
                # path, size, mtime_ns, reason: an unchanged unreadable video is not retried
                bad_videos=[[p, *stamp_of[p], r] for p, r in result.bad if p in stamp_of])
    _write_final(out_dir, meta, [videos[i] for i in kept], video_emb,
                 np.array([stamps[i] for i in kept], dtype=np.int64).reshape(-1, 2), texts,
                 text_emb, t2v, result.bad)
    result.complete = True
    result.num_videos = len(kept)
    result.num_texts = meta['num_texts']


def _embed_missing(model, pipeline, videos, video_root, keys, todo, store, new_rows,
                   result, batch_size, num_workers, skip_bad, shard_size, progress, log,
                   embed_video_batch) -> None:
    """Embed ``videos[todo]`` in batches; shards are flushed every ``shard_size`` videos
    and whenever the loop ends (also on errors and interrupts)."""
    from stan_mm.utils.progress import progress_bar

    from .embed import check_finite_embeddings
    items = _VideoItems(pipeline, [_abs(video_root, videos[i]) for i in todo])
    loader = torch.utils.data.DataLoader(
        items, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        collate_fn=_collate, persistent_workers=False)
    pending_keys: List[str] = []
    pending_emb: List[np.ndarray] = []

    def flush():
        # a failed write (full disk) gives the rows up: the flush of the ``finally`` below
        # does not try again; an interrupt during the write keeps them for that flush
        if pending_keys:
            try:
                store.write(pending_keys, np.stack(pending_emb), root=video_root)
            except FeatureWriteError:
                pending_keys.clear()
                pending_emb.clear()
                raise
            pending_keys.clear()
            pending_emb.clear()

    bar = progress_bar(total=len(todo), desc='videos', unit='video', disable=not progress)
    try:
        for batch in loader:
            good = [(i, s) for i, s, err in batch if s is not None]
            if good:  # first: the readable videos of the batch are kept even if one fails
                emb = embed_video_batch(model, [s for _, s in good])
                finite = torch.isfinite(emb).all(dim=1).tolist()
                for (i, _), row, ok in zip(good, emb.numpy(), finite):
                    if not ok:         # raised below, after the finite rows are kept
                        continue
                    k = keys[todo[i]]
                    pending_keys.append(k)
                    pending_emb.append(row)
                    new_rows[k] = row
                    result.new += 1
                check_finite_embeddings(emb, [videos[todo[i]] for i, _ in good], 'video')
            for i, _, err in batch:
                if err is not None:
                    path = videos[todo[i]]
                    if not skip_bad:
                        raise VideoReadError(_abs(video_root, path), err)
                    log(f'WARNING: skipped unreadable video {path}: {err}')
                    result.bad.append((path, err))
            bar.update(len(batch))
            if len(pending_keys) >= shard_size:
                flush()
    finally:
        try:
            flush()
        finally:
            bar.close()


def _write_final(out_dir, meta, video_paths, video_emb, video_stamps, texts, text_emb, t2v,
                 bad) -> None:
    # meta.json first: the folder is "unfinished" until the new meta.json exists
    _remove_outputs(out_dir, ('meta.json', ) + OUTPUT_FILES[:-1])
    if len(video_paths):
        atomic_save_npy(osp.join(out_dir, 'videos.npy'), video_emb)
        _atomic_write_text(osp.join(out_dir, 'videos.txt'), _lines(video_paths, 'video path'))
        atomic_save_npy(osp.join(out_dir, 'video_stamps.npy'), video_stamps)
    if texts is not None:
        atomic_save_npy(osp.join(out_dir, 'texts.npy'), text_emb.astype(np.float32))
        flat = [' '.join(t.splitlines()) for t in texts]  # one line per text
        _atomic_write_text(osp.join(out_dir, 'texts.txt'), _lines(flat, 'text'))
    if t2v is not None:
        atomic_save_npy(osp.join(out_dir, 'text_to_video.npy'), t2v)
    if bad:
        _atomic_write_text(osp.join(out_dir, 'bad_videos.txt'),
                           ''.join(f'{p}\t{r}\n' for p, r in bad))
    _atomic_write_text(osp.join(out_dir, 'meta.json'), json.dumps(meta, indent=1))


# help() and inspect.signature show the keywords (the function itself takes **kwargs)
extract_features.__signature__ = inspect.signature(_extract_features)
extract_features.__doc__ = (_extract_features.__doc__ or '') + """
    The run holds :func:`folder_lock` on ``out_dir``: a second run on the same folder
    (another ``extract_features``, or a search on the same gallery cache) is refused with
    :class:`FeatureFolderError` instead of deleting this run's partial results.
    """
