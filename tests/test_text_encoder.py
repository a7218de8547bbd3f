"""CLIPTextEncoder: equal to open_clip's encode_text, at any token length that fits."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import stan_mm  # noqa: F401
from mmaction.registry import MODELS
from stan_mm import testing as T
from stan_mm.datasets.transforms import CLIPBPETokenize, tokenize
from stan_mm.models.clip import CLIPTextEncoder

ATOL = 1e-5
FITS_32 = ['a man is playing a guitar on stage',
           'two dogs run across a snowy field while children watch',
           'Un café à Paris',
           '']
TOO_LONG = ('a very long caption about a man who walks his dog through the park in the early '
            'morning while the sun rises slowly over the tall buildings of the city and the '
            'birds sing in the old trees along the quiet river')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def src():
    return T.tiny_clip(seed=21)


def test_equals_open_clip_at_77(src):
    enc = CLIPTextEncoder.from_clip(src).eval()
    tokens = tokenize(FITS_32 + [TOO_LONG], 77)
    with torch.no_grad():
        torch.testing.assert_close(enc(tokens), src.encode_text(tokens), atol=ATOL, rtol=0)
    assert enc.embed_dim == 32 and enc.context_length == 77


def test_length_32_equals_77_for_captions_that_fit(src):
    enc = CLIPTextEncoder.from_clip(src).eval()
    t32 = CLIPBPETokenize(context_length=32)(dict(text=FITS_32))['text']
    t77 = CLIPBPETokenize(context_length=77)(dict(text=FITS_32))['text']
    assert t32.shape == (4, 32) and t77.shape == (4, 77)
    with torch.no_grad():
        ref = src.encode_text(t77)  # open_clip, full context
        torch.testing.assert_close(enc(t32), ref, atol=ATOL, rtol=0)
        # a caption cut at 32 tokens is a different input: its embedding changes
        long32, long77 = tokenize(TOO_LONG, 32)[None], tokenize(TOO_LONG, 77)[None]
        assert int((long77 != 0).sum()) > 32
        assert (enc(long32) - src.encode_text(long77)).abs().max() > 1e-3


def test_train_mode_with_grad_matches(src):
    """Also without the inference fast path (train mode, autograd on)."""
    enc = CLIPTextEncoder.from_clip(src).train()
    t32, t77 = tokenize(FITS_32, 32), tokenize(FITS_32, 77)
    out = enc(t32)
    with torch.no_grad():
        torch.testing.assert_close(out.detach(), src.encode_text(t77), atol=ATOL, rtol=0)
    out.sum().backward()
    assert src.token_embedding.weight.grad is not None  # shared parameters get the grads
    src.zero_grad(set_to_none=True)


def test_shares_parameters(src):
    enc = CLIPTextEncoder.from_clip(src)
    assert enc.positional_embedding is src.positional_embedding
    assert enc.text_projection is src.text_projection
    assert enc.transformer is src.transformer
    text_keys = {k for k in src.state_dict() if not k.startswith(('visual.', 'logit_'))}
    assert set(enc.state_dict()) == text_keys  # open_clip's text key names


def test_too_long_and_bad_tokens():
    enc = CLIPTextEncoder(arch=T.tiny_clip_cfg(text_context_length=16))
    assert enc.context_length == 16
    with pytest.raises(ValueError, match='exceeds the context length 16'):
        enc(tokenize('a', 32)[None])
    with pytest.raises(ValueError, match=r'\[N, L\]'):
        enc(tokenize('a', 16))
    with pytest.raises(TypeError, match='integer'):
        enc(torch.zeros(1, 8))
    with pytest.raises(ValueError, match='arch'):
        CLIPTextEncoder()


def test_frozen():
    enc = CLIPTextEncoder(arch=T.tiny_clip_cfg(), frozen=True)
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training and not any(m.training for m in enc.modules())
    free = CLIPTextEncoder(arch=T.tiny_clip_cfg())
    free.train()
    assert free.training and all(p.requires_grad for p in free.parameters())


def test_from_pretrained_path(tmp_path, src):
    path = tmp_path / 'clip.pt'
    T.save_open_clip(src, path)
    enc = CLIPTextEncoder(arch=T.tiny_clip_cfg(), pretrained=str(path)).eval()
    enc.init_weights()  # the runner calls it: it must not re-initialize loaded weights
    tokens = tokenize(FITS_32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc(tokens), src.encode_text(tokenize(FITS_32, 77)),
                                   atol=ATOL, rtol=0)


def test_text_towers_of_another_tokenizer_are_refused(tmp_path):
    """A text tower whose vocabulary is not CLIP BPE's (a multilingual CLIP trained with
    XLM-V, say) would read stan-mm's token ids as other tokens: both text users refuse the
    loaded file by name. The vocabulary size comes from open_clip's own tokenizer."""
    from open_clip.tokenizer import SimpleTokenizer
    from stan_mm.models.clip import CLIPArchMismatchError
    from stan_mm.models.clip.builder import CLIP_BPE_VOCAB_SIZE
    assert CLIP_BPE_VOCAB_SIZE == SimpleTokenizer().vocab_size == len(SimpleTokenizer().encoder)
    other = T.tiny_clip(seed=3, text_vocab_size=CLIP_BPE_VOCAB_SIZE + 100)
    path = tmp_path / 'xlmv_clip.pt'
    T.save_open_clip(other, path)
    with pytest.raises(CLIPArchMismatchError) as err:
        CLIPTextEncoder(pretrained=str(path), arch=T.tiny_clip_cfg(text_vocab_size=49508))
    assert str(path) in str(err.value) and '49,508' in str(err.value)
    assert 'CLIPTextEncoder' in str(err.value)
    retriever = dict(type='STANRetriever', arch=T.tiny_clip_cfg(text_vocab_size=49508),
                     pretrained=str(path), backbone=dict(depth=1))
    with pytest.raises(CLIPArchMismatchError, match='STANRetriever tokenizes'):
        MODELS.build(retriever)
    # random init (tests' small vocabularies) and CLIP's own vocabulary are accepted
    CLIPTextEncoder(arch=T.tiny_clip_cfg(text_vocab_size=64))
    same = tmp_path / 'clip.pt'
    T.save_open_clip(T.tiny_clip(seed=3), same)
    CLIPTextEncoder(pretrained=str(same), arch=T.tiny_clip_cfg())


