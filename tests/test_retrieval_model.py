"""STANRetriever: the loss against a hand computation, the global-batch gather on 2 processes
against one process, predict's output contract, one CLIP for both towers, the public
checkpoint key layout, the frozen text tower, and the ten paper configs."""
import math
import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

import stan_mm  # noqa: F401
from mmaction.registry import MODELS, TRANSFORMS
from mmaction.structures import ActionDataSample
from mmengine.config import Config

from stan_mm.models.losses import SymmetricInfoNCELoss
from stan_mm.models.retrievers import CLIP_MEAN, CLIP_STD
from stan_mm.testing import save_open_clip, tiny_clip, tiny_clip_cfg

torch.set_num_threads(1)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EOT = 49407  # CLIP's end-of-text id (the largest id: pooled at argmax)
T, SIZE, L = 3, 32, 12


def build_model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(type='STANRetriever', arch=tiny_clip_cfg(),
               backbone=dict(type='CLIPSTAN', depth=2, drop_path_rate=0.0,
                             input_layout='NTCHW'))
    cfg.update(kw)
    return MODELS.build(cfg)


def make_tokens(n, gen):
    tok = torch.randint(1, 1000, (n, L), generator=gen)
    ends = torch.randint(3, L, (n, ), generator=gen)
    for i, e in enumerate(ends.tolist()):
        tok[i, e] = EOT
        tok[i, e + 1:] = 0
    return tok


def make_batch(n, seed=0):
    """n uint8 videos [T, C, H, W] and n captions [L], as the pipeline packs them."""
    gen = torch.Generator().manual_seed(seed)
    videos = [torch.randint(0, 256, (T, 3, SIZE, SIZE), generator=gen, dtype=torch.uint8)
              for _ in range(n)]
    return videos, list(make_tokens(n, gen))


def samples(video_idx):
    return [ActionDataSample(metainfo=dict(video_idx=v, sample_idx=i))
            for i, v in enumerate(video_idx)]


# --------------------------------------------------------------------------- the loss
def hand_infonce(v, t, scale, ids=None):
    """Written from the formula with plain Python loops: L2 normalize, S = scale * cos,
    video->text and text->video cross-entropy (mean over rows), summed; off-diagonal pairs
    of the same video leave both denominators."""
    def unit(row):
        n = math.sqrt(sum(x * x for x in row))
        return [x / n for x in row]
    v = [unit(r) for r in v.tolist()]
    t = [unit(r) for r in t.tolist()]
    B = len(v)
    S = [[scale * sum(a * b for a, b in zip(v[i], t[j])) for j in range(B)] for i in range(B)]

    def kept(i, j):
        return i == j or ids is None or ids[i] != ids[j]
    v2t = t2v = 0.0
    for i in range(B):
        v2t += -(S[i][i] - math.log(sum(math.exp(S[i][j]) for j in range(B) if kept(i, j))))
        t2v += -(S[i][i] - math.log(sum(math.exp(S[j][i]) for j in range(B) if kept(j, i))))
    return v2t / B + t2v / B


def test_symmetric_infonce_equals_hand_computation():
    gen = torch.Generator().manual_seed(3)
    v, t = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
    ids = [4, 1, 4, 2, 1, 7]
    loss = SymmetricInfoNCELoss()
    got = loss(v, t, 7.5)
    assert got.item() == pytest.approx(hand_infonce(v, t, 7.5), rel=1e-5)
    # duplicate videos: masked out of the denominators, or kept as negatives
    got = loss(v, t, 7.5, torch.tensor(ids))
    assert got.item() == pytest.approx(hand_infonce(v, t, 7.5, ids), rel=1e-5)
    assert got.item() != pytest.approx(hand_infonce(v, t, 7.5), rel=1e-3)
    keep = SymmetricInfoNCELoss(duplicate_videos='keep')(v, t, 7.5, torch.tensor(ids))
    assert keep.item() == pytest.approx(hand_infonce(v, t, 7.5), rel=1e-5)
    # the two directions are summed: at scale 0 each is log(B)
    assert loss(v, t, 0.0).item() == pytest.approx(2 * math.log(6), rel=1e-6)
    with pytest.raises(ValueError, match='duplicate_videos'):
        SymmetricInfoNCELoss(duplicate_videos='ignore')
    with pytest.raises(ValueError, match=r'\[B, E\]'):
        loss(v, t[:5], 7.5)


