"""Checkpoints users bring that are not a plain ``tools/train.py`` output.

1. EMA checkpoints (mmengine's ``EMAHook``). The hook swaps the two sets when it saves:
   ``state_dict`` holds the moving average, ``ema_state_dict`` the weights of the last
   training step (``module.<key>``, plus ``steps``). Every tool reads ``state_dict``, so
   ``tools/test.py``, ``load_from`` and the inference API use the average: they now say
   so. A ``--resume`` by a config without ``EMAHook`` loaded the average too and went on
   with the optimizer state of the last step's weights; it now goes on from those
   (``ema_state_dict``) and says that the averaging stops.
2. Half-precision checkpoints (``{k: v.half()}``, bf16): the start check, ``tools/test.py``'s
   check, the inference API, the converter and the CLIP loaders accept them, the weights
   load cast to fp32 and a run started from one trains in fp32.
3. A retrieval checkpoint's text tower onto the recognition text head:
   ``tools/convert/stan_public_to_mm.py IN OUT --to recognition`` renames ``text_backbone.*``
   to ``cls_head.text_encoder.*``; the recognizer embeds a class prompt as the retriever
   embeds the same text, and its video features are the retriever's.

The runs are ``tools/train.py`` / ``tools/test.py`` in process, the tiny quickstart STAN on
4 synthetic videos, batch 2, 1 epoch.
"""
import logging
import os.path as osp
import sys

import pytest
import torch
import torch.nn.functional as F

import stan_mm  # noqa: F401
from mmaction.registry import HOOKS, MODELS
from mmengine.hooks import Hook
from mmengine.registry import init_default_scope

from stan_mm.testing import load_script, tiny_clip, tiny_clip_cfg
from stan_mm.utils.checkpoint_check import check_checkpoint_fits, check_training_start
from stan_mm.utils.cli import run_tool

init_default_scope('mmaction')
torch.set_num_threads(1)

sys.path.insert(0, osp.dirname(__file__))
from test_train_tool_review_fixes import MOTION, train  # noqa: E402
from test_weight_transfer import run_log, write_config  # noqa: E402

EMA = "custom_hooks = [dict(type='EMAHook', momentum=0.5)]\n"
RECORD = "custom_hooks = [dict(type='WeightTransfer2Record')]\n"
TEST = """
test_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                       sampler=dict(type='DefaultSampler', shuffle=False),
                       dataset=dict(type='SyntheticMotionDataset', data_root=data_root,
                                    split='test', generate=motion,
                                    pipeline=_base_.test_pipeline, test_mode=True))
test_cfg = dict(type='TestLoop')
test_evaluator = [dict(type='RecognitionAccMetric')]
"""
SEEN = {}


@HOOKS.register_module(force=True)
class WeightTransfer2Record(Hook):
    """Keeps the model's weights when training starts (after the checkpoint is loaded)
    and the dtypes of its parameters during training, in :data:`SEEN`."""
    priority = 'LOWEST'

    def before_train(self, runner) -> None:
        SEEN['start'] = {k: v.detach().clone() for k, v in runner.model.state_dict().items()}
        SEEN['dtypes'] = set()

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        SEEN['dtypes'] |= {p.dtype for p in runner.model.parameters()}


@pytest.fixture(scope='module')
def ema_source(tmp_path_factory):
    """``(data_root, path, checkpoint)``: the tiny STAN trained for one epoch (2 steps)
    with ``EMAHook``."""
    from stan_mm.datasets.synthetic import generate_motion_dataset
    tmp = tmp_path_factory.mktemp('ema')
    root = tmp / 'data'
    generate_motion_dataset(str(root), **MOTION)
    assert train([write_config(tmp / 'ema.py', root, EMA), '--work-dir', tmp / 'w']) == 0
    path = str(tmp / 'w' / 'epoch_1.pth')
    ckpt = torch.load(path, weights_only=False)
    key = 'backbone.visual.conv1.weight'
    # the average differs from the last step's weights: the tests below can tell them apart
    assert not torch.equal(ckpt['state_dict'][key], ckpt['ema_state_dict']['module.' + key])
    return root, path, ckpt


def averaged(ckpt):
    return ckpt['state_dict']


def last_step(ckpt):
    return {k[7:]: v for k, v in ckpt['ema_state_dict'].items() if k.startswith('module.')}


def same_weights(a, b) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k].float(), b[k].float()) for k in a)


# ------------------------------------------------------------------ 1: EMA checkpoints
def test_test_tool_says_it_tests_the_moving_average(tmp_path, ema_source):
    """The test config has no EMAHook: the average (state_dict) is tested, and the log
    says which weights these are."""
    root, path, _ = ema_source
    cfg = write_config(tmp_path / 't.py', root, TEST)
    tool = load_script('tools/test.py', '_weight_transfer_2_test')
    assert run_tool(lambda: tool.main([cfg, path, '--work-dir', str(tmp_path / 't')]),
                    'test.py') == 0
    log = run_log(tmp_path / 't')
    assert (f'checkpoint {path} was saved by EMAHook: its state_dict holds the moving '
            f'average of 2 updates of the weights and is what is loaded here') in log
    assert 'ema_state_dict, which only a resumed run reads' in log


