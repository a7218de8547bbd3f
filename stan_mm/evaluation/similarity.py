"""Row-chunk access to a text x video similarity matrix that is never held whole in memory.

A :class:`SimilaritySource` hands out row blocks ``S[start:stop]`` of shape ``[rows, Nv]``
(texts x videos). Two sources exist:

- :class:`EmbeddingSimilarity`: ``S = text_emb @ video_emb.T`` for given (already normalized)
  embeddings ``text_emb [Nt, E]``, ``video_emb [Nv, E]``; each block is one matrix product, on
  the device of the embeddings (CPU or GPU).
- :class:`DenseSimilarity`: a dense matrix ``[Nt, Nv]`` given as a tensor or a numpy array,
  including a read-only ``np.load(..., mmap_mode='r')`` memmap, so that a matrix larger than
  memory is read block by block.

Bitwise consistency: BLAS kernels round differently for different row counts (measured on
this project's CPUs: the same text row multiplied inside a 3-row and a 257-row block differs
in the last bit for some entries). Exact ties (duplicate captions, duplicate videos) must stay
exact ties, so :meth:`EmbeddingSimilarity.rows` pads every block to the same number of rows
(``pad_to``) before the product and drops the padding afterwards. That number is at least 2
(a one-row product runs a matrix-vector kernel whose rounding depends on the column's
position, so duplicate videos would not tie) and at most the matrix's row count (rows past
it would be computed for nothing).
"""
from typing import Optional, Union

import numpy as np
import torch


