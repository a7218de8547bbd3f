"""How the command-line tools end on a mistake in the user's data, config or files.

``tools/train.py`` and ``tools/test.py`` run through :func:`run_tool`: an error that
stan-mm raises about the user's input (a bad annotation line, weights that do not fit, an
unreadable video, an unsafe or damaged checkpoint, test views the config cannot take, a
synthetic dataset folder that holds something else) ends the tool with its message on one
line of stderr and exit status 2, instead of a page of mmengine traceback with the message
at the bottom. Bugs (any other exception) keep their traceback, and ``STAN_TRACEBACK=1``
shows it for these errors too.
"""
import ast
import copy
import os
import re
import sys
from typing import Any, Callable, Mapping, Optional, Tuple, Type

from mmengine.config import DictAction


class CommandLineError(ValueError):
    """A command-line argument the tool cannot take (a missing checkpoint file, a bad
    output name); the message says what was expected."""


class ConfigOptionError(CommandLineError):
    """A command-line config option (``--cfg-options``) the config cannot take as given;
    the message says how to write it."""


def user_errors() -> Tuple[Type[BaseException], ...]:
    """The exception types that describe the user's input, not a bug of the code."""
    from stan_mm.apis.features import BankMismatchError
    from stan_mm.apis.video import ViewsError
    from stan_mm.compat.checkpoint import CorruptCheckpointError, UnsafeCheckpointError
    from stan_mm.datasets.readers_common import AnnotationError
    from stan_mm.datasets.synthetic import SyntheticDatasetExistsError
    from stan_mm.datasets.transforms.video_io import VideoReadError
    from stan_mm.engine.loops import (EmptyTrainDataloaderError,
                                      UnevenTrainDataloaderError)
    from stan_mm.engine.nonfinite_hook import NonFiniteTrainingError
    from stan_mm.errors import ConfigValueError
    from stan_mm.models.clip.builder import (CLIPArchMismatchError, CLIPArchMissingError,
                                             CLIPKeysMismatchError)
    from stan_mm.utils.checkpoint_check import CheckpointMismatchError
    # (NonFiniteTrainingError: the message names the iteration, the checkpoint to resume
    # from and what to change; a traceback adds nothing. ConfigValueError: a config value a
    # stan-mm class refused when it was built, the message names the argument)
    return (AnnotationError, CLIPArchMismatchError, CLIPArchMissingError, CLIPKeysMismatchError,
            CheckpointMismatchError, CorruptCheckpointError, UnsafeCheckpointError,
            VideoReadError, ViewsError, CommandLineError, BankMismatchError,
            SyntheticDatasetExistsError, NonFiniteTrainingError, EmptyTrainDataloaderError,
            UnevenTrainDataloaderError, ConfigValueError)


def user_path(path):
    """``path`` with a leading ``~`` / ``~user`` expanded (``os.path.expanduser``): the shell
    leaves ``--work-dir=~/x`` and a quoted ``'~/x'`` as they are, and a tool would then
    create a folder named ``~`` in the current one. Not a string (None): as is."""
    return os.path.expanduser(path) if isinstance(path, str) else path


def _dangling_link(path: str) -> Optional[str]:
    """The first of ``path`` and its parent folders that is a symbolic link to nothing
    (a target purged from scratch space), or None."""
    path = os.path.abspath(path)
    while True:
        if os.path.islink(path) and not os.path.exists(path):
            return path
        if os.path.exists(path):
            return None            # (an existing folder: its parents exist too)
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent


def _dangling_message(flag: str, path: str, link: str) -> str:
    target = os.readlink(link)
    where = (f'{flag} {path!r} is' if os.path.abspath(path) == link
             else f'{flag} {path!r}: {link!r} is')
    return (f'{where} a symbolic link to {target!r}, which does not exist (create the '
            f'target folder or remove the link)')


def check_output_file(path: str, flag: str) -> str:
    """Refuse, before any work, an output file path the tool could not write: an existing
    folder, a parent that is a file, a parent folder that cannot be created, a symbolic
    link into a folder that does not exist. Creates the missing parent folders. Returns
    ``path`` with ``~`` expanded (:func:`user_path`): the path to write.

    Raises:
        CommandLineError: naming ``flag`` and the path.
    """
    path = user_path(path)
    if os.path.isdir(path):
        raise CommandLineError(f'{flag} {path!r} is a folder; give a file name')
    if os.path.islink(path) and not os.path.exists(path):
        target = os.path.join(os.path.dirname(path), os.readlink(path))
        if not os.path.isdir(os.path.dirname(os.path.abspath(target))):
            raise CommandLineError(
                f'{flag} {path!r} is a symbolic link to {os.readlink(path)!r}, whose folder '
                f'does not exist (create that folder or remove the link)')
    parent = os.path.dirname(os.path.abspath(path))
    check_output_dir(parent, f'{flag} {path!r}: its folder')
    return path


