"""FLOPs (multiply-accumulates) and parameter counts.

Convention (the field's, fvcore / ``mmengine.analysis``): one multiply-add = one FLOP, so
the "GFLOPs" reported here are G multiply-accumulates (GMACs). Matrix products,
convolutions and attention (``Q K^T`` and ``A V``) are counted; element-wise ops,
normalization, softmax and reductions are not (they are listed as ignored).

Counting uses :class:`torch.utils.flop_counter.FlopCounterMode` (which counts 2 FLOPs per
MAC; halved here) with formulas added for the ops it misses and that CLIP models hit:

* ``aten._scaled_dot_product_flash_attention_for_cpu`` (the fused CPU attention kernel
  behind ``F.scaled_dot_product_attention`` and ``nn.MultiheadAttention`` in training);
* ``aten._native_multi_head_attention`` (``nn.MultiheadAttention``'s inference fast path:
  q/k/v and output projections plus attention).

Any other op without a formula whose name looks like a matrix product, convolution or
attention is reported in :attr:`FlopsResult.skipped` (it would be silently missing
otherwise). The model runs in eval mode under ``no_grad`` with gradient checkpointing off.
Models may live on the ``meta`` device (no memory, no compute): only shapes matter.
"""
import contextlib
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import torch
from torch import nn
from torch.utils import flop_counter as fc

aten = torch.ops.aten

_MATMUL_LIKE = re.compile(r'mm|matmul|conv|attention|einsum|linear|dot|addmv|\bmv\b')
_CKPT_ATTRS = ('grad_checkpointing', 'gradient_checkpointing', 'with_cp')


def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    """``_scaled_dot_product_flash_attention_for_cpu``: q, k, v ``[B, H, L, E]``."""
    return fc.sdpa_flop_count(query_shape, key_shape, value_shape)


def _native_mha_flop(query_shape, key_shape, value_shape, embed_dim, num_head, *args,
                     out_shape=None, **kwargs):
    """``_native_multi_head_attention``: q ``[B, Lq, D]``, k/v ``[B, Lk, D]`` (batch
    first) -> q/k/v/out projections + ``Q K^T`` + ``A V``, in FLOPs (2 per MAC)."""
    b, lq, d = query_shape
    lk = key_shape[-2]
    macs = b * lq * d * d + 2 * b * lk * d * d + 2 * b * lq * lk * d + b * lq * d * d
    return 2 * macs


EXTRA_FORMULAS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flop,
    aten._native_multi_head_attention: _native_mha_flop,
}


class _Counter(fc.FlopCounterMode):
    """FlopCounterMode that also remembers the ops it had no formula for."""

    def __init__(self):
        super().__init__(display=False, custom_mapping=EXTRA_FORMULAS)
        self.uncounted: Counter = Counter()

    def _count_flops(self, func_packet, out, args, kwargs):
        if func_packet not in self.flop_registry:
            self.uncounted[str(func_packet)] += 1
        return super()._count_flops(func_packet, out, args, kwargs)


@dataclass
class FlopsResult:
    """Counted multiply-accumulates of one forward pass.

    Attributes:
        macs: total multiply-accumulates ("FLOPs" in the field's convention).
        by_module: MACs per module path truncated to ``depth`` components (each op
            counted once, in the innermost module that ran it).
        by_op: MACs per counted aten op.
        skipped: matmul/conv/attention-like ops that ran without a formula (op -> calls);
            non-empty means the total is too low.
        ignored: other ops without a formula (element-wise etc.; zero by convention).
    """
    macs: int
    by_module: Dict[str, int] = field(default_factory=dict)
    by_op: Dict[str, int] = field(default_factory=dict)
    skipped: Dict[str, int] = field(default_factory=dict)
    ignored: List[str] = field(default_factory=list)

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9


@contextlib.contextmanager
def checkpointing_off(module: nn.Module) -> Iterator[None]:
    """Temporarily set every ``grad_checkpointing``/``with_cp`` flag in ``module`` to
    False (recomputation would be counted twice in a backward pass)."""
    saved = []
    for m in module.modules():
        for attr in _CKPT_ATTRS:
            if isinstance(getattr(m, attr, None), bool):
                saved.append((m, attr, getattr(m, attr)))
                setattr(m, attr, False)
    try:
        yield
    finally:
        for m, attr, value in saved:
            setattr(m, attr, value)


