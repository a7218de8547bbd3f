"""Fixes of a user-scenario review of retrieval evaluation and feature extraction: the DSL +
QB-Norm warning, metrics over features with skipped videos, a QB-Norm bank of another
model, blank lines in text files, the count line of a rerun, and options of a trick that is
off.

Feature folders are made by the real extraction code (``stan_mm.apis.features``) with a
stub model: a "video" file holds its 4-D embedding as text (an empty file, or one starting
with ``bad``, is unreadable) and a text embeds as the vector its words spell, so every
count and file below is known by hand without decoding videos or running a network.
"""
import json
import os
import os.path as osp
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import stan_mm  # noqa: F401  (registers RetrievalRecallMetric)
from mmengine.config import Config
from stan_mm.apis import embed as embed_module
from stan_mm.apis import video as video_module
from stan_mm.apis.features import (BankMismatchError, check_bank_matches,
                                   check_qb_norm_banks, extract_features, model_key,
                                   skipped_videos_message, text_model_record)
from stan_mm.apis.inference import checkpoint_fingerprint, load_config
from stan_mm.datasets.transforms.video_io import VideoReadError
from stan_mm.evaluation import RetrievalRecallMetric
from stan_mm.testing import load_script, logged_warning_messages

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..'))


def load_tool(rel_path):
    return load_script(rel_path)



# ------------------------------------------------------------------ stub model
def vector(text):
    return [float(x) for x in text.split()]


class StubPipeline:
    def __init__(self, cfg, views=None):
        pass

    def __call__(self, filename, sample_idx=0):
        with open(filename) as f:
            data = f.read()
        if not data or data.startswith('bad'):
            raise VideoReadError(filename, 'not a video')
        return dict(vec=vector(data))

    def describe(self):
        return 'stub'


class StubModel(torch.nn.Module):
    """A retrieval model for ``model_kind`` (video and text towers), embedding width 4."""
    embed_dim = 4

    def __init__(self, cfg):
        super().__init__()
        self.cfg, self.build_note = cfg, None

    def encode_video(self, x):
        raise AssertionError('the stub embeds through embed_video_batch')

    encode_text = encode_video


@pytest.fixture
def stub(monkeypatch):
    monkeypatch.setattr(video_module, 'VideoPipeline', StubPipeline)
    monkeypatch.setattr(embed_module, 'embed_video_batch', lambda model, samples: F.normalize(
        torch.tensor([s['vec'] for s in samples]), dim=-1))
    monkeypatch.setattr(embed_module, 'embed_texts', lambda model, texts, **kw: F.normalize(
        torch.tensor([vector(t) for t in texts]), dim=-1))
    monkeypatch.setattr(embed_module, 'require_text_tower', lambda model: None)


def write(path, text):
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write(text)
    return path


CONFIG = '''model = dict(type='STANRetriever', backbone=dict(depth=2), temperature=0.01)
test_pipeline = [dict(type='CLIPBPETokenize', context_length=32),
                 dict(type='PackActionInputs')]
test_dataloader = dict(dataset=dict(type='RetrievalVideoTextDataset', ann_file='test.json',
                                    pipeline=test_pipeline))
'''


@pytest.fixture
def model_files(tmp_path):
    """A config and two checkpoint files (their content is never read)."""
    cfg_path = write(str(tmp_path / 'cfg.py'), CONFIG)
    ckpts = [write(str(tmp_path / f'epoch_{i}.pth'), f'weights {i}') for i in (5, 10)]
    return cfg_path, ckpts


def extract(tmp_path, name, videos, texts=None, t2v=None, extra=None, log=None):
    cfg = Config.fromfile(write(str(tmp_path / 'stub_cfg.py'), CONFIG))
    out = str(tmp_path / name)
    return out, extract_features(
        StubModel(cfg), out, videos=videos, video_root=str(tmp_path), texts=texts,
        text_to_video=t2v, key='stub', skip_bad=True, num_workers=0, progress=False,
        extra_meta=extra, log=log or (lambda msg: None))


# ------------------------------------------------------------------ 1. DSL + QB-Norm warning
def metric_samples():
    rng = np.random.default_rng(0)
    video = rng.standard_normal((5, 8)).astype(np.float32)
    text = video + 0.5 * rng.standard_normal((5, 8)).astype(np.float32)
    return [dict(sample_idx=i, video_feature=torch.from_numpy(video[i]),
                 text_feature=torch.from_numpy(text[i:i + 1])) for i in range(5)]


