"""Offline text<->video retrieval metrics from a saved similarity matrix.

    python tools/analysis/eval_retrieval.py --sim SIM.npy --text-to-video T2V.npy \
        [--dsl] [--dsl-temp X] [--qb-norm BANK.npy] [--qb-beta 20] [--qb-k 1] \
        [--chunk-size N] [--device cpu]

SIM.npy   [num_texts, num_videos] similarities (texts are the rows), float;
          opened with mmap_mode='r' and read chunk_size rows at a time, so matrices larger
          than memory work.
T2V.npy   [num_texts] integer: the ground-truth video (column) of every text; several texts
          per video are allowed, every video needs at least one.
BANK.npy  [num_bank_texts, num_videos] similarities of querybank texts (training captions)
          to the same videos; enables QB-Norm of the text->video direction.

--dsl-temp X divides the similarities inside the dual softmax:
S' = S * softmax(S / X) * N (default 0.01, for cosine similarities; see
stan_mm/evaluation/rescoring.py for why, and for DSL followed by QB-Norm; logits cosine / tau
need X = 0.01 / tau: weights that underflow are an error, not ties). --dsl-temp needs
--dsl, --qb-beta and --qb-k need --qb-norm (usage error otherwise). --dsl with --qb-norm
prints a warning on stderr: the combination is evaluated by neither paper and was measured
to lower R@1 (docs/retrieval.md).

When SIM.npy or T2V.npy sits in a feature folder of tools/extract_features.py whose
meta.json records videos skipped as unreadable (--skip-bad), a warning on stderr names them:
the metrics then cover fewer videos (and captions) than the split. SIM.npy and T2V.npy
from two different feature folders whose texts.txt or videos.txt differ are refused (the
rows or columns of one are not those of the other, whatever the shapes). So is a SIM.npy or
BANK.npy holding NaN or inf (checked once, block by block, before ranking): the message
names how many rows (texts) and columns (videos) hold them, the first few (by the feature
folder's texts.txt / videos.txt for SIM.npy) and how to make the file again; older
stan-mm versions saved NaN embeddings, and sim.npy made from them, as they were.

The LAST line of stdout is one JSON object with t2v_R1 t2v_R5 t2v_R10 t2v_MdR t2v_MnR
v2t_R1 v2t_R5 v2t_R10 v2t_MdR v2t_MnR (recalls in percent). Bad input exits with status 2
and a message naming the file.
"""
import argparse
import json
import os
import sys

import numpy as np


def parse_args(argv=None):
    from stan_mm.evaluation import (DEFAULT_CHUNK_SIZE, DEFAULT_DSL_TEMP, DEFAULT_QB_BETA,
                                    DEFAULT_QB_K)
    parser = argparse.ArgumentParser(
        description='Retrieval metrics (t2v, v2t; optional DSL / QB-Norm) from a saved '
                    'similarity matrix.')
    # (paths: a leading ~ expanded, as stan_mm.utils.cli.user_path)
    parser.add_argument('--sim', required=True, type=os.path.expanduser,
                        help='.npy [num_texts, num_videos] similarity matrix')
    parser.add_argument('--text-to-video', required=True, type=os.path.expanduser,
                        help='.npy [num_texts] ground-truth video index of every text')
    parser.add_argument('--dsl', action='store_true', help='apply dual softmax (both ways)')
    parser.add_argument('--dsl-temp', type=float,
                        help=f'DSL temperature: S * softmax(S / temp), with --dsl; default '
                             f'{DEFAULT_DSL_TEMP}')
    parser.add_argument('--qb-norm', metavar='BANK.npy', default=None,
                        type=os.path.expanduser,
                        help='.npy [num_bank_texts, num_videos] querybank similarities')
    parser.add_argument('--qb-beta', type=float,
                        help=f'QB-Norm inverse temperature, with --qb-norm; default '
                             f'{DEFAULT_QB_BETA}')
    parser.add_argument('--qb-k', type=int,
                        help=f'top-k of each bank query in the activation set, with '
                             f'--qb-norm; default {DEFAULT_QB_K}')
    parser.add_argument('--chunk-size', type=int, default=DEFAULT_CHUNK_SIZE,
                        help='similarity rows in memory at a time; default %(default)s')
    parser.add_argument('--device', default='cpu', help='cpu or cuda; default %(default)s')
    parser.add_argument('--no-progress', action='store_true',
                        help='no progress bar (on stderr) while ranking')
    args = parser.parse_args(argv)
    # an option of a trick that is off would be ignored: refuse it; else fill its default
    qb_norm = args.qb_norm is not None
    for flag, needs, on, default in (
            ('--dsl-temp', '--dsl', args.dsl, DEFAULT_DSL_TEMP),
            ('--qb-beta', '--qb-norm BANK.npy', qb_norm, DEFAULT_QB_BETA),
            ('--qb-k', '--qb-norm BANK.npy', qb_norm, DEFAULT_QB_K)):
        name = flag[2:].replace('-', '_')
        if getattr(args, name) is None:
            setattr(args, name, default)
        elif not on:
            parser.error(f'{flag} is an option of {needs.split()[0]}, which is not given: '
                         f'add {needs}, or drop {flag}')
    return args


