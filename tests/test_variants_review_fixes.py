"""Review fixes for model variants, frame counts and resolutions.

1. A checkpoint trained on fewer frames than the test pipeline samples: the rows of the
   STAN temporal embedding beyond the trained count are untrained; tools/test.py warns.
2. Top-level config variables (clip_arch, num_frames) set where they do nothing: warned,
   naming the fields that take effect.
3. A recognition backbone and text head of different CLIPs: warned.
4. Late or misleading errors: a backbone/head width mismatch is refused before anything is
   built; the frame-size error says the weights must match the resolution; get_flops.py
   ends with one line on a shape the config cannot take; shape-mismatch hints name image /
   patch size and max_frames.
"""
import importlib.util
import os.path as osp
import subprocess
import sys

import pytest
import torch

import stan_mm  # noqa: F401
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmaction.registry import MODELS

from stan_mm.testing import tiny_clip_cfg
from stan_mm.utils.checkpoint_check import (CheckpointMismatchError, check_checkpoint_fits,
                                            frame_sampler, trained_frames,
                                            untrained_frames_warning)
from stan_mm.utils.cli import ConfigOptionError, check_model_variant

init_default_scope('mmaction')
REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
QUICKSTART = osp.join(REPO, 'configs', 'quickstart', 'motion_stan_tiny.py')
K400 = osp.join(REPO, 'configs', 'stan', 'k400_self_b16.py')
ARCH = tiny_clip_cfg(vision_layers=4)  # 32x32 images, patch 8, width 64, 4 blocks