@pytest.mark.parametrize('dsl,qb', [(True, True), (True, False), (False, True),
                                    (False, False)])
def test_the_metric_warns_about_dsl_with_qb_norm_only(dsl, qb):
    bank = np.random.default_rng(1).standard_normal((7, 8)).astype(np.float32)
    metric = RetrievalRecallMetric(dsl=dsl, qb_norm=dict(bank=bank) if qb else None)
    with logged_warning_messages() as records:
        for _ in range(2):      # two evaluations: one warning each
            metric.process(None, metric_samples())
            metric.evaluate(size=5)
    warned = [r for r in records if 'DSL and QB-Norm are both on' in r]
    assert len(warned) == (2 if dsl and qb else 0), records
    if warned:
        assert 'Neither paper evaluates this combination' in warned[0]
        assert 'bank size' in warned[0] and 'lower t2v R@1' in warned[0]
        assert 'compare DSL alone and QB-Norm alone' in warned[0]


@pytest.fixture(scope='module')
def eval_tool():
    return load_tool('tools/analysis/eval_retrieval.py')


def save_case(folder):
    os.makedirs(folder, exist_ok=True)
    sim = np.array([[0.9, 0.1, 0.2], [0.3, 0.8, 0.1], [0.2, 0.4, 0.7]], np.float32)
    np.save(osp.join(folder, 'sim.npy'), sim)
    np.save(osp.join(folder, 't2v.npy'), np.arange(3))
    np.save(osp.join(folder, 'bank.npy'), sim[[0, 2]])
    return [osp.join(folder, n) for n in ('sim.npy', 't2v.npy', 'bank.npy')]


@pytest.mark.parametrize('options,warns', [(['--dsl', '--qb-norm'], True),
                                           (['--dsl'], False), (['--qb-norm'], False)])
def test_eval_retrieval_warns_about_dsl_with_qb_norm_only(tmp_path, capsys, eval_tool,
                                                         options, warns):
    sim, t2v, bank = save_case(str(tmp_path))
    argv = ['--sim', sim, '--text-to-video', t2v]
    for option in options:
        argv += [option, bank] if option == '--qb-norm' else [option]
    assert eval_tool.main(argv) == 0
    out, err = capsys.readouterr()
    assert ('eval_retrieval: warning: DSL and QB-Norm are both on' in err) == warns, err
    json.loads(out.strip().splitlines()[-1])     # the last line is still the JSON


# ------------------------------------------------------------------ 6. options of a trick off
@pytest.mark.parametrize('extra,needs', [(['--dsl-temp', '0.05'], '--dsl'),
                                         (['--qb-beta', '10'], '--qb-norm'),
                                         (['--qb-k', '2'], '--qb-norm'),
                                         (['--dsl', '--qb-k', '2'], '--qb-norm')])
def test_an_option_of_a_trick_that_is_off_is_a_usage_error(tmp_path, capsys, eval_tool,
                                                            extra, needs):
    sim, t2v, _ = save_case(str(tmp_path))
    with pytest.raises(SystemExit) as info:
        eval_tool.main(['--sim', sim, '--text-to-video', t2v] + extra)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f'{extra[-2]} is an option of {needs}, which is not given' in err, err


def test_options_with_their_trick_still_reach_the_core(tmp_path, capsys, eval_tool):
    from stan_mm.evaluation import retrieval_metrics_from_similarity
    sim, t2v, bank = save_case(str(tmp_path))
    assert eval_tool.main(['--sim', sim, '--text-to-video', t2v, '--dsl', '--dsl-temp',
                           '0.5', '--qb-norm', bank, '--qb-beta', '3', '--qb-k', '2']) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got == pytest.approx(retrieval_metrics_from_similarity(
        np.load(sim), np.load(t2v), dsl=True, dsl_temp=0.5, qb_bank_sim=np.load(bank),
        qb_beta=3.0, qb_k=2))
    args = eval_tool.parse_args(['--sim', sim, '--text-to-video', t2v])
    assert (args.dsl_temp, args.qb_beta, args.qb_k) == (0.01, 20.0, 1)   # the defaults