def _group_by_module(counts: Mapping[str, Mapping[Any, int]], root: str,
                     depth: int) -> Dict[str, int]:
    """MACs per module path truncated to ``depth`` components (relative to the root).

    FlopCounterMode credits an op to every module whose ``forward`` is running, so a
    module's own ops are its total minus its nearest tracked sub-modules' totals; those
    are summed per truncated path (``'(root)'``: ops in the root's own ``forward``).
    Modules used without calling them (e.g. blocks iterated by a parent) are still
    found through their tracked descendants."""
    totals = {n: sum(ops.values()) // 2 for n, ops in counts.items() if n != 'Global'}

    def nearest_tracked_parent(name: str) -> Optional[str]:
        parts = name.split('.')
        for i in range(len(parts) - 1, 0, -1):
            parent = '.'.join(parts[:i])
            if parent in totals:
                return parent
        return None
    own = dict(totals)
    for name, total in totals.items():
        parent = nearest_tracked_parent(name)
        if parent is not None:
            own[parent] -= total
    out: Dict[str, int] = defaultdict(int)
    for name, macs in own.items():
        rel = name[len(root) + 1:] if name.startswith(root + '.') else (
            '' if name == root else name)
        out['.'.join(rel.split('.')[:depth]) if rel else '(root)'] += macs
    return {k: v for k, v in sorted(out.items()) if v}


@contextlib.contextmanager
def packed_attention_as_module_calls() -> Iterator[None]:
    """Credit the CLIP blocks' attention to ``<block>.attn`` in the per-module breakdown.

    :func:`~stan_mm.models.backbones.clip_stan.clip_block_forward` computes a block's
    self-attention with functional ops on ``block.attn``'s parameters, outside any module
    call, so :class:`~torch.utils.flop_counter.FlopCounterMode` would credit those ops to
    whichever module called the blocks (``(root)``). While this is active the same
    function runs as a call of ``block.attn`` (same ops, same result)."""
    from stan_mm.models.backbones import clip_stan
    original = clip_stan.packed_self_attention

    def as_module_call(x: torch.Tensor, attn: nn.MultiheadAttention) -> torch.Tensor:
        attn.forward = lambda inp: original(inp, attn)   # instance attribute, undone below
        try:
            return attn(x)
        finally:
            del attn.forward

    clip_stan.packed_self_attention = as_module_call
    try:
        yield
    finally:
        clip_stan.packed_self_attention = original


def count_macs(module: nn.Module, args: Sequence[Any] = (),
               kwargs: Optional[Mapping[str, Any]] = None, depth: int = 2) -> FlopsResult:
    """Multiply-accumulates of ``module(*args, **kwargs)`` (eval mode, no grad,
    checkpointing off; the module's train/eval state is restored afterwards)."""
    kwargs = dict(kwargs or {})
    was_training = module.training
    counter = _Counter()
    try:
        module.eval()
        with checkpointing_off(module), packed_attention_as_module_calls(), \
                torch.no_grad(), counter:
            module(*args, **kwargs)
    finally:
        module.train(was_training)
    counts = counter.get_flop_counts()
    by_module = _group_by_module(counts, type(module).__name__, depth)
    by_op: Dict[str, int] = defaultdict(int)
    for op, n in counts.get('Global', {}).items():
        by_op[str(op)] += n // 2
    skipped = {op: n for op, n in counter.uncounted.items()
               if _MATMUL_LIKE.search(op.split('.', 1)[-1])}
    ignored = sorted(op for op in counter.uncounted if op not in skipped)
    return FlopsResult(macs=counter.get_total_flops() // 2, by_module=by_module,
                       by_op=dict(by_op), skipped=skipped, ignored=ignored)


def count_params(module: nn.Module, depth: int = 1) -> Dict[str, int]:
    """Parameter counts: ``total``, ``trainable`` and one entry per sub-module name down to
    ``depth`` dots (shared parameters counted once)."""
    seen, out = set(), defaultdict(int)
    for name, p in module.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        out['total'] += p.numel()
        if p.requires_grad:
            out['trainable'] += p.numel()
        parts = name.split('.')
        for d in range(1, min(depth, len(parts) - 1) + 1):
            out['.'.join(parts[:d])] += p.numel()
    return dict(out)


# ---------------------------------------------------------------------------------------
# whole models: recognition (one view) and retrieval (video and text towers)
# ---------------------------------------------------------------------------------------
DEFAULT_SHAPE = (8, 224, 224)


def strip_weights(node: Any) -> Any:
    """Copy of a model config with every ``pretrained`` path set to None and every
    ``init_cfg`` of type ``Pretrained`` removed (FLOPs need shapes, not weights), except a
    ``pretrained`` beside ``arch=None``: the architecture is read from that file."""
    if isinstance(node, Mapping):
        out = {}
        infer = 'arch' in node and node['arch'] is None
        for k, v in node.items():
            if k == 'pretrained' and isinstance(v, str) and not infer:
                out[k] = None
            elif k == 'init_cfg' and isinstance(v, Mapping) and v.get('type') == 'Pretrained':
                out[k] = None
            else:
                out[k] = strip_weights(v)
        return out
    if isinstance(node, (list, tuple)):
        return type(node)(strip_weights(v) for v in node)
    return node


def _pipeline(cfg) -> List[Mapping]:
    for loader in ('test_dataloader', 'val_dataloader'):
        ds = cfg.get(loader, {}).get('dataset', {}) if cfg.get(loader) else {}
        while isinstance(ds, Mapping) and 'pipeline' not in ds and 'dataset' in ds:
            ds = ds['dataset']
        if isinstance(ds, Mapping) and ds.get('pipeline'):
            return list(ds['pipeline'])
    return []


def shape_from_config(cfg) -> Optional[tuple]:
    """(T, H, W) of one test view, read from the test pipeline (``clip_len`` of the
    frame sampler, ``crop_size`` of the crop), or None."""
    T = size = None
    for step in _pipeline(cfg):
        if 'clip_len' in step and T is None:
            T = step['clip_len']
        if 'crop_size' in step:
            size = step['crop_size']
    if T is None:
        return None
    if size is None:
        size = DEFAULT_SHAPE[1:]
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return int(T), int(h), int(w)


def views_from_config(cfg) -> Optional[int]:
    """Number of test views (``num_clips`` x spatial crops) of the test pipeline."""
    clips, crops = None, 1
    for step in _pipeline(cfg):
        if 'clip_len' in step:
            clips = step.get('num_clips', 1)
        if step.get('type') == 'ThreeCrop':
            crops = 3
        elif step.get('type') == 'TenCrop':
            crops = 10
    return clips * crops if clips else None


def text_len_from_config(cfg) -> Optional[int]:
    """Token length of the test pipeline's tokenizer (``context_length``), or None."""
    for step in _pipeline(cfg):
        if 'context_length' in step:
            return int(step['context_length'])
    return None


def _placeholder_classnames(cfg_model: dict, num_classes: int) -> List[str]:
    """Replace class-name files that do not exist by ``num_classes`` placeholder names
    (the class count is all the FLOPs depend on). Returns notes."""
    import os
    notes = []

    def visit(node):
        if isinstance(node, dict):
            v = node.get('classnames')
            if isinstance(v, str) and not os.path.exists(v):
                node['classnames'] = [f'class {i}' for i in range(num_classes)]
                notes.append(f'classnames file {v!r} not found: using {num_classes} '
                             f'placeholder names')
            for child in node.values():
                visit(child)
        elif isinstance(node, list):
            for child in node:
                visit(child)
    visit(cfg_model)
    return notes


def build_model_for_flops(cfg, device: str = 'meta', keep_weights: bool = False):
    """Build ``cfg.model`` for counting: weights stripped (unless ``keep_weights``),
    missing class-name files replaced by placeholders, on ``device`` ('meta': no memory).
    Returns (model, notes)."""
    import copy as _copy

    from mmaction.registry import MODELS
    from mmengine.registry import init_default_scope
    init_default_scope(cfg.get('default_scope', 'mmaction'))
    model_cfg = _copy.deepcopy(cfg.model.to_dict() if hasattr(cfg.model, 'to_dict')
                               else dict(cfg.model))
    if not keep_weights:
        model_cfg = strip_weights(model_cfg)
    num_classes = cfg.get('num_classes') or 400
    notes = _placeholder_classnames(model_cfg, int(num_classes))
    import warnings
    with torch.device(device), warnings.catch_warnings():
        # weights read into a model on 'meta' (arch=None, --keep-weights): torch warns once
        # per tensor that the copy is a no-op, which is the point here
        warnings.filterwarnings('ignore', message='.*copying from a non-meta parameter',
                                category=UserWarning)
        model = MODELS.build(model_cfg)
    return model, notes


def _fmt_params(params: Dict[str, int]) -> str:
    parts = [f'{k} {v / 1e6:.2f} M' for k, v in params.items() if k not in ('total',
                                                                          'trainable')]
    return (f'total {params.get("total", 0) / 1e6:.2f} M, trainable '
            f'{params.get("trainable", 0) / 1e6:.2f} M ({", ".join(parts)})')


@dataclass
class TowerFlops:
    """FLOPs and parameters of one counted forward (a recognition view or one tower)."""
    name: str
    input_shape: tuple
    result: FlopsResult
    params: Dict[str, int]

    def format(self) -> str:
        r = self.result
        lines = [f'{self.name}: input {list(self.input_shape)}',
                 f'  GFLOPs (G multiply-accumulates): {r.gmacs:.3f}',
                 f'  params: {_fmt_params(self.params)}']
        if r.by_module:
            lines.append('  by module: ' + ', '.join(f'{k} {v / 1e9:.3f} G'
                                                     for k, v in r.by_module.items()))
        lines.append('  by op: ' + ', '.join(f'{k} {v / 1e9:.3f} G'
                                             for k, v in sorted(r.by_op.items())))
        lines.append('  uncounted matmul/conv/attention ops: '
                     + (', '.join(f'{k} (x{n})' for k, n in r.skipped.items())
                        if r.skipped else 'none'))
        lines.append('  ignored (no FLOPs by convention): ' + ', '.join(r.ignored))
        return '\n'.join(lines)


def _param_device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device('cpu')


@contextlib.contextmanager
def _autocast_noop_on_meta(device: torch.device) -> Iterator[None]:
    """On the meta device ``torch.autocast('meta')`` raises (no autocast there); code
    that opens an autocast region for its parameters' device (e.g. a head filling a cache)
    gets a no-op region instead, for the duration of the warm-up only."""
    if device.type != 'meta':
        yield
        return
    original = torch.autocast

    def autocast(device_type, *args, **kwargs):
        if str(device_type) == 'meta':
            return contextlib.nullcontext()
        return original(device_type, *args, **kwargs)
    torch.autocast = autocast
    try:
        yield
    finally:
        torch.autocast = original


def recognition_flops(model: nn.Module, shape=DEFAULT_SHAPE, warmup: bool = True
                      ) -> TowerFlops:
    """One view ``[1, 1, 3, T, H, W]`` through a recognizer (backbone, neck, head), as
    ``model(inputs, mode='tensor', stage='head')``. A warm-up forward first fills caches
    (e.g. the text classifier's class embeddings) so only per-view work is counted."""
    T, H, W = shape
    device = _param_device(model)
    x = torch.randn(1, 1, 3, T, H, W, device=device)
    kwargs = dict(mode='tensor', stage='head')
    if warmup:
        model.eval()
        with torch.no_grad(), _autocast_noop_on_meta(device):
            model(x, **kwargs)
    res = count_macs(model, (x, ), kwargs)
    return TowerFlops('recognition, one view', (1, 3, T, H, W), res, count_params(model, 2))


def retrieval_flops(model: nn.Module, shape=DEFAULT_SHAPE, text_len: int = 32
                    ) -> List[TowerFlops]:
    """Video tower on ``[1, T, 3, H, W]`` and text tower on ``[1, text_len]`` tokens."""
    T, H, W = shape
    device = _param_device(model)
    video = torch.randn(1, T, 3, H, W, device=device)
    out = [TowerFlops('video tower (backbone)', tuple(video.shape),
                      count_macs(model.backbone, (video, )),
                      count_params(model.backbone, 1))]
    text = getattr(model, 'text_backbone', None)
    if text is not None:
        emb = getattr(text, 'token_embedding', None)
        eot = emb.num_embeddings - 1 if isinstance(emb, nn.Embedding) else 2
        tokens = torch.randint(1, max(eot, 2), (1, text_len), device=device)
        tokens[:, -1] = eot                         # end-of-text (largest id) last
        out.append(TowerFlops('text tower (text_backbone)', tuple(tokens.shape),
                              count_macs(text, (tokens, )), count_params(text, 1)))
    return out
