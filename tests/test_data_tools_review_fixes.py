"""The data tools under tools/data on user mistakes: one-line errors naming the flag and the
file, exit status 2, and no user file deleted, emptied or left half-written
(check_videos.py, prepare_retrieval.py, build_k400_lists.py, build_ssv2_lists.py,
list_files.py)."""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest

sys.path.insert(0, osp.dirname(__file__))
from test_recognition import REPO, load_tool, write_tiny_config  # noqa: E402
from test_robust_video import write_mp4  # noqa: E402

PNG = b'\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe'


def _tool(name):
    return load_tool(f'tools/data/{name}.py', f'stan_review_{name}')


def _one_line_error(err, tool):
    assert 'Traceback' not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'{tool}: error: '), err
    return lines[0]


# ------------------------------------------------------------------------- check_videos
@pytest.fixture
def bad_folder(tmp_path):
    folder = tmp_path / 'gallery'
    folder.mkdir()
    (folder / 'text.mp4').write_text('this is not a video\n' * 20)
    return folder


def test_check_videos_error_keeps_an_earlier_out_and_names_source(tmp_path, capsys):
    """A listing error (no such SOURCE) left the --out of an earlier run deleted; the error
    named a --videos option the tool does not have."""
    tool = _tool('check_videos')
    out = tmp_path / 'bad.txt'
    out.write_text('old.mp4\n')
    assert tool.main([str(tmp_path / 'nodir'), '--out', str(out), '--no-progress']) == 2
    line = _one_line_error(capsys.readouterr().err, 'check_videos')
    assert f"SOURCE '{tmp_path / 'nodir'}'" in line and '--videos' not in line, line
    assert out.read_text() == 'old.mp4\n'


def test_check_videos_refuses_out_that_is_an_input(tmp_path, bad_folder, capsys):
    """--out naming the list being checked (under any spelling), the config, or a split's
    annotation file deleted that file; now refused, the file unchanged."""
    tool = _tool('check_videos')
    lst = tmp_path / 'list.txt'
    lst.write_text(f'{bad_folder / "text.mp4"}\n')
    other_spelling = osp.join(str(tmp_path), '.', 'list.txt')
    for out in (str(lst), other_spelling):
        assert tool.main([str(lst), '--out', out, '--no-progress']) == 2
        line = _one_line_error(capsys.readouterr().err, 'check_videos')
        assert '--out' in line and 'an input of this run' in line, line
        assert lst.read_text() == f'{bad_folder / "text.mp4"}\n'
    cfg = write_tiny_config(tmp_path / 'cfg', num_train=2, num_val=1)
    train_list = tmp_path / 'cfg' / 'train_list.txt'
    before = train_list.read_text()
    for out in (str(train_list), cfg):
        kept = open(out).read()
        assert tool.main(['--config', cfg, '--splits', 'train', '--out', out,
                          '--no-progress']) == 2
        err = capsys.readouterr().err
        assert 'an input of this run' in err and open(out).read() == kept, err
    assert train_list.read_text() == before


def test_check_videos_out_that_cannot_be_written(tmp_path, bad_folder, capsys):
    """A folder as --out (IsADirectoryError) or a path through a file (FileExistsError)
    gave tracebacks; now one line and exit 2, before any video is decoded."""
    tool = _tool('check_videos')
    (tmp_path / 'afile.txt').write_text('keep\n')
    for out, says in ((str(bad_folder), 'is a folder'),
                      (str(tmp_path / 'afile.txt' / 'x.txt'), 'is a file')):
        assert tool.main([str(bad_folder), '--out', out, '--no-progress']) == 2
        line = _one_line_error(capsys.readouterr().err, 'check_videos')
        assert f"--out '{out}'" in line and says in line, line
    assert (bad_folder / 'text.mp4').is_file()
    assert (tmp_path / 'afile.txt').read_text() == 'keep\n'