def check_output_dir(path: str, flag: str) -> str:
    """Refuse, before any work, an output folder the tool could not use: an existing
    file, a path through a file, a symbolic link (or a link among its parent folders) to
    something that does not exist, or one that cannot be created (the OS reason is
    named). Creates it when missing. Returns ``path`` with ``~`` expanded
    (:func:`user_path`): the folder to use.

    Raises:
        CommandLineError: naming ``flag`` and the path.
    """
    path = user_path(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise CommandLineError(f'{flag} {path!r} is a file, not a folder; give a folder '
                               '(it is created when missing)')
    link = _dangling_link(path)
    if link is not None:
        raise CommandLineError(_dangling_message(flag, path, link))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        reason = e.strerror or str(e)
        raise CommandLineError(f'{flag} {path!r} cannot be created: {reason}') from e
    if not os.access(path, os.W_OK | os.X_OK):
        raise CommandLineError(f'{flag} {path!r} is not writable')
    return path


def check_input_file(path: str, flag: str, what: str = 'file') -> str:
    """Refuse a missing input file, or a folder given for it, naming ``flag``: "not
    found" only when nothing is there. Returns ``path`` with ``~`` expanded
    (:func:`user_path`): the file to read.

    Raises:
        CommandLineError
    """
    path = user_path(path)
    if os.path.isdir(path):
        raise CommandLineError(f'{flag} {path!r} is a folder; give the {what}')
    if not os.path.isfile(path):
        raise CommandLineError(f'{flag} {path!r}: {what} not found')
    return path


def _missing_file(exc: OSError) -> Optional[str]:
    """The file a FileNotFoundError of mmengine's config loader names."""
    if exc.filename:
        return str(exc.filename)
    import re
    found = re.search(r'file "(.+)" does not exist', str(exc))
    return found.group(1) if found else None


def _base_files(path: str, seen: set):
    """The ``_base_`` files of the config ``path`` and of its bases, as mmengine joins
    them (``<folder of the naming file>/<relative path>``), the missing ones included."""
    from mmengine.config import Config
    try:
        names = Config._get_base_files(path)
    except Exception:  # noqa: BLE001  (unreadable: mmengine's own error is raised)
        return
    for name in names if isinstance(names, (list, tuple)) else [names]:
        try:
            full, _ = Config._get_cfg_path(name, path)
        except Exception:  # noqa: BLE001
            continue
        yield full
        if os.path.isfile(full) and full not in seen:
            seen.add(full)
            yield from _base_files(full, seen)


def _is_base_file(config: str, missing: str) -> bool:
    """Whether ``missing`` is a ``_base_`` file of ``config`` (or of its bases)."""
    missing = os.path.normpath(os.path.abspath(missing))
    return any(os.path.normpath(os.path.abspath(f)) == missing
               for f in _base_files(config, set()))


def _missing_base_variable(exc: AttributeError, flag: str, path: str):
    """A :class:`CommandLineError` for ``_base_.name`` in a config file where no base file
    defines ``name`` (mmengine: a traceback ending in ``'ConfigDict' object has no
    attribute 'name'``), naming the file and line that reads it and the base's close
    names; None for any other AttributeError."""
    import difflib
    found = re.fullmatch(r"'ConfigDict' object has no attribute '(\w+)'", str(exc))
    tb, frames = exc.__traceback__, []
    while tb is not None:
        frames.append((tb.tb_frame, tb.tb_lineno))
        tb = tb.tb_next
    where = [(f, line) for f, line in frames if isinstance(f.f_globals.get('_base_'), Mapping)
             and str(f.f_code.co_filename).endswith('.py')
             and not _in_mmengine(f)]
    if not found or not where:
        return None
    frame, line = where[-1]
    name, base = found.group(1), frame.f_globals['_base_']
    import linecache
    text = linecache.getline(frame.f_code.co_filename, line)
    if not re.search(r'\b_base_\s*\.\s*' + name + r'\b', text):
        return None                  # (another attribute: _base_.model.name, ...)
    close = difflib.get_close_matches(name, [str(k) for k in base], n=3, cutoff=0.6)
    hint = f' (did you mean {", ".join(f"_base_.{c}" for c in close)}?)' if close else ''
    return CommandLineError(
        f'{flag} {path!r}: {frame.f_code.co_filename}, line {line}, reads _base_.{name}, '
        f'which none of its _base_ files defines{hint}. _base_.NAME is a variable or entry '
        f'of the base files as they set it')


def read_config(path: str, flag: str = 'CONFIG'):
    """``mmengine.config.Config.fromfile(path)`` (``~`` expanded), where a missing
    ``_base_`` file is explained in one line instead of a traceback.

    mmengine resolves a relative ``_base_`` against the folder of the file as named: a
    config reached through a symbolic link (``my.py -> configs/stan/x.py``) looks for
    ``../_base_`` next to the link. Such a config is then read through its real path
    (``os.path.realpath``), where its ``_base_`` files are.

    Raises:
        CommandLineError: a ``_base_`` file is missing (also through the real path),
            naming ``flag``, the config and the missing file.
    """
    from mmengine.config import Config
    path = user_path(path)
    real = os.path.realpath(path)
    candidates = [path] + ([real] if real != os.path.abspath(path) else [])
    for candidate in candidates:     # as named, then (a symbolic link) where it points
        try:
            return Config.fromfile(candidate)
        except AttributeError as exc:
            error = _missing_base_variable(exc, flag, path)
            if error is None:
                raise
            raise error from None
        except FileNotFoundError as exc:
            missing = _missing_file(exc)
            if missing is None or not _is_base_file(candidate, missing):
                raise
            error = exc
    link = (f' ({path!r} is a symbolic link to {real!r}; read through either)'
            if len(candidates) > 1 else '')
    raise CommandLineError(
        f'{flag} {path!r}: its _base_ file {missing!r} does not exist{link}. A relative '
        f'_base_ path is read from the folder of the config file that names it: keep a '
        f'copied config next to the _base_ folder it names (or a symbolic link to the '
        f'config, which is then read where it points), or name the base file by its '
        f'absolute path') from error


_QUOTES = '\'"'


def _next_comma(text: str) -> int:
    """The index of the first comma of ``text`` outside brackets (``len(text)`` when
    none), as mmengine's DictAction finds it (the first comma before which the ``(`` and
    ``)``, and the ``[`` and ``]``, are as many)."""
    if text.count('(') != text.count(')') or text.count('[') != text.count(']'):
        raise ValueError(f'unbalanced brackets in {text!r}')
    round_, square = 0, 0
    for i, char in enumerate(text):
        if char == '(':
            round_ += 1
        elif char == ')':
            round_ -= 1
        elif char == '[':
            square += 1
        elif char == ']':
            square -= 1
        elif char == ',' and round_ == 0 and square == 0:
            return i
    return len(text)


def _parse_spaced(text: str) -> Any:
    """mmengine's DictAction reading of a value (quotes stripped, ``[...]`` a list,
    ``(...)`` a tuple, ``a,b`` a list, numbers, True / False / None), with the spaces
    inside an element kept: only those around it are dropped.

    A value that is not bracketed as a whole and whose commas are all inside brackets
    (``f(a, b)``, ``/data/clips (2023, v2)``) is one value, read as a number, True /
    False / None or a string (spaces kept). mmengine's reader calls itself on the same
    text for it, without end (RecursionError)."""
    text = text.strip().strip(_QUOTES)
    is_tuple = False
    if text.startswith('(') and text.endswith(')'):
        is_tuple, text = True, text[1:-1]
    elif text.startswith('[') and text.endswith(']'):
        text = text[1:-1]
    elif ',' not in text or _next_comma(text) == len(text):
        return DictAction._parse_int_float_bool(text)
    values = []
    while text.strip():
        comma = _next_comma(text)
        values.append(_parse_spaced(text[:comma]))
        text = text[comma + 1:]
    return tuple(values) if is_tuple else values


def _bracketed_literal(text: str) -> Any:
    """``text`` (``[...]`` or ``(...)``) read as a Python literal of that kind, or
    :data:`_NOT_LITERAL`."""
    kind = {'[': list, '(': tuple}.get(text[:1])
    if kind is None or text[-1:] != {list: ']', tuple: ')'}[kind]:
        return _NOT_LITERAL
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _NOT_LITERAL
    return value if isinstance(value, kind) else _NOT_LITERAL


_NOT_LITERAL = object()


def parse_option_value(val: str) -> Any:
    """The value of one ``--cfg-options KEY=VALUE``, as mmengine's ``DictAction`` reads it
    (``1`` int, ``0.1`` float, ``True`` / ``false`` / ``None``, ``a,b`` or ``[a,b]`` a
    list, ``(a,b)`` a tuple, nested ``[(1,2),(3,4)]``), except that mmengine deletes every
    space of the value (``data_root=/data/my videos`` became ``/data/myvideos``):

    * a value without spaces and without quotes inside brackets: mmengine's reading,
      unchanged (but for the last case below, where mmengine fails);
    * a bracketed value (``[...]``, ``(...)``) with spaces or quotes that is a Python
      literal: Python's reading (``"['a video of {}.']"`` is ``['a video of {}.']``; a
      quoted item stays a string: ``['1', 'a,b']`` is ``['1', 'a,b']``, which mmengine
      read as ``[1, 'a', 'b']``);
    * any other value with spaces: mmengine's reading with the spaces inside each item
      kept (``/data/my videos``; ``[a video, b]`` is ``['a video', 'b']``; spaces around
      items and commas are dropped, as mmengine drops them);
    * a value (or item) whose commas are all inside brackets that do not enclose it
      whole, ``f(a, b)`` or ``/data/clips (2023, v2)``: one string, spaces kept (mmengine's
      reader recursed without end on it);
    * a value with a comma in quotes that reached the tool
      (``'data_root="/data/clips,2024"'`` in the shell) without brackets inside: that
      string, as written (mmengine split it at the comma); a quoted value without a comma
      (``'5'``) reads as mmengine reads it.

    Raises:
        ValueError: unbalanced brackets where items are split at commas.
    """
    core = val.strip().strip(_QUOTES).strip()
    bracketed = core[:1] in '([' and core[-1:] in ')]' and core != ''
    whole = val.strip()
    if (len(whole) >= 2 and whole[0] == whole[-1] and whole[0] in _QUOTES
            and not bracketed and whole[0] not in whole[1:-1] and ',' in whole):
        return whole[1:-1]         # quoted whole with a comma (quotes that reached the
        #                           tool): that string, not a list; '5' stays mmengine's 5
    if ' ' not in val and not (bracketed and any(q in core for q in _QUOTES)):
        # (mmengine's reading: _parse_spaced reads a value without spaces as
        # DictAction._parse_iterable does, but for a comma inside brackets that are not the
        # whole value, 'f(a,b)', where mmengine's recursion does not end)
        return _parse_spaced(val)
    if bracketed:
        value = _bracketed_literal(core)
        if value is not _NOT_LITERAL:
            return value
    return _parse_spaced(val)


#: the last component of a --cfg-options key that names one path (a comma in its value
#: is part of the path, not a list separator)
_PATH_KEY = re.compile(r'(^|\.)(data_root|work_dir|load_from|resume_from|ann_file|'
                       r'out_dir|\w*_(root|dir|file|path)|path|filename|video|img)$')


class ConfigOptionsAction(DictAction):
    """``--cfg-options KEY=VALUE ...`` of the tools: mmengine's ``DictAction`` with the
    spaces inside values kept (:func:`parse_option_value`), and a ``KEY=VALUE`` without
    ``=`` (or a value with unbalanced brackets) refused by argparse in one line instead of
    a traceback. A key that names one path (``data_root``, ``work_dir``, ``load_from``,
    ``ann_file``, ``*_root`` / ``*_dir`` / ``*_file`` / ``*_path``,
    ``data_prefix.video``) keeps a comma in its value (``/data/clips,2024``; mmengine made
    it a list). Reads into a dict for ``Config.merge_from_dict``, like mmengine's."""

    @staticmethod
    def _parse_iterable(val: str) -> Any:
        return parse_option_value(val)

    def __call__(self, parser, namespace, values, option_string=None):
        # (called unbound by tools/_cfg_options.py's ConfigOptions, the stand-in of the
        # tools whose --help does not import stan_mm: only self.dest is read)
        options = copy.copy(getattr(namespace, self.dest, None) or {})
        for kv in ([values] if isinstance(values, str) else values or ()):
            key, sep, val = kv.partition('=')
            key = key.strip()
            if not sep or not key:
                parser.error(f'{option_string or "--cfg-options"} {kv!r}: expected '
                             f'KEY=VALUE, e.g. train_dataloader.batch_size=8')
            try:
                options[key] = parse_option_value(val)
                if (isinstance(options[key], list) and _PATH_KEY.search(key)
                        and val.strip()[:1] not in '(['):
                    # a path with a comma (/data/clips,2024): never a list of paths
                    options[key] = val.strip()
            except ValueError as e:
                parser.error(f'{option_string or "--cfg-options"} {kv!r}: {e}')
            except RecursionError:     # (a last resort: brackets nested ~1000 deep)
                parser.error(f'{option_string or "--cfg-options"} {kv[:80]!r}'
                             f'{"..." if len(kv) > 80 else ""}: brackets nested too deeply')
        setattr(namespace, self.dest, options)


def is_user_error(exc: BaseException) -> bool:
    """An error about the user's input (:func:`run_tool` prints its message on one line):
    one of :func:`user_errors`, or a ``FileNotFoundError`` the code that raised it wrote a
    message for (``CLIP weights not found: 'checkpoints/clip/ViT-B-16.pt' ...``, mmengine's
    ``x can not be found``). One the OS raised (``[Errno 2] No such file or directory:
    'x'``) names the file but not what it was for: its traceback is kept, as is one
    re-raised from a DataLoader worker (its message holds the worker's traceback)."""
    if isinstance(exc, user_errors()):
        return True
    return (isinstance(exc, FileNotFoundError) and exc.errno is None
            and len(exc.args) == 1 and isinstance(exc.args[0], str)
            and ' ' in exc.args[0] and 'Traceback' not in exc.args[0])


def _worker_message(exc: BaseException) -> Optional[str]:
    """The original message of an error PyTorch re-raised from a DataLoader worker (its
    text is "Caught X in DataLoader worker process N. Original Traceback ...", ending with
    the line ``module.X: message``); None for other errors."""
    text = str(exc.args[0]) if len(exc.args) == 1 else ''
    if not text.startswith('Caught ') or 'Original Traceback' not in text:
        return None
    cls = type(exc)
    for prefix in (f'{cls.__module__}.{cls.__qualname__}: ', f'{cls.__qualname__}: '):
        at = text.rfind('\n' + prefix)
        if at >= 0:
            return text[at + 1 + len(prefix):].rstrip()
    return None


def describe(exc: BaseException) -> str:
    """The message to print: a video error re-raised from a DataLoader worker carries the
    worker's traceback in its text; its file and reason are what the user needs (of another
    error re-raised so: its original message). A KeyError's message without the quotes its
    ``str()`` adds."""
    filename, reason = getattr(exc, 'filename', None), getattr(exc, 'reason', None)
    if filename and reason and 'Traceback' in str(exc):
        return f'cannot read video file {filename!r}: {reason}'
    original = _worker_message(exc)
    if original is not None:
        return original
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc)


def _config_dicts(node, prefix: str = ''):
    """``(path, dict, type name)`` of every dict in the config tree ``node``: ``path`` the
    dotted key path (``model.backbone``; list items by index, ``custom_hooks.0``), the
    type name the last component of its ``type`` (a string or a class), else None."""
    if isinstance(node, Mapping):
        kind = node.get('type')
        yield prefix, node, (kind.rsplit('.', 1)[-1] if isinstance(kind, str)
                             else getattr(kind, '__name__', None))
        items = node.items()
    elif isinstance(node, (list, tuple)):
        items = enumerate(node)
    else:
        return
    for k, v in items:
        yield from _config_dicts(v, f'{prefix}.{k}' if prefix else str(k))


def _config_paths(node, key: str, cls_names: set):
    """``(path, typed)`` of every dict in the config tree ``node`` that holds ``key``
    (:func:`_config_dicts`), ``typed`` whether its ``type`` names one of ``cls_names``."""
    return ((path, name in cls_names) for path, entry, name in _config_dicts(node)
            if key in entry)


