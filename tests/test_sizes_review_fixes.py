"""Review fixes about sizes: a retrieval batch of fewer than 2 videos (zero loss: warned,
drop_last in the configs), texts longer than the text model's context in embed_texts
(warned), a test split without motion twins (retrieval metrics still reported), bools
refused as CLIPSTAN ints, and top-k accuracies that are 1.0 by construction (warned).

Expected values are worked out by hand in the comments."""
import glob
import json
import os

import pytest
import torch

import stan_mm  # noqa: F401
from mmaction.registry import METRICS, MODELS
from mmaction.structures import ActionDataSample
from mmengine.config import Config

from stan_mm.models.losses import SymmetricInfoNCELoss
from stan_mm.testing import logged_warning_messages, tiny_clip_cfg

torch.set_num_threads(1)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))



def build_retriever(seed=0, **clip_overrides):
    torch.manual_seed(seed)
    return MODELS.build(dict(
        type='STANRetriever', arch=tiny_clip_cfg(**clip_overrides),
        backbone=dict(type='CLIPSTAN', depth=1, drop_path_rate=0.0, input_layout='NTCHW')))


# ------------------------------------------------------- (2) batches of fewer than 2 videos
def test_a_one_pair_batch_has_zero_loss_and_is_warned_once():
    loss = SymmetricInfoNCELoss(gather=False)
    v = torch.randn(1, 8, requires_grad=True)
    t = torch.randn(1, 8, requires_grad=True)
    with logged_warning_messages() as records:
        value = loss(v, t, 100.)
        value.backward()
        # a softmax over one logit is 1: -log 1 = 0 in both directions, gradient 0
        assert value.item() == 0.0
        assert v.grad.abs().max().item() == 0.0 and t.grad.abs().max().item() == 0.0
        loss(torch.randn(1, 8), torch.randn(1, 8), 100.)        # warned once only
    assert len(records) == 1, records
    assert 'a single caption-video pair' in records[0]
    assert 'exactly 0' in records[0] and 'weight decay' in records[0]
    assert 'drop_last=True' in records[0] and 'larger batch' in records[0]


def test_captions_of_one_video_have_zero_loss_and_are_warned():
    v, t = torch.randn(3, 8), torch.randn(3, 8)
    with logged_warning_messages() as records:
        # every off-diagonal pair shares video 5 and is masked: each row keeps its own
        # logit only, so both cross-entropies are -log 1 = 0
        value = SymmetricInfoNCELoss(gather=False)(v, t, 100., torch.tensor([5, 5, 5]))
    assert value.item() == 0.0
    assert len(records) == 1 and '3 caption-video pairs that all belong to one video' in \
        records[0]
    # two videos, or 'keep' (a shared video is a negative), or no ids: a real loss, no word
    with logged_warning_messages() as records:
        assert SymmetricInfoNCELoss(gather=False)(v, t, 100., torch.tensor([5, 5, 6])) > 0
        assert SymmetricInfoNCELoss(gather=False, duplicate_videos='keep')(
            v, t, 100., torch.tensor([5, 5, 5])) > 0
        assert SymmetricInfoNCELoss(gather=False)(v, t, 100.) > 0
    assert records == []


def test_retriever_warns_on_a_one_video_batch_without_reading_the_device(monkeypatch):
    """The ids reach the loss on the CPU: with two videos or more it knows without any
    ``torch.unique`` (a device read-back on a GPU), and a one-video batch is named."""
    model = build_retriever().train()
    gen = torch.Generator().manual_seed(0)

    def batch(video_idx):
        n = len(video_idx)
        imgs = [torch.randint(0, 256, (2, 3, 32, 32), generator=gen, dtype=torch.uint8)
                for _ in range(n)]
        text = [torch.tensor([49406, 320 + i, 49407] + [0] * 9) for i in range(n)]
        samples = [ActionDataSample(metainfo=dict(video_idx=v, sample_idx=i))
                   for i, v in enumerate(video_idx)]
        return model.data_preprocessor(dict(inputs=dict(imgs=imgs, text=text),
                                            data_samples=samples), True)

    def no_unique(*args, **kwargs):
        raise AssertionError('torch.unique called: the check read the ids back')

    monkeypatch.setattr(torch, 'unique', no_unique)
    with logged_warning_messages() as records:
        out = model(**batch([0, 1, 2]), mode='loss')
        assert out['loss'].item() > 0
        assert records == []
        out = model(**batch([7, 7]), mode='loss')          # two captions of one video
    assert out['loss'].item() == 0.0
    assert len(records) == 1 and 'all belong to one video' in records[0]


