"""Fixes from the mixed-precision numerics review (2026-12-06): non-finite class scores,
ties in a saved similarity matrix, the autocast dtype of ``tools/test.py --amp``."""
import json
import os.path as osp

import numpy as np
import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def test_accuracy_refuses_non_finite_scores():
    """One NaN score row: MMAction2's top-k (argsort puts NaN last) counts it as the last
    class, argmax as the first, so the same sample is right in top1 and wrong in mean1.
    RecognitionAccMetric refuses and names the sample."""
    from mmaction.evaluation.metrics import AccMetric
    from stan_mm.evaluation import RecognitionAccMetric
    scores = [np.array([.7, .2, .1]), np.array([np.nan] * 3), np.array([.1, .2, .7])]
    labels = [0, 2, 2]
    upstream = AccMetric().calculate(scores, labels)
    # the inconsistency the check prevents (by hand: top1 counts sample 1 right, mean1 wrong)
    assert upstream['top1'] == pytest.approx(1.0)
    assert upstream['mean1'] == pytest.approx(0.75)
    with pytest.raises(ValueError, match=r'1 of 3 samples have class scores that are NaN or '
                                         r'infinite \(samples 1,.*--amp'):
        RecognitionAccMetric().calculate(scores, labels)
    scores[1] = np.array([.1, np.inf, .2])
    with pytest.raises(ValueError, match='samples 1,'):
        RecognitionAccMetric().calculate(scores, labels)
    scores[1] = np.array([.1, .2, .7])
    assert RecognitionAccMetric().calculate(scores, labels)['top1'] == pytest.approx(1.0)


# --------------------------------------------------------------- --amp: which dtype
def _cfg(name):
    from mmengine.config import Config
    return Config.fromfile(f'{REPO}/configs/stan/{name}')


def _fake_cuda(monkeypatch, bf16: bool):
    import torch
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *a, **k: bf16)


def test_training_amp_dtype_of_the_shipped_configs():
    """Recognition trains under bf16 autocast, retrieval under fp16 (the public
    reproduction): read from each config's optim_wrapper."""
    from stan_mm.utils.amp import training_amp_dtype
    assert training_amp_dtype(_cfg('k400_self_b16.py')) == 'bf16'
    assert training_amp_dtype(_cfg('ssv2_self_b16.py')) == 'bf16'
    assert training_amp_dtype(_cfg('msrvtt_self_b32.py')) == 'fp16'
    assert training_amp_dtype({'optim_wrapper': dict(type='AmpOptimWrapper')}) == 'fp16'
    assert training_amp_dtype({'optim_wrapper': dict(type='OptimWrapper')}) is None
    assert training_amp_dtype({}) is None


def test_amp_auto_follows_the_training_dtype_on_cuda(monkeypatch):
    """`--amp` alone on CUDA: the dtype the model trained in; the checkpoint's stored
    training config wins over the config given to the tool (a `train.py --amp` run)."""
    import torch
    from stan_mm.utils.amp import resolve_amp_dtype
    _fake_cuda(monkeypatch, bf16=True)
    k400, msrvtt = _cfg('k400_self_b16.py'), _cfg('msrvtt_self_b32.py')
    assert resolve_amp_dtype('auto', k400, 'cuda')[0] is torch.bfloat16
    assert resolve_amp_dtype('auto', msrvtt, 'cuda')[0] is torch.float16
    saved = {'meta': {'cfg': "optim_wrapper = dict(type='AutoAmpOptimWrapper', "
                             "dtype='bfloat16', optimizer=dict(type='AdamW'))\n"}}
    dtype, why = resolve_amp_dtype('auto', msrvtt, 'cuda', checkpoint=saved)
    assert dtype is torch.bfloat16 and "checkpoint's training config" in why
    fp32 = {'meta': {'cfg': "optim_wrapper = dict(type='OptimWrapper')\n"}}
    assert resolve_amp_dtype('auto', msrvtt, 'cuda', checkpoint=fp32)[0] is torch.bfloat16
    # a checkpoint without a stored config: the tool's config
    assert resolve_amp_dtype('auto', msrvtt, 'cuda', checkpoint={'meta': None})[0] \
        is torch.float16
    # explicit choices win, with a note where they differ from training
    dtype, why = resolve_amp_dtype('fp16', k400, 'cuda')
    assert dtype is torch.float16 and 'trains in bf16' in why and '65504' in why
    assert resolve_amp_dtype('bf16', msrvtt, 'cuda')[0] is torch.bfloat16


