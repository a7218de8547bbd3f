"""Train a stan-mm (or any MMAction2) config.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--cfg-options k=v ...]
    bash tools/dist_train.sh CONFIG GPUS [same options]      # torchrun, NCCL on GPUs, gloo on CPU
"""
import argparse
import contextlib
import glob
import logging
import os
import os.path as osp
import sys
from typing import Optional

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

import stan_mm  # noqa: E402,F401  (stack fixes + registration, before any config is built)
from mmengine.hooks import Hook  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from stan_mm.engine.shutdown import shutdown_distributed  # noqa: E402
from stan_mm.utils.cli import ConfigOptionsAction, user_path  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Train a video model with stan-mm / MMAction2')
    p.add_argument('config', type=user_path, help='config file path')
    p.add_argument('--work-dir', type=user_path, help='where logs and checkpoints go '
                   '(default: ./work_dirs/<config name>)')
    p.add_argument('--resume', nargs='?', type=user_path, const='auto',
                   help='resume from CKPT, or from the latest checkpoint of the work dir '
                   'when given without a value')
    p.add_argument('--partial-load', action='store_true',
                   help='start from a load_from checkpoint that fits the model only in part '
                   '(another STAN depth, cross-frame module or CLIP scale): the weights that '
                   'fit are loaded, the others keep their initialization (listed in the log)')
    p.add_argument('--amp', action='store_true',
                   help='mixed precision: an OptimWrapper or AmpOptimWrapper becomes '
                   'AutoAmpOptimWrapper, bf16 unless the config sets a dtype (GPU; plain '
                   'fp32 on CPU). The stan configs already autocast (recognition bf16, '
                   'retrieval fp16): no change for them')
    p.add_argument('--no-validate', action='store_true',
                   help='skip validation during training')
    p.add_argument('--auto-scale-lr', action='store_true',
                   help='scale the learning rate by the actual total batch size')
    p.add_argument('--seed', type=int, default=None, help='random seed')
    p.add_argument('--deterministic', action='store_true',
                   help='deterministic algorithms (slower; exact resumption on CPU)')
    p.add_argument('--cfg-options', nargs='+', action=ConfigOptionsAction,
                   help='override config entries, e.g. model.backbone.depth=6 (spaces in a '
                   'value are kept: "data_root=/data/my videos")')
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                   default='none', help='job launcher')
    p.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = p.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def merge_args(cfg, args):
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    from stan_mm.utils.cli import check_launcher, config_warning, is_first_rank
    check_launcher(args.launcher, 'train.py')
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = user_path(args.work_dir)
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    else:
        cfg.work_dir = user_path(cfg.work_dir)      # (a config's work_dir='~/runs')
    if args.amp:
        from stan_mm.utils.cli import CommandLineError
        ow = cfg.optim_wrapper
        kind = ow.get('type', 'OptimWrapper')
        name = kind.rsplit('.', 1)[-1] if isinstance(kind, str) else getattr(
            kind, '__name__', repr(kind))
        if name in ('OptimWrapper', 'AmpOptimWrapper'):
            ow.type = 'AutoAmpOptimWrapper'
        elif name != 'AutoAmpOptimWrapper':
            raise CommandLineError(
                f'--amp turns an optim_wrapper of type OptimWrapper or AmpOptimWrapper into '
                f'AutoAmpOptimWrapper (bf16 autocast on CUDA, fp32 on CPU); this config\'s '
                f'optim_wrapper.type is {kind!r}, which --amp cannot convert: leave --amp '
                f'out and set that wrapper\'s mixed precision in the config')
        ow.setdefault('dtype', 'bfloat16')
    if args.resume is not None:
        apply_resume(cfg, args)
    if args.no_validate:
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    # (mmengine's Config.setdefault stores a converted copy of a missing default, so what
    # is changed below is always read back from the config after assigning it)
    if args.auto_scale_lr:
        if cfg.get('auto_scale_lr') is None:
            cfg.auto_scale_lr = dict(enable=True, base_batch_size=256)
        cfg.auto_scale_lr.enable = True
    if args.seed is not None or args.deterministic:
        if cfg.get('randomness') is None:
            cfg.randomness = dict()
        if args.seed is not None:
            cfg.randomness.seed = args.seed
        if args.deterministic:
            cfg.randomness.deterministic = True
            # mmengine seeds once per run; exact resumption needs a reseed per iteration
            # and per sample (also from a checkpoint inside an epoch)
            # an EpochSeedHook without an explicit per_iteration (the default runtime's
            # per-epoch one) is upgraded; an explicit per_iteration=False is kept
            hooks = [dict(h, per_iteration=True)
                     if h.get('type') == 'EpochSeedHook' and 'per_iteration' not in h else h
                     for h in (cfg.get('custom_hooks') or [])]
            seed_hooks = [h for h in hooks if h.get('type') == 'EpochSeedHook']
            if not seed_hooks:
                seed_hooks = [dict(type='EpochSeedHook', per_iteration=True)]
                hooks.extend(seed_hooks)
            cfg.custom_hooks = hooks
            # EpochSeedHook(per_iteration=False): persistent workers keep their random
            # streams across epochs, which a resumed run cannot replay (docs/robustness.md,
            # "Exact resumption"); per sample they are reseeded wherever they run
            loader = cfg.get('train_dataloader')
            if (loader and loader.get('persistent_workers') and loader.get('num_workers', 0)
                    and not all(h.get('per_iteration') for h in seed_hooks)):
                loader.persistent_workers = False
                if is_first_rank():
                    print('train.py: --deterministic sets train_dataloader.persistent_workers='
                          'False (the config\'s EpochSeedHook reseeds workers per epoch, '
                          'which needs fresh workers each epoch; per_iteration=True would keep '
                          'them)')
            train_cfg = cfg.get('train_cfg') or {}
            loop = train_cfg.get('type') or ('EpochBasedTrainLoop'
                                             if train_cfg.get('by_epoch') else None)
            if loop in ('EpochBasedTrainLoop', 'mmengine.EpochBasedTrainLoop'):
                config_warning(
                    'train.py', f'--deterministic replays a resumed run exactly from '
                    f'epoch-end checkpoints only: train_cfg.type={loop!r} restarts an epoch '
                    f'when resumed from a checkpoint inside it. Set '
                    f'train_cfg.type=\'ResumableEpochBasedTrainLoop\' (as this repo\'s '
                    f'configs do) for exact resumption from iteration checkpoints too')
    from stan_mm.utils.cli import (check_model_variant, check_numeric_options,
                                   warn_misspelled_keys, warn_schedule_beyond_training)
    check_numeric_options(cfg)
    warn_schedule_beyond_training(cfg, 'train.py', resume=bool(cfg.get('resume')))
    warn_misspelled_keys(cfg, 'train.py', options=args.cfg_options)
    # clip_arch / num_frames set where they do nothing, backbone and head of other CLIPs
    check_model_variant(cfg, 'train.py', loaders=('train_dataloader', 'val_dataloader'),
                        options=args.cfg_options)
    from stan_mm.utils.cli import check_train_clips
    check_train_clips(cfg, 'train.py')   # several clips per video: Recognizer3D's loss fails
    # a child that overrides val_dataloader / val_evaluator only: test_ kept the base's
    from stan_mm.utils.cli import warn_split_alias, warn_stale_variables
    warn_split_alias(cfg, 'train.py', options=args.cfg_options)
    # a child's variable (data_root, classnames, test_crops, ...) that the base had copied
    warn_stale_variables(cfg, 'train.py', options=args.cfg_options)
    return cfg


