"""Review fixes of how the tools take paths and ``--cfg-options``:

A. ``--cfg-options`` values keep their spaces (mmengine's DictAction deleted them:
   ``data_root=/data/my videos`` was ``/data/myvideos``), mmengine's reading otherwise;
B. a leading ``~`` is expanded where the shell leaves it (``--work-dir=~/x``, quoted), and
   the expanded path is the one used;
C. a dangling symbolic link as an output folder is named as such;
D. a config reached through a symbolic link is read where it points (its ``_base_`` files
   are there), a missing ``_base_`` file and a missing CLIP weights file end in one line.

Tools: tools/train.py, tools/test.py, tools/extract_features.py, tools/quickstart.py,
tools/data/check_videos.py, tools/demo/recognize.py, tools/demo/search.py,
tools/analysis/get_flops.py, tools/analysis/benchmark.py; ``~`` also in tools/data/*.py,
tools/convert/*.py and tools/analysis/eval_retrieval.py.

Second review: a comma inside brackets that do not enclose the whole value (``f(a, b)``,
``/data/clips (2023, v2)``) made the --cfg-options reader (and mmengine's) recurse without
end; get_flops.py and benchmark.py still used mmengine's DictAction and Config.fromfile;
data, convert and eval_retrieval tools did not expand ``~``.
"""
import os
import os.path as osp
import shutil

import pytest

from stan_mm.testing import load_script
from stan_mm.utils.cli import (CommandLineError, check_input_file, check_output_dir,
                               check_output_file, parse_option_value, read_config, run_tool)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY = osp.join(REPO, 'configs', 'quickstart', 'motion_stan_tiny.py')
K400 = osp.join(REPO, 'configs', 'stan', 'k400_self_b16.py')


def load_tool(rel_path):
    return load_script(osp.join('tools', rel_path))


def one_line_error(err: str, prefix: str) -> str:
    assert 'Traceback' not in err, err
    lines = [ln for ln in err.splitlines() if prefix in ln]
    assert len(lines) == 1, err
    return lines[0]


class Reached(Exception):
    """Raised by :class:`FakeRunner`: the tool got as far as building the runner."""

    def __init__(self, cfg):
        super().__init__('runner reached')
        self.cfg = cfg


class FakeRunner:
    @staticmethod
    def from_cfg(cfg):
        raise Reached(cfg)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """HOME is ``tmp/home``; the working directory ``tmp/cwd`` (where a literal ``~``
    folder would appear)."""
    home, cwd = tmp_path / 'home', tmp_path / 'cwd'
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv('HOME', str(home))
    monkeypatch.chdir(cwd)
    return home


