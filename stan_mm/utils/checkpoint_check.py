"""Refuse to evaluate a checkpoint that does not fit the model.

mmengine's ``Runner.load_checkpoint`` (``load_from``, used by ``tools/test.py``) loads with
``strict=False``: missing keys, unexpected keys and shape mismatches only produce a WARNING
in the log, and the test then runs with randomly initialized weights where the checkpoint
did not fit. :func:`check_checkpoint_fits` compares the checkpoint with the model first and
raises :class:`CheckpointMismatchError` listing what differs, grouped by module, with hints
for the usual causes (a recognition checkpoint given to a retrieval model, a STAN branch of
another depth, CLIP-only or unconverted weights, another image size or ``max_frames``).
Given the whole config, it also warns when the test pipeline samples more frames than the
checkpoint's stored training config trained on (untrained temporal-embedding rows)::

    runner = Runner.from_cfg(cfg)
    check_checkpoint_fits(runner.model, args.checkpoint, model_cfg=cfg.model, config=cfg)
    runner.test()
"""
import re
from collections import OrderedDict
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

__all__ = ['CheckpointMismatchError', 'checkpoint_state_dict', 'compare_state_dicts',
           'check_checkpoint_fits', 'check_training_start', 'ema_checkpoint_note',
           'swap_in_raw_weights']

_MAX_GROUPS = 12
_BRANCH_LAYER = re.compile(r'(?:^|\.)branch\.layers\.(\d+)\.')
_DEFAULT_REVISE = ((r'^module\.', ''), )


class CheckpointMismatchError(RuntimeError):
    """The checkpoint's weights do not fit the model (the message lists the differences)."""


def _as_checkpoint(checkpoint) -> Mapping:
    """A loaded checkpoint dict as it is; a path loaded with mmengine's loader (the
    weights-only loader of :mod:`stan_mm.compat`)."""
    if isinstance(checkpoint, Mapping):
        return checkpoint
    from mmengine.runner.checkpoint import _load_checkpoint
    return _load_checkpoint(checkpoint, map_location='cpu')


def checkpoint_state_dict(checkpoint, revise_keys: Sequence[Tuple[str, str]] = _DEFAULT_REVISE
                          ) -> Dict[str, torch.Tensor]:
    """The model weights of a checkpoint: a path (loaded with mmengine's loader, i.e. the
    weights-only loader of :mod:`stan_mm.compat`) or a loaded dict, with ``state_dict``
    unwrapped and ``revise_keys`` (regex, replacement) applied like mmengine does."""
    checkpoint = _as_checkpoint(checkpoint)
    state = checkpoint.get('state_dict', checkpoint)
    if not isinstance(state, Mapping):
        raise CheckpointMismatchError(f'the checkpoint holds no state dict (its state_dict '
                                      f'is a {type(state).__name__})')
    out = OrderedDict()
    for key, value in state.items():
        for pattern, repl in revise_keys:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def _ema_state(checkpoint) -> Optional[Mapping]:
    """The ``ema_state_dict`` of a checkpoint saved by mmengine's ``EMAHook``, else None."""
    ema = checkpoint.get('ema_state_dict') if isinstance(checkpoint, Mapping) else None
    return ema if isinstance(ema, Mapping) else None


def ema_checkpoint_note(checkpoint, name: str, use: str = 'is what is loaded'
                        ) -> Optional[str]:
    """A line saying which weights of a checkpoint saved by mmengine's ``EMAHook`` are
    used; None for any other checkpoint.

    ``EMAHook`` swaps the two sets when it saves: ``state_dict`` holds the exponential
    moving average of the weights (what every tool reads: ``tools/test.py``,
    ``load_from``, the inference API, the converters) and ``ema_state_dict`` the weights
    of the last training step (keys ``module.<name>``, plus ``steps``), which only a
    resumed run reads. ``use``: what becomes of ``state_dict`` here."""
    ema = _ema_state(checkpoint)
    if ema is None:
        return None
    steps = ema.get('steps')
    count = (f' of {int(steps)} updates' if isinstance(steps, torch.Tensor)
             and steps.numel() == 1 else '')
    return (f'{name} was saved by EMAHook: its state_dict holds the moving average{count} '
            f'of the weights and {use}; the weights of the last training step are in its '
            f'ema_state_dict, which only a resumed run reads (docs/weights.md, "EMA '
            f'checkpoints")')


