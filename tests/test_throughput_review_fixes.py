"""Throughput review of the non-benchmarked paths (docs/benchmarks.md, 2026-12-06): the
fixes give the same outputs as before, and each test here fails without its fix.

1. ``SafeDecordDecode`` decodes out-of-order / repeated frame indices (multi-clip test
   sampling) once each, in stream order, and hands them out in the requested order.
2. ``EmbeddingSimilarity`` checks finiteness once on the embeddings (plus a bound on the
   products) instead of in every block; bad input gives the same error as before.
3. The retrieval loss gathers video ids only when it uses them (``'mask'``), and gathers the
   ranks' row counts once per call; the text encoder still refuses out-of-range tokens on
   CPU with a clear error. No timed assertions.
"""
import importlib.util
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as torch_mp
import torch.nn.functional as F

import stan_mm  # noqa: F401
from mmengine.registry import init_default_scope

from stan_mm.datasets.transforms import video_io
from stan_mm.datasets.transforms.fast_paths import tiled_array
from stan_mm.datasets.transforms.video_io import SafeDecordDecode, SafeDecordInit
from stan_mm.evaluation import similarity as S
from stan_mm.evaluation.ranking import retrieval_ranks
from stan_mm.models.losses import SymmetricInfoNCELoss
from stan_mm.models.losses import contrastive as C
from stan_mm.models.losses import gather as G

cv2 = pytest.importorskip('cv2')
init_default_scope('mmaction')


# --------------------------------------------------------------------------- 1. decoding
def _write_mp4v(path, num_frames=40, height=48, width=64):
    """Frames that differ from each other everywhere (noise plus a level per frame)."""
    rng = np.random.default_rng(0)
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), 10.0, (width, height))
    assert vw.isOpened()
    for t in range(num_frames):
        noise = rng.integers(0, 40, size=(height, width, 3), dtype=np.uint8)
        vw.write(noise + np.uint8((37 * t) % 200))
    vw.release()
    return str(path)


@pytest.fixture(scope='module')
def mp4v_video(tmp_path_factory):
    return _write_mp4v(tmp_path_factory.mktemp('tp_videos') / 'noise.mp4')


@pytest.fixture(scope='module')
def h264_video(tmp_path_factory):
    """libx264 with B-frames and one key frame (PyAV, written in a child interpreter)."""
    if importlib.util.find_spec('av') is None:
        pytest.skip('PyAV (av) is not installed')
    from stan_mm.utils import benchmark as B
    out = tmp_path_factory.mktemp('tp_h264')
    return B.write_benchmark_videos(str(out), 1, 96, 64, 60, seed=4, codec='h264')[0]


def _single_frames(path, inds):
    """Each index decoded on its own, by a fresh reader: the reference frames."""
    import decord
    out = []
    for i in inds:
        reader = decord.VideoReader(path, num_threads=1)
        out.append(reader.get_batch([int(i)]).asnumpy()[0])
    return np.stack(out)


def _decode_spied(path, inds):
    source = SafeDecordInit()(dict(filename=path, start_index=0, modality='RGB'))
    reader = source['video_reader']
    calls = []

    def get_batch(indices):
        calls.append(np.asarray(indices).tolist())
        return reader.reader.get_batch(indices)

    reader.get_batch = get_batch        # _VideoSource: an instance attribute wins
    source['frame_inds'] = np.asarray(inds)
    imgs = SafeDecordDecode()(source)['imgs']
    return imgs, calls


# multi-clip test sampling (clip by clip), with a repeat inside a clip and across clips
OUT_OF_ORDER = [3, 14, 25, 36, 1, 12, 23, 34, 7, 7, 30, 0, 14, 39]


