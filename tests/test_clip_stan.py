"""CLIPSTAN behaviour: CLIP equivalence at depth 0, frame order, checkpointing, freezing,
weight copies, parameter groups, input layouts and error messages."""
import copy

import pytest
import torch
from mmengine.optim import build_optim_wrapper
from torch import nn

import stan_mm  # noqa: F401
from mmaction.registry import MODELS
from stan_mm.models.backbones import CLIPSTAN, TemporalAttention, TemporalConv
from stan_mm.models.clip import build_clip

torch.set_num_threads(1)  # tiny tensors: threads only add contention

L_CLIP, WIDTH, IMAGE = 4, 32, 32
ARCH = dict(embed_dim=24, quick_gelu=True,
            vision_cfg=dict(image_size=IMAGE, patch_size=8, width=WIDTH, layers=L_CLIP,
                            head_width=8),
            text_cfg=dict(context_length=8, vocab_size=64, width=16, heads=2, layers=1))


def make(seed=0, **kw):
    torch.manual_seed(seed)
    return CLIPSTAN(arch=ARCH, **kw)


def randomize_branch(model, seed=1, std=0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith('branch.') and 'time_embed' not in name:
                p.add_(std * torch.randn(p.shape, generator=g))
    return model


def video(n=2, t=4, seed=3, layout='NCTHW'):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, t, 3, IMAGE, IMAGE, generator=g)
    return x.transpose(1, 2).contiguous() if layout == 'NCTHW' else x


# ----------------------------------------------------------------------------- CLIP parity
def test_depth0_is_clip_encode_image_mean_over_frames():
    model = make(depth=0).eval()
    assert model.branch is None
    clip = build_clip(ARCH).eval()
    clip.visual.load_state_dict(model.visual.state_dict())
    x = video(layout='NTCHW')
    with torch.no_grad():
        per_frame = clip.encode_image(x.flatten(0, 1)).view(2, 4, -1)   # unnormalized
        out = model(x, return_dict=True)
    torch.testing.assert_close(out['frames'], per_frame, rtol=0, atol=1e-6)
    torch.testing.assert_close(out['video'], per_frame.mean(1), rtol=0, atol=1e-6)
    assert 'branch_tokens' not in out


def test_depth0_training_forward_and_gradients_are_open_clips():
    """Training mode (grad enabled, where nn.MultiheadAttention leaves its fast path): the
    video tower's per-frame embeddings and its weight gradients equal open_clip's
    ``encode_image`` over the frames; the blocks run the packed attention path."""
    from stan_mm.models.backbones.clip_stan import _is_plain_open_clip_block
    model = make(depth=0).train()
    assert all(_is_plain_open_clip_block(b) for b in model.visual.transformer.resblocks)
    clip = build_clip(ARCH).train()
    clip.visual.load_state_dict(model.visual.state_dict())
    x = video(layout='NTCHW')
    per_frame = clip.encode_image(x.flatten(0, 1)).view(2, 4, -1)
    out = model(x, return_dict=True)['frames']
    torch.testing.assert_close(out, per_frame, rtol=0, atol=1e-6)
    out.square().sum().backward()
    per_frame.square().sum().backward()
    ours = dict(model.visual.named_parameters())
    for name, p in clip.visual.named_parameters():
        torch.testing.assert_close(ours[name].grad, p.grad, rtol=1e-5, atol=1e-6,
                                   msg=lambda m: f'{name}: {m}')


