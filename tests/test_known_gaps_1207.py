"""Known gaps closed on 2026-12-07 that have no better home: the ranking's progress log
says where it stopped when it fails; the training batch and the gloo switch in the run's
log; gpu_session.py's install folder (security review); NaN rows of feature folders and
search caches written by older versions; TextClassifierHead's tokens as a buffer (no
host-to-device copy per fine-tuning step); import stan_mm without pkg_resources."""
import io
import json
import os

import pytest
import torch

from stan_mm.evaluation.ranking import retrieval_ranks
from stan_mm.evaluation.similarity import EmbeddingSimilarity


class _FailsAtRow(EmbeddingSimilarity):
    """Similarity rows that raise once ``rows`` reaches text ``fail_at``."""

    def __init__(self, *args, fail_at, **kwargs):
        super().__init__(*args, **kwargs)
        self.fail_at = fail_at

    def rows(self, start, stop, pad_to=None):
        if stop > self.fail_at:
            raise OSError(f'read error at text row {start}')
        return super().rows(start, stop, pad_to=pad_to)


def test_a_failed_ranking_logs_where_it_stopped(monkeypatch):
    """A log (stderr not a terminal) shows the ranking's start line, and on an error a
    'stopped after' line with the rows done: the bar was left open before, so the log
    ended at the start line."""
    stream = io.StringIO()
    monkeypatch.setattr('sys.stderr', stream)
    g = torch.Generator().manual_seed(0)
    text, video = torch.randn(12, 8, generator=g), torch.randn(6, 8, generator=g)
    t2v = torch.arange(12) % 6
    source = _FailsAtRow(text, video, name='sims', fail_at=8)
    with pytest.raises(OSError, match='read error at text row 8'):
        retrieval_ranks(source, t2v, chunk_size=4, progress=True)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith('ranking (2 passes over the text rows): 0/24 rows')
    assert lines[-1].startswith('ranking (2 passes over the text rows): 8/24 rows (33%), '
                                'stopped after ')
    # a ranking that succeeds ends with 'done in'
    stream.truncate(0)
    stream.seek(0)
    retrieval_ranks(EmbeddingSimilarity(text, video, name='ok'), t2v, chunk_size=4,
                    progress=True)
    assert stream.getvalue().splitlines()[-1].startswith(
        'ranking (2 passes over the text rows): 24/24 rows (100%), done in ')


# ------------------------------------------- the training batch and the backend in the log
def test_train_log_states_the_batch_per_rank_and_per_step(tmp_path, capsys):
    """tools/train.py logs the batch a run trains on: per rank, over the ranks, and per
    optimizer step under gradient accumulation (mmengine logs it only with
    auto_scale_lr)."""
    from test_log_review_fixes2 import run_logs, train, write_config
    config = write_config(tmp_path / 'cfg.py', tmp_path / 'data')
    work_dir = tmp_path / 'work'
    assert train([config, '--work-dir', work_dir, '--cfg-options',
                  'optim_wrapper.accumulative_counts=2']) == 0
    (log, ) = run_logs(work_dir)
    assert ('training batch: 2 samples per rank x 1 rank = 2 samples per iteration, 4 per '
            'optimizer step (accumulative_counts=2)') in log


def test_gloo_fallback_is_written_to_the_run_log_once(monkeypatch, tmp_path):
    """The switch from nccl to gloo on a machine without CUDA happens before the run's
    log exists: it is printed (a Python warning, first rank only) and then written to the
    log file by tools/train.py and tools/test.py (log_config_warnings)."""
    import warnings
    from stan_mm.compat import dist as dist_fix
    from stan_mm.utils import cli
    cli.log_config_warnings(clear_only=True)
    monkeypatch.setenv('RANK', '1')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert dist_fix._cpu_backend('nccl', 'torch') == 'gloo'      # rank 1: silent
    assert cli._CONFIG_WARNINGS == []
    monkeypatch.setenv('RANK', '0')
    with pytest.warns(UserWarning, match='using the gloo backend instead of nccl'):
        assert dist_fix._cpu_backend('nccl', 'torch') == 'gloo'
    assert dist_fix._cpu_backend('gloo', 'torch') == 'gloo'
    written = []
    monkeypatch.setattr(cli, 'write_to_log_files',
                        lambda message, level, exclude=(): written.append((level, message)))
    cli.log_config_warnings()
    assert [level for level, _ in written] == ['WARNING']
    assert written[0][1].startswith('CUDA is not available: using the gloo backend instead '
                                    'of nccl (env_cfg.dist_cfg.backend')