# ------------------------------------------------------------------ 2. skipped videos
def test_eval_retrieval_warns_about_videos_skipped_at_extraction(tmp_path, capsys, stub,
                                                                  eval_tool):
    videos = [write(str(tmp_path / 'videos' / name), text) for name, text in (
        ('v0.mp4', '1 0 0 0'), ('v1.mp4', '0 1 0 0'), ('broken.mp4', ''),
        ('v3.mp4', '0 0 1 0'), ('v4.mp4', '0 0 0 1'))]
    # 2 captions of v0, 2 of the broken video, 1 of each other one: 7 given, 5 kept
    texts = ['1 0.2 0 0', '0.9 0 0.3 0', '0 1 0.1 0', '0.5 0.5 0 0', '0 0.5 0.5 0',
             '0 0 1 0.2', '0.1 0 0 1']
    t2v = [0, 0, 1, 2, 2, 3, 4]
    out, res = extract(tmp_path, 'feat', videos, texts, t2v, extra=dict(source='test'))
    meta = json.load(open(osp.join(out, 'meta.json')))
    assert (meta['num_bad_videos'], meta['num_videos'], meta['num_videos_given']) == (1, 4, 5)
    assert (meta['num_texts'], meta['num_texts_given']) == (5, 7)
    assert np.load(osp.join(out, 'text_to_video.npy')).tolist() == [0, 0, 1, 2, 3]
    feats_t, feats_v = np.load(osp.join(out, 'texts.npy')), np.load(osp.join(out, 'videos.npy'))
    np.save(osp.join(out, 'sim.npy'), feats_t @ feats_v.T)

    argv = ['--sim', osp.join(out, 'sim.npy'), '--text-to-video',
            osp.join(out, 'text_to_video.npy')]
    assert eval_tool.main(argv) == 0
    stdout, err = capsys.readouterr()
    assert 'eval_retrieval: warning:' in err
    assert osp.join(out, 'meta.json') in err
    assert '1 of the 5 videos of the test split was unreadable and skipped' in err, err
    assert videos[2] in err and '5 of its 7 texts' in err
    assert 'not comparable to results on the full split' in err
    assert json.loads(stdout.strip().splitlines()[-1])['t2v_R1'] == 100.0

    # the same matrices outside a feature folder, or from one that skipped nothing: silent
    other = str(tmp_path / 'copy')
    os.makedirs(other)
    for name in ('sim.npy', 'text_to_video.npy'):
        shutil.copy(osp.join(out, name), other)
    assert eval_tool.main(['--sim', osp.join(other, 'sim.npy'), '--text-to-video',
                           osp.join(other, 'text_to_video.npy')]) == 0
    assert 'warning' not in capsys.readouterr().err
    good = [v for i, v in enumerate(videos) if i != 2]
    clean, _ = extract(tmp_path, 'clean', good, ['1 0 0 0', '0 1 0 0', '0 0 1 0', '0 0 0 1'],
                       [0, 1, 2, 3], extra=dict(source='test'))
    t, v = np.load(osp.join(clean, 'texts.npy')), np.load(osp.join(clean, 'videos.npy'))
    np.save(osp.join(clean, 'sim.npy'), t @ v.T)
    assert eval_tool.main(['--sim', osp.join(clean, 'sim.npy'), '--text-to-video',
                           osp.join(clean, 'text_to_video.npy')]) == 0
    assert 'warning' not in capsys.readouterr().err


def test_the_skipped_videos_message_of_an_older_folder():
    """Folders written before num_videos_given existed: given = kept + skipped."""
    meta = dict(num_videos=9, num_bad_videos=4, has_text_to_video=True, source='val',
                bad_videos=[[f'/d/b{i}.mp4', 0, 0, 'x'] for i in range(4)])
    message = skipped_videos_message(meta, '/feat')
    assert message.startswith('/feat/meta.json: 4 of the 13 videos of the val split were ')
    assert '/d/b0.mp4, /d/b1.mp4, /d/b2.mp4 and 1 more' in message
    assert 'cover 9 videos and only their captions' in message
    assert skipped_videos_message(dict(meta, num_bad_videos=0), '/feat') is None


