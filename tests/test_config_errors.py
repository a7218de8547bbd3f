"""Config mistakes give errors that say what to change; checkpoints that do not fit the model
are refused with the differences listed (instead of mmengine's warning + random weights).

Models are built through the registry from config dicts, as ``tools/train.py`` does.
"""
import multiprocessing as mp
import os
import os.path as osp
import sys
import traceback

import pytest
import torch

import stan_mm  # noqa: F401
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmaction.registry import MODELS

from stan_mm.testing import save_open_clip, tiny_clip, tiny_clip_cfg
from stan_mm.utils.checkpoint_check import (CheckpointMismatchError, check_checkpoint_fits,
                                            compare_state_dicts)

init_default_scope('mmaction')
REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
ARCH = tiny_clip_cfg(vision_layers=4)  # 32x32 images, patch 8, width 64, 4 blocks


def clipstan(**kwargs):
    cfg = dict(type='CLIPSTAN', arch=ARCH, depth=2, input_layout='NCTHW')
    cfg.update(kwargs)
    return MODELS.build(cfg)


def recognizer_cfg(**backbone):
    """The quickstart recognizer with a 4-block CLIP (so depth 3 is valid) and 10 classes."""
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'quickstart', 'motion_stan_tiny.py'))
    cfg.model.backbone.arch.vision_cfg.layers = 4
    cfg.model.cls_head.num_classes = 10
    cfg.model.backbone.update(backbone)
    return cfg.model


# --------------------------------------------------------------------------- config errors
def test_unknown_temporal_module():
    with pytest.raises(ValueError) as info:
        clipstan(temporal_module='lstm')
    msg = str(info.value)
    assert "temporal_module='lstm'" in msg and "'attn'" in msg and "'conv'" in msg
    with pytest.raises(ValueError, match="temporal_module='transformer'.*'attn'"):
        MODELS.build(recognizer_cfg(temporal_module='transformer'))  # nested in a recognizer


def test_more_frames_than_the_temporal_embedding():
    model = clipstan(max_frames=4).eval()
    model(torch.zeros(1, 3, 4, 32, 32))  # 4 frames fit
    with pytest.raises(ValueError) as info:
        model(torch.zeros(1, 3, 6, 32, 32))
    msg = str(info.value)
    assert 'T=6' in msg and 'max_frames=4' in msg and 'interpolate_time_embed=True' in msg
    # the option the message names works
    out = clipstan(max_frames=4, interpolate_time_embed=True).eval()(
        torch.zeros(1, 3, 6, 32, 32))
    assert out.shape == (1, ARCH['embed_dim'])


@pytest.mark.parametrize('size', [(48, 48), (33, 17)])
def test_image_size_not_matching_the_positional_embedding(size):
    model = clipstan().eval()
    with pytest.raises(ValueError) as info:
        model(torch.zeros(1, 3, 4, *size))
    msg = str(info.value)
    assert f'{size[0]}x{size[1]}' in msg and '32x32' in msg and 'crop' in msg


def test_arch_not_matching_the_weights(tmp_path):
    save_open_clip(tiny_clip(vision_layers=4), tmp_path / 'clip.pt')
    with pytest.raises(ValueError) as info:
        clipstan(arch=tiny_clip_cfg(vision_layers=4, vision_image_size=64),
                 pretrained=str(tmp_path / 'clip.pt'))
    msg = str(info.value)
    assert 'image_size' in msg and '64' in msg and '32' in msg and 'arch=None' in msg


def test_missing_pretrained_file(tmp_path):
    missing = str(tmp_path / 'ViT-B-16.pt')
    with pytest.raises(FileNotFoundError, match='ViT-B-16.pt'):
        clipstan(pretrained=missing)
    with pytest.raises(FileNotFoundError, match='ViT-B-16.pt'):
        MODELS.build(recognizer_cfg(pretrained=missing))


def test_depth_and_levels_out_of_range():
    with pytest.raises(ValueError, match=r'depth=6.*\[0, 4\].*4 blocks'):
        clipstan(depth=6)
    with pytest.raises(ValueError, match=r'levels=\[1, 1\].*strictly increasing'):
        clipstan(levels=(1, 1))


