"""Test a checkpoint: recognition accuracy (multi-view) or retrieval recall.

    python tools/test.py CONFIG CKPT [--dump out.pkl] [--work-dir DIR] [--amp [DTYPE]] \
        [--cfg-options k=v ...]
    bash tools/dist_test.sh CONFIG CKPT GPUS [same options]
"""
import argparse
import contextlib
import os
import os.path as osp
import re
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

import stan_mm  # noqa: E402,F401
from mmengine.hooks import Hook  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from stan_mm.apis.features import check_qb_norm_banks  # noqa: E402
from stan_mm.apis.video import set_config_views  # noqa: E402
from stan_mm.engine.shutdown import shutdown_distributed  # noqa: E402
from stan_mm.utils.amp import AMP_CHOICES  # noqa: E402
from stan_mm.utils.checkpoint_check import check_checkpoint_fits  # noqa: E402
from stan_mm.utils.cli import ConfigOptionsAction, user_path  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Test a video model with stan-mm / MMAction2')
    p.add_argument('config', type=user_path, help='config file path')
    p.add_argument('checkpoint', type=user_path, help='checkpoint file (local path)')
    p.add_argument('--work-dir', type=user_path, help='where the test logs and metrics go')
    p.add_argument('--dump', type=user_path,
                   help='also write the model outputs (per-sample predictions) to this .pkl')
    p.add_argument('--views', metavar='CLIPSxCROPS',
                   help='multi-view testing, e.g. 1x3 (the paper), 4x3, 1x1: sets num_clips '
                   'of the frame sampler and ThreeCrop/CenterCrop/TenCrop in the test '
                   'pipeline; scores are softmaxed per view and averaged')
    p.add_argument('--amp', nargs='?', const='auto', choices=AMP_CHOICES, metavar='DTYPE',
                   help='mixed precision: sets test_cfg.fp16=True, so that the TestLoop runs '
                   'the model under autocast. DTYPE auto (the default): the dtype the model '
                   "trained in (the optim_wrapper of the checkpoint's stored training "
                   'config, else of this config: bf16 for the recognition configs, fp16 for '
                   'the retrieval ones; bf16 for a model trained in fp32, fp16 on a GPU '
                   'without bf16); bf16 or fp16 choose. The CPU autocasts in bf16 only. '
                   'Check the metric once against a run without --amp')
    p.add_argument('--cfg-options', nargs='+', action=ConfigOptionsAction,
                   help='override config entries, e.g. model.cls_head.temperature=0.02 '
                   '(spaces in a value are kept: "data_root=/data/my videos")')
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                   default='none', help='job launcher')
    p.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = p.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def set_views(cfg, views: str):
    """Rewrite the test pipeline for ``views`` = 'CLIPSxCROPS' (e.g. '4x3'); refused for
    retrieval configs (one view per video: more would reach the model as one long clip).
    A wrapped test dataset (``RepeatDataset``, each dataset of a ``ConcatDataset``) gets the
    views in the pipeline of every dataset it holds."""
    from stan_mm.apis.video import dataset_cfgs
    pipelines = [d['pipeline'] for d in dataset_cfgs(cfg.get('test_dataloader'))
                 if hasattr(d, 'get') and d.get('pipeline')]
    if not pipelines:
        from stan_mm.utils.cli import CommandLineError
        raise CommandLineError(f'--views {views}: the config has no test_dataloader.dataset '
                               'pipeline to set the views in')
    for pipeline in pipelines:
        set_config_views(cfg, pipeline, views)
    return cfg


def set_test_amp(cfg):
    """``--amp``: ``test_cfg.fp16 = True``. mmengine's ``TestLoop`` (the loop of every stan
    config) then runs each test step under ``autocast(enabled=True)``, in torch's autocast
    dtype for the device (:func:`cuda_autocast_dtype` sets it for CUDA; the CPU: bf16). A
    config without ``test_cfg``, or whose loop takes no ``fp16``, is refused."""
    import inspect

    from mmaction.registry import LOOPS
    from stan_mm.utils.cli import CommandLineError
    loop = cfg.get('test_cfg')
    if not hasattr(loop, 'get'):
        raise CommandLineError(
            f'--amp sets test_cfg.fp16=True, but this config\'s test_cfg is {loop!r}: set '
            "test_cfg = dict(type='TestLoop') in the config, or leave --amp out")
    kind = loop.get('type', 'TestLoop')
    cls = LOOPS.get(kind) if isinstance(kind, str) else kind
    if cls is None:
        raise CommandLineError(
            f'--amp sets test_cfg.fp16=True, but the loop of test_cfg, {kind!r}, is not a '
            "registered loop: use test_cfg = dict(type='TestLoop'), or leave --amp out")
    if not (inspect.isclass(cls)
            and 'fp16' in inspect.signature(cls.__init__).parameters):
        raise CommandLineError(
            f'--amp sets test_cfg.fp16=True, but the loop of test_cfg, {kind!r}, takes no '
            "fp16 argument: use test_cfg = dict(type='TestLoop') (mmengine's), or leave "
            '--amp out')
    loop['fp16'] = True
    cfg.test_cfg = loop
    return cfg


