"""Inference/deployment review fixes.

1. A video name without an extension, ``clip``, is the file ``clip`` when it exists, else
   ``clip.mp4`` (MMAction2's ``DecordInit`` rule), in ``SafeDecordInit`` and in every tool
   (recognize.py's path check, the lists of extract_features.py / search.py, whose
   ``videos.txt`` and size/time stamps name the file embedded); both present: ``clip`` is
   read, with one warning naming both.
2. ``recognize(model, video, classnames=[...])`` scores the given list with a
   text-classifier head (it returned the head's own classes), for that call only.
3. ``--template`` / ``recognize(..., templates=...)`` reach a text-classifier head (they
   were used only for retrieval models); invalid templates are refused with the retrieval
   message; the API default (None) keeps the head's trained templates.

Tiny random models (the quickstart configs) and short synthetic mp4 videos; every score is
compared with a model built with the class list / templates in its config.
"""
import os
import os.path as osp
import shutil
import sys
import warnings

import numpy as np
import pytest
import torch

import stan_mm  # noqa: F401

sys.path.insert(0, osp.dirname(__file__))
from test_user_tools import load_tool  # noqa: E402
from test_user_tools_review_fixes import one_line_error  # noqa: E402

cv2 = pytest.importorskip('cv2')

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..'))
RETRIEVAL_CFG = osp.join(REPO, 'configs', 'quickstart', 'motion_retrieval_tiny.py')
RECOGNITION_CFG = osp.join(REPO, 'configs', 'quickstart', 'motion_stan_tiny.py')
NAMES = ['moving left', 'moving right', 'rotating', 'growing']


def write_video(path, frames=8, size=(48, 32), seed=0):
    """An mp4 (also under a name without an extension: written as .mp4, then renamed)."""
    tmp = str(path) + '.writing.mp4'
    rng = np.random.RandomState(seed)
    writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*'mp4v'), 8.0, size)
    assert writer.isOpened()
    for t in range(frames):
        frame = rng.randint(0, 90, (size[1], size[0], 3)).astype(np.uint8)
        frame[8:20, 4 * t:4 * t + 12] = (40, 220, 250)
        writer.write(frame)
    writer.release()
    os.replace(tmp, str(path))
    return str(path)


def save_model(cfg_path, out, seed=0):
    from mmaction.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    init_default_scope('mmaction')
    torch.manual_seed(seed)
    model = MODELS.build(Config.fromfile(cfg_path).model)
    with torch.no_grad():   # temporal modules start as the identity: perturb them
        for name, p in model.named_parameters():
            if 'branch' in name and 'temporal' in name:
                p.normal_(0, 0.2)
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, out)
    return out


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    """Checkpoints of a text-head recognizer (classes 'class a', 'class b', template '{}'),
    of the quickstart linear-head recognizer and of the quickstart retrieval model."""
    d = tmp_path_factory.mktemp('inference_models')
    text_cfg = str(d / 'text_head.py')
    with open(text_cfg, 'w') as f:
        f.write(f'''_base_ = [{RECOGNITION_CFG!r}]
model = dict(cls_head=dict(_delete_=True, type='TextClassifierHead',
                           classnames=['class a', 'class b'], templates=['{{}}'],
                           in_channels=64,
                           text_encoder=dict(type='CLIPTextEncoder', arch=_base_.clip_cfg),
                           context_length=16, temperature=0.1, average_clips='prob'))
''')
    return dict(text=(text_cfg, save_model(text_cfg, str(d / 'text.pth'), seed=1)),
                linear=(RECOGNITION_CFG, save_model(RECOGNITION_CFG, str(d / 'lin.pth'))),
                retrieval=(RETRIEVAL_CFG, save_model(RETRIEVAL_CFG, str(d / 'ret.pth'))),
                dir=d)


@pytest.fixture
def ws(tmp_path):
    old = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(old)


def init(path, **kwargs):
    from stan_mm.datasets.transforms.video_io import SafeDecordInit
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        results = SafeDecordInit(**kwargs).transform(dict(filename=path))
    return results, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


