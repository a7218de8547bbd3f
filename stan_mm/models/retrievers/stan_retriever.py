"""``STANRetriever``: video-text retrieval with a CLIPSTAN video tower and a CLIP text tower."""
import contextlib
import hashlib
import inspect
import logging
from typing import Dict, Iterator, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseModel
from torch import nn

from mmaction.registry import MODELS

from stan_mm.errors import ConfigValueError

from ..backbones import CLIPSTAN
from ..clip import CLIPTextEncoder, build_clip, require_clip_bpe_vocab
from ..losses import SymmetricInfoNCELoss, learned_logit_scale

Tokens = Union[torch.Tensor, List[torch.Tensor]]

#: metainfo keys that identify a sample's video, by preference. ``filename`` (hashed) first:
#: it also tells apart the videos of concatenated datasets, whose ``video_idx`` (the
#: per-dataset index of :class:`~stan_mm.datasets.retrieval.RetrievalVideoTextDataset`)
#: restarts at 0 in each; ``video_id`` is hashed too
VIDEO_ID_KEYS = ('filename', 'video_idx', 'video_id')
_BACKBONE_OWNED = ('arch', 'pretrained', 'precision', 'quick_gelu', 'clip_model')
_TEXT_OPTIONS = ('frozen', 'with_cp')


@contextlib.contextmanager
def _reuse_clip_visual(clip: nn.Module) -> Iterator[None]:
    """While active, ``CLIPSTAN.__init__`` takes ``clip.visual`` instead of building a CLIP.

    Temporary bridge until ``CLIPSTAN`` accepts an already built CLIP (``clip_model=``);
    it replaces ``clip_stan._build_visual_tower``, the one place CLIPSTAN builds its tower."""
    from ..backbones import clip_stan
    original = clip_stan._build_visual_tower
    clip_stan._build_visual_tower = lambda *args, **kwargs: clip.visual
    try:
        yield
    finally:
        clip_stan._build_visual_tower = original


def build_video_tower(cfg: dict, clip: nn.Module, pretrained: Optional[str] = None
                      ) -> CLIPSTAN:
    """A ``CLIPSTAN`` (or subclass) from ``cfg`` whose CLIP part IS ``clip.visual`` (shared
    module, weights already loaded from ``pretrained``; the branch's spatial blocks are
    copied from it)."""
    cfg = dict(cfg)
    if cfg.get('input_layout', 'auto') not in ('NTCHW', 'auto'):
        raise ConfigValueError(
            f"STANRetriever: backbone.input_layout={cfg['input_layout']!r}; the retrieval "
            f"data preprocessor gives [N, T, C, H, W] clips: use 'NTCHW' (with 3 frames "
            f"'NCTHW' would silently swap time and colour)")
    if cfg.get('pos_embed_init_std') is not None and pretrained is not None:
        raise ConfigValueError(
            "STANRetriever: backbone.pos_embed_init_std re-draws CLIP's positional embedding "
            f'and would overwrite the pretrained one loaded from {pretrained!r}; it is meant '
            'for training from random weights (pretrained=None). Remove one of the two.')
    cls = MODELS.get(cfg.pop('type', 'CLIPSTAN'))
    if cls is None or not (isinstance(cls, type) and issubclass(cls, CLIPSTAN)):
        raise TypeError(f'STANRetriever: backbone type must be CLIPSTAN (or a subclass), got '
                        f'{cls!r}')
    given = [k for k in _BACKBONE_OWNED if cfg.get(k) is not None]
    if given:
        raise ConfigValueError(f'STANRetriever: backbone={given} must not be set in the backbone '
                               'config: both towers come from ONE CLIP built by STANRetriever('
                               'arch=..., pretrained=..., precision=..., quick_gelu=...)')
    for k in _BACKBONE_OWNED:
        cfg.pop(k, None)
    params = inspect.signature(cls.__init__).parameters
    unknown = [k for k in cfg if k not in params or k == 'self']
    if unknown and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        # (a misspelled key would end in Python's TypeError and a traceback)
        import difflib
        valid = [p for p in params if p not in ('self', 'init_cfg') + _BACKBONE_OWNED]
        close = difflib.get_close_matches(unknown[0], valid, n=1, cutoff=0.6)
        raise ConfigValueError(
            f'STANRetriever: the config sets model.backbone.{unknown[0]}, which '
            f'{cls.__name__} does not take' + (f'; did you mean {close[0]!r}?' if close else '.')
            + f' The backbone takes: {", ".join(valid)} (arch, pretrained, precision and '
            f'quick_gelu are STANRetriever arguments)')
    if 'clip_model' in params:
        tower = cls(arch=None, pretrained=None, clip_model=clip, **cfg)
    else:
        with _reuse_clip_visual(clip):
            tower = cls(arch=None, pretrained=None, **cfg)
    if tower.visual is not clip.visual:
        raise RuntimeError('STANRetriever: the CLIPSTAN backbone did not take the shared CLIP '
                           'image tower (CLIPSTAN construction changed?)')
    return tower


