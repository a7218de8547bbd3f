"""Evaluation-invariance review (2026-12-07): the metrics do not depend on how a test
is run. Tied class scores count against the label in every recognition metric (MMAction2
broke ties by class index in opposite directions); --amp keeps a linear head's scores in
float32; duplicate captions keep exactly equal embeddings whatever the batch; the results
line rounds R@K as the metric line."""
import numpy as np
import pytest
import torch

import stan_mm  # noqa: F401


# ------------------------------------------------------------------------ tied scores
def _tied():
    """4 samples of 3 classes, scores by hand: sample 0 ties its label 0 with class 1 for
    the top; sample 1 ties its label 1 with class 0 for the top; sample 2 is right
    outright; sample 3 ties label 2 with class 0 for second place behind class 1."""
    scores = [np.array([0.4, 0.4, 0.2]), np.array([0.45, 0.45, 0.1]),
              np.array([0.1, 0.2, 0.7]), np.array([0.25, 0.5, 0.25])]
    return scores, [0, 1, 2, 2]


def test_ties_count_against_the_label_in_top_k_and_mean_class_accuracy():
    """By hand: top1 = 1/4 (only sample 2); top2 = 3/4 (samples 0, 1: rank 2; sample 3:
    rank 3, classes 0 and 1 score at least as high); mean1 = mean(0, 0, 1/2) = 1/6. MMAction2
    gave top1 0.5 (argsort: sample 1's tie to the higher index) and mean1 1/2 (argmax:
    sample 0's tie to the lower index)."""
    from stan_mm.evaluation.acc_metric import RecognitionAccMetric, label_ranks
    scores, labels = _tied()
    assert label_ranks(scores, labels).tolist() == [2, 2, 1, 3]
    metric = RecognitionAccMetric(metric_options=dict(top_k_accuracy=dict(topk=(1, 2))))
    results = metric.calculate(scores, labels)
    assert results['top1'] == pytest.approx(0.25) and results['top2'] == pytest.approx(0.75)
    assert results['mean1'] == pytest.approx(1 / 6)
    # without ties both rules are MMAction2's
    from mmaction.evaluation.functional import top_k_accuracy
    rng = np.random.default_rng(0)
    free = [rng.random(7) for _ in range(50)]
    gt = rng.integers(0, 7, 50).tolist()
    assert metric.calculate(free, gt)['top1'] == pytest.approx(
        top_k_accuracy(free, gt, (1, ))[0])


def test_motion_metric_ties_count_against_the_label():
    """MotionPairMetric on 4 classes (pairs {0, 1}, {2, 3}), by hand: sample 0 (label 0)
    ties classes 0 and 2 for the top: top1 wrong, pair wrong (class 2 is as high as its
    pair's best); sample 1 (label 1) ties 0 and 1: top1 wrong, pair right."""
    from stan_mm.evaluation.motion_metric import MotionPairMetric
    results = [dict(score=np.array([0.4, 0.1, 0.4, 0.1], np.float32), label=0),
               dict(score=np.array([0.45, 0.45, 0.05, 0.05], np.float32), label=1)]
    out = MotionPairMetric().compute_metrics(results)
    assert out['top1'] == 0.0 and out['pair_acc'] == 50.0


# ------------------------------------------------------------ --amp and a linear head
def test_amp_keeps_a_linear_heads_scores_in_float32():
    """tools/test.py --amp: the quickstart's I3DHead ran under bf16 autocast, its scores
    quantised to 8 bits of mantissa (585 distinct values of 1280 in the review, 4 tied
    tops). It now runs in float32 with autocast off: the same scores, bit for bit, as the
    head in float32 without autocast."""
    import os.path as osp
    from mmaction.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from test_user_tools import load_tool
    init_default_scope('mmaction')
    repo = osp.dirname(osp.dirname(osp.abspath(__file__)))
    cfg = Config.fromfile(osp.join(repo, 'configs', 'quickstart', 'motion_stan_tiny.py'))
    head = MODELS.build(cfg.model.cls_head).eval()
    feats = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = head(feats)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            before = head(feats)
    assert before.dtype == torch.bfloat16 and not torch.equal(before.float(), want)

    class _Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cls_head = head

        def test_step(self, data):
            return []

    model = _Model()
    load_tool('tools/test.py').float32_test_outputs(model)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        got = model.cls_head(feats.bfloat16())
    assert got.dtype == torch.float32
    assert torch.allclose(got, want, atol=1e-2)          # (the features came as bf16)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        assert torch.equal(model.cls_head(feats), want)


# ------------------------------------------------------------------ R@K's last digit
def test_recall_is_count_over_n_so_the_results_line_rounds_it_right():
    """46 of 160 queries at rank <= 5: R@5 = 100 * 46 / 160 = 28.75 exactly (100 * mean
    gave 28.749999999999996, printed 28.7 in tools/test.py's results line)."""
    from stan_mm.evaluation.ranking import ranks_to_metrics
    ranks = torch.tensor([5] * 46 + [50] * 114)
    metrics = ranks_to_metrics(ranks, ranks)
    assert metrics['t2v_R5'] == 28.75 and f"{metrics['t2v_R5']:.1f}" == '28.8'
    assert metrics['v2t_R1'] == 0.0 and metrics['t2v_R10'] == 28.75