# ------------------------------------------------------------ gpu_session.py --site
def test_gpu_session_refuses_an_install_folder_others_may_write(tmp_path):
    """The wheels' install folder goes first on the steps' PYTHONPATH: the default is no
    longer the fixed /tmp/stan_site (anyone could create it first and plant a
    sitecustomize.py), and a folder others may write to, or a link, is refused."""
    import os
    from test_benchmark_tool import _load
    session = _load('gpu_session_site', 'tools/analysis/gpu_session.py')
    args = session.parse_args(['--out', str(tmp_path / 'out')])
    assert args.site == os.path.join(session.ROOT, '.whl-site')
    fresh = tmp_path / 'fresh'
    session.check_site(str(fresh))
    assert fresh.is_dir() and (fresh.stat().st_mode & 0o777) == 0o700
    session.check_site(str(fresh))                   # its own folder: accepted again
    shared = tmp_path / 'shared'
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(SystemExit, match=r'--site .*shared is owned by another user or '
                       r'writable by others \(mode drwxrwxrwx\)'):
        session.check_site(str(shared))
    link = tmp_path / 'link'
    link.symlink_to(fresh)
    with pytest.raises(SystemExit, match='is not a folder'):
        session.check_site(str(link))


# ------------------------------------------------------ make_synthetic into a symlink
def test_synthetic_dataset_follows_a_symlinked_out_dir(tmp_path):
    """data/ -> a folder on a scratch disk: the dataset is written where the link points
    and the link stays (it was replaced by a folder on the link's disk); regenerating
    with other parameters (overwrite) keeps the link too."""
    import os
    from stan_mm.datasets.synthetic import generate_motion_dataset
    scratch = tmp_path / 'scratch' / 'motion'
    link = tmp_path / 'data'
    link.symlink_to(scratch)                         # (dangling: the target is created)
    small = dict(num_train=2, num_val=1, num_test=1, num_frames=4, size=32,
                 pairs=('horizontal', ), progress=False)
    meta = generate_motion_dataset(str(link), **small)
    assert link.is_symlink() and os.readlink(link) == str(scratch)
    assert (scratch / 'meta.json').is_file() and len(os.listdir(scratch / 'videos')) == 4
    assert generate_motion_dataset(str(link), **small) == meta      # idempotent
    generate_motion_dataset(str(link), **dict(small, num_train=4), overwrite=True)
    assert link.is_symlink() and len(os.listdir(scratch / 'videos')) == 6
    # with a trailing slash (shell completion adds it; islink('data/') is False)
    generate_motion_dataset(str(link) + os.sep, **dict(small, num_train=2), overwrite=True)
    assert link.is_symlink() and len(os.listdir(scratch / 'videos')) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ['data', 'scratch']


# ------------------------------------------- mmengine's default optimizer constructor
from test_log_review_fixes2 import current_log  # noqa: E402,F401  (a fixture)


def test_default_constructor_logs_groups_not_every_tensor(current_log):
    """The quickstart configs build their optimizer with mmengine's default constructor
    and a paramwise_cfg: one INFO line per (lr, weight decay) instead of one
    'paramwise_options' line per tensor setting (those at DEBUG); the groups are
    mmengine's, unchanged."""
    import logging
    import os.path as osp
    from mmengine.config import Config
    from mmengine.optim import DefaultOptimWrapperConstructor, build_optim_wrapper
    repo = osp.dirname(osp.dirname(osp.abspath(__file__)))
    cfg = Config.fromfile(osp.join(repo, 'configs', 'quickstart', 'motion_stan_tiny.py'))
    assert 'constructor' not in cfg.optim_wrapper and cfg.optim_wrapper.paramwise_cfg
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4),
                                torch.nn.Linear(4, 2))
    records = current_log
    records.clear()
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    info = [r.getMessage() for r in records if r.levelno >= logging.INFO]
    debug = [r.getMessage() for r in records if r.levelno == logging.DEBUG]
    assert not any('paramwise_options' in m for m in info), info
    assert sum(m.startswith('paramwise_options -- ') for m in debug) == 4, debug
    groups = [m for m in info if m.startswith('optimizer: lr ')]
    # weights decay at 0.05; norms and biases (norm_decay_mult, bias_decay_mult = 0) not
    assert groups == [
        'optimizer: lr 0.003, weight decay 0.05: 2 tensors, 24 params (0.weight 1, '
        '2.weight 1)',
        "optimizer: lr 0.003, weight decay 0: 4 tensors, 14 params (0.bias 1, 1.weight 1, "
        "1.bias 1, 2.bias 1) (log_level='DEBUG' lists the settings of every tensor)"], groups
    decays = sorted(g['weight_decay'] for g in wrapper.optimizer.param_groups)
    assert decays == [0.0] * 4 + [0.05] * 2
    assert DefaultOptimWrapperConstructor.__call__._stan_frozen_log


