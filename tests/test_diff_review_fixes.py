"""Fixes from the review of the day's changes:

1. A refused work dir (``WorkDirInUseError``) stops every rank of a distributed run: rank 0
   alone raised, and the others went on to their first collective and waited there.
2. ``unexpected_argument_error`` keeps the traceback of a keyword the code itself wrote
   into a dict it builds (no config entry sets it): that is a bug, not a config error.
3. ``tools/test.py``'s results line shows every top-k the metric reports and a mean class
   accuracy without top-1 (it dropped top-3 and printed nothing for mean accuracy alone).
4. The progress helper survives a stderr replacement without ``flush`` and treats a
   Jupyter cell's stream as a terminal; a bar of unknown total is truthy.
5. ``recognize()`` with a class list holding a non-str names the bad entry (it was an
   ``unhashable type`` TypeError).
6. (upgrade review) A mid-epoch checkpoint written while TwinGroupSampler shuffled
   otherwise is not skipped into: its sampler order version is recorded and compared.
7. (flakiness review) Two runners built in one second in the tests get their own logger
   (tests/conftest.py waits for the next second).
"""
import io
import json
import multiprocessing as mp
import os
import os.path as osp
import sys
import traceback
import types

import pytest
import torch

sys.path.insert(0, osp.dirname(__file__))
from test_user_tools import load_tool  # noqa: E402


# ------------------------------------------------------------- 1. every rank stops
def _rank_worker(rank, store, work_dir, out):
    try:
        torch.distributed.init_process_group('gloo', init_method=f'file://{store}',
                                             rank=rank, world_size=2)
        from stan_mm.engine.checkpoint_hook import AtomicCheckpointHook, WorkDirInUseError
        hook = AtomicCheckpointHook(interval=1)
        hook.out_dir = work_dir
        runner = types.SimpleNamespace(work_dir=work_dir)
        try:
            hook._lock_folders_on_every_rank(runner)
            result = 'went on'
        except WorkDirInUseError as e:
            result = f'refused: {e}'
        with open(f'{out}.{rank}', 'w') as f:
            json.dump(result, f)
        torch.distributed.destroy_process_group()
    except BaseException:
        traceback.print_exc()
        os._exit(1)


