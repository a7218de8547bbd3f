"""Tests of the synthetic motion benchmark (stan_mm/datasets/synthetic.py and its CLI).

The generated files are decoded with decord and read through MMAction2's own datasets and
transforms; motion directions are measured from the rendered pixels, independently of the
trajectory parameters that produced them.
"""
import csv
import filecmp
import importlib.util
import json
import os
import os.path as osp
import warnings

import cv2
import decord
import numpy as np
import pytest

from stan_mm.datasets import synthetic as syn

TINY = dict(num_train=8, num_val=4, num_test=4, num_frames=8, size=32, captions_per_video=3,
            seed=3, progress=False)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp('synthetic') / 'motion'
    meta = syn.generate_motion_dataset(str(out), **TINY)
    return str(out), meta


def _decode(path):
    vr = decord.VideoReader(path)
    return vr.get_batch(list(range(len(vr)))).asnumpy()


def _read_list(path):
    with open(path) as f:
        return [line.split() for line in f.read().splitlines()]


def _records(root):
    with open(osp.join(root, 'annotations', 'videos.json')) as f:
        return json.load(f)


# --------------------------------------------------------------------------- real videos
def test_videos_are_real_mp4_decoded_by_decord(tiny):
    root, meta = tiny
    records = _records(root)
    assert len(records) == 16
    errors = []
    for rec in records:
        vr = decord.VideoReader(osp.join(root, 'videos', rec['filename']))
        assert len(vr) == TINY['num_frames']
        frames = vr.get_batch(list(range(len(vr)))).asnumpy()
        assert frames.shape == (TINY['num_frames'], TINY['size'], TINY['size'], 3)
        assert frames.dtype == np.uint8
        raw = syn.render_video(rec, TINY['size']).astype(np.float32)
        errors.append(np.abs(frames - raw).mean())
        # codec error is far below the difference to another video
        other = syn.render_video(records[(records.index(rec) + 3) % 16], TINY['size'])
        assert np.abs(frames - other.astype(np.float32)).mean() > 2 * errors[-1]
    assert max(errors) < 8.0, errors  # mp4v at 32x32 with 4:2:0 chroma: ~3-5 grey levels
    assert meta['video'] == dict(num_frames=8, height=32, width=32, fps=8.0, fourcc='mp4v',
                                 container='mp4')


# --------------------------------------------------------------------------- annotations
def test_annotation_files_parse_and_reference_existing_videos(tiny):
    root, meta = tiny
    names = syn.class_names(syn.DEFAULT_PAIRS)
    with open(osp.join(root, 'classnames.txt')) as f:
        assert f.read().splitlines() == names == meta['classes']
    assert meta['num_classes'] == 10 and meta['chance_level'] == pytest.approx(0.1)
    assert meta['partner'] == [1, 0, 3, 2, 5, 4, 7, 6, 9, 8]
    records = {r['filename']: r for r in _records(root)}
    all_files = []
    for split in syn.SPLITS:
        rows = _read_list(osp.join(root, f'{split}.txt'))
        assert len(rows) == TINY[f'num_{split}'] == meta['counts'][split]['videos']
        per_class = [0] * 10
        for filename, label in rows:
            assert osp.isfile(osp.join(root, 'videos', filename)), filename
            assert 0 <= int(label) < 10
            assert records[filename]['label'] == int(label)
            assert records[filename]['split'] == split
            per_class[int(label)] += 1
        assert per_class == meta['counts'][split]['per_class']
        all_files += [r[0] for r in rows]
        # VideoTextDataset JSON: {"video.mp4": [captions]}
        with open(osp.join(root, 'retrieval', f'{split}.json')) as f:
            texts = json.load(f)
        assert list(texts) == [r[0] for r in rows]
        for filename, caps in texts.items():
            assert len(caps) == len(set(caps)) == TINY['captions_per_video']
            assert all(isinstance(c, str) and c for c in caps)
    assert len(set(all_files)) == 16 == len(os.listdir(osp.join(root, 'videos')))