def _init_arguments(cls, upto: str) -> list:
    """The keyword arguments ``cls(...)`` takes: those of its ``__init__``, and where that
    passes ``**kwargs`` on, those of the base classes up to the one named ``upto`` (the
    class the TypeError names)."""
    import inspect
    names = []
    for klass in getattr(cls, '__mro__', (cls, )):
        try:
            params = inspect.signature(klass.__init__).parameters.values()
        except (TypeError, ValueError):
            break
        names += [p.name for p in params if p.name != 'self' and p.name not in names
                  and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if klass.__name__ == upto or not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names


def _var_keywords(frame) -> Optional[Mapping]:
    """The ``**kwargs`` dict of the function running in ``frame``, or None."""
    code = frame.f_code
    if not code.co_flags & 0x08:                     # (inspect.CO_VARKEYWORDS)
        return None
    index = code.co_argcount + code.co_kwonlyargcount + (1 if code.co_flags & 0x04 else 0)
    value = frame.f_locals.get(code.co_varnames[index])
    return value if isinstance(value, Mapping) else None


def _traceback_frames(exc: BaseException) -> list:
    tb, frames = exc.__traceback__, []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    return frames


def _config_root(frames) -> Optional[dict]:
    """The whole config of the run, found in ``frames`` (a tool's main's or
    ``Runner.from_cfg``'s ``cfg``, a Runner's ``self.cfg``), as a dict; None if none."""
    config_cls = getattr(sys.modules.get('mmengine.config'), 'Config', None)
    for frame in frames if config_cls is not None else ():
        owner = frame.f_locals.get('self')
        for found in (frame.f_locals.get('cfg'), owner.__dict__.get('cfg') if hasattr(
                owner, '__dict__') else None):
            if isinstance(found, config_cls):
                return dict(found.items())
    return None


def _in_mmengine(frame) -> bool:
    mmengine_dir = os.path.dirname(sys.modules['mmengine'].__file__) \
        if 'mmengine' in sys.modules else None
    return bool(mmengine_dir) and os.path.abspath(frame.f_code.co_filename).startswith(
        mmengine_dir + os.sep)


def unexpected_argument_error(exc: BaseException):
    """A :class:`~stan_mm.errors.ConfigValueError` for ``exc`` when it is a misspelled or
    unknown key of a config entry: a ``TypeError`` ``X.__init__() got an unexpected keyword
    argument 'k'`` raised by mmengine while it built a class from the config (the call
    that failed is in mmengine's code: its registry's ``build_from_cfg``, the runner's
    ``DataLoader(...)``) with ``k`` a key of the config entry it was building. The message
    names the key path (``model.backbone.detph``), the closest valid argument and the
    arguments the class takes. Anything else (a bug of the code calling a function with a
    wrong keyword): None, and the traceback is kept."""
    import re
    if type(exc) is not TypeError:
        return None
    match = re.search(r"(\w+)\.__init__\(\) got an unexpected keyword argument '(\w+)'",
                      str(exc))
    frames = _traceback_frames(exc)
    if not match or not frames:
        return None
    named, key = match.groups()
    caller = len(frames) - 1             # the frame whose call failed to bind its arguments
    # an __init__ passing the key on in its **kwargs (I3DHead -> BaseHead): the call that
    # built the class from the config is further out
    while caller > 0 and frames[caller].f_code.co_name == '__init__' and key in (
            _var_keywords(frames[caller]) or ()):
        caller -= 1
    caller = frames[caller]
    if not _in_mmengine(caller):
        return None
    if not any(isinstance(v, Mapping) and key in v for v in caller.f_locals.values()):
        return None                      # (the keyword did not come from a config entry)
    cls = next((v for v in caller.f_locals.values() if isinstance(v, type) and named in
                (c.__name__ for c in v.__mro__)), None) or caller.f_globals.get(named)
    cls_name = getattr(cls, '__name__', named)
    root = _config_root(frames)
    paths = list(_config_paths(root, key, {cls_name, named})) if root is not None else []
    if root is not None and not paths:
        return None     # no config entry sets the key: the code built that dict (a bug)
    typed = [p for p, t in paths if t] or [p for p, _ in paths]
    where = ', '.join(f'{p}.{key}' if p else key for p in typed[:3]) or repr(key)
    args = _init_arguments(cls, named) if isinstance(cls, type) else []
    import difflib
    close = difflib.get_close_matches(key, args, n=1, cutoff=0.6)
    from stan_mm.errors import ConfigValueError
    prefix = f'{typed[0]}.' if typed and typed[0] else ''
    return ConfigValueError(
        f'the config sets {where}, which {cls_name} does not take'
        + (f'; did you mean {close[0]!r}?' if close else '.')
        + (f' {cls_name} takes: {", ".join(args)}' if args else '')
        + (f' (fix it in the config or --cfg-options: {prefix}{close[0]}=...)' if close
           else ' (remove it from the config or --cfg-options)'))


def missing_argument_error(exc: BaseException):
    """A :class:`~stan_mm.errors.ConfigValueError` for ``exc`` when a config entry lacks an
    argument its class requires: a ``TypeError`` ``X.__init__() missing 1 required
    positional argument: 'k'`` raised where mmengine built the class from the config (its
    registry's ``build_from_cfg``). The message names the entry's key path
    (``model.cls_head``), the missing arguments and the ``--cfg-options`` that sets them.
    Anything else (the code calling a function without an argument): None, and the
    traceback is kept."""
    import re
    if type(exc) is not TypeError:
        return None
    match = re.search(r"(\w+)\.__init__\(\) missing \d+ required (?:positional|keyword-only) "
                      r"arguments?: (.+)$", str(exc))
    frames = _traceback_frames(exc)
    if not match or not frames:
        return None
    named = match.group(1)
    missing = re.findall(r"'(\w+)'", match.group(2))
    caller = len(frames) - 1
    # an __init__ passing its **kwargs on to the class the error names (a subclass of it):
    # the call that built the class from the config is further out
    while caller > 0 and frames[caller].f_code.co_name == '__init__' and _var_keywords(
            frames[caller]) is not None:
        caller -= 1
    caller = frames[caller]
    if not missing or not _in_mmengine(caller):
        return None
    cls = next((v for v in caller.f_locals.values() if isinstance(v, type) and named in
                (c.__name__ for c in v.__mro__)), None)
    if cls is None or not any(isinstance(v, Mapping) for v in caller.f_locals.values()):
        return None                      # (not a class built from a config entry)
    cls_name = cls.__name__
    root = _config_root(frames)
    paths = ([path for path, entry, name in _config_dicts(root)
              if name == cls_name and any(m not in entry for m in missing)]
             if root is not None else [])
    if root is not None and not paths:
        return None     # no config entry of that type lacks it: the code built the dict
    where = ', '.join(p for p in paths[:3] if p)
    from stan_mm.errors import ConfigValueError
    plural = 's' if len(missing) > 1 else ''
    sets = ' '.join(f'{paths[0]}.{m}=...' if paths and paths[0] else f'{m}=...'
                    for m in missing)
    return ConfigValueError(
        f'the config entry {where or cls_name} (type={cls_name!r}) lacks the argument{plural} '
        f'{", ".join(repr(m) for m in missing)}, which {cls_name} requires: set '
        f'{"them" if plural else "it"} in the config or with --cfg-options {sets}')


#: the top-level config keys mmengine's Runner reads (Runner.from_cfg)
RUNNER_KEYS = (
    'model', 'work_dir', 'train_dataloader', 'val_dataloader', 'test_dataloader',
    'train_cfg', 'val_cfg', 'test_cfg', 'auto_scale_lr', 'optim_wrapper', 'param_scheduler',
    'val_evaluator', 'test_evaluator', 'default_hooks', 'custom_hooks', 'data_preprocessor',
    'load_from', 'resume', 'launcher', 'env_cfg', 'log_processor', 'log_level',
    'visualizer', 'default_scope', 'randomness', 'experiment_name', 'runner_type',
    'custom_imports', 'vis_backends')


def misspelled_keys(cfg) -> list:
    """``(key, runner key)`` for top-level keys of ``cfg`` that look like a misspelled key
    the Runner reads (``train_dataloder``): mmengine ignores unknown top-level keys, so
    the setting would silently not apply. Close = difflib ratio >= 0.9."""
    import difflib
    found = []
    for key in cfg.keys():
        if key in RUNNER_KEYS or key.startswith('_'):
            continue
        close = difflib.get_close_matches(key, RUNNER_KEYS, n=1, cutoff=0.9)
        if close:
            found.append((key, close[0]))
    return found


def warn_misspelled_keys(cfg, tool: str, options: Optional[Mapping] = None) -> None:
    """Print a warning for each :func:`misspelled_keys` entry, and for a top-level
    ``vis_backends`` set where it does nothing (:func:`ineffective_vis_backends`;
    ``options``: the ``--cfg-options``)."""
    for key, runner_key in misspelled_keys(cfg):
        config_warning(
            tool, f'the config sets {key!r}, which nothing reads; did you mean '
            f'{runner_key!r}? (mmengine ignores unknown top-level keys)')
    message = ineffective_vis_backends(cfg, options)
    if message:
        config_warning(tool, message)
    for message in ineffective_variable_options(cfg, options):
        config_warning(tool, message)


def ineffective_variable_options(cfg, options: Optional[Mapping] = None) -> list:
    """Why a top-level ``--cfg-options`` key (no dot, not a key the Runner reads) changes
    nothing, one message per key: the config file used it as a variable when it was
    evaluated (``data_root = 'data/k400'`` copied into every dataset's ``data_root``), and
    the entries that hold a key of that name still have another value. The message names
    them and the options that set them (mmengine replaces the variable, not its copies;
    a user's ``data_root=/data/clips`` trained on the config's folder)."""
    messages = []
    for key, value in (options or {}).items():
        if '.' in key or key in RUNNER_KEYS or key == 'vis_backends':
            continue
        stale = [path for path, entry, _ in _config_dicts(dict(cfg.items()))
                 if path and key in entry and _plain_tree(entry[key]) != _plain_tree(value)]
        if not stale:
            continue
        shown = ' '.join(f'{p}.{key}={value}' for p in stale[:3]) + (
            ' ...' if len(stale) > 3 else '')
        messages.append(
            f'--cfg-options {key}={value} changes the config\'s variable {key!r} only: the '
            f'config copied it when it was read, and {", ".join(f"{p}.{key}" for p in stale[:3])}'
            f'{" ..." if len(stale) > 3 else ""} still hold{"s" if len(stale) == 1 else ""} '
            f'another value. Set {"it" if len(stale) == 1 else "them"} instead: '
            f'--cfg-options {shown}')
    return messages


#: variables that :func:`check_model_variant` reports in its own words
_VARIANT_VARIABLES = ('clip_arch', 'num_frames')
#: the top-level keys :func:`stale_variable_copies` compares for each tool
TOOL_KEYS = {'test.py': ('model', 'test_dataloader', 'test_evaluator', 'test_cfg')}
_CHILD_DOC = 'docs/training_testing.md, "Your own config on top of ours"'


def _literal(value) -> Optional[ast.expr]:
    """An expression node that evaluates to ``value`` (str, numbers, bool, None and lists,
    tuples and dicts of them), or None for anything else (a class, ``inf``)."""
    if value is None or isinstance(value, (bool, str)) or (
            isinstance(value, (int, float)) and value == value and
            abs(value) != float('inf')):
        return ast.Constant(value)
    if isinstance(value, (list, tuple)):
        items = [_literal(v) for v in value]
        if any(i is None for i in items):
            return None
        return (ast.List if isinstance(value, list) else ast.Tuple)(items, ast.Load())
    if isinstance(value, dict):
        keys = [_literal(k) if isinstance(k, (str, int)) else None for k in value]
        values = [_literal(v) for v in value.values()]
        if any(n is None for n in keys + values):
            return None
        return ast.Dict(keys, values)
    return None


def _evaluate_forcing(filename: str, forced: Mapping) -> dict:
    """The config ``filename`` as mmengine evaluates it, except that every top-level
    assignment to a name of ``forced``, in the file and in each of its ``_base_`` files,
    assigns ``forced[name]`` (an expression node) instead: the config a base would give if
    it were evaluated again with the child's value of the variable."""
    import mmengine.config.config as mm_config
    from unittest import mock
    from mmengine.config import Config
    remover = mm_config.RemoveAssignFromAST

    class Forcing(remover):
        def visit_Module(self, node):
            node = self.generic_visit(node)         # (the _base_ assignment removed)
            body = []
            for stmt in node.body:
                target = (stmt.targets[0] if isinstance(stmt, ast.Assign)
                          and len(stmt.targets) == 1 else getattr(stmt, 'target', None))
                name = target.id if isinstance(target, ast.Name) else None
                if name in forced and isinstance(stmt, (ast.Assign, ast.AnnAssign,
                                                        ast.AugAssign)):
                    if isinstance(stmt, ast.AugAssign):
                        continue
                    stmt = ast.copy_location(ast.Assign(
                        [ast.Name(name, ast.Store())], copy.deepcopy(forced[name])), stmt)
                body.append(stmt)
            node.body = body
            return ast.fix_missing_locations(node)

    with mock.patch.object(mm_config, 'RemoveAssignFromAST', Forcing):
        return Config._file2dict(filename)[0]


def _differences(a, b, prefix: str):
    """``(path, value in a, value in b)`` of the leaves where the config trees differ."""
    a, b = _plain(a), _plain(b)
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            yield from _differences(a.get(key, _MISSING), b.get(key, _MISSING),
                                    f'{prefix}.{key}')
    elif (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))
          and len(a) == len(b)):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from _differences(x, y, f'{prefix}.{i}')
    elif _plain_tree(a) != _plain_tree(b):
        yield prefix, a, b