def swap_in_raw_weights(checkpoint: dict) -> int:
    """Put the weights of the last training step of an ``EMAHook`` checkpoint (its
    ``ema_state_dict``) into its ``state_dict`` and the averaged ones into
    ``ema_state_dict``, in place, as ``EMAHook`` does when a run that has it resumes.
    Returns the number of weights swapped (0 for a checkpoint without
    ``ema_state_dict``)."""
    ema, state = _ema_state(checkpoint), checkpoint.get('state_dict')
    if ema is None or not isinstance(state, dict):
        return 0
    swapped = 0
    for key in list(ema):
        if key.startswith('module.') and key[7:] in state:
            ema[key], state[key[7:]] = state[key[7:]], ema[key]
            swapped += 1
    return swapped


def compare_state_dicts(model_state: Mapping[str, torch.Tensor],
                        ckpt_state: Mapping[str, torch.Tensor]) -> dict:
    """``{'missing': [keys of the model absent from the checkpoint], 'unexpected': [keys of
    the checkpoint the model lacks], 'shape': [(key, checkpoint shape, model shape)]}``."""
    missing = [k for k in model_state if k not in ckpt_state]
    unexpected = [k for k in ckpt_state if k not in model_state]
    shape = [(k, tuple(ckpt_state[k].shape), tuple(model_state[k].shape))
             for k in model_state if k in ckpt_state
             and hasattr(ckpt_state[k], 'shape')
             and tuple(ckpt_state[k].shape) != tuple(model_state[k].shape)]
    return dict(missing=missing, unexpected=unexpected, shape=shape)


def _group(key: str) -> str:
    """Module a key belongs to, cut after the first block index:
    ``backbone.branch.layers.4.temporal.attn.in_proj_weight`` -> ``backbone.branch.layers.4``,
    ``cls_head.fc_cls.weight`` -> ``cls_head.fc_cls``."""
    parts = key.split('.')
    for i, p in enumerate(parts[:-1]):
        if p.isdigit():
            return '.'.join(parts[:i + 1])
    return '.'.join(parts[:-1]) or key


def _grouped(keys: Iterable[str]) -> str:
    groups: 'OrderedDict[str, int]' = OrderedDict()
    for k in keys:
        g = _group(k)
        groups[g] = groups.get(g, 0) + 1
    items = [f'{g}.* ({n})' for g, n in groups.items()]
    more = len(items) - _MAX_GROUPS
    return ', '.join(items[:_MAX_GROUPS]) + (f', ... and {more} more modules' if more > 0
                                             else '')


def _branch_depth(keys: Iterable[str]) -> Optional[int]:
    found = {int(m.group(1)) for k in keys for m in [_BRANCH_LAYER.search(k)] if m}
    return max(found) + 1 if found else None


def _temporal_module(keys: Iterable[str]) -> Optional[str]:
    """The branch's cross-frame module read off its weight names: ``'attn'``, ``'conv'``,
    ``'none'`` (a branch without one), None (no branch)."""
    keys = [k for k in keys if _BRANCH_LAYER.search(k)]
    if not keys:
        return None
    if any('.temporal.attn.' in k for k in keys):
        return 'attn'
    if any('.temporal.conv.' in k for k in keys):
        return 'conv'
    return 'none'


