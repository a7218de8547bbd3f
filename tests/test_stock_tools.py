"""MMAction2's own ``tools/train.py`` and ``tools/test.py`` (shipped in the mmaction2 wheel
under ``mmaction/.mim/tools``) run this repo's configs: ``custom_imports`` in
``configs/_base_/default_runtime.py`` is all they need (README, "Use it from your own
MMAction2 setup"). Both run in fresh interpreters that never import stan_mm themselves.

The stock test tool must give, prediction for prediction, what this repo's ``tools/test.py``
gives on the same checkpoint (three-crop testing, scores fused per video).
"""
import os.path as osp
import sys

import pytest
import torch

sys.path.insert(0, osp.dirname(__file__))
from test_recognition import REPO, assert_same_dumps, run_logged, write_tiny_config  # noqa: E402,E501

NUM_VAL = 4


def _stock_tool(name):
    import mmaction
    path = osp.join(osp.dirname(mmaction.__file__), '.mim', 'tools', name)
    if not osp.isfile(path):
        pytest.skip(f'this mmaction2 install ships no {path}')
    return path


def test_stock_mmaction_tools_train_and_test_a_stan_config(tmp_path):
    train_tool, test_tool = _stock_tool('train.py'), _stock_tool('test.py')
    cfg = write_tiny_config(tmp_path, num_train=4, num_val=NUM_VAL, max_epochs=1)
    work = tmp_path / 'work_stock'
    # cwd outside the repo: nothing is found through the working directory.
    log = run_logged([sys.executable, train_tool, cfg, '--work-dir', str(work)],
               tmp_path / 'train.log', cwd=str(tmp_path))
    assert 'Epoch(train) [1][2/2]' in log, log[-3000:]
    ckpt = work / 'epoch_1.pth'
    assert ckpt.is_file(), log[-3000:]
    state = torch.load(str(ckpt), map_location='cpu', weights_only=False)['state_dict']
    assert any(k.startswith('backbone.branch.') for k in state)  # the STAN branch trained

    run_logged([sys.executable, test_tool, cfg, str(ckpt), '--work-dir', str(tmp_path / 'ws'),
          '--dump', str(tmp_path / 'stock.pkl')], tmp_path / 'test_stock.log',
         cwd=str(tmp_path))
    run_logged([sys.executable, osp.join(REPO, 'tools', 'test.py'), cfg, str(ckpt), '--work-dir',
          str(tmp_path / 'wo'), '--dump', str(tmp_path / 'ours.pkl')],
         tmp_path / 'test_ours.log', cwd=REPO)
    assert_same_dumps(tmp_path / 'stock.pkl', tmp_path / 'ours.pkl',
                      tmp_path / 'val_list.txt', NUM_VAL)