def note(args, message: str) -> None:
    """Print ``message`` (stdout) and keep it for the run's log file (:func:`main` writes
    it there once the runner has created the file). Printed by the first rank only."""
    from stan_mm.utils.cli import is_first_rank
    if is_first_rank():
        print(message)
    if not hasattr(args, 'log_notes'):
        args.log_notes = []
    args.log_notes.append(message)


def apply_resume(cfg, args) -> None:
    """``--resume [CKPT]``: set ``cfg.resume`` and ``cfg.load_from``, saying (:func:`note`)
    what becomes of the config's ``load_from``.

    ``--resume`` without a value in a work dir with nothing to resume (no
    ``last_checkpoint``, no checkpoint: a job's first launch, every launch of which passes
    ``--resume`` so that requeues go on) starts a new run with the config's ``load_from``
    (mmengine would auto-resume from nothing and drop it); where there is something to
    resume, the resume wins and the config's ``load_from`` is not used."""
    load_from = cfg.get('load_from')
    if args.resume == 'auto':
        found = check_auto_resume(cfg.work_dir)
        if found is None and not osp.isfile(osp.join(cfg.work_dir, 'last_checkpoint')):
            cfg.resume = False
            note(args, f'train.py: --resume: nothing to resume in {cfg.work_dir} (no '
                       f'last_checkpoint, no checkpoint): starting a new run'
                       + (f' from load_from={load_from} (the config\'s)' if load_from
                          else ''))
            return
        cfg.resume, cfg.load_from = True, found
        source = found
        if found is None:                               # (mmengine reads last_checkpoint)
            from stan_mm.engine.checkpoint_hook import read_pointer
            source = f'{read_pointer(osp.join(cfg.work_dir, "last_checkpoint"))} ' \
                     '(last_checkpoint)'
    else:
        cfg.resume, cfg.load_from = True, check_resume_path(args.resume)
        source = cfg.load_from
    if load_from and load_from != cfg.load_from:
        note(args, f'train.py: --resume: resuming from {source}; the config\'s '
                   f'load_from={load_from} is not used (a resumed run takes its weights, '
                   f'optimizer and schedule from the checkpoint it resumes from)')


