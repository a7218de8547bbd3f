"""Portability review (2026-12-07): a container's small /dev/shm is warned about before
training or testing starts; macOS gets spawn instead of the configs' fork."""
import logging
import os.path as osp
import sys

import pytest

import stan_mm  # noqa: F401  (applies the compat fixes)
from mmengine.config import Config

from stan_mm.utils.shm import loader_shm_bytes, sample_bytes, shm_shortfall

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
MB = 2**20


# ------------------------------------------------------------------------- /dev/shm
def test_sample_bytes_follow_the_pipeline():
    """Frames x views x 3 x side^2 (uint8), computed by hand for the K400 recipe's
    pipelines: 8 frames at 224 for training; 3 crops of 224 for the 3-view test."""
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'stan', 'k400_self_b16.py'))
    train = cfg.train_dataloader.dataset.pipeline
    assert sample_bytes(train) == 8 * 3 * 224 * 224
    test = cfg.test_dataloader.dataset.pipeline
    clips = next(s for s in test if 'clip_len' in s).get('num_clips', 1)
    assert sample_bytes(test) == 8 * clips * 3 * 3 * 224 * 224
    assert sample_bytes([dict(type='SampleFrames', clip_len=16, num_clips=2),
                         dict(type='TenCrop', crop_size=(112, 112))]) == 32 * 10 * 3 * 112**2
    assert sample_bytes(None) == 8 * 3 * 224 * 224          # the default guess
    # workers x prefetch x batch x sample; no workers: nothing in shared memory
    loader = dict(num_workers=8, batch_size=16, dataset=dict(pipeline=train))
    assert loader_shm_bytes(loader) == 8 * 2 * 16 * 8 * 3 * 224 * 224
    assert loader_shm_bytes(dict(loader, prefetch_factor=4)) == 2 * loader_shm_bytes(loader)
    assert loader_shm_bytes(dict(loader, num_workers=0)) == 0


def test_a_docker_default_shm_is_warned_about(monkeypatch):
    """64 MB (Docker's default) against the K400 recipe's ~294 MB: a warning naming the
    loader, both sizes and the fixes; 8 GB free or no workers: none."""
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'stan', 'k400_self_b16.py'))
    message = shm_shortfall(cfg, loaders=('train_dataloader', 'val_dataloader'), free=64 * MB)
    assert message.startswith('/dev/shm has 64 MB free, but train_dataloader (num_workers=8, '
                              'batch_size=16) keeps about 294 MB of batches in it')
    assert '--shm-size=1g or --ipc=host' in message        # (twice the need, whole GB)
    assert shm_shortfall(cfg, free=8 * 1024 * MB) is None
    # 8 processes of a node share /dev/shm (torchrun's LOCAL_WORLD_SIZE): 8 x 294 MB
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '8')
    message = shm_shortfall(cfg, loaders=('train_dataloader', ), free=2048 * MB)
    assert 'keeps about 294 MB of batches in it x 8 processes on this node = 2352 MB' \
        in message and '--shm-size=5g' in message
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[name].num_workers = 0
    assert shm_shortfall(cfg, free=1) is None


