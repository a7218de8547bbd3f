"""The main job on the embedded default data: train and test a tiny STAN on synthetic motion.

    python tools/quickstart.py              # STAN (configs/quickstart/motion_stan_tiny.py)
    python tools/quickstart.py --baseline   # CLIP + mean pooling over frames (depth=0)

Generates the synthetic motion benchmark under data/motion on first use, trains through the
MMAction2 runner (decord, transforms, evaluator), tests the final weights on the held-out
split, prints top-1 next to the chance level, and writes ``training_curves.png`` in the work
dir (with the other model's curves too once both have run).
"""
import argparse
import glob
import json
import os
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import stan_mm  # noqa: E402,F401
from mmengine.runner import Runner  # noqa: E402

from stan_mm.utils.cli import ConfigOptionsAction, read_config, user_path  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = {
    'stan': osp.join(ROOT, 'configs', 'quickstart', 'motion_stan_tiny.py'),
    'meanpool': osp.join(ROOT, 'configs', 'quickstart', 'motion_meanpool_tiny.py'),
}


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
    p.add_argument('--cfg-options', nargs='+', action=ConfigOptionsAction,
                   help='override config entries, e.g. train_dataloader.batch_size=8 (the '
                   'dataset itself, e.g. its size or motion pairs, is set in '
                   'configs/quickstart/_motion_common.py: the configs copy it when loaded)')
    args = p.parse_args(argv)
    if args.baseline and args.config:
        p.error('--baseline runs configs/quickstart/motion_meanpool_tiny.py; with --config '
                'the config alone decides the model: drop one of the two')
    from stan_mm.utils.cli import CommandLineError, check_input_file, check_output_dir
    try:
        if args.config:
            args.config = check_input_file(args.config, '--config', 'config file')
        if args.work_dir:
            args.work_dir = check_output_dir(args.work_dir, '--work-dir')
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
    name = run_name(args)
    cfg = read_config(args.config or CONFIGS[name], '--config')
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
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
