"""Review fixes for retrieval configs of a new dataset.

The dataset base configs set ``test_dataloader = val_dataloader`` and
``test_evaluator = val_evaluator``, Python aliases evaluated once in the base file: a child
config that overrides only ``val_dataloader`` (another dataset) still tests on the base's
data, and one that overrides only ``val_evaluator`` (``dsl=True``) tests without it.
tools/train.py and tools/test.py warn (stan_mm.utils.cli.warn_split_alias); the worked
example of docs/data_preparation.md ("Your own videos > Retrieval") sets all three loaders.
"""
import contextlib
import glob
import io
import os.path as osp
import re
import sys

import pytest
from mmengine.config import Config

import stan_mm  # noqa: F401
from stan_mm.utils.cli import warn_split_alias

sys.path.insert(0, osp.dirname(__file__))
from test_user_tools import load_tool  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
MSRVTT = osp.join(REPO, 'configs', 'stan', 'msrvtt_self_b32.py')
DOC = osp.join(REPO, 'docs', 'data_preparation.md')
FIX = 'a config that overrides val_dataloader must override test_dataloader too'


def warnings_of(cfg, options=None) -> str:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        warn_split_alias(cfg, 'test.py', options=options)
    return err.getvalue()


def doc_example() -> str:
    """The example child config of docs/data_preparation.md, its base made absolute."""
    text = open(DOC, encoding='utf-8').read()
    section = text[text.index('### Retrieval'):]
    code = re.search(r'```python\n(.*?)```', section, re.S).group(1)
    assert "_base_ = ['./msrvtt_self_b32.py']" in code
    return code.replace("'./msrvtt_self_b32.py'", repr(MSRVTT))


VAL_ONLY = """
val_dataloader = dict(
    dataset=dict(ann_format='json', data_root='data/vatex', ann_file='test.json',
                 data_prefix=dict(video='videos')))
"""


@pytest.mark.parametrize('path', sorted(
    glob.glob(osp.join(REPO, 'configs', 'stan', '*.py'))
    + glob.glob(osp.join(REPO, 'configs', 'quickstart', '*.py'))))
def test_shipped_configs_do_not_warn(path):
    assert warnings_of(Config.fromfile(path)) == ''


def test_doc_example_loads_and_does_not_warn(tmp_path):
    child = tmp_path / 'vatex_self_b32.py'
    child.write_text(doc_example())
    cfg = Config.fromfile(str(child))
    assert warnings_of(cfg) == ''
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dataset = cfg[loader].dataset
        assert dataset.data_root == 'data/vatex' and dataset.ann_format == 'json', loader
        assert dataset.get('caption_file') is None, loader
    assert cfg.test_dataloader.dataset.ann_file == 'test.json'
    assert cfg.test_dataloader.dataset.test_mode is True


def test_doc_example_builds_on_json_annotations(tmp_path):
    """The example's datasets read a VideoTextDataset JSON (paths moved to tmp_path)."""
    from mmengine.registry import init_default_scope
    from mmaction.registry import DATASETS
    init_default_scope('mmaction')
    root = tmp_path / 'vatex'
    (root / 'videos').mkdir(parents=True)
    for name in ('a.mp4', 'b.mp4'):
        (root / 'videos' / name).write_bytes(b'')
    ann = '{"a.mp4": ["a dog runs", "a dog"], "b.mp4": ["a cat sleeps"]}'
    (root / 'train.json').write_text(ann)
    (root / 'test.json').write_text(ann)
    child = tmp_path / 'vatex_self_b32.py'
    child.write_text(doc_example())
    cfg = Config.fromfile(str(child))
    for loader, n in (('train_dataloader', 3), ('test_dataloader', 2)):
        dataset = cfg[loader].dataset.to_dict()
        dataset.update(data_root=str(root), pipeline=[])
        assert len(DATASETS.build(dataset)) == n, loader


def test_child_overriding_only_val_dataloader_warns(tmp_path):
    child = tmp_path / 'vatex_wrong.py'
    child.write_text(f'_base_ = [{MSRVTT!r}]\n' + VAL_ONLY)
    cfg = Config.fromfile(str(child))
    assert cfg.test_dataloader.dataset.data_root == 'data/msrvtt'  # the reviewer's case
    err = warnings_of(cfg)
    assert err.startswith('test.py: warning:') and err.count('\n') == 1
    assert "val_dataloader.dataset.data_root='data/vatex'" in err
    assert "test_dataloader.dataset.data_root='data/msrvtt'" in err
    assert "val_dataloader.dataset.ann_format='json'" in err
    assert "test_dataloader.dataset.ann_format='msrvtt'" in err
    assert 'the retrieval base configs set test_dataloader = val_dataloader' in err
    assert FIX in err and '(test_dataloader = val_dataloader at its end)' in err
    # fixed as the warning says: silent
    child.write_text(child.read_text() + 'test_dataloader = val_dataloader\n')
    assert warnings_of(Config.fromfile(str(child))) == ''


