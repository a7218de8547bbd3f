"""Stop a run whose loss or weights became NaN or infinite.

Without this, a NaN in the weights makes every later log line ``loss: nan grad_norm: nan``,
the run ends with exit status 0, ``last_checkpoint`` names NaN weights and a validation of
them still reports a number. Two guards, both on in ``configs/_base_/default_runtime.py``:

* :class:`NonFiniteLossHook` (``default_hooks.nonfinite``) looks at the losses of every
  training iteration. An isolated non-finite loss is tolerated (AMP fp16: ``GradScaler``
  skips that step and lowers its scale), with a warning; the run stops with
  :class:`NonFiniteTrainingError` after ``patience`` non-finite losses in a row, or at once
  when, after such a loss, the weights themselves are no longer finite (they never recover).
* :class:`~stan_mm.engine.checkpoint_hook.AtomicCheckpointHook` refuses to write a
  checkpoint of non-finite weights (epoch, iteration or best), so that ``last_checkpoint``
  and ``best_*.pth`` keep naming finite ones.

Cost: per iteration, one ``isfinite`` of the loss scalars, reduced to one flag and read
with one ``.item()`` (one host sync; mmengine's ``RuntimeInfoHook`` already calls
``.item()`` on every logged loss of every iteration, so the GPU has already been waited
for); in distributed runs, one all-reduce of that one-element flag (see
:func:`any_rank`). The weights are only checked when a loss was not finite, and at every
checkpoint: one fused L2 norm per parameter tensor (``torch._foreach_norm``) and one sync,
measured at 35-90 ms for 150 M fp32 parameters (a ViT-B/16 CLIP's 299 tensors) on a busy
2-core CPU, where ``torch.isfinite(p).all()`` per tensor took 1.5-4 s; the healthy
per-iteration check took ~55 us on that CPU. No random number is drawn.
"""
import math
import os.path as osp
from typing import Dict, List, Optional

import torch
from mmengine.hooks import Hook
from mmaction.registry import HOOKS

from stan_mm.errors import ConfigValueError


class NonFiniteTrainingError(RuntimeError):
    """The loss or the weights of a training run became NaN or infinite."""


def _unwrap(model):
    from mmengine.model import is_model_wrapper
    return model.module if is_model_wrapper(model) else model


def nonfinite_parameters(model, limit: Optional[int] = 5) -> List[str]:
    """The names of (up to ``limit``; None: all) the parameters of ``model`` that hold a NaN
    or an infinity; ``[]`` when all are finite. A model wrapper (DDP) is unwrapped.

    Fast path: one L2 norm per tensor (``torch._foreach_norm``, fused on GPUs) and one host
    sync; a NaN or inf element makes its tensor's norm NaN or inf. Only the tensors whose
    norm is not finite are then checked element-wise, which names them (and rules out a
    finite tensor whose norm overflowed, e.g. in fp16)."""
    named = [(n, p) for n, p in _unwrap(model).named_parameters()
             if p.is_floating_point() and p.device.type != 'meta' and p.numel()]
    if not named:
        return []
    with torch.no_grad():
        tensors = [p.detach() for _, p in named]
        try:
            norms = torch._foreach_norm(tensors, 2)
        except (AttributeError, RuntimeError, TypeError, NotImplementedError):
            norms = [torch.linalg.vector_norm(t) for t in tensors]
        device = norms[0].device
        finite = torch.isfinite(torch.stack([n.to(device, torch.float32) for n in norms]))
        if bool(finite.all()):
            return []
        bad = []
        for (name, p), norm_ok in zip(named, finite.tolist()):
            if not norm_ok and not bool(torch.isfinite(p).all()):
                bad.append(name)
                if limit is not None and len(bad) >= limit:
                    break
        return bad


def any_rank(flag) -> bool:
    """Whether ``flag`` (a bool or a one-element tensor) is true on any rank: an all-reduce
    (max) of one element when a process group of more than one rank is initialized, else
    the flag itself. Every rank must call it at the same point."""
    from mmengine.dist import all_reduce, get_world_size, is_distributed
    if is_distributed() and get_world_size() > 1:
        t = (flag.detach().reshape(1).to(torch.int32) if torch.is_tensor(flag)
             else torch.tensor([int(bool(flag))], dtype=torch.int32))
        all_reduce(t, op='max')
        return bool(t.item())
    return bool(flag.item()) if torch.is_tensor(flag) else bool(flag)


def published_checkpoint(work_dir) -> Optional[str]:
    """The checkpoint ``<work_dir>/last_checkpoint`` names (or, without it, the one an
    interrupted publication left: :func:`~stan_mm.engine.checkpoint_hook.\
recover_last_checkpoint`); None when there is none."""
    from .checkpoint_hook import read_pointer, recover_last_checkpoint
    named = read_pointer(osp.join(str(work_dir), 'last_checkpoint'))
    if named and ('://' in named or osp.exists(named)):
        return named
    return recover_last_checkpoint(str(work_dir))


