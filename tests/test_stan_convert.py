"""Public STAN checkpoint converter: HuggingFace-named weights give the same CLIP outputs as
``transformers`` itself, the STAN layers map onto HF modules, the exporter round-trips,
unmapped keys are reported."""
import importlib.util
import pathlib
import re

import pytest
import torch
from torch import nn

import stan_mm  # noqa: F401
from stan_mm.models.backbones import CLIPSTAN
from stan_mm.models.clip import CLIPTextEncoder
from stan_mm.utils.stan_convert import (convert_public_checkpoint, mm_to_public,
                                        public_to_mm)

transformers = pytest.importorskip('transformers')
from transformers import CLIPConfig, CLIPModel  # noqa: E402
from transformers.models.clip.modeling_clip import CLIPAttention, CLIPEncoderLayer  # noqa

torch.set_num_threads(1)  # tiny tensors: threads only add contention

WIDTH, LAYERS, IMAGE, PATCH, EMBED, K = 32, 4, 32, 8, 24, 2
ARCH = dict(embed_dim=EMBED, quick_gelu=True,
            vision_cfg=dict(image_size=IMAGE, patch_size=PATCH, width=WIDTH, layers=LAYERS,
                            head_width=8),
            text_cfg=dict(context_length=8, vocab_size=64, width=16, heads=2, layers=2))
EOT = 63


def load_tool(rel):
    path = pathlib.Path(__file__).resolve().parents[1] / 'tools' / rel
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def clip_config():
    return CLIPConfig(
        text_config=dict(vocab_size=64, hidden_size=16, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=8, hidden_act='quick_gelu',
                         eos_token_id=EOT, bos_token_id=62, pad_token_id=0),
        vision_config=dict(hidden_size=WIDTH, intermediate_size=4 * WIDTH,
                           num_hidden_layers=LAYERS, num_attention_heads=4,
                           image_size=IMAGE, patch_size=PATCH, hidden_act='quick_gelu'),
        projection_dim=EMBED)


def hf_clip(seed=0):
    torch.manual_seed(seed)
    return CLIPModel(clip_config()).eval()


def public_state_dict(hf, seed=1):
    """What the public reproduction's model holds, built from a HF CLIPModel: the vision
    modules flattened under backbone., STAN layers in HF naming, the text model."""
    g = torch.Generator().manual_seed(seed)
    vis = {k[len('vision_model.'):]: v for k, v in hf.state_dict().items()
           if k.startswith('vision_model.')}
    sd = {}
    for k, v in vis.items():
        k = k.replace('embeddings.', '').replace('encoder.', '')
        if not k.endswith('position_ids'):
            sd['backbone.' + k] = v.clone()
    sd['backbone.visual_projection.weight'] = hf.visual_projection.weight.detach().clone()
    for k in range(K):
        src = f'backbone.layers.{LAYERS - K + k}.'
        for key in [x for x in sd if x.startswith(src)]:
            sd[f'backbone.STAN_S_layers.{k}.' + key[len(src):]] = (
                sd[key] + 0.05 * torch.randn(sd[key].shape, generator=g))
        t = f'backbone.STAN_T_layers.{k}.'
        for n in ('q_proj', 'k_proj', 'v_proj', 'out_proj'):
            sd[t + f'self_attn.{n}.weight'] = 0.2 * torch.randn(WIDTH, WIDTH, generator=g)
            sd[t + f'self_attn.{n}.bias'] = 0.1 * torch.randn(WIDTH, generator=g)
        sd[t + 'layer_norm1.weight'] = 1 + 0.1 * torch.randn(WIDTH, generator=g)
        sd[t + 'layer_norm1.bias'] = 0.1 * torch.randn(WIDTH, generator=g)
        sd[t + 'temporal_fc.weight'] = 0.2 * torch.randn(WIDTH, WIDTH, generator=g)
        sd[t + 'temporal_fc.bias'] = 0.1 * torch.randn(WIDTH, generator=g)
    sd['backbone.STAN_time_embed.weight'] = torch.randn(64, WIDTH, generator=g)
    for k, v in hf.state_dict().items():
        if k.startswith('text_model.'):
            sd['text_backbone.' + k] = v.clone()
    sd['text_backbone.text_projection.weight'] = hf.text_projection.weight.detach().clone()
    return sd


class Retrieval(nn.Module):
    """Stand-in for the retrieval model: the two towers under the names it uses."""

    def __init__(self, **kw):
        super().__init__()
        self.backbone = CLIPSTAN(arch=ARCH, depth=K, **kw)
        self.text_backbone = CLIPTextEncoder(arch=ARCH)


