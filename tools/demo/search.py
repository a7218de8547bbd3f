"""Search a folder of videos with text: top-k videos per query, as a table and an HTML page.

    python tools/demo/search.py CONFIG CKPT --gallery DIR --query "a dog catching a ball" \\
        [--query "..."] [--top-k 5] [--html results.html] [--cache DIR] [--save-sim SIM.npy]

The gallery is embedded once and cached under DIR/.stan_mm_cache/<model key>/ (or
<--cache>/<model key>-<8 hex digits of the gallery path>/) in the format of
tools/extract_features.py; later searches with the
same config and checkpoint reuse it and embed only new or changed videos. Scores are cosine
similarities of L2-normalized embeddings; equal scores keep the gallery order.
Interrupted while embedding (Ctrl-C, SIGTERM), it keeps the videos embedded so far in the
cache: the same command continues with the others.

--save-sim writes the [num_queries, num_videos] similarity matrix (texts are rows, as
tools/analysis/eval_retrieval.py --sim expects) with SIM.queries.txt and SIM.videos.txt
naming its rows and columns.
"""
import argparse
import contextlib
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
sys.path.append(osp.dirname(osp.dirname(osp.abspath(__file__))))  # tools/: _cfg_options
from _cfg_options import ConfigOptions  # noqa: E402  (no stan_mm import: a fast --help)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    # (paths: a leading ~ expanded, as stan_mm.utils.cli.user_path; the shell leaves
    # --cache=~/cache as it is)
    p.add_argument('config', type=osp.expanduser, help='config file of the model '
                   '(retrieval, or recognition with a text-classifier head)')
    p.add_argument('checkpoint', type=osp.expanduser,
                   help='checkpoint written by tools/train.py')
    p.add_argument('--gallery', required=True, type=osp.expanduser,
                   help='folder of videos (scanned recursively)')
    p.add_argument('--query', action='append', default=[], help='a text query (repeatable)')
    p.add_argument('--queries', type=osp.expanduser,
                   help='text file with one query per line, taken after the '
                   '--query ones in file order (the rows of --save-sim), so blank lines are '
                   'refused (but at the end)')
    p.add_argument('--top-k', type=int, default=5, help='results per query (default 5)')
    p.add_argument('--html', type=osp.expanduser,
                   help='write an HTML page with frame thumbnails here')
    p.add_argument('--thumbnails', type=int, default=4,
                   help='frames per video in the HTML page, >= 1 (default 4); leave out '
                   '--html for no page')
    p.add_argument('--cache', type=osp.expanduser,
                   help='cache folder (default: GALLERY/.stan_mm_cache)')
    p.add_argument('--save-sim', metavar='SIM.npy', type=osp.expanduser,
                   help='write the query x video similarity matrix (.npy)')
    p.add_argument('--batch-size', type=int, default=8, help='videos per forward pass')
    p.add_argument('--num-workers', type=int, default=2, help='video decoding processes')
    p.add_argument('--device', default='cpu', help='cpu, cuda or cuda:N (default: cpu)')
    p.add_argument('--no-progress', action='store_true', help='no progress bars')
    p.add_argument('--cfg-options', nargs='+', action=ConfigOptions,
                   help='override config entries (spaces in a value are kept)')
    args = p.parse_args(argv)
    if args.queries:
        from stan_mm.apis.embed import read_text_lines
        try:
            args.query += [q.strip() for q in read_text_lines(args.queries, '--queries')]
        except (FileNotFoundError, ValueError) as e:   # (their messages name the file)
            p.error(str(e))
        except OSError as e:
            p.error(f'--queries {args.queries!r}: cannot read it ({e})')
    if not args.query:
        p.error('give at least one --query "text" (or --queries FILE)')
    blank = [i + 1 for i, q in enumerate(args.query) if not q.strip()]
    if blank:
        p.error(f'--query number {", ".join(map(str, blank))} is blank: give the text to '
                f'search for (a blank query would rank the gallery by nothing)')
    if args.top_k < 1:
        p.error('--top-k must be >= 1')
    if args.thumbnails < 1:
        p.error('--thumbnails must be >= 1 (frames per video in the HTML page; leave out '
                '--html for no page)')
    if args.batch_size < 1:
        p.error('--batch-size must be >= 1')
    if args.num_workers < 0:
        p.error('--num-workers must be >= 0 (0: decode videos in the main process)')
    if not osp.isdir(args.gallery):
        p.error(f'--gallery {args.gallery!r} is not a folder')
    if args.save_sim and not args.save_sim.endswith('.npy'):
        p.error('--save-sim must end with .npy')
    return args


def sim_files(save_sim: str):
    """The files --save-sim SIM.npy writes: SIM.npy, SIM.queries.txt, SIM.videos.txt."""
    stem = save_sim[:-4]
    return save_sim, stem + '.queries.txt', stem + '.videos.txt'


