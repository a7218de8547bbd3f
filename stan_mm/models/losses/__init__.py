"""Losses (registered in MMAction2's ``MODELS``): :class:`SymmetricInfoNCELoss` for video-text
retrieval, and :func:`all_gather_with_grad` (global-batch contrastive losses)."""
from .contrastive import SymmetricInfoNCELoss, autocast_off, learned_logit_scale
from .gather import all_gather_no_grad, all_gather_with_grad

__all__ = ['SymmetricInfoNCELoss', 'autocast_off', 'learned_logit_scale', 'all_gather_with_grad',
           'all_gather_no_grad']
