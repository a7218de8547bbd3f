"""CLIP weights that hold only the image tower: ``visual.*`` keys of a CLIP, an open_clip
``model.visual`` state dict (no prefix), and HuggingFace ``CLIPVisionModelWithProjection``
(file and folder). ``build_clip_vision`` / ``CLIPSTAN`` load them and reproduce open_clip's
own ``encode_image`` of the source CLIP (and transformers' ``image_embeds`` for the HF
layout); everything that needs the text tower refuses them, naming the file."""
import pytest
import torch

import stan_mm  # noqa: F401  (registers everything, applies compat fixes)
from mmaction.registry import MODELS
from stan_mm import testing as T
from stan_mm.models.backbones import CLIPSTAN
from stan_mm.models.clip import (CLIPArchMismatchError, CLIPKeysMismatchError,
                                 CLIPTextEncoder, CLIPTextTowerMissingError, build_clip,
                                 build_clip_vision, infer_vision_cfg, openclip_vision_to_hf_clip,
                                 read_clip_checkpoint)

torch.set_num_threads(1)

ATOL = 1e-5
# widths that are multiples of 64 with 64-wide heads: the architecture is inferable
INFERABLE = dict(vision_width=128, vision_head_width=64, text_width=64, text_heads=1)
LAYOUTS = ('visual_keys', 'model_visual', 'hf_file', 'hf_folder')


def vision_cfg_of(cfg):
    """The vision clip_cfg (no text_cfg) of a full tiny clip_cfg."""
    return {k: v for k, v in cfg.items() if k != 'text_cfg'}


def hf_vision_config(hidden_act='quick_gelu', width=128, heads=2, layers=3, embed_dim=32):
    from transformers import CLIPVisionConfig
    return CLIPVisionConfig(hidden_size=width, intermediate_size=4 * width,
                            num_hidden_layers=layers, num_attention_heads=heads,
                            image_size=32, patch_size=8, projection_dim=embed_dim,
                            hidden_act=hidden_act)


def hf_vision_model(src, hidden_act='quick_gelu', heads=2):
    """transformers' ``CLIPVisionModelWithProjection`` holding ``src``'s image tower: the
    HF-layout dict made by our converter must load into it strictly (so the layout is the
    real one)."""
    from transformers import CLIPVisionModelWithProjection
    v = src.visual
    hf = CLIPVisionModelWithProjection(hf_vision_config(
        hidden_act, width=v.conv1.out_channels, heads=heads,
        layers=len(v.transformer.resblocks), embed_dim=v.proj.shape[1])).eval()
    result = hf.load_state_dict(openclip_vision_to_hf_clip(src.state_dict()), strict=False)
    assert not result.unexpected_keys
    assert all(k.endswith('position_ids') for k in result.missing_keys), result.missing_keys
    return hf


def save_vision_only(src, path, layout, hidden_act='quick_gelu', heads=2):
    """Write ``src``'s image tower (nothing of its text tower) in ``layout``; return the
    path to pass as ``pretrained``."""
    sd = src.state_dict()
    if layout == 'visual_keys':        # visual.* keys extracted from a CLIP
        path = path / 'visual_keys.pt'
        torch.save({k: v for k, v in sd.items() if k.startswith('visual.')}, path)
    elif layout == 'model_visual':     # open_clip model.visual.state_dict(), no prefix
        from safetensors.torch import save_file
        path = path / 'model_visual.safetensors'
        save_file({k: v.contiguous() for k, v in src.visual.state_dict().items()}, str(path))
    elif layout == 'hf_file':          # CLIPVisionModelWithProjection weights, no config
        path = path / 'pytorch_model.bin'
        torch.save(openclip_vision_to_hf_clip(sd), path)
    elif layout == 'hf_folder':        # save_pretrained: config.json is a CLIPVisionConfig
        path = path / 'hf_vision'
        hf_vision_model(src, hidden_act, heads).save_pretrained(path)
    else:
        raise ValueError(layout)
    return path


@pytest.fixture(scope='module')
def frames():
    g = torch.Generator().manual_seed(123)
    return torch.randn(6, 3, 32, 32, generator=g)


@pytest.fixture(scope='module')
def src():
    return T.tiny_clip(seed=21, **INFERABLE)


def raised(error, build, *args, **kwargs) -> str:
    """The message of the ``error`` that ``build(*args, **kwargs)`` raises."""
    with pytest.raises(error) as err:
        build(*args, **kwargs)
    return str(err.value)


