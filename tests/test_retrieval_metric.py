"""Retrieval ranking, DSL, QB-Norm and RetrievalRecallMetric (single process).

Expected numbers are either written by hand from small matrices (reasoning in comments) or
come from the plain-loop references below, written from the formulas of STAN_REFERENCE.md
section 5 and independent of stan_mm's chunked code.
"""
import logging
import math

import numpy as np
import pytest
import torch

import stan_mm  # noqa: F401  (registers RetrievalRecallMetric)
from stan_mm.evaluation import (DenseSimilarity, EmbeddingSimilarity, RetrievalRecallMetric,
                                ranks_to_metrics, retrieval_metrics_from_embeddings,
                                retrieval_metrics_from_similarity, retrieval_ranks)


# ------------------------------------------------------------------ plain-loop references
def ref_t2v_ranks(X, t2v):
    ranks = []
    for i in range(X.shape[0]):
        g = t2v[i]
        ranks.append(1 + sum(1 for j in range(X.shape[1]) if j != g and X[i, j] >= X[i, g]))
    return ranks


def ref_v2t_ranks(Y, t2v):
    ranks = []
    for j in range(Y.shape[1]):
        best = max(Y[i, j] for i in range(Y.shape[0]) if t2v[i] == j)
        ranks.append(1 + sum(1 for i in range(Y.shape[0]) if t2v[i] != j and Y[i, j] >= best))
    return ranks


def ref_dsl_t2v(S, temp):
    """S'[i, j] = S[i, j] * softmax over texts i of S[:, j] / temp, times Nt."""
    nt, nv = S.shape
    out = np.zeros((nt, nv))
    for j in range(nv):
        m = max(S[i, j] for i in range(nt))
        w = [math.exp((S[i, j] - m) / temp) for i in range(nt)]
        for i in range(nt):
            out[i, j] = S[i, j] * w[i] / sum(w) * nt
    return out


def ref_dsl_v2t(S, temp):
    """S'[i, j] = S[i, j] * softmax over videos j of S[i, :] / temp, times Nv."""
    nt, nv = S.shape
    out = np.zeros((nt, nv))
    for i in range(nt):
        m = max(S[i, j] for j in range(nv))
        w = [math.exp((S[i, j] - m) / temp) for j in range(nv)]
        for j in range(nv):
            out[i, j] = S[i, j] * w[j] / sum(w) * nv
    return out


def ref_qb_norm(X, B, beta, k):
    """Dynamic inverted softmax with probabilities computed directly (no log space)."""
    nq, nv = X.shape
    active = set()
    for b in range(B.shape[0]):
        order = sorted(range(nv), key=lambda g: (-B[b, g], g))
        active.update(order[:k])
    norm = [sum(math.exp(beta * B[b, g]) for b in range(B.shape[0])) for g in range(nv)]
    out = np.array(X, dtype=np.float64)
    for q in range(nq):
        top1 = max(range(nv), key=lambda g: (X[q, g], -g))
        if top1 in active:
            for g in range(nv):
                out[q, g] = math.exp(beta * X[q, g]) / norm[g]
    return out


def ref_metrics(t2v_ranks, v2t_ranks):
    """R@K = percent of ranks <= K, MdR = median, MnR = mean, straight from numpy."""
    out = {}
    for name, ranks in (('t2v', t2v_ranks), ('v2t', v2t_ranks)):
        r = np.asarray(ranks, dtype=np.float64)
        for k in (1, 5, 10):
            out[f'{name}_R{k}'] = 100.0 * np.mean(r <= k)
        out[f'{name}_MdR'] = np.median(r)
        out[f'{name}_MnR'] = np.mean(r)
    return out


def ref_metrics_from_embeddings(text, video, t2v, dsl_temp=None, bank=None, beta=None):
    """The plain-loop references on L2-normalized float64 features (cosine similarity):
    raw, or DSL (``dsl_temp``) and / or QB-Norm (``bank`` [Nb, E], ``beta``, k = 1)."""
    def unit(a):
        a = np.asarray(a, dtype=np.float64)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    S = unit(text) @ unit(video).T
    t2v = [int(i) for i in t2v]
    X, Y = S, S
    if dsl_temp is not None:
        X, Y = ref_dsl_t2v(S, dsl_temp), ref_dsl_v2t(S, dsl_temp)
    if bank is not None:
        B = unit(bank) @ unit(video).T
        if dsl_temp is not None:
            B = ref_dsl_t2v(B, dsl_temp)
        X = ref_qb_norm(X, B, beta, 1)
    return ref_metrics(ref_t2v_ranks(X, t2v), ref_v2t_ranks(Y, t2v))