# ------------------------------------------ a config entry without a required argument
def test_train_tool_names_a_missing_required_argument_in_one_line(tmp_path, capsys):
    """param_scheduler = [dict(type='MultiStepLR')] without its milestones: one line
    naming the entry's path, the argument and the --cfg-options that sets it, exit 2 (it
    was a traceback ending in mmengine's build_from_cfg)."""
    from test_log_review_fixes2 import train, write_config
    base = write_config(tmp_path / 'base.py', tmp_path / 'data')
    config = tmp_path / 'cfg.py'
    config.write_text(f"_base_ = [{base!r}]\n"
                      "experiment_name = 'missing_argument'\n"
                      "param_scheduler = [dict(type='LinearLR', start_factor=0.5, end=1),\n"
                      "                   dict(type='MultiStepLR', by_epoch=True)]\n")
    assert train([config, '--work-dir', tmp_path / 'work']) == 2
    err = capsys.readouterr().err
    assert ("train.py: error: ConfigValueError: the config entry param_scheduler.1 "
            "(type='MultiStepLR') lacks the argument 'milestones', which MultiStepLR "
            "requires: set it in the config or with --cfg-options "
            "param_scheduler.1.milestones=...") in err
    assert 'Traceback' not in err


def test_a_missing_argument_in_the_code_keeps_its_traceback():
    """A call in the code without a required argument is a bug, not a config error: no
    ConfigValueError (the traceback is kept), also for a class mmengine builds from a
    dict the code wrote while a config is at hand. Without a config (a library call) the
    class is named."""
    from mmaction.registry import MODELS
    from stan_mm.utils.cli import missing_argument_error

    def helper(a, b):
        return a + b

    with pytest.raises(TypeError) as info:
        helper(1)
    assert missing_argument_error(info.value) is None
    with pytest.raises(TypeError) as info:
        MODELS.build(dict(type='I3DHead', num_classes=3))
    from mmengine.config import Config

    def build(cfg):      # (a config of the run, without an I3DHead entry)
        MODELS.build(dict(type='I3DHead', num_classes=3))

    with pytest.raises(TypeError) as with_config:
        build(Config(dict(model=dict(type='Recognizer3D'))))
    assert missing_argument_error(with_config.value) is None
    # two entries of the class: only the one without the argument is named
    from mmengine.registry import PARAM_SCHEDULERS
    sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)

    def schedulers(cfg):
        for entry in cfg.param_scheduler:
            PARAM_SCHEDULERS.build(dict(entry, optimizer=sgd))

    with pytest.raises(TypeError) as two:
        schedulers(Config(dict(param_scheduler=[dict(type='MultiStepLR', milestones=[1]),
                                                dict(type='MultiStepLR')])))
    assert str(missing_argument_error(two.value)).startswith(
        "the config entry param_scheduler.1 (type='MultiStepLR') lacks the argument "
        "'milestones'")
    error = missing_argument_error(info.value)       # no config found: the class is named
    assert str(error) == ("the config entry I3DHead (type='I3DHead') lacks the argument "
                          "'in_channels', which I3DHead requires: set it in the config or "
                          "with --cfg-options in_channels=...")


# ---------------------------------------- security review leftovers: temp files in place
from test_concurrency_review_fixes import (DIR_FILES, _assert_is, _convert,  # noqa: E402
                                           _no_swap, two_clips)  # noqa: F401 (a fixture)


