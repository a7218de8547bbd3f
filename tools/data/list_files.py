"""Writing MMAction2 list files, shared by build_k400_lists.py and build_ssv2_lists.py."""
import os
import os.path as osp
from typing import Sequence


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