@pytest.mark.parametrize('ls_init_value', [None, 0.5])
def test_clip_block_forward_is_the_blocks_own(ls_init_value):
    """clip_block_forward(block, x) == block(x) for an open_clip ResidualAttentionBlock
    (LayerScale or not, train / eval / no_grad), outputs and gradients; any other block
    (here a subclass) runs its own forward."""
    from open_clip.transformer import ResidualAttentionBlock
    from stan_mm.models.backbones.clip_stan import clip_block_forward
    torch.manual_seed(0)
    block = ResidualAttentionBlock(32, 4, ls_init_value=ls_init_value)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))         # nonzero biases, non-unit scales
    x = torch.randn(3, 17, 32)
    for training in (True, False):
        block.train(training)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = block(xa), clip_block_forward(block, xb)
        torch.testing.assert_close(yb, ya, rtol=0, atol=1e-6)
        ga = torch.autograd.grad(ya.square().sum(), [xa, *block.parameters()])
        gb = torch.autograd.grad(yb.square().sum(), [xb, *block.parameters()])
        for a, b in zip(ga, gb):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    with torch.no_grad():          # eval + no_grad: MultiheadAttention's fused fast path
        torch.testing.assert_close(clip_block_forward(block.eval(), x), block(x), rtol=0,
                                   atol=1e-6)

    class Scaled(ResidualAttentionBlock):
        def forward(self, q_x, *args, **kwargs):
            return 2 * super().forward(q_x, *args, **kwargs)

    torch.manual_seed(0)
    other = Scaled(32, 4, ls_init_value=ls_init_value).eval()
    with torch.no_grad():
        torch.testing.assert_close(clip_block_forward(other, x), other(x), rtol=0, atol=0)


def test_layouts_agree_and_forward_returns_video():
    model = randomize_branch(make(depth=2)).eval()
    x = video(layout='NTCHW')
    with torch.no_grad():
        a = model(x)
        b = model(x.transpose(1, 2))
        d = model(x, return_dict=True)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, d['video'])
    assert a.shape == (2, 24) and d['frames'].shape == (2, 4, 24)
    assert d['branch_tokens'].shape == (2, 1 + 4 * 16, WIDTH)
    explicit = make(depth=2, input_layout='NTCHW')
    explicit.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(explicit.eval()(x), a)


# ----------------------------------------------------------------------------- frame order
def test_frame_order_matters_with_temporal_weights_and_not_for_mean_pooling():
    x = video(t=4)
    rev = x.flip(2)                                            # NCTHW: reverse frames
    base = make(depth=0).eval()
    with torch.no_grad():
        torch.testing.assert_close(base(x), base(rev), rtol=0, atol=1e-6)

    for kind in ('attn', 'conv'):
        m = randomize_branch(make(depth=2, temporal_module=kind)).eval()
        with torch.no_grad():
            assert (m(x) - m(rev)).abs().max() > 1e-3, kind


def test_only_time_embedding_and_temporal_module_see_frame_order():
    """No temporal module and a zero time table: the branch is permutation invariant."""
    m = randomize_branch(make(depth=2, temporal_module=None)).eval()
    with torch.no_grad():
        m.branch.embed.time_embed.weight.zero_()
        x = video(t=4)
        torch.testing.assert_close(m(x), m(x.flip(2)), rtol=0, atol=1e-5)


ABLATIONS = [dict(), dict(temporal_module='conv'), dict(temporal_module=None),
             dict(spatial_module=False), dict(spatial_module=False, temporal_module='conv'),
             dict(structure='posterior'), dict(multi_level=False), dict(level_proj=True)]


@pytest.mark.parametrize('kw', ABLATIONS)
def test_every_ablation_uses_every_branch_parameter(kw):
    """Every trainable parameter gets a gradient (DDP needs it), and with a temporal module
    the output depends on frame order (the Table 6 rows with cross-frame modules beat mean
    pooling on SSv2, so their temporal modules must reach the output). The time table and
    the temporal out-projections start at random values so that gradients are non-zero."""
    m = randomize_branch(make(depth=2, drop_path_rate=0., **kw)).train()
    x = video(t=4)
    m(x).square().sum().backward()
    for name, p in m.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    if kw.get('temporal_module', 'attn') is not None:
        m.eval()
        with torch.no_grad():
            assert (m(x) - m(x.flip(2))).abs().max() > 1e-4
            y = m(x)
            for name, p in m.named_parameters():
                if '.temporal.' in name:
                    p.add_(0.1)
            assert (m(x) - y).abs().max() > 1e-4


