"""Loading CLIP weights in every layout users have, checked against the source model's own
forward pass (open_clip for OpenAI/open_clip layouts, transformers for HF layout)."""
import contextlib
import copy
import logging

import pytest
import torch

import stan_mm  # noqa: F401  (registers everything, applies compat fixes)
from stan_mm import testing as T
from stan_mm.datasets.transforms import tokenize
from stan_mm.models.clip import (CLIPArchMismatchError, CLIPKeysMismatchError,
                                 CLIPTextTowerMissingError, arch_from_name,
                                 build_clip, build_clip_vision, hf_clip_to_openclip,
                                 infer_clip_cfg, infer_vision_cfg, load_clip_state_dict,
                                 normalize_arch_name, openclip_to_hf_clip,
                                 read_clip_checkpoint)

ATOL = 1e-5
# widths that are multiples of 64 with 64-wide heads: the architecture is inferable
INFERABLE = dict(vision_width=128, vision_head_width=64, text_width=64, text_heads=1)
CAPTIONS = ['a man is playing a guitar', 'two dogs run across a snowy field', '']


@pytest.fixture(scope='module')
def inputs():
    g = torch.Generator().manual_seed(123)
    return torch.randn(3, 3, 32, 32, generator=g), tokenize(CAPTIONS, 77)


def assert_same_clip(model, ref, inputs):
    img, txt = inputs
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(img), ref.encode_image(img),
                                   atol=ATOL, rtol=0)
        torch.testing.assert_close(model.encode_text(txt), ref.encode_text(txt),
                                   atol=ATOL, rtol=0)
    assert model.visual.conv1.weight.dtype == torch.float32


def act_is_quick(model) -> bool:
    from open_clip.transformer import QuickGELU
    return isinstance(model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)


# ------------------------------------------------------------------ OpenAI layouts
def test_openai_fp16_state_dict(tmp_path, inputs):
    src = T.tiny_clip(seed=1, quick_gelu=True, **INFERABLE)
    path = tmp_path / 'ViT-tiny.pt'
    T.save_openai_state_dict(src, path)
    assert torch.load(path)['visual.conv1.weight'].dtype == torch.float16
    model = build_clip(pretrained=str(path))  # arch inferred
    assert model.clip_cfg['quick_gelu'] is True and act_is_quick(model)
    assert_same_clip(model, T.rounded_fp16(src), inputs)
    # the fp16 rounding is real: the unrounded source gives other outputs
    with torch.no_grad():
        diff = (model.encode_image(inputs[0]) - src.encode_image(inputs[0])).abs().max()
    assert diff > 0


def test_openai_torchscript_archive(tmp_path, inputs):
    src = T.tiny_clip(seed=2, quick_gelu=True, **INFERABLE)
    path = tmp_path / 'ViT-tiny-jit.pt'
    T.save_openai_torchscript(src, path)  # fp16, as OpenAI's archives
    # the archive really is TorchScript, with OpenAI's keys
    jit_keys = set(torch.jit.load(str(path)).state_dict())
    assert jit_keys == set(src.state_dict()) | {'input_resolution', 'context_length',
                                                'vocab_size'}
    ckpt = read_clip_checkpoint(path)
    assert ckpt.fmt == 'openai-torchscript' and ckpt.quick_gelu is True
    model = build_clip(pretrained=path)
    assert act_is_quick(model)
    assert_same_clip(model, T.rounded_fp16(src), inputs)


# ------------------------------------------------------------------ open_clip layouts
@pytest.mark.parametrize('name,wrap', [('w.pt', False), ('w.bin', True),
                                       ('w.safetensors', False)])
def test_open_clip_gelu_files(tmp_path, inputs, name, wrap):
    """LAION-style GELU weights: fp32 files carry no activation hint, so GELU is stated
    (quick_gelu=False); the architecture is still inferred."""
    src = T.tiny_clip(seed=3, quick_gelu=False, **INFERABLE)
    path = tmp_path / name
    T.save_open_clip(src, path, wrap=wrap)
    model = build_clip(pretrained=path, quick_gelu=False)
    assert not act_is_quick(model)
    assert_same_clip(model, src, inputs)


