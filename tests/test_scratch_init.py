"""CLIPSTAN's from-scratch initialisation options (pos_embed_init_std, temporal_out_init_std)."""
import pytest
import torch

import stan_mm  # noqa: F401
from stan_mm.models.backbones.clip_stan import CLIPSTAN

ARCH = dict(embed_dim=32, quick_gelu=False,
            vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32),
            text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1))


def _outs(model):
    return {n: p for n, p in model.named_parameters()
            if n.endswith(('temporal.fc.weight', 'temporal.up.weight',
                           'temporal.fc.bias', 'temporal.up.bias'))}


def test_defaults_keep_open_clip_and_zero_init():
    torch.manual_seed(0)
    m = CLIPSTAN(arch=ARCH, depth=2)
    # open_clip draws the positional embedding with std width ** -0.5 = 0.125
    assert abs(m.visual.positional_embedding.std().item() - 64 ** -0.5) < 0.02
    assert all(torch.count_nonzero(p) == 0 for p in _outs(m).values())


@pytest.mark.parametrize('temporal_module', ['attn', 'conv'])
def test_options_draw_the_requested_scales(temporal_module):
    torch.manual_seed(0)
    m = CLIPSTAN(arch=ARCH, depth=2, temporal_module=temporal_module,
                 pos_embed_init_std=1.0, temporal_out_init_std=0.02)
    assert abs(m.visual.positional_embedding.std().item() - 1.0) < 0.1
    outs = _outs(m)
    assert len(outs) == 4  # weight + bias of 2 layers
    for name, p in outs.items():
        if name.endswith('bias'):
            assert torch.count_nonzero(p) == 0
        else:
            assert abs(p.std().item() - 0.02) < 0.004
    # the temporal path now contributes at init: zeroing its output layers changes the output
    x = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        before = m(x)
        for p in outs.values():
            p.zero_()
        assert not torch.allclose(before, m(x), atol=1e-6)


def test_bad_values_and_pretrained_conflict(tmp_path):
    with pytest.raises(ValueError, match='temporal_out_init_std'):
        CLIPSTAN(arch=ARCH, depth=1, temporal_out_init_std=-1)
    with pytest.raises(ValueError, match='pos_embed_init_std'):
        CLIPSTAN(arch=ARCH, depth=1, pos_embed_init_std=0)
    import open_clip
    clip = open_clip.CLIP(**{k: v for k, v in ARCH.items()})
    path = str(tmp_path / 'clip.pt')
    torch.save(clip.state_dict(), path)
    with pytest.raises(ValueError, match='overwrite the pretrained'):
        CLIPSTAN(arch=ARCH, pretrained=path, depth=1, pos_embed_init_std=1.0)