def test_intra_frame_off_reads_the_temporal_update_into_the_cls():
    """spatial_module=False: the layer's video CLS adds the temporal module's update
    averaged over the patch tokens (zero at init, so the model starts as the plain sum)."""
    m = randomize_branch(make(depth=1, spatial_module=False)).eval()
    layer = m.branch.layers[0]
    cls, x = torch.randn(2, WIDTH), torch.randn(2, 16, 4, WIDTH)   # [B, D], [B, P, T, D]
    with torch.no_grad():
        got_cls, got_x = layer(cls, x)
        want_x = layer.temporal(x)
    torch.testing.assert_close(got_x, want_x)
    torch.testing.assert_close(got_cls, cls + (want_x - x).mean(dim=(1, 2)))
    fresh = make(depth=1, spatial_module=False).eval()         # zero-initialized out-proj
    with torch.no_grad():
        assert torch.equal(fresh.branch.layers[0](cls, x)[0], cls)


def test_temporal_modules_are_identity_at_init():
    x = torch.randn(2, 5, 3, 16)                                # [B, P, T, D]
    for mod in (TemporalAttention(16, 4, drop_path=0.1), TemporalConv(16, 8, drop_path=0.1)):
        torch.testing.assert_close(mod.eval()(x), x, rtol=0, atol=0)


# ----------------------------------------------------------------------------- checkpointing
def _loss_and_grads(model, x, seed=7):
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    out = model(x, return_dict=True)
    loss = out['video'].square().sum() + out['branch_tokens'].square().mean()
    loss.backward()
    return out['video'].detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                   if p.grad is not None}


@pytest.mark.parametrize('flags', [dict(grad_checkpointing=True),
                                   dict(branch_grad_checkpointing=True),
                                   dict(grad_checkpointing=True, branch_grad_checkpointing=True)])
def test_gradient_checkpointing_changes_nothing(flags):
    ref = randomize_branch(make(depth=2, drop_path_rate=0.2)).train()
    ck = make(depth=2, drop_path_rate=0.2, **flags).train()
    ck.load_state_dict(ref.state_dict())
    x = video(n=2, t=5)
    out_r, g_r = _loss_and_grads(ref, x)
    out_c, g_c = _loss_and_grads(ck, x)
    torch.testing.assert_close(out_c, out_r, rtol=0, atol=1e-6)
    assert g_r.keys() == g_c.keys() and len(g_r) == len(list(ref.parameters()))
    for n in g_r:
        torch.testing.assert_close(g_c[n], g_r[n], rtol=1e-5, atol=1e-6, msg=n)


# ----------------------------------------------------------------------------- freezing
def test_freeze_clip():
    m = randomize_branch(make(depth=2, freeze_clip=True)).train()
    assert not any(p.requires_grad for p in m.visual.parameters())
    assert all(p.requires_grad for p in m.branch.parameters())
    assert not m.visual.training and m.branch.training
    _, grads = _loss_and_grads(m, video(t=5))
    assert not any(n.startswith('visual.') for n in grads)
    assert {n for n, _ in m.branch.named_parameters()} == {n[len('branch.'):] for n in grads}
    m.train()
    assert not m.visual.training


def test_frozen_stages():
    m = randomize_branch(make(depth=2, frozen_stages=2)).train()
    _, grads = _loss_and_grads(m, video(t=5))
    frozen = ['visual.conv1.weight', 'visual.class_embedding', 'visual.positional_embedding',
              'visual.ln_pre.weight', 'visual.transformer.resblocks.0.attn.in_proj_weight',
              'visual.transformer.resblocks.1.mlp.c_fc.weight']
    for n in frozen:
        assert n not in grads, n
    for n in ('visual.transformer.resblocks.2.attn.in_proj_weight', 'visual.ln_post.weight',
              'visual.proj', 'branch.layers.0.temporal.fc.weight'):
        assert n in grads and grads[n].abs().sum() > 0, n
    assert not m.visual.transformer.resblocks[1].training
    assert m.visual.transformer.resblocks[2].training


# ----------------------------------------------------------------------------- weights
@pytest.mark.parametrize('kw, src', [(dict(depth=2), [3, 4]),
                                     (dict(depth=3, levels=(1, 2, 4)), [1, 2, 4]),
                                     (dict(depth=2, structure='posterior'), [3, 4])])
