"""tools/data/build_ssv2_lists.py and build_k400_lists.py on small official-format files."""
import json
import os.path as osp

import pytest
from stan_mm.testing import load_script

TOOLS = osp.join(osp.dirname(__file__), '..', 'tools', 'data')


def _load(name):
    return load_script(osp.join(TOOLS, f'{name}.py'), name)


ssv2 = _load('build_ssv2_lists')
k400 = _load('build_k400_lists')


def _read(path):
    with open(path) as f:
        return f.read().splitlines()


# ----------------------------------------------------------------------------- SSv2
SSV2_LABELS = {  # as in the official labels.json: template without brackets -> id string
    'Holding something next to something': '1',
    'Approaching something with your camera': '0',
    'Pushing something from left to right': '2',
}


def _ssv2_files(tmp_path, train=None, val=None, labels=None):
    anno = tmp_path / 'annotations'
    anno.mkdir(exist_ok=True)
    (anno / 'labels.json').write_text(json.dumps(labels or SSV2_LABELS))
    train = train if train is not None else [
        {'id': '78687', 'label': 'holding potato next to vicks vaporub bottle',
         'template': 'Holding [something] next to [something]',
         'placeholders': ['potato', 'vicks vaporub bottle']},
        {'id': '42326', 'label': 'approaching a cup with your camera',
         'template': 'Approaching [something] with your camera', 'placeholders': ['a cup']},
        {'id': '100904', 'label': 'pushing a pen from left to right',
         'template': 'Pushing [something] from left to right', 'placeholders': ['a pen']},
    ]
    val = val if val is not None else [
        {'id': 74225, 'label': 'pushing a box from left to right',
         'template': 'Pushing [something] from left to right', 'placeholders': ['a box']},
    ]
    (anno / 'something-something-v2-train.json').write_text(json.dumps(train))
    (anno / 'something-something-v2-validation.json').write_text(json.dumps(val))
    return anno


def test_ssv2_lists_and_classnames(tmp_path):
    anno = _ssv2_files(tmp_path)
    out = tmp_path / 'out'
    assert ssv2.main(['--anno-dir', str(anno), '--out-dir', str(out)]) == 0
    # Class names in id order, readable (brackets gone), one per line.
    assert _read(out / 'classnames.txt') == [
        'Approaching something with your camera', 'Holding something next to something',
        'Pushing something from left to right']
    assert _read(out / 'train_list.txt') == ['78687.webm 1', '42326.webm 0', '100904.webm 2']
    assert _read(out / 'val_list.txt') == ['74225.webm 2']


def test_ssv2_class_name_rule():
    assert ssv2.class_name('Putting [something] onto [something]') == \
        'Putting something onto something'
    assert ssv2.class_name('Putting [number of] [something]  onto [something]') == \
        'Putting number of something onto something'


def test_ssv2_missing_videos_are_reported(tmp_path, capsys):
    anno = _ssv2_files(tmp_path)
    videos = tmp_path / 'videos'
    videos.mkdir()
    (videos / '78687.mp4').write_bytes(b'x')
    (videos / '74225.mp4').write_bytes(b'x')
    out = tmp_path / 'out'
    assert ssv2.main(['--anno-dir', str(anno), '--out-dir', str(out), '--ext', 'mp4',
                      '--video-dir', str(videos)]) == 0
    assert _read(out / 'train_list.txt') == ['78687.mp4 1']
    assert sorted(_read(out / 'missing_train.txt')) == ['100904.mp4', '42326.mp4']
    assert not (out / 'missing_val.txt').exists()
    assert '2 missing videos' in capsys.readouterr().out


