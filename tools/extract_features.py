"""Video (and text) embeddings of a trained model, resumable, in a documented folder format.

    python tools/extract_features.py CONFIG CKPT --videos DIR_OR_LIST [--texts FILE] \\
        --out OUT [--batch-size 8] [--num-workers 2] [--device cpu|cuda] [--amp [DTYPE]] [--skip-bad]
    python tools/extract_features.py CONFIG CKPT --split test --out OUT   # a dataset split

Output folder (see stan_mm/apis/features.py and docs/user_tools.md):

    OUT/videos.npy  [Nv, E] float32, L2-normalized rows    OUT/videos.txt  one path per row
    OUT/texts.npy   [Nt, E] float32, L2-normalized rows    OUT/texts.txt   one text per row
    OUT/text_to_video.npy  [Nt] (with --split)             OUT/meta.json   written last

so ``texts @ videos.T`` is the cosine similarity [Nt, Nv] (--save-sim writes it as OUT/sim.npy
for tools/analysis/eval_retrieval.py). Videos are preprocessed by the config's test pipeline
(frames, size, normalization as in testing). Retrieval configs use the video and text
towers; recognition configs the backbone (views averaged) and, with a text-classifier head,
its text tower.

Interrupt it (Ctrl-C, SIGTERM, a crash, --limit) and run the same command again: embedded
videos are kept in OUT/.partial and skipped. The precision is part of "the same command":
OUT/.partial/run.json and OUT/meta.json record it (fp32, or bf16 / fp16 with --amp), and a
run in another precision than the shards or finished video rows it would reuse is refused
(the error names the --amp setting to rerun with; or use another --out, or --overwrite).
An unreadable video stops the run with its file name; --skip-bad lists it in
OUT/bad_videos.txt and goes on. A write that fails (a full disk) stops it with the file's
name, keeping what was saved; a damaged finished file of OUT (e.g. a truncated videos.npy)
is named too, and --overwrite embeds its videos again.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout
sys.path.append(osp.dirname(osp.abspath(__file__)))  # tools/: _cfg_options
from _cfg_options import ConfigOptions  # noqa: E402  (no stan_mm import: a fast --help)

AMP_CHOICES = ('auto', 'bf16', 'fp16')   # stan_mm.utils.amp.AMP_CHOICES (stan_mm is
#                                          imported after parsing: a fast --help)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    # (paths: a leading ~ expanded, as stan_mm.utils.cli.user_path; the shell leaves
    # --out=~/feat as it is)
    p.add_argument('config', type=osp.expanduser, help='config file of the model')
    p.add_argument('checkpoint', type=osp.expanduser,
                   help='checkpoint written by tools/train.py')
    p.add_argument('--videos', type=osp.expanduser,
                   help='folder of videos (scanned recursively), one video file, '
                   'or a text file with one video path per line (relative to the file\'s '
                   'folder)')
    p.add_argument('--texts', type=osp.expanduser,
                   help='text file, one text (caption, query) per line: row i of '
                   'texts.npy is line i + 1, so blank lines are refused (but at the end)')
    p.add_argument('--split', choices=['train', 'val', 'test'],
                   help='take the videos and captions of the config\'s <split>_dataloader '
                   'dataset instead (writes text_to_video.npy)')
    p.add_argument('--skip-videos', action='store_true',
                   help='with --split: captions only (e.g. a QB-Norm querybank from train)')
    p.add_argument('--out', required=True, type=osp.expanduser, help='output folder')
    p.add_argument('--batch-size', type=int, default=8, help='videos per forward pass')
    p.add_argument('--num-workers', type=int, default=2, help='video decoding processes')
    p.add_argument('--device', default='cpu', help='cpu, cuda or cuda:N (default: cpu)')
    p.add_argument('--amp', nargs='?', const='auto', choices=AMP_CHOICES, metavar='DTYPE',
                   help='run the video and text towers under autocast; the embeddings are '
                   'still float32. DTYPE auto (the default): the dtype the model trained in '
                   "(the optim_wrapper of the checkpoint's stored training config, else of "
                   'the config; bf16 for a model trained in fp32, fp16 on a GPU without '
                   'bf16); bf16 or fp16 choose. The CPU autocasts in bf16 only (on a CPU '
                   'without bf16 instructions it can be slower than fp32). Check the metric '
                   'once against a run without --amp. OUT records the precision (meta.json '
                   '"precision", .partial/run.json): resuming or extending OUT in another '
                   'precision is refused, so that videos.npy never mixes two (rerun with '
                   'the same --amp dtype, or use another --out, or --overwrite)')
    p.add_argument('--views', metavar='CLIPSxCROPS',
                   help='test views for recognition configs (e.g. 1x3); embeddings are '
                   'averaged over views. Default: the config\'s test pipeline')
    p.add_argument('--skip-bad', action='store_true',
                   help='skip unreadable videos (listed in OUT/bad_videos.txt) instead of '
                   'stopping at the first one')
    p.add_argument('--limit', type=int, help='embed at most N new videos, then stop '
                   '(rerun to continue)')
    p.add_argument('--shard-size', type=int, default=256,
                   help='videos per partial-results file (the unit of resumption)')
    p.add_argument('--save-sim', action='store_true',
                   help='also write OUT/sim.npy = texts @ videos.T [Nt, Nv]')
    p.add_argument('--overwrite', action='store_true',
                   help='replace results of another model/config/checkpoint, or of another '
                   '--amp precision, in OUT')
    p.add_argument('--no-progress', action='store_true', help='no progress bars')
    p.add_argument('--cfg-options', nargs='+', action=ConfigOptions,
                   help='override config entries, e.g. model.backbone.depth=6 (spaces in a '
                   'value are kept: "data_root=/data/my videos")')
    args = p.parse_args(argv)
    if args.split is None and args.videos is None and args.texts is None:
        p.error('give --videos and/or --texts, or --split')
    if args.split is not None and (args.videos or args.texts):
        p.error('--split takes videos and captions from the config: drop --videos/--texts')
    if args.skip_videos and args.split is None:
        p.error('--skip-videos goes with --split')
    for name in ('batch_size', 'shard_size'):
        if getattr(args, name) < 1:
            p.error(f'--{name.replace("_", "-")} must be >= 1')
    if args.num_workers < 0:
        p.error('--num-workers must be >= 0 (0: decode videos in the main process)')
    if args.limit is not None and args.limit < 1:
        p.error('--limit must be >= 1')
    return args


def check_paths(args) -> None:
    """Refuse, before the model is loaded, the files and folders the run could not use:
    a missing CONFIG, CHECKPOINT or --texts file (or a folder given for one), an --out
    that is a file or cannot be created (CommandLineError, naming the argument). The
    paths checked (``~`` expanded) are those used."""
    from stan_mm.utils.cli import check_input_file, check_output_dir
    args.config = check_input_file(args.config, 'CONFIG', 'config file')
    args.checkpoint = check_input_file(args.checkpoint, 'CHECKPOINT', 'checkpoint file')
    if args.texts:
        args.texts = check_input_file(args.texts, '--texts', 'text file (one text per line)')
    args.out = check_output_dir(args.out, '--out')


def read_texts(path: str):
    """Line i + 1 of ``--texts`` is row i of texts.npy: blank lines are refused (but at the
    end), see :func:`stan_mm.apis.embed.read_text_lines`."""
    from stan_mm.apis.embed import read_text_lines
    return read_text_lines(path, '--texts')


def main(argv=None) -> int:
    args = parse_args(argv)
    import stan_mm  # noqa: F401  (registration and stack fixes)

    def log(msg):
        print(f'[extract_features] {msg}', flush=True)

    from stan_mm.apis import FeatureFolderError, ModelLoadError
    from stan_mm.apis.features import sigterm_as_interrupt
    try:
        with sigterm_as_interrupt():   # Slurm preemption: save, as on Ctrl-C
            return _run(args, log)
    except (FeatureFolderError, ModelLoadError, FileNotFoundError, ValueError) as e:
        # (FeatureFolderError includes a failed write, e.g. a full disk, and a damaged file)
        print(f'extract_features: error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:     # before or after the embedding (model loading, sim.npy)
        print('extract_features: interrupted', file=sys.stderr)
        return 130


def _run(args, log) -> int:
    from stan_mm.apis import init_model, list_videos, loaded_model_key
    from stan_mm.apis.features import folder_lock, text_model_record
    from stan_mm.apis.video import split_items
    check_paths(args)
    if args.amp:    # an impossible choice (fp16 on the CPU) is refused before the model loads
        import torch
        from stan_mm.utils.amp import resolve_amp_dtype
        try:
            device_type = torch.device(args.device).type
        except (RuntimeError, TypeError):
            device_type = None        # init_model names a bad --device
        if device_type is not None:
            resolve_amp_dtype(args.amp, {}, device_type)
    videos, root, texts, t2v = [], osp.abspath('.'), None, None
    if args.split is None:   # read the inputs before the model is loaded
        # (OUT/texts.txt as --texts is fine: it is read whole before being rewritten)
        target = osp.join(args.out, 'videos.txt')
        if (args.videos and osp.isfile(args.videos) and osp.exists(target)
                and osp.samefile(args.videos, target)):
            raise ValueError(f'{args.videos} is the videos.txt this tool writes into --out '
                             f'{args.out} (paths relative to the videos\' root, rewritten by '
                             f'each run): copy it elsewhere first, or choose another --out')
        if args.videos:
            root, videos = list_videos(args.videos, option='--videos')
        if args.texts:
            texts = read_texts(args.texts)
    model = init_model(args.config, args.checkpoint, args.device, args.cfg_options,
                       need_classnames=False)
    if args.split is not None:
        videos, texts, t2v = split_items(model.cfg, args.split)
        log(f'{args.split} split: {len(videos)} videos, {len(texts)} captions')
        if not texts:
            texts, t2v = None, None
        if args.skip_videos:
            if texts is None:
                raise ValueError(f'--skip-videos: the {args.split} split has no captions')
            videos, t2v = [], None
    key = loaded_model_key(model, args.checkpoint, args.views)
    extra = dict(config=osp.abspath(args.config), checkpoint=osp.abspath(args.checkpoint),
                 cfg_options=args.cfg_options, source=args.split or args.videos,
                 # what made texts.npy: a QB-Norm bank is checked against the tested model
                 **text_model_record(model.cfg, args.checkpoint,
                                     getattr(model, 'build_note', None)))
    with folder_lock(args.out):    # through --save-sim, which reads what was written
        return _extract(args, model, videos, root, texts, t2v, key, extra, log)


def _extract(args, model, videos, root, texts, t2v, key, extra, log) -> int:
    from stan_mm.apis import extract_features
    from stan_mm.apis.embed import autocast_towers
    from stan_mm.datasets.transforms.video_io import VideoReadError
    from stan_mm.utils.amp import dtype_name, resolve_amp_dtype
    device = next(model.parameters()).device
    amp = False
    if args.amp:
        dtype, why = resolve_amp_dtype(args.amp, model.cfg, device.type, checkpoint=dict(
            meta=getattr(model, 'checkpoint_meta', None)))
        amp = dtype_name(dtype)
        log(f'--amp: autocast in {amp} on {device.type} ({why})')
    try:
        with autocast_towers(device, bool(amp), dtype=dtype if amp else None):
            res = extract_features(
                model, args.out, videos=videos, video_root=root, texts=texts,
                text_to_video=t2v, key=key, views=args.views, batch_size=args.batch_size,
                num_workers=args.num_workers, skip_bad=args.skip_bad, limit=args.limit,
                shard_size=args.shard_size, overwrite=args.overwrite,
                progress=not args.no_progress, extra_meta=extra,
                precision=amp or 'fp32', log=log)   # (meta.json: precision and amp)
    except VideoReadError as e:
        print(f'extract_features: error: {e}\n(the videos embedded so far are saved; rerun '
              f'with --skip-bad to skip unreadable videos)', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('extract_features: interrupted; the videos embedded so far are saved in '
              f'{osp.join(args.out, ".partial")}: rerun the same command to continue',
              file=sys.stderr)
        return 130
    if not res.complete:
        return 0
    if args.save_sim:
        write_sim(args.out, log)
    log(f'wrote {args.out}: {res.num_videos} videos, {res.num_texts} texts')
    return 0


def write_sim(out: str, log) -> None:
    from stan_mm.apis import load_features
    from stan_mm.apis.features import atomic_save_product_npy
    feats = load_features(out)
    if feats['videos'] is None or feats['texts'] is None:
        raise ValueError('--save-sim needs both videos and texts')
    # complete or absent; written in row blocks, never whole in memory
    shape = atomic_save_product_npy(osp.join(out, 'sim.npy'), feats['texts'], feats['videos'])
    log(f'wrote {osp.join(out, "sim.npy")} {shape} (rows: texts.txt, columns: videos.txt)')


if __name__ == '__main__':
    sys.exit(main())