# ------------------------------------------------------------ 1. names without extension
def test_a_bare_video_name_reads_that_file(ws):
    """Only 'clip' exists: it is read (it was looked for as 'clip.mp4': file not found)."""
    os.mkdir('noext')
    write_video('noext/clip', frames=7)
    results, caught = init('noext/clip')
    assert results['total_frames'] == 7 and caught == []
    assert results['video_reader'].filename == 'noext/clip'


def test_a_bare_name_next_to_its_mp4_reads_the_bare_file_and_warns_once(ws):
    write_video('clip', frames=7)
    write_video('clip.mp4', frames=5)
    results, caught = init('clip')
    assert results['total_frames'] == 7            # 'clip', not 'clip.mp4' (5 frames)
    assert len(caught) == 1 and "'clip'" in caught[0] and "'clip.mp4'" in caught[0]
    results, caught = init('clip')                 # once per path
    assert results['total_frames'] == 7 and caught == []
    assert init('clip.mp4')[0]['total_frames'] == 5   # the .mp4 when named


def test_a_bare_name_without_a_file_is_still_its_mp4(ws):
    from stan_mm.datasets.transforms.video_io import VideoReadError, resolve_video_name
    write_video('only.mp4', frames=5)
    assert init('only')[0]['total_frames'] == 5    # DecordInit's rule
    with pytest.raises(VideoReadError) as e:
        init('nope')
    assert e.value.filename == 'nope' and "'nope.mp4'" in e.value.reason
    assert e.value.reason.startswith('file not found')
    # other storages keep DecordInit's rule (no local file to look at)
    write_video('remote', frames=5)
    assert resolve_video_name('remote', local=False) == 'remote.mp4'
    assert resolve_video_name('remote') == 'remote'
    os.mkdir('folder')                             # reported as what it is
    with pytest.raises(VideoReadError, match='directory'):
        init('folder')


def test_recognize_tool_reads_a_bare_video_name(ws, models, capsys):
    cfg, ckpt = models['linear']
    os.mkdir('noext')
    write_video('noext/clip')
    tool = load_tool('tools/demo/recognize.py')
    rc = tool.main([cfg, ckpt, 'noext/clip'])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert 'video: noext/clip' in cap.out
    rc = tool.main([cfg, ckpt, 'noext/nope'])
    line = one_line_error(capsys.readouterr().err, 'recognize')
    assert rc == 2 and "VIDEO 'noext/nope': video file not found" in line


def test_a_folder_next_to_its_mp4_is_not_refused(ws, models, capsys):
    """'clip' a folder and 'clip.mp4' a video: the reader reads 'clip.mp4', so neither the
    tool nor the API may refuse 'clip' as a folder; a folder alone still is."""
    from stan_mm.apis import init_model
    from stan_mm.apis.recognition import recognize
    cfg, ckpt = models['linear']
    os.mkdir('clip')
    write_video('clip.mp4')
    tool = load_tool('tools/demo/recognize.py')
    rc = tool.main([cfg, ckpt, 'clip'])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    names, scores = recognize(init_model(cfg, ckpt), 'clip')
    assert len(names) == len(scores) and abs(scores.sum() - 1) < 1e-6
    os.mkdir('alone')
    rc = tool.main([cfg, ckpt, 'alone'])
    line = one_line_error(capsys.readouterr().err, 'recognize')
    assert rc == 2 and "VIDEO 'alone' is a folder" in line


def test_video_lists_name_the_file_the_decoder_reads(ws):
    from stan_mm.apis.video import list_videos
    write_video('a.mp4')                 # listed as 'a'
    write_video('b', seed=1)             # listed as 'b', with a b.mp4 next to it
    write_video('b.mp4', seed=2)
    with open('list.txt', 'w') as f:
        f.write('a\nb\nb.mp4\n')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        assert list_videos('list.txt') == (str(ws), ['a.mp4', 'b', 'b.mp4'])
    assert list_videos('list.txt', resolve=False)[1] == ['a', 'b', 'b.mp4']
    with open('dup.txt', 'w') as f:
        f.write('a\na.mp4\n')
    with pytest.raises(ValueError, match=r"listed more than once: \['a.mp4'\] \(a name "
                       r"without an extension"):
        list_videos('dup.txt')


