"""The main job on the embedded default data: train and test a tiny STAN on synthetic motion.

    python tools/quickstart.py              # STAN (configs/quickstart/motion_stan_tiny.py)
    python tools/quickstart.py --baseline   # CLIP + mean pooling over frames (depth=0)

Generates the synthetic motion benchmark under data/motion on first use (--data-root DIR: in
DIR instead, e.g. when the current folder is read-only), trains through the MMAction2
runner (decord, transforms, evaluator), tests the final weights on the held-out split,
prints top-1 next to the chance level, and writes ``training_curves.png`` in the work dir
(with the other model's curves too once both have run).
"""
import argparse
import glob
import json
import os
import os.path as osp
import sys
import time
from typing import Optional

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import stan_mm  # noqa: E402,F401
from mmengine.runner import Runner  # noqa: E402

from stan_mm.utils.cli import (CommandLineError, ConfigOptionsAction,  # noqa: E402
                                check_output_dir, read_config, user_path)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = {
    'stan': osp.join(ROOT, 'configs', 'quickstart', 'motion_stan_tiny.py'),
    'meanpool': osp.join(ROOT, 'configs', 'quickstart', 'motion_meanpool_tiny.py'),
}
LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


# what the numbers of quickstart_result.json are (the file says so itself: its "acc/top1"
# and "top1" are the same kind of number on two scales)
RESULT_UNITS = ('acc/*: fractions 0-1 (MMAction2\'s AccMetric, as logged); top1, chance, '
                'direction_acc and the other motion metrics (motion/* in the log), '
                'retrieval/*_R1, _R5, _R10: percent; retrieval/*_MdR, _MnR: ranks; '
                'wall_time_s: seconds')


def _positive_int(value: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a whole number >= 1, got {value!r}')
    if number < 1:
        raise argparse.ArgumentTypeError(f'expected a whole number >= 1, got {value!r}')
    return number


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--baseline', action='store_true',
                   help='run the order-blind baseline (CLIP mean pooling) instead of STAN')
    p.add_argument('--config', type=user_path,
                   help='another config (default: the quickstart STAN config); '
                   'its results go to work_dirs/quickstart/<config name>')
    p.add_argument('--work-dir', type=user_path,
                   help='default: work_dirs/quickstart/<stan|meanpool|config '
                   'name>')
    p.add_argument('--epochs', type=_positive_int,
                   help='override the number of training epochs (>= 1)')
    p.add_argument('--data-root', type=user_path, metavar='DIR',
                   help='folder of the synthetic motion benchmark, for every dataloader of '
                   'the config (default: the config\'s data_root, data/motion under the '
                   'current folder). It is generated there on first use, so DIR must be '
                   'writable unless it already holds the benchmark')
    p.add_argument('--cfg-options', nargs='+', action=ConfigOptionsAction,
                   help='override config entries, e.g. train_dataloader.batch_size=8 (the '
                   'dataset itself, e.g. its size or motion pairs, is set in '
                   'configs/quickstart/_motion_common.py: the configs copy it when loaded, '
                   'so data_root=DIR here is taken as --data-root DIR)')
    args = p.parse_args(argv)
    if args.baseline and args.config:
        p.error('--baseline runs configs/quickstart/motion_meanpool_tiny.py; with --config '
                'the config alone decides the model: drop one of the two')
    option_root = (args.cfg_options or {}).get('data_root')
    if (args.data_root is not None and option_root is not None
            and osp.normpath(user_path(str(option_root))) != osp.normpath(args.data_root)):
        p.error(f'--data-root {args.data_root!r} and --cfg-options data_root='
                f'{option_root!r} name different folders: give one of the two')
    from stan_mm.utils.cli import check_input_file
    try:
        if args.config:
            args.config = check_input_file(args.config, '--config', 'config file')
        if args.work_dir:
            args.work_dir = check_output_dir(args.work_dir, '--work-dir')
        if args.data_root is not None and osp.exists(args.data_root) and \
                not osp.isdir(args.data_root):
            raise CommandLineError(f'--data-root {args.data_root!r} is a file, not a '
                                   f'folder; give a folder (created when missing)')
    except CommandLineError as e:
        p.error(str(e))
    return args


def run_name(args) -> str:
    """'stan' / 'meanpool' for the two quickstart configs, else the config's file name (so
    another config never writes into, or is labelled as, the STAN run)."""
    if not args.config:
        return 'meanpool' if args.baseline else 'stan'
    for name, path in CONFIGS.items():
        if osp.abspath(args.config) == osp.abspath(path):
            return name
    return osp.splitext(osp.basename(args.config))[0]