@pytest.mark.parametrize('zero_copy', [True, False])
@pytest.mark.parametrize('codec', ['mp4v', 'h264'])
def test_out_of_order_indices_are_decoded_once_in_stream_order(codec, zero_copy, mp4v_video,
                                                                request, monkeypatch):
    path = mp4v_video if codec == 'mp4v' else request.getfixturevalue('h264_video')
    monkeypatch.setattr(video_io, 'ZERO_COPY', zero_copy)
    imgs, calls = _decode_spied(path, OUT_OF_ORDER)
    # the decoder saw every frame once, in stream order
    assert calls == [sorted(set(OUT_OF_ORDER))]
    # the frames of decoding each index alone, in the requested order
    assert len(imgs) == len(OUT_OF_ORDER)
    np.testing.assert_array_equal(np.stack(imgs), _single_frames(path, OUT_OF_ORDER))
    # a repeated index is its own array: an in-place transform acts on each slot once
    for a, b in ((8, 9), (1, 12)):
        assert not np.shares_memory(imgs[a], imgs[b])
    before = [img.copy() for img in imgs]
    imgs[8][...] = 0
    for k, img in enumerate(imgs):
        if k != 8:
            np.testing.assert_array_equal(img, before[k])


def test_increasing_indices_keep_the_zero_copy_batch(mp4v_video, monkeypatch):
    """The training case: indices in stream order go to decord as given and the frames are
    views of decord's one batch (no reordering, no copy)."""
    monkeypatch.setattr(video_io, 'ZERO_COPY', True)
    inds = [0, 3, 5, 9, 15, 39]
    imgs, calls = _decode_spied(mp4v_video, inds)
    assert calls == [inds]
    base = tiled_array(imgs)
    assert base is not None and not base.flags.owndata
    np.testing.assert_array_equal(base, _single_frames(mp4v_video, inds))


def test_multi_clip_test_pipeline_output_is_unchanged(mp4v_video):
    """The k400 test pipeline with num_clips=4 gives the tensor that decoding the indices
    as sampled (one get_batch in the requested order, the code before the fix) gives."""
    from mmengine.dataset import Compose

    class AsSampled(SafeDecordDecode):
        def _decord_load_frames(self, container, frame_inds):
            batch = container.get_batch(frame_inds).asnumpy()
            return [np.ascontiguousarray(f) for f in batch]

    def pipe(decode):
        return Compose([SafeDecordInit(),
                        dict(type='UniformSample', clip_len=8, num_clips=4, test_mode=True),
                        decode, dict(type='Resize', scale=(-1, 32)),
                        dict(type='ThreeCrop', crop_size=32),
                        dict(type='FormatShape', input_format='NCTHW'),
                        dict(type='PackActionInputs')])

    def run(p):
        return p(dict(filename=mp4v_video, start_index=0, modality='RGB', label=0))

    new, old = run(pipe(SafeDecordDecode())), run(pipe(AsSampled()))
    assert new['inputs'].shape == (12, 3, 8, 32, 32)
    assert torch.equal(new['inputs'], old['inputs'])