def test_open_clip_quickgelu_file_default_rule(tmp_path, inputs):
    """Rule 5: fp32 weights without a hint and no arch -> QuickGELU (OpenAI CLIP)."""
    src = T.tiny_clip(seed=4, quick_gelu=True, **INFERABLE)
    path = tmp_path / 'oai_fp32.pt'
    T.save_open_clip(src, path)
    model = build_clip(pretrained=path)
    assert model.clip_cfg['quick_gelu'] is True
    assert_same_clip(model, src, inputs)
    # the activation matters: loading the same weights with GELU gives other outputs
    gelu = build_clip(pretrained=path, quick_gelu=False).eval()
    with torch.no_grad():
        diff = (gelu.encode_image(inputs[0]) - src.encode_image(inputs[0])).abs().max()
    assert diff > 1e-4


def test_activation_rule_with_arch(tmp_path):
    src = T.tiny_clip(seed=5, **INFERABLE)
    arch = T.tiny_clip_cfg(**INFERABLE)
    del arch['quick_gelu']
    fp32, fp16 = tmp_path / 'a.pt', tmp_path / 'b.pt'
    T.save_open_clip(src, fp32)
    T.save_openai_state_dict(src, fp16)
    # rule 4: an arch without quick_gelu means GELU, as in open_clip ...
    assert build_clip(arch, fp32).clip_cfg['quick_gelu'] is False
    # ... unless the weights hint (rule 3: fp16 = OpenAI release) ...
    assert build_clip(arch, fp16).clip_cfg['quick_gelu'] is True
    # ... and explicit statements win (rules 1, 2)
    assert build_clip(arch, fp16, quick_gelu=False).clip_cfg['quick_gelu'] is False
    assert build_clip(dict(arch, quick_gelu=False), fp16).clip_cfg['quick_gelu'] is False
    assert act_is_quick(build_clip(dict(arch, quick_gelu=True), fp32))


def test_tiny_heads_need_explicit_arch(tmp_path, inputs):
    """Heads are not in the weights: the default tiny model (16-wide heads, text width 32)
    is refused without arch, and loads exactly with it."""
    src = T.tiny_clip(seed=6)
    path = tmp_path / 'tiny.safetensors'
    T.save_open_clip(src, path)
    with pytest.raises(ValueError, match='heads'):
        build_clip(pretrained=path)
    model = build_clip(T.tiny_clip_cfg(), path)
    assert_same_clip(model, src, inputs)


def test_prefixed_checkpoint(tmp_path, inputs):
    """CLIP weights nested in a bigger model (CLIP4Clip style ``clip.`` prefix)."""
    src = T.tiny_clip(seed=7, **INFERABLE)
    sd = {'clip.' + k: v for k, v in src.state_dict().items()}
    sd['frame_position_embeddings.weight'] = torch.zeros(4, 8)
    path = tmp_path / 'c4c.pt'
    torch.save({'state_dict': sd}, path)
    ckpt = read_clip_checkpoint(path)
    assert ckpt.ignored_keys == ['frame_position_embeddings.weight']
    assert_same_clip(build_clip(pretrained=path), src, inputs)


# ------------------------------------------------------------------ HuggingFace layout
@pytest.fixture(scope='module')
def hf_models(inputs):
    """Tiny transformers CLIPModels (random init) and their own image/text features."""
    img, txt = inputs
    out = {}
    for key, kwargs in (('quick_gelu', dict(seed=8, hidden_act='quick_gelu')),
                        ('gelu', dict(seed=9, hidden_act='gelu')),
                        ('narrow', dict(seed=10, vision_width=64, vision_heads=4,
                                        text_width=32, text_heads=2))):
        hf = T.tiny_hf_clip(**kwargs)
        with torch.no_grad():
            out[key] = (hf, hf.get_image_features(pixel_values=img).pooler_output,
                        hf.get_text_features(input_ids=txt).pooler_output)
    return out


def assert_same_as_hf(model, ref, inputs):
    _, ref_img, ref_txt = ref
    img, txt = inputs
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(img), ref_img, atol=ATOL, rtol=0)
        torch.testing.assert_close(model.encode_text(txt), ref_txt, atol=ATOL, rtol=0)