# ------------------------------------------------------------------ A: --cfg-options
# (value, expected) with expected written by hand; repr() compares, so that a tuple is not
# a list, 1 is not 1.0 or True
MMENGINE_READINGS = [
    ('1', 1), ('-3', -3), ('0.1', 0.1), ('1e-3', 0.001), ('x', 'x'), ('True', True),
    ('false', False), ('None', None), ('none', 'none'), ('1,2,3', [1, 2, 3]),
    ('a,b', ['a', 'b']), ('[a,b]', ['a', 'b']), ('(1,2)', (1, 2)), ('(1)', (1, )),
    ('[(1,2),(3,4)]', [(1, 2), (3, 4)]), ('[a, b]', ['a', 'b']), ('1, 2', [1, 2]),
    ('[(1, 2, 3), [a, b], c]', [(1, 2, 3), ['a', 'b'], 'c']), ('[1,]', [1]), ('[]', []),
    ('()', ()), ('[true, false]', [True, False]), ('[True, None]', [True, None]),
    ('"[a, b]"', ['a', 'b']), ("'x'", 'x'), ('/data/videos', '/data/videos'),
    ('"[1.5, 2]"', [1.5, 2]), ('( 1 , 2 )', (1, 2)),
]
SPACES_KEPT = [
    ('/data/my videos', '/data/my videos'),
    ("['a video of {}.']", ['a video of {}.']),
    ("['a video of {}.', 'a clip of {}.']", ['a video of {}.', 'a clip of {}.']),
    ("('a b', 'c')", ('a b', 'c')),
    ('(a b, c)', ('a b', 'c')),
    ('[a video, b]', ['a video', 'b']),
    ("[1, 'x y']", [1, 'x y']),
    ("'a b'", 'a b'),
    ('a b,c', ['a b', 'c']),
    ("[('a b', 1), ('c', 2)]", [('a b', 1), ('c', 2)]),
    # a quoted item is a string, a quoted comma part of it (mmengine: [1, 'a', 'b'])
    ("['1', 'a,b']", ['1', 'a,b']),
    ("['a,b']", ['a,b']),
]
# commas inside brackets that do not enclose the whole value or item: one string (mmengine
# and the first ConfigOptionsAction recursed on the same text until RecursionError)
COMMAS_IN_BRACKETS = [
    ('x (y, z)', 'x (y, z)'),
    ('f(a, b)', 'f(a, b)'),
    ('f(a,b)', 'f(a,b)'),
    ('1(2,3)', '1(2,3)'),
    ('dict(type=Pretrained, checkpoint=x.pth)', 'dict(type=Pretrained, checkpoint=x.pth)'),
    ('/data/clips (2023, v2)', '/data/clips (2023, v2)'),
    ('/data/clips[1,2]/a', '/data/clips[1,2]/a'),
    ('x(1,2),y', ['x(1,2)', 'y']),
    ('a, f(b, c)', ['a', 'f(b, c)']),
    ('[f(a,b),c]', ['f(a,b)', 'c']),
    ('[f(a, b), c]', ['f(a, b)', 'c']),
    ('(g(1, 2), 3)', ('g(1, 2)', 3)),
    ('"f(1, 2)"', 'f(1, 2)'),
]


@pytest.mark.parametrize('value,expected',
                         MMENGINE_READINGS + SPACES_KEPT + COMMAS_IN_BRACKETS)
def test_cfg_option_values(value, expected):
    assert repr(parse_option_value(value)) == repr(expected)


OPTIONS = ['test_dataloader.dataset.data_root=/data/my videos',
           "model.cls_head.templates=['a video of {}.']",
           'train_dataloader.batch_size=8', 'a.b=1,2,3', 'c=[(1,2),(3,4)]', 'd=[a, b]',
           'e=None', 'f=false', 'g=0.5', 'h=(a,b)', 'i=/data/clips (2023, v2)',
           'model.backbone.init_cfg=dict(type=Pretrained, checkpoint=x.pth)']
EXPECTED = {'test_dataloader.dataset.data_root': '/data/my videos',
            'model.cls_head.templates': ['a video of {}.'],
            'train_dataloader.batch_size': 8, 'a.b': [1, 2, 3], 'c': [(1, 2), (3, 4)],
            'd': ['a', 'b'], 'e': None, 'f': False, 'g': 0.5, 'h': ('a', 'b'),
            'i': '/data/clips (2023, v2)',
            'model.backbone.init_cfg': 'dict(type=Pretrained, checkpoint=x.pth)'}


def _tool_argv(tool, tmp_path):
    gallery = tmp_path / 'gallery'
    gallery.mkdir(exist_ok=True)
    return {'train.py': [TINY], 'test.py': [TINY, 'ckpt.pth'],
            'extract_features.py': [TINY, 'ckpt.pth', '--out', str(tmp_path / 'o'),
                                    '--texts', 't.txt'],
            'quickstart.py': [], 'data/check_videos.py': ['--config', TINY],
            'demo/recognize.py': [TINY, 'ckpt.pth', 'v.mp4'],
            'demo/search.py': [TINY, 'ckpt.pth', '--gallery', str(gallery), '--query', 'q'],
            'analysis/get_flops.py': [TINY], 'analysis/benchmark.py': [TINY],
            }[tool]