def resume_advice(work_dir) -> str:
    """The last checkpoint published in ``work_dir`` and how to go on from it."""
    last = published_checkpoint(work_dir)
    if last:
        where = (f'The last checkpoint published is {last}. Resume from it (python '
                 f'tools/train.py CONFIG --resume {last}) with ')
    else:
        where = 'No checkpoint has been published yet; start again with '
    return (where + 'a lower learning rate (optim_wrapper.optimizer.lr), gradient clipping '
            '(optim_wrapper.clip_grad=dict(max_norm=1.0)) or, with AMP, bf16 instead of fp16 '
            "(optim_wrapper.dtype='bfloat16'), and check the data of these iterations")


def _fmt(values: Dict[str, float]) -> str:
    return ', '.join(f'{k}={v}' for k, v in values.items())


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Stop training when the loss stays NaN/inf or the weights become NaN/inf.

    After each training iteration the losses in the outputs of ``train_step`` (the keys
    with ``loss`` in their name, as mmengine sums them) are checked. A non-finite loss is
    reported as a warning; the run raises :class:`NonFiniteTrainingError` (naming the epoch,
    the iteration, the non-finite loss keys, the last published checkpoint and what to do)

    * after ``patience`` consecutive iterations with a non-finite loss, or
    * at the first one after which the model's parameters hold a NaN or inf
      (``check_weights``; checked only then, so it costs nothing on a healthy run).

    Distributed: the loss that is back-propagated is each rank's own (mmengine's
    ``parse_losses`` does not reduce it), so a bad batch makes one rank's loss NaN a step
    before the all-reduced gradients make every rank's weights NaN. Counting each rank's own
    losses would let one rank raise while the others wait in the next all-reduce, so the
    per-iteration flag is all-reduced (one int, with the one sync the check takes anyway)
    and every rank counts and decides the same way.

    Registered under ``default_hooks.nonfinite`` in ``configs/_base_/default_runtime.py``
    (a config's own ``custom_hooks`` list does not drop it; ``nonfinite=None`` in
    ``default_hooks`` removes it). Example::

        default_hooks = dict(nonfinite=dict(type='NonFiniteLossHook', patience=10))
    """
    # after LoggerHook (BELOW_NORMAL), so that the iteration is logged first; before
    # CheckpointHook (VERY_LOW), so that no iteration checkpoint follows a failed check
    priority = 'LOW'

    def __init__(self, patience: int = 5, check_weights: bool = True):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ConfigValueError(f'NonFiniteLossHook: patience must be an int >= 1, got '
                                   f'{patience!r}')
        self.patience = patience
        self.check_weights = bool(check_weights)
        self._streak = 0
        self._since = None

    def before_train(self, runner) -> None:
        self._streak, self._since = 0, None

    @staticmethod
    def _losses(outputs) -> Dict[str, object]:
        if not isinstance(outputs, dict):
            return {}
        return {k: v for k, v in outputs.items() if 'loss' in k
                and (torch.is_tensor(v) or isinstance(v, (int, float)))}

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        losses = self._losses(outputs)
        tensors = [v for v in losses.values() if torch.is_tensor(v)]
        bad = any(not math.isfinite(v) for v in losses.values() if not torch.is_tensor(v))
        if tensors:
            # one flag on the losses' device: no sync until any_rank reads it
            device = tensors[0].device
            flag = torch.stack([torch.isfinite(t.detach()).all().to(device)
                                for t in tensors]).all().logical_not()
            if bad:
                flag = torch.ones_like(flag)
        else:
            flag = bad
        if not any_rank(flag):
            self._streak, self._since = 0, None
            return
        self._streak += 1
        epoch, it = runner.epoch + 1, runner.iter + 1
        if self._since is None:
            self._since = it
        values = {}
        for k, v in losses.items():
            x = float(v.detach().float().mean()) if torch.is_tensor(v) else float(v)
            if not math.isfinite(x):
                values[k] = x
        mine = (f'non-finite loss ({_fmt(values)})' if values
                else 'a non-finite loss on another rank')
        weights = nonfinite_parameters(runner.model) if self.check_weights else []
        weights_bad = any_rank(bool(weights)) if self.check_weights else False
        where = f'epoch {epoch}, iteration {it}'
        if weights_bad or self._streak >= self.patience:
            if weights_bad:
                why = ('and the weights are no longer finite (' +
                       (', '.join(weights) if weights else 'on another rank') +
                       '): the run cannot recover')
            else:
                why = (f'in {self._streak} consecutive iterations (since iteration '
                       f'{self._since}; patience={self.patience})')
            msg = (f'NonFiniteLossHook: training stopped at {where}: {mine} {why}. '
                   f'{resume_advice(runner.work_dir)}.')
            runner.logger.error(msg)
            raise NonFiniteTrainingError(msg)
        state = ('; the weights are still finite (e.g. AMP skipped the step)'
                 if self.check_weights else '')
        runner.logger.warning(
            f'NonFiniteLossHook: {mine} at {where} ({self._streak} of {self.patience} in a '
            f'row allowed{state})')
