"""Security review of files read and written by the project (findings 3-5).

3. A feature folder / QB-Norm bank's ``meta.json`` is data: ``check_bank_matches`` (reached
   from ``tools/test.py`` through ``check_qb_norm_banks``) never reads the config file it
   names (``Config.fromfile`` runs Python), and warns in one line instead.
4. Files are written through temporary files made by ``tempfile.mkstemp``: a symbolic link
   planted at the fixed temporary name of earlier versions is not written through, and no
   temporary file is left behind (``stan_convert.save_atomic``, the feature folder's files
   and shards, the benchmark videos).
5. The restricted unpickler of caption pickles refuses pickle bombs (``str`` of a
   self-repeating nested list, hash bombs, shared-reference expansion) quickly, with one
   line naming the file, and still loads real caption pickles.
"""
import collections
import json
import os
import os.path as osp
import pickle
import time

import numpy as np
import pytest
import torch
from mmengine.config import Config

from stan_mm.apis import features
from stan_mm.apis.features import check_bank_matches, check_qb_norm_banks, model_key
from stan_mm.apis.inference import checkpoint_fingerprint
from stan_mm.datasets import readers_common
from stan_mm.datasets.readers import read_msvd
from stan_mm.datasets.readers_common import AnnotationError, load_restricted_pickle
from stan_mm.engine.checkpoint_hook import _umask
from stan_mm.testing import logged_warning_messages


def _write(path, data):
    os.makedirs(osp.dirname(str(path)), exist_ok=True)
    with open(path, 'wb' if isinstance(data, bytes) else 'w') as f:
        f.write(data)
    return str(path)


# ------------------------------------------------------------------ 3. meta.json is data
from test_retrieval_review_fixes import CONFIG as TESTED_CONFIG  # noqa: E402


@pytest.fixture
def old_bank(tmp_path):
    """A bank folder in the format before the text-model record (config, cfg_options,
    checkpoint, model_key), naming a config that writes a marker file when run; the tested
    config and checkpoint."""
    marker = tmp_path / 'PWNED_by_bank_config'
    evil = _write(tmp_path / 'shared' / 'bank' / 'evil.py',
                  f'open({str(marker)!r}, "w").write("ran")\n'
                  f"model = dict(type='STANRetriever')\n")
    folder = osp.dirname(evil)
    ckpt = _write(tmp_path / 'epoch_10.pth', 'weights')
    tested = _write(tmp_path / 'tested.py', TESTED_CONFIG)
    np.save(osp.join(folder, 'texts.npy'), np.eye(2, 4, dtype=np.float32))
    meta = dict(format=features.FORMAT, version=1, model_key='0123456789abcdef',
                config=evil, cfg_options=None, checkpoint=osp.abspath(ckpt), views=None,
                source='train')
    _write(osp.join(folder, 'meta.json'), json.dumps(meta))
    return dict(bank=osp.join(folder, 'texts.npy'), folder=folder, marker=marker,
                ckpt=ckpt, tested=tested)


def test_a_bank_meta_json_never_runs_the_config_it_names(old_bank):
    cfg = Config.fromfile(old_bank['tested'])
    with logged_warning_messages() as records:
        meta = check_bank_matches(old_bank['bank'], cfg, old_bank['ckpt'])
    assert not old_bank['marker'].exists(), 'the config named in meta.json was run'
    assert meta is not None and meta['source'] == 'train'
    assert len(records) == 1, records
    message = records[0]
    assert '\n' not in message
    assert f'QB-Norm bank {old_bank["bank"]}' in message
    assert 'never read' in message and 'only the checkpoint path could be checked' in message
    assert 'cannot tell whether it was made by the tested model' in message
    assert (f'python tools/extract_features.py {old_bank["tested"]} {old_bank["ckpt"]} '
            f'--split train --skip-videos --out {old_bank["folder"]} --overwrite') in message


