"""The inference APIs called from several threads of one process (a web service with a
thread pool: one model loaded once, requests in parallel), on tiny random models.

Every result is compared exactly with the same call made from one thread.

1. ``recognize`` with another class list than a text-classifier head's own swapped the
   head's classes in place for the call: another thread's call then scored (or failed on)
   those classes, and the head could keep them. Now the call runs a copy of the head.
2. ``recognize`` on a retrieval model froze its text tower for the call and set the flags
   back afterwards: two calls that overlapped restored each other's flags (the model was
   left frozen). The per-call head no longer touches the flags.
3. Threads that find a text-classifier head's class-embedding cache empty fill it once.
4. ``search_gallery`` of one gallery from several threads: the second thread was refused
   (``FeatureFolderError``: the cache folder is held by another thread); it now waits and
   reuses the first thread's embeddings. A cache folder made by another thread just after
   this one found it missing was refused as "a file, not a folder".
5. mmengine's default scope is one for the whole process: the video pipeline is built in
   the config's scope without switching it (a switch per pipeline, made by two threads at
   once, left one thread's switch in place), and zero-shot on a retrieval model works
   whatever the scope is (another library's ``init_default_scope`` made it fail).
6. ``trusted_checkpoints()`` trusts the loads of its own thread only.
"""
import contextlib
import os.path as osp
import shutil
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import stan_mm  # noqa: F401

sys.path.insert(0, osp.dirname(__file__))
from test_inference_review_fixes import models, write_video  # noqa: E402,F401

THREADS = 6
LISTS = [None, ['walking', 'running', 'jumping'], ['a cat', 'a dog']]
WAIT = 20          # seconds an event or barrier waits before the test fails (not timing)


@pytest.fixture(scope='module')
def loaded(models):
    from stan_mm.apis import init_model
    return {kind: init_model(*models[kind], 'cpu') for kind in ('text', 'retrieval')}


@pytest.fixture(scope='module')
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp('concurrent_videos')
    return [write_video(str(d / f'v{i}.mp4'), seed=i) for i in range(3)]


def in_threads(job, n=THREADS):
    """``job(k)`` for k in range(n), each in its own thread, started together."""
    start = threading.Barrier(n, timeout=WAIT)

    def run(k):
        start.wait()
        return job(k)
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


class Overlap:
    """Two runs of a call, in threads ``first`` and ``second``, that overlap so: the
    second starts when the first is at :meth:`hold` (a patched step inside the call),
    and the first ends while the second waits there. A call that puts shared state back
    at its end then puts back what it saw in the middle of the other call."""

    def __init__(self):
        self.first_in, self.second_in, self.first_done = (threading.Event()
                                                          for _ in range(3))

    def hold(self):
        if threading.current_thread().name == 'first':
            self.first_in.set()
            assert self.second_in.wait(WAIT)
        else:
            self.second_in.set()
            assert self.first_done.wait(WAIT)

    def run(self, call):
        out = {}

        def target(name):
            try:
                out[name] = call()
            except BaseException as e:    # (raised again in the test's thread)
                out[name] = e
            finally:
                if name == 'first':
                    self.first_done.set()
        threads = {name: threading.Thread(target=target, args=(name, ), name=name)
                   for name in ('first', 'second')}
        threads['first'].start()
        assert self.first_in.wait(WAIT)
        threads['second'].start()
        for t in threads.values():
            t.join(WAIT)
        for value in out.values():
            if isinstance(value, BaseException):
                raise value
        return out['first'], out['second']


def same(a, b):
    return a[0] == b[0] and np.array_equal(a[1], b[1])


def head_state(head):
    return (list(head.classnames), list(head.templates), head._tokens.clone(),
            head.num_classes)


