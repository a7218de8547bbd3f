"""Review fixes of the user tools (``tools/extract_features.py``, ``tools/demo/search.py``,
``tools/demo/recognize.py``, ``tools/analysis/eval_retrieval.py``): every argument that
cannot work is refused with a one-line ``tool: error: ...`` naming it and exit status 2,
before the model is loaded.

Most checks run with a checkpoint file that cannot be loaded (``garbage``): an error about
the argument under test, not about the checkpoint, shows that it was checked first.
"""
import os
import os.path as osp
import re
import sys

import numpy as np
import pytest
import torch

import stan_mm  # noqa: F401

sys.path.insert(0, osp.dirname(__file__))
from test_user_tools import load_tool  # noqa: E402

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..'))
RETRIEVAL_CFG = osp.join(REPO, 'configs', 'quickstart', 'motion_retrieval_tiny.py')
RECOGNITION_CFG = osp.join(REPO, 'configs', 'quickstart', 'motion_stan_tiny.py')
PNG = b'\x89PNG\r\n\x1a\n' + bytes(range(256)) * 4


def write_video(path, frames=8, size=(48, 32)):
    import cv2
    rng = np.random.RandomState(0)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), 8.0, size)
    for _ in range(frames):
        writer.write(rng.randint(0, 255, (size[1], size[0], 3)).astype(np.uint8))
    writer.release()


@pytest.fixture
def ws(tmp_path):
    """A workspace: a video folder, a text file, a non-text file, a checkpoint that cannot
    be loaded."""
    d = tmp_path
    (d / 'vids').mkdir()
    write_video(str(d / 'vids' / 'a.mp4'))
    (d / 'text.pth').write_text('not a checkpoint\n')
    (d / 'garbage.pth').write_bytes(b'not a checkpoint at all')
    (d / 'img.png').write_bytes(PNG)
    (d / 'texts.txt').write_text('a dog\n')
    old = os.getcwd()
    os.chdir(d)
    yield d
    os.chdir(old)


def one_line_error(err, tool):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert 'Traceback' not in err, err
    assert lines and lines[-1].startswith(f'{tool}: error: '), err
    return lines[-1]


# ------------------------------------------------------------------ 1. output paths
@pytest.mark.parametrize('out, expected', [
    ('text.pth', r"--out 'text.pth' is a file, not a folder"),
    ('text.pth/sub', r"--out 'text.pth/sub'"),
])
def test_extract_features_refuses_an_out_it_cannot_use_before_loading(ws, capsys, out,
                                                                      expected):
    tool = load_tool('tools/extract_features.py')
    rc = tool.main([RETRIEVAL_CFG, 'garbage.pth', '--videos', 'vids', '--out', out,
                    '--no-progress'])
    err = capsys.readouterr().err
    assert rc == 2
    assert re.search(expected, one_line_error(err, 'extract_features')), err


@pytest.mark.skipif(not osp.isdir('/proc/self'), reason='needs /proc')
def test_extract_features_names_an_out_that_cannot_be_created(ws, capsys):
    tool = load_tool('tools/extract_features.py')
    rc = tool.main([RETRIEVAL_CFG, 'garbage.pth', '--videos', 'vids', '--out',
                    '/proc/stan_mm_no_such_out', '--no-progress'])
    line = one_line_error(capsys.readouterr().err, 'extract_features')
    assert rc == 2 and "--out '/proc/stan_mm_no_such_out' cannot be created" in line


def test_folder_lock_names_a_feature_folder_that_is_a_file(ws):
    """Library callers (extract_features(), search_gallery()) get a FeatureWriteError
    naming the folder, not the OS error's traceback."""
    from stan_mm.apis.features import FeatureWriteError, folder_lock
    with pytest.raises(FeatureWriteError, match=r"feature folder 'text.pth' is a file"):
        with folder_lock('text.pth'):
            pass
    with pytest.raises(FeatureWriteError,
                       match=r"'text.pth/sub' cannot be created: '.*text.pth' is a file"):
        with folder_lock('text.pth/sub'):
            pass