def test_msrvtt_layout(tiny):
    root, _ = tiny
    records = _records(root)
    by_id = {r['video_id']: r for r in records}
    with open(osp.join(root, 'msrvtt', 'MSRVTT_data.json')) as f:
        data = json.load(f)
    assert {v['video_id'] for v in data['videos']} == set(by_id)
    assert {v['split'] for v in data['videos']} == {'train', 'validate', 'test'}
    for vid, rec in by_id.items():
        caps = [s['caption'] for s in data['sentences'] if s['video_id'] == vid]
        assert caps == rec['captions']
        assert osp.isfile(osp.join(root, 'videos', f'{vid}.mp4'))  # MSR-VTT: <video_id>.mp4
    with open(osp.join(root, 'msrvtt', 'MSRVTT_train.9k.csv')) as f:
        train = list(csv.DictReader(f))
    assert [r['video_id'] for r in train] == [r['video_id'] for r in records
                                              if r['split'] == 'train']
    for split, name in (('test', 'MSRVTT_JSFUSION_test.csv'), ('val', 'MSRVTT_JSFUSION_val.csv')):
        with open(osp.join(root, 'msrvtt', name)) as f:
            reader = csv.DictReader(f)
            rows = list(reader)
        assert reader.fieldnames == ['key', 'vid_key', 'video_id', 'sentence']
        assert [r['video_id'] for r in rows] == [r['video_id'] for r in records
                                                 if r['split'] == split]
        for row in rows:
            assert row['sentence'] in by_id[row['video_id']]['captions']
            assert row['vid_key'] == 'msr' + row['video_id'][len('video'):]


def test_captions_name_colour_shape_and_direction(tiny):
    root, _ = tiny
    for rec in _records(root):
        pair = syn.MOTION_PAIRS[rec['pair']]
        own = pair.backward_phrases if rec['reversed'] else pair.forward_phrases
        partner = pair.forward_phrases if rec['reversed'] else pair.backward_phrases
        for cap in rec['captions']:
            assert rec['colour'] in cap and rec['shape'] in cap
            assert any(cap.endswith(p) or f' {p} ' in cap for p in own), cap
            assert not any(cap.endswith(p) or f' {p} ' in cap for p in partner), cap


# --------------------------------------------------------------------------- pair reversal
def test_twins_are_the_same_frames_reversed(tiny):
    root, _ = tiny
    records = _records(root)
    groups = {}
    for rec in records:
        groups.setdefault((rec['split'], rec['group']), []).append(rec)
    assert all(len(g) == 2 for g in groups.values())
    for fwd, bwd in groups.values():
        assert (fwd['label'] ^ 1) == bwd['label'] and not fwd['reversed'] and bwd['reversed']
        # array level: exactly the reversed frames
        a, b = syn.render_video(fwd, 32), syn.render_video(bwd, 32)
        np.testing.assert_array_equal(a, b[::-1])
        assert not np.array_equal(a, b)  # the motion is visible
        # decoded level: equal up to codec error; not equal in the playing order
        da = _decode(osp.join(root, 'videos', fwd['filename'])).astype(np.float32)
        db = _decode(osp.join(root, 'videos', bwd['filename'])).astype(np.float32)
        reversed_err = np.abs(da - db[::-1]).mean()
        assert reversed_err < 8.0
        assert np.abs(da - db).mean() > reversed_err
        # twin captions differ only in the motion phrase
        for ca, cb in zip(fwd['captions'], bwd['captions']):
            pa, pb = syn.MOTION_PAIRS[fwd['pair']].forward_phrases, \
                syn.MOTION_PAIRS[fwd['pair']].backward_phrases
            i = next(i for i, p in enumerate(pa) if p in ca)
            assert ca.replace(pa[i], pb[i]) == cb


def test_without_twins_content_does_not_depend_on_direction():
    """twins=False: per class, the canonical trajectories have the same distribution."""
    specs = syn.make_video_specs('train', 1200, seed=1, pairs=['horizontal', 'scale'],
                                 num_frames=4, captions_per_video=1, twins=False)
    assert len({s['group'] for s in specs}) == 1200
    for pair_labels in ((0, 1), (2, 3)):
        stats = []
        for label in pair_labels:
            s = [r for r in specs if r['label'] == label]
            assert len(s) == 300  # balanced
            feats = np.array([[r['trajectory']['x'][0], r['trajectory']['y'][0],
                               r['trajectory']['radius'][0], r['trajectory']['radius'][-1]]
                              for r in s])
            stats.append((feats.mean(0), feats.std(0) / np.sqrt(len(s))))
        (m0, se0), (m1, se1) = stats
        assert np.all(np.abs(m0 - m1) < 4.5 * np.sqrt(se0**2 + se1**2 + 1e-12))
    # and rendering a backward record with reversed=False gives the forward class's video
    rec = next(r for r in specs if r['label'] == 1)
    fwd = dict(rec, reversed=False)
    np.testing.assert_array_equal(syn.render_video(rec, 32), syn.render_video(fwd, 32)[::-1])