def test_wrong_layout_message_shows_the_input_shape():
    """The message must show the shape the user passed, not an internal transpose of it."""
    model = clipstan().eval()
    with pytest.raises(ValueError) as info:
        model(torch.zeros(1, 4, 3, 32, 32))  # NTCHW given to an NCTHW model
    assert '(1, 4, 3, 32, 32)' in str(info.value)


# --------------------------------------------------------------------------- checkpoints
def _ckpt(model, prefix=''):
    return dict(meta=dict(epoch=1), state_dict={prefix + k: v.clone()
                                                for k, v in model.state_dict().items()})


@pytest.fixture(scope='module')
def recognizer():
    torch.manual_seed(0)
    return MODELS.build(recognizer_cfg())


def test_fitting_checkpoint_passes(tmp_path, recognizer):
    torch.save(_ckpt(recognizer), tmp_path / 'ok.pth')
    check_checkpoint_fits(recognizer, str(tmp_path / 'ok.pth'))  # path, safe loader
    check_checkpoint_fits(recognizer, _ckpt(recognizer, prefix='module.'))  # DDP keys


def test_depth_mismatch_is_listed(recognizer):
    deeper = MODELS.build(recognizer_cfg(depth=3))
    with pytest.raises(CheckpointMismatchError) as info:
        check_checkpoint_fits(deeper, _ckpt(recognizer), name='epoch_4.pth')
    msg = str(info.value)
    assert 'epoch_4.pth' in msg
    assert 'backbone.branch.layers.2.* (' in msg  # the layer the checkpoint lacks
    assert 'depth 2 and the model 3' in msg and 'model.backbone.depth=2' in msg
    # reference: the keys the model has and the checkpoint lacks, computed here
    missing = set(deeper.state_dict()) - set(recognizer.state_dict())
    assert f'{len(missing)} model weights are missing' in msg


@pytest.mark.parametrize('temporal,value', [('conv', "'conv'"), (None, 'None')])
def test_temporal_module_mismatch_names_the_option(recognizer, temporal, value):
    """An attn checkpoint into a model built with another cross-frame module: the keys
    differ, and the hint names the option to set (as for depth)."""
    assert recognizer_cfg().backbone.get('temporal_module', 'attn') == 'attn'
    other = MODELS.build(recognizer_cfg(temporal_module=temporal))
    with pytest.raises(CheckpointMismatchError) as info:
        check_checkpoint_fits(other, _ckpt(recognizer), name='epoch_4.pth')
    assert "set model.backbone.temporal_module='attn'" in str(info.value)
    with pytest.raises(CheckpointMismatchError) as info:
        check_checkpoint_fits(recognizer, _ckpt(other), name='epoch_4.pth')
    assert f'set model.backbone.temporal_module={value}' in str(info.value)


def test_shape_mismatch_is_listed(recognizer):
    cfg = recognizer_cfg()
    cfg.cls_head.num_classes = 6
    other = MODELS.build(cfg)
    with pytest.raises(CheckpointMismatchError) as info:
        check_checkpoint_fits(other, _ckpt(recognizer))
    msg = str(info.value)
    assert '2 shape mismatches' in msg
    assert 'cls_head.fc_cls.weight: checkpoint [10, 64] vs model [6, 64]' in msg


def test_recognition_checkpoint_into_retrieval_model(recognizer):
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'quickstart', 'motion_retrieval_tiny.py'))
    retriever = MODELS.build(cfg.model)
    with pytest.raises(CheckpointMismatchError) as info:
        check_checkpoint_fits(retriever, _ckpt(recognizer))
    msg = str(info.value)
    assert 'recognition checkpoint' in msg and 'cls_head.fc_cls.* (2)' in msg
    diff = compare_state_dicts(retriever.state_dict(), recognizer.state_dict())
    assert f"{len(diff['missing'])} model weights are missing" in msg
    assert f"{len(diff['unexpected'])} checkpoint weights have no place" in msg


