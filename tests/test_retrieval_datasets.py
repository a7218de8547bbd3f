"""Retrieval annotation readers and ``RetrievalVideoTextDataset`` on hand-written files.

Every expected value below is written by hand from the annotation text in the test
(counts, joined paragraphs, caption order, text_to_video), or comes from an independent
implementation (MMAction2's own ``VideoTextDataset``).
"""
import json
import os
import pickle

import numpy as np
import pytest
import torch

import stan_mm  # noqa: F401  (registers the project; applies the stack fixes)
import stan_mm.datasets.retrieval  # noqa: F401  (explicit until the lead wires it)
from mmaction.registry import DATASETS
from stan_mm.datasets.readers import (read_didemo, read_lsmdc, read_msrvtt, read_msvd,
                                      read_video_text_json)
from stan_mm.datasets.readers_common import (AnnotationError, AnnotationPolicy,
                                             load_restricted_pickle)
from stan_mm.datasets.retrieval import CaptionSamplingEpochHook


# ----------------------------------------------------------------------------- helpers
def write(path, text, mode='w'):
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == 'wb':
        path.write_bytes(text)
    else:
        path.write_text(text, encoding='utf-8')
    return str(path)


def touch_videos(root, names):
    for name in names:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b'')


def build(**cfg):
    cfg.setdefault('pipeline', [])
    # mmengine's serialization runs gc.collect() (~0.3 s per build here); tests that
    # cover the serialized path pass serialize_data=True explicitly.
    cfg.setdefault('serialize_data', False)
    return DATASETS.build(dict(type='RetrievalVideoTextDataset', **cfg))


def samples(ds):
    return [ds[i] for i in range(len(ds))]


# MSRVTT_data.json in the original layout (pretty-printed so that lines are known).
MSRVTT_JSON = """{
  "info": {"year": 2016},
  "videos": [{"video_id": "video0"}, {"video_id": "video1"}, {"video_id": "video2"}],
  "sentences": [
    {"caption": "a man plays guitar", "video_id": "video0", "sen_id": 0},
    {"caption": "  someone is singing ", "video_id": "video1", "sen_id": 1},
    {"caption": "a man plays guitar", "video_id": "video0", "sen_id": 2},
    {"caption": "a cat on a sofa", "video_id": "video2", "sen_id": 3},
    {"caption": "a person sings", "video_id": "video1", "sen_id": 4},
    {"caption": "guitar music", "video_id": "video0", "sen_id": 5},
    {"caption": "other split", "video_id": "video9", "sen_id": 6}
  ]
}
"""
# video0: 3 captions (one repeated verbatim), video1: 2, video2: 1 (not in train split)
TRAIN_CSV = 'video_id\nvideo1\nvideo0\n'
JSFUSION_CSV = ('key,vid_key,video_id,sentence\n'
                'ret0,msr7020,video2,"a cat, sleeping, on a sofa"\n'
                'ret1,msr7021,video0,a man plays the guitar\n'
                'ret2,msr7022,video1,someone is singing\n')


@pytest.fixture
def msrvtt(tmp_path):
    root = tmp_path / 'msrvtt'
    files = dict(
        data=write(root / 'MSRVTT_data.json', MSRVTT_JSON),
        train=write(root / 'MSRVTT_train.9k.csv', TRAIN_CSV),
        test=write(root / 'MSRVTT_JSFUSION_test.csv', JSFUSION_CSV))
    touch_videos(root / 'videos', ['video0.mp4', 'video1.mp4', 'video2.mp4'])
    return root, files


# ----------------------------------------------------------------------------- MSR-VTT
def test_msrvtt_train_all_captions(msrvtt):
    root, files = msrvtt
    ds = build(ann_format='msrvtt', ann_file='MSRVTT_train.9k.csv',
               caption_file='MSRVTT_data.json', data_root=str(root),
               data_prefix=dict(video='videos'), serialize_data=True)
    # csv order: video1 then video0; captions in json order, stripped, repeats kept
    expected = [('video1', 'someone is singing'), ('video1', 'a person sings'),
                ('video0', 'a man plays guitar'), ('video0', 'a man plays guitar'),
                ('video0', 'guitar music')]
    got = samples(ds)
    assert len(ds) == 5 and ds.num_videos == 2 and ds.num_captions == 5
    assert [(s['video_id'], s['text']) for s in got] == expected
    assert [s['video_idx'] for s in got] == [0, 0, 1, 1, 1]
    assert [s['text_idx'] for s in got] == [0, 1, 2, 3, 4]
    assert [s['sample_idx'] for s in got] == [0, 1, 2, 3, 4]
    assert got[2]['filename'] == os.path.join(str(root), 'videos', 'video0.mp4')
    assert ds.text_to_video.tolist() == [0, 0, 1, 1, 1]
    assert 'text_to_video' not in ds.metainfo  # only in test mode


def test_msrvtt_jsfusion_test(msrvtt):
    root, files = msrvtt
    ds = build(ann_format='msrvtt', ann_file=files['test'],
               data_prefix=dict(video=str(root / 'videos')), test_mode=True)
    got = samples(ds)
    assert len(ds) == 3 and ds.num_captions == 3
    assert [s['text'] for s in got] == [['a cat, sleeping, on a sofa'],
                                         ['a man plays the guitar'],
                                         ['someone is singing']]
    assert [s['video_idx'] for s in got] == [0, 1, 2]
    assert [s['text_idx'] for s in got] == [[0], [1], [2]]
    assert isinstance(ds.text_to_video, np.ndarray)
    assert ds.text_to_video.dtype == np.int64
    assert ds.text_to_video.tolist() == [0, 1, 2]
    assert ds.metainfo['text_to_video'] == [0, 1, 2]
    assert ds.metainfo['num_captions'] == 3 and ds.metainfo['num_videos'] == 3