def load_tool(rel_path: str):
    spec = importlib.util.spec_from_file_location(
        '_variants_' + osp.basename(rel_path)[:-3], osp.join(REPO, rel_path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def quickstart_cfg(train_frames=8, test_frames=8, **backbone) -> Config:
    """The quickstart config (4 CLIP blocks, 10 classes) with its samplers set to the
    given frame counts."""
    cfg = Config.fromfile(QUICKSTART)
    cfg.model.backbone.arch.vision_cfg.layers = 4
    cfg.model.cls_head.num_classes = 10
    cfg.model.backbone.update(backbone)
    cfg.train_dataloader.dataset.pipeline[1].clip_len = train_frames
    cfg.test_dataloader.dataset.pipeline[1].clip_len = test_frames
    return cfg


def trained_ckpt(model, cfg_text):
    """What mmengine's Runner writes: the weights and the training config as text."""
    return dict(meta=dict(epoch=1, cfg=cfg_text),
                state_dict={k: v.clone() for k, v in model.state_dict().items()})


@pytest.fixture(scope='module')
def recognizer():
    torch.manual_seed(0)
    return MODELS.build(quickstart_cfg().model)


# ---------------------------------------------------- 1. more test frames than trained
def test_more_test_frames_than_trained_warns_naming_both_counts(recognizer, monkeypatch):
    trained = quickstart_cfg(train_frames=4)
    ckpt = trained_ckpt(recognizer, trained.pretty_text)
    assert trained_frames(ckpt) == 4
    tested = quickstart_cfg(test_frames=8)
    msg = untrained_frames_warning(recognizer, ckpt, tested, 'epoch_5.pth')
    assert msg is not None
    assert msg.startswith('checkpoint epoch_5.pth was trained on 4-frame clips')
    assert 'tests 8 frames (test_dataloader.dataset.pipeline.1.clip_len=8)' in msg
    assert 'rows 5-8 of the STAN temporal embedding (backbone.branch.embed.time_embed' in msg
    assert 'never trained' in msg
    assert '--cfg-options test_dataloader.dataset.pipeline.1.clip_len=4' in msg
    assert 'train at 8 frames' in msg
    # check_checkpoint_fits logs it as a WARNING (the weights fit: nothing is raised)
    import logging
    import mmengine.logging
    logged = []
    monkeypatch.setattr(mmengine.logging, 'print_log',
                        lambda m, **kw: logged.append((m, kw.get('level'))))
    check_checkpoint_fits(recognizer, ckpt, name='epoch_5.pth', model_cfg=tested.model,
                          config=tested)
    assert logged == [(msg, logging.WARNING)]


def test_frame_count_read_from_the_train_pipeline_variable_or_inline(recognizer):
    """The train pipeline is read from train_dataloader (what takes effect), else from a
    train_pipeline variable; never executed."""
    inline = ('train_dataloader = dict(batch_size=2, dataset=dict(type="RepeatDataset", '
              'times=2, dataset=dict(type="X", pipeline=[dict(type="DecordInit"), '
              'dict(type="SampleFrames", clip_len=6, frame_interval=2, num_clips=1)])))\n')
    assert trained_frames({'meta': {'cfg': inline}}) == 6
    variable = ('train_pipeline = [dict(type="DecordInit"), '
                'dict(type="UniformSample", clip_len=12)]\n'
                'train_dataloader = dict(dataset=dict(pipeline=__import__("os").getcwd()))\n')
    assert trained_frames({'meta': {'cfg': variable}}) == 12
    assert frame_sampler(quickstart_cfg(), 'test_dataloader') == (
        'test_dataloader.dataset.pipeline.1.clip_len', 8)


def test_no_warning_without_cause(recognizer):
    """Same or fewer frames, no stored config, an unreadable one, a model without a STAN
    branch: silence."""
    ckpt = trained_ckpt(recognizer, quickstart_cfg(train_frames=8).pretty_text)
    for frames in (8, 4):
        assert untrained_frames_warning(recognizer, ckpt, quickstart_cfg(test_frames=frames)
                                        ) is None
    many = quickstart_cfg(test_frames=16)
    assert untrained_frames_warning(recognizer, ckpt, many) is not None
    for meta in ({}, {'cfg': 'train_dataloader = dict(dataset=dict(pipeline=[dict('}):
        assert untrained_frames_warning(recognizer, dict(ckpt, meta=meta), many) is None
    plain = MODELS.build(quickstart_cfg(depth=0).model)
    assert untrained_frames_warning(plain, trained_ckpt(plain, ckpt['meta']['cfg']),
                                    many) is None


def test_interpolated_table_is_named_as_such():
    model = MODELS.build(quickstart_cfg(max_frames=8, interpolate_time_embed=True).model)
    ckpt = trained_ckpt(model, quickstart_cfg(train_frames=4).pretty_text)
    msg = untrained_frames_warning(model, ckpt, quickstart_cfg(test_frames=12))
    assert 'interpolated from all its max_frames=8 rows' in msg
    assert 'only the first 4 were trained' in msg


def test_tools_test_warns_about_untrained_frames(tmp_path, recognizer):
    """tools/test.py passes the config: an 8-frame test of a checkpoint trained on 4
    frames runs, with the warning in its log."""
    from stan_mm.datasets.synthetic import generate_motion_dataset
    root = tmp_path / 'motion'
    motion = dict(num_train=2, num_val=2, num_test=2, num_frames=8, size=32, progress=False,
                  pairs=('horizontal', 'vertical', 'rotation', 'scale', 'fade'))
    generate_motion_dataset(str(root), **motion)
    torch.save(trained_ckpt(recognizer, quickstart_cfg(train_frames=4).pretty_text),
               tmp_path / 'ckpt.pth')
    cfg = tmp_path / 'cfg.py'
    cfg.write_text(f"""
_base_ = [{QUICKSTART!r}]
model = dict(backbone=dict(arch=dict(vision_cfg=dict(layers=4))), cls_head=dict(num_classes=10))
test_evaluator = [dict(type='AccMetric')]
test_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                       dataset=dict(data_root={str(root)!r}, generate={motion!r}))
""")
    r = subprocess.run([sys.executable, osp.join(REPO, 'tools', 'test.py'), str(cfg),
                        str(tmp_path / 'ckpt.pth'), '--work-dir', str(tmp_path / 'w')],
                       capture_output=True, text=True, timeout=600,
                       env=dict(__import__('os').environ, OMP_NUM_THREADS='1'))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert 'was trained on 4-frame clips' in out and 'tests 8 frames' in out
    assert 'rows 5-8 of the STAN temporal embedding' in out


# ------------------------------------------------ 2. variables that are not re-evaluated
def test_clip_arch_and_num_frames_overrides_that_do_nothing_are_named(capsys):
    cfg = Config.fromfile(K400)
    options = {'clip_arch': 'ViT-L/14', 'num_frames': 16}               # --cfg-options
    cfg.merge_from_dict(options)
    check_model_variant(cfg, 'test.py', loaders=('test_dataloader', ), options=options)
    err = capsys.readouterr().err
    assert ("test.py: warning: the config sets clip_arch='ViT-L/14', but the model is built "
            "with model.backbone.arch='ViT-B/16'") in err
    assert ('model.backbone.arch, model.backbone.pretrained, model.cls_head.in_channels, '
            'model.cls_head.text_encoder.arch and .pretrained') in err
    assert ('the config sets num_frames=16, but the frame sampler takes '
            'test_dataloader.dataset.pipeline.1.clip_len=8') in err
    # retrieval: the CLIP is the retriever's
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'stan', 'msrvtt_self_b32.py'))
    cfg.merge_from_dict({'clip_arch': 'ViT-B/16'})
    check_model_variant(cfg, 'train.py', options={'clip_arch': 'ViT-B/16'})
    err = capsys.readouterr().err
    assert "model.arch='ViT-B/32'" in err and 'model.arch and model.pretrained' in err