def act_is_quick(visual) -> bool:
    from open_clip.transformer import QuickGELU
    return isinstance(visual.transformer.resblocks[0].mlp.gelu, QuickGELU)


# ------------------------------------------------------------------ loading and parity
@pytest.mark.parametrize('layout', LAYOUTS)
def test_vision_tower_alone_equals_open_clip_encode_image(tmp_path, src, frames, layout):
    path = save_vision_only(src, tmp_path, layout)
    ckpt = read_clip_checkpoint(path)
    assert not ckpt.has_text_tower and set(ckpt.state_dict) == {
        k for k in src.state_dict() if k.startswith('visual.')}
    visual = build_clip_vision(pretrained=path).eval()     # architecture inferred
    assert visual.clip_cfg == vision_cfg_of(T.tiny_clip_cfg(**INFERABLE))
    assert act_is_quick(visual)
    with torch.no_grad():
        torch.testing.assert_close(visual(frames), src.encode_image(frames), atol=ATOL,
                                   rtol=0)
    assert sum(p.numel() for p in visual.parameters()) == sum(
        p.numel() for p in src.visual.parameters())      # no text tower was built


def test_hf_layout_is_transformers_own(src, frames):
    """The HF fixture is real: transformers' CLIPVisionModelWithProjection with these
    weights gives open_clip's image embeddings."""
    hf = hf_vision_model(src)
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=frames).image_embeds,
                                   src.encode_image(frames), atol=ATOL, rtol=0)


def test_hf_folder_config_gives_activation_and_heads(tmp_path, frames):
    """A CLIPVisionModelWithProjection folder: config.json (a CLIPVisionConfig) states GELU
    (the default rule would take QuickGELU) and 4 heads of 16 (not inferable from a width
    of 64); the result equals transformers' own forward and open_clip's."""
    from transformers import CLIPVisionModelWithProjection
    src = T.tiny_clip(seed=22, quick_gelu=False)            # width 64, 4 heads of 16
    path = save_vision_only(src, tmp_path, 'hf_folder', hidden_act='gelu', heads=4)
    ckpt = read_clip_checkpoint(path)
    assert ckpt.fmt == 'hf' and ckpt.quick_gelu is False and ckpt.vision_heads == 4
    visual = build_clip_vision(pretrained=path).eval()
    assert not act_is_quick(visual) and visual.clip_cfg['vision_cfg']['head_width'] == 16
    hf = CLIPVisionModelWithProjection.from_pretrained(path).eval()
    with torch.no_grad():
        out = visual(frames)
        torch.testing.assert_close(out, hf(pixel_values=frames).image_embeds, atol=ATOL,
                                   rtol=0)
        torch.testing.assert_close(out, src.encode_image(frames), atol=ATOL, rtol=0)
        # the activation matters: QuickGELU on the same weights gives other outputs
        quick = build_clip_vision(pretrained=path, quick_gelu=True).eval()
        assert (quick(frames) - out).abs().max() > 1e-4