def test_tools_test_bank_check_never_runs_the_config_of_meta_json(old_bank):
    """The path of tools/test.py: check_qb_norm_banks -> check_bank_matches."""
    cfg = Config.fromfile(old_bank['tested'])
    cfg.test_evaluator = dict(type='RetrievalRecallMetric', qb_norm=dict(bank=old_bank['bank']))
    with logged_warning_messages() as records:
        assert check_qb_norm_banks(cfg, old_bank['ckpt']) == [old_bank['bank']]
    assert not old_bank['marker'].exists()
    assert len(records) == 1 and old_bank['folder'] in records[0]


def test_meta_json_cfg_options_are_data_merged_into_the_tested_config(old_bank):
    """An older bank made from the tested config file itself is still verified: that file
    (the one tools/test.py was given) is read again with the recorded cfg_options (data),
    and the recorded key is reproduced."""
    options = {'model.temperature': 0.02}
    cfg = Config.fromfile(old_bank['tested'])
    bank_cfg = Config.fromfile(old_bank['tested'])
    bank_cfg.merge_from_dict(options)
    meta_path = osp.join(old_bank['folder'], 'meta.json')
    meta = json.load(open(meta_path))
    meta.update(config=old_bank['tested'], cfg_options=options,
                model_key=model_key(bank_cfg, checkpoint_fingerprint(old_bank['ckpt']), None))
    _write(meta_path, json.dumps(meta))
    with logged_warning_messages() as records:
        check_bank_matches(old_bank['bank'], cfg, old_bank['ckpt'])
    # (verified: the same checkpoint, another model setting: the usual one-line warning)
    assert len(records) == 1 and 'model.temperature: 0.02 (bank) vs 0.01 (tested)' in \
        records[0], records
    meta['cfg_options'] = 'not a dict'
    _write(meta_path, json.dumps(meta))
    with logged_warning_messages() as records:
        check_bank_matches(old_bank['bank'], cfg, old_bank['ckpt'])
    assert len(records) == 1 and 'cannot be merged' in records[0]
    assert not old_bank['marker'].exists()


# ------------------------------------------------------------------ 4. unpredictable temp files
@pytest.fixture
def victim(tmp_path):
    path = tmp_path / 'victim.txt'
    path.write_text('precious')
    return path


def _plant(link, victim):
    os.symlink(str(victim), str(link))
    return link


def _assert_untouched(folder, victim, expected):
    assert victim.read_bytes() == b'precious', 'written through the planted symlink'
    assert sorted(os.listdir(folder)) == sorted(expected), 'a temporary file was left'


def test_save_atomic_does_not_follow_a_symlink_at_the_old_temp_name(tmp_path, victim):
    from stan_mm.utils.stan_convert import save_atomic
    out_dir = tmp_path / 'out'
    out_dir.mkdir()
    out = out_dir / 'model.pth'
    link = _plant(out_dir / f'.model.pth.tmp-{os.getpid()}', victim)
    save_atomic({'state_dict': {'w': torch.ones(3)}}, str(out))
    _assert_untouched(out_dir, victim, ['model.pth', link.name])
    assert torch.equal(torch.load(str(out))['state_dict']['w'], torch.ones(3))
    assert os.stat(out).st_mode & 0o777 == 0o666 & ~_umask()


def test_save_atomic_leaves_no_temporary_file_when_the_write_fails(tmp_path):
    from stan_mm.utils.stan_convert import save_atomic

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError('cannot pickle')
    with pytest.raises(RuntimeError, match='cannot pickle'):
        save_atomic({'x': Unpicklable()}, str(tmp_path / 'model.pth'))
    assert os.listdir(tmp_path) == []


def test_feature_files_do_not_follow_symlinks_at_the_old_temp_names(tmp_path, victim):
    out = tmp_path / 'feat'
    out.mkdir()
    links = [_plant(out / name, victim).name
             for name in ('videos.npy.tmp.npy', 'sim.npy.tmp.npy', 'meta.json.tmp')]
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    features.atomic_save_npy(str(out / 'videos.npy'), array)
    features.atomic_save_product_npy(str(out / 'sim.npy'), array, array)
    features._atomic_write_text(str(out / 'meta.json'), '{"a": 1}')
    _assert_untouched(out, victim, ['videos.npy', 'sim.npy', 'meta.json'] + links)
    assert np.array_equal(np.load(out / 'videos.npy'), array)
    assert np.load(out / 'sim.npy').shape == (2, 2)
    assert json.load(open(out / 'meta.json')) == {'a': 1}
    mode = 0o666 & ~_umask()
    assert all(os.stat(out / n).st_mode & 0o777 == mode
               for n in ('videos.npy', 'sim.npy', 'meta.json'))