def test_mmengine_alone_only_warns(tmp_path, recognizer):
    """Why the check is needed: mmengine's non-strict load (what ``load_from`` does) keeps
    the random init where the checkpoint does not fit, and raises nothing."""
    from mmengine.runner.checkpoint import load_checkpoint
    deeper = MODELS.build(recognizer_cfg(depth=3))
    before = {k: v.clone() for k, v in deeper.state_dict().items()}
    torch.save(_ckpt(recognizer), tmp_path / 'r.pth')
    load_checkpoint(deeper, str(tmp_path / 'r.pth'), strict=False)
    after = deeper.state_dict()
    unchanged = [k for k in after if k.startswith('backbone.branch.layers.2.')]
    assert unchanged and all(torch.equal(before[k], after[k]) for k in unchanged)


# --------------------------------------------------------------------------- tools/test.py
def _skip_yapf():
    import mmengine.config.config as mm_config
    mm_config.FormatCode = lambda text, **kwargs: (text, None)


def _test_child(argv):
    try:
        torch.set_num_threads(1)
        _skip_yapf()
        import importlib.util
        spec = importlib.util.spec_from_file_location('_stan_test_tool',
                                                      osp.join(REPO, 'tools', 'test.py'))
        tool = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(tool)
        tool.main(argv)
    except CheckpointMismatchError:
        traceback.print_exc()
        os._exit(5)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(3)
    os._exit(0)


def _run_test_tool(tmp_path, ckpt: dict, backbone: str) -> int:
    """Exit code of tools/test.py (in a forked child) on ``ckpt`` with the quickstart config
    of 4 CLIP blocks and 10 classes, ``backbone`` (config text) added to its backbone, on a
    tiny 10-class (5-pair) motion benchmark."""
    from stan_mm.datasets.synthetic import generate_motion_dataset
    root = tmp_path / 'motion'
    motion = dict(num_train=2, num_val=2, num_test=2, num_frames=8, size=32, progress=False,
                  pairs=('horizontal', 'vertical', 'rotation', 'scale', 'fade'))
    generate_motion_dataset(str(root), **motion)
    torch.save(ckpt, tmp_path / 'ckpt.pth')
    cfg = tmp_path / 'cfg.py'
    cfg.write_text(f"""
_base_ = [{osp.join(REPO, 'configs', 'quickstart', 'motion_stan_tiny.py')!r}]
model = dict(backbone=dict({backbone}, arch=dict(vision_cfg=dict(layers=4))),
             cls_head=dict(num_classes=10))
test_evaluator = [dict(type='AccMetric')]
val_evaluator = test_evaluator
test_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                       dataset=dict(data_root={str(root)!r}, generate={motion!r}))
""")
    p = mp.get_context('fork').Process(target=_test_child, args=(
        [str(cfg), str(tmp_path / 'ckpt.pth'), '--work-dir', str(tmp_path / 'w')], ))
    p.start()
    p.join(240)
    return p.exitcode


def test_tools_test_refuses_a_checkpoint_that_does_not_fit(tmp_path, recognizer):
    # CheckpointMismatchError, not a test over random weights
    assert _run_test_tool(tmp_path, _ckpt(recognizer), 'depth=3') == 5


# ------------------------------------------------- options that leave the weights alone
def _ckpt_trained_with(model, model_cfg):
    """A checkpoint of ``model``'s weights whose meta holds a training config with
    ``model_cfg`` (what mmengine's Runner stores in ``meta['cfg']``)."""
    ckpt = _ckpt(model)
    ckpt['meta']['cfg'] = Config(dict(model=model_cfg.to_dict())).pretty_text
    return ckpt


