"""CLIPSTAN against a plain reference written here from the formulas.

The reference below is deliberately naive: loops over videos, frames, patches and heads,
explicit attention math (q k^T / sqrt(d_h), softmax by hand), LayerNorm by hand, patch
embedding as a dot product per patch. It reads the weights of the model under test by
parameter name only (no code of the implementation is used). Formulas: STAN_REFERENCE.md
section 2 (public reproduction) and the paper's Eqs. 4-9.

Computed in float64 so that a mismatch means a formula error, not rounding.
"""
import math

import pytest
import torch

import stan_mm  # noqa: F401  (registers CLIPSTAN)
from mmaction.registry import MODELS

torch.set_num_threads(1)  # tiny tensors: threads only add contention

L_CLIP, WIDTH, HEADS, PATCH, IMAGE, EMBED = 4, 32, 4, 8, 32, 24
GRID = IMAGE // PATCH
P = GRID * GRID


def tiny_arch(quick_gelu=True):
    return dict(embed_dim=EMBED, quick_gelu=quick_gelu,
                vision_cfg=dict(image_size=IMAGE, patch_size=PATCH, width=WIDTH,
                                layers=L_CLIP, head_width=WIDTH // HEADS),
                text_cfg=dict(context_length=8, vocab_size=64, width=16, heads=2, layers=1))


# ----------------------------------------------------------------------------- reference
def ln(x, w, b, eps=1e-5):
    mu = x.sum() / x.shape[0]
    var = ((x - mu) ** 2).sum() / x.shape[0]
    return (x - mu) / math.sqrt(var + eps) * w + b


def linear(x, w, b=None):
    y = w @ x
    return y + b if b is not None else y


def act(x, quick_gelu):
    if quick_gelu:
        return x * (1.0 / (1.0 + torch.exp(-1.702 * x)))
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def mha(seq, sd, pre, heads):
    """Multi-head self-attention over a list of token vectors, one head at a time."""
    D = seq[0].shape[0]
    dh = D // heads
    w, b = sd[pre + 'in_proj_weight'], sd[pre + 'in_proj_bias']
    X = torch.stack(seq)                                            # [n, D]
    Q, K, V = X @ w[:D].t() + b[:D], X @ w[D:2 * D].t() + b[D:2 * D], X @ w[2 * D:].t() + b[2 * D:]
    heads_out = []
    for h in range(heads):
        s = slice(h * dh, (h + 1) * dh)
        scores = Q[:, s] @ K[:, s].t() / math.sqrt(dh)              # [n, n]
        e = torch.exp(scores - scores.max(dim=1, keepdim=True).values)
        heads_out.append((e / e.sum(dim=1, keepdim=True)) @ V[:, s])
    O = torch.cat(heads_out, dim=1) @ sd[pre + 'out_proj.weight'].t() + sd[pre + 'out_proj.bias']
    return list(O)


def mlp(x, sd, pre, quick_gelu):
    h = act(linear(x, sd[pre + 'c_fc.weight'], sd[pre + 'c_fc.bias']), quick_gelu)
    return linear(h, sd[pre + 'c_proj.weight'], sd[pre + 'c_proj.bias'])


def clip_block(tokens, sd, pre, quick_gelu):
    a = mha([ln(t, sd[pre + 'ln_1.weight'], sd[pre + 'ln_1.bias']) for t in tokens], sd,
            pre + 'attn.', HEADS)
    tokens = [t + ai for t, ai in zip(tokens, a)]
    return [t + mlp(ln(t, sd[pre + 'ln_2.weight'], sd[pre + 'ln_2.bias']), sd, pre + 'mlp.',
                    quick_gelu) for t in tokens]


def clip_frame_levels(img, sd, quick_gelu):
    """One frame [3, H, W] -> [h_0, h_1, ..., h_L], each a list of 1+P token vectors."""
    w = sd['visual.conv1.weight']                                   # [D, 3, p, p]
    pos = sd['visual.positional_embedding']
    tokens = [sd['visual.class_embedding'] + pos[0]]
    for gy in range(GRID):
        for gx in range(GRID):
            patch = img[:, gy * PATCH:(gy + 1) * PATCH, gx * PATCH:(gx + 1) * PATCH]
            f = (w * patch).sum(dim=(1, 2, 3))                # [D]
            tokens.append(f + pos[1 + gy * GRID + gx])
    tokens = [ln(t, sd['visual.ln_pre.weight'], sd['visual.ln_pre.bias']) for t in tokens]
    hs = [tokens]
    for i in range(L_CLIP):
        tokens = clip_block(tokens, sd, f'visual.transformer.resblocks.{i}.', quick_gelu)
        hs.append(tokens)
    return hs


def temporal_attn(z, sd, pre, T):
    for p in range(P):
        seq = [ln(z[p][t], sd[pre + 'norm.weight'], sd[pre + 'norm.bias']) for t in range(T)]
        a = mha(seq, sd, pre + 'attn.', HEADS)
        for t in range(T):
            z[p][t] = z[p][t] + linear(a[t], sd[pre + 'fc.weight'], sd[pre + 'fc.bias'])
    return z


def temporal_conv(z, sd, pre, T):
    """Eq. 9: x + Up(GELU(Conv3d_(3,1,1)(Down(x)))), zero padding in time."""
    wc, bc = sd[pre + 'conv.weight'], sd[pre + 'conv.bias']        # [C, C, 3, 1, 1]
    for p in range(P):
        d = [linear(z[p][t], sd[pre + 'down.weight'], sd[pre + 'down.bias']) for t in range(T)]
        for t in range(T):
            c = bc.clone()
            for j in range(3):
                tt = t + j - 1
                if 0 <= tt < T:
                    c = c + wc[:, :, j, 0, 0] @ d[tt]
            z[p][t] = z[p][t] + linear(act(c, False), sd[pre + 'up.weight'], sd[pre + 'up.bias'])
    return z


def spatial(cls, z, sd, pre, T, quick_gelu):
    cls_updates = []
    new_z = [[None] * T for _ in range(P)]
    for t in range(T):
        seq = [cls] + [z[p][t] for p in range(P)]
        a = mha([ln(s, sd[pre + 'ln_1.weight'], sd[pre + 'ln_1.bias']) for s in seq], sd,
                pre + 'attn.', HEADS)
        cls_updates.append(a[0])
        for p in range(P):
            new_z[p][t] = z[p][t] + a[1 + p]
    cls = cls + sum(cls_updates) / T

    def ffn(x):
        return x + mlp(ln(x, sd[pre + 'ln_2.weight'], sd[pre + 'ln_2.bias']), sd, pre + 'mlp.',
                       quick_gelu)
    return ffn(cls), [[ffn(new_z[p][t]) for t in range(T)] for p in range(P)]


def reference(video, sd, *, levels, temporal, spatial_on, fuse, level_proj, quick_gelu,
              video_cls='public'):
    """video [N, T, 3, H, W] -> (video emb [N, E], frames [N, T, E], branch tokens).
    ``video_cls``: 'public' (public reproduction) or 'mean' (paper Eq. 4)."""
    N, T = video.shape[:2]
    videos, frames_out, tokens_out = [], [], []
    for n in range(N):
        hs = [clip_frame_levels(video[n, t], sd, quick_gelu) for t in range(T)]
        branch_cls = None
        if levels:
            # embedding of the first level (Eq. 4, public reproduction's input init)
            h = [hs[t][levels[0]] for t in range(T)]
            pos = sd['visual.positional_embedding']
            mean_cls = sum(h[t][0] for t in range(T)) / T
            if video_cls == 'public':
                cls = 0.5 * (mean_cls + sd['visual.class_embedding'] + pos[0])
            else:                                   # paper Eq. 4: the frame CLS mean
                cls = mean_cls
            time = sd['branch.embed.time_embed.weight']
            z = [[h[t][1 + p] + pos[1 + p] + time[t] for t in range(T)] for p in range(P)]
            for k in range(len(spatial_on)):
                pre = f'branch.layers.{k}.'
                if fuse and k > 0:
                    h = [hs[t][levels[k]] for t in range(T)]
                    lc = sum(h[t][0] for t in range(T)) / T
                    if level_proj:
                        W, b = sd[pre + 'fusion.proj.weight'], sd[pre + 'fusion.proj.bias']
                        cls = cls + linear(lc, W, b)
                        z = [[z[p][t] + linear(h[t][1 + p], W, b) for t in range(T)]
                             for p in range(P)]
                    else:
                        cls = cls + lc
                        z = [[z[p][t] + h[t][1 + p] for t in range(T)] for p in range(P)]
                before = [list(row) for row in z]
                if temporal == 'attn':
                    z = temporal_attn(z, sd, pre + 'temporal.', T)
                elif temporal == 'conv':
                    z = temporal_conv(z, sd, pre + 'temporal.', T)
                if temporal and not spatial_on[k]:
                    # intra-frame off: the CLS reads the temporal update, averaged (our
                    # read-out; the paper does not say)
                    cls = cls + sum(z[p][t] - before[p][t] for p in range(P)
                                    for t in range(T)) / (P * T)
                if spatial_on[k]:
                    cls, z = spatial(cls, z, sd, pre + 'spatial.', T, quick_gelu)
            branch_cls = cls
            tokens_out.append(torch.stack([cls] + [z[p][t] for p in range(P) for t in range(T)]))
        es = []
        for t in range(T):
            c = hs[t][L_CLIP][0]
            if branch_cls is not None:
                c = c + branch_cls
            c = ln(c, sd['visual.ln_post.weight'], sd['visual.ln_post.bias'])
            es.append(sd['visual.proj'].t() @ c)
        frames_out.append(torch.stack(es))
        videos.append(sum(es) / T)
    tokens = torch.stack(tokens_out) if tokens_out else None
    return torch.stack(videos), torch.stack(frames_out), tokens


# ----------------------------------------------------------------------------- tests
def build(seed=0, quick_gelu=True, **kw):
    torch.manual_seed(seed)
    cfg = dict(type='CLIPSTAN', arch=tiny_arch(quick_gelu), drop_path_rate=0.1)
    cfg.update(kw)
    model = MODELS.build(cfg).double().eval()
    # non-zero weights everywhere in the branch (zero-init modules would be identities)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith('branch.'):
                if p.dim() == 1 and ('norm' in name or 'ln_' in name) and name.endswith('weight'):
                    p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
                elif 'time_embed' in name:
                    p.mul_(0.5)
                else:
                    p.copy_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


CASES = {
    'attn': dict(depth=2),
    'conv': dict(depth=2, temporal_module='conv'),
    'level_proj': dict(depth=3, level_proj=True),
    'posterior': dict(depth=2, structure='posterior'),
    'levels_1_3': dict(depth=2, levels=(1, 3)),
    'no_multi_level': dict(depth=2, multi_level=False),
    'temporal_off': dict(depth=2, temporal_module=None),
    'spatial_off': dict(depth=2, spatial_module=False),
    'gelu_conv_k3': dict(depth=3, temporal_module='conv', quick_gelu=False),
    'paper_video_cls': dict(depth=2, video_cls='mean', level_proj=True),
}


def ref_args(case):
    kw = CASES[case]
    K = kw['depth']
    if kw.get('structure') == 'posterior':
        levels = [L_CLIP]
    else:
        levels = list(kw.get('levels') or range(L_CLIP - K + 1, L_CLIP + 1))
    fuse = kw.get('structure', 'branch') == 'branch' and kw.get('multi_level', True)
    return dict(levels=levels, temporal=kw.get('temporal_module', 'attn'),
                spatial_on=[kw.get('spatial_module', True)] * K, fuse=fuse,
                level_proj=kw.get('level_proj', False), quick_gelu=kw.get('quick_gelu', True),
                video_cls=kw.get('video_cls', 'public'))


@pytest.mark.parametrize('case', list(CASES))
def test_matches_plain_reference(case):
    model = build(**CASES[case])
    torch.manual_seed(5)
    video = torch.randn(2, 4, 3, IMAGE, IMAGE, dtype=torch.float64)   # [N, T, C, H, W], T=4
    with torch.no_grad():
        out = model(video.transpose(1, 2), return_dict=True)            # feed as NCTHW
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    v_ref, f_ref, tok_ref = reference(video, sd, **ref_args(case))
    torch.testing.assert_close(out['frames'], f_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(out['video'], v_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(out['branch_tokens'], tok_ref, rtol=0, atol=1e-5)
    # the branch is not a no-op: removing its CLS changes the result
    assert (out['video'] - reference(video, sd, **{**ref_args(case), 'levels': [],
                                                    'spatial_on': []})[0]).abs().max() > 1e-3


def test_reference_is_sensitive_to_the_level_choice():
    """Guards the test itself: a wrong level list in the reference must not match."""
    model = build(depth=2)
    video = torch.randn(1, 2, 3, IMAGE, IMAGE, dtype=torch.float64)
    with torch.no_grad():
        out = model(video, return_dict=True)
    sd = model.state_dict()
    wrong = {**ref_args('attn'), 'levels': [2, 4]}
    assert (reference(video, sd, **wrong)[0] - out['video']).abs().max() > 1e-4


def test_reference_is_sensitive_to_the_video_cls_choice():
    """Guards the test itself: the public and the paper's first video CLS differ."""
    model = build(depth=2, video_cls='mean')
    video = torch.randn(1, 2, 3, IMAGE, IMAGE, dtype=torch.float64)
    with torch.no_grad():
        out = model(video, return_dict=True)
    sd = model.state_dict()
    wrong = {**ref_args('attn'), 'video_cls': 'public'}
    assert (reference(video, sd, **wrong)[0] - out['video']).abs().max() > 1e-4


def test_embedding_dropout_acts_on_patch_tokens_only():
    """``embed_drop_rate``: dropout after the embeddings of layer 1 (paper Eq. 4) on the
    patch tokens; the video CLS and eval mode are untouched."""
    from stan_mm.models.backbones.stan_branch import BranchEmbedding
    D, T = 8, 3
    level = torch.randn(2, T, 1 + P, D)
    ce, pos = torch.randn(D), torch.randn(1 + P, D)
    emb = BranchEmbedding(D, drop_rate=0.5)
    emb.eval()
    cls_eval, x_eval = emb(level, ce, pos)
    emb.train()
    torch.manual_seed(0)
    cls_train, x_train = emb(level, ce, pos)
    torch.testing.assert_close(cls_train, cls_eval)
    dropped = x_train == 0
    assert 0.3 < dropped.float().mean() < 0.7
    torch.testing.assert_close(x_train[~dropped], 2 * x_eval[~dropped])   # 1 / (1 - p)
    model = MODELS.build(dict(type='CLIPSTAN', arch=tiny_arch(), depth=2,
                              embed_drop_rate=0.25))
    assert model.branch.embed.drop.p == 0.25


@pytest.mark.parametrize('kw, match', [
    (dict(video_cls='first'), "video_cls='first'"),
    (dict(embed_drop_rate=1.0), 'embed_drop_rate=1.0'),
    (dict(embed_drop_rate=-0.1), 'embed_drop_rate=-0.1'),
])
def test_bad_embedding_options_name_the_argument(kw, match):
    with pytest.raises(ValueError, match=match):
        MODELS.build(dict(type='CLIPSTAN', arch=tiny_arch(), depth=2, **kw))
