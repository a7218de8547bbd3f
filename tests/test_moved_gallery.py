"""A moved gallery keeps its embeddings.

A feature folder (the search cache ``GALLERY/.stan_mm_cache/<key>``, or an
``extract_features.py --out`` folder) built from ``DIR/videos`` and run again after
``mv DIR NEW`` (an external drive mounted elsewhere, a Docker bind mount, a renamed
folder) reuses every video whose path relative to the recorded root, size and
modification time are unchanged under the new root, instead of embedding them all again
(it was "0 already embedded (reused), N to embed": the recorded root no longer exists, so
the same-file match found nothing). A video changed after the move is embedded again; a
copy of the folder next to the original is still not matched (the original is there:
``test_paths_review_fixes3``).

Tiny random retrieval model and generated videos (the helpers of ``test_user_tools``).
"""
import glob
import json
import os
import os.path as osp
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, osp.dirname(__file__))
from test_user_tools import RETRIEVAL_CFG, build, load_tool, write_video  # noqa: E402

NAMES = ['sub/v2.mp4', 'v0.mp4', 'v1.mp4']   # (as a folder lists them: sorted)
MOVED = 'moved gallerý é'          # a space and non-ASCII letters


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('moved')
    model_dir = tmp / 'model'          # outside the gallery: the key stays the same
    model_dir.mkdir()
    cfg_file = model_dir / 'ret.py'
    cfg_file.write_text(f'_base_ = [{RETRIEVAL_CFG!r}]\n')
    _, model, ckpt = build(str(cfg_file))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield dict(cfg=str(cfg_file), ckpt=ckpt, model=model,
                   search=load_tool('tools/demo/search.py'),
                   extract=load_tool('tools/extract_features.py'))
    finally:
        torch.set_num_threads(threads)


def make_gallery(base):
    videos = base / 'DIR' / 'videos'
    for i, name in enumerate(NAMES):
        (videos / name).parent.mkdir(parents=True, exist_ok=True)
        write_video(str(videos / name), seed=i)
    return base / 'DIR'


def search_args(setup, gallery):
    return [setup['cfg'], setup['ckpt'], '--gallery', str(gallery), '--query', 'a shape',
            '--top-k', '2', '--batch-size', '1', '--num-workers', '0', '--no-progress']