def test_check_videos_stale_out_replaced_after_the_check(tmp_path, bad_folder, capsys,
                                                         monkeypatch):
    """The --out of an earlier run is replaced by this run's list, and removed when the
    check is interrupted (it would name the videos of an earlier run)."""
    tool = _tool('check_videos')
    out = tmp_path / 'bad.txt'
    out.write_text('old.mp4\n')
    assert tool.main([str(bad_folder), '--out', str(out), '--no-progress']) == 1
    assert out.read_text() == 'text.mp4\n'
    import stan_mm.apis.video_check as video_check

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(video_check, 'check_videos', interrupted)
    capsys.readouterr()
    assert tool.main([str(bad_folder), '--out', str(out), '--no-progress']) == 130
    assert not out.exists() and 'removed the --out list' in capsys.readouterr().err


def test_check_videos_binary_source_names_the_file(tmp_path, capsys):
    """A binary file given as SOURCE: "'utf-8' codec can't decode byte 0x89" without the
    file; now the file, and what SOURCE may be. A file with a video extension is checked
    as that one video."""
    tool = _tool('check_videos')
    img = tmp_path / 'img.png'
    img.write_bytes(PNG)
    assert tool.main([str(img), '--no-progress']) == 2
    line = _one_line_error(capsys.readouterr().err, 'check_videos')
    assert f"SOURCE '{img}'" in line and 'neither a folder, a video' in line, line
    assert 'UTF-8' in line
    fake = tmp_path / 'img.mp4'
    fake.write_bytes(PNG)
    assert tool.main([str(fake), '--no-progress']) == 1
    text = capsys.readouterr().out
    assert 'checked 1 videos' in text and str(fake) in text
    good = write_mp4(tmp_path / 'good.mp4', 4, 32, 32)
    assert tool.main([good, '--no-progress']) == 0
    assert 'checked 1 videos (ends frames): 0 unreadable' in capsys.readouterr().out


# --------------------------------------------------------------------- prepare_retrieval
CSV = ('key,vid_key,video_id,sentence\n'
       'ret0,msr0,video0,a man plays guitar\n'
       'ret1,msr1,video1,someone is singing\n'
       'ret2,msr2,video2,a cat on a sofa\n')
GOOD_JSON = '{"video0.mp4": ["a man plays guitar"]}'


@pytest.fixture
def split(tmp_path):
    (tmp_path / 'test.csv').write_text(CSV)
    videos = tmp_path / 'videos'
    videos.mkdir()
    for v in ('video0', 'video1', 'video2'):
        (videos / f'{v}.mp4').write_bytes(b'')
    out = tmp_path / 'out.json'
    out.write_text(GOOD_JSON)
    return str(tmp_path / 'test.csv'), videos, out


def test_prepare_retrieval_refuses_a_video_root_that_is_not_a_folder(tmp_path, split,
                                                                     capsys):
    """A mistyped --video-root read as "every video missing"; with --drop-missing the good
    --out-json was replaced by {}."""
    csv, _, out = split
    for root in (str(tmp_path / 'vidoes'), csv):
        assert _tool('prepare_retrieval').main(
            ['msrvtt', csv, '--video-root', root, '--out-json', str(out),
             '--drop-missing']) == 2
        line = _one_line_error(capsys.readouterr().err, 'prepare_retrieval')
        assert f"--video-root '{root}' is not a folder" in line, line
    assert out.read_text() == GOOD_JSON


def test_prepare_retrieval_writes_no_json_without_videos(tmp_path, split, capsys):
    """A folder holding none of the videos: no JSON of 0 videos over the good one."""
    csv, _, out = split
    (tmp_path / 'empty').mkdir()
    assert _tool('prepare_retrieval').main(
        ['msrvtt', csv, '--video-root', str(tmp_path / 'empty'), '--out-json', str(out),
         '--drop-missing']) == 2
    err = capsys.readouterr().err
    assert 'all 3 videos are missing under --video-root' in err and str(out) in err, err
    assert out.read_text() == GOOD_JSON


def test_prepare_retrieval_out_json_that_cannot_be_written(tmp_path, split, capsys):
    """A folder as --out-json, or a path through a file: tracebacks in
    write_video_text_json; now refused before the split is read."""
    csv, videos, out = split
    for bad, says in ((str(videos), 'is a folder'),
                      (str(out / 'x.json'), 'is a file')):
        assert _tool('prepare_retrieval').main(
            ['msrvtt', csv, '--video-root', str(videos), '--out-json', bad]) == 2
        err = capsys.readouterr()
        line = _one_line_error(err.err, 'prepare_retrieval')
        assert f"--out-json '{bad}'" in line and says in line, line
        assert 'videos: 3' not in err.out          # before any work
    assert out.read_text() == GOOD_JSON