def tokens():
    return torch.tensor([[62, 5, 17, 33, EOT, 0, 0, 0], [62, 9, 40, 41, 7, 2, 8, EOT]])


def test_public_to_mm_loads_strictly_and_matches_transformers():
    hf = hf_clip()
    sd, report = public_to_mm(public_state_dict(hf))
    assert report.unmapped == []
    model = Retrieval().eval()
    model.load_state_dict(sd, strict=True)
    assert report.info['STAN depth (STAN_S_layers)'] == K

    # CLIP part: depth 0 is HF's image features averaged over frames
    clip_only = CLIPSTAN(arch=ARCH, depth=0).eval()
    clip_only.load_state_dict({k[len('backbone.'):]: v for k, v in sd.items()
                               if k.startswith('backbone.visual.')})
    video = torch.randn(2, 3, 2, IMAGE, IMAGE)                  # [N, C, T, H, W]
    frames = video.transpose(1, 2).flatten(0, 1)
    with torch.no_grad():
        hf_img = hf.visual_projection(hf.vision_model(pixel_values=frames).pooler_output)
        torch.testing.assert_close(clip_only(video), hf_img.view(2, 2, -1).mean(1),
                                   rtol=0, atol=1e-5)
        hf_txt = hf.text_projection(hf.text_model(input_ids=tokens()).pooler_output)
        torch.testing.assert_close(model.text_backbone(tokens()), hf_txt, rtol=0, atol=1e-5)


def hf_temporal_layer(pub, k, vcfg):
    """The public reproduction's temporal layer ``STAN_T_layers.k`` built from HF / torch
    modules loaded with the public (HF-named) tensors, independent of stan-mm's module:
    per spatial position, over the T frames, ``y = x + temporal_fc(self_attn(layer_norm1(x)))``
    (STAN_REFERENCE.md section 2; eval mode: no drop path)."""
    t = f'backbone.STAN_T_layers.{k}.'
    attn = CLIPAttention(vcfg).eval()
    attn.load_state_dict({n: pub[t + 'self_attn.' + n] for n in attn.state_dict()})
    norm = nn.LayerNorm(vcfg.hidden_size, eps=vcfg.layer_norm_eps)
    norm.load_state_dict({n: pub[t + 'layer_norm1.' + n] for n in ('weight', 'bias')})
    fc = nn.Linear(vcfg.hidden_size, vcfg.hidden_size)
    fc.load_state_dict({n: pub[t + 'temporal_fc.' + n] for n in ('weight', 'bias')})

    def forward(x):                                               # x [B, P, T, D]
        B, P, T, D = x.shape
        y = x.reshape(B * P, T, D)
        out = attn(norm(y))
        out = out[0] if isinstance(out, tuple) else out
        return (y + fc(out)).view(B, P, T, D)
    return attn, forward


def hf_spatial_layer(pub, k, vcfg):
    """``STAN_S_layers.k`` as a HF CLIPEncoderLayer loaded with the public tensors."""
    layer = CLIPEncoderLayer(vcfg).eval()
    layer.load_state_dict({n: pub[f'backbone.STAN_S_layers.{k}.{n}']
                           for n in layer.state_dict()})
    return layer


