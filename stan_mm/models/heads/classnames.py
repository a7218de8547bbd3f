"""Class names and prompt templates for text-classifier heads.

A class list is either a list of str in the config or a ``classnames.txt`` file with one
class name per line, in label order (line i = label i), as written by
``tools/data/build_k400_lists.py`` and ``tools/data/build_ssv2_lists.py``.
"""
import logging
import os.path as osp
import re
from typing import List, Optional, Sequence, Union

from stan_mm.errors import ConfigValueError

ClassNames = Union[str, Sequence[str]]


def read_classnames_file(path: str, warn_style: bool = True) -> List[str]:
    """Class names from a text file, one per line (label i on line i + 1).

    Surrounding whitespace is stripped; trailing blank lines are ignored. A blank line
    before the last name, or a name that appears twice, raises ``ValueError`` naming the
    file and the line numbers (either would silently shift or merge labels).
    """
    from stan_mm.datasets.readers_common import resolved_note
    if osp.isdir(path):
        raise IsADirectoryError(
            f'class names file {path!r} is a folder{resolved_note(path)}; give the text '
            f'file inside it with one class name per line in label order (e.g. '
            f'classnames.txt, written by tools/data/build_k400_lists.py or '
            f'tools/data/build_ssv2_lists.py)')
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'class names file not found: {path!r}{resolved_note(path)} (expected a text '
            f'file with one class '
            f'name per line in label order, e.g. written by tools/data/build_k400_lists.py '
            f'or tools/data/build_ssv2_lists.py)')
    with open(path, encoding='utf-8-sig') as f:   # a BOM is not part of the first name
        lines = [line.strip() for line in f.read().splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    blank = [i + 1 for i, name in enumerate(lines) if not name]
    if blank:
        raise ConfigValueError(f'{path}: blank line(s) {blank[:10]} among the class names; every '
                               f'line up to the last one must hold one class name (line i = label '
                               f'i - 1)')
    return check_classnames(lines, source=path, warn_style=warn_style)


def check_classnames(names: Sequence[str], source: str = 'classnames',
                     warn_style: bool = True) -> List[str]:
    """Validate a list of class names: non-empty strs, no duplicates. Names the tokenizer
    cannot tell apart (case, whitespace: it lower-cases and squeezes spaces) count as
    duplicates: they would get identical text embeddings, and the higher label could never
    be predicted. ``warn_style``: warn about numbered / CamelCase names (off where the
    same list is checked again by the caller's next step, so that it warns once)."""
    names = list(names)
    if not names:
        raise ConfigValueError(f'{source}: no class names')
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise ConfigValueError(f'{source}: class {i} is {name!r}; expected a non-empty str')
    seen = {}
    for i, name in enumerate(names):
        same = ' '.join(name.split()).lower()
        if same in seen:
            j = seen[same]
            raise ConfigValueError(f'{source}: class names {names[j]!r} (label {j}) and {name!r} '
                                   f'(label {i}) are the same text for CLIP\'s tokenizer (it '
                                   f'ignores case and extra spaces); class names must be unique')
        seen[same] = i
    names = [n.strip() for n in names]
    if warn_style:
        _warn_style(names, source)
    return names


_INDEXED = re.compile(r'^\d+\s')          # '1 ApplyEyeMakeup' (UCF101 classInd.txt)
_JOINED = re.compile(r'[a-z][A-Z]|_')     # 'ApplyEyeMakeup' (UCF101), 'brush_hair' (HMDB51)


def _nearly_all(count: int, total: int) -> bool:
    return count >= max(2, 0.9 * total) or (total == 1 and count == 1)


def _warn_style(names: List[str], source: str) -> None:
    """Warn (once per call) when the names look like an index file rather than class
    names. The text head encodes every name as written: a leading number becomes part of
    the prompt, and CLIP's tokenizer (lower case, words split at spaces) reads
    ``ApplyEyeMakeup`` as one unknown word (BPE pieces 'app', 'l', 'ye', ...) and keeps the
    ``_`` of ``brush_hair`` as a token."""
    from mmengine.logging import print_log
    indexed = [n for n in names if _INDEXED.match(n)]
    if _nearly_all(len(indexed), len(names)):
        print_log(f'{source}: {len(indexed)} of {len(names)} class names start with a '
                  f'number (e.g. {indexed[0]!r}): an index file such as UCF101\'s '
                  f'classInd.txt? The text head encodes the names as written, number '
                  f'included; strip the numbers (one name per line, in label order: line i '
                  f'= label i - 1)', logger='current', level=logging.WARNING)
        names = [_INDEXED.sub('', n, count=1).strip() for n in names]
    joined = [n for n in names if _JOINED.search(n)]
    spaced = sum(1 for n in names if len(n.split()) > 1)
    # the list's style, not one odd name: HMDB51 has 'brush_hair' next to 'cartwheel'
    if joined and len(joined) >= 0.2 * len(names) and len(joined) > spaced:
        example = joined[0]
        words = ' '.join(re.sub(r'([a-z])([A-Z])', r'\1 \2', example).replace('_', ' ')
                         .split()).lower()
        print_log(f'{source}: note: {len(joined)} of {len(names)} class names are '
                  f'CamelCase or joined with underscores (e.g. {example!r}); the text head '
                  f'reads words better: CLIP\'s tokenizer does not split them '
                  f'(e.g. {words!r} rather than {example!r})', logger='current',
                  level=logging.WARNING)


def load_classnames(classnames: ClassNames, source: Optional[str] = None,
                    warn_style: bool = True) -> List[str]:
    """A ``classnames.txt`` path or a list of names -> list of names (validated).
    ``source``: where a given list came from, for messages."""
    if isinstance(classnames, str):
        return read_classnames_file(classnames, warn_style=warn_style)
    if isinstance(classnames, Sequence):
        return check_classnames(classnames, source=source or 'classnames',
                                warn_style=warn_style)
    raise TypeError(f'classnames must be a path to a classnames.txt file or a list of str, '
                    f'got {type(classnames).__name__}')


def check_templates(templates: Union[str, Sequence[str]]) -> List[str]:
    """Prompt templates: a str or a list of str, each with exactly one ``{}`` where the
    class name goes (e.g. ``'a video of {}.'``)."""
    if isinstance(templates, str):
        templates = [templates]
    templates = list(templates)
    if not templates:
        raise ConfigValueError('templates: at least one prompt template is needed, e.g. '
                               "['a video of {}.']")
    for t in templates:
        if not isinstance(t, str) or t.count('{}') != 1:
            raise ConfigValueError(f'prompt template {t!r} must be a str with exactly one "{{}}" '
                                   f'where the class name goes, e.g. "a video of {{}}."')
    return templates


def build_prompts(classnames: Sequence[str], templates: Sequence[str]) -> List[str]:
    """Prompts in class-major order: ``[t0(c0), t1(c0), ..., t0(c1), ...]``
    (``len(classnames) * len(templates)`` strings)."""
    return [t.replace('{}', name) for name in classnames for t in templates]