# ------------------------------------------------------------------ 3. the QB-Norm bank check
def make_bank(tmp_path, cfg_path, ckpt, old_format=False):
    """A --split train --skip-videos folder as tools/extract_features.py writes it (or as it
    did before the text-model record existed: ``old_format``)."""
    cfg = load_config(cfg_path)
    extra = dict(config=cfg_path, checkpoint=osp.abspath(ckpt), cfg_options=None,
                 source='train')
    if not old_format:
        extra.update(text_model_record(cfg, ckpt))
    out = str(tmp_path / ('old_bank' if old_format else 'bank'))
    key = model_key(cfg, checkpoint_fingerprint(ckpt), None)
    extract_features(StubModel(cfg), out, texts=['1 0 0 0', '0 1 0 0'], key=key,
                     num_workers=0, progress=False, extra_meta=extra, log=lambda m: None)
    return osp.join(out, 'texts.npy')


def as_test_py_merges(cfg_path):
    """The config as tools/test.py merges it: run settings differ, the model does not."""
    cfg = Config.fromfile(cfg_path)
    cfg.work_dir, cfg.launcher, cfg.load_from = '/tmp/work', 'none', 'x.pth'
    cfg.test_dataloader.dataset.ann_file = 'elsewhere/test.json'
    return cfg


@pytest.mark.parametrize('old_format', [False, True])
def test_a_bank_of_the_tested_model_is_accepted(tmp_path, stub, model_files, old_format):
    cfg_path, (ckpt5, ckpt10) = model_files
    bank = make_bank(tmp_path, cfg_path, ckpt10, old_format)
    cfg = as_test_py_merges(cfg_path)
    # (model_key differs: it covers the run settings and data paths too)
    assert model_key(cfg, checkpoint_fingerprint(ckpt10), None) != \
        json.load(open(osp.join(osp.dirname(bank), 'meta.json')))['model_key']
    with logged_warning_messages() as records:
        meta = check_bank_matches(bank, cfg, ckpt10)
    assert meta['source'] == 'train' and records == []
    assert ('model_cfg' in meta) != old_format


@pytest.mark.parametrize('old_format', [False, True])
def test_a_bank_of_another_checkpoint_is_refused(tmp_path, stub, model_files, old_format):
    cfg_path, (ckpt5, ckpt10) = model_files
    bank = make_bank(tmp_path, cfg_path, ckpt5, old_format)
    with pytest.raises(BankMismatchError) as info:
        check_bank_matches(bank, as_test_py_merges(cfg_path), ckpt10)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert f'QB-Norm bank {bank} was made by another model' in message
    assert f'checkpoint: {osp.abspath(ckpt5)} (bank) vs {osp.abspath(ckpt10)} (tested)' \
        in message
    assert (f'python tools/extract_features.py {cfg_path} {ckpt10} --split train '
            f'--skip-videos --out {osp.dirname(bank)} --overwrite') in message


def test_a_bank_of_another_tokenizer_is_refused_other_model_settings_warned(
        tmp_path, stub, model_files):
    """Another text tokenizer (context length) certainly changes the bank's embeddings: an
    error. Other model settings of the same checkpoint, or another build, may not (the
    video branch's depth does not touch the text tower): a warning naming them. Where the
    CLIP weights came from (``pretrained``) is not a difference (the checkpoint holds every
    weight, and tests without the CLIP file set it to None)."""
    cfg_path, (_, ckpt) = model_files
    bank = make_bank(tmp_path, cfg_path, ckpt)
    cfg = as_test_py_merges(cfg_path)
    cfg.test_dataloader.dataset.pipeline[0].context_length = 77
    with pytest.raises(BankMismatchError, match=r'CLIPBPETokenize\.context_length: 32 '
                                                r'\(bank\) vs 77 \(tested\)'):
        check_bank_matches(bank, cfg, ckpt)
    cfg = as_test_py_merges(cfg_path)
    cfg.model.backbone.depth = 4
    with logged_warning_messages() as records:
        check_bank_matches(bank, cfg, ckpt)
        check_bank_matches(bank, as_test_py_merges(cfg_path), ckpt, build_note='GELU assumed')
    assert len(records) == 2, records
    assert 'model.backbone.depth: 2 (bank) vs 4 (tested)' in records[0]
    assert 'build: as the config says (bank) vs GELU assumed (tested)' in records[1]
    cfg = as_test_py_merges(cfg_path)
    cfg.model.backbone.pretrained = None
    with logged_warning_messages() as records:
        check_bank_matches(bank, cfg, ckpt)
    assert records == []