def test_build_from_config_with_custom_imports(tmp_path, src):
    """A fresh interpreter: only ``custom_imports`` in the config imports stan_mm, then
    stock ``mmaction.registry.MODELS.build`` builds the encoder."""
    weights = tmp_path / 'clip.safetensors'
    T.save_open_clip(src, weights)
    cfg_file = tmp_path / 'text_encoder_cfg.py'
    cfg_file.write_text(textwrap.dedent(f'''
        custom_imports = dict(imports=['stan_mm'], allow_failed_imports=False)
        tiny = {T.tiny_clip_cfg()!r}
        model = dict(type='CLIPTextEncoder', arch=tiny, pretrained={str(weights)!r},
                     frozen=True)
        test_pipeline = [dict(type='CLIPBPETokenize', context_length=32)]
    '''))
    out_file = tmp_path / 'emb.pt'
    script = textwrap.dedent(f'''
        import sys, torch
        from mmengine.config import Config
        from mmengine.dataset import Compose
        from mmengine.registry import DefaultScope
        from mmaction.registry import MODELS
        assert 'stan_mm' not in sys.modules
        cfg = Config.fromfile({str(cfg_file)!r})
        assert 'stan_mm' in sys.modules
        model = MODELS.build(cfg.model).eval()
        with DefaultScope.overwrite_default_scope('mmaction'):
            pipe = Compose(cfg.test_pipeline)
        tokens = pipe(dict(text={FITS_32!r}))['text']
        with torch.no_grad():
            torch.save(model(tokens), {str(out_file)!r})
    ''')
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-c', script], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    emb = torch.load(out_file)
    with torch.no_grad():
        torch.testing.assert_close(emb, src.encode_text(tokenize(FITS_32, 77)),
                                   atol=ATOL, rtol=0)


def test_registered():
    assert MODELS.get('CLIPTextEncoder') is CLIPTextEncoder


def test_text_encoder_exports_and_compiles_with_fullgraph():
    """The token-range check reads token values back (a data-dependent branch): skipped
    while a graph is traced, so torch.export and torch.compile(fullgraph=True) work and
    give the eager embeddings; eager calls still check."""
    enc = CLIPTextEncoder(arch=T.tiny_clip_cfg(text_context_length=16)).eval()
    vocab = enc.token_embedding.num_embeddings
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, vocab - 1, (3, 16), generator=g)
    tokens[:, 10] = vocab - 1                               # end-of-text, for argmax
    with torch.no_grad():
        eager = enc(tokens)
        exported = torch.export.export(enc, (tokens,)).module()(tokens)
        torch._dynamo.reset()
        compiled = torch.compile(enc, fullgraph=True, backend='eager')(tokens)
    torch.testing.assert_close(exported, eager)
    torch.testing.assert_close(compiled, eager)
    with pytest.raises(ValueError, match='tokens must be ids'):
        enc(torch.full((1, 16), vocab))
