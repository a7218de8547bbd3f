"""MMAction2's ``VideoDataset`` with its list file checked line by line.

MMAction2 1.2 reads ``path label`` lines with ``line.split(' ')`` and no checks, so the
usual mistakes of a hand-written list pass silently or fail far from their cause:

- a line without a label gets the "fake label" -1 (meant for inference lists): a test
  run then reports an accuracy over a class that does not exist, without a word;
- a label >= the number of classes trains until CrossEntropy stops with "Class values
  must be smaller than num_classes" (no file, no line), and tests silently;
- a header line, a file name with spaces, a tab or two spaces between the fields end in
  ``ValueError: invalid literal for int()`` or ``too many values to unpack``;
- a blank line becomes the video ``<data_prefix>/`` ("file not found" when it is reached);
- an empty list ends in ``need at least one array to concatenate``;
- a missing video (a wrong ``data_prefix``) is found only when its sample is reached,
  possibly hours into a run.

:class:`CheckedVideoDataset` reads the same files into the same samples (every list
MMAction2 reads correctly gives identical ``data_list`` entries, except file names that
contain a tab: a tab separates fields here), skips blank lines, accepts any run of spaces
or tabs between the fields (MMAction2 reads ``v.mp4<TAB>3`` as an unlabeled ``v.mp4<TAB>3``), and reports every other problem
at once as an :class:`~stan_mm.datasets.readers_common.AnnotationError` with the file and
line numbers, when the dataset is built. It also checks that the videos exist (one
listing per folder rather than one ``stat`` per video, see
:class:`~stan_mm.datasets.retrieval.FolderIndex`; ``check_files=False`` skips it), listing
the missing ones.
"""
import os.path as osp
import re
from typing import List, Optional

from mmaction.datasets import VideoDataset
from mmaction.registry import DATASETS

from .readers_common import (MAX_LISTED, AnnotationError, apply_missing_policy,
                             check_missing_video, head_lines, iter_text_lines, short_repr)
from .pipeline_context import PipelineContextMixin
from .retrieval import FolderIndex

__all__ = ['CheckedVideoDataset']