def test_msrvtt_jsfusion_with_all_json_captions(msrvtt):
    root, files = msrvtt
    ds = build(ann_format='msrvtt', ann_file=files['test'], caption_file=files['data'],
               data_prefix=dict(video=str(root / 'videos')), test_mode=True)
    got = samples(ds)
    assert [s['text'] for s in got] == [
        ['a cat on a sofa'],
        ['a man plays guitar', 'a man plays guitar', 'guitar music'],
        ['someone is singing', 'a person sings']]
    assert ds.text_to_video.tolist() == [0, 1, 1, 1, 2, 2]
    assert [s['text_idx'] for s in got] == [[0], [1, 2, 3], [4, 5]]


def test_msrvtt_video_ids_only_need_caption_file(msrvtt):
    _, files = msrvtt
    with pytest.raises(AnnotationError, match='caption_file=MSRVTT_data.json'):
        read_msrvtt(files['train'])


def test_msrvtt_malformed_csv_row(tmp_path):
    f = write(tmp_path / 'MSRVTT_JSFUSION_test.csv',
              'key,vid_key,video_id,sentence\nret0,m0,video0,ok\nret1,m1,video1\n')
    with pytest.raises(AnnotationError) as e:
        read_msrvtt(f)
    assert e.value.file == f and e.value.line == 3
    assert 'MSRVTT_JSFUSION_test.csv:3' in str(e.value)
    assert 'expected 4 fields' in str(e.value)


def test_msrvtt_missing_header_column(tmp_path):
    f = write(tmp_path / 'x.csv', 'vid\nvideo0\n')
    with pytest.raises(AnnotationError, match=r'x\.csv:1: .*"video_id" column'):
        read_msrvtt(f, None)


def test_msrvtt_bad_sentence_record_located(msrvtt, tmp_path):
    _, files = msrvtt
    bad = MSRVTT_JSON.replace('{"caption": "a person sings", "video_id": "video1"',
                              '{"capton": "a person sings", "video_id": "video1"')
    data = write(tmp_path / 'bad.json', bad)
    with pytest.raises(AnnotationError) as e:
        read_msrvtt(files['train'], data)
    # the record is on line 9 of the text above
    assert e.value.line == 9 and e.value.field == 'sentences[4].caption'
    assert e.value.column == 5  # the record's "{" after 4 spaces
    assert 'bad.json:9:5' in str(e.value) and 'missing field "caption"' in str(e.value)

    # the real MSRVTT_data.json is one line: the column then points at the record
    one_line = json.dumps({'sentences': [{'caption': 'ok', 'video_id': 'video1'},
                                         {'caption': 5, 'video_id': 'video0'}]})
    data = write(tmp_path / 'one.json', one_line)
    with pytest.raises(AnnotationError) as e:
        read_msrvtt(files['train'], data)
    assert (e.value.line, e.value.column) == (1, one_line.index('{"caption": 5') + 1)
    assert 'caption must be a string, got int' in str(e.value)

    bad = MSRVTT_JSON.replace('"video_id": "video0", "sen_id": 5', '"video_id": 7')
    data = write(tmp_path / 'bad2.json', bad)
    with pytest.raises(AnnotationError) as e:
        read_msrvtt(files['train'], data)
    assert e.value.line == 10 and e.value.field == 'sentences[5].video_id'
    assert 'video id must be a string, got int' in str(e.value)


def test_invalid_json_syntax_and_utf8_have_lines(tmp_path):
    csv_file = write(tmp_path / 'train.csv', TRAIN_CSV)
    data = write(tmp_path / 'd.json', '{\n  "sentences": [\n    {"caption": "x",, }\n]}')
    with pytest.raises(AnnotationError) as e:
        read_msrvtt(csv_file, data)
    assert e.value.line == 3 and 'invalid JSON' in str(e.value)

    raw = 'video_id\nvideo0\n'.encode() + b'vid\xffeo1\n'
    f = write(tmp_path / 'u.csv', raw, mode='wb')
    with pytest.raises(AnnotationError) as e:
        read_msrvtt(f, data)
    assert e.value.line == 3 and 'not valid UTF-8' in str(e.value)


