"""The user tools after training, run on generated videos with tiny random models:
``tools/extract_features.py``, ``tools/demo/search.py``, ``tools/demo/recognize.py`` and
``tools/convert/clip_to_mm.py``.

Each tool runs once as a subprocess (``OMP_NUM_THREADS=1``; the four start together in the
module fixture); further runs of the same tool (resumption, cache reuse, error paths) call
its ``main(argv)`` in this process. Every number is checked against an independent
reference computed here: the config's test pipeline through MMAction2's stock transforms,
the model's own towers and heads, and numpy ranking.
"""
import base64
import glob
import json
import os
import os.path as osp
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import stan_mm  # noqa: F401
from mmaction.registry import MODELS
from mmengine.config import Config
from mmengine.dataset import Compose
from mmengine.registry import init_default_scope
from stan_mm.datasets.synthetic import generate_motion_dataset
from stan_mm.datasets.transforms.tokenize import tokenize
from stan_mm.testing import (load_script, rounded_fp16, save_open_clip, save_openai_torchscript,
                             tiny_clip)

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..'))
RETRIEVAL_CFG = osp.join(REPO, 'configs', 'quickstart', 'motion_retrieval_tiny.py')
RECOGNITION_BASE = osp.join(REPO, 'configs', 'quickstart', 'motion_stan_tiny.py')
MEAN = torch.tensor([122.771, 116.746, 104.093])
STD = torch.tensor([68.500, 66.632, 70.323])
QUERIES = ['a large yellow cross slides left', 'a shape rotating clockwise']
CLASSNAMES = ['moving left', 'moving right', 'rotating', 'growing', 'shrinking', 'fading']
ENV = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONWARNINGS='ignore')


def load_tool(rel_path):
    return load_script(rel_path)


def launch(args):
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return dict(rc=proc.returncode, out=out, err=err)


def build(cfg_path, seed=0):
    """Model of a config with random weights (temporal modules made non-trivial), saved as
    an mmengine checkpoint next to the config. Returns (cfg, model, checkpoint path)."""
    cfg = Config.fromfile(cfg_path)
    init_default_scope('mmaction')
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model)
    with torch.no_grad():  # temporal modules start as the identity (zero fc): perturb them
        for name, p in model.named_parameters():
            if 'branch' in name and 'temporal' in name:
                p.normal_(0, 0.2)
    ckpt = osp.splitext(cfg_path)[0] + '.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    model.cfg = cfg  # what stan_mm.apis.init_model sets
    return cfg, model.eval(), ckpt


def retrieval_gallery(tmp, num_videos=3):
    """A tiny random retrieval model (config ``tmp/ret.py`` over the quickstart's, and its
    checkpoint) and a gallery folder ``tmp/videos`` of ``v0.mp4`` ... Returns
    ``dict(cfg, ckpt, model, videos, names)``."""
    cfg_file = tmp / 'ret.py'
    cfg_file.write_text(f'_base_ = [{RETRIEVAL_CFG!r}]\n')
    _, model, ckpt = build(str(cfg_file))
    videos = tmp / 'videos'
    videos.mkdir()
    names = [f'v{i}.mp4' for i in range(num_videos)]
    for i, name in enumerate(names):
        write_video(str(videos / name), seed=i)
    return dict(cfg=str(cfg_file), ckpt=ckpt, model=model, videos=str(videos), names=names)


def write_video(path, size=(64, 48), frames=8, seed=0):
    """A non-square mp4 (ThreeCrop gives three different crops of it)."""
    import cv2
    rng = np.random.RandomState(seed)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), 8.0, size)
    for t in range(frames):
        frame = rng.randint(0, 90, (size[1], size[0], 3)).astype(np.uint8)
        frame[10:22, 4 * t:4 * t + 12] = (40, 220, 250)
        writer.write(frame)
    writer.release()


# ------------------------------------------------------------------ independent references
STOCK = {'SafeDecordInit': 'DecordInit', 'SafeDecordDecode': 'DecordDecode'}


def ref_pipeline(cfg, replace=None):
    """The config's test pipeline with MMAction2's stock decord transforms, captions and
    packing removed (so results['imgs'] is the formatted array)."""
    steps = [dict(t) for t in cfg.test_dataloader.dataset.pipeline
             if t['type'] not in ('CLIPBPETokenize', 'PackActionInputs')]
    for t in steps:
        t['type'] = STOCK.get(t['type'], t['type'])
        t.update((replace or {}).get(t['type'], {}))
    return Compose(steps)


def normalize_pixels(x, channel_dim):
    shape = [1] * x.dim()
    shape[channel_dim] = 3
    return (x.float() - MEAN.view(shape)) / STD.view(shape)


@torch.no_grad()
def ref_retrieval_video(cfg, model, path):
    imgs = ref_pipeline(cfg)(dict(filename=path, start_index=0, modality='RGB'))['imgs']
    x = normalize_pixels(torch.from_numpy(imgs), 1)          # [T, C, H, W]
    return F.normalize(model.backbone(x[None]), dim=-1)[0].numpy()


@torch.no_grad()
def ref_texts(model, texts, length):
    return F.normalize(model.text_backbone(tokenize(texts, length)), dim=-1).numpy()


def stable_order(scores):
    return np.argsort(-np.asarray(scores), kind='stable')


def parse_table(text):
    """Rows ``rank score name`` of the tools' tables -> [(rank, score, name)]."""
    rows = []
    for line in text.splitlines():
        m = re.match(r'^\s+(\d+)\s+(-?\d+\.\d{4})\s+(.+)$', line)
        if m:
            rows.append((int(m.group(1)), float(m.group(2)), m.group(3).strip()))
    return rows