# --------------------------------------------------------------------------- 2. similarity
def _embeddings(nt=300, nv=120, e=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = F.normalize(torch.randn(nv, e, generator=g), dim=-1)
    t = F.normalize(v[torch.arange(nt) % nv] + 0.5 * torch.randn(nt, e, generator=g), dim=-1)
    return t, v, torch.arange(nt) % nv


class _Checked(S.EmbeddingSimilarity):
    """Every block checked, as before the fix."""

    def rows(self, start, stop, pad_to=None):
        self._blocks_finite = False
        return super().rows(start, stop, pad_to)


@pytest.mark.parametrize('opts', [{}, dict(dsl=True)])
def test_finite_embeddings_are_not_checked_per_block(opts, monkeypatch):
    t, v, t2v = _embeddings()
    ref = retrieval_ranks(_Checked(t, v), t2v, chunk_size=64, **opts)
    checked = []
    real = S.SimilaritySource._check_finite

    def spy(self, block, start, stop):
        checked.append((start, stop))
        return real(self, block, start, stop)

    monkeypatch.setattr(S.SimilaritySource, '_check_finite', spy)
    got = retrieval_ranks(S.EmbeddingSimilarity(t, v), t2v, chunk_size=64, **opts)
    assert checked == []
    for a, b in zip(got, ref):
        assert torch.equal(a, b)


def _message(source, t2v):
    with pytest.raises(ValueError) as err:
        retrieval_ranks(source, t2v, chunk_size=64)
    return str(err.value)


@pytest.mark.parametrize('where', ['text', 'video'])
@pytest.mark.parametrize('value', [float('nan'), float('inf'), float('-inf')])
def test_non_finite_embeddings_give_the_same_error(where, value):
    t, v, t2v = _embeddings()
    if where == 'text':
        t[130, 3] = value
    else:
        v[77, 5] = value
    got = _message(S.EmbeddingSimilarity(t, v, name='test features'), t2v)
    assert got == _message(_Checked(t, v, name='test features'), t2v)
    at = ('text 130, video 0 (rows 128..191' if where == 'text'
          else 'text 0, video 77 (rows 0..63')
    assert got.startswith(f'test features: non-finite similarity (NaN or inf) at {at}')


def test_products_that_overflow_are_still_caught():
    """Finite embeddings whose dot products exceed float32: checked per block, as before."""
    t, v, t2v = _embeddings()
    t[70], v[9] = 0, 0
    t[70, 0], v[9, 0] = 1e20, 1e20               # 1e40 > float32 max at (70, 9)
    got = _message(S.EmbeddingSimilarity(t, v), t2v)
    assert got == _message(_Checked(t, v), t2v)
    assert 'at text 70, video 9 (rows 64..127' in got
    # large but orthogonal: the bound fails, the blocks are finite, nothing is refused
    t, v, t2v = _embeddings()
    t[70], v[9] = 0, 0
    t[70, 0], v[9, 1] = 1e20, 1e20
    assert not S.products_certainly_finite(t, v)
    got = retrieval_ranks(S.EmbeddingSimilarity(t, v), t2v, chunk_size=64)
    ref = retrieval_ranks(_Checked(t, v), t2v, chunk_size=64)
    assert all(torch.equal(a, b) for a, b in zip(got, ref))


def test_product_bound():
    t, v, _ = _embeddings()
    assert S.products_certainly_finite(t, v)
    assert S.products_certainly_finite(t.double() * 1e150, v.double() * 1e150)
    assert not S.products_certainly_finite(t.double() * 1e160, v.double() * 1e160)
    assert S.products_certainly_finite(t * 1e18, v * 1e18)
    assert not S.products_certainly_finite(t * 1e19, v * 1e20)
    assert S.products_certainly_finite(t[:0], v)
    bad = t.clone()
    bad[4, 1] = float('nan')
    assert not S.products_certainly_finite(bad, v)
    assert not S.products_certainly_finite(v, bad)


# --------------------------------------------------------------------------- 3. training step
def _pairs(n=6, e=8, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, e, generator=g), torch.randn(n, e, generator=g)


def test_keep_does_not_gather_video_ids(monkeypatch):
    calls = []
    real = C.all_gather_no_grad

    def spy(x, *args, **kwargs):
        calls.append(x)
        return real(x, *args, **kwargs)

    monkeypatch.setattr(C, 'all_gather_no_grad', spy)
    v, t = _pairs()
    ids = torch.tensor([0, 1, 1, 2, 3, 3])
    keep = SymmetricInfoNCELoss(duplicate_videos='keep')(v, t, 10.0, ids)
    assert calls == []
    assert torch.equal(keep, SymmetricInfoNCELoss(duplicate_videos='keep')(v, t, 10.0))
    with pytest.raises(ValueError, match='video_ids must be'):   # still validated
        SymmetricInfoNCELoss(duplicate_videos='keep')(v, t, 10.0, ids[:4])
    SymmetricInfoNCELoss(duplicate_videos='mask')(v, t, 10.0, ids)
    assert len(calls) == 1


def test_mask_without_duplicates_is_the_plain_loss():
    v, t = _pairs()
    v.requires_grad_(True)
    plain = SymmetricInfoNCELoss()(v, t, 10.0)
    (g_plain, ) = torch.autograd.grad(plain, v)
    masked = SymmetricInfoNCELoss()(v, t, 10.0, torch.arange(6))
    (g_masked, ) = torch.autograd.grad(masked, v)
    assert torch.equal(plain, masked) and torch.equal(g_plain, g_masked)


def _dist_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    import stan_mm  # noqa: F401
    from stan_mm.models.losses import SymmetricInfoNCELoss
    from stan_mm.models.losses import gather as G
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank,
                            world_size=world)
    counted = []
    real = G._gather_sizes

    def spy(*args):
        counted.append(args[0])
        return real(*args)

    G._gather_sizes = spy
    gen = torch.Generator().manual_seed(5)
    v_all, t_all = torch.randn(5, 8, generator=gen), torch.randn(5, 8, generator=gen)
    ids = torch.tensor([0, 1, 0, 2, 1])
    rows = slice(0, 4) if rank == 0 else slice(4, 5)
    out = {}
    for mode in ('mask', 'keep'):
        v = v_all[rows].clone().requires_grad_(True)
        t = t_all[rows].clone().requires_grad_(True)
        counted.clear()
        loss = SymmetricInfoNCELoss(duplicate_videos=mode)(v, t, 10.0, ids[rows])
        loss.backward()
        out[mode] = dict(loss=loss.detach(), v_grad=v.grad, t_grad=t.grad,
                         size_gathers=len(counted))
    out['sizes'] = G.gather_sizes(3 + rank, torch.device('cpu'))
    torch.save(out, os.path.join(out_dir, f'rank{rank}.pt'))
    dist.barrier()
    dist.destroy_process_group()