@pytest.mark.parametrize('extra, expected', [
    (['--cache', 'text.pth'], r"--cache 'text.pth' is a file"),
    (['--html', 'vids'], r"--html 'vids' is a folder"),
    (['--html', 'text.pth/page.html'], r"--html 'text.pth/page.html': its folder"),
    (['--save-sim', 'vids.npy'], r"--save-sim 'vids.npy' is a folder"),
])
def test_search_refuses_outputs_it_cannot_write_before_loading(ws, capsys, extra, expected):
    os.makedirs('vids.npy')
    tool = load_tool('tools/demo/search.py')
    rc = tool.main([RETRIEVAL_CFG, 'garbage.pth', '--gallery', 'vids', '--query', 'a dog',
                    '--no-progress', *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert re.search(expected, one_line_error(err, 'search')), err


@pytest.mark.skipif(not osp.isdir('/proc/self'), reason='needs /proc')
def test_search_refuses_an_html_path_where_no_file_can_be_made(ws, capsys):
    tool = load_tool('tools/demo/search.py')
    rc = tool.main([RETRIEVAL_CFG, 'garbage.pth', '--gallery', 'vids', '--query', 'a dog',
                    '--html', '/proc/stan_mm_page.html', '--no-progress'])
    line = one_line_error(capsys.readouterr().err, 'search')
    assert rc == 2 and "--html '/proc/stan_mm_page.html': cannot write it" in line


# ------------------------------------------------------------------ 2. input kinds
@pytest.mark.parametrize('tool_path, name', [('tools/extract_features.py', 'extract_features'),
                                             ('tools/demo/search.py', 'search'),
                                             ('tools/demo/recognize.py', 'recognize')])
def test_a_folder_for_config_or_checkpoint_is_named_as_a_folder(ws, capsys, tool_path, name):
    tool = load_tool(tool_path)
    tail = {'extract_features': ['--videos', 'vids', '--out', 'out'],
            'search': ['--gallery', 'vids', '--query', 'a dog'],
            'recognize': ['vids/a.mp4']}[name]
    rc = tool.main(['vids', 'garbage.pth', *tail])
    line = one_line_error(capsys.readouterr().err, name)
    assert rc == 2 and "CONFIG 'vids' is a folder; give the config file" in line
    rc = tool.main([RETRIEVAL_CFG, 'vids', *tail])
    line = one_line_error(capsys.readouterr().err, name)
    assert rc == 2 and "CHECKPOINT 'vids' is a folder; give the checkpoint file" in line


def test_extract_features_names_a_folder_given_for_texts(ws, capsys):
    tool = load_tool('tools/extract_features.py')
    rc = tool.main([RETRIEVAL_CFG, 'garbage.pth', '--texts', 'vids', '--out', 'out'])
    line = one_line_error(capsys.readouterr().err, 'extract_features')
    assert rc == 2 and "--texts 'vids' is a folder" in line


def test_recognize_names_a_folder_given_for_the_video(ws, capsys):
    tool = load_tool('tools/demo/recognize.py')
    rc = tool.main([RECOGNITION_CFG, 'garbage.pth', 'vids'])
    line = one_line_error(capsys.readouterr().err, 'recognize')
    assert rc == 2 and "VIDEO 'vids' is a folder; give the video file" in line
    assert 'vids.mp4' not in line


def test_recognize_refuses_a_missing_video_before_loading(ws, capsys):
    tool = load_tool('tools/demo/recognize.py')
    rc = tool.main([RECOGNITION_CFG, 'garbage.pth', 'nope.mp4'])
    line = one_line_error(capsys.readouterr().err, 'recognize')
    assert rc == 2 and "VIDEO 'nope.mp4': video file not found" in line


def test_recognize_api_and_classnames_name_a_folder(ws):
    from stan_mm.apis.recognition import parse_classnames, recognize
    with pytest.raises(ValueError, match=r"'vids' is a folder; give the video file"):
        recognize(None, 'vids')       # (refused before the model is used)
    with pytest.raises(ValueError, match=r"--classnames 'vids' is a folder"):
        parse_classnames('vids')


@pytest.mark.parametrize('flag', ['--sim', '--text-to-video', '--qb-norm'])
def test_eval_retrieval_names_a_folder_given_for_a_matrix(ws, capsys, flag):
    np.save('sim.npy', np.eye(3, dtype=np.float32))
    np.save('t2v.npy', np.arange(3))
    args = {'--sim': 'sim.npy', '--text-to-video': 't2v.npy', '--qb-norm': 'sim.npy'}
    args[flag] = 'vids'
    tool = load_tool('tools/analysis/eval_retrieval.py')
    rc = tool.main([a for kv in args.items() for a in kv] + ['--no-progress'])
    line = one_line_error(capsys.readouterr().err, 'eval_retrieval')
    assert rc == 2 and f"{flag} 'vids' is a folder; give the" in line


# ------------------------------------------------------------------ 3. list files
def test_list_videos_names_a_file_that_is_no_list(ws):
    from stan_mm.apis.video import list_videos
    with pytest.raises(ValueError, match=r"--videos 'img.png' is neither a folder, a video "
                       r".* nor a UTF-8 text list of videos \(byte 0x89 at position 0"):
        list_videos('img.png', option='--videos')
    with pytest.raises(ValueError, match=r"^'img.png' is neither"):
        list_videos('img.png')
    with open('nul.txt', 'wb') as f:
        f.write(b'a.mp4\n\x00\x00')
    with pytest.raises(ValueError, match=r"'nul.txt' is neither .* NUL bytes"):
        list_videos('nul.txt')
    assert list_videos('vids/a.mp4') == (osp.abspath('vids'), ['a.mp4'])   # one video
    with open('list.txt', 'w') as f:
        f.write('# two\nvids/a.mp4\r\n\n b.mp4 \n')
    assert list_videos('list.txt') == (osp.abspath('.'), ['vids/a.mp4', 'b.mp4'])


def test_extract_features_names_a_binary_videos_file_before_loading(ws, capsys):
    tool = load_tool('tools/extract_features.py')
    rc = tool.main([RETRIEVAL_CFG, 'garbage.pth', '--videos', 'img.png', '--out', 'out'])
    line = one_line_error(capsys.readouterr().err, 'extract_features')
    assert rc == 2 and "--videos 'img.png' is neither a folder, a video" in line


# ------------------------------------------------------------------ 4. numbers, queries
@pytest.mark.parametrize('extra, expected', [
    (['--num-workers', '-1'], '--num-workers must be >= 0'),
])
def test_extract_features_checks_numbers_at_parse_time(ws, capsys, extra, expected):
    tool = load_tool('tools/extract_features.py')
    with pytest.raises(SystemExit) as e:
        tool.main([RETRIEVAL_CFG, 'garbage.pth', '--videos', 'vids', '--out', 'out', *extra])
    assert e.value.code == 2 and expected in capsys.readouterr().err


@pytest.mark.parametrize('extra, expected', [
    (['--batch-size', '0'], '--batch-size must be >= 1'),
    (['--num-workers', '-1'], '--num-workers must be >= 0'),
    (['--thumbnails', '-2'], '--thumbnails must be >= 1'),
    (['--thumbnails', '0'], '--thumbnails must be >= 1'),
    (['--query', ''], '--query number 2 is blank'),
    (['--query', '   '], '--query number 2 is blank'),
])
def test_search_checks_numbers_and_queries_at_parse_time(ws, capsys, extra, expected):
    tool = load_tool('tools/demo/search.py')
    with pytest.raises(SystemExit) as e:
        tool.main([RETRIEVAL_CFG, 'garbage.pth', '--gallery', 'vids', '--query', 'a dog',
                   *extra])
    assert e.value.code == 2 and expected in capsys.readouterr().err


# ------------------------------------------------------------------ 5. exit codes
@pytest.fixture(scope='module')
def recognizer(tmp_path_factory):
    """The quickstart recognizer with random weights, saved as a checkpoint."""
    from mmaction.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    d = tmp_path_factory.mktemp('recognizer')
    cfg = Config.fromfile(RECOGNITION_CFG)
    init_default_scope('mmaction')
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    ckpt = str(d / 'model.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    return ckpt


def test_recognize_exits_2_for_an_unreadable_video(ws, capsys, recognizer):
    (ws / 'broken.mp4').write_bytes(b'')
    tool = load_tool('tools/demo/recognize.py')
    rc = tool.main([RECOGNITION_CFG, recognizer, 'broken.mp4'])
    line = one_line_error(capsys.readouterr().err, 'recognize')
    assert rc == 2, line
    assert 'broken.mp4' in line


def test_search_names_an_output_file_whose_write_fails():
    """A write that fails after the search (a full disk) is one line naming the flag and
    the file, not an OSError traceback."""
    import errno
    from stan_mm.utils.cli import CommandLineError
    tool = load_tool('tools/demo/search.py')
    with pytest.raises(CommandLineError, match=r"^--html 'p.html': cannot write it: No "
                       r"space left on device$"):
        with tool.writing('p.html', '--html'):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
