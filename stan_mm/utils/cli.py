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
from typing import Callable, Tuple, Type


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
