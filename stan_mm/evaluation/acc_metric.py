"""Recognition accuracy: MMAction2's ``AccMetric`` with a mean class accuracy that averages
over the classes the test set contains.

MMAction2 1.2's ``mean_class_accuracy`` builds its confusion matrix over the union of the
labels and the predictions, so a class that is predicted but has no test sample enters the
mean as accuracy 0: ``mean1`` comes out too low on any test set that does not cover every
class (a subset, a smoke test, a class list longer than the test set). Full K400 / SSv2
validation sets contain every class, where both agree.

It also refuses labels outside the classes the model scores. MMAction2 scores them
silently: a list line without a label reads as -1 in its ``VideoDataset``, and a label
beyond the classifier (a class-name file shorter than the list's classes) can never be
predicted, so the accuracy comes out wrong without a word.

And it refuses scores that are not finite. A NaN class score is ranked differently by
MMAction2's ``top_k_accuracy`` (``argsort`` puts NaN last, so a NaN row "predicts" the last
class) and by ``mean_class_accuracy`` (``argmax`` returns the first NaN): one overflowed
sample (e.g. fp16 activations above 65504 under ``--amp``) would count as right in one
metric and wrong in the other, without a word.

Tied class scores never help: a sample is counted in ``topk`` when fewer than ``k`` other
classes score at least as high as its label (rank = #{c : s_c >= s_label}), and in
``mean1`` only when its label scores strictly highest. MMAction2 broke ties by class index,
in opposite directions in its two metrics (``top_k_accuracy``'s ``argsort`` gives a tie to
the highest index, ``mean_class_accuracy``'s ``argmax`` to the lowest), so one tied sample
counted as right in one and wrong in the other (found with ``--amp``, whose bf16 linear
head tied 4 of 160 quickstart rows). Without ties both rules are MMAction2's; retrieval
ranks ties the same way (:mod:`stan_mm.evaluation.ranking`).

And it warns (once) when a top-k accuracy is 1.0 by construction: with k >= the number of
classes scored, every label is among the k best (``acc/top5`` of a model with 5 classes or
fewer; ``acc/top1`` too with one class). The keys stay (configs and ``save_best`` name them).
"""
import logging
from collections import OrderedDict
from typing import Dict, List, Union

import numpy as np
from mmaction.evaluation.metrics import AccMetric
from mmaction.registry import METRICS
from mmengine.dist import collect_results
from mmengine.logging import print_log

from .dist_eval import compute_and_broadcast


def label_ranks(scores: List[np.ndarray], labels: List[Union[int, np.ndarray]]
                ) -> np.ndarray:
    """The rank of each sample's label among its class scores, ties counted against it:
    ``#{c : s_c >= s_label}`` (1 = the label scores strictly highest).

    Args:
        scores: per-sample class scores, each ``[num_classes]``.
        labels: per-sample class index (an int or a 0-d/1-element array).

    Returns:
        ``[N]`` int array.
    """
    table = np.stack([np.asarray(s).reshape(-1) for s in scores])
    gt = np.asarray([int(np.asarray(label).reshape(-1)[0]) for label in labels])
    own = table[np.arange(len(gt)), gt]
    return (table >= own[:, None]).sum(axis=1)


def top_k_accuracy(scores: List[np.ndarray], labels: List[Union[int, np.ndarray]],
                   topk=(1, )) -> List[float]:
    """Fraction of samples whose label ranks within the ``k`` best (:func:`label_ranks`:
    ties count against), for each ``k`` of ``topk``."""
    ranks = label_ranks(scores, labels)
    return [float(np.mean(ranks <= k)) for k in topk]


def mean_class_accuracy(scores: List[np.ndarray], labels: List[Union[int, np.ndarray]]
                        ) -> float:
    """Mean over the classes present in ``labels`` of the fraction of their samples whose
    label scores strictly highest (:func:`label_ranks` 1; a tie for the top counts as
    wrong).

    Args:
        scores: per-sample class scores, each ``[num_classes]``.
        labels: per-sample class index (an int or a 0-d/1-element array).
    """
    hit = label_ranks(scores, labels) == 1
    gt = np.asarray([int(np.asarray(label).reshape(-1)[0]) for label in labels])
    classes = np.unique(gt)
    return float(np.mean([np.mean(hit[gt == c]) for c in classes]))


def check_labels_in_range(scores: List[np.ndarray], labels: List[Union[int, np.ndarray]]
                          ) -> None:
    """Raise when a single label lies outside ``[0, num_classes)`` of the scores.

    Args:
        scores: per-sample class scores, each ``[num_classes]`` (dicts of them: skipped).
        labels: per-sample class index; multi-label (one-hot) labels are not checked.

    Raises:
        ValueError: naming how many samples, example labels and what to fix.
    """
    if not scores or isinstance(scores[0], dict):
        return
    num_classes = np.asarray(scores[0]).reshape(-1).shape[0]
    bad = []
    for i, label in enumerate(labels):
        arr = np.asarray(label).reshape(-1)
        if arr.size == 1 and not 0 <= int(arr[0]) < num_classes:
            bad.append((i, int(arr[0])))
    if bad:
        shown = ', '.join(f'sample {i}: {lab}' for i, lab in bad[:5])
        raise ValueError(
            f'RecognitionAccMetric: {len(bad)} of {len(labels)} samples have a label outside '
            f'0..{num_classes - 1}, the classes the model scores ({shown}'
            f'{", ..." if len(bad) > 5 else ""}); no accuracy is computed. A list line '
            'without a label reads as -1 in MMAction2\'s VideoDataset; a label >= '
            f'{num_classes} means the model\'s num_classes / classnames do not match the '
            'list (CheckedVideoDataset with num_classes names the lines)')