class _NotSet:
    def __repr__(self):
        return '<not set>'


_MISSING = _NotSet()


def _assigned_names(filename: str) -> list:
    """The names the config file assigns at its top level (parsed, never executed)."""
    try:
        with open(filename, encoding='utf-8') as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return []
    names = []
    for stmt in tree.body:
        targets = (stmt.targets if isinstance(stmt, ast.Assign) else
                   [stmt.target] if isinstance(stmt, ast.AnnAssign) else [])
        names += [t.id for t in targets if isinstance(t, ast.Name) and t.id not in names]
    return names


def stale_variable_copies(cfg, options: Optional[Mapping] = None, keys=None) -> list:
    """The entries that still hold a base config's copy of a variable the config file
    itself (``cfg.filename``) or a top-level ``--cfg-options`` key (``options``) sets.

    A base config builds its entries from its variables when it is evaluated
    (``data_root = 'data/kinetics400'`` copied into every dataset, ``test_crops`` choosing
    the crop of the test pipeline, ``classnames`` the head's class list); mmengine does not
    evaluate it again for a child config that assigns the variable, so the entries keep
    the base's value and nothing says so. Found by evaluating the config a second time
    with each such variable assigned its new value in every file of the chain: the entries
    of the Runner keys (``keys``: these only) that then differ, less those an option sets,
    are the stale copies.

    Returns:
        list of ``(name, new value, [(path, value now, value from the variable), ...])``;
        empty for a config that is not a ``.py`` file, and where the second evaluation
        fails (the config is then read as it is, with no check).
    """
    from mmengine.config import Config
    options = dict(options or {})
    filename = getattr(cfg, 'filename', None)
    if not filename or not str(filename).endswith('.py') or not os.path.isfile(filename):
        return []
    keys = [k for k in (keys or RUNNER_KEYS) if k != 'vis_backends']
    names = [n for n in _assigned_names(filename) + [k for k in options if '.' not in k]
             if not n.startswith('_') and n not in RUNNER_KEYS
             and n not in _VARIANT_VARIABLES]
    names = list(dict.fromkeys(names))
    if not names:
        return []
    try:
        if Config._is_lazy_import(filename):
            return []
        as_read = Config._file2dict(filename)[0]
    except Exception:  # noqa: BLE001  (mmengine's own reading reports it)
        return []
    forced = {}
    for name in names:
        value = options[name] if name in options else as_read.get(name, _MISSING)
        node = None if value is _MISSING else _literal(_plain_tree(value))
        if node is not None:
            forced[name] = (value, node)

    def covered(path):
        return any(path == k or path.startswith(k + '.') or k.startswith(path + '.')
                   for k in options if '.' in k)

    def stale(names):
        try:
            again = _evaluate_forcing(filename, {n: forced[n][1] for n in names})
        except Exception:  # noqa: BLE001
            return []
        return [(path, now, new) for key in keys
                for path, now, new in _differences(as_read.get(key, _MISSING),
                                                   again.get(key, _MISSING), key)
                if not covered(path)]

    if not forced or not stale(list(forced)):
        return []
    found = []
    for name, (value, _) in forced.items():
        entries = stale([name])
        if entries:
            found.append((name, value, entries))
    return found


def _short(value, width: int = 60) -> str:
    value = _plain_tree(value)
    text = repr(value)
    if len(text) <= width:
        return text
    if isinstance(value, list):
        return f'[... {len(value)} entries]'
    return text[:width - 4] + '...' + text[-1]


def _option_text(value) -> Optional[str]:
    """``value`` as written after ``--cfg-options KEY=``, or None (a list, a dict)."""
    value = _plain(value)
    if isinstance(value, str):
        return repr(value) if (not value or any(c in value for c in ' ,[]()\'"')) else value
    if value is None or isinstance(value, (bool, int, float)):
        return str(value)
    return None


def warn_stale_variables(cfg, tool: str, options: Optional[Mapping] = None) -> None:
    """Warn (stderr, as ``tool``) for each :func:`stale_variable_copies` variable, naming
    the entries to set and how. ``--cfg-options`` keys that
    :func:`ineffective_variable_options` reports already are left to it."""
    if not is_first_rank():
        return                         # (every process of a distributed run parses it)
    options = dict(options or {})
    # (ineffective_variable_options names the entries of the option's own key name)
    reported = [k for k, v in options.items()
                if '.' not in k and ineffective_variable_options(cfg, {k: v})]
    filename = str(getattr(cfg, 'filename', '') or '')
    shown = os.path.relpath(filename) if filename and not os.path.relpath(
        filename).startswith('..') else filename
    for name, value, entries in stale_variable_copies(cfg, options,
                                                      keys=TOOL_KEYS.get(tool)):
        if name in reported:
            entries = [e for e in entries if e[0].rsplit('.', 1)[-1] != name]
            if not entries:
                continue
        one = len(entries) == 1
        where = (f'--cfg-options gives {name}={_option_text(value) or _short(value)}'
                 if name in options else f'the config {shown} sets {name}={_short(value)}')
        listed = '; '.join(f'{path}={_short(now)} instead of {_short(new)}'
                           for path, now, new in entries[:6])
        if len(entries) > 6:
            listed += f'; and {len(entries) - 6} more'
        written = [(path, _option_text(new)) for path, _, new in entries]
        fix = ('--cfg-options ' + ' '.join(f'{p}={v}' for p, v in written) + ', or '
               if all(v is not None for _, v in written) and len(written) <= 6 else '')
        config_warning(
            tool, f'{where}, but a base config used {name} when it was evaluated, and '
            f'mmengine does not evaluate a base config again for a new value: '
            f'{"this entry" if one else f"these {len(entries)} entries"} built from it '
            f'still hold{"s" if one else ""} the base\'s value: {listed}. Set '
            f'{"it" if one else "them"} too: {fix}the same key{"" if one else "s"} in the '
            f'config (a dict there merges into the base\'s, a list replaces the base\'s '
            f'whole: restate a pipeline as configs/stan/k400_self_b16_16f.py does), or '
            f'leave {name} as the base sets it ({_CHILD_DOC})')


def _plain_tree(value):
    """``value`` with every ConfigDict / tuple turned into a dict / list (for comparing)."""
    value = _plain(value)
    if isinstance(value, dict):
        return {k: _plain_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_tree(v) for v in value]
    return value


def ineffective_vis_backends(cfg, options: Optional[Mapping] = None) -> Optional[str]:
    """Why a top-level ``vis_backends`` does nothing, or None: set by ``--cfg-options``
    (``options``) or in the config file itself (not only in
    ``configs/_base_/default_runtime.py``, where ``visualizer`` is built from it) and
    different from ``visualizer.vis_backends``, which is what mmengine reads: the variable
    was read once, when the base file was evaluated."""
    if (cfg.get('vis_backends') is None
            or not _set_where_it_does_nothing(cfg, 'vis_backends', options)):
        return None
    visualizer = cfg.get('visualizer')
    used = visualizer.get('vis_backends') if hasattr(visualizer, 'get') else None
    if _plain_tree(cfg.get('vis_backends')) == _plain_tree(used):
        return None
    return (f'the config sets vis_backends={_plain_tree(cfg.get("vis_backends"))!r}, which '
            f'does nothing: the visualizer was built from that variable when the base '
            f'runtime config was evaluated, and mmengine reads visualizer.vis_backends '
            f'(now {_plain_tree(used)!r}). Set visualizer.vis_backends instead, e.g. in a '
            f'child config: visualizer = dict(type=\'ActionVisualizer\', vis_backends=['
            f'dict(type=\'LocalVisBackend\'), dict(type=\'TensorboardVisBackend\')]) '
            f'(docs/training_testing.md, "Logs")')