def _hints(model_keys: List[str], ckpt_keys: List[str],
           shape: Sequence[Tuple[str, tuple, tuple]] = ()) -> List[str]:
    hints = []
    if not set(model_keys) & set(ckpt_keys):
        hints.append('no key in common: this is a checkpoint of another model or of another '
                     'layout. CLIP weights go in model.backbone.pretrained (any layout); the '
                     'public STAN checkpoints convert with tools/convert/stan_public_to_mm.py')
    m_head = any(k.startswith('cls_head.') for k in model_keys)
    c_head = any(k.startswith('cls_head.') for k in ckpt_keys)
    if c_head and not m_head:
        hints.append('the checkpoint has a classification head (cls_head.*), so it is a '
                     'recognition checkpoint; the model has none (a retrieval model?)')
    elif m_head and not c_head and set(model_keys) & set(ckpt_keys):
        hints.append('the model has a classification head (cls_head.*) that the checkpoint '
                     'lacks: it is not a recognition checkpoint of this model (retrieval or '
                     'backbone only?)')
    if (any(k.startswith('text_backbone.') for k in ckpt_keys)
            and any(k.startswith('cls_head.text_encoder.') for k in model_keys)
            and not any(k.startswith('cls_head.text_encoder.') for k in ckpt_keys)):
        hints.append('the checkpoint\'s text tower (text_backbone.*, a retrieval checkpoint) '
                     'has other names than the text head\'s (cls_head.text_encoder.*): '
                     'tools/convert/stan_public_to_mm.py CKPT OUT --to recognition renames '
                     'it (docs/weights.md)')
    m_depth, c_depth = _branch_depth(model_keys), _branch_depth(ckpt_keys)
    if m_depth != c_depth and (m_depth or c_depth):
        hints.append(f'the checkpoint has a STAN branch of depth {c_depth or 0} and the model '
                     f'{m_depth or 0}: set model.backbone.depth={c_depth or 0} (and levels, '
                     f'if set) as in the config it was trained with')
    m_temporal, c_temporal = _temporal_module(model_keys), _temporal_module(ckpt_keys)
    if m_temporal and c_temporal and m_temporal != c_temporal:
        value = 'None' if c_temporal == 'none' else repr(c_temporal)
        hints.append(f'the checkpoint\'s branch has the cross-frame module {c_temporal!r} and '
                     f'the model {m_temporal!r}: set model.backbone.temporal_module={value} as '
                     f'in the config it was trained with')
    return hints + _shape_hints(shape)


def _grid(tokens: int) -> str:
    """``'14x14 patches'`` for a positional embedding of ``tokens`` rows (class token +
    a square grid), else ``'N positions'``."""
    side = int(round((tokens - 1) ** 0.5)) if tokens > 1 else 0
    return f'{side}x{side} patches' if side * side == tokens - 1 else f'{tokens} positions'


def _shape_hints(shape: Sequence[Tuple[str, tuple, tuple]]) -> List[str]:
    """Hints for the shape mismatches that name their cause: a CLIP positional embedding
    (image size / patch size, or the text context length) and the STAN temporal embedding
    (``max_frames``)."""
    hints: 'OrderedDict[str, str]' = OrderedDict()
    for key, c, m in shape:
        if not (c and m) or c[0] == m[0]:
            continue
        if key.endswith('positional_embedding') and 'visual' in key.split('.'):
            hints.setdefault('image', (
                f'{key}: the checkpoint was trained at another image size / patch size '
                f'({_grid(c[0])} per frame vs {_grid(m[0])} in the model; grid = '
                f'image_size / patch_size): use the CLIP arch it was trained with (e.g. '
                f'ViT-L/14@336px for 336x336 frames) and that frame size in the pipelines; '
                f'the image tower\'s positional embedding is not interpolated'))
        elif key.endswith('positional_embedding'):
            hints.setdefault('text', (
                f'{key}: the checkpoint\'s text tower has {c[0]} token positions and the '
                f'model\'s {m[0]}: it was trained with another CLIP text context length '
                f'(text_cfg.context_length of the arch); use the arch it was trained with'))
        elif key.endswith('time_embed.weight'):
            owner = key.split('.branch.')[0] if '.branch.' in key else 'backbone'
            hints.setdefault('frames', (
                f'{key}: the checkpoint\'s STAN temporal embedding has {c[0]} rows (one per '
                f'frame position) and the model\'s {m[0]}: max_frames differs; set '
                f'model.{owner}.max_frames={c[0]} as in the config it was trained with'))
    return list(hints.values())


#: CLIPSTAN options that change what the model computes but not the names or shapes of its
#: weights: a checkpoint loads strictly into a model built with other values (training-only
#: options such as drop_path_rate, and interpolate_time_embed, which a test may turn on for
#: more frames, are not among them)
SILENT_OPTIONS = ('structure', 'levels', 'multi_level', 'video_cls')


def _stan_nodes(node, path: str = 'model') -> Iterable[Tuple[str, Mapping]]:
    """``(config path, dict)`` of every ``type='CLIPSTAN'`` entry of a model config."""
    if isinstance(node, Mapping):
        if node.get('type') == 'CLIPSTAN':
            yield path, node
        for k, v in node.items():
            yield from _stan_nodes(v, f'{path}.{k}')