# ------------------------------------------------------------------ fixture
@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp('user_tools'))
    motion = osp.join(tmp, 'motion')
    generate_motion_dataset(motion, num_train=2, num_val=2, num_test=2, num_frames=8,
                            size=32, captions_per_video=2, progress=False)
    videos = sorted(glob.glob(osp.join(motion, 'videos', '*.mp4')))

    # retrieval model (the quickstart config, tiny CLIP) and its checkpoint
    ret_cfg_path = osp.join(tmp, 'retrieval.py')
    with open(ret_cfg_path, 'w') as f:  # the quickstart model; test split = our videos
        f.write(f'''_base_ = [{RETRIEVAL_CFG!r}]
test_dataloader = dict(dataset=dict(
    _delete_=True, type='RetrievalVideoTextDataset', ann_format='json',
    ann_file='retrieval/test.json', data_root={motion!r}, data_prefix=dict(video='videos'),
    test_mode=True, pipeline=_base_.test_pipeline))
''')
    ret_cfg, ret_model, ret_ckpt = build(ret_cfg_path)

    # recognition model with a text-classifier head; test frames: short side 32, so that
    # --views 1x3 (ThreeCrop 32) takes three different crops of a 64x48 video
    rec_cfg_path = osp.join(tmp, 'recognition.py')
    with open(rec_cfg_path, 'w') as f:
        f.write(f'''_base_ = [{RECOGNITION_BASE!r}]
model = dict(cls_head=dict(_delete_=True, type='TextClassifierHead',
                           classnames=['class a', 'class b'], in_channels=64,
                           text_encoder=dict(type='CLIPTextEncoder', arch=_base_.clip_cfg),
                           context_length=16, average_clips='prob'))
test_pipeline = [
    dict(type='DecordInit'),
    dict(type='UniformSample', clip_len=8, num_clips=1, test_mode=True),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 32)),
    dict(type='CenterCrop', crop_size=32),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs')
]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
''')
    rec_cfg, rec_model, rec_ckpt = build(rec_cfg_path, seed=1)
    wide = osp.join(tmp, 'wide.mp4')
    write_video(wide)

    # extract_features input: 5 good videos, then an empty file
    broken = osp.join(tmp, 'broken.mp4')
    open(broken, 'wb').close()
    video_list = osp.join(tmp, 'videos.txt')
    with open(video_list, 'w') as f:
        f.write('# five videos and a broken one\n')
        f.writelines(osp.relpath(v, tmp) + '\n' for v in videos[:5])
        f.write('broken.mp4\n')
    texts = osp.join(tmp, 'texts.txt')
    with open(texts, 'w') as f:
        f.write('\n'.join(QUERIES) + '\n')

    gallery = osp.join(tmp, 'gallery')
    os.makedirs(gallery)
    for v in videos:
        shutil.copy(v, gallery)

    clip = tiny_clip(seed=3, vision_width=128, vision_head_width=64, text_width=64,
                     text_heads=1)
    clip_ts = osp.join(tmp, 'ViT-tiny.pt')
    save_openai_torchscript(clip, clip_ts)

    feat_out = osp.join(tmp, 'features')
    html = osp.join(tmp, 'search.html')
    sim = osp.join(tmp, 'search_sim.npy')
    clip_out = osp.join(tmp, 'ViT-tiny-mm.pth')
    search_args = [ret_cfg_path, ret_ckpt, '--gallery', gallery, '--query', QUERIES[0],
                   '--query', QUERIES[1], '--top-k', '3', '--num-workers', '0',
                   '--no-progress']
    procs = dict(
        extract=launch(['tools/extract_features.py', ret_cfg_path, ret_ckpt,
                        '--videos', video_list, '--texts', texts, '--out', feat_out,
                        '--limit', '2', '--batch-size', '2', '--shard-size', '1',
                        '--num-workers', '1', '--no-progress']),
        search=launch(['tools/demo/search.py', *search_args, '--html', html,
                       '--save-sim', sim]),
        recognize=launch(['tools/demo/recognize.py', rec_cfg_path, rec_ckpt, wide,
                          '--classnames', ','.join(CLASSNAMES), '--views', '1x3']),
        convert=launch(['tools/convert/clip_to_mm.py', clip_ts, clip_out]))
    runs = {k: finish(p) for k, p in procs.items()}
    return dict(tmp=tmp, motion=motion, videos=videos, runs=runs, video_list=video_list,
                texts=texts, gallery=gallery, feat_out=feat_out, html=html, sim=sim,
                search_args=search_args, ret=(ret_cfg_path, ret_cfg, ret_model, ret_ckpt),
                rec=(rec_cfg_path, rec_cfg, rec_model, rec_ckpt), wide=wide, clip=clip,
                clip_ts=clip_ts, clip_out=clip_out)


def ok(run):
    assert run['rc'] == 0, run['out'][-3000:] + run['err'][-5000:]
    return run