#: config entries that must be numbers (``int``: whole numbers), checked before the run
#: is built: ``--cfg-options optim_wrapper.optimizer.lr=1e-3x`` is read as a string, which
#: mmengine only trips over deep inside (``TypeError: can't multiply sequence``)
NUMERIC_OPTIONS = (
    ('optim_wrapper.optimizer.lr', float), ('optim_wrapper.optimizer.weight_decay', float),
    ('optim_wrapper.optimizer.eps', float), ('optim_wrapper.clip_grad.max_norm', float),
    # mmengine's loops take int(x) of these and accept 30.0 or 1e5
    ('train_cfg.max_epochs', 'whole'), ('train_cfg.max_iters', 'whole'),
    ('train_cfg.val_interval', 'whole'),
    # torch's DataLoader takes only ints
    ('train_dataloader.batch_size', int), ('train_dataloader.num_workers', int),
    ('val_dataloader.batch_size', int), ('val_dataloader.num_workers', int),
    ('test_dataloader.batch_size', int), ('test_dataloader.num_workers', int))


def check_numeric_options(cfg) -> None:
    """Raise :class:`ConfigOptionError` listing the :data:`NUMERIC_OPTIONS` of ``cfg`` that
    are set to something else than a number: ``float`` any number, ``'whole'`` a whole
    number (``30`` or ``30.0``), ``int`` an integer written as one (``8``, not ``8.0``);
    and the ``batch_size`` (< 1) and ``num_workers`` (< 0) of any ``*_dataloader`` out of
    range (torch would fail deep inside the run)."""
    bad = []
    for path, kind in NUMERIC_OPTIONS:
        node = cfg
        for part in path.split('.'):
            node = node.get(part) if hasattr(node, 'get') else None
            if node is None:
                break
        if node is None:
            continue
        number = isinstance(node, (int, float)) and not isinstance(node, bool)
        if kind is float:
            ok, want = number, 'a number'
        elif kind == 'whole':
            ok = number and float(node).is_integer()
            want = 'a whole number'
        else:
            ok = number and isinstance(node, int)
            want = (f'an integer: write {int(node)}, not {node!r}'
                    if number and float(node).is_integer() else 'an integer')
        if not ok:
            bad.append(f'{path}={node!r} (expected {want})')
    out_of_range = []
    for path, node in _loader_sizes(cfg):
        if path in [b.split('=')[0] for b in bad]:
            continue
        least = 1 if path.endswith('.batch_size') else 0
        if node < least:
            out_of_range.append(f'{path}={node!r} (expected an integer >= {least})')
    parts = []
    if bad:
        parts.append('config entries that must be numbers are not: ' + '; '.join(bad))
    if out_of_range:
        parts.append('config entries out of range: ' + '; '.join(out_of_range))
    if parts:
        raise ConfigOptionError('; '.join(parts) + '. Check the --cfg-options values')


def _loader_sizes(cfg):
    """``(path, value)`` of the ``batch_size`` and ``num_workers`` numbers (not bools) of
    every top-level ``*_dataloader`` entry of ``cfg``."""
    for key in list(cfg.keys()):
        loader = cfg.get(key)
        if not key.endswith('_dataloader') or not hasattr(loader, 'get'):
            continue
        for name in ('batch_size', 'num_workers'):
            node = loader.get(name)
            if isinstance(node, (int, float)) and not isinstance(node, bool):
                yield f'{key}.{name}', node


def route_evaluator_options(cfg, options: dict) -> dict:
    """``--cfg-options`` with ``test_evaluator.<option>`` keys routed for a list of
    evaluators. ``test_evaluator.dsl=True`` (docs/retrieval.md) addresses one metric;
    where the config's ``test_evaluator`` is a list (the retrieval quickstart adds its
    twin metric), the key goes to the list's ``RetrievalRecallMetric`` (mmengine would
    fail with "list indices must be integers"). A tuple becomes a list in ``cfg``.

    Raises:
        ConfigOptionError: no single RetrievalRecallMetric entry, or a ``type`` key.
    """
    evaluators = cfg.get('test_evaluator')
    if not isinstance(evaluators, (list, tuple)):
        return options
    if isinstance(evaluators, tuple):     # mmengine merges index keys into lists only
        cfg.test_evaluator = evaluators = list(evaluators)
    types = [e.get('type') for e in evaluators]
    index = [i for i, t in enumerate(types) if t == 'RetrievalRecallMetric']
    routed = {}
    for key, value in options.items():
        head, _, rest = key.partition('.')
        if head == 'test_evaluator' and rest and not rest.split('.')[0].isdigit():
            if len(index) != 1 or rest.split('.')[0] == 'type':
                raise ConfigOptionError(
                    f'--cfg-options {key}: test_evaluator is a list of {types} here; name '
                    f'the entry: test_evaluator.<index>.{rest}')
            key = f'test_evaluator.{index[0]}.{rest}'
        routed[key] = value
    return routed


def _scheduled_param(sched) -> str:
    """What a ``param_scheduler`` entry schedules: ``'lr'`` (``*LR``), ``'momentum'``
    (``*Momentum``), else its ``param_name``."""
    name = _type_name(sched)
    if name.endswith('LR'):
        return 'lr'
    if name.endswith('Momentum'):
        return 'momentum'
    return str(sched.get('param_name'))


def _returns_to_base(sched) -> bool:
    """A warm-up: after its ``end`` the value is the optimizer's own (``ConstantLR``, a
    ``LinearLR`` to ``end_factor=1``, ``*Warmup*``), so ending early changes nothing."""
    name = _type_name(sched)
    if name.startswith('Constant') or 'Warmup' in name:
        return True
    end_factor = sched.get('end_factor', 1.0)
    return (name.startswith('Linear') and isinstance(end_factor, (int, float))
            and float(end_factor) == 1.0)


def warn_schedule_beyond_training(cfg, tool: str, resume: bool = False) -> None:
    """Say (on stderr, as ``tool``) when the epoch-based parameter schedules do not fit
    ``train_cfg.max_epochs``:

    * a child config (or ``--cfg-options train_cfg.max_epochs=N``) that shortens training
      keeps the base's schedule, whose warm-up and decay were laid out for the base's
      epochs: a scheduler that starts or ends past ``max_epochs``;
    * one that lengthens it (the schedule's ``end`` and ``T_max`` come from a
      ``max_epochs`` variable read once, when the base file was evaluated): the last
      decaying scheduler of a parameter ends before ``max_epochs``, so the epochs after
      it train at the value it ends with (a cosine's ``eta_min``, 0 in the recognition
      schedule). One line per such scheduler, naming the options to set. Warm-ups that
      return to the optimizer's value (:func:`_returns_to_base`), schedules written in
      iterations and parameters with an open-ended scheduler are not compared.

    ``resume``: the run resumes, and mmengine restores the schedulers' state (``end`` and
    ``T_max`` too) from the checkpoint; the fix named is then a new run from the
    checkpoint's weights."""
    max_epochs = (cfg.get('train_cfg') or {}).get('max_epochs')
    schedulers = cfg.get('param_scheduler') or []
    if max_epochs is None:
        return
    schedulers = list(schedulers if isinstance(schedulers, (list, tuple)) else [schedulers])
    for i, sched in enumerate(schedulers):
        end, begin = sched.get('end'), sched.get('begin', 0)
        if not sched.get('by_epoch', True) or end is None or end <= max_epochs:
            continue
        config_warning(
            tool, f'param_scheduler[{i}] ({sched.get("type")}) runs over epochs '
            f'{begin}..{end}, but max_epochs={max_epochs}: '
            + ('it never starts' if begin >= max_epochs else 'it is cut short')
            + '. Restate param_scheduler for the new length (docs/data_preparation.md, '
            '"Your own videos")')
    # schedules that end before training does
    by_param = {}
    for i, sched in enumerate(schedulers):
        if hasattr(sched, 'get'):
            by_param.setdefault(_scheduled_param(sched), []).append((i, sched))
    for param, entries in by_param.items():
        if any(s.get('end') is None for _, s in entries):   # one runs to the end
            continue
        decaying = [(i, s) for i, s in entries
                    if s.get('by_epoch', True) and isinstance(s.get('end'), (int, float))
                    and not _returns_to_base(s)]
        if not decaying:
            continue
        last = max(s['end'] for _, s in decaying)
        if last >= max_epochs:
            continue
        what = 'learning rate' if param == 'lr' else param
        for i, sched in decaying:
            if sched['end'] != last:
                continue
            begin = sched.get('begin', 0)
            options = f'param_scheduler.{i}.end={max_epochs}'
            if 'T_max' in sched and isinstance(begin, (int, float)):
                options += f' param_scheduler.{i}.T_max={max_epochs - begin}'
            if resume:
                fix = ('This run resumes: mmengine restores the schedulers\' state from the '
                       'checkpoint (end and T_max too), so a new schedule takes effect only '
                       f'in a new run from its weights: --cfg-options load_from=CKPT '
                       f'{options} without --resume')
            else:
                fix = (f'Set its end too: --cfg-options {options}, or restate '
                       f'param_scheduler in a child config that sets max_epochs '
                       f'(docs/data_preparation.md, "Your own videos")')
            config_warning(
                tool, f'param_scheduler[{i}] ({_type_name(sched)}) ends at '
                f'epoch {last}, but train_cfg.max_epochs={max_epochs}: '
                f'{_epochs(last + 1, max_epochs)} train at the {what} it ends with. {fix}')


#: optimizer settings a resumed run takes from its checkpoint (mmengine restores the
#: optimizer's parameter groups), compared with the training config stored there
_OPTIMIZER_KEYS = ('lr', 'weight_decay', 'betas', 'eps', 'momentum')


