"""Recognize one video: class scores of a recognizer, or zero-shot over a class list.

- Recognizer (``Recognizer3D`` + any head): ``model.test_step`` on the video preprocessed by
  the config's test pipeline (``views`` = ``'CLIPSxCROPS'`` overrides its views), i.e. the
  ``pred_score`` of ``tools/test.py``: with ``average_clips='prob'`` the mean over views of
  the per-view softmax. A text-classifier head scores the class list it was built with,
  or ``classnames`` when given (zero-shot: class names are not stored in checkpoints), with
  its own prompt templates, or ``templates`` when given; both only for that call (scored
  by a copy of the head: the model is not changed). :func:`apply_classnames` and
  :func:`apply_templates` put them into the config before the model is built instead.
- Retrieval model (``STANRetriever``): zero-shot over ``classnames``: prompts
  (``templates``, default :data:`DEFAULT_TEMPLATES`) through the text tower,
  prompt-ensembled as :class:`~stan_mm.models.heads.TextClassifierHead` does, logits =
  cosine x the model's logit scale, softmax over the classes.

Threads: :func:`recognize` changes nothing of the model (flags, class lists, caches other
than the head's own class embeddings, filled once under a lock), so several threads may
call it on one model in eval mode (:func:`~stan_mm.apis.init_model`'s) at once, each with
its own class list.
"""
import copy
import os
import os.path as osp
import threading
from collections import OrderedDict
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmengine.dataset import pseudo_collate

from .inference import model_kind

DEFAULT_TEMPLATES = ('a video of {}.', )


#: endings that make a ``--classnames`` value a file name (matched case-insensitively)
FILE_EXTENSIONS = ('.txt', '.csv', '.tsv', '.json', '.jsonl', '.yaml', '.yml', '.lst',
                   '.list', '.names', '.text', '.dat')


def _looks_like_path(value: str) -> bool:
    """A ``--classnames`` value that names a file rather than classes: it holds a path
    separator or ends in a file extension such as ``.txt`` / ``.csv`` / ``.json``."""
    seps = {'/', os.sep} | ({os.altsep} if os.altsep else set())
    return any(sep in value for sep in seps) or value.lower().endswith(FILE_EXTENSIONS)


def parse_classnames(value: Union[str, Sequence[str]]) -> List[str]:
    """``--classnames``: a ``classnames.txt`` file (one name per line) or a comma-separated
    list (``"walking,running,jumping"``) -> validated list of names.

    A value that exists as a file, holds a path separator, or ends in a file extension
    (``.txt``, ``.csv``, ``.json``, ...: :data:`FILE_EXTENSIONS`) is a file name: a missing
    file raises ``FileNotFoundError`` naming it (class names with a ``/`` go in a file). A
    class list of one name is refused (``ValueError``): a softmax over one class scores it
    1.0 whatever the video.
    """
    from stan_mm.models.heads import load_classnames
    if not isinstance(value, str):
        return _at_least_two(_style_checked(load_classnames(list(value), warn_style=False),
                                            'classnames'), repr(list(value)))
    if osp.isdir(value):
        raise ValueError(f'--classnames {value!r} is a folder; give the class names file (one '
                         f'name per line), or names separated by commas')
    if osp.isfile(value):
        return _at_least_two(_style_checked(load_classnames(value, warn_style=False), value),
                             f'file {value!r}')
    if _looks_like_path(value):
        raise FileNotFoundError(
            f'--classnames: class names file not found: {value!r} (give a file with one class '
            f'name per line, or names separated by commas; a value with a "/" or a file '
            f'extension is read as a file name, so class names with a "/" go in a file)')
    names = [n.strip() for n in value.split(',')]
    empty = next((i + 1 for i, n in enumerate(names) if not n), None)
    if empty and len(names) > 1:
        raise ValueError(f'class list {value!r}: name {empty} of {len(names)} is empty (two '
                         f'commas in a row, or a comma at an end); the labels follow the '
                         f'order of the names, so every name must be there')
    return _at_least_two(_style_checked(load_classnames(names, warn_style=False),
                                        'classnames'), repr(value))


#: class lists whose style was checked in this process (most recent last; a few kept)
_STYLE_CHECKED: 'OrderedDict[tuple, None]' = OrderedDict()
_STYLE_LOCK = threading.Lock()


def _style_checked(names: List[str], source: str) -> List[str]:
    """``names``, after warning about numbered / CamelCase names (``check_classnames``)
    the first time this list is seen: ``recognize`` is called once per video with the list
    :func:`parse_classnames` already checked, and should not repeat the warning."""
    from stan_mm.models.heads.classnames import check_classnames
    if not all(isinstance(n, str) for n in names):
        check_classnames(names, source=source, warn_style=False)   # (its error names it)
    key = tuple(names)
    with _STYLE_LOCK:
        seen = key in _STYLE_CHECKED
        if seen:
            _STYLE_CHECKED.move_to_end(key)
    if seen:
        return names
    check_classnames(names, source=source, warn_style=True)
    with _STYLE_LOCK:
        _STYLE_CHECKED[key] = None
        while len(_STYLE_CHECKED) > 8:
            _STYLE_CHECKED.popitem(last=False)
    return names


