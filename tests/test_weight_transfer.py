"""Moving weights between setups: a training run that starts from (``load_from``) or
resumes (``--resume``) a checkpoint of another setup.

mmengine loads both non-strictly and prints what did not fit on the console only (not in
the run's log file), then trains on with those weights at their initialization.
``tools/train.py`` now checks the checkpoint first
(:func:`stan_mm.utils.checkpoint_check.check_training_start`):

- a new classification layer (fine-tuning on another class count) and a tower the
  checkpoint lacks are a WARNING in the run's log file;
- another STAN depth, cross-frame module or CLIP patch size / image size (a B/32
  checkpoint in a B/16 config) stops a ``load_from`` run naming the file and the
  difference, unless ``--partial-load``;
- a resume of a checkpoint that does not fit stops before training (it failed at the first
  optimizer step with a bare tensor-size error).

The runs are ``tools/train.py``'s ``main`` in process, the tiny quickstart STAN on 4
synthetic videos, batch 2, 1 epoch.
"""
import glob
import os.path as osp
import sys

import pytest
import torch

import stan_mm  # noqa: F401
from mmaction.registry import MODELS
from mmengine.registry import init_default_scope

from stan_mm.testing import tiny_clip_cfg
from stan_mm.utils.checkpoint_check import CheckpointMismatchError, check_training_start

init_default_scope('mmaction')
torch.set_num_threads(1)

sys.path.insert(0, osp.dirname(__file__))
from test_train_tool_review_fixes import MOTION, train  # noqa: E402
from test_train_tool_review_fixes import write_config as _write_config  # noqa: E402


def write_config(path, data_root, extra=''):
    """The tiny quickstart on ``data_root``: one epoch, no validation, one checkpoint."""
    return _write_config(path, data_root, extra, max_epochs=1, max_keep_ckpts=1)


def run_log(work_dir) -> str:
    """The log file of the (only) run in ``work_dir``."""
    dirs = sorted(d for d in glob.glob(osp.join(str(work_dir), '2*')) if osp.isdir(d))
    assert dirs, f'no run folder in {work_dir}'
    with open(osp.join(dirs[-1], osp.basename(dirs[-1]) + '.log')) as f:
        return f.read()


@pytest.fixture(scope='module')
def source(tmp_path_factory):
    """``(data_root, checkpoint)``: the tiny STAN (depth 2, attn, 8 classes, patch 8)
    trained for one epoch."""
    from stan_mm.datasets.synthetic import generate_motion_dataset
    tmp = tmp_path_factory.mktemp('transfer')
    root = tmp / 'data'
    generate_motion_dataset(str(root), **MOTION)
    work_dir = tmp / 'source'
    assert train([write_config(tmp / 'source.py', root), '--work-dir', work_dir]) == 0
    ckpt = work_dir / 'epoch_1.pth'
    assert ckpt.is_file()
    return root, str(ckpt)


# ------------------------------------------------------------------ tools/train.py runs
def test_fine_tuning_on_another_class_count_logs_the_new_head(tmp_path, source, capsys):
    """K400 -> UCF101 style: the linear head has another class count. The run goes on, and
    its log file (not only the console) says which layer starts from its init and why."""
    root, ckpt = source
    cfg = write_config(tmp_path / 'ft.py', root, extra=f"""
model = dict(cls_head=dict(num_classes=10))
load_from = {ckpt!r}
custom_hooks = [dict(type='ClassListCheckHook', strict_train=False)]
""")
    assert train([cfg, '--work-dir', tmp_path / 'w']) == 0
    log = run_log(tmp_path / 'w')
    assert 'WARNING - load_from ' + ckpt in log
    assert 'cls_head.fc_cls.weight: checkpoint [8, 64] vs model [10, 64]' in log
    assert 'for 8 classes in the checkpoint and 10 in the model' in log
    # nothing else differed: the backbone came from the checkpoint
    assert 'backbone.' not in log.split('WARNING - load_from')[1].split('\n2')[0]


