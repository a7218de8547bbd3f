"""Chunked text<->video ranking: exact ranks and R@K / MdR / MnR without the full matrix.

Inputs: a :class:`~stan_mm.evaluation.similarity.SimilaritySource` (``S [Nt, Nv]``,
texts x videos, handed out ``chunk_size`` rows at a time) and ``text_to_video`` (LongTensor
``[Nt]``: the ground-truth video of every caption; several captions per video are allowed,
every video needs at least one).

Rank definitions (ties never help: a competitor with an equal score ranks ahead):

- t2v, caption i with GT video g: ``rank = 1 + #{j != g : X[i, j] >= X[i, g]}``.
- v2t, video j: ``m_j = max over its captions i of Y[i, j]``;
  ``rank = 1 + #{incorrect texts i (text_to_video[i] != j) : Y[i, j] >= m_j}``.

``X`` is the t2v score (raw S, DSL, QB-Norm, or DSL then QB-Norm) and ``Y`` the v2t score
(raw S or DSL); see :mod:`stan_mm.evaluation.rescoring` for their definitions.

Two passes over the row chunks, whatever the options (plus one or two over the querybank):

1. per-video maxima ``m_j`` of the v2t scores of the correct captions (and, with DSL, the
   per-video logsumexp over all texts and the per-text logsumexp over all videos);
2. t2v ranks of the chunk's captions and, per video, the number of incorrect texts of the
   chunk scoring at least ``m_j``.

Memory: besides the inputs, per chunk the similarity block and a 0/1 count buffer (float32),
plus, with DSL or QB-Norm, two float64 blocks: about ``chunk_size * Nv`` times 8 bytes (raw),
16 (QB-Norm) or 24 (DSL, DSL + QB-Norm), i.e. 0.2 / 0.4 / 0.6 GB for ``chunk_size = 256`` and
``Nv = 100,000``, whatever ``Nt``. Per-text state is a few vectors of ``Nt`` numbers.
"""
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch

from .rescoring import (DEFAULT_CHUNK_SIZE, DEFAULT_DSL_TEMP, DEFAULT_QB_BETA, DEFAULT_QB_K,
                        QueryBankStats, block_logsumexps, check_dsl_temp, check_dsl_weights,
                        dsl_t2v_scores, dsl_v2t_scores, iter_chunks, logaddexp, qb_norm_scores,
                        querybank_stats, scaled_similarity)
from .similarity import DenseSimilarity, EmbeddingSimilarity, SimilaritySource

METRIC_KEYS = ('t2v_R1', 't2v_R5', 't2v_R10', 't2v_MdR', 't2v_MnR',
               'v2t_R1', 'v2t_R5', 'v2t_R10', 'v2t_MdR', 'v2t_MnR')

_EXACT_FLOAT32_COUNT = 2 ** 24  # float32 sums of 0/1 are exact below this


_UNSIGNED_WIDE = tuple(getattr(torch, n) for n in ('uint16', 'uint32', 'uint64')
                       if hasattr(torch, n))


def check_text_to_video(text_to_video, num_texts: int, num_videos: int,
                        name: str = 'text_to_video') -> torch.Tensor:
    """Validate the caption -> video map and return it as a CPU LongTensor ``[Nt]``.

    Raises:
        ValueError: wrong shape or dtype, an index outside ``[0, Nv)``, or a video without
            any caption (its v2t rank would be undefined).
    """
    raw = text_to_video if isinstance(text_to_video, torch.Tensor) else np.asarray(text_to_video)
    if isinstance(raw, torch.Tensor) and raw.dtype in _UNSIGNED_WIDE:
        raw = raw.cpu().numpy()             # torch has few ops for these: check in numpy
    if isinstance(raw, np.ndarray) and raw.dtype.kind == 'u' and raw.ndim == 1 and raw.size:
        bad = int(np.argmax(raw >= num_videos))   # checked before the cast to int64 wraps
        if raw[bad] >= num_videos:
            raise ValueError(f'{name}[{bad}] = {int(raw[bad])} is not a valid video index: '
                             f'there are {num_videos} videos (indices 0..{num_videos - 1})')
    t2v = torch.as_tensor(raw).cpu()
    if t2v.dim() != 1:
        raise ValueError(f'{name} must be 1-D [num_texts], got shape {tuple(t2v.shape)}')
    if t2v.is_floating_point() or t2v.dtype == torch.bool or t2v.is_complex():
        raise ValueError(f'{name} must hold integer video indices, got dtype {t2v.dtype}')
    if t2v.numel() != num_texts:
        raise ValueError(f'{name} has {t2v.numel()} entries but there are {num_texts} texts '
                         '(one ground-truth video index per text is required)')
    t2v = t2v.long()
    if num_texts and (int(t2v.min()) < 0 or int(t2v.max()) >= num_videos):
        bad = ((t2v < 0) | (t2v >= num_videos)).nonzero()[0].item()
        raise ValueError(f'{name}[{bad}] = {int(t2v[bad])} is not a valid video index: '
                         f'there are {num_videos} videos (indices 0..{num_videos - 1})')
    counts = torch.bincount(t2v, minlength=num_videos)
    missing = (counts == 0).nonzero().flatten()
    if missing.numel():
        shown = ', '.join(str(i) for i in missing[:10].tolist())
        raise ValueError(f'{name}: {missing.numel()} of {num_videos} videos have no caption '
                         f'(e.g. {shown}); every video needs at least one text, otherwise '
                         'its video->text rank is undefined. Drop those videos from the '
                         'gallery or add their captions')
    return t2v