class SimilaritySource:
    """Interface: ``num_texts``, ``num_videos``, ``name`` and ``rows(start, stop, pad_to)``."""

    name: str = 'similarity'
    num_texts: int
    num_videos: int
    device: torch.device

    def rows(self, start: int, stop: int, pad_to: Optional[int] = None) -> torch.Tensor:
        """Return ``S[start:stop]``, shape ``[stop - start, Nv]``, floating point, finite.

        The block is a new tensor (never a view of the caller's data); ``pad_to`` asks for the
        block to be computed as part of a ``pad_to``-row block (same rounding for all blocks).
        """
        raise NotImplementedError

    def _check_finite(self, block: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        if not bool(torch.isfinite(block).all()):
            bad = (~torch.isfinite(block)).nonzero()[0].tolist()
            raise ValueError(
                f'{self.name}: non-finite similarity (NaN or inf) at text {start + bad[0]}, '
                f'video {bad[1]} (rows {start}..{stop - 1} checked); similarities must be '
                'finite numbers, check the features or the matrix that produced them')
        return block


def _as_float_tensor(array, what: str) -> torch.Tensor:
    tensor = torch.as_tensor(array)
    if not tensor.is_floating_point():
        tensor = tensor.float()
    if tensor.dtype in (torch.float16, torch.bfloat16):
        tensor = tensor.float()
    if tensor.dim() != 2:
        raise ValueError(f'{what} must be 2-D, got shape {tuple(tensor.shape)}')
    return tensor


def products_certainly_finite(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether every entry of ``a @ b.T`` (``[N, E]`` x ``[M, E]``, one floating dtype) is
    certainly finite: both are finite and ``max_i |a_i| * max_j |b_j|`` (row norms, the
    Cauchy-Schwarz bound of every partial sum of every dot product), times a margin for
    rounding, lies below the largest number of the dtype. A non-finite entry makes a norm
    inf or NaN, and the test fails; so does a norm that overflows (conservative)."""
    if a.numel() == 0 or b.numel() == 0:
        return True
    info = torch.finfo(a.dtype)
    norm_a = float(torch.linalg.vector_norm(a, dim=1).max())
    norm_b = float(torch.linalg.vector_norm(b, dim=1).max())
    margin = 2.0 * (1.0 + 4 * a.shape[1] * info.eps)       # rounding of norms and sums
    return norm_a * norm_b * margin < info.max              # False for inf and NaN


class EmbeddingSimilarity(SimilaritySource):
    """Dot-product similarity of text and video embeddings, computed one row block at a time.

    Args:
        text_emb: ``[Nt, E]`` text (query) embeddings, already normalized.
        video_emb: ``[Nv, E]`` video embeddings, already normalized, same dtype/device.
        name: used in error messages.

    float16/bfloat16 inputs are promoted to float32; float64 inputs stay float64.
    """

    def __init__(self, text_emb: torch.Tensor, video_emb: torch.Tensor,
                 name: str = 'embeddings') -> None:
        self.text_emb = _as_float_tensor(text_emb, f'{name}: text embeddings')
        self.video_emb = _as_float_tensor(video_emb, f'{name}: video embeddings')
        if self.text_emb.shape[1] != self.video_emb.shape[1]:
            raise ValueError(
                f'{name}: text embeddings have dim {self.text_emb.shape[1]} but video '
                f'embeddings have dim {self.video_emb.shape[1]}; both must come from the same '
                'model (same projection width)')
        if self.text_emb.device != self.video_emb.device:
            raise ValueError(f'{name}: text embeddings on {self.text_emb.device}, video '
                             f'embeddings on {self.video_emb.device}; put both on one device')
        dtype = torch.promote_types(self.text_emb.dtype, self.video_emb.dtype)
        self.text_emb = self.text_emb.to(dtype)
        self.video_emb = self.video_emb.to(dtype)
        self._video_t = self.video_emb.t()  # [E, Nv] view, no copy
        self.name = name
        self.num_texts = self.text_emb.shape[0]
        self.num_videos = self.video_emb.shape[0]
        self.device = self.text_emb.device
        # finite embeddings whose products cannot overflow give finite blocks: checked once
        # here, not in every block of both passes (that check was 2.7 s of 7.0 s for
        # 10k x 10k at one thread); otherwise every block is checked, as before
        self._blocks_finite = products_certainly_finite(self.text_emb, self.video_emb)

    def rows(self, start: int, stop: int, pad_to: Optional[int] = None) -> torch.Tensor:
        queries = self.text_emb[start:stop]  # [c, E]
        count = queries.shape[0]
        if pad_to is not None:  # one block shape per matrix, never a matrix-vector product
            pad_to = max(2, min(pad_to, self.num_texts))
        if pad_to is not None and count < pad_to:
            queries = torch.cat([queries, queries.new_zeros(pad_to - count, queries.shape[1])])
        block = (queries @ self._video_t)[:count]  # [c, Nv]
        if self._blocks_finite:
            return block
        return self._check_finite(block, start, stop)


class DenseSimilarity(SimilaritySource):
    """A dense ``[Nt, Nv]`` similarity matrix (tensor, numpy array or read-only memmap).

    Only the requested rows are read and converted (to float32, or float64 when the matrix is
    float64 or holds integers wider than 16 bits, which float32 would round to ties above
    2**24), then moved to ``device``. Any other array-like of numbers (a nested Python
    list ``[[...], ...]``) is converted with ``np.asarray``; what cannot be converted to a
    numeric array (ragged rows, objects) raises ``TypeError``.
    """

    def __init__(self, sim: Union[torch.Tensor, np.ndarray, list],
                 name: str = 'similarity matrix',
                 device: Union[str, torch.device, None] = None) -> None:
        if not isinstance(sim, (torch.Tensor, np.ndarray)):
            given = type(sim).__name__
            try:
                sim = np.asarray(sim)
            except (ValueError, TypeError) as e:
                raise TypeError(f'{name}: expected a [num_texts, num_videos] tensor, numpy '
                                f'array or nested list of numbers, got a {given} that is not '
                                f'a numeric matrix ({e})') from None
            if sim.dtype == object:
                raise TypeError(f'{name}: expected a [num_texts, num_videos] tensor, numpy '
                                f'array or nested list of numbers, got a {given} that is not '
                                f'a numeric matrix (rows of different lengths, or objects)')
        if sim.ndim != 2:
            raise ValueError(f'{name}: expected a 2-D [num_texts, num_videos] matrix, got '
                             f'shape {tuple(sim.shape)}')
        self.sim = sim
        self.name = name
        self.num_texts, self.num_videos = int(sim.shape[0]), int(sim.shape[1])
        if device is None:
            device = sim.device if isinstance(sim, torch.Tensor) else 'cpu'
        self.device = torch.device(device)
        if isinstance(sim, torch.Tensor):
            if not (sim.is_floating_point() or sim.dtype in (torch.int32, torch.int64)):
                raise ValueError(f'{name}: unsupported dtype {sim.dtype}')
            wide = sim.dtype in (torch.float64, torch.int32, torch.int64)
            self._dtype = torch.float64 if wide else torch.float32
        else:
            if sim.dtype.kind not in 'fiu':
                raise ValueError(f'{name}: expected a numeric matrix, got dtype {sim.dtype}')
            # integers of more than 16 bits are read as float64: float32 holds integers
            # exactly only up to 2**24, and larger ones rounded to ties (which count
            # against the query) without a word
            wide = sim.dtype == np.float64 or (sim.dtype.kind in 'iu' and sim.dtype.itemsize > 2)
            self._dtype = torch.float64 if wide else torch.float32

    def rows(self, start: int, stop: int, pad_to: Optional[int] = None) -> torch.Tensor:
        block = self.sim[start:stop]
        if isinstance(block, np.ndarray):  # also a memmap slice: read now, as a private copy
            np_dtype = np.float64 if self._dtype == torch.float64 else np.float32
            block = torch.from_numpy(np.array(block, dtype=np_dtype, order='C', copy=True))
            block = block.to(self.device)
        else:
            block = block.to(device=self.device, dtype=self._dtype, copy=True)
        return self._check_finite(block, start, stop)


def load_npy(path: str, what: str, mmap_mode: Optional[str] = None) -> np.ndarray:
    """``np.load`` of a ``.npy`` file holding one array (never pickles), or a
    ``ValueError`` naming ``what`` and ``path``: an unreadable file, and a ``.npz`` archive
    (``np.save`` vs ``np.savez``: ``np.load`` gives an ``NpzFile`` with no ``shape``, and
    the callers stopped on a bare ``AttributeError``), with the line that turns one of its
    arrays into a ``.npy`` file. ``mmap_mode='r'`` maps the array instead of reading it (a
    cheap check of the header)."""
    try:
        array = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001  (the reason is in the message)
        raise ValueError(f'{what} {path!r} is not a readable .npy array: {exc}') from exc
    if isinstance(array, np.ndarray):
        return array
    names = list(getattr(array, 'files', []))
    close = getattr(array, 'close', None)
    if close is not None:
        close()
    pick = repr(names[0]) if names else "'<name>'"
    raise ValueError(f'{what} {path!r} is a .npz archive (arrays: {", ".join(names) or "none"}), '
                     f'not one .npy array; save the array it means as .npy, e.g. '
                     f'python -c "import numpy as np; np.save(\'out.npy\', '
                     f'np.load(\'{path}\')[{pick}])"')
