"""Metric of the synthetic motion benchmark: top-1 plus the time-direction scores.

``MotionPairMetric`` reports, in percent:

- ``top1``: ordinary top-1 accuracy over all classes (a tie for the top counts as wrong,
  as in ``acc/top1``);
- ``pair_acc``: the predicted class belongs to the right motion pair (direction ignored;
  the pair's best score must beat every other class's);
- ``direction_acc``: the true class outscores its time-reversed partner
  (:func:`stan_mm.datasets.synthetic.paired_direction_accuracy`; ties count half). A model
  that ignores frame order sits near 50 here whatever its ``pair_acc``;
- ``chance``: 100 / num_classes, for reference.
"""
import logging
import os.path as osp
from typing import List, Optional, Sequence

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from mmaction.registry import METRICS

from ..datasets.synthetic import load_video_records, paired_direction_accuracy
from .retrieval_metric import own_storage


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
        from .acc_metric import label_ranks
        scores = np.stack([r['score'] for r in results])
        labels = np.array([r['label'] for r in results])
        # ties never help (as acc/top1): the label, or its pair, must score strictly
        # highest; argmax gave a tie to the lowest class index
        rows = np.arange(len(labels))
        pair = np.stack([scores[rows, labels - labels % 2],
                         scores[rows, labels - labels % 2 + 1]], 1).max(1)
        others = scores.copy()
        others[rows, labels - labels % 2] = -np.inf
        others[rows, labels - labels % 2 + 1] = -np.inf
        return dict(
            top1=float(100 * np.mean(label_ranks(list(scores), list(labels)) == 1)),
            pair_acc=float(100 * np.mean(pair > others.max(1))),
            direction_acc=float(100 * paired_direction_accuracy(scores, labels)),
            chance=float(100 / scores.shape[1]))


def twin_caption_accuracy(text_features, text_video, video_features, twin_of) -> float:
    """How often a caption is closer (cosine) to its own video than to that video's
    time-reversed twin; ties count half.

    Args:
        text_features: ``[N_t, E]`` caption embeddings.
        text_video: ``[N_t]`` index of each caption's video (rows of ``video_features``).
        video_features: ``[N_v, E]`` video embeddings.
        twin_of: ``[N_v]`` index of each video's twin, -1 where it has none (its captions
            are left out).

    Returns:
        a fraction in [0, 1] over the captions whose video has a twin.
    """
    t = np.asarray(text_features, dtype=np.float64)
    v = np.asarray(video_features, dtype=np.float64)
    own = np.asarray(text_video)
    twin_of = np.asarray(twin_of)
    if t.ndim != 2 or v.ndim != 2 or t.shape[1] != v.shape[1] or own.shape != t.shape[:1] \
            or twin_of.shape != v.shape[:1]:
        raise ValueError(f'twin_caption_accuracy: expected text [N_t, E], text_video [N_t], '
                         f'video [N_v, E], twin_of [N_v]; got {t.shape}, {own.shape}, '
                         f'{v.shape}, {twin_of.shape}')
    t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    keep = twin_of[own] >= 0
    if not keep.any():
        raise ValueError('twin_caption_accuracy: no caption belongs to a video with a twin')
    t, own = t[keep], own[keep]
    s_own = np.einsum('ne,ne->n', t, v[own])
    s_twin = np.einsum('ne,ne->n', t, v[twin_of[own]])
    return float(np.mean((s_own > s_twin) + 0.5 * (s_own == s_twin)))