def ranks_of(sim, t2v, **kwargs):
    t2v_r, v2t_r = retrieval_ranks(DenseSimilarity(np.asarray(sim)), torch.tensor(t2v),
                                   **kwargs)
    return t2v_r.tolist(), v2t_r.tolist()


# ------------------------------------------------------------------ hand-computed cases
# one caption per video: text i belongs to video i
S_ONE = np.array([[0.9, 0.2, 0.1, 0.0],    # GT 0.9 is the row max          -> rank 1
                  [0.3, 0.5, 0.7, 0.1],    # GT 0.5, ahead: 0.7             -> rank 2
                  [0.6, 0.8, 0.4, 0.7],    # GT 0.4, ahead: 0.6 0.8 0.7     -> rank 4
                  [0.2, 0.1, 0.3, 0.25]],  # GT 0.25, ahead: 0.3            -> rank 2
                 dtype=np.float32)
# v2t, column j vs incorrect texts: v0 0.9 (none ahead) 1; v1 0.5 (0.8) 2; v2 0.4 (0.7) 2;
# v3 0.25 (0.7) 2.

# several captions per video: t2v = [0, 0, 1, 2, 2]
S_MULTI = np.array([[0.5, 0.6, 0.1],    # t0 -> v0: GT 0.5, ahead 0.6         -> 2
                    [0.7, 0.2, 0.3],    # t1 -> v0: GT 0.7                    -> 1
                    [0.4, 0.3, 0.35],   # t2 -> v1: GT 0.3, ahead 0.4 0.35    -> 3
                    [0.1, 0.2, 0.9],    # t3 -> v2: GT 0.9                    -> 1
                    [0.8, 0.6, 0.2]],   # t4 -> v2: GT 0.2, ahead 0.8 0.6     -> 3
                   dtype=np.float32)
T2V_MULTI = [0, 0, 1, 2, 2]
# v2t: v0 best correct max(0.5, 0.7) = 0.7, incorrect 0.4 0.1 0.8 -> 0.8 ahead -> 2
#      v1 best correct 0.3, incorrect 0.6 0.2 0.2 0.6 -> two ahead -> 3
#      v2 best correct max(0.9, 0.2) = 0.9, incorrect 0.1 0.3 0.35 -> 1


def test_one_caption_per_video_hand():
    t2v, v2t = ranks_of(S_ONE, [0, 1, 2, 3])
    assert t2v == [1, 2, 4, 2]
    assert v2t == [1, 2, 2, 2]
    metrics = retrieval_metrics_from_similarity(S_ONE, [0, 1, 2, 3])
    assert metrics == pytest.approx(dict(
        t2v_R1=25.0, t2v_R5=100.0, t2v_R10=100.0, t2v_MdR=2.0, t2v_MnR=9 / 4,
        v2t_R1=25.0, v2t_R5=100.0, v2t_R10=100.0, v2t_MdR=2.0, v2t_MnR=7 / 4))


def test_several_captions_per_video_hand():
    t2v, v2t = ranks_of(S_MULTI, T2V_MULTI)
    assert t2v == [2, 1, 3, 1, 3]
    assert v2t == [2, 3, 1]
    metrics = retrieval_metrics_from_similarity(S_MULTI, T2V_MULTI, chunk_size=2)
    assert metrics['t2v_R1'] == pytest.approx(40.0)
    assert metrics['t2v_MdR'] == 2.0 and metrics['t2v_MnR'] == pytest.approx(2.0)
    assert metrics['v2t_R1'] == pytest.approx(100 / 3)
    assert metrics['v2t_MdR'] == 2.0 and metrics['v2t_MnR'] == pytest.approx(2.0)


def test_median_of_an_even_count_averages_the_two_middle_ranks():
    # t2v 1 2 3 10: R@1 1/4, R@5 3/4, R@10 4/4; median (2 + 3) / 2; mean 16 / 4.
    # v2t 1 1 2 2:  R@1 2/4, R@5 and R@10 4/4; median (1 + 2) / 2; mean 6 / 4.
    # The two middle ranks differ in both, so the upper one alone (3, 2) would be caught.
    metrics = ranks_to_metrics(torch.tensor([1, 2, 3, 10]), torch.tensor([1, 1, 2, 2]))
    assert metrics == pytest.approx(dict(
        t2v_R1=25.0, t2v_R5=75.0, t2v_R10=100.0, t2v_MdR=2.5, t2v_MnR=4.0,
        v2t_R1=50.0, v2t_R5=100.0, v2t_R10=100.0, v2t_MdR=1.5, v2t_MnR=1.5))


