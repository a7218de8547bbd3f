"""Bad and unusual videos: each decodes correctly or fails with VideoReadError naming the file;
SkipUnreadable replaces unreadable training samples and SkippedVideosHook counts them over
DataLoader workers and ranks.

Videos are written here: mp4 (OpenCV ``mp4v``), and YUV4MPEG2 (``.y4m``, written by hand:
OpenCV's writer rounds odd sizes down and cannot store a gray pixel format). Every frame t
is a flat image of a known level, so a decoded frame identifies which frame it is.
"""
import json
import logging
import multiprocessing as mp
import os
import os.path as osp
import pickle
import re
import shutil
import sys
import traceback

import numpy as np
import pytest
import torch

import stan_mm  # noqa: F401
from mmengine.registry import init_default_scope

from stan_mm.datasets.transforms.video_io import SafeDecordDecode, VideoReadError
from stan_mm.engine.skip_hook import SkippedVideosHook, gather_skips, skipped_in_batch

cv2 = pytest.importorskip('cv2')
init_default_scope('mmaction')

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOL = 8  # mp4v is lossy: a flat frame decodes within a few levels of what was written


# --------------------------------------------------------------------------- writers
def level(t: int) -> int:
    """Value of frame t: consecutive frames differ by >= 37 levels (mod 200)."""
    return 20 + (37 * t) % 200


def write_mp4(path, num_frames, height, width, gray=False):
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), 8.0, (width, height),
                         isColor=not gray)
    assert vw.isOpened()
    for t in range(num_frames):
        shape = (height, width) if gray else (height, width, 3)
        vw.write(np.full(shape, level(t), np.uint8))
    vw.release()
    return str(path)


def write_y4m(path, num_frames, height, width, gray=False):
    """YUV4MPEG2: ``mono`` (a real gray pixel format, full range) or 4:4:4 with neutral
    chroma (limited-range luma, so Y = 16 + 219 * v / 255 decodes to v)."""
    with open(path, 'wb') as f:
        f.write(f'YUV4MPEG2 W{width} H{height} F8:1 Ip A1:1 C{"mono" if gray else "444"}\n'
                .encode())
        for t in range(num_frames):
            v = level(t)
            f.write(b'FRAME\n')
            if gray:
                f.write(np.full((height, width), v, np.uint8).tobytes())
            else:
                f.write(np.full((height, width), round(16 + 219 * v / 255), np.uint8)
                        .tobytes())
                f.write(np.full((2, height, width), 128, np.uint8).tobytes())
    return str(path)


