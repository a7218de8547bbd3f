"""``RetrievalRecallMetric``: text<->video retrieval metric (t2v and v2t, DSL, QB-Norm).

Contract with the retrieval model (what ``predict`` / ``test_step`` must emit)
------------------------------------------------------------------------------
One data sample = one test VIDEO with ALL of its captions (the dataset is video-level at
test time: MSR-VTT 1k-A and LSMDC have one caption per video, DiDeMo one paragraph, MSVD
several captions). A caption-level dataset (one sample per caption, MMAction2's
``VideoTextDataset``) is evaluated the same way when the samples carry ``filename``: the
samples of one file are one gallery video (otherwise each copy would be a separate gallery
item with the same embedding, and the ties would count every caption's video as missed). For every sample the model returns an ``ActionDataSample`` (or a dict)
carrying:

===================  =================  ==================================================
field                shape / type       meaning
===================  =================  ==================================================
``video_feature``    ``[E]`` tensor     the video embedding
``text_feature``     ``[n, E]`` tensor  the embeddings of the video's ``n >= 1`` captions
                     (or ``[E]``)       (a 1-D tensor means one caption)
``sample_idx``       ``int``            the dataset index of the sample (metainfo)
``filename``         ``str`` (optional) the video file (metainfo): samples of one file
                                        are one gallery video
===================  =================  ==================================================

Both features may also sit under ``features`` (``data_sample.features.video_feature``, the
layout of MMAction2's own ``CLIPSimilarity`` / ``RetrievalMetric``). Features need not be
normalized: with ``normalize=True`` (default) they are L2-normalized here, so the similarity
is the cosine. ``sample_idx`` is set by mmengine's ``BaseDataset.get_data_info`` in every data
info; the packing transform must carry it into the data sample, e.g.
``dict(type='PackActionInputs', meta_keys=('sample_idx', ...))``. The rank of a caption or a
video does not depend on the order in which samples arrive: samples are sorted by
``sample_idx`` (then ``filename``); caption ``c`` of the video with the ``v``-th smallest
index is text row ``sum(n of earlier videos) + c`` and its ground truth is video ``v``.
A sample is identified by ``(sample_idx, filename)``: the datasets of a ``ConcatDataset``
(two test sets evaluated as one gallery) each number their samples from 0, and mmengine's
wrapper passes those numbers on, so with ``filename`` in the metainfo their samples are
told apart (without it they collide and the size check below fails, saying so).

Distributed evaluation
----------------------
mmengine's ``DefaultSampler(round_up=True)`` pads the index list with its first entries so
that every rank gets the same number of samples (7 videos on 2 ranks: rank 0 gets 0, 2, 4, 6
and rank 1 gets 1, 3, 5, 0), and ``collect_results`` drops the padding by POSITION (it
interleaves the ranks' lists and truncates to the dataset size). This metric does not rely on
that: it collects every processed sample from every rank (nothing truncated), then drops
duplicates by ``(sample_idx, filename)`` and checks that exactly ``size`` distinct samples
remain, so multi-process evaluation gives the numbers of one process whatever sampler or
batch layout produced the samples.

Options
-------
``dsl`` / ``dsl_temp``: dual softmax, ``temp`` divides the similarities (default 0.01, see
:mod:`stan_mm.evaluation.rescoring`). ``qb_norm``: ``None`` or
``dict(bank=..., beta=20, k=1)`` where ``bank`` is a ``.npy`` file (or array/tensor) of
``[Nb, E]`` TEXT embeddings of the bank queries (training captions) produced by the same
checkpoint as the test features (:func:`stan_mm.apis.features.check_bank_matches` checks
that from the bank folder's ``meta.json``); the querybank is their similarity to the test
videos.
With ``dsl=True`` too, DSL is applied first and QB-Norm works on the DSL scores; each
evaluation then logs a warning (:data:`~stan_mm.evaluation.rescoring.DSL_QB_NORM_WARNING`:
the combination is evaluated by neither paper and was measured to lower R@1).
``chunk_size``: rows of the similarity matrix materialized at a time. ``device``: where the
ranking runs (``'cpu'`` or ``'cuda'``).
"""
import logging
import math
import numbers
import os.path as osp
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.dist import all_gather_object, collect_results, get_world_size
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log