def resolve_test_amp(cfg, choice: str, checkpoint=None, report: bool = True,
                     log_exclude=None):
    """``--amp DTYPE`` -> the autocast dtype (:func:`stan_mm.utils.amp.resolve_amp_dtype`;
    ``checkpoint``: the loaded checkpoint, whose stored training config ``auto`` reads);
    ``report``: print which dtype and why (rank 0, stderr). ``log_exclude`` (the logger
    names from before the runner, :func:`stan_mm.utils.cli.logger_names`): the line also
    goes to the run's log file, whose dumped config says only ``test_cfg.fp16=True``."""
    import torch

    from stan_mm.utils.amp import dtype_name, resolve_amp_dtype
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    dtype, why = resolve_amp_dtype(choice, cfg, device, checkpoint=checkpoint)
    if report and os.environ.get('RANK', '0') == '0':
        line = f'test.py: --amp: autocast in {dtype_name(dtype)} on {device} ({why})'
        print(line, file=sys.stderr, flush=True)
        if log_exclude is not None:
            from stan_mm.utils.cli import write_to_log_files
            write_to_log_files(line, 'INFO', exclude=log_exclude)
    return dtype


@contextlib.contextmanager
def cuda_autocast_dtype(dtype):
    """Inside the block torch's CUDA autocast dtype is ``dtype`` (mmengine's ``autocast``
    reads it when the TestLoop passes none); restored on exit. The CPU's is bf16 always.
    ``dtype`` None: left as it is on entry (:class:`CheckpointCheckHook` sets it once the
    runner has loaded the checkpoint), restored on exit all the same."""
    import torch
    previous = torch.get_autocast_dtype('cuda')
    if dtype is not None:
        torch.set_autocast_dtype('cuda', dtype)
    try:
        yield
    finally:
        torch.set_autocast_dtype('cuda', previous)


def float32_test_outputs(model) -> None:
    """``--amp``: bf16 / fp16 tensors of the test outputs become float32 before the
    metrics see them: numpy, which the metrics use, has no bf16 (``Got unsupported
    ScalarType BFloat16`` on the CPU). A classification head (``cls_head``) runs in float32
    with autocast off, on float32 features: under autocast a linear head's scores were
    bf16, 8 bits of mantissa, which tied the top two classes of 4 of 160 quickstart
    samples (metrics then depend on the tie rule; :mod:`stan_mm.evaluation.acc_metric`).
    The backbone keeps the reduced precision."""
    import torch
    from stan_mm.models.losses.contrastive import autocast_off
    head = getattr(getattr(model, 'module', model), 'cls_head', None)
    if isinstance(head, torch.nn.Module):
        head_forward = head.forward

        def forward_float32(x, *args, **kwargs):
            if torch.is_tensor(x):
                with autocast_off(x.device):
                    return head_forward(x.float(), *args, **kwargs)
            return head_forward(x, *args, **kwargs)

        head.forward = forward_float32
    test_step = model.test_step

    def test_step_float32(data):
        outputs = test_step(data)
        for sample in outputs:
            if not (hasattr(sample, 'keys') and hasattr(sample, 'set_field')):
                continue
            for key in list(sample.keys()):
                value = sample.get(key)
                if torch.is_tensor(value) and value.dtype in (torch.bfloat16, torch.float16):
                    sample.set_field(value.float(), key)
        return outputs

    model.test_step = test_step_float32