def test_ties_rank_the_ground_truth_behind():
    S = np.array([[0.5, 0.5, 0.375],     # t0 -> v0: tie with v1                -> 2
                  [0.25, 0.25, 0.25],    # t1 -> v1: ties with both others      -> 3
                  [0.125, 0.375, 0.375]],  # t2 -> v2: tie with v1               -> 2
                 dtype=np.float32)
    # v2t: v0 correct 0.5, incorrect 0.25 0.125 -> 1; v1 correct 0.25, incorrect 0.5 0.375
    # -> 3; v2 correct 0.375, incorrect 0.375 (tie) 0.25 -> 2
    assert ranks_of(S, [0, 1, 2]) == ([2, 3, 2], [1, 3, 2])
    # a constant matrix ranks everything last
    assert ranks_of(np.zeros((4, 4)), [0, 1, 2, 3]) == ([4] * 4, [4] * 4)


def test_duplicate_captions_tie_in_v2t():
    # t1 (video 1) is an exact duplicate of t0 (video 0): for video 0 the incorrect t1 ties
    # with the correct t0 and ranks ahead; likewise for video 1.
    S = np.array([[0.7, 0.2], [0.7, 0.2], [0.1, 0.9]], dtype=np.float32)
    t2v, v2t = ranks_of(S, [0, 1, 1])
    assert t2v == [1, 2, 1]   # t1 -> v1: 0.2 behind 0.7
    assert v2t == [2, 1]      # v0: t1 ties at 0.7; v1: best correct 0.9, t0 has 0.2


def test_dsl_changes_ranks_as_reasoned():
    # video 1 is a hub: text 0 prefers it (0.7 > 0.6) although its GT is video 0.
    S = np.array([[0.6, 0.7], [0.0, 0.9]], dtype=np.float32)
    assert ranks_of(S, [0, 1])[0] == [2, 1]
    # temp 0.1, softmax over texts: column 0 weights e^6 : e^0 -> text 0 keeps ~1;
    # column 1 weights e^7 : e^9 -> text 0 keeps ~0.12. Text 0: 0.6 * ~1 > 0.7 * 0.12 -> rank
    # 1; text 1: 0 vs 0.9 * 0.88 -> rank 1.
    assert ranks_of(S, [0, 1], dsl=True, dsl_temp=0.1)[0] == [1, 1]
    # temp 1000 makes both softmaxes nearly uniform: the ranking stays the raw one
    assert ranks_of(S, [0, 1], dsl=True, dsl_temp=1000.0)[0] == [2, 1]


# QB-Norm: bank b0, b1 both have video 1 as top-1 -> activation set A = {1}.
QB_TEST = np.array([[0.5, 0.6, -0.5],   # t0 -> v0, top-1 = v1 in A -> normalized
                    [0.1, 0.9, 0.0],    # t1 -> v1, top-1 = v1 in A -> normalized
                    [0.7, 0.1, 0.65]],  # t2 -> v2, top-1 = v0 not in A -> raw
                   dtype=np.float32)
QB_BANK = np.array([[0.6, 0.8, 0.0], [0.5, 0.7, 0.0]], dtype=np.float32)


def test_qb_norm_hand():
    # beta = 10: Z0 = e^6 + e^5 = 551.8, Z1 = e^8 + e^7 = 4078, Z2 = 2.
    # t0: e^5/Z0 = 0.269, e^6/Z1 = 0.099, e^-5/Z2 = 0.003 -> GT v0 first: rank 1 (raw: 2).
    # t1: e^1/Z0 = 0.005, e^9/Z1 = 1.99, e^0/Z2 = 0.5 -> rank 1.
    # t2 stays raw: 0.65 behind 0.7 -> rank 2 (normalized it would have won: e^6.5/2 = 332).
    bank = DenseSimilarity(QB_BANK)
    assert ranks_of(QB_TEST, [0, 1, 2])[0] == [2, 1, 2]
    t2v, v2t = ranks_of(QB_TEST, [0, 1, 2], qb_bank=bank, qb_beta=10.0, qb_k=1)
    assert t2v == [1, 1, 2]
    # v2t is untouched by QB-Norm: v0 correct 0.5 vs 0.1, 0.7 -> 2; v1 0.9 -> 1; v2 0.65 -> 1
    assert v2t == [2, 1, 1]


# ------------------------------------------------------------------ against the references
def random_case(seed, nt, nv, dim=16, bank=9):
    """float64 embeddings: texts [nt, dim] (noisy copies of their video), videos [nv, dim],
    bank texts [bank, dim]; every video has at least one caption."""
    gen = torch.Generator().manual_seed(seed)
    t2v = torch.cat([torch.arange(nv), torch.randint(0, nv, (nt - nv,), generator=gen)])
    t2v = t2v[torch.randperm(nt, generator=gen)]

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    normalize = torch.nn.functional.normalize
    video = normalize(randn(nv, dim), dim=1)
    text = normalize(video[t2v] + 0.9 * randn(nt, dim), dim=1)
    bank_text = normalize(randn(bank, dim), dim=1)
    return text, video, bank_text, t2v


