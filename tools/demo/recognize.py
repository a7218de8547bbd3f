"""Recognize the action in one video: the top-5 classes with their scores.

    python tools/demo/recognize.py CONFIG CKPT VIDEO [--views 1x3]
    python tools/demo/recognize.py CONFIG CKPT VIDEO --classnames "juggling,surfing,knitting"
    python tools/demo/recognize.py CONFIG CKPT VIDEO --classnames data/ucf101/classnames.txt

The video goes through the config's test pipeline (--views CLIPSxCROPS overrides its views)
and the model's own test step: scores are the per-view softmax averaged over views, as in
tools/test.py. --classnames (a file with one name per line, or names separated by commas)
replaces the class list of a text-classifier head: zero-shot recognition of classes the
model was not trained on; --template replaces its prompt templates (default: the config's,
model.cls_head.templates). A retrieval config scores --classnames with its text tower
(prompts "a video of {}.", --template to change). A linear head only takes --classnames as
the names of its own classes, and no --template.

VIDEO without an extension, "clip", is the file "clip", or "clip.mp4" when there is no file
"clip" (a warning names both when both exist).

A mistake in the input (a missing or unreadable video, a folder given for a file, a class
list that does not fit, a template without exactly one {}) ends with one line,
"recognize: error: ...", and exit status 2.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
sys.path.append(osp.dirname(osp.dirname(osp.abspath(__file__))))  # tools/: _cfg_options
from _cfg_options import ConfigOptions  # noqa: E402  (no stan_mm import: a fast --help)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    # (paths: a leading ~ expanded, as stan_mm.utils.cli.user_path; the shell leaves
    # --classnames=~/classes.txt as it is)
    p.add_argument('config', type=osp.expanduser, help='config file of the model')
    p.add_argument('checkpoint', type=osp.expanduser,
                   help='checkpoint written by tools/train.py')
    p.add_argument('video', type=osp.expanduser, help='the video file')
    p.add_argument('--classnames', type=osp.expanduser,
                   help='class list: a file with one name per line (a value with a "/" '
                   'or a file extension is a file name) or "name1,name2,..." of at least '
                   'two names (names that contain commas or "/", such as some SSv2 '
                   'classes, need the file)')
    p.add_argument('--views', metavar='CLIPSxCROPS',
                   help='test views, e.g. 1x3 or 4x3 (default: the config\'s)')
    p.add_argument('--top-k', type=int, default=5, help='classes to show (default 5)')
    p.add_argument('--template', action='append',
                   help='prompt template with one {} where the class name goes (repeatable; '
                   'embeddings averaged over templates): a text-classifier head\'s templates '
                   '(default: the config\'s, model.cls_head.templates), or a retrieval '
                   'config\'s prompts (default "a video of {}."); a linear head has none')
    p.add_argument('--device', default='cpu', help='cpu, cuda or cuda:N (default: cpu)')
    p.add_argument('--cfg-options', nargs='+', action=ConfigOptions,
                   help='override config entries (spaces in a value are kept: '
                   '"model.cls_head.templates=[\'a video of {}.\']")')
    args = p.parse_args(argv)
    if args.top_k < 1:
        p.error('--top-k must be >= 1')
    return args


def check_paths(args) -> None:
    """Refuse, before the model is loaded, a missing CONFIG or CHECKPOINT, or a folder
    given for one of them or for VIDEO, a missing VIDEO (a name without an extension,
    'abc', names the file 'abc', else 'abc.mp4', as the reader takes it:
    ``resolve_video_name``; URLs are left to the reader) (CommandLineError, naming the
    argument)."""
    from stan_mm.datasets.transforms.video_io import resolve_video_name
    from stan_mm.utils.cli import CommandLineError, check_input_file
    args.config = check_input_file(args.config, 'CONFIG', 'config file')
    args.checkpoint = check_input_file(args.checkpoint, 'CHECKPOINT', 'checkpoint file')
    video = args.video
    if '://' not in video and osp.isdir(resolve_video_name(video)):
        raise CommandLineError(f'VIDEO {video!r} is a folder; give the video file')
    if '://' not in video and not osp.exists(resolve_video_name(video)):
        bare = osp.splitext(video)[0] == video
        raise CommandLineError(f'VIDEO {video!r}: video file not found'
                               + (f' (nor {video + ".mp4"!r})' if bare else ''))


def main(argv=None) -> int:
    """Exit status 0, or 2 after a one-line ``recognize: error: ...`` for a mistake in the
    input: a missing or unreadable video, config or checkpoint, a bad class list."""
    args = parse_args(argv)
    import stan_mm  # noqa: F401
    from stan_mm.apis import ModelLoadError
    from stan_mm.datasets.transforms.video_io import VideoReadError
    try:
        check_paths(args)
        return run(args)
    except (ModelLoadError, VideoReadError, FileNotFoundError, ValueError) as e:
        print(f'recognize: error: {e}', file=sys.stderr)
        return 2


def run(args) -> int:
    import numpy as np
    from stan_mm.apis import init_model, load_config, recognize
    from stan_mm.apis.recognition import (apply_classnames, apply_templates,
                                          missing_classnames_file, parse_classnames)
    from stan_mm.apis.report import format_table

    names = parse_classnames(args.classnames) if args.classnames else None
    cfg = load_config(args.config, args.cfg_options)
    # --template: checked before the model is built; a text head's templates (as
    # --cfg-options model.cls_head.templates=[...]), a retrieval model's prompts
    templates = apply_templates(cfg, args.template)
    if names is not None:
        apply_classnames(cfg, names)
    elif missing_classnames_file(cfg):
        print(f'recognize: error: the config\'s class list {missing_classnames_file(cfg)!r} '
              f'does not exist; give the classes with --classnames FILE or "a,b,c"',
              file=sys.stderr)
        return 2
    model = init_model(cfg, args.checkpoint, args.device)
    labels, scores = recognize(model, args.video, views=args.views, classnames=names,
                               templates=templates)
    order = np.argsort(-scores, kind='stable')[:args.top_k]
    print(f'video: {args.video} ({len(labels)} classes, views: '
          f'{args.views or "from the config"})')
    print(format_table(args.video, scores[order], [labels[i] for i in order],
                       label='class').split('\n', 1)[1])
    return 0


if __name__ == '__main__':
    sys.exit(main())
