"""Checkpoint loading that must not run code from the file (security review 1207).

1. TorchScript archives given as CLIP weights (``pretrained=``, ``tools/convert/clip_to_mm.py``)
   went to ``torch.jit.load``, which runs code stored in the archive (a ``__setstate__``),
   whatever the file's name. They are read without running it now; ``torch.jit.load`` only
   with the trust opt-in. Shards named by a HuggingFace ``*.index.json`` stay in its folder.
2. mmengine's URL loaders (``http(s)://``, ``open-mmlab://``, ``torchvision://``,
   ``mmcls://``) unpickled downloads fully (``torch.hub.load_state_dict_from_url``'s
   ``weights_only=False``). They go through ``safe_torch_load`` now. Served from a
   localhost HTTP server; nothing else is reached.
"""
import functools
import http.server
import importlib.util
import json
import os
import pathlib
import threading
import warnings

import numpy as np
import pytest
import torch

import stan_mm  # noqa: F401  (applies the compat fixes)
from stan_mm import testing as T
from stan_mm.compat import UnsafeCheckpointError, trusted_checkpoints

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRUST = 'STAN_MM_TRUST_CHECKPOINTS'
INFERABLE = dict(vision_width=128, vision_head_width=64, text_width=64, text_heads=1)
MARKER_BYTES = b'untouched-marker'   # 16 bytes, overwritten by the archive's code if it runs


@pytest.fixture(autouse=True)
def _untrusted(monkeypatch):
    monkeypatch.delenv(TRUST, raising=False)


# ------------------------------------------------------------------ TorchScript archives
class _SetstatePayload(torch.nn.Module):
    """A scripted module whose ``__setstate__`` (run by ``torch.jit.load``) overwrites a
    file: stands in for malicious code in a TorchScript archive."""

    def __init__(self, marker: str):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))
        self.marker = marker

    @torch.jit.export
    def __getstate__(self):
        return (self.w, self.training, self.marker)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool, str]):
        self.w = state[0]
        self.marker = state[2]
        t = torch.from_file(self.marker, shared=True, size=16, dtype=torch.uint8)
        t.fill_(65)
        self.training = state[1] or bool(t[0] == 0)   # (uses t: not optimized away)

    def forward(self, x):
        return x * self.w


class _Mixed(torch.nn.Module):
    """Parameters and buffers as views (non-contiguous, with an offset), a plain tensor
    attribute (not in the state dict), a shared submodule, bf16, bool and empty tensors."""

    def __init__(self):
        super().__init__()
        base = torch.randn(6, 5)
        self.a = torch.nn.Parameter(base.t())
        self.register_buffer('b', base[2:4])
        self.e = torch.nn.Parameter(torch.empty(0, 3))
        self.h = torch.nn.Parameter(torch.randn(3).bfloat16())
        self.lin = torch.nn.Linear(3, 3, bias=False)
        self.lin2 = self.lin
        self.register_buffer('flag', torch.tensor([True, False]))
        self.mask = torch.ones(2, 2)

    def forward(self, x):
        return self.lin(x) + self.lin2(x) + self.mask.sum()


def _evil_archive(tmp_path, name='ViT-B-16.pth'):
    marker = tmp_path / 'marker'
    marker.write_bytes(MARKER_BYTES)
    path = tmp_path / name
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.jit.script(_SetstatePayload(str(marker))).save(str(path))
    assert marker.read_bytes() == MARKER_BYTES
    return path, marker


def _jit_state_dict(path):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return dict(torch.jit.load(str(path), map_location='cpu').state_dict())


def _no_jit_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError('torch.jit.load was called on an untrusted file')
    monkeypatch.setattr(torch.jit, 'load', refuse)