# ------------------------------------------------------------------ extract_features
def test_extract_features_resumes_and_names_bad_videos(setup, capsys):
    tool = load_tool('tools/extract_features.py')
    cfg_path, cfg, model, ckpt = setup['ret']
    out = setup['feat_out']
    base = [cfg_path, ckpt, '--videos', setup['video_list'], '--texts', setup['texts'],
            '--out', out, '--batch-size', '2', '--shard-size', '1', '--num-workers', '0',
            '--no-progress']

    # 1. (subprocess) --limit 2: two videos embedded and saved, no final files yet
    r1 = ok(setup['runs']['extract'])
    assert '6 videos: 0 already embedded (reused), 6 to embed' in r1['out']
    assert 'embedded 2 new videos' in r1['out']
    assert not osp.exists(osp.join(out, 'meta.json'))
    shards = glob.glob(osp.join(out, '.partial', 'shard-*.npz'))
    assert sum(len(np.load(s)['emb']) for s in shards) == 2

    # 2. rerun without --skip-bad: the two are reused, the empty file stops the run with
    #    its name, and the three good videos embedded before it are kept
    rc = tool.main(base)
    cap = capsys.readouterr()
    assert rc == 1, cap.out + cap.err
    assert '6 videos: 2 already embedded (reused), 4 to embed' in cap.out
    assert 'broken.mp4' in cap.err and 'empty' in cap.err
    assert not osp.exists(osp.join(out, 'meta.json'))

    # 3. --skip-bad: nothing recomputed, the bad video listed, final files written
    rc = tool.main(base + ['--skip-bad', '--save-sim'])
    cap = capsys.readouterr()
    assert rc == 0, cap.out + cap.err
    assert '6 videos: 5 already embedded (reused), 1 to embed' in cap.out
    assert 'embedded 0 new videos' in cap.out
    assert not osp.exists(osp.join(out, '.partial'))

    videos = np.load(osp.join(out, 'videos.npy'))
    texts = np.load(osp.join(out, 'texts.npy'))
    with open(osp.join(out, 'videos.txt')) as f:
        names = f.read().splitlines()
    with open(osp.join(out, 'texts.txt')) as f:
        assert f.read().splitlines() == QUERIES
    with open(osp.join(out, 'bad_videos.txt')) as f:
        assert f.read().startswith('broken.mp4\t')
    meta = json.load(open(osp.join(out, 'meta.json')))
    assert videos.shape == (5, 64) and texts.shape == (2, 64)
    assert videos.dtype == np.float32 and texts.dtype == np.float32
    assert meta['num_videos'] == 5 and meta['num_texts'] == 2 and meta['embed_dim'] == 64
    assert meta['num_bad_videos'] == 1 and meta['checkpoint'] == osp.abspath(ckpt)
    np.testing.assert_allclose(np.linalg.norm(videos, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-5)
    assert names == [osp.relpath(v, setup['tmp']) for v in setup['videos'][:5]]

    # against the model itself: stock pipeline, the video tower, the text tower
    ref_v = np.stack([ref_retrieval_video(cfg, model, v) for v in setup['videos'][:5]])
    ref_t = ref_texts(model, QUERIES, 32)
    np.testing.assert_allclose(videos, ref_v, atol=2e-5)
    np.testing.assert_allclose(texts, ref_t, atol=2e-5)
    np.testing.assert_allclose(np.load(osp.join(out, 'sim.npy')), ref_t @ ref_v.T,
                               atol=5e-5)

    # 4. the same folder with another checkpoint is refused (no silent mixing)
    other = ckpt.replace('.pth', '_other.pth')
    shutil.copy(ckpt, other)
    rc = tool.main([cfg_path, other, '--texts', setup['texts'], '--out', out])
    cap = capsys.readouterr()
    assert rc == 2 and 'another model' in cap.err and '--overwrite' in cap.err


def test_an_interrupted_extraction_keeps_the_finished_batches(setup, monkeypatch):
    """Ctrl-C (or SIGTERM, which the tool turns into KeyboardInterrupt) in the second batch:
    the first batch is saved although the shard is not full, and the rerun reuses it."""
    from stan_mm.apis import embed as embed_mod
    from stan_mm.apis import extract_features
    cfg_path, cfg, model, ckpt = setup['ret']
    root = osp.dirname(setup['videos'][0])
    names = [osp.basename(v) for v in setup['videos']]
    out = osp.join(setup['tmp'], 'interrupted')
    real, calls = embed_mod.embed_video_batch, []

    def interrupted(model, samples):
        calls.append(len(samples))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(model, samples)

    kwargs = dict(videos=names, video_root=root, key='k', batch_size=2, num_workers=0,
                  shard_size=100, progress=False, log=lambda msg: None)
    monkeypatch.setattr(embed_mod, 'embed_video_batch', interrupted)
    with pytest.raises(KeyboardInterrupt):
        extract_features(model, out, **kwargs)
    assert not osp.exists(osp.join(out, 'meta.json'))
    monkeypatch.setattr(embed_mod, 'embed_video_batch', real)
    res = extract_features(model, out, **kwargs)
    assert (res.complete, res.reused, res.new) == (True, 2, 4)
    ref = np.stack([ref_retrieval_video(cfg, model, v) for v in setup['videos']])
    np.testing.assert_allclose(np.load(osp.join(out, 'videos.npy')), ref, atol=2e-5)


def copy_videos(setup, folder, n):
    os.makedirs(folder)
    for v in setup['videos'][:n]:
        shutil.copy(v, folder)
    return str(folder)


def _one_video_shards(setup, tmp_path):
    """extract_features over 3 videos, one video per batch and per shard: (tool, argv,
    output folder)."""
    tool = load_tool('tools/extract_features.py')
    cfg_path, _, _, ckpt = setup['ret']
    videos = copy_videos(setup, tmp_path / 'videos', 3)
    out = str(tmp_path / 'feats')
    args = [cfg_path, ckpt, '--videos', videos, '--out', out, '--batch-size', '1',
            '--shard-size', '1', '--num-workers', '0', '--no-progress']
    return tool, args, out


def test_a_full_disk_stops_extraction_with_one_error_line(setup, capsys, tmp_path,
                                                         monkeypatch):
    """The disk fills up while a shard is written: one ``error:`` line naming the shard and
    what to do, no temporary file left, the failed write not tried again by the final
    flush, the shard written before kept (and reused by the rerun)."""
    import errno
    tool, args, out = _one_video_shards(setup, tmp_path)
    real, calls = np.savez, []

    def full_disk(f, **arrays):
        calls.append(1)
        if len(calls) == 1:
            return real(f, **arrays)
        f.write(b'PK\x03\x04 half a shard')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, 'savez', full_disk)
    rc = tool.main(args)
    monkeypatch.undo()
    cap = capsys.readouterr()
    partial = osp.join(out, '.partial')
    assert rc == 2 and 'Traceback' not in cap.err, cap.err
    errors = [ln for ln in cap.err.splitlines() if 'error' in ln]
    assert len(errors) == 1, cap.err
    assert errors[0].startswith('extract_features: error: cannot write '
                                + osp.join(partial, 'shard-000001.npz'))
    assert 'No space left on device' in errors[0] and 'Free some disk space' in errors[0]
    assert 'rerun the same command' in errors[0] and partial in errors[0]
    assert len(calls) == 2                               # the failed write is not retried
    assert sorted(os.listdir(partial)) == ['run.json', 'shard-000000.npz']
    assert tool.main(args) == 0
    assert '3 videos: 1 already embedded (reused), 2 to embed' in capsys.readouterr().out


def test_an_interrupt_during_a_shard_write_keeps_its_rows(setup, capsys, tmp_path,
                                                          monkeypatch):
    """Ctrl-C (or SIGTERM) while a shard is written: the final flush writes those rows
    again, so the rerun reuses them (unlike a full disk, where the write is given up)."""
    tool, args, out = _one_video_shards(setup, tmp_path)
    real, calls = np.savez, []

    def interrupted(f, **arrays):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(f, **arrays)

    monkeypatch.setattr(np, 'savez', interrupted)
    rc = tool.main(args)
    monkeypatch.undo()
    capsys.readouterr()
    assert rc == 130 and len(calls) == 3                  # the interrupted rows written again
    assert tool.main(args) == 0
    assert '3 videos: 2 already embedded (reused), 1 to embed' in capsys.readouterr().out


