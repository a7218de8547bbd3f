"""Video decoding that fails with the file's name, and a dataset wrapper that skips bad videos.

MMAction2's ``DecordInit``/``DecordDecode`` let decord's own errors through: a zero-byte or
truncated file gives ``RuntimeError: Error reading 0 bytes...`` or a ``DECORDError`` from
``video_reader.cc`` that does not say which file it was, and inside a DataLoader worker it
becomes a traceback of the worker. Measured with decord 0.6.0 on the files the tests write:

==========================  ======================================================
input                       stock DecordInit / DecordDecode
==========================  ======================================================
missing file                ``FileNotFoundError`` (names the file)
zero bytes, text, header    ``RuntimeError: Error reading N bytes...`` (no name)
  cut off
truncated frame data        ``DECORDError ... Error sending packet`` (no name)
frame width 2-8, 12, 16,    ``mode='accurate'``: ``DECORDError ...
  24, 48, 72 px (mp4v;      DECORDArrayCopyFromTo: The size must exactly match``
  decord bug)               although the file is fine; ``mode='efficient'``: frames
                            ``[H, W, 4..48]``, decord's padded row buffer
==========================  ======================================================

:class:`SafeDecordInit` and :class:`SafeDecordDecode` are drop-in replacements (same
arguments, same result keys) that raise :class:`VideoReadError` ``(filename, reason)``
instead, and decode the frame widths that trip decord's copy bug correctly. Decoded
frames are always ``[H, W, 3]`` uint8 RGB (grayscale videos become three equal channels).

decord's padded frames. decord 0.6.0 hands a frame over without a copy whenever FFmpeg's
row length in bytes (``linesize``, padded for alignment) is a multiple of the width, as
``[H, W, linesize // W]``: for most widths ``linesize == 3 W``, for a few (above; which
ones depends on FFmpeg's alignment) the rows are padded and the last axis is 4..48. Its
``get_batch`` then fails to copy the frame into the ``[T, H, W, 3]`` batch; ``seek`` +
``next`` returns the padded buffer. :class:`SafeDecordDecode` checks every batch and frame
against the reader's ``[H, W, 3]``: a padded frame is read back as rows of ``linesize``
bytes (RGB first, never RGBA), a batch that fails to copy and any other shape is decoded by
OpenCV (``tests/test_decode_widths.py``: every even width 2-100, both modes, equal to
OpenCV's frames).

:class:`SkipUnreadable` wraps any MMAction2 dataset for training: a sample whose video raises
:class:`VideoReadError` is replaced by another sample chosen deterministically from the
index, each skip is logged (WARNING, file and reason) and recorded in the substitute's
``data_samples.metainfo['skipped_videos']``, where :class:`stan_mm.engine.SkippedVideosHook`
counts it on the main process (so the count is right with DataLoader workers and DDP).
"""
import contextlib
import io
import logging
import math
import os
import os.path as osp
import re
import stat
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmaction.datasets.transforms.loading import DecordDecode, DecordInit
from mmaction.registry import DATASETS, TRANSFORMS
from mmengine.logging import print_log

from stan_mm.errors import ConfigValueError

from .fast_paths import enabled_by_env, mark_owned

__all__ = ['VideoReadError', 'SafeDecordInit', 'SafeDecordDecode', 'SkipUnreadable',
           'decode_frames_opencv', 'decord_batch_to_numpy']

# SafeDecordDecode takes decord's batch without a copy (decord_batch_to_numpy); off with
# STAN_MM_NO_FAST_PATHS=1 or inside fast_paths.disabled()
ZERO_COPY = enabled_by_env()

_MSG = "cannot read video file '{}': {}"
_MSG_RE = re.compile(r"cannot read video file '(.*?)': (.*)", re.S)
# decord 0.6.0 fails to copy decoded frames of some widths (linesize padding) although the
# file decodes fine with FFmpeg/OpenCV.
_DECORD_COPY_BUG = 'DECORDArrayCopyFromTo'