def _datasets(node, path):
    """``(key path, dataset config)`` of ``node`` (a dataloader's ``dataset``) and of the
    datasets it wraps (``dataset=``, ``datasets=[...]``)."""
    if not hasattr(node, 'get'):
        return
    yield path, node
    yield from _datasets(node.get('dataset'), f'{path}.dataset')
    inner = node.get('datasets')
    for i, child in enumerate(inner if isinstance(inner, (list, tuple)) else ()):
        yield from _datasets(child, f'{path}.datasets.{i}')


def _loader_datasets(cfg):
    """``(key path, dataset config)`` of every dataset of the train / val / test loaders."""
    for key in LOADERS:
        loader = cfg.get(key)
        if hasattr(loader, 'get'):
            yield from _datasets(loader.get('dataset'), f'{key}.dataset')


def _same_folder(a, b) -> bool:
    return isinstance(a, str) and isinstance(b, str) and \
        osp.normpath(osp.abspath(a)) == osp.normpath(osp.abspath(b))


def set_data_root(cfg, data_root: str, config_root, options=None, flag='--data-root'):
    """Send every dataset of the loaders that generates the synthetic benchmark (has
    ``generate=``) or reads the config's ``data_root`` (``config_root``, its value before
    ``--cfg-options``) to ``data_root``; the configs copy ``data_root`` into each loader
    when they are loaded, so setting the variable alone changes nothing. A loader whose
    ``data_root`` ``options`` (``--cfg-options``) set itself keeps it.

    Raises:
        CommandLineError: no dataset of the config reads that folder (``flag`` named).
    """
    options = options or {}
    changed = []
    for path, node in _loader_datasets(cfg):
        if f'{path}.data_root' in options:
            continue
        if 'generate' in node or _same_folder(node.get('data_root'), config_root):
            node['data_root'] = data_root
            changed.append(path)
    if not changed:
        raise CommandLineError(
            f'{flag} {data_root!r}: no dataset of the config generates the synthetic '
            f'benchmark or reads its data_root ({config_root!r}); set a loader\'s folder '
            f'with --cfg-options <train|val|test>_dataloader.dataset.data_root=DIR')
    cfg.data_root = data_root
    return changed


def _holds_benchmark(root: str, generate) -> bool:
    """Whether ``root`` already holds the synthetic benchmark that ``generate`` (keyword
    arguments of ``generate_motion_dataset``) asks for, so nothing is written there."""
    import inspect
    from stan_mm.datasets import synthetic
    try:
        kwargs = {k: p.default for k, p in inspect.signature(
            synthetic.generate_motion_dataset).parameters.items()
            if p.default is not inspect.Parameter.empty}
        kwargs.update(dict(generate or {}))
        params = synthetic._params(**{k: kwargs[k] for k in inspect.signature(
            synthetic._params).parameters})
        target = osp.realpath(root) if osp.islink(root) else osp.abspath(root)
        return bool(synthetic._same_dataset(target, params)[0])
    except Exception:  # noqa: BLE001  (a bad generate= is the generator's to explain)
        return False


def check_data_roots(cfg, flag: Optional[str] = None) -> None:
    """Refuse, before anything is built, a synthetic-benchmark folder (a loader dataset
    with ``generate=``) that does not hold the benchmark yet and could not be written:
    the generator builds it beside the folder, so the parent folder must be writable
    (created when missing). ``flag``: how the user named the folder (``'--data-root'``),
    None for the config's own.

    Raises:
        CommandLineError: one line naming the folder and ``--data-root``.
    """
    seen = set()
    for _, node in _loader_datasets(cfg):
        root = node.get('data_root')
        if 'generate' not in node or not isinstance(root, str) or root in seen:
            continue
        seen.add(root)
        if _holds_benchmark(root, node.get('generate')):
            continue
        target = osp.realpath(root) if osp.islink(root) else osp.abspath(root)
        what = f'{flag} {root!r}' if flag else f'the data root {root!r}'
        try:
            check_output_dir(osp.dirname(target), f'{what}: its folder')
        except CommandLineError as e:
            raise CommandLineError(
                f'{e} (the synthetic benchmark is generated there on first use): give a '
                f'writable folder with --data-root DIR') from None


def check_work_dir(work_dir: str) -> None:
    """Refuse the default work dir (``work_dirs/quickstart/<name>`` under the current
    folder) when it cannot be created or written (created when missing).

    Raises:
        CommandLineError: one line naming the folder and ``--work-dir``.
    """
    try:
        check_output_dir(osp.abspath(work_dir), 'the default work dir')
    except CommandLineError as e:
        raise CommandLineError(f'{e}: give a writable folder with --work-dir DIR') from None


def data_root_option(args):
    """``(flag, folder)`` of the data root the user gave: ``--data-root DIR``, else
    ``--cfg-options data_root=DIR``; ``(None, None)`` when neither (the config's own)."""
    if args.data_root is not None:
        return '--data-root', args.data_root
    option = (args.cfg_options or {}).get('data_root')
    if option is not None:
        return '--cfg-options data_root', user_path(str(option))
    return None, None