def test_child_overriding_only_val_evaluator_warns(tmp_path):
    child = tmp_path / 'msrvtt_dsl.py'
    child.write_text(f'_base_ = [{MSRVTT!r}]\n'
                     f"val_evaluator = dict(type='RetrievalRecallMetric', dsl=True)\n")
    err = warnings_of(Config.fromfile(str(child)))
    assert 'test.py: warning: val_evaluator=' in err and "'dsl': True" in err
    assert 'the retrieval base configs set test_evaluator = val_evaluator' in err
    assert '(test_evaluator = val_evaluator at its end)' in err
    # the alias repeated, or a test-only setting assigned in the config itself: silent
    for tail in ('test_evaluator = val_evaluator\n',
                 "test_evaluator = dict(type='RetrievalRecallMetric')\n"):
        fixed = tmp_path / 'fixed.py'
        fixed.write_text(child.read_text() + tail)
        assert warnings_of(Config.fromfile(str(fixed))) == '', tail


def test_cfg_options_on_one_split_are_not_warned_about():
    """``--cfg-options test_evaluator.dsl=True`` (docs/retrieval.md) or a test set moved
    with ``test_dataloader.dataset.data_root=...`` is the user's choice."""
    for options in ({'test_evaluator.dsl': True},
                    {'test_dataloader.dataset.data_root': '/data/msrvtt'}):
        cfg = Config.fromfile(MSRVTT)
        cfg.merge_from_dict(options)
        assert warnings_of(cfg, options) == '', options


def test_train_and_test_tools_warn_once(tmp_path, capsys):
    child = tmp_path / 'vatex_wrong.py'
    child.write_text(f'_base_ = [{MSRVTT!r}]\n' + VAL_ONLY)
    train = load_tool('tools/train.py')
    train.merge_args(Config.fromfile(str(child)), train.parse_args([str(child)]))
    err = capsys.readouterr().err
    assert err.count('train.py: warning: the validation and test sets') == 1, err
    ckpt = tmp_path / 'c.pth'
    ckpt.write_bytes(b'')
    test = load_tool('tools/test.py')
    # --dump adds a DumpResults entry to test_evaluator: not a difference
    test.merge_args(Config.fromfile(str(child)), test.parse_args(
        [str(child), str(ckpt), '--dump', str(tmp_path / 'r.pkl')]))
    err = capsys.readouterr().err
    assert err.count('test.py: warning: the validation and test sets') == 1, err
    assert 'val_evaluator=' not in err
    test.merge_args(Config.fromfile(MSRVTT), test.parse_args(
        [MSRVTT, str(ckpt), '--dump', str(tmp_path / 'r.pkl'),
         '--cfg-options', 'test_evaluator.dsl=True']))
    assert capsys.readouterr().err == ''


def test_a_config_that_sets_its_own_test_set_or_another_spelling_is_not_warned(
        tmp_path, monkeypatch):
    """A child assigning test_dataloader itself (a zero-shot test on another dataset) is
    deliberate; 'data/x/' and './data/x' are data/x; ranks other than 0 stay quiet."""
    own = tmp_path / 'own_test.py'
    own.write_text(f"_base_ = [{MSRVTT!r}]\n" + VAL_ONLY + """
test_dataloader = dict(
    dataset=dict(ann_format='json', data_root='data/other', ann_file='t.json'))
""")
    assert warnings_of(Config.fromfile(str(own))) == ''
    slash = tmp_path / 'slash.py'
    slash.write_text(f"_base_ = [{MSRVTT!r}]\n" + """
val_dataloader = dict(dataset=dict(data_root='./data/msrvtt/'))
""")
    assert warnings_of(Config.fromfile(str(slash))) == ''
    child = tmp_path / 'val_only.py'
    child.write_text(f"_base_ = [{MSRVTT!r}]\n" + VAL_ONLY)
    cfg = Config.fromfile(str(child))
    assert FIX in warnings_of(cfg)
    monkeypatch.setenv('RANK', '1')
    assert warnings_of(cfg) == ''
    monkeypatch.setenv('RANK', '0')
    assert FIX in warnings_of(cfg)
