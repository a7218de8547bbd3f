"""Writing MMAction2 list files, shared by build_k400_lists.py and build_ssv2_lists.py."""
import os
import os.path as osp
from typing import Dict, List, Sequence, Tuple


def write_lines(path: str, lines: Sequence[str]) -> None:
    with open(path, 'w', encoding='utf-8') as f:
        f.writelines(f'{line}\n' for line in lines)


def write_missing(out_dir: str, split: str, missing: Sequence[str]) -> None:
    """``missing_{split}.txt`` lists ``missing``; with none, an earlier run's list is
    removed (it would name videos that are there now)."""
    path = osp.join(out_dir, f'missing_{split}.txt')
    if missing:
        write_lines(path, missing)
    elif osp.exists(path):
        os.remove(path)


def refuse_empty_splits(found: Dict[str, Tuple[List, List[str]]], hint: str) -> None:
    """Raise ``ValueError`` (before anything is written) when a split's video folder holds
    none of its videos: a wrong file name pattern or extension, not a dataset with every
    video gone, and writing would replace good lists with empty ones. ``found``:
    ``{split: (present items, missing names)}``; ``hint``: what to check."""
    empty = [(split, missing) for split, (items, missing) in found.items()
             if not items and missing]
    if empty:
        split, missing = empty[0]
        raise ValueError(f'none of the {len(missing)} videos of the {split} split is in its '
                         f'video folder (looked for e.g. {", ".join(missing[:3])}); nothing '
                         f'was written. {hint}')