CHUNKS = [1, 2, 5, 7, 16, 1000]


@pytest.mark.parametrize('seed', [0, 1])
def test_plain_ranks_match_reference_for_all_chunk_sizes(seed):
    text, video, _, t2v = random_case(seed, 23, 11)
    S = (text @ video.T).numpy()
    expected = (ref_t2v_ranks(S, t2v.tolist()), ref_v2t_ranks(S, t2v.tolist()))
    for chunk in CHUNKS:
        assert ranks_of(S, t2v.tolist(), chunk_size=chunk) == expected
        emb = retrieval_ranks(EmbeddingSimilarity(text, video), t2v, chunk_size=chunk)
        assert (emb[0].tolist(), emb[1].tolist()) == expected


@pytest.mark.parametrize('temp', [0.05, 0.01])
def test_dsl_matches_reference_for_all_chunk_sizes(temp):
    text, video, _, t2v = random_case(3, 23, 11)
    S = (text @ video.T).numpy()
    expected = (ref_t2v_ranks(ref_dsl_t2v(S, temp), t2v.tolist()),
                ref_v2t_ranks(ref_dsl_v2t(S, temp), t2v.tolist()))
    raw = (ref_t2v_ranks(S, t2v.tolist()), ref_v2t_ranks(S, t2v.tolist()))
    assert expected != raw, 'test data must make DSL matter'
    for chunk in CHUNKS:
        assert ranks_of(S, t2v.tolist(), dsl=True, dsl_temp=temp, chunk_size=chunk) == expected
        emb = retrieval_ranks(EmbeddingSimilarity(text, video), t2v, dsl=True, dsl_temp=temp,
                              chunk_size=chunk)
        assert (emb[0].tolist(), emb[1].tolist()) == expected


@pytest.mark.parametrize('beta,k', [(20.0, 1), (20.0, 2), (5.0, 1)])
def test_qb_norm_matches_reference_for_all_chunk_sizes(beta, k):
    text, video, bank_text, t2v = random_case(4, 23, 11)
    S = (text @ video.T).numpy()
    B = (bank_text @ video.T).numpy()
    expected_t2v = ref_t2v_ranks(ref_qb_norm(S, B, beta, k), t2v.tolist())
    expected_v2t = ref_v2t_ranks(S, t2v.tolist())
    for chunk in CHUNKS:
        got = ranks_of(S, t2v.tolist(), qb_bank=DenseSimilarity(B), qb_beta=beta, qb_k=k,
                       chunk_size=chunk)
        assert got == (expected_t2v, expected_v2t)
    metrics = retrieval_metrics_from_embeddings(text, video, t2v, qb_bank_emb=bank_text,
                                                qb_beta=beta, qb_k=k, chunk_size=4)
    assert metrics == pytest.approx(ref_metrics(expected_t2v, expected_v2t))


def test_dsl_then_qb_norm_matches_reference():
    text, video, bank_text, t2v = random_case(5, 23, 11)
    S = (text @ video.T).numpy()
    B = (bank_text @ video.T).numpy()
    temp, beta = 0.05, 2.0
    X = ref_qb_norm(ref_dsl_t2v(S, temp), ref_dsl_t2v(B, temp), beta, 1)
    expected = (ref_t2v_ranks(X, t2v.tolist()), ref_v2t_ranks(ref_dsl_v2t(S, temp), t2v.tolist()))
    for chunk in CHUNKS:
        got = ranks_of(S, t2v.tolist(), dsl=True, dsl_temp=temp, qb_bank=DenseSimilarity(B),
                       qb_beta=beta, chunk_size=chunk)
        assert got == expected