def _run_two_ranks(tmp_path, work_dir):
    """What each of two gloo ranks' ``_lock_folders_on_every_rank`` did on ``work_dir``."""
    ctx = mp.get_context('fork')
    out = str(tmp_path / 'result')
    procs = [ctx.Process(target=_rank_worker, args=(r, str(tmp_path / 'store'), work_dir, out))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    return [json.load(open(f'{out}.{r}')) for r in range(2)]


def test_a_refused_work_dir_stops_every_rank(tmp_path):
    from test_concurrency_review_fixes import _held_by_another_process
    work_dir = str(tmp_path / 'work')
    os.makedirs(work_dir)
    with _held_by_another_process(work_dir):
        results = _run_two_ranks(tmp_path, work_dir)
    assert results[0].startswith('refused: AtomicCheckpointHook: the work dir')
    assert results[1].startswith('refused: rank 0 could not start the run: '
                                 'WorkDirInUseError: AtomicCheckpointHook: the work dir')


def test_a_free_work_dir_lets_every_rank_go_on(tmp_path):
    work_dir = str(tmp_path / 'work')
    os.makedirs(work_dir)
    assert _run_two_ranks(tmp_path, work_dir) == ['went on', 'went on']


# ------------------------------------------------------------- 2. code-built dicts
def test_a_keyword_the_code_wrote_keeps_its_traceback():
    from mmengine.config import Config
    from mmengine.registry import Registry
    from stan_mm.utils.cli import unexpected_argument_error
    # (no parent: a parent makes build() switch to the default scope's registry, which an
    # earlier test may have set to mmaction's, where these classes are not registered)
    registry = Registry('diff_review_test')

    @registry.register_module()
    class Inner(torch.nn.Module):
        def __init__(self, width=1):
            super().__init__()

    @registry.register_module()
    class Outer(torch.nn.Module):
        def __init__(self, width=1):
            super().__init__()
            self.inner = registry.build(dict(type='Inner', widht=width))   # a typo in code

    def build(cfg):
        return registry.build(cfg.model)

    cfg = Config(dict(model=dict(type='Outer', width=8)))
    with pytest.raises(TypeError) as e:
        build(cfg)
    assert unexpected_argument_error(e.value) is None
    # the same typo in the config is a config error naming its path
    cfg = Config(dict(model=dict(type='Outer', widht=8)))
    with pytest.raises(TypeError) as e:
        build(cfg)
    error = unexpected_argument_error(e.value)
    assert error is not None and 'model.widht' in str(error), error


# ------------------------------------------------------------- 3. results line
def test_results_line_shows_every_top_k_and_mean_accuracy_alone():
    tool = load_tool('tools/test.py')
    assert tool.results_summary({'acc/mean1': 0.8}) == 'results: mean class accuracy 80.0 %'
    assert tool.results_summary({'acc/top1': 0.8, 'acc/top3': 0.9}) == \
        'results: top-1 / top-3: 80.0 / 90.0 %'
    assert tool.results_summary({'acc/top5': 0.9, 'acc/top1': 0.8, 'acc/top10': 0.95}) == \
        'results: top-1 / top-5 / top-10: 80.0 / 90.0 / 95.0 %'


# ------------------------------------------------------------- 4. progress helper
class _WriteOnly:
    def __init__(self):
        self.text = ''

    def write(self, s):
        self.text += s


def test_progress_to_a_stream_without_flush():
    from stan_mm.utils.progress import progress_bar
    stream = _WriteOnly()
    bar = progress_bar(total=3, desc='videos', unit='video', file=stream)
    bar.update(3)
    bar.close()
    assert 'videos: 3/3 videos (100%), done in' in stream.text
    assert bool(progress_bar(total=None, file=io.StringIO()))


def test_a_jupyter_stream_gets_tqdm():
    from tqdm import tqdm
    from stan_mm.utils.progress import progress_bar
    OutStream = type('OutStream', (io.StringIO, ), {'__module__': 'ipykernel.iostream'})
    bar = progress_bar(total=2, file=OutStream())
    assert isinstance(bar, tqdm)
    bar.close()


# ------------------------------------------------------------- 5. class list entries
def test_a_non_str_class_name_is_named():
    from stan_mm.apis.recognition import _style_checked
    with pytest.raises(ValueError, match=r"class 0 is \['a'\]; expected a non-empty str"):
        _style_checked([['a'], 'b'], 'classnames')


# ------------------------------------------------------------- 6. sampler order versions
def test_a_mid_epoch_checkpoint_of_an_older_twin_sampler_order_is_not_skipped_into():
    """TwinGroupSampler shuffled by seed + epoch before 2026-12-06 (now a hash of both):
    a mid-epoch checkpoint of that version, resumed, skipped the first indices of the new
    order (batches trained twice, others never, no warning). The order's version is now
    recorded; a checkpoint without it, or of another version, restarts the epoch."""
    from test_mid_epoch_resume import BATCH, _twin_sampler, planned, toy_loader
    loader = toy_loader(sampler=_twin_sampler([[2 * i, 2 * i + 1] for i in range(6)], 0, 1))
    per_epoch = len(loader)
    saved = dict(batches_per_epoch=per_epoch, batch_size=BATCH, world_size=1,
                 sampler_seed=0, epoch=1, epoch_start_iter=per_epoch)
    skip, said = planned(loader, per_epoch + 2, 1,
                         dict(saved, sampler_order='TwinGroupSampler v2'))
    assert skip == 2 and 'Falling back' not in said[0][1]
    skip, said = planned(loader, per_epoch + 2, 1, saved)                 # older stan-mm
    assert skip == 0 and 'Falling back' in said[0][1]
    assert 'the sampler may shuffle otherwise (the checkpoint, written by an older stan-mm, ' \
        'does not record its order version; now TwinGroupSampler v2)' in said[0][1]
    skip, said = planned(loader, per_epoch + 2, 1,
                         dict(saved, sampler_order='TwinGroupSampler v1'))
    assert skip == 0 and "the sampler's order changed (TwinGroupSampler v1 -> " \
        "TwinGroupSampler v2)" in said[0][1]
    # DefaultSampler states no version: a checkpoint without the record is skipped into
    n = len(toy_loader())
    plain = dict(saved, batches_per_epoch=n, epoch_start_iter=n)
    assert planned(toy_loader(), n + 2, 1, plain)[0] == 2


# ------------------------------------------------------------- 7. runner names in tests
def test_two_runners_built_back_to_back_get_their_own_logger(tmp_path):
    """(tests/conftest.py) mmengine hands a runner started in the same second as an
    earlier one of the same name the earlier one's logger and message hub."""
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Tiny(BaseModel):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)

        def forward(self, *args, **kwargs):
            return {}

    a = Runner(model=Tiny(), work_dir=str(tmp_path / 'a'), experiment_name='same')
    b = Runner(model=Tiny(), work_dir=str(tmp_path / 'b'), experiment_name='same')
    assert a.timestamp != b.timestamp
    assert a.logger is not b.logger and a.message_hub is not b.message_hub