def test_in_place_conversion_does_not_write_through_planted_links(two_clips, tmp_path,
                                                                  monkeypatch):
    """clip_to_mm into a folder it cannot swap writes <file>.tmp inside it first: links
    planted at those names were written through (the victims overwritten with the
    model); they are removed first now, and the victims are untouched."""
    out = tmp_path / 'clip'
    _convert(two_clips, 'old', out)
    victims = []
    for name in DIR_FILES:
        victim = tmp_path / f'victim_{name}'
        victim.write_text('keep me')
        (out / f'{name}.tmp').symlink_to(victim)
        victims.append(victim)
    _no_swap(monkeypatch, 'mount point')
    _convert(two_clips, 'new', out)
    monkeypatch.undo()
    _assert_is(two_clips, 'new', out)
    assert [v.read_text() for v in victims] == ['keep me'] * len(DIR_FILES)
    assert sorted(os.listdir(out)) == sorted(DIR_FILES)


def test_a_link_planted_while_the_weights_are_written_is_refused(two_clips, tmp_path,
                                                                 monkeypatch):
    """Diff review: the config's <file>.tmp is opened after the weights are written
    (seconds for ViT-L); a link planted there in that window was written through. Both
    files are created exclusively without following links now: the conversion fails,
    the victim is untouched and the previous output stays."""
    import safetensors.torch
    out = tmp_path / 'clip'
    _convert(two_clips, 'old', out)
    victim = tmp_path / 'victim.json'
    victim.write_text('keep me')
    real_save = safetensors.torch.save

    def save_then_plant(*args, **kwargs):
        data = real_save(*args, **kwargs)
        (out / f'{DIR_FILES[0]}.tmp').symlink_to(victim)
        return data
    _no_swap(monkeypatch, 'mount point')
    monkeypatch.setattr(safetensors.torch, 'save', save_then_plant)
    with pytest.raises(OSError, match='File exists'):
        _convert(two_clips, 'new', out)
    monkeypatch.undo()
    assert victim.read_text() == 'keep me'
    _assert_is(two_clips, 'old', out)
    assert sorted(os.listdir(out)) == sorted(DIR_FILES)


# --------------------------------------- NaN rows of feature folders written by older versions
# (extraction refuses NaN embeddings since test_numerical_extremes' fix; folders and search
# caches written before may hold them: a search ranked such a video last without a word)
NAN_VIDEOS = 3