def test_the_checkpoint_is_known_by_its_bytes(tmp_path, stub, model_files):
    """The same bytes are the same checkpoint: touched, copied elsewhere or reached through
    a link, the bank is accepted; other bytes at the same path (rewritten since) are not."""
    cfg_path, (ckpt5, ckpt) = model_files
    bank = make_bank(tmp_path, cfg_path, ckpt)
    st = os.stat(ckpt)
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    copy = tmp_path / 'moved' / 'best.pth'
    copy.parent.mkdir()
    shutil.copy(ckpt, copy)
    link = tmp_path / 'latest.pth'
    link.symlink_to(ckpt)
    with logged_warning_messages() as records:
        for same in (ckpt, str(copy), str(link)):
            check_bank_matches(bank, as_test_py_merges(cfg_path), same)
    assert records == []
    shutil.copy(ckpt5, ckpt)
    with pytest.raises(BankMismatchError, match='holds other bytes than when the bank was '
                                                'extracted'):
        check_bank_matches(bank, as_test_py_merges(cfg_path), ckpt)


def test_an_older_bank_that_cannot_be_verified_gives_a_warning(tmp_path, stub, model_files):
    cfg_path, (_, ckpt) = model_files
    bank = make_bank(tmp_path, cfg_path, ckpt, old_format=True)
    st = os.stat(ckpt)      # same path, rewritten: the recorded key cannot be reproduced
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    with logged_warning_messages() as records:
        assert check_bank_matches(bank, as_test_py_merges(cfg_path), ckpt) is not None
    assert len(records) == 1 and f'QB-Norm bank {bank}' in records[0]
    assert 'cannot tell whether it was made by the tested model' in records[0]
    with logged_warning_messages() as records:      # an unreadable checkpoint: a warning too
        check_bank_matches(bank, as_test_py_merges(cfg_path), str(tmp_path / 'gone.pth'))
    assert len(records) == 1 and 'the checkpoint cannot be read' in records[0]


def test_a_bank_without_meta_json_is_not_checked(tmp_path, model_files):
    cfg_path, (_, ckpt) = model_files
    np.save(tmp_path / 'bank.npy', np.zeros((2, 4), np.float32))
    with logged_warning_messages() as records:
        assert check_bank_matches(str(tmp_path / 'bank.npy'), as_test_py_merges(cfg_path),
                                  ckpt) is None
    assert records == []


def test_check_qb_norm_banks_finds_the_bank_of_the_test_evaluator(tmp_path, stub,
                                                                   model_files):
    cfg_path, (ckpt5, ckpt10) = model_files
    bank = make_bank(tmp_path, cfg_path, ckpt5)
    cfg = as_test_py_merges(cfg_path)
    cfg.test_evaluator = [dict(type='MotionTwinRetrievalMetric'),
                          dict(type='RetrievalRecallMetric', qb_norm=dict(bank=bank))]
    assert check_qb_norm_banks(cfg, ckpt5) == [bank]
    with pytest.raises(BankMismatchError):
        check_qb_norm_banks(cfg, ckpt10)
    cfg.test_evaluator = dict(type='RetrievalRecallMetric', dsl=True)
    assert check_qb_norm_banks(cfg, ckpt10) == []


# ------------------------------------------------------------------ 4. blank lines in text files
def test_texts_files_refuse_blank_lines_with_their_numbers(tmp_path, capsys):
    from stan_mm.apis.embed import read_text_lines
    good = write(str(tmp_path / 'good.txt'), '\ufeffa dog\n  a cat \r\nbirds\n\n\n')
    assert read_text_lines(good, '--texts') == ['a dog', '  a cat ', 'birds']
    bad = write(str(tmp_path / 'bad.txt'), 'a dog\n\na cat\n \t\nbirds\n')
    with pytest.raises(ValueError) as info:
        read_text_lines(bad, '--texts')
    assert f"--texts {bad!r}: blank line(s) 2, 4 among the texts" in str(info.value)
    assert 'row i of the embeddings is line i + 1' in str(info.value)
    with pytest.raises(ValueError, match='no text in the file'):
        read_text_lines(write(str(tmp_path / 'empty.txt'), '\n \n'), '--texts')

    extract_tool = load_tool('tools/extract_features.py')     # --texts
    assert extract_tool.read_texts(good) == ['a dog', '  a cat ', 'birds']
    with pytest.raises(ValueError, match=r"--texts '.*bad\.txt': blank line\(s\) 2, 4"):
        extract_tool.read_texts(bad)

    search_tool = load_tool('tools/demo/search.py')
    args = search_tool.parse_args(['CFG', 'CKPT', '--gallery', str(tmp_path), '--query',
                                   'first', '--queries', good])
    assert args.query == ['first', 'a dog', 'a cat', 'birds']
    with pytest.raises(SystemExit) as info:
        search_tool.parse_args(['CFG', 'CKPT', '--gallery', str(tmp_path), '--queries', bad])
    assert info.value.code == 2
    assert f"--queries {bad!r}: blank line(s) 2, 4" in capsys.readouterr().err