def assert_branch_layers_match_public(model, pub, vcfg, seed=0):
    """Every temporal layer of ``model`` computes what the public temporal layer built
    from ``pub`` computes (random input, so a transposed or misplaced tensor shows), each
    of its tensors equals the public counterpart, and every spatial layer run on one frame
    is HF's CLIPEncoderLayer with the public STAN_S weights."""
    g = torch.Generator().manual_seed(seed)
    for k in range(K):
        t = f'backbone.STAN_T_layers.{k}.'
        temporal = model.backbone.branch.layers[k].temporal
        # the check must be able to see a transposed FC: non-zero, not symmetric
        fc_w = pub[t + 'temporal_fc.weight']
        assert fc_w.abs().min() > 0 and not torch.allclose(fc_w, fc_w.t())
        attn, reference = hf_temporal_layer(pub, k, vcfg)
        x = torch.randn(2, 3, 5, WIDTH, generator=g)                # [B, P, T, D]
        with torch.no_grad():
            seq = x.reshape(6, 5, WIDTH)
            torch.testing.assert_close(temporal.attn(seq, seq, seq, need_weights=False)[0],
                                       attn(seq)[0], rtol=0, atol=1e-5)
            torch.testing.assert_close(temporal(x), reference(x), rtol=0, atol=1e-5)
        # tensor by tensor (the names of stan-mm's module against the public ones)
        ours = temporal.state_dict()
        for mine, public in (('norm.weight', 'layer_norm1.weight'),
                             ('norm.bias', 'layer_norm1.bias'),
                             ('fc.weight', 'temporal_fc.weight'),
                             ('fc.bias', 'temporal_fc.bias'),
                             ('attn.out_proj.weight', 'self_attn.out_proj.weight'),
                             ('attn.out_proj.bias', 'self_attn.out_proj.bias')):
            torch.testing.assert_close(ours[mine], pub[t + public], rtol=0, atol=0,
                                       msg=lambda m: f'layer {k} {mine}: {m}')
        torch.testing.assert_close(
            ours['attn.in_proj_weight'],
            torch.cat([pub[t + f'self_attn.{n}_proj.weight'] for n in 'qkv']), rtol=0, atol=0)
        torch.testing.assert_close(
            ours['attn.in_proj_bias'],
            torch.cat([pub[t + f'self_attn.{n}_proj.bias'] for n in 'qkv']), rtol=0, atol=0)

        layer = hf_spatial_layer(pub, k, vcfg)
        tok = torch.randn(3, 1 + 16, WIDTH, generator=g)          # [B, 1+P, D], one frame
        spatial = model.backbone.branch.layers[k].spatial
        with torch.no_grad():
            cls, patches = spatial(tok[:, 0], tok[:, 1:, None])   # patches [B, P, T=1, D]
            ref = layer(tok, None)
            ref = ref[0] if isinstance(ref, tuple) else ref
        torch.testing.assert_close(torch.cat([cls[:, None], patches[:, :, 0]], 1), ref,
                                   rtol=0, atol=1e-5)
    torch.testing.assert_close(model.backbone.branch.embed.time_embed.weight,
                               pub['backbone.STAN_time_embed.weight'], rtol=0, atol=0)


def test_stan_layers_map_onto_hf_modules():
    """T layer == the public temporal layer built from HF CLIPAttention / LayerNorm / Linear
    with the public weights (and tensor by tensor); S layer (run with one frame) == HF
    CLIPEncoderLayer with the public STAN_S weights."""
    hf = hf_clip()
    pub = public_state_dict(hf)
    model = Retrieval().eval()
    model.load_state_dict(public_to_mm(pub)[0])
    assert_branch_layers_match_public(model, pub, hf.config.vision_config)


def _randomized_model(seed=3, **kw):
    torch.manual_seed(seed)
    model = Retrieval(**kw).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if '.branch.' in n:
                p.add_(0.2 * torch.randn_like(p))
    return model


def test_export_then_convert_round_trip(tmp_path, capsys):
    tool = load_tool('convert/stan_public_to_mm.py')
    model = _randomized_model()
    ours = tmp_path / 'ours.pth'
    torch.save({'state_dict': model.state_dict()}, ours)
    public, back = tmp_path / 'public.pth', tmp_path / 'back.pth'
    assert tool.main(['--export', str(ours), str(public), '--strict']) == 0
    assert tool.main([str(public), str(back), '--strict']) == 0
    out = capsys.readouterr().out
    assert 'unmapped keys: none' in out

    pub_sd = torch.load(public)['state_dict']
    for key in ('backbone.patch_embedding.weight', 'backbone.layers.3.self_attn.q_proj.bias',
                'backbone.STAN_S_layers.1.mlp.fc2.weight',
                'backbone.STAN_T_layers.0.layer_norm1.weight',
                'backbone.STAN_T_layers.1.temporal_fc.weight', 'backbone.STAN_time_embed.weight',
                'backbone.visual_projection.weight',
                'text_backbone.text_model.encoder.layers.1.self_attn.v_proj.weight',
                'text_backbone.text_model.final_layer_norm.bias',
                'text_backbone.text_projection.weight'):
        assert key in pub_sd, key
    assert not any('visual.' in k or 'branch.' in k for k in pub_sd)
    # the exported tensors mean in the public layers what they meant in ours (a round trip
    # alone would pass with a transposition on both ways)
    assert_branch_layers_match_public(model, pub_sd, clip_config().vision_config)

    fresh = Retrieval().eval()
    fresh.load_state_dict(torch.load(back)['state_dict'], strict=True)
    video = torch.randn(2, 4, 3, IMAGE, IMAGE)                  # [N, T, C, H, W]
    with torch.no_grad():
        assert torch.equal(fresh.backbone(video), model.backbone(video))
        assert torch.equal(fresh.text_backbone(tokens()), model.text_backbone(tokens()))