def merge_args(cfg, args):
    if args.cfg_options:
        from stan_mm.utils.cli import route_evaluator_options
        cfg.merge_from_dict(route_evaluator_options(cfg, args.cfg_options))
    if getattr(args, 'views', None):
        set_views(cfg, args.views)
    if getattr(args, 'amp', False):
        set_test_amp(cfg)
    from stan_mm.utils.cli import check_launcher
    check_launcher(args.launcher, 'test.py')
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = user_path(args.work_dir)
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    else:
        cfg.work_dir = user_path(cfg.work_dir)      # (a config's work_dir='~/runs')
    from stan_mm.utils.cli import (CommandLineError, check_numeric_options,
                                   warn_misspelled_keys)
    check_numeric_options(cfg)
    # (the path that is checked is the one loaded: main and check_qb_norm_banks read
    # args.checkpoint too)
    args.checkpoint = user_path(args.checkpoint)
    if not osp.isfile(args.checkpoint):
        raise CommandLineError(f'checkpoint not found: {args.checkpoint!r} (give the path of '
                               f'a .pth file written by tools/train.py, or a converted one)')
    cfg.load_from = args.checkpoint
    if args.dump is not None:
        args.dump = user_path(args.dump)
        if not args.dump.endswith(('.pkl', '.pickle')):
            raise CommandLineError(f'--dump must end with .pkl or .pickle, got {args.dump}')
        # (stan_mm.evaluation.DumpResults: mmengine's, with the prefix 'dump' that spares
        # its "prefix is not set" warning; same file)
        dump = dict(type='DumpResults', out_file_path=args.dump)
        ev = cfg.test_evaluator
        # first: the predictions are written even when a metric then refuses the labels
        # (an inference list without labels, allow_unlabeled=True)
        cfg.test_evaluator = ([dump, *ev] if isinstance(ev, (list, tuple)) else [dump, ev])
    warn_misspelled_keys(cfg, 'test.py', options=args.cfg_options)
    # clip_arch / num_frames set where they do nothing, backbone and head of other CLIPs
    from stan_mm.utils.cli import check_model_variant
    check_model_variant(cfg, 'test.py', loaders=('test_dataloader', ),
                        options=args.cfg_options)
    # a child that overrides val_dataloader / val_evaluator only: test_ kept the base's
    from stan_mm.utils.cli import warn_split_alias, warn_stale_variables
    warn_split_alias(cfg, 'test.py', options=args.cfg_options)
    # a child's variable (data_root, classnames, test_crops, ...) that the base had copied
    warn_stale_variables(cfg, 'test.py', options=args.cfg_options)
    return cfg


def check_outputs(cfg, args) -> None:
    """Refuse, before any work, output paths that cannot be written: the work dir a file,
    ``--dump`` a folder or in a folder that cannot be made (see :mod:`stan_mm.utils.cli`;
    missing folders are created)."""
    from stan_mm.utils.cli import check_output_dir, check_output_file
    if '://' not in str(cfg.work_dir):
        cfg.work_dir = check_output_dir(cfg.work_dir, '--work-dir' if args.work_dir is not None
                                        else 'work_dir (from the config)')
    if args.dump is not None:
        check_output_file(args.dump, '--dump')


class CheckpointCheckHook(Hook):
    """The checks of the tested checkpoint, run on the dict the runner itself loads from
    ``load_from``, so that the file is read once (a second read doubled the load time and
    printed mmengine's ``Loads checkpoint ...`` line twice).

    ``after_load_checkpoint``: mmengine calls it with the loaded checkpoint before the
    weights go into the model. :func:`check_checkpoint_fits` raises there for weights that
    do not fit (mmengine's ``load_from`` would only warn and test random weights) and warns
    about untrained frames; with ``amp``, the autocast dtype is resolved from the
    checkpoint's stored training config and set for CUDA (``main`` restores it after the
    test). ``before_test``: a checkpoint no hook saw (a runner that loads otherwise) is
    read and checked there, before the first test step.
    """
    priority = 'VERY_HIGH'     # before any hook that uses the loaded state (EMAHook)

    def __init__(self, path: str, cfg, amp=None, log_exclude=()):
        self.path, self.cfg, self.amp, self.log_exclude = path, cfg, amp, log_exclude
        self.checked = False

    def after_load_checkpoint(self, runner, checkpoint) -> None:
        self.check(runner, checkpoint)

    def before_test(self, runner) -> None:
        if not self.checked:
            from stan_mm.utils.checkpoint_check import _as_checkpoint
            self.check(runner, _as_checkpoint(self.path))

    def check(self, runner, checkpoint) -> None:
        check_checkpoint_fits(runner.model, checkpoint, name=self.path,
                              model_cfg=self.cfg.model, config=self.cfg)
        if self.amp:
            import torch
            torch.set_autocast_dtype('cuda', resolve_test_amp(
                self.cfg, self.amp, checkpoint, log_exclude=self.log_exclude))
        self.checked = True


_RANKS = ('R1', 'R5', 'R10', 'MdR', 'MnR')