@pytest.fixture(scope='module')
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp('videos')
    v = dict(
        ok=write_mp4(d / 'ok.mp4', 16, 32, 32),
        three=write_mp4(d / 'three.mp4', 3, 32, 32),
        single=write_mp4(d / 'single.mp4', 1, 32, 32),
        tiny=write_mp4(d / 'tiny_8x8.mp4', 5, 8, 8),
        odd=write_y4m(d / 'odd_33x17.y4m', 5, 17, 33),
        gray_y4m=write_y4m(d / 'gray_33x17.y4m', 4, 17, 33, gray=True),
        gray_mp4=write_mp4(d / 'gray.mp4', 4, 32, 32, gray=True),
        long=write_mp4(d / 'long_2000.mp4', 2000, 16, 32),
        missing=str(d / 'missing.mp4'),
    )
    open(d / 'zero.mp4', 'wb').close()
    v['zero'] = str(d / 'zero.mp4')
    with open(d / 'text.mp4', 'w') as f:
        f.write('this is not a video\n' * 20)
    v['text'] = str(d / 'text.mp4')
    data = open(v['ok'], 'rb').read()
    for name, part in (('trunc_half', data[:len(data) // 2]), ('trunc_header', data[:10]),
                       ('trunc_tail', data[:-200])):
        with open(d / f'{name}.mp4', 'wb') as f:
            f.write(part)
        v[name] = str(d / f'{name}.mp4')
    # MJPEG in AVI keeps its header at the front: cut off, it opens but frames fail.
    avi = str(d / 'full.avi')
    vw = cv2.VideoWriter(avi, cv2.VideoWriter_fourcc(*'MJPG'), 8.0, (32, 32))
    for t in range(16):
        vw.write(np.full((32, 32, 3), level(t), np.uint8))
    vw.release()
    data = open(avi, 'rb').read()
    with open(d / 'trunc_frames.avi', 'wb') as f:
        f.write(data[:int(len(data) * 0.8)])
    v['trunc_frames'] = str(d / 'trunc_frames.avi')
    return v


def decode(filename, sampler=None, stock=False):
    """Init + sampler + decode; ``sampler='all'`` decodes every frame."""
    from mmengine.dataset import Compose
    sampler = sampler or dict(type='UniformSample', clip_len=8, num_clips=1, test_mode=True)
    init, dec = ('DecordInit', 'DecordDecode') if stock else ('SafeDecordInit',
                                                             'SafeDecordDecode')
    results = Compose([dict(type=init)])(dict(filename=filename, start_index=0,
                                              modality='RGB'))
    if sampler == 'all':
        results['frame_inds'] = np.arange(results['total_frames'])
        return Compose([dict(type=dec)])(results)
    return Compose([sampler, dict(type=dec)])(results)


def check_frames(results, atol=TOL):
    """Every decoded frame is [H, W, 3] uint8 and shows the level of the frame it claims."""
    imgs = results['imgs']
    assert len(imgs) == len(results['frame_inds'])
    for img, t in zip(imgs, results['frame_inds']):
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert abs(float(img.mean()) - level(int(t))) <= atol, (t, img.mean(), level(t))


# --------------------------------------------------------------------------- decoding
def test_good_video_matches_stock_decord(videos):
    safe = decode(videos['ok'])
    stock = decode(videos['ok'], stock=True)
    assert safe['total_frames'] == stock['total_frames'] == 16
    np.testing.assert_array_equal(safe['frame_inds'], stock['frame_inds'])
    np.testing.assert_array_equal(np.stack(safe['imgs']), np.stack(stock['imgs']))
    assert safe['img_shape'] == safe['original_shape'] == (32, 32)
    assert safe['video_reader'] is None
    check_frames(safe)


def test_decoded_batch_is_handed_over_without_a_copy(videos):
    """SafeDecordDecode takes decord's batch through DLPack: the frames are the bytes
    ``asnumpy()`` gives, views of one array per clip that outlives the reader and is not
    reused by the next clip."""
    import gc
    import decord
    from stan_mm.datasets.transforms.fast_paths import tiled_array
    inds = np.array([0, 3, 5, 9, 15])
    reader = decord.VideoReader(videos['ok'], num_threads=1)
    copied = reader.get_batch(inds).asnumpy()
    first = decode(videos['ok'], sampler=dict(type='UniformSample', clip_len=5,
                                              test_mode=True))
    results = dict(video_reader=reader, frame_inds=inds, filename=videos['ok'])
    imgs = SafeDecordDecode()(results)['imgs']
    assert results['video_reader'] is None
    del reader, results
    gc.collect()
    np.testing.assert_array_equal(np.stack(imgs), copied)
    base = tiled_array(imgs)
    assert base is not None and base.shape == copied.shape       # one array ...
    assert not base.flags.owndata                                 # ... decord's memory
    assert not np.shares_memory(base, np.stack(first['imgs']))
    again = decode(videos['ok'], sampler='all')['imgs']          # a later clip ...
    imgs[0][...] = 0                                              # ... and a write
    np.testing.assert_array_equal(np.stack(imgs[1:]), copied[1:])  # leave the rest
    assert not np.shares_memory(tiled_array(again), base)
    check_frames(dict(imgs=again, frame_inds=np.arange(16)))


class _PackedDataset(torch.utils.data.Dataset):
    """Decoded clips packed into tensors that still use decord's memory (no crop or resize
    in between): sent to the main process as they are when the loader does not collate."""

    def __init__(self, files):
        from mmengine.dataset import Compose
        init_default_scope('mmaction')
        self.files = files
        self.pipe = Compose([dict(type='SafeDecordInit'),
                             dict(type='UniformSample', clip_len=4, test_mode=True),
                             dict(type='SafeDecordDecode'),
                             dict(type='FormatShape', input_format='NCTHW'),
                             dict(type='PackActionInputs')])

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        return self.pipe(dict(filename=self.files[i], start_index=0, modality='RGB',
                              label=0))['inputs']


@pytest.mark.parametrize('batch_size', [None, 2])
def test_zero_copy_frames_cross_dataloader_workers(videos, batch_size):
    """Tensors on decord's buffer are moved to shared memory by the worker (the buffer is
    then released there) and arrive intact, collated or not."""
    files = [videos['ok'], videos['gray_mp4'], videos['ok'], videos['gray_mp4']]
    dataset = _PackedDataset(files)
    here = [dataset[i] for i in range(len(files))]
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=1)
    got = list(loader) if batch_size is None else [t for b in loader for t in b]
    assert len(got) == len(here)
    for a, b in zip(got, here):
        assert torch.equal(a, b)


class _FakeBatch:
    """A decord batch stand-in: ``to_dlpack`` as given, ``asnumpy`` counted."""

    def __init__(self, arr, to_dlpack=None, ctx='cpu(0)'):
        self.arr, self.ctx, self.copies = arr, ctx, 0
        if to_dlpack is not None:
            self.to_dlpack = to_dlpack

    def asnumpy(self):
        self.copies += 1
        return self.arr.copy()


def test_batch_conversion_falls_back_to_a_copy():
    from stan_mm.datasets.transforms.video_io import decord_batch_to_numpy
    arr = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
    tensor = torch.from_numpy(arr)

    def broken():
        raise RuntimeError('no DLPack here')

    for batch, copies in [
            (_FakeBatch(arr), 1),                                      # no to_dlpack
            (_FakeBatch(arr, broken), 1),                              # it fails
            (_FakeBatch(arr, lambda: torch.utils.dlpack.to_dlpack(tensor), 'gpu(0)'), 1),
            (_FakeBatch(arr.astype(np.float32),                        # not uint8
                        lambda: torch.utils.dlpack.to_dlpack(tensor.float())), 1),
            (_FakeBatch(arr, lambda: torch.utils.dlpack.to_dlpack(tensor)), 0)]:
        out = decord_batch_to_numpy(batch)
        np.testing.assert_array_equal(out, arr)
        assert batch.copies == copies
        assert out.dtype == batch.arr.dtype or copies == 0
    viewed = decord_batch_to_numpy(tensor)                # decord's torch bridge
    assert np.shares_memory(viewed, arr)


@pytest.mark.parametrize('name,words', [
    ('missing', 'file not found'),
    ('zero', 'empty (0 bytes)'),
    ('text', 'cannot open it as a video'),
    ('trunc_half', 'cannot open it as a video'),
    ('trunc_header', 'cannot open it as a video'),
    ('trunc_tail', 'cannot open it as a video'),
    ('trunc_frames', 'truncated or corrupt'),
])
def test_unreadable_video_names_the_file(videos, name, words):
    # 'all': the cut-off AVI opens, and fails where its last frame is cut
    with pytest.raises(VideoReadError) as info:
        decode(videos[name], 'all')
    err = info.value
    assert err.filename == videos[name]
    assert videos[name] in str(err) and words in str(err)
    # the stock transforms fail too, mostly without the file name: that is what we replace
    if name != 'missing':
        with pytest.raises(Exception) as stock:
            decode(videos[name], 'all', stock=True)
        assert not isinstance(stock.value, VideoReadError)


@pytest.mark.parametrize('sampler', [
    dict(type='UniformSample', clip_len=8, num_clips=1),
    dict(type='UniformSample', clip_len=8, num_clips=1, test_mode=True),
    dict(type='SampleFrames', clip_len=8, frame_interval=2, num_clips=1),
    dict(type='SampleFrames', clip_len=8, frame_interval=2, num_clips=1, test_mode=True),
    dict(type='SampleFrames', clip_len=8, frame_interval=1, num_clips=2, test_mode=True,
         out_of_bound_opt='repeat_last'),
], ids=['uniform-train', 'uniform-test', 'frames-train', 'frames-test', 'frames-repeat'])
def test_short_videos_repeat_frames(videos, sampler):
    """3 frames or 1 frame for a clip of 8: MMAction2's samplers repeat frames (UniformSample
    repeats within segments, SampleFrames loops or repeats the last one)."""
    np.random.seed(0)
    for name, total in (('three', 3), ('single', 1)):
        res = decode(videos[name], dict(sampler))
        inds = np.asarray(res['frame_inds'])
        assert res['total_frames'] == total
        assert len(inds) == 8 * sampler['num_clips']
        assert inds.min() >= 0 and inds.max() < total
        if total > 1 and sampler['type'] == 'UniformSample':
            assert np.all(np.diff(inds) >= 0) and inds[0] == 0  # in order, starts at 0
        check_frames(res)


@pytest.mark.parametrize('name,shape', [('odd', (17, 33)), ('tiny', (8, 8)),
                                        ('gray_y4m', (17, 33)), ('gray_mp4', (32, 32))])
def test_odd_tiny_and_gray_videos(videos, name, shape):
    """33x17 (true odd size), 8x8 (a width decord 0.6.0 cannot copy: OpenCV decodes it) and
    grayscale videos give [H, W, 3] frames with the right content; the pipeline then makes
    the model's input size."""
    res = decode(videos[name])
    assert res['img_shape'] == shape
    check_frames(res)
    for img in res['imgs']:
        assert img.shape == (*shape, 3)
        if name.startswith('gray'):
            assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(
                img[..., 0], img[..., 2])
    from mmengine.dataset import Compose
    rest = Compose([dict(type='Resize', scale=(-1, 36)), dict(type='CenterCrop', crop_size=32),
                    dict(type='FormatShape', input_format='NCTHW'),
                    dict(type='PackActionInputs')])
    packed = rest(dict(res, label=0))
    assert tuple(packed['inputs'].shape) == (1, 3, 8, 32, 32)


def test_safe_decode_after_stock_init(videos):
    """SafeDecordDecode also guards a pipeline that keeps MMAction2's DecordInit."""
    from mmengine.dataset import Compose
    pipe = Compose([dict(type='DecordInit'),
                    dict(type='UniformSample', clip_len=8, num_clips=1, test_mode=True),
                    dict(type='SafeDecordDecode')])
    res = pipe(dict(filename=videos['tiny'], start_index=0, modality='RGB'))
    assert res['img_shape'] == (8, 8)
    check_frames(res)


from mmengine.fileio import BaseStorageBackend  # noqa: E402


class _MemoryBackend(BaseStorageBackend):
    """A file-client storage holding videos in a dict (stands in for Ceph, LMDB, ...)."""
    files = {}

    def __init__(self, **kwargs):
        pass

    def get(self, filepath):
        try:
            return self.files[str(filepath)]
        except KeyError:
            raise FileNotFoundError(filepath) from None

    def get_text(self, filepath, encoding='utf-8'):
        return self.get(filepath).decode(encoding)


def test_local_files_are_opened_by_path_and_file_clients_by_bytes(videos):
    """On the local disk decord opens the path (no copy of the file in memory); another
    io_backend reads the bytes through mmengine's FileClient. Both decode the same frames
    and name the file when it is missing or empty."""
    from mmengine.dataset import Compose
    from mmengine.fileio import FileClient
    from stan_mm.datasets.transforms.video_io import SafeDecordInit
    FileClient.register_backend('stan_test_memory', _MemoryBackend, force=True)
    _MemoryBackend.files = {'mem/ok.mp4': open(videos['ok'], 'rb').read(),
                            'mem/zero.mp4': b''}
    local = decode(videos['ok'])
    init = SafeDecordInit(io_backend='stan_test_memory')
    res = init(dict(filename='mem/ok.mp4', start_index=0, modality='RGB'))
    assert isinstance(res['video_reader'].data, bytes)        # read through the client
    res['frame_inds'] = np.asarray(local['frame_inds'])
    res = Compose([dict(type='SafeDecordDecode')])(res)
    np.testing.assert_array_equal(np.stack(res['imgs']), np.stack(local['imgs']))
    for name, words in (('mem/missing.mp4', 'file not found'),
                        ('mem/zero.mp4', r'empty \(0 bytes\)')):
        with pytest.raises(VideoReadError, match=words) as info:
            init(dict(filename=name, start_index=0, modality='RGB'))
        assert info.value.filename == name
    disk = SafeDecordInit()(dict(filename=videos['ok'], start_index=0, modality='RGB'))
    assert disk['video_reader'].data is None and disk['total_frames'] == 16


def test_relative_names_with_a_colon_are_files(videos, tmp_path, monkeypatch):
    """FFmpeg reads a relative 'clip:1.mp4' as protocol 'clip' (decord: 'Protocol not
    found'); SafeDecordInit, the OpenCV fallback and the demos' thumbnails open local
    files by their absolute path."""
    from stan_mm.datasets.transforms.video_io import SafeDecordInit
    for name in ('clip:1.mp4', 'a b%20 é.mp4'):
        shutil.copy(videos['ok'], tmp_path / name)
    monkeypatch.chdir(tmp_path)
    from stan_mm.apis.report import video_thumbnails
    from stan_mm.datasets.transforms.video_io import decode_frames_opencv
    for name in ('clip:1.mp4', 'a b%20 é.mp4'):
        res = SafeDecordInit()(dict(filename=name, start_index=0, modality='RGB'))
        assert res['total_frames'] == 16 and res['video_reader'].filename == name
        assert len(decode_frames_opencv(name, [0, 15])) == 2       # the OpenCV fallback
        jpgs = video_thumbnails(name, 2)                            # the demos' thumbnails
        assert len(jpgs) == 2 and all(j[:2] == b'\xff\xd8' for j in jpgs)


def test_directory_and_unreadable_file_are_named(videos, tmp_path):
    from stan_mm.datasets.transforms.video_io import SafeDecordInit
    folder = tmp_path / 'clips.mp4'
    folder.mkdir()
    with pytest.raises(VideoReadError, match='directory') as info:
        SafeDecordInit()(dict(filename=str(folder), start_index=0, modality='RGB'))
    assert info.value.filename == str(folder)
    if os.geteuid() != 0:          # root reads any file
        locked = tmp_path / 'locked.mp4'
        shutil.copy(videos['ok'], locked)
        locked.chmod(0)
        with pytest.raises(VideoReadError, match='cannot be read'):
            SafeDecordInit()(dict(filename=str(locked), start_index=0, modality='RGB'))


def test_opencv_fallback_matches_decord_frames(videos):
    """The fallback decoder returns the same frames decord returns where decord works."""
    from stan_mm.datasets.transforms.video_io import decode_frames_opencv
    inds = [0, 5, 5, 15, 3]
    res = decode(videos['ok'], dict(type='UniformSample', clip_len=8, num_clips=1,
                                    test_mode=True))
    import decord
    ref = decord.VideoReader(videos['ok']).get_batch(inds).asnumpy()
    for source in (videos['ok'], open(videos['ok'], 'rb').read()):
        got = np.stack(decode_frames_opencv(source, inds, 'ok.mp4'))
        assert got.shape == ref.shape
        assert np.abs(got.astype(int) - ref.astype(int)).max() <= 2
    assert res['total_frames'] == 16
    with pytest.raises(VideoReadError, match='ends after 16 frames'):
        decode_frames_opencv(videos['ok'], [16], 'ok.mp4')
    # a repeated index is its own array (as in decord's batch): an in-place Flip must flip
    # every slot once
    got = decode_frames_opencv(videos['ok'], inds, 'ok.mp4')
    assert not np.shares_memory(got[1], got[2])
    np.testing.assert_array_equal(got[1], got[2])


def test_long_video(videos):
    """2000 frames: every sampled frame is the frame it claims to be."""
    res = decode(videos['long'])
    assert res['total_frames'] == 2000
    inds = np.asarray(res['frame_inds'])
    assert inds.max() > 1500 and len(set(inds.tolist())) == 8
    check_frames(res)


def test_max_seconds_samples_the_start_of_the_video(videos):
    """SafeDecordInit(max_seconds=s): the sampler spreads its frames over the frames whose
    timestamp is below s (the DiDeMo configs' 31 s window), and decodes those frames."""
    from mmengine import Config
    from mmengine.dataset import Compose
    sampler = dict(type='UniformSample', clip_len=8, num_clips=1, test_mode=True)
    for seconds, total in ((31, 248), (31.01, 249), (0.01, 1), (1e4, 2000)):  # 8 fps
        res = Compose([dict(type='SafeDecordInit', max_seconds=seconds), sampler,
                       dict(type='SafeDecordDecode')])(
            dict(filename=videos['long'], start_index=0, modality='RGB'))
        assert res['total_frames'] == total, seconds
        inds = np.asarray(res['frame_inds'])
        assert inds.max() < total and (total < 8 or len(set(inds.tolist())) == 8)
        check_frames(res)
    for bad in (0, -1, float('inf'), '31', True):
        with pytest.raises(ValueError, match='max_seconds'):
            Compose([dict(type='SafeDecordInit', max_seconds=bad)])
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'stan', 'didemo_self_b32.py'))
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        init = cfg[loader]['dataset']['pipeline'][0]
        assert init['type'] == 'SafeDecordInit' and init['max_seconds'] == 31, loader


