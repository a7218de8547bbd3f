"""FLOPs counter: equals hand-computed multiply-accumulates on tiny models (every execution
path of attention), reports ops it cannot count, and reproduces the paper's figures."""
import importlib.util
import pathlib

import pytest
import torch
from torch import nn

import stan_mm  # noqa: F401
from stan_mm.models.backbones import CLIPSTAN
from stan_mm.models.clip import CLIPTextEncoder
from stan_mm.utils import flops as F
from stan_mm.utils.flops import count_macs, count_params

torch.set_num_threads(1)  # tiny tensors: threads only add contention

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = dict(embed_dim=24, quick_gelu=True,
            vision_cfg=dict(image_size=32, patch_size=8, width=32, layers=4, head_width=8),
            text_cfg=dict(context_length=16, vocab_size=64, width=16, heads=2, layers=2))


# ----------------------------------------------------------------------------- by hand
def clip_macs(M, P, D, L, p, E, mlp=4):
    """M frames through a CLIP ViT: patch embedding, L blocks (q/k/v/out projections,
    Q K^T and A V, MLP), final projection of the class token."""
    n = 1 + P
    block = 4 * n * D * D + 2 * n * n * D + 2 * mlp * n * D * D
    return M * (P * D * 3 * p * p + L * block + D * E)


def branch_macs(N, T, P, D, K, temporal='attn', spatial=True, proj_layers=0, mlp=4, red=8):
    """K STAN layers on N videos: temporal module over N*P sequences of length T, spatial
    module over N*T sequences of length 1+P, MLP over 1+T*P tokens, W_proj on fused levels."""
    n = 1 + P
    per_layer = 0
    if temporal == 'attn':
        per_layer += N * P * (4 * T * D * D + 2 * T * T * D) + N * P * T * D * D  # + fc
    elif temporal == 'conv':
        C = D // red
        per_layer += N * P * T * (D * C + 3 * C * C + C * D)
    if spatial:
        per_layer += N * T * (4 * n * D * D + 2 * n * n * D) + N * (1 + T * P) * 2 * mlp * D * D
    return K * per_layer + proj_layers * N * (1 + T * P) * D * D


def text_macs(Lt, W, layers, E, mlp=4):
    return layers * (4 * Lt * W * W + 2 * Lt * Lt * W + 2 * mlp * Lt * W * W) + W * E


def tiny_expected(N, T, **kw):
    return clip_macs(N * T, 16, 32, 4, 8, 24) + branch_macs(N, T, 16, 32, **kw)


# ----------------------------------------------------------------------------- tiny
@pytest.mark.parametrize('kw, expected_kw', [
    (dict(depth=2), dict(K=2)),
    (dict(depth=3, temporal_module='conv'), dict(K=3, temporal='conv')),
    (dict(depth=3, level_proj=True), dict(K=3, proj_layers=2)),
    (dict(depth=2, structure='posterior'), dict(K=2)),
    (dict(depth=2, temporal_module=None), dict(K=2, temporal=None)),
    (dict(depth=2, spatial_module=False), dict(K=2, spatial=False)),
    (dict(depth=0), dict(K=0)),
])
def test_tiny_count_equals_hand_count_on_every_path(kw, expected_kw):
    torch.manual_seed(0)
    model = CLIPSTAN(arch=TINY, **kw)
    N, T = 2, 5
    expected = tiny_expected(N, T, **expected_kw)
    x = torch.randn(N, T, 3, 32, 32)
    got = count_macs(model, (x, ), depth=1)             # CPU, eval: MHA fast path
    assert got.skipped == {}
    assert sum(got.by_module.values()) == got.macs      # every op credited exactly once
    assert got.by_module.get('branch', 0) == branch_macs(N, T, 16, 32, **expected_kw)
    assert got.macs == pytest.approx(expected, rel=0.01)
    assert got.macs == expected                         # in fact exact
    # the CLIP blocks (their packed attention included) are credited to the tower; the
    # root's own forward keeps only the class-token projection
    M = N * T
    assert got.by_module['visual'] == clip_macs(M, 16, 32, 4, 8, 24) - M * 32 * 24
    assert got.by_module['(root)'] == M * 32 * 24
    assert all('forward' not in vars(b.attn) for b in model.visual.transformer.resblocks)
    # fused CPU attention kernel (training path), and the meta device
    counter = F._Counter()
    model.train()
    with torch.no_grad(), counter:
        model(x)
    assert counter.get_total_flops() // 2 == expected
    with torch.device('meta'):
        meta_model = CLIPSTAN(arch=TINY, **kw)
        meta_x = torch.randn(N, T, 3, 32, 32)
    assert count_macs(meta_model, (meta_x, )).macs == expected


