"""All-gather across ranks that keeps the gradient (for contrastive losses over the global batch).

Every rank computes the same loss over the gathered batch ``[sum_r B_r, ...]``. In backward,
the gradient w.r.t. the gathered tensor is summed over ranks (``all_reduce``) and each rank
keeps the rows it contributed. With DDP averaging the parameter gradients over the W ranks,
the result equals the gradient of ONE process that computed the loss on the full batch:
rank r's rows get ``sum_over_ranks dL/dx = W * dL/dx``, and DDP divides by W.

Ranks may hold different numbers of rows (a smaller last batch): the row counts are gathered
first and the tensors padded to the largest count for the collective, then trimmed.
On a single process (or without an initialized process group) the gather is the identity.
"""
from typing import List, Optional

import torch
import torch.distributed as dist
from mmengine.dist import get_world_size


def _gather_sizes(n: int, device: torch.device, group) -> List[int]:
    world = dist.get_world_size(group)
    size = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    return torch.cat(sizes).tolist()        # one read-back (one device sync), not one per rank


def gather_sizes(n: int, device: torch.device,
                 group: Optional[object] = None) -> Optional[List[int]]:
    """The row counts ``[B_0, ..., B_{W-1}]`` of all ranks (one collective, one read-back),
    to hand to several gathers of one step (``sizes=``); None on a single process."""
    if get_world_size(group) <= 1:
        return None
    return _gather_sizes(n, device, group)


def _check_sizes(sizes: List[int], n: int, group) -> List[int]:
    sizes = [int(s) for s in sizes]
    if len(sizes) != dist.get_world_size(group) or sizes[dist.get_rank(group)] != n:
        raise ValueError(f'sizes={sizes} do not match this process group (world size '
                         f'{dist.get_world_size(group)}) and this rank\'s {n} rows')
    return sizes


def _gather_padded(x: torch.Tensor, sizes: List[int], group) -> torch.Tensor:
    longest = max(sizes)
    if x.shape[0] < longest:
        pad = x.new_zeros((longest - x.shape[0], *x.shape[1:]))
        x = torch.cat([x, pad], dim=0)
    parts = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)], dim=0)


class _AllGatherWithGrad(torch.autograd.Function):
    """``[B_r, ...]`` on rank r -> ``[sum_r B_r, ...]`` (rank order); backward: all-reduce
    (sum) of the incoming gradient, then this rank's rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group, sizes: Optional[List[int]] = None
                ) -> torch.Tensor:
        sizes = _gather_sizes(x.shape[0], x.device, group) if sizes is None else \
            _check_sizes(sizes, x.shape[0], group)
        ctx.group = group
        ctx.sizes = sizes
        ctx.rank = dist.get_rank(group)
        return _gather_padded(x, sizes, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.sizes[:ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]], None, None


def all_gather_with_grad(x: torch.Tensor, group: Optional[object] = None,
                         sizes: Optional[List[int]] = None) -> torch.Tensor:
    """Concatenate ``x`` ``[B_r, ...]`` of every rank along dim 0 (rank order), keeping the
    gradient (see the module docstring). Identity on a single process. ``sizes``: the row
    counts of all ranks from :func:`gather_sizes`, when the caller has them (else gathered
    here)."""
    if get_world_size(group) <= 1:
        return x
    return _AllGatherWithGrad.apply(x, group, sizes)


def all_gather_no_grad(x: torch.Tensor, group: Optional[object] = None,
                       sizes: Optional[List[int]] = None) -> torch.Tensor:
    """Like :func:`all_gather_with_grad` without autograd (e.g. integer ids ``[B_r]``)."""
    if get_world_size(group) <= 1:
        return x
    with torch.no_grad():
        sizes = _gather_sizes(x.shape[0], x.device, group) if sizes is None else \
            _check_sizes(sizes, x.shape[0], group)
        return _gather_padded(x.detach(), sizes, group)