def effective_options(node: Mapping, num_blocks: int) -> Dict[str, object]:
    """The :data:`SILENT_OPTIONS` a CLIPSTAN config entry builds, as CLIPSTAN resolves them:
    defaults filled in, ``levels`` the CLIP blocks the branch reads (the last ``depth`` ones
    by default; only the first with ``multi_level=False``), and only the options that act:
    none without a branch (``depth=0``), ``levels`` and ``multi_level`` only for
    ``structure='branch'``."""
    import inspect
    from stan_mm.models.backbones import CLIPSTAN
    defaults = inspect.signature(CLIPSTAN.__init__).parameters

    def get(key):
        return node.get(key, defaults[key].default)
    depth = get('depth')
    if not depth:
        return {}
    out = dict(structure=get('structure'), video_cls=get('video_cls'))
    if out['structure'] == 'branch':
        levels = get('levels')
        levels = (list(levels) if levels is not None
                  else list(range(num_blocks - depth + 1, num_blocks + 1)))
        out.update(multi_level=bool(get('multi_level')),
                   levels=levels if get('multi_level') else levels[:1])
    return out


class _NotLiteral(ValueError):
    pass


def _literal(node):
    """The value of an expression made only of literals, ``dict(...)`` calls with keyword
    arguments, lists, tuples and dicts (what mmengine's ``pretty_text`` writes), else
    :class:`_NotLiteral`. Nothing is executed."""
    import ast
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
            node.func.id == 'dict' and len(node.args) <= 1 and \
            all(k.arg is not None for k in node.keywords):
        # dict(key=...) and dict({'not-an-identifier': ...}), as pretty_text writes them
        out = _literal(node.args[0]) if node.args else {}
        if not isinstance(out, dict):
            raise _NotLiteral('dict of a non-dict')
        out.update({k.arg: _literal(k.value) for k in node.keywords})
        return out
    if isinstance(node, ast.Name) and node.id in ('inf', 'nan'):   # float('inf') printed
        return float(node.id)
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, (ast.List, ast.Tuple)):
        values = [_literal(v) for v in node.elts]
        return values if isinstance(node, ast.List) else tuple(values)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _literal(node.operand)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value
    if isinstance(node, ast.Constant):
        return node.value
    raise _NotLiteral(type(node).__name__)


def _saved_config_values(checkpoint: Mapping, names: Sequence[str]) -> Dict[str, object]:
    """The values of the top-level assignments ``names`` of the training config that
    mmengine stores in a checkpoint's ``meta['cfg']`` (the config as Python text), each
    from its first assignment; a name missing, or assigned something else than a plain
    literal (:func:`_literal`), is left out. The text is parsed, never executed: a
    checkpoint could hold any code there."""
    import ast
    text = (checkpoint.get('meta') or {}).get('cfg') if isinstance(checkpoint, Mapping) \
        else None
    if not isinstance(text, str):
        return {}
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return {}
    out, seen = {}, set()
    for stmt in tree.body:
        if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name) and stmt.targets[0].id in names
                and stmt.targets[0].id not in seen):
            seen.add(stmt.targets[0].id)
            try:
                out[stmt.targets[0].id] = _literal(stmt.value)
            except (_NotLiteral, RecursionError):
                pass
    return out


def saved_model_config(checkpoint: Mapping) -> Optional[Mapping]:
    """The ``model`` entry of the training config that mmengine stores in a checkpoint's
    ``meta['cfg']`` (the config as Python text), or None (no config stored, or its ``model``
    is not a plain literal). The text is parsed, never executed: a checkpoint could hold any
    code there."""
    model = _saved_config_values(checkpoint, ('model', )).get('model')
    return model if isinstance(model, dict) else None


def _pipeline_sampler(pipeline, path: str) -> Optional[Tuple[str, int]]:
    """``('<path>.<i>.clip_len', clip_len)`` of a pipeline's frame sampler: its first step
    with a ``clip_len`` (``UniformSample``, ``SampleFrames``, ``SymmetricSample``, ...),
    when that is a whole number >= 1; else None."""
    if not isinstance(pipeline, (list, tuple)):
        return None
    for i, step in enumerate(pipeline):
        if isinstance(step, Mapping) and 'clip_len' in step:
            n = step['clip_len']
            ok = isinstance(n, int) and not isinstance(n, bool) and n >= 1
            return (f'{path}.{i}.clip_len', n) if ok else None
    return None