@pytest.mark.parametrize('trained, tested, expected', [
    (dict(structure='posterior'), {},
     "model.backbone.structure: checkpoint 'posterior' vs config 'branch'"),
    (dict(levels=[2, 4]), {}, 'model.backbone.levels: checkpoint [2, 4] vs config [3, 4]'),
    ({}, dict(multi_level=False), 'model.backbone.multi_level: checkpoint True vs config False'),
    (dict(video_cls='mean'), {}, "model.backbone.video_cls: checkpoint 'mean' vs config "
                                 "'public'"),
])
def test_options_without_weights_are_compared_with_the_training_config(
        recognizer, trained, tested, expected):
    """levels, multi_level, structure and video_cls change what CLIPSTAN computes but not
    its weights: such a checkpoint loads strictly into a model built with other values. The
    training config stored in the checkpoint tells them apart."""
    model = MODELS.build(recognizer_cfg(**tested))
    ckpt = _ckpt_trained_with(recognizer, recognizer_cfg(**trained))
    assert model.load_state_dict(ckpt['state_dict'], strict=True)   # the weights fit
    with pytest.raises(CheckpointMismatchError) as info:
        check_checkpoint_fits(model, ckpt, name='abl.pth', model_cfg=recognizer_cfg(**tested))
    msg = str(info.value)
    assert msg.startswith('checkpoint abl.pth was trained with other CLIPSTAN options')
    assert expected in msg and msg.count(' vs config ') == 1
    # without the config, or without a stored training config: only the weights count
    check_checkpoint_fits(model, ckpt)
    check_checkpoint_fits(model, _ckpt(recognizer), model_cfg=recognizer_cfg(**tested))


def test_equal_options_pass_however_they_are_written(recognizer):
    """levels=None means the last `depth` CLIP blocks: [3, 4] written out is the same model;
    drop path (training only) and interpolate_time_embed (a test may turn it on for more
    frames) are not compared; an unreadable stored config is ignored."""
    ckpt = _ckpt_trained_with(recognizer, recognizer_cfg(levels=[3, 4], drop_path_rate=0.3))
    check_checkpoint_fits(recognizer, ckpt,
                          model_cfg=recognizer_cfg(interpolate_time_embed=True))
    ckpt['meta']['cfg'] = 'model = dict(backbone=dict(type="CLIPSTAN", structure=)'
    check_checkpoint_fits(recognizer, ckpt, model_cfg=recognizer_cfg())


@pytest.mark.parametrize('structure, exitcode', [('posterior', 5), ('branch', 0)])
def test_tools_test_refuses_a_checkpoint_of_another_structure(tmp_path, recognizer,
                                                               structure, exitcode):
    """tools/test.py passes the config to the check: a checkpoint trained with the default
    branch, tested with structure='posterior' (same weights), is refused; tested with the
    branch, it runs."""
    ckpt = _ckpt_trained_with(recognizer, recognizer_cfg())
    assert _run_test_tool(tmp_path, ckpt, f'structure={structure!r}') == exitcode


def test_stored_config_is_parsed_never_executed(recognizer, tmp_path):
    """meta['cfg'] is Python text a checkpoint carries: reading it must not run it (a
    weights-only load promises no code from the file)."""
    marker = tmp_path / 'ran'
    ckpt = _ckpt_trained_with(recognizer, recognizer_cfg(structure='posterior'))
    ckpt['meta']['cfg'] = (f'x = __import__("pathlib").Path({str(marker)!r}).touch()\n'
                           + ckpt['meta']['cfg'])
    with pytest.raises(CheckpointMismatchError, match="structure: checkpoint 'posterior'"):
        check_checkpoint_fits(recognizer, ckpt, model_cfg=recognizer_cfg())
    assert not marker.exists()
    # a model entry that is not a plain literal is not read at all
    ckpt['meta']['cfg'] = (f'model = dict(backbone=__import__("pathlib").Path('
                           f'{str(marker)!r}).touch())\n')
    check_checkpoint_fits(recognizer, ckpt, model_cfg=recognizer_cfg())
    assert not marker.exists()


def test_a_depth_mismatch_is_reported_as_weights_not_levels(recognizer):
    """Another depth changes the weights: the weights' message (with its depth hint), not
    a levels difference derived from it."""
    deeper = MODELS.build(recognizer_cfg(depth=3))
    ckpt = _ckpt_trained_with(recognizer, recognizer_cfg())
    with pytest.raises(CheckpointMismatchError) as info:
        check_checkpoint_fits(deeper, ckpt, model_cfg=recognizer_cfg(depth=3))
    msg = str(info.value)
    assert 'depth 2 and the model 3' in msg and 'levels' not in msg.split('hint')[0]