# ------------------------------------------------------------------ 5. the count line of a rerun
def test_the_count_line_of_a_rerun_adds_up(tmp_path, stub):
    from stan_mm.apis.search import search_gallery
    gallery = str(tmp_path / 'gallery')
    for name, text in (('a.mp4', '1 0 0 0'), ('b.mp4', '0 1 0 0'), ('c.mp4', '0 0 1 0'),
                       ('empty.mp4', '')):
        write(osp.join(gallery, name), text)
    model = StubModel(Config.fromfile(write(str(tmp_path / 'c.py'), CONFIG)))

    def search():
        logs = []
        res = search_gallery(model, gallery, ['0 0 1 0.1'], 'stub', num_workers=0,
                             progress=False, log=logs.append)
        return res, logs

    res, logs = search()
    assert '4 videos: 0 already embedded (reused), 4 to embed' in logs
    assert [osp.basename(p) for p, _ in res.bad_videos] == ['empty.mp4']
    res, logs = search()            # nothing new: the empty file is not retried
    assert logs[0].startswith('4 videos: all already embedded')
    write(osp.join(gallery, 'trunc.mp4'), 'bad header')
    res, logs = search()
    # 3 reused + 1 to embed + 1 known unreadable = 5 (the review saw "3 ... , 1 to embed")
    assert ('5 videos: 3 already embedded (reused), 1 to embed, 1 unreadable, unchanged '
            'since they failed (not retried)') in logs, logs
    assert 'embedded 0 new videos, reused 3, 2 unreadable' in logs
    assert sorted(osp.basename(p) for p, _ in res.bad_videos) == ['empty.mp4', 'trunc.mp4']
    assert [osp.basename(p) for p in res.video_paths] == ['a.mp4', 'b.mp4', 'c.mp4']
    assert res.ranking[0, 0] == 2                   # the query spells c.mp4's vector


# ------------------------------------------------- large-scale review: DSL underflow, sim.npy
def test_dsl_refuses_weights_that_underflow_instead_of_tying_them():
    """Logits (cosine / 0.01) passed as similarities at the cosine temperature: a column of
    S / dsl_temp spans ~20,000, most softmax weights were exactly 0 and the entries tied,
    so t2v MdR came out as the worst rank without a word. Now an error that names the fix;
    the same matrix as cosines, and as logits at dsl_temp = 0.01 / tau, rank alike."""
    from stan_mm.evaluation.ranking import retrieval_metrics_from_similarity
    gen = torch.Generator().manual_seed(0)
    t = F.normalize(torch.randn(60, 16, generator=gen), dim=-1)
    v = F.normalize(t + 0.8 * torch.randn(60, 16, generator=gen), dim=-1)
    cos = t @ v.T
    t2v = torch.arange(60)
    want = retrieval_metrics_from_similarity(cos, t2v, dsl=True, dsl_temp=0.01)
    for flag in (True, False):     # text->video weights (columns), video->text (rows)
        with pytest.raises(ValueError, match=r'underflow float64.*dsl_temp = 0.01 / tau'):
            retrieval_metrics_from_similarity(cos / 0.01, t2v, dsl=True, dsl_temp=0.01,
                                              **({} if flag else dict(chunk_size=7)))
    got = retrieval_metrics_from_similarity(cos / 0.01, t2v, dsl=True, dsl_temp=1.0)
    assert got == pytest.approx(want)