def test_a_damaged_feature_file_is_named_with_its_fix(setup, capsys, tmp_path):
    """A truncated videos.npy of a finished folder: load_features, the tool and a search of
    a cache name the file and what to do; the tool's --overwrite embeds it again."""
    from stan_mm.apis import FeatureFolderError, load_features
    from stan_mm.apis.search import search_gallery
    tool = load_tool('tools/extract_features.py')
    cfg_path, cfg, model, ckpt = setup['ret']
    videos = copy_videos(setup, tmp_path / 'videos', 2)
    out = str(tmp_path / 'feats')
    args = [cfg_path, ckpt, '--videos', videos, '--out', out, '--num-workers', '0',
            '--no-progress']
    assert tool.main(args) == 0
    capsys.readouterr()
    path = osp.join(out, 'videos.npy')
    good = np.load(path)

    def truncate(p):
        with open(p, 'rb') as f:
            data = f.read()
        with open(p, 'wb') as f:
            f.write(data[:-100])

    truncate(path)
    with pytest.raises(FeatureFolderError) as info:
        load_features(out)
    msg = str(info.value)
    assert msg.startswith(f'{path} is damaged') and 'Failed to read all data' in msg
    assert 'tools/extract_features.py with --overwrite' in msg
    assert tool.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'extract_features: error: {path} is damaged') and '--overwrite' in err
    assert tool.main(args + ['--overwrite']) == 0
    assert 'embedded 2 new videos' in capsys.readouterr().out
    np.testing.assert_allclose(load_features(out)['videos'], good, atol=1e-6)
    # a missing videos.txt and a damaged meta.json: named too, and --overwrite repairs both
    os.remove(osp.join(out, 'videos.txt'))
    with pytest.raises(FeatureFolderError, match=r'videos\.txt is damaged or missing .*'
                                                 r'--overwrite'):
        load_features(out)
    assert tool.main(args) == 2 and 'videos.txt is damaged or missing' in \
        capsys.readouterr().err
    assert tool.main(args + ['--overwrite']) == 0
    capsys.readouterr()
    np.testing.assert_allclose(load_features(out)['videos'], good, atol=1e-6)
    with open(osp.join(out, 'meta.json'), 'w') as f:
        f.write('{"trunc')
    assert tool.main(args) == 2 and 'meta.json is damaged' in capsys.readouterr().err
    assert tool.main(args + ['--overwrite']) == 0
    capsys.readouterr()
    np.testing.assert_allclose(load_features(out)['videos'], good, atol=1e-6)
    # a search cache: no --overwrite there, the fix is to delete the cache
    kw = dict(key='k', num_workers=0, progress=False, log=lambda m: None)
    cache = search_gallery(model, videos, ['a query'], **kw).cache_dir
    truncate(osp.join(cache, 'videos.npy'))
    with pytest.raises(FeatureFolderError, match=rf'videos.npy of the gallery cache is '
                       rf'damaged .*delete {re.escape(cache)} and search again'):
        search_gallery(model, videos, ['a query'], **kw)