def test_options_that_do_not_act_are_not_compared():
    """Without a branch (depth=0) no option acts; with structure='posterior' levels and
    multi_level do not; with multi_level=False only the first level is read."""
    from stan_mm.utils.checkpoint_check import effective_options
    assert effective_options(dict(depth=0, video_cls='mean', structure='posterior'), 4) == {}
    post = dict(depth=2, structure='posterior')
    assert effective_options(dict(post, multi_level=False), 4) == \
        effective_options(post, 4) == dict(structure='posterior', video_cls='public')
    assert effective_options(dict(depth=2), 4)['levels'] == [3, 4]
    assert effective_options(dict(depth=2, multi_level=False), 4)['levels'] == [3]
    assert effective_options(dict(depth=2, levels=[1, 2], multi_level=False), 4)['levels'] \
        == [1]


def test_stored_config_literals_as_mmengine_writes_them():
    """pretty_text writes a dict with keys that are not identifiers as dict({...}) and
    float('inf') as inf: both are read (the option check would otherwise be skipped)."""
    from stan_mm.utils.checkpoint_check import saved_model_config
    model = dict(type='X', backbone=dict(type='CLIPSTAN', structure='posterior',
                                         extra={'a-b': [1, -2.5, None, True]},
                                         limit=float('inf'), pair=(1, 'x')))
    text = Config(dict(model=model)).pretty_text
    assert 'dict({' in text and '=inf' in text.replace(' ', '')
    assert saved_model_config({'meta': {'cfg': text}}) == model


# ----------------------------------------------------------------------------- launchers
def test_launcher_that_does_not_match_how_the_tool_was_started():
    """--launcher none in a torchrun worker would train WORLD_SIZE independent copies into
    one work dir; a distributed launcher without its starter's variables failed with a
    bare KeyError. Both are refused, naming the fix."""
    from stan_mm.utils.cli import CommandLineError, check_launcher
    torchrun = dict(RANK='1', WORLD_SIZE='2', MASTER_ADDR='127.0.0.1', MASTER_PORT='29500',
                    LOCAL_RANK='1')
    with pytest.raises(CommandLineError, match=r'WORLD_SIZE=2.*--launcher pytorch'):
        check_launcher('none', 'train.py', torchrun)
    check_launcher('pytorch', 'train.py', torchrun)
    check_launcher('none', 'train.py', dict(WORLD_SIZE='1'))
    check_launcher('none', 'train.py', {})
    with pytest.raises(CommandLineError, match=r'--launcher pytorch .*missing: RANK, '
                                                r'WORLD_SIZE, MASTER_ADDR, MASTER_PORT.*'
                                                r'dist_test.sh CONFIG CHECKPOINT N'):
        check_launcher('pytorch', 'test.py', {})
    with pytest.raises(CommandLineError, match=r'missing: SLURM_PROCID.*srun: bash '
                                                r'tools/slurm_train.sh PARTITION JOB_NAME '
                                                r'CONFIG;'):
        check_launcher('slurm', 'train.py', dict(SLURM_NTASKS='2', SLURM_NODELIST='n1'))
    check_launcher('slurm', 'train.py', dict(SLURM_PROCID='0', SLURM_NTASKS='2',
                                             SLURM_NODELIST='n1'))
    with pytest.raises(CommandLineError, match=r'OMPI_COMM_WORLD_LOCAL_RANK.*mpirun'):
        check_launcher('mpi', 'train.py', {})


def test_launcher_none_in_a_slurm_step_of_several_tasks_warns(capsys):
    from stan_mm.utils.cli import check_launcher
    step = dict(SLURM_PROCID='1', SLURM_NTASKS='4', SLURM_NODELIST='n1',
                SLURM_STEP_NUM_TASKS='4')
    check_launcher('none', 'train.py', step)
    err = capsys.readouterr().err
    assert 'Slurm job step of 4 tasks' in err and '--launcher slurm' in err
    check_launcher('none', 'train.py', dict(step, SLURM_STEP_NUM_TASKS='1'))  # sbatch step
    assert capsys.readouterr().err == ''


