"""Review fixes for large-scale use: dataset builds without a ``stat`` per video, ``--amp``
for testing and feature extraction, ``TextClassifierHead`` under export / compile."""
import json
import os
import os.path as osp
import unicodedata

import pytest
from mmaction.registry import DATASETS, MODELS

import stan_mm  # noqa: F401
from stan_mm.datasets import retrieval
from stan_mm.datasets.readers_common import AnnotationError

NFC = unicodedata.normalize('NFC', 'vidéo_日本語_🎬.mp4')
NFD = unicodedata.normalize('NFD', NFC)


# ---------------------------------------------------------------- 1. file checks
def make_tree(root):
    """Regular files, a dangling link, a link to a file, a link to a folder, a folder
    named like a video, unicode names, and a regular file used as a folder."""
    (root / 'a').mkdir(parents=True)
    (root / 'b').mkdir()
    (root / 'a' / 'dir.mp4').mkdir()            # a folder named like a video
    (root / 'real').mkdir()
    for i in range(12):
        (root / 'a' / f'v{i}.mp4').write_bytes(b'')
        (root / 'b' / f'w{i}.mp4').write_bytes(b'')
    (root / 'a' / NFC).write_bytes(b'')
    (root / 'a' / 'ünï ço de.mp4').write_bytes(b'')
    os.symlink(root / 'a' / 'v0.mp4', root / 'a' / 'link.mp4')           # link to a file
    os.symlink(root / 'a' / 'nowhere.mp4', root / 'a' / 'dangling.mp4')  # dangling link
    os.symlink(root / 'real', root / 'a' / 'linkdir.mp4')               # link to a folder
    os.symlink(root / 'b', root / 'bl')                                 # a linked folder


def queried_paths(root):
    a, b = f'{root}/a', f'{root}/b'
    return ([f'{a}/v{i}.mp4' for i in range(12)] + [f'{b}/w{i}.mp4' for i in range(12)]
            + [f'{a}/{NFC}', f'{a}/{NFD}', f'{a}/ünï ço de.mp4', f'{a}/V1.MP4',
               f'{a}/gone.mp4', f'{a}/link.mp4', f'{a}/dangling.mp4', f'{a}/linkdir.mp4',
               f'{a}/dir.mp4', f'{a}/dir.mp4/', f'{a}/./v2.mp4', f'{a}//v3.mp4',
               f'{a}/../a/v4.mp4', f'{a}/.', f'{a}/..', f'{a}/v5.mp4/x.mp4',
               f'{root}/bl/w1.mp4', f'{root}/bl/w2.mp4', f'{root}/bl/w3.mp4',
               f'{root}/bl/w4.mp4', f'{root}/bl/gone.mp4', f'{root}/bl/../a/v6.mp4',
               f'{root}/no_such_folder/x{0}.mp4', f'{root}/no_such_folder/x1.mp4',
               f'{root}/no_such_folder/x2.mp4', f'{root}/no_such_folder/x3.mp4',
               f'{a}/v7.mp4/y0.mp4', f'{a}/v7.mp4/y1.mp4', f'{a}/v7.mp4/y2.mp4',
               f'{a}/v7.mp4/y3.mp4', f'{a}/v8.mp4', f'{a}/v8.mp4'])


@pytest.mark.parametrize('relative', [False, True])
def test_folder_index_answers_as_the_per_path_calls(tmp_path, monkeypatch, relative):
    make_tree(tmp_path / 'data')
    if relative:                      # paths relative to the working folder, and bare names
        monkeypatch.chdir(tmp_path / 'data' / 'a')
        paths = ([p.replace(f'{tmp_path}/data/a/', '') for p in queried_paths(
            tmp_path / 'data')] + ['../b/w0.mp4', '../b/w1.mp4', '../b/w5.mp4',
                                   '../b/w6.mp4', '../b/none.mp4'])
    else:
        paths = queried_paths(tmp_path / 'data')
    index = retrieval.FolderIndex(paths)
    for p in paths:
        assert index.isfile(p) == osp.isfile(p), p
        assert index.exists(p) == osp.exists(p), p
        assert index.realpath(p) == osp.realpath(p), p
    # the cases the review names
    answers = {osp.basename(p): (index.isfile(p), index.exists(p)) for p in paths}
    assert answers['link.mp4'] == (True, True)          # a link to a file is a file
    assert answers['dangling.mp4'] == (False, False)    # a dangling link is missing
    assert answers['dir.mp4'] == (False, True)          # a folder is no file (but exists)
    assert answers['gone.mp4'] == (False, False)
    assert answers[NFC] == (True, True)


