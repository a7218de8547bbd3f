"""The STAN branch: input embedding, level fusion, branch layers.

Notation: B videos, T frames, P patches per frame, D width. CLIP levels enter as
``[B, T, 1+P, D]`` (frame CLS first). Inside the branch the state is a pair
``(cls [B, D], x [B, P, T, D])``: one video [CLS] token and the patch tokens laid out
patch-major, frame-minor, so ``x.flatten(1, 2)`` is the public reproduction's token order
(index ``p*T + t``).
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from stan_mm.errors import ConfigValueError


class BranchEmbedding(nn.Module):
    """Input of the first branch layer (paper Eq. 4; public reproduction's ``input_ini``).

    Video [CLS] token, ``video_cls``:

    * ``'public'`` (default; the public reproduction, its checkpoints need it):
      ``cls = 0.5 * (mean_t frameCLS_t + (class_embedding + pos_embedding[0]))``;
    * ``'mean'`` (paper Eq. 4): ``cls = mean_t frameCLS_t``.

    Patch tokens: ``x[p, t] = f_{t,p} + Pos_s(p) + Pos_t(t)``, where ``Pos_s`` is CLIP's own
    pretrained positional embedding of the patches (passed in, it stays a CLIP parameter)
    and ``Pos_t`` a learnable ``Embedding(max_frames, D)`` initialized N(0, 1)
    (``time_embed``), then dropout (``drop_rate``; the public reproduction uses 0).

    Args:
        dim: width D.
        max_frames: rows of ``time_embed``; more frames raise unless
            ``interpolate_time_embed`` (linear interpolation of the table to T rows).
        interpolate_time_embed: allow T > max_frames.
        drop_rate: dropout on the patch tokens after the embeddings are added.
        video_cls: ``'public'`` or ``'mean'``, see above.
    """

    VIDEO_CLS = ('public', 'mean')

    def __init__(self, dim: int, max_frames: int = 64, interpolate_time_embed: bool = False,
                 drop_rate: float = 0., video_cls: str = 'public'):
        super().__init__()
        if max_frames < 1:
            raise ConfigValueError(f'max_frames must be >= 1, got {max_frames}')
        if video_cls not in self.VIDEO_CLS:
            raise ConfigValueError(f'CLIPSTAN: video_cls={video_cls!r}; expected one of '
                                   f"{self.VIDEO_CLS} ('public': the public reproduction, "
                                   f"'mean': paper Eq. 4)")
        if (not isinstance(drop_rate, (int, float)) or isinstance(drop_rate, bool)
                or not 0 <= drop_rate < 1):
            raise ConfigValueError(f'CLIPSTAN: embed_drop_rate={drop_rate!r}; expected a number in '
                                   f'[0, 1)')
        self.video_cls = video_cls
        self.max_frames = max_frames
        self.interpolate_time_embed = interpolate_time_embed
        self.time_embed = nn.Embedding(max_frames, dim)
        self.drop = nn.Dropout(drop_rate)

    def time_table(self, num_frames: int) -> torch.Tensor:
        """Temporal embeddings for ``num_frames`` frames, ``[T, D]``."""
        weight = self.time_embed.weight
        if num_frames <= self.max_frames:
            return weight[:num_frames]
        if not self.interpolate_time_embed:
            raise ValueError(
                f'CLIPSTAN: got T={num_frames} frames but the temporal embedding has '
                f'max_frames={self.max_frames} rows. Sample at most {self.max_frames} '
                f'frames, build with a larger max_frames, or set interpolate_time_embed=True '
                f'(linear interpolation of the learned table).')
        table = F.interpolate(weight.t()[None], size=num_frames, mode='linear',
                              align_corners=True)
        return table[0].t()

    def forward(self, level: torch.Tensor, class_embedding: torch.Tensor,
                pos_embedding: torch.Tensor):
        """``level``: CLIP tokens ``[B, T, 1+P, D]``; ``class_embedding``: ``[D]``;
        ``pos_embedding``: ``[1+P, D]``. Returns ``cls [B, D]``, ``x [B, P, T, D]``."""
        T, P = level.shape[1], level.shape[2] - 1
        # CLIP keeps its embeddings in fp32 under precision='fp16'/'bf16' (open_clip's
        # convert_weights_to_lp), as does the time table: computed in the tokens' dtype
        dtype = level.dtype
        class_embedding, pos_embedding = class_embedding.to(dtype), pos_embedding.to(dtype)
        level_cls, level_x = level.split([1, P], dim=2)      # backward: one concatenation
        cls = level_cls.squeeze(2).mean(dim=1)                                # [B, D]
        if self.video_cls == 'public':
            cls = 0.5 * (cls + (class_embedding + pos_embedding[0]))
        pos_time = pos_embedding[1:, None, :] + self.time_table(T).to(dtype)[None]  # [P, T, D]
        # one pass over the tokens; the contiguous [P, T, D] operand goes first so the
        # result is laid out [B, P, T, D] in memory (no extra copy)
        x = torch.add(pos_time, level_x.transpose(1, 2))
        return cls, self.drop(x.contiguous())              # [B, P, T, D] in memory too


class LevelFusion(nn.Module):
    """Adds one CLIP level to the branch state (paper Eqs. 5-6, layers k > 1).

    ``z'_k = z_{k-1} + W_proj^k(level_k)`` where the level's video CLS is its frame CLS
    averaged over frames. Without ``proj`` (public reproduction, default) it is the plain
    sum. With ``proj`` the ``Linear(D, D)`` is initialized to the identity (weight = I,
    bias = 0) so that at initialization it equals the plain sum, i.e. the public
    reproduction; the paper gives no init.
    """

    def __init__(self, dim: int, proj: bool = False):
        super().__init__()
        self.proj = nn.Linear(dim, dim) if proj else None
        if self.proj is not None:
            nn.init.eye_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def forward(self, cls: torch.Tensor, x: torch.Tensor, level: torch.Tensor):
        """``cls [B, D]``, ``x [B, P, T, D]``, ``level [B, T, 1+P, D]`` -> ``(cls, x)``."""
        level_cls, level_x = level.split([1, level.shape[2] - 1], dim=2)
        level_cls = level_cls.squeeze(2).mean(dim=1)
        if self.proj is not None:
            level_cls, level_x = self.proj(level_cls), self.proj(level_x)
        return cls + level_cls, x + level_x.transpose(1, 2)


class STANLayer(nn.Module):
    """One branch layer: optional level fusion, then the temporal module, then the spatial
    module (order of the public reproduction). Any of the three may be ``None``.

    Without a spatial module (Table 6 "intra-frame off") nothing would carry the patch
    tokens into the video CLS, which is all the branch outputs: the temporal modules would
    not reach the output (order-blind, their parameters unused, DDP fails). The paper does
    not say how that row reads the branch out; here the video CLS then adds the temporal
    module's update averaged over all patch tokens, ``cls += mean_{p,t}(temporal(x) - x)``
    (zero at initialization, like the modules themselves).
    """

    def __init__(self, fusion: Optional[nn.Module], temporal: Optional[nn.Module],
                 spatial: Optional[nn.Module]):
        super().__init__()
        self.fusion = fusion
        self.temporal = temporal
        self.spatial = spatial

    def forward(self, cls: torch.Tensor, x: torch.Tensor,
                level: Optional[torch.Tensor] = None):
        """``cls [B, D]``, ``x [B, P, T, D]``, ``level [B, T, 1+P, D]`` or None."""
        if self.fusion is not None:
            cls, x = self.fusion(cls, x, level)
        if self.temporal is not None:
            y = self.temporal(x)
            if self.spatial is None:           # the CLS reads the update (see class doc)
                cls = cls + (y - x).mean(dim=(1, 2))
            x = y
        if self.spatial is not None:
            cls, x = self.spatial(cls, x)
        return cls, x


class STANBranch(nn.Module):
    """The K branch layers plus their input embedding.

    ``levels`` holds the CLIP levels the branch consumes, each ``[B, T, 1+P, D]``: the
    first feeds :class:`BranchEmbedding`; level k (k > 1) is fused before layer k when
    the layer has a fusion (multi-level), and ignored otherwise.

    Args:
        layers: the K :class:`STANLayer`.
        embedding: the :class:`BranchEmbedding`.
        grad_checkpointing: recompute each layer in backward (training only).
    """

    def __init__(self, layers: Sequence[STANLayer], embedding: BranchEmbedding,
                 grad_checkpointing: bool = False):
        super().__init__()
        self.embed = embedding
        self.layers = nn.ModuleList(layers)
        self.grad_checkpointing = grad_checkpointing

    @property
    def multi_level(self) -> bool:
        return any(layer.fusion is not None for layer in self.layers)

    def forward(self, levels: Sequence[torch.Tensor], class_embedding: torch.Tensor,
                pos_embedding: torch.Tensor):
        """Returns video CLS ``[B, D]`` and patch tokens ``[B, P, T, D]``."""
        cls, x = self.embed(levels[0], class_embedding, pos_embedding)
        use_ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for k, layer in enumerate(self.layers):
            level = levels[k] if layer.fusion is not None else None
            if use_ckpt:
                cls, x = checkpoint(layer, cls, x, level, use_reentrant=False)
            else:
                cls, x = layer(cls, x, level)
        return cls, x