def test_extract_features_split_feeds_eval_retrieval(setup, capsys):
    """--split test: captions grouped by video, text_to_video.npy and sim.npy in the layout
    of tools/analysis/eval_retrieval.py, whose metrics match ranks computed here."""
    tool = load_tool('tools/extract_features.py')
    cfg_path, cfg, model, ckpt = setup['ret']
    out = osp.join(setup['tmp'], 'split_features')
    rc = tool.main([cfg_path, ckpt, '--split', 'test', '--out', out, '--save-sim',
                    '--num-workers', '0', '--no-progress'])
    cap = capsys.readouterr()
    assert rc == 0, cap.out + cap.err
    with open(osp.join(setup['motion'], 'retrieval', 'test.json')) as f:
        ann = json.load(f)
    vids = sorted(ann)  # RetrievalVideoTextDataset keeps the JSON order; check both ways
    with open(osp.join(out, 'videos.txt')) as f:
        listed = [osp.basename(p) for p in f.read().splitlines()]
    assert sorted(listed) == vids
    captions = [c for v in listed for c in ann[v]]
    with open(osp.join(out, 'texts.txt')) as f:
        assert f.read().splitlines() == captions
    t2v = np.load(osp.join(out, 'text_to_video.npy'))
    assert t2v.tolist() == [i for i, v in enumerate(listed) for _ in ann[v]]
    sim = np.load(osp.join(out, 'sim.npy'))
    ref_v = np.stack([ref_retrieval_video(cfg, model, osp.join(setup['motion'], 'videos', v))
                      for v in listed])
    ref_sim = ref_texts(model, captions, 32) @ ref_v.T
    np.testing.assert_allclose(sim, ref_sim, atol=5e-5)

    evaluator = load_tool('tools/analysis/eval_retrieval.py')
    assert evaluator.main(['--sim', osp.join(out, 'sim.npy'), '--text-to-video',
                           osp.join(out, 'text_to_video.npy')]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    t2v_ranks = [1 + sum(sim[i, j] >= sim[i, g] for j in range(sim.shape[1]) if j != g)
                 for i, g in enumerate(t2v)]
    assert metrics['t2v_R1'] == pytest.approx(100 * np.mean(np.array(t2v_ranks) == 1))
    assert metrics['t2v_MnR'] == pytest.approx(np.mean(t2v_ranks))
    # a rerun into the folder without --save-sim leaves no sim.npy of the earlier run
    assert tool.main([cfg_path, ckpt, '--split', 'test', '--out', out, '--num-workers', '0',
                      '--no-progress']) == 0
    capsys.readouterr()
    assert not osp.exists(osp.join(out, 'sim.npy'))
    assert not [f for f in os.listdir(out) if 'tmp' in f]


def test_extract_features_keeps_what_a_later_run_would_drop(setup, capsys, tmp_path):
    """A --texts-only run into a folder of finished video embeddings (e.g. the QB-Norm bank
    with --split train --skip-videos pointed at the test features) would delete them:
    refused unless --overwrite; an input list that is the folder's own videos.txt too."""
    import shutil
    tool = load_tool('tools/extract_features.py')
    cfg_path, cfg, model, ckpt = setup['ret']
    src = osp.join(setup['tmp'], 'split_features')       # finished: videos and texts
    if not osp.exists(osp.join(src, 'meta.json')):
        assert tool.main([cfg_path, ckpt, '--split', 'test', '--out', src,
                          '--num-workers', '0', '--no-progress']) == 0
    out = str(tmp_path / 'feats')
    shutil.copytree(src, out)
    before = np.load(osp.join(out, 'videos.npy'))
    common = ['--num-workers', '0', '--no-progress']
    assert tool.main([cfg_path, ckpt, '--texts', setup['texts'], '--out', out] + common) == 2
    err = capsys.readouterr().err
    assert 'video embeddings of an earlier run' in err and '--overwrite' in err
    assert np.array_equal(np.load(osp.join(out, 'videos.npy')), before)
    assert tool.main([cfg_path, ckpt, '--videos', osp.join(out, 'videos.txt'), '--out', out]
                     + common) == 2
    assert 'is the videos.txt this tool writes' in capsys.readouterr().err
    assert tool.main([cfg_path, ckpt, '--texts', setup['texts'], '--out', out, '--overwrite']
                     + common) == 0
    assert not osp.exists(osp.join(out, 'videos.npy'))      # replaced, as asked


def test_a_second_run_on_one_folder_is_refused(setup, tmp_path):
    """Two runs writing one feature folder (or one search cache) at once: the second is
    refused naming the lock, and nothing of the first is touched; the lock is released
    when the first run ends (also when it fails)."""
    from stan_mm.apis import FeatureFolderError, extract_features
    from test_concurrency_review_fixes import _held_by_another_process
    _, _, model, _ = setup['ret']
    out = tmp_path / 'locked'
    out.mkdir()
    with _held_by_another_process(out):
        with pytest.raises(FeatureFolderError, match=r'being written by another run'):
            extract_features(model, str(out), videos=[], texts=['a'], key='k',
                             progress=False, log=lambda m: None)
    res = extract_features(model, str(out), videos=[], texts=['a'], key='k',
                           progress=False, log=lambda m: None)     # free again
    assert res.complete and res.num_texts == 1
    assert not (out / '.lock').exists()                  # nothing written for the lock
    from stan_mm.apis.features import folder_lock
    with folder_lock(str(out)):                          # re-entrant within one process
        res = extract_features(model, str(out), videos=[], texts=['a'], key='k',
                               progress=False, log=lambda m: None)
    # a read-only folder (e.g. a complete cache on a read-only mount) can still be locked
    os.chmod(out, 0o555)
    try:
        with folder_lock(str(out)):
            pass
    finally:
        os.chmod(out, 0o755)


def test_split_items_reads_through_dataset_wrappers(setup):
    """--split train on a training set wrapped in SkipUnreadable (docs/robustness.md's
    advice): the wrapped dataset gives the videos and captions."""
    from mmengine.config import Config
    from stan_mm.apis.video import split_items
    cfg = Config.fromfile(setup['ret'][0])
    # the fixture's test split (its train split is the quickstart's data/motion)
    plain = split_items(cfg, 'test')
    cfg.test_dataloader.dataset = dict(type='SkipUnreadable',
                                       dataset=cfg.test_dataloader.dataset)
    wrapped = split_items(cfg, 'test')
    assert len(plain[0]) > 0 and [list(x) for x in wrapped] == [list(x) for x in plain]


def test_extract_features_with_a_recognition_config(setup, capsys):
    """Recognizer: views embedded by the backbone, each L2-normalized, averaged and
    normalized again; texts through the text head's tower (no prompt template)."""
    tool = load_tool('tools/extract_features.py')
    cfg_path, cfg, model, ckpt = setup['rec']
    out = osp.join(setup['tmp'], 'rec_features')
    listing = osp.join(setup['tmp'], 'wide_list.txt')
    with open(listing, 'w') as f:
        f.write('wide.mp4\n')
    rc = tool.main([cfg_path, ckpt, '--videos', listing, '--texts',
                    setup['texts'], '--views', '1x3', '--out', out, '--num-workers', '0',
                    '--no-progress'])
    cap = capsys.readouterr()
    assert rc == 0, cap.out + cap.err
    with open(osp.join(out, 'videos.txt')) as f:
        assert f.read().splitlines() == ['wide.mp4']
    videos = np.load(osp.join(out, 'videos.npy'))
    assert videos.shape == (1, 64)
    pipe = ref_pipeline(cfg, replace={'CenterCrop': dict(type='ThreeCrop')})
    imgs = pipe(dict(filename=setup['wide'], start_index=0, modality='RGB'))['imgs']
    views = normalize_pixels(torch.from_numpy(imgs), 1)       # [3, C, T, H, W]
    with torch.no_grad():
        per_view = F.normalize(model.backbone(views), dim=-1)  # [3, E]
        ref_v = F.normalize(per_view.mean(0), dim=0).numpy()
        enc = model.cls_head.text_encoder  # its full context length (32 here)
        ref_t = F.normalize(enc(tokenize(QUERIES, enc.context_length)),
                            dim=-1).numpy()
    np.testing.assert_allclose(videos[0], ref_v, atol=2e-5)
    np.testing.assert_allclose(np.load(osp.join(out, 'texts.npy')), ref_t, atol=2e-5)


# ------------------------------------------------------------------ search
def test_search_ranks_like_numpy_caches_and_writes_html(setup, capsys):
    cfg_path, cfg, model, ckpt = setup['ret']
    run = ok(setup['runs']['search'])
    assert '6 videos: 0 already embedded (reused), 6 to embed' in run['out']
    caches = glob.glob(osp.join(setup['gallery'], '.stan_mm_cache', '*', 'videos.npy'))
    assert len(caches) == 1
    gallery_emb = np.load(caches[0])
    with open(osp.join(osp.dirname(caches[0]), 'videos.txt')) as f:
        names = f.read().splitlines()
    assert names == sorted(osp.basename(v) for v in setup['videos'])
    ref_v = np.stack([ref_retrieval_video(cfg, model, osp.join(setup['gallery'], n))
                      for n in names])
    np.testing.assert_allclose(gallery_emb, ref_v, atol=2e-5)

    ref_sim = ref_texts(model, QUERIES, 32) @ ref_v.T
    rows = parse_table(run['out'])
    assert len(rows) == 2 * 3
    for q in range(2):
        order = stable_order(ref_sim[q])[:3]
        got = rows[3 * q:3 * q + 3]
        assert [r[0] for r in got] == [1, 2, 3]
        assert [r[2] for r in got] == [names[i] for i in order]
        np.testing.assert_allclose([r[1] for r in got], ref_sim[q, order], atol=6e-5)
    sim = np.load(setup['sim'])
    np.testing.assert_allclose(sim, ref_sim, atol=5e-5)
    with open(setup['sim'][:-4] + '.videos.txt') as f:
        assert [osp.basename(p) for p in f.read().splitlines()] == names

    # HTML: one table per query, 4 decodable thumbnails per result
    page = open(setup['html'], encoding='utf-8').read()
    images = re.findall(r'<img alt="frame" src="data:image/jpeg;base64,([^"]+)"', page)
    assert len(images) == 2 * 3 * 4
    import cv2
    thumb = cv2.imdecode(np.frombuffer(base64.b64decode(images[0]), np.uint8),
                         cv2.IMREAD_COLOR)
    assert thumb is not None and thumb.shape[0] == 96
    assert all(q in page for q in QUERIES)

    # second search: everything from the cache; a new video: only it is embedded
    tool = load_tool('tools/demo/search.py')
    assert tool.main(setup['search_args']) == 0
    assert '6 videos: all already embedded' in capsys.readouterr().out
    write_video(osp.join(setup['gallery'], 'zz_new.mp4'), size=(32, 32), seed=5)
    assert tool.main(setup['search_args']) == 0
    out = capsys.readouterr().out
    assert '7 videos: 6 already embedded (reused), 1 to embed' in out
    # an unreadable video is tried once: later searches reuse the cache (no rewrite of
    # videos.npy) until the file changes
    broken = osp.join(setup['gallery'], 'zz_broken.mp4')
    open(broken, 'wb').close()
    try:
        assert tool.main(setup['search_args']) == 0
        out = capsys.readouterr().out
        assert '8 videos: 7 already embedded (reused), 1 to embed' in out
        assert 'zz_broken.mp4' in out
        cache = glob.glob(osp.join(setup['gallery'], '.stan_mm_cache', '*', 'videos.npy'))[0]
        written = os.stat(cache).st_mtime_ns
        assert tool.main(setup['search_args']) == 0
        out = capsys.readouterr().out
        assert ('8 videos: all already embedded' in out
                and '1 unreadable, unchanged since they failed (not retried)' in out)
        assert os.stat(cache).st_mtime_ns == written
        with open(broken, 'wb') as f:                      # changed: tried again
            f.write(b'not a video')
        assert tool.main(setup['search_args']) == 0
        assert '8 videos: 7 already embedded (reused), 1 to embed' in capsys.readouterr().out
    finally:
        os.remove(broken)


# ------------------------------------------------------------------ recognize
def test_recognize_zero_shot_scores_match_the_model(setup):
    cfg_path, cfg, model, ckpt = setup['rec']
    run = ok(setup['runs']['recognize'])
    rows = parse_table(run['out'])
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5]

    # reference: the same weights with the user's class list, three crops, softmax per
    # view, mean over views
    zs_cfg = Config.fromfile(cfg_path)
    zs_cfg.model.cls_head.classnames = CLASSNAMES
    zs = MODELS.build(zs_cfg.model)
    zs.load_state_dict(model.state_dict())
    zs.eval()
    pipe = ref_pipeline(zs_cfg, replace={'CenterCrop': dict(type='ThreeCrop')})
    imgs = pipe(dict(filename=setup['wide'], start_index=0, modality='RGB'))['imgs']
    views = normalize_pixels(torch.from_numpy(imgs), 1)       # [3, C, T, H, W]
    assert views.shape[0] == 3 and not torch.equal(views[0], views[1])
    with torch.no_grad():
        probs = torch.stack([torch.softmax(zs.cls_head(zs.backbone(v[None]))[0], 0)
                             for v in views]).mean(0).numpy()
    order = stable_order(probs)[:5]
    assert [r[2] for r in rows] == [CLASSNAMES[i] for i in order]
    np.testing.assert_allclose([r[1] for r in rows], probs[order], atol=6e-5)