@pytest.mark.parametrize('entry, expected', [
    ({'label': 'x', 'template': 'Holding [something] next to [something]'},
     "entry 1: missing field 'id'"),
    ({'id': '5', 'label': 'x'}, "entry 1 (id '5'): missing field 'template'"),
    ({'id': '5', 'template': 'Dancing with [something]'}, "entry 1 (id '5'): template"),
    ({'id': 'a b', 'template': 'Holding [something] next to [something]'}, 'whitespace'),
    ('not an object', 'entry 1: expected an object'),
])
def test_ssv2_malformed_entry_names_file_and_entry(tmp_path, entry, expected):
    good = {'id': '1', 'template': 'Holding [something] next to [something]'}
    anno = _ssv2_files(tmp_path, train=[good, entry])
    with pytest.raises(ssv2.AnnotationError) as e:
        ssv2.build_lists(str(anno / 'labels.json'),
                         {'train': str(anno / 'something-something-v2-train.json')},
                         str(tmp_path / 'out'))
    msg = str(e.value)
    assert 'something-something-v2-train.json' in msg and expected in msg, msg


def test_ssv2_bad_labels_and_duplicates(tmp_path):
    anno = _ssv2_files(tmp_path, labels={'A something': '0', 'B something': '2'})
    with pytest.raises(ssv2.AnnotationError, match=r'labels\.json.*without gaps'):
        ssv2.read_labels(str(anno / 'labels.json'))
    anno = _ssv2_files(tmp_path, labels={'A something': '0', 'B something': 'x'})
    with pytest.raises(ssv2.AnnotationError, match="'B something'.*not an integer"):
        ssv2.read_labels(str(anno / 'labels.json'))
    dup = {'id': '7', 'template': 'Holding [something] next to [something]'}
    anno = _ssv2_files(tmp_path, train=[dup, dup])
    with pytest.raises(ssv2.AnnotationError, match=r"train\.json: video ids \['7'\]"):
        ssv2.read_split(str(anno / 'something-something-v2-train.json'),
                        {n: int(i) for n, i in SSV2_LABELS.items()})
    # CLI: clear message, exit code 2, no traceback.
    assert ssv2.main(['--anno-dir', str(anno), '--out-dir', str(tmp_path / 'o')]) == 2


# ----------------------------------------------------------------------------- K400
K400_TRAIN = """label,youtube_id,time_start,time_end,split,is_cc
abseiling,---QUuC4vJs,3,13,train,0
air drumming,--VnA3ztuZg,0,10,train,0
"passing American football (in game)",-0iGl8Rtn4U,25,35,train,0
abseiling,-3B32lodo2M,59,69,train,0
"""
K400_VAL = """label,youtube_id,time_start,time_end,split
air drumming,-4pLQ1SvnHA,120,130,val
abseiling,-8n3X6-ir9w,7,17,val
"passing American football (in game)",-9n3Yp-Lr9w,1,11,val
"""


def _k400_files(tmp_path, train=K400_TRAIN, val=K400_VAL):
    (tmp_path / 'train.csv').write_text(train)
    (tmp_path / 'validate.csv').write_text(val)
    return str(tmp_path / 'train.csv'), str(tmp_path / 'validate.csv')


def test_k400_lists_and_classnames(tmp_path):
    train, val = _k400_files(tmp_path)
    out = tmp_path / 'out'
    assert k400.main(['--train-csv', train, '--val-csv', val, '--out-dir', str(out)]) == 0
    names = ['abseiling', 'air drumming', 'passing American football (in game)']
    assert _read(out / 'classnames.txt') == names  # sorted train labels
    assert _read(out / 'train_list.txt') == [
        '---QUuC4vJs_000003_000013.mp4 0', '--VnA3ztuZg_000000_000010.mp4 1',
        '-0iGl8Rtn4U_000025_000035.mp4 2', '-3B32lodo2M_000059_000069.mp4 0']
    assert _read(out / 'val_list.txt') == [
        '-4pLQ1SvnHA_000120_000130.mp4 1', '-8n3X6-ir9w_000007_000017.mp4 0',
        '-9n3Yp-Lr9w_000001_000011.mp4 2']