@pytest.mark.parametrize('hidden_act', ['quick_gelu', 'gelu'])
def test_hf_directory(tmp_path, inputs, hf_models, hidden_act):
    hf_models[hidden_act][0].save_pretrained(tmp_path / 'hf')
    model = build_clip(pretrained=tmp_path / 'hf')
    assert model.clip_cfg['quick_gelu'] is (hidden_act == 'quick_gelu')
    assert_same_as_hf(model, hf_models[hidden_act], inputs)


def test_hf_directory_heads_from_config(tmp_path, inputs, hf_models):
    """config.json states the heads, so widths below 64 load without arch."""
    hf_models['narrow'][0].save_pretrained(tmp_path / 'hf')
    model = build_clip(pretrained=tmp_path / 'hf')
    assert model.clip_cfg['vision_cfg']['head_width'] == 16
    assert model.clip_cfg['text_cfg']['heads'] == 2
    assert_same_as_hf(model, hf_models['narrow'], inputs)


def test_folder_with_both_layouts_reads_hints_from_config_json(tmp_path, inputs, hf_models):
    """A hub folder with HF files and open_clip weights but no open_clip_config.json: the
    open_clip file is read, config.json still gives the activation (GELU here; the default
    rule would pick QuickGELU) and the heads."""
    hf = hf_models['gelu'][0]
    hf.save_pretrained(tmp_path / 'both')
    sd = hf_clip_to_openclip({k: v.contiguous() for k, v in hf.state_dict().items()
                              if not k.endswith('position_ids')})
    torch.save(sd, tmp_path / 'both' / 'open_clip_pytorch_model.bin')
    ckpt = read_clip_checkpoint(tmp_path / 'both')
    assert ckpt.fmt == 'open_clip' and ckpt.weights_file.endswith('open_clip_pytorch_model.bin')
    assert ckpt.quick_gelu is False and 'config.json' in ckpt.quick_gelu_reason
    assert ckpt.heads is not None
    assert_same_as_hf(build_clip(pretrained=tmp_path / 'both'), hf_models['gelu'], inputs)
    # a config.json that is not a CLIP config gives no hints
    (tmp_path / 'other').mkdir()
    torch.save(sd, tmp_path / 'other' / 'open_clip_pytorch_model.bin')
    (tmp_path / 'other' / 'config.json').write_text('{"note": "not a model config"}')
    assert read_clip_checkpoint(tmp_path / 'other').quick_gelu is None


@pytest.mark.parametrize('fname', ['model.safetensors', 'pytorch_model.bin'])
def test_hf_weights_file_alone(tmp_path, inputs, hf_models, fname):
    sd = {k: v.contiguous() for k, v in hf_models['quick_gelu'][0].state_dict().items()}
    path = tmp_path / fname
    if fname.endswith('.safetensors'):
        from safetensors.torch import save_file
        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    ckpt = read_clip_checkpoint(path)
    assert ckpt.fmt == 'hf' and ckpt.quick_gelu is None  # no config: default rule applies
    assert_same_as_hf(build_clip(pretrained=path), hf_models['quick_gelu'], inputs)


