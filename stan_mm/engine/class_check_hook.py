"""Check, before any batch is loaded, that the recognition head and the datasets agree on
the classes.

The text head takes its class count from the class-name file (``classnames.txt``); the
datasets check their labels against their own ``num_classes``. Nothing else compares the
two, so a class-name file with a name too few or too many goes unnoticed until:

- training reaches the first sample whose label has no name: MMAction2's loss stops with
  "Class values must be smaller than num_classes", naming no file, possibly hours in;
- testing ends with every score shifted to the wrong class after a missing name in the
  middle of the file: a wrong accuracy, without a word.

:class:`ClassListCheckHook` compares them when training, validation or testing starts:

- a label of a dataset >= the head's class count: an
  :class:`~stan_mm.datasets.readers_common.AnnotationError` naming the list file, the line
  with the largest label, and the head's class list;
- the training dataset's ``num_classes`` != the head's class count: an error too (the fix
  is one of the two files);
- a validation or test dataset's ``num_classes`` != the head's class count: a warning only,
  since a zero-shot test on another class list (``model.cls_head.classnames=...``) keeps
  the dataset config's ``num_classes``.

It does nothing for models without a ``cls_head`` (retrieval) and for datasets that give
neither ``num_classes`` nor their labels.
"""
import logging
from typing import Iterator, Optional, Set, Tuple

import numpy as np
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmaction.registry import HOOKS

from stan_mm.datasets.readers_common import AnnotationError, datasets_in

#: datasets with more samples than this are not scanned for their largest label (only
#: ``CheckedVideoDataset`` records it while reading its list, for free)
MAX_SCANNED = 2_000_000


def _leaf_datasets(dataset) -> list:
    """The datasets inside mmengine's wrappers (``ConcatDataset``, ``RepeatDataset``,
    ``ClassBalancedDataset``)."""
    return [d for d in datasets_in(dataset)
            if not getattr(d, 'datasets', None) and getattr(d, 'dataset', None) is None]


def _labels_of(info: dict) -> Iterator[int]:
    """The class indices of a sample: an int or a list of ints. Other forms (MMAction2's
    multi-label datasets give a one-hot tensor) are not read."""
    label = info.get('label') if isinstance(info, dict) else None
    values = label if isinstance(label, (list, tuple)) else [label]
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        yield from (int(v) for v in values)


def max_label(dataset) -> Optional[Tuple[int, Optional[int]]]:
    """``(largest label, its line in the list file or None)``, or None if unknown."""
    recorded = getattr(dataset, 'max_label', None)
    if isinstance(recorded, tuple):
        return recorded
    if not (hasattr(dataset, 'get_data_info') and getattr(dataset, '_fully_initialized', True)):
        return None
    try:
        n = len(dataset)
    except TypeError:
        return None
    if n > MAX_SCANNED:
        return None
    best = None
    for i in range(n):
        for label in _labels_of(dataset.get_data_info(i)):
            if label >= 0 and (best is None or label > best):
                best = label
    return None if best is None else (best, None)


def head_of(model):
    """The recognizer's classification head, or None."""
    model = model.module if is_model_wrapper(model) else model
    return getattr(model, 'cls_head', None)


def _has_classnames(head) -> bool:
    names = getattr(head, 'classnames', None)
    return isinstance(names, (list, tuple)) and bool(names)


def _head_source(head) -> str:
    names = getattr(head, 'classnames', None)
    if _has_classnames(head):
        source = getattr(head, 'classnames_source', None)
        listed = f'{len(names)} class names'
        return f'{listed} ({source})' if source else listed
    return f'num_classes={head.num_classes}'


@HOOKS.register_module()
class ClassListCheckHook(Hook):
    """Compare the head's class count with every dataset's labels and ``num_classes``
    when training, validation or testing starts (see the module docstring).

    Args:
        strict_train (bool): a training dataset whose ``num_classes`` differs from the
            head's class count is an error (default) rather than a warning.
    """

    priority = 'VERY_HIGH'

    def __init__(self, strict_train: bool = True) -> None:
        self.strict_train = strict_train
        self._checked: Set[int] = set()

    def before_train(self, runner) -> None:
        self._check(runner, runner.train_loop, 'train', strict=self.strict_train)
        if getattr(runner, '_val_loop', None) is not None and hasattr(runner.val_loop,
                                                                          'dataloader'):
            self._check(runner, runner.val_loop, 'val', strict=False)

    def before_val(self, runner) -> None:
        self._check(runner, runner.val_loop, 'val', strict=False)

    def before_test(self, runner) -> None:
        self._check(runner, runner.test_loop, 'test', strict=False)

    def _check(self, runner, loop, split: str, strict: bool) -> None:
        head = head_of(runner.model)
        n_head = getattr(head, 'num_classes', None)
        dataloader = getattr(loop, 'dataloader', None)
        if not isinstance(n_head, int) or dataloader is None:
            return
        for dataset in _leaf_datasets(dataloader.dataset):
            if id(dataset) in self._checked:
                continue
            self._checked.add(id(dataset))
            self._check_dataset(dataset, head, n_head, split, strict)

    @staticmethod
    def _check_dataset(dataset, head, n_head: int, split: str, strict: bool) -> None:
        ann_file = getattr(dataset, 'ann_file', None) or None
        source = _head_source(head)
        top = max_label(dataset)
        if top is not None and top[0] >= n_head:
            one_based = ''
            if getattr(dataset, 'label_range', None) == (1, n_head):
                one_based = (f' The labels run 1..{n_head}: they look 1-based (e.g. '
                             f'UCF101/HMDB51 classInd.txt numbering); subtract 1 from every '
                             f'label (or regenerate the list).')
            if one_based:
                fix = ''       # (not more classes: the numbering is off by one)
            elif _has_classnames(head):
                fix = (' The class list and the video list do not match: fix the class-name '
                       'file (one name per line, in label order; model.cls_head.classnames) '
                       'or the list.')
            else:
                fix = (' Set the model\'s model.cls_head.num_classes (and the datasets\' '
                       'num_classes) to the number of classes, or fix the list.')
            raise AnnotationError(
                f'label {top[0]} has no class: the model\'s head has {source}, labels '
                f'0..{n_head - 1}.{fix}{one_based}', file=ann_file, line=top[1])
        n_data = getattr(dataset, 'num_classes', None)
        if not isinstance(n_data, int) or n_data == n_head:
            return
        if _has_classnames(head):
            fix = (f'If the class list is right, set the dataset\'s num_classes={n_head}; '
                   f'otherwise fix the class list (model.cls_head.classnames)')
        else:   # a linear head has no class list: its class count is a config number
            fix = (f'If the head is right, set the dataset\'s num_classes={n_head}; '
                   f'otherwise set model.cls_head.num_classes={n_data}')
        message = (f'the {split} dataset has num_classes={n_data}, but the model\'s head has '
                   f'{source}. {fix}')
        if strict:
            raise AnnotationError(message + ' (a deliberate difference: '
                                  'custom_hooks=[dict(type=\'ClassListCheckHook\', '
                                  'strict_train=False)])', file=ann_file)
        where = f'{ann_file}: ' if ann_file else ''
        print_log(f'ClassListCheckHook: {where}{message} (fine for a zero-shot test on another '
                  f'class list)', logger='current', level=logging.WARNING)