def test_folder_index_answers_the_same_when_listing_fails_or_stops(tmp_path, monkeypatch):
    make_tree(tmp_path / 'data')
    paths = queried_paths(tmp_path / 'data')
    expected = [(osp.isfile(p), osp.exists(p), osp.realpath(p)) for p in paths]
    real_scandir = os.scandir

    def no_permission(folder):       # e.g. a folder with -wx permissions (root ignores them)
        if str(folder).endswith('/a/'):
            raise PermissionError(13, 'Permission denied', folder)
        return real_scandir(folder)

    monkeypatch.setattr(os, 'scandir', no_permission)
    index = retrieval.FolderIndex(paths)
    assert [(index.isfile(p), index.exists(p), index.realpath(p)) for p in paths] == expected
    monkeypatch.setattr(os, 'scandir', real_scandir)
    # a listing cut short (a huge folder holding few of the names): the rest one by one
    monkeypatch.setattr(retrieval, 'LIST_SLACK', 0)
    monkeypatch.setattr(retrieval, 'LIST_ENTRIES_PER_NAME', 0)
    index = retrieval.FolderIndex(paths)
    assert [(index.isfile(p), index.exists(p), index.realpath(p)) for p in paths] == expected


class Spy:
    """Counts os.scandir / os.stat / os.lstat calls on paths under ``root``."""

    def __init__(self, monkeypatch, root):
        self.root, self.calls = str(root), {'scandir': [], 'stat': [], 'lstat': []}
        for name in self.calls:
            monkeypatch.setattr(os, name, self._wrap(name, getattr(os, name)))

    def _wrap(self, name, fn):
        def spy(path, *args, **kwargs):
            if isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(
                    self.root):
                self.calls[name].append(os.fspath(path))
            return fn(path, *args, **kwargs)
        return spy


