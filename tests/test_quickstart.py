"""The README's main job, shrunk: tools/quickstart.py and dist_train.sh on the quickstart
configs, with a tiny generated dataset (the real run uses 800 videos and 30 epochs)."""
import json
import os
import pathlib
import subprocess
import sys

import pytest


ROOT = pathlib.Path(__file__).resolve().parents[1]


def tiny_config(tmp_path, base='motion_stan_tiny.py', name='tiny.py', dump=None):
    """A 2-epoch config on a tiny generated dataset; ``dump``: also write the test
    predictions there (mmengine's DumpResults next to the config's own metrics)."""
    data_root = tmp_path / 'motion'
    gen = dict(num_train=12, num_val=6, num_test=6, num_frames=8, size=64, seed=3,
               progress=False)
    loaders = '\n'.join(
        f"{split}_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False, "
        f"dataset=dict(data_root={str(data_root)!r}, generate={gen!r}))"
        for split in ('train', 'val', 'test'))
    cfg = tmp_path / name
    cfg.write_text(
        f"_base_ = [{str(ROOT / 'configs' / 'quickstart' / base)!r}]\n{loaders}\n"
        "train_cfg = dict(max_epochs=2, val_interval=1)\n"
        "param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=True)]\n"
        "default_hooks = dict(logger=dict(interval=1))\n")
    if dump is not None:
        with open(cfg, 'a') as f:
            f.write(f"test_evaluator = _base_.test_evaluator + "
                    f"[dict(type='DumpResults', out_file_path={str(dump)!r})]\n")
    return cfg, data_root


def run(cmd, **kw):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT))
    return subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True,
                          timeout=600, **kw)


def test_quickstart_tool_trains_tests_and_plots(tmp_path):
    import pickle
    import numpy as np
    dump = tmp_path / 'test_predictions.pkl'
    cfg, data_root = tiny_config(tmp_path, dump=dump)
    work = tmp_path / 'work' / 'stan'
    r = run([sys.executable, 'tools/quickstart.py', '--config', str(cfg),
             '--work-dir', str(work)])
    assert r.returncode == 0, r.stderr[-3000:]
    # the data was generated on first use: real videos plus the list files
    assert len(list((data_root / 'videos').glob('*.mp4'))) == 24
    result = json.loads((work / 'quickstart_result.json').read_text())
    meta = json.loads((data_root / 'meta.json').read_text())
    assert result['chance'] == pytest.approx(100 / len(meta['classes']))
    assert 0 <= result['top1'] <= 100 and 0 <= result['direction_acc'] <= 100
    # both recomputed by hand from the dumped test predictions: top-1 = argmax over the
    # class scores; direction = the true class scores above its time-reversed partner
    # (classes 2p and 2p + 1 are the two directions of pair p), a tie counting half
    with open(dump, 'rb') as f:
        preds = pickle.load(f)
    assert len(preds) == 6
    classes = len(meta['classes'])
    assert all(np.asarray(p['pred_score']).shape == (classes, ) for p in preds)
    top1 = direction = 0.0
    for p in preds:
        score = [float(x) for x in np.asarray(p['pred_score'])]
        label = int(np.asarray(p['gt_label']).reshape(-1)[0])
        top1 += score.index(max(score)) == label
        partner = label + 1 if label % 2 == 0 else label - 1
        direction += 1.0 if score[label] > score[partner] else (
            0.5 if score[label] == score[partner] else 0.0)
    assert result['top1'] == pytest.approx(100 * top1 / len(preds), abs=0.006)
    assert result['direction_acc'] == pytest.approx(100 * direction / len(preds), abs=0.006)
    assert result['acc/top1'] == pytest.approx(top1 / len(preds), abs=1e-4)
    assert f"test top-1 {result['top1']:.1f}%" in r.stdout
    minutes, seconds = divmod(int(result['wall_time_s']), 60)
    assert 0 < result['wall_time_s'] < 600 and f'{minutes} min {seconds:02d} s' in r.stdout
    png = work / 'training_curves.png'
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert (work / 'epoch_2.pth').exists()
    # named after the config, every logged number kept (MMAction2's accuracy included)
    assert result['model'] == 'tiny' and 0 <= result['acc/top1'] <= 1