def test_hf_round_trip(inputs):
    """open_clip -> HF keys loads strictly into transformers' CLIPModel and reproduces the
    open_clip forward; HF -> open_clip gives back the identical state dict."""
    from transformers import CLIPModel
    src = T.tiny_clip(seed=11, vision_layers=2, **INFERABLE)  # = tiny_hf_clip_config()
    sd = src.state_dict()
    hf_sd = openclip_to_hf_clip(sd)
    back = hf_clip_to_openclip(hf_sd)
    assert set(back) == set(sd)
    for k in sd:
        assert torch.equal(back[k], sd[k]), k
    hf = CLIPModel(T.tiny_hf_clip_config()).eval()
    result = hf.load_state_dict(hf_sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    img, txt = inputs
    with torch.no_grad():
        torch.testing.assert_close(hf.get_image_features(pixel_values=img).pooler_output,
                                   src.encode_image(img), atol=ATOL, rtol=0)
        torch.testing.assert_close(hf.get_text_features(input_ids=txt).pooler_output,
                                   src.encode_text(txt), atol=ATOL, rtol=0)


def test_hf_unknown_keys_are_reported():
    hf_sd = openclip_to_hf_clip(T.tiny_clip(**INFERABLE).state_dict())
    hf_sd['vision_model.extra_head.weight'] = torch.zeros(2)
    hf_sd['text_model.embeddings.position_ids'] = torch.arange(77)[None]
    out = hf_clip_to_openclip(hf_sd)
    assert 'vision_model.extra_head.weight' in out  # kept: loading will flag it
    assert not any(k.endswith('position_ids') for k in out)


# ------------------------------------------------------------------ inference & names
def test_infer_clip_cfg_matches_source():
    overrides = dict(embed_dim=48, vision_layers=2, text_layers=3, vision_image_size=40,
                     vision_patch_size=10, text_context_length=20, **INFERABLE)
    cfg = T.tiny_clip_cfg(**overrides)
    src = T.tiny_clip(**overrides)
    inferred = infer_clip_cfg(src.state_dict())
    expected = {k: v for k, v in cfg.items() if k != 'quick_gelu'}
    assert inferred == expected


@pytest.mark.parametrize('name', ['ViT-B-32', 'ViT-B-16', 'ViT-L-14', 'ViT-L-14-336',
                                  'ViT-H-14'])
def test_infer_full_size_shapes_on_meta(name):
    """Full-size configs, built on the meta device (no memory, no time): inference gives
    back open_clip's config, heads included (ViT-H/14 has 80-wide heads)."""
    import open_clip
    from open_clip.model import CLIP
    cfg = open_clip.get_model_config(name)
    with torch.device('meta'):
        model = CLIP(**cfg)
    inferred = infer_clip_cfg(model.state_dict())
    cfg['vision_cfg'].setdefault('head_width', 64)
    assert inferred == cfg


@pytest.mark.parametrize('name', ['ViT-H-14-worldwide', 'ViT-bigG-14-worldwide',
                                  'ViT-bigG-14-worldwide-378'])
def test_heads_of_a_known_image_tower_with_another_text_tower(name):
    """ViT-H/14 (80-wide heads) and ViT-bigG/14 (104-wide) with a text tower (multilingual
    vocabulary) or an image size that no bundled CLIP has: the heads come from the bundled
    configs with that image tower, as for the image tower alone; CLIP's 64-wide guess would
    load strictly and compute something else."""
    import open_clip
    from open_clip.model import CLIP
    cfg = open_clip.get_model_config(name)
    with torch.device('meta'):
        sd = CLIP(**cfg).state_dict()
    full = infer_clip_cfg(sd)
    tower = infer_vision_cfg({k: v for k, v in sd.items() if k.startswith('visual.')})
    assert full['vision_cfg']['head_width'] == cfg['vision_cfg']['head_width']
    assert tower['vision_cfg']['head_width'] == cfg['vision_cfg']['head_width']
    assert full['text_cfg']['heads'] == cfg['text_cfg']['heads']


@contextlib.contextmanager
def logged_warnings():
    """The messages of the warnings logged through mmengine's current logger."""
    from mmengine.logging import MMLogger
    logger, records = MMLogger.get_current_instance(), []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


@contextlib.contextmanager
def logged_messages():
    """The messages logged (INFO and above) through mmengine's current logger."""
    from mmengine.logging import MMLogger
    logger, records = MMLogger.get_current_instance(), []
    handler, level = logging.Handler(logging.INFO), logger.level
    handler.emit = lambda r: records.append(r.getMessage())
    logger.addHandler(handler)
    logger.setLevel(min(level, logging.INFO) if level else logging.INFO)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_load_line_says_where_the_architecture_came_from(tmp_path):
    """The build line reads '<what> (architecture ...): loaded/random init ...' for an arch
    dict, an arch name and an inferred architecture, for both builders."""
    src = T.tiny_clip(seed=17, **INFERABLE)
    arch = T.tiny_clip_cfg(**INFERABLE)
    vision_arch = {k: v for k, v in arch.items() if k != 'text_cfg'}
    path, vis = tmp_path / 'full.pt', tmp_path / 'visual.pt'
    T.save_open_clip(src, path)
    torch.save({k: v for k, v in src.state_dict().items() if k.startswith('visual.')}, vis)
    cases = [
        (build_clip, arch, path, 'CLIP (architecture from the arch dict): loaded open_clip '
                                 f'weights from {path}'),
        (build_clip, None, path, 'CLIP (architecture inferred from the weights): loaded '
                                 f'open_clip weights from {path}'),
        (build_clip_vision, vision_arch, path,
         'CLIP image tower (architecture from the arch dict): loaded open_clip weights '
         f'(text tower left out) from {path}'),
        (build_clip_vision, None, vis,
         'CLIP image tower (architecture inferred from the image tower weights): loaded '
         f'open_clip weights (no text tower) from {vis}'),
        (build_clip, 'ViT-B-32', None, "CLIP (architecture 'ViT-B-32'): random init, "
                                       'activation GELU'),
        (build_clip_vision, vision_arch, None,
         'CLIP image tower (architecture from the arch dict): random init, activation'),
    ]
    for build, a, p, expected in cases:
        with logged_messages() as records:
            build(a, p)
        lines = [m for m in records if m.startswith('CLIP')]
        assert any(m.startswith(expected) for m in lines), (expected, lines)
        assert not any('the arch dict:' in m or 'tower the ' in m for m in lines), lines


def test_heads_guessed_from_the_width_are_warned_with_the_file(tmp_path):
    """No config file and no bundled config with these towers: CLIP's width // 64 heads,
    a guess that is said, with the file and the fix, for each tower (full file and image
    tower alone); an arch leaves nothing to guess."""
    src = T.tiny_clip(seed=16, **INFERABLE)
    full, vis = tmp_path / 'full.pt', tmp_path / 'visual.pt'
    T.save_open_clip(src, full)
    torch.save({k: v for k, v in src.state_dict().items() if k.startswith('visual.')}, vis)
    for build, path, towers in ((build_clip, full, ['vision', 'text']),
                                (build_clip_vision, full, ['vision', 'text']),
                                (build_clip_vision, vis, ['vision'])):
        with logged_warnings() as records:
            build(pretrained=path)
        guessed = [r.getMessage() for r in records if 'width // 64' in r.getMessage()]
        assert len(guessed) == len(towers), guessed
        for msg, tower in zip(guessed, towers):
            assert msg.startswith(f'{path}: the number of attention heads of the {tower} '
                                  f'tower'), msg
            assert 'pass arch' in msg and 'trained with other heads' in msg, msg
    with logged_warnings() as records:
        build_clip(T.tiny_clip_cfg(**INFERABLE), full)
    assert not [r for r in records if 'width // 64' in r.getMessage()]


def test_arch_names():
    assert normalize_arch_name('ViT-B/32') == 'ViT-B-32-quickgelu'
    assert normalize_arch_name('ViT-B/16') == 'ViT-B-16-quickgelu'
    assert normalize_arch_name('ViT-L/14') == 'ViT-L-14-quickgelu'
    assert normalize_arch_name('ViT-L/14@336px') == 'ViT-L-14-336-quickgelu'
    assert normalize_arch_name('ViT-B-16') == 'ViT-B-16'
    assert arch_from_name('ViT-L/14@336px')['vision_cfg']['image_size'] == 336
    assert arch_from_name('ViT-B/16')['quick_gelu'] is True
    assert 'quick_gelu' not in arch_from_name('ViT-B-16')
    with pytest.raises(ValueError, match='Unknown CLIP arch name'):
        normalize_arch_name('ViT-Q/99')
    with pytest.raises(ValueError, match='ResNet'):
        arch_from_name('RN50')


def test_build_full_size_name_on_meta():
    from open_clip.transformer import QuickGELU
    with torch.device('meta'):
        model = build_clip('ViT-B/16')
    assert model.visual.conv1.weight.shape == (768, 3, 16, 16)
    assert model.positional_embedding.shape == (77, 512)
    assert isinstance(model.transformer.resblocks[0].mlp.gelu, QuickGELU)
    with torch.device('meta'):
        laion = build_clip('ViT-B-16')
    assert isinstance(laion.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)


def test_load_clip_state_dict(tmp_path):
    src = T.tiny_clip(seed=12, **INFERABLE)
    path = tmp_path / 'w.pt'
    T.save_openai_state_dict(src, path)
    sd, cfg = load_clip_state_dict(path)
    assert cfg == T.tiny_clip_cfg(**INFERABLE)
    assert all(v.dtype == torch.float32 for v in sd.values() if v.is_floating_point())
    assert set(sd) == set(src.state_dict())


# ------------------------------------------------------------------ errors
def test_missing_path_named(tmp_path):
    missing = tmp_path / 'nowhere' / 'ViT-B-16.pt'
    with pytest.raises(FileNotFoundError, match='nowhere'):
        build_clip(pretrained=missing)
    with pytest.raises(FileNotFoundError, match='nowhere'):
        build_clip('ViT-B/16', pretrained=str(missing))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='config.json'):
        build_clip(pretrained=tmp_path / 'empty')