def test_recognize_with_a_retrieval_model_and_a_classnames_file(setup, capsys):
    cfg_path, cfg, model, ckpt = setup['ret']
    names_file = osp.join(setup['tmp'], 'classnames.txt')
    with open(names_file, 'w') as f:
        f.write('\n'.join(CLASSNAMES[:4]) + '\n')
    tool = load_tool('tools/demo/recognize.py')
    video = setup['videos'][0]
    assert tool.main([cfg_path, ckpt, video, '--classnames', names_file]) == 0
    rows = parse_table(capsys.readouterr().out)
    assert len(rows) == 4  # top-5 of four classes
    v = ref_retrieval_video(cfg, model, video)
    t = ref_texts(model, [f'a video of {c}.' for c in CLASSNAMES[:4]], 32)
    logits = torch.from_numpy(t @ v) / model.temperature
    probs = torch.softmax(logits.double(), 0).numpy()
    order = stable_order(probs)
    assert [r[2] for r in rows] == [CLASSNAMES[i] for i in order]
    np.testing.assert_allclose([r[1] for r in rows], probs[order], atol=6e-5)


def test_recognize_leaves_the_retrieval_models_text_tower_as_it_was(setup):
    """recognize() builds a temporary text classifier on the retrieval model's own text
    tower; the caller's model keeps its trainable flags and modes."""
    from stan_mm.apis.inference import init_model
    from stan_mm.apis.recognition import recognize
    cfg_path, _, _, ckpt = setup['ret']
    model = init_model(cfg_path, ckpt, device='cpu')
    tower = model.text_backbone
    tower.train().requires_grad_(True)
    before = [p.requires_grad for p in tower.parameters()]
    names, scores = recognize(model, setup['videos'][0], classnames=CLASSNAMES[:3])
    assert len(names) == 3 and abs(scores.sum() - 1) < 1e-9
    assert [p.requires_grad for p in tower.parameters()] == before and all(before)
    assert all(m.training for m in tower.modules())


def test_search_names_an_unreadable_queries_file(tmp_path, capsys):
    tool = load_tool('tools/demo/search.py')
    with pytest.raises(SystemExit) as info:
        tool.parse_args(['CFG', 'CKPT', '--gallery', str(tmp_path),
                         '--queries', str(tmp_path / 'nope.txt')])
    assert info.value.code == 2
    assert "--queries" in capsys.readouterr().err


@pytest.mark.parametrize('tool_name,how', [('search', 'SIGINT'), ('search', 'SIGTERM'),
                                           ('extract_features', 'SIGTERM')])
def test_an_interrupted_tool_keeps_what_it_embedded(setup, capsys, tmp_path, monkeypatch,
                                                   tool_name, how):
    """Ctrl-C, or SIGTERM (Slurm preemption, kill: both tools turn it into an interrupt with
    one shared handler) in the second batch: the first batch is saved, one line says so,
    exit status 130, SIGTERM's handler is restored, and the same command continues."""
    import signal
    import time
    from stan_mm.apis import embed as embed_mod
    cfg_path, _, _, ckpt = setup['ret']
    videos = copy_videos(setup, tmp_path / 'videos', 6)
    common = ['--batch-size', '2', '--num-workers', '0', '--no-progress']
    if tool_name == 'search':
        tool = load_tool('tools/demo/search.py')
        args = [cfg_path, ckpt, '--gallery', videos, '--query', QUERIES[0]] + common
        saved_in = osp.join(videos, '.stan_mm_cache')
        shards = osp.join(saved_in, '*', '.partial', 'shard-*.npz')
    else:
        tool = load_tool('tools/extract_features.py')
        out = str(tmp_path / 'feats')
        args = [cfg_path, ckpt, '--videos', videos, '--out', out] + common
        saved_in = osp.join(out, '.partial')
        shards = osp.join(saved_in, 'shard-*.npz')
    real, calls, unhandled = embed_mod.embed_video_batch, [], []

    def interrupted(model, samples):
        calls.append(len(samples))
        if len(calls) == 2:
            if how == 'SIGINT':
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(2)                       # the tool's handler raises in here
        return real(model, samples)

    def not_the_tools(signum, frame):           # SIGTERM without the tool's handler:
        unhandled.append(signum)                # recorded (not the end of pytest)

    previous = signal.signal(signal.SIGTERM, not_the_tools)
    try:
        monkeypatch.setattr(embed_mod, 'embed_video_batch', interrupted)
        rc = tool.main(args)
        restored = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
    monkeypatch.undo()
    cap = capsys.readouterr()
    assert rc == 130 and not unhandled and 'Traceback' not in cap.err, cap.err
    assert restored is not_the_tools
    said = [ln for ln in cap.err.splitlines() if 'interrupted' in ln]
    assert len(said) == 1 and saved_in in said[0], cap.err
    assert 'embedded so far are saved' in said[0] and 'rerun the same command' in said[0]
    saved = glob.glob(shards)
    assert len(saved) == 1 and len(np.load(saved[0])['keys']) == 2
    assert tool.main(args) == 0
    assert '6 videos: 2 already embedded (reused), 4 to embed' in capsys.readouterr().out