def _at_least_two(names: List[str], source: str, flag: str = '--classnames') -> List[str]:
    if len(names) == 1:
        raise ValueError(f'{flag} {source} gives one class ({names[0]!r}): a softmax '
                         f'over one class scores it 1.0 whatever the video; give at least two '
                         f'names separated by commas, or a file with one name per line')
    return names


def head_type(cfg) -> Optional[str]:
    head = cfg.model.get('cls_head')
    return head.get('type') if head else None


def apply_classnames(cfg, names: List[str]) -> None:
    """Give a recognition config's text-classifier head the class list ``names`` (in
    place; ``num_classes`` follows). Other configs are left alone."""
    if head_type(cfg) == 'TextClassifierHead':
        cfg.model.cls_head.classnames = list(names)
        cfg.model.cls_head.pop('num_classes', None)


def apply_templates(cfg, templates: Optional[Sequence[str]]) -> Optional[List[str]]:
    """Validate the prompt templates ``templates`` (``--template``; each with one ``{}``,
    ``ValueError`` otherwise, the message of a retrieval model's) and give them to a
    recognition config's text-classifier head (in place, as ``--cfg-options
    model.cls_head.templates=[...]`` does). A retrieval config takes them at
    :func:`recognize`; a config with another head has no prompts (``ValueError``).
    Returns the validated list (``None`` for ``None``: the model's own templates)."""
    if templates is None:
        return None
    from stan_mm.models.heads.classnames import check_templates
    from .inference import config_model_kind
    templates = check_templates(templates)
    if head_type(cfg) == 'TextClassifierHead':
        cfg.model.cls_head.templates = list(templates)
    elif config_model_kind(cfg) != 'retriever':
        raise ValueError(f'prompt templates {templates!r}: the config\'s head '
                         f'({head_type(cfg)}) has no prompts; templates are for a '
                         f'text-classifier head or a retrieval model')
    return templates


def missing_classnames_file(cfg) -> Optional[str]:
    """The class-names file a text head's config names when that file is missing."""
    if head_type(cfg) != 'TextClassifierHead':
        return None
    names = cfg.model.cls_head.get('classnames')
    return names if isinstance(names, str) and not osp.isfile(names) else None


def _prompted_head(model):
    """The recognizer's head when it encodes class names with prompts (a
    ``TextClassifierHead``: ``set_classnames`` and ``templates``), else None."""
    head = getattr(model, 'cls_head', None)
    if callable(getattr(head, 'set_classnames', None)) and hasattr(head, 'templates'):
        return head
    return None


def checkpoint_classes(model, num_classes: int) -> Optional[List[str]]:
    """The class names the model's checkpoint recorded (``meta['dataset_meta']['classes']``,
    the training set's, which mmengine stores; :func:`~stan_mm.apis.init_model` keeps the
    meta as ``model.checkpoint_meta``) when they are ``num_classes`` strings, else None."""
    meta = getattr(model, 'checkpoint_meta', None)
    dataset_meta = meta.get('dataset_meta') if isinstance(meta, dict) else None
    names = dataset_meta.get('classes') if isinstance(dataset_meta, dict) else None
    if (isinstance(names, (list, tuple)) and len(names) == num_classes
            and all(isinstance(n, str) for n in names)):
        return list(names)
    return None


def class_labels(model, classnames: Optional[List[str]]) -> List[str]:
    """Names of the classes :func:`recognize` scores, in label order: ``classnames`` when
    given (a linear head: the names of its own classes, the count must match), else the
    head's own; a linear head has none: the training set's names its checkpoint recorded
    (:func:`checkpoint_classes`), else ``class 0``, ``class 1``..."""
    if model_kind(model) == 'retriever':
        if not classnames:
            raise ValueError('a retrieval model scores a class list: give --classnames')
        return list(classnames)
    head = model.cls_head
    own = getattr(head, 'classnames', None)
    if own:
        if classnames is None or list(classnames) == list(own):
            return list(own)
        if _prompted_head(model) is not None:   # scored with the given list
            return list(classnames)
        raise ValueError(f'{type(head).__name__} scores its own {len(own)} classes and '
                         f'cannot take another class list ({len(classnames)} names given); '
                         f'zero-shot needs a text-classifier head or a retrieval model')
    n = int(head.num_classes)
    if classnames is None:
        return checkpoint_classes(model, n) or [f'class {i}' for i in range(n)]
    if len(classnames) != n:
        raise ValueError(f'{type(head).__name__} has {n} classes but {len(classnames)} class '
                         f'names were given; a linear head cannot score other classes '
                         f'(zero-shot needs a text-classifier head or a retrieval model)')
    return list(classnames)