@pytest.fixture(scope='module')
def nan_gallery(tmp_path_factory):
    """The tiny retrieval model and gallery of test_user_tools, and a finished feature
    folder of its 3 videos (``feats``, a copy to spoil in each test) made in one search."""
    import shutil
    from stan_mm.apis import search_gallery
    from test_user_tools import retrieval_gallery
    tmp = tmp_path_factory.mktemp('nan_rows')
    setup = retrieval_gallery(tmp, NAN_VIDEOS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = search_gallery(setup['model'], setup['videos'], ['a shape'], key='k',
                             cache=str(tmp / 'cache'), batch_size=1, num_workers=0,
                             progress=False, log=lambda _: None)
        setup['feats'] = str(tmp / 'feats')
        shutil.copytree(res.cache_dir, setup['feats'])
        setup['cache'], setup['cache_dir'] = str(tmp / 'cache'), res.cache_dir
        yield setup
    finally:
        torch.set_num_threads(threads)


def _spoil_rows(path, rows):
    """Rows of a saved ``.npy`` set to NaN, as an older stan-mm saved them."""
    import numpy as np
    array = np.load(path)
    array[rows] = np.nan
    np.save(path, array)


def test_search_embeds_the_nan_rows_of_an_old_cache_again(nan_gallery):
    """A --cache folder whose videos.npy holds a NaN row: the next search embeds that video
    again (one warning line naming the cache file and the video), reuses the others, and
    ranks finite scores only; the cache holds the row the video gives now."""
    import numpy as np
    from stan_mm.apis import search_gallery
    videos_npy = os.path.join(nan_gallery['cache_dir'], 'videos.npy')
    good = np.load(videos_npy)
    _spoil_rows(videos_npy, [1])
    lines = []
    res = search_gallery(nan_gallery['model'], nan_gallery['videos'], ['a shape'], key='k',
                         cache=nan_gallery['cache'], batch_size=1, num_workers=0,
                         progress=False, log=lines.append)
    warned = [ln for ln in lines if 'NaN' in ln]
    assert warned == [f'WARNING: {videos_npy}: 1 of 3 rows hold NaN or inf (videos '
                      f"'v1.mp4'), saved by an older stan-mm; those videos are embedded "
                      f'again'], lines
    assert '3 videos: 2 already embedded (reused), 1 to embed' in lines
    assert np.isfinite(res.sim).all()
    np.testing.assert_allclose(np.load(videos_npy), good, rtol=0, atol=1e-6)


def test_nan_rows_of_old_shards_are_embedded_again(nan_gallery, tmp_path, current_log):
    """An unfinished folder's .partial shard with a NaN row (an older version's): the
    rerun embeds that video again instead of saving the NaN into videos.npy."""
    import glob

    import numpy as np
    from stan_mm.apis import extract_features
    out = str(tmp_path / 'partial')
    kwargs = dict(videos=nan_gallery['names'], video_root=nan_gallery['videos'], key='k',
                  batch_size=1, num_workers=0, shard_size=8, progress=False,
                  log=lambda _: None)
    assert not extract_features(nan_gallery['model'], out, limit=2, **kwargs).complete
    shard, = glob.glob(os.path.join(out, '.partial', 'shard-*.npz'))
    with np.load(shard) as z:
        parts = dict(z)
    parts['emb'][0] = np.inf
    with open(shard, 'wb') as f:
        np.savez(f, **parts)
    result = extract_features(nan_gallery['model'], out, **kwargs)
    assert result.complete and (result.reused, result.new) == (1, 2)
    assert (f"{shard}: 1 of 2 rows hold NaN or inf (videos 'v0.mp4'), saved by an older "
            f'stan-mm; those videos are embedded again') in [r.getMessage()
                                                              for r in current_log]
    assert np.isfinite(np.load(os.path.join(out, 'videos.npy'))).all()


@pytest.mark.parametrize('what', ['videos', 'texts'])
def test_load_features_refuses_nan_rows_of_an_old_folder(nan_gallery, tmp_path, what):
    """A feature folder given by the user (load_features: --save-sim, code) with NaN rows
    is refused, naming the file, the number of rows, the first names and the fix."""
    import shutil

    import numpy as np
    from stan_mm.apis.embed import NonFiniteEmbeddingError
    from stan_mm.apis.features import load_features
    folder = str(tmp_path / 'feats')
    shutil.copytree(nan_gallery['feats'], folder)
    names = list(nan_gallery['names'])
    if what == 'texts':          # a folder with texts too
        names = ['a cross', 'a disc', 'a square', 'a line', 'a dot']
        rng = np.random.RandomState(0)
        np.save(os.path.join(folder, 'texts.npy'), rng.randn(5, 8).astype(np.float32))
        with open(os.path.join(folder, 'texts.txt'), 'w') as f:
            f.writelines(n + '\n' for n in names)
        with open(os.path.join(folder, 'meta.json')) as f:
            meta = json.load(f)
        meta['num_texts'] = 5
        with open(os.path.join(folder, 'meta.json'), 'w') as f:
            json.dump(meta, f)
    load_features(folder)                                   # finite: loads
    path = os.path.join(folder, f'{what}.npy')
    bad = [0, 2, 3, 4] if what == 'texts' else [2]
    _spoil_rows(path, bad)
    with pytest.raises(NonFiniteEmbeddingError) as err:
        load_features(folder)
    assert err.value.items == [names[i] for i in bad]
    shown = ("'a cross', 'a square', 'a line' and 1 more" if what == 'texts' else
             "'v2.mp4'")
    assert str(err.value) == (
        f'{path}: {len(bad)} of {len(names)} rows hold NaN or inf ({what[:-1]}s {shown}), '
        f'saved by an older stan-mm that did not refuse them (a search or metric would rank '
        f'them last without a word); extract them again with the current stan-mm: rerun the '
        f'tools/extract_features.py command that wrote the folder (it embeds those rows '
        f'again and refuses to save NaN, naming the cause)')


def test_finite_check_reads_a_memory_mapped_array_in_blocks(tmp_path, monkeypatch):
    """One isfinite pass; a memory-mapped array is read block by block (never a mask of its
    whole size), an array in memory in one block; the rows and columns are found."""
    import numpy as np
    from stan_mm.apis import features
    array = np.arange(21, dtype=np.float32).reshape(7, 3)
    array[5, 1] = np.nan
    np.save(tmp_path / 'a.npy', array)
    mapped = np.load(tmp_path / 'a.npy', mmap_mode='r')
    monkeypatch.setattr(features, '_FINITE_BLOCK', 6)       # 2 rows of 3 per block
    sizes = []
    real = np.isfinite

    def counted(x, *args, **kwargs):
        sizes.append(np.size(x))
        return real(x, *args, **kwargs)
    monkeypatch.setattr(features.np, 'isfinite', counted)
    assert not features.all_finite(mapped)
    assert max(sizes) == 6 and sum(sizes) == 18       # stopped at the block of row 5
    assert features.nonfinite_rows(mapped) == [5]
    assert features.nonfinite_columns(mapped) == [1]
    assert max(sizes) == 6                             # (the details too)
    sizes.clear()
    assert not features.all_finite(array) and sizes == [21]
    assert features.all_finite(np.arange(4))          # integers are finite


def test_eval_retrieval_names_the_nan_rows_and_columns_of_a_sim(tmp_path, capsys):
    """A sim.npy of an old feature folder made from a NaN video embedding: refused before
    ranking, with the rows (texts) and columns (videos) named from texts.txt / videos.txt
    and the fix (it was 'non-finite similarity at text 0, video 1' from the ranking)."""
    import numpy as np
    from stan_mm.testing import load_script
    tool = load_script('tools/analysis/eval_retrieval.py')
    folder = tmp_path / 'feats'
    folder.mkdir()
    (folder / 'meta.json').write_text(json.dumps({'format': 'stan_mm.features'}))
    (folder / 'texts.txt').write_text('a cross\na disc\na square\n')
    (folder / 'videos.txt').write_text('a.mp4\nb.mp4\n')
    sim = np.random.RandomState(0).rand(3, 2).astype(np.float32)
    sim[:, 1] = np.nan
    np.save(folder / 'sim.npy', sim)
    np.save(folder / 'text_to_video.npy', np.array([0, 1, 0]))
    path = str(folder / 'sim.npy')
    assert tool.main(['--sim', path, '--text-to-video', str(folder / 'text_to_video.npy'),
                      '--no-progress']) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"eval_retrieval: error: similarity (--sim) file {path!r} holds NaN or inf in 3 of 3 "
        f"rows (texts 'a cross', 'a disc', 'a square') and 1 of 2 columns (videos "
        f"'b.mp4'): made from non-finite embeddings, which an older stan-mm saved as they "
        f"were (they would rank last); extract them again with the current stan-mm"), err
    assert 'with --save-sim' in err
    # a bank of no feature folder: rows and columns by index
    bank = np.zeros((2, 2), np.float32)
    bank[1, 0] = np.inf
    np.save(tmp_path / 'bank.npy', bank)
    np.save(folder / 'sim.npy', np.nan_to_num(sim))
    assert tool.main(['--sim', path, '--text-to-video', str(folder / 'text_to_video.npy'),
                      '--qb-norm', str(tmp_path / 'bank.npy'), '--no-progress']) == 2
    assert ('holds NaN or inf in 1 of 2 rows (rows 1) and 1 of 2 columns (columns 0)'
            in capsys.readouterr().err)