def test_retrieval_train_dataloaders_drop_the_last_batch():
    files = sorted(glob.glob(os.path.join(REPO, 'configs/_base_/datasets/*_retrieval.py')))
    assert len(files) == 4
    files += [os.path.join(REPO, 'configs/quickstart/motion_retrieval_tiny.py')]
    files += [f for f in sorted(glob.glob(os.path.join(REPO, 'configs/stan/*.py')))
              if not os.path.basename(f).startswith(('k400', 'ssv2'))]   # inherit it
    for path in files:
        cfg = Config.fromfile(path)
        assert cfg.train_dataloader.get('drop_last') is True, path
        assert not cfg.val_dataloader.get('drop_last', False), path   # every test video


def test_quickstart_training_set_is_a_whole_number_of_batches(tmp_path):
    """drop_last drops nothing in the retrieval quickstart: its training set, as the dataset
    reads it, is a multiple of the train batch size. The set is built as the config builds
    it, without rendering a video: the generator's video records for the config's
    parameters (defaults of generate_motion_dataset for those it leaves out), written as
    the generator writes the retrieval annotations, read by the config's dataset class
    with the config's dataset arguments (files not checked)."""
    import inspect
    from stan_mm.datasets.retrieval import RetrievalVideoTextDataset
    from stan_mm.datasets.synthetic import generate_motion_dataset, make_video_specs
    cfg = Config.fromfile(os.path.join(REPO, 'configs/quickstart/motion_retrieval_tiny.py'))
    loader = cfg.train_dataloader
    dataset_cfg = dict(loader.dataset)
    assert dataset_cfg.pop('type') == 'SyntheticMotionTextDataset'
    params = inspect.signature(generate_motion_dataset).bind(
        'unused', **dataset_cfg.pop('generate'))
    params.apply_defaults()
    params = params.arguments
    specs = make_video_specs(
        dataset_cfg.pop('split'), params['num_train'], seed=params['seed'],
        pairs=params['pairs'], num_frames=params['num_frames'],
        captions_per_video=params['captions_per_video'], twins=params['twins'])
    ann = tmp_path / 'train.json'      # (as synthetic._write_annotations writes it)
    ann.write_text(json.dumps({s['filename']: s['captions'] for s in specs}))
    dataset_cfg.pop('data_root')
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmaction'):     # (the pipeline's transforms)
        dataset = RetrievalVideoTextDataset(
            ann_file=str(ann), ann_format='json', data_prefix=dict(video=str(tmp_path)),
            check_files=False, **dataset_cfg)
    assert len(dataset) == 24000        # 4,800 videos x 5 captions (the config's comment)
    assert loader.drop_last is True and loader.batch_size == 32
    assert len(dataset) % loader.batch_size == 0      # 750 full batches: none dropped


# ------------------------------------- (1) a training set smaller than one batch is refused
def _runner_on(tmp_path, samples, drop_last):
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Toy(BaseModel):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(2, 1)

        def forward(self, inputs, data_samples=None, mode='loss'):
            return dict(loss=self.fc(inputs).pow(2).mean())

    data = [dict(inputs=torch.full((2, ), float(i))) for i in range(samples)]
    return Runner(
        model=Toy(), work_dir=str(tmp_path),
        experiment_name=f'empty_{tmp_path.parent.name}_{tmp_path.name}',
        train_dataloader=dict(dataset=data, batch_size=32, drop_last=drop_last,
                              num_workers=0, sampler=dict(type='DefaultSampler', shuffle=True),
                              collate_fn=dict(type='default_collate')),
        train_cfg=dict(type='ResumableEpochBasedTrainLoop', max_epochs=1),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        # (converted to iterations: what failed mmengine's assert on an epoch length of 0)
        param_scheduler=dict(type='CosineAnnealingLR', T_max=1, by_epoch=True,
                             convert_to_iter_based=True),
        default_hooks=dict(checkpoint=None), default_scope='mmaction')