def test_nothing_given():
    with pytest.raises(ValueError, match='arch.*pretrained'):
        build_clip()


def test_arch_mismatch(tmp_path):
    src = T.tiny_clip(seed=13)
    path = tmp_path / 'w.pt'
    T.save_open_clip(src, path)
    with pytest.raises(CLIPArchMismatchError, match=r'vision_cfg\.layers: arch 4, weights 3'):
        build_clip(T.tiny_clip_cfg(vision_layers=4), path)
    with pytest.raises(CLIPArchMismatchError) as err:
        build_clip('ViT-B-16', path)
    msg = str(err.value)
    assert 'embed_dim: arch 512, weights 32' in msg and 'vision_cfg.patch_size' in msg


def test_missing_and_unexpected_keys(tmp_path, inputs):
    src = T.tiny_clip(seed=14)
    sd = copy.deepcopy(src.state_dict())
    del sd['ln_final.bias']
    sd['visual.extra.weight'] = torch.zeros(3)
    path = tmp_path / 'w.pt'
    torch.save(sd, path)
    with pytest.raises(CLIPKeysMismatchError) as err:
        build_clip(T.tiny_clip_cfg(), path)
    msg = str(err.value)
    assert 'ln_final.bias' in msg and 'visual.extra.weight' in msg
    model = build_clip(T.tiny_clip_cfg(), path, strict=False).eval()
    with torch.no_grad():  # everything else was loaded
        torch.testing.assert_close(model.encode_image(inputs[0]), src.encode_image(inputs[0]),
                                   atol=ATOL, rtol=0)