TOOLS = ['train.py', 'test.py', 'extract_features.py', 'quickstart.py',
         'data/check_videos.py', 'demo/recognize.py', 'demo/search.py',
         'analysis/get_flops.py', 'analysis/benchmark.py']


@pytest.mark.parametrize('tool', TOOLS)
def test_every_tool_keeps_spaces_in_cfg_options(tmp_path, tool):
    args = load_tool(tool).parse_args(_tool_argv(tool, tmp_path) + ['--cfg-options']
                                      + OPTIONS)
    assert {k: repr(v) for k, v in args.cfg_options.items()} == \
        {k: repr(v) for k, v in EXPECTED.items()}


@pytest.mark.parametrize('tool', ['train.py', 'demo/recognize.py', 'analysis/get_flops.py'])
@pytest.mark.parametrize('bad,why', [('model.depth', 'expected KEY=VALUE'),
                                     ('a=[1,(2]', 'unbalanced brackets')])
def test_malformed_cfg_option_is_one_argparse_line(tmp_path, capsys, tool, bad, why):
    with pytest.raises(SystemExit) as exc:
        load_tool(tool).parse_args(_tool_argv(tool, tmp_path) + ['--cfg-options', bad])
    assert exc.value.code == 2
    line = one_line_error(capsys.readouterr().err, 'error: ')
    assert '--cfg-options' in line and repr(bad) in line and why in line


@pytest.mark.parametrize('tool', ['train.py', 'demo/recognize.py'])
def test_brackets_nested_too_deeply_are_one_argparse_line(tmp_path, capsys, tool):
    """A RecursionError of the reader (a last resort) is an argparse error, not a page of
    traceback."""
    bad = 'a=' + '[' * 5000 + ']' * 5000
    with pytest.raises(SystemExit) as exc:
        load_tool(tool).parse_args(_tool_argv(tool, tmp_path) + ['--cfg-options', bad])
    assert exc.value.code == 2
    line = one_line_error(capsys.readouterr().err, 'error: ')
    assert "--cfg-options 'a=[[[[" in line and 'brackets nested too deeply' in line
    assert len(line) < 300


def test_template_option_equals_the_template_flag():
    """docs/user_tools.md: ``--cfg-options model.cls_head.templates="['a video of {}.']"``
    does what ``--template "a video of {}."`` does."""
    from stan_mm.apis import load_config
    from stan_mm.apis.recognition import apply_templates
    recognize = load_tool('demo/recognize.py')
    args = recognize.parse_args([K400, 'ckpt.pth', 'v.mp4', '--cfg-options',
                                 "model.cls_head.templates=['a video of {}.']"])
    by_option = load_config(K400, args.cfg_options)
    by_flag = load_config(K400)
    apply_templates(by_flag, ['a video of {}.'])
    assert list(by_option.model.cls_head.templates) == ['a video of {}.']
    assert list(by_flag.model.cls_head.templates) == ['a video of {}.']


# ------------------------------------------------------------------ B: ~ expanded
def test_checks_expand_and_return_the_home_path(home):
    assert check_output_dir('~/w', '--work-dir') == str(home / 'w')
    assert (home / 'w').is_dir()
    assert check_output_file('~/sub/out.pkl', '--dump') == str(home / 'sub' / 'out.pkl')
    assert (home / 'sub').is_dir()
    (home / 'ckpt.pth').write_bytes(b'x')
    assert check_input_file('~/ckpt.pth', 'CHECKPOINT') == str(home / 'ckpt.pth')
    assert not osp.lexists('~')