def test_a_training_set_smaller_than_one_batch_is_refused_in_one_line(tmp_path, capsys):
    """4 pairs, batches of 32, drop_last=True: no batch per epoch. mmengine failed with
    'AssertionError: epoch_length must be a positive integer, but got 0' (building the
    schedules converted to iterations); the loop refuses it when it is built, with the
    sizes and the fixes, printed by the tools in one line."""
    from stan_mm.engine.loops import EmptyTrainDataloaderError
    from stan_mm.utils.cli import is_user_error, run_tool
    runner = _runner_on(tmp_path / 'a', 4, drop_last=True)
    with pytest.raises(EmptyTrainDataloaderError) as info:
        runner.train()
    message = str(info.value)
    assert is_user_error(info.value) and '\n' not in message
    assert message == (
        'the training DataLoader yields no batch per epoch, so nothing would be trained: 4 '
        'training samples, batch size 32, world size 1, drop_last=True (drop_last drops the '
        'last, partial batch of an epoch, here its only one). Fix: set --cfg-options '
        'train_dataloader.drop_last=False (an epoch is then one batch of 4), a batch size '
        'of at most 4 (train_dataloader.batch_size=4), or use more training data')
    runner = _runner_on(tmp_path / 'b', 4, drop_last=True)
    assert run_tool(runner.train, 'train.py') != 0
    err = capsys.readouterr().err
    assert 'train.py: error: ' in err and 'drop_last=True' in err
    assert 'Traceback' not in err and 'epoch_length' not in err
    # the fix it names: one batch of 4
    runner = _runner_on(tmp_path / 'c', 4, drop_last=False)
    runner.train()
    assert runner.iter == 1
    # an empty training set: no drop_last fix offered
    with pytest.raises(EmptyTrainDataloaderError, match=r'0 training samples, .*there is no '
                       r'sample to batch\)\. Fix: check the training annotations'):
        _runner_on(tmp_path / 'd', 0, drop_last=False).train()


@pytest.mark.parametrize('loop', [dict(type='EpochBasedTrainLoop', max_epochs=2),
                                  dict(type='IterBasedTrainLoop', max_iters=3)],
                         ids=['mmengine_epoch_loop', 'mmengine_iteration_loop'])
def test_mmengines_own_loops_refuse_an_empty_loader_too(tmp_path, loop):
    """mmengine's EpochBasedTrainLoop "trained" 2 epochs without a batch (no schedule
    converted to iterations); its IterBasedTrainLoop ended in a bare StopIteration. Both
    are refused when built, with the same one-line message."""
    from stan_mm.engine.loops import EmptyTrainDataloaderError
    runner = _runner_on(tmp_path / 'e', 4, drop_last=True)
    runner._train_loop = dict(loop)
    runner.param_schedulers = None
    with pytest.raises(EmptyTrainDataloaderError, match=r'^the training DataLoader yields no '
                       r'batch per epoch, so nothing would be trained: 4 training samples, '
                       r'batch size 32, world size 1, drop_last=True'):
        runner.train()
    # a non-empty loader trains as before
    runner = _runner_on(tmp_path / 'f', 4, drop_last=False)
    runner._train_loop = dict(loop)
    runner.param_schedulers = None
    runner.train()
    assert runner.iter == (2 if loop['type'] == 'EpochBasedTrainLoop' else 3)


