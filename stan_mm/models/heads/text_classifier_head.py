"""Text-classifier head: class names through the CLIP text tower, cosine logits / tau."""
import itertools
import logging
import math
import threading
import weakref
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from mmaction.models.heads.base import BaseHead
from mmaction.registry import MODELS
from torch import nn

from stan_mm.errors import ConfigValueError

from ..losses import autocast_off, learned_logit_scale
from .classnames import ClassNames, build_prompts, check_templates, load_classnames

# head -> the lock under which its class-embedding cache is filled (held weakly, outside the
# module: a lock attribute would make heads impossible to deepcopy or pickle)
_FILL_LOCKS: 'weakref.WeakKeyDictionary[nn.Module, threading.Lock]' = \
    weakref.WeakKeyDictionary()
_FILL_LOCKS_GUARD = threading.Lock()


def _fill_lock(head: nn.Module) -> threading.Lock:
    """The lock of ``head``'s cache fills (made at the first fill)."""
    with _FILL_LOCKS_GUARD:
        lock = _FILL_LOCKS.get(head)
        if lock is None:
            lock = _FILL_LOCKS[head] = threading.Lock()
        return lock


def _compiling() -> bool:
    """Whether ``torch.compile`` or ``torch.export`` is tracing this code."""
    compiler = getattr(torch, 'compiler', None)
    return bool(compiler is not None and compiler.is_compiling())


def _exporting() -> bool:
    """Whether ``torch.export`` is tracing this code."""
    return bool(getattr(getattr(torch, 'compiler', None), 'is_exporting', lambda: False)())


def _eager_only(reason: str):
    """``torch.compiler.disable`` with its ``reason`` where this torch takes one."""
    def wrap(fn):
        disable = getattr(getattr(torch, 'compiler', None), 'disable', None)
        if disable is None:
            return fn
        try:
            return disable(fn, reason=reason)
        except TypeError:   # torch < 2.7: no reason argument
            return disable(fn)
    return wrap