def frame_sampler(config: Mapping, loader: str = 'test_dataloader'
                  ) -> Optional[Tuple[str, int]]:
    """``(option, clip_len)`` of the frame sampler of ``config[loader]``'s dataset pipeline
    (through dataset wrappers: ``dataset.dataset...``), e.g.
    ``('test_dataloader.dataset.pipeline.1.clip_len', 8)``: the frames of one clip, what
    the model sees as T; None without one."""
    node = config.get(loader) if hasattr(config, 'get') else None   # (a Config is no Mapping)
    if not isinstance(node, Mapping):
        return None
    path, ds = f'{loader}.dataset', node.get('dataset')
    while (isinstance(ds, Mapping) and 'pipeline' not in ds
           and isinstance(ds.get('dataset'), Mapping)):
        path, ds = f'{path}.dataset', ds['dataset']
    if not isinstance(ds, Mapping):
        return None
    return _pipeline_sampler(ds.get('pipeline'), f'{path}.pipeline')


def trained_frames(checkpoint: Mapping) -> Optional[int]:
    """The frames per clip the checkpoint was trained on: the ``clip_len`` of the frame
    sampler of the training config stored in ``meta['cfg']`` (``train_dataloader``'s
    dataset pipeline, else the ``train_pipeline`` variable); None when the config is
    missing, unreadable or has no such sampler. Parsed, never executed."""
    values = _saved_config_values(checkpoint, ('train_dataloader', 'train_pipeline'))
    found = (frame_sampler(values, 'train_dataloader')
             or _pipeline_sampler(values.get('train_pipeline'), 'train_pipeline'))
    return found[1] if found else None


def untrained_frames_warning(model: torch.nn.Module, checkpoint: Mapping,
                             config: Optional[Mapping], name: str = 'checkpoint'
                             ) -> Optional[str]:
    """A warning when ``config``'s test pipeline samples more frames per clip than the
    checkpoint was trained on (:func:`trained_frames`) and ``model`` has a STAN branch
    with a temporal embedding: its table is indexed by frame position, so the rows beyond
    the trained count were never trained (they keep their random init), also when
    ``interpolate_time_embed`` stretches the whole table over more than ``max_frames``
    frames. None otherwise, and silent without a readable stored config."""
    from mmengine.model import is_model_wrapper
    from stan_mm.models.backbones.stan_branch import BranchEmbedding
    if config is None:
        return None
    if is_model_wrapper(model):
        model = model.module
    tested = frame_sampler(config, 'test_dataloader')
    embeds = [(n, m) for n, m in model.named_modules() if isinstance(m, BranchEmbedding)]
    if tested is None or not embeds:
        return None
    trained = trained_frames(_as_checkpoint(checkpoint))
    option, frames = tested
    module, embed = embeds[0]
    if trained is None or frames <= trained or trained >= embed.max_frames:
        return None     # (trained on max_frames or more: every row was trained)
    table = f'{module}.time_embed' if module else 'time_embed'
    if frames > embed.max_frames and embed.interpolate_time_embed:
        rows = (f'the STAN temporal embedding ({table}, one row per frame position) is '
                f'interpolated from all its max_frames={embed.max_frames} rows '
                f'(interpolate_time_embed=True), of which only the first {trained} were '
                f'trained')
    else:
        rows = (f'rows {trained + 1}-{frames} of the STAN temporal embedding ({table}, one '
                f'row per frame position) were never trained and keep their random init')
    return (f'checkpoint {name} was trained on {trained}-frame clips (the train pipeline '
            f'of its stored config) but this config tests {frames} frames ({option}={frames}'
            f'): {rows}, so the scores are not those of the trained model. Test at the '
            f'trained count (--cfg-options {option}={trained}), or train at {frames} '
            f'frames')


