"""Offline CLIP BPE tokenization: tokenize() and the CLIPBPETokenize transform."""
from functools import lru_cache

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import stan_mm  # noqa: F401
from mmaction.registry import TRANSFORMS
from mmengine.dataset import Compose
from mmengine.registry import DefaultScope
from stan_mm.datasets.transforms import CLIPBPETokenize, tokenize

SOT, EOT = 49406, 49407
LONG = ('a very long caption about a man who walks his dog through the park in the '
        'early morning while the sun rises slowly over the tall buildings of the city and '
        'birds sing in the trees along the quiet river bank')


@lru_cache(maxsize=1)
def _ref():
    """open_clip's own tokenizer (the reference implementation of CLIP tokenization)."""
    from open_clip.tokenizer import SimpleTokenizer
    return SimpleTokenizer(clean='lower')


def _open_clip_reference(text, length):
    return _ref()(text, context_length=length)[0]


@pytest.mark.parametrize('length', [32, 64, 77])
def test_matches_open_clip(length):
    for text in ['A photo of a cat.', LONG, 'Two   people\tdancing', '']:
        torch.testing.assert_close(tokenize(text, length), _open_clip_reference(text, length))


def test_layout_of_one_caption():
    tokens = tokenize('a dog', 32)
    assert tokens.dtype == torch.long and tokens.shape == (32, )
    assert tokens[:4].tolist() == [SOT, _ref().encode('a')[0], _ref().encode('dog')[0], EOT]
    assert torch.all(tokens[4:] == 0)  # padding (note: id 0 is also the token "!")


@pytest.mark.parametrize('length', [8, 32, 64, 77])
def test_truncation_keeps_eot(length):
    text = LONG + ' ' + LONG
    bpe = _ref().encode(text)
    assert len(bpe) + 2 > length  # the caption really is too long
    cut = tokenize(text, length)
    assert cut.shape == (length, )
    assert cut[0] == SOT and cut[-1] == EOT and bool(torch.all(cut != 0))
    assert cut[1:-1].tolist() == bpe[:length - 2]  # the start of the caption is kept


@pytest.mark.parametrize('length', [8, 32, 64])
def test_slice_truncation_is_the_public_reproductions(length):
    """truncate='slice': the 77-token row cut to its first L tokens (the public STAN
    reproduction's CLIPTokenize(length=L)); a long caption keeps no <end_of_text>, a short
    one is tokenized as with 'eot'. The transform passes the rule on."""
    for text in (LONG, LONG + ' ' + LONG, 'a dog'):
        want = _open_clip_reference(text, 77)[:length]
        torch.testing.assert_close(tokenize(text, length, truncate='slice'), want)
    assert EOT not in tokenize(LONG, 32, truncate='slice').tolist()
    assert torch.equal(tokenize('a dog', 32, truncate='slice'), tokenize('a dog', 32))
    out = CLIPBPETokenize(context_length=length, truncate='slice')(dict(text=[LONG]))['text']
    torch.testing.assert_close(out[0], _open_clip_reference(LONG, 77)[:length])
    with pytest.raises(ValueError, match="truncate must be one of .*'eot'.*'slice'"):
        CLIPBPETokenize(truncate='end')


def test_documented_tokenizer_index_of_the_32_token_configs():
    """docs/weights.md: `test_dataloader.dataset.pipeline.6.truncate=slice`."""
    import os.path as osp
    from mmengine.config import Config
    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    for name in ('msrvtt_self_b32', 'msrvtt_self_b16', 'lsmdc_self_b32', 'lsmdc_self_b16'):
        cfg = Config.fromfile(osp.join(root, 'configs', 'stan', name + '.py'))
        entry = cfg.test_dataloader.dataset.pipeline[6]
        assert entry.type == 'CLIPBPETokenize' and entry.context_length == 32, name


def test_empty_caption():
    tokens = tokenize('', 32)
    assert tokens[:2].tolist() == [SOT, EOT] and torch.all(tokens[2:] == 0)
    assert tokenize('   ', 32).tolist() == tokens.tolist()


def test_non_ascii_captions():
    dec = _ref()
    text = 'Un Café à Paris — naïve 東京 🙂'
    tokens = tokenize(text, 77)
    eot = int(tokens.argmax())
    assert tokens[eot] == EOT
    assert dec.decode(tokens[1:eot].tolist()).strip() == text.lower()
    # ftfy repairs mojibake before BPE: the mis-decoded caption tokenizes like the real one
    assert torch.equal(tokenize('cafÃ©', 32), tokenize('café', 32))


def test_list_input():
    out = tokenize(['a', 'b c', LONG], 32)
    assert out.shape == (3, 32) and out.dtype == torch.long
    assert torch.equal(out[1], tokenize('b c', 32))
    assert tokenize(('x', 'y'), 16).shape == (2, 16)
    assert tokenize([], 16).shape == (0, 16)


@pytest.mark.parametrize('bad', [7, 78, 32.0, '32', True])
def test_bad_context_length(bad):
    with pytest.raises(ValueError, match='context_length'):
        tokenize('a', bad)
    with pytest.raises(ValueError, match='context_length'):
        CLIPBPETokenize(context_length=bad)


def test_non_string_caption():
    with pytest.raises(TypeError, match='index 1'):
        tokenize(['ok', 3], 32)


def test_transform_replaces_text():
    t = TRANSFORMS.build(dict(type='CLIPBPETokenize', context_length=32))
    out = t(dict(text='a man is cooking', filename='x.mp4'))
    assert torch.equal(out['text'], tokenize('a man is cooking', 32))
    assert out['filename'] == 'x.mp4'
    many = t(dict(text=['a', 'b']))
    assert many['text'].shape == (2, 32)


def test_transform_keys_and_errors():
    t = CLIPBPETokenize(context_length=16, keys=('caption', ), out_keys=('tokens', ))
    out = t(dict(caption='hello there'))
    assert out['caption'] == 'hello there' and out['tokens'].shape == (16, )
    with pytest.raises(KeyError, match="no 'caption'"):
        t(dict(text='x'))
    with pytest.raises(TypeError, match='str or a list'):
        t(dict(caption=5))
    with pytest.raises(ValueError, match='pair up'):
        CLIPBPETokenize(keys=('a', 'b'), out_keys=('c', ))


def test_pipeline_with_pack_action_inputs():
    """Same place in a retrieval pipeline as MMAction2's CLIPTokenize."""
    with DefaultScope.overwrite_default_scope('mmaction'):  # as the runner sets it
        pipeline = Compose([
            dict(type='CLIPBPETokenize', context_length=32),
            dict(type='PackActionInputs', collect_keys=('imgs', 'text')),
        ])
    packed = pipeline(dict(imgs=np.zeros((2, 3, 8, 8), np.float32), text='a cat on a mat'))
    assert torch.equal(packed['inputs']['text'], tokenize('a cat on a mat', 32))
    assert packed['inputs']['imgs'].shape == (2, 3, 8, 8)


@settings(max_examples=40, deadline=None, database=None)
@given(text=st.text(max_size=120), length=st.integers(8, 77))
def test_layout_property(text, length):
    """Any text: SOT first, exactly one EOT (where CLIP pools: the argmax), the BPE tokens
    of the text in between (cut to fit), zeros after."""
    tokens = tokenize(text, length)
    assert tokens.shape == (length, )
    eot = int(tokens.argmax())
    assert tokens[0] == SOT and tokens[eot] == EOT and int((tokens == EOT).sum()) == 1
    assert tokens[1:eot].tolist() == _ref().encode(text)[:length - 2]
    assert torch.all(tokens[eot + 1:] == 0)
