"""Fuzz the retrieval annotation readers: arbitrary bytes, text and JSON-ish content in
the annotation files must either read into well-formed :class:`VideoEntry` records or
fail with :class:`AnnotationError` naming the file; never any other exception."""
import json
import pickle

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stan_mm  # noqa: F401
import stan_mm.datasets.retrieval  # noqa: F401
from mmaction.registry import DATASETS
from stan_mm.datasets.readers import (read_didemo, read_lsmdc, read_msrvtt, read_msvd,
                                      read_video_text_json)
from stan_mm.datasets.readers_common import (AnnotationError, AnnotationPolicy,
                                             load_restricted_pickle)

FUZZ = settings(max_examples=100, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
POLICIES = st.builds(AnnotationPolicy, *(st.sampled_from(['error', 'drop'])
                                         for _ in range(4)))

# Mostly-valid pieces (so that reads also succeed and go deep) mixed with anything.
VALID_IDS = st.sampled_from(['video0', 'video1', 'video2', 'v1.mp4', 'b@N0_2.avi',
                             '1004_Juno_00.00.32.849-00.00.38.210'])
VALID_CAPS = st.sampled_from(['a man sings', ' padded ', 'naïve café 日本', 'x' * 300,
                              '"quoted"', 'a, b', 'tab\tinside'])
BAD_IDS = st.sampled_from([' ', '', 'a\x01b', '\ud800', '{video_id}', 'a\nb'])
BAD_CAPS = st.sampled_from(['', '  ', '\u2028', '\x00', '\ud83d', '\r', 'nan'])
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
           | st.text(max_size=8))
IDS = st.one_of(VALID_IDS, VALID_IDS, VALID_IDS, BAD_IDS, SCALARS)
CAPS = st.one_of(VALID_CAPS, VALID_CAPS, VALID_CAPS, BAD_CAPS, SCALARS)
# in text files, lone surrogates can only come as invalid UTF-8 (the binary branches)
_BAD_TEXT_IDS = st.sampled_from([' ', '', 'a\x01b', '{video_id}', 'a\nb'])
_BAD_TEXT_CAPS = st.sampled_from(['', '  ', '\u2028', '\x00', '\r', 'nan'])
TEXT_IDS = st.one_of(*[VALID_IDS] * 4, _BAD_TEXT_IDS, st.text(max_size=8))
TEXT_CAPS = st.one_of(*[VALID_CAPS] * 4, _BAD_TEXT_CAPS, st.text(max_size=8))
KEYS = st.sampled_from(['video_id', 'caption', 'sentences', 'video', 'description',
                        'times', 'sen_id']) | st.text(max_size=6)
JSONISH = st.recursive(SCALARS | IDS | CAPS, lambda ch: st.lists(ch, max_size=4)
                       | st.dictionaries(KEYS, ch, max_size=4), max_leaves=25)


def _encode(text: str) -> bytes:
    return text.encode('utf-8', 'surrogatepass')


def _rows(row, sep):
    """Lines of ``row`` tuples joined by ``sep``, sometimes with a junk line."""
    line = row.map(sep.join) | st.lists(TEXT_CAPS, max_size=7).map(sep.join)
    lines = st.lists(st.one_of(*[row.map(sep.join)] * 5, line), min_size=1, max_size=8)
    return lines.map(lambda ls: _encode('\n'.join(ls)))


def _text_content(rows):
    """Structured rows, arbitrary text, or arbitrary bytes."""
    return st.one_of(rows, rows, rows, st.text(max_size=200).map(_encode),
                     st.binary(max_size=200))


def _json_content(structured):
    dumped = st.tuples(structured | JSONISH, st.sampled_from([None, 1]), st.booleans()).map(
        lambda t: json.dumps(t[0], ensure_ascii=t[2], indent=t[1]))
    corrupted = st.tuples(dumped, st.integers(0, 400), st.text(max_size=3)).map(
        lambda t: t[0][:t[1]] + t[2] + t[0][t[1]:])
    return st.one_of(dumped.map(_encode), dumped.map(_encode), dumped.map(_encode),
                     corrupted.map(_encode), st.binary(max_size=200))


