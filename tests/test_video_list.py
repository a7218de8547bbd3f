"""CheckedVideoDataset: MMAction2's VideoDataset samples, with the list checked per line."""
import pytest
from mmaction.registry import DATASETS

import stan_mm  # noqa: F401
from stan_mm.datasets.readers_common import AnnotationError


def build(tmp_path, text, type_='CheckedVideoDataset', name='list.txt', **kw):
    f = tmp_path / name
    f.write_bytes(text.encode('utf-8') if isinstance(text, str) else text)
    kw.setdefault('data_prefix', dict(video='/videos'))
    if type_ == 'CheckedVideoDataset':
        kw.setdefault('check_files', False)       # these lists name no real files
    return DATASETS.build(dict(type=type_, ann_file=str(f), pipeline=[], **kw))


def infos(ds):
    return [(ds.get_data_info(i)['filename'], ds.get_data_info(i)['label'])
            for i in range(len(ds))]


@pytest.mark.parametrize('kw', [dict(), dict(num_classes=3), dict(test_mode=True),
                                dict(data_prefix=dict(video=''))])
def test_same_samples_as_mmaction_on_a_valid_list(tmp_path, kw):
    text = 'a/v1.mp4 0\nv2.avi 2\nv\u00a0nbsp.mp4 1\n'   # a no-break space inside a name
    ours = build(tmp_path, text, **kw)
    theirs = build(tmp_path, text, type_='VideoDataset', **kw)
    assert infos(ours) == infos(theirs)
    assert infos(ours)[2][0].endswith('v\u00a0nbsp.mp4')


def test_multi_label_same_as_mmaction(tmp_path):
    text = 'v1.mp4 0 2\nv2.mp4 1\nv3.mp4\n'        # v3: of no class (all negative)
    ours = build(tmp_path, text, multi_class=True, num_classes=3)
    theirs = build(tmp_path, text, type_='VideoDataset', multi_class=True, num_classes=3)
    assert [ours.get_data_info(i)['label'].tolist() for i in range(3)] == [
        [1., 0., 1.], [0., 1., 0.], [0., 0., 0.]]
    assert [theirs.get_data_info(i)['label'].tolist() for i in range(3)] == [
        [1., 0., 1.], [0., 1., 0.], [0., 0., 0.]]
    with pytest.raises(AnnotationError, match=r'(?s)list.txt:2: .*line 2: label 3 is out of'):
        build(tmp_path, 'v1.mp4 0\nv2.mp4 1 3\n', multi_class=True, num_classes=3)


def test_blank_lines_tabs_runs_of_spaces_crlf_and_bom(tmp_path):
    ds = build(tmp_path, '\ufeffv1.mp4\t1\r\n\r\n  v2.mp4   0  \n\n')
    assert infos(ds) == [('/videos/v1.mp4', 1), ('/videos/v2.mp4', 0)]


def test_every_bad_line_reported_at_once(tmp_path):
    text = ('filename label\n'        # 1: a header
            'v1.mp4 0\n'
            'v2.mp4\n'                # 3: no label
            'my video.mp4 1\n'        # 4: a name with a space
            'v3.mp4 5\n'              # 5: >= num_classes
            'v4.mp4 -2\n'             # 6: negative
            'v5.mp4 1.0\n')           # 7: not an integer
    with pytest.raises(AnnotationError) as e:
        build(tmp_path, text, num_classes=5)
    err = e.value
    msg = str(err)
    assert err.line == 1 and msg.startswith(f'{tmp_path / "list.txt"}:1: 6 bad line(s)')
    assert "line 1: label 'label' is not an integer (a header line? remove it)" in msg
    assert "line 3: 'v2.mp4' has no label" in msg and 'allow_unlabeled=True' in msg
    assert 'line 4: expected "path label", got 3 fields' in msg and 'rename' in msg
    assert "line 5: label 5 is out of range (the dataset's num_classes=5: labels 0..4" in msg
    assert 'line 6: label -2 is out of range' in msg
    assert "line 7: label '1.0' is not an integer" in msg
    assert len(err.issues) == 6


