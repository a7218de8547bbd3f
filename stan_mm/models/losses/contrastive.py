"""Symmetric InfoNCE over video-text pairs (CLIP / CLIP4Clip / STAN retrieval loss)."""
import contextlib
import logging
import math
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from torch import nn

from mmaction.registry import MODELS

from stan_mm.errors import ConfigValueError

from .gather import all_gather_no_grad, all_gather_with_grad, gather_sizes

DUPLICATE_MODES = ('mask', 'keep')
#: the log-only entries of ``SymmetricInfoNCELoss(..., return_terms=True)`` (and of
#: ``STANRetriever.loss``): text->video and video->text InfoNCE; no ``'loss'`` in the
#: names, so they are logged but not optimized
TERMS = ('nce_t2v', 'nce_v2t')
#: video ids that live on an accelerator (not on the CPU) are read back to look for a
#: batch of a single video only when the batch (after gathering) has at most this many
#: rows: the read-back waits for the device. Ids handed over on the CPU (what
#: ``STANRetriever`` does) are checked whatever the batch size, without waiting.
SYNC_CHECK_MAX_ROWS = 16


def learned_logit_scale(log_scale: nn.Parameter, max_scale: float) -> torch.Tensor:
    """``exp(log_scale)`` of a learnable log logit scale, after clamping the parameter
    itself (in place, outside autograd) to at most ``log(max_scale)``, as CLIP's training
    does. Clamping ``exp(log_scale)`` in the graph instead would give a zero gradient for
    good once the bound is reached (OpenAI's checkpoints store 4.6055 > ln 100)."""
    with torch.no_grad():
        log_scale.clamp_(max=math.log(max_scale))
    return log_scale.exp()


def autocast_off(device: torch.device):
    """A context in which autocast is disabled on ``device`` (cosine / tau logits stay fp32
    inside an AMP region: tau = 0.01 turns bf16's 3 significant digits of a cosine into
    errors of 0.2 and more in a logit)."""
    if device.type in ('cuda', 'cpu', 'xpu'):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