LIST_ROWS = _rows(st.tuples(TEXT_IDS), ' ')
JSFUSION_ROWS = _rows(st.tuples(st.just('r0'), st.just('m0'), TEXT_IDS,
                                TEXT_CAPS.map(lambda c: '"' + c.replace('"', '""') + '"')),
                      ',')
LSMDC_ROWS = _rows(st.tuples(TEXT_IDS, st.sampled_from(['00.00.32.849', '1.5', 'x', '']),
                             st.just('00.00.38.210'), st.just('0'), st.just('1'),
                             TEXT_CAPS), '\t')
MSRVTT_JSON = st.fixed_dictionaries({'sentences': st.lists(
    st.one_of(*[st.fixed_dictionaries({'video_id': IDS, 'caption': CAPS})] * 3,
              st.dictionaries(KEYS, JSONISH, max_size=3)), min_size=1, max_size=6)})
TIMES = st.lists(st.lists(st.integers(-2, 6) | SCALARS, min_size=2, max_size=2)
                 | JSONISH, max_size=3)
DIDEMO_JSON = st.lists(st.fixed_dictionaries(
    {'video': IDS, 'description': CAPS}, optional={'times': TIMES | JSONISH}),
    min_size=1, max_size=6)
VTJSON = st.dictionaries(TEXT_IDS, st.lists(CAPS, min_size=1, max_size=4) | JSONISH,
                         min_size=1, max_size=5)
PICKLED = st.one_of(*[st.dictionaries(st.one_of(*[VALID_IDS] * 4, TEXT_IDS), st.lists(
    st.lists(CAPS, max_size=4) | CAPS, min_size=1, max_size=4) | JSONISH, min_size=1,
    max_size=5)] * 3, JSONISH)


def _pickle_bytes():
    dumped = st.tuples(PICKLED, st.integers(0, pickle.HIGHEST_PROTOCOL)).map(
        lambda t: pickle.dumps(t[0], protocol=t[1]))
    flipped = st.tuples(dumped, st.integers(0, 10 ** 6), st.integers(0, 255)).map(
        lambda t: _flip(*t))
    return st.one_of(*[dumped] * 4, flipped, st.binary(max_size=120))


def _flip(data, pos, byte):
    pos %= max(len(data), 1)
    return data[:pos] + bytes([byte]) + data[pos + 1:]


@pytest.fixture(scope='module')
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp('fuzz')


def _write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _check(read, files):
    """Run a reader: success must give sane entries, failure only AnnotationError."""
    try:
        entries = read()
    except AnnotationError as e:
        assert e.file in files, (e.file, files)
        assert e.line is None or (isinstance(e.line, int) and e.line >= 1)
        assert str(e)
        return None
    assert entries
    ids = [e.video_id for e in entries]
    assert len(ids) == len(set(ids))
    for e in entries:
        assert e.video_id and e.video_id == e.video_id.strip()
        assert e.captions and all(isinstance(c, str) and c and c == c.strip()
                                  for c in e.captions)
        for c in e.captions:
            c.encode('utf-8')
    return entries


@FUZZ
@given(csv=_text_content(JSFUSION_ROWS), data=_json_content(MSRVTT_JSON),
       policy=POLICIES, use_json=st.booleans(),
       header=st.sampled_from([True, True, True, False]))
def test_fuzz_msrvtt(fuzz_dir, csv, data, policy, use_json, header):
    head = b'key,vid_key,video_id,sentence\n' if header else b''
    f = _write(fuzz_dir / 'msrvtt.csv', head + csv)
    j = _write(fuzz_dir / 'msrvtt.json', data)
    _check(lambda: read_msrvtt(f, j if use_json else None, policy=policy), {f, j})