def test_missing_formula_is_reported(monkeypatch):
    """Without the extra formulas, the fused attention kernels (the CLIP blocks' and the
    branch's scaled-dot-product attention, nn.MultiheadAttention's fast path) would be
    invisible: the counter must say so instead of returning a silently low total."""
    model = CLIPSTAN(arch=TINY, depth=1).eval()
    x = torch.randn(1, 4, 3, 32, 32)
    monkeypatch.setattr(F, 'EXTRA_FORMULAS', {})
    got = count_macs(model, (x, ))
    assert any('attention' in op for op in got.skipped), got.skipped
    assert got.macs < tiny_expected(1, 4, K=1)
    # the tower alone, with nn.MultiheadAttention's own fast path
    mha = nn.MultiheadAttention(16, 2, batch_first=True).eval()
    got = count_macs(mha, (torch.randn(1, 5, 16), ) * 3)
    assert 'aten._native_multi_head_attention' in got.skipped


def test_checkpointing_flags_are_off_while_counting_and_restored():
    model = CLIPSTAN(arch=TINY, depth=2, grad_checkpointing=True,
                     branch_grad_checkpointing=True).train()
    x = torch.randn(1, 4, 3, 32, 32)
    assert count_macs(model, (x, )).macs == tiny_expected(1, 4, K=2)
    assert model.grad_checkpointing and model.branch.grad_checkpointing and model.training