def test_train_uses_the_expanded_work_dir_and_resume_path(home, monkeypatch):
    (home / 'ck').mkdir()
    (home / 'ck' / 'epoch_1.pth').write_bytes(b'x')
    train = load_tool('train.py')
    monkeypatch.setattr(train, 'Runner', FakeRunner)
    with pytest.raises(Reached) as info:
        train.main([TINY, '--work-dir=~/w', '--resume', '~/ck/epoch_1.pth'])
    cfg = info.value.cfg
    assert cfg.work_dir == str(home / 'w') and (home / 'w').is_dir()
    assert cfg.load_from == str(home / 'ck' / 'epoch_1.pth') and cfg.resume is True
    assert not osp.lexists('~')


def test_train_expands_a_config_work_dir(home, monkeypatch):
    train = load_tool('train.py')
    monkeypatch.setattr(train, 'Runner', FakeRunner)
    with pytest.raises(Reached) as info:
        train.main([TINY, '--cfg-options', 'work_dir=~/from_cfg'])
    assert info.value.cfg.work_dir == str(home / 'from_cfg')
    assert (home / 'from_cfg').is_dir() and not osp.lexists('~')


def test_test_tool_takes_a_home_checkpoint(home, monkeypatch):
    (home / 'ck').mkdir()
    (home / 'ck' / 'epoch_1.pth').write_bytes(b'x')
    test = load_tool('test.py')
    monkeypatch.setattr(test, 'Runner', FakeRunner)
    with pytest.raises(Reached) as info:
        test.main([TINY, '~/ck/epoch_1.pth', '--work-dir=~/w', '--dump=~/out/r.pkl'])
    cfg = info.value.cfg
    assert cfg.load_from == str(home / 'ck' / 'epoch_1.pth')
    assert cfg.work_dir == str(home / 'w') and (home / 'w').is_dir()
    assert cfg.test_evaluator[0]['out_file_path'] == str(home / 'out' / 'r.pkl')
    assert (home / 'out').is_dir() and not osp.lexists('~')


def test_extract_features_writes_under_home(home):
    (home / 'ckpt.pth').write_bytes(b'x')
    (home / 't.txt').write_text('a dog\n')
    tool = load_tool('extract_features.py')
    args = tool.parse_args([TINY, '~/ckpt.pth', '--texts', '~/t.txt', '--out=~/feat'])
    tool.check_paths(args)
    assert args.out == str(home / 'feat') and (home / 'feat').is_dir()
    assert args.checkpoint == str(home / 'ckpt.pth') and args.texts == str(home / 't.txt')
    assert not osp.lexists('~')


def test_other_tools_expand_their_paths(home, tmp_path):
    quickstart = load_tool('quickstart.py')
    args = quickstart.parse_args(['--work-dir=~/q'])
    assert args.work_dir == str(home / 'q') and (home / 'q').is_dir()
    check = load_tool('data/check_videos.py')
    args = check.parse_args(['~/videos', '--out=~/bad.txt'])
    assert (args.source, args.out) == (str(home / 'videos'), str(home / 'bad.txt'))
    recognize = load_tool('demo/recognize.py')
    args = recognize.parse_args(['~/c.py', '~/k.pth', '~/v.mp4', '--classnames=~/n.txt'])
    assert (args.config, args.checkpoint, args.video, args.classnames) == tuple(
        str(home / n) for n in ('c.py', 'k.pth', 'v.mp4', 'n.txt'))
    (home / 'gallery').mkdir()
    search = load_tool('demo/search.py')
    args = search.parse_args(['~/c.py', '~/k.pth', '--gallery=~/gallery', '--query', 'q',
                              '--cache=~/cache', '--html=~/r.html', '--save-sim=~/s.npy'])
    assert (args.gallery, args.cache, args.html, args.save_sim) == tuple(
        str(home / n) for n in ('gallery', 'cache', 'r.html', 's.npy'))
    assert not osp.lexists('~')


def test_make_synthetic_writes_under_home(home):
    """``--out=~/m`` made ``./~/m``."""
    tool = load_tool('data/make_synthetic.py')
    tool.main(['--out=~/m', '--num-train', '2', '--num-val', '2', '--num-test', '2',
               '--num-frames', '4', '--size', '32', '--pairs', 'horizontal',
               '--captions-per-video', '1', '--quiet'])
    assert (home / 'm' / 'train.txt').is_file()
    assert not osp.lexists('~')