@FUZZ
@given(lst=_text_content(LIST_ROWS), data=_json_content(DIDEMO_JSON), policy=POLICIES,
       use_list=st.booleans(), sep=st.sampled_from([' ', '\n', '']))
def test_fuzz_didemo(fuzz_dir, lst, data, policy, use_list, sep):
    f = _write(fuzz_dir / 'list.txt', lst)
    j = _write(fuzz_dir / 'data.json', data)
    if use_list:
        read = lambda: read_didemo(f, j, policy=policy, paragraph_sep=sep)  # noqa: E731
    else:
        read = lambda: read_didemo(j, policy=policy, paragraph_sep=sep)  # noqa: E731
    entries = _check(read, {f, j})
    for e in entries or []:
        assert len(e.captions) == 1
        assert e.captions[0] == sep.join(e.extra['descriptions'])


@FUZZ
@given(tsv=_text_content(LSMDC_ROWS), policy=POLICIES)
def test_fuzz_lsmdc(fuzz_dir, tsv, policy):
    f = _write(fuzz_dir / 'lsmdc.csv', tsv)
    _check(lambda: read_lsmdc(f, policy=policy), {f})


@st.composite
def _msvd_files(draw):
    """(list file bytes, pickle bytes); the list mostly names videos of the pickle."""
    tokens = st.one_of(*[st.lists(VALID_CAPS, min_size=1, max_size=3)] * 4,
                       st.lists(CAPS, max_size=3), CAPS)
    captions = draw(st.dictionaries(st.one_of(*[VALID_IDS] * 4, TEXT_IDS),
                                    st.lists(tokens, min_size=1, max_size=4),
                                    min_size=1, max_size=4))
    names = draw(st.lists(st.one_of(*[st.sampled_from(sorted(captions))] * 4, TEXT_IDS),
                          min_size=1,
                          max_size=5))
    listed = _encode('\n'.join(names))
    pkl = pickle.dumps(captions, protocol=draw(st.integers(0, pickle.HIGHEST_PROTOCOL)))
    return (draw(st.one_of(*[st.just(listed)] * 4, _text_content(LIST_ROWS))),
            draw(st.one_of(*[st.just(pkl)] * 4, _pickle_bytes())))


@FUZZ
@given(files=_msvd_files(), policy=POLICIES)
def test_fuzz_msvd(fuzz_dir, files, policy):
    f = _write(fuzz_dir / 'msvd_list.txt', files[0])
    p = _write(fuzz_dir / 'raw-captions.pkl', files[1])
    _check(lambda: read_msvd(f, p, policy=policy), {f, p})


@FUZZ
@given(pkl=_pickle_bytes())
def test_fuzz_restricted_pickle(fuzz_dir, pkl):
    p = _write(fuzz_dir / 'any.pkl', pkl)
    try:
        load_restricted_pickle(p)
    except AnnotationError as e:
        assert e.file == p


@FUZZ
@given(data=_json_content(VTJSON), policy=POLICIES, test_mode=st.booleans())
def test_fuzz_video_text_json_and_dataset(fuzz_dir, data, policy, test_mode):
    j = _write(fuzz_dir / 'vt.json', data)
    entries = _check(lambda: read_video_text_json(j, policy=policy), {j})
    if entries is None:
        return
    # whatever the reader accepts, the dataset numbers consistently
    ds = DATASETS.build(dict(
        type='RetrievalVideoTextDataset', ann_format='json', ann_file=j, pipeline=[],
        data_prefix=dict(video=''), check_files=False, test_mode=test_mode,
        serialize_data=False, **vars(policy)))
    assert ds.num_videos == len(entries)
    assert ds.num_captions == sum(len(e.captions) for e in entries)
    flat = [v for v, e in enumerate(entries) for _ in e.captions]
    assert ds.text_to_video.tolist() == flat