def test_duplicate_embeddings_stay_exact_ties_across_chunks():
    gen = torch.Generator().manual_seed(3)  # a seed where unpadded blocks break the tie
    video = torch.nn.functional.normalize(torch.randn(9, 64, generator=gen), dim=1)
    video[5] = video[2]                                   # duplicate videos
    t2v = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 2, 5, 3, 1])  # video 0: caption 0 only
    text = torch.nn.functional.normalize(video[t2v] + 0.8 * torch.randn(13, 64, generator=gen),
                                         dim=1)
    text[9] = text[2]                                     # duplicate captions, same video
    text[10] = text[5]
    text[12] = text[0]                                    # duplicate caption, other video
    S = (text.double() @ video.double().T).numpy()
    expected = (ref_t2v_ranks(S, t2v.tolist()), ref_v2t_ranks(S, t2v.tolist()))
    expected_dsl = (ref_t2v_ranks(ref_dsl_t2v(S, 0.05), t2v.tolist()),
                    ref_v2t_ranks(ref_dsl_v2t(S, 0.05), t2v.tolist()))
    # the duplicates really tie (in float64 as in the float32 product): video 5 == video 2 for
    # every text, caption 12 (of video 1) == caption 0 (of video 0) for every video
    assert S[12, 0] == S[0, 0] and S[3, 2] == S[3, 5]
    assert expected[1][0] >= 2 and expected_dsl[1][0] >= 2  # caption 12 ties video 0's only one
    assert expected[0][2] >= 2 and expected[0][5] >= 2      # video 5 ties video 2 and back
    for chunk in [1, 3, 4, 5, 13]:
        got = retrieval_ranks(EmbeddingSimilarity(text, video), t2v, chunk_size=chunk)
        assert (got[0].tolist(), got[1].tolist()) == expected
        got = retrieval_ranks(EmbeddingSimilarity(text, video), t2v, dsl=True, dsl_temp=0.05,
                              chunk_size=chunk)
        assert (got[0].tolist(), got[1].tolist()) == expected_dsl


@pytest.mark.parametrize('num_videos, dim', [(300, 512), (65, 768)])
def test_duplicate_videos_tie_at_chunk_size_one(num_videos, dim):
    """chunk_size=1: a one-row block would be a matrix-vector product, which rounds a
    column's dot product differently depending on its position, so a duplicate video could
    beat the ground truth by 1 ulp. Every chunk size ranks alike, ties count against."""
    gen = torch.Generator().manual_seed(0)
    video = torch.nn.functional.normalize(torch.randn(num_videos, dim, generator=gen), dim=1)
    for k in range(20):
        video[num_videos - 1 - k] = video[k]             # 20 videos stored twice
    t2v = torch.arange(num_videos)
    text = torch.nn.functional.normalize(video + 0.02 * torch.randn(video.shape, generator=gen),
                                         dim=1)
    runs = [retrieval_ranks(EmbeddingSimilarity(text, video), t2v, chunk_size=c)
            for c in (1, 2, 7, 256, 10 ** 6)]
    for got in runs[1:]:
        assert torch.equal(got[0], runs[0][0]) and torch.equal(got[1], runs[0][1])
    t2v_ranks = runs[0][0]
    dup = list(range(20)) + list(range(num_videos - 20, num_videos))
    assert (t2v_ranks[dup] >= 2).all()                    # the twin ties the ground truth


def test_duplicate_caption_ties_under_dsl_whatever_the_chunk_size():
    # caption 3 (of video 2) is an exact copy of caption 0 (of video 0). DSL v2t, temp 0.01
    # (softmax over each caption's row): video 0's only caption scores
    # 0.32 * e^-8 / (1 + e^-8 + e^-11) ~ 1e-4; caption 1 scores 0.73 * ~1 (ahead) and
    # caption 3 the same bits as caption 0 (a tie: ahead) -> rank 3. Video 1: caption 1
    # scores 0.47 * e^-26 ~ 2e-12, captions 0 and 3 0.29 * e^-11 ~ 5e-6 (ahead), caption 2
    # 0.11 * e^-48 -> rank 3. Video 2: best correct 0.59 * ~1 (caption 2), caption 0 has
    # 0.40 * ~1, caption 1 0.24 * e^-49 -> rank 1. The row normalizers of captions 0 and 3
    # used to depend on which rows shared their chunk (chunk size 2: rank 2 for video 0).
    S = np.array([[.32, .29, .40], [.73, .47, .24], [.04, .11, .59], [.32, .29, .40]])
    for chunk in (1, 2, 3, 4):
        assert ranks_of(S, [0, 1, 2, 2], dsl=True, chunk_size=chunk)[1] == [3, 3, 1]