class VideoReadError(RuntimeError):
    """A video cannot be read. ``filename`` and ``reason`` say which file and why.

    Constructed with one argument (what PyTorch does when it re-raises an exception caught
    in a DataLoader worker), the message is kept and ``filename``/``reason`` are parsed
    back from it, so the error keeps its type and its file name across processes.
    """

    def __init__(self, filename, reason: Optional[str] = None):
        if reason is None:
            message = str(filename)
            found = _MSG_RE.search(message)
            self.filename = found.group(1) if found else None
            self.reason = found.group(2).split('\n', 1)[0] if found else message
        else:
            self.filename, self.reason = str(filename), str(reason)
            message = _MSG.format(self.filename, self.reason)
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (self.filename, self.reason) if self.filename is not None
                else (self.args[0], ))


#: decord's location prefixes (``[hh:mm:ss] ``, ``/src/.../file.cc:123: ``); nested errors
#: carry several, which would fill the shortened reason with paths
_DECORD_PREFIX = re.compile(r'\[\d\d:\d\d:\d\d\]\s*|\S+\.(?:cc|cpp|cu|h):\d+:\s*')


def _short(err: BaseException, limit: int = 200) -> str:
    """The informative part of a decord/FFmpeg error: its last non-empty line (decord's
    check failures: their first line), without decord's location prefixes, shortened."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    text = lines[-1] if lines else type(err).__name__
    for ln in lines:  # decord's check failures carry the useful part on the first line
        if 'Check failed' in ln or 'ERROR' in ln:
            text = ln
            break
    text = _DECORD_PREFIX.sub('', text).strip() or type(err).__name__
    text = f'{type(err).__name__}: {text}'
    return text if len(text) <= limit else text[:limit - 3] + '...'


class _VideoSource:
    """A decord ``VideoReader`` plus what a fallback decoder needs (the name, and the bytes
    when the video came from a file client rather than the local disk).

    Forwards every attribute to the reader, so MMAction2's own transforms that use
    ``results['video_reader']`` work unchanged.
    """

    #: ``(H, W)`` of the reader's frames, once known (:func:`_reader_frame_size`)
    frame_size = None

    def __init__(self, reader, data: bytes, filename: str):
        self.reader, self.data, self.filename = reader, data, filename

    def __len__(self) -> int:
        return len(self.reader)

    def __getattr__(self, name):
        if name in ('reader', 'data', 'filename'):  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.reader, name)


#: local paths already warned about by :func:`resolve_video_name` (once per path)
_BOTH_WARNED = set()


def resolve_video_name(filename: str, local: bool = True) -> str:
    """The file a video name means, as :class:`SafeDecordInit` reads it.

    MMAction2's ``DecordInit`` reads a name without an extension, ``abc``, as ``abc.mp4``.
    On the local disk (``local=True``) that holds only when ``abc`` is not a file itself: an
    existing file ``abc`` is read as named, and when ``abc.mp4`` exists too a warning (once
    per path) names both. A name that is neither there nor has an ``abc.mp4`` becomes
    ``abc.mp4`` (what a missing file is reported as, next to the name given). Names of
    other storages (``local=False``) keep ``DecordInit``'s rule.
    """
    if osp.splitext(filename)[0] != filename:
        return filename
    mp4 = filename + '.mp4'
    if not local:
        return mp4
    if osp.isfile(filename):
        if osp.isfile(mp4):
            key = osp.abspath(filename)
            if key not in _BOTH_WARNED:
                _BOTH_WARNED.add(key)
                import warnings
                warnings.warn(f'video {filename!r} has no extension and {mp4!r} exists too: '
                              f'reading {filename!r}, the file the name gives (a name '
                              f'without an extension means <name>.mp4 only when no such '
                              f'file exists); give {mp4!r} to read that one', UserWarning,
                              stacklevel=2)
        return filename
    if osp.lexists(filename) and not osp.lexists(mp4):
        return filename   # a folder (or a dangling link): reported as what it is
    return mp4


@TRANSFORMS.register_module()
class SafeDecordInit(DecordInit):
    """``DecordInit`` that raises :class:`VideoReadError` naming the file.

    Required keys: ``filename``. Added keys: ``video_reader``, ``total_frames``,
    ``avg_fps`` (as ``DecordInit``).

    Checks, in order: the file can be read (missing: ``file not found``; a directory; no
    read permission), it is not empty, decord can open it, it has at least one frame.
    A name without an extension, ``abc``, is read as ``abc.mp4`` (as ``DecordInit``) unless
    a local file ``abc`` exists (:func:`resolve_video_name`).

    Local files (``io_backend='disk'`` without file client arguments) are opened by decord
    from their absolute path, as bare decord does; other storages are read into memory
    through mmengine's ``FileClient`` and decord reads those bytes (as ``DecordInit``).

    With ``max_seconds`` only the start of each video is used: ``total_frames`` becomes
    the number of frames whose timestamp ``index / avg_fps`` lies below ``max_seconds``
    (at least 1), so the sampler that follows spreads its frames over that window. The
    DiDeMo configs use 31 s, the window CLIP4Clip-style code decodes (DiDeMo's moment
    annotations cover only the first 30 s of a video). A video whose frame rate is not a
    positive number is used whole, with a warning naming it.

    Args: as ``DecordInit`` (``io_backend='disk'``, ``num_threads=1``, file client
    keyword arguments), plus ``max_seconds`` (``None``: the whole video).
    """

    def __init__(self, io_backend: str = 'disk', num_threads: int = 1,
                 max_seconds: Optional[float] = None, **kwargs) -> None:
        super().__init__(io_backend=io_backend, num_threads=num_threads, **kwargs)
        if max_seconds is not None and (
                not isinstance(max_seconds, (int, float)) or isinstance(max_seconds, bool)
                or not 0 < max_seconds < float('inf')):
            raise ConfigValueError(f'SafeDecordInit: max_seconds={max_seconds!r}; expected a '
                                   f'positive number of seconds or None (the whole video)')
        self.max_seconds = max_seconds

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(io_backend={self.io_backend}, '
                f'num_threads={self.num_threads}, max_seconds={self.max_seconds})')

    def _get_video_reader(self, filename: str) -> _VideoSource:
        # 'abc' means 'abc.mp4' (DecordInit) unless a local file 'abc' exists
        given, filename = filename, resolve_video_name(filename, self._local())
        import decord
        if self._local():
            # a local file: decord opens the path itself (as bare decord does), which
            # saves reading the whole file into memory first (~0.3 ms per 340x256 clip)
            try:
                info = os.stat(filename)
            except FileNotFoundError:
                if filename != given:   # neither 'abc' nor 'abc.mp4'
                    raise VideoReadError(given, f'file not found (nor {filename!r}, which '
                                         f'a name without an extension also means)') from None
                raise VideoReadError(filename, 'file not found') from None
            except OSError as e:
                raise VideoReadError(filename,
                                     f'the file cannot be read ({_short(e)})') from e
            if stat.S_ISDIR(info.st_mode):
                raise VideoReadError(filename, 'it is a directory, not a video file')
            size = info.st_size
            # absolute, so FFmpeg never reads a relative 'name:rest' as a protocol
            source, data = osp.abspath(filename), None
            if not os.access(filename, os.R_OK):
                raise VideoReadError(filename, 'the file cannot be read (no read permission)')
        else:
            try:
                data = self._read_bytes(filename)
            except FileNotFoundError:
                raise VideoReadError(filename, 'file not found') from None
            except (OSError, ValueError) as e:
                raise VideoReadError(filename,
                                     f'the file cannot be read ({_short(e)})') from e
            source, size = io.BytesIO(data), len(data)
        if size == 0:
            raise VideoReadError(filename, 'the file is empty (0 bytes)')
        try:
            reader = decord.VideoReader(source, num_threads=self.num_threads)
        except Exception as e:  # decord raises RuntimeError or DECORDError
            raise VideoReadError(
                filename, f'decord cannot open it as a video ({size} bytes; '
                f'{_short(e)}); the file is not a video, is truncated or is corrupt') from e
        if len(reader) < 1:
            raise VideoReadError(filename, 'the video has no frames')
        return _VideoSource(reader, data, filename)

    def _local(self) -> bool:
        """Files on the local disk, read without a file client."""
        return self.io_backend == 'disk' and not self.kwargs

    def _read_bytes(self, filename: str) -> bytes:
        if self.file_client is None:  # other storages, as DecordInit does
            from mmengine.fileio import FileClient
            self.file_client = FileClient(self.io_backend, **self.kwargs)
        return self.file_client.get(filename)

    def transform(self, results: Dict) -> Dict:
        source = self._get_video_reader(results['filename'])
        results['video_reader'] = source
        results['total_frames'] = len(source)
        try:
            results['avg_fps'] = source.get_avg_fps()
        except Exception as e:
            raise VideoReadError(source.filename,
                                 f'decord cannot read its frame rate ({_short(e)})') from e
        if self.max_seconds is not None:
            fps = results['avg_fps']
            if isinstance(fps, (int, float)) and 0 < fps < float('inf'):
                window = max(1, math.ceil(self.max_seconds * fps))
                results['total_frames'] = min(results['total_frames'], window)
            else:
                print_log(f'SafeDecordInit: {source.filename} reports frame rate {fps!r}; '
                          f'max_seconds={self.max_seconds} cannot be applied, the whole '
                          f'video is used', logger='current', level=logging.WARNING)
        return results


@TRANSFORMS.register_module()
class SafeDecordDecode(DecordDecode):
    """``DecordDecode`` that raises :class:`VideoReadError` naming the file, decodes the frame
    widths decord 0.6.0 cannot copy correctly (module docstring), and always returns RGB
    ``[H, W, 3]`` uint8 frames (``results['imgs']``, a list of T' = ``len(frame_inds)``
    arrays): every decord batch and frame is checked against the reader's ``[H, W, 3]``;
    one that is not is decoded by OpenCV (a padded frame buffer of ``mode='efficient'`` is
    read back without it).

    Required keys: ``video_reader``, ``frame_inds``, ``filename``. Added keys: ``imgs``,
    ``original_shape``, ``img_shape`` (as ``DecordDecode``).

    Frame indices outside ``[0, total_frames)`` raise ``IndexError`` (a sampling problem,
    not a bad file). Works after ``SafeDecordInit`` (preferred) or ``DecordInit``.

    Args:
        mode: ``'accurate'`` or ``'efficient'`` (as ``DecordDecode``).
    """

    def transform(self, results: Dict) -> Dict:
        container = results['video_reader']
        filename = getattr(container, 'filename', None) or str(results.get('filename'))
        inds = np.asarray(results['frame_inds']).reshape(-1)
        total = len(container)
        if inds.size == 0:
            raise IndexError(f'{filename}: no frame indices to decode (frame_inds is empty)')
        if inds.min() < 0 or inds.max() >= total:
            bad = inds[(inds < 0) | (inds >= total)]
            raise IndexError(f'{filename}: frame indices {bad[:8].tolist()} lie outside the '
                             f'video\'s {total} frames; check the sampling transform '
                             f'(e.g. SampleFrames(out_of_bound_opt=\'loop\') or '
                             f'UniformSample)')
        results['frame_inds'] = inds
        self._filename = filename
        try:
            return super().transform(results)
        finally:
            self._filename = None

    def _decord_load_frames(self, container, frame_inds: np.ndarray) -> List[np.ndarray]:
        filename = getattr(self, '_filename', None) or getattr(container, 'filename', '?')
        decode_inds, order = frame_inds, None
        flat = np.asarray(frame_inds).reshape(-1)
        increasing = bool(np.all(flat[1:] > flat[:-1]))
        if self.mode == 'accurate' and not increasing:
            # indices out of stream order or repeated (multi-clip test sampling gives them
            # clip by clip: 7, 44, ..., 269, 14, 51, ...): decord's get_batch seeks back and
            # decodes again for every clip (300-frame H.264, 4 clips: the k400 test pipeline
            # took 2.8x as long, docs/benchmarks.md). Decode each frame once, in stream
            # order, and hand them out in the order asked (same frames)
            decode_inds, order = np.unique(flat, return_inverse=True)
            order = order.reshape(-1)
        try:
            if self.mode == 'accurate':
                imgs = self._decord_batch(container, decode_inds)
            else:
                imgs = self._decord_seek_frames(container, decode_inds)
            if imgs is not None and order is not None:
                imgs = _in_requested_order(imgs, order)
        except Exception as e:
            if _DECORD_COPY_BUG not in str(e):
                raise VideoReadError(
                    filename, f'decoding frames {_brief(frame_inds)} failed ({_short(e)}); '
                    f'the file is probably truncated or corrupt') from e
            imgs = None
        if imgs is None:
            # decord's copy bug (accurate mode raises it), or frames of another shape than
            # the reader's [H, W, 3]: OpenCV decodes the frames asked for
            source = filename  # a local file, else the bytes SafeDecordInit read
            if not osp.isfile(filename) and getattr(container, 'data', None) is not None:
                source = container.data
            imgs = decode_frames_opencv(source, frame_inds, filename)
        imgs = [_as_rgb(img, filename) for img in imgs]
        # new arrays, held by results['imgs'] only: the pipeline owns them (fast_paths)
        mark_owned(imgs)
        return imgs

    @staticmethod
    def _decord_batch(container, inds: np.ndarray) -> Optional[List[np.ndarray]]:
        """``get_batch``'s frames, or ``None`` when the batch is not ``[T, H, W, 3]`` uint8.

        decord allocates the batch as ``[T, H, W, 3]`` with the reader's own frame size and
        copies each frame into it, raising its copy error when a frame does not fit; the
        size is recorded for the file (:func:`_reader_frame_size`)."""
        batch = container.get_batch(inds)
        arr = decord_batch_to_numpy(batch) if ZERO_COPY else _copy_to_numpy(batch)
        if arr.ndim != 4:
            return None
        size = _reader_frame_size(container, arr.shape[1:3])
        if arr.dtype != np.uint8 or arr.shape != (len(inds), *size, 3):
            return None
        return list(arr)

    @staticmethod
    def _decord_seek_frames(container, inds: np.ndarray) -> Optional[List[np.ndarray]]:
        """``DecordDecode``'s ``'efficient'`` mode (``seek`` then ``next`` per index), each
        frame checked against the reader's ``[H, W, 3]``: ``None`` when one is not that and
        is not decord's padded frame buffer of it either (:func:`_decord_frame_rgb`).

        The reader's ``H, W``: known from an earlier decode of the file, else asked from
        decord when a frame is not ``[H, W, 3]`` (:func:`_reader_frame_size`), else the
        first frame's (decord gives every frame of a reader the same size)."""
        size = getattr(container, 'frame_size', None)
        container.seek(0)
        imgs = []
        for idx in inds:
            container.seek(int(idx))
            img = _copy_to_numpy(container.next())
            if size is None and not (img.ndim == 3 and img.shape[-1] == 3):
                size = _reader_frame_size(container)
                if size is None:
                    return None
            img = _decord_frame_rgb(img, size)
            if img is None:
                return None
            size = size or img.shape[:2]
            imgs.append(img)
        _reader_frame_size(container, size)
        return imgs