def silent_option_mismatches(model: torch.nn.Module, model_cfg: Mapping,
                             saved: Optional[Mapping]) -> List[str]:
    """``'<path>.<option>: checkpoint <v> vs config <w>'`` for each :data:`SILENT_OPTIONS`
    value that acts (:func:`effective_options`) and differs between a CLIPSTAN of
    ``saved``, the training config's model stored in the checkpoint
    (:func:`saved_model_config`), and the same entry of ``model_cfg``; empty without a
    stored config. Meant for a checkpoint whose weights fit ``model`` (another ``depth`` is
    a difference of weights, reported as such)."""
    if saved is None:
        return []
    model_cfg = model_cfg.to_dict() if hasattr(model_cfg, 'to_dict') else model_cfg
    saved_nodes = dict(_stan_nodes(saved))
    out = []
    for path, node in _stan_nodes(model_cfg):
        module = model.get_submodule(path[len('model.'):]) if path != 'model' else model
        if path not in saved_nodes or not hasattr(module, 'visual'):
            continue
        blocks = module.num_layers
        old, new = (effective_options(n, blocks) for n in (saved_nodes[path], node))
        if old.get('structure') != new.get('structure'):
            keys = ['structure']          # the other options mean other things then
        else:
            keys = [k for k in SILENT_OPTIONS if k in old or k in new]
            if old.get('multi_level') != new.get('multi_level'):
                keys.remove('levels')     # the levels read follow from multi_level
        out += [f'{path}.{k}: checkpoint {old.get(k)!r} vs config {new.get(k)!r}'
                for k in keys if old.get(k) != new.get(k)]
    return out


def prompt_differences(model_cfg: Mapping, checkpoint: Mapping) -> List[str]:
    """``'<path>.templates: checkpoint [...] vs config [...]'`` where a text-classifier head
    (``TextClassifierHead``) of ``model_cfg`` encodes its classes with other prompt
    templates than the training config stored in the checkpoint (the class embeddings are
    computed from the templates, not stored); empty without a readable stored config."""
    return _prompt_differences(model_cfg, saved_model_config(checkpoint))


def _prompt_differences(model_cfg: Mapping, saved: Optional[Mapping]) -> List[str]:
    """:func:`prompt_differences` against ``saved``, the stored training config's model."""
    import inspect
    from stan_mm.models.heads.text_classifier_head import TextClassifierHead
    if saved is None or model_cfg is None:
        return []
    model_cfg = model_cfg.to_dict() if hasattr(model_cfg, 'to_dict') else model_cfg
    default = inspect.signature(TextClassifierHead).parameters['templates'].default

    def templates(head) -> Optional[List[str]]:
        kind = head.get('type') if isinstance(head, Mapping) else None
        name = getattr(kind, '__name__', str(kind)).rsplit('.', 1)[-1]   # 'mmaction.X'
        if name != 'TextClassifierHead':
            return None
        value = head.get('templates', default)
        return [value] if isinstance(value, str) else list(value)
    old, new = templates(saved.get('cls_head')), templates(model_cfg.get('cls_head'))
    if old is None or new is None or old == new:
        return []
    return [f'model.cls_head.templates: checkpoint {old!r} vs config {new!r}']