@pytest.mark.parametrize('seed', [2, 3, 27, 46])
def test_duplicate_rows_and_columns_tie_under_dsl_and_qb_norm(seed):
    """Exact duplicates (captions = rows, videos = columns, also in the querybank) give
    bit-equal DSL / QB-Norm normalizers, so every rank equals the plain-loop reference and
    none depends on the chunk size. Scores are multiples of 0.01, as in a coarse matrix.
    Seeds where a summation order that depends on the position (``Tensor.sum`` of a block,
    ``torch.logaddexp`` across chunks) broke a tie: 2 DSL, 3 QB-Norm, 27 QB-Norm, 46 DSL
    then QB-Norm."""
    g = torch.Generator().manual_seed(seed)
    nv, nt, nb = 17, 23, 40
    t2v = list(range(nv)) + [3, 16, 5, 0, 8, 2]
    S = (torch.randint(0, 100, (nt, nv), generator=g).double() / 100)
    B = (torch.randint(0, 100, (nb, nv), generator=g).double() / 100)
    S[:, 16], B[:, 16] = S[:, 0], B[:, 0]          # video 16 duplicates video 0
    S[:, 9], B[:, 9] = S[:, 5], B[:, 5]            # video 9 duplicates video 5
    S[nv + 1] = S[3]                               # caption of video 16 copies one of video 3
    S[nv + 4] = S[11]                              # caption of video 8 copies one of video 11
    S, B = S.numpy(), B.numpy()
    temp, beta = 0.05, 20.0
    cases = {
        'dsl': (dict(dsl=True, dsl_temp=temp),
                ref_dsl_t2v(S, temp), ref_dsl_v2t(S, temp)),
        'qb': (dict(qb_bank=DenseSimilarity(B), qb_beta=beta), ref_qb_norm(S, B, beta, 1), S),
        # beta 2: DSL scores of the bank reach Nb = 40, exp(20 * 40) would overflow the
        # reference's plain floats
        'dsl_qb': (dict(dsl=True, dsl_temp=temp, qb_bank=DenseSimilarity(B), qb_beta=2.0),
                   ref_qb_norm(ref_dsl_t2v(S, temp), ref_dsl_t2v(B, temp), 2.0, 1),
                   ref_dsl_v2t(S, temp)),
    }
    for name, (kwargs, X, Y) in cases.items():
        expected = (ref_t2v_ranks(X, t2v), ref_v2t_ranks(Y, t2v))
        for chunk in (1, 2, 3, 7, 16, 40):
            assert ranks_of(S, t2v, chunk_size=chunk, **kwargs) == expected, (name, chunk)


def test_pairwise_sum_is_the_same_for_equal_rows_and_columns():
    from stan_mm.evaluation.rescoring import block_logsumexps, pairwise_sum
    g = torch.Generator().manual_seed(0)
    x = torch.rand(37, 53, generator=g, dtype=torch.float64) * 40
    x[:, 50] = x[:, 1]                     # equal columns at a vector lane and in the tail
    x[36] = x[2]                           # equal rows
    cols = pairwise_sum(x.clone(), 0)
    rows = pairwise_sum(x.clone(), 1)
    assert cols[50] == cols[1] and rows[36] == rows[2]
    torch.testing.assert_close(cols, x.sum(0), rtol=1e-14, atol=0)
    torch.testing.assert_close(rows, x.sum(1), rtol=1e-14, atol=0)
    for span in (1.0, 900.0):              # shared exponentials, and per-column shifts
        z = x * (span / 40)
        col, row = block_logsumexps(z.clone())
        assert col[50] == col[1] and row[36] == row[2]
        torch.testing.assert_close(col, torch.logsumexp(z, 0), rtol=1e-13, atol=0)
        torch.testing.assert_close(row, torch.logsumexp(z, 1), rtol=1e-13, atol=0)
        # a row alone in its block gets the same bits as within the block
        assert block_logsumexps(z[36:37].clone())[1][0] == row[36]
        assert block_logsumexps(z.clone(), rows=False)[1] is None


def test_logaddexp_is_the_same_at_every_position():
    from stan_mm.evaluation.rescoring import logaddexp
    g = torch.Generator().manual_seed(0)
    # running logsumexps and a block's: close values (torch.logaddexp gives 1-ulp
    # differences between positions for about 1 pair in 100 of these)
    a = torch.rand(34000, generator=g, dtype=torch.float64) * 40
    b = a + (torch.rand(34000, generator=g, dtype=torch.float64) - 0.5) * 3
    torch.testing.assert_close(logaddexp(a, b), torch.logaddexp(a, b), rtol=1e-15, atol=0)
    # each pair at every position of a 17-entry tensor (vector lanes and tail), one call
    # per pair as in the ranking's per-video accumulators
    for i in range(0, 34000, 17):
        out = logaddexp(a[i].expand(17).contiguous(), b[i].expand(17).contiguous())
        assert bool((out == out[0]).all()), i
    inf = torch.tensor([float('-inf'), float('-inf'), 2.0], dtype=torch.float64)
    other = torch.tensor([float('-inf'), 1.5, float('-inf')], dtype=torch.float64)
    assert logaddexp(inf, other).tolist() == [float('-inf'), 1.5, 2.0]