def decord_batch_to_numpy(batch) -> np.ndarray:
    """The frames of a decord ``get_batch`` result as a uint8 ``[T, H, W, C]`` array that
    shares decord's memory (no copy).

    ``NDArray.asnumpy()``, which MMAction2's ``DecordDecode`` calls, copies the batch into a
    new array: for 8 frames of 340x256 that is 2 MB written, and fresh pages, per clip
    (measured 0.6-1.0 ms of a 14 ms clip, docs/benchmarks.md). The batch is instead handed
    over through DLPack: the returned array keeps decord's buffer alive, and decord
    allocates a new buffer for every batch, so later calls do not overwrite it. A torch
    tensor (decord's ``torch`` bridge) is viewed as well; anything else, and a batch DLPack
    cannot hand over (or hands over with another shape than the batch's), is copied with
    ``asnumpy()`` as before. The caller checks the frame shape: :class:`SafeDecordDecode`
    takes only ``[T, H, W, 3]`` uint8 of the reader's ``H, W`` (else OpenCV decodes).
    """
    if isinstance(batch, torch.Tensor):
        return batch.numpy()
    to_dlpack = getattr(batch, 'to_dlpack', None)
    if to_dlpack is not None and getattr(batch, 'ctx', None) is not None and \
            str(batch.ctx).startswith('cpu'):
        try:
            arr = torch.from_dlpack(to_dlpack()).numpy()
        except (RuntimeError, TypeError, ValueError, BufferError):
            arr = None
        if arr is not None and arr.dtype == np.uint8 and arr.flags.c_contiguous and \
                arr.shape == tuple(getattr(batch, 'shape', arr.shape)):
            return arr
    return batch.asnumpy()