def check_checkpoint_fits(model: torch.nn.Module, checkpoint, *,
                          allow_missing: Sequence[str] = (),
                          allow_unexpected: Sequence[str] = (),
                          revise_keys: Sequence[Tuple[str, str]] = _DEFAULT_REVISE,
                          name: Optional[str] = None,
                          model_cfg: Optional[Mapping] = None,
                          config: Optional[Mapping] = None) -> None:
    """Raise :class:`CheckpointMismatchError` unless every model weight is in the checkpoint
    with the right shape and the checkpoint holds nothing else; with ``model_cfg``, also
    when the checkpoint's stored training config built its CLIPSTAN with other
    :data:`SILENT_OPTIONS` (same weights, another computation).

    Args:
        model: the model (a DDP/mmengine wrapper is unwrapped).
        checkpoint: a checkpoint path or a loaded checkpoint dict.
        allow_missing / allow_unexpected: regexes (``re.search``) of keys that may be
            missing from / extra in the checkpoint.
        revise_keys: key rewrites applied to the checkpoint first (mmengine's default
            strips ``module.``).
        name: how to call the checkpoint in the message (default: the path).
        model_cfg: the ``model`` entry of the config the model was built from.
        config: the whole config it is tested with: its test pipeline's frame count is
            compared with the training config's (:func:`untrained_frames_warning`; a
            WARNING is logged, nothing raised).
    """
    from mmengine.model import is_model_wrapper
    if is_model_wrapper(model):
        model = model.module
    name = name or (str(checkpoint) if not isinstance(checkpoint, Mapping) else 'checkpoint')
    checkpoint = _as_checkpoint(checkpoint)
    model_state = model.state_dict()
    ckpt_state = checkpoint_state_dict(checkpoint, revise_keys)
    diff = compare_state_dicts(model_state, ckpt_state)
    missing = [k for k in diff['missing']
               if not any(re.search(p, k) for p in allow_missing)]
    unexpected = [k for k in diff['unexpected']
                  if not any(re.search(p, k) for p in allow_unexpected)]
    shape = diff['shape']
    if not (missing or unexpected or shape):
        saved = saved_model_config(checkpoint) if model_cfg is not None else None
        options = silent_option_mismatches(model, model_cfg, saved) if saved else []
        if options:
            raise CheckpointMismatchError(
                f'checkpoint {name} was trained with other CLIPSTAN options than this config '
                f'builds (its weights fit, but the model would compute something else): '
                + '; '.join(options) + '. Test with the config the checkpoint was trained '
                'with, or set these options to the checkpoint\'s values (--cfg-options)')
        prompts = _prompt_differences(model_cfg, saved)
        if prompts:
            import logging
            from mmengine.logging import print_log
            print_log(f'checkpoint {name}: the text head encodes the class names with other '
                      f'prompt templates than it was trained with ({"; ".join(prompts)}); '
                      f'the scores differ from the trained model\'s. To test it as trained: '
                      f'--cfg-options "{prompts[0].split(":")[0]}=<the checkpoint\'s list>"'
                      f' (a zero-shot test with other prompts may mean it)',
                      logger='current', level=logging.WARNING)
        ema = ema_checkpoint_note(checkpoint, f'checkpoint {name}', 'is what is loaded here')
        if ema:
            from mmengine.logging import print_log
            print_log(ema, logger='current')
        frames = untrained_frames_warning(model, checkpoint, config, name)
        if frames:
            import logging
            from mmengine.logging import print_log
            print_log(frames, logger='current', level=logging.WARNING)
        return
    lines = [f'checkpoint {name} does not fit {type(model).__name__} '
             f'({len(model_state)} model keys, {len(ckpt_state)} checkpoint keys):']
    lines += _difference_lines(model_state, ckpt_state, missing, unexpected, shape)
    lines.append('  Use the config the checkpoint was trained with (or fix the model '
                 'settings above).')
    raise CheckpointMismatchError('\n'.join(lines))


def _difference_lines(model_state, ckpt_state, missing, unexpected, shape,
                      kept: str = 'they would keep their random init') -> List[str]:
    """The lines of a mismatch message: missing / unexpected keys grouped by module, the
    shape mismatches with both shapes, and the hints (:func:`_hints`). ``kept``: what
    becomes of the missing weights."""
    lines = []
    if missing:
        lines.append(f'  {len(missing)} model weights are missing from the checkpoint ({kept}'
                     f'): {_grouped(missing)}')
    if unexpected:
        lines.append(f'  {len(unexpected)} checkpoint weights have no place in the model: '
                     f'{_grouped(unexpected)}')
    if shape:
        listed = '; '.join(f'{k}: checkpoint {list(c)} vs model {list(m)}'
                           for k, c, m in shape[:_MAX_GROUPS])
        more = len(shape) - _MAX_GROUPS
        lines.append(f'  {len(shape)} shape mismatches: {listed}'
                     + (f'; ... and {more} more' if more > 0 else ''))
    lines += [f'  hint: {h}' for h in _hints(list(model_state), list(ckpt_state), shape)]
    return lines


def _is_classifier(key: str) -> bool:
    """A weight of a classification head's own layers (``cls_head.fc_cls.*``), whose shape
    follows the number of classes; not the CLIP text tower of a text-classifier head."""
    return key.startswith('cls_head.') and not key.startswith('cls_head.text_encoder.')


