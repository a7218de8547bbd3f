"""Inference-time rescoring of retrieval similarities: DSL (dual softmax) and QB-Norm.

Both operate on row blocks ``S[rows]`` of the text x video matrix ``S [Nt, Nv]`` (see
:mod:`stan_mm.evaluation.similarity`); statistics that need every row (a per-video
logsumexp over all texts, the querybank normalizer) are computed first in a separate
chunked pass. All rescored values are float64.

DSL (dual softmax, CAMoE, arXiv 2109.04290)
-------------------------------------------
``temp`` DIVIDES the similarities inside the softmax (``--dsl-temp`` of the tools means the
same):

- text->video: ``S'[i, j] = S[i, j] * softmax_i(S[:, j] / temp)[i] * Nt`` (softmax over the
  text axis, for each video column);
- video->text: ``S'[i, j] = S[i, j] * softmax_j(S[i, :] / temp)[j] * Nv`` (softmax over the
  video axis, for each text row).

The constant factor ``N`` (number of entries the softmax runs over) never changes a rank; it
is kept so that DSL scores stay on the scale of ``S`` on average (a softmax column times its
length has mean 1), which matters only when QB-Norm follows DSL.

Default ``temp = 0.01`` (:data:`DEFAULT_DSL_TEMP`), for cosine similarities (normalized
embeddings). This is the CLIP4Clip-family inference setting: those codebases apply
``softmax(logits, dim=0)`` to logits = 100 * cosine, i.e. ``softmax(cosine / 0.01)``.
``STAN_REFERENCE.md`` quotes ``temp = 1000`` "in the reference code": that value belongs to
the CAMoE *training loss* (``sim * softmax(sim / 1000)`` on logit-scaled similarities, meant
to smooth gradients). Applied to cosine similarities, ``temp = 1000`` makes every column's
softmax almost uniform (``S / 1000`` spans at most 0.002), so DSL would leave the ranking
almost unchanged. The CAMoE softmax itself, ``softmax(logits / 1000)`` with logits =
cosine / tau, is ``temp = 1000 * tau`` on cosines (10 for tau = 0.01): nearly as uniform.

Numerics: the softmax weight is ``exp(S / temp - logsumexp(S / temp))`` in float64. It
underflows only when a column (t2v) or row (v2t) spans more than ~700 * temp; with cosine
similarities and temp = 0.01 the span is at most 2 / 0.01 + ln(N) ~ 212. An underflow
(e.g. logits ``cosine / tau`` passed as similarities at the cosine temperature) is an error
(:func:`check_dsl_weights`): underflowed entries would score 0 and tie.

QB-Norm (Querybank Normalisation, dynamic inverted softmax, arXiv 2112.12777), t2v only
---------------------------------------------------------------------------------------
Querybank ``B [Nb, Nv]``: similarities of bank queries (training captions) to the test
gallery (test videos). Activation set ``A``: union over bank queries of their top-``k``
gallery items (``k = 1``: the argmax, lowest index among equal maxima; ``k > 1``: ``torch.topk``,
whose choice among items tied at the k-th place is implementation defined). For a test query
``q`` whose top-1 item (argmax of its score row, lowest index among equal maxima) is in A:

    score(q, g) = exp(beta * s(q, g)) / sum_b exp(beta * s(b, g))

otherwise ``score(q, g) = s(q, g)``. Ranks are computed in log space:
``beta * s(q, g) - logsumexp_b(beta * s(b, g))`` is a strictly increasing function of the
probability above, so a normalized row ranks exactly as its probabilities would, without the
overflow of ``exp(beta * s)``. A row is either entirely normalized or entirely raw, so every
rank compares scores of one kind. Default ``beta = 20``, ``k = 1``.

DSL and QB-Norm together: DSL first, then QB-Norm on the DSL scores. ``s`` above is then the
t2v DSL score, for the test queries (softmax over the test texts) and for the bank alike (the
same operator applied to ``B``: softmax over the bank texts, times ``Nb``), and the activation
set and the top-1 test are taken on those DSL scores. ``beta = 20`` was tuned for cosine
scores; DSL scores are on that scale on average but peaked entries reach ``N`` times a
cosine, so beta may need re-tuning for the combination. Neither paper evaluates it, and it
depends on the bank size: measured, it lowers t2v R@1 below either trick alone, the more the
larger the bank (docs/retrieval.md gives the figures and the command). The metric and
``tools/analysis/eval_retrieval.py`` warn when both are on (:data:`DSL_QB_NORM_WARNING`).
"""
import math
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import torch