def test_infonce_logits_stay_fp32_under_autocast():
    """cosine / tau with tau = 0.01: bf16 logits would be off by up to ~0.2. Inside an
    autocast region the logits are still computed in fp32, equal to the plain run."""
    gen = torch.Generator().manual_seed(0)
    v, t = torch.randn(64, 32, generator=gen), torch.randn(64, 32, generator=gen)
    loss = SymmetricInfoNCELoss(gather=False)
    plain, _ = loss.similarity(v, t, 100.0)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        amp, _ = loss.similarity(v.bfloat16(), t.bfloat16(), 100.0)
        amp_loss = loss(v, t, 100.0)
    assert amp.dtype == torch.float32
    ref, _ = loss.similarity(v.bfloat16().float(), t.bfloat16().float(), 100.0)
    torch.testing.assert_close(amp, ref)                  # only the inputs were bf16
    assert amp_loss.dtype == torch.float32
    assert amp_loss.item() == pytest.approx(loss(v, t, 100.0).item(), rel=1e-6)
    assert plain.dtype == torch.float32


# --------------------------------------------------------------------------- 2 processes
def _dist_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    import stan_mm  # noqa: F401
    from stan_mm.models.losses import SymmetricInfoNCELoss
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank,
                            world_size=world)
    out = {}
    # (1) the whole model under DDP, 3 + 3 samples; video 2 on rank 0 and rank 1
    model = build_model().train()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    videos, texts = make_batch(6)
    data = dict(inputs=dict(imgs=videos[3 * rank:3 * rank + 3],
                            text=texts[3 * rank:3 * rank + 3]),
                data_samples=samples([0, 1, 2, 2, 3, 4][3 * rank:3 * rank + 3]))
    data = model.data_preprocessor(data, True)
    loss = ddp(**data, mode='loss')['loss']
    loss.backward()
    out['loss'] = loss.detach()
    out['grads'] = {n: p.grad.detach().clone() for n, p in model.named_parameters()
                    if p.grad is not None}
    # (2) the loss module alone with uneven shares: 4 rows on rank 0, 1 row on rank 1
    gen = torch.Generator().manual_seed(5)
    v_all, t_all = torch.randn(5, 8, generator=gen), torch.randn(5, 8, generator=gen)
    rows = slice(0, 4) if rank == 0 else slice(4, 5)
    v = v_all[rows].clone().requires_grad_(True)
    t = t_all[rows].clone().requires_grad_(True)
    uneven = SymmetricInfoNCELoss()(v, t, 10.0, torch.tensor([0, 1, 0, 2, 1])[rows])
    uneven.backward()
    out.update(uneven=uneven.detach(), v_grad=v.grad, t_grad=t.grad)
    torch.save(out, os.path.join(out_dir, f'rank{rank}.pt'))
    dist.barrier()
    dist.destroy_process_group()