def test_spatial_modules_are_copies_of_clip_blocks(kw, src):
    m = make(**kw)
    for k, level in enumerate(src):
        block = m.visual.transformer.resblocks[level - 1].state_dict()
        spatial = m.branch.layers[k].spatial.state_dict()
        assert block.keys() == spatial.keys()
        for key in block:
            assert torch.equal(block[key], spatial[key]), (k, key)
            assert block[key].data_ptr() != spatial[key].data_ptr()  # a copy, not shared


def test_spatial_copies_come_from_loaded_pretrained_weights(tmp_path):
    torch.manual_seed(11)
    clip = build_clip(ARCH)
    path = tmp_path / 'clip_openclip.pt'
    torch.save(clip.state_dict(), path)
    torch.manual_seed(12)                                       # different random init
    m = CLIPSTAN(arch=ARCH, pretrained=str(path), depth=2)
    for k, level in enumerate([3, 4]):
        src = clip.visual.transformer.resblocks[level - 1].attn.in_proj_weight
        assert torch.equal(m.branch.layers[k].spatial.attn.in_proj_weight, src)
    assert torch.equal(m.visual.conv1.weight, clip.visual.conv1.weight)


def test_branch_param_prefix_gives_the_paper_learning_rates():
    m = make(depth=2)
    names = [n for n, _ in m.named_parameters()]
    assert all(n.startswith(('visual.', 'branch.')) for n in names)

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = m
    optim = build_optim_wrapper(Wrapper(), dict(
        optimizer=dict(type='AdamW', lr=2e-6, weight_decay=0.02),
        paramwise_cfg=dict(custom_keys={'backbone.branch': dict(lr_mult=10)})))
    lr_of = {}
    for group in optim.optimizer.param_groups:
        for p in group['params']:
            lr_of[id(p)] = group['lr']
    for n, p in m.named_parameters():
        expected = 2e-5 if n.startswith('branch.') else 2e-6
        assert lr_of[id(p)] == pytest.approx(expected), n


def test_level_proj_starts_as_identity():
    m = randomize_branch(make(depth=3))
    mp = make(depth=3, level_proj=True)
    sd = m.state_dict()
    mp.load_state_dict(sd, strict=False)          # everything except the fusion projections
    assert {k for k in mp.state_dict()} - set(sd) == {
        f'branch.layers.{k}.fusion.proj.{w}' for k in (1, 2) for w in ('weight', 'bias')}
    x = video(t=5)
    with torch.no_grad():
        torch.testing.assert_close(mp.eval()(x), m.eval()(x), rtol=0, atol=1e-6)


def test_drop_path_rates_linspace():
    m = make(depth=3, drop_path_rate=0.3)
    rates = [getattr(layer.spatial.drop_path, 'drop_prob', 0.) for layer in m.branch.layers]
    assert rates == pytest.approx([0., 0.15, 0.3])
    rates_t = [getattr(layer.temporal.drop_path, 'drop_prob', 0.) for layer in m.branch.layers]
    assert rates_t == pytest.approx([0., 0.15, 0.3])


def _hand_spatial(spatial, cls, x, frame_weight):
    """The intra-frame module written out from its sub-modules (STAN_REFERENCE.md
    section 2, SpatialBlock's docstring), with the attention residual of video b, frame t
    multiplied by ``frame_weight[b, t]`` (drop path: 0 dropped, 1 / keep_prob kept); the MLP
    residual is never scaled. Plain loops over videos and frames; attention through
    ``nn.MultiheadAttention``'s own forward."""
    B, P, T, D = x.shape
    cls_out, x_out = torch.empty(B, D), torch.empty(B, P, T, D)
    for b in range(B):
        new_cls, new_x = cls[b].clone(), x[b].clone()             # [D], [P, T, D]
        for t in range(T):
            seq = spatial.ln_1(torch.cat([cls[b][None], x[b, :, t]])[None])   # [1, 1+P, D]
            a = spatial.attn(seq, seq, seq, need_weights=False)[0][0] * frame_weight[b][t]
            new_cls = new_cls + a[0] / T                           # CLS: mean over frames
            new_x[:, t] = x[b, :, t] + a[1:]
        z = torch.cat([new_cls[None], new_x.reshape(P * T, D)])    # [1+P*T, D]
        z = z + spatial.mlp(spatial.ln_2(z))
        cls_out[b], x_out[b] = z[0], z[1:].view(P, T, D)
    return cls_out, x_out