def test_k400_val_only_run_keeps_the_class_ids_already_there(tmp_path, capsys):
    """Rebuilding the val list from a CSV that lacks a class: the ids stay those of the
    classnames.txt written with the train list (sorting the val labels alone would
    renumber 'passing American football' from 2 to 1)."""
    train, val = _k400_files(tmp_path)
    out = tmp_path / 'out'
    assert k400.main(['--train-csv', train, '--val-csv', val, '--out-dir', str(out)]) == 0
    subset = tmp_path / 'val_subset.csv'
    lines = _read(val)
    subset.write_text('\n'.join([lines[0]] + [ln for ln in lines[1:]
                                               if not ln.startswith('air drumming')]) + '\n')
    capsys.readouterr()
    assert k400.main(['--val-csv', str(subset), '--out-dir', str(out)]) == 0
    assert 'class order: ' in capsys.readouterr().out
    assert _read(out / 'classnames.txt') == [
        'abseiling', 'air drumming', 'passing American football (in game)']
    assert _read(out / 'val_list.txt') == ['-8n3X6-ir9w_000007_000017.mp4 0',
                                           '-9n3Yp-Lr9w_000001_000011.mp4 2']
    fresh = tmp_path / 'fresh'                    # nothing there yet: the val labels sorted
    assert k400.main(['--val-csv', str(subset), '--out-dir', str(fresh)]) == 0
    assert _read(fresh / 'classnames.txt') == ['abseiling',
                                               'passing American football (in game)']


def test_k400_name_format_classnames_order_and_missing(tmp_path):
    train, val = _k400_files(tmp_path)
    order = tmp_path / 'my_classnames.txt'
    order.write_text('passing American football (in game)\nair drumming\nabseiling\n')
    vdir = tmp_path / 'val_videos'
    (vdir / 'abseiling').mkdir(parents=True)
    (vdir / 'abseiling' / '-8n3X6-ir9w.mkv').write_bytes(b'x')
    out = tmp_path / 'out'
    rc = k400.main(['--val-csv', val, '--out-dir', str(out), '--classnames', str(order),
                    '--name-format', '{label_dir}/{youtube_id}.mkv',
                    '--val-video-dir', str(vdir)])
    assert rc == 0
    assert _read(out / 'classnames.txt') == _read(order)
    assert _read(out / 'val_list.txt') == ['abseiling/-8n3X6-ir9w.mkv 2']
    assert _read(out / 'missing_val.txt') == [
        'air_drumming/-4pLQ1SvnHA.mkv',
        'passing_American_football_(in_game)/-9n3Yp-Lr9w.mkv']
    # once the videos are there, a rerun removes the old missing list
    for name in _read(out / 'missing_val.txt'):
        (vdir / name).parent.mkdir(parents=True, exist_ok=True)
        (vdir / name).write_bytes(b'x')
    assert k400.main(['--val-csv', val, '--out-dir', str(out), '--classnames', str(order),
                      '--name-format', '{label_dir}/{youtube_id}.mkv',
                      '--val-video-dir', str(vdir)]) == 0
    assert len(_read(out / 'val_list.txt')) == 3 and not (out / 'missing_val.txt').exists()


def test_list_builders_write_nothing_when_a_video_folder_is_wrong(tmp_path):
    train, val = _k400_files(tmp_path)
    (tmp_path / 'vtrain').mkdir()
    out = tmp_path / 'k400_out'
    with pytest.raises(FileNotFoundError, match='nonexist'):
        k400.build_lists({'train': train, 'val': val}, str(out),
                         video_dirs={'train': str(tmp_path / 'vtrain'),
                                     'val': str(tmp_path / 'nonexist')})
    assert not out.exists()
    anno = _ssv2_files(tmp_path)
    out = tmp_path / 'ssv2_out'
    with pytest.raises(FileNotFoundError, match='nonexist'):
        ssv2.build_lists(str(anno / 'labels.json'),
                         {'train': str(anno / 'something-something-v2-train.json')},
                         str(out), video_dir=str(tmp_path / 'nonexist'))
    assert not out.exists()


