"""Logging review: the learning rate of the STAN branch in the training log
(:class:`~stan_mm.engine.lr_log_hook.ParamGroupLrHook`, ``branch_lr``), and the two
directions of the retrieval loss (``nce_t2v``, ``nce_v2t``) logged without changing the
optimized loss by a bit."""
import glob
import json
import math
import os
import os.path as osp

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.logging import MessageHub
from mmengine.optim import OptimWrapper, OptimWrapperDict, build_optim_wrapper
from mmengine.registry import init_default_scope
from torch import nn

import stan_mm  # noqa: F401
from mmaction.registry import MODELS
from stan_mm.models.losses import SymmetricInfoNCELoss
from stan_mm.testing import tiny_clip_cfg

torch.set_num_threads(1)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
RECOGNITION_SCHEDULE = osp.join(REPO, 'configs', '_base_', 'schedules',
                                'recognition_adamw_cosine_30e.py')


def _hook(**kwargs):
    # imported here: each test fails on its own without the hook
    from stan_mm.engine.lr_log_hook import ParamGroupLrHook
    return ParamGroupLrHook(**kwargs)


class _Runner:
    """What the hook reads of mmengine's Runner."""

    def __init__(self, model, optim_wrapper, cfg=None, name='lr-hook'):
        self.model = model
        self.optim_wrapper = optim_wrapper
        self.cfg = cfg if cfg is not None else Config(dict())
        self.message_hub = MessageHub.get_instance(f'{name}-{id(self)}')

    def scalars(self):
        return {k: float(v.current()) for k, v in self.message_hub.log_scalars.items()}


def _recognizer():
    init_default_scope('mmaction')
    torch.manual_seed(0)
    return MODELS.build(dict(
        type='Recognizer3D',
        backbone=dict(type='CLIPSTAN', arch=tiny_clip_cfg(), depth=2),
        cls_head=dict(type='I3DHead', num_classes=3, in_channels=32)))


# ----------------------------------------------------------------------- branch_lr
def test_hook_logs_the_branch_lr_of_the_stan_schedule():
    """The recognition schedule (STANOptimWrapperConstructor, custom keys backbone.branch,
    cls_head.fc_cls, cls_head.logit_scale, all lr_mult=10): ONE extra scalar,
    train/branch_lr = 10 x the base lr, following a rescaled lr (--auto-scale-lr)."""
    cfg = Config.fromfile(RECOGNITION_SCHEDULE)
    model = _recognizer()
    ow = build_optim_wrapper(model, cfg.optim_wrapper)
    runner = _Runner(model, ow, cfg)
    base = cfg.optim_wrapper.optimizer.lr
    hook = _hook()
    assert hook.priority == 'LOW'          # after RuntimeInfoHook (VERY_HIGH)
    hook.before_train_iter(runner, 0)
    assert runner.scalars() == {'train/branch_lr': base * 10.0}
    # mmengine's Runner.scale_lr multiplies every group's lr: the logged value follows
    for group in ow.optimizer.param_groups:
        group['lr'] = group['lr'] * 0.25
    hook.before_train_iter(runner, 1)
    assert runner.scalars()['train/branch_lr'] == base * 10.0 * 0.25
    assert math.isclose(runner.scalars()['train/branch_lr'],
                        10 * ow.optimizer.param_groups[0]['lr'])


def test_hook_naming_without_config_and_with_wrapper_dicts():
    """No config: named by the module path the groups share; an OptimWrapperDict gets
    its keys as prefix; a wrapper without an optimizer is skipped; a group with the
    base lr adds nothing; tensors on an accelerator are never read back."""
    model = nn.Module()
    model.clip = nn.Linear(2, 2)
    model.head = nn.Module()
    model.head.fc = nn.Linear(2, 2)
    model.other = nn.Linear(2, 2)
    opt = torch.optim.SGD([
        dict(params=list(model.clip.parameters())),
        dict(params=[model.head.fc.weight], lr=0.5),
        dict(params=[model.head.fc.bias], lr=0.5),
        dict(params=list(model.other.parameters()), lr=0.1)], lr=0.1)
    runner = _Runner(model, OptimWrapper(opt))
    hook = _hook()
    hook.before_train_iter(runner, 0)
    assert runner.scalars() == {'train/fc_lr': 0.5}

    second = torch.optim.SGD([dict(params=list(model.other.parameters()))], lr=0.3)
    dict_runner = _Runner(model, OptimWrapperDict(a=OptimWrapper(opt),
                                                  b=OptimWrapper(second)))
    _hook().before_train_iter(dict_runner, 0)
    assert dict_runner.scalars() == {'train/a.fc_lr': 0.5}

    class NoOptimizer:
        pass
    bare = _Runner(model, NoOptimizer())
    _hook().before_train_iter(bare, 0)            # a warning, no error
    assert bare.scalars() == {}

    # a group tag and an explicit custom key win over the module path
    opt.param_groups[1]['name'] = 'new_head'
    opt.param_groups[2]['name'] = 'new_head'
    tagged = _Runner(model, OptimWrapper(opt))
    _hook().before_train_iter(tagged, 0)
    assert tagged.scalars() == {'train/new_head_lr': 0.5}
    del opt.param_groups[1]['name'], opt.param_groups[2]['name']
    keyed = _Runner(model, OptimWrapper(opt))
    _hook(custom_keys=['head']).before_train_iter(keyed, 0)
    assert keyed.scalars() == {'train/head_lr': 0.5}