def test_extract_features_embeds_and_stamps_the_same_file(ws, models, capsys):
    """videos.txt and video_stamps.npy name the file that was embedded: 'a' (only a.mp4
    there) -> a.mp4; 'b' (b and b.mp4 there) -> b, the same embedding as its copy."""
    cfg, ckpt = models['retrieval']
    write_video('a.mp4', seed=0)
    write_video('b', seed=1)
    write_video('b.mp4', seed=2)
    shutil.copy('b', 'b_copy.mp4')
    with open('list.txt', 'w') as f:
        f.write('a\nb\nb_copy.mp4\nb.mp4\n')
    tool = load_tool('tools/extract_features.py')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        rc = tool.main([cfg, ckpt, '--videos', 'list.txt', '--out', 'out',
                        '--num-workers', '0', '--no-progress'])
    cap = capsys.readouterr()
    assert rc == 0, cap.out + cap.err
    with open('out/videos.txt') as f:
        rows = f.read().split()
    assert rows == ['a.mp4', 'b', 'b_copy.mp4', 'b.mp4']
    stamps = np.load('out/video_stamps.npy').tolist()
    for name, stamp in zip(rows, stamps):
        st = os.stat(name)
        assert stamp == [st.st_size, st.st_mtime_ns], name
    emb = np.load('out/videos.npy')
    np.testing.assert_allclose(emb[1], emb[2], atol=1e-6)    # b is read, as its copy
    assert np.abs(emb[1] - emb[3]).max() > 1e-3               # not b.mp4


def test_check_videos_keeps_listed_names(ws, capsys):
    """check_videos --out lists the names as the list gives them (to filter the list)."""
    tool = load_tool('tools/data/check_videos.py')
    open('a.mp4', 'wb').close()                  # 'a' means a.mp4: empty
    write_video('b')
    with open('list.txt', 'w') as f:
        f.write('a\nb\n')
    rc = tool.main(['list.txt', '--workers', '0', '--out', 'bad.txt', '--no-progress'])
    capsys.readouterr()
    assert rc == 1
    with open('bad.txt') as f:
        assert f.read().split() == ['a']


# ------------------------------------------------------------ 2./3. text-classifier head
@pytest.fixture(scope='module')
def text_model(models):
    from stan_mm.apis import init_model
    cfg, ckpt = models['text']
    return init_model(cfg, ckpt, 'cpu')


def reference_scores(models, video, **head):
    """recognize() of a model whose config holds the class list / templates."""
    from mmengine.config import Config
    from stan_mm.apis import init_model
    from stan_mm.apis.recognition import recognize
    cfg_path, ckpt = models['text']
    cfg = Config.fromfile(cfg_path)
    cfg.model.cls_head.update(head)
    names, scores = recognize(init_model(cfg, ckpt, 'cpu'), video)
    if 'classnames' in head:
        assert names == list(head['classnames'])
    return scores


def test_recognize_api_scores_the_given_class_list_with_a_text_head(ws, models, text_model):
    from stan_mm.apis.recognition import recognize
    video = write_video('v.mp4')
    head = text_model.cls_head
    own_names, own_scores = recognize(text_model, video)
    assert own_names == ['class a', 'class b'] and own_scores.shape == (2, )
    names, scores = recognize(text_model, video, classnames=NAMES)
    assert names == NAMES and scores.shape == (4, )
    np.testing.assert_allclose(scores, reference_scores(models, video, classnames=NAMES),
                               atol=1e-6)
    # the head has its own classes again
    assert head.classnames == ['class a', 'class b'] and head.num_classes == 2
    again = recognize(text_model, video)
    assert again[0] == own_names
    np.testing.assert_allclose(again[1], own_scores, atol=1e-7)