def build_text_tower(cfg: Optional[dict], clip: nn.Module) -> CLIPTextEncoder:
    """``CLIPTextEncoder.from_clip(clip, frozen=..., with_cp=...)`` from ``cfg``."""
    cfg = dict(cfg or {})
    typ = cfg.pop('type', 'CLIPTextEncoder')
    if typ not in ('CLIPTextEncoder', CLIPTextEncoder):
        raise TypeError(f'STANRetriever: text_backbone type must be CLIPTextEncoder, got {typ!r}')
    unknown = set(cfg) - set(_TEXT_OPTIONS)
    if unknown:
        raise ConfigValueError(f'STANRetriever: text_backbone keys {sorted(unknown)} are not '
                               f'supported; allowed: {list(_TEXT_OPTIONS)} (arch/pretrained are '
                               'STANRetriever arguments: both towers share one CLIP)')
    return CLIPTextEncoder.from_clip(clip, **cfg)


def _stable_hash(value) -> int:
    digest = hashlib.blake2b(str(value).encode('utf-8'), digest_size=8).digest()
    return int.from_bytes(digest, 'little', signed=True)


def caption_keys(tokens: torch.Tensor) -> torch.Tensor:
    """``[n, L]`` caption tokens -> ``[n]`` int64 keys, equal for equal token rows (an
    8-byte BLAKE2b digest of each row's int64 tokens: the same in every process, unlike
    Python's ``hash``). The retrieval metric gives captions with one key one embedding:
    computed in other batches, equal captions could differ in their last bits and no
    longer tie exactly."""
    import hashlib
    rows = tokens.detach().to('cpu', torch.int64).numpy()
    return torch.tensor([int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8)
                                        .digest(), 'little', signed=True) for row in rows],
                        dtype=torch.int64)