def test_inference_api_loads_the_moving_average_and_says_so(tmp_path, ema_source):
    from mmengine.logging import MMLogger

    from stan_mm.apis import init_model
    root, path, ckpt = ema_source
    records = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda r: records.append(r.getMessage())
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        model = init_model(write_config(tmp_path / 't.py', root, TEST), path, 'cpu')
    finally:
        logger.removeHandler(handler)
    assert same_weights(model.state_dict(), averaged(ckpt))
    assert any(r.startswith(f'checkpoint {path} was saved by EMAHook') for r in records)


@pytest.mark.parametrize('with_ema', [False, True])
def test_resume_goes_on_from_the_last_step_weights(tmp_path, ema_source, with_ema):
    """Without EMAHook in the resuming config, mmengine loaded the average (state_dict)
    and went on with the optimizer state of the last step's weights, silently; now the
    run goes on from the latter and the log says so. With EMAHook, mmengine's own swap
    (unchanged) gives the same start."""
    root, path, ckpt = ema_source
    hooks = ("custom_hooks = [dict(type='EMAHook', momentum=0.5), "
             "dict(type='WeightTransfer2Record')]\n" if with_ema else RECORD)
    cfg = write_config(tmp_path / 'r.py', root, hooks)   # 1 epoch: nothing left to train
    SEEN.clear()
    assert train([cfg, '--work-dir', tmp_path / 'w', '--resume', path]) == 0
    assert same_weights(SEEN['start'], last_step(ckpt))
    log = run_log(tmp_path / 'w')
    said = 'the checkpoint was saved by EMAHook and this config has no EMAHook' in log
    assert said != with_ema
    if not with_ema:
        assert 'the run goes on from the weights of the last training step' in log