def build_config(args):
    """``(name, cfg)``: the run's name (:func:`run_name`) and the config it runs, with
    ``--cfg-options``, ``--data-root`` and ``--epochs`` applied. Nothing is written."""
    name = run_name(args)
    cfg = read_config(args.config or CONFIGS[name], '--config')
    config_root = cfg.get('data_root')
    options = args.cfg_options or {}
    if options:
        cfg.merge_from_dict(options)
    flag, data_root = data_root_option(args)
    if data_root is not None:
        set_data_root(cfg, data_root, config_root, options, flag)
    if args.epochs is not None:
        cfg.train_cfg.max_epochs = args.epochs
        for sched in cfg.param_scheduler:  # keep the schedule's shape on a shorter run
            if sched.get('type') == 'CosineAnnealingLR':
                sched.end = args.epochs
                sched.T_max = max(1, args.epochs - sched.begin)
    cfg.work_dir = args.work_dir or osp.join('work_dirs', 'quickstart', name)
    cfg.launcher = 'none'
    if 'preemption' in cfg.get('default_hooks', {}):
        # no --resume here: a SIGTERM ends the demo at once instead of saving for a resume
        cfg.default_hooks.preemption = None
    return name, cfg


def read_scalars(work_dir):
    """Training loss per iteration and validation metrics per epoch from mmengine's
    ``vis_data/scalars.json`` (newest run in ``work_dir``)."""
    files = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    train, val = [], []
    if not files:
        return train, val
    with open(files[-1]) as f:
        for line in f:
            rec = json.loads(line)
            if 'loss' in rec:
                train.append((rec['step'], rec['loss']))
            elif 'motion/top1' in rec:
                val.append((rec['step'], rec['motion/top1']))
    return train, val


def plot_curves(runs, out_png):
    """One figure, two panels: training loss and validation top-1, one line per run."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for name, work_dir in runs.items():
        train, val = read_scalars(work_dir)
        if train:
            ax_loss.plot(*zip(*train), label=name)
        if val:
            ax_acc.plot(*zip(*val), marker='o', label=name)
    ax_loss.set(xlabel='iteration', ylabel='training loss', title='Training loss')
    ax_acc.set(xlabel='epoch', ylabel='val top-1 (%)', title='Validation top-1')
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    name, cfg = build_config(args)
    # (a read-only current folder: one line naming the folder and the option, before the
    # runner or the data generator fails with a traceback)
    check_data_roots(cfg, data_root_option(args)[0])
    if not args.work_dir:
        check_work_dir(cfg.work_dir)

    start = time.time()
    runner = Runner.from_cfg(cfg)   # generates data/motion on first use
    runner.train()
    metrics = runner.test()
    elapsed = time.time() - start

    runs = {n: osp.join(osp.dirname(cfg.work_dir), n) for n in CONFIGS}
    runs[name] = cfg.work_dir
    runs = {n: d for n, d in runs.items() if osp.isdir(d)}
    out_png = osp.join(cfg.work_dir, 'training_curves.png')
    plot_curves(runs, out_png)

    # motion metrics (percent) under their short names, every other number as logged
    result = {}
    for k, v in metrics.items():
        if isinstance(v, (int, float)):
            short = k.split('/', 1)[1] if k.startswith('motion/') else k
            result[short] = round(float(v), 2 if k.startswith('motion/') else 4)
    result['model'] = name
    result['wall_time_s'] = round(elapsed, 1)
    # two scales side by side ("acc/top1": 0.1875 and "top1": 18.75): said in the file
    result['units'] = RESULT_UNITS
    with open(osp.join(cfg.work_dir, 'quickstart_result.json'), 'w') as f:
        json.dump(result, f, indent=1)
    took = '{} min {:02d} s'.format(*divmod(int(result['wall_time_s']), 60))
    if {'top1', 'chance', 'direction_acc'} <= set(result):
        print(f"\n[quickstart] {name}: test top-1 {result['top1']:.1f}% "
              f"(chance {result['chance']:.1f}%), time-direction accuracy "
              f"{result['direction_acc']:.1f}% (order-blind models: about 50%); {took}")
    else:   # a config without MotionPairMetric (e.g. the retrieval quickstart)
        shown = ', '.join(f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}'
                          for k, v in metrics.items())
        print(f'\n[quickstart] {name}: {shown}; {took}')
    print(f'[quickstart] curves: {out_png}')
    return result


if __name__ == '__main__':
    from stan_mm.utils.cli import run_tool
    # (a mistake in the user's input, e.g. a missing CLIP weights file, ends in one line)
    sys.exit(run_tool(main, 'quickstart.py'))
