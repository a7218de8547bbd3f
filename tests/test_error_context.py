"""Errors that reach the user from inside the library name the thing to fix:

1. A pipeline step that needs a results key no step before it set (a frame sampler before
   the video init step, a decode step without a sampler) raised a bare ``KeyError:
   'total_frames'`` from inside a DataLoader worker: no sample, no video, no step. It is a
   ``PipelineKeyError`` naming the dataset, sample, video file, step and the step that
   sets the key; ``tools/train.py`` prints it on one line, also from a worker.
2. A user error re-raised from a DataLoader worker is printed with its own message, not
   with the worker's traceback folded into it.
3. A text classifier head tokenizing prompts longer than its text encoder takes failed at
   the first batch ("token length 77 exceeds the context length 32"); it is refused when
   the head is built, naming ``model.cls_head.context_length``.
4. A retrieval pipeline tokenizing captions longer than the retriever's CLIP takes failed
   at the first batch of that loader (for the validation loader: after a training epoch);
   ``tools/train.py`` refuses it before anything is built, naming the pipeline step. The
   text encoder's own error says how to fix the token length.
"""
import io
import os.path as osp
import sys

import pytest
import torch
from mmengine.dataset import Compose

from stan_mm.errors import ConfigValueError, PipelineKeyError
from stan_mm.testing import tiny_clip_cfg

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from test_train_tool_review_fixes import MOTION, train, write_config  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
RETRIEVAL = osp.join(REPO, 'configs', 'quickstart', 'motion_retrieval_tiny.py')


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    from stan_mm.datasets.synthetic import generate_motion_dataset
    root = tmp_path_factory.mktemp('motion') / 'data'
    generate_motion_dataset(str(root), **MOTION)
    return root


def _motion_dataset(data_root, pipeline, test_mode=False):
    from stan_mm.datasets.motion_dataset import SyntheticMotionDataset
    return SyntheticMotionDataset(data_root=str(data_root), split='val' if test_mode
                                  else 'train', pipeline=pipeline, test_mode=test_mode,
                                  generate=MOTION)


# ------------------------------------------------------------------ 1, 2: pipeline keys
def test_train_tool_names_the_step_without_its_input_from_a_worker(tmp_path, data_root,
                                                                   capsys):
    """Frame sampler first (no SafeDecordInit), read by a DataLoader worker."""
    extra = """
train_dataloader = dict(
    batch_size=2, num_workers=1, persistent_workers=False,
    dataset=dict(data_root=data_root, generate=motion, pipeline=[
        dict(type='UniformSampleFrames', clip_len=8, num_clips=1),
        dict(type='SafeDecordDecode'),
        dict(type='Resize', scale=(-1, 36)),
        dict(type='RandomCrop', size=32),
        dict(type='FormatShape', input_format='NCTHW'),
        dict(type='PackActionInputs')]))
"""
    config = write_config(tmp_path / 'c.py', data_root, extra=extra, max_epochs=1)
    assert train([config, '--work-dir', tmp_path / 'w']) == 2
    err = capsys.readouterr().err
    assert 'Traceback' not in err and 'DataLoader worker' not in err
    (line, ) = [ln for ln in err.splitlines() if ln.startswith('train.py: error: ')]
    assert line.startswith('train.py: error: PipelineKeyError: SyntheticMotionDataset sample ')
    assert str(data_root / 'videos') in line and '.mp4' in line
    assert "step 0 (UniformSampleFrames) needs results['total_frames']" in line
    assert 'SafeDecordInit' in line and 'train_dataloader.dataset.pipeline' in line


def test_decode_without_a_sampler_names_the_sample(data_root):
    ds = _motion_dataset(data_root, [dict(type='SafeDecordInit'),
                                     dict(type='SafeDecordDecode')], test_mode=True)
    with pytest.raises(PipelineKeyError) as info:
        ds[0]
    msg = str(info.value)
    assert isinstance(info.value, KeyError)           # what the step raised, as before
    assert msg.startswith(f"SyntheticMotionDataset sample 0 ({ds.get_data_info(0)['filename']})")
    assert "step 1 (SafeDecordDecode) needs results['frame_inds']" in msg
    assert 'steps before it: 0 SafeDecordInit' in msg
    assert 'frame sampler' in msg and 'val_dataloader / test_dataloader' in msg