def _clip_to_mm():
    spec = importlib.util.spec_from_file_location(
        '_clip_to_mm', ROOT / 'tools' / 'convert' / 'clip_to_mm.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize('name', ['ViT-B-16.pth', 'ViT-B-16.pt', 'weights.bin'])
def test_torchscript_code_does_not_run_through_pretrained(tmp_path, name):
    from stan_mm.models.clip import build_clip, read_clip_checkpoint
    path, marker = _evil_archive(tmp_path, name)
    with pytest.raises(Exception) as e:
        read_clip_checkpoint(path)
    assert marker.read_bytes() == MARKER_BYTES, 'the archive\'s code ran'
    assert e.type is UnsafeCheckpointError, e.value
    msg = str(e.value)
    assert str(path) in msg and TRUST in msg and 'TorchScript' in msg and '\n' not in msg
    with pytest.raises(UnsafeCheckpointError):
        build_clip(pretrained=str(path))
    assert marker.read_bytes() == MARKER_BYTES


def test_torchscript_code_does_not_run_through_clip_to_mm(tmp_path, capsys):
    path, marker = _evil_archive(tmp_path)
    rc = _clip_to_mm().main([str(path), str(tmp_path / 'out.pth')])
    err = capsys.readouterr().err
    assert marker.read_bytes() == MARKER_BYTES, 'the archive\'s code ran'
    assert rc == 2 and str(path) in err and TRUST in err, err
    assert not (tmp_path / 'out.pth').exists()


def test_trusted_torchscript_still_goes_through_jit_load(tmp_path, monkeypatch):
    """The opt-in keeps the old path (torch.jit.load, the archive's code runs)."""
    from stan_mm.models.clip.checkpoint import _read_file
    path, marker = _evil_archive(tmp_path)
    with trusted_checkpoints():
        sd, torchscript = _read_file(str(path))
    assert torchscript and list(sd) == ['w'] and marker.read_bytes() == b'A' * 16
    marker.write_bytes(MARKER_BYTES)
    monkeypatch.setenv(TRUST, '1')
    _read_file(str(path))
    assert marker.read_bytes() == b'A' * 16


def test_openai_torchscript_reads_without_running_code(tmp_path, monkeypatch, capsys):
    """OpenAI's ViT-B-16.pt is such an archive: its weights load without torch.jit.load,
    equal to what torch.jit.load gives, through pretrained= and clip_to_mm.py."""
    from stan_mm.models.clip import build_clip, read_clip_checkpoint
    src = T.tiny_clip(seed=2, quick_gelu=True, **INFERABLE)
    path = tmp_path / 'ViT-B-16.pt'
    T.save_openai_torchscript(src, path)
    expected = _jit_state_dict(path)
    _no_jit_load(monkeypatch)
    ckpt = read_clip_checkpoint(path)
    assert ckpt.fmt == 'openai-torchscript' and ckpt.quick_gelu is True
    assert ckpt.stored_dtype == torch.float16
    sd = {k: v for k, v in expected.items()
          if k not in ('input_resolution', 'context_length', 'vocab_size')}
    assert set(ckpt.state_dict) == set(sd)
    for k, v in sd.items():
        assert torch.equal(ckpt.state_dict[k], v.float()), k
    model = build_clip(pretrained=str(path))
    with torch.no_grad():
        img = torch.randn(1, 3, 32, 32)
        torch.testing.assert_close(model.encode_image(img),
                                   T.rounded_fp16(src).encode_image(img), atol=1e-5, rtol=0)
    assert _clip_to_mm().main([str(path), str(tmp_path / 'out.pth')]) == 0, \
        capsys.readouterr().err
    assert (tmp_path / 'out.pth').is_file()


@pytest.mark.parametrize('how', ['script', 'trace'])
def test_torchscript_state_dict_matches_jit_load(tmp_path, how):
    from stan_mm.models.clip.checkpoint import read_torchscript_state_dict
    path = tmp_path / 'mixed.pt'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        m = _Mixed()
        made = torch.jit.script(m) if how == 'script' else torch.jit.trace(m, torch.randn(2, 3))
        made.save(str(path))
    expected = _jit_state_dict(path)
    got = read_torchscript_state_dict(str(path))
    assert list(got) == list(expected) and 'mask' not in got
    for k, v in expected.items():
        assert got[k].dtype == v.dtype and got[k].stride() == v.stride(), k
        assert torch.equal(got[k], v), k


def test_torchscript_pickle_with_other_globals_is_refused(tmp_path):
    """A data.pkl that asks for anything but tensors, containers and module stand-ins is
    refused (not imported)."""
    import zipfile
    from stan_mm.models.clip.checkpoint import read_clip_checkpoint
    good = tmp_path / 'good.pt'
    T.save_openai_torchscript(T.tiny_clip(seed=2, quick_gelu=True, **INFERABLE), good)
    marker = tmp_path / 'touched'
    evil = tmp_path / 'evil.pt'
    payload = (b'\x80\x02cpathlib\nPath\nq\x00X' + len(str(marker)).to_bytes(4, 'little')
               + str(marker).encode() + b'\x85R)\x81.')  # Path(marker) ... just an import
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(evil, 'w') as zout:
        for info in zin.infolist():
            data = payload if info.filename.endswith('/data.pkl') else zin.read(info)
            zout.writestr(info, data)
    with pytest.raises(UnsafeCheckpointError, match='pathlib.Path') as e:
        read_clip_checkpoint(evil)
    assert str(evil) in str(e.value) and TRUST in str(e.value)


# ------------------------------------------------------------------ sharded indexes
def _save_shards(sd, folder, names):
    from safetensors.torch import save_file
    keys = sorted(sd)
    half = len(keys) // 2
    parts = [keys[:half], keys[half:]]
    for name, part in zip(names, parts):
        save_file({k: sd[k].contiguous() for k in part}, str(folder / name))
    return {k: names[i] for i, part in enumerate(parts) for k in part}


def _index(folder, weight_map):
    path = folder / 'model.safetensors.index.json'
    path.write_text(json.dumps({'metadata': {}, 'weight_map': weight_map}))
    return path


def test_shards_outside_the_index_folder_are_refused(tmp_path):
    from stan_mm.models.clip import read_clip_checkpoint
    sd = T.tiny_clip(seed=4, **INFERABLE).state_dict()
    outside = tmp_path / 'outside'
    outside.mkdir()
    wm = _save_shards(sd, outside, ['a.safetensors', 'b.safetensors'])
    snap = tmp_path / 'snap'
    snap.mkdir()
    (snap / 'linked').symlink_to(outside, target_is_directory=True)
    for shard_of in ({k: f'../outside/{v}' for k, v in wm.items()},
                     {k: str(outside / v) for k, v in wm.items()},
                     {k: f'linked/{v}' for k, v in wm.items()}):
        index = _index(snap, shard_of)
        with pytest.raises(ValueError, match='outside') as e:
            read_clip_checkpoint(index)
        assert str(index) in str(e.value) and '\n' not in str(e.value)
        with pytest.raises(ValueError, match='outside'):
            read_clip_checkpoint(snap)      # the folder: its index is found and read


def test_shards_in_the_folder_load_also_as_hub_cache_links(tmp_path):
    """HuggingFace's cache links each shard of a snapshot to ../../blobs/<hash>: fine."""
    from stan_mm.models.clip import read_clip_checkpoint
    sd = T.tiny_clip(seed=4, **INFERABLE).state_dict()
    blobs, snap = tmp_path / 'blobs', tmp_path / 'snapshots' / 'rev'
    blobs.mkdir()
    snap.mkdir(parents=True)
    wm = _save_shards(sd, blobs, ['h1', 'h2'])
    for blob, name in (('h1', 'model-1.safetensors'), ('h2', 'model-2.safetensors')):
        (snap / name).symlink_to(os.path.relpath(blobs / blob, snap))
    index = _index(snap, {k: {'h1': 'model-1.safetensors', 'h2': 'model-2.safetensors'}[v]
                          for k, v in wm.items()})
    ckpt = read_clip_checkpoint(index)
    assert set(ckpt.state_dict) == set(sd)
    assert all(torch.equal(ckpt.state_dict[k], v.float()) for k, v in sd.items())


# ------------------------------------------------------------------ URLs (mmengine)
class _Payload:
    """Pickles into a call of ``pathlib.Path.touch``: stands in for malicious code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _mmengine_like_checkpoint():
    from mmengine.logging import HistoryBuffer
    hist = HistoryBuffer()
    for v in (1.0, 0.5):
        hist.update(v)
    return {'meta': {'epoch': 2, 'seed': np.int64(7),
                     'message_hub': {'log_scalars': {'train/loss': hist}}},
            'state_dict': {'weight': torch.randn(2, 3), 'bias': torch.randn(2)}}


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path, monkeypatch):
    """(base URL, served folder, marker) with good.pth and evil.pth served from localhost;
    torch.hub's cache in tmp_path."""
    site = tmp_path / 'site'
    site.mkdir()
    marker = tmp_path / 'pwned'
    torch.save(_mmengine_like_checkpoint(), site / 'good.pth')
    torch.save({'state_dict': {'weight': torch.zeros(1)}, 'x': _Payload(marker)},
               site / 'evil.pth')
    hub = tmp_path / 'hub'
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(hub))
    server = http.server.ThreadingHTTPServer(
        ('127.0.0.1', 0), functools.partial(_Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{server.server_address[1]}', site, marker
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_url_checkpoint_code_is_refused(served):
    from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint
    base, _, marker = served
    url = f'{base}/evil.pth'
    with pytest.raises(UnsafeCheckpointError) as e:
        _load_checkpoint(url, map_location='cpu')
    msg = str(e.value)
    assert url in msg and TRUST in msg and '\n' not in msg
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError):   # cached now: read from the cache
        CheckpointLoader.load_checkpoint(url, map_location='cpu')
    assert not marker.exists()
    # explicit opt-in: the file is trusted, its code runs
    with trusted_checkpoints():
        _load_checkpoint(url, map_location='cpu')
    assert marker.exists()


@pytest.mark.parametrize('scheme,table', [('open-mmlab://', 'get_external_models'),
                                          ('torchvision://', 'get_torchvision_models'),
                                          ('mmcls://', 'get_mmcls_models')])
def test_model_zoo_schemes_are_refused_too(served, monkeypatch, scheme, table):
    """These loaders call load_from_http directly (not through the scheme table)."""
    import mmengine.runner.checkpoint as mc
    base, _, marker = served
    url = f'{base}/evil.pth'
    monkeypatch.setattr(mc, table, lambda: {'evil_net': url})
    with pytest.raises(UnsafeCheckpointError) as e:
        mc._load_checkpoint(f'{scheme}evil_net', map_location='cpu')
    assert url in str(e.value) and TRUST in str(e.value)
    assert not marker.exists()


def test_url_mmengine_checkpoint_loads(served):
    from mmengine.runner.checkpoint import _load_checkpoint, load_checkpoint
    base, site, _ = served
    ckpt = _load_checkpoint(f'{base}/good.pth', map_location='cpu')
    ref = torch.load(site / 'good.pth', weights_only=False)
    assert torch.equal(ckpt['state_dict']['weight'], ref['state_dict']['weight'])
    hist = ckpt['meta']['message_hub']['log_scalars']['train/loss']
    assert type(hist).__name__ == 'HistoryBuffer' and hist.current() == 0.5
    # init_cfg=dict(type='Pretrained', checkpoint=URL) ends in load_checkpoint
    model = torch.nn.Linear(3, 2)
    load_checkpoint(model, f'{base}/good.pth', map_location='cpu', strict=True)
    assert torch.equal(model.weight.data, ref['state_dict']['weight'])