# ------------------------------------------------------------------ validation
def test_bad_inputs_are_reported_clearly():
    with pytest.raises(ValueError, match='no caption'):
        ranks_of(S_ONE, [0, 1, 1, 0])
    with pytest.raises(ValueError, match='not a valid video index'):
        ranks_of(S_ONE, [0, 1, 2, 4])
    # an unsigned index too large for int64 is reported as written, not wrapped around
    with pytest.raises(ValueError, match=r'\[3\] = 9223372036854775808 is not a valid'):
        ranks_of(S_ONE, np.array([0, 1, 2, 2**63], dtype=np.uint64))
    with pytest.raises(ValueError, match='4 texts'):
        ranks_of(S_ONE, [0, 1, 2])
    with pytest.raises(ValueError, match='integer'):
        ranks_of(S_ONE, [0.0, 1.0, 2.0, 3.0])
    bad = S_ONE.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match='non-finite'):
        ranks_of(bad, [0, 1, 2, 3])
    with pytest.raises(ValueError, match='querybank covers'):
        ranks_of(S_ONE, [0, 1, 2, 3], qb_bank=DenseSimilarity(np.zeros((2, 3))))
    with pytest.raises(ValueError, match='dsl_temp'):
        ranks_of(S_ONE, [0, 1, 2, 3], dsl=True, dsl_temp=0.0)


# ------------------------------------------------------------------ the registered metric
def random_norms(n, seed):
    """A norm per feature in [0.2, 5): the metric must normalize each one (a common
    factor, e.g. every video x 3, would leave every rank as it is)."""
    gen = torch.Generator().manual_seed(seed)
    return 0.2 + 4.8 * torch.rand(n, generator=gen, dtype=torch.float64)


def make_samples(text, video, t2v, rng_order=None, nested=False, seed=0):
    """One sample per video with all its captions; every video and every caption scaled
    by its own random norm (unnormalized features)."""
    samples = []
    video = video * random_norms(video.shape[0], seed)[:, None]
    text = text * random_norms(text.shape[0], seed + 1)[:, None]
    for v in range(video.shape[0]):
        caps = text[t2v == v]
        feats = dict(video_feature=video[v], text_feature=caps)
        sample = dict(sample_idx=v, **({'features': feats} if nested else feats))
        samples.append(sample)
    if rng_order is not None:
        samples = [samples[i] for i in rng_order]
    return samples


def test_metric_matches_core_and_ignores_order_and_duplicates():
    from mmaction.registry import METRICS
    text, video, bank_text, t2v = random_case(6, 19, 8)
    order = [3, 0, 7, 1, 5, 2, 6, 4]
    expected = ref_metrics_from_embeddings(text, video, t2v)
    metric = METRICS.build(dict(type='RetrievalRecallMetric', chunk_size=3))
    samples = make_samples(text, video, t2v, order)
    metric.process(None, samples[:5])
    metric.process(None, samples[5:] + samples[1:3])  # padded duplicates, mid-list
    result = metric.evaluate(size=8)
    assert result == pytest.approx({f'retrieval/{k}': v for k, v in expected.items()})
    assert metric.results == []


def test_caption_level_samples_of_one_file_are_one_video():
    """MMAction2's VideoTextDataset gives one sample per caption, each with its video: the
    samples of one file are one gallery video with all their captions, so the metrics are
    those of the video-level layout (without the grouping every copy of a video was its
    own gallery item, and the ties made every R@1 0)."""
    from mmaction.registry import METRICS
    from mmengine.logging import MMLogger
    text, video, bank_text, t2v = random_case(5, 13, 8)
    expected = ref_metrics_from_embeddings(text, video, t2v)
    samples, k = [], 0
    for c in np.random.default_rng(3).permutation(len(t2v)):      # any caption order
        v = int(t2v[c])
        samples.append(dict(sample_idx=k, filename=f'/data/v{v}.mp4',
                            video_feature=video[v], text_feature=text[c]))
        k += 1
    metric = METRICS.build(dict(type='RetrievalRecallMetric'))
    logger, records = MMLogger.get_current_instance(), []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda r: records.append(r.getMessage())
    logger.addHandler(handler)
    try:
        metric.process(None, samples)
        got = metric.evaluate(size=len(samples))
    finally:
        logger.removeHandler(handler)
    # (ranks do not depend on the order of texts or videos)
    assert got == pytest.approx({f'retrieval/{k}': v for k, v in expected.items()})
    assert got['retrieval/t2v_R1'] > 0
    assert any(f'{len(samples)} test samples hold 8 video files' in r for r in records)
    # without file names nothing is grouped: each sample is its own video, and the captions
    # of a video with several lose to its other copies (ties count against the model)
    metric.process(None, [{k: v for k, v in s.items() if k != 'filename'} for s in samples])
    ungrouped = metric.evaluate(size=len(samples))
    assert ungrouped['retrieval/t2v_R1'] < got['retrieval/t2v_R1']
    # some samples without a file name while others share files: nothing grouped, and
    # the log says why
    records.clear()
    logger.addHandler(handler)
    try:
        metric.process(None, [dict(s, filename=None) if i == 0 else s
                              for i, s in enumerate(samples)])
        metric.evaluate(size=len(samples))
    finally:
        logger.removeHandler(handler)
    assert any('1 of 13 test samples carry no filename' in r for r in records), records