def test_other_key_errors_and_results_pass_through_unchanged():
    from stan_mm.datasets.pipeline_context import run_pipeline

    def lookup(results):
        return {'a': 1}[results['name']]        # a KeyError of a lookup inside the step

    for name in ('b', 'video_id'):
        with pytest.raises(KeyError) as info:
            run_pipeline(Compose([lookup]), {'name': name}, 0, 'Dataset')
        assert type(info.value) is KeyError and info.value.args == (name, )
    with pytest.raises(PipelineKeyError, match=r"sample 7: pipeline step 1 \(function\) "
                       r"needs results\['imgs'\]"):
        run_pipeline(Compose([lambda r: r, lambda r: r['imgs']]), {}, 7, 'Dataset')
    assert run_pipeline(Compose([lambda r: dict(r, x=1)]), {}, 0, 'D') == {'x': 1}
    assert run_pipeline(Compose([lambda r: None, lookup]), {}, 0, 'D') is None


def test_user_error_from_a_worker_is_printed_with_its_own_message():
    from torch._utils import ExceptionWrapper

    from stan_mm.utils.cli import describe, run_tool

    def fail():
        try:
            raise ConfigValueError('Thing: value=3; expected 4')
        except ConfigValueError:
            ExceptionWrapper(where='in DataLoader worker process 0').reraise()

    with pytest.raises(ConfigValueError) as info:
        fail()
    assert 'Original Traceback' in str(info.value)
    assert describe(info.value) == 'Thing: value=3; expected 4'
    stderr, sys.stderr = sys.stderr, io.StringIO()
    try:
        assert run_tool(fail, 'x.py') == 2
        out = sys.stderr.getvalue()
    finally:
        sys.stderr = stderr
    assert out.splitlines()[0] == 'x.py: error: ConfigValueError: Thing: value=3; expected 4'


# ------------------------------------------------------------------ 3, 4: token lengths
def test_head_prompts_longer_than_its_text_encoder_are_refused_when_built():
    from mmaction.registry import MODELS
    arch = tiny_clip_cfg(text_context_length=32)
    with pytest.raises(ConfigValueError, match=r'model\.cls_head\.context_length=32'):
        MODELS.build(dict(type='TextClassifierHead', num_classes=2, in_channels=32,
                          classnames=['walking', 'running'],
                          text_encoder=dict(type='CLIPTextEncoder', arch=arch)))
    head = MODELS.build(dict(type='TextClassifierHead', in_channels=32, context_length=32,
                             classnames=['walking', 'running'],
                             text_encoder=dict(type='CLIPTextEncoder', arch=arch)))
    assert head(torch.randn(2, 32)).shape == (2, 2)


def test_train_tool_refuses_a_val_tokenizer_longer_than_the_retriever_takes(tmp_path,
                                                                             capsys):
    config = tmp_path / 'r.py'
    # (refused before anything is built; without the check, the unknown dataset type fails
    # at once too, where the quickstart would train an epoch before validating)
    config.write_text(f"""_base_ = [{RETRIEVAL!r}]
train_dataloader = dict(dataset=dict(type='NotBuiltDataset', _delete_=True))
val_dataloader = dict(dataset=dict(type='NotBuiltDataset', _delete_=True, pipeline=[
    dict(type='SafeDecordInit'), dict(type='CLIPBPETokenize', context_length=77)]))
""")
    assert train([config, '--work-dir', tmp_path / 'w']) == 2
    err = capsys.readouterr().err
    (line, ) = [ln for ln in err.splitlines() if ln.startswith('train.py: error: ')]
    assert 'ConfigOptionError: val_dataloader.dataset.pipeline.1.context_length=77' in line
    assert 'takes at most 32 tokens' in line
    assert not osp.exists(tmp_path / 'w')


def test_text_encoder_says_how_to_fix_the_token_length():
    from stan_mm.models.clip.text_encoder import CLIPTextEncoder
    encoder = CLIPTextEncoder(arch=tiny_clip_cfg(text_context_length=32))
    with pytest.raises(ValueError, match=r'CLIPBPETokenize\(context_length=32\)'):
        encoder(torch.zeros(1, 77, dtype=torch.long))