class InputError(Exception):
    """A problem with a user-supplied file; reported without a traceback."""


def check_not_folder(path: str, flag: str, what: str) -> None:
    """Refuse a folder given for the .npy file of ``flag`` (not "does not exist")."""
    if os.path.isdir(path):
        raise InputError(f'{flag} {path!r} is a folder; give the {what} .npy file')


def load_matrix(path: str, what: str, flag: str) -> np.ndarray:
    check_not_folder(path, flag, what.split(' (')[0])
    if not os.path.isfile(path):
        raise InputError(f'{what} file {path!r} does not exist')
    from stan_mm.evaluation.similarity import load_npy
    try:
        array = load_npy(path, f'{what} file', mmap_mode='r')
    except ValueError as exc:   # unreadable, or a .npz archive
        raise InputError(str(exc)) from exc
    if array.ndim != 2:
        raise InputError(f'{what} file {path!r} has shape {array.shape}; expected a 2-D '
                         '[num_texts, num_videos] matrix')
    if array.dtype.kind not in 'fiu':
        raise InputError(f'{what} file {path!r} has dtype {array.dtype}; expected numbers')
    if array.dtype.kind == 'f' and array.dtype.itemsize < 4:
        # rounding to 11 bits makes near scores equal, and a tie counts against the query
        print(f'eval_retrieval: warning: {what} file {path!r} is {array.dtype}: half '
              'precision rounds near scores to ties, and a tie with the ground truth counts '
              'against the query (recall comes out lower than from float32 scores); save it '
              'as float32 (extract_features --save-sim does), or evaluate the embeddings',
              file=sys.stderr)
    from stan_mm.apis.features import all_finite
    if not all_finite(array):    # one pass, block by block (the file stays memory-mapped)
        raise InputError(nonfinite_message(array, path, what, flag))
    return array


def folder_names(path: str, shape) -> tuple:
    """``(texts, videos)``: the lines of ``texts.txt`` / ``videos.txt`` of the feature folder
    (tools/extract_features.py) that holds ``path`` when they name its rows and columns
    (one line each), else ``(None, None)``."""
    from stan_mm.apis.features import read_lines
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isfile(os.path.join(folder, 'meta.json')):
        return None, None
    try:
        texts = read_lines(os.path.join(folder, 'texts.txt'))
        videos = read_lines(os.path.join(folder, 'videos.txt'))
    except (OSError, ValueError):
        return None, None
    if (len(texts), len(videos)) != tuple(shape):
        return None, None
    return texts, videos


def nonfinite_message(array: np.ndarray, path: str, what: str, flag: str) -> str:
    """What a matrix with NaN or inf entries is refused with: the file, how many rows
    (texts) and columns (videos) hold them, the first few of each (named by the feature
    folder's texts.txt / videos.txt for --sim) and what to do. Such a matrix was made from
    embeddings that an older stan-mm saved as they were; NaN scores ranked last."""
    from stan_mm.apis.features import (REEXTRACT, nonfinite_columns, nonfinite_rows,
                                       shown_names)
    rows, cols = nonfinite_rows(array), nonfinite_columns(array)
    texts, videos = folder_names(path, array.shape) if flag == '--sim' else (None, None)
    row_names = [texts[i] for i in rows] if texts else rows
    col_names = [videos[j] for j in cols] if videos else cols
    if texts:
        fix = f'{REEXTRACT}, with --save-sim'
    else:
        fix = ('compute it again from finite embeddings (tools/extract_features.py '
               '--save-sim of the current stan-mm refuses to save NaN embeddings)')
    return (f'{what} file {path!r} holds NaN or inf in {len(rows)} of {array.shape[0]} rows '
            f'({"texts" if texts else "rows"} {shown_names(row_names)}) and {len(cols)} of '
            f'{array.shape[1]} columns ({"videos" if videos else "columns"} '
            f'{shown_names(col_names)}): made from non-finite embeddings, which an older '
            f'stan-mm saved as they were (they would rank last); {fix}')