def check_paths(args) -> None:
    """Refuse, before the model is loaded, the inputs and outputs the run could not use:
    a missing CONFIG or CHECKPOINT (or a folder given for one), a --cache that is a file or
    cannot be created, an --html or --save-sim path that is a folder or in a folder that
    cannot be created, a gallery without videos (CommandLineError or ValueError, naming the
    argument)."""
    from stan_mm.apis.search import CACHE_DIRNAME
    from stan_mm.apis.video import list_videos
    from stan_mm.utils.cli import check_input_file, check_output_dir, check_output_file
    args.config = check_input_file(args.config, 'CONFIG', 'config file')
    args.checkpoint = check_input_file(args.checkpoint, 'CHECKPOINT', 'checkpoint file')
    if args.cache is not None:
        args.cache = check_output_dir(args.cache, '--cache')
    else:
        check_output_dir(osp.join(args.gallery, CACHE_DIRNAME),
                         'the gallery cache (choose another with --cache)')
    if args.html:
        args.html = check_output_file(args.html, '--html')
        probe_output_file(args.html, '--html')
    if args.save_sim:
        for path in sim_files(args.save_sim):
            probe_output_file(check_output_file(path, '--save-sim'), '--save-sim')
    list_videos(args.gallery, option='--gallery')   # (again in search_gallery: cheap)


def probe_output_file(path: str, flag: str) -> None:
    """Open ``path`` for appending (a new file is removed again): refuses, before any
    work, a place where no file can be made (``/proc``, a read-only mount) that
    :func:`~stan_mm.utils.cli.check_output_file` cannot tell (e.g. when run as root)."""
    from stan_mm.utils.cli import CommandLineError
    existed = osp.lexists(path)
    try:
        with open(path, 'a', encoding='utf-8'):
            pass
    except OSError as e:
        raise CommandLineError(f'{flag} {path!r}: cannot write it: '
                               f'{e.strerror or e}') from None
    if not existed:
        os.remove(path)


def main(argv=None) -> int:
    args = parse_args(argv)
    import stan_mm  # noqa: F401
    from stan_mm.apis import FeatureFolderError, ModelLoadError
    from stan_mm.apis.features import sigterm_as_interrupt
    from stan_mm.datasets.transforms.video_io import VideoReadError
    try:
        check_paths(args)
        with sigterm_as_interrupt():   # Slurm preemption, kill: save, as on Ctrl-C
            return run(args)
    except (FeatureFolderError, ModelLoadError, VideoReadError, FileNotFoundError,
            ValueError) as e:
        print(f'search: error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('search: interrupted', file=sys.stderr)
        return 130


def run(args) -> int:
    import numpy as np
    from stan_mm.apis import init_model, loaded_model_key, search_gallery
    from stan_mm.apis.search import gallery_cache_dir
    from stan_mm.apis.report import display_name, format_table, search_html

    def log(msg):
        print(f'[search] {msg}', flush=True)

    model = init_model(args.config, args.checkpoint, args.device, args.cfg_options,
                       need_classnames=False)
    key = loaded_model_key(model, args.checkpoint)
    extra = dict(config=osp.abspath(args.config), checkpoint=osp.abspath(args.checkpoint),
                 cfg_options=args.cfg_options, source=osp.abspath(args.gallery))
    try:
        res = search_gallery(model, args.gallery, args.query, key, cache=args.cache,
                             top=args.top_k, batch_size=args.batch_size,
                             num_workers=args.num_workers, progress=not args.no_progress,
                             extra_meta=extra, log=log)
    except KeyboardInterrupt:
        cache = gallery_cache_dir(args.gallery, key, args.cache)
        print(f'search: interrupted; the gallery videos embedded so far are saved in {cache}: '
              f'rerun the same command to continue (only the others are embedded)',
              file=sys.stderr)
        return 130
    root = osp.abspath(args.gallery)
    names = [display_name(p, root) for p in res.video_paths]
    log(f'gallery: {len(names)} videos (embeddings in {res.cache_dir})')
    for q, query in enumerate(res.queries):
        order = res.ranking[q]
        print(format_table(query, res.sim[q, order], [names[i] for i in order]))
        print()
    if args.save_sim:
        sim_path, queries_path, videos_path = sim_files(args.save_sim)
        with writing(sim_path, '--save-sim'):
            np.save(sim_path, res.sim.astype(np.float32))
        with writing(queries_path, '--save-sim'), open(queries_path, 'w',
                                                       encoding='utf-8') as f:
            f.writelines(' '.join(q.splitlines()) + '\n' for q in res.queries)
        with writing(videos_path, '--save-sim'), open(videos_path, 'w',
                                                      encoding='utf-8') as f:
            f.writelines(p + '\n' for p in res.video_paths)
        log(f'wrote {sim_path} {res.sim.shape} (rows: {queries_path}, columns: '
            f'{videos_path})')
    if args.html:
        page = search_html(res.queries, res.ranking, res.sim, res.video_paths, names,
                           subtitle=f'{args.config} | {args.checkpoint} | gallery {root} '
                           f'({len(names)} videos)', thumbs=args.thumbnails)
        with writing(args.html, '--html'), open(args.html, 'w', encoding='utf-8') as f:
            f.write(page)
        log(f'wrote {args.html}')
    return 0


@contextlib.contextmanager
def writing(path: str, flag: str):
    """An OSError while writing ``path`` (a full disk) as a one-line error naming it."""
    from stan_mm.utils.cli import CommandLineError
    try:
        yield
    except OSError as e:
        raise CommandLineError(f'{flag} {path!r}: cannot write it: '
                               f'{e.strerror or e}') from None


if __name__ == '__main__':
    sys.exit(main())
