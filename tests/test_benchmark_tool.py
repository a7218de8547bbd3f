"""Benchmark tool (tools/analysis/benchmark.py, stan_mm/utils/benchmark.py): runs end to end
on a tiny CLIP on CPU and writes sane JSON; the FLOPs ratio equals hand-computed
multiply-accumulates and get_flops' own figures; runs alternate; the pipeline benchmark's
bare decoding reads exactly the frames the pipeline decoded; the branch's fused attention
(speed work) equals nn.MultiheadAttention. No timed assertions."""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import stan_mm  # noqa: F401
from stan_mm.testing import load_script
from stan_mm.utils import benchmark as B

torch.set_num_threads(1)

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = dict(embed_dim=24, quick_gelu=True,
            vision_cfg=dict(image_size=32, patch_size=8, width=32, layers=4, head_width=8),
            text_cfg=dict(context_length=16, vocab_size=64, width=16, heads=2, layers=2))
FRAMES = 4

TINY_CONFIG = f"""
model = dict(
    type='Recognizer3D',
    backbone=dict(type='CLIPSTAN', arch={TINY!r}, pretrained=None, depth=2,
                  temporal_module='attn', drop_path_rate=0.1, input_layout='NCTHW'),
    cls_head=dict(type='I3DHead', in_channels=24, num_classes=4, spatial_type=None))
train_pipeline = [
    dict(type='DecordInit'),
    dict(type='UniformSample', clip_len={FRAMES}, num_clips=1),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 36)),
    dict(type='RandomCrop', size=32),
    dict(type='Flip', flip_ratio=0.5),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs')
]
train_dataloader = dict(batch_size=2, dataset=dict(type='VideoDataset', ann_file='x.txt',
                                                   pipeline=train_pipeline))
"""


def _load(name, rel):
    return load_script(str(ROOT / rel), name)


# ----------------------------------------------------------------------------- by hand
def clip_macs(M, P, D, L, p, E, mlp=4):
    """M frames through a CLIP ViT (patch embedding, L blocks, final projection)."""
    n = 1 + P
    return M * (P * D * 3 * p * p + L * (4 * n * D * D + 2 * n * n * D + 2 * mlp * n * D * D)
                + D * E)


def branch_macs(N, T, P, D, K, mlp=4):
    """K STAN-self layers: temporal attention (+ fc) over N*P sequences of length T,
    spatial attention over N*T sequences of length 1+P, MLP over 1+T*P tokens."""
    n = 1 + P
    temporal = N * P * (4 * T * D * D + 2 * T * T * D) + N * P * T * D * D
    spatial = N * T * (4 * n * D * D + 2 * n * n * D) + N * (1 + T * P) * 2 * mlp * D * D
    return K * (temporal + spatial)