# ------------------------------------------------------------------ clip_to_mm
def test_clip_to_mm_round_trip(setup, capsys):
    from stan_mm.models.clip import build_clip
    run = ok(setup['runs']['convert'])
    clip = setup['clip']
    total = sum(p.numel() for p in clip.parameters())
    assert 'openai-torchscript layout, stored as float16' in run['out']
    assert 'QuickGELU' in run['out'] and f'total {total / 1e6:.2f}M' in run['out']
    saved = torch.load(setup['clip_out'], map_location='cpu', weights_only=True)
    cfg = saved['meta']['clip_cfg']
    assert cfg['quick_gelu'] is True and cfg['vision_cfg']['head_width'] == 64
    assert all(v.dtype == torch.float32 for v in saved['state_dict'].values()
               if v.is_floating_point())

    # loads with build_clip, architecture from the file; outputs = the fp16-stored original
    loaded = build_clip(pretrained=setup['clip_out']).eval()
    ref = rounded_fp16(clip)
    images = torch.randn(2, 3, 32, 32)
    tokens = tokenize(QUERIES, 77)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(images), ref.encode_image(images),
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loaded.encode_text(tokens), ref.encode_text(tokens),
                                   rtol=1e-5, atol=1e-5)

    # a GELU open_clip file whose heads cannot be inferred (width 32): --arch as JSON,
    # written as an open_clip folder that build_clip then reads with nothing inferred
    gelu = tiny_clip(seed=4, quick_gelu=False)
    src = osp.join(setup['tmp'], 'gelu.safetensors')
    save_open_clip(gelu, src)
    out = osp.join(setup['tmp'], 'gelu_mm')
    tool = load_tool('tools/convert/clip_to_mm.py')
    assert tool.main([src, out]) == 2  # heads cannot be inferred: a clear error
    assert 'attention heads' in capsys.readouterr().err
    from stan_mm.testing import tiny_clip_cfg
    assert tool.main([src, out, '--arch', json.dumps(tiny_clip_cfg(quick_gelu=False))]) == 0
    assert 'GELU' in capsys.readouterr().out
    loaded = build_clip(pretrained=out).eval()
    assert loaded.clip_cfg['quick_gelu'] is False
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(images), gelu.encode_image(images))
        torch.testing.assert_close(loaded.encode_text(tokens), gelu.encode_text(tokens))
    # an arch that does not state the activation (open_clip: GELU): the warning names
    # the activation that was used and the option for the other one
    arch = {k: v for k, v in tiny_clip_cfg(quick_gelu=False).items() if k != 'quick_gelu'}
    assert tool.main([src, out + '2', '--arch', json.dumps(arch)]) == 0
    printed = capsys.readouterr().out
    assert 'GELU was used' in printed and '--quick-gelu' in printed
    assert 'QuickGELU (OpenAI CLIP) was assumed' not in printed
    # the same as a single file: its meta.clip_cfg states the activation and the heads,
    # so arch=None rebuilds the GELU model (no 'use as' hint, no QuickGELU default)
    single = out + '.pth'
    assert tool.main([src, single, '--arch', json.dumps(tiny_clip_cfg(quick_gelu=False))]) == 0
    printed = capsys.readouterr().out
    use_as = [ln for ln in printed.splitlines() if ln.startswith('use as')]
    assert use_as and 'arch=' not in use_as[0]
    assert '(CLIPSTAN / STANRetriever / CLIPTextEncoder; not load_from)' in use_as[0]
    assert 'WARNING' not in printed                           # CLIP's BPE vocabulary
    loaded = build_clip(pretrained=single).eval()
    assert loaded.clip_cfg['quick_gelu'] is False
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(images), gelu.encode_image(images))


def test_clip_to_mm_refuses_a_model_checkpoint(setup, tmp_path, capsys):
    """A trained stan-mm model given where CLIP weights belong (the converter, or
    pretrained=): one line naming the file and what to do with it instead."""
    from stan_mm.models.clip import build_clip
    _, _, model, _ = setup['ret']
    path = str(tmp_path / 'retrieval.pth')
    torch.save({'state_dict': model.state_dict()}, path)
    tool = load_tool('tools/convert/clip_to_mm.py')
    assert tool.main([path, str(tmp_path / 'x.pth')]) == 2
    err = capsys.readouterr().err
    assert err.startswith('clip_to_mm: error: ') and not err.startswith('clip_to_mm: error: "')
    assert 'retrieval.pth: this is a model checkpoint' in err and 'load_from' in err
    with pytest.raises(ValueError, match='a model checkpoint .stan-mm or MMAction2'):
        build_clip(pretrained=path)


def test_clip_to_mm_names_a_text_tower_of_another_tokenizer(tmp_path, capsys):
    """A text vocabulary that is not CLIP BPE's (a CLIP trained with another tokenizer):
    the converter still writes the checkpoint, but warns and says it serves CLIPSTAN
    only, since the text users refuse it."""
    from stan_mm.models.clip import CLIPArchMismatchError, CLIPTextEncoder
    src = tiny_clip(seed=21, vision_width=128, vision_head_width=64, text_width=64,
                    text_heads=1, text_vocab_size=1000)
    path, out = str(tmp_path / 'xlmv_clip.pt'), str(tmp_path / 'mm.pth')
    save_open_clip(src, path)
    tool = load_tool('tools/convert/clip_to_mm.py')
    assert tool.main([path, out, '--quick-gelu']) == 0
    printed = capsys.readouterr().out
    use_as = [ln for ln in printed.splitlines() if ln.startswith('use as')]
    assert use_as and '(CLIPSTAN only' in use_as[0], printed
    assert 'STANRetriever' not in use_as[0] and 'CLIPTextEncoder' not in use_as[0], printed
    warning = [ln for ln in printed.splitlines() if ln.startswith('WARNING:')]
    assert len(warning) == 1 and 'vocabulary of 1,000 tokens' in warning[0], printed
    assert '49,408' in warning[0] and 'CLIPTextEncoder' in warning[0], printed
    # what the report says: the text users refuse the written file, CLIPSTAN takes it
    with pytest.raises(CLIPArchMismatchError, match='vocabulary of 1,000 tokens'):
        CLIPTextEncoder(pretrained=out)
    backbone = MODELS.build(dict(type='CLIPSTAN', arch=None, pretrained=out, depth=0))
    torch.testing.assert_close(backbone.visual.conv1.weight, src.visual.conv1.weight)