@MODELS.register_module()
class TextClassifierHead(BaseHead):
    """Classify a video embedding by its cosine similarity to class-name text embeddings.

    Every class name is put into each prompt template (default ``'a video of {}.'``; the
    recognition configs use the bare name, ``'{}'``), tokenized
    with CLIP's BPE (offline) and encoded by a CLIP text tower; the class embedding is the
    mean over templates of the L2-normalized prompt embeddings, L2-normalized again
    (CLIP's prompt ensembling). Logits for a video embedding ``x`` are::

        logits[n, c] = <x[n] / |x[n]|, w[c]> / temperature        [N, num_classes]

    The authors' public code scores classes the same way (class text encoded once, no
    gradient) but encodes the bare class names with no template and trains with a plain
    cross-entropy: ``templates=['{}']``, ``label_smooth_eps=0``, what the recognition
    configs set (the paper states neither). The class embeddings ``w`` [num_classes, E]
    are cached:

    * ``finetune_text=False`` (default): the text tower is frozen (no gradient, eval mode)
      and ``w`` is computed once, without grad, at the first forward, then reused;
    * ``finetune_text=True``: in training mode ``w`` is recomputed at every forward (with
      gradient when grad is enabled; the text tower is trained, never cached); in eval
      mode it is computed once and reused until the next ``train()``/``eval()`` switch
      (the weights may have changed).

    The cache is stored with a fingerprint of the text tower's parameters and buffers
    (each tensor's storage address and in-place version counter) and recomputed when the
    fingerprint differs: after any change of the tower's weights, whether through the
    head's ``load_state_dict``, ``head.text_encoder.load_state_dict(...)``, an in-place edit
    (``weight.mul_(...)``, an optimizer step) or a move to another device (an edit through
    ``param.data`` bypasses the version counter: call :meth:`invalidate_cache` after it).
    The cache is never an inference tensor: filled inside ``torch.inference_mode()`` (a
    validation pass), it is still usable by a later training step. It is filled under a
    lock of the head's: threads sharing a model in eval mode (an inference service) that
    find it empty wait for one fill instead of each encoding every prompt. It is also
    dropped when weights are loaded (``load_state_dict``) and by
    :meth:`set_classnames`, which swaps the class list (zero-shot testing on new classes:
    ``--cfg-options model.cls_head.classnames=data/ucf101/classnames.txt`` together with
    that dataset's ``test_dataloader.dataset.data_root`` / ``ann_file`` / ``data_prefix``,
    or ``head.set_classnames([...])`` in code). Class names are
    not stored in checkpoints, so a checkpoint trained on K400 tests on any class list (their
    tokens are a non-persistent buffer: they move with the head, ``head.to(device)``, and a
    forward copies nothing from the host).

    Multi-view testing: ``average_clips='prob'`` (default) fuses views as softmax per
    view, then mean over views (``BaseHead.average_clip``).

    Compiling and exporting: while ``torch.compile`` or ``torch.export`` traces the head
    (``torch.compiler.is_compiling()``), the fingerprint is not checked (fake tensors have
    no storage address) and the cached ``w`` is used as it is, a constant of the graph:
    run one eager forward first (it fills the cache), then ``torch.export.export(head,
    (x,))`` or ``torch.compile(head, fullgraph=True)``. With an empty cache,
    ``torch.export`` raises an error saying so, and ``torch.compile`` fills the cache
    eagerly in a graph break (an error with ``fullgraph=True``). A compiled or exported
    head does not notice later in-place changes of the text tower's weights: call
    :meth:`invalidate_cache` and run an eager forward (recompile or export again) after
    changing them. ``torch.jit.trace`` runs on real tensors and keeps the eager checks.
    With ``finetune_text=True`` in training mode nothing is cached and the text tower is
    traced like the rest of the model.

    Args:
        classnames: path to ``classnames.txt`` (one name per line, label order) or a list
            of names.
        in_channels: width E of the video embedding (CLIPSTAN's ``embed_dim``, 512 for
            ViT-B); must equal the text tower's output width.
        text_encoder: config of the text tower, e.g. ``dict(type='CLIPTextEncoder',
            arch='ViT-B/16', pretrained='checkpoints/clip/ViT-B-16.pt')`` (the same CLIP
            weights as the backbone), or a built module mapping tokens [M, L] -> [M, E].
            Its ``frozen`` flag is set from ``finetune_text``.
        templates: one prompt template or a list (embeddings averaged); each has one
            ``{}`` for the class name.
        num_classes: optional check: must equal the number of class names.
        context_length: token length of the prompts (8..77; prompts are short).
        temperature: tau of ``cos / tau`` (default 0.01, i.e. CLIP's logit scale 100).
        learnable_temperature: learn ``log(1 / tau)`` (CLIP style); the parameter is
            clamped in place so that ``1 / tau <= max_logit_scale``.
        max_logit_scale: upper bound of ``1 / tau`` when learnable (CLIP: 100).
        finetune_text: train the text tower (see the cache rules above).
        dropout_ratio: dropout on the video embedding before normalization.
        text_batch_size: prompts per text-tower call when filling the cache.
        loss_cls, label_smooth_eps, topk, average_clips, init_cfg: see ``BaseHead``.
        warn_style: warn about numbered (``classInd.txt``) or CamelCase class names (off
            for a list the caller has checked already).
    """

    def __init__(self,
                 classnames: ClassNames,
                 in_channels: int,
                 text_encoder: Union[dict, nn.Module],
                 templates: Union[str, Sequence[str]] = ('a video of {}.', ),
                 num_classes: Optional[int] = None,
                 context_length: int = 77,
                 temperature: float = 0.01,
                 learnable_temperature: bool = False,
                 max_logit_scale: float = 100.0,
                 finetune_text: bool = False,
                 dropout_ratio: float = 0.0,
                 text_batch_size: int = 1024,
                 loss_cls: Dict = dict(type='CrossEntropyLoss'),
                 average_clips: Optional[str] = 'prob',
                 init_cfg: Optional[Dict] = None,
                 warn_style: bool = True,
                 **kwargs) -> None:
        names = load_classnames(classnames, warn_style=False)   # set_classnames warns
        if num_classes is not None and num_classes != len(names):
            raise ConfigValueError(f'TextClassifierHead: num_classes={num_classes} but '
                                   f'{len(names)} class names were given ({_describe(classnames)})'
                                   f'; drop num_classes or fix the class list')
        super().__init__(len(names), in_channels, loss_cls=loss_cls,
                         average_clips=average_clips, init_cfg=init_cfg, **kwargs)
        if not temperature > 0:
            raise ConfigValueError(f'TextClassifierHead: temperature must be > 0, got '
                                   f'{temperature}')
        self.templates = check_templates(templates)
        self.context_length = context_length
        self.finetune_text = finetune_text
        self.text_batch_size = text_batch_size
        self.text_encoder = self._build_text_encoder(text_encoder, finetune_text)
        out_dim = getattr(self.text_encoder, 'embed_dim', None)
        if out_dim is not None and out_dim != in_channels:
            raise ConfigValueError(f'TextClassifierHead: in_channels={in_channels} but the text '
                                   f'encoder outputs {out_dim}-d embeddings; use the text tower of '
                                   f'the same CLIP as the backbone (model.cls_head.text_encoder '
                                   f'arch/pretrained) and its width as model.cls_head.in_channels')
        limit = getattr(self.text_encoder, 'context_length', None)
        if isinstance(limit, int) and isinstance(context_length, int) and context_length > limit:
            raise ConfigValueError(f'TextClassifierHead: context_length={context_length} but the '
                                   f'text encoder takes at most {limit} tokens (the '
                                   f'text_cfg.context_length of model.cls_head.text_encoder\'s '
                                   f'CLIP); set model.cls_head.context_length={limit}')
        self.dropout = nn.Dropout(dropout_ratio) if dropout_ratio > 0 else None

        self.learnable_temperature = learnable_temperature
        self.init_temperature = temperature
        self.max_logit_scale = max_logit_scale
        init = torch.tensor(math.log(1.0 / temperature))
        if learnable_temperature:
            if 1.0 / temperature > max_logit_scale:
                raise ConfigValueError(f'TextClassifierHead: 1 / temperature = {1 / temperature:g} '
                                       f'exceeds max_logit_scale={max_logit_scale:g}')
            self.logit_scale = nn.Parameter(init)
        else:
            self.register_buffer('logit_scale', init, persistent=False)

        self.classnames: List[str] = []
        # the prompts' token ids [C * M, L] int64, on the text tower's device: a
        # non-persistent buffer (not in checkpoints), so that it moves with the module
        # (``.to(device)``; a ``.to(dtype)`` leaves integers as they are) and a forward
        # copies nothing from the host (set by set_classnames)
        self.register_buffer('_tokens', None, persistent=False)
        self._cache: Optional[torch.Tensor] = None       # [C, E] fp32, normalized
        self._cache_key: Optional[tuple] = None           # _text_fingerprint() of _cache
        self.set_classnames(names, source=classnames if isinstance(classnames, str) else None,
                            warn_style=warn_style)

    # ------------------------------------------------------------------ setup
    @staticmethod
    def _build_text_encoder(cfg, finetune_text: bool) -> nn.Module:
        if isinstance(cfg, nn.Module):
            encoder = cfg
            if not finetune_text:
                encoder.requires_grad_(False)
                encoder.eval()
            return encoder
        cfg = dict(cfg)
        frozen = cfg.setdefault('frozen', not finetune_text)
        if frozen == finetune_text:
            raise ConfigValueError(f'TextClassifierHead: text_encoder.frozen={frozen} contradicts '
                                   f'finetune_text={finetune_text}; set only finetune_text')
        return MODELS.build(cfg)

    def set_classnames(self, classnames: ClassNames, source: Optional[str] = None,
                       warn_style: bool = True) -> None:
        """Use a new class list (path or list): re-tokenizes the prompts, sets
        ``num_classes`` and drops the cached class embeddings. ``source``: where a given
        list came from, for messages (default: the path, if ``classnames`` is one).
        ``warn_style``: warn about numbered / CamelCase names (``check_classnames``; off
        for a list already checked).

        Prompts longer than ``context_length`` tokens are cut (a warning names them);
        two classes whose prompts give identical tokens (CLIP's text cleaning: curly vs
        straight quotes, HTML entities, spaces before punctuation; or the cut) are refused:
        they would get one embedding and the higher label could never be predicted."""
        from mmengine.logging import print_log
        from stan_mm.datasets.transforms.tokenize import token_count, tokenize
        names = load_classnames(classnames, source=source, warn_style=warn_style)
        prompts = build_prompts(names, self.templates)
        with torch.device('cpu'):      # token ids are data, also in a model built on 'meta'
            tokens = tokenize(prompts, self.context_length)
        # only a row filled to its last position can have been cut
        full = (tokens[:, -1] != 0).tolist()
        long = [(p, n) for p, f in zip(prompts, full)
                if f and (n := token_count(p)) > self.context_length]
        cut = {p for p, _ in long}
        if long:
            shown = '; '.join(f'{p!r} ({n} tokens)' for p, n in long[:3])
            print_log(f'TextClassifierHead: {len(long)} of {len(prompts)} class prompts are '
                      f'longer than context_length={self.context_length} tokens and are cut, '
                      f'e.g. {shown}; a larger context_length (77 at most) keeps them whole',
                      logger='current', level=logging.WARNING)
        per_class = tokens.view(len(names), len(self.templates), -1)
        seen: Dict[tuple, int] = {}
        for c, rows in enumerate(per_class):
            key = tuple(rows.flatten().tolist())
            if key in seen:
                j = seen[key]
                m = len(self.templates)
                was_cut = any(p in cut for p in prompts[j * m:(j + 1) * m] +
                              prompts[c * m:(c + 1) * m])
                why = (f'the cut to context_length={self.context_length}' if was_cut else
                       'CLIP\'s text cleaning (case, spaces, quotes, HTML entities)')
                raise ConfigValueError(f'TextClassifierHead: class names {names[j]!r} (label {j}) '
                                       f'and {names[c]!r} (label {c}) give identical tokens after '
                                       f'{why}; the classes need names CLIP can tell apart'
                                       + (', or a larger context_length' if was_cut else ''))
            seen[key] = c
        self._tokens = tokens.to(self._text_device())
        self.classnames = names
        #: the class-name file, for messages (None: a list was given)
        self.classnames_source = source or (classnames if isinstance(classnames, str)
                                            else None)
        self.num_classes = len(names)
        self.invalidate_cache()

    def invalidate_cache(self) -> None:
        """Forget the cached class embeddings (recomputed at the next forward)."""
        self._cache = None
        self._cache_key = None

    def train(self, mode: bool = True):
        if self.finetune_text and mode != self.training:
            self.invalidate_cache()
        super().train(mode)
        if not self.finetune_text:
            self.text_encoder.eval()
        return self

    def _load_from_state_dict(self, *args, **kwargs):
        self.invalidate_cache()
        super()._load_from_state_dict(*args, **kwargs)

    # ------------------------------------------------------------------ class embeddings
    def _text_device(self) -> torch.device:
        for p in self.text_encoder.parameters():
            return p.device
        return torch.device('cpu')

    def _text_fingerprint(self) -> tuple:
        """Cheap fingerprint of the text tower's weights: ``(data_ptr, version)`` of every
        parameter and buffer. Any in-place change of a tensor (``copy_`` in
        ``load_state_dict``, an optimizer step, ``mul_``) bumps its version counter; a
        replaced tensor or a move to another device changes its address. Inference tensors
        have no version counter (-1: only their address counts)."""
        key = []
        for t in itertools.chain(self.text_encoder.parameters(), self.text_encoder.buffers()):
            key.append((t.data_ptr(), -1 if t.is_inference() else t._version))
        return tuple(key)

    def _prompt_tokens(self) -> torch.Tensor:
        """The prompts' tokens ``[C * M, L]`` on the text tower's device. The buffer moves
        with the head; a tower moved on its own (``head.text_encoder.to(...)``) gets them
        moved once here, not on every forward (a blocking host-to-device copy per training
        step with ``finetune_text=True``)."""
        device = self._text_device()
        if self._tokens.device != device:
            self._tokens = self._tokens.to(device)
        return self._tokens

    def _encode_prompts(self, chunk: Optional[int]) -> torch.Tensor:
        """All prompts -> class embeddings [C, E] (normalized, averaged over templates)."""
        tokens = self._prompt_tokens()
        step = chunk or tokens.shape[0]
        emb = torch.cat([self.text_encoder(tokens[i:i + step])
                         for i in range(0, tokens.shape[0], step)])   # [C * M, E]
        emb = F.normalize(emb.float(), dim=-1)
        emb = emb.view(self.num_classes, len(self.templates), -1).mean(dim=1)
        return F.normalize(emb, dim=-1)                                # [C, E]

    def class_embeddings(self) -> torch.Tensor:
        """Class text embeddings ``[num_classes, E]`` (fp32, L2-normalized)."""
        if self.finetune_text and self.training:
            # the tower changes with every optimizer step: never served from the cache.
            # Fine-tuned, it runs under the training's AMP like the video tower (the
            # logits are still computed in fp32, see forward); frozen or cached, in fp32
            if torch.is_grad_enabled():
                return self._encode_prompts(chunk=None)
            with autocast_off(self._text_device()):
                return self._encode_prompts(chunk=self.text_batch_size)
        device = self._text_device()
        if _compiling():
            # torch.compile / torch.export trace with fake tensors: no data pointer for the
            # fingerprint, and is_inference() cannot be traced. The cache is used as it is
            # (see "Compiling and exporting" in the class docstring).
            if self._cache is not None and self._cache.device == device:
                return self._cache
            if _exporting():
                raise RuntimeError(
                    'TextClassifierHead: torch.export needs the class embeddings cached: '
                    'run one eager forward first (e.g. `with torch.no_grad(): head(x)` or '
                    'the whole model on one sample), then export')
            return self._fill_cache_eagerly(device)
        return self._cached_class_embeddings(device)

    def _fresh_cache(self, device: torch.device, key: tuple) -> Optional[torch.Tensor]:
        """The cached class embeddings when they are on ``device`` and of the tower whose
        fingerprint is ``key``, else None."""
        cache = self._cache
        if (cache is not None and cache.device == device and self._cache_key == key
                and not cache.is_inference()):
            return cache
        return None

    def _cached_class_embeddings(self, device: torch.device) -> torch.Tensor:
        key = self._text_fingerprint()
        cache = self._fresh_cache(device, key)
        if cache is not None:
            return cache
        # one fill at a time: threads that share the model (an inference service) and all
        # find the cache empty wait for the first one's embeddings instead of each
        # encoding every prompt again
        with _fill_lock(self):
            cache = self._fresh_cache(device, key)
            if cache is None:
                # inference_mode(False): a cache filled in a validation pass under
                # torch.inference_mode() must stay usable by a later training step (an
                # inference tensor cannot be saved for backward)
                with torch.inference_mode(False), torch.no_grad(), autocast_off(device):
                    cache = self._encode_prompts(chunk=self.text_batch_size)
                self._cache, self._cache_key = cache, key
            return cache

    @_eager_only('TextClassifierHead fills its class-embedding cache eagerly: run one '
                 'eager forward before compiling with fullgraph=True')
    def _fill_cache_eagerly(self, device: torch.device) -> torch.Tensor:
        """The eager cache check and fill, out of a ``torch.compile`` graph (a graph
        break; with ``fullgraph=True`` an error naming this reason)."""
        return self._cached_class_embeddings(device)

    # ------------------------------------------------------------------ forward
    def scale(self) -> torch.Tensor:
        """Logit scale ``1 / temperature`` (a 0-d tensor)."""
        if self.learnable_temperature:
            return learned_logit_scale(self.logit_scale, self.max_logit_scale)
        return self.logit_scale.exp()

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """Video embeddings ``[N, E]`` -> class scores ``[N, num_classes]``."""
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != self.in_channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            hint = ''
            if isinstance(x, torch.Tensor) and x.dim() == 2:
                hint = (f': the backbone gives {x.shape[1]}-d embeddings, so the head '
                        f'(model.cls_head.in_channels={self.in_channels}) and its text '
                        f'encoder (model.cls_head.text_encoder) must be built from the same '
                        f'CLIP as the backbone')
            raise ValueError(f'TextClassifierHead expects video embeddings [N, '
                             f'{self.in_channels}], got {shape}{hint}')
        if self.dropout is not None:
            x = self.dropout(x)
        text = self.class_embeddings().to(x.device)                    # [C, E] fp32
        with autocast_off(x.device):  # cosine / tau in fp32 (tau = 0.01 amplifies errors)
            video = F.normalize(x.float(), dim=-1)                    # [N, E]
            return self.scale() * video @ text.t()                    # [N, C]

    def extra_repr(self) -> str:
        return (f'num_classes={self.num_classes}, templates={self.templates}, '
                f'temperature={self.init_temperature:g}'
                f'{" (initial, learnable)" if self.learnable_temperature else ""}, '
                f'finetune_text={self.finetune_text}')


def _describe(classnames) -> str:
    return classnames if isinstance(classnames, str) else 'a list'