# --------------------------------------------------------------------------- semantics
def _foreground(rec, size):
    """Soft mask [T, H, W] of the shape: distance of each pixel to the static background."""
    video = syn.render_video(rec, size).astype(np.float32)
    background = syn.render_background(rec['background'], size)
    dist = np.abs(video - background).sum(-1)
    mask = np.where(dist > 12.0, np.clip(dist / 60.0, 0, 1), 0.0)  # ignore uint8 rounding
    return mask.astype(np.float32), video, background


def _centroid(mask):
    ys, xs = np.nonzero(mask > 0.5)
    return float(xs.mean()), float(ys.mean())


@pytest.mark.parametrize('pair', list(syn.MOTION_PAIRS))
def test_classes_move_as_named(pair):
    size = 64
    specs = syn.make_video_specs('val', 6, seed=5, pairs=[pair], num_frames=8,
                                 captions_per_video=1)
    for rec in specs:
        mask, video, background = _foreground(rec, size)
        name = rec['class_name']
        if pair in ('horizontal', 'vertical'):
            axis = 0 if pair == 'horizontal' else 1
            c0, c1 = _centroid(mask[0])[axis], _centroid(mask[-1])[axis]
            decreasing = name.endswith('left') or name.endswith('up')
            assert (c0 - c1 if decreasing else c1 - c0) > 0.2 * size, (name, c0, c1)
        elif pair == 'scale':
            area = mask.sum((1, 2))
            growing = name.endswith('growing')
            assert (area[-1] / area[0] if growing else area[0] / area[-1]) > 3, (name, area)
        elif pair == 'fade':  # colour distance to the background inside the shape
            appearing = name == 'a shape appearing'  # (also a suffix of 'disappearing')
            visible, hidden = (-1, 0) if appearing else (0, -1)
            region = mask[visible] > 0.5
            dist = np.abs(video - background).sum(-1)
            assert dist[hidden][region].mean() < 3.0, name  # uint8 rounding only
            assert dist[visible][region].mean() > 60.0, name
            steps = np.diff([d[region].mean() for d in dist])
            assert np.all(steps >= -1.0 if appearing else steps <= 1.0), (name, steps)
        else:  # rotation: does frame t+1 look like frame t turned clockwise or anticlockwise?
            err = {}
            for sign in (-1.0, 1.0):  # OpenCV: positive angle = anticlockwise on screen
                err[sign] = sum(
                    np.abs(cv2.warpAffine(a, cv2.getRotationMatrix2D(_centroid(a), 5 * sign,
                                                                     1.0), (size, size)) -
                           b).sum() for a, b in zip(mask[:-1], mask[1:]))
            clockwise = name.endswith(' clockwise')
            better, worse = (err[-1], err[1]) if clockwise else (err[1], err[-1])
            assert better < 0.8 * worse, (name, err)


# --------------------------------------------------------------------------- determinism
def test_same_seed_same_dataset(tiny, tmp_path):
    root, _ = tiny
    again = str(tmp_path / 'again')
    syn.generate_motion_dataset(again, **TINY)
    names = ['meta.json', 'classnames.txt', 'train.txt', 'val.txt', 'test.txt',
             'annotations/videos.json', 'retrieval/train.json', 'retrieval/val.json',
             'retrieval/test.json', 'msrvtt/MSRVTT_data.json', 'msrvtt/MSRVTT_train.9k.csv',
             'msrvtt/MSRVTT_JSFUSION_test.csv', 'msrvtt/MSRVTT_JSFUSION_val.csv']
    for name in names:
        assert filecmp.cmp(osp.join(root, name), osp.join(again, name), shallow=False), name
    records = _records(root)
    for rec, rec2 in zip(records, _records(again)):
        np.testing.assert_array_equal(syn.render_video(rec, 32), syn.render_video(rec2, 32))
    for rec in records[:4]:
        np.testing.assert_array_equal(_decode(osp.join(root, 'videos', rec['filename'])),
                                      _decode(osp.join(again, 'videos', rec['filename'])))
    # records read back from JSON re-render exactly like freshly sampled specs
    fresh = syn.make_video_specs('train', 8, seed=3, num_frames=8, captions_per_video=3)
    assert fresh == [r for r in records if r['split'] == 'train']
    np.testing.assert_array_equal(syn.render_video(fresh[0], 32),
                                  syn.render_video(records[0], 32))
    # another seed gives other content
    other = syn.make_video_specs('train', 8, seed=4, num_frames=8, captions_per_video=3)
    assert [r['trajectory'] for r in other] != [r['trajectory'] for r in fresh]


