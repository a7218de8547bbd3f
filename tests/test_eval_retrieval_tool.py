"""tools/analysis/eval_retrieval.py: run as a subprocess on small .npy files; its JSON must
equal a hand computation and the in-process computation. Input errors are checked in
process (same ``main``), which is faster than a subprocess per case."""
import importlib.util
import json
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest

import stan_mm  # noqa: F401
from stan_mm.evaluation import retrieval_metrics_from_similarity

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOL = osp.join(ROOT, 'tools', 'analysis', 'eval_retrieval.py')

# several captions per video (t2v = [0, 0, 1, 2, 2]); hand ranks, see test_retrieval_metric:
# t2v ranks [2, 1, 3, 1, 3], v2t ranks [2, 3, 1]
S_MULTI = np.array([[0.5, 0.6, 0.1], [0.7, 0.2, 0.3], [0.4, 0.3, 0.35], [0.1, 0.2, 0.9],
                    [0.8, 0.6, 0.2]], dtype=np.float32)
T2V_MULTI = np.array([0, 0, 1, 2, 2], dtype=np.int64)
HAND_MULTI = dict(t2v_R1=40.0, t2v_R5=100.0, t2v_R10=100.0, t2v_MdR=2.0, t2v_MnR=2.0,
                  v2t_R1=100 / 3, v2t_R5=100.0, v2t_R10=100.0, v2t_MdR=2.0, v2t_MnR=2.0)

# QB-Norm hand case (beta = 10, bank top-1s = {video 1}): t2v ranks [1, 1, 2] (raw
# [2, 1, 2]); v2t ranks [2, 1, 1] either way. Reasoning in test_retrieval_metric.
QB_TEST = np.array([[0.5, 0.6, -0.5], [0.1, 0.9, 0.0], [0.7, 0.1, 0.65]], dtype=np.float32)
QB_BANK = np.array([[0.6, 0.8, 0.0], [0.5, 0.7, 0.0]], dtype=np.float32)
HAND_QB = dict(t2v_R1=200 / 3, t2v_R5=100.0, t2v_R10=100.0, t2v_MdR=1.0, t2v_MnR=4 / 3,
               v2t_R1=200 / 3, v2t_R5=100.0, v2t_R10=100.0, v2t_MdR=1.0, v2t_MnR=4 / 3)


def run_tool(*args):
    proc = subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def save(tmp_path, **arrays):
    paths = {}
    for name, array in arrays.items():
        paths[name] = tmp_path / f'{name}.npy'
        np.save(paths[name], array)
    return paths


def test_tool_plain_equals_hand_and_in_process(tmp_path):
    p = save(tmp_path, sim=S_MULTI, t2v=T2V_MULTI)
    got = run_tool('--sim', p['sim'], '--text-to-video', p['t2v'], '--chunk-size', 2)
    assert got == pytest.approx(HAND_MULTI)
    assert got == pytest.approx(retrieval_metrics_from_similarity(S_MULTI, T2V_MULTI))


def test_tool_qb_norm_equals_hand_and_in_process(tmp_path):
    p = save(tmp_path, sim=QB_TEST, t2v=np.arange(3), bank=QB_BANK)
    got = run_tool('--sim', p['sim'], '--text-to-video', p['t2v'], '--qb-norm', p['bank'],
                   '--qb-beta', 10, '--qb-k', 1, '--chunk-size', 2)
    assert got == pytest.approx(HAND_QB)
    assert got == pytest.approx(retrieval_metrics_from_similarity(
        QB_TEST, np.arange(3), qb_bank_sim=QB_BANK, qb_beta=10.0))