def test_recognize_api_applies_templates_to_a_text_head(ws, models, text_model):
    from stan_mm.apis.recognition import recognize
    video = write_video('v.mp4')
    head = text_model.cls_head
    photo = ['a photo of {}.', 'someone doing {}']
    names, scores = recognize(text_model, video, classnames=NAMES, templates=photo)
    ref = reference_scores(models, video, classnames=NAMES, templates=photo)
    np.testing.assert_allclose(scores, ref, atol=1e-6)
    bare = reference_scores(models, video, classnames=NAMES)
    assert np.abs(scores - bare).max() > 1e-3       # the templates made a difference
    assert head.templates == ['{}'] and head.classnames == ['class a', 'class b']
    # default (None): the head's own templates, not "a video of {}."
    _, default = recognize(text_model, video, classnames=NAMES)
    np.testing.assert_allclose(default, bare, atol=1e-6)
    with pytest.raises(ValueError, match=r'exactly one "\{\}"'):
        recognize(text_model, video, templates=['{} {} {}'])
    assert head.templates == ['{}']


def test_recognize_api_linear_head_keeps_its_checks(ws, models):
    from stan_mm.apis import init_model
    from stan_mm.apis.recognition import recognize
    video = write_video('v.mp4')
    cfg, ckpt = models['linear']
    model = init_model(cfg, ckpt, 'cpu')
    with pytest.raises(ValueError, match='a linear head cannot score other classes'):
        recognize(model, video, classnames=NAMES)
    with pytest.raises(ValueError, match='has no prompts'):
        recognize(model, video, templates=['a video of {}.'])
    names, scores = recognize(model, video)
    assert len(names) == model.cls_head.num_classes == scores.shape[0]


def test_recognize_tool_applies_template_to_a_text_head(ws, models, capsys):
    from test_user_tools import parse_table
    video = write_video('v.mp4')
    cfg, ckpt = models['text']
    tool = load_tool('tools/demo/recognize.py')
    photo = 'a photo of {}.'
    rc = tool.main([cfg, ckpt, video, '--classnames', ','.join(NAMES), '--template', photo])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    rows = parse_table(cap.out)
    ref = reference_scores(models, video, classnames=NAMES, templates=[photo])
    order = np.argsort(-ref, kind='stable')
    assert [r[2] for r in rows] == [NAMES[i] for i in order]
    np.testing.assert_allclose([r[1] for r in rows], ref[order], atol=6e-5)
    # without --template: the head's own templates ('{}'), not "a video of {}."
    rc = tool.main([cfg, ckpt, video, '--classnames', ','.join(NAMES)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    rows = parse_table(cap.out)
    own = reference_scores(models, video, classnames=NAMES)
    assert np.abs(own - ref).max() > 1e-3
    order = np.argsort(-own, kind='stable')
    assert [r[2] for r in rows] == [NAMES[i] for i in order]
    np.testing.assert_allclose([r[1] for r in rows], own[order], atol=6e-5)


def test_recognize_tool_refuses_a_bad_template_as_for_retrieval(ws, models, capsys):
    video = write_video('v.mp4')
    tool = load_tool('tools/demo/recognize.py')
    lines = {}
    for kind in ('text', 'retrieval'):
        cfg, ckpt = models[kind]
        rc = tool.main([cfg, ckpt, video, '--classnames', ','.join(NAMES),
                        '--template', '{} {} {}'])
        lines[kind] = one_line_error(capsys.readouterr().err, 'recognize')
        assert rc == 2, lines[kind]
    assert lines['text'] == lines['retrieval']
    assert 'prompt template \'{} {} {}\' must be a str with exactly one "{}"' in lines['text']
    cfg, ckpt = models['linear']
    rc = tool.main([cfg, ckpt, video, '--template', 'a video of {}.'])
    line = one_line_error(capsys.readouterr().err, 'recognize')
    assert rc == 2 and 'has no prompts' in line
    # refused before the model is loaded (a checkpoint that cannot be loaded)
    open('garbage.pth', 'wb').write(b'not a checkpoint')
    for kind in ('text', 'retrieval'):
        rc = tool.main([models[kind][0], 'garbage.pth', video, '--classnames',
                        ','.join(NAMES), '--template', '{} {} {}'])
        assert rc == 2 and one_line_error(capsys.readouterr().err, 'recognize') == \
            lines['text']