def test_random_caption_per_epoch(msrvtt):
    root, files = msrvtt
    cfg = dict(ann_format='msrvtt', ann_file=files['test'], caption_file=files['data'],
               data_prefix=dict(video=str(root / 'videos')), caption_sampling='random',
               seed=3)
    ds = build(**cfg)
    assert len(ds) == 3  # one sample per video
    captions = {'video2': ['a cat on a sofa'],
                'video0': ['a man plays guitar', 'a man plays guitar', 'guitar music'],
                'video1': ['someone is singing', 'a person sings']}
    offsets = {'video2': 0, 'video0': 1, 'video1': 4}

    def draw(dataset, epoch):
        dataset.set_epoch(epoch)
        out = []
        for s in samples(dataset):
            caps = captions[s['video_id']]
            assert isinstance(s['text'], str) and s['text'] in caps
            k = s['text_idx'] - offsets[s['video_id']]
            assert 0 <= k < len(caps) and caps[k] == s['text']
            assert dataset.text_to_video[s['text_idx']] == s['video_idx']
            assert 'captions' not in s
            out.append(s['text_idx'])
        return out

    per_epoch = [draw(ds, e) for e in range(60)]
    # deterministic given seed and epoch: a fresh dataset, epochs in another order
    again = build(**cfg)
    assert [draw(again, e) for e in reversed(range(60))] == per_epoch[::-1]
    # the draw changes with the epoch and covers every caption about uniformly
    assert len({tuple(p) for p in per_epoch}) > 1
    counts = np.bincount([p[1] for p in per_epoch], minlength=4)[1:4]  # video0
    assert counts.min() >= 8, counts
    # another seed gives another sequence
    other = build(**dict(cfg, seed=4))
    assert [draw(other, e) for e in range(60)] != per_epoch


def test_random_caption_reaches_persistent_workers(msrvtt):
    root, files = msrvtt
    ds = build(ann_format='msrvtt', ann_file=files['train'], caption_file=files['data'],
               data_prefix=dict(video=str(root / 'videos')), caption_sampling='random',
               seed=0, serialize_data=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2,
                                         persistent_workers=True, collate_fn=lambda x: x)
    seen = []
    for epoch in range(6):
        ds.set_epoch(epoch)  # what CaptionSamplingEpochHook does before each epoch
        got = [s['text_idx'] for s in loader]
        expected = [ds.get_data_info(i)['text_idx'] for i in range(len(ds))]
        assert got == expected
        seen.append(tuple(got))
    assert len(set(seen)) > 1
    del loader


def test_epoch_hook_sets_epoch_and_runner_seed(msrvtt):
    root, files = msrvtt
    ds = build(ann_format='msrvtt', ann_file=files['train'], caption_file=files['data'],
               data_prefix=dict(video=str(root / 'videos')), caption_sampling='random')

    class Loop:
        dataloader = type('DL', (), {'dataset': ds})()

    class Runner:
        train_loop, epoch, seed = Loop(), 5, 1234

    CaptionSamplingEpochHook().before_train_epoch(Runner())
    assert ds.epoch == 5 and ds.seed == 1234
    fixed = build(ann_format='msrvtt', ann_file=files['train'],
                  caption_file=files['data'], data_prefix=dict(video=str(root / 'videos')),
                  caption_sampling='random', seed=7)
    Loop.dataloader.dataset = fixed
    CaptionSamplingEpochHook().before_train_epoch(Runner())
    assert fixed.epoch == 5 and fixed.seed == 7  # an explicit seed wins


# ----------------------------------------------------------------------------- files
def test_missing_videos_reported_at_once_or_dropped(msrvtt):
    root, files = msrvtt
    (root / 'videos' / 'video0.mp4').unlink()
    (root / 'videos' / 'video2.mp4').unlink()
    cfg = dict(ann_format='msrvtt', ann_file=files['test'],
               data_prefix=dict(video=str(root / 'videos')), test_mode=True)
    with pytest.raises(AnnotationError) as e:
        build(**cfg)
    msg = str(e.value)
    assert 'MSRVTT_JSFUSION_test.csv' in msg and '2 of 3 videos' in msg
    assert '): video2, video0. Fix' in msg
    ds = build(**cfg, missing_video='drop')
    assert [s['video_id'] for s in samples(ds)] == ['video1']
    assert ds.text_to_video.tolist() == [0]
    assert len(build(**cfg, check_files=False)) == 3


def test_scan_lookup_finds_other_extensions(tmp_path):
    root = tmp_path / 'didemo'
    write(root / 'test_list.txt', 'a1@N0_1_x.mov\nb2@N0_2_y.avi\n')
    write(root / 'test_data.json', json.dumps([
        dict(video='a1@N0_1_x.mov', description='first', times=[[0, 0]]),
        dict(video='b2@N0_2_y.avi', description='second', times=[[1, 2]])]))
    touch_videos(root / 'videos', ['sub/a1@N0_1_x.mp4', 'b2@N0_2_y.webm', 'b2@N0_2_y.mp4',
                                   'notes.txt'])
    ds = build(ann_format='didemo', ann_file=str(root / 'test_list.txt'),
               caption_file=str(root / 'test_data.json'),
               data_prefix=dict(video=str(root / 'videos')), video_lookup='scan',
               test_mode=True)
    got = samples(ds)
    assert got[0]['filename'] == str(root / 'videos' / 'sub' / 'a1@N0_1_x.mp4')
    assert got[1]['filename'] == str(root / 'videos' / 'b2@N0_2_y.mp4')  # .mp4 first
    ds = build(ann_format='didemo', ann_file=str(root / 'test_list.txt'),
               caption_file=str(root / 'test_data.json'),
               data_prefix=dict(video=str(root / 'videos')), video_tmpl='{stem}.webm',
               check_files=False, test_mode=True)
    assert samples(ds)[1]['filename'] == str(root / 'videos' / 'b2@N0_2_y.webm')


