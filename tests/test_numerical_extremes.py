"""Extreme but legal values in retrieval evaluation and feature extraction.

- QB-Norm scores were ``beta * s - log_norm`` with ``beta`` rounded to float32 (``torch.where``
  with two Python numbers) while ``log_norm`` used the float64 beta: near scores were
  reordered against the exact inverted softmax, and a beta above float32's range raised
  ``RuntimeError: value cannot be converted to type float without overflow``.
- An integer similarity matrix was read as float32, which rounds integers above 2**24 to
  ties (and ties count against the query).
- A NaN feature reached the ranking as "non-finite similarity at text 0, video j" (a text
  that is fine, a position in the sorted gallery), not as the sample that holds it.
- ``extract_features`` (and the search gallery cache) saved NaN video embeddings as they
  were; a search ranks such a video last (NaN sorts last) without a word.

References are computed independently: exact rationals (``fractions.Fraction``) for QB-Norm
with one bank query, where ``exp(beta s) / exp(beta b)`` ranks as ``s - b``.
"""
import math
import os.path as osp
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch

from stan_mm.errors import ConfigValueError
from stan_mm.evaluation.ranking import retrieval_metrics_from_similarity, retrieval_ranks
from stan_mm.evaluation.retrieval_metric import RetrievalRecallMetric
from stan_mm.evaluation.similarity import DenseSimilarity

sys.path.insert(0, osp.dirname(__file__))


# ------------------------------------------------------------------------------ QB-Norm
def exact_single_bank_ranks(sim, bank_row):
    """t2v ranks (ties count against) of QB-Norm with one bank query whose top-1 is the
    top-1 of every test row: ``exp(beta s(q, g)) / exp(beta b(g))`` is increasing in
    ``s(q, g) - b(g)``, compared here in exact rational arithmetic."""
    ranks = []
    for i, row in enumerate(sim):
        score = [Fraction(float(s)) - Fraction(float(b)) for s, b in zip(row, bank_row)]
        ranks.append(1 + sum(1 for g in range(len(row)) if g != i and score[g] >= score[i]))
    return ranks


# row 0: GT score 0.9 - 0.4 = 0.5 beats 0.5 - 1e-9 by 1e-9 (rank 1); float32(20.3) is
# 20.2999992, 7.6e-7 too small, which moved 0.4 * beta by 3e-7 and ranked it second
SIM = np.array([[0.9, 0.5], [0.8, 0.85]])
BANK = np.array([[0.4, 1e-9]])


@pytest.mark.parametrize('beta', [20.3, 1e39, 1e300])
def test_qb_norm_ranks_follow_the_exact_inverted_softmax(beta):
    with np.errstate(over='ignore'):
        assert float(np.float32(beta)) != beta            # not held exactly by float32
    expected = exact_single_bank_ranks(SIM, BANK[0])
    assert expected == [1, 1]
    got, _ = retrieval_ranks(DenseSimilarity(SIM), [0, 1], qb_bank=DenseSimilarity(BANK),
                             qb_beta=beta)
    assert got.tolist() == expected


@pytest.mark.parametrize('beta', [math.inf, math.nan, 0.0, -1.0])
def test_qb_norm_refuses_a_beta_that_is_not_positive_and_finite(beta):
    with pytest.raises(ValueError, match='beta must be a positive finite number'):
        retrieval_metrics_from_similarity(SIM, [0, 1], qb_bank_sim=BANK, qb_beta=beta)


@pytest.mark.parametrize('kwargs, match', [
    (dict(dsl=True, dsl_temp=math.inf), 'dsl_temp must be a positive finite'),
    (dict(qb_norm=dict(bank=np.zeros((2, 4)), beta=math.inf)), 'beta must be a positive'),
    (dict(qb_norm=dict(bank=np.zeros((2, 4)), beta=0)), 'beta must be a positive'),
    (dict(qb_norm=dict(bank=np.zeros((2, 4)), beta='20')), 'beta must be a positive'),
    (dict(qb_norm=dict(bank=np.zeros((2, 4)), k=0)), 'k must be an integer >= 1'),
    (dict(qb_norm=dict(bank=np.zeros((2, 4)), k=1.5)), 'k must be an integer >= 1'),
])
def test_metric_refuses_bad_rescoring_values_when_built(kwargs, match):
    """Refused by the config, not after the whole test pass."""
    with pytest.raises(ConfigValueError, match=match):
        RetrievalRecallMetric(**kwargs)
    RetrievalRecallMetric(qb_norm=dict(bank=np.zeros((2, 4)), beta=np.float32(20), k=np.int64(2)))


