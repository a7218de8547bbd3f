"""CLIP text tower as an MMAction2 model: tokens [N, L] -> embeddings [N, E]."""
from typing import Optional

import torch
from mmengine.model import BaseModule
from torch import nn

from mmaction.registry import MODELS

from stan_mm.errors import ConfigValueError

from .builder import build_clip, require_clip_bpe_vocab


def causal_mask(length: int) -> torch.Tensor:
    """Additive causal mask [L, L]: 0 on and below the diagonal, -inf above."""
    return torch.full((length, length), float('-inf')).triu_(1)


def _tracing() -> bool:
    """Whether this forward is being traced into a graph (``torch.compile``,
    ``torch.export``, ``torch.jit.trace``), where reading token values back is a
    data-dependent branch the tracer cannot take (export and ``fullgraph=True`` fail)."""
    compiler = getattr(torch, 'compiler', None)
    return bool(torch.jit.is_tracing()
                or (compiler is not None and (compiler.is_compiling()
                                              or getattr(compiler, 'is_exporting',
                                                         lambda: False)())))


@MODELS.register_module()
class CLIPTextEncoder(BaseModule):
    """CLIP's text transformer (open_clip modules), run over the given token length.

    Holds ``token_embedding``, ``positional_embedding`` [C, W], ``transformer`` (open_clip
    ``Transformer``), ``ln_final`` and ``text_projection`` [W, E] under the same names as
    open_clip's ``CLIP``, so its state dict uses open_clip's text key names.

    ``forward(tokens)`` with tokens [N, L], L <= C (the context length of the weights):
    embeds, adds ``positional_embedding[:L]``, applies the transformer with the causal mask
    sliced to [L, L], ``ln_final``, takes the feature at the end-of-text token (argmax of
    the token ids, as CLIP does) and projects it: [N, E]. Because the mask is causal, a
    caption that fits in L tokens gets the same embedding at L = 32 as at 77, at a fraction
    of the compute.

    Args:
        arch: see :func:`stan_mm.models.clip.build_clip` (name, clip_cfg dict or None).
        pretrained: local CLIP weights (any supported layout) or None.
        frozen: no gradients, and the module stays in eval mode in ``train()``.
        with_cp: gradient checkpointing of the transformer blocks.
        quick_gelu: force the activation (default: ``build_clip``'s rule).
        init_cfg: mmengine init config.
        clip_model: an already built open_clip ``CLIP`` whose text modules are *shared*
            (same parameter objects); prefer :meth:`from_clip`.
    """

    def __init__(self, arch=None, pretrained=None, frozen: bool = False,
                 init_cfg: Optional[dict] = None, with_cp: bool = False,
                 quick_gelu: Optional[bool] = None, clip_model: Optional[nn.Module] = None):
        super().__init__(init_cfg=init_cfg)
        if clip_model is None:
            if arch is None and pretrained is None:
                from .builder import CLIPArchMissingError
                raise CLIPArchMissingError(
                    'CLIPTextEncoder needs arch (e.g. \'ViT-B/16\' or a clip_cfg dict) and/or '
                    'pretrained (a local CLIP weights path); in a config: '
                    'model.cls_head.text_encoder.arch')
            clip_model = build_clip(
                arch, pretrained, quick_gelu=quick_gelu,
                needed_by='CLIPTextEncoder (the CLIP text tower, e.g. the text_encoder of '
                'TextClassifierHead)',
                what='CLIP text tower of model.cls_head.text_encoder')
            require_clip_bpe_vocab(clip_model, pretrained, 'CLIPTextEncoder')
        elif arch is not None or pretrained is not None:
            raise ValueError('pass either clip_model or arch/pretrained, not both')
        self._take_text_modules(clip_model)
        self.frozen = frozen
        if with_cp:
            self.transformer.grad_checkpointing = True
        if frozen:
            self._freeze()

    @classmethod
    def from_clip(cls, clip_model: nn.Module, frozen: bool = False,
                  with_cp: bool = False) -> 'CLIPTextEncoder':
        """Text encoder sharing the text modules and parameters of an open_clip ``CLIP``
        (``frozen``/``with_cp`` then also act on those shared modules)."""
        return cls(clip_model=clip_model, frozen=frozen, with_cp=with_cp)

    def _take_text_modules(self, clip: nn.Module) -> None:
        needed = ('token_embedding', 'positional_embedding', 'transformer', 'ln_final',
                  'text_projection')
        missing = [n for n in needed if not hasattr(clip, n)]
        if missing:
            raise TypeError(f'{type(clip).__name__} is not an open_clip CLIP with its text '
                            f'tower at the top level (missing {missing})')
        pool = getattr(clip, 'text_pool_type', 'argmax')
        if pool != 'argmax':
            raise ConfigValueError(f'text pooling {pool!r} is not supported (CLIP pools at argmax)')
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.context_length = int(self.positional_embedding.shape[0])
        self.register_buffer('attn_mask', causal_mask(self.context_length), persistent=False)

    @property
    def embed_dim(self) -> int:
        """Output width E."""
        proj = self.text_projection
        return proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]

    def _freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad = False
        super().train(False)

    def train(self, mode: bool = True):
        """Keeps eval mode when frozen."""
        return super().train(mode and not self.frozen)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [N, L] (int ids in ``[0, vocab_size)``, L <= context_length) -> text
        embeddings [N, E]. Ids outside the vocabulary raise ``ValueError`` (tokens of
        another tokenizer, or of a CLIP with a larger vocabulary)."""
        if tokens.dim() != 2:
            raise ValueError(f'tokens must be [N, L], got shape {tuple(tokens.shape)}')
        if tokens.dtype.is_floating_point:
            raise TypeError(f'tokens must be integer token ids, got {tokens.dtype}')
        length = tokens.shape[1]
        if length > self.context_length:
            raise ValueError(f'token length {length} exceeds the context length '
                             f'{self.context_length} of this CLIP text encoder (the '
                             f'text_cfg.context_length of its CLIP arch or weights): tokenize '
                             f'to at most {self.context_length} tokens, e.g. '
                             f'CLIPBPETokenize(context_length={self.context_length}) in the '
                             f'data pipeline or TextClassifierHead(context_length='
                             f'{self.context_length})')
        vocab = int(self.token_embedding.num_embeddings)
        if _tracing():
            pass  # torch.compile / torch.export / jit tracing: no data-dependent branch
        elif tokens.numel() and tokens.device.type == 'cpu':
            low, high = int(tokens.min()), int(tokens.max())
            if low < 0 or high >= vocab:
                raise ValueError(f'tokens must be ids in [0, {vocab}) (the vocabulary size '
                                 f'of this CLIP text encoder), got ids from {low} to {high}; '
                                 f'tokenize with the same CLIP BPE vocabulary as the weights')
        elif tokens.numel() and not tokens.is_meta:
            # on an accelerator: checked there, without waiting for the device (reading
            # min/max back stalled every training step); a failure surfaces at a later
            # synchronization as a device-side assertion
            torch._assert_async(((tokens >= 0) & (tokens < vocab)).all(),
                                f'tokens must be ids in [0, {vocab}) (the vocabulary size '
                                f'of this CLIP text encoder); tokenize with the same CLIP '
                                f'BPE vocabulary as the weights')
        cast_dtype = self.transformer.get_cast_dtype()
        x = self.token_embedding(tokens).to(cast_dtype)            # [N, L, W]
        x = x + self.positional_embedding[:length].to(cast_dtype)
        x = self.transformer(x, attn_mask=self.attn_mask[:length, :length])
        x = self.ln_final(x)                                      # [N, L, W]
        eot = tokens.argmax(dim=-1)                               # [N]
        x = x[torch.arange(x.shape[0], device=x.device), eot]     # [N, W]
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection                          # [N, E]