def test_recognize_with_other_classes_from_threads(loaded, videos):
    from stan_mm.apis.recognition import recognize
    model = loaded['text']
    before = head_state(model.cls_head)
    ref = {(v, i): recognize(model, video, classnames=names)
           for v, video in enumerate(videos) for i, names in enumerate(LISTS)}

    def job(k):
        out = []
        for r in range(3):
            v, i = (k + r) % len(videos), (k + 2 * r) % len(LISTS)
            out.append(((v, i), recognize(model, videos[v], classnames=LISTS[i])))
        return out
    for _ in range(2):
        for results in in_threads(job):
            for key, got in results:
                assert same(got, ref[key]), (key, got, ref[key])
    after = head_state(model.cls_head)
    assert after[:2] == before[:2] and after[3] == before[3]
    assert torch.equal(after[2], before[2])


def test_a_call_with_its_own_classes_never_sees_another_calls_list(loaded, videos,
                                                                   monkeypatch):
    """Deterministic: both calls are held at the head's forward until both are there (the
    head was swapped in place before the other call's forward)."""
    from stan_mm.apis.recognition import recognize
    from stan_mm.models.heads import TextClassifierHead
    model = loaded['text']
    own = recognize(model, videos[0])
    other = recognize(model, videos[0], classnames=LISTS[1])
    meet = threading.Barrier(2, timeout=WAIT)
    forward = TextClassifierHead.forward

    def held(self, x, **kwargs):
        meet.wait()
        return forward(self, x, **kwargs)
    monkeypatch.setattr(TextClassifierHead, 'forward', held)
    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(recognize, model, videos[0])
        b = pool.submit(recognize, model, videos[0], classnames=LISTS[1])
        assert same(a.result(), own) and same(b.result(), other)
    assert model.cls_head.classnames == ['class a', 'class b']


