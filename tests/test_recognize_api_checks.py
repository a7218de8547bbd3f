"""``stan_mm.apis.recognition.recognize(model, video, classnames=[...])`` checks a given class
list as ``tools/demo/recognize.py --classnames`` does: a list of one class is refused (a
softmax over one class scores it 1.0 whatever the video), and numbered (UCF101
``classInd.txt``) or CamelCase names are warned about, once per list and process however
many videos are scored (the tool's own parse and the per-video calls do not repeat it; a
retrieval model no longer warned on every call)."""
import os.path as osp
import sys

import pytest

import stan_mm  # noqa: F401
from stan_mm.testing import logged_warning_messages

sys.path.insert(0, osp.dirname(__file__))
from test_inference_review_fixes import models, write_video, ws  # noqa: E402,F401

NUMBERED = ['1 apply eye makeup', '2 apply lipstick', '3 archery', '4 baby crawling']
CAMEL = ['ApplyEyeMakeup', 'ApplyLipstick', 'BabyCrawling', 'BalanceBeam']


def style_warnings(messages):
    return [m for m in messages if 'start with a number' in m or 'CamelCase' in m]


@pytest.fixture(scope='module')
def loaded(models):
    from stan_mm.apis import init_model
    return {kind: init_model(*models[kind], 'cpu') for kind in ('text', 'retrieval')}


@pytest.fixture(autouse=True)
def fresh_memory():
    from stan_mm.apis import recognition
    recognition._STYLE_CHECKED.clear()
    yield
    recognition._STYLE_CHECKED.clear()


@pytest.mark.parametrize('kind', ['text', 'retrieval'])
def test_a_numbered_list_is_warned_about_once_over_several_videos(ws, loaded, kind):
    from stan_mm.apis.recognition import recognize
    videos = [write_video(f'v{i}.mp4', seed=i) for i in range(3)]
    with logged_warning_messages() as messages:
        for video in videos:
            names, scores = recognize(loaded[kind], video, classnames=NUMBERED)
            assert names == NUMBERED and scores.shape == (4, )
    found = style_warnings(messages)
    assert len(found) == 1, found
    assert '4 of 4 class names start with a number' in found[0], found
    # another list: its own warning
    with logged_warning_messages() as messages:
        recognize(loaded[kind], videos[0], classnames=CAMEL)
        recognize(loaded[kind], videos[1], classnames=CAMEL)
    found = style_warnings(messages)
    assert len(found) == 1 and 'CamelCase' in found[0], found


def test_the_tools_parse_and_the_calls_warn_once_together(ws, loaded, tmp_path):
    from stan_mm.apis.recognition import parse_classnames, recognize
    f = tmp_path / 'classInd.txt'
    f.write_text(''.join(f'{n}\n' for n in NUMBERED))
    video = write_video('v.mp4')
    with logged_warning_messages() as messages:
        names = parse_classnames(str(f))
        recognize(loaded['text'], video, classnames=names)
        recognize(loaded['text'], video, classnames=names)
    found = style_warnings(messages)
    assert len(found) == 1 and str(f) in found[0], found


def test_plain_names_are_silent(ws, loaded):
    from stan_mm.apis.recognition import recognize
    video = write_video('v.mp4')
    with logged_warning_messages() as messages:
        recognize(loaded['retrieval'], video, classnames=['walking', 'running'])
        recognize(loaded['text'], video, classnames=['walking', 'running'])
    assert style_warnings(messages) == []


@pytest.mark.parametrize('kind', ['text', 'retrieval'])
def test_one_class_is_refused(ws, loaded, kind):
    from stan_mm.apis.recognition import recognize
    video = write_video('v.mp4')
    with pytest.raises(ValueError, match=r"classnames \['walking'\] gives one class"):
        recognize(loaded[kind], video, classnames=['walking'])
    # the text head has its own classes back
    if kind == 'text':
        assert loaded[kind].cls_head.classnames == ['class a', 'class b']