def _leaves(node, prefix: str):
    """``(dotted path, value)`` of every leaf of a nested dict (lists are leaves)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f'{prefix}[{key!r}]' if '.' in str(key)
                               else f'{prefix}.{key}')
    else:
        yield prefix, node


def _optimizer_settings(optim_wrapper) -> dict:
    """``{option: value}`` of the :data:`_OPTIMIZER_KEYS` of ``optim_wrapper.optimizer``
    and every leaf of ``optim_wrapper.paramwise_cfg`` (``lr_mult``, ``decay_mult``, ...)."""
    optim_wrapper = _plain_tree(optim_wrapper)
    if not isinstance(optim_wrapper, dict):
        return {}
    out = {}
    optimizer = optim_wrapper.get('optimizer')
    if isinstance(optimizer, dict):
        out.update({f'optim_wrapper.optimizer.{k}': optimizer[k] for k in _OPTIMIZER_KEYS
                    if k in optimizer})
    paramwise = optim_wrapper.get('paramwise_cfg')
    if isinstance(paramwise, dict):
        out.update(_leaves(paramwise, 'optim_wrapper.paramwise_cfg'))
    return out


def _epochs(first: int, last: int) -> str:
    """``'epoch 5'`` or ``'epochs 5..6'``."""
    return f'epoch {first}' if first == last else f'epochs {first}..{last}'


def resume_warnings(checkpoint, cfg, max_epochs=None, name: str = 'CKPT',
                    tool: str = 'train.py') -> list:
    """What a resume from ``checkpoint`` does not take from ``cfg``, as ``(level,
    message)`` pairs to log (``'WARNING'`` or ``'INFO'``):

    * its training config (``meta['cfg']``, parsed, never executed) had another
      ``train_cfg.max_epochs`` than ``cfg``: the parameter schedules go on from the
      checkpoint's state (mmengine restores their ``end`` and ``T_max`` too), laid out
      for the checkpoint's run;
    * the optimizer settings (``lr``, ``weight_decay``, ``betas``, ``eps``,
      ``momentum``, every ``paramwise_cfg`` entry) differ: mmengine restores the
      optimizer's parameter groups, so the checkpoint's values are used;
    * the checkpoint is at or past ``max_epochs`` (this run's, else ``cfg``'s): nothing
      is left to train (INFO).

    ``name``: the checkpoint's path, for the commands in the messages."""
    from stan_mm.utils.checkpoint_check import _saved_config_values
    out = []
    saved = _saved_config_values(checkpoint, ('train_cfg', 'optim_wrapper',
                                              'param_scheduler'))
    train_cfg = cfg.get('train_cfg') or {}
    if max_epochs is None:
        max_epochs = train_cfg.get('max_epochs')
    new_run = f'--cfg-options load_from={name} without --resume'
    saved_train = saved.get('train_cfg') if isinstance(saved.get('train_cfg'), dict) else {}
    saved_epochs = saved_train.get('max_epochs')
    if (isinstance(saved_epochs, int) and isinstance(max_epochs, int)
            and saved_epochs != max_epochs):
        schedulers = saved.get('param_scheduler')
        schedulers = schedulers if isinstance(schedulers, (list, tuple)) else [schedulers]
        ends = [s.get('end') for s in schedulers if isinstance(s, dict)
                and s.get('by_epoch', True) and isinstance(s.get('end'), int)
                and not _returns_to_base(s)]
        ends = max(ends) if ends else None
        if ends is not None and ends < max_epochs:
            effect = (f'; they end at epoch {ends}, so {_epochs(ends + 1, max_epochs)} '
                      f'train at the learning rate they end with')
        elif ends is not None and ends > max_epochs:
            effect = (f'; they end at epoch {ends}, so training stops before they reach '
                      f'their end')
        else:
            effect = ''
        out.append(('WARNING', (
            f'{tool} --resume: the checkpoint\'s run had train_cfg.max_epochs='
            f'{saved_epochs}, this one has {max_epochs}: the parameter schedules go on as '
            f'the checkpoint has them (mmengine restores their state, end and T_max too; '
            f'param_scheduler options of this run do not apply){effect}. For a new '
            f'schedule, start a new run from its weights: {new_run} (with param_scheduler '
            f'set for the new length)')))
    if 'optim_wrapper' in saved:
        old, now = _optimizer_settings(saved['optim_wrapper']), \
            _optimizer_settings(cfg.get('optim_wrapper'))
        differ = [f'{k} {old.get(k, "unset")!r} (checkpoint) vs {now.get(k, "unset")!r}'
                  for k in sorted(set(old) | set(now)) if old.get(k) != now.get(k)]
        if differ:
            out.append(('WARNING', (
                f'{tool} --resume: optimizer settings differ from those of the '
                f'checkpoint\'s run: {"; ".join(differ)}. A resumed run uses the '
                f'checkpoint\'s values (mmengine restores the optimizer\'s parameter groups '
                f'and the schedules\' base values); those of this config do not apply. To '
                f'train with them from its weights, start a new run: {new_run}')))
    meta = checkpoint.get('meta') if hasattr(checkpoint, 'get') else None
    epoch = meta.get('epoch') if isinstance(meta, dict) else None
    if isinstance(epoch, int) and isinstance(max_epochs, int) and epoch >= max_epochs:
        out.append(('INFO', (
            f'{tool} --resume: the checkpoint is at epoch {epoch} and train_cfg.max_epochs='
            f'{max_epochs}: nothing is left to train, this run ends without training '
            f'(raise train_cfg.max_epochs to train on)')))
    return out


#: what each launcher reads from the environment
_LAUNCHER_ENV = {
    'pytorch': ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'),
    'slurm': ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST'),
    'mpi': ('OMPI_COMM_WORLD_LOCAL_RANK', 'OMPI_COMM_WORLD_RANK', 'OMPI_COMM_WORLD_SIZE',
            'MASTER_ADDR'),
}


def _start_command(launcher: str, tool: str) -> str:
    """How to start ``tool`` (``train.py`` / ``test.py``) under ``launcher``."""
    test = tool.startswith('test')
    args = 'CONFIG CHECKPOINT' if test else 'CONFIG'
    kind = 'test' if test else 'train'
    if launcher == 'pytorch':
        return (f'torchrun: bash tools/dist_{kind}.sh {args} N, or torchrun '
                f'--nproc_per_node N tools/{kind}.py {args} --launcher pytorch')
    if launcher == 'slurm':
        return f'srun: bash tools/slurm_{kind}.sh PARTITION JOB_NAME {args}'
    return "Open MPI's mpirun, with MASTER_ADDR exported"


def check_launcher(launcher: str, tool: str, environ=None) -> None:
    """Refuse a ``--launcher`` that does not match how the process was started.

    * ``none`` in one of several processes of a distributed job (``WORLD_SIZE`` > 1, as
      torchrun or a cluster's job controller set it): each process would run the whole
      job alone, on all the data, writing the same work dir (mmengine says "Distributed
      training: False" and goes on).
    * ``pytorch`` / ``slurm`` / ``mpi`` without the variables its starter sets (mmengine
      fails with a bare ``KeyError``).

    Raises:
        CommandLineError: naming the launcher to use, or how to start the tool.
    """
    env = os.environ if environ is None else environ
    if launcher == 'none':
        world = env.get('WORLD_SIZE', '')
        if world.isdigit() and int(world) > 1:
            raise CommandLineError(
                f'--launcher none, but this process is one of WORLD_SIZE={world} processes '
                f'of a distributed job (torchrun, or a job controller, set WORLD_SIZE): each '
                f'would run alone on all the data, into the same work dir. Add --launcher '
                f'pytorch (tools/dist_{"test" if tool.startswith("test") else "train"}.sh '
                f'passes it; a --launcher after its own overrides it), or unset WORLD_SIZE '
                f'for one process')
        step_tasks = env.get('SLURM_STEP_NUM_TASKS', '')
        if step_tasks.isdigit() and int(step_tasks) > 1 and 'SLURM_PROCID' in env:
            kind = 'test' if tool.startswith('test') else 'train'
            print(f'{tool}: warning: --launcher none in a Slurm job step of '
                  f'{step_tasks} tasks: if srun started this command {step_tasks} times, '
                  f'each runs the whole job alone; add --launcher slurm '
                  f'(tools/slurm_{kind}.sh passes it)', file=sys.stderr)
        return
    missing = [k for k in _LAUNCHER_ENV.get(launcher, ()) if k not in env]
    if missing:
        starter = _start_command(launcher, tool)
        raise CommandLineError(
            f'--launcher {launcher} needs the variables its starter sets; missing: '
            f'{", ".join(missing)}. Start {tool} with {starter}; or leave --launcher out '
            f'for one process')


def logger_names() -> set:
    """The names of the MMLogger instances that exist now (empty before mmengine's logging
    is imported)."""
    logging_mod = sys.modules.get('mmengine.logging')
    cls = getattr(logging_mod, 'MMLogger', None)
    return set(getattr(cls, '_instance_dict', None) or ())


def write_to_log_files(message: str, level: str = 'ERROR', exclude=()) -> None:
    """Write ``message`` to the log files (the file handlers: never the console) of the
    MMLogger instances whose names are not in ``exclude``, i.e. those a run created after
    ``exclude`` was taken (:func:`logger_names`): the work dir's ``<timestamp>.log`` of
    the run. No logger is created, and a file that cannot be written is left alone."""
    import logging
    logging_mod = sys.modules.get('mmengine.logging')
    cls = getattr(logging_mod, 'MMLogger', None)
    if cls is None:
        return
    caller = sys._getframe(1)   # (where the record says it comes from: ERROR lines name it)
    done = set()
    for name, logger in list(getattr(cls, '_instance_dict', {}).items()):
        if name in exclude:
            continue
        for handler in logger.handlers:
            path = getattr(handler, 'baseFilename', None)
            if not isinstance(handler, logging.FileHandler) or path in done:
                continue
            done.add(path)
            record = logger.makeRecord(logger.name, getattr(logging, level),
                                       caller.f_code.co_filename, caller.f_lineno, message,
                                       None, None, func=caller.f_code.co_name)
            try:
                handler.acquire()
                try:
                    if handler.stream is None:
                        continue
                    handler.stream.write(handler.format(record) + handler.terminator)
                    handler.flush()
                finally:
                    handler.release()
            except Exception:  # noqa: BLE001  (the error itself is on stderr already)
                pass


def error_hint(exc: BaseException, tool: str) -> Optional[str]:
    """A line to print after the error of ``exc``: what to do about it, where the message
    alone does not say."""
    from stan_mm.datasets.transforms.video_io import VideoReadError
    if isinstance(exc, FileNotFoundError) and 'CLIP weights not found' in str(exc):
        if tool.startswith('test'):
            return (f'{tool}: hint: a trained checkpoint holds every weight, so the model '
                    f'can be built without the CLIP file its config names: --cfg-options '
                    f'model.backbone.pretrained=None model.cls_head.text_encoder.pretrained='
                    f'None (recognition), model.pretrained=None (retrieval) '
                    f'(docs/training_testing.md)')
        return (f'{tool}: hint: the config\'s CLIP pretrained= entries name this file: put '
                f'the CLIP weights there (docs/weights.md), or name yours with --cfg-options '
                f'model.backbone.pretrained=PATH model.cls_head.text_encoder.pretrained=PATH '
                f'(recognition), model.pretrained=PATH (retrieval)')
    if isinstance(exc, VideoReadError) and tool.startswith('train'):
        return (f'{tool}: hint: --resume replays the same samples in the same order, so a '
                f'resumed run stops at this video again: fix or remove it '
                f'(tools/data/check_videos.py lists every unreadable video of a config\'s '
                f'splits), or wrap the training dataset in SkipUnreadable, which skips '
                f'unreadable videos and reports them (docs/robustness.md, "Skipping '
                f'unreadable videos in training")')
    return None