def test_two_processes_gather_sizes_once_and_match_one_process(tmp_path):
    # forked ranks: the parent's imports are inherited (spawned ones re-import torch,
    # mmengine and mmaction: several seconds each on a small CI machine)
    torch_mp.start_processes(_dist_worker, args=(2, str(tmp_path / 'init'), str(tmp_path)),
                       nprocs=2, join=True, start_method='fork')
    ranks = [torch.load(tmp_path / f'rank{r}.pt') for r in range(2)]
    gen = torch.Generator().manual_seed(5)
    v_all, t_all = torch.randn(5, 8, generator=gen), torch.randn(5, 8, generator=gen)
    ids = torch.tensor([0, 1, 0, 2, 1])
    for mode in ('mask', 'keep'):
        v, t = v_all.clone().requires_grad_(True), t_all.clone().requires_grad_(True)
        ref = SymmetricInfoNCELoss(duplicate_videos=mode)(v, t, 10.0, ids)
        ref.backward()
        for r, rows in ((0, slice(0, 4)), (1, slice(4, 5))):
            got = ranks[r][mode]
            assert got['size_gathers'] == 1        # one size collective per loss call
            torch.testing.assert_close(got['loss'], ref.detach(), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(got['v_grad'] / 2, v.grad[rows], rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(got['t_grad'] / 2, t.grad[rows], rtol=1e-5, atol=1e-7)
    assert ranks[0]['mask']['loss'] != ranks[0]['keep']['loss']   # ids were used by 'mask'
    assert ranks[0]['sizes'] == ranks[1]['sizes'] == [3, 4]
    assert G.gather_sizes(3, torch.device('cpu')) is None          # one process


def test_out_of_range_tokens_raise_a_clear_error_on_cpu():
    from stan_mm import testing as T
    from stan_mm.models.clip import CLIPTextEncoder
    enc = CLIPTextEncoder(arch=T.tiny_clip_cfg(text_context_length=16, text_vocab_size=64))
    ok = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    assert enc(ok).shape[0] == 2
    for bad, shown in ((64, r'to 64; tokenize'), (-1, 'from -1 to')):
        tokens = ok.clone()
        tokens[1, 3] = bad
        with pytest.raises(ValueError, match=rf'tokens must be ids in \[0, 64\).*{shown}'):
            enc(tokens)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_token_check_does_not_synchronize_on_cuda():
    from stan_mm import testing as T
    from stan_mm.models.clip import CLIPTextEncoder
    enc = CLIPTextEncoder(arch=T.tiny_clip_cfg(text_context_length=16,
                                               text_vocab_size=64)).cuda()
    tokens = torch.randint(0, 64, (2, 16), device='cuda')
    enc(tokens)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        enc(tokens)
    finally:
        torch.cuda.set_sync_debug_mode(0)