def test_zero_shot_on_a_retriever_from_threads_leaves_its_flags(loaded, videos,
                                                                monkeypatch):
    """The first call ends while the second is inside: the second must not put back the
    flags it saw in the middle of the first (the text tower was left frozen)."""
    from stan_mm.apis import embed
    from stan_mm.apis.recognition import recognize
    model = loaded['retrieval']
    flags = [p.requires_grad for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    assert any(flags)
    ref = recognize(model, videos[1], classnames=LISTS[1])
    overlap, real = Overlap(), embed.embed_video_batch

    def held(m, samples):
        overlap.hold()
        return real(m, samples)
    monkeypatch.setattr(embed, 'embed_video_batch', held)
    first, second = overlap.run(lambda: recognize(model, videos[1], classnames=LISTS[1]))
    assert [p.requires_grad for p in model.parameters()] == flags
    assert [m.training for m in model.modules()] == modes
    assert same(first, ref) and same(second, ref)


def test_pipelines_made_in_threads_leave_the_default_scope(loaded, videos, monkeypatch):
    """mmengine's default scope is one for the process: a switch to 'mmaction' around
    building each pipeline, undone by each thread, left the first thread's switch in
    place when the two overlapped (the other library's scope was then replaced)."""
    from mmengine.dataset import Compose
    from mmengine.registry import DefaultScope
    from stan_mm.apis.video import VideoPipeline
    cfg = loaded['text'].cfg
    ref = VideoPipeline(cfg)(videos[0])['inputs']            # [V, C, T, H, W]
    overlap, init = Overlap(), Compose.__init__

    def held(self, transforms):
        overlap.hold()
        init(self, transforms)
    monkeypatch.setattr(Compose, '__init__', held)
    with foreign_scope():
        before = list(DefaultScope._instance_dict)
        first, second = overlap.run(lambda: VideoPipeline(cfg))
        assert list(DefaultScope._instance_dict) == before
        assert DefaultScope.get_current_instance().scope_name == 'mmengine'
    monkeypatch.undo()
    for pipeline in (first, second):
        assert torch.equal(pipeline(videos[0])['inputs'], ref)


def test_threads_fill_the_class_embeddings_once(loaded, videos, monkeypatch):
    from stan_mm.apis.recognition import recognize
    from stan_mm.models.heads import TextClassifierHead
    model = loaded['text']
    ref = recognize(model, videos[2])
    model.cls_head.invalidate_cache()
    entered, lock = [], threading.Lock()
    all_in = threading.Event()
    fills = []
    class_embeddings = TextClassifierHead.class_embeddings
    encode = TextClassifierHead._encode_prompts

    def counted(self):
        with lock:
            entered.append(1)
            if len(entered) == 4:
                all_in.set()
        return class_embeddings(self)

    def slow_encode(self, chunk):   # the first fill waits until every thread is in
        fills.append(1)
        if len(fills) == 1:
            assert all_in.wait(WAIT)
        return encode(self, chunk)
    monkeypatch.setattr(TextClassifierHead, 'class_embeddings', counted)
    monkeypatch.setattr(TextClassifierHead, '_encode_prompts', slow_encode)
    results = in_threads(lambda k: recognize(model, videos[2]), n=4)
    assert len(fills) == 1
    assert all(same(r, ref) for r in results)


def test_two_models_in_threads_at_once(loaded, videos):
    """A recognizer and a retriever used by several threads at once: recognition, text
    and video embeddings, zero-shot; each result as from one thread."""
    from stan_mm.apis import embed_texts, embed_video_batch
    from stan_mm.apis.recognition import recognize
    from stan_mm.apis.video import VideoPipeline
    texts = ['a shape moving left', 'a red square', 'something growing']
    retriever = loaded['retrieval']
    pipe = VideoPipeline(retriever.cfg)

    def requests(k):
        v = videos[k % len(videos)]
        names = LISTS[1 + k % 2]
        return (recognize(loaded['text'], v), recognize(loaded['text'], v, classnames=names),
                recognize(retriever, v, classnames=names),
                embed_texts(retriever, texts), embed_texts(loaded['text'], texts),
                embed_video_batch(retriever, [pipe(v)]))
    ref = [requests(k) for k in range(THREADS)]
    for got, want in zip(in_threads(requests), ref):
        for a, b in zip(got[:3], want[:3]):
            assert same(a, b)
        for a, b in zip(got[3:], want[3:]):
            assert torch.equal(a, b)


def test_searches_of_one_gallery_from_threads(loaded, tmp_path, monkeypatch):
    """The first search holds the cache until every thread has come to it: the others
    wait for it (they were refused) and reuse its embeddings."""
    from stan_mm.apis import embed, features, search_gallery
    from stan_mm.apis.features import FeatureFolderError
    model = loaded['retrieval']
    gallery = tmp_path / 'gallery'
    gallery.mkdir()
    for i in range(4):
        write_video(str(gallery / f'v{i}.mp4'), seed=i)
    queries = ['a shape moving left', 'a growing shape']

    def search():
        return search_gallery(model, str(gallery), queries, key='k', num_workers=0,
                              progress=False, log=lambda line: None)
    ref = search()
    shutil.rmtree(ref.cache_dir)
    n = 4
    arrived, embedded, lock = [], [], threading.Lock()
    all_in = threading.Event()
    real_lock, real_extract, real_embed = (features.folder_lock, features.extract_features,
                                           embed.embed_video_batch)

    def counted_lock(out, *args, **kwargs):
        with lock:
            arrived.append(threading.get_ident())
            if len(set(arrived)) == n:
                all_in.set()
        return real_lock(out, *args, **kwargs)

    def held_extract(*args, **kwargs):
        if not embedded:              # the first search: until every thread has come
            assert all_in.wait(WAIT)
        return real_extract(*args, **kwargs)

    def counted_embed(m, samples):
        embedded.append(len(samples))
        return real_embed(m, samples)
    monkeypatch.setattr(features, 'folder_lock', counted_lock)
    monkeypatch.setattr(features, 'extract_features', held_extract)
    monkeypatch.setattr(embed, 'embed_video_batch', counted_embed)

    def job(k):
        try:
            return search()
        except FeatureFolderError as e:
            return e
    results = in_threads(job, n=n)
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors[0]
    assert sum(embedded) == 4                    # the gallery was embedded once
    for r in results:
        assert np.array_equal(r.sim, ref.sim) and np.array_equal(r.ranking, ref.ranking)
        assert r.video_paths == ref.video_paths and r.cache_dir == ref.cache_dir


def test_a_folder_made_by_another_run_meanwhile_is_not_a_file(tmp_path, monkeypatch):
    """Two first searches of a gallery: the cache folder is made by the other thread just
    after this one found it missing (it was then refused as 'a file, not a folder')."""
    import os
    from stan_mm.apis import features
    out = str(tmp_path / 'cache' / 'k')

    class MadeMeanwhile:
        def __getattr__(self, name):
            return getattr(os.path, name)

        def isdir(self, path):
            found = os.path.isdir(path)
            if path == out and not found:
                os.makedirs(out)         # the other search, right after this look
            return found
    monkeypatch.setattr(features, 'osp', MadeMeanwhile())
    assert features.make_feature_folder(out) == out
    monkeypatch.undo()
    assert os.path.isdir(out)
    with open(tmp_path / 'file', 'w'):
        pass
    with pytest.raises(features.FeatureWriteError, match='is a file, not a folder'):
        features.make_feature_folder(str(tmp_path / 'file'))


def test_folder_lock_without_wait_still_refuses_another_thread(tmp_path):
    from stan_mm.apis.features import FeatureFolderError, folder_lock
    holding, release = threading.Event(), threading.Event()

    def hold():
        with folder_lock(str(tmp_path / 'f')):
            holding.set()
            release.wait(WAIT)
    t = threading.Thread(target=hold)
    t.start()
    try:
        assert holding.wait(WAIT)
        with pytest.raises(FeatureFolderError, match='another thread'):
            with folder_lock(str(tmp_path / 'f')):
                pass
    finally:
        release.set()
        t.join(WAIT)
    with folder_lock(str(tmp_path / 'f'), wait=True):   # free again: taken at once
        pass


@contextlib.contextmanager
def foreign_scope():
    """mmengine's default scope set to another library's (here mmengine's own) inside the
    block, as a second OpenMMLab library's ``init_default_scope`` leaves it."""
    from mmengine.registry import DefaultScope
    saved = DefaultScope._instance_dict.copy()
    DefaultScope.get_instance('concurrent-api-test', scope_name='mmengine')
    assert DefaultScope.get_current_instance().scope_name == 'mmengine'
    try:
        yield
    finally:
        DefaultScope._instance_dict.clear()
        DefaultScope._instance_dict.update(saved)


def test_recognize_and_search_under_another_default_scope(loaded, videos, tmp_path):
    from stan_mm.apis import search_gallery
    from stan_mm.apis.recognition import recognize
    gallery = tmp_path / 'gallery'
    gallery.mkdir()
    write_video(str(gallery / 'v0.mp4'))
    ref = [recognize(loaded['text'], videos[0]),
           recognize(loaded['retrieval'], videos[0], classnames=LISTS[2])]
    sim = search_gallery(loaded['retrieval'], str(gallery), ['a shape'], key='k',
                         num_workers=0, progress=False, log=lambda line: None).sim
    shutil.rmtree(gallery / '.stan_mm_cache')
    with foreign_scope():
        assert same(recognize(loaded['text'], videos[0]), ref[0])
        assert same(recognize(loaded['retrieval'], videos[0], classnames=LISTS[2]), ref[1])
        got = search_gallery(loaded['retrieval'], str(gallery), ['a shape'], key='k',
                             num_workers=0, progress=False, log=lambda line: None).sim
    assert np.array_equal(got, sim)


def test_trusted_checkpoints_trusts_its_own_thread_only(monkeypatch):
    from stan_mm.compat.checkpoint import TRUST_ENV
    monkeypatch.delenv(TRUST_ENV, raising=False)
    from stan_mm.compat import trusted_checkpoints
    from stan_mm.compat.checkpoint import checkpoints_trusted
    inside, leave = threading.Event(), threading.Event()
    seen = {}

    def trusting():
        with trusted_checkpoints():
            seen['inside'] = checkpoints_trusted()
            inside.set()
            leave.wait(WAIT)
    t = threading.Thread(target=trusting)
    t.start()
    try:
        assert inside.wait(WAIT)
        assert seen['inside'] is True
        assert checkpoints_trusted() is False       # this thread: still the allow-list
    finally:
        leave.set()
        t.join(WAIT)
    with trusted_checkpoints():
        with trusted_checkpoints():                  # nests
            assert checkpoints_trusted()
        assert checkpoints_trusted()
    assert not checkpoints_trusted()