class StartCheckpointHook(Hook):
    """Check the checkpoint of ``load_from`` / ``--resume`` against the model before
    mmengine loads it (:func:`stan_mm.utils.checkpoint_check.check_training_start`):
    mmengine loads non-strictly and prints what did not fit on the console only. A resume
    that does not fit, and a ``load_from`` that fits only in part in the backbone (unless
    ``partial``), stop the run naming the differences; the other differences of a
    ``load_from`` (a new classification layer, a tower the checkpoint lacks) are logged as
    a WARNING, in the run's log file too.

    A checkpoint saved by mmengine's ``EMAHook`` (averaged weights in ``state_dict``, the
    last step's in ``ema_state_dict``): a ``load_from`` run starts from the averaged ones
    (logged); a resume by a run without ``EMAHook`` goes on from the last step's, which
    the checkpoint's optimizer state belongs to (mmengine loaded the averaged ones in
    their place; a WARNING says that the averaging stops). With ``EMAHook`` the hook
    itself swaps them back, as before."""
    priority = 'VERY_HIGH'      # before any hook that uses the loaded state (EMAHook)

    def __init__(self, partial: bool = False):
        self.partial = partial

    def after_load_checkpoint(self, runner, checkpoint) -> None:
        from mmengine.hooks import EMAHook

        from stan_mm.utils.checkpoint_check import (check_training_start,
                                                    ema_checkpoint_note,
                                                    swap_in_raw_weights)
        resume = bool(getattr(runner, '_resume', False))
        name = runner.cfg.get('load_from')
        if not name and resume:
            from stan_mm.engine.checkpoint_hook import read_pointer
            name = read_pointer(osp.join(str(runner.work_dir), 'last_checkpoint'))
        message = check_training_start(runner.model, checkpoint, name=name or 'CKPT',
                                       resume=resume, partial=self.partial)
        if message:
            runner.logger.warning(message)
        if not resume:
            note = ema_checkpoint_note(checkpoint, f'load_from {name}',
                                       'is what the run starts from')
            if note:
                runner.logger.info(note)
        elif (not any(isinstance(h, EMAHook) for h in runner.hooks)
              and swap_in_raw_weights(checkpoint)):
            runner.logger.warning(
                f'--resume {name or "CKPT"}: the checkpoint was saved by EMAHook and this '
                f'config has no EMAHook: the run goes on from the weights of the last '
                f'training step (its ema_state_dict; the optimizer state belongs to them), '
                f'not from the moving average in its state_dict, and no average is kept '
                f'any more. To go on averaging, resume with the EMAHook of the run that '
                f'saved it (custom_hooks)')


