"""A feature folder keeps one precision: ``tools/extract_features.py --amp`` (and
``stan_mm.apis.extract_features(precision=...)``) records the precision the embeddings were
made in (``.partial/run.json``, ``meta.json``) and refuses to resume or extend a folder in
another one, which used to give a ``videos.npy`` whose rows came from two precisions.

Tiny random retrieval model and generated videos (the helpers of ``test_user_tools``); on
the CPU, ``--amp bf16`` autocasts in bf16.
"""
import json
import os
import os.path as osp
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, osp.dirname(__file__))
from test_user_tools import load_tool, retrieval_gallery  # noqa: E402

NUM_VIDEOS = 3


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    setup = retrieval_gallery(tmp_path_factory.mktemp('precision'), NUM_VIDEOS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield dict(setup, tool=load_tool('tools/extract_features.py'))
    finally:
        torch.set_num_threads(threads)


def tool_args(setup, out, *extra):
    return [setup['cfg'], setup['ckpt'], '--videos', setup['videos'], '--out', str(out),
            '--batch-size', '1', '--shard-size', '1', '--num-workers', '0',
            '--no-progress', *extra]


def api(setup, out, precision='fp32', **kwargs):
    """``extract_features`` over the videos (the first ``n`` of them), under bf16 autocast
    when ``precision`` is bf16, as the tool runs it."""
    from stan_mm.apis import extract_features
    from stan_mm.apis.embed import autocast_towers
    n = kwargs.pop('n', NUM_VIDEOS)
    logs = kwargs.pop('logs', [])
    with autocast_towers(torch.device('cpu'), precision != 'fp32'):
        return extract_features(setup['model'], str(out), videos=setup['names'][:n],
                                video_root=setup['videos'], key='k', batch_size=1,
                                num_workers=0, shard_size=1, progress=False,
                                precision=precision, log=logs.append, **kwargs)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def listing(folder):
    return sorted(osp.relpath(osp.join(d, f), folder)
                  for d, _, files in os.walk(folder) for f in files)


def test_a_bf16_run_resumed_without_amp_is_refused_then_resumes_in_bf16(setup, tmp_path,
                                                                         capsys):
    """--amp bf16 --limit 1, then the same command without --amp: one error line naming
    the folder, both precisions and the fixes; nothing deleted. With --amp bf16 again it
    resumes (reusing the shard) and meta.json records bf16."""
    tool, out = setup['tool'], tmp_path / 'out'
    assert tool.main(tool_args(setup, out, '--amp', 'bf16', '--limit', '1')) == 0
    partial = out / '.partial'
    assert read_json(partial / 'run.json')['precision'] == 'bf16'
    before = listing(out)
    shard = np.load(partial / 'shard-000000.npz')['emb']
    capsys.readouterr()

    rc = tool.main(tool_args(setup, out))
    err = capsys.readouterr().err
    assert rc == 2 and 'Traceback' not in err, err
    line, = [ln for ln in err.splitlines() if ln]
    assert line.startswith(f'extract_features: error: {out} holds partial results of an '
                           f'unfinished run ({partial / "run.json"}) made in bf16 '
                           f'(--amp bf16), but this run embeds in fp32 (no --amp)'), line
    assert 'mixed in one videos.npy' in line
    assert line.endswith('Rerun with --amp bf16 to continue in bf16, use another output '
                         'folder, or --overwrite to replace them'), line
    assert listing(out) == before                                  # nothing deleted
    np.testing.assert_array_equal(np.load(partial / 'shard-000000.npz')['emb'], shard)

    assert tool.main(tool_args(setup, out, '--amp', 'bf16')) == 0
    assert f'{NUM_VIDEOS} videos: 1 already embedded (reused), {NUM_VIDEOS - 1} to embed' \
        in capsys.readouterr().out
    meta = read_json(out / 'meta.json')
    assert (meta['precision'], meta['amp']) == ('bf16', 'bf16')
    assert not osp.exists(partial)
    np.testing.assert_array_equal(np.load(out / 'videos.npy')[0], shard[0])


def test_an_fp32_run_resumed_with_amp_is_refused(setup, tmp_path, capsys):
    """The reverse: interrupted without --amp, resumed with --amp bf16: the fix is to rerun
    without --amp."""
    tool, out = setup['tool'], tmp_path / 'out'
    assert tool.main(tool_args(setup, out, '--limit', '1')) == 0
    assert read_json(out / '.partial' / 'run.json')['precision'] == 'fp32'
    capsys.readouterr()
    assert tool.main(tool_args(setup, out, '--amp', 'bf16')) == 2
    err = capsys.readouterr().err
    assert 'made in fp32 (no --amp), but this run embeds in bf16 (--amp bf16)' in err, err
    assert 'Rerun without --amp to continue in fp32' in err
    assert len(os.listdir(out / '.partial')) == 2               # run.json + the shard


def test_overwrite_replaces_embeddings_of_another_precision(setup, tmp_path, capsys):
    """--overwrite: the bf16 shards (and finished rows) are dropped and every video is
    embedded again in fp32, equal to a fresh fp32 run."""
    out, fresh = tmp_path / 'out', tmp_path / 'fresh'
    api(setup, out, 'bf16', limit=1)
    logs = []
    res = api(setup, out, 'fp32', overwrite=True, logs=logs)
    assert (res.complete, res.reused, res.new) == (True, 0, NUM_VIDEOS)
    assert any('replacing partial results' in m and '(overwrite)' in m for m in logs), logs
    api(setup, fresh, 'fp32')
    np.testing.assert_array_equal(np.load(out / 'videos.npy'), np.load(fresh / 'videos.npy'))
    assert read_json(out / 'meta.json')['precision'] == 'fp32'

    # a finished bf16 folder, overwritten in fp32: all rows are fp32 ones
    api(setup, out, 'bf16', overwrite=True)
    bf16 = np.load(out / 'videos.npy')
    assert not np.array_equal(bf16, np.load(fresh / 'videos.npy'))  # bf16 did run
    res = api(setup, out, 'fp32', overwrite=True)
    assert (res.reused, res.new) == (0, NUM_VIDEOS)
    np.testing.assert_array_equal(np.load(out / 'videos.npy'), np.load(fresh / 'videos.npy'))


def test_a_finished_folder_is_not_extended_or_reused_in_another_precision(setup, tmp_path):
    """A finished bf16 folder: adding videos (or rerunning on the same ones) in fp32 is
    refused, naming meta.json; in bf16 the rows are reused."""
    from stan_mm.apis.features import PrecisionMismatchError
    out = tmp_path / 'out'
    api(setup, out, 'bf16', n=2)
    for n in (NUM_VIDEOS, 2):    # new videos; the same videos, all of them reusable
        with pytest.raises(PrecisionMismatchError) as e:
            api(setup, out, 'fp32', n=n)
        assert (e.value.recorded, e.value.requested) == ('bf16', 'fp32')
        assert f'finished video embeddings ({out / "meta.json"}) made in bf16' in str(e.value)
    assert not osp.exists(out / '.partial')
    assert read_json(out / 'meta.json')['num_videos'] == 2
    res = api(setup, out, 'bf16')
    assert (res.complete, res.reused, res.new) == (True, 2, 1)


def test_folders_written_before_the_precision_was_recorded_are_accepted(setup, tmp_path):
    """A run.json without "precision" (shards reused, with a warning); a meta.json without
    "precision" or "amp" (accepted); a meta.json with only "amp" (read by it)."""
    from stan_mm.apis.features import PrecisionMismatchError
    out = tmp_path / 'out'
    api(setup, out, 'fp32', limit=1)
    run_json = out / '.partial' / 'run.json'
    run_json.write_text(json.dumps({'model_key': 'k'}))       # as written before
    logs = []
    res = api(setup, out, 'bf16', logs=logs)
    assert (res.complete, res.reused) == (True, 1)
    assert any('WARNING' in m and 'before the precision was recorded' in m for m in logs)

    meta_path = out / 'meta.json'
    meta = read_json(meta_path)
    for old in ({}, {'amp': 'bf16'}, {'amp': False}):
        legacy = {k: v for k, v in meta.items() if k not in ('precision', 'amp')}
        meta_path.write_text(json.dumps(dict(legacy, **old)))
        if old.get('amp') is False:      # recorded as fp32 by the amp of older folders
            with pytest.raises(PrecisionMismatchError, match='made in fp32 \\(no --amp\\)'):
                api(setup, out, 'bf16')
            continue
        res = api(setup, out, 'bf16')
        assert (res.complete, res.reused, res.new) == (True, NUM_VIDEOS, 0)


def test_a_gallery_cache_of_another_precision_names_the_cache_to_delete(setup, tmp_path):
    """search_gallery embeds in fp32: a cache embedded in bf16 (e.g. extract_features.py
    --amp into it) is refused with the search's fix, not --amp."""
    from stan_mm.apis import search_gallery
    from stan_mm.apis.features import PrecisionMismatchError
    from stan_mm.apis.search import gallery_cache_dir
    cache = gallery_cache_dir(setup['videos'], 'k', str(tmp_path / 'cache'))
    api(setup, cache, 'bf16')
    with pytest.raises(PrecisionMismatchError) as e:
        search_gallery(setup['model'], setup['videos'], ['a shape'], 'k',
                       cache=str(tmp_path / 'cache'), num_workers=0, progress=False,
                       log=lambda m: None)
    assert str(e.value) == (f'the gallery cache {cache} holds embeddings made in bf16, and '
                            f'this search embeds in fp32: delete {cache} and search again '
                            f'(the gallery is embedded again in fp32)')


def test_a_bad_precision_is_refused(setup, tmp_path):
    with pytest.raises(ValueError, match='precision must be one of'):
        api(setup, tmp_path / 'out', 'fp64')