@DATASETS.register_module()
class CheckedVideoDataset(PipelineContextMixin, VideoDataset):
    """``VideoDataset`` (same arguments, same samples) whose list file is validated.

    Args:
        num_classes (int, optional): the model's number of classes; when given, every
            label must lie in ``[0, num_classes)`` (MMAction2 uses it for multi-label
            lists only; here it also bounds single labels).
        allow_unlabeled (bool): accept lines without a label, as MMAction2 does, with
            label -1 (inference lists). Default False: such a line is an error, since a
            metric computed over label -1 is meaningless.
        check_files (bool): check that every video exists (local paths; default True).
        missing_video (str): ``'error'`` (default) or ``'drop'`` (leave the missing
            videos out, with a warning naming the first few).
        Other arguments: see ``mmaction.datasets.VideoDataset``; ``delimiter=' '`` (the
            default) splits on any run of whitespace.

    Raises:
        AnnotationError: from ``load_data_list`` (at build time), listing every bad line:
            a wrong number of fields, a label that is not an integer (a header line?), a
            label outside ``[0, num_classes)``, a missing label, or no video at all.
    """

    def __init__(self, *args, allow_unlabeled: bool = False, check_files: bool = True,
                 missing_video: str = 'error', **kwargs) -> None:
        self.allow_unlabeled = allow_unlabeled
        self.check_files = check_files
        self.missing_video = check_missing_video(missing_video)
        super().__init__(*args, **kwargs)

    def _split(self, line: str) -> List[str]:
        # runs of spaces / tabs only: a no-break space inside a name stays in the name
        return re.split(r'[ \t]+', line.strip()) if self.delimiter == ' ' else [
            f.strip() for f in line.strip().split(self.delimiter)]

    def _label(self, raw: str, problems: list, lineno: int) -> Optional[int]:
        try:
            label = int(raw)
        except ValueError:
            problems.append((lineno, f'label {short_repr(raw)} is not an integer (a header '
                                     'line? remove it)'))
            return None
        lo, hi = getattr(self, 'label_range', None) or (label, label)
        self.label_range = (min(lo, label), max(hi, label))
        if label < 0 or (self.num_classes is not None and label >= self.num_classes):
            bound = ('' if self.num_classes is None else
                     f' (the dataset\'s num_classes={self.num_classes}: labels 0..'
                     f'{self.num_classes - 1}; for more classes set the model\'s and the '
                     'datasets\' num_classes)')
            problems.append((lineno, f'label {label} is out of range{bound}'))
            self._out_of_range.append((len(problems) - 1, label))
            return None
        return label

    def _one_based_note(self, problems: list) -> str:
        """When the labels run 1..num_classes (UCF101's / HMDB51's classInd numbering),
        say so, and reword the out-of-range lines: more classes is the wrong fix."""
        n = self.num_classes
        if n is None or self.label_range != (1, n) or not self._out_of_range:
            return ''
        for i, label in self._out_of_range:
            problems[i] = (problems[i][0], f'label {label} is out of range (labels 0..{n - 1})')
        return (f'the labels run 1..{n} with num_classes={n}: they look 1-based (e.g. '
                f'UCF101/HMDB51 classInd.txt numbering), but labels start at 0 (line i of '
                f'the class-name file = label i - 1). Subtract 1 from every label (or '
                f'regenerate the list); do not raise num_classes. ')

    def load_data_list(self) -> List[dict]:
        """Read ``path label`` lines (``path l1 l2 ...`` with ``multi_class=True``).
        Also sets ``max_label``: ``(largest label, its line number)`` of the file, or None,
        and ``label_range``: ``(smallest, largest)`` integer label, or None (read by
        :class:`~stan_mm.engine.ClassListCheckHook`)."""
        self.max_label = None
        if '://' in self.ann_file:          # other storage backends: MMAction2's reader
            return super().load_data_list()
        problems, data_list = [], []
        self.label_range, self._out_of_range = None, []   # (min, max) of the int labels
        for lineno, line in iter_text_lines(self.ann_file):
            fields = self._split(line)
            filename, rest = fields[0], fields[1:]
            if self.multi_class:          # no label at all: a sample of no class, as MMAction2
                labels = [self._label(r, problems, lineno) for r in rest]
                if None in labels:
                    continue
                label = labels
            elif not rest:
                if not self.allow_unlabeled:
                    problems.append((
                        lineno, f'{short_repr(filename)} has no label (expected "path '
                        'label"; an inference list without labels needs '
                        'allow_unlabeled=True)'))
                    continue
                label = -1
            elif len(rest) > 1:
                problems.append((
                    lineno, f'expected "path label", got {len(fields)} fields '
                    f'{short_repr(line.strip())}: a file name with spaces (rename the '
                    'file) or a multi-label line (set multi_class=True and num_classes)'))
                continue
            else:
                label = self._label(rest[0], problems, lineno)
                if label is None:
                    continue
            top = max(label) if isinstance(label, list) and label else label
            if (isinstance(top, int) and top >= 0
                    and (self.max_label is None or top > self.max_label[0])):
                self.max_label = (top, lineno)
            if self.data_prefix['video'] is not None:
                filename = osp.join(self.data_prefix['video'], filename)
            data_list.append(dict(filename=filename, label=label))
        if problems:
            note = self._one_based_note(problems)
            listed = head_lines(problems, lambda p: f'  line {p[0]}: {p[1]}')
            raise AnnotationError(
                f'{note}{len(problems)} bad line(s) in the video list:\n' + '\n'.join(listed),
                file=self.ann_file, line=problems[0][0], issues=listed)
        if not data_list:
            raise AnnotationError('the video list is empty (expected "path label" lines)',
                                  file=self.ann_file)
        if self.check_files:
            data_list = self._check_files(data_list)
        return data_list

    def get_cat_ids(self, idx: int) -> List[int]:
        """The class ids of sample ``idx``: ``[label]``, every label of a ``multi_class``
        line, ``[]`` for an unlabeled one (label -1). What mmengine's
        ``ClassBalancedDataset`` reads to repeat the samples of rare classes (MMAction2's
        ``VideoDataset`` does not define it: the wrapper stopped on ``NotImplementedError``)::

            train_dataloader = dict(dataset=dict(
                _delete_=True, type='ClassBalancedDataset', oversample_thr=0.01,
                dataset=dict(type='CheckedVideoDataset', ...)))
        """
        from mmengine.dataset import BaseDataset
        label = BaseDataset.get_data_info(self, idx)['label']   # (not MMAction2's one-hot)
        labels = label if isinstance(label, (list, tuple)) else [label]
        return [int(c) for c in labels if int(c) >= 0]

    def _check_files(self, data_list: List[dict]) -> List[dict]:
        # os.path.isfile of every local video, from one listing per folder (FolderIndex)
        from .transforms.video_io import resolve_video_name
        # a name without an extension is the file the reader opens (resolve_video_name:
        # 'abc' itself when it is a file, else 'abc.mp4', MMAction2's rule)
        paths = [d['filename'] if '://' in d['filename'] or osp.splitext(d['filename'])[1]
                 else resolve_video_name(d['filename']) for d in data_list]
        index = FolderIndex(paths)
        missing = [d for d, path in zip(data_list, paths)
                   if '://' not in path and not index.isfile(path)]
        if not missing:
            return data_list
        names = ', '.join(repr(d['filename']) for d in missing[:MAX_LISTED])
        more = f' ... and {len(missing) - MAX_LISTED} more' if len(missing) > MAX_LISTED else ''
        where = (f'{len(missing)} of {len(data_list)} videos of {self.ann_file} have no file '
                 f'(data_prefix={self.data_prefix["video"]!r})')
        return apply_missing_policy(data_list, missing, self.missing_video, where,
                                    names + more, 'Fix data_prefix (or data_root)',
                                    self.ann_file)
