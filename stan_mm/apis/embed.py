"""Video and text embeddings of a built model (retriever or recognizer), L2-normalized.

Video embedding ``[N, E]`` of a batch of packed samples (``VideoPipeline`` outputs):

- retrieval model (``STANRetriever``): ``model.encode_video(imgs)`` on the
  ``[N, T, C, H, W]`` batch of ``model.data_preprocessor`` (one view per video), then L2
  normalization: the ``video_feature`` of ``tools/test.py``;
- recognizer (``Recognizer3D`` ...): the backbone output of every view
  (``model.extract_feat(..., test_mode=True)``: ``[N*V, E]``; feature maps are averaged
  over their space-time positions), each view L2-normalized, averaged over the V views,
  and L2-normalized again.

Text embedding ``[M, E]`` (L2-normalized) of raw strings (no prompt template):

- retrieval model: ``model.encode_text`` over CLIP BPE tokens of the test pipeline's
  ``context_length`` (what the model was tested with; longer texts are cut, with a
  warning naming them);
- recognizer with a text head (``TextClassifierHead``): its ``text_encoder`` over tokens of
  the encoder's full context length (a causal text tower gives the same embedding for any
  length that fits the text);
- a recognizer without a text tower has no text embedding (:func:`text_tower` is None).

Text files (one text per line) are read by :func:`read_text_lines`.

Mixed precision: run the embedding calls inside :func:`autocast_towers` (what
``tools/extract_features.py --amp`` does): the towers compute in bf16 (or fp16 on CUDA),
the embeddings are still returned as float32.
"""
import contextlib
import os.path as osp
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmengine.dataset import pseudo_collate
from torch import nn

from .inference import model_kind


class NonFiniteEmbeddingError(ValueError):
    """An embedding holds NaN or inf (``items``: the videos or texts it was made of)."""

    def __init__(self, items: Sequence[str], message: str):
        super().__init__(message)
        self.items = list(items)


def check_finite_embeddings(emb: torch.Tensor, names: Sequence[str], what: str) -> None:
    """Raise :class:`NonFiniteEmbeddingError` naming the items (``names[i]`` for row i;
    ``what``: 'video' or 'text') whose embedding row holds NaN or inf. Such a row used to be
    saved as it was: a search then ranked that video last (NaN sorts last) without a word."""
    bad = (~torch.isfinite(emb).all(dim=1)).nonzero().flatten().tolist()
    if not bad:
        return
    items = [names[i] for i in bad]
    shown = ', '.join(repr(n if len(n) <= 80 else n[:77] + '...') for n in items[:5])
    raise NonFiniteEmbeddingError(items, (
        f'{len(bad)} of {len(names)} {what}s got an embedding that is NaN or infinite '
        f'({shown}{", ..." if len(bad) > 5 else ""}); it is not saved or ranked. Usual '
        f'causes: fp16 overflow (--amp fp16 on a model trained in bf16: use --amp bf16, or '
        f'leave --amp out) or a diverged checkpoint (NaN weights)'))


