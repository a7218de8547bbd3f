"""Review fixes for a user adding a new dataset: an inherited caption_file with
ann_format='json', UCF101's classInd.txt used as the class names, 1-based labels, and the
class-count message of a linear head."""
import os.path as osp
import sys
from types import SimpleNamespace

import pytest
from mmaction.registry import DATASETS, HOOKS

import stan_mm  # noqa: F401
import stan_mm.datasets.retrieval  # noqa: F401
from stan_mm.datasets.readers_common import AnnotationError
from stan_mm.models.heads.classnames import check_classnames, read_classnames_file

sys.path.insert(0, osp.dirname(__file__))
from test_clip_loading import logged_warnings  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


# ------------------------------------------------------- (2) inherited caption_file
@pytest.mark.parametrize('fmt', ['json', 'lsmdc'])
def test_caption_file_with_a_format_that_takes_none_is_a_config_error(tmp_path, fmt):
    ann = tmp_path / 'train.json'
    ann.write_text('{"v1.mp4": ["a caption"]}')
    cfg = dict(type='RetrievalVideoTextDataset', ann_file=str(ann), pipeline=[],
               ann_format=fmt, caption_file='data/vatex/MSRVTT_data.json',
               data_prefix=dict(video=str(tmp_path)), check_files=False, lazy_init=True)
    # found when the dataset is built, even lazily (not at the first sample)
    with pytest.raises(AnnotationError) as e:
        DATASETS.build(cfg)
    msg = str(e.value)
    assert f"ann_format='{fmt}' takes no caption_file" in msg
    assert 'MSRVTT_data.json' in msg and 'inherited from the base config' in msg
    assert 'caption_file=None' in msg
    from stan_mm.utils.cli import user_errors
    assert isinstance(e.value, user_errors())          # tools print it as one line
    # caption_file=None: builds
    if fmt == 'json':
        cfg.update(caption_file=None, lazy_init=False, serialize_data=False)
        assert len(DATASETS.build(cfg)) == 1


# ------------------------------------------------------- (4) class-name style
UCF101 = ['ApplyEyeMakeup', 'ApplyLipstick', 'Archery', 'BabyCrawling', 'BalanceBeam',
          'BandMarching', 'BaseballPitch', 'Basketball', 'BasketballDunk', 'BenchPress',
          'Biking', 'Billiards', 'BlowDryHair', 'BlowingCandles', 'BodyWeightSquats',
          'Bowling', 'BoxingPunchingBag', 'BoxingSpeedBag', 'BreastStroke', 'BrushingTeeth']
HMDB51 = ('brush_hair cartwheel catch chew clap climb climb_stairs dive draw_sword dribble '
          'drink eat fall_floor fencing flic_flac golf handstand hit hug jump kick kick_ball '
          'kiss laugh pick pour pullup punch push pushup ride_bike ride_horse run shake_hands '
          'shoot_ball shoot_bow shoot_gun sit situp smile smoke somersault stand '
          'swing_baseball sword sword_exercise talk throw turn walk wave').split()
K400 = ['abseiling', 'air drumming', 'answering questions', 'applauding', 'archery',
        'arm wrestling', 'playing ukulele', 'passing American football (in game)',
        'passing American football (not in game)', 'tying knot (not on a tie)',
        'shooting goal (soccer)', 'playing cards', 'using computer', 'zumba', 'yoga']
SSV2 = ['Approaching something with your camera', 'Attaching something to something',
        'Holding something next to something', 'Pushing something from left to right',
        'Putting something into something', 'Pretending to pick something up']


def style_warnings(names=None, path=None):
    with logged_warnings() as records:
        out = read_classnames_file(path) if path else check_classnames(names)
    return out, [r.getMessage() for r in records]


def test_ucf101_classind_file_warns_once_to_strip_the_numbers(tmp_path):
    f = tmp_path / 'classInd.txt'
    f.write_text(''.join(f'{i + 1} {n}\n' for i, n in enumerate(UCF101)))
    names, messages = style_warnings(path=str(f))
    assert names[0] == '1 ApplyEyeMakeup'          # read as written (a warning, no error)
    numbered = [m for m in messages if 'start with a number' in m]
    assert len(numbered) == 1, messages
    assert 'classInd.txt' in numbered[0] and 'strip the numbers' in numbered[0]
    assert str(f) in numbered[0]
    # the names themselves are CamelCase too: one softer note, with the words
    notes = [m for m in messages if 'CamelCase' in m]
    assert len(notes) == 1 and "'apply eye makeup'" in notes[0], messages
    assert len(messages) == 2


def test_camel_case_and_underscore_names_get_a_note():
    from stan_mm.datasets.transforms.tokenize import _tokenizer
    tok = _tokenizer()
    # the tokenizer does not split them into words itself
    assert tok.encode('ApplyEyeMakeup') != tok.encode('apply eye makeup')
    assert tok.encode('brush_hair') != tok.encode('brush hair')
    for names, example in ((UCF101, "'ApplyEyeMakeup'"), (HMDB51, "'brush_hair'")):
        _, messages = style_warnings(names)
        assert len(messages) == 1, messages
        assert 'CamelCase or joined with underscores' in messages[0]
        assert example in messages[0]
    _, messages = style_warnings(HMDB51)
    assert "'brush hair'" in messages[0]