# ----------------------------------------------------------------------------- DiDeMo
DIDEMO_JSON = """[
  {"video": "v1.mp4", "description": "a dog runs ", "times": [[0, 0], [0, 1]]},
  {"video": "v2.mp4", "description": "kids on a slide", "times": [[2, 3]]},
  {"video": "v1.mp4", "description": "the dog stops", "times": [[4, 4], [3, 4], [4, 5]]},
  {"video": "v9.mp4", "description": "not in the list", "times": [[0, 0]]},
  {"video": "v1.mp4", "description": "it looks at the camera.", "times": [[5, 5]]}
]
"""


@pytest.fixture
def didemo(tmp_path):
    root = tmp_path / 'didemo'
    write(root / 'test_list.txt', 'v1.mp4\nv2.mp4\n\n')
    write(root / 'test_data.json', DIDEMO_JSON)
    touch_videos(root / 'videos', ['v1.mp4', 'v2.mp4'])
    return root


def test_didemo_paragraphs(didemo):
    ds = build(ann_format='didemo', ann_file='test_list.txt',
               caption_file='test_data.json', data_root=str(didemo),
               data_prefix=dict(video='videos'), test_mode=True)
    got = samples(ds)
    assert [s['text'] for s in got] == [
        ['a dog runs the dog stops it looks at the camera.'], ['kids on a slide']]
    assert ds.text_to_video.tolist() == [0, 1]
    assert 'start' not in got[0] and 'end' not in got[0]  # whole video is used
    train = build(ann_format='didemo', ann_file='test_list.txt',
                  caption_file='test_data.json', data_root=str(didemo),
                  data_prefix=dict(video='videos'), paragraph_sep=' | ')
    assert samples(train)[0]['text'] == 'a dog runs | the dog stops | it looks at the camera.'


def test_didemo_moments_and_unknown_video(didemo):
    entries = read_didemo(str(didemo / 'test_list.txt'), str(didemo / 'test_data.json'))
    v1 = entries[0]
    assert v1.extra['descriptions'] == ['a dog runs', 'the dog stops',
                                        'it looks at the camera.']
    # CLIP4Clip formula: (mean start * 5, (mean end + 1) * 5)
    assert v1.extra['moments'][0] == [0.0, (0.5 + 1) * 5]
    assert v1.extra['moments'][1] == [pytest.approx(11 / 3 * 5), pytest.approx(
        (13 / 3 + 1) * 5)]
    with pytest.raises(AnnotationError) as e:
        read_didemo(str(didemo / 'test_list.txt'), str(didemo / 'test_data.json'),
                    policy=AnnotationPolicy(unknown_video='error'))
    assert e.value.line == 5 and "'v9.mp4' is not in test_list.txt" in str(e.value)
    # the data json alone: every video in order of first appearance
    alone = read_didemo(str(didemo / 'test_data.json'))
    assert [e.video_id for e in alone] == ['v1.mp4', 'v2.mp4', 'v9.mp4']


def test_didemo_bad_times_located(didemo, tmp_path):
    bad = DIDEMO_JSON.replace('[[2, 3]]', '[[2, "3"]]')
    f = write(tmp_path / 'test_data.json', bad)
    with pytest.raises(AnnotationError) as e:
        read_didemo(str(didemo / 'test_list.txt'), f)
    assert e.value.line == 3 and e.value.field == '[1].times'
    assert 'test_data.json:3' in str(e.value)


# ----------------------------------------------------------------------------- LSMDC
LSMDC_TRAIN = (
    '1004_Juno_00.00.32.849-00.00.38.210\t00.00.32.849\t00.00.38.210\t00.00.33.000\t'
    '00.00.38.000\tSomeone walks along a street.\n'
    '1004_Juno_00.00.40.000-00.00.41.500\t00.00.40.000\t00.00.41.500\t00.00.40.000\t'
    '00.00.41.500\tShe drinks juice.\t\n'
    '1004_Juno_00.00.32.849-00.00.38.210\t00.00.32.849\t00.00.38.210\t00.00.33.000\t'
    '00.00.38.000\tSomeone looks up.\n'
    '0001_American_Beauty_01.02.03.450-01.02.05.000\t01.02.03.450\t01.02.05.000\t'
    '01.02.03.450\t01.02.05.000\tSOMEONE smiles – naïvely.\n')


def test_lsmdc_grouping_and_paths(tmp_path):
    root = tmp_path / 'lsmdc'
    write(root / 'LSMDC16_annos_training.csv', LSMDC_TRAIN)
    ds = build(ann_format='lsmdc', ann_file='LSMDC16_annos_training.csv',
               data_root=str(root), data_prefix=dict(video='avi'), check_files=False)
    got = samples(ds)
    assert [(s['video_idx'], s['text']) for s in got] == [
        (0, 'Someone walks along a street.'), (0, 'Someone looks up.'),
        (1, 'She drinks juice.'), (2, 'SOMEONE smiles – naïvely.')]
    assert got[0]['filename'] == str(
        root / 'avi' / '1004_Juno' / '1004_Juno_00.00.32.849-00.00.38.210.avi')
    assert got[3]['filename'] == str(
        root / 'avi' / '0001_American_Beauty'
        / '0001_American_Beauty_01.02.03.450-01.02.05.000.avi')
    flat = build(ann_format='lsmdc', ann_file='LSMDC16_annos_training.csv',
                 data_root=str(root), data_prefix=dict(video='avi'), check_files=False,
                 video_tmpl='{video_id}.avi')
    assert samples(flat)[0]['filename'] == str(
        root / 'avi' / '1004_Juno_00.00.32.849-00.00.38.210.avi')
    entries = read_lsmdc(str(root / 'LSMDC16_annos_training.csv'))
    assert entries[2].extra['movie_times'][0] == (
        pytest.approx(3723.45), pytest.approx(3725.0), pytest.approx(3723.45),
        pytest.approx(3725.0))