def test_child_config_setting_only_num_frames_is_warned_by_train_py(tmp_path, capsys):
    child = tmp_path / 'k400_16f_wrong.py'
    child.write_text(f'_base_ = [{K400!r}]\nnum_frames = 16\n')
    train = load_tool('tools/train.py')
    train.merge_args(Config.fromfile(str(child)), train.parse_args([str(child)]))
    err = capsys.readouterr().err
    assert 'train.py: warning: the config sets num_frames=16' in err
    assert 'train_dataloader.dataset.pipeline.1.clip_len=8' in err
    assert 'val_dataloader.dataset.pipeline.1.clip_len=8' in err
    # and tools/test.py, through --cfg-options
    ckpt = tmp_path / 'c.pth'
    ckpt.write_bytes(b'')
    test = load_tool('tools/test.py')
    test.merge_args(Config.fromfile(K400), test.parse_args(
        [K400, str(ckpt), '--cfg-options', 'clip_arch=ViT-B/32']))
    assert "test.py: warning: the config sets clip_arch='ViT-B/32'" in capsys.readouterr().err


def test_fields_set_directly_are_not_warned_about(tmp_path, capsys):
    """clip_arch / num_frames left in their base file while the user sets the fields that
    take effect (as docs and warnings advise) is no mistake: no warning."""
    train = load_tool('tools/train.py')
    test = load_tool('tools/test.py')
    ckpt = tmp_path / 'c.pth'
    ckpt.write_bytes(b'')
    l14 = ['model.backbone.arch=ViT-L/14', 'model.backbone.pretrained=l14.pt',
           'model.cls_head.in_channels=768', 'model.cls_head.text_encoder.arch=ViT-L/14',
           'model.cls_head.text_encoder.pretrained=l14.pt']
    frames16 = [f'{loader}.dataset.pipeline.1.clip_len=16'
                for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    for argv in (l14, frames16, ['model.backbone.arch=None', 'model.cls_head.in_channels=512']):
        train.merge_args(Config.fromfile(K400),
                         train.parse_args([K400, '--cfg-options', *argv]))
        assert capsys.readouterr().err == '', argv
    # the 16-frame config tested at 8 frames, as the frame-count warning advises
    k16 = osp.join(REPO, 'configs', 'stan', 'k400_self_b16_16f.py')
    test.merge_args(Config.fromfile(k16), test.parse_args(
        [k16, str(ckpt), '--cfg-options', 'test_dataloader.dataset.pipeline.1.clip_len=8']))
    assert capsys.readouterr().err == ''
    # a child config that sets the fields itself and leaves clip_arch alone
    child = tmp_path / 'k400_l14.py'
    child.write_text(f'_base_ = [{K400!r}]\n'
                     f'model = dict(backbone=dict(arch="ViT-L/14"), '
                     f'cls_head=dict(in_channels=768, text_encoder=dict(arch="ViT-L/14")))\n')
    train.merge_args(Config.fromfile(str(child)), train.parse_args([str(child)]))
    assert capsys.readouterr().err == ''


def test_shipped_configs_and_consistent_variants_are_silent(capsys):
    import glob
    for path in sorted(glob.glob(osp.join(REPO, 'configs', 'stan', '*.py'))
                       + glob.glob(osp.join(REPO, 'configs', 'quickstart', 'motion_*.py'))):
        check_model_variant(Config.fromfile(path), 'test.py')
        assert capsys.readouterr().err == '', path
    # the 16-frame config sets num_frames and the samplers; the OpenAI and open_clip
    # spellings of one CLIP are one CLIP
    cfg = Config.fromfile(K400)
    cfg.merge_from_dict({'clip_arch': 'ViT-B-16-quickgelu'})
    check_model_variant(cfg, 'test.py')
    assert capsys.readouterr().err == ''


# ------------------------------------------------------- 3. backbone and head CLIPs
@pytest.mark.parametrize('options, expected', [
    ({'model.cls_head.text_encoder.arch': 'ViT-B/32'},
     "model.backbone.arch='ViT-B/16' vs model.cls_head.text_encoder.arch='ViT-B/32'"),
    ({'model.cls_head.text_encoder.pretrained': 'checkpoints/clip/other.pt'},
     "model.backbone.pretrained='checkpoints/clip/ViT-B-16.pt' vs "
     "model.cls_head.text_encoder.pretrained='checkpoints/clip/other.pt'"),
])
def test_backbone_and_text_head_of_different_clips_are_warned(capsys, options, expected):
    cfg = Config.fromfile(K400)
    cfg.merge_from_dict(options)
    check_model_variant(cfg, 'train.py')
    err = capsys.readouterr().err
    assert ('train.py: warning: the backbone and the text classifier head come from '
            'different CLIPs') in err
    assert expected in err


def test_documented_test_without_clip_file_is_silent(capsys):
    """docs: --cfg-options model.backbone.pretrained=None
    model.cls_head.text_encoder.pretrained=None (both unset: nothing to compare); one of
    them unset is not compared either."""
    for options in ({'model.backbone.pretrained': None,
                     'model.cls_head.text_encoder.pretrained': None},
                    {'model.backbone.pretrained': None}):
        cfg = Config.fromfile(K400)
        cfg.merge_from_dict(options)
        check_model_variant(cfg, 'test.py')
        assert capsys.readouterr().err == ''


# ---------------------------------------------------------- 4. late / misleading errors
def test_l14_backbone_with_the_b16_head_is_refused_before_building(tmp_path):
    cfg = Config.fromfile(K400)
    cfg.merge_from_dict({'model.backbone.arch': 'ViT-L/14'})
    with pytest.raises(ConfigOptionError) as info:
        check_model_variant(cfg, 'test.py')
    msg = str(info.value)
    assert "model.backbone.arch='ViT-L/14' gives 768-d video embeddings" in msg
    assert 'model.cls_head.in_channels=512' in msg
    assert 'Set model.cls_head.in_channels=768' in msg
    assert "model.cls_head.text_encoder.arch='ViT-L/14' (now 'ViT-B/16', 512-d)" in msg
    # through the tool: an error of the user's (exit 2, one line), not a late traceback
    from stan_mm.utils.cli import user_errors
    assert isinstance(info.value, user_errors())
    ckpt = tmp_path / 'c.pth'
    ckpt.write_bytes(b'')
    test = load_tool('tools/test.py')
    with pytest.raises(ConfigOptionError, match='model.cls_head.in_channels'):
        test.merge_args(Config.fromfile(K400), test.parse_args(
            [K400, str(ckpt), '--cfg-options', 'model.backbone.arch=ViT-L/14']))
    # the head and the text encoder of L/14 too: fine
    cfg.merge_from_dict({'model.cls_head.in_channels': 768,
                         'model.cls_head.text_encoder.arch': 'ViT-L/14'})
    check_model_variant(cfg, 'test.py')


def test_text_head_width_message_names_the_config_fields():
    from stan_mm.models.heads.text_classifier_head import TextClassifierHead
    head = TextClassifierHead(['a', 'b'], in_channels=32, context_length=16,
                              text_encoder=dict(type='CLIPTextEncoder', arch=tiny_clip_cfg()))
    with pytest.raises(ValueError) as info:
        head(torch.zeros(1, 48))
    msg = str(info.value)
    assert 'expects video embeddings [N, 32], got (1, 48)' in msg
    assert 'model.cls_head.in_channels=32' in msg and 'model.cls_head.text_encoder' in msg


def test_frame_size_error_says_the_weights_must_match_the_resolution():
    model = MODELS.build(dict(type='CLIPSTAN', arch=ARCH, depth=2,
                              input_layout='NCTHW')).eval()
    with pytest.raises(ValueError) as info:
        model(torch.zeros(1, 3, 4, 48, 48))
    msg = str(info.value)
    assert 'image_size is 48x48 with weights trained at that size' in msg
    assert 'not interpolated' in msg


def test_get_flops_shape_the_config_cannot_take_is_one_line():
    flops = load_tool('tools/analysis/get_flops.py')
    from stan_mm.utils.cli import CommandLineError
    with pytest.raises(CommandLineError) as info:
        flops.main([K400, '--shape', '80', '224', '224'])
    msg = str(info.value)
    assert msg.startswith('--shape 80 224 224: the STAN branch of this config takes at most '
                          'max_frames=64 frames')
    assert '--cfg-options model.backbone.max_frames=80' in msg
    r = subprocess.run([sys.executable, osp.join(REPO, 'tools', 'analysis', 'get_flops.py'),
                        K400, '--shape', '8', '336', '336'],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert 'Traceback' not in r.stderr
    assert ("get_flops.py: error: CommandLineError: --shape 8 336 336: this config's CLIP "
            "takes 224x224 frames") in r.stderr
    assert '--image-size 336' in r.stderr


def test_shape_mismatch_hints_name_image_size_and_max_frames():
    small = MODELS.build(quickstart_cfg().model)
    big = quickstart_cfg(max_frames=32)
    big.model.backbone.arch.vision_cfg.image_size = 64
    with pytest.raises(CheckpointMismatchError) as info:
        check_checkpoint_fits(MODELS.build(big.model), trained_ckpt(small, None))
    msg = str(info.value)
    assert ('hint: backbone.visual.positional_embedding: the checkpoint was trained at '
            'another image size / patch size (4x4 patches per frame vs 8x8 patches in the '
            'model') in msg
    assert ('hint: backbone.branch.embed.time_embed.weight: the checkpoint\'s STAN temporal '
            'embedding has 64 rows') in msg
    assert 'max_frames differs; set model.backbone.max_frames=64' in msg


# ----------------------------------------------------------------------------- docs
def test_docs_describe_the_variants_and_their_example_config_loads(tmp_path, capsys):
    from stan_mm.utils.flops import shape_from_config
    doc = open(osp.join(REPO, 'docs', 'training_testing.md')).read()
    assert '## Model variants (B/32, B/16, L/14, L/14@336, other frame counts)' in doc
    assert 'interpolate_time_embed' in doc and 'indexed by frame position' in doc
    assert 'Positional-embedding interpolation of the image tower is not implemented' in doc
    block = doc.split('A child config for K400 with L/14@336px:\n\n```python\n')[1]
    block = block.split('```')[0].replace("'./k400_self_b16.py'", repr(K400))
    (tmp_path / 'l14.py').write_text(block)
    cfg = Config.fromfile(str(tmp_path / 'l14.py'))
    check_model_variant(cfg, 'train.py')
    assert capsys.readouterr().err == ''
    assert shape_from_config(cfg) == (8, 336, 336)
    assert cfg.train_dataloader.dataset.pipeline[5].scale == (336, 336)
