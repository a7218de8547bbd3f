"""Test a checkpoint: recognition accuracy (multi-view) or retrieval recall.

    python tools/test.py CONFIG CKPT [--dump out.pkl] [--work-dir DIR] [--cfg-options k=v ...]
    bash tools/dist_test.sh CONFIG CKPT GPUS [same options]
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

import stan_mm  # noqa: E402,F401
from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.runner import Runner  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Test a video model with stan-mm / MMAction2')
    p.add_argument('config', help='config file path')
    p.add_argument('checkpoint', help='checkpoint file (local path)')
    p.add_argument('--work-dir', help='where the test logs and metrics go')
    p.add_argument('--dump', type=str,
                   help='also write the model outputs (per-sample predictions) to this .pkl')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config entries, e.g. the multi-view setting: '
                   'test_pipeline.0.num_clips=4 (see docs/testing.md)')
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                   default='none', help='job launcher')
    p.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = p.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def merge_args(cfg, args):
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint not found: {args.checkpoint}')
    cfg.load_from = args.checkpoint
    if args.dump is not None:
        if not args.dump.endswith(('.pkl', '.pickle')):
            raise ValueError(f'--dump must end with .pkl or .pickle, got {args.dump}')
        dump = dict(type='DumpResults', out_file_path=args.dump)
        ev = cfg.test_evaluator
        cfg.test_evaluator = ([*ev, dump] if isinstance(ev, (list, tuple)) else [ev, dump])
    return cfg


def main(argv=None):
    args = parse_args(argv)
    cfg = merge_args(Config.fromfile(args.config), args)
    runner = Runner.from_cfg(cfg)
    return runner.test()


if __name__ == '__main__':
    main()