@MODELS.register_module()
class SymmetricInfoNCELoss(nn.Module):
    """Symmetric InfoNCE: video->text plus text->video cross-entropy, SUMMED (public STAN
    reproduction; CLIP4Clip averages the two, i.e. half this value).

    With L2-normalized ``v`` ``[B, E]`` and ``t`` ``[B, E]`` (row i of both is pair i) and
    ``S = s * v @ t.T`` ``[B, B]`` (``s`` = logit scale = 1/tau)::

        loss = mean_i -log softmax_j(S[i, j])[i]      (video i -> its caption: nce_v2t)
             + mean_j -log softmax_i(S[i, j])[j]      (caption j -> its video: nce_t2v)

    Global batch: with ``gather=True`` the features of all ranks are gathered WITH gradient
    (:func:`.gather.all_gather_with_grad`) before ``S`` is formed, so B is the global batch
    and the loss equals the one-process loss on the full batch (identity on one process).

    Duplicate videos: one batch can hold two captions of the same video (datasets with
    ``caption_sampling='all'``). ``duplicate_videos='mask'`` (default) removes the
    off-diagonal pairs that share a video (``video_ids[i] == video_ids[j]``, i != j) from
    BOTH softmax denominators: such a pair is a true match, so it is neither pushed apart
    as a negative nor counted as a second positive. ``'keep'`` treats it as a negative,
    like the public reproduction and CLIP4Clip do. Without ``video_ids`` nothing is masked.
    ``video_ids`` may be given on the CPU with the features on an accelerator (they are
    moved with ``non_blocking=True``: no wait for the device); then the check below costs
    no device read-back.

    Degenerate batches: a batch (the global batch when gathering) of one pair, or whose
    pairs all belong to one video (``'mask'``), leaves every caption its own video as the
    only candidate: the loss and its gradient are exactly 0, and an optimizer step still
    applies weight decay and advances the LR schedule. The first such batch logs a
    warning (once per loss module); the retrieval configs set ``drop_last=True`` on their
    train dataloaders so that a small last batch cannot cause it. Ids on an accelerator
    are only checked for batches of at most :data:`SYNC_CHECK_MAX_ROWS` rows (a device
    read-back); a batch of one pair is always recognised (its size is known on the host).

    Args:
        gather: gather features (and video ids) across ranks.
        duplicate_videos: ``'mask'`` or ``'keep'`` (see above).
        loss_weight: factor on the loss.
    """

    def __init__(self, gather: bool = True, duplicate_videos: str = 'mask',
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        if duplicate_videos not in DUPLICATE_MODES:
            raise ConfigValueError(f'SymmetricInfoNCELoss: duplicate_videos={duplicate_videos!r}; '
                                   f'expected one of {DUPLICATE_MODES}')
        self.gather = gather
        self.duplicate_videos = duplicate_videos
        self.loss_weight = float(loss_weight)
        self._warned_single_video = False

    def similarity(self, video_emb: torch.Tensor, text_emb: torch.Tensor,
                   logit_scale: Union[float, torch.Tensor],
                   video_ids: Optional[torch.Tensor] = None
                   ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Logits ``[B, B]`` (video rows, text columns; global batch when gathering) and
        the gathered ``video_ids`` ``[B]`` (None without ids, and with
        ``duplicate_videos='keep'``, which does not use them: they are not gathered)."""
        if video_emb.dim() != 2 or video_emb.shape != text_emb.shape:
            raise ValueError(f'SymmetricInfoNCELoss: video_emb {tuple(video_emb.shape)} and '
                             f'text_emb {tuple(text_emb.shape)} must both be [B, E] with '
                             'row i of each forming pair i')
        if video_ids is not None and tuple(video_ids.shape) != (video_emb.shape[0], ):
            raise ValueError(f'SymmetricInfoNCELoss: video_ids must be [B] = '
                             f'[{video_emb.shape[0]}], got {tuple(video_ids.shape)}')
        if self.duplicate_videos != 'mask':
            video_ids = None                    # 'keep' never reads them: nothing to gather
        elif video_ids is not None and video_ids.device != video_emb.device:
            # host-side ids (STANRetriever): copied without waiting for the device (a
            # blocking host-to-GPU copy synchronizes the stream, i.e. waits for the
            # forward pass queued before it)
            video_ids = video_ids.to(video_emb.device, non_blocking=True)
        with autocast_off(video_emb.device):                         # fp32 logits
            v = F.normalize(video_emb.float(), dim=-1)
            t = F.normalize(text_emb.float(), dim=-1)
            if self.gather:
                # the ranks' row counts once per step (one collective, one read-back) for
                # both gathers
                sizes = gather_sizes(v.shape[0], v.device) if video_ids is not None else None
                both = all_gather_with_grad(torch.cat([v, t], dim=1),    # one collective
                                            sizes=sizes)
                v, t = both.split(v.shape[1], dim=1)
                if video_ids is not None:
                    video_ids = all_gather_no_grad(video_ids, sizes=sizes)
            return logit_scale * (v @ t.t()), video_ids

    def directions(self, video_emb: torch.Tensor, text_emb: torch.Tensor,
                   logit_scale: Union[float, torch.Tensor] = 100.0,
                   video_ids: Optional[torch.Tensor] = None
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The two cross-entropies ``(v2t, t2v)`` (unweighted, with gradient; global batch
        when gathering): ``v2t`` over the rows of ``S`` (each video picks its caption),
        ``t2v`` over its columns (each caption picks its video). The loss is
        ``loss_weight * (v2t + t2v)``."""
        host_ids = None
        if (video_ids is not None and video_ids.device.type == 'cpu'
                and self.duplicate_videos == 'mask' and not self._warned_single_video):
            host_ids = video_ids.tolist()       # no device involved: free to inspect
        logits, video_ids = self.similarity(video_emb, text_emb, logit_scale, video_ids)
        n = logits.shape[0]
        if not self._warned_single_video:
            self._check_batch(n, video_emb.shape[0], host_ids, video_ids)
        if video_ids is not None and self.duplicate_videos == 'mask':
            same = video_ids[:, None] == video_ids[None, :]
            same.fill_diagonal_(False)
            # unconditionally: an all-False mask changes nothing, and testing for it
            # (``bool(same.any())``) waited for the device every step
            logits = logits.masked_fill(same, float('-inf'))
        target = torch.arange(n, device=logits.device)
        return F.cross_entropy(logits, target), F.cross_entropy(logits.t(), target)

    def _check_batch(self, n: int, n_local: int, host_ids: Optional[Sequence[int]],
                     video_ids: Optional[torch.Tensor]) -> None:
        """Warn (once) when the batch of ``n`` rows (global when gathered; ``n_local`` on
        this rank) holds fewer than 2 distinct videos, which makes the loss exactly 0.
        ``host_ids``: this rank's ids when they came on the CPU; ``video_ids``: the
        (gathered) ids the mask uses, None when nothing is masked."""
        if n < 2:
            single = True                       # one pair: its own video is all there is
        elif video_ids is None:
            single = False                      # no mask: every other pair is a negative
        elif host_ids is not None and len(set(host_ids)) >= 2:
            single = False                      # the global batch holds these videos too
        elif host_ids is not None and n == n_local:
            single = True                       # nothing gathered: these ids are all
        elif video_ids.device.type == 'cpu' or n <= SYNC_CHECK_MAX_ROWS:
            # gathered ids (this rank's are one video), or ids given on the device: a
            # read-back, so only for small batches
            single = torch.unique(video_ids).numel() < 2
        else:
            single = False                      # not checked: it would wait for the device
        if not single:
            return
        self._warned_single_video = True
        what = ('a single caption-video pair' if n < 2 else
                f'{n} caption-video pairs that all belong to one video')
        where = ' (the batch gathered from all ranks)' if n != n_local else ''
        print_log(f'SymmetricInfoNCELoss: a training batch holds {what}{where}: each '
                  'caption\'s only candidate is its own video, so the loss and its gradient '
                  'are exactly 0 and this optimizer step only applies weight decay (and '
                  'advances the LR schedule). Set drop_last=True in train_dataloader (a '
                  'small last batch) and/or use a larger batch (or more videos). Warned '
                  'once.', logger='current', level=logging.WARNING)

    def forward(self, video_emb: torch.Tensor, text_emb: torch.Tensor,
                logit_scale: Union[float, torch.Tensor] = 100.0,
                video_ids: Optional[torch.Tensor] = None, return_terms: bool = False
                ) -> Union[torch.Tensor, Tuple[torch.Tensor, Dict[str, torch.Tensor]]]:
        """``video_emb`` ``[B, E]``, ``text_emb`` ``[B, E]`` (pairs by row), ``logit_scale``
        (scalar, 1/tau), ``video_ids`` ``[B]`` int (optional) -> scalar loss.

        ``return_terms=True``: ``(loss, dict(nce_t2v=..., nce_v2t=...))``, the two
        directions times ``loss_weight``, detached, for the training log (:data:`TERMS`;
        their names hold no ``'loss'``, so mmengine's ``parse_losses`` does not add them to
        the optimized loss). ``loss`` is the same tensor, bit for bit, either way; with
        ``loss_weight=1`` the two terms add up to it exactly (else up to rounding). No
        device work beyond the loss itself: the terms are views of tensors it computes
        anyway (a multiplication each when ``loss_weight != 1``)."""
        v2t, t2v = self.directions(video_emb, text_emb, logit_scale, video_ids)
        loss = self.loss_weight * (v2t + t2v)
        if not return_terms:
            return loss
        w = self.loss_weight
        terms = dict(nce_t2v=t2v.detach(), nce_v2t=v2t.detach())
        if w != 1.0:
            terms = {k: w * v for k, v in terms.items()}
        return loss, terms