def test_feature_shards_do_not_follow_a_symlink_at_the_old_temp_name(tmp_path, victim):
    store = features.ShardStore(str(tmp_path / 'feat'))
    store.start('key')
    # (the link counts as a shard file: the next shard is number 1, whose temporary name
    # was shard-000001.tmp.npz)
    link = _plant(osp.join(store.dir, 'shard-000001.tmp.npz'), victim)
    shard = osp.basename(store._next_name())
    assert shard == 'shard-000001.npz'
    store.write(['a\t1\t2'], np.ones((1, 4), np.float32))
    # (start() removes a leftover *.tmp.npz, so the link is planted after it)
    _assert_untouched(store.dir, victim, ['run.json', shard, osp.basename(link)])
    assert list(store.read()) == ['a\t1\t2']


def test_a_failed_feature_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    out = tmp_path / 'feat'
    out.mkdir()

    def full_disk(f, array, **kwargs):
        f.write(b'partial')
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(np, 'save', full_disk)
    with pytest.raises(features.FeatureWriteError, match='cannot write .*videos.npy'):
        features.atomic_save_npy(str(out / 'videos.npy'), np.zeros(2))
    assert os.listdir(out) == []


def test_the_temporary_files_a_killed_extraction_left_are_still_swept(tmp_path):
    """The mkstemp names (and the fixed names of earlier versions) of the folder's files
    are removed; other files and symbolic links stay."""
    out = tmp_path / 'feat'
    out.mkdir()
    swept = ['sim.npy.tmp.npy', 'meta.json.tmp', 'sim.npy.k3j_x9a0.tmp.npy',
             'videos.txt.abcdefgh.tmp', 'meta.json.0123abcd.tmp']
    kept = ['notes.tmp.npy', 'sim.npy.tmp', 'videos.npy.toolong12.tmp.npy.bak',
            'videos.npy.short.tmp.npy']
    for name in swept + kept:
        (out / name).write_bytes(b'x')
    (tmp_path / 'v').write_text('precious')
    os.symlink(str(tmp_path / 'v'), str(out / 'texts.npy.zzzzzzzz.tmp.npy'))
    logs = []
    assert sorted(features._remove_temp_files(str(out), logs.append)) == sorted(swept)
    assert sorted(os.listdir(out)) == sorted(kept + ['texts.npy.zzzzzzzz.tmp.npy'])
    assert len(logs) == len(swept)


def test_benchmark_videos_do_not_follow_a_symlink_at_the_old_temp_name(tmp_path, victim):
    pytest.importorskip('cv2')
    from stan_mm.utils import benchmark
    cache = tmp_path / 'videos'
    cache.mkdir()
    name = 'bench_64x48_4f_s0_0.mp4'
    link = _plant(cache / (name + '.tmp.mp4'), victim)
    stale = cache / f'.{name}.abcd1234.tmp.mp4'          # a killed run's, long ago
    stale.write_bytes(b'part')
    os.utime(stale, (time.time() - 3600, ) * 2)
    fresh = cache / f'.{name}.efgh5678.tmp.mp4'          # another run's, being written
    fresh.write_bytes(b'part')
    paths = benchmark.write_benchmark_videos(str(cache), num_videos=1, width=64, height=48,
                                             num_frames=4)
    assert paths == [str(cache / name)] and osp.getsize(paths[0]) > 0
    _assert_untouched(cache, victim, [name, link.name, fresh.name])


# ------------------------------------------------------------------ 5. caption pickle bombs
def _str_bomb(depth):
    """The reviewer's bomb (278 bytes at depth 25): ``str`` of a list whose every level
    holds the level below twice (a repr of 2**depth leaves)."""
    data = b'\x80\x02c__builtin__\nstr\n]q\x000'
    for i in range(depth):
        data += b'](h' + bytes([i]) + b'h' + bytes([i]) + b'eq' + bytes([i + 1]) + b'0'
    return data + b'h' + bytes([depth]) + b'\x85R.'