def test_unlabeled_lines_only_when_allowed(tmp_path):
    ds = build(tmp_path, 'v1.mp4\nv2.mp4 1\n', allow_unlabeled=True)
    assert infos(ds) == [('/videos/v1.mp4', -1), ('/videos/v2.mp4', 1)]
    # MMAction2 gives -1 silently, which a test run would score as a class
    assert infos(build(tmp_path, 'v1.mp4\n', type_='VideoDataset')) == [
        ('/videos/v1.mp4', -1)]


def test_missing_videos_found_when_built(tmp_path):
    videos = tmp_path / 'videos'
    (videos / 'sub').mkdir(parents=True)
    for name in ('a.mp4', 'sub/b.mp4'):
        (videos / name).write_bytes(b'')
    text = 'a.mp4 0\nsub/b.mp4 1\ngone.mp4 1\nsub/also_gone.mp4 0\n'
    kw = dict(data_prefix=dict(video=str(videos)), check_files=True)
    with pytest.raises(AnnotationError) as e:
        build(tmp_path, text, **kw)
    msg = str(e.value)
    assert f"2 of 4 videos of {tmp_path / 'list.txt'} have no file" in msg
    assert "missing_video='drop'" in msg
    assert f"'{videos}/gone.mp4', '{videos}/sub/also_gone.mp4'" in msg
    ds = build(tmp_path, text, missing_video='drop', **kw)
    assert infos(ds) == [(f'{videos}/a.mp4', 0), (f'{videos}/sub/b.mp4', 1)]
    assert len(build(tmp_path, text, data_prefix=dict(video=str(videos)),
                     check_files=False)) == 4
    with pytest.raises(ValueError, match="missing_video must be 'error' or 'drop'"):
        build(tmp_path, text, missing_video='skip', **kw)


def test_empty_list_and_missing_file(tmp_path):
    with pytest.raises(AnnotationError, match=r'list.txt: the video list is empty'):
        build(tmp_path, '\n  \n')
    with pytest.raises(FileNotFoundError, match='nope.txt'):
        DATASETS.build(dict(type='CheckedVideoDataset', ann_file=str(tmp_path / 'nope.txt'),
                            pipeline=[]))


def test_recognition_configs_use_it_with_their_num_classes():
    from mmengine.config import Config
    for name, n in (('k400_self_b16', 400), ('ssv2_self_b16', 174)):
        cfg = Config.fromfile(f'configs/stan/{name}.py')
        for split in ('train', 'val', 'test'):
            ds = cfg[f'{split}_dataloader'].dataset
            assert ds.type == 'CheckedVideoDataset' and ds.num_classes == n, (name, split)


def test_the_documented_own_dataset_config(tmp_path):
    """docs/data_preparation.md's own-dataset config builds what it says: 5 classes in the
    datasets, the user's paths, weights and class names, a schedule ending at epoch 10."""
    import os.path as osp
    import re
    from mmengine.config import Config
    repo = osp.dirname(osp.dirname(osp.abspath(__file__)))
    doc = open(osp.join(repo, 'docs', 'data_preparation.md')).read()
    block = re.search(r'```python\n(# my_dataset_stan\.py.*?)```', doc, re.S).group(1)
    block = block.replace('/path/to/stan-mm', repo)
    (tmp_path / 'my_dataset_stan.py').write_text(block)
    cfg = Config.fromfile(str(tmp_path / 'my_dataset_stan.py'))
    for split, ann in (('train', 'train_list.txt'), ('val', 'val_list.txt'),
                       ('test', 'val_list.txt')):
        ds = cfg[f'{split}_dataloader'].dataset
        assert (ds.type, ds.num_classes, ds.data_root, ds.ann_file, ds.data_prefix.video) == (
            'CheckedVideoDataset', 5, 'data/my_dataset', ann, 'videos'), split
    assert cfg.model.backbone.pretrained == 'checkpoints/clip/ViT-B-16.pt'
    assert cfg.model.cls_head.text_encoder.pretrained == 'checkpoints/clip/ViT-B-16.pt'
    assert cfg.model.cls_head.classnames == 'data/my_dataset/classnames.txt'
    assert cfg.train_cfg.max_epochs == 10
    assert [s.end for s in cfg.param_scheduler] == [2, 10]
    assert cfg.model.backbone.depth == 4 and cfg.test_evaluator.type == 'RecognitionAccMetric'