def load_inputs(args):
    sim = load_matrix(args.sim, 'similarity (--sim)', '--sim')
    num_texts, num_videos = sim.shape
    path = args.text_to_video
    check_not_folder(path, '--text-to-video', 'text-to-video')
    if not os.path.isfile(path):
        raise InputError(f'text-to-video file {path!r} does not exist')
    from stan_mm.evaluation.similarity import load_npy
    try:
        t2v = load_npy(path, 'text-to-video file')
    except ValueError as exc:   # unreadable, or a .npz archive
        raise InputError(str(exc)) from exc
    t2v = np.squeeze(t2v) if t2v.ndim == 2 and 1 in t2v.shape else t2v
    if t2v.ndim != 1 or t2v.dtype.kind not in 'iu':
        raise InputError(f'text-to-video file {path!r} has shape {t2v.shape} and dtype '
                         f'{t2v.dtype}; expected a 1-D integer array [num_texts]')
    if t2v.shape[0] != num_texts:
        raise InputError(f'text-to-video file {path!r} has {t2v.shape[0]} entries but '
                         f'{args.sim!r} has {num_texts} rows (texts); the similarity matrix '
                         'must be [num_texts, num_videos] with texts as rows')
    bank = None
    if args.qb_norm is not None:
        bank = load_matrix(args.qb_norm, 'querybank (--qb-norm)', '--qb-norm')
        if bank.shape[1] != num_videos:
            raise InputError(f'querybank file {args.qb_norm!r} has {bank.shape[1]} columns but '
                             f'{args.sim!r} has {num_videos} videos; the bank must hold '
                             'similarities of bank texts to the same videos, in the same order')
    return sim, t2v, bank


def check_same_extraction(args) -> None:
    """--sim and --text-to-video from two different feature folders of
    tools/extract_features.py must list the same texts and videos (``texts.txt`` and
    ``videos.txt``), else the rows and columns of one do not match the other (shapes alone
    may agree). Folders without those files are not checked."""
    folders = [os.path.dirname(os.path.abspath(p)) for p in (args.sim, args.text_to_video)]
    if folders[0] == folders[1]:
        return
    for name in ('texts.txt', 'videos.txt'):
        files = [os.path.join(f, name) for f in folders]
        if not all(os.path.isfile(f) and os.path.isfile(os.path.join(os.path.dirname(f),
                                                                     'meta.json'))
                   for f in files):
            return
        contents = []
        for f in files:
            with open(f, 'rb') as fh:
                contents.append(fh.read())
        if contents[0] != contents[1]:
            raise InputError(
                f'--sim {args.sim!r} and --text-to-video {args.text_to_video!r} come from two '
                f'feature folders whose {name} differ ({files[0]} vs {files[1]}): the rows '
                'or columns of one are not those of the other. Use the text_to_video.npy '
                'written next to the sim.npy (tools/extract_features.py --split ... '
                '--save-sim writes both)')


def warn(message: str) -> None:
    print(f'eval_retrieval: warning: {message}', file=sys.stderr, flush=True)


def warn_skipped_videos(args) -> None:
    """Warn when --sim or --text-to-video lies in a feature folder whose meta.json records
    videos skipped as unreadable at extraction (see
    stan_mm.apis.features.skipped_videos_message)."""
    from stan_mm.apis.features import (DamagedFeatureFolder, FeatureFolderError, load_meta,
                                       skipped_videos_message)
    folders = []
    for path in (args.sim, args.text_to_video):
        folder = os.path.dirname(os.path.abspath(path))
        if folder not in folders:
            folders.append(folder)
    for folder in folders:
        try:
            meta = load_meta(folder)
        except DamagedFeatureFolder as exc:
            warn(f'{exc}; whether videos were skipped at extraction is not known')
            continue
        except FeatureFolderError:    # another tool's meta.json
            continue
        message = skipped_videos_message(meta, folder) if meta is not None else None
        if message:
            warn(message)
            return


def main(argv=None) -> int:
    args = parse_args(argv)
    from stan_mm.apis.inference import check_device
    from stan_mm.evaluation import DSL_QB_NORM_WARNING, retrieval_metrics_from_similarity
    if args.dsl and args.qb_norm is not None:
        warn(DSL_QB_NORM_WARNING)
    try:
        check_device(args.device)
        sim, t2v, bank = load_inputs(args)
        check_same_extraction(args)
        warn_skipped_videos(args)
        metrics = retrieval_metrics_from_similarity(
            sim, t2v, dsl=args.dsl, dsl_temp=args.dsl_temp, qb_bank_sim=bank,
            qb_beta=args.qb_beta, qb_k=args.qb_k, chunk_size=args.chunk_size,
            device=args.device, sim_name=f'similarity file {args.sim!r}',
            bank_name=f'querybank file {args.qb_norm!r}',
            t2v_name=f'text-to-video file {args.text_to_video!r}',
            progress=not args.no_progress)
    except (InputError, ValueError) as exc:
        print(f'eval_retrieval: error: {exc}', file=sys.stderr)
        return 2
    print(json.dumps(metrics))
    return 0


if __name__ == '__main__':
    sys.exit(main())