# ------------------------------------------------------- (3) texts longer than the context
def test_embed_texts_warns_once_about_cut_texts(monkeypatch):
    import importlib
    from stan_mm.apis.embed import embed_texts
    tok_module = importlib.import_module('stan_mm.datasets.transforms.tokenize')
    model = build_retriever(text_context_length=16)
    # token counts by hand: <start_of_text> + one token per word 'a' / 'dog' + <end_of_text>
    texts = ['a dog',          # 4: fits
             'a ' * 14,        # 16: fills the row exactly, not cut
             'a ' * 15,        # 17: cut
             'dog',            # 3: fits
             'a ' * 40]        # 42: cut
    calls = []
    counter = tok_module.token_count
    monkeypatch.setattr(tok_module, 'token_count',
                        lambda text: calls.append(text) or counter(text))
    with logged_warning_messages() as records:
        emb = embed_texts(model, texts, batch_size=2)
    assert emb.shape == (5, 32)
    assert len(records) == 1, records
    msg = records[0]
    assert '2 of 5 texts' in msg and 'context of 16 tokens' in msg
    assert 'text 2 (17 tokens), 4 (42 tokens) (0-based' in msg
    # only the rows filled to their last token were counted again (texts 1, 2, 4)
    assert sorted(calls) == sorted([texts[1], texts[2], texts[4]])

    calls.clear()
    with logged_warning_messages() as records:
        embed_texts(model, ['a dog', 'dog'] * 3)
    assert records == [] and calls == []
    # many: the first 5 are named, the rest counted
    with logged_warning_messages() as records:
        embed_texts(model, ['dog'] + ['a ' * 20] * 8)
    assert len(records) == 1
    assert '8 of 9 texts' in records[0]
    assert 'text 1 (22 tokens), 2 (22 tokens), 3 (22 tokens), 4 (22 tokens), ' \
        '5 (22 tokens), ... (3 more)' in records[0]


# ------------------------------------------------------- (4) a test split without twins
def _motion_root(tmp_path):
    root = tmp_path / 'motion'
    (root / 'annotations').mkdir(parents=True)
    (root / 'meta.json').write_text(json.dumps(
        dict(files=dict(video_info='annotations/videos.json'))))
    # v0 / v1 are twins (group 0); v2 (group 1) and v3 (group 2) have their twins elsewhere
    records = [dict(filename=f'v{i}.mp4', group=g) for i, g in enumerate([0, 0, 1, 2])]
    (root / 'annotations' / 'videos.json').write_text(json.dumps(records))
    return str(root)


def _evaluate(root, videos):
    from mmengine.evaluator import Evaluator
    evaluator = Evaluator([METRICS.build(dict(type='RetrievalRecallMetric')),
                           METRICS.build(dict(type='MotionTwinRetrievalMetric',
                                              data_root=root))])
    samples = []
    for k, i in enumerate(videos):
        v = torch.zeros(4)
        v[i] = 1.0
        # each video's one caption is the video's own unit vector
        samples.append(dict(sample_idx=k, filename=f'/x/v{i}.mp4', video_feature=v,
                            text_feature=v[None].clone()))
    evaluator.process(samples)
    return evaluator, evaluator.evaluate(len(samples))


def test_twin_metric_without_twins_keeps_the_retrieval_metrics(tmp_path):
    root = _motion_root(tmp_path)
    with logged_warning_messages() as records:
        evaluator, metrics = _evaluate(root, [2, 3])       # no pair of twins among them
    # orthogonal videos, each caption equal to its video: both rank first
    assert metrics['retrieval/t2v_R1'] == 100.0 and metrics['retrieval/v2t_R1'] == 100.0
    assert not any(k.startswith('motion/') for k in metrics)
    assert len(records) == 1
    assert 'none of the 2 evaluated videos has its time-reversed twin' in records[0]
    assert 'motion/twin_t2v_acc is not reported' in records[0]
    # warned once per metric
    with logged_warning_messages() as records:
        for s, i in enumerate([2, 3]):
            v = torch.zeros(4)
            v[i] = 1.0
            evaluator.process([dict(sample_idx=s, filename=f'v{i}.mp4', video_feature=v,
                                    text_feature=v[None])])
        assert 'motion/twin_t2v_acc' not in evaluator.evaluate(2)
    assert records == []
    # with the twins: captions equal to their own video beat the twin, 100
    _, metrics = _evaluate(root, [0, 1, 2])
    assert metrics['motion/twin_t2v_acc'] == 100.0 and metrics['retrieval/t2v_R1'] == 100.0


