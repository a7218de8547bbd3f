"""A user's own config on top of a shipped one (``_base_ = [...stan/k400_self_b16.py]``).

mmengine evaluates a base file once: a child that sets one of the base's variables
(``data_root``, ``classnames``, ``num_classes``, ``test_crops``, ``max_epochs``,
``train_pipeline``, ...) changes the variable only, and the entries the base built from it
keep the base's value. ``tools/train.py`` and ``tools/test.py`` name those entries (they
said nothing for any of these but ``num_frames`` and ``clip_arch``); the shipped configs and
the documented child configs stay silent and take effect as written.
"""
import glob
import os.path as osp
import re

import pytest
from mmengine.config import Config

import stan_mm  # noqa: F401
from stan_mm.testing import load_script
from stan_mm.utils.cli import read_config

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
K400 = osp.join(REPO, 'configs', 'stan', 'k400_self_b16.py')


def _tool(name):
    return load_script(f'tools/{name}.py')


def _write(tmp_path, text, name='my_config.py'):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _train_warnings(capsys, tmp_path, config, options=()):
    """``tools/train.py``'s config checks (``merge_args``): the warnings printed."""
    train = _tool('train')
    argv = [config, '--work-dir', str(tmp_path / 'wd')]
    if options:
        argv += ['--cfg-options', *options]
    capsys.readouterr()
    cfg = train.merge_args(read_config(config), train.parse_args(argv))
    return cfg, [line for line in capsys.readouterr().err.splitlines()
                 if line.startswith('train.py: warning:')]


def _test_warnings(capsys, tmp_path, config, options=()):
    test = _tool('test')
    ckpt = tmp_path / 'x.pth'
    ckpt.write_bytes(b'')            # (merge_args only checks that the file exists)
    argv = [config, str(ckpt), '--work-dir', str(tmp_path / 'wd')]
    if options:
        argv += ['--cfg-options', *options]
    capsys.readouterr()
    test.merge_args(read_config(config), test.parse_args(argv))
    return [line for line in capsys.readouterr().err.splitlines()
            if line.startswith('test.py: warning:')]


def _about(warnings, name):
    found = [w for w in warnings if f' {name}=' in w.split(', but')[0]]
    assert len(found) == 1, warnings
    return found[0]


def test_base_variables_set_in_a_child_config_name_the_entries_that_kept_the_old_value(
        tmp_path, capsys):
    config = _write(tmp_path, f"""
_base_ = [{K400!r}]
data_root = '/data/ucf101'
ann_file_train = 'my_train.txt'
classnames = '/data/ucf101/classnames.txt'
num_classes = 101
test_crops = 1
test_num_clips = 4
max_epochs = 40
""")
    cfg, warnings = _train_warnings(capsys, tmp_path, config)
    # what mmengine gives: every entry still the base's (the silent part)
    assert cfg.train_dataloader.dataset.data_root == 'data/kinetics400'
    assert cfg.model.cls_head.classnames == 'data/kinetics400/classnames.txt'
    assert cfg.test_dataloader.dataset.pipeline[4].type == 'ThreeCrop'
    assert cfg.param_scheduler[1].end == 30
    assert len(warnings) == 7, warnings
    message = _about(warnings, 'data_root')
    assert message.startswith(f"train.py: warning: the config {config} sets "
                              "data_root='/data/ucf101', but a base config used data_root")
    for split in ('train', 'val', 'test'):
        assert (f"{split}_dataloader.dataset.data_root='data/kinetics400' instead of "
                f"'/data/ucf101'") in message
    # derived in the base (classnames = f'{data_root}/classnames.txt'), used by the head
    assert ("model.cls_head.classnames='data/kinetics400/classnames.txt' instead of "
            "'/data/ucf101/classnames.txt'") in message
    assert ('--cfg-options model.cls_head.classnames=/data/ucf101/classnames.txt '
            'train_dataloader.dataset.data_root=/data/ucf101') in message
    assert ("train_dataloader.dataset.ann_file='train_list.txt' instead of 'my_train.txt'"
            in _about(warnings, 'ann_file_train'))
    assert ("model.cls_head.classnames='data/kinetics400/classnames.txt' instead of "
            "'/data/ucf101/classnames.txt'" in _about(warnings, 'classnames'))
    message = _about(warnings, 'num_classes')
    assert all(f'{s}_dataloader.dataset.num_classes=400 instead of 101' in message
               for s in ('train', 'val', 'test'))
    assert ("test_dataloader.dataset.pipeline.4.type='ThreeCrop' instead of 'CenterCrop'"
            in _about(warnings, 'test_crops'))
    assert ('test_dataloader.dataset.pipeline.1.num_clips=1 instead of 4'
            in _about(warnings, 'test_num_clips'))
    message = _about(warnings, 'max_epochs')
    assert ('train_cfg.max_epochs=30 instead of 40' in message
            and 'param_scheduler.1.end=30 instead of 40' in message
            and 'param_scheduler.1.T_max=25 instead of 35' in message)
    # tools/test.py: the model and the test set only (not the training list, the schedule)
    warnings = _test_warnings(capsys, tmp_path, config)
    assert sorted(re.search(r' sets (\w+)=', w).group(1) for w in warnings) == [
        'classnames', 'data_root', 'num_classes', 'test_crops', 'test_num_clips']
    assert 'train_dataloader' not in _about(warnings, 'data_root')


