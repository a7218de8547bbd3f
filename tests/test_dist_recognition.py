"""Distributed recognition on CPU (torchrun + gloo, 2 processes) through the launch scripts.

``bash tools/dist_train.sh <tiny config> 2`` trains, validates and checkpoints;
``bash tools/dist_test.sh CONFIG CKPT 2`` reproduces single-process ``tools/test.py``
exactly on a validation set of 5 videos (not divisible by 2: the distributed sampler pads
one sample, which mmengine's result collection must drop).
"""
import os.path as osp
import re
import sys

import numpy as np
import pytest
import torch

from stan_mm.testing import free_port

sys.path.insert(0, osp.dirname(__file__))
from test_recognition import (assert_same_dumps, load_tool, run_logged,  # noqa: E402
                              write_tiny_config)

NUM_VAL = 5


def _run(cmd, log):
    return run_logged(cmd, log, PORT=str(free_port()))


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """Tiny config + a checkpoint trained by dist_train.sh with 2 CPU processes."""
    tmp = tmp_path_factory.mktemp('dist_recognition')
    cfg = write_tiny_config(tmp, num_train=6, num_val=NUM_VAL, max_epochs=1)
    work = tmp / 'work_train'
    log = _run(['bash', 'tools/dist_train.sh', cfg, '2', '--work-dir', str(work)],
               tmp / 'train.log')
    return tmp, cfg, work, log


def test_dist_train_on_cpu_trains_validates_and_checkpoints(trained):
    tmp, cfg, work, log = trained
    assert 'Distributed training: True' in log, log[-3000:]
    # 6 train videos, batch 2: 3 iterations in one process, 2 per rank with 2 ranks.
    assert 'Epoch(train) [1][2/2]' in log and '[1][3/3]' not in log, log[-3000:]
    assert (work / 'epoch_1.pth').is_file()
    assert re.search(r'Epoch\(val\) \[1\]\[\d+/\d+\]\s+acc/top1: [0-9.]+', log), log[-3000:]
    from stan_mm.compat import safe_torch_load  # the loader tools/test.py uses
    ckpt = safe_torch_load(str(work / 'epoch_1.pth'))
    assert any(k.startswith('backbone.branch.') for k in ckpt['state_dict'])
    assert not any(k.startswith('module.') for k in ckpt['state_dict'])


def _top1(dump):
    return np.mean([int(d['pred_score'].argmax()) == int(d['gt_label']) for d in dump])


def test_dist_test_reproduces_single_process_exactly(trained):
    tmp, cfg, work, _ = trained
    ckpt = str(work / 'epoch_1.pth')

    # Single process, in this process (one thread, like each torchrun worker).
    test_tool = load_tool('tools/test.py', 'stan_test_tool')
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = test_tool.main([cfg, ckpt, '--work-dir', str(tmp / 'work_single'),
                                 '--dump', str(tmp / 'single.pkl')])
    finally:
        torch.set_num_threads(threads)

    log = _run(['bash', 'tools/dist_test.sh', cfg, ckpt, '2', '--work-dir',
                str(tmp / 'work_dist'), '--dump', str(tmp / 'dist.pkl')], tmp / 'test.log')
    dist_top1 = float(re.search(r'acc/top1: ([0-9.]+)', log).group(1))

    # The padded sample of the 2-process sampler is dropped: 5 results, in dataset order.
    a, b = assert_same_dumps(tmp / 'single.pkl', tmp / 'dist.pkl', tmp / 'val_list.txt',
                             NUM_VAL)
    assert _top1(a) == _top1(b)
    assert single['acc/top1'] == pytest.approx(_top1(a), abs=1e-6)
    assert dist_top1 == pytest.approx(single['acc/top1'], abs=1e-4)  # log rounds to 4 places


def test_shutdown_distributed_destroys_the_process_group(tmp_path):
    """The tools end a distributed run by destroying the group (mmengine leaves it to exit,
    where gloo can abort the rank); without a group the call does nothing."""
    import torch.distributed as dist
    from stan_mm.engine.shutdown import shutdown_distributed
    shutdown_distributed()  # no group: no error
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "init"}', rank=0,
                            world_size=1)
    try:
        assert dist.is_initialized()
        shutdown_distributed()
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