def _in_requested_order(frames, order: np.ndarray) -> List[np.ndarray]:
    """``frames[order[i]]`` for every ``i`` (``frames`` a list, or a dict by frame index);
    a frame asked for again is a copy (as decord's
    batch gives it: a later in-place transform, e.g. Flip, must act on each slot once)."""
    out, given = [], set()
    for k in order.tolist():
        out.append(frames[k] if k not in given else frames[k].copy())
        given.add(k)
    return out


def _brief(inds: np.ndarray, limit: int = 8) -> str:
    inds = np.asarray(inds).reshape(-1).tolist()
    return str(inds) if len(inds) <= limit else str(inds[:limit])[:-1] + ', ...]'


def _reader_frame_size(container, seen=None) -> Optional[Tuple[int, int]]:
    """``(H, W)`` of the frames the decord reader makes, once per file (kept on
    :class:`_VideoSource`).

    ``seen``: the size of frames decord just decoded (it allocates ``get_batch``'s result as
    ``[T, H, W, 3]`` with the reader's own ``H, W``, and scales every frame to that size: the
    first two axes of a frame are its true size, only the third can be wrong). Otherwise
    it is asked from decord: ``get_batch([])`` allocates an empty ``[0, H, W, 3]`` batch
    without decoding anything (0.1-0.2 ms, so only when a frame looks wrong). ``None``
    when neither is known.
    """
    size = getattr(container, 'frame_size', None)
    if size is not None:
        return size
    if seen is None:
        try:
            shape = tuple(container.get_batch([]).shape)
        except Exception:    # not a decord reader
            return None
        if len(shape) != 4 or shape[-1] != 3:
            return None
        seen = shape[1:3]
    size = tuple(int(n) for n in seen)
    if isinstance(container, _VideoSource):
        container.frame_size = size
    return size