def test_metric_stores_compact_features_not_the_batch():
    """A retrieval model hands out per-sample slices of its batch outputs; the metric's
    results are pickled to be gathered across processes, and a pickled view carries its
    whole storage. Stored features must own just their own values."""
    import pickle
    from mmaction.registry import METRICS
    batch_video = torch.randn(16, 512)
    batch_text = torch.randn(16 * 40, 512)
    samples = [dict(sample_idx=i, video_feature=batch_video[i],
                    text_feature=batch_text.split(40)[i]) for i in range(16)]
    metric = METRICS.build(dict(type='RetrievalRecallMetric'))
    metric.process(None, samples)
    feature_bytes = (16 * 512 + 16 * 40 * 512) * 4
    assert len(pickle.dumps(metric.results)) < 1.2 * feature_bytes
    # values unchanged; a tensor that already owns its storage is not copied
    from stan_mm.evaluation.retrieval_metric import own_storage
    t = torch.randn(3, 4)
    assert own_storage(t) is t and own_storage(batch_video[2]) is not batch_video[2]
    torch.testing.assert_close(own_storage(batch_video[2]), batch_video[2])


def test_metric_dsl_qb_and_nested_features(tmp_path):
    text, video, bank_text, t2v = random_case(8, 19, 8)
    bank_path = tmp_path / 'bank.npy'
    # a norm per bank row too: normalized inside the metric
    np.save(bank_path, (bank_text * random_norms(len(bank_text), 7)[:, None]).float().numpy())
    metric = RetrievalRecallMetric(dsl=True, dsl_temp=0.05,
                                   qb_norm=dict(bank=str(bank_path), beta=3.0), chunk_size=4)
    metric.process(None, make_samples(text, video, t2v, nested=True, seed=3))
    result = metric.evaluate(size=8)
    expected = ref_metrics_from_embeddings(text, video, t2v, dsl_temp=0.05, bank=bank_text,
                                           beta=3.0)
    assert result == pytest.approx({f'retrieval/{k}': v for k, v in expected.items()})


def test_metric_action_data_sample_and_errors():
    from mmaction.structures import ActionDataSample
    text, video, _, t2v = random_case(9, 8, 8)
    metric = RetrievalRecallMetric()
    samples = []
    for v in range(8):
        ds = ActionDataSample(metainfo=dict(sample_idx=v))
        ds.video_feature = video[v].float()
        ds.text_feature = text[t2v == v][0].float()  # one caption as a 1-D tensor
        samples.append(ds.to_dict())
    metric.process(None, samples)
    result = metric.evaluate(8)
    expected = ref_metrics_from_embeddings(text, video, t2v)
    assert result == pytest.approx({f'retrieval/{k}': v for k, v in expected.items()})

    with pytest.raises(KeyError, match='sample_idx'):
        metric.process(None, [dict(video_feature=video[0], text_feature=text[:1])])
    with pytest.raises(KeyError, match='text_feature'):
        metric.process(None, [dict(sample_idx=0, video_feature=video[0])])
    metric.process(None, samples[:7])
    with pytest.raises(ValueError, match='7 distinct samples'):
        metric.evaluate(8)
    with pytest.raises(ValueError, match='qb_norm'):
        RetrievalRecallMetric(qb_norm=dict(beta=20))
    with pytest.raises(FileNotFoundError, match='missing.npy'):
        RetrievalRecallMetric(qb_norm=dict(bank='missing.npy'))


def test_dsl_overflow_is_named():
    """A finite similarity whose S / dsl_temp overflows float64: a ValueError naming DSL and
    the temperature, not an internal rank error."""
    S = 0.5 * np.eye(4)
    S[1, 2] = 1e307
    with pytest.raises(ValueError, match=r'DSL / QB-Norm: .*overflow float64.*0\.01'):
        retrieval_metrics_from_similarity(S, np.arange(4), dsl=True)
    retrieval_metrics_from_similarity(S, np.arange(4))            # fine without DSL
    S[1, 2] = -1e307                                              # negative overflow too
    with pytest.raises(ValueError, match=r'overflow float64'):
        retrieval_metrics_from_similarity(S, np.arange(4), dsl=True)
    bank = np.full((3, 4), 0.5)
    bank[0, 0] = 1e307                                            # QB-Norm: beta * S
    with pytest.raises(ValueError, match=r'overflow float64'):
        retrieval_metrics_from_similarity(0.5 * np.eye(4), np.arange(4),
                                          qb_bank_sim=bank)