def test_prepare_retrieval_json_written_in_one_step(split, monkeypatch):
    """An interrupt while the JSON is written leaves the file there before (it was
    written in place: a half-written JSON)."""
    csv, videos, out = split
    tool = _tool('prepare_retrieval')

    real_dump, real_dumps = json.dump, json.dumps

    def dump(obj, fp, **kwargs):
        if isinstance(obj, dict) and 'video0.mp4' in obj:     # the JSON of --out-json
            fp.write('{"video0.mp4": ["a m')
            raise KeyboardInterrupt
        return real_dump(obj, fp, **kwargs)

    def dumps(obj, **kwargs):
        if isinstance(obj, dict) and 'video0.mp4' in obj:
            raise KeyboardInterrupt
        return real_dumps(obj, **kwargs)
    monkeypatch.setattr(tool.json, 'dump', dump)
    monkeypatch.setattr(tool.json, 'dumps', dumps)
    with pytest.raises(KeyboardInterrupt):
        tool.main(['msrvtt', csv, '--video-root', str(videos), '--out-json', str(out)])
    monkeypatch.undo()
    assert out.read_text() == GOOD_JSON
    assert sorted(os.listdir(out.parent)) == ['out.json', 'test.csv', 'videos']
    assert tool.main(['msrvtt', csv, '--video-root', str(videos), '--out-json',
                      str(out)]) == 0
    assert sorted(json.loads(out.read_text())) == ['video0.mp4', 'video1.mp4',
                                                   'video2.mp4']


# ----------------------------------------------------------------- build_*_lists
K400_CSV = 'label,youtube_id,time_start,time_end,split\nabseiling,aaa,0,10,train\n'
SSV2_LABELS = {'Holding something next to something': '0'}
SSV2_SPLIT = [{'id': '1', 'template': 'Holding [something] next to [something]'}]


@pytest.fixture
def ssv2_anno(tmp_path):
    anno = tmp_path / 'anno'
    anno.mkdir()
    (anno / 'labels.json').write_text(json.dumps(SSV2_LABELS))
    for name in ('something-something-v2-train.json',
                 'something-something-v2-validation.json'):
        (anno / name).write_text(json.dumps(SSV2_SPLIT))
    return anno


def test_ssv2_refuses_an_empty_ext(tmp_path, ssv2_anno, capsys):
    """--ext "" wrote "1. 0" lines without a word."""
    ssv2 = _tool('build_ssv2_lists')
    out = tmp_path / 'out'
    for ext in ('', '.'):
        assert ssv2.main(['--anno-dir', str(ssv2_anno), '--out-dir', str(out),
                          '--ext', ext]) == 2
        line = _one_line_error(capsys.readouterr().err, 'build_ssv2_lists')
        assert f'--ext {ext!r}' in line, line
    assert not out.exists()
    assert ssv2.main(['--anno-dir', str(ssv2_anno), '--out-dir', str(out),
                      '--ext', '.mp4']) == 0
    assert (out / 'train_list.txt').read_text() == '1.mp4 0\n'


def test_list_builders_refuse_an_out_dir_that_is_a_file(tmp_path, ssv2_anno, capsys):
    """--out-dir naming a file: a FileExistsError traceback after all the reading."""
    (tmp_path / 'train.csv').write_text(K400_CSV)
    afile = tmp_path / 'afile'
    afile.write_text('keep\n')
    for tool, args in (('build_k400_lists', ['--train-csv', str(tmp_path / 'train.csv')]),
                       ('build_ssv2_lists', ['--anno-dir', str(ssv2_anno)])):
        for out, says in ((str(afile), 'is a file, not a folder'),
                          (str(afile / 'sub'), 'cannot be created')):
            assert _tool(tool).main(args + ['--out-dir', out]) == 2
            line = _one_line_error(capsys.readouterr().err, tool)
            assert f"--out-dir '{out}'" in line and says in line, line
    assert afile.read_text() == 'keep\n'