class ResumeCheckHook(Hook):
    """Log, when a run resumes, what it does not take from its config: another
    ``max_epochs`` than the checkpoint's run, changed optimizer settings, nothing left to
    train (:func:`stan_mm.utils.cli.resume_warnings`). Reads the checkpoint mmengine
    loads (``after_load_checkpoint``): nothing is loaded twice."""
    priority = 'VERY_LOW'

    def after_load_checkpoint(self, runner, checkpoint) -> None:
        if not getattr(runner, '_resume', False):    # load_from: a new run
            return
        from stan_mm.utils.cli import resume_warnings
        name = runner.cfg.get('load_from')
        record = osp.join(str(runner.work_dir), 'last_checkpoint')
        if not name:
            from stan_mm.engine.checkpoint_hook import read_pointer
            name = read_pointer(record)
        loop_epochs = getattr(getattr(runner, '_train_loop', None), 'max_epochs', None)
        for level, message in resume_warnings(
                checkpoint, runner.cfg, loop_epochs if isinstance(loop_epochs, int) else None,
                name or 'CKPT'):
            runner.logger.log(logging.getLevelName(level), message)


def check_resume_path(path: str) -> str:
    """``--resume PATH``: a local file path must name a checkpoint file (mmengine would
    fail deep inside with a traceback); a URL (``scheme://``) is left to mmengine. Returns
    the path to load (``~`` expanded).

    Raises:
        CommandLineError: naming ``--resume`` and the path.
    """
    if '://' in path:
        return path
    from stan_mm.utils.cli import CommandLineError
    path = user_path(path)
    if osp.isdir(path):
        raise CommandLineError(f'--resume {path!r} is a folder; give the checkpoint file (a '
                               f'.pth file written by tools/train.py), or --resume without a '
                               f'value for the latest checkpoint of the work dir')
    if not osp.isfile(path):
        raise CommandLineError(f'--resume: checkpoint not found: {path!r} (give the path of a '
                               f'.pth file written by tools/train.py, or --resume without a '
                               f'value for the latest checkpoint of the work dir)')
    return path


def check_outputs(cfg, args) -> None:
    """Refuse, before any work, a work dir that cannot be a folder (a file; see
    :mod:`stan_mm.utils.cli`; a missing one is created)."""
    from stan_mm.utils.cli import check_output_dir
    if '://' not in str(cfg.work_dir):
        cfg.work_dir = check_output_dir(cfg.work_dir, '--work-dir' if args.work_dir is not None
                                        else 'work_dir (from the config)')


def _locale_readable(text: str) -> bool:
    """Whether ``text``, written as file-system bytes, reads back unchanged with ``open()``
    in the locale's encoding (what mmengine uses for ``last_checkpoint``)."""
    import locale
    try:
        return os.fsencode(text).decode(locale.getpreferredencoding(False)) == text
    except (UnicodeError, LookupError):
        return False


