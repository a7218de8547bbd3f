"""End to end: the quickstart retrieval config on a tiny generated benchmark through
``tools/train.py`` (loss goes down, validation metrics logged) and ``tools/test.py --dump``
(t2v and v2t metrics, one dumped sample per test video with all its captions)."""
import glob
import json
import os
import os.path as osp
import pickle
import subprocess
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(REPO, 'configs', 'quickstart', 'motion_retrieval_tiny.py')
GEN = dict(num_train=16, num_val=4, num_test=8, num_frames=8, size=32, seed=0,
           captions_per_video=2, progress=False)
EPOCHS = 8


def run(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
               PYTHONWARNINGS='ignore')
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def data_options(root):
    opts = []
    for split in ('train', 'val', 'test'):
        opts.append(f'{split}_dataloader.dataset.data_root={root}')
        opts += [f'{split}_dataloader.{k}' for k in
                 ('num_workers=0', 'persistent_workers=False')]
    opts += [f'{split}_dataloader.dataset.generate.{k}={v}' for k, v in GEN.items()
             for split in ('train', 'val', 'test')]
    return opts


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('retrieval_e2e')
    root, work = str(tmp / 'motion'), str(tmp / 'work')
    opts = data_options(root) + [
        'train_dataloader.batch_size=8', 'val_dataloader.batch_size=4',
        'test_dataloader.batch_size=3', f'train_cfg.max_epochs={EPOCHS}',
        f'train_cfg.val_interval={EPOCHS}', 'default_hooks.logger.interval=1',
        'log_processor.window_size=1',  # log every iteration's own loss
        f'default_hooks.checkpoint.interval={EPOCHS}',
        # keep the schedule consistent with the shorter run
        'param_scheduler.0.end=1', f'param_scheduler.1.T_max={EPOCHS - 1}',
        f'param_scheduler.1.end={EPOCHS}']
    run(['tools/train.py', CONFIG, '--work-dir', work, '--cfg-options', *opts], REPO)
    return dict(tmp=tmp, root=root, work=work, opts=data_options(root))


