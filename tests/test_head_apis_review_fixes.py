"""Review fixes: the text head's class-embedding cache (inference mode, weight changes),
the embedding APIs on a model without ``model.cfg`` or in training mode, integer frames in
CLIPSTAN, and input checks of ``top_k``, the CLIP text encoder and the dense-similarity
metrics. Tiny random-weight models only (CPU)."""
import os.path as osp
import sys

import numpy as np
import pytest
import torch

import stan_mm  # noqa: F401  (registers everything)
from mmaction.registry import MODELS
from mmaction.structures import ActionDataSample
from stan_mm.testing import tiny_clip, tiny_clip_cfg

sys.path.insert(0, osp.dirname(__file__))
from test_recognition import count_calls, text_head  # noqa: E402

torch.set_num_threads(1)
EMBED = tiny_clip_cfg()['embed_dim']
SIZE, T = 32, 4


def retriever(seed=0, **backbone):
    """A tiny STANRetriever built in code (no ``model.cfg``), in training mode."""
    torch.manual_seed(seed)
    return MODELS.build(dict(type='STANRetriever', arch=tiny_clip_cfg(),
                             backbone=dict(type='CLIPSTAN', depth=2, input_layout='NTCHW',
                                           **backbone)))


def video_samples(n=3, seed=0):
    """Packed samples as ``VideoPipeline`` gives them: uint8 frames [T, C, H, W]."""
    gen = torch.Generator().manual_seed(seed)
    return [dict(inputs=dict(imgs=torch.randint(0, 256, (T, 3, SIZE, SIZE), generator=gen,
                                                dtype=torch.uint8)),
                 data_samples=ActionDataSample()) for _ in range(n)]


# ============================================================================ text head cache
def test_text_head_cache_filled_under_inference_mode_serves_a_later_training_step():
    head = text_head()
    x = torch.randn(2, EMBED)
    with torch.inference_mode():      # a validation pass under inference_mode fills the cache
        head.eval()
        ref = head(x)
    head.train()
    assert not head.class_embeddings().is_inference()
    v = x.clone().requires_grad_(True)
    out = head(v)
    out.sum().backward()              # was: "Inference tensors cannot be saved for backward"
    assert v.grad is not None and v.grad.abs().sum() > 0
    torch.testing.assert_close(out.detach(), ref.clone())


@pytest.mark.parametrize('finetune_text', [False, True])
def test_text_head_cache_follows_text_encoder_weight_changes(finetune_text):
    head = text_head(finetune_text=finetune_text).eval()
    calls = count_calls(head.text_encoder)
    x = torch.randn(2, EMBED)

    def fresh():
        with torch.no_grad():
            out = head(x)
        head.invalidate_cache()
        with torch.no_grad():
            return out, head(x)

    with torch.no_grad():
        before = head(x)
        head(x)
    assert len(calls) == 1            # unchanged weights: served from the cache
    # new weights loaded into the text tower itself (not through the head)
    other = {k: v for k, v in tiny_clip(seed=7).state_dict().items()
             if k in head.text_encoder.state_dict()}
    head.text_encoder.load_state_dict(other)
    cached, true = fresh()
    assert (true - before).abs().max() > 1e-3
    torch.testing.assert_close(cached, true)
    # an in-place edit (an optimizer step)
    with torch.no_grad():
        head.text_encoder.ln_final.weight.mul_(1.5)
        head.text_encoder.text_projection.add_(0.1)
    cached, true2 = fresh()
    assert (true2 - true).abs().max() > 1e-3
    torch.testing.assert_close(cached, true2)
    n = len(calls)
    with torch.no_grad():
        head(x)
    assert len(calls) == n            # and cached again afterwards


# ============================================================================ embedding APIs
def test_embed_texts_and_config_pipeline_without_model_cfg():
    from stan_mm.apis import embed_texts
    from stan_mm.apis.embed import text_tower
    from stan_mm.apis.video import config_test_pipeline
    from stan_mm.datasets.transforms.tokenize import tokenize
    model = retriever().eval()
    assert not hasattr(model, 'cfg')
    encode, length = text_tower(model)
    assert length == model.text_backbone.context_length == 77
    texts = ['a cat', 'a dog jumping over a fence ' * 20]   # the second one is cut
    got = embed_texts(model, texts)
    with torch.no_grad():
        want = torch.nn.functional.normalize(
            model.encode_text(tokenize(texts, 77, 'eot')).float(), dim=-1)
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match='^the config: no test_dataloader'):
        config_test_pipeline({})