def test_build_k400_lists_reads_and_writes_under_home(home, capsys):
    (home / 'k400').mkdir()
    (home / 'k400' / 'train.csv').write_text('label,youtube_id,time_start,time_end,split\n'
                                             'abseiling,---QUuC4vJs,3,13,train\n'
                                             'air drumming,--VnA3ztuZg,0,10,train\n')
    (home / 'names.txt').write_text('air drumming\nabseiling\n')
    tool = load_tool('data/build_k400_lists.py')
    assert tool.main(['--train-csv=~/k400/train.csv', '--out-dir=~/lists',
                      '--classnames=~/names.txt']) == 0, capsys.readouterr().err
    assert (home / 'lists' / 'train_list.txt').read_text().splitlines() == [
        '---QUuC4vJs_000003_000013.mp4 1', '--VnA3ztuZg_000000_000010.mp4 0']
    assert not osp.lexists('~')


def test_eval_retrieval_reads_under_home(home, capsys):
    import json

    import numpy as np
    np.save(home / 'sim.npy', np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]],
                                       dtype=np.float32))
    np.save(home / 't2v.npy', np.array([1, 1, 0]))
    tool = load_tool('analysis/eval_retrieval.py')
    assert tool.main(['--sim=~/sim.npy', '--text-to-video', '~/t2v.npy',
                      '--no-progress']) == 0, capsys.readouterr().err
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # text 0 ranks its video 1 second, texts 1 and 2 rank theirs first
    assert metrics['t2v_R1'] == pytest.approx(200 / 3)
    assert not osp.lexists('~')


def test_the_remaining_tools_expand_their_paths(home):
    """Path arguments of the data, convert and analysis tools (parsed only)."""
    def at_home(*names):
        return tuple(str(home / n) for n in names)
    args = load_tool('convert/clip_to_mm.py').parse_args(['~/clip.pt', '~/out.pth'])
    assert (args.src, args.dst) == at_home('clip.pt', 'out.pth')
    (home / 'arch.json').write_text('{"embed_dim": 32}')
    assert load_tool('convert/clip_to_mm.py').parse_arch('~/arch.json') == {'embed_dim': 32}
    args = load_tool('convert/stan_public_to_mm.py').parse_args(['~/in.pth', '~/out.pth'])
    assert (args.src, args.dst) == at_home('in.pth', 'out.pth')
    args = load_tool('analysis/eval_retrieval.py').parse_args(
        ['--sim=~/s.npy', '--text-to-video=~/t.npy', '--qb-norm=~/b.npy'])
    assert (args.sim, args.text_to_video, args.qb_norm) == at_home('s.npy', 't.npy', 'b.npy')
    args = load_tool('data/prepare_retrieval.py').parse_args(
        ['msrvtt', '~/test.csv', '--caption-file=~/c.json', '--video-root=~/v',
         '--out-json=~/o.json'])
    assert (args.ann_file, args.caption_file, args.video_root, args.out_json) == at_home(
        'test.csv', 'c.json', 'v', 'o.json')
    args = load_tool('data/build_k400_lists.py').parse_args(
        ['--train-csv=~/t.csv', '--val-csv=~/v.csv', '--out-dir=~/o', '--train-video-dir=~/tv',
         '--val-video-dir=~/vv', '--classnames=~/n.txt'])
    assert (args.train_csv, args.val_csv, args.out_dir, args.train_video_dir,
            args.val_video_dir, args.classnames) == at_home('t.csv', 'v.csv', 'o', 'tv', 'vv',
                                                            'n.txt')
    args = load_tool('data/build_ssv2_lists.py').parse_args(
        ['--anno-dir=~/a', '--labels=~/l.json', '--train=~/t.json', '--val=~/v.json',
         '--out-dir=~/o', '--video-dir=~/vd'])
    assert (args.anno_dir, args.labels, args.train, args.val, args.out_dir,
            args.video_dir) == at_home('a', 'l.json', 't.json', 'v.json', 'o', 'vd')
    args = load_tool('analysis/get_flops.py').parse_args(['~/c.py'])
    assert args.config == str(home / 'c.py')
    args = load_tool('analysis/benchmark.py').parse_args(
        ['~/c.py', '--pipeline-config=~/p.py', '--videos=~/v', '--video-cache=~/vc',
         '--out=~/r.json'])
    assert (args.config, args.pipeline_config, args.videos, args.video_cache,
            args.out) == at_home('c.py', 'p.py', 'v', 'vc', 'r.json')
    assert not osp.lexists('~')


