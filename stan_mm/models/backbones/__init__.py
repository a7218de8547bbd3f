"""Backbones. :class:`CLIPSTAN` (registered in MMAction2's ``MODELS``) is a CLIP ViT image
tower with the STAN branch; its building blocks live in ``stan_temporal`` (cross-frame
modules), ``stan_spatial`` (intra-frame module) and ``stan_branch`` (embedding, level
fusion, layers)."""
from .clip_stan import CLIPSTAN
from .stan_branch import BranchEmbedding, LevelFusion, STANBranch, STANLayer
from .stan_spatial import SpatialBlock
from .stan_temporal import TemporalAttention, TemporalConv, build_temporal_module

__all__ = ['CLIPSTAN', 'BranchEmbedding', 'LevelFusion', 'STANBranch', 'STANLayer',
           'SpatialBlock', 'TemporalAttention', 'TemporalConv', 'build_temporal_module']