def test_quickstart_save_best_does_not_use_the_twin_metric():
    cfg = Config.fromfile(os.path.join(REPO, 'configs/quickstart/motion_retrieval_tiny.py'))
    assert cfg.default_hooks.checkpoint.save_best == 'retrieval/t2v_R1'


# ------------------------------------------------------- (5) bools are not CLIPSTAN ints
ARCH = dict(embed_dim=24, quick_gelu=True,
            vision_cfg=dict(image_size=32, patch_size=8, width=32, layers=4, head_width=8),
            text_cfg=dict(context_length=8, vocab_size=64, width=16, heads=2, layers=1))


@pytest.mark.parametrize('kwargs, shown', [
    (dict(depth=True), 'depth=True; expected an int in [0, 4]'),
    (dict(depth=False), 'depth=False; expected an int in [0, 4]'),
    (dict(depth=2, frozen_stages=True), 'frozen_stages=True; expected an int in [-1, 4]'),
    (dict(depth=2, levels=(True, 4)), 'levels=[True, 4] is invalid'),
    (dict(depth=2, max_frames=True), 'max_frames=True; expected an int >= 1'),
    (dict(depth=2, temporal_module='conv', conv_reduction=True),
     'conv_reduction=True; expected an int >= 1'),
])
def test_clipstan_refuses_bools_for_ints(kwargs, shown):
    from stan_mm.models.backbones import CLIPSTAN
    with pytest.raises(ValueError) as info:
        CLIPSTAN(arch=ARCH, **kwargs)
    assert shown in str(info.value)


def test_clipstan_still_takes_ints():
    from stan_mm.models.backbones import CLIPSTAN
    m = CLIPSTAN(arch=ARCH, depth=2, levels=(2, 4), frozen_stages=1, max_frames=8,
                 temporal_module='conv', conv_reduction=4)
    assert m.depth == 2 and m.levels == [2, 4]


# ------------------------------------------------------- (6) top-k of k >= classes
def _acc(scores, labels):
    metric = METRICS.build(dict(type='RecognitionAccMetric'))
    samples = [dict(pred_score=torch.tensor(s), gt_label=torch.tensor([y]))
               for s, y in zip(scores, labels)]
    with logged_warning_messages() as records:
        metric.process(None, samples)
        result = metric.evaluate(len(samples))
        metric.process(None, samples)
        assert metric.evaluate(len(samples)) == result
    return result, records


def test_topk_of_all_classes_is_warned_and_keys_stay():
    # 3 classes: sample 0 right at rank 1; sample 1's label at rank 3; sample 2's at rank 3
    result, records = _acc([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1], [0.2, 0.3, 0.5]], [1, 2, 0])
    assert set(result) == {'acc/top1', 'acc/top5', 'acc/mean1'}
    assert result['acc/top1'] == pytest.approx(1 / 3)
    assert result['acc/top5'] == 1.0          # 5 >= 3 classes: every label is in the top 5
    assert result['acc/mean1'] == pytest.approx((1 + 0 + 0) / 3)
    assert len(records) == 1, records          # once, though evaluated twice
    assert 'scores 3 classes, so acc/top5 is 1.0 by construction' in records[0]
    assert 'acc/top1' not in records[0]

    # one class: top-1 as well
    result, records = _acc([[0.3], [0.9]], [0, 0])
    assert result['acc/top1'] == result['acc/top5'] == 1.0
    assert len(records) == 1
    assert 'scores 1 class, so acc/top1, acc/top5 are 1.0 by construction' in records[0]

    # 6 classes: top-5 can miss (label 5 at rank 6 below), no word
    result, records = _acc([[0.5, 0.4, 0.3, 0.2, 0.1, 0.0]], [5])
    assert result['acc/top5'] == 0.0 and records == []
