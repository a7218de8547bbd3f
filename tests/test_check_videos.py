"""tools/data/check_videos.py: every video opened and decoded as the pipelines read it,
before a run; the unreadable ones listed with their reasons."""
import os
import os.path as osp
import shutil
import subprocess
import sys

import signal

import pytest

import stan_mm  # noqa: F401
from stan_mm.apis.video_check import check_video, check_videos

_real_check_video = check_video

sys.path.insert(0, osp.dirname(__file__))
from test_recognition import load_tool, write_tiny_config  # noqa: E402
from test_robust_video import videos  # noqa: E402,F401  (the module's video fixture)

BROKEN = ('missing', 'zero', 'text', 'trunc_half', 'trunc_header', 'trunc_tail',
          'trunc_frames')
READABLE = ('ok', 'three', 'single', 'tiny', 'odd', 'gray_mp4', 'long')


@pytest.mark.parametrize('frames', ['ends', 'all'])
def test_each_broken_kind_is_found_and_readable_ones_pass(videos, frames):  # noqa: F811
    for name in READABLE:
        assert check_video(videos[name], frames) is None, name
    reasons = {name: check_video(videos[name], frames) for name in BROKEN}
    assert all(reasons.values()), reasons
    assert 'file not found' in reasons['missing'] and '0 bytes' in reasons['zero']
    # the AVI opens (its index is whole) and fails at its last frames, which 'ends' reads
    assert 'truncated or corrupt' in reasons['trunc_frames']
    # the same files, through worker processes, in the order given (a corrupt stream may
    # fail at another frame in another process: the reasons' frame lists can differ)
    paths = [videos[n] for n in BROKEN + READABLE]
    got = check_videos(paths, frames, workers=2, progress=False)
    assert [p for p, _ in got] == [videos[n] for n in BROKEN]
    assert [r.split(' [')[0] for _, r in got] == [reasons[n].split(' [')[0] for n in BROKEN]


def test_tool_on_a_folder_and_on_a_config(videos, tmp_path, capsys):  # noqa: F811
    tool = load_tool('tools/data/check_videos.py', 'stan_check_videos_tool')
    folder = tmp_path / 'gallery'
    (folder / 'sub').mkdir(parents=True)
    shutil.copy(videos['ok'], folder / 'ok.mp4')
    shutil.copy(videos['trunc_frames'], folder / 'sub' / 'cut.avi')
    shutil.copy(videos['zero'], folder / 'sub' / 'zero.mp4')
    out = tmp_path / 'bad.txt'
    assert tool.main([str(folder), '--out', str(out), '--no-progress']) == 1
    assert out.read_text().splitlines() == ['sub/cut.avi', 'sub/zero.mp4']   # as listed
    text = capsys.readouterr().out
    assert 'checked 3 videos (ends frames): 2 unreadable' in text
    assert f"{folder / 'sub' / 'zero.mp4'}: the file is empty (0 bytes)" in text
    os.remove(folder / 'sub' / 'cut.avi')
    os.remove(folder / 'sub' / 'zero.mp4')
    assert tool.main([str(folder), '--out', str(out), '--no-progress']) == 0
    assert out.read_text() == ''
    # a config: its datasets' videos, a missing one reported rather than refused
    cfg = write_tiny_config(tmp_path / 'cfg', num_train=3, num_val=2)
    with open(tmp_path / 'cfg' / 'val_list.txt', 'a') as f:
        f.write('gone.mp4 0\n')
    shutil.copy(videos['trunc_frames'], tmp_path / 'cfg' / 'videos' / 'cut.avi')
    with open(tmp_path / 'cfg' / 'train_list.txt', 'a') as f:
        f.write('cut.avi 1\n')
    assert tool.main(['--config', cfg, '--splits', 'train', 'val', '--out', str(out),
                      '--no-progress', '--workers', '2']) == 1
    # the names of the list lines (relative to the dataset's video folder), so that the
    # documented awk line leaves exactly those lines out of a list
    assert out.read_text().splitlines() == ['cut.avi', 'gone.mp4']
    text = capsys.readouterr().out
    assert 'train: 4 videos' in text and 'val: 3 videos' in text
    assert 'checked 7 videos' in text and 'gone.mp4: file not found' in text
    doc = open(tool.__file__).read()
    awk = doc[doc.index("awk '"):doc.index('> train_list.ok.txt')].split()
    train_list = tmp_path / 'cfg' / 'train_list.txt'
    kept = subprocess.run(awk[:1] + [' '.join(awk[1:-2]).strip("'"), str(out), str(train_list)],
                          capture_output=True, text=True, check=True).stdout.splitlines()
    lines = train_list.read_text().splitlines()
    assert kept == [ln for ln in lines if ln.split()[0] != 'cut.avi'] and len(kept) == 3
    # the list itself is a labelled MMAction2 list: checked through its config
    assert tool.main([str(train_list)]) == 2
    assert '--config CONFIG' in capsys.readouterr().err


def test_tool_usage_errors(tmp_path, capsys):
    tool = load_tool('tools/data/check_videos.py', 'stan_check_videos_tool')
    with pytest.raises(SystemExit):
        tool.parse_args([])
    with pytest.raises(SystemExit):
        tool.parse_args([str(tmp_path), '--config', 'x.py'])
    assert tool.main([str(tmp_path / 'nowhere')]) == 2
    assert 'check_videos: error:' in capsys.readouterr().err


