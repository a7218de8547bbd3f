"""Metric of the synthetic motion benchmark: top-1 plus the time-direction scores.

``MotionPairMetric`` reports, in percent:

- ``top1``: ordinary top-1 accuracy over all classes;
- ``pair_acc``: the predicted class belongs to the right motion pair (direction ignored);
- ``direction_acc``: the true class outscores its time-reversed partner
  (:func:`stan_mm.datasets.synthetic.paired_direction_accuracy`; ties count half). A model
  that ignores frame order sits near 50 here whatever its ``pair_acc``;
- ``chance``: 100 / num_classes, for reference.
"""
from typing import List, Sequence

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmaction.registry import METRICS

from ..datasets.synthetic import paired_direction_accuracy


@METRICS.register_module()
class MotionPairMetric(BaseMetric):
    """Top-1, pair and direction accuracy for classes arranged in reversed pairs
    (labels ``2p`` and ``2p + 1``)."""

    default_prefix = 'motion'

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for s in data_samples:
            score = s['pred_score']
            label = s['gt_label']
            self.results.append(dict(
                score=(score.detach().cpu().float().numpy() if torch.is_tensor(score)
                       else np.asarray(score, dtype=np.float32)),
                label=int(label.item() if torch.is_tensor(label) else label)))

    def compute_metrics(self, results: List[dict]) -> dict:
        scores = np.stack([r['score'] for r in results])
        labels = np.array([r['label'] for r in results])
        pred = scores.argmax(1)
        return dict(
            top1=float(100 * np.mean(pred == labels)),
            pair_acc=float(100 * np.mean(pred // 2 == labels // 2)),
            direction_acc=float(100 * paired_direction_accuracy(scores, labels)),
            chance=float(100 / scores.shape[1]))