# ------------------------------------------------------- duplicate captions tie exactly
def test_equal_captions_get_one_embedding_in_the_metric():
    """Two videos whose captions share a text: the model gives each caption a key from
    its tokens, and the metric gives equal keys the first row's embedding (computed in
    other batches they differed by up to 4.5e-8 and moved v2t MnR with the batch size)."""
    from stan_mm.evaluation.retrieval_metric import RetrievalRecallMetric
    from stan_mm.models.retrievers.stan_retriever import caption_keys
    tokens = torch.tensor([[49406, 320, 1929, 49407], [49406, 320, 2368, 49407],
                           [49406, 320, 1929, 49407]])
    keys = caption_keys(tokens)
    assert keys.dtype == torch.int64 and keys[0] == keys[2] and keys[0] != keys[1]
    assert torch.equal(caption_keys(tokens.int()), keys)        # the dtype does not matter
    g = torch.Generator().manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=-1)
    noisy = text[2] + 4.5e-8                                   # "the same caption"
    metric = RetrievalRecallMetric()
    metric.process(None, [dict(sample_idx=0, video_feature=torch.randn(8, generator=g),
                               text_feature=text[:2], text_key=keys[:2]),
                          dict(sample_idx=1, video_feature=torch.randn(8, generator=g),
                               text_feature=noisy[None], text_key=keys[2:])])
    text_emb, _, t2v, _ = metric.gather_features(metric.results)
    assert torch.equal(text_emb[2], text[0]) and torch.equal(text_emb[1], text[1])
    assert t2v.tolist() == [0, 0, 1]
    # without keys (another model): as computed
    metric = RetrievalRecallMetric()
    metric.process(None, [dict(sample_idx=0, video_feature=torch.randn(8, generator=g),
                               text_feature=text[:2]),
                          dict(sample_idx=1, video_feature=torch.randn(8, generator=g),
                               text_feature=noisy[None])])
    assert torch.equal(metric.gather_features(metric.results)[0][2], noisy)


def test_embed_texts_gives_a_repeated_text_the_first_rows_embedding():
    """extract_features / search embed captions in batches: a text repeated in another
    batch gets exactly its first occurrence's row."""
    from stan_mm.apis.embed import embed_texts
    from test_sizes_review_fixes import build_retriever
    model = build_retriever(text_context_length=16)
    texts = ['a dog runs', 'a cat sits', 'a dog runs', 'a bird', 'a  dog runs']
    emb = embed_texts(model, texts, batch_size=2)
    assert emb.shape[0] == 5
    # (the last one: other spacing, the same tokens: the metric's rule)
    assert torch.equal(emb[0], emb[2]) and torch.equal(emb[0], emb[4])
    assert not torch.equal(emb[0], emb[1])
    alone = embed_texts(model, ['a cat sits', 'a bird'], batch_size=1)
    assert torch.allclose(alone, emb[[1, 3]], atol=1e-5)


def test_recognition_acc_metric_computes_each_key_once_in_mmaction_order(monkeypatch):
    """Single-label samples: top-k and mean1 come from this project's tie-aware functions
    only (MMAction2's are not run and then overwritten), in the order of ``metric_list`` as
    MMAction2 orders them. Multi-label samples keep MMAction2's top-k and mAP. Reference
    values by hand."""
    import mmaction.evaluation.metrics.acc_metric as mm_acc
    from stan_mm.evaluation.acc_metric import RecognitionAccMetric

    def refuse(*args, **kwargs):
        raise AssertionError('MMAction2\'s top-k / mean-class accuracy was computed')
    scores = [np.array([0.7, 0.2, 0.1]), np.array([0.1, 0.5, 0.4]),
              np.array([0.3, 0.3, 0.4]), np.array([0.6, 0.3, 0.1])]
    labels = [0, 2, 1, 1]
    with monkeypatch.context() as patch:
        patch.setattr(mm_acc, 'top_k_accuracy', refuse)
        patch.setattr(mm_acc, 'mean_class_accuracy', refuse)
        out = RecognitionAccMetric(
            metric_list=('mean_class_accuracy', 'top_k_accuracy'),
            metric_options=dict(top_k_accuracy=dict(topk=(1, 2)))).calculate(scores, labels)
    assert list(out) == ['mean1', 'top1', 'top2']
    # ranks of the labels (ties against): 1, 2, 3 (0.3 ties 0.3, below 0.4), 2
    assert out['top1'] == pytest.approx(1 / 4) and out['top2'] == pytest.approx(3 / 4)
    # class 0: 1/1 right, class 1: 0/2, class 2: 0/1
    assert out['mean1'] == pytest.approx((1 + 0 + 0) / 3)
    # multi-label (many-hot) samples: MMAction2's own top-k and mAP, unchanged
    many_hot = [np.array([1, 0, 1]), np.array([0, 1, 0]), np.array([0, 1, 1]),
                np.array([1, 0, 0])]
    metric_list = ('top_k_accuracy', 'mean_average_precision')
    out = RecognitionAccMetric(metric_list=metric_list).calculate(scores, many_hot)
    expected = mm_acc.AccMetric(metric_list=metric_list).calculate(scores, many_hot)
    assert list(out) == list(expected) and out == pytest.approx(expected)
