"""Progress bars that suit where their output goes.

On a terminal, :func:`progress_bar` is tqdm's bar. Redirected to a file (a job's log, a
pipe), tqdm still redraws its bar with ``\\r`` at every update: the file gets one line of
thousands of bar states, and a ``tail`` of the log shows nothing useful. There the bar is
:class:`LogProgress` instead: plain lines, one when it starts
(``videos: 0/4800 videos (0%)``), one at most every ``interval`` seconds (30 by default:
``videos: 1200/4800 videos (25%), 3.9 videos/s, ETA 15m21s``) and one when it ends
(``videos: 4800/4800 videos (100%), done in 20m31s``).
"""
import sys
import time
from typing import Iterable, Optional

#: seconds between two lines of a progress bar whose output is not a terminal
LOG_INTERVAL = 30.0


def _is_terminal(stream) -> bool:
    """A terminal, or a Jupyter cell's output (ipykernel's ``OutStream`` says it is no
    terminal, but shows tqdm's redrawn bar as one line, as a terminal does)."""
    if type(stream).__module__.startswith('ipykernel'):
        return True
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):      # no isatty, a closed file
        return False


def _duration(seconds: float) -> str:
    """``'2h03m'``, ``'15m21s'``, ``'42s'``, ``'0.3s'``."""
    if seconds < 10:
        return f'{seconds:.1f}s'
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f'{hours}h{minutes:02d}m'
    return f'{minutes}m{secs:02d}s' if minutes else f'{secs}s'


class LogProgress:
    """The part of tqdm's interface stan-mm uses (``update``, ``set_postfix``,
    ``set_description``, ``close``, iteration, ``with``), written as plain lines to a file
    that is not a terminal: one when it starts, one at most every ``interval`` seconds,
    and one when it closes (``done``, or ``stopped`` short of ``total``: an error).
    Counts are shown as integers, whatever ``unit_scale`` says; ``leave`` is taken and
    not used (the log keeps every line)."""

    def __init__(self, iterable: Optional[Iterable] = None, total: Optional[int] = None,
                 desc: Optional[str] = None, unit: str = 'it', leave: bool = True,
                 file=None, interval: float = LOG_INTERVAL, **_ignored):
        if total is None and iterable is not None:
            try:
                total = len(iterable)
            except TypeError:
                total = None
        self.iterable = iterable
        self.total = total
        self.desc = desc or ''
        self.unit = unit
        self.leave = leave
        self.file = file
        self.interval = float(interval)
        self.n = 0
        self.postfix = ''
        self.start = self.last = time.monotonic()
        self.closed = False
        self._write(self.start, done=False)

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __len__(self):
        return self.total or 0

    def __bool__(self):              # (a bar of unknown or zero total is still a bar)
        return True

    def set_description(self, desc: Optional[str] = None, refresh: bool = True) -> None:
        self.desc = desc or ''

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = ', '.join(f'{k}={v}' for k, v in items.items())

    def refresh(self) -> None:
        pass

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval and not self.closed:
            self.last = now
            self._write(now, done=False)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._write(time.monotonic(), done=True)

    def _write(self, now: float, done: bool) -> None:
        elapsed = max(now - self.start, 1e-9)
        units = self.unit if len(self.unit or '') < 3 or self.unit.endswith('s') \
            else f'{self.unit}s'                       # ('it', 'B' as they are)
        count = f'{self.n}/{self.total}' if self.total else f'{self.n}'
        parts = [f'{count} {units}'.rstrip()]
        if self.total:
            parts[0] += f' ({100.0 * self.n / self.total:.0f}%)'
        if done:
            short = self.total is not None and self.n < self.total
            parts.append(f'{"stopped after" if short else "done in"} {_duration(elapsed)}')
        elif self.n:
            rate = self.n / elapsed
            shown = f'{rate:.0f}' if rate >= 100 else f'{rate:.3g}'
            parts.append(f'{shown} {units}/s'.replace(' /s', '/s'))
            if self.total and rate > 0:
                parts.append(f'ETA {_duration(max(self.total - self.n, 0) / rate)}')
        if self.postfix:
            parts.append(self.postfix)
        line = (f'{self.desc}: ' if self.desc else '') + ', '.join(parts)
        stream = self.file if self.file is not None else sys.stderr
        try:
            stream.write(line + '\n')
            flush = getattr(stream, 'flush', None)     # (a logger shim may have none)
            if flush is not None:
                flush()
        except (OSError, ValueError, AttributeError):  # a closed or full log, no stream
            pass


def progress_bar(iterable: Optional[Iterable] = None, *, disable: bool = False, file=None,
                 interval: float = LOG_INTERVAL, **tqdm_kwargs):
    """A progress bar over ``iterable`` (or one to ``update`` by hand, with ``total=``):
    tqdm's (``tqdm_kwargs`` as tqdm takes them: ``total``, ``desc``, ``unit``, ``leave``)
    where ``file`` (default: ``sys.stderr``) is a terminal, else :class:`LogProgress`,
    which writes plain lines (start, at most one every ``interval`` seconds, end) instead
    of tqdm's ``\\r``-redrawn bar. ``disable``: no output at all (tqdm's no-op bar)."""
    stream = file if file is not None else sys.stderr
    if not disable and not _is_terminal(stream):
        return LogProgress(iterable, file=file, interval=interval, **tqdm_kwargs)
    from tqdm import tqdm
    return tqdm(iterable, disable=disable, file=file, **tqdm_kwargs)