def test_out_of_range_indices_are_a_sampling_error(videos):
    from mmengine.dataset import Compose
    init = Compose([dict(type='SafeDecordInit')])
    res = init(dict(filename=videos['three'], start_index=0, modality='RGB'))
    res['frame_inds'] = np.array([0, 1, 5])
    with pytest.raises(IndexError, match=r'three\.mp4.*\[5\].*3 frames'):
        SafeDecordDecode().transform(res)


def test_error_survives_pickling_and_worker_reraise(videos):
    err = VideoReadError('/data/a b.mp4', 'the file is empty (0 bytes)')
    back = pickle.loads(pickle.dumps(err))
    assert (back.filename, back.reason, str(back)) == (err.filename, err.reason, str(err))
    # PyTorch re-raises worker errors as exc_type(message-with-traceback)
    wrapped = VideoReadError('Caught VideoReadError in DataLoader worker process 0.\n'
                             'Original Traceback (most recent call last):\n  ...\n'
                             + 'stan_mm...VideoReadError: ' + str(err) + '\n')
    assert wrapped.filename == '/data/a b.mp4'
    assert wrapped.reason == 'the file is empty (0 bytes)'


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, files):
        from mmengine.dataset import Compose
        self.files = files
        self.pipe = Compose([dict(type='SafeDecordInit'),
                             dict(type='UniformSample', clip_len=4, num_clips=1,
                                  test_mode=True),
                             dict(type='SafeDecordDecode')])

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        return np.stack(self.pipe(dict(filename=self.files[i], start_index=0,
                                       modality='RGB'))['imgs'])