def _decord_frame_rgb(img: np.ndarray,
                      size: Optional[Tuple[int, int]]) -> Optional[np.ndarray]:
    """One frame from decord's ``next()`` as ``[H, W, 3]`` uint8, or ``None`` when it is
    not the reader's ``size`` ``(H, W)`` (``None``: the frame's own).

    decord 0.6.0 always converts to RGB24, and hands a frame over without a copy when its
    row length in bytes (FFmpeg's ``linesize``, padded for alignment) is a multiple of the
    width, as an array ``[H, W, linesize // W]`` (else it copies the rows into a compact
    ``[H, W, 3]``; ``AsNDArray`` in decord's ``threaded_decoder.cc``). For most widths the
    rows are not padded (``linesize == 3 W``: ``[H, W, 3]``); for some (measured here: even
    widths 2-8, 12, 16 and 24 with 96-byte rows, 48 with 192, 72 with 288) the third axis
    is 4..48 and each row holds the ``3 W`` bytes of RGB, then padding. Such a frame is
    read back as rows of ``linesize`` bytes (``tests/test_decode_widths.py`` compares it
    with OpenCV's decoding for every even width 2-100). It is never RGBA."""
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3:
        return None
    height, width, channels = img.shape
    if size is not None and (height, width) != tuple(size):
        return None
    if channels == 3:
        return img
    if channels < 3 or height < 1 or width < 1:
        return None
    rows = img.reshape(height, width * channels)     # rows of linesize bytes
    return np.ascontiguousarray(rows[:, :3 * width].reshape(height, width, 3))