def check_auto_resume(work_dir: str):
    """``--resume`` without a value reads ``<work_dir>/last_checkpoint``; mmengine starts
    from scratch when it is missing, and the new run then overwrites the checkpoints of the
    same names. Refuse when the folder holds checkpoints but no ``last_checkpoint``.

    ``last_checkpoint`` holds an absolute path: in a moved work dir it names a file that
    is gone, in a copied one the original folder's file. When it points outside
    ``work_dir``: a file it names that no longer exists, with a file of that name in
    ``work_dir``, is replaced by the latter (returned, with a note); both existing (a copy
    of a work dir, or a ``CheckpointHook`` ``out_dir`` elsewhere next to an older file of
    the same name here) is refused, naming both. A run stopped while publishing a
    checkpoint (the checkpoint complete, ``last_checkpoint`` not yet renamed into place) is
    resumed from that checkpoint (:func:`stan_mm.engine.recover_last_checkpoint`).
    Otherwise None (mmengine reads ``last_checkpoint``).

    Raises:
        CommandLineError: a refusal (one line and exit status 2, as other argument
            errors), naming the ``--resume PATH`` to give.
    """
    record = osp.join(work_dir, 'last_checkpoint')
    from stan_mm.utils.cli import CommandLineError, is_first_rank
    # a run killed between renaming its checkpoint into place and renaming the pointer to
    # it (AtomicCheckpointHook's publish order) left a complete pending pointer: resume
    # from the checkpoint it names. Read only (publish=False): nothing is renamed before
    # the work dir's lock is held (a run still going in this folder renames the pointer
    # itself); the hook removes the stale pointer when the resumed run starts
    from stan_mm.engine import recover_last_checkpoint
    recovered = recover_last_checkpoint(work_dir, publish=False)
    if recovered is not None:
        if is_first_rank():
            print(f'train.py: {work_dir} had no usable last_checkpoint; the run that wrote '
                  f'{recovered} was stopped while publishing it (the checkpoint is '
                  f'complete): resuming from it', file=sys.stderr)
        return recovered
    if osp.isfile(record):
        from stan_mm.engine.checkpoint_hook import read_pointer
        named = read_pointer(record)
        here = osp.join(work_dir, osp.basename(named))
        if '://' in named:            # another storage (CheckpointHook out_dir): mmengine's
            return None
        if (not named or osp.realpath(osp.dirname(named)) == osp.realpath(work_dir)
                or not osp.isfile(here)):
            # mmengine reads last_checkpoint in the locale's encoding: a name it cannot
            # decode (non-ASCII under an ASCII locale without UTF-8 mode) is passed on
            return named if named and not _locale_readable(named) else None
        if not osp.exists(named):
            if is_first_rank():
                print(f'train.py: {record} names {named}, which is gone (a moved work '
                      f'dir?); resuming from {here}, the file of that name here. Name '
                      f'another with --resume PATH', file=sys.stderr)
            return here
        if osp.samefile(named, here):
            return None
        raise CommandLineError(
            f'--resume: {record} names {named}, outside this work dir, and the work dir has '
            f'a file of the same name ({here}): a copy of another work dir, or checkpoints '
            f'written elsewhere (CheckpointHook out_dir)? Name the one to resume from: '
            f'--resume {named}, or --resume {here}')
    found = sorted(glob.glob(osp.join(work_dir, '*.pth')), key=osp.getmtime)
    if found:
        names = ', '.join(osp.basename(p) for p in found[-5:])
        raise CommandLineError(
            f'--resume found no last_checkpoint in {work_dir}, which holds '
            f'{len(found)} checkpoint(s) ({names}); a run started now would overwrite them. '
            f'Name the one to resume from: --resume {found[-1]}')


