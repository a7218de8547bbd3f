"""Writing a file so that readers see the old contents or the new ones, never a partial file:
the one implementation behind the checkpoint hook's ``atomic_write_bytes``, the feature
folder's files, the converter's ``save_atomic`` and the benchmark's temporary videos.

The new contents go to a temporary file beside the target, made by ``tempfile.mkstemp``
(created exclusively with an unpredictable name, so a file or symbolic link that someone
put at a name they could guess is never written through), flushed and fsync'ed, then renamed
over the target (``os.replace``, atomic within a folder). A failure at any step removes
the temporary file and leaves the target as it was.

The file gets the permissions ``open(path, 'wb')`` would give it: those of the file it
replaces, else ``0o666`` less the umask (``mkstemp``'s own ``0o600`` would hide checkpoints
and features from the rest of a group on a shared cluster).

(``tools/data/list_files.py`` keeps a copy of its own: the data tools import nothing of
stan-mm, so that they start without torch.)
"""
import contextlib
import os
import os.path as osp
import re
import stat
import tempfile
import time
from typing import IO, Callable, Iterator, List, Optional, Sequence, Tuple

__all__ = ['umask', 'default_mode', 'new_temp_beside', 'replacing', 'remove_stale_temps',
           'remove_stale_temps_of', 'STALE_TMP_AGE_S']


def umask() -> int:
    """The process umask, read from /proc where possible (``os.umask`` can only be read by
    setting it, which races with other threads creating files)."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(path: str) -> int:
    """The permission bits ``open(path, 'wb')`` leaves ``path`` with: those of the file
    there (followed through a symlink), else ``0o666`` less the umask."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return 0o666 & ~umask()


def new_temp_beside(path: str, prefix: Optional[str] = None, suffix: str = '.tmp',
                    mode: Optional[int] = None) -> Tuple[int, str]:
    """``(fd, temp_path)``: a new empty file in ``path``'s folder named
    ``<prefix><8 random characters><suffix>`` (``prefix`` default ``.<name>.``), created
    exclusively, with permissions ``mode`` (default :func:`default_mode` of ``path``). The
    caller owns the descriptor and the file."""
    folder, name = osp.split(osp.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f'.{name}.' if prefix is None else prefix,
                               suffix=suffix, dir=folder)
    try:
        os.fchmod(fd, default_mode(path) if mode is None else mode)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    return fd, tmp


@contextlib.contextmanager
def replacing(path: str, text: bool = False, prefix: Optional[str] = None,
              suffix: str = '.tmp', fsync: bool = True,
              mode: Optional[int] = None) -> Iterator[IO]:
    """``with replacing(path) as f: f.write(...)``: ``f`` is a new temporary file beside
    ``path`` (:func:`new_temp_beside`), opened ``'wb'`` (``'w'`` in UTF-8 with ``text``);
    when the block ends without an exception the data is flushed, fsync'ed (unless
    ``fsync=False``) and the file renamed to ``path``. On any exception, the ``KeyboardInterrupt``
    of a Ctrl-C included, the temporary file is removed and ``path`` is untouched.

    ``path`` itself is replaced: a symbolic link there becomes a regular file (resolve it
    first to replace the file it names, as ``atomic_write_bytes`` does)."""
    fd, tmp = new_temp_beside(path, prefix, suffix, mode)
    try:
        with os.fdopen(fd, 'w' if text else 'wb', encoding='utf-8' if text else None) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


#: age (seconds) after which a temporary file beside an output counts as left by a killed
#: writer (one still being written keeps getting newer)
STALE_TMP_AGE_S = 600


def remove_stale_temps(folder: str, matches: Callable[[str], bool],
                       age_s: float = STALE_TMP_AGE_S) -> List[str]:
    """Delete the entries of ``folder`` whose names ``matches(name)`` accepts, that are
    regular files (not links) unchanged for ``age_s`` seconds: the temporary files killed
    writers left (nothing else removes them; a model-sized copy each). Returns the removed
    paths. Entries that vanish or cannot be removed meanwhile are skipped."""
    try:
        entries = sorted(os.listdir(folder))
    except OSError:
        return []
    removed, now = [], time.time()
    for entry in entries:
        if not matches(entry):
            continue
        path = osp.join(folder, entry)
        try:
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < age_s:
                continue
            os.remove(path)
        except OSError:
            continue
        removed.append(path)
    return removed


def remove_stale_temps_of(path: str, prefix: Optional[str] = None, suffix: str = '.tmp',
                          also: Sequence[str] = (),
                          age_s: float = STALE_TMP_AGE_S) -> List[str]:
    """:func:`remove_stale_temps` for the temporary files of ``path`` that
    :func:`new_temp_beside` / :func:`replacing` name with the same ``prefix`` and ``suffix``
    (``<prefix><8 random characters><suffix>``), and the names in ``also`` (fixed names
    that earlier versions used). Returns the removed paths."""
    folder, name = osp.split(osp.abspath(path))
    prefix = f'.{name}.' if prefix is None else prefix
    pattern = re.compile(re.escape(prefix) + r'[A-Za-z0-9_]{8}' + re.escape(suffix))
    return remove_stale_temps(folder, lambda entry: bool(pattern.fullmatch(entry))
                              or entry in also)