def _tolerant_console() -> None:
    """A console whose encoding cannot show every character (an ASCII locale without
    Python's UTF-8 mode) prints what it cannot as escapes (``\\u2116``) instead of
    ending the tool with ``UnicodeEncodeError`` after its work (a caption, a file name)."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, 'encoding', None) or '').lower().replace('-', '')
        if encoding and encoding != 'utf8' and hasattr(stream, 'reconfigure'):
            try:
                stream.reconfigure(errors='backslashreplace')
            except (ValueError, OSError):     # (a detached or closed stream)
                pass


def run_tool(main: Callable[[], object], tool: str) -> int:
    """Call ``main()``; return its exit status (an int it returns, else 0), or 2 after
    printing ``<tool>: error: <message>`` for an error of :func:`is_user_error` (with a hint
    line where :func:`error_hint` has one; re-raised as is when ``STAN_TRACEBACK=1``).

    The error that ends the run, a user error's line or another exception's traceback, is
    also written to the log file of the run (``<work_dir>/<timestamp>/<timestamp>.log``)
    when ``main`` got as far as creating one (:func:`write_to_log_files`).

    A config key the class it configures does not take (``TypeError ... unexpected keyword
    argument``, :func:`unexpected_argument_error`) is such an error too, told as a
    ``ConfigValueError`` naming the key path and the valid arguments, and so is a config
    entry without an argument its class requires (:func:`missing_argument_error`)."""
    _tolerant_console()
    before = logger_names()
    try:
        status = main()
    except Exception as exc:
        error = exc if is_user_error(exc) else (unexpected_argument_error(exc)
                                                or missing_argument_error(exc))
        if error is None:
            import traceback
            write_to_log_files(f'{tool}: error: {type(exc).__name__}: {exc}\n'
                               + traceback.format_exc().rstrip(), exclude=before)
            raise
        line = f'{tool}: error: {type(error).__name__}: {describe(error)}'
        hint = error_hint(error, tool)
        write_to_log_files(line + (f'\n{hint}' if hint else ''), exclude=before)
        if os.environ.get('STAN_TRACEBACK', '') not in ('', '0'):
            raise
        print(line + (f'\n{hint}' if hint else '') + '\n'
              '(STAN_TRACEBACK=1 shows where it was raised)', file=sys.stderr)
        return 2
    return status if isinstance(status, int) and not isinstance(status, bool) else 0


# ------------------------------------------------------------------ model variants
def _type_name(node) -> str:
    """``'CLIPSTAN'`` of a config entry's ``type`` (``'mmaction.CLIPSTAN'``, a class)."""
    kind = node.get('type') if hasattr(node, 'get') else None
    return getattr(kind, '__name__', str(kind)).rsplit('.', 1)[-1]


def _plain(value):
    return value.to_dict() if hasattr(value, 'to_dict') else value


def _same_arch(a, b) -> bool:
    """Two ``arch`` values name the same CLIP (``'ViT-B/16'`` is open_clip's
    ``'ViT-B-16-quickgelu'``; dicts compared as dicts)."""
    from stan_mm.models.clip.arch import OPENAI_NAMES
    a, b = _plain(a), _plain(b)
    if isinstance(a, str) and isinstance(b, str):
        return OPENAI_NAMES.get(a, a) == OPENAI_NAMES.get(b, b)
    return a == b


def _arch_embed_dim(arch):
    """Output width E of a CLIP ``arch`` (name or clip_cfg dict); None when the config
    does not say (``arch=None``: read from the weights) or the name is unknown (the model
    build names that)."""
    arch = _plain(arch)
    if isinstance(arch, dict):
        dim = arch.get('embed_dim')
        return dim if isinstance(dim, int) else None
    if isinstance(arch, str):
        from stan_mm.models.clip.arch import arch_from_name
        try:
            return int(arch_from_name(arch)['embed_dim'])
        except Exception:  # noqa: BLE001  (an unknown name: CLIPSTAN's own error says it)
            return None
    return None


def _arch_context_length(arch) -> Optional[int]:
    """Token length C of a CLIP ``arch``'s text tower (name or clip_cfg dict; open_clip's
    default 77 where a text_cfg does not say); None when the config does not say."""
    arch = _plain(arch)
    if isinstance(arch, str):
        from stan_mm.models.clip.arch import arch_from_name
        try:
            arch = arch_from_name(arch)
        except Exception:  # noqa: BLE001  (an unknown name: the model build names that)
            return None
    text = arch.get('text_cfg') if isinstance(arch, dict) else None
    length = text.get('context_length', 77) if isinstance(text, dict) else None
    return length if isinstance(length, int) and not isinstance(length, bool) else None


def _check_caption_length(cfg, model, loaders) -> None:
    """A ``CLIPBPETokenize`` step of one of ``loaders``' dataset pipelines that tokenizes
    to more tokens than the retriever's CLIP text tower takes fails at the first batch of
    that loader (for the validation loader: after a whole epoch of training)."""
    limit = _arch_context_length(model.get('arch'))
    if limit is None:
        return
    for loader in loaders:
        node = cfg.get(loader)
        path, ds = f'{loader}.dataset', node.get('dataset') if hasattr(node, 'get') else None
        while (hasattr(ds, 'get') and 'pipeline' not in ds
               and hasattr(ds.get('dataset'), 'get')):
            path, ds = f'{path}.dataset', ds['dataset']
        pipeline = ds.get('pipeline') if hasattr(ds, 'get') else None
        for i, step in enumerate(pipeline if isinstance(pipeline, (list, tuple)) else ()):
            if not hasattr(step, 'get') or _type_name(step) != 'CLIPBPETokenize':
                continue
            length = step.get('context_length', 77)
            if isinstance(length, int) and length > limit:
                raise ConfigOptionError(
                    f'{path}.pipeline.{i}.context_length={length} (CLIPBPETokenize), but '
                    f'the text tower of model.arch={_plain(model.get("arch"))!r} takes at '
                    f'most {limit} tokens (its text_cfg.context_length): the first batch '
                    f'of {loader} would fail. Set {path}.pipeline.{i}.context_length='
                    f'{limit} or less')


def _clip_owner(model):
    """``(config path, entry)`` where the video tower's CLIP ``arch`` is set: ``model`` for
    a ``STANRetriever`` (one CLIP for both towers), ``model.backbone`` for a
    ``CLIPSTAN`` backbone; None for other models."""
    if not hasattr(model, 'get'):
        return None
    if _type_name(model) == 'STANRetriever':
        return 'model', model
    backbone = model.get('backbone')
    if hasattr(backbone, 'get') and _type_name(backbone) == 'CLIPSTAN':
        return 'model.backbone', backbone
    return None


_VARIANT_DOC = 'docs/training_testing.md, "Model variants"'


def _set_where_it_does_nothing(cfg, name: str, options: Optional[Mapping]) -> bool:
    """Whether the top-level variable ``name`` is set by ``--cfg-options`` (``options``) or
    assigned in the config file itself (``cfg.filename``, parsed, never executed), not
    only in a base file, where the entries built from it read it."""
    if options and name in options:
        return True
    filename = getattr(cfg, 'filename', None)
    if not filename or not str(filename).endswith('.py') or not os.path.isfile(filename):
        return False
    import ast
    try:
        with open(filename, encoding='utf-8') as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return False
    return any(isinstance(t, ast.Name) and t.id == name
               for stmt in tree.body if isinstance(stmt, (ast.Assign, ast.AnnAssign))
               for t in (stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]))


_SPLIT_KEYS = ('type', 'data_root', 'ann_format')


def _split_value(key: str, value):
    """A dataset entry as compared between the val and test splits: ``data_root`` as a
    normalised path (``data/x/``, ``./data/x`` and ``data/x`` are one folder)."""
    value = _plain(value)
    if key == 'data_root' and isinstance(value, str) and value:
        return os.path.normpath(os.path.abspath(os.path.expanduser(value)))
    return value


def is_first_rank() -> bool:
    """Whether this process is rank 0 (or not distributed), from the launchers'
    environment (``RANK``, ``SLURM_PROCID`` or ``OMPI_COMM_WORLD_RANK``, as tools/train.py
    reads it), before any process group exists."""
    for name in ('RANK', 'SLURM_PROCID', 'OMPI_COMM_WORLD_RANK'):
        value = os.environ.get(name)
        if value not in (None, ''):
            return value.strip() == '0'
    return True


_CONFIG_WARNINGS: list = []   # printed by config_warning, not yet in a run's log file


def config_warning(tool: str, message: str) -> None:
    """Print ``{tool}: warning: {message}`` to stderr on the first rank only: every process
    of a distributed run parses the config and would repeat the same warning (8 copies on
    an 8-GPU node). The line is also kept until :func:`log_config_warnings` writes it to
    the run's log file: the config is checked before the runner creates that file, and a
    warning read on the console only is lost with the terminal."""
    if is_first_rank():
        print(f'{tool}: warning: {message}', file=sys.stderr)
        _CONFIG_WARNINGS.append(f'{tool}: warning: {message}')


def log_later(message: str) -> None:
    """Keep ``message`` (printed already, e.g. as a Python warning) until
    :func:`log_config_warnings` writes it to the run's log file, which does not exist yet
    when it is said (the distributed setup runs before the runner's logger is built)."""
    _CONFIG_WARNINGS.append(message)


def log_config_warnings(exclude=(), clear_only: bool = False) -> None:
    """Write the lines :func:`config_warning` printed since the last call to the log files
    of the loggers not in ``exclude`` (:func:`write_to_log_files`, as WARNING: the file
    only, the console has them already), then forget them. ``clear_only``: forget them
    unwritten (a tool starting, so that lines of an earlier call in the same process,
    e.g. a test, are not logged by this run)."""
    lines = list(_CONFIG_WARNINGS)
    _CONFIG_WARNINGS.clear()
    if not clear_only:
        for line in lines:
            write_to_log_files(line, 'WARNING', exclude=exclude)


def _evaluator_entries(node):
    """``node`` (an evaluator dict or list) as a list of plain dicts, the ``DumpResults``
    entry that ``tools/test.py --dump`` adds left out; ``None`` where it is no such thing."""
    entries = list(node) if isinstance(node, (list, tuple)) else [node]
    if not all(hasattr(e, 'get') for e in entries):
        return None
    return [_plain_tree(e) for e in entries if _type_name(e) != 'DumpResults']