from .similarity import SimilaritySource

DEFAULT_DSL_TEMP = 0.01
DEFAULT_QB_BETA = 20.0
DEFAULT_QB_K = 1
DEFAULT_CHUNK_SIZE = 256

#: logged by ``RetrievalRecallMetric`` and printed by ``tools/analysis/eval_retrieval.py``
#: when DSL and QB-Norm are both on (see the module docstring)
DSL_QB_NORM_WARNING = (
    'DSL and QB-Norm are both on: DSL is applied first and QB-Norm then works on the DSL '
    'scores. Neither paper evaluates this combination, and it depends on the bank size (bank '
    'DSL scores are scaled by the number of bank texts, test scores by the number of test '
    'texts, and beta then acts on values up to that number times a cosine): it was measured '
    'to lower t2v R@1 below either trick alone (docs/retrieval.md). The STAN paper does not '
    'say that its starred rows combine them: compare DSL alone and QB-Norm alone')


def iter_chunks(total: int, chunk_size: int) -> Iterator[Tuple[int, int]]:
    """Yield ``(start, stop)`` row ranges of at most ``chunk_size`` rows covering ``total``."""
    if chunk_size < 1:
        raise ValueError(f'chunk_size must be a positive integer, got {chunk_size}')
    for start in range(0, total, chunk_size):
        yield start, min(start + chunk_size, total)


def check_dsl_temp(temp: float) -> float:
    """``temp`` as a float; ``ValueError`` unless it is positive and finite."""
    temp = float(temp)
    if not temp > 0 or temp != temp or temp == float('inf'):
        raise ValueError(f'dsl_temp must be a positive finite number (it divides the '
                         f'similarities inside the softmax), got {temp}')
    return temp


# ----------------------------------------------------------------------------------- DSL
def scaled_similarity(sim: torch.Tensor, temp: float) -> torch.Tensor:
    """``S / temp`` of a block ``[c, Nv]`` as a new float64 tensor (an overflow is
    reported by :func:`block_logsumexps`, which every DSL pass runs first)."""
    return sim.to(torch.float64) / temp