def test_lsmdc_test_one_caption_per_clip(tmp_path):
    f = write(tmp_path / 'LSMDC16_challenge_1000_publictect.csv',
              LSMDC_TRAIN.split('\n', 2)[-1].replace('Someone looks up.', 'x') +
              LSMDC_TRAIN.split('\n')[1] + '\n')
    ds = build(ann_format='lsmdc', ann_file=f, data_prefix=dict(video=str(tmp_path)),
               check_files=False, test_mode=True)
    assert [s['text'] for s in samples(ds)] == [['x'], ['SOMEONE smiles – naïvely.'],
                                                 ['She drinks juice.']]
    assert ds.text_to_video.tolist() == [0, 1, 2]


def test_lsmdc_malformed_line(tmp_path):
    lines = LSMDC_TRAIN.split('\n')
    lines[1] = '1004_Juno_x\t00.00.40.000\t00.00.41.500\tShe drinks juice.'
    f = write(tmp_path / 'LSMDC16_annos_val.csv', '\n'.join(lines))
    with pytest.raises(AnnotationError) as e:
        read_lsmdc(f)
    assert e.value.line == 2
    assert 'LSMDC16_annos_val.csv:2: expected 6 tab-separated fields' in str(e.value)
    assert 'got 4' in str(e.value)


# ----------------------------------------------------------------------------- MSVD
MSVD_CAPTIONS = {
    '-4wsuPCjDBc_5_15': [['a', 'squirrel', 'is', 'eating'], ['a', 'chipmunk', 'eats'],
                         ['an', 'animal', 'eats', 'a', 'nut']],
    '0lh_UWF9ZP4_62_69': [['a', 'woman', 'slices', 'a', 'tomato'], ['someone', 'cuts']],
    'zzz_1_2': [['other', 'split']],
}


@pytest.fixture
def msvd(tmp_path):
    root = tmp_path / 'msvd'
    write(root / 'raw-captions.pkl', pickle.dumps(MSVD_CAPTIONS), mode='wb')
    write(root / 'test_list.txt', '-4wsuPCjDBc_5_15\n0lh_UWF9ZP4_62_69\n')
    touch_videos(root / 'YouTubeClips', ['-4wsuPCjDBc_5_15.avi', '0lh_UWF9ZP4_62_69.avi'])
    return root


def test_msvd_several_captions_per_video(msvd):
    ds = build(ann_format='msvd', ann_file='test_list.txt', caption_file='raw-captions.pkl',
               data_root=str(msvd), data_prefix=dict(video='YouTubeClips'), test_mode=True)
    got = samples(ds)
    assert [s['text'] for s in got] == [
        ['a squirrel is eating', 'a chipmunk eats', 'an animal eats a nut'],
        ['a woman slices a tomato', 'someone cuts']]
    assert ds.text_to_video.tolist() == [0, 0, 0, 1, 1]
    assert [s['text_idx'] for s in got] == [[0, 1, 2], [3, 4]]
    assert ds.num_videos == 2 and ds.num_captions == 5
    assert got[1]['filename'] == str(msvd / 'YouTubeClips' / '0lh_UWF9ZP4_62_69.avi')
    train = build(ann_format='msvd', ann_file='test_list.txt',
                  caption_file='raw-captions.pkl', data_root=str(msvd),
                  data_prefix=dict(video='YouTubeClips'))
    assert len(train) == 5


def test_msvd_video_without_captions(msvd):
    write(msvd / 'val_list.txt', '-4wsuPCjDBc_5_15\nnot_there_1_2\n')
    with pytest.raises(AnnotationError) as e:
        read_msvd(str(msvd / 'val_list.txt'), str(msvd / 'raw-captions.pkl'))
    assert "'not_there_1_2'" in str(e.value) and 'val_list.txt:2' in str(e.value)


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_restricted_unpickler_refuses_objects(tmp_path):
    target = str(tmp_path / 'pwned')
    f = write(tmp_path / 'raw-captions.pkl', pickle.dumps({'v': _Evil(target)}), mode='wb')
    with pytest.raises(AnnotationError, match='refusing to unpickle posix.mkdir'):
        load_restricted_pickle(f)
    assert not os.path.exists(target)  # nothing was executed
    f = write(tmp_path / 'np.pkl', pickle.dumps({'v': np.zeros(2)}), mode='wb')
    with pytest.raises(AnnotationError, match='numpy'):
        load_restricted_pickle(f)
    # plain builtin structures load, in every protocol
    data = {'a': [['x', 'y']], 'b': ({1, 2}, frozenset([3]), 1.5, None, True)}
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        f = write(tmp_path / f'ok{proto}.pkl', pickle.dumps(data, protocol=proto),
                  mode='wb')
        assert load_restricted_pickle(f) == data


