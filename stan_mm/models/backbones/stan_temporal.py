"""STAN cross-frame (temporal) modules.

Both modules work on the branch's patch tokens laid out patch-major, frame-minor,
``[B, P, T, D]`` (B videos, P patches per frame, T frames, width D); the video [CLS] token
bypasses them (paper Sec. 3.3, public reproduction). Both are the identity at
initialization: the last linear map of the residual branch is zero-initialized.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from mmcv.cnn.bricks import DropPath
from torch import nn

from stan_mm.errors import ConfigValueError

_ALIASES = {'attn': 'attn', 'selfattn': 'attn', 'self_attn': 'attn', 'conv': 'conv',
            'none': None, None: None}


def normalize_temporal_module(name) -> Optional[str]:
    """Return ``'attn'``, ``'conv'`` or ``None`` for a user-given ``temporal_module``.

    ``'selfattn'`` (the public reproduction's spelling) is accepted for ``'attn'``.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in _ALIASES:
        raise ConfigValueError(
            f"CLIPSTAN: unknown temporal_module={name!r}; expected 'attn' (paper Eq. 8, "
            f"alias 'selfattn'), 'conv' (paper Eq. 9) or None (no cross-frame module)")
    return _ALIASES[key]


def _drop_path(rate: float) -> nn.Module:
    return DropPath(rate) if rate > 0 else nn.Identity()


def check_packed_attention(attn: nn.Module, owner: str) -> None:
    """Refuse attention modules :func:`packed_self_attention` cannot compute exactly."""
    ok = (isinstance(attn, nn.MultiheadAttention) and attn.batch_first
          and attn._qkv_same_embed_dim and attn.in_proj_weight is not None
          and attn.bias_k is None and not attn.add_zero_attn)
    if not ok:
        raise ValueError(f'{owner} needs a batch_first nn.MultiheadAttention with a packed '
                         f'in-projection, no bias_k/bias_v and add_zero_attn=False; got '
                         f'{attn!r}')


#: On CUDA, sequences up to this length (the temporal module's T frames) are attended with
#: two batched matrix products and a softmax: the fused kernels tile the sequence in blocks
#: of 64-128 and spend most of their work on padding at T = 8-16 (measured on an H200:
#: fwd+bwd over [3136, 12, 8, 64] bf16 0.94 ms against 1.69 ms, docs/benchmarks.md).
SHORT_SEQUENCE = 32


def short_sequence_attention(q: torch.Tensor, k: torch.Tensor,
                             v: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` for q, k, v ``[N, H, L, d]`` (no mask, no dropout):
    what ``F.scaled_dot_product_attention(q, k, v)`` computes, as explicit products."""
    a = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1))       # [N, H, L, L]
    return torch.matmul(a.softmax(-1), v)


def use_short_sequence_path(x: torch.Tensor, length: int) -> bool:
    """Whether :func:`packed_self_attention` uses :func:`short_sequence_attention` (CUDA
    input, ``length <= SHORT_SEQUENCE``); on CPU the fused kernel is as fast."""
    return x.is_cuda and length <= SHORT_SEQUENCE


def packed_self_attention(x: torch.Tensor, attn: nn.MultiheadAttention) -> torch.Tensor:
    """``attn(x, x, x, need_weights=False)[0]`` of a batch-first, packed-projection
    ``nn.MultiheadAttention`` (same parameters, same result), computed directly::

        x [N, L, D] -> in-proj [N, L, 3D] -> q, k, v views [N, H, L, D/H]
          -> F.scaled_dot_product_attention -> [N, L, D] -> out-proj

    ``nn.MultiheadAttention`` transposes batch-first input to sequence-first and copies
    q/k/v and the attention output on its training path; here q/k/v are strided views
    handed to the fused kernel, whose output is already ``[N, L, H, D/H]`` in memory (the
    fused CPU and CUDA kernels), so the reshape to ``[N, L, D]`` is free. Attention dropout (``attn.dropout``) applies in training mode.
    """
    N, L, D = x.shape
    H = attn.num_heads
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)           # [N, L, 3D]
    q, k, v = qkv.view(N, L, 3, H, D // H).permute(2, 0, 3, 1, 4).unbind(0)
    p = attn.dropout if attn.training else 0.
    if p == 0. and use_short_sequence_path(x, L):
        y = short_sequence_attention(q, k, v)                            # [N, H, L, D/H]
    else:
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)         # [N, H, L, D/H]
    y = y.transpose(1, 2).reshape(N, L, D)
    return F.linear(y, attn.out_proj.weight, attn.out_proj.bias)


class TemporalAttention(nn.Module):
    """Cross-frame self-attention (paper Eq. 8; public reproduction's ``STAN_T_layers``).

    For every spatial position j the T frame tokens attend to each other::

        y = x + FC(DropPath(MHA(LN(x))))          x: [B*P, T, D]

    ``MHA`` is a new, randomly initialized multi-head attention (PyTorch's default init:
    Xavier-uniform in-projection, zero biases) with CLIP's head count; ``FC``
    (``temporal_fc`` in the public checkpoints) is a zero-initialized ``Linear(D, D)``, so
    the module is the identity at initialization. As in the public reproduction, drop path
    acts per (video, patch) sample and before ``FC``. No MLP.

    Args:
        dim: token width D.
        num_heads: attention heads (CLIP's head count).
        drop_path: drop-path rate of the residual branch.
    """

    def __init__(self, dim: int, num_heads: int, drop_path: float = 0.):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.drop_path = _drop_path(drop_path)
        self.fc = nn.Linear(dim, dim)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: patch tokens ``[B, P, T, D]`` -> same shape."""
        B, P, T, D = x.shape
        y = self.norm(x.reshape(B * P, T, D))
        y = packed_self_attention(y, self.attn)                 # [B*P, T, D]
        y = self.fc(self.drop_path(y))
        return x + y.view(B, P, T, D)


class TemporalConv(nn.Module):
    """Cross-frame 3D convolution bottleneck (paper Eq. 9, "C-STA" / "STAN-conv")::

        y = x + DropPath(Up(GELU(Conv3d(Down(x)))))

    ``Down``: ``Linear(D, D // reduction)``, ``Conv3d``: kernel (T, H, W) = (3, 1, 1) with
    padding (1, 0, 0) over the ``[B, C, T, H, W]`` token grid, ``Up``:
    ``Linear(D // reduction, D)`` zero-initialized (identity at init; the paper gives no
    init). Drop path acts per video. Because the kernel is 1x1 in space, the grid is fed
    as ``(T, P, 1)``, which is the same convolution for any H x W factorization of P.

    Args:
        dim: token width D.
        reduction: bottleneck ratio (paper: 8).
        kernel_t: temporal kernel size (paper: 3).
        drop_path: drop-path rate of the residual branch.
    """

    def __init__(self, dim: int, reduction: int = 8, kernel_t: int = 3,
                 drop_path: float = 0.):
        super().__init__()
        if dim % reduction:
            raise ConfigValueError(f'TemporalConv: width {dim} is not divisible by '
                                   f'reduction={reduction}')
        if kernel_t % 2 != 1:
            raise ConfigValueError(f'TemporalConv: kernel_t={kernel_t} must be odd')
        hidden = dim // reduction
        self.down = nn.Linear(dim, hidden)
        self.conv = nn.Conv3d(hidden, hidden, (kernel_t, 1, 1), padding=(kernel_t // 2, 0, 0))
        self.act = nn.GELU()
        self.up = nn.Linear(hidden, dim)
        self.drop_path = _drop_path(drop_path)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: patch tokens ``[B, P, T, D]`` -> same shape."""
        B, P, T, _ = x.shape
        y = self.down(x)                                        # [B, P, T, C]
        y = y.permute(0, 3, 2, 1).unsqueeze(-1)                 # [B, C, T, P, 1]
        y = self.act(self.conv(y))
        y = y.squeeze(-1).permute(0, 3, 2, 1)                   # [B, P, T, C]
        return x + self.drop_path(self.up(y))


def build_temporal_module(kind: Optional[str], dim: int, num_heads: int,
                          drop_path: float = 0., conv_reduction: int = 8) -> Optional[nn.Module]:
    """``kind`` in ``('attn', 'conv', None)`` -> the module (or ``None``)."""
    kind = normalize_temporal_module(kind)
    if kind == 'attn':
        return TemporalAttention(dim, num_heads, drop_path)
    if kind == 'conv':
        return TemporalConv(dim, conv_reduction, drop_path=drop_path)
    return None