def test_retrieval_towers_counted_separately():
    class Retrieval(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = CLIPSTAN(arch=TINY, depth=2)
            self.text_backbone = CLIPTextEncoder(arch=TINY)
    model = Retrieval()
    video, text = F.retrieval_flops(model, shape=(6, 32, 32), text_len=12)
    assert video.input_shape == (1, 6, 3, 32, 32)
    assert video.result.macs == tiny_expected(1, 6, K=2)
    assert text.result.macs == text_macs(12, 16, 2, 24)
    assert text.params['total'] == sum(p.numel() for p in model.text_backbone.parameters())


def test_count_params():
    model = CLIPSTAN(arch=TINY, depth=2, freeze_clip=True)
    params = count_params(model)
    assert params['total'] == sum(p.numel() for p in model.parameters())
    assert params['trainable'] == params['branch'] == sum(
        p.numel() for p in model.branch.parameters())
    assert params['visual'] + params['branch'] == params['total']


# ----------------------------------------------------------------------------- full size
B16 = dict(P=196, D=768, L=12, p=16, E=512)


def full(frames, **kw):
    with torch.device('meta'):
        model = CLIPSTAN(arch='ViT-B-16', **kw)
        x = torch.randn(1, frames, 3, 224, 224)
    res = count_macs(model, (x, ))
    assert res.skipped == {}
    return res.macs


def test_clip_b16_8_frames_is_140_5_g():
    macs = full(8, depth=0)
    assert macs == clip_macs(8, **B16)
    assert macs / 1e9 == pytest.approx(140.5, rel=0.01)


# paper (1x3 views, GFLOPs over the 3 views) -> per view; K400 K=4, SSv2 K=6
PAPER_SELF = [(8, 4, 593 / 3), (8, 6, 688 / 3), (16, 4, 1187 / 3), (16, 6, 1376 / 3)]


def attention_matmul_macs(frames, depth, P=196, D=768, L=12):
    """Only the Q K^T and A V products (CLIP blocks, spatial and temporal modules)."""
    n = 1 + P
    return frames * L * 2 * n * n * D + depth * (frames * 2 * n * n * D
                                                 + P * 2 * frames * frames * D)


@pytest.mark.parametrize('frames, depth, paper', PAPER_SELF)
def test_stan_self_b16_matches_the_paper(frames, depth, paper):
    macs = full(frames, depth=depth)
    assert macs == clip_macs(frames, **B16) + branch_macs(1, frames, 196, 768, depth)
    assert macs / 1e9 == pytest.approx(paper, rel=0.05)
    # The remaining ~4 % is exactly the attention products: without Q K^T and A V (which
    # counters miss on nn.MultiheadAttention / fused kernels) the paper's figure comes out.
    no_attn = macs - attention_matmul_macs(frames, depth)
    assert no_attn / 1e9 == pytest.approx(paper, rel=0.002)


@pytest.mark.parametrize('depth, paper', [(4, 714 / 3), (6, 845 / 3)])
def test_stan_conv_b16_is_below_the_paper(depth, paper):
    """Eq. 9's D/8 bottleneck costs 0.27 G per layer at 8 frames; counted like the
    paper's attention rows (without attention products), the paper's conv rows imply
    13.4-14.7 G per conv temporal layer (more than a full spatial block), i.e. a much wider
    module than Eq. 9 describes. Not reproduced: we check our own count and the gap."""
    macs = full(8, depth=depth, temporal_module='conv')
    assert macs == clip_macs(8, **B16) + branch_macs(1, 8, 196, 768, depth, temporal='conv')
    assert macs / 1e9 < paper * 0.85


# ----------------------------------------------------------------------------- tool
def _tool():
    path = ROOT / 'tools' / 'analysis' / 'get_flops.py'
    spec = importlib.util.spec_from_file_location('get_flops', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tool_arch_mode(capsys):
    assert _tool().main(['--arch', 'ViT-B-32', '--frames', '12', '--depth', '4']) == 0
    out = capsys.readouterr().out
    expected = (clip_macs(12, 49, 768, 12, 32, 512) + branch_macs(1, 12, 49, 768, 4)) / 1e9
    assert f'GFLOPs (G multiply-accumulates): {expected:.3f}' in out
    assert 'uncounted matmul/conv/attention ops: none' in out
    # 3 frames (a clip shape that the automatic layout could not tell from [N, C, T, ...])
    # and a CLIP built for 336-pixel frames (7 x 7 -> 21 x 21 patches of 16 at B/16)
    assert _tool().main(['--arch', 'ViT-B-32', '--frames', '3', '--depth', '4']) == 0
    expected = (clip_macs(3, 49, 768, 12, 32, 512) + branch_macs(1, 3, 49, 768, 4)) / 1e9
    assert f'GFLOPs (G multiply-accumulates): {expected:.3f}' in capsys.readouterr().out
    assert _tool().main(['--arch', 'ViT-B-16', '--frames', '8', '--image-size', '336']) == 0
    expected = (clip_macs(8, 441, 768, 12, 16, 512) + branch_macs(1, 8, 441, 768, 4)) / 1e9
    assert f'GFLOPs (G multiply-accumulates): {expected:.3f}' in capsys.readouterr().out


def test_tool_on_recognition_config(capsys):
    config = ROOT / 'configs' / 'stan' / 'k400_self_b16.py'
    if not config.exists():
        pytest.skip('config not present')
    assert _tool().main([str(config), '--cfg-options', 'model.backbone.depth=2']) == 0
    out = capsys.readouterr().out
    backbone = clip_macs(8, **B16) + branch_macs(1, 8, 196, 768, 2)
    per_view = float(out.split('GFLOPs (G multiply-accumulates): ')[1].split()[0])
    assert per_view == pytest.approx(backbone / 1e9, rel=1e-3)   # + a tiny head
    assert 'x 3 test views' in out and 'backbone.branch' in out


def test_tool_views_and_configs_that_infer_the_arch(tmp_path, capsys):
    """--views takes a count or CLIPSxCROPS (as tools/test.py); a config with arch=None
    reads its architecture from the CLIP file instead of failing on the stripped path, and
    without the file the tool ends with one error line naming the option to set."""
    import subprocess
    import sys
    from stan_mm.testing import save_open_clip, tiny_clip
    config = ROOT / 'configs' / 'stan' / 'k400_self_b16.py'
    args = [str(config), '--cfg-options', 'model.backbone.depth=1']
    assert _tool().main(args + ['--views', '2x3']) == 0
    out = capsys.readouterr().out
    per_view = float(out.split('GFLOPs (G multiply-accumulates): ')[1].split()[0])
    assert f'per view {per_view:.2f} G x 6 test views' in out
    with pytest.raises(SystemExit):
        _tool().parse_args([str(config), '--views', '2y3'])
    # tiny CLIP file (heads of width 64, so its architecture can be read from it)
    clip = tmp_path / 'clip.pt'
    save_open_clip(tiny_clip(vision_width=128, vision_head_width=64, text_width=64,
                             text_heads=1), clip)
    cfg = tmp_path / 'cfg.py'
    cfg.write_text(f"""_base_ = [{str(config)!r}]
model = dict(backbone=dict(arch=None, pretrained={str(clip)!r}, depth=1),
             cls_head=dict(in_channels=32, text_encoder=dict(arch=None, pretrained={str(clip)!r})))
""")
    assert _tool().main([str(cfg), '--shape', '2', '32', '32']) == 0
    out = capsys.readouterr().out
    expected = (clip_macs(2, 16, 128, 3, 8, 32) + branch_macs(1, 2, 16, 128, 1)) / 1e9
    per_view = float(out.split('GFLOPs (G multiply-accumulates): ')[1].split()[0])
    assert per_view == pytest.approx(expected, rel=0.05)         # + the tiny head
    r = subprocess.run([sys.executable, str(ROOT / 'tools' / 'analysis' / 'get_flops.py'),
                        str(cfg), '--cfg-options', 'model.backbone.pretrained=None'],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert 'get_flops.py: error: CLIPArchMissingError:' in r.stderr
    assert 'model.backbone.arch' in r.stderr and 'Traceback' not in r.stderr
    r = subprocess.run([sys.executable, str(ROOT / 'tools' / 'analysis' / 'get_flops.py'),
                        str(cfg), '--cfg-options', f'model.backbone.pretrained={tmp_path}/no.pt'],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert 'get_flops.py: error: CommandLineError: CLIP weights not found' in r.stderr
    assert 'With arch=None the architecture is read from that file' in r.stderr