def results_summary(metrics, acc_prefixes=('acc', ), retrieval_prefixes=('retrieval', )):
    """The headline numbers of ``metrics`` in the layout of the STAN paper's tables, in %:
    ``top-1 / top-5: 84.2 / 96.5 %, mean class accuracy 80.1 %`` from MMAction2's
    ``AccMetric`` keys (``acc/top1`` ...: fractions, kept so for MMAction2's tools and
    ``save_best``), ``t2v R@1/R@5/R@10/MdR/MnR: 46.9 / 72.8 / 82.2 / 2.0 / 14.5`` and
    ``v2t ...`` from ``RetrievalRecallMetric``'s (percent already; MdR, MnR: ranks).
    ``*_prefixes``: the prefixes of those metrics (another one is named in the line).
    None when ``metrics`` holds neither."""
    def value(prefix, name):
        return metrics.get(f'{prefix}/{name}' if prefix else name)

    def label(prefix, default):
        return '' if prefix == default else f'[{prefix}] '
    parts = []
    for prefix in dict.fromkeys(acc_prefixes):
        # every top-k the metric reports (topk=(1, 3): top-1 / top-3), then mean class acc.
        ks = sorted(int(m.group(1)) for key in metrics
                    if (m := re.fullmatch(re.escape(f'{prefix}/top') + r'(\d+)', key)))
        mean1 = value(prefix, 'mean1')
        texts = []
        if ks:
            texts.append(' / '.join(f'top-{k}' for k in ks) + ': ' + ' / '.join(
                f'{100 * value(prefix, f"top{k}"):.1f}' for k in ks) + ' %')
        if mean1 is not None:
            texts.append(f'mean class accuracy {100 * mean1:.1f} %')
        if texts:
            parts.append(label(prefix, 'acc') + ', '.join(texts))
    for prefix in dict.fromkeys(retrieval_prefixes):
        for direction in ('t2v', 'v2t'):
            values = [value(prefix, f'{direction}_{k}') for k in _RANKS]
            if all(v is not None for v in values):
                parts.append(f'{label(prefix, "retrieval")}{direction} R@1/R@5/R@10/MdR/MnR: '
                             + ' / '.join(f'{v:.1f}' for v in values))
    return 'results: ' + '; '.join(parts) if parts else None


def log_results_summary(runner, metrics) -> None:
    """Log (rank 0, console and log file) :func:`results_summary` of the test's metrics,
    reading the prefixes of the evaluator's accuracy and retrieval metrics."""
    from mmaction.evaluation import AccMetric
    from mmengine.dist import is_main_process
    from mmengine.logging import print_log

    from stan_mm.evaluation import RetrievalRecallMetric
    evaluator = getattr(getattr(runner, 'test_loop', None), 'evaluator', None)
    used = list(getattr(evaluator, 'metrics', None) or ())
    acc = [m.prefix for m in used if isinstance(m, AccMetric)] or ['acc']
    retrieval = [m.prefix for m in used if isinstance(m, RetrievalRecallMetric)] or \
        ['retrieval']
    line = results_summary(metrics or {}, acc, retrieval)
    if line and is_main_process():
        print_log(f'test.py: {line}', logger='current')


def main(argv=None):
    args = parse_args(argv)
    from stan_mm.utils.cli import (check_input_file, log_config_warnings, logger_names,
                                   read_config)
    args.config = check_input_file(args.config, 'CONFIG', 'config file')
    log_config_warnings(clear_only=True)     # (lines of an earlier call in this process)
    cfg = merge_args(read_config(args.config), args)
    from stan_mm.apis.video import check_config_crops
    # (the test split only: a val pipeline test.py does not run is not its concern)
    check_config_crops(cfg, splits=('test', ))
    from stan_mm.compat.dist import cpu_config_backend
    cpu_config_backend(cfg)     # nccl -> gloo without CUDA, in the config the run dumps
    if args.amp:    # an impossible choice (fp16 on the CPU) is refused before any work
        resolve_test_amp(cfg, args.amp, report=False)
    check_outputs(cfg, args)    # (after merge_args: a refused launcher creates nothing)
    check_qb_norm_banks(cfg, args.checkpoint)   # a QB-Norm bank of another model is refused
    from stan_mm.utils.shm import warn_shm_shortfall
    warn_shm_shortfall(cfg, 'test.py', ('test_dataloader', ))
    before = logger_names()
    runner = Runner.from_cfg(cfg)
    log_config_warnings(exclude=before)     # the config's warnings (on stderr already)
    # mmengine's load_from only warns on a mismatch and would test random weights; the
    # test pipeline's frame count is compared with the one the checkpoint was trained on
    runner.register_hook(CheckpointCheckHook(args.checkpoint, cfg, amp=args.amp,
                                             log_exclude=before))
    with contextlib.ExitStack() as stack:
        if args.amp:
            float32_test_outputs(runner.model)
            stack.enter_context(cuda_autocast_dtype(None))   # (the hook sets it)
        metrics = runner.test()
    log_results_summary(runner, metrics)
    shutdown_distributed()
    return metrics


if __name__ == '__main__':
    from stan_mm.utils.cli import run_tool
    sys.exit(run_tool(main, 'test.py'))
