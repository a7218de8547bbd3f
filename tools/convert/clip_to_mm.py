"""Convert CLIP weights (OpenAI, open_clip, HuggingFace) into one stan-mm CLIP checkpoint.

    python tools/convert/clip_to_mm.py checkpoints/clip/ViT-B-16.pt checkpoints/clip/ViT-B-16-mm.pth
    python tools/convert/clip_to_mm.py hf_clip_folder/ OUT.pth
    python tools/convert/clip_to_mm.py laion_b16.bin OUT.pth --arch ViT-B-16   # GELU
    python tools/convert/clip_to_mm.py IN OUT_FOLDER          # open_clip folder layout

Input: an OpenAI release (state dict or TorchScript archive), an open_clip file or folder,
or a HuggingFace CLIP folder or weights file, with both towers; the architecture is read from the weights
(or --arch), the activation by the rule of stan_mm/models/clip/builder.py (--quick-gelu /
--gelu force it). Output (see docs/weights.md): OUT.pth / OUT.pt = {'state_dict': open_clip
layout, fp32, 'meta': {'clip_cfg': the full architecture, source, ...}}, replaced if it
exists; any other OUT = an open_clip folder (open_clip_config.json +
open_clip_model.safetensors): a new or empty folder, or an earlier output of this tool
(whose two files are replaced); a folder holding anything else is refused. Use the result as
pretrained= of CLIPSTAN / STANRetriever / CLIPTextEncoder (not as load_from); a text
tower with another vocabulary than CLIP BPE's is reported, and serves CLIPSTAN only.

Prints a report: architecture, activation and why, parameter counts, source layout, keys.
"""
import argparse
import json
import os.path as osp
import pickle
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    # (paths: a leading ~ expanded, as stan_mm.utils.cli.user_path; the shell leaves
    # a quoted '~/x.pt' as it is)
    p.add_argument('src', type=osp.expanduser, help='CLIP weights file or folder')
    p.add_argument('dst', type=osp.expanduser,
                   help='output: OUT.pth (single file) or a folder (new, empty, or an '
                   'earlier output of this tool)')
    p.add_argument('--arch', help='architecture: an open_clip name (ViT-B-16), an OpenAI '
                   'spelling (ViT-B/16), a clip_cfg as JSON (\'{"embed_dim": ...}\') or a '
                   '.json file holding one; default: read from the weights')
    act = p.add_mutually_exclusive_group()
    act.add_argument('--quick-gelu', dest='quick_gelu', action='store_const', const=True,
                     help='force QuickGELU (OpenAI-trained weights)')
    act.add_argument('--gelu', dest='quick_gelu', action='store_const', const=False,
                     help='force GELU (most LAION / DataComp weights)')
    p.add_argument('--format', choices=['pth', 'dir'],
                   help='output format (default: pth when DST ends in .pth/.pt, else dir)')
    return p.parse_args(argv)


def parse_arch(value):
    """--arch: a name, a JSON clip_cfg, or a .json file holding one."""
    if value is None:
        return None
    if value.lstrip().startswith('{'):
        return json.loads(value)
    if value.endswith('.json'):
        with open(osp.expanduser(value)) as f:
            cfg = json.load(f)
        return cfg.get('model_cfg', cfg)  # open_clip_config.json files too
    return value


def main(argv=None) -> int:
    args = parse_args(argv)
    import stan_mm  # noqa: F401
    from stan_mm.apis import convert_clip
    from stan_mm.models.clip import CLIPKeysMismatchError
    from stan_mm.utils.cli import describe
    try:
        report = convert_clip(args.src, args.dst, arch=parse_arch(args.arch),
                              quick_gelu=args.quick_gelu, out_format=args.format)
    except (ValueError, KeyError, TypeError, OSError, CLIPKeysMismatchError,
            pickle.UnpicklingError) as e:
        # (UnsafeCheckpointError is an UnpicklingError; a KeyError's str() adds quotes)
        print(f'clip_to_mm: error: {describe(e)}', file=sys.stderr)
        return 2
    print(report.format())
    return 0


if __name__ == '__main__':
    sys.exit(main())
