"""Build a trained model from a config and a checkpoint, for inference outside the runner.

:func:`init_model` is what ``tools/extract_features.py``, ``tools/demo/search.py`` and
``tools/demo/recognize.py`` share::

    model = init_model('configs/stan/msrvtt_self_b32.py', 'work_dirs/.../epoch_10.pth')
    model.cfg            # the merged config (cfg-options applied)
    model_kind(model)    # 'retriever' or 'recognizer'

CLIP ``pretrained`` paths in the config: a trained checkpoint holds every weight, so the
CLIP file the config names (``checkpoints/clip/ViT-B-16.pt``) is not needed. When that file
is missing and the config states the architecture (``arch``), ``pretrained`` is dropped
(logged). Two things the weights file decided at training time must then come from the
config: the architecture (``arch=None`` means "infer it from pretrained": an error names
the option to set) and the activation, when the arch does not state it (``'ViT-B-16'`` or a
dict without ``quick_gelu``: build_clip then took the activation from the weights file; a
warning names ``quick_gelu``). Keep the file in place, or pass ``arch='ViT-B/16'``-style
names (OpenAI spelling: QuickGELU) to avoid both.
"""
import logging
import os
import os.path as osp
from typing import Dict, List, Optional, Tuple, Union

import torch
from mmengine.config import Config
from mmengine.logging import print_log
from torch import nn

#: model types whose CLIP ``arch``/``pretrained`` arguments :func:`init_model` knows
CLIP_OWNERS = {'CLIPSTAN': 'ViT-B-16', 'CLIPTextEncoder': None, 'STANRetriever': None}


class ModelLoadError(RuntimeError):
    """The config and the checkpoint do not give a usable model (message says why)."""