def test_error_from_dataloader_worker_keeps_type_and_file(videos):
    loader = torch.utils.data.DataLoader(_ListDataset([videos['ok'], videos['zero']]),
                                         batch_size=1, num_workers=1)
    with pytest.raises(VideoReadError) as info:
        for _ in loader:
            pass
    assert info.value.filename == videos['zero']
    assert 'empty (0 bytes)' in info.value.reason


# --------------------------------------------------------------------------- skipping
def _video_dataset(tmp_path, files, test_mode=False):
    ann = tmp_path / 'ann.txt'
    ann.write_text(''.join(f'{f} {i % 2}\n' for i, f in enumerate(files)))
    pipeline = [dict(type='SafeDecordInit'),
                dict(type='UniformSample', clip_len=4, num_clips=1, test_mode=True),
                dict(type='SafeDecordDecode'), dict(type='Resize', scale=(32, 32),
                                                    keep_ratio=False),
                dict(type='FormatShape', input_format='NCTHW'), dict(type='PackActionInputs')]
    return dict(type='VideoDataset', ann_file=str(ann), pipeline=pipeline,
                data_prefix=dict(video=''), test_mode=test_mode)


def test_skip_unreadable_substitutes_and_records(tmp_path, videos, monkeypatch):
    from mmaction.registry import DATASETS
    from stan_mm.datasets.transforms import video_io
    logged = []
    monkeypatch.setattr(video_io, 'print_log', lambda msg, **kw: logged.append((msg, kw)))
    files = [videos['ok'], videos['zero'], videos['three'], videos['missing'],
             videos['single'], videos['odd']]
    ds = DATASETS.build(dict(type='SkipUnreadable', dataset=_video_dataset(tmp_path, files)))
    plain = DATASETS.build(_video_dataset(tmp_path, files))
    assert len(ds) == 6 and ds.metainfo == plain.metainfo
    for idx, name in enumerate(files):
        sample = ds[idx]
        meta = sample['data_samples'].metainfo
        if name in (videos['zero'], videos['missing']):
            skipped = meta['skipped_videos']
            assert skipped[0]['filename'] == name and skipped[0]['index'] == idx
            used = meta['substitute_index']
            assert used != idx and meta['substitute_for'] == idx
            # the substitute is a real, unmodified sample of the dataset
            assert torch.equal(sample['inputs'], plain[used]['inputs'])
            assert len(skipped) == 1 + sum(files[s['index']] in (videos['zero'],
                                                                 videos['missing'])
                                           for s in skipped[1:])
            # deterministic: the same substitute every time
            assert ds[idx]['data_samples'].metainfo['substitute_index'] == used
        else:
            assert 'skipped_videos' not in meta
            assert torch.equal(sample['inputs'], plain[idx]['inputs'])
    warnings = [m for m, kw in logged if kw.get('level') == logging.WARNING]
    assert ds.num_skipped == len(warnings) >= 4  # 2 bad samples, each read twice
    assert any(videos['zero'] in m and 'empty' in m for m in warnings)
    assert any(videos['missing'] in m and 'not found' in m for m in warnings)