# ------------------------------------------------------------------ integer similarities
@pytest.mark.parametrize('make', [
    lambda a: a.astype(np.int64), lambda a: a.astype(np.int32), lambda a: a.astype(np.uint32),
    lambda a: torch.from_numpy(a.astype(np.int64)), lambda a: torch.from_numpy(a.astype(np.int32)),
])
def test_integer_similarities_above_2_24_keep_their_order(make):
    big = 2 ** 25                        # float32 holds big and big + 2, not big + 1
    sim = np.array([[big + 1, big], [big, big + 1]])
    metrics = retrieval_metrics_from_similarity(make(sim), [0, 1])
    assert metrics['t2v_R1'] == 100.0 and metrics['v2t_R1'] == 100.0
    # with DSL too (the softmax works on the same float64 values)
    small = np.array([[3, 1], [1, 3]])
    assert retrieval_metrics_from_similarity(make(small), [0, 1], dsl=True,
                                             dsl_temp=1.0)['t2v_R1'] == 100.0


# ----------------------------------------------------------- non-finite metric features
def _samples(n=6, dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    video = torch.randn(n, dim, generator=gen)
    text = video + 0.3 * torch.randn(n, dim, generator=gen)
    return [dict(sample_idx=10 + i, video_feature=video[i].clone(),
                 text_feature=text[i:i + 1].clone(), filename=f'clip{i}.mp4', text_key=None)
            for i in range(n)]


@pytest.mark.parametrize('value', [math.nan, math.inf, -math.inf])
def test_metric_names_the_samples_whose_features_are_not_finite(value):
    results = _samples()
    RetrievalRecallMetric().compute_metrics(results)              # finite: fine
    results[3]['video_feature'][2] = value
    results[5]['text_feature'][0, 0] = value
    with pytest.raises(ValueError) as err:
        RetrievalRecallMetric().compute_metrics(results)
    message = str(err.value)
    assert "2 of 6 test samples" in message
    assert "sample_idx 13 'clip3.mp4': video_feature" in message
    assert "sample_idx 15 'clip5.mp4': text_feature" in message
    assert 'non-finite similarity' not in message


def test_metric_names_the_bank_rows_that_are_not_finite(tmp_path):
    bank = np.random.RandomState(0).randn(7, 8).astype(np.float32)
    bank[4, 1] = np.nan
    path = str(tmp_path / 'bank.npy')
    np.save(path, bank)
    with pytest.raises(ValueError, match=r'1 of 7 rows of .*bank\.npy hold NaN or inf '
                                         r'\(rows 4\)'):
        RetrievalRecallMetric(qb_norm=dict(bank=path)).compute_metrics(_samples())


# ------------------------------------------------------------ non-finite embeddings saved
NUM_VIDEOS = 3


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    from test_user_tools import retrieval_gallery
    setup = retrieval_gallery(tmp_path_factory.mktemp('extremes'), NUM_VIDEOS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield setup
    finally:
        torch.set_num_threads(threads)


def _nan_rows(monkeypatch, model, method, bad_call):
    """``model.<method>`` returns NaN rows on its ``bad_call``-th call (1-based)."""
    original = getattr(model, method)
    calls = []

    def patched(x):
        out = original(x)
        calls.append(1)
        return out * math.nan if len(calls) == bad_call else out
    monkeypatch.setattr(model, method, patched)


def test_extraction_refuses_a_nan_video_embedding_and_keeps_the_others(tiny, tmp_path,
                                                                       monkeypatch):
    from stan_mm.apis import extract_features
    from stan_mm.apis.embed import NonFiniteEmbeddingError
    from stan_mm.apis.features import load_features
    out = str(tmp_path / 'feats')
    kwargs = dict(videos=tiny['names'], video_root=tiny['videos'], key='k', batch_size=1,
                  num_workers=0, shard_size=1, progress=False, log=lambda _: None)
    with monkeypatch.context() as patch:
        _nan_rows(patch, tiny['model'], 'encode_video', bad_call=2)      # v1.mp4
        with pytest.raises(NonFiniteEmbeddingError) as err:
            extract_features(tiny['model'], out, skip_bad=True, **kwargs)
    assert err.value.items == ['v1.mp4']
    assert "1 of 1 videos got an embedding that is NaN or infinite ('v1.mp4')" \
        in str(err.value)
    assert isinstance(err.value, ValueError)            # what the tools report and exit on
    # the finite embedding made before it was saved; the next run embeds the rest
    result = extract_features(tiny['model'], out, **kwargs)
    assert result.complete and result.new == 2
    feats = load_features(out)
    assert np.isfinite(feats['videos']).all() and feats['videos'].shape[0] == NUM_VIDEOS


def test_a_nan_text_embedding_is_refused_naming_the_text(tiny, monkeypatch):
    from stan_mm.apis import embed_texts
    from stan_mm.apis.embed import NonFiniteEmbeddingError
    model = tiny['model']
    texts = ['a cross moving left', 'a square growing', 'a disc fading']
    original = model.encode_text

    def patched(tokens):
        out = original(tokens)
        out[1] = math.nan
        return out
    monkeypatch.setattr(model, 'encode_text', patched)
    with pytest.raises(NonFiniteEmbeddingError) as err:
        embed_texts(model, texts)
    assert err.value.items == ['a square growing']
    assert "1 of 3 texts got an embedding that is NaN or infinite ('a square growing')" \
        in str(err.value)