@MODELS.register_module()
class STANRetriever(BaseModel):
    """Text-video retrieval: CLIPSTAN video tower + CLIP text tower + symmetric InfoNCE.

    ONE CLIP (:func:`stan_mm.models.clip.build_clip` with ``arch`` / ``pretrained``) feeds
    both towers: ``backbone`` (:class:`CLIPSTAN`) takes its image tower (``backbone.visual``,
    the branch's spatial blocks copied from its last blocks) and ``text_backbone``
    (:class:`CLIPTextEncoder`) its text modules. State dict keys: ``backbone.visual.*``,
    ``backbone.branch.*``, ``text_backbone.<open_clip text keys>`` (``token_embedding``,
    ``positional_embedding``, ``transformer.*``, ``ln_final``, ``text_projection``), plus
    ``logit_scale`` only when ``learnable_temperature``: exactly what
    :mod:`stan_mm.utils.stan_convert` reads and writes, so a converted public STAN
    checkpoint loads with ``load_from``.

    Inputs (from :class:`RetrievalDataPreprocessor`): ``dict(imgs=[N, T, C, H, W],
    text=...)``.

    - ``mode='loss'``: ``text`` ``[N, L]`` (caption i belongs to video i) ->
      ``dict(loss=..., nce_t2v=..., nce_v2t=...)``:
      :class:`~stan_mm.models.losses.SymmetricInfoNCELoss` over the features of all ranks
      (gathered with gradient). Video identities for the duplicate-video mask are read
      from the data samples' metainfo (first of :data:`VIDEO_ID_KEYS` present). A batch
      with fewer than 2 distinct videos gives a loss of exactly 0 (warned once by the
      loss; the retrieval configs set ``drop_last=True`` on their train dataloaders).
      ``nce_t2v`` / ``nce_v2t`` (text->video and video->text InfoNCE, times the loss
      weight; summed they give ``loss``) are detached and log only: mmengine's
      ``parse_losses`` optimizes the sum of the entries whose key contains ``'loss'``,
      i.e. ``loss`` alone. Like ``loss`` they are global-batch values, equal on every rank
      (computed from the gathered similarities: no collective of their own). Plus
      ``logit_scale`` (detached) with ``learnable_temperature``.
    - ``mode='predict'``: ``text`` ``[N, L]`` or a list of N ``[n_i, L]`` -> the data
      samples, each with ``video_feature`` ``[E]`` and ``text_feature`` ``[n_i, E]``
      (L2-normalized, float32), the contract of
      :class:`~stan_mm.evaluation.RetrievalRecallMetric`. Without ``text`` only
      ``video_feature`` is set.
    - ``mode='tensor'``: ``dict(video=[N, E], text=[M, E] or absent)`` (not normalized).

    Logit scale: fixed ``1 / temperature`` (public reproduction), or with
    ``learnable_temperature=True`` CLIP's learnable ``logit_scale`` (log scale, initialized
    from the checkpoint), kept at most ``log(max_logit_scale)`` as CLIP's training does: the
    parameter itself is clamped (in place, outside autograd) each time the scale is read,
    so the gradient flows at the bound. (Clamping ``exp(logit_scale)`` in the graph would
    give a zero gradient from the first step: OpenAI's checkpoints store 4.6055 > ln 100.)

    Learning rates: branch parameters are named ``backbone.branch.*``; the paper's 10x
    learning rate on them is ``optim_wrapper.paramwise_cfg.custom_keys =
    {'backbone.branch': dict(lr_mult=10.0)}`` (with ``constructor=
    'STANOptimWrapperConstructor'`` its norms and biases get no decay either). A learnable
    ``logit_scale`` is a 0-d parameter, neither norm nor bias: add ``'logit_scale':
    dict(decay_mult=0.0)``.

    Args:
        backbone: CLIPSTAN config without ``arch`` / ``pretrained`` (e.g. ``dict(
            type='CLIPSTAN', depth=4, temporal_module='attn', input_layout='NTCHW')``).
        arch: CLIP architecture (name, OpenAI spelling or clip_cfg dict) or None to infer it
            from ``pretrained``.
        pretrained: local CLIP weights (OpenAI / open_clip / HuggingFace layout) or None
            (random init).
        text_backbone: ``dict(frozen=False, with_cp=False)``; ``frozen=True`` keeps the text
            tower fixed (no gradients, eval mode).
        loss: loss config (default ``SymmetricInfoNCELoss``).
        temperature: tau of the fixed logit scale 1/tau.
        learnable_temperature: learn CLIP's ``logit_scale`` instead.
        max_logit_scale: upper bound of ``exp(logit_scale)`` (learnable only).
        text_chunk_size: captions encoded at a time in predict mode (None: all).
        precision, quick_gelu: passed to ``build_clip``.
        data_preprocessor: default ``RetrievalDataPreprocessor`` (CLIP mean/std).
        init_cfg: mmengine init config.
    """

    def __init__(self,
                 backbone: dict,
                 arch: Union[str, dict, None] = None,
                 pretrained: Optional[str] = None,
                 text_backbone: Optional[dict] = None,
                 loss: dict = dict(type='SymmetricInfoNCELoss'),
                 temperature: float = 0.01,
                 learnable_temperature: bool = False,
                 max_logit_scale: float = 100.0,
                 text_chunk_size: Optional[int] = None,
                 precision: str = 'fp32',
                 quick_gelu: Optional[bool] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        if data_preprocessor is None:
            data_preprocessor = dict(type='RetrievalDataPreprocessor')
        if isinstance(data_preprocessor, dict):
            data_preprocessor = MODELS.build(data_preprocessor)
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if not learnable_temperature and not (isinstance(temperature, (int, float))
                                              and temperature > 0):
            raise ConfigValueError(f'STANRetriever: temperature must be a positive number, got '
                                   f'{temperature!r}')
        if learnable_temperature and not (isinstance(max_logit_scale, (int, float))
                                          and max_logit_scale > 0):
            raise ConfigValueError(f'STANRetriever: max_logit_scale must be a positive number, got '
                                   f'{max_logit_scale!r}')
        if text_chunk_size is not None and text_chunk_size < 1:
            raise ConfigValueError(f'STANRetriever: text_chunk_size must be >= 1 or None, got '
                                   f'{text_chunk_size}')

        clip = build_clip(arch, pretrained, precision=precision, quick_gelu=quick_gelu,
                          needed_by='STANRetriever (its text tower encodes the captions)')
        require_clip_bpe_vocab(clip, pretrained, 'STANRetriever')
        self.backbone = build_video_tower(backbone, clip, pretrained)
        self.text_backbone = build_text_tower(text_backbone, clip)
        self.learnable_temperature = bool(learnable_temperature)
        self.temperature = float(temperature)
        self.max_logit_scale = float(max_logit_scale)
        if self.learnable_temperature:
            self.logit_scale = nn.Parameter(clip.logit_scale.detach().float().clone())
        self.loss_module = MODELS.build(loss)
        # a loss that also hands out log-only terms (SymmetricInfoNCELoss: nce_t2v, nce_v2t)
        self._loss_has_terms = 'return_terms' in inspect.signature(
            self.loss_module.forward).parameters
        self.text_chunk_size = text_chunk_size
        self._warned_no_ids = False
        del clip  # its modules live on in the two towers; logit_scale was copied if needed

    # ------------------------------------------------------------------ features
    @property
    def embed_dim(self) -> int:
        return self.backbone.embed_dim

    def get_logit_scale(self) -> torch.Tensor:
        """``exp(logit_scale)`` (learnable; the parameter is first clamped in place to at
        most ``log(max_logit_scale)``), else 1/tau."""
        if self.learnable_temperature:
            return learned_logit_scale(self.logit_scale, self.max_logit_scale)
        return torch.tensor(1.0 / self.temperature)

    def encode_video(self, imgs: torch.Tensor) -> torch.Tensor:
        """``[N, T, C, H, W]`` -> video embeddings ``[N, E]``."""
        return self.backbone(imgs)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[M, L]`` token ids -> text embeddings ``[M, E]`` (chunked by
        ``text_chunk_size`` when set)."""
        size = self.text_chunk_size or max(tokens.shape[0], 1)
        if tokens.shape[0] <= size:
            return self.text_backbone(tokens)
        return torch.cat([self.text_backbone(c) for c in tokens.split(size)])

    @staticmethod
    def _split_inputs(inputs):
        if isinstance(inputs, torch.Tensor):
            return inputs, None
        if not isinstance(inputs, dict) or 'imgs' not in inputs:
            raise KeyError('STANRetriever: inputs must be dict(imgs=[N, T, C, H, W], '
                           'text=...) (RetrievalDataPreprocessor) or a video tensor')
        return inputs['imgs'], inputs.get('text')

    @staticmethod
    def _text_per_sample(text: Tokens, n: int) -> List[torch.Tensor]:
        """``[N, L]`` or a list of ``[n_i, L]`` / ``[L]`` -> list of N ``[n_i, L]``."""
        if isinstance(text, torch.Tensor):
            if text.dim() != 2:
                raise ValueError(f'STANRetriever: text must be [N, L] or a list of [n_i, L], '
                                 f'got a tensor of shape {tuple(text.shape)}')
            items = list(text[:, None])
        else:
            items = [t[None] if t.dim() == 1 else t for t in text]
        if len(items) != n:
            raise ValueError(f'STANRetriever: {len(items)} caption groups for {n} videos')
        for i, t in enumerate(items):
            if t.dim() != 2 or t.shape[0] < 1:
                raise ValueError(f'STANRetriever: captions of sample {i} must be [n >= 1, L], '
                                 f'got {tuple(t.shape)}')
        return items

    def extract_feat(self, inputs) -> Dict[str, torch.Tensor]:
        imgs, text = self._split_inputs(inputs)
        out = dict(video=self.encode_video(imgs))
        if text is not None:
            groups = self._text_per_sample(text, imgs.shape[0])
            out['text'] = self.encode_text(torch.cat(groups))
        return out

    # ------------------------------------------------------------------ modes
    def forward(self, inputs, data_samples: Optional[list] = None, mode: str = 'tensor'):
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        if mode == 'tensor':
            return self.extract_feat(inputs)
        raise RuntimeError(f'STANRetriever: invalid mode {mode!r}; expected loss, predict '
                           'or tensor')

    def video_ids(self, data_samples: Optional[Sequence], device) -> Optional[torch.Tensor]:
        """``[N]`` int64 video identities from the samples' metainfo (see
        :data:`VIDEO_ID_KEYS`), or None (then duplicates are not masked; warned once)."""
        if data_samples:
            for key in VIDEO_ID_KEYS:
                values = [ds.metainfo.get(key) if hasattr(ds, 'metainfo') else ds.get(key)
                          for ds in data_samples]
                if all(v is not None for v in values):
                    ids = [int(v) if key == 'video_idx' else _stable_hash(v) for v in values]
                    return torch.tensor(ids, dtype=torch.long, device=device)
        if not self._warned_no_ids:
            print_log(f'STANRetriever: data samples carry none of {VIDEO_ID_KEYS} in their '
                      'metainfo, so two captions of one video in a batch count as negatives; '
                      'add one to PackActionInputs(meta_keys=...)', logger='current',
                      level=logging.WARNING)
            self._warned_no_ids = True
        return None

    def loss(self, inputs, data_samples: Optional[list] = None) -> Dict[str, torch.Tensor]:
        imgs, text = self._split_inputs(inputs)
        if text is None:
            raise KeyError('STANRetriever: training needs captions: inputs[\'text\'] is '
                           'missing (CLIPBPETokenize + PackActionInputs(collect_keys=('
                           '\'imgs\', \'text\')))')
        groups = self._text_per_sample(text, imgs.shape[0])
        if any(g.shape[0] != 1 for g in groups):
            raise ValueError('STANRetriever: training needs exactly one caption per video '
                             f'sample, got {[g.shape[0] for g in groups]} (use a train-mode '
                             'dataset: test_mode=False)')
        video = self.encode_video(imgs)                                  # [N, E]
        text_emb = self.encode_text(torch.cat(groups))                   # [N, E]
        # the fixed scale is made on the device: a CPU tensor moved there was a blocking
        # host-to-GPU copy, i.e. a wait for the queued forward pass in every step
        scale = (self.get_logit_scale().to(video.device) if self.learnable_temperature
                 else torch.full((), 1.0 / self.temperature, device=video.device))
        # SymmetricInfoNCELoss takes the ids on the CPU (it moves them): it then sees on the
        # host whether the batch holds two videos or more (else its loss is exactly 0 and
        # it warns) without waiting for the device
        on_host = isinstance(self.loss_module, SymmetricInfoNCELoss)
        ids = self.video_ids(data_samples, 'cpu' if on_host else video.device)
        if self._loss_has_terms:
            loss, terms = self.loss_module(video, text_emb, scale, ids, return_terms=True)
        else:                                   # a loss module of another kind
            loss, terms = self.loss_module(video, text_emb, scale, ids), {}
        out = dict(loss=loss)
        for key, value in terms.items():
            if 'loss' in key:   # mmengine's parse_losses would add it to the optimized loss
                raise KeyError(f'STANRetriever: the log-only term {key!r} of the loss module '
                               "must not contain 'loss' in its name")
            out[key] = value.detach()
        if self.learnable_temperature:
            out['logit_scale'] = scale.detach()
        return out

    def predict(self, inputs, data_samples: Optional[list] = None) -> list:
        imgs, text = self._split_inputs(inputs)
        if data_samples is None:
            from mmaction.structures import ActionDataSample
            data_samples = [ActionDataSample() for _ in range(imgs.shape[0])]
        video = F.normalize(self.encode_video(imgs).float(), dim=-1)    # [N, E]
        groups = None
        if text is not None:
            groups = self._text_per_sample(text, imgs.shape[0])
            text_emb = F.normalize(self.encode_text(torch.cat(groups)).float(), dim=-1)
            per_sample = text_emb.split([g.shape[0] for g in groups])
        for i, ds in enumerate(data_samples):
            ds.video_feature = video[i]
            if groups is not None:
                ds.text_feature = per_sample[i]
                ds.text_key = caption_keys(groups[i])
        return data_samples

    def extra_repr(self) -> str:
        if self.learnable_temperature:
            return f'learnable logit_scale (exp clamped at {self.max_logit_scale:g})'
        return f'temperature={self.temperature:g} (logit scale {1 / self.temperature:g})'