def test_drop_path_acts_on_attention_branches_in_training():
    """Training mode, drop path 0.5 in the second of two layers: every (video, frame) of the
    spatial module's output is the hand formula with that frame's attention residual
    dropped (x 0) or kept (x 1 / 0.5) and the MLP residual untouched; in the temporal module
    every (video, patch) gets x + FC(0) (dropped before the FC: the FC bias stays) or
    x + FC(2 * attention). Both outcomes must occur; eval mode keeps everything (x 1)."""
    import itertools
    from mmcv.cnn.bricks import DropPath
    m = randomize_branch(make(depth=2, drop_path_rate=0.5)).train()
    spatial, temporal = m.branch.layers[1].spatial, m.branch.layers[1].temporal
    assert isinstance(spatial.drop_path, DropPath) and spatial.drop_path.drop_prob == 0.5
    assert isinstance(temporal.drop_path, DropPath) and temporal.drop_path.drop_prob == 0.5
    assert isinstance(spatial.ls_1, nn.Identity) and isinstance(spatial.ls_2, nn.Identity)
    g = torch.Generator().manual_seed(5)
    B, P, T = 2, 16, 3
    cls, x = torch.randn(B, WIDTH, generator=g), torch.randn(B, P, T, WIDTH, generator=g)

    def close(a, b):
        return torch.allclose(a, b, rtol=0, atol=1e-5)

    masks = list(itertools.product((0., 2.), repeat=T))
    seen = set()
    with torch.no_grad():
        hand = {mask: _hand_spatial(spatial, cls, x, [mask] * B) for mask in masks}
        for seed in range(6):
            torch.manual_seed(seed)
            got_cls, got_x = spatial(cls, x)
            for b in range(B):
                match = [mask for mask in masks if close(got_cls[b], hand[mask][0][b])
                         and close(got_x[b], hand[mask][1][b])]
                assert len(match) == 1, (
                    f'seed {seed}, video {b}: matches {match} of the hand formulas (attention '
                    f'residual x0 or x2 per frame, MLP residual x1)')
                seen.update(match[0])
        assert seen == {0., 2.}
        want = _hand_spatial(spatial, cls, x, [[1.] * T] * B)
        got = spatial.eval()(cls, x)
        torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-5)

        fc = temporal.fc
        assert fc.bias.abs().min() > 0
        rows = x.reshape(B * P, T, WIDTH)
        y = temporal.norm(rows)
        attn = temporal.attn(y, y, y, need_weights=False)[0]       # [B*P, T, D]
        dropped, kept = rows + fc(torch.zeros_like(attn)), rows + fc(2 * attn)
        seen = set()
        for seed in range(3):
            torch.manual_seed(seed)
            got = temporal.train()(x).reshape(B * P, T, WIDTH)
            for i in range(B * P):
                match = [name for name, ref in (('dropped', dropped), ('kept', kept))
                         if close(got[i], ref[i])]
                assert len(match) == 1, (
                    f'seed {seed}, row {i}: matches {match} of x + FC(0), x + FC(2 attn)')
                seen.update(match)
        assert seen == {'dropped', 'kept'}
        torch.testing.assert_close(temporal.eval()(x).reshape(B * P, T, WIDTH),
                                   rows + fc(attn), rtol=0, atol=1e-5)


def test_registry_build_and_state_dict_roundtrip():
    m = MODELS.build(dict(type='CLIPSTAN', arch=ARCH, depth=2, temporal_module='selfattn'))
    assert isinstance(m, CLIPSTAN) and isinstance(m.branch.layers[0].temporal,
                                                  TemporalAttention)
    m2 = copy.deepcopy(m)
    m2.load_state_dict(m.state_dict())