def warn_split_alias(cfg, tool: str, options: Optional[Mapping] = None) -> None:
    """Warn (stderr, as ``tool``) where ``test_dataloader`` / ``test_evaluator`` kept the
    base config's values while the config changed ``val_dataloader`` / ``val_evaluator``.

    The dataset base configs set ``test_dataloader = val_dataloader`` and
    ``test_evaluator = val_evaluator``: Python aliases evaluated once, in the base file, so
    a child config that overrides only the ``val_`` entry tests on the base's data (or with
    the base's metric settings). Compared: the ``type``, ``data_root`` and ``ann_format``
    of the two loaders' datasets (not the pipelines: recognition val and test differ in
    views on purpose), and the two evaluators where the config file itself does not assign
    ``test_evaluator`` (a test-only metric setting written there is deliberate). Keys given
    in ``options`` (``--cfg-options``) are the user's choice and not compared.
    """
    options = options or {}

    def given(prefix):
        return any(k == prefix or k.startswith(prefix + '.') for k in options)

    if not is_first_rank():
        return                         # (every process of a distributed run parses it)
    fix = ('the retrieval base configs set {t} = {v}; a config that overrides {v} must '
           'override {t} too ({t} = {v} at its end)')
    val, test = cfg.get('val_dataloader'), cfg.get('test_dataloader')
    if _set_where_it_does_nothing(cfg, 'test_dataloader', None):
        val = test = None              # the config file sets its own test set: deliberate
    val = val.get('dataset') if hasattr(val, 'get') else None
    test = test.get('dataset') if hasattr(test, 'get') else None
    if hasattr(val, 'get') and hasattr(test, 'get'):
        differ = [f'val_dataloader.dataset.{key}={_plain(val.get(key))!r} vs '
                  f'test_dataloader.dataset.{key}={_plain(test.get(key))!r}'
                  for key in _SPLIT_KEYS
                  if _split_value(key, val.get(key)) != _split_value(key, test.get(key))
                  and not given(f'val_dataloader.dataset.{key}')
                  and not given(f'test_dataloader.dataset.{key}')]
        if differ:
            config_warning(
                tool, f'the validation and test sets are different datasets '
                f'({"; ".join(differ)}): {fix.format(t="test_dataloader", v="val_dataloader")}'
                f'. If the test set is meant to differ, ignore this')
    if given('val_evaluator') or given('test_evaluator') or \
            _set_where_it_does_nothing(cfg, 'test_evaluator', None):
        return
    val, test = (_evaluator_entries(cfg.get(k)) for k in ('val_evaluator', 'test_evaluator'))
    if val is None or test is None or val == test:
        return
    config_warning(
        tool, f'val_evaluator={val if len(val) > 1 else val[0]!r} but '
        f'test_evaluator={test if len(test) > 1 else test[0]!r}: '
        f'{fix.format(t="test_evaluator", v="val_evaluator")}. To test with other metric '
        f'settings (dsl, qb_norm), assign test_evaluator in the config itself or use '
        f'--cfg-options test_evaluator.<key>=...')


def check_model_variant(cfg, tool: str, loaders=('train_dataloader', 'val_dataloader',
                                                 'test_dataloader'),
                        options: Optional[Mapping] = None) -> None:
    """Check, before anything is built, that the parts of a model variant agree.

    Warnings (stderr, as ``tool``):

    * the top-level ``clip_arch`` (``configs/_base_/models/stan_*.py``) is set by the
      config file itself or by ``--cfg-options`` (``options``) and differs from the
      ``arch`` the CLIPSTAN backbone (or ``STANRetriever``) is built with, or
      ``num_frames`` (``configs/_base_/datasets/*.py``), set so, differs from the
      ``clip_len`` of the frame sampler of one of ``loaders``' pipelines (a ``clip_len``
      given in ``options`` is the user's choice and not compared): such variables are read
      once, when the base file is evaluated, so a child config or ``--cfg-options`` that
      sets only them changes nothing; the message names the fields that take effect. Set
      in a base file only, they are not compared (the fields were then set directly);
    * the CLIPSTAN backbone and the text classifier head's text encoder name different
      CLIPs (``arch`` or ``pretrained``, where both are set).

    Raises:
        ConfigOptionError: the CLIPSTAN backbone's embedding width (read off its ``arch``)
            is not the classification head's ``in_channels`` (the head would fail at the
            first batch), or a ``STANRetriever``'s CLIP text tower (its ``arch``) takes
            fewer tokens than a ``CLIPBPETokenize`` step of one of ``loaders``' pipelines
            gives (the first batch of that loader would fail).
    """
    from stan_mm.utils.checkpoint_check import frame_sampler
    model = cfg.get('model')
    owner = _clip_owner(model)
    recognizer = owner is not None and owner[0] == 'model.backbone'
    head = model.get('cls_head') if recognizer else None
    head = head if hasattr(head, 'get') else None
    encoder = head.get('text_encoder') if head is not None else None
    encoder = encoder if hasattr(encoder, 'get') and _type_name(head) == \
        'TextClassifierHead' else None
    clip_arch = cfg.get('clip_arch')
    if (owner is not None and clip_arch is not None
            and _set_where_it_does_nothing(cfg, 'clip_arch', options)):
        path, node = owner
        arch = node.get('arch', 'ViT-B-16' if recognizer else None)
        if not _same_arch(clip_arch, arch):
            fields = (f'{path}.arch and {path}.pretrained' if not recognizer else
                      'model.backbone.arch, model.backbone.pretrained, '
                      'model.cls_head.in_channels' + (
                          ', model.cls_head.text_encoder.arch and .pretrained'
                          if encoder is not None else ''))
            config_warning(
                tool, f'the config sets clip_arch={_plain(clip_arch)!r}, but '
                f'the model is built with {path}.arch={_plain(arch)!r}: clip_arch (like '
                f'clip_pretrained and clip_embed_dim) is read once, when the base model '
                f'config is evaluated, so setting it in a child config or with '
                f'--cfg-options changes nothing. What takes effect: {fields} '
                f'({_VARIANT_DOC}); set clip_arch to the same value to silence this')
    num_frames = cfg.get('num_frames')
    if (isinstance(num_frames, int) and not isinstance(num_frames, bool)
            and _set_where_it_does_nothing(cfg, 'num_frames', options)):
        differ = [f'{option}={n}' for option, n in filter(None, (
            frame_sampler(cfg, loader) for loader in loaders))
            if n != num_frames and option not in (options or {})]
        if differ:
            config_warning(
                tool, f'the config sets num_frames={num_frames}, but the frame '
                f'sampler takes {", ".join(differ)}: num_frames is read once, when the '
                f'dataset base config is evaluated, so setting it in a child config or '
                f'with --cfg-options changes nothing. The samplers\' clip_len takes '
                f'effect: set it there (configs/stan/k400_self_b16_16f.py shows how), or '
                f'set num_frames to the same value to silence this')
    if owner is not None and not recognizer:
        _check_caption_length(cfg, owner[1], loaders)
    if not recognizer:
        return
    backbone = owner[1]
    if encoder is not None:
        differ = [f'model.backbone.{key}={_plain(backbone.get(key))!r} vs '
                  f'model.cls_head.text_encoder.{key}={_plain(encoder.get(key))!r}'
                  for key, same in (('arch', _same_arch),
                                    ('pretrained', lambda a, b: os.path.normpath(str(a)) ==
                                     os.path.normpath(str(b))))
                  if backbone.get(key) is not None and encoder.get(key) is not None
                  and not same(backbone.get(key), encoder.get(key))]
        if differ:
            config_warning(
                tool, f'the backbone and the text classifier head come from '
                f'different CLIPs ({"; ".join(differ)}): the class-name embeddings are '
                f'then not in the space of the video embeddings. Give both the same CLIP '
                f'({_VARIANT_DOC})')
    arch = backbone.get('arch', 'ViT-B-16')
    width, in_channels = _arch_embed_dim(arch), head.get('in_channels') if head else None
    if width is None or not isinstance(in_channels, int) or width == in_channels:
        return
    fix = f'set model.cls_head.in_channels={width}'
    if encoder is not None:
        text_arch = encoder.get('arch')
        text_width = _arch_embed_dim(text_arch)
        now = (f' (now {_plain(text_arch)!r}, {text_width}-d)' if text_width is not None
               else '')
        fix += (f' and build the head\'s text encoder from the same CLIP as the backbone: '
                f'model.cls_head.text_encoder.arch={_plain(arch)!r}{now} and '
                f'model.cls_head.text_encoder.pretrained=<the backbone\'s CLIP weights>')
    raise ConfigOptionError(
        f'model.backbone.arch={_plain(arch)!r} gives {width}-d video embeddings, but '
        f'model.cls_head.in_channels={in_channels}: the head would fail at the first batch. '
        f'{fix[0].upper()}{fix[1:]} ({_VARIANT_DOC})')


def check_train_clips(cfg, tool: str) -> None:
    """Refuse, before anything is built, a ``Recognizer3D`` trained on several clips per
    video: a frame sampler (a step with a ``clip_len``) in a pipeline of
    ``train_dataloader`` with ``num_clips > 1``, in every dataset it holds (through
    ``RepeatDataset`` and the like, each dataset of a ``ConcatDataset``). ``Recognizer3D``
    folds the clips into the batch ([N, clips, C, T, H, W] -> [N * clips, ...]) and scores
    each, but a video has one label, so MMAction2 failed in the loss of the first batch with
    a bare ``operands could not be broadcast together with shapes (4,1) (2,1)``. (Several
    clips per video are a test-time setting: ``tools/test.py --views``; a ``Recognizer2D``
    takes ``num_clips`` segments by design and is not checked.)

    Raises:
        ConfigOptionError: naming the sampler's option, its value and the fix.
    """
    model = cfg.get('model')
    if not hasattr(model, 'get') or _type_name(model) != 'Recognizer3D':
        return
    for path, step, _ in _config_dicts(cfg.get('train_dataloader'), 'train_dataloader'):
        if path.split('.')[-2:-1] != ['pipeline'] or 'clip_len' not in step:
            continue                                     # not a frame sampler of a pipeline
        clips = step.get('num_clips', 1)
        if isinstance(clips, int) and not isinstance(clips, bool) and clips > 1:
            raise ConfigOptionError(
                f'{tool}: {path}.num_clips={clips}: the training pipeline\'s frame sampler '
                f'({_type_name(step)}) takes {clips} clips of each video, but Recognizer3D '
                f'trains on one clip per video (it would score {clips} clips against one '
                f'label and stop in the loss of the first batch). Set --cfg-options '
                f'{path}.num_clips=1 (several clips per video are a test-time setting: '
                f'tools/test.py --views)')