# ------------------------------------------------------------------ 2: half precision
def test_load_from_a_half_precision_ema_checkpoint_trains_in_fp32(tmp_path, ema_source):
    """The EMA checkpoint with every floating tensor halved (to halve its size): the start
    check accepts it, the run starts from the average cast to fp32 (and says it is the
    average), trains in fp32 and saves fp32 weights."""
    root, path, ckpt = ema_source

    def half(sd):
        return {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    small = tmp_path / 'half.pth'
    torch.save({'state_dict': half(ckpt['state_dict']),
                'ema_state_dict': half(ckpt['ema_state_dict'])}, small)
    cfg = write_config(tmp_path / 'lf.py', root, RECORD + f'load_from = {str(small)!r}\n')
    SEEN.clear()
    assert train([cfg, '--work-dir', tmp_path / 'w']) == 0
    expected = {k: v.half().float() for k, v in averaged(ckpt).items()}
    assert same_weights(SEEN['start'], expected)
    assert all(SEEN['start'][k].dtype == torch.float32 for k in expected
               if ckpt['state_dict'][k].is_floating_point())
    assert SEEN['dtypes'] == {torch.float32}
    saved = torch.load(tmp_path / 'w' / 'epoch_1.pth', weights_only=False)['state_dict']
    assert {v.dtype for v in saved.values() if v.is_floating_point()} == {torch.float32}
    log = run_log(tmp_path / 'w')
    assert f'load_from {small} was saved by EMAHook' in log
    assert 'is what the run starts from' in log
    assert 'does not fit' not in log and 'fits the model only in part' not in log


def stan():
    torch.manual_seed(0)
    return MODELS.build(dict(
        type='Recognizer3D',
        backbone=dict(type='CLIPSTAN', arch=tiny_clip_cfg(), depth=2, input_layout='NCTHW'),
        cls_head=dict(type='I3DHead', in_channels=32, num_classes=5, spatial_type=None),
        data_preprocessor=dict(type='ActionDataPreprocessor', format_shape='NCTHW')))


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_checkpoint_passes_the_checks_and_loads_as_fp32(tmp_path, dtype):
    from stan_mm.apis.inference import load_weights
    source = stan().state_dict()
    small = {k: v.to(dtype) if v.is_floating_point() else v for k, v in source.items()}
    path = str(tmp_path / 'half.pth')
    torch.save({'state_dict': small}, path)
    model = stan()
    assert check_training_start(model, {'state_dict': small}, name=path) is None
    assert check_training_start(model, {'state_dict': small}, name=path, resume=True) is None
    check_checkpoint_fits(model, path)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    load_weights(model, path)                      # the inference API's loader
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert same_weights(model.state_dict(), small)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_clip_weights_load_as_fp32(tmp_path, dtype):
    """CLIP weights stored in fp16 / bf16 (open_clip keys) given as pretrained=: fp32
    parameters with the stored values."""
    from stan_mm.models.clip import build_clip
    source = tiny_clip(seed=3)
    path = tmp_path / 'clip_half.pth'
    torch.save({k: v.to(dtype) for k, v in source.state_dict().items()}, path)
    clip = build_clip(tiny_clip_cfg(), str(path))
    state = clip.state_dict()
    assert {p.dtype for p in clip.parameters()} == {torch.float32}
    for k, v in source.state_dict().items():
        assert torch.equal(state[k], v.to(dtype).float()), k


# ------------------------------------------------------------------ 3: retrieval -> recognition
def retriever(**kw):
    torch.manual_seed(0)
    return MODELS.build(dict(type='STANRetriever', arch=tiny_clip_cfg(),
                             backbone=dict(type='CLIPSTAN', depth=2, input_layout='NTCHW'),
                             **kw)).eval()


CLASSES = ['jumping rope', 'playing guitar', 'riding a bike']


def text_recognizer():
    torch.manual_seed(1)                              # other random weights than the source
    return MODELS.build(dict(
        type='Recognizer3D',
        backbone=dict(type='CLIPSTAN', arch=tiny_clip_cfg(), depth=2, input_layout='NCTHW'),
        cls_head=dict(type='TextClassifierHead', in_channels=32, classnames=CLASSES,
                      templates=['{}'], context_length=77,
                      text_encoder=dict(type='CLIPTextEncoder', arch=tiny_clip_cfg(),
                                        pretrained=None)),
        data_preprocessor=dict(type='ActionDataPreprocessor',
                               format_shape='NCTHW'))).eval()


def test_retrieval_checkpoint_becomes_a_text_head_recognizer(tmp_path, capsys):
    from stan_mm.datasets.transforms.tokenize import tokenize
    from stan_mm.utils.stan_convert import mm_to_public, retrieval_to_recognition
    source = retriever()
    sd = source.state_dict()
    # unconverted, the text tower does not reach the head; the message names the fix
    message = check_training_start(text_recognizer(), {'state_dict': sd}, name='r.pth')
    assert 'cls_head.text_encoder.* (2)' in message and '--to recognition' in message
    # an EMAHook checkpoint: its state_dict (the average) is the one converted
    src = tmp_path / 'retrieval.pth'
    torch.save({'state_dict': sd, 'meta': {'epoch': 5},
                'ema_state_dict': {'steps': torch.tensor(9),
                                   **{'module.' + k: v + 1 for k, v in sd.items()}}}, src)
    tool = load_script('tools/convert/stan_public_to_mm.py', '_weight_transfer_2_conv')
    out = tmp_path / 'recognition.pth'
    assert tool.main([str(src), str(out), '--to', 'recognition', '--strict']) == 0
    printed = capsys.readouterr().out
    assert 'text tower blocks (-> cls_head.text_encoder): 2' in printed
    assert 'EMAHook checkpoint: its state_dict' in printed
    assert 'unmapped keys: none' in printed and 'missing weights: none' in printed
    converted = torch.load(out, weights_only=True)
    model = text_recognizer()
    assert check_training_start(model, converted, name=str(out)) is None
    check_checkpoint_fits(model, converted)
    model.load_state_dict(converted['state_dict'], strict=True)

    # a class prompt ('{}': the bare name) is embedded as the retriever embeds that text,
    # and the video tower gives the retriever's features
    torch.manual_seed(2)
    clip = torch.randn(3, 4, 3, 32, 32)          # [N, T, C, H, W]: a video per class prompt
    with torch.no_grad():
        ref = source(dict(imgs=clip, text=tokenize(CLASSES, 77)), mode='tensor')
        head = model.cls_head.class_embeddings()                      # [C, E]
        video = model.backbone(clip.transpose(1, 2))                  # [N, C, T, H, W]
    torch.testing.assert_close(head, F.normalize(ref['text'].float(), dim=-1))
    torch.testing.assert_close(video, ref['video'])

    # the public layout converts the same way; a learned logit scale is named, not carried
    learned = retriever(learnable_temperature=True)
    public, _ = mm_to_public(learned.state_dict())
    pub = tmp_path / 'public.pth'
    torch.save({'state_dict': {**public, 'logit_scale': learned.logit_scale.detach()}}, pub)
    assert tool.main([str(pub), str(tmp_path / 'p.pth'), '--to', 'recognition']) == 0
    printed = capsys.readouterr().out
    assert 'source layout: public STAN' in printed
    scale = float(learned.logit_scale.detach().exp())
    assert f'model.cls_head.temperature={1 / scale:.4g}' in printed
    again = torch.load(tmp_path / 'p.pth', weights_only=True)['state_dict']
    assert same_weights(again, retrieval_to_recognition(learned.state_dict())[0])
    model.load_state_dict(again, strict=True)

    # a recognition checkpoint is not converted again
    assert tool.main([str(out), str(tmp_path / 'x.pth'), '--to', 'recognition']) == 2
    assert 'a recognition checkpoint already' in capsys.readouterr().err
