#!/usr/bin/env python
"""Convert a public STAN checkpoint (HuggingFace CLIP key names) to a stan-mm checkpoint.

    python tools/convert/stan_public_to_mm.py IN.pth OUT.pth
    python tools/convert/stan_public_to_mm.py --export OURS.pth PUBLIC_LAYOUT.pth
    python tools/convert/stan_public_to_mm.py RETRIEVAL.pth RECOGNITION.pth --to recognition

Prints every key it did not map and every weight of the converted model the input lacks.
The output loads with ``load_from = 'OUT.pth'`` into a
retrieval model whose backbone is ``CLIPSTAN(depth=K, temporal_module='attn')`` (K as
reported) and whose text backbone is ``CLIPTextEncoder``. ``--export`` does the inverse
(stan-mm -> public layout). ``--to recognition`` turns a retrieval checkpoint (public or
stan-mm layout) into the checkpoint of a recognizer with the text-classifier head of the
recognition configs: the video tower as it is, the text tower as the head's
(``cls_head.text_encoder.*``), to start a recognition run from with ``load_from``. Key
mapping: ``stan_mm/utils/stan_convert.py``.

OUT must not be IN (refused: it would destroy the input). An existing OUT is replaced, as
tools/convert/clip_to_mm.py does; the file is written to a temporary file next to it and
renamed into place once complete, so OUT is never half-written and a failed run leaves an
existing OUT as it was.
"""
import argparse
import pickle
import sys

import stan_mm  # noqa: F401  (checkpoint-loading fixes)
from stan_mm.compat import safe_torch_load
from stan_mm.utils.cli import check_output_file, describe, user_path
from stan_mm.utils.stan_convert import (check_not_input, convert_public_checkpoint,
                                        convert_to_recognition, export_public_checkpoint)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('src', type=user_path, help='input checkpoint')
    p.add_argument('dst', type=user_path, help='output checkpoint')
    p.add_argument('--export', action='store_true',
                   help='convert a stan-mm checkpoint to the public STAN layout instead')
    p.add_argument('--to', choices=('retrieval', 'recognition'), default='retrieval',
                   help='retrieval (default): a public checkpoint to the stan-mm retrieval '
                   'model; recognition: a retrieval checkpoint (public or stan-mm layout) to '
                   'a recognizer with the text-classifier head, the text tower becoming the '
                   "head's (cls_head.text_encoder.*)")
    p.add_argument('--trust', action='store_true',
                   help='allow unpickling arbitrary objects (only for files you trust)')
    p.add_argument('--strict', action='store_true',
                   help='exit with status 1 if any key was not mapped, or (converting to '
                   'stan-mm) any weight of the converted model is missing from the input')
    args = p.parse_args(argv)
    if args.export and args.to != 'retrieval':
        p.error(f'--export writes the public layout (a retrieval model); it does not go '
                f'with --to {args.to}')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        check_not_input(args.src, args.dst)
        check_output_file(args.dst, 'output')
        if args.export:
            report = export_public_checkpoint(
                safe_torch_load(args.src, map_location='cpu', trust=args.trust), args.dst,
                source=args.src)
        elif args.to == 'recognition':
            report = convert_to_recognition(args.src, args.dst, trust=args.trust)
        else:
            report = convert_public_checkpoint(args.src, args.dst, trust=args.trust)
    except (ValueError, KeyError, OSError, pickle.UnpicklingError) as e:
        # missing/corrupt/refused files and inputs of the wrong layout (UnsafeCheckpointError
        # is an UnpicklingError and names --trust)
        print(f'stan_public_to_mm: error: {describe(e)}', file=sys.stderr)
        return 2
    print(report.format())
    print(f'wrote {args.dst}')
    return 1 if (args.strict and (report.unmapped or report.missing)) else 0


if __name__ == '__main__':
    sys.exit(main())