@pytest.mark.parametrize('line, expected', [
    ('abseiling,abc,x,13,train', 'line 3: time_start='),
    ('abseiling,abc,20,13,train', 'line 3: time_end=13 is not after'),
    ('abseiling,abc,3', 'line 3: expected'),
    (',abc,3,13,train', 'line 3: empty label'),
])
def test_k400_malformed_rows_name_file_and_line(tmp_path, line, expected):
    train, _ = _k400_files(tmp_path, train='label,youtube_id,time_start,time_end,split\n'
                           'abseiling,---QUuC4vJs,3,13,train\n' + line + '\n')
    with pytest.raises(k400.AnnotationError) as e:
        k400.read_csv(train)
    assert 'train.csv' in str(e.value) and expected in str(e.value), str(e.value)


def test_k400_bad_header_unknown_val_label_and_spaces(tmp_path):
    train, val = _k400_files(tmp_path, train='label,id,start,end\nabseiling,a,1,2\n')
    with pytest.raises(k400.AnnotationError, match=r"train\.csv: header .* lacks columns"):
        k400.read_csv(train)
    train, val = _k400_files(tmp_path, val=K400_VAL + 'yoga,zzz,1,11,val\n')
    with pytest.raises(k400.AnnotationError, match=r"validate\.csv: line 5: label 'yoga'"):
        k400.build_lists({'train': train, 'val': val}, str(tmp_path / 'out'))
    train, val = _k400_files(tmp_path)
    with pytest.raises(ValueError, match='contains a space'):
        k400.build_lists({'train': train}, str(tmp_path / 'out'),
                         name_format='{label}/{youtube_id}.mp4')
    assert k400.main(['--train-csv', train, '--out-dir', str(tmp_path / 'o'),
                      '--name-format', '{nope}.mp4']) == 2


@pytest.mark.parametrize('config, make_lists', [
    ('k400_self_b16.py', lambda tmp: (k400.main(
        ['--train-csv', _k400_files(tmp)[0], '--val-csv', _k400_files(tmp)[1],
         '--out-dir', str(tmp / 'root')]), 4, 3)),
    ('ssv2_self_b16.py', lambda tmp: (ssv2.main(
        ['--anno-dir', str(_ssv2_files(tmp)), '--out-dir', str(tmp / 'root')]), 3, 1)),
])
def test_one_data_root_override_moves_a_recognition_dataset(tmp_path, config, make_lists):
    """The documented override (data_root per dataloader) finds the lists the tools wrote
    under another root; the video prefix moves with it."""
    import stan_mm  # noqa: F401
    from mmaction.registry import DATASETS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    init_default_scope('mmaction')
    rc, n_train, n_val = make_lists(tmp_path)
    assert rc == 0
    root = str(tmp_path / 'root')
    cfg = Config.fromfile(osp.join(osp.dirname(__file__), '..', 'configs', 'stan', config))
    cfg.merge_from_dict({f'{split}_dataloader.dataset.data_root': root
                         for split in ('train', 'val', 'test')})
    # the lists name videos these tests do not write
    cfg.merge_from_dict({f'{split}_dataloader.dataset.check_files': False
                         for split in ('train', 'val', 'test')})
    for split, n in (('train', n_train), ('val', n_val), ('test', n_val)):
        dataset = DATASETS.build(cfg[f'{split}_dataloader'].dataset)
        assert len(dataset) == n, split
        assert dataset.get_data_info(0)['filename'].startswith(root + '/videos'), split