def test_load_from_of_another_branch_depth_is_refused(tmp_path, source, capsys):
    root, ckpt = source
    cfg = write_config(tmp_path / 'd1.py', root, extra=f"""
model = dict(backbone=dict(depth=1))
load_from = {ckpt!r}
""")
    assert train([cfg, '--work-dir', tmp_path / 'w']) == 2
    err = capsys.readouterr().err
    assert 'CheckpointMismatchError: load_from ' + ckpt in err
    assert 'depth 2 in the checkpoint and 1 in the model' in err
    assert 'model.backbone.depth=2' in err and '--partial-load' in err
    assert not glob.glob(str(tmp_path / 'w' / '*.pth'))


def test_partial_load_starts_from_the_weights_that_fit(tmp_path, source, capsys):
    root, ckpt = source
    cfg = write_config(tmp_path / 'd1.py', root, extra=f"""
model = dict(backbone=dict(depth=1))
load_from = {ckpt!r}
""")
    assert train([cfg, '--work-dir', tmp_path / 'w', '--partial-load']) == 0
    log = run_log(tmp_path / 'w')
    assert 'WARNING - load_from ' + ckpt + ' fits the model only in part' in log
    assert 'backbone.branch.layers.1.* (20)' in log


def test_load_from_of_another_patch_size_is_refused(tmp_path, source, capsys):
    """A B/32 checkpoint in a B/16 config: same blocks, other patch embedding. mmengine
    loaded the blocks and kept the config's own patch embedding (a mixture of two
    models)."""
    root, ckpt = source
    cfg = write_config(tmp_path / 'p16.py', root, extra=f"""
model = dict(backbone=dict(arch=dict(vision_cfg=dict(patch_size=16))))
load_from = {ckpt!r}
""")
    assert train([cfg, '--work-dir', tmp_path / 'w']) == 2
    err = capsys.readouterr().err
    assert 'load_from ' + ckpt in err
    assert 'backbone.visual.conv1.weight: checkpoint [64, 3, 8, 8] vs model [64, 3, 16, 16]' \
        in err
    assert 'another image size / patch size' in err


def test_resume_of_another_model_stops_before_training(tmp_path, source, capsys):
    """It failed at the first optimizer step with 'The size of tensor a (17) must match the
    size of tensor b (5)' (the optimizer state of the checkpoint's model)."""
    root, ckpt = source
    cfg = write_config(tmp_path / 'p16.py', root, extra="""
model = dict(backbone=dict(arch=dict(vision_cfg=dict(patch_size=16))))
max_epochs = 2
train_cfg = dict(max_epochs=2)
param_scheduler = [dict(type='CosineAnnealingLR', T_max=2, eta_min=0.0, by_epoch=True,
                        begin=0, end=2, convert_to_iter_based=True)]
""")
    assert train([cfg, '--work-dir', tmp_path / 'w', '--resume', ckpt]) == 2
    err = capsys.readouterr().err
    assert 'CheckpointMismatchError: resume from ' + ckpt in err
    assert 'backbone.visual.positional_embedding: checkpoint [17, 64] vs model [5, 64]' in err
    assert f'load_from={ckpt} without --resume' in err


# ------------------------------------------------------------------ check_training_start
def stan(**kw):
    torch.manual_seed(0)
    backbone = dict(type='CLIPSTAN', arch=tiny_clip_cfg(), depth=2, input_layout='NCTHW')
    backbone.update(kw)
    return MODELS.build(dict(
        type='Recognizer3D', backbone=backbone,
        cls_head=dict(type='I3DHead', in_channels=32, num_classes=5, spatial_type=None),
        data_preprocessor=dict(type='ActionDataPreprocessor', format_shape='NCTHW')))


def retriever():
    torch.manual_seed(0)
    return MODELS.build(dict(type='STANRetriever', arch=tiny_clip_cfg(),
                             backbone=dict(type='CLIPSTAN', depth=2, input_layout='NTCHW')))


def test_another_cross_frame_module_is_refused_unless_partial():
    ckpt = {'state_dict': stan(temporal_module='attn').state_dict()}
    with pytest.raises(CheckpointMismatchError) as err:
        check_training_start(stan(temporal_module='conv'), ckpt, name='attn.pth')
    assert "cross-frame module is 'attn' in the checkpoint and 'conv' in the model" \
        in str(err.value)
    assert 'attn.pth' in str(err.value)
    message = check_training_start(stan(temporal_module='conv'), ckpt, name='attn.pth',
                                   partial=True)
    assert 'fits the model only in part' in message and 'temporal' not in message.split(
        '\n')[0]