def test_train_tool_refuses_launcher_none_under_torchrun(tmp_path):
    """The tool ends with one error line and status 2 before building anything."""
    import subprocess
    env = dict(os.environ, WORLD_SIZE='2', RANK='0', OMP_NUM_THREADS='1')
    work = tmp_path / 'work'
    r = subprocess.run([sys.executable, osp.join(REPO, 'tools', 'train.py'),
                        osp.join(REPO, 'configs', 'quickstart', 'motion_stan_tiny.py'),
                        '--work-dir', str(work)], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert 'train.py: error: CommandLineError: --launcher none' in r.stderr
    assert 'Traceback' not in r.stderr and not work.exists()


def test_missing_annotation_file_is_a_located_error(tmp_path):
    """A list that is not there names itself and the data_root rule (it was a bare
    FileNotFoundError traceback from the tools)."""
    from stan_mm.datasets.readers_common import AnnotationError
    from stan_mm.utils.cli import user_errors
    init_default_scope('mmaction')
    from mmaction.registry import DATASETS
    with pytest.raises(AnnotationError, match=r'train_list.txt: annotation file not found '
                                              r'\(no such file\).*data_root') as info:
        DATASETS.build(dict(type='CheckedVideoDataset', ann_file='train_list.txt',
                            data_root=str(tmp_path), data_prefix=dict(video='videos'),
                            pipeline=[]))
    assert isinstance(info.value, FileNotFoundError)   # what callers caught before
    assert isinstance(info.value, user_errors())


def test_a_number_option_given_as_text_is_named():
    """--cfg-options optim_wrapper.optimizer.lr=1e-3x is read as a string; mmengine failed
    deep inside with "can't multiply sequence by non-int of type 'float'"."""
    from stan_mm.utils.cli import ConfigOptionError, check_numeric_options
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'stan', 'k400_self_b16.py'))
    check_numeric_options(cfg)                                   # the shipped values pass
    cfg.merge_from_dict({'train_cfg.max_epochs': 30.0})          # mmengine takes int(30.0)
    check_numeric_options(cfg)
    cfg.merge_from_dict({'optim_wrapper.optimizer.lr': '1e-3x',
                         'train_dataloader.batch_size': 2.5, 'val_dataloader.batch_size': 8.0,
                         'train_cfg.max_epochs': 30.5})
    with pytest.raises(ConfigOptionError) as info:
        check_numeric_options(cfg)
    msg = str(info.value)
    assert "optim_wrapper.optimizer.lr='1e-3x' (expected a number)" in msg
    assert 'train_dataloader.batch_size=2.5 (expected an integer)' in msg
    assert 'val_dataloader.batch_size=8.0 (expected an integer: write 8, not 8.0)' in msg
    assert 'train_cfg.max_epochs=30.5 (expected a whole number)' in msg


def test_other_prompt_templates_than_the_training_config_are_named():
    """The text head's class embeddings come from its templates, which checkpoints do not
    store: testing a checkpoint trained with 'a video of {}.' under the current '{}'
    default scores other class embeddings. The difference is named (a warning: a zero-shot
    test may want other prompts)."""
    from stan_mm.utils.checkpoint_check import prompt_differences

    def ckpt(head):
        return {'meta': {'cfg': Config(dict(model=dict(type='Recognizer3D',
                                                       cls_head=head))).pretty_text}}
    old = dict(type='TextClassifierHead', templates=['a video of {}.'], in_channels=8)
    new = dict(type='TextClassifierHead', templates=['{}'], in_channels=8)
    assert prompt_differences(dict(cls_head=new), ckpt(old)) == [
        "model.cls_head.templates: checkpoint ['a video of {}.'] vs config ['{}']"]
    assert prompt_differences(dict(cls_head=old), ckpt(old)) == []
    # a head written without templates has the class default ('a video of {}.')
    bare = {k: v for k, v in old.items() if k != 'templates'}
    assert prompt_differences(dict(cls_head=old), ckpt(bare)) == []
    assert prompt_differences(dict(cls_head=new), ckpt(bare)) != []
    assert prompt_differences(dict(cls_head=dict(type='I3DHead')), ckpt(old)) == []
    scoped = dict(new, type='mmaction.TextClassifierHead')
    assert prompt_differences(dict(cls_head=scoped), ckpt(old)) != []
    assert prompt_differences(dict(cls_head=new), {'meta': {}}) == []