def test_text_embeddings_follow_the_pipelines_truncation_rule(setup):
    """embed_texts tokenizes as the config's test pipeline does, truncation rule included
    (truncate='slice' for the public reproduction's checkpoints)."""
    import copy
    from stan_mm.apis import embed_texts
    from stan_mm.apis.video import dataset_cfg
    from stan_mm.datasets.transforms import tokenize
    _, cfg, model, _ = setup['ret']
    long = ' '.join(['a man walks his dog through the park'] * 8)
    tok = [t for t in dataset_cfg(cfg.test_dataloader)['pipeline']
           if t['type'] == 'CLIPBPETokenize'][0]
    length = tok['context_length']
    original = model.cfg
    try:
        for rule in ('eot', 'slice'):
            model.cfg = copy.deepcopy(original)
            for t in dataset_cfg(model.cfg.test_dataloader)['pipeline']:
                if t['type'] == 'CLIPBPETokenize':
                    t['truncate'] = rule
            with torch.no_grad():
                want = torch.nn.functional.normalize(
                    model.encode_text(tokenize([long], length, rule)).float(), dim=-1)
            torch.testing.assert_close(embed_texts(model, [long]), want)
    finally:
        model.cfg = original


def test_a_damaged_shard_is_dropped_and_its_videos_redone(tmp_path):
    from stan_mm.apis.features import ShardStore
    store = ShardStore(str(tmp_path))
    store.start('k')
    store.write(['a', 'b'], np.ones((2, 3)))
    store.write(['c'], np.full((1, 3), 2.0))
    shards = sorted(glob.glob(osp.join(store.dir, 'shard-*.npz')))
    open(shards[1], 'wb').close()                 # a 0-byte shard left by a crash
    done = store.read()
    assert sorted(done) == ['a', 'b'] and not osp.exists(shards[1])


def test_galleries_sharing_a_cache_folder_keep_their_own_embeddings(tmp_path):
    from stan_mm.apis.search import gallery_cache_dir
    a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
    assert gallery_cache_dir(a, 'k') == osp.join(a, '.stan_mm_cache', 'k')
    shared = [gallery_cache_dir(g, 'k', str(tmp_path / 'cache')) for g in (a, b, a + '/')]
    assert shared[0] != shared[1] and shared[0] == shared[2]
    assert all(osp.basename(d).startswith('k-') for d in shared)


def test_cache_key_follows_the_model_actually_built(tmp_path):
    """init_model builds without a missing CLIP file: when the arch name does not state the
    activation, the model may differ from the one built with the file, and the cache key of
    search / extract_features must differ; otherwise (an OpenAI arch spelling, or the file
    present) the key stays the config's, whatever the working directory."""
    from mmengine.config import Config
    from stan_mm.apis.features import model_key
    from stan_mm.apis.inference import drop_missing_clip_weights
    cfg = Config(dict(model=dict(type='STANRetriever', arch='ViT-B-16', pretrained='c.pt')))
    base = model_key(cfg, 'ckpt|1|2', None)
    assert model_key(cfg, 'ckpt|1|2', None, None) == base
    assert model_key(cfg, 'ckpt|1|2', None, 'activation assumed GELU') != base
    for arch, expect in (('ViT-B-16', ['model']), ('ViT-B/16', []),
                         ('ViT-B-16-quickgelu', [])):
        guessed = []
        drop_missing_clip_weights(dict(type='STANRetriever', arch=arch,
                                       pretrained=str(tmp_path / 'missing.pt')), guessed)
        assert [g.split('.')[0] for g in guessed] == expect, arch


# ------------------------------------------------------------------ errors
def test_clear_errors(setup, tmp_path):
    from stan_mm.apis import ModelLoadError, init_model, list_videos
    from stan_mm.apis.recognition import class_labels
    cfg_path, cfg, model, ckpt = setup['ret']
    partial = {k: v for k, v in model.state_dict().items() if 'text_backbone' not in k}
    bad = str(tmp_path / 'partial.pth')
    torch.save({'state_dict': partial}, bad)
    with pytest.raises(ModelLoadError, match='model weights are missing'):
        init_model(cfg_path, bad)
    with pytest.raises(ValueError, match=r"--device 'gpu': not a device name"):
        init_model(cfg_path, bad, device='gpu')             # before anything is built
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='no usable CUDA device'):
            init_model(cfg_path, bad, device='cuda')
    with pytest.raises(FileNotFoundError, match='no videos found'):
        list_videos(str(tmp_path))
    # names videos.txt cannot hold are refused before any embedding; lists: linear time,
    # a BOM is not part of the first path
    odd = tmp_path / 'odd'
    odd.mkdir()
    (odd / 'fine.mp4').write_bytes(b'x')
    (odd / 'two\nlines.mp4').write_bytes(b'x')
    with pytest.raises(ValueError, match=r"1 video file name.*'two\\nlines.mp4'"):
        list_videos(str(odd))
    listing = tmp_path / 'list.txt'
    listing.write_text('\ufeffa.mp4\n' + ''.join(f'v{i}.mp4\n' for i in range(30000))
                       + 'v7.mp4\n', encoding='utf-8')
    with pytest.raises(ValueError, match=r"listed more than once: \['v7.mp4'\]"):
        list_videos(str(listing))
    listing.write_text('\ufeffa.mp4\nb.mp4\n', encoding='utf-8')
    assert list_videos(str(listing))[1] == ['a.mp4', 'b.mp4']
    from stan_mm.apis.video import check_views
    with pytest.raises(ValueError, match='one view per video'):
        check_views('retriever', '1x3')
    check_views('recognizer', '4x3')
    with pytest.raises(ValueError, match='CLIPSxCROPS'):
        check_views('recognizer', '2x2')
    linear = init_model(RECOGNITION_BASE)  # I3DHead with 10 classes
    with pytest.raises(ValueError, match='8 classes but 2 class names'):
        class_labels(linear, ['a', 'b'])
    # search refuses a model without a text tower before embedding the gallery
    from stan_mm.apis.search import search_gallery
    gallery = tmp_path / 'gallery'
    gallery.mkdir()
    os.symlink(setup['videos'][0], gallery / 'a.mp4')
    with pytest.raises(ValueError, match='has no text tower'):
        search_gallery(linear, str(gallery), ['a query'], key='k', progress=False,
                       num_workers=0, log=lambda m: None)
    assert not (gallery / '.stan_mm_cache').exists()      # nothing was embedded
