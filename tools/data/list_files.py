"""Writing MMAction2 list files, shared by build_k400_lists.py and build_ssv2_lists.py.

Not a tool of its own: those two import it (``from list_files import ...``, with
``tools/data`` on ``sys.path``). Run ``tools/data/build_k400_lists.py`` or
``tools/data/build_ssv2_lists.py`` instead.

The checks here raise ``ValueError`` with a one-line message naming the flag and the file
(the tools print it and exit 2); they import nothing of stan-mm, so that the tools start
in a moment.
"""
import os
import os.path as osp
import sys
import tempfile
from typing import Dict, List, Sequence, Tuple


def check_input_file(path: str, flag: str, what: str = 'file') -> str:
    """Refuse a missing input file, or a folder given for it, naming ``flag``."""
    if osp.isdir(path):
        raise ValueError(f'{flag} {path!r} is a folder; give the {what}')
    if not osp.isfile(path):
        raise ValueError(f'{flag} {path!r}: {what} not found')
    return path


def check_output_dir(path: str, flag: str) -> str:
    """Refuse, before any work, an output folder that could not be used: an existing file,
    a path through a file, a folder that cannot be written. Creates nothing (a run that
    stops on a bad annotation leaves no empty folder behind); :func:`make_output_dir`
    creates it before the first file is written."""
    if osp.exists(path) and not osp.isdir(path):
        raise ValueError(f'{flag} {path!r} is a file, not a folder; give a folder (it is '
                         f'created when missing)')
    up = osp.abspath(path)
    while not osp.exists(up):
        up = osp.dirname(up)
    if not osp.isdir(up):
        raise ValueError(f'{flag} {path!r} cannot be created: {up!r} is a file')
    if not os.access(up, os.W_OK | os.X_OK):
        raise ValueError(f'{flag} {path!r} is not writable' if up == osp.abspath(path) else
                         f'{flag} {path!r} cannot be created: {up!r} is not writable')
    return path


def make_output_dir(path: str, flag: str) -> str:
    """Create the output folder ``path`` (``flag`` and the OS reason in the error)."""
    check_output_dir(path, flag)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ValueError(f'{flag} {path!r} cannot be created: {e.strerror or e}') from None
    return path


def not_utf8(path: str, flag: str, error: UnicodeDecodeError) -> ValueError:
    """The error for an input file that is not UTF-8 text (raise the result)."""
    return ValueError(f'{flag} {path!r} is not UTF-8 text ({error.reason}); save it as '
                      f'UTF-8')


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_lines(path: str, lines: Sequence[str]) -> None:
    """Write ``lines`` to ``path`` in one step (a temporary file in the same folder, then
    ``os.replace``): an interrupt or a full disk leaves the file there before, never a
    half-written list."""
    folder = osp.dirname(osp.abspath(path))
    try:
        mode = os.stat(path).st_mode & 0o7777
    except OSError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix='.' + osp.basename(path) + '.', suffix='.tmp',
                               dir=folder)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            f.writelines(f'{line}\n' for line in lines)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def write_missing(out_dir: str, split: str, missing: Sequence[str]) -> None:
    """``missing_{split}.txt`` lists ``missing``; with none, an earlier run's list is
    removed (it would name videos that are there now)."""
    path = osp.join(out_dir, f'missing_{split}.txt')
    if missing:
        write_lines(path, missing)
    elif osp.exists(path):
        os.remove(path)


def refuse_empty_splits(found: Dict[str, Tuple[List, List[str]]], hint: str) -> None:
    """Raise ``ValueError`` (before anything is written) when a split's video folder holds
    none of its videos: a wrong file name pattern or extension, not a dataset with every
    video gone, and writing would replace good lists with empty ones. ``found``:
    ``{split: (present items, missing names)}``; ``hint``: what to check."""
    empty = [(split, missing) for split, (items, missing) in found.items()
             if not items and missing]
    if empty:
        split, missing = empty[0]
        raise ValueError(f'none of the {len(missing)} videos of the {split} split is in its '
                         f'video folder (looked for e.g. {", ".join(missing[:3])}); nothing '
                         f'was written. {hint}')


if __name__ == '__main__':
    print('list_files.py is a helper module of the data tools, not a tool: run '
          'tools/data/build_k400_lists.py or tools/data/build_ssv2_lists.py (--help for '
          'their options)', file=sys.stderr)
    sys.exit(2)