def test_list_builders_name_the_flag_and_file_of_bad_inputs(tmp_path, ssv2_anno, capsys):
    """A non-UTF-8 input gave "'utf-8' codec can't decode ..." and a missing --classnames
    "[Errno 2] ...", with neither the flag nor (for the first) the file; exit 1."""
    k400, ssv2 = _tool('build_k400_lists'), _tool('build_ssv2_lists')
    good = tmp_path / 'train.csv'
    good.write_text(K400_CSV)
    binary = tmp_path / 'img.png'
    binary.write_bytes(PNG)
    out = str(tmp_path / 'out')
    cases = [
        (k400, ['--train-csv', str(binary)], f"--train-csv '{binary}' is not UTF-8 text"),
        (k400, ['--train-csv', str(good), '--val-csv', str(binary)],
         f"--val-csv '{binary}' is not UTF-8 text"),
        (k400, ['--train-csv', str(good), '--classnames', str(binary)],
         f"--classnames '{binary}' is not UTF-8 text"),
        (k400, ['--train-csv', str(good), '--classnames', 'nope.txt'],
         "--classnames 'nope.txt': class-name file (one class per line) not found"),
        (k400, ['--train-csv', str(good), '--train-video-dir', str(tmp_path / 'nodir')],
         f"--train-video-dir '{tmp_path / 'nodir'}' is not a folder"),
        (ssv2, ['--anno-dir', str(ssv2_anno), '--labels', str(binary)],
         f"--labels '{binary}' is not UTF-8 text"),
        (ssv2, ['--anno-dir', str(ssv2_anno), '--train', str(binary)],
         f"--train '{binary}' is not UTF-8 text"),
        (ssv2, ['--anno-dir', str(ssv2_anno), '--val', 'nope.json'],
         "--val 'nope.json': SSv2 annotation file not found"),
    ]
    for tool, args, says in cases:
        name = 'build_k400_lists' if tool is k400 else 'build_ssv2_lists'
        assert tool.main(args + ['--out-dir', out]) == 2, args
        line = _one_line_error(capsys.readouterr().err, name)
        assert says in line, line
    assert not osp.exists(out)
    # the class list a rerun reads from --out-dir
    assert k400.main(['--train-csv', str(good), '--out-dir', out]) == 0
    (tmp_path / 'out' / 'classnames.txt').write_bytes(PNG)
    capsys.readouterr()
    assert k400.main(['--train-csv', str(good), '--out-dir', out]) == 2
    err = capsys.readouterr().err
    assert f"--out-dir's class list '{osp.join(out, 'classnames.txt')}' is not UTF-8" in err


@pytest.mark.parametrize('tool', ['build_k400_lists', 'build_ssv2_lists'])
def test_list_files_are_replaced_in_one_step(tmp_path, tool):
    """An interrupt while a list is written left it half-written (written in place)."""
    module = _tool(tool)
    path = tmp_path / 'train_list.txt'
    path.write_text('a.mp4 0\nb.mp4 1\n')
    os.chmod(path, 0o640)

    def lines():
        yield 'c.mp4 0'
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        module.write_lines(str(path), lines())
    assert path.read_text() == 'a.mp4 0\nb.mp4 1\n'
    assert os.listdir(tmp_path) == ['train_list.txt']     # no temporary file left
    module.write_lines(str(path), ['c.mp4 0'])
    assert path.read_text() == 'c.mp4 0\n' and os.stat(path).st_mode & 0o777 == 0o640
    new = tmp_path / 'val_list.txt'
    module.write_lines(str(new), [])
    mask = os.umask(0)
    os.umask(mask)
    assert new.read_text() == '' and os.stat(new).st_mode & 0o777 == 0o666 & ~mask


def test_list_files_run_as_a_script_says_what_to_run():
    """``python tools/data/list_files.py --help`` printed nothing and exited 0."""
    proc = subprocess.run([sys.executable, osp.join(REPO, 'tools', 'data', 'list_files.py'),
                           '--help'], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ''
    assert 'helper module' in proc.stderr and 'build_k400_lists.py' in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