def _model_for_call(model, head, names: List[str], templates: Optional[List[str]]):
    """The recognizer to score ``names`` with ``templates`` (None: the head's own):
    ``model`` itself when they are its text-classifier head's own, else a shallow copy of
    ``model`` whose ``cls_head`` is a copy of ``head`` with that class list and those
    templates. The copies share every weight and submodule with ``model`` and change
    nothing of it (the head was swapped in place before: a call from another thread then
    scored, or failed on, this call's classes, and the head kept them)."""
    if list(names) == list(head.classnames) and (templates is None
                                                 or list(templates) == list(head.templates)):
        return model
    call_head = copy.copy(head)              # (the same submodules and weights)
    call_head._buffers = dict(head._buffers)  # set_classnames replaces the tokens buffer
    if templates is not None:
        call_head.templates = list(templates)
    call_head.set_classnames(list(names), source=None, warn_style=False)  # (checked)
    call_model = copy.copy(model)
    call_model._modules = dict(model._modules)
    call_model._modules['cls_head'] = call_head
    return call_model


@torch.no_grad()
def recognize(model, video: str, views: Optional[str] = None,
              classnames: Optional[List[str]] = None,
              templates: Optional[Sequence[str]] = None) -> Tuple[List[str], np.ndarray]:
    """``video`` -> (class names, scores ``[C]`` float64 summing to 1); see the module
    docstring.

    ``classnames``: the classes to score (a text-classifier head or a retrieval model: any
    list; a linear head: the names of its own classes). ``templates``: prompt templates,
    each with one ``{}`` (a text-classifier head: ``None`` keeps the templates it was
    built with; a retrieval model: ``None`` means :data:`DEFAULT_TEMPLATES`; a linear head
    has none: ``ValueError``). The model is not changed (other threads may call
    :func:`recognize` on it at the same time; see the module docstring).

    Raises ``VideoReadError`` naming the file when it cannot be read, and ``ValueError``
    when ``video`` is a folder, or for a class list or templates the model cannot take."""
    from stan_mm.models.heads.classnames import check_templates
    from .video import VideoPipeline, check_views
    from stan_mm.datasets.transforms.video_io import resolve_video_name
    if (isinstance(video, str) and '://' not in video
            and osp.isdir(resolve_video_name(video))):        # 'abc' may read 'abc.mp4'
        raise ValueError(f'{video!r} is a folder; give the video file')
    kind = model_kind(model)
    check_views(kind, views)
    if templates is not None:
        templates = check_templates(templates)
    names = class_labels(model, classnames)
    if classnames is not None and (kind == 'retriever' or _prompted_head(model) is not None):
        # a list for the text side: the checks of --classnames (one class scores 1.0
        # whatever the video; numbered / CamelCase names warned about once per list)
        _at_least_two(_style_checked(names, 'classnames'), repr(list(names)), 'classnames')
    if kind == 'recognizer':
        head = _prompted_head(model)
        if head is None and templates is not None:
            raise ValueError(f'prompt templates {templates!r}: '
                             f'{type(model.cls_head).__name__} has no prompts; templates '
                             f'are for a text-classifier head or a retrieval model')
        sample = VideoPipeline(model.cfg, views)(video)
        runner = model if head is None else _model_for_call(model, head, names, templates)
        pred = runner.test_step(pseudo_collate([sample]))[0]
        scores = pred.pred_score.detach().float().cpu().numpy().astype(np.float64)
        return names, scores
    templates = list(DEFAULT_TEMPLATES) if templates is None else templates
    sample = VideoPipeline(model.cfg, views)(video)
    from mmaction.models.losses import CrossEntropyLoss
    from stan_mm.models.heads import TextClassifierHead
    from .embed import embed_video_batch, eval_mode, text_tower
    _, length = text_tower(model)
    scale = float(model.get_logit_scale())
    tower = model.text_backbone
    # finetune_text=True: the head leaves the tower's requires_grad flags alone (a frozen
    # head turns them off, and calls from several threads restored each other's flags);
    # the tower runs in eval mode for the call, as the head's eval() puts it. The loss is
    # given as a class: built whatever mmengine's default scope is now (it is not used)
    with eval_mode(tower):
        head = TextClassifierHead(classnames=names, in_channels=int(model.embed_dim),
                                  text_encoder=tower, templates=list(templates),
                                  context_length=length, temperature=1.0 / scale,
                                  finetune_text=True, loss_cls=dict(type=CrossEntropyLoss),
                                  warn_style=False).eval()   # (checked above)
        video_emb = embed_video_batch(model, [sample]).to(next(model.parameters()).device)
        logits = head(video_emb)[0]                                      # [C]
    return names, torch.softmax(logits.double(), dim=0).cpu().numpy()