def test_quickstart_names_runs_after_their_config(capsys):
    """Another --config never writes into (or is labelled as) the STAN run's folder."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('quickstart_tool',
                                                  ROOT / 'tools' / 'quickstart.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    cases = {(): 'stan', ('--baseline', ): 'meanpool',
             ('--config', str(ROOT / 'configs/quickstart/motion_stan_tiny.py')): 'stan',
             ('--config', str(ROOT / 'configs/quickstart/motion_meanpool_tiny.py')): 'meanpool',
             ('--config', 'configs/quickstart/motion_retrieval_tiny.py'):
                 'motion_retrieval_tiny'}
    for argv, name in cases.items():
        assert tool.run_name(tool.parse_args(list(argv))) == name, argv
    with pytest.raises(SystemExit) as e:
        tool.parse_args(['--baseline', '--config', 'configs/quickstart/motion_stan_tiny.py'])
    assert e.value.code == 2 and 'drop one of the two' in capsys.readouterr().err


def test_quickstart_baseline_config_is_mean_pooling():
    import stan_mm  # noqa: F401
    from mmengine.config import Config
    stan = Config.fromfile(str(ROOT / 'configs/quickstart/motion_stan_tiny.py'))
    base = Config.fromfile(str(ROOT / 'configs/quickstart/motion_meanpool_tiny.py'))
    assert base.model.backbone.depth == 0 and stan.model.backbone.depth > 0
    # everything else is the same experiment
    stan.model.backbone.depth = 0
    assert stan.model.to_dict() == base.model.to_dict()
    assert stan.train_dataloader.to_dict() == base.train_dataloader.to_dict()
    # the head has a class per direction of every generated pair (adding the rotation pair
    # to _motion_common.py must not leave an 8-class head for 10 classes)
    pairs = stan.train_dataloader.dataset.generate.pairs
    assert stan.model.cls_head.num_classes == 2 * len(pairs) == 8


def test_empty_split_is_named(tmp_path):
    import stan_mm  # noqa: F401
    from stan_mm.datasets.motion_dataset import SyntheticMotionDataset
    gen = dict(num_train=2, num_val=0, num_test=2, num_frames=4, size=32, progress=False)
    with pytest.raises(ValueError, match='val split of .* has no videos'):
        SyntheticMotionDataset(str(tmp_path / 'm'), 'val', pipeline=[], generate=gen)


def test_dist_train_quickstart_on_cpu(tmp_path):
    """Without PORT on one node, dist_train.sh finds a free port: here torchrun's default
    29500 is taken (by another job on the machine), which used to fail with EADDRINUSE."""
    import socket
    cfg, _ = tiny_config(tmp_path)
    work = tmp_path / 'dist'
    env = {k: v for k, v in os.environ.items() if k not in ('PORT', 'MASTER_PORT')}
    with socket.socket() as busy:
        try:
            busy.bind(('127.0.0.1', 29500))
            busy.listen()
        except OSError:
            pass    # taken already: the case under test either way
        r = subprocess.run(
            ['bash', 'tools/dist_train.sh', str(cfg), '2', '--work-dir', str(work)],
            cwd=str(ROOT), env=dict(env, OMP_NUM_THREADS='1'),
            capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert (work / 'epoch_2.pth').exists()
    log = '\n'.join(p.read_text() for p in work.glob('*/*.log'))
    assert 'Distributed launcher: pytorch' in log and 'Distributed training: True' in log
    # nccl -> gloo on the CPU: said once in the log, and the config the run dumps says gloo
    assert log.count('using the gloo backend instead of nccl') == 1, log[-3000:]
    dumped = (work / cfg.name).read_text()
    assert "backend='gloo'" in dumped and "backend='nccl'" not in dumped
    # 12 training videos, batch 4 per process, 2 processes: 2 iterations per epoch
    assert 'Epoch(train) [2][2/2]' in log, log[-2000:]


def test_symmetric_sample_mirrors_a_video_and_its_reversal():
    """SymmetricSample (the quickstart's test sampler) takes frame T-1-t whenever it takes
    frame t, so a time-reversed twin is shown the same frames, in reverse order; spread from
    the first frame to the last. Checked against the definition, and against MMAction2's
    UniformSample(test_mode=True), which is not symmetric (why the sampler exists)."""
    import numpy as np
    import stan_mm  # noqa: F401
    from mmaction.datasets.transforms import UniformSample
    from stan_mm.datasets.transforms.symmetric_sample import SymmetricSample
    for total in (1, 2, 5, 15, 16, 17, 64, 300):
        for clip_len in (1, 2, 4, 7, 8, 12):
            res = SymmetricSample(clip_len)(dict(total_frames=total, start_index=0))
            inds = res['frame_inds']
            assert inds.dtype == np.int32 and inds.shape == (clip_len, )
            assert (np.diff(inds) >= 0).all() and inds.min() >= 0 and inds.max() < total
            mirrored = (total - 1) - inds[::-1]
            exact = clip_len % 2 == 0 or total % 2 == 1
            assert (inds == mirrored).all() if exact else (inds != mirrored).sum() == 1
            if clip_len > 1:
                assert inds[0] == 0 and inds[-1] == total - 1
            # each index is the frame nearest to its evenly spaced position
            pos = np.linspace(0, total - 1, clip_len) if clip_len > 1 else [(total - 1) / 2]
            assert np.abs(inds - pos).max() <= 0.5 + 1e-9
            assert (res['clip_len'], res['num_clips'], res['frame_interval']) == (
                clip_len, 1, None)
    stock = UniformSample(clip_len=8, num_clips=1, test_mode=True)(
        dict(total_frames=16, start_index=0))['frame_inds']
    assert sorted(15 - stock) != sorted(stock)
    shifted = SymmetricSample(8)(dict(total_frames=16, start_index=1))['frame_inds']
    assert shifted.tolist() == [1, 3, 5, 7, 10, 12, 14, 16]
    with pytest.raises(ValueError, match='clip_len'):
        SymmetricSample(0)


def test_quickstart_tests_on_frames_symmetric_in_time():
    import stan_mm  # noqa: F401
    from mmengine.config import Config
    cfg = Config.fromfile(str(ROOT / 'configs/quickstart/motion_stan_tiny.py'))
    for loader in (cfg.val_dataloader, cfg.test_dataloader):
        samplers = [t for t in loader.dataset.pipeline if 'Sample' in t.type]
        assert [t.type for t in samplers] == ['SymmetricSample']