def test_the_entries_the_warning_names_silence_it_and_take_effect(tmp_path, capsys):
    config = _write(tmp_path, f"""
_base_ = [{K400!r}]
data_root = '/data/ucf101'
num_classes = 101
model = dict(cls_head=dict(_base_.linear_head, num_classes=_base_.num_classes))
train_dataloader = dict(dataset=dict(data_root=data_root, num_classes=num_classes))
""")
    _, warnings = _train_warnings(capsys, tmp_path, config)
    # _base_.num_classes reads the base's 400, not the child's 101
    assert 'model.cls_head.num_classes=400 instead of 101' in _about(warnings, 'num_classes')
    message = _about(warnings, 'data_root')
    assert 'train_dataloader' not in message and 'val_dataloader.dataset.data_root' in message
    fixed = _write(tmp_path, f"""
_base_ = [{K400!r}]
data_root = '/data/ucf101'
num_classes = 101
_data = dict(data_root=data_root, num_classes=num_classes)
model = dict(cls_head=dict(_base_.linear_head, num_classes=num_classes))
train_dataloader = dict(dataset=_data)
val_dataloader = dict(dataset=_data)
test_dataloader = dict(dataset=_data)
""", 'fixed.py')
    cfg, warnings = _train_warnings(capsys, tmp_path, fixed)
    assert warnings == []
    assert cfg.model.cls_head.num_classes == 101
    assert {cfg[f'{s}_dataloader'].dataset.data_root for s in ('train', 'val', 'test')} == \
        {'/data/ucf101'}


def test_a_child_pipeline_variable_without_its_dataloader(tmp_path, capsys):
    """``train_pipeline = [...]`` alone: the dataset keeps the base's list (here: the child
    removed Flip, and training still flipped)."""
    config = _write(tmp_path, f"""
_base_ = [{K400!r}]
train_pipeline = [*_base_.train_pipeline[:6], *_base_.train_pipeline[7:]]   # no Flip
""")
    cfg, warnings = _train_warnings(capsys, tmp_path, config)
    assert any(step.type == 'Flip' for step in cfg.train_dataloader.dataset.pipeline)
    (message, ) = warnings
    assert ('train_dataloader.dataset.pipeline=[... 10 entries] instead of [... 9 entries]'
            in message)
    with open(config, 'a') as f:
        f.write('train_dataloader = dict(dataset=dict(pipeline=train_pipeline))\n')
    cfg, warnings = _train_warnings(capsys, tmp_path, config)
    assert warnings == []
    assert not any(step.type == 'Flip' for step in cfg.train_dataloader.dataset.pipeline)


def test_variables_are_traced_through_a_chain_of_configs(tmp_path, capsys):
    """A middle config (the user's own base) that builds entries from its own data_root,
    and a retrieval child whose context_length reaches the tokenizers of every pipeline."""
    _write(tmp_path, f"""
_base_ = [{K400!r}]
data_root = '/data/a'
_data = dict(data_root=data_root)
train_dataloader = dict(dataset=_data)
val_dataloader = dict(dataset=_data)
test_dataloader = dict(dataset=_data)
""", 'middle.py')
    config = _write(tmp_path, "_base_ = ['./middle.py']\ndata_root = '/data/b'\n")
    _, warnings = _train_warnings(capsys, tmp_path, config)
    message = _about(warnings, 'data_root')
    assert all(f"{s}_dataloader.dataset.data_root='/data/a' instead of '/data/b'" in message
               for s in ('train', 'val', 'test'))
    config = _write(tmp_path, f"""
_base_ = [{osp.join(REPO, 'configs', 'stan', 'msrvtt_self_b32.py')!r}]
context_length = 64
""", 'retrieval.py')
    _, warnings = _train_warnings(capsys, tmp_path, config)
    message = _about(warnings, 'context_length')
    assert ('train_dataloader.dataset.pipeline.7.context_length=32 instead of 64' in message
            and 'val_dataloader.dataset.pipeline.6.context_length=32 instead of 64'
            in message
            and 'test_dataloader.dataset.pipeline.6.context_length=32 instead of 64'
            in message)


