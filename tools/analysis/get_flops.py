#!/usr/bin/env python
"""GFLOPs (G multiply-accumulates) and parameter counts of a stan-mm model.

    # a config: recognition -> whole model (backbone + head) per view [1, C, T, H, W];
    #           retrieval  -> video tower [1, T, C, H, W] and text tower [1, L] separately
    python tools/analysis/get_flops.py configs/stan/k400_self_b16.py
    python tools/analysis/get_flops.py CONFIG --shape 16 224 224 \
        --cfg-options model.backbone.depth=6
    # a CLIPSTAN backbone from an arch name, no weights, no config
    python tools/analysis/get_flops.py --arch ViT-B-16 --frames 8 --depth 4 --temporal-module attn

Counting convention: one multiply-add = one FLOP (fvcore / mmengine.analysis); matrix
products, convolutions and attention (Q K^T, A V) are counted, element-wise ops are not;
gradient checkpointing off; weights are not loaded (``pretrained`` stripped, except where
``arch=None`` says to read the architecture from it) and the model is built on the ``meta``
device unless ``--device cpu``. Ops that look like matrix products but had no formula are
listed (they would make the total too low).
Shape (T, H, W) and the number of test views default to the config's test pipeline.
"""
import argparse
import os.path as osp
import sys

import torch

sys.path.append(osp.dirname(osp.dirname(osp.abspath(__file__))))  # tools/: _cfg_options
from _cfg_options import ConfigOptions  # noqa: E402  (no stan_mm import: a fast --help)


def _views(value: str) -> int:
    """``--views``: a count (``'3'``) or CLIPSxCROPS as tools/test.py takes it (``'1x3'``,
    :func:`stan_mm.apis.video.parse_views`) -> the number of views."""
    if value.isdigit() and int(value) >= 1:
        return int(value)
    from stan_mm.apis.video import ViewsError, parse_views
    try:
        clips, crops = parse_views(value)
    except ViewsError as e:
        raise argparse.ArgumentTypeError(f'expected a count (3) or CLIPSxCROPS (1x3): {e}')
    return clips * crops