def load_config(config: Union[str, Config], cfg_options: Optional[dict] = None) -> Config:
    """Config from a path (``~`` expanded; a symbolic link to a config is read where it
    points when its ``_base_`` files are not next to the link:
    :func:`stan_mm.utils.cli.read_config`) or a Config (copied), with ``cfg_options``
    merged."""
    if isinstance(config, Config):
        cfg = Config(config.to_dict(), filename=config.filename)
    else:
        from stan_mm.utils.cli import read_config
        config = osp.expanduser(config)
        if not osp.isfile(config):
            raise FileNotFoundError(f'config file not found: {config}')
        cfg = read_config(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if 'model' not in cfg:
        raise ModelLoadError(f'{cfg.filename}: the config has no "model" entry')
    return cfg


def _arch_states_activation(arch) -> bool:
    from stan_mm.models.clip.arch import arch_name_quick_gelu
    if isinstance(arch, str):
        return arch_name_quick_gelu(arch) is not None
    if isinstance(arch, dict):
        return 'quick_gelu' in arch
    return False


def _clip_nodes(node, path: str = 'model') -> List[Tuple[str, dict]]:
    """Every config dict of a type in :data:`CLIP_OWNERS`, with its dotted path."""
    found = []
    if isinstance(node, dict):
        if node.get('type') in CLIP_OWNERS:
            found.append((path, node))
        for key, value in node.items():
            found += _clip_nodes(value, f'{path}.{key}')
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            found += _clip_nodes(value, f'{path}.{i}')
    return found


def drop_missing_clip_weights(model_cfg: dict, guessed: Optional[List[str]] = None
                              ) -> List[str]:
    """Set ``pretrained=None`` where the CLIP weights file the config names is missing (a
    trained checkpoint holds every weight). Returns what was changed, as readable lines;
    ``guessed`` (a list) receives the config paths whose activation was then assumed
    (GELU: the arch name does not state it and the file that would have is missing).

    Raises:
        ModelLoadError: the architecture would have been inferred from the missing file.
    """
    changed = []
    for path, node in _clip_nodes(model_cfg):
        pretrained = node.get('pretrained')
        if pretrained is None or osp.exists(str(pretrained)):
            continue
        arch = node.get('arch', CLIP_OWNERS[node['type']])
        if arch is None:
            raise ModelLoadError(
                f'{path}.pretrained = {pretrained!r} does not exist, and {path}.arch is None '
                f'(the architecture was to be inferred from that file). Put the CLIP weights '
                f'there, or give the architecture: --cfg-options {path}.arch=ViT-B/16 (or the '
                f'open_clip name the model was trained with)')
        node['pretrained'] = None
        line = f'{path}.pretrained: {pretrained!r} is missing; built with arch={arch!r} ' \
               f'and filled from the checkpoint'
        if not _arch_states_activation(arch) and node.get('quick_gelu') is None:
            if guessed is not None:
                guessed.append(path)
            line += (f'. The activation is GELU (open_clip\'s meaning of {arch!r}); if the '
                     f'model was trained from OpenAI weights (QuickGELU) add --cfg-options '
                     f'{path}.quick_gelu=True')
            print_log(line, logger='current', level=logging.WARNING)
        else:
            print_log(line, logger='current')
        changed.append(line)
    return changed


def _read_checkpoint(checkpoint: str) -> Tuple[Dict[str, torch.Tensor], Optional[dict],
                                                Optional[dict]]:
    """The model weights of an mmengine checkpoint (``{'state_dict': ...}``) or of a plain
    state dict file, ``module.`` prefixes (DDP) removed, the checkpoint's ``meta`` (None if
    it has none) and its ``ema_state_dict`` (None if it has none: a checkpoint saved by
    ``EMAHook`` holds the averaged weights in ``state_dict``, which are the ones returned).
    Loaded weights-only."""
    from stan_mm.compat import safe_torch_load
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint file not found: {checkpoint}')
    obj = safe_torch_load(checkpoint, map_location='cpu')
    meta = obj.get('meta') if isinstance(obj, dict) else None
    sd = obj.get('state_dict', obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not any(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelLoadError(f'{checkpoint} holds no state dict of tensors (expected an '
                             f'mmengine checkpoint {{"state_dict": ...}} written by '
                             f'tools/train.py)')
    sd = {(k[7:] if k.startswith('module.') else k): v for k, v in sd.items()
          if isinstance(v, torch.Tensor)}
    ema = obj.get('ema_state_dict') if isinstance(obj, dict) else None
    return (sd, meta if isinstance(meta, dict) else None,
            ema if isinstance(ema, dict) else None)


def load_weights(model: nn.Module, checkpoint: str, allow_missing: bool = False,
                 model_cfg: Optional[dict] = None, config: Optional[Config] = None) -> None:
    """Load ``checkpoint`` into ``model`` after checking that it fits (every model weight
    present with its shape, nothing extra; with ``model_cfg``, the config ``model`` was
    built from, also the CLIPSTAN options that leave the weights alone; with ``config``,
    the whole config, a warning when its test pipeline samples more frames than the
    checkpoint was trained on: :func:`stan_mm.utils.checkpoint_check.
    check_checkpoint_fits`, the check of ``tools/test.py``).
    ``allow_missing`` tolerates missing weights (they keep their initial values). The
    checkpoint's ``meta`` (None without one) is kept as ``model.checkpoint_meta``. Of a
    checkpoint saved by ``EMAHook`` the averaged weights (its ``state_dict``) are loaded,
    and a line of the log says so."""
    from stan_mm.utils.checkpoint_check import (CheckpointMismatchError,
                                                check_checkpoint_fits)
    sd, meta, ema = _read_checkpoint(checkpoint)
    read = {'state_dict': sd, 'meta': meta}
    if ema is not None:       # an EMAHook checkpoint: the check says which weights load
        read['ema_state_dict'] = ema
    try:
        check_checkpoint_fits(model, read, name=checkpoint,
                              allow_missing=('.', ) if allow_missing else (),
                              model_cfg=model_cfg, config=config)
    except CheckpointMismatchError as e:
        raise ModelLoadError(str(e)) from e
    result = model.load_state_dict(sd, strict=False)
    # the training config mmengine stored (read by e.g. extract_features --amp auto)
    model.checkpoint_meta = meta
    print_log(loaded_line(checkpoint, meta, len(sd)), logger='current')
    if result.missing_keys:
        print_log(f'{checkpoint}: {len(result.missing_keys)} model weights keep their '
                  f'initial values', logger='current', level=logging.WARNING)


def loaded_line(checkpoint: str, meta: Optional[dict], tensors: int) -> str:
    """``loaded CKPT (epoch 3, iter 120; 212 tensors)``: which checkpoint the inference
    tools use (the model's build lines say only ``random init``, before the weights are
    filled in), with what its ``meta`` records of the training step."""
    meta = meta or {}
    step = ', '.join(f'{key} {meta[key]}' for key in ('epoch', 'iter')
                     if isinstance(meta.get(key), int) and not isinstance(meta[key], bool))
    return f'loaded {checkpoint} ({step + "; " if step else ""}{tensors} tensors)'


def _has_towers(obj) -> bool:
    """A retrieval model (or its class): video and text towers."""
    return hasattr(obj, 'encode_video') and hasattr(obj, 'encode_text')


def config_model_kind(cfg) -> str:
    """``'retriever'`` when the class of ``cfg.model`` has video and text towers, else
    ``'recognizer'`` (without building the model)."""
    from mmaction.registry import MODELS
    model = cfg.get('model')
    cls = MODELS.get(model.get('type')) if isinstance(model, dict) else None
    return 'retriever' if cls is not None and _has_towers(cls) else 'recognizer'


def model_kind(model: nn.Module) -> str:
    """``'retriever'`` (video + text towers: ``encode_video``/``encode_text``) or
    ``'recognizer'`` (an MMAction2 recognizer: ``backbone`` + ``cls_head``)."""
    if _has_towers(model):
        return 'retriever'
    if hasattr(model, 'backbone') and hasattr(model, 'cls_head') and \
            hasattr(model, 'extract_feat'):
        return 'recognizer'
    raise ModelLoadError(f'{type(model).__name__} is neither a retrieval model (encode_video '
                         f'+ encode_text, e.g. STANRetriever) nor an MMAction2 recognizer '
                         f'(backbone + cls_head)')


def placeholder_classnames(model_cfg: dict) -> Optional[str]:
    """When a text-classifier head names a class-names file that does not exist, give it a
    one-class placeholder list (for uses that do not score classes: embeddings, search).
    Returns the missing path, or None."""
    head = model_cfg.get('cls_head') or {}
    names = head.get('classnames')
    if head.get('type') == 'TextClassifierHead' and isinstance(names, str) and \
            not osp.isfile(names):
        head['classnames'] = ['placeholder']
        head.pop('num_classes', None)
        return names
    return None


def check_device(device: str) -> torch.device:
    """``device`` as a ``torch.device``; ``ValueError`` for a name torch does not know or a
    CUDA device this machine does not have (before any model is built)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f'--device {device!r}: not a device name ({e}); use cpu, cuda or '
                         f'cuda:N') from None
    if dev.type == 'cuda':
        if not torch.cuda.is_available():
            raise ValueError(f'--device {device!r}: CUDA is not available on this machine '
                             f'(no usable CUDA device); use --device cpu')
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f'--device {device!r}: only {torch.cuda.device_count()} CUDA '
                             f'device(s) here')
    return dev


def init_model(config: Union[str, Config], checkpoint: Optional[str] = None,
               device: str = 'cpu', cfg_options: Optional[dict] = None,
               allow_missing: bool = False, need_classnames: bool = True) -> nn.Module:
    """Build ``config``'s model, load ``checkpoint``, move it to ``device``, eval mode.

    Args:
        config: config path or ``Config``.
        checkpoint: mmengine checkpoint written by ``tools/train.py`` (or a converted public
            STAN checkpoint); ``None`` keeps the initial weights (tests, debugging).
        device: ``'cpu'``, ``'cuda'``, ``'cuda:1'``...
        cfg_options: overrides as ``--cfg-options`` gives them.
        allow_missing: warn instead of failing when the checkpoint lacks weights.
        need_classnames: ``False`` lets a text-classifier head whose class-names file is
            missing be built with a placeholder class (the text tower is all that is used).

    Returns:
        the model, with the merged config in ``model.cfg`` (as given: the adjustments made
        for building, missing CLIP files and class lists, are not written back).
    """
    import copy
    from mmaction.registry import MODELS
    from mmengine.registry import init_default_scope
    check_device(device)
    cfg = load_config(config, cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmaction'))
    model_cfg = copy.deepcopy(cfg.model)
    if checkpoint is not None:
        if not osp.isfile(checkpoint):
            raise FileNotFoundError(f'checkpoint file not found: {checkpoint}')
        guessed: List[str] = []
        drop_missing_clip_weights(model_cfg, guessed)
    if not need_classnames:
        missing = placeholder_classnames(model_cfg)
        if missing:
            print_log(f'class names file {missing!r} is missing; not needed here (the head\'s '
                      f'text tower is used, not its classes)', logger='current')
    model = MODELS.build(model_cfg)
    if checkpoint is not None:
        load_weights(model, checkpoint, allow_missing, model_cfg=model_cfg, config=cfg)
    model.cfg = cfg
    # a model built differently from what the config means (cache keys must differ:
    # apis.features.model_key); None when it is the config's model
    model.build_note = (f'activation assumed GELU for {guessed} (CLIP weights file missing)'
                        if checkpoint is not None and guessed else None)
    model_kind(model)
    return model.to(device).eval()


def checkpoint_fingerprint(checkpoint: Optional[str]) -> str:
    """``abs path|size|mtime_ns`` of a checkpoint (changes when the file is rewritten)."""
    if checkpoint is None:
        return 'none'
    st = os.stat(checkpoint)
    return f'{osp.abspath(checkpoint)}|{st.st_size}|{st.st_mtime_ns}'