# ------------------------------------- TextClassifierHead(finetune_text=True): no copy per step
def test_text_head_tokens_move_with_the_module_and_are_not_copied_per_forward():
    """The prompts' tokens are a non-persistent buffer: a forward passes that tensor to the
    text tower (no host-to-device copy per training step; on 'meta', standing in for a
    GPU, it was a new tensor every call), it follows module.to (device; a dtype leaves the
    int64 ids), the state dict keys are unchanged, and the logits equal open_clip's text
    tower run on open_clip's own tokens of the prompts."""
    import open_clip
    import torch.nn.functional as F
    from stan_mm.testing import tiny_clip
    from test_recognition import EMBED, text_head
    clip = tiny_clip(seed=3)
    names, templates = ['walking', 'running', 'jumping'], ['a video of {}.', 'a clip of {}']
    head = text_head(clip, names, finetune_text=True, templates=templates, context_length=16)
    seen = []
    head.text_encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0]))

    def passed_buffer():
        return [t is head._tokens or t._base is head._tokens for t in seen]
    head.train()
    x = torch.randn(4, EMBED, generator=torch.Generator().manual_seed(0))
    logits = [head(x) for _ in range(2)]
    assert passed_buffer() == [True, True]
    with torch.no_grad():      # the reference: open_clip alone
        tokens = open_clip.tokenize([t.format(n) for n in names for t in templates])
        ref = F.normalize(clip.encode_text(tokens).float(), dim=-1).view(3, 2, -1).mean(1)
        ref = head.scale() * F.normalize(x, dim=-1) @ F.normalize(ref, dim=-1).t()
    assert torch.equal(logits[0], ref) and torch.equal(logits[1], ref)
    keys = set(head.state_dict())
    assert '_tokens' in dict(head.named_buffers()) and not any('_tokens' in k for k in keys)
    head.load_state_dict(head.state_dict())               # (strict: same keys)
    buffer = head._tokens
    head.double()
    assert head._tokens is buffer and buffer.dtype == torch.int64
    head.to('meta')                                       # a device move takes it along
    assert head._tokens.device.type == 'meta'
    seen.clear()
    for _ in range(2):
        head(torch.randn(4, EMBED, device='meta', dtype=torch.float64))
    assert passed_buffer() == [True, True]
    assert set(head.state_dict()) == keys


