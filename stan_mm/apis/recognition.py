"""Recognize one video: class scores of a recognizer, or zero-shot over a class list.

- Recognizer (``Recognizer3D`` + any head): ``model.test_step`` on the video preprocessed by
  the config's test pipeline (``views`` = ``'CLIPSxCROPS'`` overrides its views), i.e. the
  ``pred_score`` of ``tools/test.py``: with ``average_clips='prob'`` the mean over views of
  the per-view softmax. A text-classifier head scores the class list it was built with:
  :func:`apply_classnames` puts a user list into the config before the model is built
  (zero-shot: class names are not stored in checkpoints).
- Retrieval model (``STANRetriever``): zero-shot over ``classnames``: prompts
  (``templates``) through the text tower, prompt-ensembled as
  :class:`~stan_mm.models.heads.TextClassifierHead` does, logits = cosine x the model's logit
  scale, softmax over the classes.
"""
import os.path as osp
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmengine.dataset import pseudo_collate

from .inference import model_kind

DEFAULT_TEMPLATES = ('a video of {}.', )


def parse_classnames(value: Union[str, Sequence[str]]) -> List[str]:
    """``--classnames``: a ``classnames.txt`` file (one name per line) or a comma-separated
    list (``"walking,running,jumping"``) -> validated list of names."""
    from stan_mm.models.heads import load_classnames
    if not isinstance(value, str):
        return load_classnames(list(value))
    if osp.isdir(value):
        raise ValueError(f'--classnames {value!r} is a folder; give the class names file (one '
                         f'name per line), or names separated by commas')
    if osp.isfile(value):
        return load_classnames(value)
    if ',' not in value and value.endswith('.txt'):
        raise FileNotFoundError(f'class names file not found: {value!r} (give a file with '
                                f'one class name per line, or names separated by commas)')
    names = [n.strip() for n in value.split(',')]
    empty = next((i + 1 for i, n in enumerate(names) if not n), None)
    if empty and len(names) > 1:
        raise ValueError(f'class list {value!r}: name {empty} of {len(names)} is empty (two '
                         f'commas in a row, or a comma at an end); the labels follow the '
                         f'order of the names, so every name must be there')
    return load_classnames(names)


def head_type(cfg) -> Optional[str]:
    head = cfg.model.get('cls_head')
    return head.get('type') if head else None


def apply_classnames(cfg, names: List[str]) -> None:
    """Give a recognition config's text-classifier head the class list ``names`` (in
    place; ``num_classes`` follows). Other configs are left alone."""
    if head_type(cfg) == 'TextClassifierHead':
        cfg.model.cls_head.classnames = list(names)
        cfg.model.cls_head.pop('num_classes', None)


def missing_classnames_file(cfg) -> Optional[str]:
    """The class-names file a text head's config names when that file is missing."""
    if head_type(cfg) != 'TextClassifierHead':
        return None
    names = cfg.model.cls_head.get('classnames')
    return names if isinstance(names, str) and not osp.isfile(names) else None


def class_labels(model, classnames: Optional[List[str]]) -> List[str]:
    """Names of the model's output classes, in label order."""
    if model_kind(model) == 'retriever':
        if not classnames:
            raise ValueError('a retrieval model scores a class list: give --classnames')
        return list(classnames)
    head = model.cls_head
    own = getattr(head, 'classnames', None)
    if own:
        return list(own)
    n = int(head.num_classes)
    if classnames is None:
        return [f'class {i}' for i in range(n)]
    if len(classnames) != n:
        raise ValueError(f'{type(head).__name__} has {n} classes but {len(classnames)} class '
                         f'names were given; a linear head cannot score other classes '
                         f'(zero-shot needs a text-classifier head or a retrieval model)')
    return list(classnames)


@torch.no_grad()
def recognize(model, video: str, views: Optional[str] = None,
              classnames: Optional[List[str]] = None,
              templates: Sequence[str] = DEFAULT_TEMPLATES) -> Tuple[List[str], np.ndarray]:
    """``video`` -> (class names, scores ``[C]`` float64 summing to 1); see the module
    docstring. Raises ``VideoReadError`` naming the file when it cannot be read, and
    ``ValueError`` when ``video`` is a folder (the reader would look for ``<folder>.mp4``)."""
    from .video import VideoPipeline, check_views
    if isinstance(video, str) and osp.isdir(video):
        raise ValueError(f'{video!r} is a folder; give the video file')
    check_views(model_kind(model), views)
    names = class_labels(model, classnames)
    sample = VideoPipeline(model.cfg, views)(video)
    if model_kind(model) == 'recognizer':
        pred = model.test_step(pseudo_collate([sample]))[0]
        scores = pred.pred_score.detach().float().cpu().numpy().astype(np.float64)
        return names, scores
    from stan_mm.models.heads import TextClassifierHead
    from .embed import embed_video_batch, text_tower
    _, length = text_tower(model)
    scale = float(model.get_logit_scale())
    tower = model.text_backbone
    # the head freezes a text tower it is given: restore the caller's model afterwards
    trainable = [p.requires_grad for p in tower.parameters()]
    modes = [m.training for m in tower.modules()]
    try:
        head = TextClassifierHead(classnames=names, in_channels=int(model.embed_dim),
                                  text_encoder=tower, templates=list(templates),
                                  context_length=length, temperature=1.0 / scale)
        video_emb = embed_video_batch(model, [sample]).to(next(model.parameters()).device)
        logits = head(video_emb)[0]                                      # [C]
    finally:
        for p, flag in zip(tower.parameters(), trainable):
            p.requires_grad_(flag)
        for m, mode in zip(tower.modules(), modes):
            m.training = mode
    return names, torch.softmax(logits.double(), dim=0).cpu().numpy()