@pytest.mark.skipif(not torch.cuda.is_available(), reason='AmpOptimWrapper needs CUDA')
def test_hook_with_amp_optim_wrapper():
    from mmengine.optim import AmpOptimWrapper
    cfg = Config.fromfile(RECOGNITION_SCHEDULE)
    model = _recognizer().cuda()
    optim = cfg.optim_wrapper.copy()
    optim.type = 'AmpOptimWrapper'
    ow = build_optim_wrapper(model, optim)
    assert isinstance(ow, AmpOptimWrapper)
    runner = _Runner(model, ow, cfg)
    _hook().before_train_iter(runner, 0)
    assert runner.scalars() == {'train/branch_lr': cfg.optim_wrapper.optimizer.lr * 10.0}


def test_branch_lr_in_a_training_run(tmp_path):
    """A real Runner (tiny recognition config on the STAN schedule and the default runtime,
    warm-up + cosine, 2 iterations): train/branch_lr = 10 x train/lr at every iteration, printed as a learning
    rate in the log line and written to scalars.json."""
    from mmengine.runner import Runner
    from test_recognition import write_tiny_config
    _hook()                                        # registers ParamGroupLrHook
    cfg = Config.fromfile(write_tiny_config(tmp_path, num_train=4, num_val=2))
    cfg.work_dir = str(tmp_path / 'work')
    # the default runtime carries the hook (configs/_base_/default_runtime.py)
    assert cfg.default_hooks.param_group_lr == dict(type='ParamGroupLrHook')
    for split in ('val', 'test'):
        cfg[f'{split}_dataloader'] = cfg[f'{split}_cfg'] = cfg[f'{split}_evaluator'] = None
    cfg.default_hooks.checkpoint = None
    runner = Runner.from_cfg(cfg)
    runner.train()
    hub = runner.message_hub
    lr, _ = hub.get_scalar('train/lr').data
    branch, _ = hub.get_scalar('train/branch_lr').data
    assert len(lr) == len(branch) == 2 and lr[0] != lr[1]          # the warm-up moved it
    for a, b in zip(lr, branch):
        assert math.isclose(b, 10 * a, rel_tol=1e-12), (a, b)
    run_dir = sorted(glob.glob(osp.join(cfg.work_dir, '2*')))[-1]
    with open(glob.glob(osp.join(run_dir, '*.log'))[0]) as f:
        lines = [ln for ln in f if 'Epoch(train)' in ln]
    assert lines and all(f'branch_lr: {10 * a:.4e}' in ln for ln, a in zip(lines, lr))
    with open(osp.join(run_dir, 'vis_data', 'scalars.json')) as f:
        records = [json.loads(ln) for ln in f]
    assert [r['branch_lr'] for r in records if 'loss' in r] == pytest.approx(list(branch))


# ----------------------------------------------------------------------- nce_t2v / nce_v2t
def _old_loss(module, v, t, scale, ids):
    """The loss as SymmetricInfoNCELoss.forward computed it before the terms were logged."""
    logits, ids = module.similarity(v, t, scale, ids)
    n = logits.shape[0]
    if ids is not None and module.duplicate_videos == 'mask':
        same = ids[:, None] == ids[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float('-inf'))
    target = torch.arange(n, device=logits.device)
    loss = F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)
    return module.loss_weight * loss


@pytest.mark.parametrize('duplicate_videos,loss_weight', [('mask', 1.0), ('keep', 0.5)])
def test_loss_terms_leave_the_loss_and_its_gradient_bit_identical(duplicate_videos,
                                                                  loss_weight):
    gen = torch.Generator().manual_seed(0)
    v0, t0 = torch.randn(6, 8, generator=gen), torch.randn(6, 8, generator=gen)
    ids = torch.tensor([0, 1, 0, 2, 3, 1])
    module = SymmetricInfoNCELoss(duplicate_videos=duplicate_videos, loss_weight=loss_weight)
    v, t = v0.clone().requires_grad_(True), t0.clone().requires_grad_(True)
    loss, terms = module(v, t, 30.0, ids, return_terms=True)
    loss.backward()
    rv, rt = v0.clone().requires_grad_(True), t0.clone().requires_grad_(True)
    ref = _old_loss(module, rv, rt, 30.0, ids)
    ref.backward()
    assert torch.equal(loss, ref) and torch.equal(v.grad, rv.grad) and \
        torch.equal(t.grad, rt.grad)
    assert torch.equal(module(v0, t0, 30.0, ids), ref.detach())    # the plain call too
    assert list(terms) == ['nce_t2v', 'nce_v2t']
    assert not any(x.requires_grad for x in terms.values())
    # v2t: each video's row over the captions; t2v: each caption's column over the videos
    logits, _ = module.similarity(v0, t0, 30.0, ids if duplicate_videos == 'mask' else None)
    if duplicate_videos == 'mask':
        same = (ids[:, None] == ids[None, :]).fill_diagonal_(False)
        logits = logits.masked_fill(same, float('-inf'))
    target = torch.arange(6)
    assert torch.allclose(terms['nce_v2t'], loss_weight * F.cross_entropy(logits, target))
    assert torch.allclose(terms['nce_t2v'], loss_weight * F.cross_entropy(logits.t(), target))
    total = terms['nce_t2v'] + terms['nce_v2t']
    if loss_weight == 1.0:
        assert torch.equal(total, loss.detach())
    else:
        assert torch.allclose(total, loss.detach(), rtol=1e-6, atol=0)