@METRICS.register_module()
class MotionTwinRetrievalMetric(BaseMetric):
    """Time direction in retrieval on the synthetic motion benchmark: ``twin_t2v_acc``, the
    percentage of test captions closer to their own video than to its time-reversed twin
    (the twins' captions differ only in the motion phrase; a model blind to frame order
    embeds twins alike and sits near 50 when it is shown the same frames of both twins,
    e.g. with ``SymmetricSample``). Reads ``filename``, ``video_feature [E]`` and
    ``text_feature [n, E]`` of each test sample (the retrieval model's outputs, as for
    ``RetrievalRecallMetric``; put it next to that metric in ``test_evaluator``).

    A split in which no evaluated video has its twin (a benchmark generated with
    ``num_test=1``, a subset holding one video of each pair) has no ``twin_t2v_acc``: the
    key is left out with a warning (once per metric), and the other metrics of the
    evaluator (``retrieval/*``) are reported as usual. Left out rather than NaN, so that
    a ``save_best`` on it fails loudly instead of comparing NaN (the configs' ``save_best``
    is ``retrieval/t2v_R1``).

    Args:
        data_root (str, optional): the benchmark folder (its ``annotations/videos.json``
            pairs the twins). Default: the evaluated dataset's, which
            :class:`~stan_mm.datasets.motion_dataset.SyntheticMotionTextDataset` puts in
            its metainfo.
    """

    default_prefix = 'motion'

    def __init__(self, data_root: Optional[str] = None, **kwargs):
        super().__init__(**kwargs)
        self.data_root = data_root
        self._warned_no_twins = False

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for s in data_samples:
            if not isinstance(s, dict):
                s = s.to_dict()
            missing = [k for k in ('filename', 'video_feature', 'text_feature') if k not in s]
            if missing:
                raise KeyError(f'MotionTwinRetrievalMetric: data sample lacks {missing}; it '
                               "needs the retrieval model's outputs and 'filename' in "
                               'PackActionInputs(meta_keys=...)')
            text = torch.as_tensor(s['text_feature']).detach().cpu().float()
            video = torch.as_tensor(s['video_feature']).detach().cpu().float().reshape(-1)
            self.results.append(dict(
                name=osp.basename(str(s['filename'])), video=own_storage(video),
                text=own_storage(text.reshape(-1, text.shape[-1]))))

    def compute_metrics(self, results: List[dict]) -> dict:
        by_name = {r['name']: r for r in results}     # padded duplicates collapse
        root = self.data_root or (self.dataset_meta or {}).get('motion_root')
        if root is None:
            raise ValueError('MotionTwinRetrievalMetric: no data_root given and the dataset '
                             "metainfo has no 'motion_root' (evaluate a "
                             'SyntheticMotionTextDataset, or pass data_root=)')
        group_of = {rec['filename']: rec['group'] for rec in load_video_records(root)}
        unknown = [name for name in by_name if name not in group_of]
        if unknown:
            raise KeyError(f'MotionTwinRetrievalMetric: videos {unknown[:5]} are not in '
                           f'{root}/annotations/videos.json (wrong data_root?)')
        names = sorted(by_name)
        members = {}
        for i, name in enumerate(names):
            members.setdefault(group_of[name], []).append(i)
        twin_of = np.full(len(names), -1)
        for group in members.values():
            if len(group) == 2:
                twin_of[group[0]], twin_of[group[1]] = group[1], group[0]
        if not (twin_of >= 0).any():
            if not self._warned_no_twins:
                self._warned_no_twins = True
                print_log(f'MotionTwinRetrievalMetric: none of the {len(names)} evaluated '
                          'videos has its time-reversed twin among them (a benchmark split '
                          'of one video, e.g. generated with num_test=1, or a subset that '
                          f'holds one video of each pair), so {self.prefix}/twin_t2v_acc is '
                          'not reported; the other metrics are unaffected',
                          logger='current', level=logging.WARNING)
            return {}
        text = torch.cat([by_name[name]['text'] for name in names]).numpy()
        text_video = np.concatenate([np.full(len(by_name[name]['text']), i)
                                     for i, name in enumerate(names)])
        video = torch.stack([by_name[name]['video'] for name in names]).numpy()
        return dict(twin_t2v_acc=float(100 * twin_caption_accuracy(text, text_video, video,
                                                                   twin_of)))