def _tuple_dag(depth):
    """Pickle opcodes pushing a tuple whose every level holds the level below twice (its
    hash visits 2**depth leaves)."""
    data = b')q\x000'
    for i in range(depth):
        data += b'h' + bytes([i]) + b'h' + bytes([i]) + b'\x86q' + bytes([i + 1]) + b'0'
    return data + b'h' + bytes([depth])


def _list_dag(depth):
    data = b'\x80\x02]q\x000'
    for i in range(depth):
        data += b'](h' + bytes([i]) + b'h' + bytes([i]) + b'eq' + bytes([i + 1]) + b'0'
    return data + b'h' + bytes([depth]) + b'.'


def _refused(path, *needles):
    start = time.perf_counter()
    with pytest.raises(AnnotationError) as info:
        load_restricted_pickle(path)
    assert time.perf_counter() - start < 2
    message = str(info.value)
    assert message.startswith(path + ': ') and '\n' not in message
    assert info.value.file == path
    for needle in needles:
        assert needle in message, message
    return message


@pytest.mark.parametrize('depth', [12, 25])
def test_the_str_pickle_bomb_is_refused_quickly(tmp_path, depth):
    bomb = _str_bomb(depth)
    assert depth != 25 or len(bomb) == 278
    path = _write(tmp_path / 'raw-captions.pkl', bomb)
    _refused(path, 'refusing to unpickle builtins.str')


@pytest.mark.parametrize('data', [
    pytest.param(b'\x80\x02}' + _tuple_dag(22) + b'K\x01s.', id='SETITEM'),
    pytest.param(b'\x80\x02}(' + _tuple_dag(22) + b'K\x01u.', id='SETITEMS'),
    pytest.param(b'(' + _tuple_dag(22) + b'K\x01d.', id='DICT'),
    pytest.param(b'\x80\x04\x8f(' + _tuple_dag(22) + b'\x90.', id='ADDITEMS'),
    pytest.param(b'\x80\x04(' + _tuple_dag(22) + b'\x91.', id='FROZENSET'),
    pytest.param(b'\x80\x02c__builtin__\nset\n' + _tuple_dag(22) + b'\x85\x85R.', id='set()'),
    pytest.param(b'\x80\x02c__builtin__\ndict\n' + _tuple_dag(22) + b'K\x01\x86\x85\x85R.',
                 id='dict()'),
    pytest.param(b'\x80\x02c__builtin__\nfrozenset\n' + _tuple_dag(22) + b'\x85\x85\x81.',
                 id='NEWOBJ'),
])
def test_hash_bombs_are_refused(tmp_path, data):
    """A key / set member hashed through a self-repeating tuple (2**22 leaves here; 2**60
    would never end) is refused before it is hashed, however the dict or set is built."""
    path = _write(tmp_path / 'raw-captions.pkl', data)
    _refused(path, 'not a plain caption pickle')


def test_shared_references_cannot_expand_a_pickle_without_bound(tmp_path):
    path = _write(tmp_path / 'raw-captions.pkl', _list_dag(40))
    _refused(path, 'expands to more than')
    looped = pickle.dumps([[]])
    loop = []
    loop.append(loop)
    path = _write(tmp_path / 'loop.pkl', pickle.dumps(loop))
    _refused(path, 'holds itself')
    assert load_restricted_pickle(_write(tmp_path / 'ok.pkl', looped)) == [[]]


@pytest.mark.parametrize('data,needle', [
    pytest.param(pickle.dumps(collections.defaultdict(str)), 'builtins.str',
                 id='defaultdict-str'),
    pytest.param(b'\x80\x02}}b.', 'BUILD', id='BUILD'),
    pytest.param(pickle.dumps({2 ** 70: 1}), 'dict key of type int', id='big-int-key'),
    pytest.param(pickle.dumps({1.5: 1}), 'dict key of type float', id='float-key'),
])
def test_only_plain_forms_of_the_containers_load(tmp_path, data, needle):
    _refused(_write(tmp_path / 'raw-captions.pkl', data), needle)


