"""Paths, third review.

(8) A feature folder reached again through another path of the same videos (a link to
their folder, another mount of it: ``/data/gal_link`` -> ``/gpfs/own/vids``) reuses its
rows (finished ones and partial shards) instead of embedding every video again; a copy or
another file of the same name is still embedded (the same file, unchanged, is required);
``videos.txt`` names the videos as the run gave them. Folders written before (shards
without their root) keep working.

(9) "Not found" errors for a relative path name the absolute path it was resolved to and
the working directory; a folder given for a file says it is a folder.

Tiny random retrieval model and generated videos (the helpers of ``test_user_tools``).
"""
import json
import os
import os.path as osp
import shutil
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, osp.dirname(__file__))
from test_user_tools import RETRIEVAL_CFG, build, load_tool, write_video  # noqa: E402

NAMES = ['v0.mp4', 'v1.mp4', 'v2.mp4']


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('paths3')
    cfg_file = tmp / 'ret.py'
    cfg_file.write_text(f'_base_ = [{RETRIEVAL_CFG!r}]\n')
    _, model, ckpt = build(str(cfg_file))
    real = tmp / 'gpfs' / 'own' / 'vids'
    real.mkdir(parents=True)
    for i, name in enumerate(NAMES):
        write_video(str(real / name), seed=i)
    (tmp / 'data').mkdir()
    link = tmp / 'data' / 'gal_link'
    os.symlink(real, link)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield dict(cfg=str(cfg_file), ckpt=ckpt, model=model, real=str(real),
                   link=str(link), tmp=tmp, tool=load_tool('tools/extract_features.py'))
    finally:
        torch.set_num_threads(threads)


def tool_args(setup, videos, out, *extra):
    return [setup['cfg'], setup['ckpt'], '--videos', videos, '--out', str(out),
            '--batch-size', '1', '--shard-size', '1', '--num-workers', '0',
            '--no-progress', *extra]


def api(setup, out, root, names=NAMES, **kwargs):
    from stan_mm.apis import extract_features
    logs = kwargs.pop('logs', [])
    return extract_features(setup['model'], str(out), videos=list(names), video_root=root,
                            key='k', batch_size=1, num_workers=0, shard_size=1,
                            progress=False, log=logs.append, **kwargs)


def reference(setup):
    """videos.npy of a fresh run over the real folder (computed once)."""
    if 'ref' not in setup:
        out = setup['tmp'] / 'reference'
        api(setup, out, setup['real'])
        setup['ref'] = np.load(out / 'videos.npy')
    return setup['ref']


def read_json(path):
    with open(path) as f:
        return json.load(f)


# ----------------------------------------------------------------------------------- (8)
def test_a_finished_folder_reached_through_a_linked_folder_is_reused(setup, tmp_path,
                                                                      capsys):
    """Built from /gpfs/own/vids, run again with --videos /data/gal_link: every row is
    reused (it was "0 already embedded (reused), 3 to embed"); the folder now names the
    videos under the link; back through the real folder, reused again."""
    tool, out = setup['tool'], tmp_path / 'F'
    assert tool.main(tool_args(setup, setup['real'], out)) == 0
    first = np.load(out / 'videos.npy')
    capsys.readouterr()

    assert tool.main(tool_args(setup, setup['link'], out)) == 0
    printed = capsys.readouterr().out
    assert '3 videos: 3 already embedded (reused), 0 to embed' in printed, printed
    assert 'embedded 0 new videos, reused 3' in printed
    assert (f'3 of the reused videos were embedded under another path of the same file '
            f'(e.g. {osp.join(setup["real"], "v0.mp4")}') in printed, printed
    np.testing.assert_array_equal(np.load(out / 'videos.npy'), first)
    meta = read_json(out / 'meta.json')
    assert meta['video_root'] == setup['link']           # as given in this run
    assert (out / 'videos.txt').read_text().split() == NAMES
    assert not osp.exists(out / '.partial')

    assert tool.main(tool_args(setup, setup['real'], out)) == 0
    assert '3 videos: 3 already embedded (reused), 0 to embed' in capsys.readouterr().out
    assert read_json(out / 'meta.json')['video_root'] == setup['real']