# ------------------------------------------------------------------ C: dangling links
def test_dangling_link_as_output_folder_is_named(tmp_path):
    link = tmp_path / 'scratch_run'
    os.symlink(tmp_path / 'purged' / 'run', link)
    for path in (link, link / 'sub'):
        with pytest.raises(CommandLineError) as info:
            check_output_dir(str(path), '--work-dir')
        msg = str(info.value)
        assert f"is a symbolic link to '{tmp_path / 'purged' / 'run'}', which does not " \
               f"exist" in msg and str(link) in msg and 'File exists' not in msg
    with pytest.raises(CommandLineError, match='is a symbolic link to .*which does not '
                                               'exist'):
        check_output_file(str(link / 'r.pkl'), '--dump')
    file_link = tmp_path / 'r.pkl'
    os.symlink(tmp_path / 'purged' / 'r.pkl', file_link)
    with pytest.raises(CommandLineError, match='symbolic link to .*whose folder does not '
                                               'exist'):
        check_output_file(str(file_link), '--dump')


def test_train_and_extract_name_a_dangling_link(tmp_path, capsys):
    link = tmp_path / 'w'
    os.symlink(tmp_path / 'gone', link)
    train = load_tool('train.py')
    assert run_tool(lambda: train.main([TINY, '--work-dir', str(link)]), 'train.py') == 2
    line = one_line_error(capsys.readouterr().err, 'train.py: error: ')
    assert f"--work-dir '{link}' is a symbolic link to '{tmp_path / 'gone'}', which does " \
           f"not exist (create the target folder or remove the link)" in line
    ckpt = tmp_path / 'ckpt.pth'
    ckpt.write_bytes(b'x')
    (tmp_path / 't.txt').write_text('a dog\n')
    extract = load_tool('extract_features.py')
    assert extract.main([TINY, str(ckpt), '--texts', str(tmp_path / 't.txt'), '--out',
                         str(link)]) == 2
    line = one_line_error(capsys.readouterr().err, 'extract_features: error: ')
    assert 'is a symbolic link to' in line and 'which does not exist' in line


# ------------------------------------------------------------------ D1: config links
def test_config_through_a_symlink_is_read_where_it_points(tmp_path, monkeypatch):
    (tmp_path / 'x').mkdir()
    link = tmp_path / 'x' / 'my.py'
    os.symlink(TINY, link)
    cfg = read_config(str(link))
    assert cfg.model.backbone.type == 'CLIPSTAN'
    train = load_tool('train.py')
    monkeypatch.setattr(train, 'Runner', FakeRunner)
    with pytest.raises(Reached) as info:
        train.main([str(link), '--work-dir', str(tmp_path / 'w')])
    assert info.value.cfg.model.backbone.type == 'CLIPSTAN'
    from stan_mm.apis import load_config
    assert load_config(str(link)).model.backbone.depth == 2