@pytest.fixture(scope='module')
def tool_main():
    spec = importlib.util.spec_from_file_location('eval_retrieval_tool', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize('arrays,extra,message', [
    (dict(sim=S_MULTI, t2v=T2V_MULTI[:4]), [], 'has 4 entries but'),
    (dict(sim=S_MULTI, t2v=np.array([0, 0, 1, 2, 3])), [], 'not a valid video index'),
    (dict(sim=S_MULTI, t2v=np.array([0, 0, 1, 1, 1])), [], 'no caption'),
    (dict(sim=S_MULTI, t2v=T2V_MULTI.astype(np.float32)), [], 'integer'),
    (dict(sim=S_MULTI[0], t2v=T2V_MULTI), [], '2-D'),
    (dict(sim=S_MULTI, t2v=T2V_MULTI, bank=np.zeros((2, 4), np.float32)), ['--qb-norm'],
     'has 4 columns'),
])
def test_tool_reports_bad_input_naming_the_file(tmp_path, capsys, tool_main, arrays, extra,
                                                message):
    p = save(tmp_path, **arrays)
    argv = ['--sim', str(p['sim']), '--text-to-video', str(p['t2v'])]
    if extra:
        argv += [extra[0], str(p['bank'])]
    assert tool_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert str(tmp_path) in err  # the offending file is named


def test_tool_dsl_and_qb_norm_options_reach_the_core(tmp_path, capsys, tool_main):
    rng = np.random.default_rng(0)
    sim = rng.standard_normal((13, 6)).astype(np.float32) * 0.3
    t2v = np.concatenate([np.arange(6), rng.integers(0, 6, 7)])
    bank = rng.standard_normal((5, 6)).astype(np.float32) * 0.3
    p = save(tmp_path, sim=sim, t2v=t2v, bank=bank)
    assert tool_main(['--sim', str(p['sim']), '--text-to-video', str(p['t2v']), '--dsl',
                      '--dsl-temp', '0.2', '--qb-norm', str(p['bank']), '--qb-beta', '3',
                      '--qb-k', '2', '--chunk-size', '4']) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    expected = retrieval_metrics_from_similarity(sim, t2v, dsl=True, dsl_temp=0.2,
                                                 qb_bank_sim=bank, qb_beta=3.0, qb_k=2)
    assert got == pytest.approx(expected)
    assert expected != retrieval_metrics_from_similarity(sim, t2v)


def test_tool_reports_missing_file(tmp_path, capsys, tool_main):
    assert tool_main(['--sim', str(tmp_path / 'nope.npy'), '--text-to-video',
                      str(tmp_path / 't.npy')]) == 2
    assert 'nope.npy' in capsys.readouterr().err


def test_tool_reports_an_unusable_device(tmp_path, capsys, tool_main, monkeypatch):
    import torch
    np.save(tmp_path / 's.npy', S_MULTI)
    np.save(tmp_path / 't.npy', T2V_MULTI)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    args = ['--sim', str(tmp_path / 's.npy'), '--text-to-video', str(tmp_path / 't.npy')]
    assert tool_main(args + ['--device', 'cuda']) == 2
    assert 'CUDA is not available' in capsys.readouterr().err
    assert tool_main(args + ['--device', 'tpu9']) == 2
    assert "--device 'tpu9'" in capsys.readouterr().err


def test_errors_name_the_text_to_video_file_intact(tmp_path, capsys, tool_main):
    """extract_features writes ``text_to_video.npy``: a message about it must show that
    path as it is (an earlier rewrite of 'text_to_video' in messages mangled it)."""
    np.save(tmp_path / 's.npy', S_MULTI)
    bad = np.asarray(T2V_MULTI).copy()
    bad[1] = S_MULTI.shape[1]                       # no such video
    path = tmp_path / 'text_to_video.npy'
    np.save(path, bad)
    assert tool_main(['--sim', str(tmp_path / 's.npy'), '--text-to-video', str(path)]) == 2
    err = capsys.readouterr().err
    assert f"text-to-video file {str(path)!r}[1] = {S_MULTI.shape[1]}" in err, err
    assert err.count('text_to_video') == 1, err     # only inside the path itself


def test_tool_shows_ranking_progress_unless_asked_not_to(tmp_path, capsys, tool_main):
    """A 30k x 30k DSL evaluation ran for minutes without a line of output: the ranking
    passes now show a progress bar on stderr (--no-progress: none); stdout keeps only the
    metrics line."""
    p = save(tmp_path, sim=S_MULTI, t2v=T2V_MULTI)
    argv = ['--sim', str(p['sim']), '--text-to-video', str(p['t2v']), '--chunk-size', '2']
    assert tool_main(argv) == 0
    out, err = capsys.readouterr()
    assert 'ranking (2 passes over the text rows)' in err
    assert json.loads(out.strip()) == pytest.approx(HAND_MULTI)
    assert tool_main(argv + ['--no-progress']) == 0
    assert 'ranking' not in capsys.readouterr().err