@pytest.fixture(scope='module')
def run_tool(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('bench')
    config = tmp / 'tiny_bench.py'
    config.write_text(TINY_CONFIG)
    out = tmp / 'results.json'
    tool = _load('benchmark_tool', 'tools/analysis/benchmark.py')
    rc = tool.main([str(config), '--batch', '2', '--warmup', '1', '--repeats', '3',
                    '--num-videos', '2', '--video-size', '64', '48', '--video-frames', '16',
                    '--video-cache', str(tmp / 'videos'), '--pipeline-repeats', '2',
                    '--out', str(out)])
    assert rc == 0
    # written through a unique temp file (no fixed results.json.tmp), none left behind
    assert sorted(p.name for p in tmp.iterdir() if 'results' in p.name) == ['results.json']
    return json.loads(out.read_text()), tmp


def test_json_model_section(run_tool):
    res, _ = run_tool
    assert res['machine']['torch'] == torch.__version__
    assert res['machine']['torch_threads'] == 1 and res['machine']['cpu_count'] >= 1
    model = res['model']
    setup = model['setup']
    assert (setup['frames'], setup['image_size'], setup['batch']) == (FRAMES, [32, 32], 2)
    assert setup['kwargs']['depth'] == 2 and setup['kwargs']['pretrained'] is None
    assert setup['params']['stan'] > setup['params']['clip'] > 0
    runs = {(r['mode'], r['grad_checkpointing']): r for r in model['runs']}
    assert set(runs) == {('forward', False), ('train', False)}
    for run in runs.values():
        for name in ('stan', 'clip'):
            e = run[name]
            assert e['clips_per_s'] > 0 and e['cpu_clips_per_s'] > 0
            t = e['time_s']
            assert len(t['values']) == 3                          # warm-up excluded
            assert t['min'] <= t['median'] <= t['max']
            assert e['clips_per_s'] == pytest.approx(2 / t['median'])
            mem = e['memory']
            assert mem['before'] > 0 and mem['delta'] == mem['peak'] - mem['before'] >= 0
            assert mem['model_bytes'] > 0 and mem['method']
        ratios = run['time_ratio']['values']
        expected = [a / b for a, b in zip(run['stan']['time_s']['values'],
                                          run['clip']['time_s']['values'])]
        assert ratios == pytest.approx(expected)
        assert run['time_over_flops'] == pytest.approx(
            run['time_ratio']['median'] / run['flops_ratio'])
        assert run['cpu_time_over_flops'] == pytest.approx(
            run['cpu_time_ratio']['median'] / run['flops_ratio'])
    # the memory children built the same two models
    assert runs['train', False]['stan']['memory']['model_bytes'] > runs[
        'train', False]['clip']['memory']['model_bytes']


def test_flops_ratio_equals_hand_count(run_tool):
    res, _ = run_tool
    f = res['model']['flops']
    P, D, L, p, E = 16, 32, 4, 8, 24
    clip = clip_macs(FRAMES, P, D, L, p, E)
    stan = clip + branch_macs(1, FRAMES, P, D, 2)
    assert (f['clip_macs'], f['stan_macs']) == (clip, stan)
    assert f['ratio'] == pytest.approx(stan / clip, rel=1e-12)
    for run in res['model']['runs']:
        assert run['flops_ratio'] == f['ratio']


def test_flops_ratio_equals_get_flops_b32(capsys):
    """Full-size arch on the meta device: the benchmark's ratio equals the ratio of the
    two figures the FLOPs tool prints."""
    get_flops = _load('get_flops_tool', 'tools/analysis/get_flops.py')

    def tool_gflops(depth):
        assert get_flops.main(['--arch', 'ViT-B-32', '--frames', '12', '--depth',
                               str(depth)]) == 0
        out = capsys.readouterr().out
        return float(out.split('GFLOPs (G multiply-accumulates): ')[1].split()[0])
    kw = dict(arch='ViT-B-32', pretrained=None, depth=4, temporal_module='attn')
    f = B.flops_per_clip(kw, 12)
    assert f['stan_macs'] / 1e9 == pytest.approx(tool_gflops(4), abs=1e-3)
    assert f['clip_macs'] / 1e9 == pytest.approx(tool_gflops(0), abs=1e-3)
    assert f['ratio'] == pytest.approx(tool_gflops(4) / tool_gflops(0), rel=1e-4)
    hand = (clip_macs(12, 49, 768, 12, 32, 512) + branch_macs(1, 12, 49, 768, 4)) / \
        clip_macs(12, 49, 768, 12, 32, 512)
    assert f['ratio'] == pytest.approx(hand, rel=1e-12)


def test_json_pipeline_section(run_tool):
    res, tmp = run_tool
    pipe = res['pipeline']
    assert pipe['num_videos'] == 2 and pipe['frames_per_clip'] == FRAMES
    assert [(v['width'], v['height'], v['frames']) for v in pipe['videos']] == [(64, 48, 16)] * 2
    assert pipe['transforms'][0] == 'DecordInit' and 'RandomCrop' in pipe['transforms']
    for key in ('pipeline', 'bare'):
        assert pipe[key]['clips_per_s'] > 0
        assert len(pipe[key]['round_time_s']['values']) == 2
    assert pipe['overhead']['median'] > 0
    assert pipe['overhead']['values'] == pytest.approx(
        [a / b for a, b in zip(pipe['pipeline']['round_time_s']['values'],
                               pipe['bare']['round_time_s']['values'])])
    names = [name for name, _ in pipe['per_transform_cpu_ms']]
    assert names == pipe['transforms']
    assert all(ms >= 0 for _, ms in pipe['per_transform_cpu_ms'])
    assert pipe['bare']['cpu_ms_per_clip'] > 0
    assert len(list((tmp / 'videos').glob('*.mp4'))) == 2        # --video-cache kept


def test_bare_decode_reads_the_pipeline_frames(tmp_path):
    videos = B.write_benchmark_videos(str(tmp_path), num_videos=1, width=64, height=48,
                                      num_frames=20, seed=1)
    runner = B.PipelineRunner([dict(type='DecordInit'),
                               dict(type='UniformSample', clip_len=5, num_clips=1),
                               dict(type='DecordDecode')])
    for _ in range(3):                                  # random frame indices each call
        results, inds = runner(videos[0])
        assert len(inds) == 5 and inds.min() >= 0 and inds.max() < 20
        bare = B.bare_decode(videos[0], inds)
        assert bare.shape == (5, 48, 64, 3)
        np.testing.assert_array_equal(np.stack(results['imgs']), bare)


def test_generated_videos_have_motion(tmp_path):
    path = B.write_benchmark_videos(str(tmp_path), 1, 80, 64, 12, seed=0)[0]
    frames = B.bare_decode(path, list(range(12))).astype(np.float32)
    assert frames.shape == (12, 64, 80, 3)
    assert np.abs(np.diff(frames, axis=0)).mean() > 2        # content changes over time
    assert frames.std() > 20                                  # textured, not flat
    again = B.write_benchmark_videos(str(tmp_path), 1, 80, 64, 12, seed=0)[0]
    assert again == path                                       # reused, not rewritten


def needs_pyav():
    """Skip without PyAV, without importing it here (see :func:`_probe`)."""
    if importlib.util.find_spec('av') is None:
        pytest.skip('PyAV (av) is not installed')


def _probe(path):
    """(codec name, key-frame flag per packet) of a video's first stream, read by PyAV in
    a child interpreter (PyAV and decord are kept out of one process, see
    ``stan_mm.utils.benchmark._write_in_child``)."""
    code = ('import av, json, sys\n'
            'with av.open(sys.argv[1]) as c:\n'
            '    s = c.streams.video[0]\n'
            '    keys = [bool(p.is_keyframe) for p in c.demux(s) if p.size]\n'
            '    print(json.dumps([s.codec_context.name, keys]))\n')
    out = subprocess.run([sys.executable, '-c', code, path], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)


def test_h264_videos_are_h264_with_the_same_content(tmp_path):
    """--video-codec h264: PyAV + libx264 files that decord reads, with the frames of the
    mp4v video of the same seed (both lossy, so close, not equal) and far apart key frames
    (x264's default), unlike mp4v's short groups of pictures."""
    needs_pyav()
    h264 = B.write_benchmark_videos(str(tmp_path), 1, 96, 64, 40, seed=3, codec='h264')[0]
    mp4v = B.write_benchmark_videos(str(tmp_path), 1, 96, 64, 40, seed=3)[0]
    assert h264 != mp4v and h264.endswith('_h264.mp4')
    name, keys = _probe(h264)
    assert name == 'h264' and len(keys) == 40 and sum(keys) == 1   # one GOP, 40 frames
    name, keys = _probe(mp4v)
    assert name == 'mpeg4' and sum(keys) > 1
    info = B.video_info(h264)
    assert (info['frames'], info['width'], info['height']) == (40, 96, 64)
    a = B.bare_decode(h264, range(40)).astype(np.float32)
    b = B.bare_decode(mp4v, range(40)).astype(np.float32)
    assert np.abs(a - b).mean() < 8 and np.abs(np.diff(a, axis=0)).mean() > 2


def test_vp9_videos_are_webm_that_decord_reads(tmp_path):
    needs_pyav()
    path = B.write_benchmark_videos(str(tmp_path), 1, 96, 64, 12, fps=12, seed=3,
                                    codec='vp9')[0]
    assert path.endswith('_12fps_vp9.webm')
    assert _probe(path)[0] in ('vp9', 'libvpx-vp9')
    info = B.video_info(path)
    assert (info['frames'], info['width'], info['height'], info['fps']) == (12, 96, 64, 12.0)
    mp4v = B.bare_decode(B.write_benchmark_videos(str(tmp_path), 1, 96, 64, 12, seed=3)[0],
                         range(12)).astype(np.float32)
    assert np.abs(B.bare_decode(path, range(12)) - mp4v).mean() < 8


def test_h264_without_pyav_says_how_to_install_it(tmp_path, monkeypatch):
    # the videos are encoded in a child interpreter: hide PyAV there
    fake = tmp_path / 'fake_site'
    fake.mkdir()
    (fake / 'av.py').write_text("raise ImportError('No module named av')\n")
    monkeypatch.setenv('PYTHONPATH', str(fake))
    out = tmp_path / 'videos'
    with pytest.raises(RuntimeError, match='pip install av'):
        B.write_benchmark_videos(str(out), 1, 64, 48, 4, codec='h264')
    assert not list(out.iterdir())                        # no partial file left behind


def test_pyav_videos_are_written_outside_this_process(tmp_path):
    """decord is loaded here (it breaks PyAV's VP9 encoder in the same process): the
    VP9 and H.264 writers still work, and PyAV is never imported into this process."""
    import decord  # noqa: F401
    had_av = 'av' in sys.modules
    for codec in ('vp9', 'h264'):
        path = B.write_benchmark_videos(str(tmp_path), 1, 64, 48, 6, codec=codec)[0]
        assert B.video_info(path)['frames'] == 6
    assert ('av' in sys.modules) == had_av


def test_video_writer_rejects_bad_codec_and_odd_sizes(tmp_path):
    tool = _load('benchmark_tool_codecs', 'tools/analysis/benchmark.py')
    assert tool.VIDEO_CODECS == B.VIDEO_CODECS            # the CLI offers what is written
    with pytest.raises(ValueError, match='codec must be one of'):
        B.write_benchmark_videos(str(tmp_path), 1, 64, 48, 4, codec='theora')
    for codec in ('h264', 'vp9'):
        with pytest.raises(ValueError, match='even width and height'):
            B.write_benchmark_videos(str(tmp_path), 1, 65, 48, 4, codec=codec)


def test_alternation_order_and_warmup():
    calls = []
    steps = {'a': lambda: calls.append('a'), 'b': lambda: calls.append('b')}
    t = B.alternate(steps, warmup=2, repeats=3, iters=2)
    assert calls == ['a', 'a', 'b', 'b'] * 5
    assert len(t['a'].wall) == len(t['b'].cpu) == 3
    with pytest.raises(ValueError, match='repeats'):
        B.alternate(steps, repeats=0)


def test_baseline_kwargs_and_config_kwargs():
    kw = dict(arch='ViT-B-16', pretrained=None, depth=4, temporal_module='conv',
              levels=(9, 10, 11, 12), level_proj=True, drop_path_rate=0.2,
              branch_grad_checkpointing=True, grad_checkpointing=True, input_layout='NTCHW')
    assert B.baseline_kwargs(kw) == dict(arch='ViT-B-16', pretrained=None, depth=0,
                                         grad_checkpointing=True, input_layout='NTCHW')
    retrieval = dict(model=dict(type='STANRetriever', arch='ViT-B/32', pretrained='w.pt',
                                backbone=dict(type='CLIPSTAN', depth=4,
                                              input_layout='NTCHW')))
    assert B.clipstan_kwargs_from_config(retrieval) == dict(
        depth=4, input_layout='NTCHW', arch='ViT-B/32', pretrained=None)
    with pytest.raises(ValueError, match='CLIPSTAN backbone'):
        B.clipstan_kwargs_from_config(dict(model=dict(backbone=dict(type='ResNet3d'))))


def test_step_modes_and_grad_release():
    model = B.build_clipstan(dict(arch=TINY, depth=1, input_layout='NTCHW'))
    x = torch.randn(1, 3, 3, 32, 32)
    B.make_step(model, x, 'forward')()
    assert not model.training and all(p.grad is None for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = model.branch.layers[0].spatial.mlp.c_fc.weight.detach().clone()
    B.make_step(model, x, 'train', optimizer=opt)()
    assert model.training and all(p.grad is None for p in model.parameters())
    assert not torch.equal(before, model.branch.layers[0].spatial.mlp.c_fc.weight)
    with pytest.raises(ValueError, match='mode'):
        B.make_step(model, x, 'backward')


def test_cpu_memory_child_measures_the_timed_step():
    """With --optim-step the measured training step includes AdamW (its two state tensors
    per parameter are allocated in that step), as the timed step does."""
    wide = dict(TINY, vision_cfg=dict(TINY['vision_cfg'], width=256, head_width=64))
    kwargs = dict(arch=wide, depth=1, input_layout='NTCHW')
    plain = B.cpu_peak_memory({'stan': kwargs}, 1, 2, ['train'])
    if 'VmHWM' not in plain['stan']['train']['method']:
        pytest.skip('no /proc/self/clear_refs here: ru_maxrss is only a lower bound')
    adamw = B.cpu_peak_memory({'stan': kwargs}, 1, 2, ['train'], optim_step=True)
    state = 2 * plain['stan']['model_bytes']                # exp_avg + exp_avg_sq
    extra = adamw['stan']['train']['delta'] - plain['stan']['train']['delta']
    assert extra >= 0.8 * state, (extra, state)


def test_step_rss_sees_an_allocation():
    def step():
        a = np.ones(64 * 2**20 // 8)             # 64 MiB, touched
        a += 1
    mem = B.measure_step_rss(step)
    if 'VmHWM' not in mem['method']:
        pytest.skip('no /proc/self/clear_refs here: ru_maxrss is only a lower bound')
    assert mem['delta'] >= 48 * 2**20


def test_cuda_request_without_cuda_is_refused(tmp_path):
    if torch.cuda.is_available():
        pytest.skip('a GPU is present')
    tool = _load('benchmark_tool_cuda', 'tools/analysis/benchmark.py')
    with pytest.raises(SystemExit, match='cuda'):
        tool.main(['--arch', 'ViT-B-16', '--device', 'cuda', '--skip-pipeline'])
    assert tool._combos(['forward', 'train'], 'both') == [
        ('forward', False), ('train', False), ('train', True)]


@pytest.mark.parametrize('short_path', [False, True], ids=['sdpa', 'short-sequence'])
def test_packed_attention_equals_multihead_attention(monkeypatch, short_path):
    """The branch's fused attention (speed work) computes nn.MultiheadAttention exactly:
    outputs and gradients, eval (MHA fast path) and train mode; both the fused-kernel path
    and the explicit short-sequence path that CUDA takes for T <= 32 (forced here on CPU)."""
    from stan_mm.models.backbones import stan_temporal
    from stan_mm.models.backbones.stan_temporal import packed_self_attention
    calls = []
    real = stan_temporal.short_sequence_attention

    def spy(q, k, v):
        calls.append(q.shape)
        return real(q, k, v)
    monkeypatch.setattr(stan_temporal, 'short_sequence_attention', spy)
    monkeypatch.setattr(stan_temporal, 'use_short_sequence_path',
                        lambda x, length: short_path)
    torch.manual_seed(0)
    attn = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    torch.nn.init.normal_(attn.in_proj_bias)
    for training in (False, True):
        attn.train(training)
        x = torch.randn(3, 7, 32, requires_grad=True)
        ref = attn(x, x, x, need_weights=False)[0]
        got = packed_self_attention(x, attn)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
        if training:
            g_ref = torch.autograd.grad(ref.pow(2).sum(), [x, attn.in_proj_weight])
            g_got = torch.autograd.grad(got.pow(2).sum(), [x, attn.in_proj_weight])
            for a, b in zip(g_got, g_ref):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert bool(calls) == short_path


def test_short_sequence_path_only_on_cuda():
    from stan_mm.models.backbones.stan_temporal import (SHORT_SEQUENCE,
                                                          use_short_sequence_path)
    x = torch.zeros(2, 8, 4)
    assert not use_short_sequence_path(x, 8)
    if torch.cuda.is_available():
        assert use_short_sequence_path(x.cuda(), 8)
        assert not use_short_sequence_path(x.cuda(), SHORT_SEQUENCE + 1)


def test_compile_mode_reaches_torch_compile(tmp_path, monkeypatch):
    """--compile-mode (for the GPU runs: max-autotune, CUDA graphs) wraps both models with
    torch.compile(mode=...) and is recorded in the JSON; --compile alone is mode 'default'.
    torch.compile is replaced by a recorder here (no compilation on CPU)."""
    tool = _load('benchmark_tool_compile', 'tools/analysis/benchmark.py')
    seen = []

    def fake_compile(model, mode=None):
        seen.append((type(model).__name__, mode))
        return model

    monkeypatch.setattr(torch, 'compile', fake_compile)
    for flags, mode in ((['--compile-mode', 'max-autotune'], 'max-autotune'),
                        (['--compile'], 'default')):
        seen.clear()
        out = tmp_path / f'{mode}.json'
        config = tmp_path / 'tiny_bench.py'
        config.write_text(TINY_CONFIG)
        rc = tool.main([str(config), '--batch', '1', '--modes', 'forward', '--warmup', '0',
                        '--repeats', '1', '--skip-pipeline', '--no-memory', '--out',
                        str(out), *flags])
        assert rc == 0
        assert seen == [('CLIPSTAN', mode), ('CLIPSTAN', mode)]
        assert json.loads(out.read_text())['model']['setup']['compile'] == mode
    with pytest.raises(SystemExit):
        tool.parse_args(['--arch', 'ViT-B/16', '--compile-mode', 'fastest'])


# ------------------------------------------------------------------ GPU session script
def test_gpu_session_steps_are_valid_benchmark_commands(tmp_path):
    """Every step of tools/analysis/gpu_session.py is a command line benchmark.py accepts,
    on the paper's GPU setting (ViT-B/16, 8 frames, batch 16, CUDA, training step), and the
    compiled steps use the modes the GPU section asks for. A typo here would only show on
    a borrowed GPU."""
    session = _load('gpu_session', 'tools/analysis/gpu_session.py')
    tool = _load('benchmark_tool_session', 'tools/analysis/benchmark.py')
    args = session.parse_args(['--out', str(tmp_path)])
    steps = session.step_commands(args)
    assert [s[0] for s in steps] == ['compile', 'eager', 'autotune', 'cudagraphs']
    assert sum(limit for _, _, limit, _, _ in steps[:2]) < args.budget   # the first two fit
    modes = {}
    for name, argv, limit, least, _ in steps:
        assert argv[1] == str(ROOT / 'tools' / 'analysis' / 'benchmark.py')
        assert 0 < least <= limit
        a = tool.parse_args(argv[2:])
        assert (a.arch, a.frames, a.depth, a.temporal_module, a.batch) == (
            'ViT-B-16', 8, 4, 'attn', 16)
        assert a.device == 'cuda' and a.optim_step
        assert a.modes == (['forward', 'train'] if name == 'eager' else ['train'])
        assert a.skip_pipeline and a.out == str(tmp_path / f'{name}.json')
        modes[name] = a.compile_mode or ('default' if a.compile else None)
    assert modes == dict(compile='default', autotune='max-autotune-no-cudagraphs',
                         cudagraphs='reduce-overhead', eager=None)
    picked = session.step_commands(session.parse_args(['--steps', 'eager', 'compile']))
    assert [s[0] for s in picked] == ['eager', 'compile']


def test_gpu_session_runs_a_step_and_writes_the_summary(tmp_path):
    """The eager step end to end on CPU with the tiny config: the step's JSON, its log,
    machine.txt and a summary table with one row per gradient-checkpointing setting."""
    session = _load('gpu_session_run', 'tools/analysis/gpu_session.py')
    config = tmp_path / 'tiny_bench.py'
    config.write_text(TINY_CONFIG)
    out = tmp_path / 'out'
    rc = session.main(['--out', str(out), '--steps', 'eager', '--device', 'cpu',
                       '--model-args', f'{config} --batch 1',
                       '--extra', '--warmup 0 --repeats 1 --no-memory'])
    assert rc == 0
    data = json.loads((out / 'eager.json').read_text())
    runs = data['model']['runs']
    assert [(r['mode'], r['grad_checkpointing']) for r in runs] == [
        ('forward', False), ('train', False), ('train', True)]
    assert (out / 'steps.log').read_text().startswith('$ ')
    assert (out / 'machine.txt').read_text().strip()
    assert len(list(out.iterdir())) <= 8          # what a borrowed machine sends back
    rows = [r for r in (out / 'summary.md').read_text().splitlines()
            if r.startswith('| eager')]
    assert len(rows) == 3
    for row, run in zip(rows, runs):
        cells = [c.strip() for c in row.strip('|').split('|')]
        assert cells[2] == run['mode']
        assert cells[3] == ('on' if run['grad_checkpointing'] else 'off')
        assert float(cells[4]) == pytest.approx(run['stan']['clips_per_s'], abs=0.05)
        assert float(cells[5]) == pytest.approx(run['clip']['clips_per_s'], abs=0.05)
        assert float(cells[8]) == pytest.approx(run['time_over_flops'], abs=5e-4)


def test_gpu_session_without_the_stack_installs_the_carried_wheels(tmp_path):
    """An interpreter that cannot import the stack: with no wheels the script stops naming
    the fetch script; with wheels it installs them (pip, no index) into --site and stops
    only because this stand-in wheel is not the stack."""
    import zipfile
    session = _load('gpu_session_wheels', 'tools/analysis/gpu_session.py')
    blocker = tmp_path / 'blocker'         # the stack is "missing": mmengine cannot import
    blocker.mkdir()
    (blocker / 'mmengine.py').write_text('raise ImportError("no mmengine here")\n')
    bare = tmp_path / 'bare-python'
    bare.write_text(f'#!/bin/sh\nPYTHONPATH={blocker}${{PYTHONPATH:+:$PYTHONPATH}} '
                    f'exec {sys.executable} "$@"\n')
    bare.chmod(0o755)
    common = ['--out', str(tmp_path / 'out'), '--python', str(bare), '--site',
              str(tmp_path / 'site'), '--steps', 'eager', '--device', 'cpu']
    with pytest.raises(SystemExit, match='fetch_gpu_wheels.sh'):
        session.main(common + ['--wheels', str(tmp_path / 'none')])
    wheels = tmp_path / 'wheels'
    wheels.mkdir()
    with zipfile.ZipFile(wheels / 'standin-0.1-py3-none-any.whl', 'w') as z:
        z.writestr('standin/__init__.py', 'VALUE = 7\n')
        z.writestr('standin-0.1.dist-info/METADATA',
                   'Metadata-Version: 2.1\nName: standin\nVersion: 0.1\n')
        z.writestr('standin-0.1.dist-info/WHEEL',
                   'Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n'
                   'Tag: py3-none-any\n')
        z.writestr('standin-0.1.dist-info/RECORD', '')
    with pytest.raises(SystemExit, match='still does not import'):
        session.main(common + ['--wheels', str(wheels)])
    assert (tmp_path / 'site' / 'standin' / '__init__.py').read_text() == 'VALUE = 7\n'


def test_gpu_session_kills_a_step_at_its_time_limit(tmp_path, monkeypatch):
    """A step past its limit is killed with its process group and reported as such; with
    no step done the script exits 1."""
    session = _load('gpu_session_kill', 'tools/analysis/gpu_session.py')
    monkeypatch.setattr(session, 'STEPS', tuple(
        (name, tail, 1 if name == 'eager' else limit, 1 if name == 'eager' else least, what)
        for name, tail, limit, least, what in session.STEPS))
    config = tmp_path / 'tiny_bench.py'
    config.write_text(TINY_CONFIG)
    out = tmp_path / 'out'
    rc = session.main(['--out', str(out), '--steps', 'eager', '--device', 'cpu',
                       '--model-args', f'{config} --batch 1'])
    assert rc == 1
    assert not (out / 'eager.json').exists()
    assert 'killed after 1 s' in (out / 'steps.log').read_text()
    assert 'killed at its 1 s limit' in (out / 'summary.md').read_text()


def test_benchmark_saves_each_finished_setting(tmp_path, monkeypatch):
    """The JSON is written after every finished setting (mode x checkpointing), marked
    partial until the run ends: a run killed in its second setting keeps the first."""
    from stan_mm.utils import benchmark as bench
    tool = _load('benchmark_tool_partial', 'tools/analysis/benchmark.py')
    config = tmp_path / 'tiny_bench.py'
    config.write_text(TINY_CONFIG)
    out = tmp_path / 'partial.json'
    real, calls = bench.alternate, []

    def alternate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt('killed in the second setting')
        return real(*args, **kwargs)
    monkeypatch.setattr(bench, 'alternate', alternate)
    with pytest.raises(KeyboardInterrupt):
        tool.main([str(config), '--batch', '1', '--device', 'cpu', '--modes', 'train',
                   '--grad-ckpt', 'both', '--skip-pipeline', '--warmup', '0', '--repeats',
                   '1', '--no-memory', '--out', str(out)])
    data = json.loads(out.read_text())
    assert data['partial'] is True and data['model']['partial'] is True
    assert [r['grad_checkpointing'] for r in data['model']['runs']] == [False]
    assert data['model']['runs'][0]['stan']['clips_per_s'] > 0
    monkeypatch.setattr(bench, 'alternate', real)
    assert tool.main([str(config), '--batch', '1', '--device', 'cpu', '--modes', 'train',
                      '--grad-ckpt', 'both', '--skip-pipeline', '--warmup', '0',
                      '--repeats', '1', '--no-memory', '--out', str(out)]) == 0
    data = json.loads(out.read_text())                  # complete: not marked partial
    assert 'partial' not in data and 'partial' not in data['model']
    assert len(data['model']['runs']) == 2


def test_gpu_session_reports_the_kept_settings_of_a_killed_step(tmp_path, monkeypatch):
    """A step killed at its limit whose JSON holds finished settings: they are read and
    summarized; a relative --out works from any working directory; a step with less time
    left than it needs is skipped and the next one run."""
    session = _load('gpu_session_partial', 'tools/analysis/gpu_session.py')
    monkeypatch.setattr(session, 'STEPS', tuple(
        (name, tail, limit, 10 ** 4 if name == 'compile' else 1, what)
        for name, tail, limit, least, what in session.STEPS))
    run = dict(mode='train', grad_checkpointing=False, time_over_flops=1.01,
               stan=dict(clips_per_s=2.0), clip=dict(clips_per_s=3.0))
    seen = []

    def run_step(argv, limit_s, log_path, env):
        seen.append(argv)
        out = argv[argv.index('--out') + 1]
        with open(out, 'w') as f:
            json.dump(dict(partial=True, model=dict(partial=True, runs=[run])), f)
        return dict(rc=-9, timed_out=True, seconds=limit_s)
    monkeypatch.setattr(session, 'run_step', run_step)
    monkeypatch.setattr(session, 'stack_env', lambda args, log: dict(os.environ))
    monkeypatch.setattr(session, 'machine_text', lambda python, env: 'test machine\n')
    monkeypatch.chdir(tmp_path)
    rc = session.main(['--out', 'rel_out', '--steps', 'compile', 'eager', '--device', 'cpu'])
    assert rc == 0 and len(seen) == 1                      # compile skipped, eager run
    assert seen[0][seen[0].index('--out') + 1] == str(tmp_path / 'rel_out' / 'eager.json')
    summary = (tmp_path / 'rel_out' / 'summary.md').read_text()
    assert '| compile |' in summary and 'skipped' in summary
    row = [r for r in summary.splitlines() if r.startswith('| eager')]
    assert len(row) == 1 and '2.0' in row[0] and '3.0' in row[0]
    assert 'killed at its' in row[0]                   # kept rows say the step was cut
    # an earlier session's JSON in --out is not reported as this session's result
    monkeypatch.setattr(session, 'run_step',
                        lambda argv, limit_s, log_path, env: dict(rc=1, timed_out=False,
                                                                   seconds=1.0))
    assert session.main(['--out', 'rel_out', '--steps', 'eager', '--device', 'cpu']) == 1
    assert not (tmp_path / 'rel_out' / 'eager.json').exists()
    assert 'failed (exit 1' in (tmp_path / 'rel_out' / 'summary.md').read_text()


def test_parallel_pipeline_workers(tmp_path):
    """--pipeline-workers 2: two worker processes measured at once; the aggregate clips/s
    are the sums of the workers' own figures and the overhead is their ratio; a failing
    worker is reported with its traceback."""
    tool = _load('benchmark_tool_workers', 'tools/analysis/benchmark.py')
    config = tmp_path / 'tiny_bench.py'
    config.write_text(TINY_CONFIG)
    out = tmp_path / 'workers.json'
    rc = tool.main([str(config), '--skip-model', '--num-videos', '2', '--video-size', '64',
                    '48', '--video-frames', '16', '--video-cache', str(tmp_path / 'videos'),
                    '--pipeline-warmup', '0', '--pipeline-repeats', '1',
                    '--pipeline-workers', '2', '--out', str(out)])
    assert rc == 0
    res = json.loads(out.read_text())['pipeline']
    assert res['workers'] == 2 and len(res['per_worker']) == 2
    assert res['frames_per_clip'] == FRAMES
    agg = res['aggregate']
    pipe = [w['pipeline']['clips_per_s'] for w in res['per_worker']]
    bare = [w['bare']['clips_per_s'] for w in res['per_worker']]
    assert agg['pipeline_clips_per_s'] == pytest.approx(sum(pipe))
    assert agg['bare_clips_per_s'] == pytest.approx(sum(bare))
    assert agg['overhead'] == pytest.approx(sum(bare) / sum(pipe))
    assert res['overhead_per_worker'] == [w['overhead']['median'] for w in res['per_worker']]
    with pytest.raises(RuntimeError, match=r'worker \d failed:(.|\n)*NoSuchTransform'):
        B.parallel_pipeline_benchmark([dict(type='NoSuchTransform')],
                                      [str(p) for p in (tmp_path / 'videos').iterdir()],
                                      2, 0, 1)
    with pytest.raises(SystemExit):
        tool.parse_args([str(config), '--pipeline-workers', '0'])


def test_compare_fast_paths_runs_the_pipeline_both_ways(tmp_path):
    """--compare-fast-paths: every video also goes through the pipeline with stan_mm's fast
    paths off (checked from inside the pipeline), and the reported ratios are the paired
    per-round ratios of the recorded times."""
    from mmaction.registry import TRANSFORMS
    from mmaction.datasets.transforms import FormatShape
    from stan_mm.datasets.transforms import video_io
    seen = []

    @TRANSFORMS.register_module(name='RecordFastPathsForTest', force=True)
    class Record:
        def __call__(self, results):
            seen.append((video_io.ZERO_COPY,
                         hasattr(FormatShape.transform, '__wrapped__')))
            return results

    videos = B.write_benchmark_videos(str(tmp_path), num_videos=2, width=64, height=48,
                                      num_frames=16, seed=2)
    pipeline = [dict(type='SafeDecordInit'), dict(type='UniformSample', clip_len=FRAMES),
                dict(type='SafeDecordDecode'), dict(type='RecordFastPathsForTest'),
                dict(type='FormatShape', input_format='NCTHW'), dict(type='PackActionInputs')]
    res = B.pipeline_benchmark(pipeline, videos, warmup=1, repeats=2,
                               compare_fast_paths=True)
    assert sorted(set(seen)) == [(False, False), (True, True)]
    assert seen.count((True, True)) == seen.count((False, False)) == 3 * 2
    assert video_io.ZERO_COPY and hasattr(FormatShape.transform, '__wrapped__')
    stock = res['without_fast_paths']
    with_t = res['pipeline']['round_time_s']['values']
    without_t = stock['round_time_s']['values']
    bare_t = res['bare']['round_time_s']['values']
    assert len(with_t) == len(without_t) == 2
    assert res['fast_paths_time_ratio']['values'] == pytest.approx(
        [a / b for a, b in zip(with_t, without_t)])
    assert stock['overhead']['values'] == pytest.approx(
        [a / b for a, b in zip(without_t, bare_t)])
    assert res['fast_paths_cpu_ratio']['median'] > 0 and stock['cpu_clips_per_s'] > 0
    plain = B.pipeline_benchmark(pipeline, videos, warmup=0, repeats=1)
    assert 'without_fast_paths' not in plain and 'fast_paths_time_ratio' not in plain
    tool = _load('benchmark_tool_fast_paths', 'tools/analysis/benchmark.py')
    with pytest.raises(SystemExit):
        tool.parse_args(['x.py', '--compare-fast-paths', '--pipeline-workers', '2'])


def test_own_videos_are_found_in_subfolders(tmp_path):
    """--videos DIR searches subfolders (a Kinetics-style class/video.mp4 layout), as
    tools/extract_features.py does, and takes the first --num-videos in sorted order."""
    tool = _load('benchmark_tool_own_videos', 'tools/analysis/benchmark.py')
    config = tmp_path / 'tiny_bench.py'
    config.write_text(TINY_CONFIG)
    for cls, seed in (('b_class', 3), ('a_class', 4)):
        B.write_benchmark_videos(str(tmp_path / 'own' / cls), num_videos=1, width=64,
                                 height=48, num_frames=16, seed=seed)
    (tmp_path / 'own' / 'notes.txt').write_text('not a video')
    out = tmp_path / 'own.json'
    assert tool.main([str(config), '--skip-model', '--videos', str(tmp_path / 'own'),
                      '--num-videos', '1', '--pipeline-warmup', '0', '--pipeline-repeats',
                      '1', '--out', str(out)]) == 0
    res = json.loads(out.read_text())['pipeline']
    first = sorted(os.listdir(tmp_path / 'own' / 'a_class'))[0]
    assert res['num_videos'] == 1 and [v['file'] for v in res['videos']] == [first]
    (tmp_path / 'empty').mkdir()
    with pytest.raises(SystemExit, match='no videos found under'):
        tool.main([str(config), '--skip-model', '--videos', str(tmp_path / 'empty')])