def touch_later(path):
    """A changed video: same name and size, another modification time."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_search_reuses_the_cache_of_a_moved_gallery(setup, tmp_path, capsys):
    tool = setup['search']
    top = make_gallery(tmp_path)
    assert tool.main(search_args(setup, top / 'videos')) == 0
    assert '3 videos: 0 already embedded (reused), 3 to embed' in capsys.readouterr().out
    cache, = glob.glob(str(top / 'videos' / '.stan_mm_cache' / '*'))
    first = np.load(osp.join(cache, 'videos.npy'))

    moved = tmp_path / MOVED
    os.rename(top, moved)
    gallery = moved / 'videos'
    assert tool.main(search_args(setup, gallery)) == 0
    out = capsys.readouterr().out
    assert '3 videos: 3 already embedded (reused), 0 to embed' in out, out
    assert (f'{top / "videos"} -> {gallery}: 3 videos reused' in out), out
    cache = osp.join(gallery, '.stan_mm_cache', osp.basename(cache))
    np.testing.assert_array_equal(np.load(osp.join(cache, 'videos.npy')), first)
    with open(osp.join(cache, 'meta.json')) as f:
        assert json.load(f)['video_root'] == str(gallery)
    assert tool.main(search_args(setup, gallery)) == 0            # now named there
    assert '3 videos: all already embedded' in capsys.readouterr().out

    # moved once more, and one video changed after the move: only it is embedded again
    again = tmp_path / 'again ü'
    os.rename(moved, again)
    touch_later(again / 'videos' / 'v1.mp4')
    assert tool.main(search_args(setup, again / 'videos')) == 0
    out = capsys.readouterr().out
    assert '3 videos: 2 already embedded (reused), 1 to embed' in out, out
    assert f'{gallery} -> {again / "videos"}: 2 videos reused' in out, out


def test_search_with_cache_dir_takes_over_the_cache_of_a_moved_gallery(setup, tmp_path,
                                                                         capsys):
    """``--cache DIR`` names the folder by a hash of the gallery's path: after a move it
    used to embed everything into a new folder. The old folder is taken over (renamed),
    but only for the same model, and never while the old gallery is still there."""
    tool = setup['search']
    top = make_gallery(tmp_path / 'a')
    cache = tmp_path / 'cache'
    copy_parent = tmp_path / 'copy'
    copy_parent.mkdir()
    assert tool.main(search_args(setup, top / 'videos') + ['--cache', str(cache)]) == 0
    capsys.readouterr()
    old_folder, = os.listdir(cache)
    first = np.load(cache / old_folder / 'videos.npy')

    # a copy next to the original: the original is there, so the copy gets its own cache
    import shutil
    shutil.copytree(top, copy_parent / 'DIR')
    assert tool.main(search_args(setup, copy_parent / 'DIR' / 'videos')
                     + ['--cache', str(cache)]) == 0
    assert '3 videos: 0 already embedded (reused), 3 to embed' in capsys.readouterr().out
    copy_folder, = [n for n in os.listdir(cache) if n != old_folder]

    moved = tmp_path / MOVED
    os.rename(top, moved)
    assert tool.main(search_args(setup, moved / 'videos') + ['--cache', str(cache)]) == 0
    out = capsys.readouterr().out
    assert '3 videos: 3 already embedded (reused), 0 to embed' in out, out
    assert f'gallery cache: {cache / old_folder} was made for the same videos' in out, out
    from stan_mm.apis.search import gallery_cache_dir
    taken = gallery_cache_dir(str(moved / 'videos'), old_folder.rsplit('-', 1)[0], str(cache))
    # the copy (still there) keeps its own folder; the original's is renamed
    assert sorted(os.listdir(cache)) == sorted([copy_folder, osp.basename(taken)])
    np.testing.assert_array_equal(np.load(osp.join(taken, 'videos.npy')), first)


def tool_args(setup, videos, out, *extra):
    return [setup['cfg'], setup['ckpt'], '--videos', str(videos), '--out', str(out),
            '--batch-size', '1', '--shard-size', '1', '--num-workers', '0',
            '--no-progress', *extra]


def test_extract_features_reuses_a_moved_folder_and_its_partial_shards(setup, tmp_path,
                                                                       capsys):
    tool = setup['extract']
    top = make_gallery(tmp_path)
    out = top / 'feats'                         # moved with the videos
    assert tool.main(tool_args(setup, top / 'videos', out)) == 0
    first = np.load(out / 'videos.npy')
    capsys.readouterr()

    moved = tmp_path / MOVED
    os.rename(top, moved)
    touch_later(moved / 'videos' / 'sub' / 'v2.mp4')
    assert tool.main(tool_args(setup, moved / 'videos', moved / 'feats')) == 0
    printed = capsys.readouterr().out
    assert '3 videos: 2 already embedded (reused), 1 to embed' in printed, printed
    assert 'embedded 1 new videos, reused 2' in printed
    assert f'{top / "videos"} -> {moved / "videos"}: 2 videos reused' in printed, printed
    now = np.load(moved / 'feats' / 'videos.npy')
    np.testing.assert_array_equal(now[1:], first[1:])          # the reused rows
    np.testing.assert_allclose(now[0], first[0], atol=1e-6)    # sub/v2.mp4: embedded
    assert (moved / 'feats' / 'videos.txt').read_text().split() == NAMES

    # an unfinished run (--limit), moved, then resumed: its shard is reused
    part = tmp_path / 'P'
    make_gallery(part)
    assert tool.main(tool_args(setup, part / 'DIR' / 'videos', part / 'DIR' / 'feats',
                               '--limit', '2')) == 0
    capsys.readouterr()
    os.rename(part / 'DIR', part / MOVED)
    moved = part / MOVED
    assert tool.main(tool_args(setup, moved / 'videos', moved / 'feats')) == 0
    printed = capsys.readouterr().out
    assert '3 videos: 2 already embedded (reused), 1 to embed' in printed, printed
    np.testing.assert_allclose(np.load(moved / 'feats' / 'videos.npy'), first,
                               atol=1e-6)


def test_unreadable_videos_of_a_moved_folder_are_not_retried(setup, tmp_path):
    from stan_mm.apis import extract_features
    top = make_gallery(tmp_path)
    (top / 'videos' / 'broken.mp4').write_bytes(b'not a video')
    names = ['broken.mp4', *NAMES]

    def run(root, logs):
        return extract_features(setup['model'], str(root.parent / 'feats'), videos=names,
                                video_root=str(root), key='k', batch_size=1,
                                num_workers=0, shard_size=1, progress=False,
                                skip_bad=True, log=logs.append)

    res = run(top / 'videos', [])
    assert [p for p, _ in res.bad] == ['broken.mp4']
    moved = tmp_path / MOVED
    os.rename(top, moved)
    logs = []
    res = run(moved / 'videos', logs)
    assert (res.reused, res.new, [p for p, _ in res.bad]) == (3, 0, ['broken.mp4']), logs
    assert any('1 unreadable, unchanged since they failed (not retried)' in m
               for m in logs), logs

    # another model (key) is still refused, moved or not
    from stan_mm.apis.features import FeatureFolderError
    os.rename(moved, tmp_path / 'third')
    with pytest.raises(FeatureFolderError, match='model key other differs'):
        extract_features(setup['model'], str(tmp_path / 'third' / 'feats'), videos=names,
                         video_root=str(tmp_path / 'third' / 'videos'), key='other',
                         num_workers=0, progress=False, skip_bad=True, log=print)


def test_a_cache_taken_over_meanwhile_is_left_alone(tmp_path, monkeypatch):
    """Two searches of a moved gallery at once: the second chose the old folder, then the
    first renamed it before the second took its lock. The second neither fails (the lock
    made an empty folder at the old name, which a rename could not move onto the taken-over
    one) nor leaves that empty folder behind."""
    import stan_mm.apis.features as features
    from stan_mm.apis.search import adopt_moved_cache
    cache = tmp_path / 'cache'
    old = cache / 'k-0000aaaa'
    old.mkdir(parents=True)
    (old / 'meta.json').write_text(json.dumps({'video_root': str(tmp_path / 'gone')}))
    (old / 'videos.txt').write_text('v0.mp4\nv1.mp4\n')
    out = cache / 'k-1111bbbb'
    real_lock = features.folder_lock

    def lock_after_the_other_search(path, **kwargs):
        os.rename(old, out)          # the other search took it over first
        return real_lock(path, **kwargs)
    monkeypatch.setattr(features, 'folder_lock', lock_after_the_other_search)
    lines = []
    assert adopt_moved_cache(str(out), 'k', str(cache), str(tmp_path / 'new'),
                             ['v0.mp4', 'v1.mp4'], log=lines.append) is None
    assert os.listdir(cache) == ['k-1111bbbb'] and lines == []
    assert sorted(os.listdir(out)) == ['meta.json', 'videos.txt']