# ----------------------------------------------------------------------------- JSON
def test_video_text_json_matches_mmaction(tmp_path):
    ann = {'a/v1.mp4': ['first caption', 'second caption'], 'v2.mp4': ['third'],
           'v3.mp4': ['日本語のキャプション', 'x' * 5000]}
    f = write(tmp_path / 'train.json', json.dumps(ann, ensure_ascii=False))
    prefix = str(tmp_path / 'videos')
    ours = build(ann_format='json', ann_file=f, data_prefix=dict(video=prefix),
                 check_files=False)
    theirs = DATASETS.build(dict(type='VideoTextDataset', ann_file=f, pipeline=[],
                                 data_prefix=dict(video=prefix)))
    assert len(ours) == len(theirs) == 5
    assert [(s['filename'], s['text']) for s in samples(ours)] == [
        (s['filename'], s['text']) for s in samples(theirs)]
    test = build(ann_format='json', ann_file=f, data_prefix=dict(video=prefix),
                 check_files=False, test_mode=True)
    assert test.text_to_video.tolist() == [0, 0, 1, 2, 2]
    assert samples(test)[2]['text'][1] == 'x' * 5000  # long captions kept verbatim


def test_video_text_json_errors(tmp_path):
    f = write(tmp_path / 'a.json', '{\n  "v1.mp4": ["a"],\n  "v2.mp4": "b"\n}\n')
    with pytest.raises(AnnotationError, match='single string'):
        read_video_text_json(f)
    f = write(tmp_path / 'b.json', '{\n  "v1.mp4": ["a"],\n  "v2.mp4": ["b"],\n'
              '  "v1.mp4": ["c"]\n}\n')
    with pytest.raises(AnnotationError) as e:
        read_video_text_json(f)
    assert e.value.line == 4 and 'duplicate_video' in str(e.value)
    entries = read_video_text_json(f, policy=AnnotationPolicy(duplicate_video='drop'))
    assert [(e.video_id, e.captions) for e in entries] == [('v1.mp4', ['a']),
                                                            ('v2.mp4', ['b'])]
    f = write(tmp_path / 'c.json', '{\n  "v1.mp4": ["a", 3]\n}\n')
    with pytest.raises(AnnotationError) as e:
        read_video_text_json(f)
    assert e.value.line == 2 and e.value.field == 'v1.mp4.[1]'
    # the mistakes of a user who wrote the wrong kind of JSON: named in plain words
    f = write(tmp_path / 'd.json', '{"v1.mp4": {"captions": ["a"]}}')
    with pytest.raises(AnnotationError, match='expected a list of captions, got dict$'):
        read_video_text_json(f)
    f = write(tmp_path / 'MSRVTT_data.json', MSRVTT_JSON)
    with pytest.raises(AnnotationError, match="MSR-VTT caption file.*ann_format='msrvtt'"):
        read_video_text_json(f)


# ----------------------------------------------------------------------------- policies
def test_empty_caption_error_or_drop(tmp_path):
    f = write(tmp_path / 'MSRVTT_JSFUSION_test.csv',
              'key,vid_key,video_id,sentence\nr0,m0,video0,  \nr1,m1,video1,ok\n'
              'r2,m2,video0,fine\n')
    with pytest.raises(AnnotationError) as e:
        read_msrvtt(f)
    assert e.value.line == 2 and "empty_caption='drop'" in str(e.value)
    ds = build(ann_format='msrvtt', ann_file=f, data_prefix=dict(video=''),
               check_files=False, empty_caption='drop', test_mode=True)
    assert [s['text'] for s in samples(ds)] == [['fine'], ['ok']]
    f = write(tmp_path / 'only_empty.csv',
              'key,vid_key,video_id,sentence\nr0,m0,video0,\t\nr1,m1,video1,ok\n')
    with pytest.raises(AnnotationError, match="'video0'.*has no caption"):
        build(ann_format='msrvtt', ann_file=f, data_prefix=dict(video=''),
              check_files=False, empty_caption='drop', test_mode=True)
    ds = build(ann_format='msrvtt', ann_file=f, data_prefix=dict(video=''),
               check_files=False, empty_caption='drop', video_without_captions='drop')
    assert [s['video_id'] for s in samples(ds)] == ['video1']
    # captions CLIP's cleaning empties (an HTML space, control characters) are empty too:
    # the tokenizer would give them [SOT, EOT] and nothing else
    from stan_mm.datasets.transforms import tokenize
    for blank in ('&nbsp;', '&amp;nbsp;', '\x01\x02'):
        assert tokenize(blank, 8)[:3].tolist() == [49406, 49407, 0]      # the reason
        f = write(tmp_path / 'blank.csv',
                  f'key,vid_key,video_id,sentence\nr0,m0,video0,{blank}\nr1,m1,video0,ok\n')
        with pytest.raises(AnnotationError, match='empty once cleaned'):
            read_msrvtt(f)
    f = write(tmp_path / 'fine.csv', 'key,vid_key,video_id,sentence\nr0,m0,video0,&amp; co\n')
    assert read_msrvtt(f)[0].captions == ['&amp; co']