def pairwise_sum(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum of ``x`` over ``dim`` (0 or 1 of a 2-D tensor) by repeated halving: the first
    half plus the second half, element-wise, until one slice is left. ``x`` is overwritten.

    Every output entry goes through the same additions in the same order whatever its
    position in ``x`` and whatever the other dimension's size, so equal rows (``dim=1``)
    or equal columns (``dim=0``) give bit-identical sums. ``Tensor.sum`` does not promise
    that: its vectorized and tail loops group the terms differently (measured: two equal
    columns of one block summed to values 1 ulp apart).

    Returns:
        a 1-D view into ``x``.
    """
    n = x.shape[dim]
    while n > 1:
        half = n // 2
        x.narrow(dim, 0, half).add_(x.narrow(dim, half, half))
        if n % 2:     # the odd slice out joins the first one
            x.narrow(dim, 0, 1).add_(x.narrow(dim, n - 1, 1))
        n = half
    return x.select(dim, 0)


def logaddexp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise ``log(exp(a) + exp(b))`` as ``max + log1p(exp(-|a - b|))``, ``-inf``
    where both are ``-inf``.

    ``torch.logaddexp`` is not used: on CPU its vectorized and tail loops round differently
    (measured with torch 2.14: equal inputs at positions 0 and 16 of a 17-entry tensor gave
    results 1 ulp apart), which would break exact ties between duplicate videos. ``exp``,
    ``log1p``, ``maximum`` and ``abs`` gave the same bits at every position."""
    top = torch.maximum(a, b)
    out = top + torch.log1p(torch.exp(-(a - b).abs()))
    return torch.where(top == float('-inf'), top, out)


# Within this span of a block's values the column sums use the row-shifted exponentials
# (e^(z - row max) e^(row max - block max) >= e^-span, far above float64's underflow at
# e^-708); a wider block shifts every column by its own maximum instead (one more exp).
_SHARED_EXP_SPAN = 600.0


def block_logsumexps(z: torch.Tensor, consume: bool = False, rows: bool = True
                     ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Per-column and per-row logsumexp of a block ``z [c, Nv]`` (float64).

    Each row's logsumexp depends only on that row's values, each column's only on that
    column's values (and on which rows form the block), bit for bit: rows are shifted by
    their own maximum and all sums are :func:`pairwise_sum`. So duplicate captions (equal
    rows, possibly in different chunks) get equal DSL normalizers and duplicate videos
    (equal columns) equal DSL / QB-Norm normalizers: exact ties stay exact ties, whatever
    the chunk size. ``consume=True`` lets the function overwrite ``z``; ``rows=False``
    skips the row logsumexps (returns ``None`` for them).

    Returns:
        ``(col_lse [Nv], row_lse [c] or None)``.
    """
    row_max = z.amax(dim=1, keepdim=True)                          # [c, 1], exact
    top, low = row_max.max(), z.min()
    if not (math.isfinite(float(top)) and math.isfinite(float(low))):
        raise ValueError(
            f'DSL / QB-Norm: the scaled similarities (S / dsl_temp, qb_beta * S) overflow '
            f'float64 (range [{float(low):g}, {float(top):g}]); DSL expects cosine '
            f'similarities or logits with a temperature around 0.01, QB-Norm a beta '
            f'around 20')
    if float(top - low) < _SHARED_EXP_SPAN:
        e = (z.sub_(row_max) if consume else z - row_max).exp_()   # one exp for both
        scale = (row_max - top).exp_()                # e^(z - top) = e * scale, per entry
        if not rows:
            return pairwise_sum(e.mul_(scale), 0).log_().add_(top), None
        col_lse = pairwise_sum(e * scale, 0).log_().add_(top)
        return col_lse, pairwise_sum(e, 1).log_().add_(row_max[:, 0])
    col_max = z.amax(dim=0)                                        # [Nv], exact
    row_lse = None
    if rows:
        row_lse = pairwise_sum((z - row_max).exp_(), 1).log_().add_(row_max[:, 0])
    e = (z.sub_(col_max) if consume else z - col_max).exp_()
    return pairwise_sum(e, 0).log_().add_(col_max), row_lse


def column_logsumexp(source: SimilaritySource, temp: float, chunk_size: int) -> torch.Tensor:
    """``logsumexp_i(S[i, j] / temp)`` over all texts i, for every video j.

    Returns:
        ``[Nv]`` float64 on ``source.device``; one chunked pass over ``source``.
    """
    total = torch.full((source.num_videos,), float('-inf'), dtype=torch.float64,
                       device=source.device)
    for start, stop in iter_chunks(source.num_texts, chunk_size):
        z = scaled_similarity(source.rows(start, stop, pad_to=chunk_size), temp)
        total = logaddexp(total, block_logsumexps(z, consume=True, rows=False)[0])
    return total


# exp() of a log weight below this leaves float64's normal range (and reaches 0 at ~-745)
_LOG_WEIGHT_FLOOR = -708.0


def check_dsl_weights(log_w: torch.Tensor, sim: torch.Tensor, temp: float, axis: str) -> None:
    """Refuse DSL weights ``exp(log_w)`` of ground-truth entries that underflow float64
    where ``sim != 0``: such an entry would score exactly 0 and tie with the others that
    underflow, and ties count against the query, so its rank would be wrong without a word
    (seen with logits ``cosine / tau`` passed as similarities at the cosine temperature).
    An underflowed competitor cannot change a rank (its true score lies between 0 and the
    smallest normal weight times ``S``, on the same side of a ground-truth score whose weight
    is normal), so the ranking checks the ground-truth entries only
    (``stan_mm.evaluation.ranking``). One reduction when nothing underflows."""
    if not log_w.numel():
        return
    low = float(log_w.min())
    if low >= _LOG_WEIGHT_FLOOR or not bool(((log_w < _LOG_WEIGHT_FLOOR) & (sim != 0)).any()):
        return
    head = (f'DSL: softmax weights exp(S / dsl_temp - logsumexp) of ground-truth entries '
            f'underflow float64 (down to e^{low:.0f}): over {axis}, S / dsl_temp spans more '
            f'than ~708, so they would score exactly 0 and tie with other entries, and ranks '
            f'would be wrong. ')
    if 2 / temp > 700:
        raise ValueError(head + f'dsl_temp={temp:g} is too small even for cosine '
                         f'similarities (their span after scaling reaches {2 / temp:g}): use '
                         f'dsl_temp >= {2 / 700:.4f} (the default is {DEFAULT_DSL_TEMP})')
    raise ValueError(
        head + f'dsl_temp={temp:g} expects cosine similarities (normalized embeddings, S in '
        f'[-1, 1], a span of at most {2 / temp:g} after scaling); for logits (cosine / tau) '
        f'use dsl_temp = {temp:g} / tau (the same softmax on the cosines), or pass the '
        f'cosines')


def dsl_t2v_scores(sim: torch.Tensor, col_lse: torch.Tensor, temp: float,
                   num_texts: Optional[int] = None,
                   z: Optional[torch.Tensor] = None, check: bool = True) -> torch.Tensor:
    """Text->video DSL of a row block.

    Args:
        sim: ``[c, Nv]`` raw similarities (rows of S).
        col_lse: ``[Nv]`` :func:`column_logsumexp` of the whole matrix.
        temp: softmax temperature (divides ``sim``).
        num_texts: ``Nt``, the length of the column softmax; ``None`` leaves out this
            constant factor (ranks do not change).
        z: ``sim / temp`` from :func:`scaled_similarity`, if already computed (kept intact).
        check: :func:`check_dsl_weights` on every entry (the ranking checks its
            ground-truth entries itself and passes False).

    Returns:
        ``[c, Nv]`` float64, ``S * softmax_over_texts(S / temp) [* Nt]``.
    """
    z = scaled_similarity(sim, temp) if z is None else z
    scores = z - col_lse
    if check:
        check_dsl_weights(scores, sim, temp, 'a column (the texts, for one video)')
    scores = scores.exp_().mul_(sim)
    return scores.mul_(float(num_texts)) if num_texts is not None else scores


def dsl_v2t_scores(sim: torch.Tensor, row_lse: torch.Tensor, temp: float,
                   num_videos: Optional[int] = None, z: Optional[torch.Tensor] = None,
                   consume_z: bool = False, check: bool = True) -> torch.Tensor:
    """Video->text DSL of a row block: ``S * softmax_over_videos(S / temp) [* Nv]``.

    Args:
        sim: ``[c, Nv]`` raw similarities (full rows, or ``[c, 1]`` single entries of them);
        row_lse: ``[c]`` logsumexp of every full row of ``S / temp``.
        num_videos: the constant factor ``Nv`` or ``None`` to leave it out.
        z, consume_z: ``sim / temp`` if already computed, and whether it may be overwritten.
        check: :func:`check_dsl_weights` on every entry (see :func:`dsl_t2v_scores`).

    The same sequence of element-wise operations is applied whatever the block shape, so an
    entry scored alone equals, bit for bit, the same entry scored within its row.

    Returns:
        ``[c, Nv]`` float64.
    """
    z = scaled_similarity(sim, temp) if z is None else z
    scores = z.sub_(row_lse[:, None]) if consume_z else z - row_lse[:, None]
    if check:
        check_dsl_weights(scores, sim, temp, 'a row (the videos, for one text)')
    scores = scores.exp_().mul_(sim)
    return scores.mul_(float(num_videos)) if num_videos is not None else scores


# ------------------------------------------------------------------------------ QB-Norm
@dataclass
class QueryBankStats:
    """What QB-Norm needs from the querybank, for a gallery of ``Nv`` videos.

    Attributes:
        log_norm: ``[Nv]`` float64, ``logsumexp_b(beta * s(b, g))`` over bank queries b.
        active: ``[Nv]`` bool, the activation set A.
        beta: inverse temperature of the inverted softmax.
        num_bank: number of bank queries ``Nb``.
    """
    log_norm: torch.Tensor
    active: torch.Tensor
    beta: float
    num_bank: int


def querybank_stats(bank: SimilaritySource, beta: float = DEFAULT_QB_BETA,
                    k: int = DEFAULT_QB_K, chunk_size: int = DEFAULT_CHUNK_SIZE,
                    dsl_temp: Optional[float] = None) -> QueryBankStats:
    """Normalizer and activation set from a querybank ``[Nb, Nv]``, in chunked passes.

    Args:
        bank: similarities of ``Nb`` bank queries to the ``Nv`` test videos.
        beta: inverse temperature; k: top-k of every bank query that enters A.
        dsl_temp: when given, the bank is first rescored with text->video DSL (softmax over
            the bank texts, times ``Nb``), as used by DSL followed by QB-Norm.
    """
    if bank.num_texts < 1:
        raise ValueError(f'{bank.name}: the querybank is empty; QB-Norm needs bank queries')
    beta = float(beta)
    if not (beta > 0 and math.isfinite(beta)):
        raise ValueError(f'QB-Norm beta must be a positive finite number, got {beta}')
    k = int(k)
    if not 1 <= k <= bank.num_videos:
        raise ValueError(f'QB-Norm k must be in [1, {bank.num_videos}] (number of gallery '
                         f'videos), got {k}')
    col_lse = column_logsumexp(bank, dsl_temp, chunk_size) if dsl_temp is not None else None
    log_norm = torch.full((bank.num_videos,), float('-inf'), dtype=torch.float64,
                          device=bank.device)
    active = torch.zeros(bank.num_videos, dtype=torch.bool, device=bank.device)
    for start, stop in iter_chunks(bank.num_texts, chunk_size):
        block = bank.rows(start, stop, pad_to=chunk_size)
        if col_lse is not None:
            block = dsl_t2v_scores(block, col_lse, dsl_temp, bank.num_texts)
        if k == 1:
            top = block.argmax(dim=1)
        else:
            top = torch.topk(block, k, dim=1).indices.reshape(-1)
        active[top] = True
        scaled = block.to(torch.float64) * beta
        del block
        log_norm = logaddexp(log_norm, block_logsumexps(scaled, consume=True, rows=False)[0])
    return QueryBankStats(log_norm=log_norm, active=active, beta=beta,
                          num_bank=bank.num_texts)


def qb_norm_scores(scores: torch.Tensor, stats: QueryBankStats,
                   inplace: bool = False) -> torch.Tensor:
    """Apply QB-Norm to a block of text->video score rows.

    Args:
        scores: ``[c, Nv]`` scores of ``c`` test queries (raw or DSL).
        stats: from :func:`querybank_stats` over the same gallery.
        inplace: overwrite ``scores`` when it is float64.

    Returns:
        ``[c, Nv]`` float64: rows whose argmax lies in the activation set become
        ``beta * scores - log_norm`` (log of the inverted-softmax probability), the other rows
        keep ``scores``.
    """
    if scores.shape[1] != stats.log_norm.shape[0]:
        raise ValueError(f'QB-Norm: scores have {scores.shape[1]} videos but the querybank '
                         f'covers {stats.log_norm.shape[0]}')
    normalize = stats.active[scores.argmax(dim=1)]  # [c] bool
    inplace = inplace and scores.dtype == torch.float64
    out = scores if inplace else scores.to(torch.float64, copy=True)
    if bool(normalize.any()):
        # built in float64: torch.where with two Python numbers makes float32, which
        # rounded beta (20.3 -> 20.2999992) against the float64 beta of log_norm and
        # reordered near scores; a beta above float32's range raised a RuntimeError
        factor = torch.ones(normalize.shape, dtype=torch.float64, device=out.device)
        factor.masked_fill_(normalize, stats.beta)
        # normalized rows: beta * s - log_norm; raw rows: s * 1 - 0 (unchanged, exactly)
        out.mul_(factor[:, None]).addcmul_(normalize.to(torch.float64)[:, None],
                                           stats.log_norm[None, :], value=-1.0)
    return out