def test_flops_and_benchmark_read_a_config_through_a_symlink(tmp_path, capsys):
    (tmp_path / 'x').mkdir()
    link = tmp_path / 'x' / 'my.py'
    os.symlink(TINY, link)
    assert load_tool('analysis/get_flops.py').main([str(link)]) == 0
    assert 'GFLOPs (G multiply-accumulates)' in capsys.readouterr().out
    benchmark = load_tool('analysis/benchmark.py')
    cfg = benchmark._load_config(str(link), {'model.backbone.depth': 1})
    assert cfg.model.backbone.type == 'CLIPSTAN' and cfg.model.backbone.depth == 1
    copy = tmp_path / 'x' / 'copy.py'          # a copy without its _base_: one line
    shutil.copy(TINY, copy)
    with pytest.raises(CommandLineError, match=r"--pipeline-config '.*copy.py': its _base_"):
        benchmark._load_config(str(copy), None, '--pipeline-config')


def test_copied_config_without_its_base_is_one_line(tmp_path, capsys):
    copy = tmp_path / 'x' / 'my.py'
    copy.parent.mkdir()
    shutil.copy(TINY, copy)
    train = load_tool('train.py')
    status = run_tool(lambda: train.main([str(copy), '--work-dir', str(tmp_path / 'w')]),
                      'train.py')
    assert status == 2
    line = one_line_error(capsys.readouterr().err, 'train.py: error: ')
    assert f"CONFIG '{copy}': its _base_ file" in line and 'default_runtime.py' in line
    assert 'relative _base_ path is read from the folder of the config' in line


def test_missing_base_of_a_base_is_named_other_missing_files_are_not(tmp_path):
    (tmp_path / 'cfgs').mkdir()
    (tmp_path / 'cfgs' / 'top.py').write_text("_base_ = ['./mid.py']\n")
    (tmp_path / 'cfgs' / 'mid.py').write_text("_base_ = ['../_base_/gone.py']\n")
    with pytest.raises(CommandLineError, match=r"its _base_ file '.*gone.py' does not "
                                               r"exist"):
        read_config(str(tmp_path / 'cfgs' / 'top.py'))
    # a file the config's own code opens is not a _base_ file: mmengine's error as it is
    (tmp_path / 'cfgs' / 'reads.py').write_text("x = open('no_such_data.json').read()\n")
    with pytest.raises(FileNotFoundError, match='no_such_data.json'):
        read_config(str(tmp_path / 'cfgs' / 'reads.py'))


# ------------------------------------------------------------------ D2: CLIP weights
@pytest.mark.parametrize('name', ['train.py', 'test.py'])
def test_missing_clip_weights_is_one_line(tmp_path, capsys, name):
    ckpt = tmp_path / 'ckpt.pth'
    ckpt.write_bytes(b'x')
    missing = str(tmp_path / 'clip' / 'ViT-B-16.pt')
    argv = [TINY] + ([str(ckpt)] if name == 'test.py' else []) + [
        '--work-dir', str(tmp_path / 'w'), '--cfg-options',
        f'model.backbone.pretrained={missing}']
    tool = load_tool(name)
    assert run_tool(lambda: tool.main(argv), name) == 2
    err = capsys.readouterr().err
    line = one_line_error(err, f'{name}: error: ')
    assert f'FileNotFoundError: CLIP weights not found: {missing!r}' in line
    hint = one_line_error(err, f'{name}: hint: ')
    assert ('pretrained=None' if name == 'test.py' else 'pretrained=PATH') in hint


def test_os_file_errors_keep_their_traceback(tmp_path):
    """A FileNotFoundError the OS raised names a file, not what it was for: a bug's
    traceback stays; so does one re-raised from a DataLoader worker."""
    with pytest.raises(FileNotFoundError):
        run_tool(lambda: open(tmp_path / 'nope.txt'), 'train.py')

    def worker_error():
        raise FileNotFoundError('Caught FileNotFoundError in DataLoader worker process 0.\n'
                                'Original Traceback (most recent call last):\n  ...')
    with pytest.raises(FileNotFoundError):
        run_tool(worker_error, 'train.py')