def test_search_gallery_queries_without_model_cfg(monkeypatch, tmp_path):
    """search_gallery embeds its queries with embed_texts: a model without ``model.cfg``
    (the gallery features stubbed) gets the encoder's context length, not an
    AttributeError."""
    from stan_mm.apis import features, search
    from stan_mm.apis import video as video_mod
    model = retriever().eval()
    (tmp_path / 'a.mp4').write_bytes(b'')
    gallery = torch.nn.functional.normalize(torch.randn(1, EMBED), dim=-1).numpy()
    monkeypatch.setattr(features, 'extract_features',
                        lambda *a, **k: type('R', (), {'bad': []})())
    monkeypatch.setattr(features, 'load_features',
                        lambda out: dict(videos=gallery, video_paths=['a.mp4']))
    monkeypatch.setattr(video_mod, 'list_videos', lambda g: (str(tmp_path), ['a.mp4']))
    res = search.search_gallery(model, str(tmp_path), ['a cat'], key='k', top=1,
                                progress=False)
    assert res.sim.shape == (1, 1) and res.ranking.tolist() == [[0]]


def test_embeddings_of_a_model_in_training_mode_are_eval_mode_and_the_mode_is_restored():
    from stan_mm.apis import embed_texts, embed_video_batch
    model = retriever(drop_path_rate=0.5)           # nn.Module default: training mode
    model.text_backbone.eval()                      # a mixed state must come back as it was
    modes = {name: m.training for name, m in model.named_modules()}
    assert model.training and model.backbone.training
    samples = video_samples()
    a = embed_video_batch(model, samples)
    b = embed_video_batch(model, samples)
    torch.testing.assert_close(a, b, rtol=0, atol=0)   # no drop path
    assert {name: m.training for name, m in model.named_modules()} == modes
    ref = embed_video_batch(model.eval(), samples)
    torch.testing.assert_close(a, ref, rtol=0, atol=0)
    # texts: the text tower runs in eval mode too
    model.train()
    modes = {name: m.training for name, m in model.named_modules()}
    seen = []
    model.text_backbone.register_forward_pre_hook(lambda m, i: seen.append(m.training))
    embed_texts(model, ['a cat', 'a dog'])
    assert seen == [False]
    assert {name: m.training for name, m in model.named_modules()} == modes
    # the mode is restored also when embedding fails
    with pytest.raises(Exception):
        embed_video_batch(model, [dict(inputs=dict(imgs=torch.zeros(T, 3, 8, 8,
                                                                      dtype=torch.uint8)),
                                       data_samples=ActionDataSample())])
    assert {name: m.training for name, m in model.named_modules()} == modes


# ============================================================================ CLIPSTAN input
@pytest.mark.parametrize('dtype', [torch.uint8, torch.int64])
def test_clip_stan_refuses_integer_frames(dtype):
    from stan_mm.models.backbones import CLIPSTAN
    torch.manual_seed(0)
    model = CLIPSTAN(arch=tiny_clip_cfg(), depth=2, input_layout='NTCHW').eval()
    raw = torch.randint(0, 256, (1, T, 3, SIZE, SIZE), dtype=dtype)
    with pytest.raises(TypeError, match=rf'input video x must be a floating point tensor '
                                        rf'already normalized.*{dtype}.*data preprocessor'):
        model(raw)
    with torch.no_grad():
        assert model(raw.float() / 255).shape == (1, EMBED)


# ============================================================================ small checks
@pytest.mark.parametrize('k', [0, -1])
def test_top_k_refuses_k_below_one(k):
    from stan_mm.apis import top_k
    with pytest.raises(ValueError, match=rf'k must be an integer >= 1.*got {k}'):
        top_k(np.array([[0.1, 0.5, 0.3]]), k)
    assert top_k(np.array([[0.1, 0.5, 0.3]]), 5).tolist() == [[1, 2, 0]]


@pytest.mark.parametrize('bad, shown', [(50000, 'from 0 to 50000'), (-1, 'from -1 to 49407')])
def test_text_encoder_refuses_token_ids_outside_the_vocabulary(bad, shown):
    from stan_mm.models.clip import CLIPTextEncoder
    encoder = CLIPTextEncoder.from_clip(tiny_clip(seed=3), frozen=True)
    tokens = torch.zeros(2, 8, dtype=torch.long)
    tokens[:, :3] = torch.tensor([49406, 320, 49407])
    with torch.no_grad():
        assert encoder(tokens).shape == (2, EMBED)
        tokens[1, 1] = bad
        with pytest.raises(ValueError, match=rf'tokens must be ids in \[0, 49408\).*{shown}'):
            encoder(tokens)


def test_dense_similarity_metrics_take_nested_lists():
    from stan_mm.evaluation import retrieval_metrics_from_similarity
    sim = [[0.1, 0.2, 0.0], [0.3, 0.1, 0.2], [0.0, 0.1, 0.9]]
    got = retrieval_metrics_from_similarity(sim, [0, 1, 2])
    assert got == retrieval_metrics_from_similarity(np.array(sim), [0, 1, 2])
    with pytest.raises(TypeError, match='similarity matrix: expected .* nested list of '
                                        'numbers, got a list that is not a numeric matrix'):
        retrieval_metrics_from_similarity([[0.1, 0.2], [0.3]], [0, 1])