def pool_features(feats) -> torch.Tensor:
    """Backbone output -> ``[M, C]``: a tuple's first item; maps ``[M, C, ...]`` averaged
    over everything after C."""
    if isinstance(feats, (tuple, list)):
        feats = feats[0]
    if feats.dim() > 2:
        feats = feats.flatten(2).mean(dim=-1)
    return feats


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` inside the block (no dropout / drop path: deterministic
    embeddings); on exit every submodule gets back its own ``training`` flag (a model in
    training mode with frozen, eval-mode parts is restored exactly)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


def autocast_towers(device, enabled: bool = True, dtype: Optional[torch.dtype] = None):
    """A context in which the video and text towers run under autocast
    (``torch.autocast(device.type, dtype=dtype)``) on CUDA and on the CPU; a no-op when not
    ``enabled`` or on other devices. :func:`embed_video_batch` and :func:`embed_texts`
    still return float32 embeddings (L2-normalized in fp32).

    ``dtype`` None: bf16. ``tools/extract_features.py --amp`` passes the dtype the config
    trains in (:func:`stan_mm.utils.amp.resolve_amp_dtype`). The CPU autocasts in bf16
    only; on a CPU without bf16 instructions (AVX512-BF16 / AMX) it can be slower than
    fp32. The embeddings differ from fp32 ones in the 2nd-3rd digit: check a retrieval
    metric once against fp32 on your data.

    Args:
        device: the model's device (``torch.device``, ``'cuda:0'``, ``'cpu'``).
        enabled: False: no autocast.
        dtype: ``torch.bfloat16`` (default) or ``torch.float16`` (CUDA only).
    """
    device = torch.device(device)
    if not enabled or device.type not in ('cuda', 'cpu'):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if dtype is None else dtype
    if device.type == 'cpu' and dtype != torch.bfloat16:
        raise ValueError(f'autocast_towers: the CPU autocasts in bf16 only, got {dtype}')
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def embed_video_batch(model: nn.Module, samples: Sequence[dict]) -> torch.Tensor:
    """Packed samples (``VideoPipeline`` outputs) -> video embeddings ``[N, E]`` float32,
    L2-normalized, on the CPU (see the module docstring).

    The model runs in eval mode (no dropout / drop path, as in testing) whatever its mode;
    its previous mode is restored afterwards, also on an error."""
    with eval_mode(model):
        data = model.data_preprocessor(pseudo_collate(list(samples)), False)
        inputs = data['inputs']
        if model_kind(model) == 'retriever':
            imgs = inputs['imgs'] if isinstance(inputs, dict) else inputs
            emb = model.encode_video(imgs).float()                    # [N, E]
        else:
            n, views = inputs.shape[:2]                               # [N, V, ...]
            feats, _ = model.extract_feat(inputs, test_mode=True)
            feats = F.normalize(pool_features(feats).float(), dim=-1)  # [N*V, E]
            emb = feats.view(n, views, -1).mean(dim=1)                # [N, E]
    return F.normalize(emb, dim=-1).cpu()


def _pipeline_tokenizer(cfg) -> Optional[dict]:
    """The test pipeline's ``CLIPBPETokenize`` entry (its context length and truncation
    rule), or None (also when ``cfg`` is None or empty: a model built without a config,
    e.g. by ``MODELS.build``, has no ``model.cfg``)."""
    from .video import config_test_pipeline
    if cfg is None:
        return None
    try:
        steps = config_test_pipeline(cfg)
    except ValueError:
        return None
    for t in steps:
        if t['type'] == 'CLIPBPETokenize':
            return t
    return None


def _pipeline_context_length(cfg) -> Optional[int]:
    t = _pipeline_tokenizer(cfg)
    return None if t is None else int(t.get('context_length', 77))


def text_tower(model: nn.Module) -> Optional[Tuple[Callable, int]]:
    """``(encode: tokens [M, L] -> [M, E], context_length L)`` or None when the model
    has no text tower (see the module docstring)."""
    if model_kind(model) == 'retriever':
        enc = model.text_backbone
        length = _pipeline_context_length(getattr(model, 'cfg', None)) or int(
            enc.context_length)
        return model.encode_text, min(length, int(enc.context_length))
    encoder = getattr(model.cls_head, 'text_encoder', None)
    if encoder is None:
        return None
    return encoder, int(getattr(encoder, 'context_length', 77))


def require_text_tower(model: nn.Module) -> Tuple[Callable, int]:
    """:func:`text_tower`, or ``ValueError`` explaining which configs have one."""
    tower = text_tower(model)
    if tower is None:
        raise ValueError(f'{type(model.cls_head).__name__} has no text tower: text '
                         f'embeddings need a retrieval config or a recognition config with '
                         f'a text-classifier head (TextClassifierHead)')
    return tower


@torch.no_grad()
def embed_texts(model: nn.Module, texts: Sequence[str], batch_size: int = 256,
                progress: bool = False) -> torch.Tensor:
    """Texts -> ``[M, E]`` float32 L2-normalized embeddings on the CPU (``progress``: a
    progress bar over the texts).

    The model runs in eval mode (no dropout / drop path, as in testing) whatever its mode;
    its previous mode is restored afterwards, also on an error. A model without
    ``model.cfg`` (built by ``MODELS.build``, not :func:`init_model`) tokenizes with its
    text tower's full context length and cuts long texts keeping the end-of-text token
    (``truncate='eot'``). Texts longer than the context length are cut: one warning per
    call names how many, the first few indices and their token counts.

    Raises:
        ValueError: the model has no text tower.
        NonFiniteEmbeddingError: (a ``ValueError``) an embedding holds NaN or inf; it
            names the texts.
    """
    from stan_mm.datasets.transforms.tokenize import tokenize
    from stan_mm.utils.progress import progress_bar
    encode, length = require_text_tower(model)
    truncate = 'eot'
    if model_kind(model) == 'retriever':   # the captions' rule in tools/test.py too
        truncate = (_pipeline_tokenizer(getattr(model, 'cfg', None)) or {}).get(
            'truncate', 'eot')
    device = next(model.parameters()).device
    from stan_mm.models.retrievers.stan_retriever import caption_keys
    out: List[torch.Tensor] = []
    keys: List[torch.Tensor] = []            # one per text: equal for equal tokens
    texts = list(texts)
    cut: List[Tuple[int, int]] = []          # (index, token count) of the texts cut
    with progress_bar(total=len(texts), desc='texts', unit='text',
                      disable=not progress) as bar, \
            eval_mode(model):
        for i in range(0, len(texts), batch_size):
            tokens = tokenize(texts[i:i + batch_size], length, truncate)
            keys.append(caption_keys(tokens))
            cut += _cut_rows(texts, i, tokens, length)
            out.append(F.normalize(encode(tokens.to(device)).float(), dim=-1).cpu())
            bar.update(len(tokens))
    if cut:
        _warn_cut(cut, len(texts), length, truncate)
    if not out:
        return torch.zeros(0, embed_dim(model))
    emb = torch.cat(out)
    check_finite_embeddings(emb, texts, 'text')
    # a text repeated in another batch is computed again with other batch neighbours and
    # can differ in its last bits (4.5e-8 found): the rows of equal tokens (the metric's
    # rule: 'a man' and 'a  man' too) are made the first one's, so duplicates tie exactly
    # in retrieval, as docs/retrieval.md promises
    first: dict = {}
    rows = [first.setdefault(k, i) for i, k in enumerate(torch.cat(keys).tolist())]
    if len(first) < len(texts):
        emb = emb[rows]
    return emb


#: how many of the cut texts :func:`embed_texts`'s warning names
CUT_SHOWN = 5


def _cut_rows(texts: Sequence[str], start: int, tokens: torch.Tensor, length: int
              ) -> List[Tuple[int, int]]:
    """``(index, token count)`` of the texts ``texts[start:start + len(tokens)]`` that
    ``tokenize`` cut to ``length`` tokens. Only a row filled to its last position can have
    been cut, so only those texts are counted again (their BPE words are in the
    tokenizer's cache by now): a list of short texts costs one comparison per row."""
    from stan_mm.datasets.transforms.tokenize import token_count
    full = torch.nonzero(tokens[:, -1] != 0).flatten().tolist()
    counted = ((start + j, token_count(texts[start + j])) for j in full)
    return [(i, n) for i, n in counted if n > length]


def _warn_cut(cut: List[Tuple[int, int]], total: int, length: int, truncate: str) -> None:
    """One warning for all the texts :func:`embed_texts` cut."""
    import logging
    from mmengine.logging import print_log
    shown = ', '.join(f'{i} ({n} tokens)' for i, n in cut[:CUT_SHOWN])
    more = f', ... ({len(cut) - CUT_SHOWN} more)' if len(cut) > CUT_SHOWN else ''
    rule = ('<end_of_text> kept last' if truncate == 'eot' else
            "truncate='slice': the first tokens, without <end_of_text>")
    print_log(f'embed_texts: {len(cut)} of {total} texts are longer than the text model\'s '
              f'context of {length} tokens (<start_of_text> and <end_of_text> included); '
              f'only their first {length} tokens are embedded ({rule}): text {shown}{more} '
              f'(0-based: row i of the embeddings, line i + 1 of a text file). Shorten them '
              f'to have the whole text count',
              logger='current', level=logging.WARNING)


def read_text_lines(path: str, option: str) -> List[str]:
    """The texts of a file with one text per line (``tools/extract_features.py --texts``,
    ``tools/demo/search.py --queries``): text i (row i of the embeddings) is line i + 1.

    Line breaks are removed, nothing else; trailing blank lines are ignored (a file may
    end with a newline). A blank or whitespace-only line before the last text raises
    ``ValueError`` naming the file and the line numbers: dropping it would shift every
    later row against the line numbers that users build ground truth from.

    Args:
        option: how the tool calls the file in messages (``'--texts'``).

    Raises:
        FileNotFoundError: no such file. ValueError: blank lines, no text, not UTF-8.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'{option} {path!r}: file not found (expected one text per '
                                f'line)')
    try:
        with open(path, encoding='utf-8-sig') as f:   # a BOM is not part of the first text
            lines = [ln.rstrip('\r\n') for ln in f]
    except UnicodeDecodeError as e:
        raise ValueError(f'{option} {path!r}: not UTF-8 text ({e})') from None
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ValueError(f'{option} {path!r}: no text in the file')
    blank = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if blank:
        shown = ', '.join(map(str, blank[:10])) + (' ...' if len(blank) > 10 else '')
        raise ValueError(f'{option} {path!r}: blank line(s) {shown} among the texts; every '
                         f'line up to the last text must hold one text (row i of the '
                         f'embeddings is line i + 1). Remove those lines, or put the '
                         f'missing texts there')
    return lines


def embed_dim(model: nn.Module) -> int:
    """Width E of the video embedding."""
    if model_kind(model) == 'retriever':
        return int(model.embed_dim)
    backbone = model.backbone
    for name in ('embed_dim', 'out_channels', 'in_channels'):
        if isinstance(getattr(backbone, name, None), int):
            return getattr(backbone, name)
    return int(model.cls_head.in_channels)