def _crash_on_b(path, frames='ends', init=None):
    if path.endswith('b.mp4'):
        os.kill(os.getpid(), signal.SIGKILL)      # a decoder crash, the OOM killer
    return _real_check_video(path, frames, init)


def test_a_decoder_crash_is_reported_not_hung(videos, tmp_path, monkeypatch):  # noqa: F811
    """A worker killed while decoding (decord segfaults on some files) neither hangs the
    pool nor loses the other videos: the video is found again alone and reported."""
    from stan_mm.apis import video_check
    for name in ('a.mp4', 'b.mp4', 'c.mp4'):
        shutil.copy(videos['ok'], tmp_path / name)
    shutil.copy(videos['zero'], tmp_path / 'd.mp4')
    monkeypatch.setattr(video_check, 'check_video', _crash_on_b)
    paths = [str(tmp_path / n) for n in ('a.mp4', 'b.mp4', 'c.mp4', 'd.mp4')] * 2
    got = video_check.check_videos(paths, workers=2, progress=False)
    assert [(osp.basename(p), r == video_check.CRASHED) for p, r in got] == [
        ('b.mp4', True), ('d.mp4', False)] * 2


def test_a_retrieval_split_keeps_its_missing_videos_for_the_report(videos, tmp_path):  # noqa: F811,E501
    """A retrieval dataset refuses missing videos when built; for the checker they stay in
    the list (file names from the template), so they are reported with the others."""
    import json
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from stan_mm.apis.video import split_items
    init_default_scope('mmaction')
    (tmp_path / 'videos').mkdir()
    shutil.copy(videos['ok'], tmp_path / 'videos' / 'a.mp4')
    ann = tmp_path / 'ann.json'
    ann.write_text(json.dumps({'a.mp4': ['a caption'], 'gone.mp4': ['another caption']}))
    dataset = dict(type='RetrievalVideoTextDataset', ann_file=str(ann), ann_format='json',
                   data_prefix=dict(video=str(tmp_path / 'videos')), pipeline=[],
                   test_mode=True)
    cfg = Config(dict(test_dataloader=dict(dataset=dataset)))
    with pytest.raises(Exception, match='gone'):
        split_items(cfg, 'test')
    found = split_items(cfg, 'test', check_files=False)[0]
    assert found == [str(tmp_path / 'videos' / 'a.mp4'), str(tmp_path / 'videos' / 'gone.mp4')]
    assert [check_video(v) for v in found] == [None, 'file not found']


def test_a_concat_dataset_split_is_checked_dataset_by_dataset(videos, tmp_path, capsys):  # noqa: F811,E501
    """A split made of a ConcatDataset (e.g. two video collections): every dataset it holds
    is listed and checked, each with its own video folder (it used to stop the listing)."""
    tool = load_tool('tools/data/check_videos.py', 'stan_check_videos_concat')
    cfg_path = write_tiny_config(tmp_path / 'cfg', num_train=3, num_val=2)
    second = tmp_path / 'second'
    (second / 'clips').mkdir(parents=True)
    shutil.copy(videos['ok'], second / 'clips' / 'a.mp4')
    shutil.copy(videos['zero'], second / 'clips' / 'b.mp4')
    (second / 'list.txt').write_text('a.mp4 0\nb.mp4 1\n')
    from mmengine.config import Config
    cfg = Config.fromfile(cfg_path)
    first = cfg.train_dataloader.dataset
    other = dict(first, data_root=str(second), ann_file='list.txt',
                 data_prefix=dict(video='clips'))
    cfg.train_dataloader.dataset = dict(type='ConcatDataset', datasets=[first, other])
    concat_cfg = tmp_path / 'concat.py'
    cfg.dump(str(concat_cfg))
    out = tmp_path / 'bad.txt'
    assert tool.main(['--config', str(concat_cfg), '--splits', 'train', '--out', str(out),
                      '--no-progress']) == 1
    text = capsys.readouterr().out
    assert 'train (dataset 1 of 2): 3 videos' in text
    assert 'train (dataset 2 of 2): 2 videos' in text
    assert 'checked 5 videos' in text and f"{second / 'clips' / 'b.mp4'}: the file is " \
        'empty (0 bytes)' in text
    assert out.read_text().splitlines() == ['b.mp4']      # as its list line names it


def test_the_tool_survives_a_decoder_crash_by_default(videos, tmp_path, monkeypatch,  # noqa: F811,E501
                                                      capsys):
    """Without --workers the tool decodes in one worker process, so a video that crashes
    the decoder is reported instead of ending the tool."""
    from stan_mm.apis import video_check
    tool = load_tool('tools/data/check_videos.py', 'stan_check_videos_crash')
    for name in ('a.mp4', 'b.mp4', 'c.mp4'):
        shutil.copy(videos['ok'], tmp_path / name)
    monkeypatch.setattr(video_check, 'check_video', _crash_on_b)
    assert tool.main([str(tmp_path), '--no-progress']) == 1
    text = capsys.readouterr().out
    assert 'checked 3 videos (ends frames): 1 unreadable' in text
    assert f"{tmp_path / 'b.mp4'}: {video_check.CRASHED}" in text