def _copy_to_numpy(frames) -> np.ndarray:
    """A decord ``NDArray`` (or a tensor of decord's torch bridge) copied into numpy, as
    ``DecordDecode`` does (``asnumpy``)."""
    if isinstance(frames, torch.Tensor):
        return frames.numpy().copy()
    return frames.asnumpy()


def _as_rgb(img: np.ndarray, filename: str) -> np.ndarray:
    """``[H, W]``, ``[H, W, 1]`` or ``[H, W, 3]`` uint8 -> ``[H, W, 3]`` (gray repeated).

    There is no 4-channel case: decord's frames are RGB (a wider last axis is its padded
    buffer, :func:`_decord_frame_rgb`) and OpenCV's are converted to RGB."""
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 3) or min(img.shape[:2]) < 1:
        raise VideoReadError(filename, f'decoded frame has shape {img.shape}; expected '
                             f'[H, W] or [H, W, 1|3]')
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return np.ascontiguousarray(img)


def decode_frames_opencv(source, frame_inds: Sequence[int],
                         filename: Optional[str] = None) -> List[np.ndarray]:
    """Decode frames ``frame_inds`` (any order, repeats allowed) with OpenCV, reading the
    stream sequentially up to the largest index (exact frames, no seeking).

    Args:
        source: a local path, or the file's bytes (written to a temporary file in
            ``tempfile.gettempdir()``, removed on return and on any error, a write
            that fails on a full disk or a Ctrl-C included).
        frame_inds: 0-based frame indices.
        filename: name for error messages (default: ``source`` when it is a path).

    Returns:
        ``len(frame_inds)`` RGB frames ``[H, W, 3]`` uint8, separate arrays (also for a
        repeated index).

    Raises:
        VideoReadError: OpenCV cannot open the file or the stream ends early.
    """
    import cv2
    name = filename or (source if isinstance(source, str) else '<bytes>')
    inds = [int(i) for i in np.asarray(frame_inds).reshape(-1)]
    tmp = None
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            # (inside the try: a write that fails, a full disk or Ctrl-C, removes the file)
            suffix = osp.splitext(name)[1] or '.mp4'
            fd, tmp = tempfile.mkstemp(suffix=suffix)
            with os.fdopen(fd, 'wb') as f:
                f.write(source)
            path = tmp
        else:
            path = osp.abspath(os.fspath(source))   # a relative 'a:b.mp4' is no protocol
        cap = cv2.VideoCapture(path)
        if not cap.isOpened():
            raise VideoReadError(name, 'neither decord nor OpenCV can open it')
        wanted, frames, i = set(inds), {}, 0
        last = max(inds)
        try:
            while i <= last:
                ok, frame = cap.read()
                if not ok:
                    break
                if i in wanted:
                    frames[i] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                i += 1
        finally:
            cap.release()
        if i <= last:
            raise VideoReadError(name, f'the stream ends after {i} frames but frame {last} '
                                 f'was requested; the file is probably truncated')
        return _in_requested_order(frames, np.asarray(inds))   # repeats as copies
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(tmp)