def _positive_int(value: str) -> int:
    """An argparse type: a whole number >= 1 (a size or a count)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a whole number >= 1, got {value!r}')
    if number < 1:
        raise argparse.ArgumentTypeError(f'expected a whole number >= 1, got {value!r}')
    return number


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config', nargs='?', type=osp.expanduser,
                   help='config file (omit with --arch)')
    p.add_argument('--shape', type=_positive_int, nargs=3, metavar=('T', 'H', 'W'),
                   help='frames and frame size of one view (default: test pipeline, '
                        'else 8 224 224)')
    p.add_argument('--text-len', type=_positive_int, help='token length for the text tower '
                   '(default: test pipeline context_length, else 32)')
    p.add_argument('--views', type=_views, metavar='N|CLIPSxCROPS',
                   help='views per video for the total line: a count (3) or CLIPSxCROPS as '
                   'tools/test.py takes it (1x3) (default: the test pipeline\'s num_clips x '
                   'crops)')
    p.add_argument('--cfg-options', nargs='+', action=ConfigOptions, default={},
                   metavar='KEY=VALUE', help='override config entries, as in tools/train.py '
                   '(spaces in a value are kept: "test_dataloader.dataset.data_root=/data/my '
                   'videos")')
    p.add_argument('--device', default='meta', choices=['meta', 'cpu'],
                   help='meta: shapes only (fast, no memory); cpu: real tensors')
    p.add_argument('--keep-weights', action='store_true',
                   help='keep pretrained paths (by default they are stripped)')
    g = p.add_argument_group('CLIPSTAN without a config')
    g.add_argument('--arch', help="CLIP arch name, e.g. ViT-B-16, 'ViT-B/16', ViT-L-14")
    g.add_argument('--frames', type=_positive_int, default=8)
    g.add_argument('--image-size', type=_positive_int, help='input size: the arch built for '
                   'it (more or fewer patches); default: the arch\'s own image size')
    g.add_argument('--depth', type=int, default=4)
    g.add_argument('--temporal-module', default='attn', help="attn | conv | none")
    g.add_argument('--no-spatial', action='store_true', help='spatial_module=False')
    g.add_argument('--levels', type=int, nargs='+', help='1-based CLIP levels')
    g.add_argument('--level-proj', action='store_true')
    g.add_argument('--structure', default='branch', choices=['branch', 'posterior'])
    return p.parse_args(argv)


def _arch_report(args, device):
    import copy
    from stan_mm.models.backbones import CLIPSTAN
    from stan_mm.models.clip import arch_from_name
    from stan_mm.utils.flops import TowerFlops, count_macs, count_params
    arch = args.arch
    if args.image_size:   # the same CLIP built for another input size (more patches)
        arch = copy.deepcopy(arch_from_name(args.arch))
        arch['vision_cfg']['image_size'] = args.image_size
    with torch.device(device):
        model = CLIPSTAN(
            arch=arch, depth=args.depth,
            temporal_module=None if args.temporal_module == 'none' else args.temporal_module,
            spatial_module=not args.no_spatial, levels=args.levels,
            level_proj=args.level_proj, structure=args.structure,
            max_frames=max(64, args.frames), input_layout='NTCHW')
        size = model.visual.image_size[0]
        x = torch.randn(1, args.frames, 3, size, size)
    res = count_macs(model, (x, ))
    return [TowerFlops(f'CLIPSTAN({args.arch}, depth={args.depth}, '
                       f'temporal_module={args.temporal_module!r})', tuple(x.shape), res,
                       count_params(model, 1))]


def _check_shape(model, shape, given: str) -> None:
    """Refuse, in one line naming the option, a clip shape the config's CLIPSTAN cannot
    take (the forward pass would fail with a traceback): frames of another size than its
    CLIP's positional embedding (not interpolated), more frames than the STAN branch's
    temporal embedding has rows (``max_frames``, without ``interpolate_time_embed``)."""
    from stan_mm.models.backbones import CLIPSTAN
    from stan_mm.models.backbones.stan_branch import BranchEmbedding
    from stan_mm.utils.cli import CommandLineError
    T, H, W = shape
    for name, module in model.named_modules():
        if not isinstance(module, CLIPSTAN):
            continue
        size = tuple(int(v) for v in module.visual.image_size)
        if (H, W) != size:
            other = (f'count a CLIPSTAN built for {H}x{H} frames with --arch NAME '
                     f'--image-size {H} --frames {T}' if H == W else
                     'use square frames')
            raise CommandLineError(
                f'{given} {T} {H} {W}: this config\'s CLIP takes {size[0]}x{size[1]} frames '
                f'(its positional embedding is not interpolated). Give --shape {T} {size[0]} '
                f'{size[1]}, a config whose CLIP arch is built for {H}x{W} (e.g. '
                f'ViT-L/14@336px for 336), or {other}')
        for embed in module.modules():
            if (isinstance(embed, BranchEmbedding) and T > embed.max_frames
                    and not embed.interpolate_time_embed):
                raise CommandLineError(
                    f'{given} {T} {H} {W}: the STAN branch of this config takes at most '
                    f'max_frames={embed.max_frames} frames (rows of its temporal embedding). '
                    f'Give at most {embed.max_frames} frames, or --cfg-options '
                    f'model.{name}.max_frames={T}')


def _config_report(args, device):
    from stan_mm.utils.flops import (DEFAULT_SHAPE, build_model_for_flops,
                                     recognition_flops, retrieval_flops, shape_from_config,
                                     text_len_from_config, views_from_config)
    from stan_mm.utils.cli import read_config
    cfg = read_config(args.config, 'CONFIG')
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    shape = tuple(args.shape) if args.shape else (shape_from_config(cfg) or DEFAULT_SHAPE)
    try:
        model, notes = build_model_for_flops(cfg, device, args.keep_weights)
    except FileNotFoundError as e:
        from stan_mm.utils.cli import CommandLineError
        raise CommandLineError(
            f'{e}. With arch=None the architecture is read from that file (weights are not '
            f'counted, but their shapes are): put the file there, or give the arch, e.g. '
            f'--cfg-options model.backbone.arch=ViT-B/16 (model.arch for a retrieval '
            f'config)') from e
    for n in notes:
        print('note:', n)
    _check_shape(model, shape, '--shape' if args.shape else 'the test pipeline\'s shape')
    if hasattr(model, 'text_backbone'):
        text_len = args.text_len or text_len_from_config(cfg) or 32
        return retrieval_flops(model, shape, text_len), None
    views = args.views or views_from_config(cfg)
    return [recognition_flops(model, shape)], views


def main(argv=None) -> int:
    args = parse_args(argv)
    import stan_mm  # noqa: F401  (registers the models)
    if bool(args.config) == bool(args.arch):
        print('give either CONFIG or --arch', file=sys.stderr)
        return 2
    if args.config:
        from stan_mm.utils.cli import check_input_file
        check_input_file(args.config, 'CONFIG', 'config file')
    views = None
    if args.arch:
        reports = _arch_report(args, args.device)
    else:
        reports, views = _config_report(args, args.device)
    for r in reports:
        print(r.format())
    if views and len(reports) == 1:
        g = reports[0].result.gmacs
        print(f'per view {g:.2f} G x {views} test views = {g * views:.1f} G per video')
    return 1 if any(r.result.skipped for r in reports) else 0


if __name__ == '__main__':
    parse_args()    # --help and a mistyped option answered before stan_mm is imported
    from stan_mm.utils.cli import run_tool
    sys.exit(run_tool(main, 'get_flops.py'))