def hand_retrieval_metrics(videos, captions):
    """t2v / v2t R@1/5/10, MdR, MnR written out with plain loops from the dumped features:
    ``videos[v]`` the embedding of test video v, ``captions[v]`` its captions' embeddings.
    Cosine similarity; every caption is a t2v query whose rank is 1 + the number of other
    videos scoring at least its own (ties count against); a video's v2t rank is 1 + the
    number of other videos' captions scoring at least its best own caption (RetrievalRecall
    Metric's contract, STAN_REFERENCE.md section 7 for several captions per video)."""
    import math

    def unit(a):
        a = [float(x) for x in a]
        n = math.sqrt(sum(x * x for x in a))
        return [x / n for x in a]

    def dot(a, b):
        return sum(x * y for x, y in zip(a, b))

    vids = [unit(v) for v in videos]
    caps = [(unit(c), v) for v, cs in enumerate(captions) for c in cs]
    t2v = []
    for c, own in caps:
        s_own = dot(c, vids[own])
        t2v.append(1 + sum(1 for j, v in enumerate(vids) if j != own and dot(c, v) >= s_own))
    v2t = []
    for j, v in enumerate(vids):
        best = max(dot(c, v) for c, own in caps if own == j)
        v2t.append(1 + sum(1 for c, own in caps if own != j and dot(c, v) >= best))

    def stats(ranks):
        srt, n = sorted(ranks), len(ranks)
        median = srt[n // 2] if n % 2 else (srt[n // 2 - 1] + srt[n // 2]) / 2
        out = {f'R{k}': 100.0 * sum(r <= k for r in ranks) / n for k in (1, 5, 10)}
        return dict(out, MdR=median, MnR=sum(ranks) / n)
    return stats(t2v), stats(v2t), t2v, v2t


def hand_cosines(captions, video):
    """Cosine of every caption with ``video`` (plain Python)."""
    import math
    vn = math.sqrt(sum(x * x for x in video))
    return [sum(x * y for x, y in zip(c, video)) / (math.sqrt(sum(x * x for x in c)) * vn)
            for c in captions]


def read_scalars(work):
    files = glob.glob(osp.join(work, '*', 'vis_data', 'scalars.json'))
    assert len(files) == 1, files
    with open(files[0]) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_train_loss_goes_down_and_validation_runs(trained):
    records = read_scalars(trained['work'])
    losses = [r['loss'] for r in records if 'loss' in r]
    assert len(losses) == EPOCHS * 4  # 16 videos x 2 captions / batch 8
    k = len(losses) // 4
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    assert last < 0.8 * first, losses
    val = [r for r in records if 'retrieval/t2v_R1' in r]
    assert len(val) == 1 and 'retrieval/v2t_R1' in val[0]
    assert osp.isfile(osp.join(trained['work'], f'epoch_{EPOCHS}.pth'))


def test_test_tool_reports_both_directions_and_dumps(trained):
    dump = str(trained['tmp'] / 'out.pkl')
    work = str(trained['tmp'] / 'test_work')
    ckpt = osp.join(trained['work'], f'epoch_{EPOCHS}.pth')
    run(['tools/test.py', CONFIG, ckpt, '--dump', dump, '--work-dir', work,
         '--cfg-options', 'test_dataloader.batch_size=3', *trained['opts']], REPO)
    logs = glob.glob(osp.join(work, '*', '*.json'))
    assert len(logs) == 1, logs
    with open(logs[0]) as f:
        metrics = json.loads(f.read().strip().splitlines()[-1])
    for d in ('t2v', 'v2t'):
        for key in ('R1', 'R5', 'R10', 'MdR', 'MnR'):
            assert f'retrieval/{d}_{key}' in metrics, metrics
        assert 0 <= metrics[f'retrieval/{d}_R1'] <= metrics[f'retrieval/{d}_R5'] <= 100
    # 8 test videos x 2 captions; R@10 over 8 videos is 100
    assert metrics['retrieval/t2v_R10'] == 100.0
    assert metrics['retrieval/t2v_MnR'] <= 8 and metrics['retrieval/v2t_MnR'] <= 8
    # the time-direction score, with the benchmark found through the test dataset
    assert 0 <= metrics['motion/twin_t2v_acc'] <= 100, metrics

    with open(dump, 'rb') as f:
        results = pickle.load(f)
    assert len(results) == GEN['num_test']
    assert sorted(r['sample_idx'] for r in results) == list(range(GEN['num_test']))
    for r in results:
        assert tuple(r['video_feature'].shape) == (64, )
        assert tuple(r['text_feature'].shape) == (GEN['captions_per_video'], 64)

    # the logged numbers are the hand computation on the dumped features
    results = sorted(results, key=lambda r: r['sample_idx'])
    t2v, v2t, t2v_ranks, v2t_ranks = hand_retrieval_metrics(
        [r['video_feature'].tolist() for r in results],
        [r['text_feature'].tolist() for r in results])
    for d, hand in (('t2v', t2v), ('v2t', v2t)):
        for key, value in hand.items():
            assert metrics[f'retrieval/{d}_{key}'] == pytest.approx(value, abs=1e-4), (
                d, key, metrics, t2v_ranks, v2t_ranks)

    # twin accuracy by hand: a caption counts 1 when its own video's cosine beats the
    # time-reversed twin's (the other video of its group in annotations/videos.json), 1/2
    # on a tie
    with open(osp.join(trained['root'], 'annotations', 'videos.json')) as f:
        group = {rec['filename']: rec['group'] for rec in json.load(f)}
    names = [osp.basename(r['filename']) for r in results]
    scores = []
    for i, r in enumerate(results):
        twins = [j for j, n in enumerate(names) if j != i and group[n] == group[names[i]]]
        assert len(twins) == 1, (names[i], twins)          # 8 test videos = 4 twin pairs
        own, twin = (hand_cosines(r['text_feature'].tolist(),
                                  results[j]['video_feature'].tolist()) for j in (i, twins[0]))
        scores += [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(own, twin)]
    assert len(scores) == GEN['num_test'] * GEN['captions_per_video']
    assert metrics['motion/twin_t2v_acc'] == pytest.approx(100 * sum(scores) / len(scores),
                                                           abs=1e-4)