def test_duplicate_video_in_list(msvd):
    write(msvd / 'train_list.txt', '-4wsuPCjDBc_5_15\n0lh_UWF9ZP4_62_69\n-4wsuPCjDBc_5_15\n')
    with pytest.raises(AnnotationError) as e:
        read_msvd(str(msvd / 'train_list.txt'), str(msvd / 'raw-captions.pkl'))
    assert e.value.line == 3 and 'already listed at train_list.txt:1' in str(e.value)
    ds = build(ann_format='msvd', ann_file=str(msvd / 'train_list.txt'),
               caption_file=str(msvd / 'raw-captions.pkl'), duplicate_video='drop',
               data_prefix=dict(video=str(msvd / 'YouTubeClips')), test_mode=True)
    assert len(ds) == 2 and ds.num_captions == 5


def test_two_ids_naming_one_file_are_a_duplicate(tmp_path, capsys, monkeypatch):
    """``clip3.mp4`` and ``./clip3.mp4`` are one video: kept twice, the gallery would hold
    an exact tie that outranks the ground truth. Links to one file (a content-addressed
    store shares a blob between identical videos) are only warned about."""
    videos = tmp_path / 'videos'
    touch_videos(videos, ['clip1.mp4', 'clip3.mp4', 'sub/clip4.mp4'])
    os.symlink(videos / 'clip1.mp4', videos / 'alias1.mp4')
    ann = ('{\n  "clip1.mp4": ["one"],\n  "clip3.mp4": ["three"],\n'
           '  "./clip3.mp4": ["three again"],\n  "sub/../clip3.mp4": ["and again"],\n'
           '  "sub/clip4.mp4": ["four"],\n  "alias1.mp4": ["one by a link"]\n}\n')
    f = write(tmp_path / 'ann.json', ann)
    from stan_mm.datasets import retrieval
    logged = []
    monkeypatch.setattr(retrieval, 'print_log', lambda msg, **kw: logged.append(msg))
    with pytest.raises(AnnotationError) as e:
        build(ann_format='json', ann_file=f, data_prefix=dict(video=str(videos)),
              test_mode=True)
    msg = str(e.value)
    assert '2 x duplicate_video' in msg and "duplicate_video='drop'" in msg
    assert "video './clip3.mp4' (ann.json:./clip3.mp4)" in msg  # its JSON key
    assert "already listed as video 'clip3.mp4' (ann.json:clip3.mp4)" in msg
    assert f"is the file '{videos / 'clip3.mp4'}'" in msg              # the resolved path
    assert 'alias1.mp4' not in msg
    ds = build(ann_format='json', ann_file=f, data_prefix=dict(video=str(videos)),
               test_mode=True, duplicate_video='drop')
    assert [s['video_id'] for s in samples(ds)] == ['clip1.mp4', 'clip3.mp4',
                                                     'sub/clip4.mp4', 'alias1.mp4']
    assert ds.num_captions == 4 and ds.text_to_video.tolist() == [0, 1, 2, 3]
    out = '\n'.join(logged)
    assert "1 pair(s) of videos are links to one file" in out
    assert f"'alias1.mp4' and 'clip1.mp4' -> '{videos / 'clip1.mp4'}'" in out
    # check_files=False: no file system access, so no link warning either
    logged.clear()
    build(ann_format='json', ann_file=f, data_prefix=dict(video=str(videos)),
          test_mode=True, duplicate_video='drop', check_files=False)
    assert not any('links to one file' in m for m in logged)
    # the data tool reports them without a dataset
    assert _tool().main(['json', f, '--video-root', str(videos)]) == 1
    out = capsys.readouterr().out
    assert 'duplicate_video' in out and "'./clip3.mp4'" in out and "'alias1.mp4'" not in out
    # distinct files stay distinct (no false alarm), with and without a root
    f2 = write(tmp_path / 'ok.json', '{"clip1.mp4": ["a"], "sub/clip4.mp4": ["b"]}')
    assert len(build(ann_format='json', ann_file=f2, data_prefix=dict(video=str(videos)),
                     test_mode=True)) == 2
    assert _tool().main(['json', f2]) == 0


def test_control_characters_in_video_id(tmp_path):
    f = write(tmp_path / 'list.txt', 'good\nba\x01d\n')
    caps = write(tmp_path / 'c.pkl', pickle.dumps({'good': ['x']}), mode='wb')
    with pytest.raises(AnnotationError) as e:
        read_msvd(f, caps)
    assert e.value.line == 2 and 'control characters' in str(e.value)


def test_indices_subset_renumbers(msvd):
    ds = build(ann_format='msvd', ann_file='test_list.txt', caption_file='raw-captions.pkl',
               data_root=str(msvd), data_prefix=dict(video='YouTubeClips'),
               test_mode=True, indices=[1])
    got = samples(ds)
    assert len(got) == 1 and got[0]['video_id'] == '0lh_UWF9ZP4_62_69'
    assert got[0]['video_idx'] == 0 and got[0]['text_idx'] == [0, 1]
    assert ds.text_to_video.tolist() == [0, 0]
    full = build(ann_format='msvd', ann_file='test_list.txt',
                 caption_file='raw-captions.pkl', data_root=str(msvd),
                 data_prefix=dict(video='YouTubeClips'), test_mode=True,
                 serialize_data=True)
    sub = full.get_subset([1])
    assert sub.text_to_video.tolist() == [0, 0] and sub[0]['text_idx'] == [0, 1]
    assert full.text_to_video.tolist() == [0, 0, 0, 1, 1]