def test_dsl_competitor_weights_that_underflow_keep_exact_ranks():
    """Only a ground-truth weight that underflows can change a rank: cosines at a tiny
    dsl_temp (competitors' weights underflow, the ground truth's do not) are ranked, and
    equal a log-domain reference; a ground truth that underflows is refused, and a
    temperature too small for cosines is named as such."""
    from stan_mm.evaluation.ranking import retrieval_metrics_from_similarity
    sim = torch.full((6, 6), 0.1, dtype=torch.float64)
    sim.fill_diagonal_(0.9)
    sim[2, 4] = -0.5
    sim[3, 1] = 0.85
    t2v = torch.arange(6)
    got = retrieval_metrics_from_similarity(sim, t2v, dsl=True, dsl_temp=0.001)

    def log_key(log_w):   # rank by (sign S, log|S| + log weight): exact, no underflow
        return torch.sign(sim) * (sim.abs().log() + log_w) + 1e6 * torch.sign(sim)
    t2v_key = log_key(sim / 0.001 - torch.logsumexp(sim / 0.001, dim=0, keepdim=True))
    v2t_key = log_key(sim / 0.001 - torch.logsumexp(sim / 0.001, dim=1, keepdim=True))
    t2v_ranks = [int((t2v_key[i] >= t2v_key[i, i]).sum()) for i in range(6)]
    v2t_ranks = [int((v2t_key[:, j] >= v2t_key[j, j]).sum()) for j in range(6)]
    assert got['t2v_MnR'] == pytest.approx(np.mean(t2v_ranks))
    assert got['v2t_MnR'] == pytest.approx(np.mean(v2t_ranks))
    assert got['t2v_R1'] == pytest.approx(100 * np.mean(np.array(t2v_ranks) == 1))
    low = sim.clone()
    low[0, 0] = -0.9                     # the ground truth's own weight underflows
    with pytest.raises(ValueError, match='too small even for cosine'):
        retrieval_metrics_from_similarity(low, t2v, dsl=True, dsl_temp=0.001)


def test_save_sim_writes_the_product_in_blocks_complete_or_absent(tmp_path):
    """sim.npy is written row block by row block into a memory-mapped temporary file (the
    whole product in memory, twice, ran a 50k x 50k extraction out of memory); it equals
    texts @ videos.T, and a failed write leaves neither the file nor a temporary one."""
    from stan_mm.apis.features import atomic_save_product_npy
    rng = np.random.default_rng(0)
    texts = rng.standard_normal((37, 8)).astype(np.float32)
    videos = rng.standard_normal((11, 8)).astype(np.float32)
    path = str(tmp_path / 'sim.npy')
    assert atomic_save_product_npy(path, texts, videos, chunk_size=3) == (37, 11)
    got = np.load(path)
    assert got.dtype == np.float32 and got.shape == (37, 11)
    np.testing.assert_allclose(got, texts.astype(np.float64) @ videos.T.astype(np.float64),
                               rtol=1e-5, atol=1e-5)
    bad = str(tmp_path / 'bad.npy')
    with pytest.raises(ValueError):
        atomic_save_product_npy(bad, texts, videos[:, :5])      # E differs
    assert sorted(os.listdir(tmp_path)) == ['sim.npy']


def test_eval_retrieval_refuses_sim_and_ground_truth_of_two_extractions(tmp_path, capsys,
                                                                         stub, eval_tool):
    """--sim of one feature folder with --text-to-video of another whose videos are listed
    in another order: the shapes agree, the rows/columns do not; refused naming the file
    that differs. The same lists in two folders are accepted."""
    videos = [write(str(tmp_path / 'videos' / f'v{i}.mp4'), t) for i, t in enumerate(
        ('1 0 0', '0 1 0', '0 0 1'))]
    texts, t2v = ['1 0.1 0', '0 1 0.1', '0.1 0 1'], [0, 1, 2]
    a, _ = extract(tmp_path, 'a', videos, texts, t2v, extra=dict(source='test'))
    b, _ = extract(tmp_path, 'b', videos[::-1], texts[::-1], t2v, extra=dict(source='test'))
    c, _ = extract(tmp_path, 'c', videos, texts, t2v, extra=dict(source='test'))
    ta, va = np.load(osp.join(a, 'texts.npy')), np.load(osp.join(a, 'videos.npy'))
    np.save(osp.join(a, 'sim.npy'), ta @ va.T)
    argv = ['--sim', osp.join(a, 'sim.npy'), '--text-to-video']
    assert eval_tool.main(argv + [osp.join(b, 'text_to_video.npy')]) == 2
    err = capsys.readouterr().err
    assert 'come from two feature folders whose texts.txt differ' in err
    assert osp.join(b, 'texts.txt') in err
    assert eval_tool.main(argv + [osp.join(c, 'text_to_video.npy')]) == 0
    capsys.readouterr()