@contextlib.contextmanager
def work_dir_lock(work_dir: str):
    """Hold a lock on the work dir (main process only: rank 0 of ``RANK``,
    ``SLURM_PROCID`` or ``OMPI_COMM_WORLD_RANK``) while training, so that a second run
    into the same folder is refused at once instead of overwriting the first's
    checkpoints and ``last_checkpoint`` (e.g. the workers of a torchrun job whose launcher
    alone was killed go on training). The OS releases it when the process ends, however
    it ends."""
    rank = next((os.environ[k] for k in ('RANK', 'SLURM_PROCID', 'OMPI_COMM_WORLD_RANK')
                 if os.environ.get(k)), '0')
    if rank != '0':
        yield
        return
    from stan_mm.apis.features import FeatureFolderError, folder_lock
    from stan_mm.utils.cli import CommandLineError
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(folder_lock(work_dir))
    except FeatureFolderError:
        raise CommandLineError(
            f'{work_dir} is being written by another training run (it holds a lock on the '
            f'folder; the workers of a torchrun job whose launcher was killed go on '
            f'running: look for them with ps). Wait for it, stop it, or use another '
            f'--work-dir') from None
    with stack:
        yield


def batch_summary(cfg, world_size: int) -> Optional[str]:
    """One line with the batch the run trains on: per rank, over all ranks, and per
    optimizer step with gradient accumulation (``optim_wrapper.accumulative_counts``);
    None when the config's ``train_dataloader.batch_size`` is not a number."""
    batch = (cfg.get('train_dataloader') or {}).get('batch_size')
    if not isinstance(batch, int) or isinstance(batch, bool):
        return None
    line = (f'training batch: {batch} samples per rank x {world_size} rank'
            f'{"s" if world_size != 1 else ""} = {batch * world_size} samples per iteration')
    accumulate = (cfg.get('optim_wrapper') or {}).get('accumulative_counts', 1)
    if isinstance(accumulate, int) and accumulate > 1:
        line += (f', {batch * world_size * accumulate} per optimizer step '
                 f'(accumulative_counts={accumulate})')
    return line


def main(argv=None):
    args = parse_args(argv)
    from stan_mm.utils.cli import check_input_file, read_config
    args.config = check_input_file(args.config, 'CONFIG', 'config file')
    from stan_mm.utils.cli import log_config_warnings, logger_names, write_to_log_files
    log_config_warnings(clear_only=True)     # (lines of an earlier call in this process)
    cfg = merge_args(read_config(args.config), args)
    from stan_mm.apis.video import check_config_crops
    check_config_crops(cfg)     # a crop that cannot fit its Resize fails before any work
    from stan_mm.compat.dist import cpu_config_backend
    cpu_config_backend(cfg)     # nccl -> gloo without CUDA, in the config the run dumps
    check_outputs(cfg, args)    # (after merge_args: a refused launcher creates nothing)
    from stan_mm.utils.shm import warn_shm_shortfall
    warn_shm_shortfall(cfg, 'train.py', ('train_dataloader', 'val_dataloader'))
    with work_dir_lock(cfg.work_dir):
        before = logger_names()
        runner = Runner.from_cfg(cfg)
        for message in getattr(args, 'log_notes', ()):   # (printed already)
            write_to_log_files(message, 'INFO', exclude=before)
        log_config_warnings(exclude=before)     # the config's warnings, printed already
        summary = batch_summary(cfg, runner.world_size)
        if summary is not None:
            runner.logger.info(summary)
        runner.register_hook(ResumeCheckHook())
        runner.register_hook(StartCheckpointHook(partial=args.partial_load))
        from stan_mm.engine import TrainingPreempted
        try:
            runner.train()
        except TrainingPreempted as stop:
            # every rank stopped at the same iteration (PreemptionHook); logged already
            from mmengine.dist import is_main_process
            if is_main_process():
                print(f'train.py: {stop}', file=sys.stderr)
            shutdown_distributed()
            return stop.exit_code
    shutdown_distributed()


if __name__ == '__main__':
    from stan_mm.utils.cli import run_tool
    entry = main
    if 'TORCHELASTIC_ERROR_FILE' in os.environ:
        # a torchrun worker: its error (a user error's message too) goes to the error file
        # torchrun names, which it reports as the root cause; exit status and stderr as
        # without it (record re-raises). A single process is left as it is.
        from torch.distributed.elastic.multiprocessing.errors import record
        entry = record(main)
    sys.exit(run_tool(entry, 'train.py'))