from mmaction.registry import METRICS

from stan_mm.errors import ConfigValueError

from .dist_eval import compute_and_broadcast
from .rescoring import (DEFAULT_CHUNK_SIZE, DEFAULT_DSL_TEMP, DEFAULT_QB_BETA, DEFAULT_QB_K,
                        DSL_QB_NORM_WARNING)
from .ranking import ranks_to_metrics, retrieval_ranks
from .similarity import EmbeddingSimilarity, load_npy

_QB_KEYS = {'bank', 'beta', 'k'}


def _field(data_sample: dict, key: str):
    if key in data_sample and data_sample[key] is not None:
        return data_sample[key]
    features = data_sample.get('features')
    if isinstance(features, dict) and features.get(key) is not None:
        return features[key]
    if features is not None and hasattr(features, key):
        return getattr(features, key)
    return None


def _as_feature(value, key: str, idx) -> torch.Tensor:
    if value is None:
        raise KeyError(f'RetrievalRecallMetric: data sample {idx} has no {key!r}; the '
                       f'retrieval model must set data_sample.{key} (see the contract in '
                       'stan_mm/evaluation/retrieval_metric.py)')
    tensor = torch.as_tensor(value).detach()
    if not tensor.is_floating_point():
        raise TypeError(f'RetrievalRecallMetric: {key} of sample {idx} must be a floating '
                        f'point tensor, got {tensor.dtype}')
    return own_storage(tensor.to('cpu', torch.float32))


def _first_five(items) -> str:
    return ', '.join(map(str, items[:5])) + (', ...' if len(items) > 5 else '')


def check_features_finite(samples: Dict[tuple, dict], order: Sequence[tuple]) -> None:
    """Raise when a sample's ``video_feature`` or ``text_feature`` holds NaN or inf,
    naming the samples (``sample_idx`` and file).

    A NaN feature used to surface from the ranking as "non-finite similarity at text 0,
    video j": the position in the sorted gallery, and a text that is fine."""
    bad = []
    for i in order:
        item = samples[i]
        parts = [key for key in ('video_feature', 'text_feature')
                 if not bool(torch.isfinite(item[key]).all())]
        if parts:
            name = f' {item["filename"]!r}' if item.get('filename') else ''
            bad.append(f'sample_idx {i[0]}{name}: {" and ".join(parts)}')
    if bad:
        raise ValueError(
            f'RetrievalRecallMetric: {len(bad)} of {len(order)} test samples have features '
            f'that are NaN or infinite ({"; ".join(bad[:5])}{"; ..." if len(bad) > 5 else ""}'
            '); no metric is computed: a NaN similarity has no rank. Usual causes: fp16 '
            'overflow (tools/test.py --amp fp16 on a model trained in bf16: use --amp bf16, '
            'or leave --amp out) or a diverged checkpoint (NaN weights)')