def check_training_start(model: torch.nn.Module, checkpoint, *, name: str,
                         resume: bool = False, partial: bool = False) -> Optional[str]:
    """Check the checkpoint a training run starts from (``load_from``) or resumes from
    (``--resume``) against the model, before mmengine loads it: mmengine loads non-strictly,
    prints what did not fit on the console only (not in the run's log file) and trains on,
    with the weights that did not fit left at their initialization.

    - resume: the checkpoint must fit exactly (a resumed run continues the same model; the
      optimizer state of another model fails later with a bare tensor-size error);
    - ``load_from``: refused (:class:`CheckpointMismatchError`, listing the differences and
      the fixes) when nothing of the model would come from the checkpoint, when a weight
      outside the classification layer has another shape (another CLIP scale, image size,
      ``max_frames``), or when the STAN branch has another depth or cross-frame module
      (the weights that fit would land on other CLIP levels / modules). ``partial=True``
      (``tools/train.py --partial-load``) accepts these too. Other differences, such as a
      classification layer for another number of classes or a tower the checkpoint lacks,
      are returned as a warning message that names them (None when the checkpoint fits).
    """
    from mmengine.model import is_model_wrapper
    if is_model_wrapper(model):
        model = model.module
    checkpoint = _as_checkpoint(checkpoint)
    model_state = model.state_dict()
    ckpt_state = checkpoint_state_dict(checkpoint)
    diff = compare_state_dicts(model_state, ckpt_state)
    missing = [k for k in diff['missing'] if 'num_batches_tracked' not in k]
    unexpected, shape = diff['unexpected'], diff['shape']
    if not (missing or unexpected or shape):
        return None
    model_keys, ckpt_keys = list(model_state), list(ckpt_state)
    kind = 'resume from' if resume else 'load_from'
    header = (f'{kind} {name} does not fit {type(model).__name__} ({len(model_keys)} model '
              f'keys, {len(ckpt_keys)} checkpoint keys):')
    kept = ('they keep their initialization: CLIP\'s from pretrained= where it sets them, '
            'else random')
    if resume:
        lines = [header] + _difference_lines(model_state, ckpt_state, missing, unexpected,
                                             shape, kept)
        lines.append('  A resumed run continues the model of its checkpoint: resume with the '
                     'config it was trained with. For a model with other settings start a new '
                     f'run from its weights (--cfg-options load_from={name} without --resume)')
        raise CheckpointMismatchError('\n'.join(lines))
    reasons = []
    if not set(model_keys) & set(ckpt_keys):
        reasons.append('no weight of the model is in the checkpoint')
    wrong_shape = [k for k, _, _ in shape if not _is_classifier(k)]
    if wrong_shape:
        reasons.append(f'{len(wrong_shape)} weights outside the classification layer have '
                       f'another shape ({", ".join(wrong_shape[:3])}'
                       f'{", ..." if len(wrong_shape) > 3 else ""})')
    m_depth, c_depth = _branch_depth(model_keys), _branch_depth(ckpt_keys)
    if m_depth and c_depth and m_depth != c_depth:
        reasons.append(f'the STAN branch has depth {c_depth} in the checkpoint and '
                       f'{m_depth} in the model (branch layer k reads CLIP block L-K+k: the '
                       f'loaded layers would read other CLIP levels)')
    m_temporal, c_temporal = _temporal_module(model_keys), _temporal_module(ckpt_keys)
    if m_temporal and c_temporal and m_temporal != c_temporal:
        reasons.append(f'the STAN branch\'s cross-frame module is {c_temporal!r} in the '
                       f'checkpoint and {m_temporal!r} in the model')
    lines = _difference_lines(model_state, ckpt_state, missing, unexpected, shape, kept)
    if reasons and not partial:
        raise CheckpointMismatchError('\n'.join(
            [header] + lines + [f'  refused: {"; ".join(reasons)}. Use a config with the '
                                f'checkpoint\'s settings (the hints above), or, to start '
                                f'from the weights that fit on purpose, pass --partial-load '
                                f'to tools/train.py']))
    head = [(c[0], m[0]) for k, c, m in shape if _is_classifier(k) and c and m]
    notes = []
    if head:
        notes.append(f'  the classification layer is for {head[0][0]} classes in the '
                     f'checkpoint and {head[0][1]} in the model: it starts from its '
                     f'initialization, as expected when fine-tuning on another class list')
    return '\n'.join([f'load_from {name} fits the model only in part; the other weights '
                       f'are trained from their initialization:'] + lines + notes)
