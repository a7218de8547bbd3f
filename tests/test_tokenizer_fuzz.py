"""Fuzzing the offline CLIP tokenizer: arbitrary text (control characters, emoji, right-to-left
scripts, lone surrogates, very long captions) at every context length never crashes, and the
output has CLIP's layout: ``<start_of_text> tokens <end_of_text>`` then zero padding, cut so
that ``<end_of_text>`` stays the last token.

The expected token sequence is rebuilt here from the BPE encoder (``encode``) and checked
against open_clip's own ``tokenize`` (its truncation and padding code is independent of
``stan_mm``'s).
"""
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import stan_mm  # noqa: F401
from stan_mm.datasets.transforms.tokenize import CLIPBPETokenize, _tokenizer, tokenize

SOT, EOT = 49406, 49407
SPECIAL = ('<start_of_text>', '<end_of_text>')

# all of Unicode (surrogates included: JSON '\ud800' escapes produce them), with extra
# weight on the awkward parts
awkward = st.sampled_from([
    '\x00', '\x1b[31m', '\r\n', '\t', '\u200b', '\u202e', '\u2066', '\ufeff', '\ud800',
    '\udfff', '\U0001F44D\U0001F3FD', '\U0001F468\u200d\U0001F469\u200d\U0001F467',
    '\U0001F1EF\U0001F1F5', '\u05e9\u05dc\u05d5\u05dd', '\u0645\u0631\u062d\u0628\u0627',
    '\u65e5\u672c\u8a9e', '\uff46\uff55\uff4c\uff4c', 'e\u0301', '&amp;', '  ', "don't",
    '\U0010ffff', 'A' * 300])  # emoji (skin tone, ZWJ family, flag), Hebrew, Arabic, CJK,
#                                fullwidth, combining accent, HTML entity
texts = st.lists(st.one_of(st.text(max_size=40), awkward), max_size=30).map(''.join)
lengths = st.integers(min_value=8, max_value=77)


def expected_row(text, length):
    """CLIP's layout, rebuilt from the encoder: SOT, the first length-2 tokens, EOT, 0s."""
    ids = [SOT] + _tokenizer().encode(text)[:length - 2] + [EOT]
    return ids + [0] * (length - len(ids))


def check_row(row, text, length):
    assert row.shape == (length, ) and row.dtype == torch.long
    assert row[0] == SOT
    enc = _tokenizer().encode(text)
    end = min(len(enc) + 1, length - 1)  # where EOT must sit
    assert row[end] == EOT
    assert torch.all(row[end + 1:] == 0)  # padding after EOT only
    assert row[1:end].tolist() == enc[:end - 1]  # the caption's tokens, in order
    assert row.min() >= 0 and row.max() <= EOT
    if not any(s in text.lower() for s in SPECIAL):
        assert int((row == EOT).sum()) == 1 and int((row == SOT).sum()) == 1
        assert int(row.argmax()) == end  # CLIP pools the text feature at argmax(ids)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts, length=lengths)
@example(text='', length=8)
@example(text='\x00\x01\x02\x7f', length=8)
@example(text='a' * 100_000, length=77)  # very long: cut at 75 tokens
@example(text='🙂' * 200, length=32)
@example(text='\u202eevil\u202c text', length=16)
@example(text='\ud800 lone surrogate', length=8)
def test_tokenize_any_text(text, length):
    row = tokenize(text, length)
    check_row(row, text, length)
    assert row.tolist() == expected_row(text, length)
    import open_clip
    assert torch.equal(row, open_clip.tokenizer.tokenize([text], length)[0])


@settings(max_examples=50, deadline=None)
@given(captions=st.lists(texts, min_size=1, max_size=5), length=lengths)
def test_transform_batches(captions, length):
    out = CLIPBPETokenize(context_length=length).transform(dict(text=captions))['text']
    assert out.shape == (len(captions), length)
    for row, text in zip(out, captions):
        check_row(row, text, length)


def test_special_token_strings_in_captions():
    """A caption that spells a special token gets that token id, as in open_clip and OpenAI's
    tokenizer: the row still ends with EOT, but argmax pooling would stop at the first EOT."""
    row = tokenize('a <end_of_text> b', 12)
    assert row.tolist()[:5] == [SOT, 320, EOT, 321, EOT]
    check_row(row, 'a <end_of_text> b', 12)


@pytest.mark.parametrize('length', [7, 78, 32.0, True, '32'])
def test_bad_context_length(length):
    with pytest.raises(ValueError, match=r'context_length must be an int in \[8, 77\]'):
        tokenize('x', length)