def test_k400_ssv2_and_repo_class_lists_are_silent():
    for names in (K400, SSV2, ['c0', 'c1', 'c2'], ['a', 'b'], ['class a', 'class b'],
                  ['3 stooges', 'playing cards', 'yoga']):
        assert style_warnings(names)[1] == [], names
    from stan_mm.datasets.synthetic import class_names
    assert style_warnings(class_names())[1] == []
    on_disk = osp.join(REPO, 'data', 'motion', 'classnames.txt')
    if osp.isfile(on_disk):
        assert style_warnings(path=on_disk)[1] == []


# ------------------------------------------------------- (5) 1-based labels
def video_list(tmp_path, labels, name='trainlist01.txt'):
    f = tmp_path / name
    f.write_text(''.join(f'v{i}.avi {label}\n' for i, label in enumerate(labels)))
    return str(f)


def build_list(path, **kw):
    return DATASETS.build(dict(type='CheckedVideoDataset', ann_file=path, pipeline=[],
                               check_files=False, **kw))


def test_one_based_labels_are_named_as_such(tmp_path):
    with pytest.raises(AnnotationError) as e:
        build_list(video_list(tmp_path, [1, 2, 3, 4, 5, 5, 1]), num_classes=5)
    msg = str(e.value)
    assert 'look 1-based' in msg and 'classInd' in msg and 'ubtract 1' in msg
    assert 'for more classes set' not in msg       # not steered to raise num_classes
    assert 'line 5: label 5 is out of range (labels 0..4)' in msg
    # a genuine overflow (0-based labels with one too many): the num_classes advice stays
    with pytest.raises(AnnotationError) as e:
        build_list(video_list(tmp_path, [0, 1, 5]), num_classes=5)
    assert '1-based' not in str(e.value) and 'for more classes set' in str(e.value)
    # 1..n but larger than num_classes: not 1-based numbering of these classes
    with pytest.raises(AnnotationError) as e:
        build_list(video_list(tmp_path, [1, 2, 7]), num_classes=5)
    assert '1-based' not in str(e.value)
    ds = build_list(video_list(tmp_path, [0, 3, 4]), num_classes=5)
    assert ds.label_range == (0, 4)


def test_class_check_hook_names_one_based_labels(tmp_path):
    ds = build_list(video_list(tmp_path, [1, 2, 3]))       # no num_classes: read as is
    assert ds.label_range == (1, 3)
    linear = SimpleNamespace(num_classes=3)
    loop = SimpleNamespace(dataloader=SimpleNamespace(dataset=ds))
    runner = SimpleNamespace(model=SimpleNamespace(cls_head=linear), train_loop=loop,
                             _val_loop=None)
    with pytest.raises(AnnotationError, match='look 1-based') as e:
        HOOKS.build(dict(type='ClassListCheckHook')).before_train(runner)
    # one fix only: not "set num_classes to the number of classes" next to "subtract 1"
    assert 'Set the model' not in str(e.value) and 'cls_head.num_classes' not in str(e.value)


def test_a_text_head_warns_once_about_its_class_name_style(tmp_path):
    """The head checks its class list when built and again in set_classnames: the style
    warning is printed once, naming the file."""
    from mmaction.registry import MODELS
    from stan_mm.testing import tiny_clip_cfg
    f = tmp_path / 'classInd.txt'
    f.write_text(''.join(f'{i + 1} {n}\n' for i, n in enumerate(UCF101[:4])))
    cfg = tiny_clip_cfg()
    with logged_warnings() as records:
        MODELS.build(dict(type='TextClassifierHead', classnames=str(f), in_channels=cfg[
            'embed_dim'], text_encoder=dict(type='CLIPTextEncoder', arch=cfg), context_length=16))
    numbered = [r.getMessage() for r in records if 'start with a number' in r.getMessage()]
    assert len(numbered) == 1 and str(f) in numbered[0], numbered


# ------------------------------------------------------- (6) linear head wording
def runner_with(head, dataset):
    loop = SimpleNamespace(dataloader=SimpleNamespace(dataset=dataset))
    return SimpleNamespace(model=SimpleNamespace(cls_head=head), train_loop=loop,
                           _val_loop=None)


def test_class_count_mismatch_wording_follows_the_head_type(tmp_path):
    ds = build_list(video_list(tmp_path, [0, 1, 2]), num_classes=3)
    linear = SimpleNamespace(num_classes=400)
    with pytest.raises(AnnotationError) as e:
        HOOKS.build(dict(type='ClassListCheckHook')).before_train(runner_with(linear, ds))
    msg = str(e.value)
    assert 'num_classes=400' in msg and 'model.cls_head.num_classes=3' in msg
    assert 'classnames' not in msg and 'class list' not in msg
    text = SimpleNamespace(num_classes=4, classnames=['a', 'b', 'c', 'd'],
                           classnames_source='cn.txt')
    ds = build_list(video_list(tmp_path, [0, 1, 2], name='b.txt'), num_classes=3)
    with pytest.raises(AnnotationError) as e:
        HOOKS.build(dict(type='ClassListCheckHook')).before_train(runner_with(text, ds))
    assert 'model.cls_head.classnames' in str(e.value)
    # a label beyond a linear head: no class-name file to fix
    ds = build_list(video_list(tmp_path, [0, 1, 7], name='c.txt'))
    with pytest.raises(AnnotationError) as e:
        HOOKS.build(dict(type='ClassListCheckHook')).before_train(
            runner_with(SimpleNamespace(num_classes=3), ds))
    assert 'class-name file' not in str(e.value)
    assert 'model.cls_head.num_classes' in str(e.value)