def own_storage(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` itself, or a compact copy when it is a view into a larger storage (a
    model's per-sample slice of its batch output): results are pickled to be gathered
    across processes, and pickling a view writes its whole storage (the batch)."""
    if tensor.untyped_storage().nbytes() > tensor.numel() * tensor.element_size():
        return tensor.clone()
    return tensor


@METRICS.register_module()
class RetrievalRecallMetric(BaseMetric):
    """Text->video and video->text R@1/5/10, MdR, MnR with optional DSL and QB-Norm.

    Args:
        dsl: apply dual softmax to both directions.
        dsl_temp: DSL temperature; divides the similarities inside the softmax.
        qb_norm: ``None`` or ``dict(bank='bank_text_features.npy', beta=20, k=1)``; with
            ``dsl`` too, every evaluation logs a warning (see the module docstring).
        chunk_size: similarity rows materialized at a time.
        normalize: L2-normalize video, text and bank features before the dot product.
        device: device of the ranking computation (``'cpu'`` or ``'cuda'``). The features
            are kept on the CPU as they arrive (``process``; they are pickled to be
            collected across ranks), so there is no "device of the embeddings" to follow:
            ``'cuda'`` moves them there for the ranking (memory: docs/retrieval.md).
        collect_device, collect_dir, prefix: as in :class:`mmengine.evaluator.BaseMetric`.

    Returns (``evaluate``): ``{'retrieval/t2v_R1': ..., ..., 'retrieval/v2t_MnR': ...}``
    (recalls in percent).
    """

    default_prefix = 'retrieval'

    def __init__(self, dsl: bool = False, dsl_temp: float = DEFAULT_DSL_TEMP,
                 qb_norm: Optional[dict] = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 normalize: bool = True, device: str = 'cpu', collect_device: str = 'cpu',
                 prefix: Optional[str] = None, collect_dir: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix,
                         collect_dir=collect_dir)
        self.dsl = bool(dsl)
        self.dsl_temp = float(dsl_temp)
        if not (self.dsl_temp > 0 and math.isfinite(self.dsl_temp)):
            raise ConfigValueError(f'RetrievalRecallMetric: dsl_temp must be a positive '
                                   f'finite number, got {dsl_temp}')
        if qb_norm is not None:
            if not isinstance(qb_norm, dict) or 'bank' not in qb_norm:
                raise ConfigValueError("RetrievalRecallMetric: qb_norm must be None or "
                                       "dict(bank='bank_text_features.npy', beta=20, k=1)")
            unknown = set(qb_norm) - _QB_KEYS
            if unknown:
                raise ConfigValueError(f'RetrievalRecallMetric: unknown qb_norm keys '
                                       f'{sorted(unknown)}; allowed: {sorted(_QB_KEYS)}')
            bank = qb_norm['bank']
            if isinstance(bank, str) and not osp.isfile(bank):
                raise FileNotFoundError(f'RetrievalRecallMetric: qb_norm bank file {bank!r} '
                                        'does not exist (expected a .npy array [Nb, E] of '
                                        'bank text embeddings)')
            if isinstance(bank, str):     # its header: a .npz or a pickle fails here, not
                try:                                    # after the whole test pass
                    header = load_npy(bank, 'RetrievalRecallMetric: qb_norm bank file',
                                      mmap_mode='r')
                except ValueError as exc:
                    raise ConfigValueError(str(exc)) from exc
                if header.ndim != 2:
                    raise ConfigValueError(
                        f'RetrievalRecallMetric: qb_norm bank file {bank!r} has shape '
                        f'{header.shape}; expected [num_bank_texts, embed_dim] text '
                        'embeddings')
                del header
            qb_norm = {**dict(beta=DEFAULT_QB_BETA, k=DEFAULT_QB_K), **qb_norm}
            # checked here, not after the whole test pass (querybank_stats checks them too)
            beta, k = qb_norm['beta'], qb_norm['k']
            if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or \
                    not (beta > 0 and math.isfinite(beta)):
                raise ConfigValueError(f'RetrievalRecallMetric: qb_norm beta must be a '
                                       f'positive finite number, got {beta!r}')
            if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
                raise ConfigValueError(f'RetrievalRecallMetric: qb_norm k must be an '
                                       f'integer >= 1, got {k!r}')
        self.qb_norm = qb_norm
        self.chunk_size = int(chunk_size)
        self.normalize = bool(normalize)
        self.device = device
        self._expected_size: Optional[int] = None

    # ------------------------------------------------------------------ collection
    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        """Keep ``sample_idx``, ``video_feature [E]`` and ``text_feature [n, E]`` per sample."""
        for data_sample in data_samples:
            if not isinstance(data_sample, dict):
                data_sample = data_sample.to_dict()
            idx = data_sample.get('sample_idx')
            if idx is None:
                raise KeyError(
                    "RetrievalRecallMetric: data sample has no 'sample_idx'; it identifies the "
                    'video across processes. mmengine datasets set it in every data info: '
                    "add it to the packing transform, e.g. PackActionInputs(meta_keys=("
                    "'sample_idx', ...))")
            idx = int(idx)
            video = _as_feature(_field(data_sample, 'video_feature'), 'video_feature', idx)
            text = _as_feature(_field(data_sample, 'text_feature'), 'text_feature', idx)
            if video.dim() == 2 and video.shape[0] == 1:
                video = video[0]
            if text.dim() == 1:
                text = text[None]
            if video.dim() != 1 or text.dim() != 2 or text.shape[0] < 1 or \
                    text.shape[1] != video.shape[0]:
                raise ValueError(
                    f'RetrievalRecallMetric: sample {idx} has video_feature of shape '
                    f'{tuple(video.shape)} and text_feature of shape {tuple(text.shape)}; '
                    'expected [E] and [n_captions >= 1, E] with the same E')
            filename = data_sample.get('filename')
            key = data_sample.get('text_key')        # (STANRetriever: one per caption)
            key = (key.detach().cpu().reshape(-1) if torch.is_tensor(key)
                   and key.numel() == text.shape[0] else None)
            self.results.append(dict(sample_idx=idx, video_feature=video, text_feature=text,
                                     filename=filename if isinstance(filename, str) else None,
                                     text_key=key))

    def evaluate(self, size: int) -> dict:
        """Collect every sample of every rank, de-duplicate by ``sample_idx``, evaluate on the
        main process and broadcast the metrics (or the error) to all ranks."""
        world_size = get_world_size()
        total = len(self.results)
        if world_size > 1:
            total = int(sum(all_gather_object(total)))
        if self.collect_device == 'cpu':
            results = collect_results(self.results, total, 'cpu', tmpdir=self.collect_dir)
        else:
            results = collect_results(self.results, total, self.collect_device)

        def compute():
            self._expected_size = int(size)
            try:
                return self.compute_metrics(results)
            finally:
                self._expected_size = None
        return compute_and_broadcast(self, compute, 'RetrievalRecallMetric')

    # ------------------------------------------------------------------ computation
    def gather_features(self, results: List[dict]):
        """De-duplicate by ``sample_idx`` and stack.

        Returns:
            ``(text_emb [Nt, E], video_emb [Nv, E], text_to_video [Nt], sample_idx [Nv])``.
        """
        # keyed by (sample_idx, filename): the datasets of a ConcatDataset each number
        # their samples from 0 (mmengine's wrapper passes the inner dataset's sample_idx
        # on), so only the file tells their samples apart; a sample seen twice (the
        # padding of DefaultSampler's round_up) has the same index and file
        unique: Dict[tuple, dict] = {}
        for item in results:
            unique.setdefault((int(item['sample_idx']), item.get('filename') or ''), item)
        if not unique:
            raise ValueError('RetrievalRecallMetric: no samples were processed')
        if self._expected_size is not None and len(unique) != self._expected_size:
            raise ValueError(
                f'RetrievalRecallMetric: {len(unique)} distinct samples (by sample_idx and '
                f'filename) were collected for a dataset of size {self._expected_size}; every '
                'test video must be evaluated exactly once (check the sampler and that '
                'sample_idx is the dataset index). A ConcatDataset gives each sample the '
                'sample_idx of its own dataset: put \'filename\' in PackActionInputs(meta_keys'
                '=...) so that the samples of its datasets are told apart')
        order = sorted(unique)
        check_features_finite(unique, order)
        dims = {unique[i]['video_feature'].shape[0] for i in order}
        if len(dims) != 1:
            raise ValueError(f'RetrievalRecallMetric: samples have different feature '
                             f'dims {sorted(dims)}')
        texts = [unique[i]['text_feature'] for i in order]
        text_emb = torch.cat(texts)
        counts = torch.tensor([t.shape[0] for t in texts])
        keys = [unique[i].get('text_key') for i in order]
        if all(k is not None for k in keys):
            # equal captions (equal tokens) get the first one's embedding: computed in
            # other batches they could differ in their last bits (4.5e-8 at batch size 1)
            # and no longer tie exactly, which moved ranks with the batch size
            first: Dict[int, int] = {}
            rows = [first.setdefault(k, r) for r, k in enumerate(torch.cat(keys).tolist())]
            if len(first) < len(rows):
                text_emb = text_emb[rows]
        # the video of each sample: samples of one video file (a caption-level dataset such
        # as MMAction2's VideoTextDataset gives one sample per caption) are one gallery video
        names = [unique[i].get('filename') for i in order]
        video_of = list(range(len(order)))
        known = [n for n in names if n]
        if known and len(known) < len(names) and len(set(known)) < len(known):
            print_log(f'RetrievalRecallMetric: {len(names) - len(known)} of {len(names)} test '
                      f'samples carry no filename while others share files: nothing is '
                      f'grouped, so copies of a video are separate gallery items. Put '
                      f"'filename' in the packing transform's meta_keys", logger='current',
                      level=logging.WARNING)
        keep = list(range(len(order)))       # the first sample of each gallery video
        if all(names) and len(set(names)) < len(names):
            first: Dict[str, int] = {}
            keep = []
            for k, name in enumerate(names):
                if name not in first:
                    first[name] = len(first)
                    keep.append(k)
                video_of[k] = first[name]
            print_log(f'RetrievalRecallMetric: {len(order)} test samples hold {len(first)} '
                      f'video files (a caption-level dataset, e.g. MMAction2\'s '
                      f'VideoTextDataset: one sample per caption); each file is ranked once as '
                      f'one gallery video, with all its captions (its first sample\'s video '
                      f'embedding). stan-mm\'s RetrievalVideoTextDataset gives one sample per '
                      f'video and embeds each video once', logger='current',
                      level=logging.WARNING)
        video_emb = torch.stack([unique[order[k]]['video_feature'] for k in keep])
        text_to_video = torch.repeat_interleave(torch.tensor(video_of), counts)
        return text_emb, video_emb, text_to_video, torch.tensor([order[k][0] for k in keep])

    def _load_bank(self, dim: int) -> torch.Tensor:
        bank = self.qb_norm['bank']
        name = bank if isinstance(bank, str) else 'qb_norm bank'
        if isinstance(bank, str):
            bank = load_npy(bank, 'RetrievalRecallMetric: qb_norm bank file')
        if isinstance(bank, torch.Tensor):
            bank = bank.detach().float().cpu()
        else:
            bank = torch.from_numpy(np.array(bank, dtype=np.float32))
        if bank.dim() != 2 or bank.shape[1] != dim:
            raise ValueError(f'RetrievalRecallMetric: {name} has shape {tuple(bank.shape)}; '
                             f'expected [num_bank_texts, {dim}] text embeddings of the same '
                             'model as the test features')
        bad = (~torch.isfinite(bank).all(dim=1)).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f'RetrievalRecallMetric: {len(bad)} of {bank.shape[0]} rows of '
                             f'{name} hold NaN or inf (rows {_first_five(bad)}): made by a '
                             'diverged checkpoint or under fp16 overflow? Extract the bank '
                             'again')
        return bank

    def compute_metrics(self, results: list) -> Dict[str, float]:
        if self.dsl and self.qb_norm is not None:    # once per evaluation (main process)
            print_log(f'RetrievalRecallMetric: {DSL_QB_NORM_WARNING}', logger='current',
                      level=logging.WARNING)
        text_emb, video_emb, text_to_video, _ = self.gather_features(results)
        bank = self._load_bank(video_emb.shape[1]) if self.qb_norm is not None else None
        if self.normalize:
            text_emb = F.normalize(text_emb, dim=-1)
            video_emb = F.normalize(video_emb, dim=-1)
            bank = F.normalize(bank, dim=-1) if bank is not None else None
        text_emb, video_emb = text_emb.to(self.device), video_emb.to(self.device)
        source = EmbeddingSimilarity(text_emb, video_emb, name='test features')
        bank_source = None
        if bank is not None:
            bank_source = EmbeddingSimilarity(bank.to(self.device), video_emb,
                                              name='querybank features')
        ranks = retrieval_ranks(
            source, text_to_video, dsl=self.dsl, dsl_temp=self.dsl_temp, qb_bank=bank_source,
            qb_beta=self.qb_norm['beta'] if self.qb_norm else DEFAULT_QB_BETA,
            qb_k=self.qb_norm['k'] if self.qb_norm else DEFAULT_QB_K,
            chunk_size=self.chunk_size)
        return ranks_to_metrics(*ranks)
