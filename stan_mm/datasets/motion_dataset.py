"""The synthetic motion benchmark as MMAction2 datasets that generate their data on first use.

``SyntheticMotionDataset`` is MMAction2's ``VideoDataset`` reading ``<data_root>/<split>.txt``
after making sure :func:`stan_mm.datasets.synthetic.generate_motion_dataset` has written the
benchmark under ``data_root`` with the parameters in ``generate`` (idempotent and safe when
several ranks call it at once). So ``python tools/train.py configs/quickstart/...`` works on a
fresh checkout with no download and no preparation step.
"""
import os.path as osp
from typing import List, Optional

from mmaction.datasets import VideoDataset
from mmaction.registry import DATASETS

from stan_mm.errors import ConfigValueError

from .pipeline_context import PipelineContextMixin
from .retrieval import RetrievalVideoTextDataset
from .synthetic import generate_motion_dataset, load_video_records

SPLITS = ('train', 'val', 'test')


def _ensure_generated(data_root: str, generate: Optional[dict]) -> dict:
    return generate_motion_dataset(data_root, **(generate or {}))


def _twin_groups(dataset) -> List[List[int]]:
    """``dataset``'s indices grouped by trajectory (the benchmark's ``group`` field: a
    forward video and its time-reversed twin) and by the number of earlier samples of the
    same video: the k-th sample of a video goes with the k-th sample of its twin (a
    retrieval training set has one sample per caption, the twins' k-th captions differing
    only in the motion phrase). First-appearance order."""
    group_of = {rec['filename']: rec['group'] for rec in load_video_records(dataset.motion_root)
                if rec['split'] == dataset.split}
    groups, order, seen = {}, [], {}
    for index in range(len(dataset)):
        name = osp.basename(dataset.get_data_info(index)['filename'])
        if name not in group_of:
            raise KeyError(f'{type(dataset).__name__}: {name} (index {index}) is not a '
                           f'{dataset.split} video of {dataset.motion_root}/annotations/'
                           'videos.json; regenerate the benchmark (delete the folder)')
        key = (group_of[name], seen.get(name, 0))
        seen[name] = seen.get(name, 0) + 1
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(index)
    return [groups[k] for k in order]


@DATASETS.register_module()
class SyntheticMotionDataset(PipelineContextMixin, VideoDataset):
    """Recognition on the synthetic motion benchmark (time-reversed class pairs).

    Args:
        data_root (str): folder of the benchmark; generated there when missing.
        split (str): 'train', 'val' or 'test'.
        pipeline (list): MMAction2 transforms (decord based).
        generate (dict, optional): keyword arguments of ``generate_motion_dataset``
            (``num_train``, ``num_frames``, ``pairs``, ``seed`` ...). Changing them for an
            existing ``data_root`` raises an error that names the differing fields.
        **kwargs: passed to ``VideoDataset`` (``test_mode`` ...).
    """

    def __init__(self, data_root: str, split: str, pipeline, generate: Optional[dict] = None,
                 **kwargs):
        if split not in SPLITS:
            raise ConfigValueError(f'SyntheticMotionDataset: split={split!r}; expected one '
                                   f'of {SPLITS}')
        meta = _ensure_generated(data_root, generate)
        if meta['counts'][split]['videos'] == 0:
            raise ConfigValueError(f'SyntheticMotionDataset: the {split} split of {data_root} '
                                   f'has no videos (generated with num_{split}=0); generate it '
                                   f'with num_{split} >= 1 or leave this split out of the '
                                   f'config')
        self.motion_meta = meta
        self.motion_root = data_root
        self.split = split
        kwargs.setdefault('data_prefix', dict(video=osp.join(data_root, 'videos')))
        super().__init__(ann_file=osp.join(data_root, f'{split}.txt'), pipeline=pipeline,
                         num_classes=len(meta['classes']), **kwargs)
        self._metainfo = dict(self._metainfo, classes=tuple(meta['classes']))

    def twin_groups(self):
        """Indices of this dataset grouped by trajectory: ``[[i_forward, i_backward], ...]``
        (one-member groups where a twin is missing), in first-appearance order. Used by
        :class:`~stan_mm.datasets.samplers.TwinGroupSampler`."""
        return _twin_groups(self)


@DATASETS.register_module()
class SyntheticMotionTextDataset(RetrievalVideoTextDataset):
    """Video-text retrieval on the synthetic motion benchmark, generated on first use like
    :class:`SyntheticMotionDataset`. Reads ``retrieval/<split>.json`` (MMAction2
    ``VideoTextDataset`` JSON) through :class:`RetrievalVideoTextDataset`, so training gives
    (video, caption) samples and ``test_mode=True`` one sample per video with all its
    captions, as ``RetrievalRecallMetric`` expects."""

    def __init__(self, data_root: str, split: str, pipeline, generate: Optional[dict] = None,
                 **kwargs):
        if split not in SPLITS:
            raise ConfigValueError(
                f'SyntheticMotionTextDataset: split={split!r}; expected one of {SPLITS}')
        self.motion_meta = _ensure_generated(data_root, generate)
        kwargs.setdefault('data_prefix', dict(video=osp.join(data_root, 'videos')))
        self.motion_root = data_root
        self.split = split
        super().__init__(ann_file=osp.join(data_root, 'retrieval', f'{split}.json'),
                         pipeline=pipeline, ann_format='json', **kwargs)
        # read by MotionTwinRetrievalMetric (the evaluator's dataset_meta)
        self._metainfo = dict(self._metainfo, motion_root=data_root)

    def twin_groups(self):
        """Indices grouped by trajectory for
        :class:`~stan_mm.datasets.samplers.TwinGroupSampler`: training (one sample per
        caption) pairs the k-th caption of a video with the k-th caption of its
        time-reversed twin, so with an even batch size each batch holds twin pairs, each
        the other's hard negative in the contrastive loss; test mode pairs the videos."""
        return _twin_groups(self)