def test_partial_shards_are_resumed_through_another_path(setup, tmp_path):
    """--limit 1 through the real folder, resumed through the link (and the reverse, with
    absolute paths and no root): the shard's row is reused, the rest embedded, and the
    result equals a fresh run."""
    out = tmp_path / 'out'
    res = api(setup, out, setup['real'], limit=1)
    assert (res.complete, res.new) == (False, 1)
    res = api(setup, out, setup['link'])
    assert (res.complete, res.reused, res.new) == (True, 1, 2)
    np.testing.assert_array_equal(np.load(out / 'videos.npy'), reference(setup))

    out = tmp_path / 'abs'
    api(setup, out, '', names=[osp.join(setup['link'], n) for n in NAMES], limit=2)
    res = api(setup, out, '', names=[osp.join(setup['real'], n) for n in NAMES])
    assert (res.complete, res.reused, res.new) == (True, 2, 1)
    np.testing.assert_array_equal(np.load(out / 'videos.npy'), reference(setup))
    assert (out / 'videos.txt').read_text().split() == [
        osp.join(setup['real'], n) for n in NAMES]


def test_a_copy_or_a_changed_file_is_not_matched(setup, tmp_path):
    """Another file of the same name with the same size and modification time (a copy
    made with cp -p) is embedded, not matched; so is a linked file changed since; a hard
    link of the same file is matched."""
    out = tmp_path / 'out'
    api(setup, out, setup['real'])
    copy = tmp_path / 'copy'
    shutil.copytree(setup['real'], copy)          # copy2: same names, sizes and mtimes
    for name in NAMES:
        a, b = os.stat(osp.join(setup['real'], name)), os.stat(copy / name)
        assert (a.st_size, a.st_mtime_ns) == (b.st_size, b.st_mtime_ns)
    res = api(setup, out, str(copy))
    assert (res.reused, res.new) == (0, 3)
    # the same for the shards of an unfinished run over the copy (their keys, relative
    # to the copy, are the real folder's names too)
    partial = tmp_path / 'partial'
    api(setup, partial, str(copy), limit=2)
    res = api(setup, partial, setup['real'])
    assert (res.reused, res.new) == (0, 3)

    # out now names the copies; a hard link to copy/v0.mp4 is the same file
    hard = tmp_path / 'hard'
    hard.mkdir()
    for name in NAMES:
        os.link(copy / name, hard / name)
    # and a change of copy/v1.mp4 (its modification time) since it was embedded
    st = os.stat(copy / 'v1.mp4')
    os.utime(copy / 'v1.mp4', ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    logs = []
    res = api(setup, out, str(hard), logs=logs)
    assert (res.reused, res.new) == (2, 1), logs
    np.testing.assert_array_equal(np.load(out / 'videos.npy'), reference(setup))


def test_shards_written_before_their_root_was_stored_still_resume(setup, tmp_path):
    """A shard without "root" (the format before): reused under the same path as before;
    under another path its relative keys cannot be placed (their root is unknown), so
    those videos are embedded again (never matched to a guessed file)."""
    out = tmp_path / 'out'
    parent = osp.dirname(setup['real'])                  # .../gpfs/own
    names = [f'vids/{n}' for n in NAMES]
    api(setup, out, parent, names=names, limit=1)
    shard = out / '.partial' / 'shard-000000.npz'
    with np.load(shard) as z:
        assert str(z['root']) == parent
        keys, emb = z['keys'], z['emb']
    with open(shard, 'wb') as f:
        np.savez(f, keys=keys, emb=emb)                  # as written before
    res = api(setup, out, setup['link'], limit=0)
    assert (res.reused, res.remaining) == (0, 3)
    res = api(setup, out, parent, names=names)
    assert (res.complete, res.reused, res.new) == (True, 1, 2)
    np.testing.assert_array_equal(np.load(out / 'videos.npy'), reference(setup))


def test_unreadable_videos_reached_through_a_link_are_not_retried(setup, tmp_path):
    """--skip-bad: an unreadable video recorded under the real folder is not tried again
    when reached through the link (it is unchanged)."""
    bad_dir = tmp_path / 'real'
    bad_dir.mkdir()
    shutil.copy2(osp.join(setup['real'], 'v0.mp4'), bad_dir / 'v0.mp4')
    (bad_dir / 'broken.mp4').write_bytes(b'not a video')
    link = tmp_path / 'link'
    os.symlink(bad_dir, link)
    out = tmp_path / 'out'
    names = ['broken.mp4', 'v0.mp4']
    res = api(setup, out, str(bad_dir), names=names, skip_bad=True)
    assert [p for p, _ in res.bad] == ['broken.mp4']
    logs = []
    res = api(setup, out, str(link), names=names, skip_bad=True, logs=logs)
    assert (res.reused, res.new, [p for p, _ in res.bad]) == (1, 0, ['broken.mp4'])
    assert any('1 unreadable, unchanged since they failed (not retried)' in m
               for m in logs), logs
    assert read_json(out / 'meta.json')['bad_videos'][0][0] == 'broken.mp4'


# ----------------------------------------------------------------------------------- (9)
def test_a_missing_relative_annotation_file_names_the_working_directory(tmp_path,
                                                                        monkeypatch):
    from stan_mm.datasets.readers_common import (AnnotationError, iter_csv_rows,
                                                 read_text)
    monkeypatch.chdir(tmp_path)
    rel = osp.join('data', 'msrvtt', 'MSRVTT_JSFUSION_test.csv')
    with pytest.raises(AnnotationError) as e:
        list(iter_csv_rows(rel))
    assert isinstance(e.value, FileNotFoundError)
    assert str(e.value).startswith(
        f'{rel}: annotation file not found (no such file) (resolved to '
        f'{tmp_path / rel}, from the working directory {tmp_path}); a relative ann_file '
        f"is read below the dataset's data_root"), str(e.value)

    absolute = str(tmp_path / rel)          # an absolute path: nothing to resolve
    with pytest.raises(FileNotFoundError) as e:
        read_text(absolute)
    assert 'resolved to' not in str(e.value)
    assert str(e.value).startswith(f'{absolute}: annotation file not found (no such file)')


def test_a_folder_given_for_an_annotation_file_is_called_a_folder(tmp_path, monkeypatch):
    from stan_mm.datasets.readers_common import (AnnotationError, JsonDocument,
                                                 load_restricted_pickle)
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'anns').mkdir()
    with pytest.raises(AnnotationError) as e:
        JsonDocument('anns')
    msg = str(e.value)
    assert isinstance(e.value, IsADirectoryError)
    assert msg.startswith(f'anns: is a folder, not an annotation file (resolved to '
                          f'{tmp_path / "anns"}, from the working directory {tmp_path})'), msg
    assert 'not found' not in msg

    with pytest.raises(IsADirectoryError, match='anns: is a folder, not a caption pickle'):
        load_restricted_pickle('anns')
    with pytest.raises(FileNotFoundError) as e:
        load_restricted_pickle('raw-captions.pkl')
    assert str(e.value) == (f'raw-captions.pkl: caption pickle not found (no such file) '
                            f'(resolved to {tmp_path / "raw-captions.pkl"}, from the working '
                            f'directory {tmp_path})')


def test_missing_videos_name_the_working_directory(tmp_path, monkeypatch):
    from stan_mm.apis.video import list_videos
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        list_videos('gallery')
    assert str(e.value) == (f"--videos 'gallery': no such folder or list file (resolved "
                            f'to {tmp_path / "gallery"}, from the working directory '
                            f'{tmp_path})')


def test_class_names_file_errors_name_the_working_directory_and_folders(tmp_path,
                                                                        monkeypatch):
    from stan_mm.models.heads.classnames import read_classnames_file
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'k400').mkdir()
    with pytest.raises(FileNotFoundError) as e:
        read_classnames_file('k400/classnames.txt')
    expected = (f"(resolved to {tmp_path / 'k400' / 'classnames.txt'}, from the working "
                f"directory {tmp_path})")
    assert expected in str(e.value), str(e.value)
    with pytest.raises(IsADirectoryError, match="'k400' is a folder") as e:
        read_classnames_file('k400')
    assert 'classnames.txt' in str(e.value)