def test_gather_with_grad_two_processes_equal_one(tmp_path):
    # forked ranks: the parent's imports are inherited (spawned ones re-import torch,
    # mmengine and mmaction: several seconds each on a small CI machine)
    mp.start_processes(_dist_worker, args=(2, str(tmp_path / 'init'), str(tmp_path)),
                       nprocs=2, join=True, start_method='fork')
    ranks = [torch.load(tmp_path / f'rank{r}.pt') for r in range(2)]

    model = build_model().train()
    videos, texts = make_batch(6)
    data = model.data_preprocessor(dict(inputs=dict(imgs=videos, text=texts),
                                        data_samples=samples([0, 1, 2, 2, 3, 4])), True)
    loss = model(**data, mode='loss')['loss']
    loss.backward()
    for r in range(2):
        torch.testing.assert_close(ranks[r]['loss'], loss.detach(), rtol=1e-5, atol=1e-6)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(ranks[0]['grads']) == set(grads) and len(grads) > 50
    for name, g in grads.items():  # DDP averaged the ranks' gradients
        atol = 1e-5 * float(g.abs().max()) + 1e-9  # float32 sums in another order
        for r in range(2):
            diff = float((ranks[r]['grads'][name] - g).abs().max())
            assert diff <= atol, f'{name} (rank {r}): max |diff| {diff:.3g} > {atol:.3g}'

    gen = torch.Generator().manual_seed(5)
    v = torch.randn(5, 8, generator=gen).requires_grad_(True)
    t = torch.randn(5, 8, generator=gen).requires_grad_(True)
    ref = SymmetricInfoNCELoss()(v, t, 10.0, torch.tensor([0, 1, 0, 2, 1]))
    ref.backward()
    for r, rows in ((0, slice(0, 4)), (1, slice(4, 5))):
        torch.testing.assert_close(ranks[r]['uneven'], ref.detach(), rtol=1e-5, atol=1e-6)
        # every rank's loss reaches its rows: the summed gradient is world_size x the
        # one-process gradient (DDP's mean over ranks then gives the one-process value)
        torch.testing.assert_close(ranks[r]['v_grad'] / 2, v.grad[rows], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(ranks[r]['t_grad'] / 2, t.grad[rows], rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- the model
def test_predict_emits_the_metric_contract():
    from stan_mm.evaluation import RetrievalRecallMetric
    model = build_model().eval()
    gen = torch.Generator().manual_seed(1)
    videos, _ = make_batch(3)
    caps = [make_tokens(n, gen) for n in (2, 1, 3)]            # [n_i, L]: test samples
    data = model.data_preprocessor(dict(inputs=dict(imgs=videos, text=caps),
                                        data_samples=samples([5, 6, 7])))
    imgs = data['inputs']['imgs']
    assert imgs.shape == (3, T, 3, SIZE, SIZE) and isinstance(data['inputs']['text'], list)
    for c in range(3):                                          # CLIP mean/std per channel
        expect = (videos[1][:, c].float() - CLIP_MEAN[c]) / CLIP_STD[c]
        torch.testing.assert_close(imgs[1, :, c], expect)
    with torch.no_grad():
        out = model(**data, mode='predict')
        for i, ds in enumerate(out):
            assert ds.video_feature.shape == (32, )
            assert ds.text_feature.shape == (caps[i].shape[0], 32)
            torch.testing.assert_close(
                ds.video_feature, F.normalize(model.backbone(imgs[i:i + 1])[0], dim=0),
                rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(
                ds.text_feature, F.normalize(model.text_backbone(caps[i]), dim=-1),
                rtol=1e-4, atol=1e-5)
    metric = RetrievalRecallMetric()
    metric.process(None, out)
    metrics = metric.compute_metrics(metric.results)
    assert set(metrics) >= {'t2v_R1', 'v2t_R1'}
    # one caption per sample ([L] items) stacks to [N, L]
    data = model.data_preprocessor(dict(inputs=dict(imgs=videos, text=[c[0] for c in caps]),
                                        data_samples=samples([0, 1, 2])))
    assert data['inputs']['text'].shape == (3, L)
    with torch.no_grad():
        assert model(**data, mode='predict')[2].text_feature.shape == (1, 32)
        feats = model(**data, mode='tensor')
    assert feats['video'].shape == (3, 32) and feats['text'].shape == (3, 32)


def test_one_clip_feeds_both_towers(tmp_path, monkeypatch):
    from stan_mm.models.retrievers import stan_retriever
    clip = tiny_clip(seed=4)
    path = tmp_path / 'clip.pt'
    save_open_clip(clip, path)
    calls = []
    real = stan_retriever.build_clip
    monkeypatch.setattr(stan_retriever, 'build_clip',
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    model = build_model(pretrained=str(path)).eval()
    assert len(calls) == 1
    model.init_weights()  # what the runner calls first: must keep the loaded weights
    ref = clip.state_dict()
    sd = model.state_dict()
    for k, v in ref.items():
        if k.startswith('visual.'):
            assert torch.equal(sd['backbone.' + k], v), k
        elif k != 'logit_scale':
            assert torch.equal(sd['text_backbone.' + k], v), k
    # branch spatial blocks are copies of the pretrained CLIP blocks 2..3 (depth 2 of 3)
    for k in range(2):
        blk = f'visual.transformer.resblocks.{k + 1}.attn.in_proj_weight'
        assert torch.equal(sd[f'backbone.branch.layers.{k}.spatial.attn.in_proj_weight'],
                           ref[blk])
    tok = make_tokens(2, torch.Generator().manual_seed(0))
    full = torch.zeros(2, 77, dtype=torch.long)
    full[:, :L] = tok
    with torch.no_grad():
        torch.testing.assert_close(model.text_backbone(tok), clip.encode_text(full),
                                   rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match='ONE CLIP'):
        build_model(backbone=dict(type='CLIPSTAN', arch='ViT-B/32', depth=2))
    with pytest.raises(ValueError, match=r"input_layout='NCTHW'.*\[N, T, C, H, W\]"):
        build_model(backbone=dict(type='CLIPSTAN', depth=2, input_layout='NCTHW'))
    # the shared tower was loaded by the retriever: re-drawing its positional embedding is
    # refused as CLIPSTAN(pretrained=...) refuses it (the pretrained path is named)
    with pytest.raises(ValueError, match=r'pos_embed_init_std.*clip\.pt'):
        build_model(pretrained=str(path), backbone=dict(
            type='CLIPSTAN', depth=2, input_layout='NTCHW', pos_embed_init_std=1.0))
    scratch = build_model(backbone=dict(type='CLIPSTAN', depth=2, input_layout='NTCHW',
                                        pos_embed_init_std=1.0))   # random weights: allowed
    assert scratch.backbone.visual.positional_embedding.std() > 0.5


def test_converted_public_checkpoint_loads(tmp_path):
    from stan_mm.utils.stan_convert import (convert_public_checkpoint,
                                            export_public_checkpoint)
    model = build_model(seed=1).eval()
    with torch.no_grad():  # the zero-initialized temporal fc would hide a lost weight
        for name, p in model.named_parameters():
            if '.temporal.fc.' in name:
                p.normal_(0, 0.02)
    report = export_public_checkpoint(model.state_dict(), str(tmp_path / 'public.pth'))
    assert report.unmapped == []
    report = convert_public_checkpoint(str(tmp_path / 'public.pth'), str(tmp_path / 'mm.pth'))
    assert report.unmapped == []
    fresh = build_model(seed=2).eval()
    sd = torch.load(tmp_path / 'mm.pth', map_location='cpu')['state_dict']
    fresh.load_state_dict(sd, strict=True)
    videos, texts = make_batch(2)
    data = model.data_preprocessor(dict(inputs=dict(imgs=videos, text=texts),
                                        data_samples=samples([0, 1])))
    with torch.no_grad():
        a, b = model(**data, mode='tensor'), fresh(**data, mode='tensor')
    torch.testing.assert_close(a['video'], b['video'])
    torch.testing.assert_close(a['text'], b['text'])


def test_frozen_text_tower_gets_no_grad():
    model = build_model(text_backbone=dict(frozen=True)).train()
    assert not model.text_backbone.training
    videos, texts = make_batch(4)
    data = model.data_preprocessor(dict(inputs=dict(imgs=videos, text=texts),
                                        data_samples=samples([0, 1, 2, 3])), True)
    model(**data, mode='loss')['loss'].backward()
    assert all(not p.requires_grad and p.grad is None
               for p in model.text_backbone.parameters())
    assert all(p.grad is not None for p in model.backbone.branch.parameters())
    assert model.backbone.visual.conv1.weight.grad is not None


def test_loss_mode_reads_video_identity_from_metainfo():
    model = build_model().eval()
    videos, texts = make_batch(4)
    videos[3] = videos[2]  # two captions of one video
    data = model.data_preprocessor(dict(inputs=dict(imgs=videos, text=texts)), True)
    with torch.no_grad():
        feats = model(**data, mode='tensor')

        def loss_with(data_samples):
            return model(data['inputs'], data_samples, mode='loss')['loss']
        for ids in ([0, 1, 2, 2], [0, 1, 2, 3]):
            expect = SymmetricInfoNCELoss()(feats['video'], feats['text'], 100.0,
                                            torch.tensor(ids))
            torch.testing.assert_close(loss_with(samples(ids)), expect)
        # no video_idx: file names identify the videos (hashed)
        by_name = [ActionDataSample(metainfo=dict(filename=f))
                   for f in ('a.mp4', 'b.mp4', 'c.mp4', 'c.mp4')]
        torch.testing.assert_close(loss_with(by_name), loss_with(samples([0, 1, 2, 2])))
        assert loss_with(samples([0, 1, 2, 2])) != loss_with(samples([0, 1, 2, 3]))
        # concatenated datasets: video_idx restarts at 0 in each, the files differ, and the
        # files decide (the 'video_idx' of samples 0 and 3 would wrongly mask them)
        concat = [ActionDataSample(metainfo=dict(video_idx=v, filename=f)) for v, f in
                  ((0, 'msrvtt/v0.mp4'), (1, 'msrvtt/v1.mp4'), (2, 'msrvtt/v2.mp4'),
                   (0, 'msvd/x.avi'))]
        torch.testing.assert_close(loss_with(concat), loss_with(samples([0, 1, 2, 3])))


def test_learnable_temperature_is_clamped():
    model = build_model(learnable_temperature=True)
    assert model.get_logit_scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1000.0))
    assert model.get_logit_scale().item() == pytest.approx(100.0)
    fixed = build_model(temperature=0.02)
    assert fixed.get_logit_scale().item() == pytest.approx(50.0)
    assert not any('logit_scale' in n for n, _ in fixed.named_parameters())
    with pytest.raises(ValueError, match='max_logit_scale'):
        build_model(learnable_temperature=True, max_logit_scale=0)


def test_learnable_temperature_learns_from_an_openai_checkpoint_value():
    """OpenAI's checkpoints store logit_scale = 4.6055 (fp16 of ln 100 = 4.6052): above the
    bound. The scale must still get a gradient and move (as in CLIP's training, which
    clamps the parameter, not exp of it)."""
    model = build_model(learnable_temperature=True)
    with torch.no_grad():
        model.logit_scale.fill_(4.6055)
    videos, texts = make_batch(3)
    samples = [ActionDataSample(metainfo=dict(video_idx=i)) for i in range(3)]
    data = model.data_preprocessor(dict(inputs=dict(imgs=videos, text=texts),
                                        data_samples=samples), training=True)
    loss = model(**data, mode='loss')['loss']
    # float32 parameter: the nearest float32 to ln 100
    assert model.logit_scale.item() == pytest.approx(math.log(100.0), abs=1e-6)
    loss.backward()
    grad = model.logit_scale.grad
    assert grad is not None and grad.abs().item() > 1e-6
    optim = torch.optim.SGD([model.logit_scale], lr=1e-3)
    before = model.logit_scale.item()
    optim.step()
    assert model.logit_scale.item() != before


def test_loss_mode_errors_are_clear():
    model = build_model()
    gen = torch.Generator().manual_seed(0)
    videos, _ = make_batch(2)
    data = model.data_preprocessor(dict(
        inputs=dict(imgs=videos, text=[make_tokens(2, gen), make_tokens(1, gen)]),
        data_samples=samples([0, 1])), True)
    with pytest.raises(ValueError, match='one caption per video'):
        model(**data, mode='loss')
    with pytest.raises(KeyError, match='collect_keys'):
        model.data_preprocessor(dict(inputs=torch.zeros(2, 3, 3, 32, 32), data_samples=None))


# --------------------------------------------------------------------------- configs
# name: (arch, temporal module, frames, tokens, batch/GPU, lr, wd, epochs, tau)
PAPER = {
    'msrvtt_self_b32': ('B-32', 'attn', 12, 32, 16, 2e-6, 0.05, 10, 0.01),
    'msrvtt_conv_b32': ('B-32', 'conv', 12, 32, 16, 2e-6, 0.05, 10, 0.01),
    'msrvtt_self_b16': ('B-16', 'attn', 12, 32, 8, 2e-6, 0.05, 10, 0.02),
    'didemo_self_b32': ('B-32', 'attn', 64, 77, 8, 2e-6, 0.01, 20, 0.05),
    'didemo_conv_b32': ('B-32', 'conv', 64, 77, 8, 2e-6, 0.01, 20, 0.05),
    'didemo_conv_b16': ('B-16', 'conv', 64, 77, 8, 2e-6, 0.01, 20, 0.05),
    'lsmdc_self_b32': ('B-32', 'attn', 12, 32, 16, 1e-6, 0.2, 10, 0.01),
    'lsmdc_conv_b32': ('B-32', 'conv', 12, 32, 16, 1e-6, 0.2, 10, 0.01),
    'lsmdc_self_b16': ('B-16', 'attn', 12, 32, 8, 1e-6, 0.2, 10, 0.02),
    'msvd_self_b32': ('B-32', 'attn', 12, 32, 16, 2e-6, 0.05, 10, 0.01),
}


def _step(pipeline, type_):
    return next(s for s in pipeline if s['type'] == type_)


@pytest.mark.parametrize('name', sorted(PAPER))
def test_paper_configs_have_the_recipe(name):
    arch, temporal, frames, tokens, batch, lr, wd, epochs, tau = PAPER[name]
    cfg = Config.fromfile(os.path.join(REPO, 'configs', 'stan', name + '.py'))
    m = cfg.model
    assert m.type == 'STANRetriever' and m.pretrained == f'checkpoints/clip/ViT-{arch}.pt'
    assert m.arch == f'ViT-{arch[0]}/{arch[2:]}'
    assert (m.backbone.depth, m.backbone.temporal_module, m.backbone.input_layout) == (
        4, temporal, 'NTCHW')
    assert m.temperature == tau and not m.learnable_temperature
    assert m.loss.type == 'SymmetricInfoNCELoss' and m.loss.gather
    assert m.data_preprocessor.mean == list(CLIP_MEAN)
    assert m.data_preprocessor.std == list(CLIP_STD)
    if name.startswith('didemo'):
        assert m.backbone.grad_checkpointing and m.text_backbone.with_cp
    ow = cfg.optim_wrapper
    assert ow.type == 'AutoAmpOptimWrapper' and ow.dtype in ('float16', 'bfloat16')
    opt = ow.optimizer
    assert (opt.type, opt.lr, opt.weight_decay, tuple(opt.betas), opt.eps) == (
        'AdamW', lr, wd, (0.9, 0.98), 1e-8)
    assert ow.clip_grad.max_norm == 5.0
    assert ow.paramwise_cfg.custom_keys['backbone.branch'] == dict(lr_mult=10.0)
    assert ow.paramwise_cfg.norm_decay_mult == 0 and ow.paramwise_cfg.bias_decay_mult == 0
    assert cfg.train_cfg.max_epochs == epochs
    warm = cfg.param_scheduler[0]
    assert warm.type == 'LinearLR' and warm.end == (4 if epochs == 20 else 10)
    if epochs == 20:
        assert cfg.param_scheduler[1].type == 'CosineAnnealingLR'
    assert cfg.train_dataloader.batch_size == batch
    train, test = (cfg.train_dataloader.dataset, cfg.test_dataloader.dataset)
    assert train.type == test.type == 'RetrievalVideoTextDataset'
    assert not train.get('test_mode', False) and test.test_mode
    for pipe, test_mode in ((train.pipeline, False), (test.pipeline, True)):
        for step in pipe:
            assert TRANSFORMS.get(step['type']) is not None, step['type']
        sampler = _step(pipe, 'UniformSample')
        assert sampler.clip_len == frames and sampler.get('test_mode', False) == test_mode
        assert _step(pipe, 'CLIPBPETokenize').context_length == tokens
        assert _step(pipe, 'FormatShape').input_format == 'NCHW'
        pack = _step(pipe, 'PackActionInputs')
        assert tuple(pack.collect_keys) == ('imgs', 'text') and 'sample_idx' in pack.meta_keys
    assert _step(train.pipeline, 'Resize').scale == (-1, 256)
    assert _step(train.pipeline, 'RandomResizedCrop')
    assert _step(test.pipeline, 'Resize').scale == (-1, 224)
    assert _step(test.pipeline, 'CenterCrop').crop_size == 224
    assert cfg.test_evaluator.type == 'RetrievalRecallMetric'
    assert cfg.default_hooks.checkpoint.save_best == 'retrieval/t2v_R1'


@pytest.mark.parametrize('name', ['msrvtt_self_b32', 'didemo_conv_b16'])
def test_paper_configs_build(name):
    cfg = Config.fromfile(os.path.join(REPO, 'configs', 'stan', name + '.py'))
    cfg.model.pretrained = None  # random weights: no checkpoint in the test environment
    model = MODELS.build(cfg.model)
    assert model.backbone.visual.patch_size == ((32, 32) if 'b32' in name else (16, 16))
    assert len(model.backbone.branch.layers) == 4 and model.backbone.levels == [9, 10, 11, 12]
    assert model.embed_dim == 512 and model.text_backbone.context_length == 77
    temporal = type(model.backbone.branch.layers[0].temporal).__name__
    assert temporal == ('TemporalConv' if 'conv' in name else 'TemporalAttention')
    names = [n for n, _ in model.named_parameters()]
    assert sum(n.startswith('backbone.branch.') for n in names) > 0
    assert all(n.startswith(('backbone.', 'text_backbone.')) for n in names)


def test_msrvtt_config_pipelines_feed_the_preprocessor(tmp_path):
    """The paper config's datasets and pipelines on a tiny MSR-VTT-layout folder (written by
    the synthetic generator): train = one (video, caption) pair, test = one video with its
    captions; the preprocessor turns a batch into what STANRetriever takes."""
    from mmaction.registry import DATASETS
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import init_default_scope
    from stan_mm.datasets.synthetic import generate_motion_dataset
    init_default_scope('mmaction')
    root = tmp_path / 'motion'
    generate_motion_dataset(str(root), num_train=2, num_val=0, num_test=2, num_frames=16,
                            size=32, captions_per_video=3, progress=False)
    cfg = Config.fromfile(os.path.join(REPO, 'configs', 'stan', 'msrvtt_self_b32.py'))
    prep = MODELS.build(cfg.model.data_preprocessor)
    for loader, n_text in (('train_dataloader', None), ('test_dataloader', 1)):
        ds_cfg = cfg[loader].dataset
        ds_cfg.update(data_root=str(root / 'msrvtt'), data_prefix=dict(video='../videos'))
        dataset = DATASETS.build(ds_cfg)
        items = [dataset[i] for i in range(2)]
        batch = prep(pseudo_collate(items), training=n_text is None)
        assert batch['inputs']['imgs'].shape == (2, 12, 3, 224, 224)
        text = batch['inputs']['text']
        if n_text is None:
            assert len(dataset) == 6 and text.shape == (2, 32)     # 2 videos x 3 captions
            assert items[0]['data_samples'].video_idx == 0
        else:
            assert len(dataset) == 2 and [t.shape for t in text] == [(1, 32)] * 2
            assert [s.sample_idx for s in batch['data_samples']] == [0, 1]