# -------------------------------------------------- import stan_mm leaves pkg_resources alone
MMACTION_BASE = "_base_ = 'mmaction::_base_/default_runtime.py'\nx = 1\n"


def _run_python(code, tmp_path, *flags):
    import subprocess
    import sys
    import textwrap
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    (tmp_path / 'cfg.py').write_text(MMACTION_BASE)
    return subprocess.run([sys.executable, *flags, '-c', textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
                          env=dict(os.environ, PYTHONPATH=root))


def test_import_stan_mm_does_not_import_pkg_resources(tmp_path):
    """import stan_mm no longer imports setuptools' pkg_resources (50-180 ms) nor adds a
    warning filter; an mmaction:: base config still resolves (mmengine imports and
    reloads the real module then) without the 'pkg_resources is deprecated' warning,
    which the reload printed even with the eager import."""
    out = _run_python('''
        import sys, warnings
        before = list(warnings.filters)
        import stan_mm
        assert 'pkg_resources' not in sys.modules, 'imported by import stan_mm'
        added = [f for f in warnings.filters if f not in before]
        assert not [f for f in added if 'pkg_resources' in str(f)], added
        from mmengine.config import Config
        cfg = Config.fromfile('cfg.py')
        assert cfg.default_scope == 'mmaction' and cfg.x == 1
        import pkg_resources
        assert not (pkg_resources.__doc__ or '').startswith('stan-mm shim')
        print('RESOLVED')
    ''', tmp_path, '-W', 'default')
    assert out.returncode == 0 and 'RESOLVED' in out.stdout, out.stderr[-3000:]
    assert 'pkg_resources is deprecated' not in out.stderr, out.stderr[-3000:]


def test_pkg_resources_shim_is_used_when_setuptools_has_none(tmp_path):
    """setuptools >= 82 (simulated: an import hook refuses every pkg_resources but the
    shim): the shim is installed and an mmaction:: base config resolves."""
    from test_compat import COMPAT, LOAD_BY_PATH
    out = _run_python(LOAD_BY_PATH + f'''
import importlib.machinery, os, sys
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name == 'pkg_resources':
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is not None and not spec.origin.startswith(r'{COMPAT}' + os.sep):
                raise ModuleNotFoundError("No module named 'pkg_resources'", name=name)
sys.meta_path.insert(0, Hide())
m = load('pkg_resources_shim')
assert m.apply_pkg_resources_fix() is True
import pkg_resources
assert pkg_resources.__doc__.startswith('stan-mm shim')
from mmengine.config import Config
assert Config.fromfile('cfg.py').default_scope == 'mmaction'
print('RESOLVED')
''', tmp_path)
    assert out.returncode == 0 and 'RESOLVED' in out.stdout, out.stderr[-3000:]
