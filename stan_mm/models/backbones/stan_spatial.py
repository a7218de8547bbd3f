"""STAN intra-frame (spatial) module: a copy of a pretrained CLIP block run per frame."""
import copy

import torch
from mmcv.cnn.bricks import DropPath
from torch import nn

from .stan_temporal import check_packed_attention, packed_self_attention


class SpatialBlock(nn.Module):
    """Intra-frame module (paper Eq. 7; public reproduction's ``STAN_S_layers``).

    A full CLIP encoder block (pre-LN attention + pre-LN MLP, residuals) whose weights are a
    copy of a pretrained CLIP block. For each frame t the sequence
    ``[videoCLS; patches of frame t]`` (``1 + P`` tokens) is attended; the T attention
    outputs of the video CLS are averaged back into one; then residual and MLP over all
    ``1 + T*P`` tokens::

        a_t    = DropPath(MHA(LN1([cls; x_t])))            t = 1..T
        cls'   = cls + mean_t a_t[0]         x'_t = x_t + a_t[1:]
        out    = z' + MLP(LN2(z'))           for every token z' of (cls', x')

    Drop path acts on the attention branch per (video, frame) sample, as in the public
    reproduction; the MLP branch has none. Sub-module names equal open_clip's
    ``ResidualAttentionBlock`` (``ln_1, attn, ls_1, ln_2, mlp.c_fc, mlp.c_proj, ls_2``).

    Args:
        block: an open_clip ``ResidualAttentionBlock`` (batch-first); it is deep-copied.
        drop_path: drop-path rate of the attention branch.
    """

    def __init__(self, block: nn.Module, drop_path: float = 0.):
        super().__init__()
        for name in ('ln_1', 'attn', 'ls_1', 'ln_2', 'mlp', 'ls_2'):
            if not hasattr(block, name):
                raise TypeError(
                    f'SpatialBlock needs an open_clip ResidualAttentionBlock with '
                    f'{name!r}; got {type(block).__name__} (custom blocks are not supported)')
        block = copy.deepcopy(block)
        if not getattr(block.attn, 'batch_first', False):
            raise ValueError('SpatialBlock expects a batch_first nn.MultiheadAttention')
        check_packed_attention(block.attn, 'SpatialBlock')
        self.ln_1, self.attn, self.ls_1 = block.ln_1, block.attn, block.ls_1
        self.ln_2, self.mlp, self.ls_2 = block.ln_2, block.mlp, block.ls_2
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, cls: torch.Tensor, x: torch.Tensor):
        """``cls``: video CLS ``[B, D]``; ``x``: patches ``[B, P, T, D]`` -> same shapes."""
        B, P, T, D = x.shape
        seq = torch.cat([cls[:, None, None, :].expand(B, T, 1, D), x.transpose(1, 2)],
                        dim=2).reshape(B * T, 1 + P, D)           # [B*T, 1+P, D]
        y = self.ln_1(seq)
        y = packed_self_attention(y, self.attn)                    # [B*T, 1+P, D]
        # split (not two slices): its backward is one concatenation, where slicing would
        # zero-fill a full-size gradient per slice and add them
        y_cls, y_x = self.drop_path(self.ls_1(y)).view(B, T, 1 + P, D).split([1, P], dim=2)
        cls = cls + y_cls.squeeze(2).mean(dim=1)
        x = x + y_x.transpose(1, 2)
        # one MLP call over all 1 + P*T tokens (a separate call for the video CLS would be
        # a matrix-vector product that reads the MLP weights once more, forward and back)
        z = torch.cat([cls[:, None], x.flatten(1, 2)], dim=1)      # [B, 1+P*T, D]
        z = z + self.ls_2(self.mlp(self.ln_2(z)))
        cls, x = z.split([1, P * T], dim=1)
        return cls.squeeze(1), x.unflatten(1, (P, T))