def test_amp_dtype_without_bf16_and_on_the_cpu(monkeypatch):
    import torch
    from stan_mm.utils.amp import resolve_amp_dtype
    from stan_mm.utils.cli import CommandLineError
    k400 = _cfg('k400_self_b16.py')
    # the CPU: bf16 whatever the training dtype; fp16 refused in one sentence
    assert resolve_amp_dtype('auto', _cfg('msrvtt_self_b32.py'), 'cpu')[0] is torch.bfloat16
    with pytest.raises(CommandLineError, match='--amp fp16: autocast on the CPU runs bf16 '
                                               'only'):
        resolve_amp_dtype('fp16', k400, 'cpu')
    _fake_cuda(monkeypatch, bf16=False)        # e.g. a V100
    dtype, why = resolve_amp_dtype('auto', k400, 'cuda')
    assert dtype is torch.float16 and 'lacks' in why
    with pytest.raises(CommandLineError, match='has no bf16'):
        resolve_amp_dtype('bf16', k400, 'cuda')
    with pytest.raises(CommandLineError, match='one of auto, bf16, fp16'):
        resolve_amp_dtype('fp32', k400, 'cuda')


def test_test_tool_sets_and_restores_the_cuda_autocast_dtype(monkeypatch):
    """mmengine's autocast (no dtype given by the TestLoop) reads torch's CUDA autocast
    dtype: the tool sets the resolved one for the test and puts the old one back."""
    import importlib.util

    import torch
    spec = importlib.util.spec_from_file_location('numerics_test_tool', f'{REPO}/tools/test.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    before = torch.get_autocast_dtype('cuda')
    with tool.cuda_autocast_dtype(torch.bfloat16):
        assert torch.get_autocast_dtype('cuda') is torch.bfloat16
        from mmengine.runner.amp import autocast     # what the TestLoop calls
        _fake_cuda(monkeypatch, bf16=True)
        monkeypatch.setattr('mmengine.runner.amp.get_device', lambda: 'cuda')
        seen = []
        real = torch.autocast

        class Spy(real):
            def __init__(self, device_type, dtype=None, **kw):
                seen.append((device_type, dtype))
                super().__init__('cpu', dtype=torch.bfloat16, enabled=False)
        monkeypatch.setattr(torch, 'autocast', Spy)
        with autocast(enabled=True):
            pass
        assert seen == [('cuda', torch.bfloat16)]
    assert torch.get_autocast_dtype('cuda') is before
    with pytest.raises(RuntimeError):
        with tool.cuda_autocast_dtype(torch.float16):
            raise RuntimeError('test failed')
    assert torch.get_autocast_dtype('cuda') is before


def test_test_tool_refuses_fp16_on_the_cpu_before_any_work(tmp_path, capsys):
    import importlib.util

    import torch
    if torch.cuda.is_available():
        pytest.skip('checks the CPU refusal')
    from stan_mm.utils.cli import run_tool
    spec = importlib.util.spec_from_file_location('numerics_test_tool2', f'{REPO}/tools/test.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    ckpt = tmp_path / 'ckpt.pth'
    ckpt.write_bytes(b'')
    work = tmp_path / 'w'
    status = run_tool(lambda: tool.main([f'{REPO}/configs/quickstart/motion_stan_tiny.py',
                                         str(ckpt), '--amp', 'fp16', '--work-dir',
                                         str(work)]), 'test.py')
    err = capsys.readouterr().err
    assert status == 2 and err.startswith(
        'test.py: error: CommandLineError: --amp fp16: autocast on the CPU runs bf16 only'), err
    assert not work.exists()


# --------------------------------------------------------------- --save-sim ties
def _gallery_with_duplicates(num_texts=600, num_videos=503, dim=64, dups=40, seed=0):
    """Unit-norm float32 embeddings; the last ``dups`` videos repeat earlier ones (a
    gallery holding the same clip twice), each text matches one video, every video has a
    text."""
    rng = np.random.default_rng(seed)
    videos = rng.standard_normal((num_videos, dim)).astype(np.float32)
    videos[-dups:] = videos[7:7 + dups]
    videos /= np.linalg.norm(videos, axis=1, keepdims=True)
    t2v = np.concatenate([np.arange(num_videos),              # every video has a caption
                          rng.integers(0, num_videos, num_texts - num_videos)])
    texts = videos[t2v] + 1.2 * rng.standard_normal((num_texts, dim)).astype(np.float32)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    return texts.astype(np.float32), videos, t2v


def test_save_sim_keeps_the_ties_of_duplicate_videos_and_the_metric(tmp_path):
    """sim.npy (extract_features --save-sim) is the metric's own similarity: duplicate
    videos tie exactly in every row, and eval_retrieval's metric on it equals
    tools/test.py's metric on the embeddings (ties count against the query, so a broken
    tie moves ranks)."""
    import torch
    from stan_mm.apis.features import atomic_save_product_npy
    from stan_mm.evaluation.ranking import (retrieval_metrics_from_embeddings,
                                            retrieval_metrics_from_similarity)
    texts, videos, t2v = _gallery_with_duplicates()
    path = str(tmp_path / 'sim.npy')
    atomic_save_product_npy(path, texts, videos)
    sim = np.load(path)
    dup = sim[:, -40:] != sim[:, 7:47]
    assert not dup.any(), f'{dup.any(axis=1).sum()} rows break a duplicate tie'
    t2v_t = torch.as_tensor(t2v)
    from_emb = retrieval_metrics_from_embeddings(torch.from_numpy(texts),
                                                 torch.from_numpy(videos), t2v_t)
    assert retrieval_metrics_from_similarity(sim, t2v_t) == from_emb
    # the same caption in a full block and in the tail block: the same row
    texts2 = np.concatenate([texts[:256], texts[:1]])
    atomic_save_product_npy(path, texts2, videos)
    sim2 = np.load(path)
    assert (sim2[0] == sim2[256]).all()


def test_eval_retrieval_warns_about_a_half_precision_matrix(tmp_path, capsys):
    """fp16 rounding turns near scores into ties with the ground truth (counted against
    the query): by hand, 0.50000 and 0.50012 are one fp16 number; the float32 matrix ranks
    text 0's video first, the fp16 one puts it behind the tie. The tool warns about fp16,
    not about float32."""
    import sys
    sys.path.insert(0, osp.dirname(__file__))
    from test_retrieval_review_fixes import load_tool
    tool = load_tool('tools/analysis/eval_retrieval.py')
    sim = np.array([[0.50012, 0.5], [0.1, 0.9]], np.float32)
    assert np.float16(sim[0, 0]) == np.float16(sim[0, 1])          # the tie fp16 makes
    np.save(tmp_path / 't2v.npy', np.arange(2))
    results = {}
    for dtype in (np.float32, np.float16):
        path = tmp_path / f'sim_{np.dtype(dtype).name}.npy'
        np.save(path, sim.astype(dtype))
        assert tool.main(['--sim', str(path), '--text-to-video',
                          str(tmp_path / 't2v.npy')]) == 0
        out, err = capsys.readouterr()
        results[dtype] = json.loads(out.strip().splitlines()[-1])
        assert ('is float16: half precision rounds near scores to ties' in err) == (
            dtype is np.float16), err
    key = next(k for k in results[np.float32] if k.endswith('t2v_R1'))
    assert results[np.float32][key] == pytest.approx(100.0)
    assert results[np.float16][key] == pytest.approx(50.0)


def _metric_rank(rank, init_file):
    """One of 2 gloo processes: rank 0 holds a sample whose scores are NaN."""
    from stan_mm.evaluation import RecognitionAccMetric
    metric = RecognitionAccMetric()
    scores = np.array([np.nan, .5, .5]) if rank == 0 else np.array([.1, .8, .1])
    metric.results.append(dict(pred=scores, label=1))
    try:
        metric.evaluate(2)
        return 'no error'
    except Exception as exc:  # noqa: BLE001
        return f'{type(exc).__name__}: {exc}'


def test_a_refused_score_stops_every_rank(tmp_path):
    """The refusal runs on the main process; the other ranks used to wait for the metrics
    until the distributed timeout. Now every rank raises, at once."""
    from stan_mm.testing import run_ranks
    got = run_ranks(_metric_rank, tmp_path / 'init', timeout=60)
    assert 'ValueError' in got[0] and 'NaN or infinite' in got[0], got
    assert got[1].startswith('RuntimeError: RecognitionAccMetric failed on the main '
                             'process: ValueError'), got


def test_extract_features_refuses_fp16_on_the_cpu_before_loading(tmp_path, capsys,
                                                                 monkeypatch):
    """Same choices as stan_mm.utils.amp; --amp fp16 with --device cpu is refused before
    the model is loaded (init_model is never called)."""
    import importlib.util

    from stan_mm.utils.amp import AMP_CHOICES
    spec = importlib.util.spec_from_file_location('numerics_extract_tool',
                                                  f'{REPO}/tools/extract_features.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.AMP_CHOICES == AMP_CHOICES
    import stan_mm.apis as apis

    def no_model(*args, **kwargs):
        raise AssertionError('the model was loaded')
    monkeypatch.setattr(apis, 'init_model', no_model)
    ckpt = tmp_path / 'ckpt.pth'
    ckpt.write_bytes(b'x')
    (tmp_path / 'v').mkdir()
    rc = tool.main([f'{REPO}/configs/quickstart/motion_retrieval_tiny.py', str(ckpt),
                    '--videos', str(tmp_path / 'v'), '--out', str(tmp_path / 'out'),
                    '--amp', 'fp16', '--device', 'cpu', '--no-progress'])
    err = capsys.readouterr().err
    assert rc == 2 and 'error: --amp fp16: autocast on the CPU runs bf16 only' in err, err