def test_k400_rerun_keeps_the_class_order_of_the_lists_there(tmp_path, capsys):
    """Lists built with a --classnames order, then the train list rebuilt alone: the val
    list keeps its ids, so classnames.txt must keep that order (sorting the train labels
    renumbered every class under the val list without a word)."""
    train, val = _k400_files(tmp_path)
    order = tmp_path / 'reversed.txt'
    order.write_text('passing American football (in game)\nair drumming\nabseiling\n')
    out = tmp_path / 'out'
    assert k400.main(['--train-csv', train, '--val-csv', val, '--out-dir', str(out),
                      '--classnames', str(order)]) == 0
    val_before = _read(out / 'val_list.txt')
    capsys.readouterr()
    assert k400.main(['--train-csv', train, '--out-dir', str(out)]) == 0
    assert 'class order: ' in capsys.readouterr().out
    assert _read(out / 'classnames.txt') == _read(order)
    assert _read(out / 'val_list.txt') == val_before
    assert _read(out / 'train_list.txt')[0] == '---QUuC4vJs_000003_000013.mp4 2'   # abseiling


def test_list_builders_refuse_a_folder_without_any_of_the_videos(tmp_path, capsys):
    """A wrong --name-format or --ext finds none of a split's videos: exit 2 with what to
    check, and the lists already there stay (an empty list replaced them before)."""
    train, val = _k400_files(tmp_path)
    out = tmp_path / 'k400_out'
    assert k400.main(['--train-csv', train, '--out-dir', str(out)]) == 0
    before = _read(out / 'train_list.txt')
    (tmp_path / 'vtrain').mkdir()
    assert k400.main(['--train-csv', train, '--out-dir', str(out),
                      '--train-video-dir', str(tmp_path / 'vtrain')]) == 2
    err = capsys.readouterr().err
    assert 'none of the 4 videos of the train split' in err and '--name-format' in err
    assert _read(out / 'train_list.txt') == before
    anno = _ssv2_files(tmp_path)
    (tmp_path / 'videos').mkdir()
    for vid in ('78687', '42326', '100904', '74225'):
        (tmp_path / 'videos' / f'{vid}.webm').write_bytes(b'x')
    out = tmp_path / 'ssv2_out'
    assert ssv2.main(['--anno-dir', str(anno), '--out-dir', str(out), '--video-dir',
                      str(tmp_path / 'videos'), '--ext', 'mp4']) == 2
    assert "Check --ext (now 'mp4'" in capsys.readouterr().err and not out.exists()


def test_ssv2_current_archive_names_and_k400_csv_quirks(tmp_path, capsys):
    """The current SSv2 label archive names its files train.json / validation.json; a
    Kinetics CSV saved with a BOM reads as usual; inf / nan times are located errors."""
    anno = _ssv2_files(tmp_path)
    for old, new in (('something-something-v2-train.json', 'train.json'),
                     ('something-something-v2-validation.json', 'validation.json')):
        (anno / old).rename(anno / new)
    out = tmp_path / 'out'
    assert ssv2.main(['--anno-dir', str(anno), '--out-dir', str(out)]) == 0
    assert len(_read(out / 'train_list.txt')) == 3 and len(_read(out / 'val_list.txt')) == 1
    train, _ = _k400_files(tmp_path)
    bom = tmp_path / 'bom.csv'
    bom.write_bytes(b'\xef\xbb\xbf' + open(train, 'rb').read())
    assert k400.main(['--train-csv', str(bom), '--out-dir', str(tmp_path / 'k')]) == 0
    assert len(_read(tmp_path / 'k' / 'train_list.txt')) == 4
    for bad in ('inf', 'nan'):
        lines = _read(train)
        lines.insert(2, f'abseiling,abc,3,{bad},train')
        path = tmp_path / f'{bad}.csv'
        path.write_text('\n'.join(lines) + '\n')
        assert k400.main(['--train-csv', str(path), '--out-dir', str(tmp_path / bad)]) == 2
        assert f"line 3: time_end='{bad}'" in capsys.readouterr().err