def test_an_oversized_caption_pickle_is_not_read(tmp_path, monkeypatch):
    monkeypatch.setattr(readers_common, 'MAX_CAPTION_PICKLE_BYTES', 1000)
    path = _write(tmp_path / 'raw-captions.pkl', pickle.dumps({'v': [['x' * 2000]]}))
    _refused(path, 'larger than')


@pytest.mark.parametrize('proto', range(pickle.HIGHEST_PROTOCOL + 1))
def test_real_caption_pickles_still_load(tmp_path, proto):
    captions = {'-4wsuPCjDBc_5_15': [['a', 'squirrel', 'is', 'eating'], ['a', 'chipmunk']],
                '0lh_UWF9ZP4_62_69': [['a', 'woman', 'slices', 'a', 'tomato']]}
    vocab = {}       # tokens shared between captions (memo references), as an interned
    shared = {vid: [[vocab.setdefault(t, t) for t in cap] for cap in caps]
              for vid, caps in captions.items()}
    data = {'plain': captions, 'shared': shared,
            'ordered': collections.OrderedDict(captions),
            'default': collections.defaultdict(list, captions),
            'misc': ({1, 2}, frozenset(['x']), (1.5, None, True))}
    got = load_restricted_pickle(_write(tmp_path / 'c.pkl', pickle.dumps(data, proto)))
    assert got == data
    assert type(got['ordered']) is collections.OrderedDict
    assert got['default'].default_factory is list
    path = _write(tmp_path / 'raw-captions.pkl', pickle.dumps(captions, proto))
    ann = _write(tmp_path / 'test_list.txt', '-4wsuPCjDBc_5_15\n0lh_UWF9ZP4_62_69\n')
    entries = read_msvd(ann, path)
    assert [e.captions for e in entries] == [['a squirrel is eating', 'a chipmunk'],
                                             ['a woman slices a tomato']]


def _copying_bomb(n: int, k: int) -> bytes:
    """A dict of ``k`` entries, each ``builtins.list`` called on one shared list of ``n``
    memo references: ~6 bytes per call, ``n`` items copied by each."""
    import io
    out = io.BytesIO()
    out.write(pickle.PROTO + bytes([2]) + pickle.EMPTY_DICT + pickle.BINPUT + bytes([0]))
    out.write(pickle.EMPTY_LIST + pickle.BINPUT + bytes([1]) + pickle.MARK)
    out.write(pickle.SHORT_BINUNICODE + bytes([1]) + b'a' + pickle.BINPUT + bytes([2]))
    out.write((pickle.BINGET + bytes([2])) * (n - 1) + pickle.APPENDS + pickle.POP)
    out.write(pickle.MARK)
    for i in range(k):
        name = str(i).encode()
        out.write(pickle.SHORT_BINUNICODE + bytes([len(name)]) + name + pickle.GLOBAL
                  + b'builtins\nlist\n' + pickle.BINGET + bytes([1]) + pickle.TUPLE1
                  + pickle.REDUCE)
    out.write(pickle.SETITEMS + pickle.STOP)
    return out.getvalue()


def test_a_pickle_whose_calls_copy_one_list_many_times_is_refused_while_loading(tmp_path):
    """Diff review: list(L) called 2000 times on a list of 100,000 references (a 250 kB
    file) allocated 2.3 GB before the loaded object could be measured. The container
    calls now draw on a budget of the file's size and the load stops when it is spent;
    a few such calls on a real-sized list still load."""
    from stan_mm.datasets.readers_common import AnnotationError, load_restricted_pickle
    bomb = tmp_path / 'bomb.pkl'
    bomb.write_bytes(_copying_bomb(100_000, 2000))
    with pytest.raises(AnnotationError, match='container calls copy more items than its '
                       'size allows'):
        load_restricted_pickle(str(bomb))
    small = tmp_path / 'small.pkl'
    small.write_bytes(_copying_bomb(1000, 3))
    loaded = load_restricted_pickle(str(small))
    assert sorted(loaded) == ['0', '1', '2'] and len(loaded['0']) == 1000
