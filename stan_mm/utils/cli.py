"""How the command-line tools end on a mistake in the user's data, config or files.

``tools/train.py`` and ``tools/test.py`` run through :func:`run_tool`: an error that
stan-mm raises about the user's input (a bad annotation line, weights that do not fit, an
unreadable video, an unsafe or damaged checkpoint, test views the config cannot take, a
synthetic dataset folder that holds something else) ends the tool with its message on one
line of stderr and exit status 2, instead of a page of mmengine traceback with the message
at the bottom. Bugs (any other exception) keep their traceback, and ``STAN_TRACEBACK=1``
shows it for these errors too.
"""
import os
import sys
from typing import Callable, Mapping, Optional, Tuple, Type


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
    from stan_mm.models.clip.builder import (CLIPArchMismatchError, CLIPArchMissingError,
                                             CLIPKeysMismatchError)
    from stan_mm.utils.checkpoint_check import CheckpointMismatchError
    return (AnnotationError, CLIPArchMismatchError, CLIPArchMissingError, CLIPKeysMismatchError,
            CheckpointMismatchError, CorruptCheckpointError, UnsafeCheckpointError,
            VideoReadError, ViewsError, CommandLineError, BankMismatchError,
            SyntheticDatasetExistsError)


def check_output_file(path: str, flag: str) -> str:
    """Refuse, before any work, an output file path the tool could not write: an existing
    folder, a parent that is a file, or a parent folder that cannot be created. Creates
    the missing parent folders. Returns ``path``.

    Raises:
        CommandLineError: naming ``flag`` and the path.
    """
    if os.path.isdir(path):
        raise CommandLineError(f'{flag} {path!r} is a folder; give a file name')
    parent = os.path.dirname(os.path.abspath(path))
    check_output_dir(parent, f'{flag} {path!r}: its folder')
    return path


def check_output_dir(path: str, flag: str) -> str:
    """Refuse, before any work, an output folder the tool could not use: an existing
    file, a path through a file, or one that cannot be created (the OS reason is named).
    Creates it when missing. Returns ``path``.

    Raises:
        CommandLineError: naming ``flag`` and the path.
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise CommandLineError(f'{flag} {path!r} is a file, not a folder; give a folder '
                               '(it is created when missing)')
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
    found" only when nothing is there.

    Raises:
        CommandLineError
    """
    if os.path.isdir(path):
        raise CommandLineError(f'{flag} {path!r} is a folder; give the {what}')
    if not os.path.isfile(path):
        raise CommandLineError(f'{flag} {path!r}: {what} not found')
    return path


def describe(exc: BaseException) -> str:
    """The message to print: a video error re-raised from a DataLoader worker carries the
    worker's traceback in its text; its file and reason are what the user needs. A
    KeyError's message without the quotes its ``str()`` adds."""
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    filename, reason = getattr(exc, 'filename', None), getattr(exc, 'reason', None)
    if filename and reason and 'Traceback' in str(exc):
        return f'cannot read video file {filename!r}: {reason}'
    return str(exc)


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


def warn_misspelled_keys(cfg, tool: str) -> None:
    """Print a warning for each :func:`misspelled_keys` entry."""
    for key, runner_key in misspelled_keys(cfg):
        print(f'{tool}: warning: the config sets {key!r}, which nothing reads; did you mean '
              f'{runner_key!r}? (mmengine ignores unknown top-level keys)', file=sys.stderr)


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


def warn_schedule_beyond_training(cfg, tool: str) -> None:
    """A child config (or ``--cfg-options train_cfg.max_epochs=N``) that shortens training
    keeps the base's schedule, whose warm-up and decay were laid out for the base's epochs:
    say so (on stderr, as ``tool``) when an epoch-based scheduler starts or ends past
    ``max_epochs``."""
    max_epochs = (cfg.get('train_cfg') or {}).get('max_epochs')
    schedulers = cfg.get('param_scheduler') or []
    if max_epochs is None:
        return
    for i, sched in enumerate(schedulers if isinstance(schedulers, list) else [schedulers]):
        end, begin = sched.get('end'), sched.get('begin', 0)
        if not sched.get('by_epoch', True) or end is None or end <= max_epochs:
            continue
        print(f'{tool}: warning: param_scheduler[{i}] ({sched.get("type")}) runs over epochs '
              f'{begin}..{end}, but max_epochs={max_epochs}: '
              + ('it never starts' if begin >= max_epochs else 'it is cut short')
              + '. Restate param_scheduler for the new length (docs/data_preparation.md, '
              '"Your own videos")', file=sys.stderr)


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


def run_tool(main: Callable[[], object], tool: str) -> int:
    """Call ``main()``; return its exit status (an int it returns, else 0), or 2 after
    printing ``<tool>: error: <message>`` for an error of :func:`user_errors` (re-raised as
    is when ``STAN_TRACEBACK=1``)."""
    try:
        status = main()
    except user_errors() as exc:
        if os.environ.get('STAN_TRACEBACK', '') not in ('', '0'):
            raise
        print(f'{tool}: error: {type(exc).__name__}: {describe(exc)}\n'
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
            first batch).
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
            print(f'{tool}: warning: the config sets clip_arch={_plain(clip_arch)!r}, but '
                  f'the model is built with {path}.arch={_plain(arch)!r}: clip_arch (like '
                  f'clip_pretrained and clip_embed_dim) is read once, when the base model '
                  f'config is evaluated, so setting it in a child config or with '
                  f'--cfg-options changes nothing. What takes effect: {fields} '
                  f'({_VARIANT_DOC}); set clip_arch to the same value to silence this',
                  file=sys.stderr)
    num_frames = cfg.get('num_frames')
    if (isinstance(num_frames, int) and not isinstance(num_frames, bool)
            and _set_where_it_does_nothing(cfg, 'num_frames', options)):
        differ = [f'{option}={n}' for option, n in filter(None, (
            frame_sampler(cfg, loader) for loader in loaders))
            if n != num_frames and option not in (options or {})]
        if differ:
            print(f'{tool}: warning: the config sets num_frames={num_frames}, but the frame '
                  f'sampler takes {", ".join(differ)}: num_frames is read once, when the '
                  f'dataset base config is evaluated, so setting it in a child config or '
                  f'with --cfg-options changes nothing. The samplers\' clip_len takes '
                  f'effect: set it there (configs/stan/k400_self_b16_16f.py shows how), or '
                  f'set num_frames to the same value to silence this', file=sys.stderr)
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
            print(f'{tool}: warning: the backbone and the text classifier head come from '
                  f'different CLIPs ({"; ".join(differ)}): the class-name embeddings are '
                  f'then not in the space of the video embeddings. Give both the same CLIP '
                  f'({_VARIANT_DOC})', file=sys.stderr)
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
