"""Offline CLIP BPE tokenization (open_clip's bundled vocabulary; no network, no ``clip``).

MMAction2's own ``CLIPTokenize`` needs the OpenAI ``clip`` package; :class:`CLIPBPETokenize`
is its offline replacement with a configurable length. Like ``CLIPTokenize`` it replaces
``results['text']`` (a caption) by its token ids, which ``PackActionInputs`` with
``collect_keys=('imgs', 'text')`` then packs.
"""
from functools import lru_cache
from typing import List, Optional, Sequence, Union

import torch
from mmcv.transforms import BaseTransform

from mmaction.registry import TRANSFORMS

from stan_mm.errors import ConfigValueError

MIN_CONTEXT_LENGTH = 8
MAX_CONTEXT_LENGTH = 77  # CLIP's positional embedding length
#: how a caption longer than the context is cut: 'eot' keeps <end_of_text> as the last
#: token (open_clip, OpenAI CLIP, CLIP4Clip); 'slice' tokenizes at 77 and keeps the first
#: L tokens (the public STAN reproduction's CLIPTokenize(length=L)): a caption of L - 1 or
#: more BPE tokens then has no <end_of_text>, and CLIP's argmax pooling reads the
#: <start_of_text> position instead, the same vector for every such caption
TRUNCATIONS = ('eot', 'slice')


@lru_cache(maxsize=1)
def _tokenizer():
    """open_clip's ``SimpleTokenizer`` with ``clean='lower'`` (ftfy, HTML unescape,
    whitespace squeeze, lower case: the same cleaning as OpenAI's CLIP tokenizer)."""
    from open_clip.tokenizer import SimpleTokenizer
    return SimpleTokenizer(clean='lower')


def _check_length(context_length) -> int:
    if isinstance(context_length, bool) or not isinstance(context_length, int) or not (
            MIN_CONTEXT_LENGTH <= context_length <= MAX_CONTEXT_LENGTH):
        raise ConfigValueError(f'context_length must be an int in [{MIN_CONTEXT_LENGTH}, '
                               f'{MAX_CONTEXT_LENGTH}] (32, 64 and 77 are the usual choices), '
                               f'got {context_length!r}')
    return context_length


def _check_truncate(truncate) -> str:
    if truncate not in TRUNCATIONS:
        raise ConfigValueError(f'truncate must be one of {TRUNCATIONS} (\'eot\': keep '
                               f'<end_of_text> last, CLIP\'s rule; \'slice\': the public STAN '
                               f'reproduction\'s), got {truncate!r}')
    return truncate


def tokenize(texts: Union[str, Sequence[str]], context_length: int = 77,
             truncate: str = 'eot') -> torch.Tensor:
    """CLIP BPE token ids: a str -> LongTensor [L]; a list of str -> LongTensor [n, L].

    Each caption becomes ``<start_of_text> tokens <end_of_text>`` zero-padded to
    ``context_length``. A longer caption is cut so that its last token is still
    ``<end_of_text>`` (the token CLIP pools at) with ``truncate='eot'``; with
    ``truncate='slice'`` the 77-token row is cut to its first ``context_length`` tokens, as
    the public STAN reproduction does (see :data:`TRUNCATIONS`). An empty caption gives
    just the two special tokens.
    """
    context_length = _check_length(context_length)
    truncate = _check_truncate(truncate)
    single = isinstance(texts, str)
    items: List[str] = [texts] if single else list(texts)
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise TypeError(f'tokenize expects str captions, got {type(t).__name__} at '
                            f'index {i}')
    tok = _tokenizer()
    out = torch.zeros(len(items), context_length, dtype=torch.long)
    keep = context_length if truncate == 'eot' else MAX_CONTEXT_LENGTH
    for i, t in enumerate(items):
        ids = [tok.sot_token_id] + tok.encode(t)[:keep - 2] + [tok.eot_token_id]
        ids = ids[:context_length]
        out[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out[0] if single else out


def token_count(text: str) -> int:
    """Tokens ``text`` takes before any truncation, ``<start_of_text>`` and
    ``<end_of_text>`` included: it fits a row of ``context_length`` when at most that."""
    return len(_tokenizer().encode(text)) + 2


@TRANSFORMS.register_module()
class CLIPBPETokenize(BaseTransform):
    """Tokenize captions with CLIP's BPE, offline.

    Required keys: ``keys`` (default ``('text',)``), each a str or a list of str.
    Modified/added keys: ``out_keys`` (default: the same keys), LongTensor [L] for a str,
    [n, L] for a list.

    Args:
        context_length: token length L (an int in [8, 77]; 32, 64 or 77 usually). The text
            encoder runs over L tokens, so compute is proportional to it.
        keys: result keys holding captions.
        out_keys: where to write the token ids (default: overwrite ``keys``).
        truncate: ``'eot'`` (default, CLIP's rule) or ``'slice'`` (the public STAN
            reproduction's, for evaluating its released checkpoints exactly); see
            :data:`TRUNCATIONS`.
    """

    def __init__(self, context_length: int = 77, keys: Sequence[str] = ('text', ),
                 out_keys: Optional[Sequence[str]] = None, truncate: str = 'eot'):
        self.context_length = _check_length(context_length)
        self.truncate = _check_truncate(truncate)
        self.keys = (keys, ) if isinstance(keys, str) else tuple(keys)
        out_keys = self.keys if out_keys is None else out_keys
        self.out_keys = (out_keys, ) if isinstance(out_keys, str) else tuple(out_keys)
        if len(self.out_keys) != len(self.keys):
            raise ConfigValueError(f'out_keys {self.out_keys} must pair up with keys {self.keys}')

    def transform(self, results: dict) -> dict:
        for key, out_key in zip(self.keys, self.out_keys):
            if key not in results:
                raise KeyError(f'CLIPBPETokenize: results have no {key!r} (keys present: '
                               f'{sorted(results)}); set keys=... to the caption key')
            value = results[key]
            if not isinstance(value, (str, list, tuple)):
                raise TypeError(f'CLIPBPETokenize: results[{key!r}] must be a str or a list '
                                f'of str, got {type(value).__name__}')
            results[out_key] = tokenize(value, self.context_length, self.truncate)
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(context_length={self.context_length}, '
                f'keys={self.keys}, out_keys={self.out_keys}, truncate={self.truncate!r})')