def test_skip_unreadable_with_synthetic_motion_dataset(tmp_path):
    from mmaction.registry import DATASETS
    from stan_mm.datasets.synthetic import generate_motion_dataset
    root = tmp_path / 'motion'
    motion = dict(num_train=4, num_val=2, num_test=2, num_frames=8, size=32, progress=False)
    generate_motion_dataset(str(root), **motion)
    pipeline = _video_dataset(tmp_path, [])['pipeline']
    inner = dict(type='SyntheticMotionDataset', data_root=str(root), split='train',
                 generate=motion, pipeline=pipeline)
    ds = DATASETS.build(dict(type='SkipUnreadable', dataset=inner))
    bad = ds.get_data_info(2)['filename']
    data = open(bad, 'rb').read()
    with open(bad, 'wb') as f:
        f.write(data[:len(data) // 3])  # truncated
    samples = [ds[i] for i in range(len(ds))]
    assert samples[2]['data_samples'].metainfo['skipped_videos'][0]['filename'] == bad
    assert all('skipped_videos' not in s['data_samples'].metainfo for i, s in
               enumerate(samples) if i != 2)
    assert samples[2]['data_samples'].metainfo['substitute_index'] != 2
    # the quickstart's twin-batch sampler reads the groups through the wrapper
    from stan_mm.datasets.samplers import TwinGroupSampler
    assert ds.twin_groups() == ds.dataset.twin_groups()
    assert sorted(TwinGroupSampler(ds, seed=0)) == list(range(len(ds)))
    plain = DATASETS.build(dict(type='SkipUnreadable',
                                dataset=_video_dataset(tmp_path, [bad])))
    with pytest.raises(TypeError, match='twin_groups'):
        TwinGroupSampler(plain, seed=0)


def test_skip_unreadable_limits_and_refusals(tmp_path, videos):
    from mmaction.registry import DATASETS
    bad = [videos['zero'], videos['missing'], videos['text']]
    ds = DATASETS.build(dict(type='SkipUnreadable', dataset=_video_dataset(tmp_path, bad),
                             max_attempts=3))
    with pytest.raises(VideoReadError, match='2 substitutes are all unreadable') as info:
        ds[0]
    for f in bad:
        assert f in str(info.value)
    with pytest.raises(ValueError, match='training datasets only'):
        DATASETS.build(dict(type='SkipUnreadable',
                            dataset=_video_dataset(tmp_path, bad, test_mode=True)))
    with pytest.raises(ValueError, match='max_attempts'):
        DATASETS.build(dict(type='SkipUnreadable', dataset=_video_dataset(tmp_path, bad),
                            max_attempts=0))


def test_skip_unreadable_lets_other_errors_through(tmp_path, videos):
    """Only unreadable videos are skipped; a pipeline bug still fails loudly."""
    from mmaction.registry import DATASETS
    cfg = _video_dataset(tmp_path, [videos['ok'], videos['three']])
    cfg['pipeline'].insert(1, dict(type='CenterCrop', crop_size=64))  # no 'imgs' yet
    ds = DATASETS.build(dict(type='SkipUnreadable', dataset=cfg))
    with pytest.raises(Exception) as info:
        ds[0]
    assert not isinstance(info.value, VideoReadError)


def test_skip_unreadable_warns_about_stock_decord(tmp_path, videos, monkeypatch):
    from mmaction.registry import DATASETS
    from stan_mm.datasets.transforms import video_io
    logged = []
    monkeypatch.setattr(video_io, 'print_log', lambda msg, **kw: logged.append(msg))
    cfg = _video_dataset(tmp_path, [videos['ok']])
    cfg['pipeline'][0] = dict(type='DecordInit')
    DATASETS.build(dict(type='SkipUnreadable', dataset=cfg))
    assert len(logged) == 1 and 'DecordInit' in logged[0] and 'SafeDecordInit' in logged[0]


def test_skipped_in_batch_through_dataloader_workers(tmp_path, videos):
    """The records ride in the batch from worker processes to the main process."""
    from mmaction.registry import DATASETS
    from mmengine.dataset import pseudo_collate
    files = [videos['ok'], videos['three'], videos['zero'], videos['single'],
             videos['odd'], videos['gray_mp4']]
    ds = DATASETS.build(dict(type='SkipUnreadable', dataset=_video_dataset(tmp_path, files)))
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2,
                                         collate_fn=pseudo_collate, shuffle=False)
    records = [r for batch in loader for r in skipped_in_batch(batch)]
    assert [r['filename'] for r in records] == [videos['zero']]  # exactly once per epoch
    assert ds.num_skipped == 0  # the main process never decoded: a local counter is wrong


class _Hub:
    def __init__(self):
        self.info = {}

    def get_info(self, key, default=None):
        return self.info.get(key, default)

    def update_info(self, key, value):
        self.info[key] = value


class _Runner:
    def __init__(self, epoch=0):
        self.epoch, self.message_hub = epoch, _Hub()


def _dist_hook_worker(rank, world, store, records, out):
    try:
        torch.distributed.init_process_group('gloo', init_method=f'file://{store}',
                                             rank=rank, world_size=world)
        hook, runner = SkippedVideosHook(), _Runner()
        hook.before_train_epoch(runner)
        hook.after_train_iter(runner, 0, data_batch=records)
        hook.after_train_epoch(runner)
        gathered = gather_skips([dict(filename=f'r{rank}', reason='x', index=rank)])
        with open(f'{out}.{rank}', 'w') as f:
            json.dump(dict(hub=runner.message_hub.info,
                           gathered=[g['filename'] for g in gathered]), f)
        torch.distributed.destroy_process_group()
    except BaseException:
        traceback.print_exc()
        os._exit(1)


def test_hook_sums_over_ranks(tmp_path):
    """Two gloo ranks with 2 and 1 skips: every rank's hook counts 3 for the epoch."""
    from mmaction.structures import ActionDataSample

    def batch(n_skips):
        ds = ActionDataSample()
        ds.set_metainfo(dict(skipped_videos=[dict(filename=f'v{i}.mp4', reason='r', index=i)
                                             for i in range(n_skips)]))
        return dict(inputs=[torch.zeros(1)], data_samples=[ds, ActionDataSample()])

    ctx = mp.get_context('fork')
    procs = [ctx.Process(target=_dist_hook_worker,
                         args=(r, 2, tmp_path / 'store', batch(2 - r), tmp_path / 'out'))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    for r in range(2):
        res = json.loads((tmp_path / f'out.{r}').read_text())
        assert res['hub'] == {'train/skipped_videos_epoch': 3, 'train/skipped_videos_total': 3}
        assert res['gathered'] == ['r0', 'r1']


# --------------------------------------------------------------------------- in training
def _skip_yapf():
    """Speed only: mmengine formats the config with yapf whenever it logs, dumps or stores it
    in a checkpoint (~40 % of these tiny runs); keep the text, skip the formatting."""
    import mmengine.config.config as mm_config
    mm_config.FormatCode = lambda text, **kwargs: (text, None)


def _train_child(argv):
    try:
        torch.set_num_threads(1)
        _skip_yapf()
        import importlib.util
        spec = importlib.util.spec_from_file_location('_stan_train_tool',
                                                      osp.join(REPO, 'tools', 'train.py'))
        tool = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(tool)
        tool.main(argv)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(3)
    os._exit(0)


def test_training_skips_and_reports_per_epoch(tmp_path):
    """Tiny STAN, 2 epochs, 2 DataLoader workers, one missing and one empty video among 10:
    training runs, and the hook reports the skips of each epoch (the wrapper's WARNING lines,
    written by the workers, agree)."""
    from stan_mm.datasets.synthetic import generate_motion_dataset
    root = tmp_path / 'motion'
    generate_motion_dataset(str(root), num_train=8, num_val=2, num_test=2, num_frames=8,
                            size=32, pairs=('horizontal', 'vertical', 'scale', 'fade'),
                            progress=False)
    vids = root / 'videos'
    lines = (root / 'train.txt').read_text().splitlines()
    open(vids / 'empty.mp4', 'wb').close()
    lines += ['missing.mp4 0', 'empty.mp4 1']
    (tmp_path / 'train.txt').write_text('\n'.join(lines) + '\n')
    cfg = tmp_path / 'cfg.py'
    cfg.write_text(f"""
_base_ = [{osp.join(REPO, 'configs', 'quickstart', 'motion_stan_tiny.py')!r}]
train_pipeline = [
    dict(type='SafeDecordInit'),
    dict(type='UniformSample', clip_len=8, num_clips=1),
    dict(type='SafeDecordDecode'),
    dict(type='Resize', scale=(-1, 36)),
    dict(type='RandomCrop', size=32),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs')]
train_dataloader = dict(
    _delete_=True, batch_size=5, num_workers=2, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type='SkipUnreadable', dataset=dict(
        type='VideoDataset', ann_file={str(tmp_path / 'train.txt')!r},
        data_prefix=dict(video={str(vids)!r}), pipeline=train_pipeline)))
val_dataloader = None
val_cfg = None
val_evaluator = None
test_dataloader = None
test_cfg = None
test_evaluator = None
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=2, val_interval=100)
param_scheduler = []
custom_hooks = [dict(type='SkippedVideosHook')]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1, max_keep_ckpts=1,
                                                               save_best=None))
randomness = dict(seed=0)
""")
    work = tmp_path / 'work'
    p = mp.get_context('fork').Process(target=_train_child,
                                       args=([str(cfg), '--work-dir', str(work)], ))
    p.start()
    p.join(240)
    assert p.exitcode == 0
    (run_dir, ) = [d for d in work.iterdir() if d.is_dir()]
    log = (run_dir / f'{run_dir.name}.log').read_text()
    # the hook's per-epoch totals, aggregated on the main process
    summaries = re.findall(r'Epoch (\d+): skipped (\d+) unreadable video reads .*?; '
                           r'(\d+) since the start\): (.*)', log)
    assert [int(e) for e, *_ in summaries] == [1, 2], log[-3000:]
    for _, n, _, files in summaries:
        # each bad video is drawn once per epoch (its substitute may be the other one)
        assert int(n) >= 2 and 'missing.mp4' in files and 'empty.mp4' in files
    assert int(summaries[1][2]) == int(summaries[0][1]) + int(summaries[1][1])
    # each skip was also logged by the worker that met it: the two counts agree
    worker_lines = re.findall(r'SkipUnreadable: skipping unreadable video \S+', log)
    assert int(summaries[1][2]) == len(worker_lines)
    from stan_mm.compat import safe_torch_load
    info = safe_torch_load(str(work / 'epoch_2.pth'))['message_hub']['runtime_info']
    assert info['train/skipped_videos_total'] == len(worker_lines)
    scalars = [json.loads(ln) for ln in (run_dir / 'vis_data' / 'scalars.json').open()]
    assert all(np.isfinite(s['loss']) for s in scalars if 'loss' in s)
    shutil.rmtree(root)


def test_error_reasons_drop_decords_location_prefixes():
    """A nested decord failure carries two ``path:line: [time]`` prefixes; the reason keeps
    the check that failed, not the source paths."""
    from stan_mm.datasets.transforms.video_io import _short

    class DECORDError(Exception):
        pass
    src = '/github/workspace/src/video/ffmpeg/threaded_decoder.cc'
    err = DECORDError(f'{src}:292: [05:20:06] {src}:218: Check failed: '
                      f'avcodec_send_packet(dec_ctx_.get(), pkt.get()) >= 0 (-1094995529 vs. '
                      f'0) Error sending packet.\n\nStack trace:\n  [bt] (0) libdecord.so\n')
    assert _short(err) == ('DECORDError: Check failed: avcodec_send_packet(dec_ctx_.get(), '
                           'pkt.get()) >= 0 (-1094995529 vs. 0) Error sending packet.')
    opening = RuntimeError('[05:20:06] /src/video/video_reader.cc:83: ERROR opening: '
                           '/x.mp4, Invalid data found when processing input')
    assert _short(opening) == ('RuntimeError: ERROR opening: /x.mp4, Invalid data found '
                               'when processing input')
    assert _short(OSError('x' * 500)).endswith('...') and len(_short(OSError('x' * 500))) == 200