# ----------------------------------------------------------------------------- frames/time
def test_time_embed_is_a_64_row_table_initialized_standard_normal():
    """Pos_t of the public reproduction: a learnable ``Embedding(64, D)`` with PyTorch's
    default N(0, 1) init (STAN_REFERENCE.md section 2), not a ViT-style N(0, 0.02) table.
    Over 3 seeds x 64 x 32 = 6144 draws the sample std of N(0, 1) is within ~0.01 of 1 and
    the mean within ~0.013 of 0; a std-0.02 init would be off by 0.98."""
    values = []
    for seed in range(3):
        m = make(seed=seed, depth=2)
        w = m.branch.embed.time_embed.weight
        assert isinstance(m.branch.embed.time_embed, nn.Embedding)
        assert tuple(w.shape) == (64, WIDTH) and w.requires_grad
        before = w.detach().clone()
        m.init_weights()                                   # the runner calls it: no change
        assert torch.equal(m.branch.embed.time_embed.weight, before)
        values.append(w.detach().flatten().double())
    values = torch.cat(values)
    assert abs(values.std().item() - 1) < 0.1, values.std()
    assert abs(values.mean().item()) < 0.1, values.mean()
    # a normal, not a uniform or truncated table: about 4.6 % of N(0, 1) lies beyond 2
    assert 0.02 < (values.abs() > 2).double().mean().item() < 0.08
    # every row differs (a repeated or zero row would make frames indistinguishable)
    assert torch.cdist(w.detach(), w.detach()).add(torch.eye(64) * 1e9).min() > 1
    assert make(depth=1, max_frames=8).branch.embed.time_embed.weight.shape == (8, WIDTH)


def test_max_frames_and_interpolation():
    m = make(depth=1, max_frames=4).eval()
    with pytest.raises(ValueError, match=r'T=5 .*max_frames=4.*interpolate_time_embed'):
        m(video(t=5))
    mi = make(depth=1, max_frames=4, interpolate_time_embed=True).eval()
    mi.load_state_dict(m.state_dict())
    with torch.no_grad():
        assert mi(video(t=5)).shape == (2, 24)
        torch.testing.assert_close(mi(video(t=4)), m(video(t=4)))   # no change at T <= max
        table = mi.branch.embed.time_table(7)
    w = mi.branch.embed.time_embed.weight
    torch.testing.assert_close(table[0], w[0])
    torch.testing.assert_close(table[-1], w[-1])
    torch.testing.assert_close(table[3], 0.5 * (w[1] + w[2]))       # midpoint at 7 -> 4 rows


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize('kw, pattern', [
    (dict(temporal_module='lstm'), r"unknown temporal_module='lstm'.*'attn'.*'conv'"),
    (dict(depth=5), r'depth=5.*\[0, 4\].*4 blocks'),
    (dict(depth=2, levels=(3, 2)), r'levels=\[3, 2\].*strictly increasing'),
    (dict(depth=2, levels=(0, 4)), r'1-based'),
    (dict(depth=2, levels=(2, 3, 4)), r'expected 2 \(= depth\)'),
    (dict(depth=2, levels=(3, 5)), r'\[1, 4\]'),
    (dict(depth=2, structure='posterior', levels=(3, 4)), r"levels only apply"),
    (dict(structure='serial'), r"structure='serial'"),
    (dict(input_layout='NHWC'), r"input_layout='NHWC'"),
    (dict(depth=2, temporal_module=None, spatial_module=False), r'empty'),
    (dict(depth=2, structure='posterior', level_proj=True), r'level_proj=True needs'),
    (dict(frozen_stages=7), r'frozen_stages=7'),
    (dict(depth=2, drop_path_rate=1.0), r'drop_path_rate=1\.0.*\[0, 1\)'),
    (dict(depth=2, drop_path_rate=-0.5), r'drop_path_rate=-0\.5'),
    (dict(depth=2, drop_path_rate='0.1'), r"drop_path_rate='0\.1'"),
])
def test_construction_errors(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        make(**kw)


def test_patch_dropout_is_refused_with_a_branch():
    """CLIP's patch dropout removes patch tokens in training, the branch reads all of them
    (the forward would fail with a shape error deep in the branch)."""
    arch = copy.deepcopy(ARCH)
    arch['vision_cfg']['patch_dropout'] = 0.5
    with pytest.raises(ValueError, match=r'patch_dropout=0\.5.*every patch'):
        CLIPSTAN(arch=arch, depth=2)
    CLIPSTAN(arch=arch, depth=0)                      # mean pooling reads only the CLS


@pytest.mark.parametrize('temporal_module', ['attn', 'conv', None])
@pytest.mark.parametrize('precision', ['bf16', 'fp16'])
def test_low_precision_weights_run_the_branch(precision, temporal_module):
    """precision='bf16'/'fp16' casts CLIP as open_clip does (norms and embeddings stay
    fp32) and the branch the same way; the forward runs in that dtype and stays close to
    the fp32 model with the same weights."""
    dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}[precision]
    kw = dict(depth=2, temporal_module=temporal_module)
    ref = randomize_branch(make(**kw)).eval()
    low = make(precision=precision, **kw).eval()
    low.load_state_dict(ref.state_dict())             # copies cast to each parameter's dtype
    assert low.branch.layers[0].spatial.ln_1.weight.dtype == torch.float32
    assert low.branch.embed.time_embed.weight.dtype == torch.float32
    assert low.branch.layers[0].spatial.attn.in_proj_weight.dtype == dtype
    if temporal_module == 'conv':
        assert low.branch.layers[0].temporal.conv.weight.dtype == dtype
    x = video()
    with torch.no_grad():
        want, got = ref(x), low(x.to(dtype))
    assert got.dtype == dtype
    err = (got.float() - want).norm() / want.norm()
    assert err < 0.05, err