def test_split_content_does_not_depend_on_other_splits():
    a = syn.make_video_specs('val', 4, seed=0, first_id=8)
    b = syn.make_video_specs('val', 4, seed=0, first_id=100)
    strip = [{k: v for k, v in r.items() if k not in ('video_id', 'filename')} for r in a]
    assert strip == [{k: v for k, v in r.items() if k not in ('video_id', 'filename')}
                     for r in b]
    assert syn.make_video_specs('test', 4, seed=0) != syn.make_video_specs('val', 4, seed=0)


# --------------------------------------------------------------------------- idempotence
def test_idempotent_overwrite_and_errors(tmp_path, monkeypatch):
    out = str(tmp_path / 'ds')
    small = dict(TINY, num_train=2, num_val=2, num_test=0)
    meta = syn.generate_motion_dataset(out, **small)
    stamp = os.stat(osp.join(out, 'meta.json')).st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError('must not write videos again')

    monkeypatch.setattr(syn, 'write_video', fail)
    assert syn.generate_motion_dataset(out, **small) == meta
    assert os.stat(osp.join(out, 'meta.json')).st_mtime_ns == stamp
    monkeypatch.undo()

    with pytest.raises(FileExistsError, match='overwrite'):
        syn.generate_motion_dataset(out, **dict(small, seed=9))
    meta9 = syn.generate_motion_dataset(out, **dict(small, seed=9), overwrite=True)
    assert meta9['params']['seed'] == 9 and syn.load_meta(out)['params']['seed'] == 9

    # a damaged dataset is not mistaken for a complete one
    os.remove(osp.join(out, 'videos', 'video0.mp4'))
    with pytest.raises(FileExistsError, match='missing'):
        syn.generate_motion_dataset(out, **dict(small, seed=9))

    foreign = tmp_path / 'foreign'
    foreign.mkdir()
    (foreign / 'x.txt').write_text('x')
    with pytest.raises(FileExistsError, match='not empty'):
        syn.generate_motion_dataset(str(foreign), **small)
    empty = tmp_path / 'empty'
    empty.mkdir()
    syn.generate_motion_dataset(str(empty), **small)
    assert osp.isfile(empty / 'meta.json')
    assert sorted(os.listdir(tmp_path)) == ['ds', 'empty', 'foreign']  # no temp leftovers


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    real, calls = syn.write_video, []

    def flaky(path, frames, fps=8.0):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(path, frames, fps)

    monkeypatch.setattr(syn, 'write_video', flaky)
    with pytest.raises(KeyboardInterrupt):
        syn.generate_motion_dataset(str(tmp_path / 'ds'), **TINY)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('kwargs, match', [
    (dict(size=33), 'even'), (dict(size=8), 'size'), (dict(pairs=['spin']), 'horizontal'),
    (dict(num_frames=1), 'num_frames'), (dict(captions_per_video=500), 'captions_per_video'),
    (dict(num_train=0, num_val=0, num_test=0), '> 0'), (dict(fps=0), 'fps'),
    (dict(pairs=['fade', 'fade']), 'duplicates'),
])
def test_bad_parameters_are_named(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        syn.generate_motion_dataset(str(tmp_path / 'x'), **dict(TINY, **kwargs))
    assert not osp.exists(tmp_path / 'x')


def test_write_video_rejects_bad_frames(tmp_path):
    with pytest.raises(ValueError, match=r'\[T, H, W, 3\]'):
        syn.write_video(str(tmp_path / 'a.mp4'), np.zeros((4, 8, 8), np.uint8))
    for shape in ((2, 225, 224, 3), (2, 224, 223, 3)):   # mp4v would drop a row/column
        with pytest.raises(ValueError, match='must be even'):
            syn.write_video(str(tmp_path / 'odd.mp4'), np.zeros(shape, np.uint8))
        assert not (tmp_path / 'odd.mp4').exists()


def test_paired_direction_accuracy_by_hand():
    scores = np.array([[0.9, 0.1, 0.0, 0.0],    # label 0 vs 1: right
                       [0.9, 0.1, 0.0, 0.0],    # label 1 vs 0: wrong
                       [0.0, 0.0, 0.3, 0.3],    # label 2 vs 3: tie -> 0.5
                       [0.5, 0.0, 0.2, 0.1]])   # label 2 vs 3: right (class 0 irrelevant)
    assert syn.paired_direction_accuracy(scores, [0, 1, 2, 2]) == pytest.approx(2.5 / 4)
    with pytest.raises(ValueError, match='C even'):
        syn.paired_direction_accuracy(np.zeros((2, 3)), [0, 1])
    with pytest.raises(ValueError, match='labels'):
        syn.paired_direction_accuracy(np.zeros((2, 4)), [0, 4])


# --------------------------------------------------------------------------- MMAction2
def test_mmaction_video_dataset_pipeline(tiny):
    import stan_mm  # noqa: F401  (applies the stack fixes, registers everything)
    from mmaction.datasets import VideoDataset
    from mmengine.registry import DefaultScope
    root, _ = tiny
    pipeline = [
        dict(type='DecordInit'),
        dict(type='SampleFrames', clip_len=1, frame_interval=1, num_clips=8, test_mode=True),
        dict(type='DecordDecode'),
        dict(type='Resize', scale=(-1, 36)),
        dict(type='CenterCrop', crop_size=32),
        dict(type='FormatShape', input_format='NCTHW'),
        dict(type='PackActionInputs'),
    ]
    rows = _read_list(osp.join(root, 'test.txt'))
    with DefaultScope.overwrite_default_scope('mmaction'):  # as the runner sets it
        ds = VideoDataset(ann_file=osp.join(root, 'test.txt'), pipeline=pipeline,
                          data_prefix=dict(video=osp.join(root, 'videos')), test_mode=True)
    assert len(ds) == len(rows)
    for i in range(len(ds)):
        item = ds[i]
        assert tuple(item['inputs'].shape) == (8, 3, 1, 32, 32)  # NCTHW, N = clips
        assert int(item['data_samples'].gt_label) == int(rows[i][1])
    # 8 frames, 8 clips, test mode: every frame once, in order; compare with our decode
    frames = _decode(osp.join(root, 'videos', rows[0][0]))
    resized = np.stack([cv2.resize(f, (36, 36), interpolation=cv2.INTER_LINEAR)[2:34, 2:34]
                        for f in frames])
    got = ds[0]['inputs'].numpy()[:, :, 0].transpose(0, 2, 3, 1)  # [T, H, W, C]
    assert np.abs(got.astype(np.float32) - resized).mean() < 2.0


def test_mmaction_video_text_dataset(tiny):
    import stan_mm  # noqa: F401
    from mmaction.datasets import VideoTextDataset
    root, _ = tiny
    ds = VideoTextDataset(ann_file=osp.join(root, 'retrieval', 'test.json'), pipeline=[],
                          data_prefix=dict(video=osp.join(root, 'videos')), test_mode=True)
    assert len(ds) == TINY['num_test'] * TINY['captions_per_video']
    by_file = {osp.join(root, 'videos', r['filename']): r for r in _records(root)}
    for i in range(len(ds)):
        info = ds.get_data_info(i)
        assert info['text'] in by_file[info['filename']]['captions']


def test_project_msrvtt_reader_reads_the_layout(tiny):
    readers = pytest.importorskip('stan_mm.datasets.readers')
    root, _ = tiny
    msr = osp.join(root, 'msrvtt')
    records = _records(root)
    train = readers.read_msrvtt(osp.join(msr, 'MSRVTT_train.9k.csv'),
                                osp.join(msr, 'MSRVTT_data.json'))
    assert [(e.video_id, e.filename, e.captions) for e in train] == [
        (r['video_id'], r['filename'], r['captions']) for r in records if r['split'] == 'train']
    test = readers.read_msrvtt(osp.join(msr, 'MSRVTT_JSFUSION_test.csv'))
    assert [(e.video_id, e.captions) for e in test] == [
        (r['video_id'], r['captions'][:1]) for r in records if r['split'] == 'test']


# --------------------------------------------------------------------------- CLI
def test_cli(tmp_path, capsys):
    path = osp.join(osp.dirname(__file__), '..', 'tools', 'data', 'make_synthetic.py')
    spec = importlib.util.spec_from_file_location('make_synthetic', path)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = str(tmp_path / 'm')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        meta = cli.main(['--out', out, '--num-train', '4', '--num-val', '2', '--num-test',
                         '2', '--num-frames', '4', '--size', '16', '--pairs', 'rotation',
                         'fade', '--no-twins', '--seed', '7', '--quiet'])
    # decord 0.6.0 cannot decode 16-pixel-wide mp4v: the warning names the file where it
    # now is, not the temporary build folder
    undecodable = [str(w.message) for w in caught if 'decord cannot decode' in str(w.message)]
    try:
        decord.VideoReader(osp.join(out, 'videos', 'video0.mp4')).get_batch([0])
        readable = True
    except Exception:  # noqa: BLE001  (decord's copy bug at this width)
        readable = False
    assert len(undecodable) == (0 if readable else 1)
    for msg in undecodable:
        assert osp.join(out, 'videos', 'video0.mp4') in msg and '.tmp-' not in msg
    assert meta == syn.load_meta(out)
    assert meta['params'] == dict(num_train=4, num_val=2, num_test=2, num_frames=4, size=16,
                                  fps=8.0, pairs=['rotation', 'fade'], captions_per_video=5,
                                  twins=False, seed=7)
    assert meta['classes'] == ['a shape rotating clockwise', 'a shape rotating counterclockwise',
                               'a shape appearing', 'a shape disappearing']
    assert 'order-invariant' in capsys.readouterr().out
    assert len(decord.VideoReader(osp.join(out, 'videos', 'video0.mp4'))) == 4


def test_older_format_is_regenerated(tmp_path):
    out = str(tmp_path / 'ds')
    small = dict(TINY, num_train=2, num_val=2, num_test=0)
    syn.generate_motion_dataset(out, **small)
    path = osp.join(out, 'meta.json')
    with open(path) as f:
        meta = json.load(f)
    meta['format_version'] = syn.FORMAT_VERSION - 1
    with open(path, 'w') as f:
        json.dump(meta, f)
    with pytest.warns(UserWarning, match='older format'):
        new = syn.generate_motion_dataset(out, **small)
    assert new['format_version'] == syn.FORMAT_VERSION == syn.load_meta(out)['format_version']
    # a dataset of the current format with other parameters is still refused
    with pytest.raises(FileExistsError, match='overwrite'):
        syn.generate_motion_dataset(out, **dict(small, seed=11))


def test_twin_caption_accuracy_by_hand():
    from stan_mm.evaluation.motion_metric import twin_caption_accuracy
    # videos 0 <-> 1 are twins, video 2 has none
    video = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    text = np.array([[2.0, 0.1],    # video 0: cos to v0 > cos to v1 -> 1
                     [0.0, 3.0],    # video 0: closer to v1 -> 0
                     [1.0, 1.0],    # video 1: equally close to v0 and v1 -> 0.5
                     [0.2, 5.0],    # video 1: closer to v1 -> 1
                     [5.0, 0.0]])   # video 2: no twin, left out
    owner = np.array([0, 0, 1, 1, 2])
    acc = twin_caption_accuracy(text, owner, video, np.array([1, 0, -1]))
    assert acc == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    with pytest.raises(ValueError, match='no caption'):
        twin_caption_accuracy(text[4:], owner[4:], video, np.array([1, 0, -1]))


def test_twin_retrieval_metric_reads_the_benchmark_pairs(tiny):
    """The metric finds each video's twin in the benchmark's records: features that encode
    the time direction give 100, features blind to it (twins embedded alike) give 50."""
    import torch
    from stan_mm.datasets.synthetic import load_video_records
    from stan_mm.evaluation import MotionTwinRetrievalMetric
    root = tiny[0]
    recs = [r for r in load_video_records(root) if r['split'] == 'test']
    assert recs

    def run(blind):
        # the folder from the argument, or (as in the configs) from the dataset's metainfo
        metric = MotionTwinRetrievalMetric(data_root=None if blind else root)
        if blind:
            metric.dataset_meta = dict(motion_root=root)
        samples = []
        for r in recs:
            direction = 0.0 if blind else (1.0 if r['reversed'] else -1.0)
            v = torch.tensor([1.0, direction, float(r['group'])])
            samples.append(dict(filename=f'/any/where/{r["filename"]}', video_feature=v,
                                text_feature=v[None].repeat(2, 1) + 0.01))
        metric.process(None, samples + samples[:1])   # a padded duplicate
        return metric.compute_metrics(metric.results)['twin_t2v_acc']

    assert run(blind=False) == pytest.approx(100.0)
    assert run(blind=True) == pytest.approx(50.0)
    with pytest.raises(ValueError, match='motion_root'):
        MotionTwinRetrievalMetric().compute_metrics([dict(name=recs[0]['filename'])])
