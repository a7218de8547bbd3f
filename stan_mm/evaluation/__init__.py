"""Retrieval evaluation: exact chunked ranking (t2v, v2t), DSL, QB-Norm, and the registered
``RetrievalRecallMetric``.

- :mod:`.similarity`: row-chunk sources of the text x video similarity matrix;
- :mod:`.rescoring`: DSL (dual softmax) and QB-Norm (querybank normalisation);
- :mod:`.ranking`: two-pass exact ranks and R@K / MdR / MnR;
- :mod:`.retrieval_metric`: the mmengine metric (contract with the retrieval model);
- :mod:`.acc_metric`: ``RecognitionAccMetric`` (``AccMetric`` with an exact mean class
  accuracy);
- :mod:`.dump_results`: mmengine's ``DumpResults`` with a prefix (``tools/test.py
  --dump``: no "prefix is not set" warning).
"""
from .acc_metric import RecognitionAccMetric, mean_class_accuracy  # noqa: F401
from .dump_results import DumpResults  # noqa: F401
from .ranking import (METRIC_KEYS, check_text_to_video, ranks_to_metrics,  # noqa: F401
                      retrieval_metrics_from_embeddings, retrieval_metrics_from_similarity,
                      retrieval_ranks)
from .rescoring import (DEFAULT_CHUNK_SIZE, DEFAULT_DSL_TEMP, DEFAULT_QB_BETA,  # noqa: F401
                        DEFAULT_QB_K, DSL_QB_NORM_WARNING, QueryBankStats,
                        dsl_t2v_scores, dsl_v2t_scores, qb_norm_scores, querybank_stats)
from .motion_metric import MotionPairMetric, MotionTwinRetrievalMetric  # noqa: F401
from .retrieval_metric import RetrievalRecallMetric  # noqa: F401
from .similarity import DenseSimilarity, EmbeddingSimilarity, SimilaritySource  # noqa: F401

__all__ = [
    'METRIC_KEYS', 'check_text_to_video', 'ranks_to_metrics',
    'retrieval_metrics_from_embeddings', 'retrieval_metrics_from_similarity',
    'retrieval_ranks', 'DEFAULT_CHUNK_SIZE', 'DEFAULT_DSL_TEMP', 'DEFAULT_QB_BETA',
    'DEFAULT_QB_K', 'DSL_QB_NORM_WARNING', 'QueryBankStats', 'dsl_t2v_scores',
    'dsl_v2t_scores', 'qb_norm_scores', 'querybank_stats', 'MotionPairMetric',
    'MotionTwinRetrievalMetric', 'RetrievalRecallMetric', 'DenseSimilarity',
    'EmbeddingSimilarity', 'SimilaritySource', 'RecognitionAccMetric', 'mean_class_accuracy',
    'DumpResults',
]