def _count_ge(scores: torch.Tensor, threshold: torch.Tensor, dim: int,
              buffer: torch.Tensor) -> torch.Tensor:
    """Number of ``scores >= threshold`` along ``dim`` (comparison written as 0/1 floats,
    summed in float; exact because the counts stay below 2**24)."""
    out = buffer[:scores.shape[0]]
    torch.ge(scores, threshold, out=out)
    return out.sum(dim=dim)


def retrieval_ranks(source: SimilaritySource, text_to_video, *, dsl: bool = False,
                    dsl_temp: float = DEFAULT_DSL_TEMP,
                    qb_bank: Optional[SimilaritySource] = None,
                    qb_beta: float = DEFAULT_QB_BETA, qb_k: int = DEFAULT_QB_K,
                    chunk_size: int = DEFAULT_CHUNK_SIZE,
                    t2v_name: str = 'text_to_video',
                    progress: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact t2v and v2t ranks, two chunked passes over ``source``.

    Args:
        source: ``S [Nt, Nv]``.
        text_to_video: ``[Nt]`` ground-truth video of every text.
        dsl: rescore with dual softmax (both directions); dsl_temp divides S in the softmax.
        qb_bank: querybank ``[Nb, Nv]`` (bank queries x the same videos); enables QB-Norm of
            the t2v direction (after DSL when both are on).
        qb_beta, qb_k: QB-Norm inverse temperature and activation top-k.
        chunk_size: rows of S materialized at a time.
        t2v_name: what error messages call ``text_to_video`` (e.g. its file).
        progress: a progress bar (stderr) over the rows of the two passes.

    Returns:
        ``(t2v_ranks [Nt], v2t_ranks [Nv])``, CPU LongTensors, 1 = best.
    """
    num_texts, num_videos = source.num_texts, source.num_videos
    if num_texts == 0 or num_videos == 0:
        raise ValueError(f'{source.name}: nothing to rank ({num_texts} texts, '
                         f'{num_videos} videos)')
    t2v = check_text_to_video(text_to_video, num_texts, num_videos,
                              name=t2v_name).to(source.device)
    chunk_size = int(chunk_size)
    if dsl:
        dsl_temp = check_dsl_temp(dsl_temp)
    qb_stats: Optional[QueryBankStats] = None
    if qb_bank is not None:
        if qb_bank.num_videos != num_videos:
            raise ValueError(f'{qb_bank.name}: the querybank covers {qb_bank.num_videos} '
                             f'videos but {source.name} has {num_videos}; the bank must hold '
                             'similarities of bank queries to the same test videos')
        qb_stats = querybank_stats(qb_bank, qb_beta, qb_k, chunk_size,
                                   dsl_temp=dsl_temp if dsl else None)
    from stan_mm.utils.progress import progress_bar
    # (closed on an error too: a log then says where the ranking stopped)
    with progress_bar(total=2 * num_texts, desc='ranking (2 passes over the text rows)',
                      unit='row', disable=not progress, leave=False) as bar:

        # ---- pass 1: best correct v2t score per video (+ DSL logsumexps)
        # v2t DSL scores leave out the constant factor Nv (ranks only compare them); t2v DSL
        # scores keep Nt only when QB-Norm follows (there the scale matters).
        t2v_factor = num_texts if qb_stats is not None else None
        best_correct = None
        col_lse = torch.full((num_videos,), float('-inf'), dtype=torch.float64,
                             device=source.device) if dsl else None
        row_lse = torch.empty(num_texts, dtype=torch.float64, device=source.device) if dsl \
            else None
        for start, stop in iter_chunks(num_texts, chunk_size):
            sim = source.rows(start, stop, pad_to=chunk_size)
            gt = t2v[start:stop]
            gt_sim = sim.gather(1, gt[:, None])  # [c, 1]
            if dsl:
                block_col, block_row = block_logsumexps(scaled_similarity(sim, dsl_temp),
                                                        consume=True)
                col_lse = logaddexp(col_lse, block_col)
                row_lse[start:stop] = block_row
                # the element-wise sequence of pass 2 applied to the GT entries alone: the
                # same bits as the full-row computation there (exact ties stay ties)
                gt_v2t = dsl_v2t_scores(gt_sim, block_row, dsl_temp)[:, 0]
            else:
                gt_v2t = gt_sim[:, 0]
            if best_correct is None:
                best_correct = torch.full((num_videos,), float('-inf'), dtype=gt_v2t.dtype,
                                          device=source.device)
            best_correct.scatter_reduce_(0, gt, gt_v2t, reduce='amax')
            del sim
            bar.update(stop - start)

        # ---- pass 2: t2v ranks, v2t counts
        count_dtype = torch.float32 if num_videos < _EXACT_FLOAT32_COUNT else torch.float64
        buffer = torch.empty(min(chunk_size, num_texts), num_videos, dtype=count_dtype,
                             device=source.device)
        t2v_ranks = torch.empty(num_texts, dtype=torch.long, device=source.device)
        v2t_ahead = torch.zeros(num_videos, dtype=torch.float64, device=source.device)
        for start, stop in iter_chunks(num_texts, chunk_size):
            sim = source.rows(start, stop, pad_to=chunk_size)
            gt = t2v[start:stop]
            z = scaled_similarity(sim, dsl_temp) if dsl else None
            # text -> video
            if dsl:     # a ground-truth weight that underflows is an error (check_dsl_weights)
                check_dsl_weights(z.gather(1, gt[:, None]) - col_lse[gt][:, None],
                                  sim.gather(1, gt[:, None]), dsl_temp,
                                  'a column (the texts, for one video)')
            scores = dsl_t2v_scores(sim, col_lse, dsl_temp, t2v_factor, z=z, check=False) \
                if dsl else sim
            if qb_stats is not None:
                scores = qb_norm_scores(scores, qb_stats, inplace=dsl)
            gt_score = scores.gather(1, gt[:, None])  # [c, 1]
            # the count includes the GT entry itself once: it equals 1 + #competitors ahead
            t2v_ranks[start:stop] = _count_ge(scores, gt_score, 1, buffer).long()
            del scores
            # video -> text
            scores = dsl_v2t_scores(sim, row_lse[start:stop], dsl_temp, z=z, consume_z=True,
                                    check=False) if dsl else sim
            del z
            ahead = _count_ge(scores, best_correct[None, :], 0, buffer).to(torch.float64)
            correct = scores.gather(1, gt[:, None]).squeeze(1) >= best_correct[gt]
            ahead.scatter_add_(0, gt, -correct.to(torch.float64))  # only incorrect texts count
            v2t_ahead += ahead
            del scores, sim
            bar.update(stop - start)
    v2t_ranks = v2t_ahead.round().long() + 1
    t2v_ranks, v2t_ranks = t2v_ranks.cpu(), v2t_ranks.cpu()
    if int(t2v_ranks.min()) < 1 or int(v2t_ranks.min()) < 1:  # pragma: no cover - invariant
        raise RuntimeError('internal error: a rank below 1 was computed')
    return t2v_ranks, v2t_ranks


def ranks_to_metrics(t2v_ranks: torch.Tensor, v2t_ranks: torch.Tensor) -> Dict[str, float]:
    """R@1/5/10 (percent of queries with rank <= K), MdR (median) and MnR (mean rank) of
    the ranks of :func:`retrieval_ranks` (``[Nt]`` and ``[Nv]``, 1 = best), as a dict
    with the keys :data:`METRIC_KEYS` (floats).

    Example:
        >>> m = ranks_to_metrics(torch.tensor([1, 2, 1, 7]), torch.tensor([1, 3, 1]))
        >>> m['t2v_R1'], m['t2v_R5'], m['t2v_MdR'], m['t2v_MnR'], m['v2t_MdR']
        (50.0, 75.0, 1.5, 2.75, 1.0)
    """
    metrics = {}
    for direction, ranks in (('t2v', t2v_ranks), ('v2t', v2t_ranks)):
        r = torch.as_tensor(ranks).double().cpu().numpy()
        for k in (1, 5, 10):
            # (count / n, not 100 * mean: 100 * (46 / 160) is 28.749999999999996, which a
            # results line rounded to 28.7 where 100 * 46 / 160 = 28.75 gives 28.8)
            metrics[f'{direction}_R{k}'] = 100.0 * int(np.count_nonzero(r <= k)) / len(r)
        metrics[f'{direction}_MdR'] = float(np.median(r))
        metrics[f'{direction}_MnR'] = float(np.mean(r))
    return {key: metrics[key] for key in METRIC_KEYS}


def retrieval_metrics_from_embeddings(
        text_emb: torch.Tensor, video_emb: torch.Tensor, text_to_video, *,
        dsl: bool = False, dsl_temp: float = DEFAULT_DSL_TEMP,
        qb_bank_emb: Optional[torch.Tensor] = None, qb_beta: float = DEFAULT_QB_BETA,
        qb_k: int = DEFAULT_QB_K, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Dict[str, float]:
    """Metrics for ``text_emb [Nt, E]`` x ``video_emb [Nv, E]`` (dot product; pass
    normalized embeddings for cosine). ``qb_bank_emb [Nb, E]``: text embeddings of the bank
    queries (training captions), compared to the same videos.

    ``text_to_video`` ``[Nt]``: the row of ``video_emb`` each text describes (every video
    needs at least one text). Other options and the result: as
    :func:`retrieval_metrics_from_similarity`, of which this is the chunked version that
    never holds the whole ``[Nt, Nv]`` matrix."""
    source = EmbeddingSimilarity(text_emb, video_emb, name='test embeddings')
    bank = None
    if qb_bank_emb is not None:
        bank = EmbeddingSimilarity(torch.as_tensor(qb_bank_emb).to(source.device),
                                   video_emb, name='querybank embeddings')
    ranks = retrieval_ranks(source, text_to_video, dsl=dsl, dsl_temp=dsl_temp, qb_bank=bank,
                            qb_beta=qb_beta, qb_k=qb_k, chunk_size=chunk_size)
    return ranks_to_metrics(*ranks)


def retrieval_metrics_from_similarity(
        sim: Union[torch.Tensor, np.ndarray], text_to_video, *, dsl: bool = False,
        dsl_temp: float = DEFAULT_DSL_TEMP,
        qb_bank_sim: Union[torch.Tensor, np.ndarray, None] = None,
        qb_beta: float = DEFAULT_QB_BETA, qb_k: int = DEFAULT_QB_K,
        chunk_size: int = DEFAULT_CHUNK_SIZE, device: Union[str, torch.device, None] = None,
        sim_name: str = 'similarity matrix', bank_name: str = 'querybank matrix',
        t2v_name: str = 'text_to_video', progress: bool = False) -> Dict[str, float]:
    """Metrics for a dense ``sim [Nt, Nv]`` (tensor, array or memmap, read chunk by chunk);
    ``qb_bank_sim [Nb, Nv]``: bank queries x the same videos; ``progress``: a progress bar
    over the ranking passes.

    Args:
        sim: text x video scores, texts are the rows.
        text_to_video: ``[Nt]`` integers, the video column of every text (several texts
            per video allowed; every video needs at least one: ``ValueError`` otherwise).
        dsl, dsl_temp, qb_bank_sim, qb_beta, qb_k: rescoring, see
            :mod:`stan_mm.evaluation.rescoring`.

    Returns:
        ``{key: float}`` for the keys :data:`METRIC_KEYS`: ``t2v_R1`` ... in percent,
        ``*_MdR`` / ``*_MnR`` median and mean rank (ties never help: see
        :func:`retrieval_ranks`).

    Example (text 2 describes video 2, which video 1 beats; DSL brings it first):
        >>> sim = torch.tensor([[0.9, 0.1, 0.2], [0.3, 0.8, 0.1],
        ...                     [0.2, 0.7, 0.6], [0.1, 0.3, 0.4]])
        >>> m = retrieval_metrics_from_similarity(sim, [0, 1, 2, 2])
        >>> m['t2v_R1'], m['t2v_MnR'], m['v2t_R1']
        (75.0, 1.25, 100.0)
        >>> retrieval_metrics_from_similarity(sim, [0, 1, 2, 2], dsl=True)['t2v_R1']
        100.0
    """
    source = DenseSimilarity(sim, name=sim_name, device=device)
    bank = None
    if qb_bank_sim is not None:
        bank = DenseSimilarity(qb_bank_sim, name=bank_name, device=source.device)
    ranks = retrieval_ranks(source, text_to_video, dsl=dsl, dsl_temp=dsl_temp, qb_bank=bank,
                            qb_beta=qb_beta, qb_k=qb_k, chunk_size=chunk_size,
                            t2v_name=t2v_name, progress=progress)
    return ranks_to_metrics(*ranks)