def test_retriever_logs_both_directions_and_optimizes_the_same_loss():
    """STANRetriever's loss dict: loss (as before, bit for bit), nce_t2v and nce_v2t
    (detached, summing to loss); mmengine's parse_losses optimizes loss alone."""
    from test_retrieval_model import build_model, make_batch, samples
    model = build_model().train()
    videos, texts = make_batch(4)
    data = model.data_preprocessor(dict(inputs=dict(imgs=videos, text=texts),
                                        data_samples=samples([0, 1, 1, 2])), True)
    out = model(**data, mode='loss')
    assert list(out) == ['loss', 'nce_t2v', 'nce_v2t']
    assert out['loss'].requires_grad
    assert not out['nce_t2v'].requires_grad and not out['nce_v2t'].requires_grad
    assert torch.equal(out['nce_t2v'] + out['nce_v2t'], out['loss'].detach())
    with torch.no_grad():                       # the previous code's loss on the same features
        video = model.encode_video(data['inputs']['imgs'])
        text = model.encode_text(data['inputs']['text'])
        ids = model.video_ids(data['data_samples'], video.device)
        ref = _old_loss(model.loss_module, video, text, model.get_logit_scale(), ids)
    assert torch.equal(out['loss'].detach(), ref)
    parsed, log_vars = model.parse_losses(out)
    assert torch.equal(parsed, out['loss'])
    assert list(log_vars) == ['loss', 'nce_t2v', 'nce_v2t']

    # a loss module without terms: loss alone, as before
    class Plain(nn.Module):
        def forward(self, video_emb, text_emb, logit_scale=100.0, video_ids=None):
            return SymmetricInfoNCELoss()(video_emb, text_emb, logit_scale, video_ids)
    other = build_model(loss=dict(type='SymmetricInfoNCELoss'))
    other.loss_module = Plain()
    other._loss_has_terms = False
    assert list(other(**data, mode='loss')) == ['loss']


def _dist_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    import stan_mm  # noqa: F401
    from stan_mm.models.losses import SymmetricInfoNCELoss
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank,
                            world_size=world)
    calls = []
    for name in ('all_gather', 'all_reduce', 'broadcast', 'reduce', 'all_gather_object'):
        original = getattr(dist, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)
        setattr(dist, name, counted)
    gen = torch.Generator().manual_seed(5)
    v_all, t_all = torch.randn(5, 8, generator=gen), torch.randn(5, 8, generator=gen)
    rows = slice(0, 4) if rank == 0 else slice(4, 5)
    ids = torch.tensor([0, 1, 0, 2, 1])[rows]
    module = SymmetricInfoNCELoss()
    plain = module(v_all[rows], t_all[rows], 10.0, ids)
    n_plain = len(calls)
    loss, terms = module(v_all[rows], t_all[rows], 10.0, ids, return_terms=True)
    out = dict(plain=plain, loss=loss, calls_plain=n_plain,
               calls_terms=len(calls) - n_plain, **terms)
    torch.save(out, os.path.join(out_dir, f'rank{rank}.pt'))
    dist.barrier()
    dist.destroy_process_group()


def test_loss_terms_on_two_processes_are_the_global_batch_values(tmp_path):
    """Gathered features: every rank's terms equal the one-process terms of the full
    batch, and asking for them adds no collective."""
    ctx = mp.get_context('fork')                   # the imports are inherited: seconds less
    procs = [ctx.Process(target=_dist_worker, args=(r, 2, str(tmp_path / 'init'),
                                                    str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    ranks = [torch.load(tmp_path / f'rank{r}.pt') for r in range(2)]
    gen = torch.Generator().manual_seed(5)
    v, t = torch.randn(5, 8, generator=gen), torch.randn(5, 8, generator=gen)
    ref, ref_terms = SymmetricInfoNCELoss()(v, t, 10.0, torch.tensor([0, 1, 0, 2, 1]),
                                            return_terms=True)
    for r in ranks:
        assert r['calls_terms'] == r['calls_plain'] > 0
        assert torch.equal(r['loss'], r['plain'])
        torch.testing.assert_close(r['loss'], ref, rtol=1e-5, atol=1e-6)
        for key in ('nce_t2v', 'nce_v2t'):
            torch.testing.assert_close(r[key], ref_terms[key], rtol=1e-5, atol=1e-6)
    for key in ('loss', 'nce_t2v', 'nce_v2t'):
        assert torch.equal(ranks[0][key], ranks[1][key])