def test_train_tool_warns_before_the_run_starts(tmp_path, capsys, monkeypatch):
    """tools/train.py prints the warning (first rank) and writes it to the run's log; the
    run itself goes on."""
    from test_log_review_fixes2 import run_logs, train, write_config
    monkeypatch.setattr('stan_mm.utils.shm.free_shm', lambda path='/dev/shm': MB // 2)
    config = write_config(tmp_path / 'cfg.py', tmp_path / 'data')
    work_dir = tmp_path / 'work'
    assert train([config, '--work-dir', work_dir, '--cfg-options',
                  'train_dataloader.num_workers=1']) == 0
    err = capsys.readouterr().err
    assert 'train.py: warning: /dev/shm has 0 MB free, but train_dataloader (num_workers=1' \
        in err
    (log, ) = run_logs(work_dir)
    assert 'train.py: warning: /dev/shm has 0 MB free' in log


# ---------------------------------------------------------------------------- macOS
@pytest.mark.filterwarnings('ignore:Multi-processing start method')
def test_fork_becomes_spawn_on_macos_only(monkeypatch):
    """The runner's set_multi_processing: 'fork' from the config is 'spawn' on macOS, with
    a warning; on Linux, and any other method anywhere, as asked."""
    import mmengine.runner.runner as runner_module
    import mmengine.utils.dl_utils.setup_env as setup_env
    from mmengine.logging import MMLogger
    asked = []
    monkeypatch.setattr(setup_env.mp, 'set_start_method',
                        lambda method, force=False: asked.append(method))
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    from stan_mm.utils import cli
    cli.log_config_warnings(clear_only=True)
    try:
        monkeypatch.setattr(sys, 'platform', 'darwin')
        runner_module.set_multi_processing(mp_start_method='fork')
        # kept for the run's log file (the logger of the run does not exist yet)
        assert cli._CONFIG_WARNINGS == ["env_cfg.mp_cfg.mp_start_method='fork' is not safe "
                                        "on macOS: DataLoader workers start with 'spawn' "
                                        "instead"]
        cli.log_config_warnings(clear_only=True)
        runner_module.set_multi_processing(mp_start_method='forkserver')
        monkeypatch.setattr(sys, 'platform', 'linux')
        runner_module.set_multi_processing(mp_start_method='fork')
    finally:
        logger.removeHandler(handler)
    assert asked == ['spawn', 'forkserver', 'fork']
    warned = [r.getMessage() for r in records if r.levelno == logging.WARNING
              and 'macOS' in r.getMessage()]
    assert warned == ["env_cfg.mp_cfg.mp_start_method='fork' is not safe on macOS: "
                      "DataLoader workers start with 'spawn' instead"]


def test_video_check_pool_uses_spawn_on_macos(monkeypatch):
    from stan_mm.apis import video_check
    assert video_check._mp_context().get_start_method() == 'fork'       # (Linux)
    monkeypatch.setattr(sys, 'platform', 'darwin')
    assert video_check._mp_context().get_start_method() == 'spawn'


# ------------------------------------------------------- an ASCII locale, non-ASCII paths
def test_non_ascii_work_dir_under_an_ascii_locale(tmp_path):
    """LANG=C without Python's UTF-8 mode: a work dir named 'wd Ж' crashed at the first
    checkpoint (UnicodeEncodeError writing the pointer to it: the epoch was lost). It now
    trains, writes last_checkpoint in the file system's bytes, and --resume finds it."""
    import os
    import subprocess
    from test_log_review_fixes2 import write_config
    config = write_config(tmp_path / 'cfg.py', tmp_path / 'data')
    work_dir = tmp_path / 'wd Ж'
    env = dict(os.environ, LANG='C', LC_ALL='C', PYTHONUTF8='0', PYTHONCOERCECLOCALE='0',
               PYTHONIOENCODING='')
    env.pop('PYTHONIOENCODING')
    train = [sys.executable, osp.join(REPO, 'tools', 'train.py'), config,
             '--work-dir', str(work_dir)]
    probe = subprocess.run([sys.executable, '-c', 'import sys; print(sys.getfilesystemencoding'
                            '(), sys.flags.utf8_mode)'], env=env, capture_output=True,
                           text=True)
    if probe.stdout.split() != ['ascii', '0']:
        pytest.skip(f'this Python does not run in an ASCII locale here: {probe.stdout!r}')
    done = subprocess.run(train, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (work_dir / 'epoch_1.pth').is_file()
    assert (work_dir / 'last_checkpoint').read_bytes() == os.fsencode(
        str(work_dir / 'epoch_1.pth'))
    resumed = subprocess.run(train + ['--resume'], env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'nothing to resume' not in resumed.stderr
    logs = sorted(work_dir.glob('*/*.log'))
    assert 'resumed epoch: 1, iter: 2' in logs[-1].read_text(encoding='utf-8', errors='replace')


def test_tools_print_what_an_ascii_console_cannot_show_as_escapes(monkeypatch):
    """search.py died with "'ascii' codec can't encode '\\u2116'" printing a query after
    its work; run_tool makes a non-UTF-8 console print escapes instead."""
    import io
    from stan_mm.utils.cli import run_tool
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding='ascii')
    monkeypatch.setattr(sys, 'stdout', out)
    assert run_tool(lambda: print('query: \u2116 5, caf\u00e9'), 'search.py') == 0
    out.flush()
    assert raw.getvalue() == b'query: \\u2116 5, caf\\xe9\n'


# ---------------------------------------------------------- a comma in a path option
def test_a_comma_in_a_path_option_stays_in_the_path():
    """data_root=/data/clips,2024 became ['/data/clips', 2024] (mmengine's list syntax)
    and train.py failed on a bare assertion in mmengine's file io. Keys that name one
    path keep the comma; quotes that reach the tool make a string; other keys and
    bracketed values keep mmengine's lists."""
    import argparse
    from stan_mm.utils.cli import ConfigOptionsAction
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=ConfigOptionsAction)
    options = parser.parse_args([
        '--cfg-options', 'data_root=/data/clips,2024', 'work_dir=runs/a,b',
        'train_dataloader.dataset.data_prefix.video=/v/x,2',
        'train_dataloader.dataset.ann_file=ann,1.txt', 'load_from=/ckpt/e,1.pth',
        'model.backbone.levels=1,2', 'labels="a,b"', 'names=[a,b]',
        'ann_files=[x.txt,y.txt]', "randomness.seed='0'", 'flag="True"']).cfg_options
    assert options == {
        'data_root': '/data/clips,2024', 'work_dir': 'runs/a,b',
        'train_dataloader.dataset.data_prefix.video': '/v/x,2',
        'train_dataloader.dataset.ann_file': 'ann,1.txt', 'load_from': '/ckpt/e,1.pth',
        'model.backbone.levels': [1, 2], 'labels': 'a,b', 'names': ['a', 'b'],
        'ann_files': ['x.txt', 'y.txt'],
        'randomness.seed': 0, 'flag': True}     # (quoted without a comma: mmengine's)


# ------------------------------------------------ one file under names that differ in case
def test_names_differing_in_case_that_are_one_file_are_warned_about(tmp_path, monkeypatch):
    """On a case-insensitive file system (macOS, Windows) Clip7.mp4 and clip7.mp4 are one
    file, which realpath does not reveal: the gallery held the video twice without a
    word. Names that differ in case alone are compared by file identity; here a hard
    link stands in for the case-insensitive file system. Two distinct files whose names
    differ in case are not reported."""
    import json
    import os
    from stan_mm.datasets import retrieval
    from test_retrieval_datasets import build, touch_videos
    videos = tmp_path / 'videos'
    touch_videos(videos, ['Clip7.mp4', 'Clip8.mp4', 'clip8.mp4'])
    (videos / 'clip8.mp4').write_bytes(b'another video')
    os.link(videos / 'Clip7.mp4', videos / 'clip7.mp4')
    ann = tmp_path / 'ann.json'
    ann.write_text(json.dumps({'Clip7.mp4': ['a'], 'clip7.mp4': ['b'], 'Clip8.mp4': ['c'],
                               'clip8.mp4': ['d']}))
    logged = []
    monkeypatch.setattr(retrieval, 'print_log', lambda msg, **kw: logged.append(msg))
    ds = build(ann_format='json', ann_file=str(ann), data_prefix=dict(video=str(videos)),
               test_mode=True)
    assert len(ds) == 4
    warned = [m for m in logged if 'links to one file' in m]
    assert len(warned) == 1 and '1 pair(s)' in warned[0], logged
    assert "'clip7.mp4' and 'Clip7.mp4'" in warned[0] and 'lip8' not in warned[0]


def test_a_config_variable_set_by_cfg_options_is_named_where_it_was_copied(tmp_path,
                                                                          capsys):
    """--cfg-options data_root=/data/x changed the variable only: the config had copied
    it into every dataset when it was read, so training read the config's folder. The
    tools warn and name the options that set the copies; an option that reaches every
    copy, or a Runner key, is not warned about."""
    from stan_mm.utils.cli import ineffective_variable_options
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'stan', 'msrvtt_self_b16.py'))
    options = {'data_root': '/data/x', 'work_dir': '/w', 'model.backbone.depth': 2}
    cfg.merge_from_dict(options)
    (message, ) = ineffective_variable_options(cfg, options)
    assert message == (
        "--cfg-options data_root=/data/x changes the config's variable 'data_root' only: "
        "the config copied it when it was read, and train_dataloader.dataset.data_root, "
        "val_dataloader.dataset.data_root, test_dataloader.dataset.data_root still hold "
        "another value. Set them instead: --cfg-options "
        "train_dataloader.dataset.data_root=/data/x val_dataloader.dataset.data_root=/data/x "
        "test_dataloader.dataset.data_root=/data/x")
    every = dict(options, **{f'{s}_dataloader.dataset.data_root': '/data/x'
                             for s in ('train', 'val', 'test')})
    cfg.merge_from_dict(every)
    assert ineffective_variable_options(cfg, every) == []
    # through tools/train.py's checks: printed as a warning
    from stan_mm.utils.cli import warn_misspelled_keys
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'stan', 'msrvtt_self_b16.py'))
    cfg.merge_from_dict({'data_root': '/data/x'})
    warn_misspelled_keys(cfg, 'train.py', options={'data_root': '/data/x'})
    assert "train.py: warning: --cfg-options data_root=/data/x changes the config's variable" \
        in capsys.readouterr().err
