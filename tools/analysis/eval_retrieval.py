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
stan_mm/evaluation/rescoring.py for why, and for DSL followed by QB-Norm).

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
    parser.add_argument('--sim', required=True,
                        help='.npy [num_texts, num_videos] similarity matrix')
    parser.add_argument('--text-to-video', required=True,
                        help='.npy [num_texts] ground-truth video index of every text')
    parser.add_argument('--dsl', action='store_true', help='apply dual softmax (both ways)')
    parser.add_argument('--dsl-temp', type=float, default=DEFAULT_DSL_TEMP,
                        help='DSL temperature: S * softmax(S / temp); default %(default)s')
    parser.add_argument('--qb-norm', metavar='BANK.npy', default=None,
                        help='.npy [num_bank_texts, num_videos] querybank similarities')
    parser.add_argument('--qb-beta', type=float, default=DEFAULT_QB_BETA,
                        help='QB-Norm inverse temperature; default %(default)s')
    parser.add_argument('--qb-k', type=int, default=DEFAULT_QB_K,
                        help='top-k of each bank query in the activation set; default '
                             '%(default)s')
    parser.add_argument('--chunk-size', type=int, default=DEFAULT_CHUNK_SIZE,
                        help='similarity rows in memory at a time; default %(default)s')
    parser.add_argument('--device', default='cpu', help='cpu or cuda; default %(default)s')
    return parser.parse_args(argv)


class InputError(Exception):
    """A problem with a user-supplied file; reported without a traceback."""


def load_matrix(path: str, what: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise InputError(f'{what} file {path!r} does not exist')
    try:
        array = np.load(path, mmap_mode='r', allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f'{what} file {path!r} is not a readable .npy array: {exc}') from exc
    if array.ndim != 2:
        raise InputError(f'{what} file {path!r} has shape {array.shape}; expected a 2-D '
                         '[num_texts, num_videos] matrix')
    if array.dtype.kind not in 'fiu':
        raise InputError(f'{what} file {path!r} has dtype {array.dtype}; expected numbers')
    return array


def load_inputs(args):
    sim = load_matrix(args.sim, 'similarity (--sim)')
    num_texts, num_videos = sim.shape
    path = args.text_to_video
    if not os.path.isfile(path):
        raise InputError(f'text-to-video file {path!r} does not exist')
    try:
        t2v = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f'text-to-video file {path!r} is not a readable .npy array: '
                         f'{exc}') from exc
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
        bank = load_matrix(args.qb_norm, 'querybank (--qb-norm)')
        if bank.shape[1] != num_videos:
            raise InputError(f'querybank file {args.qb_norm!r} has {bank.shape[1]} columns but '
                             f'{args.sim!r} has {num_videos} videos; the bank must hold '
                             'similarities of bank texts to the same videos, in the same order')
    return sim, t2v, bank


def main(argv=None) -> int:
    args = parse_args(argv)
    from stan_mm.apis.inference import check_device
    from stan_mm.evaluation import retrieval_metrics_from_similarity
    try:
        check_device(args.device)
        sim, t2v, bank = load_inputs(args)
        metrics = retrieval_metrics_from_similarity(
            sim, t2v, dsl=args.dsl, dsl_temp=args.dsl_temp, qb_bank_sim=bank,
            qb_beta=args.qb_beta, qb_k=args.qb_k, chunk_size=args.chunk_size,
            device=args.device, sim_name=f'similarity file {args.sim!r}',
            bank_name=f'querybank file {args.qb_norm!r}',
            t2v_name=f'text-to-video file {args.text_to_video!r}')
    except (InputError, ValueError) as exc:
        print(f'eval_retrieval: error: {exc}', file=sys.stderr)
        return 2
    print(json.dumps(metrics))
    return 0


if __name__ == '__main__':
    sys.exit(main())