def test_top_level_cfg_options_without_an_entry_of_that_name(tmp_path, capsys):
    """--cfg-options test_crops=1 (no entry is called test_crops) said nothing; data_root
    keeps the existing message and adds the head's class list, derived from it."""
    _, warnings = _train_warnings(capsys, tmp_path, K400,
                                  ['test_crops=1', 'data_root=/x'])
    assert len(warnings) == 3, warnings
    assert warnings[1].startswith('train.py: warning: --cfg-options gives test_crops=1, but')
    assert ('--cfg-options test_dataloader.dataset.pipeline.4.type=CenterCrop'
            in warnings[1])
    assert "--cfg-options data_root=/x changes the config's variable" in warnings[0]
    assert "model.cls_head.classnames='data/kinetics400/classnames.txt' instead of " \
        "'/x/classnames.txt'" in warnings[2]
    # the entry set too: nothing to say
    _, warnings = _train_warnings(capsys, tmp_path, K400, [
        'test_crops=1', 'test_dataloader.dataset.pipeline.4.type=CenterCrop'])
    assert warnings == []


SHIPPED = sorted(glob.glob(osp.join(REPO, 'configs', 'stan', '*.py'))
                 + glob.glob(osp.join(REPO, 'configs', 'quickstart', '*.py')))


@pytest.mark.parametrize('path', SHIPPED, ids=osp.basename)
def test_shipped_configs_have_no_stale_copies(path, tmp_path):
    from stan_mm.utils.cli import stale_variable_copies
    cfg = read_config(path)
    assert stale_variable_copies(cfg) == []
    dumped = str(tmp_path / 'dumped.py')      # a work dir's config: every variable, no base
    cfg.dump(dumped)
    assert stale_variable_copies(Config.fromfile(dumped)) == []


def _doc_block(doc, marker):
    text = open(osp.join(REPO, 'docs', doc), encoding='utf-8').read()
    return re.search(r'```python\n(' + re.escape(marker) + r'.*?)```', text, re.S).group(1)


def test_the_documented_child_configs_are_silent_and_take_effect(tmp_path, capsys):
    stan = osp.join(REPO, 'configs', 'stan')
    block = _doc_block('training_testing.md', "_base_ = ['../stan/k400_self_b16.py']")
    config = _write(tmp_path, block.replace("'../stan/", repr(stan + '/')[:-1]), 'local.py')
    cfg, warnings = _train_warnings(capsys, tmp_path, config)
    assert warnings == []
    assert cfg.model.cls_head.classnames == '/datasets/kinetics400/classnames.txt'
    assert {cfg[f'{s}_dataloader'].dataset.data_root for s in ('train', 'val', 'test')} == \
        {'/datasets/kinetics400'}
    assert cfg.train_dataloader.batch_size == 8
    assert cfg.test_dataloader.dataset.pipeline[4].type == 'CenterCrop'
    assert _test_warnings(capsys, tmp_path, config) == []
    # data_preparation.md's own-dataset and VATEX configs, and the L/14@336px variant
    own = _doc_block('data_preparation.md', '# my_dataset_stan.py').replace(
        '/path/to/stan-mm', REPO)
    vatex = _doc_block('data_preparation.md', '# configs/stan/vatex_self_b32.py').replace(
        "'./", repr(stan + '/')[:-1])
    large = _doc_block('training_testing.md', "_base_ = ['./k400_self_b16.py']\n\nclip_arch")
    large = large.replace("'./", repr(stan + '/')[:-1])
    for name, text in (('own.py', own), ('vatex.py', vatex), ('large.py', large)):
        _, warnings = _train_warnings(capsys, tmp_path, _write(tmp_path, text, name))
        assert warnings == [], (name, warnings)


def test_a_misspelled_base_variable_names_the_child_file_and_line(tmp_path, capsys):
    """``_base_.classnamez`` in a child ended in a page of mmengine traceback whose last
    line, ``'ConfigDict' object has no attribute 'classnamez'``, names no file."""
    from stan_mm.utils.cli import CommandLineError, run_tool
    config = _write(tmp_path, f"""_base_ = [{K400!r}]

model = dict(cls_head=dict(classnames=_base_.classnamez))
""")
    with pytest.raises(CommandLineError) as info:
        read_config(config)
    assert str(info.value) == (
        f"CONFIG {config!r}: {config}, line 3, reads _base_.classnamez, which none of its "
        f"_base_ files defines (did you mean _base_.classnames?). _base_.NAME is a variable "
        f"or entry of the base files as they set it")
    train = _tool('train')
    assert run_tool(lambda: train.main([config, '--work-dir', str(tmp_path / 'wd')]),
                    'train.py') == 2
    err = capsys.readouterr().err
    assert 'Traceback' not in err and 'line 3, reads _base_.classnamez' in err
    # another missing attribute (of an entry of the base) is not described as this one
    other = _write(tmp_path, f"_base_ = [{K400!r}]\nm = _base_.model.typo\n", 'other.py')
    with pytest.raises(AttributeError, match="no attribute 'typo'") as info:
        read_config(other)
    assert not isinstance(info.value, CommandLineError)