def test_not_a_clip_file(tmp_path):
    path = tmp_path / 'other.pt'
    torch.save({'backbone.conv.weight': torch.zeros(2)}, path)
    with pytest.raises(ValueError, match='no CLIP image tower'):
        build_clip(pretrained=path)
    path2 = tmp_path / 'list.pt'
    torch.save([1, 2], path2)
    with pytest.raises(ValueError, match='state dict'):
        build_clip(pretrained=path2)


def test_bad_arch_dict():
    cfg = T.tiny_clip_cfg()
    del cfg['text_cfg']['heads']
    with pytest.raises(ValueError, match=r"text_cfg is missing \['heads'\]"):
        build_clip(cfg)
    with pytest.raises(ValueError, match='unknown keys'):
        build_clip(T.tiny_clip_cfg(vision_cfg={'widht': 3}))


def test_precision_fp16_casts_like_open_clip(tmp_path):
    src = T.tiny_clip(seed=15)
    path = tmp_path / 'w.pt'
    T.save_open_clip(src, path)
    model = build_clip(T.tiny_clip_cfg(), path, precision='fp16')
    assert model.visual.conv1.weight.dtype == torch.float16
    assert model.ln_final.weight.dtype == torch.float32


def test_weights_without_the_text_tower_named_with_their_file(tmp_path):
    """build_clip builds both towers: a vision-only file is refused with its path, what it
    holds and who needs the text tower (before: a bare KeyError without the file). The
    image tower alone loads with build_clip_vision / CLIPSTAN (tests/test_clip_vision_only.py)."""
    src = T.tiny_clip(seed=15, **INFERABLE)
    sd = {k: v for k, v in src.state_dict().items() if k.startswith('visual.')}
    path = tmp_path / 'vision_only.pt'
    torch.save(sd, path)
    for arch in (None, T.tiny_clip_cfg(**INFERABLE)):
        with pytest.raises(CLIPTextTowerMissingError) as err:
            build_clip(arch, pretrained=path)
        msg = str(err.value)
        assert str(path) in msg and 'only the image tower' in msg
        assert 'the text tower is missing, and build_clip' in msg
        assert 'CLIPSTAN(pretrained=...)' in msg and 'both towers' in msg
    assert isinstance(err.value, CLIPArchMismatchError)   # what callers caught before
    with pytest.raises(CLIPTextTowerMissingError, match='vision_only.pt'):
        load_clip_state_dict(path)
