"""CLIPSTAN: a CLIP ViT image tower with the STAN branch (Liu et al., CVPR 2023)."""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from mmaction.registry import MODELS
from mmengine.model import BaseModule
from torch import nn
from torch.utils.checkpoint import checkpoint

from stan_mm.errors import ConfigValueError

from .stan_branch import BranchEmbedding, LevelFusion, STANBranch, STANLayer
from .stan_spatial import SpatialBlock
from .stan_temporal import (build_temporal_module, normalize_temporal_module,
                            packed_self_attention)

LAYOUTS = ('auto', 'NCTHW', 'NTCHW')
STRUCTURES = ('branch', 'posterior')


def _is_int(value) -> bool:
    """An int that is not a bool (``True`` passes ``isinstance(value, int)``)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _build_visual_tower(arch, pretrained: Optional[str], precision: str = 'fp32',
                        quick_gelu: Optional[bool] = None) -> nn.Module:
    """The open_clip ``VisionTransformer`` ``CLIPSTAN.__init__`` builds:
    :func:`stan_mm.models.clip.build_clip_vision` with loading strict and the errors naming
    CLIPSTAN, which has no ``strict`` option.

    The one place CLIPSTAN builds its CLIP tower, kept a module-level function so that
    ``STANRetriever`` can replace it while it builds its video tower
    (``stan_mm.models.retrievers.stan_retriever._reuse_clip_visual``: the video tower then
    takes the image tower of the retriever's own CLIP instead of building a second one)."""
    from stan_mm.models.clip import build_clip_vision  # lazy: avoids an import cycle
    return build_clip_vision(arch, pretrained, precision=precision, quick_gelu=quick_gelu,
                             loaded_by='CLIPSTAN (pretrained=...)',
                             what='CLIP image tower of model.backbone')


def _is_plain_open_clip_block(block: nn.Module) -> bool:
    """An open_clip ``ResidualAttentionBlock`` whose attention is a batch-first self-attention
    ``nn.MultiheadAttention`` with one packed in-projection (what CLIP's towers use)."""
    from open_clip.transformer import ResidualAttentionBlock
    attn = getattr(block, 'attn', None)
    return (type(block) is ResidualAttentionBlock and not hasattr(block, 'ln_1_kv')
            and type(attn) is nn.MultiheadAttention and attn.batch_first
            and attn._qkv_same_embed_dim and attn.in_proj_weight is not None
            and attn.bias_k is None and attn.bias_v is None and not attn.add_zero_attn)


def clip_block_forward(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``block(x)`` for one CLIP transformer block on batch-first tokens ``[M, L, D]``.

    For open_clip's ``ResidualAttentionBlock`` (same parameters, same result)::

        x = x + ls_1(MHA(ln_1(x)));  x = x + ls_2(mlp(ln_2(x)))

    with the self-attention computed by :func:`packed_self_attention`: q/k/v stay strided
    views of the in-projection and the fused kernel's output needs no copy, where
    ``nn.MultiheadAttention`` transposes to sequence-first and copies q/k/v and the output
    on its training path (CPU, ViT-B/16 block over 8 frames: 4 % less time for forward +
    backward, 2 % for inference). Any other block runs as ``block(x)``."""
    if not _is_plain_open_clip_block(block):
        return block(x)
    x = x + block.ls_1(packed_self_attention(block.ln_1(x), block.attn))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def cast_branch_weights(branch: nn.Module, dtype: torch.dtype) -> None:
    """``precision='fp16'``/``'bf16'``: the branch's weights in ``dtype`` the way open_clip's
    ``convert_weights_to_lp`` leaves CLIP's: norms (they compute in fp32 from fp16/bf16
    input) and the time embedding (like CLIP's class and positional embeddings; cast to the
    tokens' dtype where used) stay fp32, every other parameter is cast."""
    if dtype == torch.float32:
        return
    for m in branch.modules():
        if isinstance(m, (nn.LayerNorm, nn.Embedding)):
            continue
        for p in m.parameters(recurse=False):
            p.data = p.data.to(dtype)


def check_vision_tower(visual: nn.Module) -> None:
    """Refuse image towers STAN is not defined for (no class token pooling, custom blocks)."""
    problems = []
    if getattr(visual, 'attn_pool', None) is not None:
        problems.append('attentional pooling')
    if getattr(visual, 'pool_type', 'tok') != 'tok':
        problems.append(f'pool_type={visual.pool_type!r} (needs class-token pooling)')
    if getattr(visual, 'proj', None) is None:
        problems.append('no output projection')
    blocks = getattr(getattr(visual, 'transformer', None), 'resblocks', None)
    if blocks is None or not all(hasattr(b, 'attn') and hasattr(b.attn, 'in_proj_weight')
                                 for b in blocks):
        problems.append('blocks are not open_clip ResidualAttentionBlocks')
    elif not getattr(visual.transformer, 'batch_first', True):
        problems.append('transformer is not batch_first')
    if problems:
        raise ConfigValueError('CLIPSTAN needs a plain CLIP ViT image tower; this one has '
                               + ', '.join(problems))


@MODELS.register_module()
class CLIPSTAN(BaseModule):
    """CLIP ViT image tower + STAN branch (Spatial-Temporal Auxiliary Network).

    CLIP encodes every frame independently; a branch of K layers consumes the outputs of
    K CLIP blocks (multi-level features), models them across frames (temporal module) and
    within frames (spatial module), and its video [CLS] is added to CLIP's final frame
    [CLS] before ``ln_post`` and the projection::

        e_t   = proj(ln_post(frameCLS_t(h_L) + videoCLS(branch)))     [N, T, E]
        video = mean_t e_t                                            [N, E]

    The defaults reproduce the public STAN reproduction exactly (its checkpoints convert
    with ``tools/convert/stan_public_to_mm.py``); ``temporal_module='conv'``,
    ``level_proj``, ``spatial_module=False``, ``structure='posterior'``,
    ``multi_level=False`` and ``levels`` are the paper's variants and ablations
    (Tables 6 and 8). ``depth=0`` is plain CLIP with mean pooling over frames: ``video``
    equals open_clip's ``encode_image`` (unnormalized) averaged over frames.

    Parameter names: CLIP is ``visual.*`` (open_clip ``VisionTransformer`` keys) and every
    branch parameter is under ``branch.``: ``branch.embed.time_embed``,
    ``branch.layers.{k}.fusion.proj``, ``branch.layers.{k}.temporal.*``,
    ``branch.layers.{k}.spatial.*``. The paper's learning rates (2e-6 CLIP / 2e-5 STAN) are
    ``optim_wrapper = dict(optimizer=dict(lr=2e-6, ...),
    paramwise_cfg=dict(custom_keys={'backbone.branch': dict(lr_mult=10)}))``. The branch
    re-uses CLIP's ``class_embedding`` and ``positional_embedding`` (as the reproduction
    does): they stay CLIP parameters.

    Branch details (public reproduction, default):

    * layer k (k = 1..K) runs after CLIP block ``levels[k]``; its spatial module is a copy
      of that pretrained CLIP block, made right after the CLIP weights are loaded;
    * input of layer 1 (:class:`BranchEmbedding`): video CLS =
      ``0.5 * (mean_t frameCLS + class_embedding + pos_embedding[0])``, patch (t, p) =
      ``f_{t,p} + pos_embedding[1 + p] + time_embed[t]`` (``time_embed`` learnable
      ``Embedding(max_frames, D)``, N(0, 1) init, dropout 0); ``video_cls='mean'`` and
      ``embed_drop_rate`` give the paper's Eq. 4 instead;
    * layers k > 1 first add level k (:class:`LevelFusion`): plain sum, level CLS averaged
      over frames; ``level_proj=True`` puts the paper's ``W_proj`` (Eqs. 5-6, a
      ``Linear(D, D)`` initialized to the identity) on the level;
    * each layer = temporal module then spatial module; the video CLS bypasses the temporal
      module; drop path rates ``linspace(0, drop_path_rate, K)``;
    * ``branch_tokens`` are ordered patch-major, frame-minor (index ``1 + p*T + t``).

    Args:
        arch: CLIP architecture: open_clip name (``'ViT-B-16'``), OpenAI spelling
            (``'ViT-B/16'``), a clip_cfg dict (full, or of the image tower alone:
            ``{'embed_dim', 'vision_cfg', 'quick_gelu'?}`` without ``text_cfg``, which
            builds and loads only the image tower, also from full CLIP weights), or
            ``None`` to infer it from ``pretrained``.
        pretrained: local CLIP weights (OpenAI, open_clip or HuggingFace layout) or None
            (random init); weights of the image tower alone do too (``visual.*`` keys, an
            open_clip ``model.visual`` state dict, HF ``CLIPVisionModelWithProjection``).
            Full STAN checkpoints load with ``load_from``/``init_cfg``.
        depth: number K of branch layers; 0 gives CLIP with mean pooling over frames.
        temporal_module: ``'attn'`` (Eq. 8, alias ``'selfattn'``), ``'conv'`` (Eq. 9) or
            ``None`` (Table 6 "cross-frame off").
        spatial_module: ``False`` removes the intra-frame module (attention and MLP) from
            every branch layer (Table 6 "intra-frame off"); the video CLS then reads the
            temporal modules' updates averaged over the patch tokens (``STANLayer``).
        levels: 1-based indices of the CLIP blocks whose outputs feed the branch, strictly
            increasing, one per branch layer, e.g. ``(6, 8, 10, 12)`` (Table 8). Default:
            the last K blocks ``(L-K+1, ..., L)``. Only for ``structure='branch'``.
        level_proj: use ``W_proj`` for levels k > 1 (paper Eqs. 5-6).
        structure: ``'branch'`` (default) or ``'posterior'``. Posterior (Table 6 "branch
            off + multi-level off"): STAN is appended on CLIP's last output: the branch
            input is built from h_L only (same :class:`BranchEmbedding`), the K layers are
            stacked with no level fusion, and the output fusion is unchanged (CLIP's frame
            CLS of h_L + the branch's video CLS). Spatial modules are still copies of CLIP
            blocks L-K+1..L.
        multi_level: ``False`` (``structure='branch'`` only; Table 6 "branch on,
            multi-level off") feeds only ``levels[0]`` into the branch, no fusion after.
        drop_path_rate: maximum drop-path rate of the branch layers.
        max_frames: rows of the temporal embedding (public reproduction: 64).
        interpolate_time_embed: allow T > max_frames by interpolating that table.
        video_cls: the first video [CLS] token: ``'public'`` (default, the public
            reproduction: ``0.5 * (mean_t frameCLS + class_embedding + pos_embedding[0])``)
            or ``'mean'`` (paper Eq. 4: ``mean_t frameCLS``).
        embed_drop_rate: dropout on the branch's patch tokens after the spatial and
            temporal embeddings are added (paper Eq. 4 "then dropout"; public
            reproduction: 0).
        conv_reduction: bottleneck ratio of the conv temporal module (paper: 8).
        grad_checkpointing: recompute CLIP blocks in backward.
        branch_grad_checkpointing: recompute branch layers in backward.
        frozen_stages: -1 freezes nothing; n >= 0 freezes CLIP's embeddings (conv1,
            class and positional embeddings, ``ln_pre``) and its first n blocks.
        freeze_clip: freeze every CLIP parameter (embeddings, blocks, ``ln_post``, ``proj``).
            Frozen parameters get ``requires_grad=False`` and their modules stay in eval
            mode in ``train()``; a frozen prefix of CLIP runs under ``no_grad``.
        input_layout: ``'NCTHW'`` (Recognizer3D), ``'NTCHW'`` (retrieval) or ``'auto'``
            (decided by which of dims 1 and 2 equals 3; ambiguous shapes raise).
        precision: passed to ``build_clip_vision`` (``'fp32'``, ``'fp16'``, ``'bf16'``).
        quick_gelu: force CLIP's activation (default: ``build_clip_vision``'s rule, that of
            ``build_clip``).
        pos_embed_init_std: random init only (``pretrained=None``): draw CLIP's positional
            embedding ``[1+P, D]`` from N(0, std) instead of open_clip's N(0, D^-0.5).
            The branch reads patch positions from this table; at open_clip's scale a
            from-scratch tiny model does not learn position-dependent motion (moving
            left/right/up/down) in minutes, at std 1.0 it does (the quickstart;
            measurements in docs/quickstart.md).
        temporal_out_init_std: 0 (default, paper and public reproduction): the temporal
            modules' output layers (attn ``fc``, conv ``up``) start at zero, so the branch
            adds nothing at init to a pretrained CLIP. > 0: their weights start N(0, std)
            (biases zero); from random weights the temporal path then gets gradients from
            the first step (the quickstart uses 0.02).
        init_cfg: mmengine init config.
    """

    def __init__(self,
                 arch: Union[str, dict, None] = 'ViT-B-16',
                 pretrained: Optional[str] = None,
                 depth: int = 4,
                 temporal_module: Optional[str] = 'attn',
                 spatial_module: bool = True,
                 levels: Optional[Sequence[int]] = None,
                 level_proj: bool = False,
                 structure: str = 'branch',
                 multi_level: bool = True,
                 drop_path_rate: float = 0.1,
                 max_frames: int = 64,
                 interpolate_time_embed: bool = False,
                 video_cls: str = 'public',
                 embed_drop_rate: float = 0.,
                 conv_reduction: int = 8,
                 grad_checkpointing: bool = False,
                 branch_grad_checkpointing: bool = False,
                 frozen_stages: int = -1,
                 freeze_clip: bool = False,
                 input_layout: str = 'auto',
                 precision: str = 'fp32',
                 quick_gelu: Optional[bool] = None,
                 pos_embed_init_std: Optional[float] = None,
                 temporal_out_init_std: float = 0.,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        if input_layout not in LAYOUTS:
            raise ConfigValueError(f'CLIPSTAN: input_layout={input_layout!r}; expected one of '
                                   f'{LAYOUTS}')
        if structure not in STRUCTURES:
            raise ConfigValueError(f'CLIPSTAN: structure={structure!r}; expected one of '
                                   f'{STRUCTURES}')
        temporal_module = normalize_temporal_module(temporal_module)
        self.input_layout = input_layout
        self.grad_checkpointing = grad_checkpointing
        self.frozen_stages = frozen_stages
        self.freeze_clip = freeze_clip

        self.visual = _build_visual_tower(arch, pretrained, precision, quick_gelu)
        check_vision_tower(self.visual)
        if pos_embed_init_std is not None:
            self._reinit_pos_embed(pos_embed_init_std, pretrained)
        blocks = self.visual.transformer.resblocks
        self.num_layers = len(blocks)
        self.width = self.visual.conv1.out_channels
        self.embed_dim = self.visual.proj.shape[1]
        self.num_heads = blocks[0].attn.num_heads

        self.depth = self._check_depth(depth)
        if (not isinstance(drop_path_rate, (int, float)) or isinstance(drop_path_rate, bool)
                or not 0 <= drop_path_rate < 1):
            raise ConfigValueError(f'CLIPSTAN: drop_path_rate={drop_path_rate!r}; expected a '
                                   f'number in [0, 1) (the last STAN layer drops its residual '
                                   f'branch with this probability)')
        patch_drop = getattr(getattr(self.visual, 'patch_dropout', None), 'prob', 0.)
        if self.depth > 0 and patch_drop > 0:
            raise ConfigValueError(f'CLIPSTAN: the CLIP arch has vision_cfg.patch_dropout='
                                   f'{patch_drop}, which drops patch tokens in training; the STAN '
                                   f'branch needs every patch of every frame. Set '
                                   f'vision_cfg.patch_dropout=0 (or use depth=0).')
        self.structure = structure
        branch_levels = self._resolve_levels(levels, structure)
        if not _is_int(frozen_stages) or not -1 <= frozen_stages <= self.num_layers:
            raise ConfigValueError(f'CLIPSTAN: frozen_stages={frozen_stages!r}; expected an int in '
                                   f'[-1, {self.num_layers}] (-1: nothing frozen, n: embeddings '
                                   f'and the first n CLIP blocks)')
        self.branch = None
        fuse = structure == 'branch' and multi_level
        # CLIP levels read by the branch (1-based): all K with fusion, else the first only
        self.levels = branch_levels if fuse else branch_levels[:1]
        if self.depth > 0:
            if level_proj and not fuse:
                raise ConfigValueError('CLIPSTAN: level_proj=True needs multi-level fusion '
                                       "(structure='branch', multi_level=True)")
            if temporal_module is None and not spatial_module:
                raise ConfigValueError('CLIPSTAN: temporal_module=None and spatial_module=False '
                                       'leave the branch empty; use depth=0 for plain CLIP')
            ints = [('max_frames', max_frames)] + (
                [('conv_reduction', conv_reduction)] if temporal_module == 'conv' else [])
            for name, value in ints:
                if not _is_int(value) or value < 1:
                    raise ConfigValueError(f'CLIPSTAN: {name}={value!r}; expected an int >= 1')
            spatial_src = branch_levels if structure == 'branch' else list(
                range(self.num_layers - self.depth + 1, self.num_layers + 1))
            self.branch = self._build_branch(
                spatial_src, temporal_module, spatial_module, fuse, level_proj,
                drop_path_rate, max_frames, interpolate_time_embed, conv_reduction,
                branch_grad_checkpointing, video_cls, embed_drop_rate)
            self._init_temporal_out(temporal_out_init_std)
            cast_branch_weights(self.branch, self.visual.conv1.weight.dtype)
        self._freeze()

    # ------------------------------------------------------------------ construction
    def _reinit_pos_embed(self, std, pretrained) -> None:
        if pretrained is not None:
            raise ConfigValueError(
                'CLIPSTAN: pos_embed_init_std re-draws CLIP\'s positional embedding and would '
                f'overwrite the pretrained one loaded from {pretrained!r}; it is meant for '
                'training from random weights (pretrained=None). Remove one of the two.')
        if not isinstance(std, (int, float)) or isinstance(std, bool) or not std > 0:
            raise ConfigValueError(f'CLIPSTAN: pos_embed_init_std={std!r}; expected a number > 0')
        with torch.no_grad():
            self.visual.positional_embedding.normal_(0.0, float(std))

    def _init_temporal_out(self, std) -> None:
        """Output layer of every temporal module (attn ``fc``, conv ``up``): zero (default,
        the module is the identity at init) or weights N(0, std), zero bias."""
        if not isinstance(std, (int, float)) or isinstance(std, bool) or std < 0:
            raise ConfigValueError(f'CLIPSTAN: temporal_out_init_std={std!r}; expected a number '
                                   '>= 0 (0: zero init, as in the paper)')
        if not std:
            return
        for layer in self.branch.layers:
            out = getattr(layer.temporal, 'fc', None) or getattr(layer.temporal, 'up', None)
            if out is not None:
                with torch.no_grad():
                    out.weight.normal_(0.0, float(std))

    def _check_depth(self, depth) -> int:
        if not _is_int(depth) or depth < 0 or depth > self.num_layers:
            raise ConfigValueError(f'CLIPSTAN: depth={depth!r}; expected an int in '
                                   f'[0, {self.num_layers}] (this CLIP has {self.num_layers} '
                                   f'blocks)')
        return depth

    def _resolve_levels(self, levels, structure: str) -> List[int]:
        """Validated 1-based CLIP block indices, one per branch layer (posterior: [L])."""
        L, K = self.num_layers, self.depth
        if structure == 'posterior':
            if levels is not None:
                raise ConfigValueError("CLIPSTAN: levels only apply to structure='branch' (the "
                                       "posterior structure reads CLIP's last output)")
            return [L] if K else []
        if levels is None:
            levels = list(range(L - K + 1, L + 1))
        levels = list(levels)
        ok = (len(levels) == K and all(_is_int(v) and 1 <= v <= L for v in levels)
              and all(a < b for a, b in zip(levels, levels[1:])))
        if not ok:
            raise ConfigValueError(
                f'CLIPSTAN: levels={levels!r} is invalid; expected {K} (= depth) strictly '
                f'increasing 1-based CLIP block indices in [1, {L}], e.g. '
                f'{tuple(range(L - K + 1, L + 1))} for the last {K} blocks')
        return levels

    def _build_branch(self, spatial_src, temporal_module, spatial_module, fuse, level_proj,
                      drop_path_rate, max_frames, interpolate_time_embed, conv_reduction,
                      grad_ckpt, video_cls='public', embed_drop_rate=0.) -> STANBranch:
        K, D = self.depth, self.width
        dpr = [drop_path_rate * k / max(K - 1, 1) for k in range(K)]  # linspace(0, rate, K)
        blocks = self.visual.transformer.resblocks
        layers = []
        for k in range(K):
            layers.append(STANLayer(
                fusion=LevelFusion(D, level_proj) if fuse and k > 0 else None,
                temporal=build_temporal_module(temporal_module, D, self.num_heads, dpr[k],
                                               conv_reduction),
                spatial=SpatialBlock(blocks[spatial_src[k] - 1], dpr[k])
                if spatial_module else None))
        embedding = BranchEmbedding(D, max_frames, interpolate_time_embed,
                                    drop_rate=embed_drop_rate, video_cls=video_cls)
        return STANBranch(layers, embedding, grad_ckpt)

    # ------------------------------------------------------------------ freezing
    def _clip_stages(self) -> List[List[nn.Parameter]]:
        """CLIP parameters by stage: [embeddings, block 1, ..., block L, head]."""
        v = self.visual
        emb = [v.class_embedding, v.positional_embedding, *v.conv1.parameters(),
               *v.ln_pre.parameters()]
        head = [*v.ln_post.parameters(), v.proj]
        return [emb] + [list(b.parameters()) for b in v.transformer.resblocks] + [head]

    def _frozen_modules(self) -> List[nn.Module]:
        v = self.visual
        if self.freeze_clip:
            return [v]
        if self.frozen_stages < 0:
            return []
        return [v.conv1, v.ln_pre, v.patch_dropout,
                *v.transformer.resblocks[:self.frozen_stages]]

    def _freeze(self) -> None:
        stages = self._clip_stages()
        n = len(stages) if self.freeze_clip else self.frozen_stages + 1
        for stage in stages[:max(n, 0)]:
            for p in stage:
                p.requires_grad_(False)
        for m in self._frozen_modules():
            m.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            for m in self._frozen_modules():
                m.eval()
        return self

    def _frozen_prefix(self) -> int:
        """Number of leading CLIP stages (embeddings, blocks) without trainable params."""
        n = 0
        for stage in self._clip_stages()[:-1]:
            if any(p.requires_grad for p in stage):
                break
            n += 1
        return n

    # ------------------------------------------------------------------ forward
    def to_frames(self, x: torch.Tensor) -> Tuple[torch.Tensor, int, int]:
        """``[N, C, T, H, W]`` or ``[N, T, C, H, W]`` -> frames ``[N*T, C, H, W]``, N, T.

        ``x`` must be floating point and already normalized with CLIP's mean/std (what the
        data preprocessor, ``ActionDataPreprocessor`` with CLIP's ``mean``/``std``, gives);
        integer pixels (uint8 / int64 frames from a video reader) raise ``TypeError``:
        cast to float they would be read as normalized values."""
        expected = ("expected a 5-D video tensor [N, C, T, H, W] (Recognizer3D) or "
                    "[N, T, C, H, W] (retrieval); set CLIPSTAN(input_layout='NCTHW' or "
                    "'NTCHW')")
        given = tuple(x.shape)
        if x.dim() != 5:
            raise ValueError(f'CLIPSTAN: got input of shape {given}; {expected}')
        if not x.is_floating_point():
            raise TypeError(
                f'CLIPSTAN: the input video x must be a floating point tensor already '
                f'normalized with CLIP\'s mean/std, got dtype {x.dtype} (shape {given}): raw '
                f'pixels? Pass the frames through the model\'s data preprocessor '
                f'(ActionDataPreprocessor with CLIP\'s mean/std, e.g. '
                f'model.data_preprocessor(data)) or normalize them yourself')
        C = self.visual.conv1.in_channels
        layout = self.input_layout
        if layout == 'auto':
            c1, c2 = x.shape[1] == C, x.shape[2] == C
            if c1 and c2:
                raise ValueError(
                    f'CLIPSTAN: input shape {tuple(x.shape)} is ambiguous (dims 1 and 2 both '
                    f'equal {C}: T == {C}?); set input_layout=\'NCTHW\' or \'NTCHW\'')
            if not (c1 or c2):
                raise ValueError(f'CLIPSTAN: input shape {tuple(x.shape)} has no {C}-channel '
                                 f'dim at position 1 or 2; {expected}')
            layout = 'NCTHW' if c1 else 'NTCHW'
        if layout == 'NCTHW':
            x = x.transpose(1, 2)
        if x.shape[2] != C:
            raise ValueError(f'CLIPSTAN(input_layout={self.input_layout!r}): input shape '
                             f'{given} does not have {C} channels where the layout '
                             f'{layout} puts them')
        N, T = x.shape[:2]
        H, W = x.shape[-2:]
        if (H, W) != tuple(self.visual.image_size):
            raise ValueError(
                f'CLIPSTAN: frames are {H}x{W} but the CLIP positional embedding expects '
                f'{self.visual.image_size[0]}x{self.visual.image_size[1]} images '
                f'(grid {self.visual.grid_size}, patch {self.visual.patch_size}); resize/crop '
                f'the input to that size (the last Resize/crop of the data pipeline, e.g. '
                f'CenterCrop(crop_size={self.visual.image_size[0]})), or use a CLIP arch whose '
                f'image_size is {H}x{W} with weights trained at that size (e.g. '
                f'ViT-L/14@336px for 336x336; the positional embedding is not interpolated, '
                f'so the weights must match the resolution)')
        return x.reshape(N * T, *x.shape[2:]), N, T

    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Patch embedding + class token + positional embedding + ``ln_pre``:
        ``[M, C, H, W]`` -> ``[M, 1+P, D]`` (open_clip's ``VisionTransformer`` stem)."""
        v = self.visual
        x = v.conv1(frames.to(v.conv1.weight.dtype))                   # [M, D, g, g]
        x = x.flatten(2).transpose(1, 2)                               # [M, P, D]
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        return v.ln_pre(v.patch_dropout(x))

    def forward_clip(self, frames: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Run CLIP on frames ``[M, C, H, W]``. Returns h_L ``[M, 1+P, D]`` and the outputs
        of the blocks in ``self.levels`` (same shape), in that order."""
        grad = torch.is_grad_enabled()
        frozen = self._frozen_prefix()
        ckpt = self.grad_checkpointing and self.training and grad
        with torch.set_grad_enabled(grad and frozen == 0):
            x = self.embed_frames(frames)
        wanted = set(self.levels)
        levels = []
        for i, block in enumerate(self.visual.transformer.resblocks):
            with torch.set_grad_enabled(grad and i + 1 >= frozen):
                if ckpt and i + 1 >= frozen:
                    x = checkpoint(clip_block_forward, block, x, use_reentrant=False)
                else:
                    x = clip_block_forward(block, x)
            if i + 1 in wanted:
                levels.append(x)
        return x, levels

    def _forward(self, x: torch.Tensor, with_tokens: bool) -> Dict[str, torch.Tensor]:
        frames, N, T = self.to_frames(x)
        h_last, levels = self.forward_clip(frames)
        cls = h_last[:, 0].reshape(N, T, -1)                           # [N, T, D]
        out = {}
        if self.branch is not None:
            tokens = h_last.shape[1]
            levels = [lv.reshape(N, T, tokens, -1) for lv in levels]
            video_cls, patches = self.branch(levels, self.visual.class_embedding,
                                             self.visual.positional_embedding)
            cls = cls + video_cls[:, None]
            if with_tokens:
                out['branch_tokens'] = torch.cat([video_cls[:, None], patches.flatten(1, 2)],
                                                 dim=1)
        frame_emb = self.visual.ln_post(cls) @ self.visual.proj        # [N, T, E]
        out['frames'] = frame_emb
        out['video'] = frame_emb.mean(dim=1)
        return out

    def forward_features(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Video ``x`` (see :meth:`to_frames`) -> dict with ``video`` ``[N, E]``, ``frames``
        ``[N, T, E]`` (per-frame embeddings e_t) and, when the branch exists,
        ``branch_tokens`` ``[N, 1+T*P, D]`` (video CLS, then patch-major frame-minor)."""
        return self._forward(x, with_tokens=True)

    def forward(self, x: torch.Tensor, return_dict: bool = False):
        """Video ``[N, C, T, H, W]`` or ``[N, T, C, H, W]`` -> video embedding ``[N, E]``
        (or the dict of :meth:`forward_features` when ``return_dict``)."""
        if return_dict:
            return self.forward_features(x)
        return self._forward(x, with_tokens=False)['video']