def test_unmapped_and_dropped_keys_are_reported(tmp_path, capsys):
    tool = load_tool('convert/stan_public_to_mm.py')
    pub = public_state_dict(hf_clip())
    pub['backbone.some_new_module.weight'] = torch.zeros(3)
    pub['cls_head.fc.weight'] = torch.zeros(2, 2)
    pub['backbone.STAN_T_layers.0.self_attn.q_proj.weight_extra'] = torch.zeros(1)
    pub['text_backbone.text_model.embeddings.position_ids'] = torch.arange(8)[None]
    src = tmp_path / 'pub.pth'
    torch.save({'state_dict': pub, 'meta': {'epoch': 3}}, src)
    assert tool.main([str(src), str(tmp_path / 'out.pth'), '--strict']) == 1
    out = capsys.readouterr().out
    for key in ('backbone.some_new_module.weight', 'cls_head.fc.weight',
                'backbone.STAN_T_layers.0.self_attn.q_proj.weight_extra'):
        assert key in out, key
    assert 'dropped derived buffers (1)' in out and 'position_ids' in out
    report = convert_public_checkpoint(src, tmp_path / 'out2.pth')
    assert len(report.unmapped) == 3


@pytest.mark.parametrize('layers', ['STAN_T_layers', 'STAN_S_layers'])
def test_incomplete_qkv_is_refused_naming_the_missing_key(tmp_path, capsys, layers):
    """A q/k/v set with one part missing cannot be stacked into in_proj: an error that
    names the missing key (the temporal layers once dropped the other two parts silently),
    from the library and from the tool (exit 2, nothing written)."""
    pub = public_state_dict(hf_clip())
    missing = f'backbone.{layers}.1.self_attn.k_proj.bias'
    del pub[missing]
    with pytest.raises(KeyError, match=re.escape(missing)):
        public_to_mm(pub)
    src, out = tmp_path / 'pub.pth', tmp_path / 'out.pth'
    torch.save({'state_dict': pub}, src)
    assert load_tool('convert/stan_public_to_mm.py').main([str(src), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith('stan_public_to_mm: error: incomplete attention weights')
    assert missing in err and 'q_proj' not in err and not out.exists()


def test_exporter_reports_weights_without_public_counterpart():
    sd = {f'backbone.{k}': v for k, v in
          CLIPSTAN(arch=ARCH, depth=2, temporal_module='conv', level_proj=True)
          .state_dict().items()}
    _, report = mm_to_public(sd)
    assert report.unmapped and all('temporal.' in k or 'fusion.proj' in k
                                   for k in report.unmapped)
    assert 'backbone.branch.layers.1.fusion.proj.weight' in report.unmapped
    assert 'backbone.branch.layers.0.temporal.conv.weight' in report.unmapped


def test_converter_errors_exit_2_without_writing(tmp_path, capsys):
    """Wrong direction (--export of a public-layout file), a model checkpoint given as a
    public one, a missing file and a pickle with objects: one error line naming the file,
    exit status 2, no output file."""
    import argparse
    tool = load_tool('convert/stan_public_to_mm.py')
    pub = tmp_path / 'public.pth'
    torch.save({'state_dict': public_state_dict(hf_clip())}, pub)
    ours = tmp_path / 'ours.pth'
    torch.save({'state_dict': _randomized_model().state_dict()}, ours)
    unsafe = tmp_path / 'unsafe.pth'
    torch.save({'state_dict': public_state_dict(hf_clip()), 'args': argparse.Namespace(a=1)},
               unsafe)
    for argv, words in ((['--export', str(pub)], r'public\.pth: no stan-mm video-tower.*drop '
                         r'--export'),
                        ([str(ours)], r'ours\.pth: no public STAN video-tower keys'),
                        ([str(tmp_path / 'nothere.pth')], r'nothere\.pth'),
                        ([str(unsafe)], r'unsafe\.pth.*(--trust|TRUST)')):
        out = tmp_path / 'out.pth'
        assert tool.main(argv + [str(out)]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith('stan_public_to_mm: error: ') and 'Traceback' not in err
        assert re.search(words, err, re.S), err
        assert not out.exists()
    assert tool.main([str(unsafe), str(tmp_path / 'ok.pth'), '--trust']) == 0


def test_not_a_stan_checkpoint(tmp_path):
    path = tmp_path / 'other.pth'
    torch.save({'state_dict': {'model.fc.weight': torch.zeros(2)}}, path)
    with pytest.raises(ValueError, match=r'no public STAN video-tower keys.*model.fc.weight'):
        convert_public_checkpoint(path, tmp_path / 'x.pth')