def test_retrieval_checkpoint_starts_a_recognition_run():
    """The shared CLIPSTAN backbone transfers under the same ``backbone.`` names: the text
    tower is not used and the head starts from its init (a warning), nothing refused."""
    ckpt = {'state_dict': retriever().state_dict()}
    message = check_training_start(stan(), ckpt, name='msrvtt.pth')
    assert message.startswith('load_from msrvtt.pth fits the model only in part')
    assert 'text_backbone.' in message and 'cls_head.fc_cls.* (2)' in message
    missing = [line for line in message.split('\n') if 'missing from the checkpoint' in line]
    assert missing and 'backbone.' not in missing[0].replace('cls_head', '')


def test_backbone_alone_or_ddp_prefix():
    """A CLIPSTAN state dict saved alone (``visual.*``, ``branch.*``: no ``backbone.``) has
    no key in common with the recognizer: refused, where mmengine trained from the CLIP
    init. ``module.`` (DDP) prefixes are stripped as mmengine does."""
    model = stan()
    alone = {'state_dict': model.backbone.state_dict()}
    with pytest.raises(CheckpointMismatchError, match='no weight of the model is in the '
                       'checkpoint'):
        check_training_start(stan(), alone, name='backbone.pth')
    ddp = {'state_dict': {f'module.{k}': v for k, v in model.state_dict().items()}}
    assert check_training_start(stan(), ddp, name='ddp.pth') is None
    assert check_training_start(stan(), ddp, name='ddp.pth', resume=True) is None


def test_resume_refuses_any_difference():
    ckpt = {'state_dict': stan().state_dict()}
    other = stan()
    other.cls_head.fc_cls = torch.nn.Linear(32, 7)
    with pytest.raises(CheckpointMismatchError, match='resume from a.pth does not fit'):
        check_training_start(other, ckpt, name='a.pth', resume=True)


# ------------------------------------------------------------------ public checkpoints
def test_public_checkpoint_with_missing_weights_is_reported(tmp_path, capsys):
    """The converter listed only the source keys it did not map: a public checkpoint that
    lacked weights converted with 'unmapped keys: none' and exit 0 under --strict, and the
    model loading it kept its initialization there."""
    pytest.importorskip('transformers')
    import sys
    sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
    import test_stan_convert as conv
    from stan_mm.utils.stan_convert import missing_mm_keys, public_to_mm
    full = conv.public_state_dict(conv.hf_clip())
    out, report = public_to_mm(full)
    assert report.missing == []
    # the expected names are the model's own
    model = conv.Retrieval()
    assert missing_mm_keys({f'{t}.{k}': v for t in ('backbone', 'text_backbone')
                            for k, v in getattr(model, t).state_dict().items()}) == []
    assert sorted(out) == sorted(f'{t}.{k}' for t in ('backbone', 'text_backbone')
                                 for k in getattr(model, t).state_dict())
    pub = dict(full)
    for key in ('backbone.post_layernorm.weight', 'backbone.STAN_time_embed.weight',
                'text_backbone.text_model.final_layer_norm.bias'):
        del pub[key]
    for key in [k for k in pub if k.startswith('backbone.layers.1.')]:
        del pub[key]                      # a whole CLIP block: a gap in the numbering
    src = tmp_path / 'pub.pth'
    torch.save({'state_dict': pub}, src)
    tool = conv.load_tool('convert/stan_public_to_mm.py')
    assert tool.main([str(src), str(tmp_path / 'out.pth'), '--strict']) == 1
    printed = capsys.readouterr().out
    assert 'missing weights (15;' in printed
    for key in ('backbone.visual.ln_post.weight', 'backbone.branch.embed.time_embed.weight',
                'text_backbone.ln_final.bias',
                'backbone.visual.transformer.resblocks.1.attn.in_proj_weight'):
        assert f'\n  {key}' in printed, key
    saved = torch.load(tmp_path / 'out.pth', weights_only=True)
    assert len(saved['meta']['missing_keys']) == 15