def test_input_errors():
    m = make(depth=1).eval()
    with pytest.raises(ValueError, match=r'ambiguous.*input_layout'):
        m(torch.randn(1, 3, 3, IMAGE, IMAGE))
    with pytest.raises(ValueError, match=r'5-D.*\[N, C, T, H, W\]'):
        m(torch.randn(2, 3, IMAGE, IMAGE))
    with pytest.raises(ValueError, match=r'no 3-channel'):
        m(torch.randn(1, 4, 5, IMAGE, IMAGE))
    with pytest.raises(ValueError, match=r'48x48.*expects 32x32'):
        m(torch.randn(1, 3, 4, 48, 48))
    fixed = make(depth=1, input_layout='NTCHW').eval()
    with torch.no_grad():
        assert fixed(torch.randn(1, 3, 3, IMAGE, IMAGE)).shape == (1, 24)   # T=3 is fine
    with pytest.raises(ValueError, match=r"does not have 3 channels"):
        fixed(torch.randn(1, 3, 4, IMAGE, IMAGE))


# ----------------------------------------------------------------------------- integration
def test_init_weights_keeps_clip_and_branch_weights():
    m = randomize_branch(make(depth=2))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.init_weights()
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_inside_recognizer3d():
    from mmengine.registry import init_default_scope
    init_default_scope('mmaction')
    model = MODELS.build(dict(
        type='Recognizer3D',
        backbone=dict(type='CLIPSTAN', arch=ARCH, depth=2, input_layout='NCTHW'),
        cls_head=dict(type='I3DHead', in_channels=24, num_classes=5, spatial_type=None),
        data_preprocessor=dict(type='ActionDataPreprocessor', format_shape='NCTHW')))
    model.init_weights()
    x = torch.randn(2, 3, 3, 4, IMAGE, IMAGE)          # [N, views, C, T, H, W]
    with torch.no_grad():
        scores = model(x, mode='tensor', stage='head')
    assert scores.shape == (6, 5)


@pytest.mark.parametrize('depth,temporal_module', [(4, 'attn'), (4, 'conv'), (0, 'attn')])
def test_training_forward_is_one_graph_for_torch_compile(depth, temporal_module):
    """torch.compile sees the whole training forward as one graph (a graph break would
    split the kernels it fuses; the GPU benchmark's compiled MFU depends on it). Traced with
    dynamo's explain (no code generation, CPU)."""
    import torch._dynamo as dynamo
    model = randomize_branch(make(depth=depth, temporal_module=temporal_module)).train()
    x = video()

    def loss(x):
        return model(x, return_dict=True)['video'].square().mean()

    dynamo.reset()
    try:
        report = dynamo.explain(loss)(x)
    finally:
        dynamo.reset()
    assert report.graph_break_count == 0, [b.reason for b in report.break_reasons]
    assert report.graph_count == 1