def test_train_tool_ends_a_bad_list_with_one_error_line(tmp_path):
    """tools/train.py on a list with a line without a label: exit status 2 and the file,
    line and fix on stderr, no traceback (STAN_TRACEBACK=1 brings it back)."""
    import os
    import subprocess
    import sys
    sys.path.insert(0, os.path.dirname(__file__))
    from test_recognition import REPO, write_tiny_config
    cfg = write_tiny_config(tmp_path, num_train=2, num_val=2)
    with open(tmp_path / 'train_list.txt', 'a') as f:
        f.write('unlabeled.mp4\n')
    env = dict(os.environ, OMP_NUM_THREADS='1')
    cmd = [sys.executable, os.path.join(REPO, 'tools', 'train.py'), cfg, '--work-dir',
           str(tmp_path / 'work')]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    assert f"train.py: error: AnnotationError: {tmp_path / 'train_list.txt'}:3:" in r.stderr
    assert "'unlabeled.mp4' has no label" in r.stderr and 'Traceback' not in r.stderr
    env['STAN_TRACEBACK'] = '1'
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and 'Traceback' in r.stderr and 'AnnotationError' in r.stderr


def test_dump_is_written_before_the_metric_refuses_unlabeled_samples(tmp_path):
    """An inference list (allow_unlabeled=True, labels -1) tested with --dump: the
    predictions are saved, then the accuracy is refused (not the other way round)."""
    import os
    import pickle
    import sys
    import torch
    from mmengine.config import Config
    from mmengine.evaluator import Evaluator
    from mmengine.registry import DefaultScope
    sys.path.insert(0, os.path.dirname(__file__))
    from test_recognition import load_tool, write_tiny_config
    test_tool = load_tool('tools/test.py', 'stan_test_tool_dump_order')
    cfg_path = write_tiny_config(tmp_path)
    ckpt = tmp_path / 'x.pth'
    ckpt.write_bytes(b'')
    out = tmp_path / 'pred.pkl'
    cfg = test_tool.merge_args(Config.fromfile(cfg_path), test_tool.parse_args(
        [cfg_path, str(ckpt), '--dump', str(out)]))
    assert [e['type'] for e in cfg.test_evaluator] == ['DumpResults', 'RecognitionAccMetric']
    DefaultScope.get_instance('dump_order', scope_name='mmaction')
    ev = Evaluator(cfg.test_evaluator)
    ev.process([dict(pred_score=torch.rand(3), gt_label=torch.tensor([-1]))] * 2, None)
    with pytest.raises(ValueError, match='2 of 2 samples have a label outside 0..2'):
        ev.evaluate(2)
    with open(out, 'rb') as f:
        assert len(pickle.load(f)) == 2


def test_names_without_an_extension_are_checked_as_the_reader_opens_them(tmp_path):
    """'abc' is the file 'abc' when there is one, else 'abc.mp4' (what SafeDecordInit
    reads): a list naming 'abc' with only 'abc.mp4' on disk has all its videos."""
    videos = tmp_path / 'videos'
    videos.mkdir()
    for name in ('abc.mp4', 'bare', 'd.avi'):
        (videos / name).write_bytes(b'')
    (videos / 'folder').mkdir()                   # a folder is no video, and no folder.mp4
    kw = dict(data_prefix=dict(video=str(videos)), check_files=True)
    ds = build(tmp_path, 'abc 0\nbare 1\nd.avi 0\n', **kw)
    assert [f for f, _ in infos(ds)] == [f'{videos}/abc', f'{videos}/bare', f'{videos}/d.avi']
    with pytest.raises(AnnotationError) as e:
        build(tmp_path, 'abc 0\nfolder 1\nnone 0\n', **kw)
    assert "2 of 3 videos" in str(e.value)
    assert f"'{videos}/folder', '{videos}/none'" in str(e.value)