def test_bad_config_values(msrvtt):
    root, files = msrvtt
    with pytest.raises(ValueError, match='ann_format'):
        build(ann_format='youcook', ann_file=files['test'], data_prefix=dict(video=''))
    with pytest.raises(ValueError, match='video_tmpl'):
        build(ann_format='msrvtt', ann_file=files['test'], data_prefix=dict(video=''),
              video_tmpl='{vid}.mp4')
    with pytest.raises(ValueError, match='caption_sampling'):
        build(ann_format='msrvtt', ann_file=files['test'], data_prefix=dict(video=''),
              caption_sampling='first')
    with pytest.raises(FileNotFoundError, match='nope.csv'):
        build(ann_format='msrvtt', ann_file=str(root / 'nope.csv'),
              data_prefix=dict(video=''))


# ----------------------------------------------------------------------------- tool
def _tool():
    import importlib.util
    path = os.path.join(os.path.dirname(__file__), '..', 'tools', 'data',
                        'prepare_retrieval.py')
    spec = importlib.util.spec_from_file_location('prepare_retrieval', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prepare_tool_report_and_json(msrvtt, capsys, tmp_path):
    root, files = msrvtt
    (root / 'videos' / 'video1.mp4').unlink()
    out = str(tmp_path / 'train.json')
    rc = _tool().main(['msrvtt', files['test'], '--caption-file', files['data'],
                       '--video-root', str(root / 'videos'), '--out-json', out])
    text = capsys.readouterr().out
    nested = tmp_path / 'new' / 'folder' / 'train.json'      # its folder is created
    assert _tool().main(['msrvtt', files['test'], '--caption-file', files['data'],
                         '--out-json', str(nested)]) == 0 and nested.is_file()
    capsys.readouterr()
    assert rc == 1  # a missing video
    assert 'videos: 3' in text and 'captions: 6' in text
    assert 'captions per video: min 1, mean 2.0, max 3' in text
    assert 'repeated captions within a video (kept): 1' in text
    assert 'missing video files: 1\n  video1' in text
    # MMAction2's own dataset reads what the tool wrote
    theirs = DATASETS.build(dict(type='VideoTextDataset', ann_file=out, pipeline=[],
                                 data_prefix=dict(video='V')))
    assert [(s['filename'], s['text']) for s in samples(theirs)] == [
        ('V/video2.mp4', 'a cat on a sofa'), ('V/video0.mp4', 'a man plays guitar'),
        ('V/video0.mp4', 'a man plays guitar'), ('V/video0.mp4', 'guitar music'),
        ('V/video1.mp4', 'someone is singing'), ('V/video1.mp4', 'a person sings')]
    rc = _tool().main(['msrvtt', files['test'], '--video-root', str(root / 'videos'),
                       '--out-json', out, '--drop-missing'])
    assert rc == 1 and set(json.load(open(out))) == {'video2.mp4', 'video0.mp4'}


def test_prepare_tool_issues_and_malformed(didemo, capsys, tmp_path):
    rc = _tool().main(['didemo', str(didemo / 'test_list.txt'), '--caption-file',
                       str(didemo / 'test_data.json'), '--video-root',
                       str(didemo / 'videos')])
    text = capsys.readouterr().out
    assert rc == 1
    assert 'unknown_video: 1 (left out)' in text
    assert "test_data.json:5: field '[3].video': video 'v9.mp4'" in text
    assert 'missing video files: 0' in text
    bad = write(tmp_path / 'LSMDC16_annos_val.csv', 'clip_1\t1\t2\tonly four\n')
    assert _tool().main(['lsmdc', bad]) == 2
    assert 'LSMDC16_annos_val.csv:1: expected 6 tab-separated fields' in \
        capsys.readouterr().err
    # usage errors are malformed input too (2), never "data issues" (1), and no traceback
    good = write(tmp_path / 'LSMDC16_challenge_1000_publictect.csv',
                 'clip_1\t1\t2\t3\t4\ta man\n')
    for argv, words in ((['msvd', bad], 'caption_file'),
                        (['lsmdc', good, '--video-tmpl', '{clip}.avi'], 'video_tmpl')):
        assert _tool().main(argv) == 2, argv
        assert words in capsys.readouterr().err


def test_mmaction_video_pipeline_reads_samples(tmp_path):
    cv2 = pytest.importorskip('cv2')
    root = tmp_path / 'videos'
    root.mkdir()
    for name in ('video0', 'video1'):
        writer = cv2.VideoWriter(str(root / f'{name}.mp4'),
                                 cv2.VideoWriter_fourcc(*'mp4v'), 8, (32, 24))
        for t in range(8):
            writer.write(np.full((24, 32, 3), 30 * t, dtype=np.uint8))
        writer.release()
    f = write(tmp_path / 'MSRVTT_JSFUSION_test.csv',
              'key,vid_key,video_id,sentence\nr0,m0,video1,b\nr1,m1,video0,a\n')
    pipeline = [dict(type='DecordInit'),
                dict(type='UniformSample', clip_len=4, num_clips=1, test_mode=True),
                dict(type='DecordDecode')]
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmaction'):  # as a runner with the config
        ds = build(ann_format='msrvtt', ann_file=f, data_prefix=dict(video=str(root)),
                   test_mode=True, pipeline=pipeline)
    out = ds[1]
    assert len(out['imgs']) == 4 and out['imgs'][0].shape == (24, 32, 3)
    assert out['text'] == ['a'] and out['video_idx'] == 1 and out['video_id'] == 'video0'