@pytest.mark.parametrize('layout', LAYOUTS)
def test_clipstan_depth0_frames_are_open_clip_encode_image(tmp_path, src, frames, layout):
    path = save_vision_only(src, tmp_path, layout)
    model = CLIPSTAN(arch=None, pretrained=str(path), depth=0,
                     input_layout='NTCHW').eval()
    video = frames.view(2, 3, 3, 32, 32)                     # [N, T, C, H, W]
    with torch.no_grad():
        out = model(video, return_dict=True)
        ref = src.encode_image(frames).view(2, 3, -1)        # [N, T, E], unnormalized
    torch.testing.assert_close(out['frames'], ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(out['video'], ref.mean(1), atol=ATOL, rtol=0)


def test_clipstan_branch_same_from_vision_only_and_full_file(tmp_path, src, frames):
    """With a branch: the CLIP weights and the spatial modules (copies of CLIP blocks)
    are the same from a vision-only file as from the full CLIP file, and with the branch's
    random-init parameters copied over, so is the output."""
    full = tmp_path / 'full.pt'
    T.save_open_clip(src, full)
    vis = save_vision_only(src, tmp_path, 'model_visual')
    kw = dict(arch=None, depth=2, drop_path_rate=0., temporal_out_init_std=0.02,
              input_layout='NTCHW')
    a = CLIPSTAN(pretrained=str(full), **kw).eval()
    b = CLIPSTAN(pretrained=str(vis), **kw).eval()
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    copied = [k for k in sa if k.startswith('visual.') or '.spatial.' in k]
    assert len(copied) > len(src.visual.state_dict())
    for k in copied:
        assert torch.equal(sa[k], sb[k]), k
    b.load_state_dict({k: v for k, v in sa.items() if k not in copied}, strict=False)
    video = frames.view(2, 3, 3, 32, 32)                     # [N, T, C, H, W]
    with torch.no_grad():
        torch.testing.assert_close(b(video), a(video), atol=0, rtol=0)


# ------------------------------------------------------------------ arch and activation
def test_arch_checked_against_the_tower(tmp_path, src, frames):
    path = save_vision_only(src, tmp_path, 'visual_keys')
    full_arch = T.tiny_clip_cfg(**INFERABLE)
    # a full clip_cfg, a vision clip_cfg, and a text_cfg the file cannot contradict
    for arch in (full_arch, vision_cfg_of(full_arch),
                 T.tiny_clip_cfg(text_layers=7, **INFERABLE)):
        visual = build_clip_vision(arch, path).eval()
        with torch.no_grad():
            torch.testing.assert_close(visual(frames), src.encode_image(frames), atol=ATOL,
                                       rtol=0)
    with pytest.raises(CLIPArchMismatchError) as err:
        build_clip_vision(T.tiny_clip_cfg(vision_layers=4, embed_dim=16, **INFERABLE), path)
    msg = str(err.value)
    assert str(path) in msg
    assert 'vision_cfg.layers: arch 4, weights 3' in msg and 'embed_dim: arch 16' in msg
    with pytest.raises(CLIPArchMismatchError, match='vision_cfg.patch_size'):
        CLIPSTAN(arch='ViT-B-16', pretrained=str(path), depth=0)   # CLIPSTAN's default arch


def test_activation_rule_is_build_clips(tmp_path, src, frames):
    fp32 = save_vision_only(src, tmp_path, 'visual_keys')
    fp16 = tmp_path / 'visual_fp16.pt'
    torch.save({k: v.half() for k, v in src.state_dict().items()
                if k.startswith('visual.')}, fp16)
    arch = vision_cfg_of(T.tiny_clip_cfg(**INFERABLE))
    del arch['quick_gelu']
    # rule 5: no arch, no hint -> QuickGELU; rule 4: an arch without it -> GELU
    assert build_clip_vision(pretrained=fp32).clip_cfg['quick_gelu'] is True
    assert build_clip_vision(arch, fp32).clip_cfg['quick_gelu'] is False
    # rule 3: fp16 storage is an OpenAI release -> QuickGELU, and the rounding is real
    ckpt = read_clip_checkpoint(fp16)
    assert ckpt.fmt == 'openai' and ckpt.quick_gelu is True
    visual = build_clip_vision(arch, fp16).eval()
    assert visual.clip_cfg['quick_gelu'] is True
    with torch.no_grad():
        torch.testing.assert_close(visual(frames), T.rounded_fp16(src).encode_image(frames),
                                   atol=ATOL, rtol=0)
    # rule 1 wins
    assert not act_is_quick(build_clip_vision(arch, fp16, quick_gelu=False))


def test_heads_are_not_in_the_weights(tmp_path, frames):
    """Heads: a width that is not a multiple of 64 is refused without arch (file named);
    a multiple of 64 gets CLIP's 64-wide heads, which are wrong for a model trained with
    other heads (so its output differs): arch (or a config file) fixes both."""
    narrow = T.tiny_clip(seed=23, vision_width=48)            # 3 heads of 16
    path = save_vision_only(narrow, tmp_path, 'visual_keys')
    with pytest.raises(CLIPArchMismatchError) as err:
        build_clip_vision(pretrained=path)
    assert str(path) in str(err.value) and 'heads' in str(err.value)
    # full CLIP weights of such widths, through the converter's path: how to give the arch
    # there, and no hint about the kind of file (it is the right kind)
    full = tmp_path / 'narrow_full.pt'
    T.save_open_clip(narrow, full)
    msg = raised(CLIPArchMismatchError, build_clip, pretrained=str(full))
    assert 'clip_to_mm.py: --arch' in msg and 'takes CLIP weights' not in msg
    assert 'head_width (in a config: arch=' in msg          # one sentence, no '..'
    visual = build_clip_vision(vision_cfg_of(T.tiny_clip_cfg(vision_width=48)), path).eval()
    with torch.no_grad():
        torch.testing.assert_close(visual(frames), narrow.encode_image(frames), atol=ATOL,
                                   rtol=0)

    src = T.tiny_clip(seed=24)                                # width 64, 4 heads of 16
    (tmp_path / 'w64').mkdir()
    path = save_vision_only(src, tmp_path / 'w64', 'visual_keys')
    guessed = build_clip_vision(pretrained=path).eval()
    assert guessed.clip_cfg['vision_cfg']['head_width'] == 64
    right = build_clip_vision(vision_cfg_of(T.tiny_clip_cfg()), path).eval()
    with torch.no_grad():
        torch.testing.assert_close(right(frames), src.encode_image(frames), atol=ATOL,
                                   rtol=0)
        assert (guessed(frames) - right(frames)).abs().max() > 1e-4


@pytest.mark.parametrize('name', ['ViT-B-32', 'ViT-B-16', 'ViT-L-14-336', 'ViT-H-14'])
def test_infer_vision_cfg_full_size_on_meta(name):
    """From the image tower alone: open_clip's vision config and embed_dim, heads included
    (ViT-H/14's 80-wide heads come from the bundled config with these shapes)."""
    import open_clip
    from open_clip.model import CLIP
    cfg = open_clip.get_model_config(name)
    with torch.device('meta'):
        model = CLIP(**cfg)
    sd = {k: v for k, v in model.state_dict().items() if k.startswith('visual.')}
    cfg['vision_cfg'].setdefault('head_width', 64)
    assert infer_vision_cfg(sd) == {'embed_dim': cfg['embed_dim'],
                                    'vision_cfg': cfg['vision_cfg']}


# ------------------------------------------------------------------ strict keys
def test_missing_and_unexpected_keys_named_with_the_file(tmp_path, src, frames):
    sd = {k: v.clone() for k, v in src.state_dict().items() if k.startswith('visual.')}
    del sd['visual.ln_post.bias']
    sd['visual.extra.weight'] = torch.zeros(3)
    path = tmp_path / 'damaged.pt'
    torch.save(sd, path)
    arch = vision_cfg_of(T.tiny_clip_cfg(**INFERABLE))
    msg = raised(CLIPKeysMismatchError, build_clip_vision, arch, path)
    assert str(path) in msg and '1 missing keys [visual.ln_post.bias]' in msg
    assert '1 unexpected keys [visual.extra.weight]' in msg and 'strict=False' in msg
    # CLIPSTAN has no strict option: its error does not suggest one
    msg = raised(CLIPKeysMismatchError, CLIPSTAN, arch=arch, pretrained=str(path), depth=0)
    assert 'visual.ln_post.bias' in msg and 'CLIPSTAN' in msg and 'load_from' in msg
    assert 'strict=False' not in msg
    # a key of neither tower: the file is not an image tower alone, so it is named first
    sd['head.fc.weight'] = torch.zeros(2)
    torch.save(sd, path)
    msg = raised(CLIPKeysMismatchError, build_clip_vision, arch, path)
    assert str(path) in msg and '1 keys of neither CLIP tower [head.fc.weight]' in msg
    assert 'not CLIP weights' in msg and 'strict=False' in msg
    # strict=False loads the rest: only ln_post.bias keeps its init (zeros)
    visual = build_clip_vision(arch, path, strict=False).eval()
    ref = T.tiny_clip(seed=21, **INFERABLE)
    with torch.no_grad():
        ref.visual.ln_post.bias.zero_()
        torch.testing.assert_close(visual(frames), ref.encode_image(frames), atol=ATOL,
                                   rtol=0)
    # logit_scale belongs to neither tower: tolerated
    sd = {k: v for k, v in src.state_dict().items()
          if k.startswith('visual.') or k == 'logit_scale'}
    torch.save(sd, tmp_path / 'with_scale.pt')
    build_clip_vision(pretrained=tmp_path / 'with_scale.pt')


@pytest.mark.parametrize('prefixed', [True, False])
def test_hf_vision_model_without_projection_is_refused(tmp_path, src, prefixed):
    """CLIPVisionModel has no visual_projection: STAN's embed_dim and output need it.
    transformers < 5 saves it under vision_model., >= 5 without the prefix."""
    hf = openclip_vision_to_hf_clip(src.state_dict())
    del hf['visual_projection.weight']
    if not prefixed:
        hf = {k[len('vision_model.'):]: v for k, v in hf.items()}
    path = tmp_path / 'clip_vision_model.bin'
    torch.save(hf, path)
    arch = T.tiny_clip_cfg(**INFERABLE)
    # CLIPSTAN has no strict option: with or without arch, its error does not suggest one
    for a in (None, arch):
        msg = raised(CLIPArchMismatchError, CLIPSTAN, arch=a, pretrained=str(path), depth=0)
        assert str(path) in msg and 'no output projection' in msg, msg
        assert 'CLIPVisionModelWithProjection' in msg and 'CLIPSTAN' in msg, msg
        assert 'strict=False' not in msg, msg
    msg = raised(CLIPArchMismatchError, build_clip_vision, arch, path)
    assert 'no output projection' in msg and 'strict=False' in msg, msg
    # with arch and strict=False the projection starts from random weights (warned)
    visual = build_clip_vision(arch, path, strict=False)
    assert torch.equal(visual.conv1.weight, src.visual.conv1.weight)


# ------------------------------------------------------------------ text needs both towers
def _assert_text_refusal(err, path, component):
    msg = str(err.value)
    assert str(path) in msg, msg
    assert 'only the image tower' in msg and 'the text tower is missing' in msg, msg
    assert component in msg, msg


def test_text_tower_users_refuse_vision_only_files(tmp_path, src):
    path = save_vision_only(src, tmp_path, 'visual_keys')
    with pytest.raises(CLIPTextTowerMissingError) as err:
        build_clip(pretrained=path)
    _assert_text_refusal(err, path, 'build_clip')
    with pytest.raises(CLIPTextTowerMissingError) as err:   # arch given: refused as well
        build_clip(T.tiny_clip_cfg(**INFERABLE), path)
    _assert_text_refusal(err, path, 'build_clip')
    with pytest.raises(CLIPTextTowerMissingError) as err:
        CLIPTextEncoder(pretrained=str(path))
    _assert_text_refusal(err, path, 'CLIPTextEncoder')
    with pytest.raises(CLIPTextTowerMissingError) as err:
        MODELS.build(dict(type='TextClassifierHead', classnames=['a', 'b'], in_channels=32,
                          text_encoder=dict(type='CLIPTextEncoder', pretrained=str(path))))
    _assert_text_refusal(err, path, 'TextClassifierHead')
    with pytest.raises(CLIPTextTowerMissingError) as err:
        MODELS.build(dict(type='STANRetriever', pretrained=str(path),
                          backbone=dict(type='CLIPSTAN', depth=0, input_layout='NTCHW')))
    _assert_text_refusal(err, path, 'STANRetriever')
    from stan_mm.apis.clip_export import convert_clip
    with pytest.raises(CLIPTextTowerMissingError) as err:
        convert_clip(str(path), str(tmp_path / 'out.pth'))
    _assert_text_refusal(err, path, 'tools/convert/clip_to_mm.py')
    assert not (tmp_path / 'out.pth').exists()


def _stored_keys(path):
    """The tensor keys of the weights file that ``pretrained=path`` reads, as stored."""
    import os
    from safetensors.torch import load_file
    if os.path.isdir(path):
        names = [n for n in ('model.safetensors', 'pytorch_model.bin') if (path / n).is_file()]
        path = path / names[0]
    sd = load_file(str(path)) if str(path).endswith('.safetensors') else torch.load(path)
    return [k for k, v in sd.items() if isinstance(v, torch.Tensor)]


@pytest.mark.parametrize('layout', LAYOUTS)
def test_text_refusal_names_the_files_own_keys_and_count(tmp_path, src, layout):
    """The refusal counts and names the tensors as the file stores them: an HF file holds
    vision_model.* keys (and its own count), not the open_clip names it is converted to."""
    path = save_vision_only(src, tmp_path, layout)
    keys = _stored_keys(path)
    msg = raised(CLIPTextTowerMissingError, build_clip, pretrained=path)
    count, key = msg.split(' tensors such as ')[0].rsplit(' ', 1)[1], \
        msg.split(' tensors such as ')[1].split(')')[0]
    assert int(count) == len(keys), (msg, len(keys))
    assert key in keys, (msg, keys[:5])
    if layout.startswith('hf'):
        assert 'patch_embedding' in key and 'visual.conv1.weight' not in msg, msg
        # the converted (open_clip) dict has another count: the file's own is the one said
        assert len(keys) != len(read_clip_checkpoint(path).state_dict), len(keys)
    else:
        assert key.endswith('conv1.weight'), msg


def test_full_files_still_go_through_build_clip(tmp_path, src, frames):
    """A file with both towers: build_clip_vision is build_clip(...).visual (the text tower
    is checked too: a damaged one is reported)."""
    path = tmp_path / 'full.pt'
    T.save_open_clip(src, path)
    assert read_clip_checkpoint(path).has_text_tower
    visual = build_clip_vision(pretrained=path).eval()
    assert not hasattr(visual, 'clip_cfg')                 # the .visual of a built CLIP
    with torch.no_grad():
        torch.testing.assert_close(visual(frames), src.encode_image(frames), atol=ATOL,
                                   rtol=0)
    sd = dict(src.state_dict())
    del sd['ln_final.bias']
    torch.save(sd, tmp_path / 'damaged_text.pt')
    with pytest.raises(CLIPKeysMismatchError, match='ln_final.bias'):
        build_clip_vision(pretrained=tmp_path / 'damaged_text.pt')
    # a text tower too damaged to read the architecture from: the error says what each
    # caller takes (CLIPSTAN: the image tower alone as well)
    del sd['ln_final.weight']
    path = tmp_path / 'no_ln_final.pt'
    torch.save(sd, path)
    def clipstan(pretrained):
        return CLIPSTAN(arch=None, pretrained=pretrained, depth=0)

    either = 'takes full CLIP weights, or the image tower alone'
    for build, takes in ((build_clip, 'build_clip takes CLIP weights with both towers'),
                         (build_clip_vision, f'build_clip_vision {either}'),
                         (clipstan, f'CLIPSTAN (pretrained=...) {either}')):
        msg = raised(CLIPArchMismatchError, build, pretrained=str(path))
        assert str(path) in msg and 'ln_final.weight' in msg and takes in msg, msg


# ------------------------------------------------------------------ vision arch, full file
def test_vision_arch_with_full_file_loads_the_image_tower(tmp_path, src, frames):
    """A vision clip_cfg (no text_cfg) describes the image tower alone: with the full CLIP
    file only that tower is built and loaded (the text tower's keys are left out, not
    unexpected), equal to open_clip's encode_image; its shapes are still checked."""
    path = tmp_path / 'full.pt'
    T.save_open_clip(src, path)
    arch = vision_cfg_of(T.tiny_clip_cfg(**INFERABLE))
    visual = build_clip_vision(arch, path).eval()
    assert visual.clip_cfg == arch
    assert sum(p.numel() for p in visual.parameters()) == sum(
        p.numel() for p in src.visual.parameters())
    model = CLIPSTAN(arch=arch, pretrained=str(path), depth=0, input_layout='NTCHW').eval()
    video = frames.view(2, 3, 3, 32, 32)                     # [N, T, C, H, W]
    with torch.no_grad():
        ref = src.encode_image(frames)
        torch.testing.assert_close(visual(frames), ref, atol=ATOL, rtol=0)
        torch.testing.assert_close(model(video, return_dict=True)['frames'],
                                   ref.view(2, 3, -1), atol=ATOL, rtol=0)
    with pytest.raises(CLIPArchMismatchError, match='vision_cfg.layers: arch 4, weights 3'):
        CLIPSTAN(arch=dict(arch, vision_cfg=dict(arch['vision_cfg'], layers=4)),
                 pretrained=str(path), depth=0)


def test_heads_same_from_full_file_and_tower_alone(tmp_path, frames, monkeypatch):
    """The heads of an image tower do not depend on the text tower saved with it: a bundled
    config has this image tower with 32-wide heads (as ViT-H/14 has 80-wide ones) and
    another text tower (as ViT-H-14-worldwide's vocabulary is not CLIP's): the full file
    and the image tower alone both give 4 heads and open_clip's encode_image."""
    from open_clip import factory
    cfg = T.tiny_clip_cfg(vision_width=128, vision_head_width=32, text_width=64, text_heads=1)
    cfg.pop('quick_gelu')
    monkeypatch.setitem(factory._MODEL_CONFIGS, 'Tiny-H32-test', cfg)
    src = T.tiny_clip(seed=25, vision_width=128, vision_head_width=32, text_width=64,
                      text_heads=1, text_vocab_size=1000)
    full = tmp_path / 'full.pt'
    T.save_open_clip(src, full)
    vis = save_vision_only(src, tmp_path, 'visual_keys')
    with torch.no_grad():
        ref = src.encode_image(frames)
        for path in (full, vis):
            visual = build_clip_vision(pretrained=path).eval()
            assert visual.transformer.resblocks[0].attn.num_heads == 4, path
            torch.testing.assert_close(visual(frames), ref, atol=ATOL, rtol=0)


# ------------------------------------------------------------------ files that are not CLIP
def test_clipstan_backbone_state_dict_points_to_load_from(tmp_path, frames):
    """A trained CLIPSTAN backbone's own state dict (visual.* + branch.*) as pretrained:
    not an image tower alone; the error lists the branch keys and points to load_from
    (also before the heads, which this narrow tower would not give), without a strict
    option CLIPSTAN does not have."""
    arch = T.tiny_clip_cfg(vision_width=48)                  # heads not inferable
    backbone = CLIPSTAN(arch=arch, depth=1, input_layout='NTCHW')
    path = tmp_path / 'stan_backbone.pth'
    torch.save(backbone.state_dict(), path)
    for a in (None, arch):
        with pytest.raises(CLIPKeysMismatchError) as err:
            CLIPSTAN(arch=a, pretrained=str(path), depth=1, input_layout='NTCHW')
        msg = str(err.value)
        assert str(path) in msg and 'keys of neither CLIP tower [branch.' in msg, msg
        assert 'trained stan-mm CLIPSTAN backbone' in msg and 'load_from' in msg, msg
        assert 'strict=False' not in msg and 'only the image tower' not in msg, msg
    with pytest.raises(CLIPArchMismatchError) as err:        # build_clip: not 'text missing'
        build_clip(pretrained=path)
    msg = str(err.value)
    assert not isinstance(err.value, CLIPTextTowerMissingError)
    assert 'branch.' in msg and 'load_from' in msg, msg
    # what it is for: the whole backbone back, through load_state_dict / load_from
    again = CLIPSTAN(arch=arch, depth=1, input_layout='NTCHW')
    again.load_state_dict(torch.load(path))
    video = frames.view(2, 3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(video), backbone.eval()(video), atol=0, rtol=0)


def test_custom_text_clip_is_not_called_image_tower_only(tmp_path, src, frames):
    """open_clip's CustomTextCLIP keeps its (HuggingFace) text tower under text.*: the file
    is not an image tower alone whose text tower is missing; it is named as what it is."""
    sd = {k: v for k, v in src.state_dict().items() if k.startswith('visual.')}
    sd.update({'text.transformer.embeddings.word_embeddings.weight': torch.zeros(10, 8),
               'text.proj.0.weight': torch.zeros(32, 8), 'logit_scale': torch.tensor(1.)})
    path = tmp_path / 'custom_text_clip.pt'
    torch.save(sd, path)
    errors = []
    for build, error in ((build_clip, CLIPArchMismatchError),
                         (build_clip_vision, CLIPKeysMismatchError),
                         (lambda pretrained: CLIPSTAN(pretrained=pretrained, depth=0),
                          CLIPKeysMismatchError)):
        with pytest.raises(error) as err:
            build(pretrained=str(path))
        assert not isinstance(err.value, CLIPTextTowerMissingError)
        msg = str(err.value)
        assert str(path) in msg and ('2 keys of neither CLIP tower [text.transformer.'
                                     'embeddings.word_embeddings.weight, text.proj.0.weight]'
                                     in msg), msg                  # logit_scale is CLIP's
        assert 'CustomTextCLIP' in msg and 'not supported' in msg, msg
        assert 'only the image tower' not in msg, msg
        errors.append(msg)
    assert 'build_clip (it builds both CLIP towers) needs' in errors[0]
    assert 'strict=False' in errors[1] and 'strict=False' not in errors[2]
    ckpt = read_clip_checkpoint(path)
    assert not ckpt.has_text_tower and ckpt.stray_keys == [
        'text.transformer.embeddings.word_embeddings.weight', 'text.proj.0.weight']
    visual = build_clip_vision(pretrained=path, strict=False).eval()   # asked for
    with torch.no_grad():
        torch.testing.assert_close(visual(frames), src.encode_image(frames), atol=ATOL,
                                   rtol=0)