def per_video_tree(root, n=40):
    names = []
    for f in ('x', 'y'):
        (root / f).mkdir(parents=True)
        for i in range(n // 2):
            (root / f / f'{f}{i:03d}.mp4').write_bytes(b'')
            names.append(f'{f}/{f}{i:03d}.mp4')
    return names


def test_video_list_lists_each_folder_once_instead_of_a_stat_per_video(tmp_path,
                                                                       monkeypatch):
    videos = tmp_path / 'videos'
    names = per_video_tree(videos)
    ann = tmp_path / 'list.txt'
    ann.write_text(''.join(f'{n} {i % 3}\n' for i, n in enumerate(names)))
    spy = Spy(monkeypatch, videos)
    ds = DATASETS.build(dict(type='CheckedVideoDataset', ann_file=str(ann), pipeline=[],
                             data_prefix=dict(video=str(videos))))
    assert len(ds) == 40
    assert spy.calls['stat'] == [] and spy.calls['lstat'] == []   # was: 40 stats
    assert sorted(spy.calls['scandir']) == [f'{videos}/x/', f'{videos}/y/']


def test_retrieval_lists_each_folder_instead_of_stat_and_realpath_per_video(tmp_path,
                                                                          monkeypatch):
    videos = tmp_path / 'videos'
    names = per_video_tree(videos)
    ann = tmp_path / 'ann.json'
    ann.write_text(json.dumps({n: [f'caption {i}'] for i, n in enumerate(names)}))
    spy = Spy(monkeypatch, videos)
    ds = DATASETS.build(dict(type='RetrievalVideoTextDataset', ann_format='json',
                             ann_file=str(ann), pipeline=[], test_mode=True,
                             data_prefix=dict(video=str(videos))))
    assert ds.num_videos == 40
    assert spy.calls['stat'] == []                   # was: 40 (exists)
    # realpath of each folder (its components), never of each video (was: 40 x 3)
    assert not any(p.endswith('.mp4') for p in spy.calls['lstat'])
    # one listing per folder for the existence check, one for the link check
    assert sorted(spy.calls['scandir']) == [f'{videos}/x/'] * 2 + [f'{videos}/y/'] * 2


def build_list(tmp_path, videos, lines, **kw):
    ann = tmp_path / 'list.txt'
    ann.write_text(''.join(f'{n} 0\n' for n in lines), encoding='utf-8')
    return DATASETS.build(dict(type='CheckedVideoDataset', ann_file=str(ann), pipeline=[],
                               data_prefix=dict(video=str(videos)), **kw))


def build_json(tmp_path, videos, lines, **kw):
    ann = tmp_path / 'ann.json'
    ann.write_text(json.dumps({n: [f'c {i}'] for i, n in enumerate(lines)}),
                   encoding='utf-8')
    return DATASETS.build(dict(type='RetrievalVideoTextDataset', ann_format='json',
                               ann_file=str(ann), pipeline=[], test_mode=True,
                               data_prefix=dict(video=str(videos)), **kw))


LIST_LINES = ([f'a/v{i}.mp4' for i in range(12)] + [f'b/w{i}.mp4' for i in range(12)]
              + [f'a/{NFC}', f'a/{NFD}', 'a/V1.MP4', 'a/gone.mp4', 'a/link.mp4',
                 'a/dangling.mp4', 'a/linkdir.mp4', 'a/dir.mp4', 'bl/w1.mp4',
                 'bl/gone.mp4', 'no_such_folder/x.mp4', 'a/v5.mp4/x.mp4'])


@pytest.mark.parametrize('build,check', [(build_list, osp.isfile),
                                         (build_json, osp.exists)])
def test_missing_and_dropped_videos_same_as_the_per_file_check(tmp_path, monkeypatch,
                                                               build, check):
    """Same missing list, message and kept samples as one ``isfile`` (video lists) or
    ``exists`` (retrieval) per video, which is what the index falls back to."""
    videos = tmp_path / 'data'
    make_tree(videos)
    expected_missing = [n for n in LIST_LINES if not check(f'{videos}/{n}')]
    assert {'a/gone.mp4', 'a/dangling.mp4', f'a/{NFD}', 'no_such_folder/x.mp4'} <= set(
        expected_missing)
    assert 'a/link.mp4' not in expected_missing and f'a/{NFC}' not in expected_missing
    messages, kept = [], []
    for fast in (True, False):       # fast: the index; slow: one call per video
        monkeypatch.setattr(retrieval, 'MIN_NAMES_TO_LIST', 4 if fast else 10 ** 9,
                            raising=False)
        with pytest.raises(AnnotationError) as e:
            build(tmp_path, videos, LIST_LINES)
        messages.append(str(e.value))
        ds = build(tmp_path, videos, LIST_LINES, missing_video='drop')
        kept.append([ds.get_data_info(i)['filename'] for i in range(len(ds))])
    assert messages[0] == messages[1] and kept[0] == kept[1]
    assert kept[0] == [f'{videos}/{n}' for n in LIST_LINES if n not in expected_missing]
    assert f'{len(expected_missing)} of {len(LIST_LINES)} videos' in messages[0]
    if build is build_list:
        assert ', '.join(repr(f'{videos}/{n}') for n in expected_missing) in messages[0]
    else:
        assert ', '.join(expected_missing) in messages[0]


def test_link_warning_same_as_realpath_per_video(tmp_path, monkeypatch):
    videos = tmp_path / 'data'
    make_tree(videos)
    lines = [n for n in LIST_LINES if osp.exists(f'{videos}/{n}')]
    logs = []
    for fast in (True, False):
        logged = []
        monkeypatch.setattr(retrieval, 'print_log', lambda msg, **kw: logged.append(msg))
        monkeypatch.setattr(retrieval, 'MIN_NAMES_TO_LIST', 4 if fast else 10 ** 9,
                            raising=False)
        build_json(tmp_path, videos, lines)
        logs.append([m for m in logged if 'links to one file' in m])
    assert logs[0] == logs[1] and len(logs[0]) == 1
    assert f"'a/link.mp4' and 'a/v0.mp4' -> '{videos}/a/v0.mp4'" in logs[0][0]



# ------------------------------------------------------------------- 2. --amp
def _load(rel_path, name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        name, osp.join(osp.dirname(__file__), '..', rel_path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize('head', ['text', 'linear'])
def test_test_tool_amp_autocasts_the_test_loop_to_a_metric(tmp_path, monkeypatch, head):
    """tools/test.py --amp: test_cfg.fp16=True, so mmengine's TestLoop runs every step
    under autocast (bf16 on this CPU) and the run ends with a metric (a linear head's bf16
    scores reach the metric as float32: numpy has no bf16)."""
    import contextlib
    import sys

    import mmengine.runner.loops as loops
    import torch
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    sys.path.insert(0, osp.dirname(__file__))
    from test_recognition import write_tiny_config
    cfg_path = write_tiny_config(tmp_path, num_train=1, num_val=2, head=head)
    init_default_scope('mmaction')
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(cfg_path).model)
    ckpt = tmp_path / 'ckpt.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, ckpt)

    seen, real = [], loops.autocast

    @contextlib.contextmanager
    def spy(*args, **kwargs):
        with real(*args, **kwargs):
            seen.append((kwargs.get('enabled'), torch.is_autocast_enabled('cpu'),
                         torch.get_autocast_dtype('cpu'), torch.get_autocast_dtype('cuda')))
            yield

    monkeypatch.setattr(loops, 'autocast', spy)
    tool = _load('tools/test.py', 'scale_fix_test_tool')
    argv = [cfg_path, str(ckpt), '--work-dir', str(tmp_path / 'w'), '--amp', '--dump',
            str(tmp_path / 'dump.pkl')]
    assert tool.merge_args(Config.fromfile(cfg_path),
                           tool.parse_args(argv)).test_cfg.fp16 is True
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cuda_dtype = torch.get_autocast_dtype('cuda')
    try:
        metrics = tool.main(argv)
    finally:
        torch.set_num_threads(threads)
    assert 0 <= metrics['acc/top1'] <= 1
    # 2 test samples, batch 1; the CUDA dtype (what a GPU run would use) set to the tiny
    # config's training dtype, bf16, during the test and restored after it
    assert seen == [(True, True, torch.bfloat16, torch.bfloat16)] * 2
    assert torch.get_autocast_dtype('cuda') is cuda_dtype
    import pickle
    with open(tmp_path / 'dump.pkl', 'rb') as f:
        assert [d['pred_score'].dtype for d in pickle.load(f)] == [torch.float32] * 2


@pytest.mark.parametrize('test_cfg, expected', [
    ('None', "test.py: error: CommandLineError: --amp sets test_cfg.fp16=True, but this "
             "config's test_cfg is None"),
    ("dict(type='EpochBasedTrainLoop', max_epochs=1)",
     "test.py: error: CommandLineError: --amp sets test_cfg.fp16=True, but the loop of "
     "test_cfg, 'EpochBasedTrainLoop', takes no fp16 argument"),
])
def test_test_tool_amp_refuses_a_loop_without_fp16(tmp_path, capsys, test_cfg, expected):
    from stan_mm.utils.cli import run_tool
    base = osp.join(osp.dirname(__file__), '..', 'configs', 'quickstart',
                    'motion_stan_tiny.py')
    cfg = tmp_path / 'cfg.py'
    cfg.write_text(f'_base_ = [{osp.abspath(base)!r}]\ntest_cfg = {test_cfg}\n')
    ckpt = tmp_path / 'ckpt.pth'
    ckpt.write_bytes(b'')
    tool = _load('tools/test.py', 'scale_fix_test_tool_err')
    status = run_tool(lambda: tool.main([str(cfg), str(ckpt), '--amp', '--work-dir',
                                         str(tmp_path / 'w')]), 'test.py')
    err = capsys.readouterr().err
    assert status == 2 and err.startswith(expected), err
    assert len(err.splitlines()) == 2          # the error line, then the traceback hint


def test_extract_features_amp_gives_float32_close_to_fp32(tmp_path, capsys):
    """tools/extract_features.py --amp: the towers under bf16 autocast; the saved
    embeddings are float32 and within cosine 0.99 of the fp32 ones."""
    import sys

    import numpy as np
    import torch
    sys.path.insert(0, osp.dirname(__file__))
    from test_user_tools import RETRIEVAL_CFG, build, write_video
    cfg_file = tmp_path / 'ret.py'
    cfg_file.write_text(f'_base_ = [{RETRIEVAL_CFG!r}]\n')
    _, _, ckpt = build(str(cfg_file))
    (tmp_path / 'videos').mkdir()
    for i in range(3):
        write_video(str(tmp_path / 'videos' / f'v{i}.mp4'), seed=i)
    texts = tmp_path / 'texts.txt'
    texts.write_text('a large yellow cross slides left\na shape rotating clockwise\n')
    tool = _load('tools/extract_features.py', 'scale_fix_extract_tool')
    out = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for amp in (False, True):
            folder = str(tmp_path / f'out_{amp}')
            rc = tool.main([str(cfg_file), ckpt, '--videos', str(tmp_path / 'videos'),
                            '--texts', str(texts), '--out', folder, '--num-workers', '0',
                            '--no-progress'] + (['--amp'] if amp else []))
            assert rc == 0, capsys.readouterr()
            out[amp] = {k: np.load(osp.join(folder, f'{k}.npy')) for k in ('videos', 'texts')}
            assert json.load(open(osp.join(folder, 'meta.json')))['amp'] == ('bf16' if amp else False)
    finally:
        torch.set_num_threads(threads)
    for kind in ('videos', 'texts'):
        fp32, bf16 = out[False][kind], out[True][kind]
        assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
        cosine = (fp32 * bf16).sum(axis=1)            # rows are L2-normalized
        assert cosine.min() > 0.99, (kind, cosine)
        assert not np.array_equal(fp32, bf16)          # bf16 did run


# ------------------------------------------------------- 3. text head: export / compile
def _head_and_input():
    import sys
    import torch
    sys.path.insert(0, osp.dirname(__file__))
    from test_recognition import EMBED, text_head
    torch.manual_seed(0)
    return text_head().eval(), torch.randn(3, EMBED)


def test_text_head_exports_after_one_eager_forward():
    import torch
    head, x = _head_and_input()
    with pytest.raises(RuntimeError, match='torch.export needs the class embeddings cached: '
                                           'run one eager forward first'):
        torch.export.export(head, (x,))
    with torch.no_grad():
        eager = head(x)
    exported = torch.export.export(head, (x,))
    torch.testing.assert_close(exported.module()(x), eager)
    x2 = torch.randn(3, x.shape[1])
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x2), head(x2))


def test_text_head_compiles_with_fullgraph_after_one_eager_forward():
    import torch
    torch._dynamo.reset()
    head, x = _head_and_input()
    with torch.no_grad():
        eager = head(x)
    compiled = torch.compile(head, fullgraph=True, backend='eager')
    torch.testing.assert_close(compiled(x), eager)
    # without fullgraph, an empty cache is filled eagerly (a graph break), as before
    torch._dynamo.reset()
    head.invalidate_cache()
    torch.testing.assert_close(torch.compile(head, backend='eager')(x), eager)
    assert head._cache is not None
    torch._dynamo.reset()