# ---------------------------------------------------------------------------------------
# dataset wrapper
# ---------------------------------------------------------------------------------------
@DATASETS.register_module()
class SkipUnreadable:
    """Training dataset wrapper: replace samples whose video cannot be read.

    ``dataset[idx]`` is tried first; if it raises :class:`VideoReadError` (raised by
    :class:`SafeDecordInit`/:class:`SafeDecordDecode`), substitutes are tried in an order
    that depends only on ``(seed, idx)`` (so a run and its resumption see the same data).
    Every skip is logged as a WARNING with file and reason, and the substitute's
    ``data_samples.metainfo['skipped_videos']`` lists the skipped reads as dicts
    ``{'index', 'filename', 'reason'}`` (``metainfo['substitute_for']`` is ``idx``), so
    :class:`stan_mm.engine.SkippedVideosHook` counts them per epoch over ranks and workers.
    Any other exception propagates: only unreadable videos are skipped.

    Example::

        train_dataloader = dict(dataset=dict(
            type='SkipUnreadable',
            dataset=dict(type='VideoDataset', ann_file=..., pipeline=train_pipeline)))
        custom_hooks = [dict(type='ClassListCheckHook'),   # the default, and the report
                        dict(type='SkippedVideosHook')]

    Args:
        dataset: the dataset or its config (any MMAction2 dataset whose pipeline ends with
            a ``Pack*`` transform giving ``data_samples``).
        max_attempts: reads per sample (the sample itself and ``max_attempts - 1``
            substitutes) before a :class:`VideoReadError` listing them is raised.
        seed: seed of the substitute order.

    Refused in ``test_mode``: substituting would change evaluation results silently.
    """

    def __init__(self, dataset, max_attempts: int = 10, seed: int = 0):
        self.dataset = DATASETS.build(dataset) if isinstance(dataset, dict) else dataset
        if getattr(self.dataset, 'test_mode', False):
            raise ConfigValueError('SkipUnreadable wraps training datasets only: replacing test '
                                   'samples would change evaluation results silently. Remove the '
                                   'wrapper from val/test dataloaders (they then fail naming the '
                                   'unreadable file).')
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise ConfigValueError(f'SkipUnreadable: max_attempts must be an int >= 1, got '
                                   f'{max_attempts!r}')
        self.max_attempts = max_attempts
        self.seed = seed
        self.num_skipped = 0  # in this process only; the hook counts over all processes
        self._warn_stock_decord()

    def _warn_stock_decord(self) -> None:
        transforms = getattr(getattr(self.dataset, 'pipeline', None), 'transforms', [])
        stock = [type(t).__name__ for t in transforms
                 if type(t) in (DecordInit, DecordDecode)]
        if stock:
            print_log(f'SkipUnreadable: the pipeline uses {stock}, whose errors are not '
                      f'VideoReadError and are not skipped; use SafeDecordInit / '
                      f'SafeDecordDecode', logger='current', level=logging.WARNING)

    # ---- the dataset interface used by mmengine's runner, samplers and evaluators
    @property
    def metainfo(self) -> dict:
        return self.dataset.metainfo

    def full_init(self) -> None:
        if hasattr(self.dataset, 'full_init'):
            self.dataset.full_init()

    def get_data_info(self, idx: int) -> dict:
        return self.dataset.get_data_info(idx)

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def twin_groups(self):
        """The wrapped dataset's ``twin_groups`` (for ``TwinGroupSampler``; ``None`` when
        it has none). A substituted sample takes the skipped one's place in its group."""
        return getattr(self.dataset, 'twin_groups', None)

    def substitutes(self, idx: int):
        """Indices tried after ``idx`` (distinct, never ``idx``), deterministic in
        ``(seed, idx)``: a seeded permutation of the other indices."""
        n = len(self)
        rng = np.random.default_rng([self.seed, idx])
        for j in rng.permutation(n - 1)[:self.max_attempts - 1]:
            yield int(j) + (j >= idx)

    def __getitem__(self, idx: int):
        skipped: List[dict] = []
        for j in [idx, *self.substitutes(idx)]:
            try:
                sample = self.dataset[j]
            except VideoReadError as e:
                name = e.filename or self.get_data_info(j).get('filename', '?')
                skipped.append(dict(index=j, filename=name, reason=e.reason))
                self.num_skipped += 1
                print_log(f'SkipUnreadable: skipping unreadable video {name} (dataset index '
                          f'{j}, for sample {idx}): {e.reason}', logger='current',
                          level=logging.WARNING)
                continue
            if skipped:
                self._record(sample, skipped, idx, j)
            return sample
        raise VideoReadError(
            skipped[0]['filename'],
            f'sample {idx} and {len(skipped) - 1} substitutes are all unreadable: '
            + '; '.join(f"{s['filename']} ({s['reason']})" for s in skipped)
            + '. Check the data (raise max_attempts only if most videos are fine).')

    @staticmethod
    def _record(sample, skipped: List[dict], idx: int, used: int) -> None:
        data_samples = sample.get('data_samples') if isinstance(sample, dict) else None
        if data_samples is None or not hasattr(data_samples, 'set_metainfo'):
            raise TypeError(
                'SkipUnreadable needs samples with data_samples (a Pack* transform at the end '
                'of the pipeline) to report skipped videos; got '
                f'{type(sample).__name__}' + (f' with keys {sorted(sample)}'
                                              if isinstance(sample, dict) else ''))
        data_samples.set_metainfo(dict(skipped_videos=list(skipped), substitute_for=idx,
                                       substitute_index=used))

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(dataset={type(self.dataset).__name__}, '
                f'len={len(self)}, max_attempts={self.max_attempts}, seed={self.seed})')
