"""ClassListCheckHook: the head's class list against the datasets' labels and num_classes,
before any batch (a name too few stopped training at the first such label with MMAction2's
"Class values must be smaller than num_classes" and no file; a test run scored every class
after a missing name as the wrong one)."""
import os
import os.path as osp
import subprocess
import sys
from types import SimpleNamespace

import pytest
from mmaction.registry import DATASETS, HOOKS

import stan_mm  # noqa: F401
from stan_mm.datasets.readers_common import AnnotationError

sys.path.insert(0, osp.dirname(__file__))
from test_clip_loading import logged_warnings  # noqa: E402
from test_recognition import REPO, write_tiny_config  # noqa: E402


def write_list(path, labels):
    with open(path, 'w') as f:
        f.writelines(f'v{i}.mp4 {label}\n' for i, label in enumerate(labels))
    return str(path)


def dataset(path, type_='CheckedVideoDataset', **kw):
    return DATASETS.build(dict(type=type_, ann_file=path, pipeline=[], **kw))


def runner_with(head, **datasets):
    """A stand-in for mmengine's Runner: the model's head and one loop per split."""
    loops = {f'{k}_loop': SimpleNamespace(dataloader=SimpleNamespace(dataset=d))
             for k, d in datasets.items()}
    return SimpleNamespace(model=SimpleNamespace(cls_head=head),
                           _val_loop=loops.get('val_loop'), **loops)


def head(n, source='classnames.txt'):
    return SimpleNamespace(num_classes=n, classnames=[f'c{i}' for i in range(n)],
                           classnames_source=source)


def test_checked_dataset_records_its_largest_label_and_line(tmp_path):
    ds = dataset(write_list(tmp_path / 'l.txt', [0, 4, 2, 4]), check_files=False)
    assert ds.max_label == (4, 2)
    multi = tmp_path / 'm.txt'
    multi.write_text('a.mp4 1 6\nb.mp4 3\n')
    ds = dataset(str(multi), check_files=False, multi_class=True, num_classes=7)
    assert ds.max_label == (6, 1)


def test_a_label_without_a_name_stops_training_and_testing(tmp_path):
    train = dataset(write_list(tmp_path / 'train.txt', [0, 1, 2, 1]), check_files=False,
                    num_classes=3)
    hook = HOOKS.build(dict(type='ClassListCheckHook'))
    with pytest.raises(AnnotationError) as e:
        hook.before_train(runner_with(head(2, '/data/cn.txt'), train=train))
    msg = str(e.value)
    assert msg.startswith(f'{tmp_path / "train.txt"}:3: label 2 has no class')
    assert "2 class names (/data/cn.txt), labels 0..1" in msg
    # testing too (a warning would leave the accuracy wrong); MMAction2's own dataset,
    # which records nothing, is scanned (no line number then)
    plain = dataset(write_list(tmp_path / 'test.txt', [0, 1, 2]), type_='VideoDataset')
    with pytest.raises(AnnotationError, match=r'test\.txt: label 2 has no class'):
        HOOKS.build(dict(type='ClassListCheckHook')).before_test(
            runner_with(head(2), test=plain))
    # inside mmengine's dataset wrappers
    from mmengine.dataset import ConcatDataset
    both = ConcatDataset([dataset(write_list(tmp_path / 'a.txt', [0]), check_files=False),
                          dataset(write_list(tmp_path / 'b.txt', [5]), check_files=False)])
    with pytest.raises(AnnotationError, match=r'b\.txt:1: label 5'):
        HOOKS.build(dict(type='ClassListCheckHook')).before_val(runner_with(head(3), val=both))


def test_num_classes_mismatch_is_an_error_in_training_a_warning_in_testing(tmp_path):
    def build():
        return dataset(write_list(tmp_path / 'l.txt', [0, 1, 2]), check_files=False,
                       num_classes=3)
    with pytest.raises(AnnotationError, match=r"num_classes=3, but the model's head has "
                                              r'4 class names \(cn\.txt\).*num_classes=4'):
        HOOKS.build(dict(type='ClassListCheckHook')).before_train(
            runner_with(head(4, 'cn.txt'), train=build()))
    with logged_warnings() as records:
        HOOKS.build(dict(type='ClassListCheckHook', strict_train=False)).before_train(
            runner_with(head(4), train=build(), val=build()))
        HOOKS.build(dict(type='ClassListCheckHook')).before_test(
            runner_with(head(4), test=build()))
    messages = [r.getMessage() for r in records if 'ClassListCheckHook' in r.getMessage()]
    assert len(messages) == 3, messages            # train (not strict), val, test
    assert all("num_classes=3, but the model's head has 4" in m for m in messages)
    # agreeing counts: silent; no head (retrieval): nothing checked
    with logged_warnings() as records:
        HOOKS.build(dict(type='ClassListCheckHook')).before_train(
            runner_with(head(3), train=build(), val=build()))
        HOOKS.build(dict(type='ClassListCheckHook')).before_train(
            runner_with(None, train=dataset(write_list(tmp_path / 'r.txt', [9]),
                                            check_files=False)))
    assert not [r for r in records if 'ClassListCheckHook' in r.getMessage()]


def test_train_tool_stops_before_the_first_batch(tmp_path):
    """tools/train.py with a class-name file one name short: exit 2 naming the list file,
    line and class file, before any iteration (the configs' default_runtime has the hook);
    one name too many: exit 2 too."""
    cfg = write_tiny_config(tmp_path, num_train=3, num_val=2)
    names = (tmp_path / 'classnames.txt').read_text().splitlines()
    env = dict(os.environ, OMP_NUM_THREADS='1')
    for bad, expected in ((names[:-1], 'label 2 has no class'),
                          (names + ['class z'], "num_classes=3, but the model's head has 4")):
        (tmp_path / 'cn.txt').write_text('\n'.join(bad) + '\n')
        r = subprocess.run(
            [sys.executable, osp.join(REPO, 'tools', 'train.py'), cfg, '--work-dir',
             str(tmp_path / 'work'), '--cfg-options',
             f'model.cls_head.classnames={tmp_path / "cn.txt"}'],
            env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2, r.stderr[-3000:]
        assert f'train.py: error: AnnotationError: {tmp_path / "train_list.txt"}' in r.stderr
        assert expected in r.stderr and f'({tmp_path / "cn.txt"})' in r.stderr
        assert 'Epoch(train)' not in r.stdout + r.stderr


def test_comma_separated_class_list_refuses_empty_names():
    """recognize.py --classnames "red,,green" scored 2 classes (the empty name dropped),
    while a file with a blank line is refused: a name list is refused the same way."""
    from stan_mm.apis.recognition import parse_classnames
    assert parse_classnames(' red, green ,blue') == ['red', 'green', 'blue']
    for value, where in (('red,,green', '2 of 3'), ('red,green,', '3 of 3'), (',red', '1 of 2')):
        with pytest.raises(ValueError, match=f'name {where} is empty'):
            parse_classnames(value)


def test_one_hot_labels_are_not_read_as_class_indices(tmp_path):
    """MMAction2's multi-label VideoDataset gives one-hot tensors: tensor([1.]) is not
    label 1 (it would be refused against a one-class head)."""
    multi = tmp_path / 'm.txt'
    multi.write_text('a.mp4 0\nb.mp4 0\n')
    ds = dataset(str(multi), type_='VideoDataset', multi_class=True, num_classes=1)
    assert ds.get_data_info(0)['label'].tolist() == [1.0]          # one-hot
    HOOKS.build(dict(type='ClassListCheckHook')).before_test(runner_with(head(1), test=ds))