def check_scores_finite(scores: List[np.ndarray]) -> None:
    """Raise when a sample's class scores hold NaN or +-inf.

    Args:
        scores: per-sample class scores, each ``[num_classes]`` (dicts of them: skipped).

    Raises:
        ValueError: naming how many samples, the first few (index in the order the
            evaluator collected them) and the likely causes.
    """
    if not scores or isinstance(scores[0], dict):
        return
    bad = [i for i, s in enumerate(scores) if not np.isfinite(np.asarray(s, np.float64)).all()]
    if bad:
        shown = ', '.join(map(str, bad[:5])) + (', ...' if len(bad) > 5 else '')
        raise ValueError(
            f'RecognitionAccMetric: {len(bad)} of {len(scores)} samples have class scores '
            f'that are NaN or infinite (samples {shown}, in the order the evaluator '
            'collected them); no accuracy is computed, because NaN ranks differ between '
            'top-k and mean class accuracy. Usual causes: fp16 overflow (tools/test.py '
            '--amp fp16 on a model trained in bf16: use --amp bf16, or leave --amp out), '
            'a diverged checkpoint (NaN weights), or a video that decoded to an empty clip')


@METRICS.register_module()
class RecognitionAccMetric(AccMetric):
    """``AccMetric`` (same arguments, same keys: ``top1``, ``top5``, ``mean1``) whose
    ``mean1`` averages over the classes that have test samples, and which refuses labels
    outside the scored classes and non-finite scores (see the module docstring).

    The recognition configs use it as ``dict(type='RecognitionAccMetric')``.
    """

    def evaluate(self, size: int) -> dict:
        """mmengine's ``BaseMetric.evaluate`` (collect on the main process, compute there,
        broadcast), except that an error of the computation reaches every rank: the
        refusals below run on the main process only, and the other ranks, waiting for the
        metrics, would otherwise hang until the distributed timeout (a NaN score in the
        validation of a distributed training run). Raised there as ``RuntimeError`` with the
        main process's message."""
        from mmengine.evaluator.metric import _to_cpu
        results = collect_results(self.results, size, self.collect_device,
                                  **({'tmpdir': self.collect_dir}
                                     if self.collect_device == 'cpu' else {}))
        return compute_and_broadcast(
            self, lambda: self.compute_metrics(_to_cpu(results)), 'RecognitionAccMetric')

    def calculate(self, preds: List[np.ndarray], labels: List[Union[int, np.ndarray]]
                  ) -> Dict:
        check_scores_finite(preds)
        check_labels_in_range(preds, labels)
        self._warn_trivial_topk(preds)
        single = preds and not isinstance(preds[0], dict) and all(
            np.asarray(label).size == 1 for label in labels)
        ours = ('top_k_accuracy', 'mean_class_accuracy') if single else (
            'mean_class_accuracy', )
        # MMAction2 computes only the metrics this class does not replace (the mAPs, and
        # top-k of multi-label samples); the keys keep the order of `metrics`
        rest = [m for m in self.metrics if m not in ours]
        others = {}
        if rest:
            metrics, self.metrics = self.metrics, rest
            try:
                others = super().calculate(preds, labels)
            finally:
                self.metrics = metrics
        results = OrderedDict()
        for metric in self.metrics:
            if metric == 'top_k_accuracy' and single:   # (ties count against the label)
                topk = ((self.metric_options or {}).get('top_k_accuracy') or {}).get(
                    'topk', (1, 5))
                if not isinstance(topk, (int, tuple, list)):
                    raise TypeError(f'RecognitionAccMetric: topk must be an int or a tuple '
                                    f'of ints, got {type(topk).__name__}')
                topk = (topk, ) if isinstance(topk, int) else tuple(topk)
                for k, acc in zip(topk, top_k_accuracy(preds, labels, topk)):
                    results[f'top{k}'] = acc
            elif metric == 'mean_class_accuracy':
                results['mean1'] = mean_class_accuracy(preds, labels)
            else:
                results.update((key, value) for key, value in others.items()
                               if key not in results and (key == metric or (
                                   metric == 'top_k_accuracy' and key.startswith('top'))))
        return results

    def _warn_trivial_topk(self, preds: List[np.ndarray]) -> None:
        """Warn once when a top-k accuracy is 1.0 by construction (k >= classes scored)."""
        if getattr(self, '_warned_topk', False) or 'top_k_accuracy' not in self.metrics \
                or not preds or isinstance(preds[0], dict):
            return
        topk = ((self.metric_options or {}).get('top_k_accuracy') or {}).get('topk', (1, 5))
        topk = (topk, ) if isinstance(topk, int) else tuple(topk)
        num_classes = np.asarray(preds[0]).reshape(-1).shape[0]
        trivial = [k for k in topk if k >= num_classes]
        if not trivial:
            return
        self._warned_topk = True
        prefix = f'{self.prefix}/' if self.prefix else ''
        names = ', '.join(f'{prefix}top{k}' for k in trivial)
        print_log(f'RecognitionAccMetric: the model scores {num_classes} '
                  f'class{"es" if num_classes != 1 else ""}, so {names} '
                  f'{"is" if len(trivial) == 1 else "are"} 1.0 by construction (a top-k '
                  f'list with k >= {num_classes} holds every class) and says nothing about the '
                  'model. The keys are kept (configs and save_best name them)',
                  logger='current', level=logging.WARNING)
