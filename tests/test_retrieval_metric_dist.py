"""Two CPU processes (gloo) evaluate RetrievalRecallMetric exactly like one process.

7 test videos (not divisible by 2) with 1-3 captions each. Each rank feeds the metric the
samples its sampler gives it, in batches of 2, then calls ``evaluate(size=7)``, which goes
through mmengine's ``collect_results``. Sampling layouts:

- mmengine's own ``DefaultSampler`` (shuffled, ``round_up=True``): one rank re-processes a
  padded duplicate;
- a sampler that pads at the FRONT of rank 1's list: mmengine's position-based truncation
  would then keep the duplicate and drop a real sample (asserted below), while the metric,
  which de-duplicates by ``sample_idx``, must still match one process.
"""
import json
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

NUM_VIDEOS = 7
CAPTIONS = [1, 3, 2, 1, 2, 3, 1]


def make_data():
    gen = torch.Generator().manual_seed(11)
    t2v = torch.repeat_interleave(torch.arange(NUM_VIDEOS), torch.tensor(CAPTIONS))
    video = torch.randn(NUM_VIDEOS, 24, generator=gen)
    text = video[t2v] + 3.0 * torch.randn(len(t2v), 24, generator=gen)
    bank = torch.randn(12, 24, generator=gen)
    return text, video, t2v, bank


def make_sample(idx, text, video, t2v):
    return dict(sample_idx=idx, video_feature=video[idx], text_feature=text[t2v == idx])


CONFIGS = {
    'plain': dict(),
    'dsl_qb': dict(dsl=True, dsl_temp=0.05, qb_norm=dict(beta=5.0, k=1)),
}


def _worker(rank, world_size, init_file, work_dir):
    import torch.distributed as dist

    import stan_mm  # noqa: F401
    from mmengine.dataset import DefaultSampler
    from mmengine.dist import collect_results
    from stan_mm.evaluation import RetrievalRecallMetric

    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank,
                            world_size=world_size)
    text, video, t2v, _ = make_data()
    layouts = {
        'default_sampler': list(DefaultSampler(list(range(NUM_VIDEOS)), shuffle=True, seed=3,
                                               round_up=True)),
        'front_padded': [[0, 2, 4, 6], [0, 1, 3, 5]][rank],
    }
    out = {'layouts': layouts, 'metrics': {}}
    # what position-based truncation keeps for the front-padded layout
    positional = collect_results(layouts['front_padded'], NUM_VIDEOS, 'cpu',
                                 tmpdir=os.path.join(work_dir, 'positional'))
    if rank == 0:
        out['positional'] = positional
    for layout, indices in layouts.items():
        for name, cfg in CONFIGS.items():
            cfg = dict(cfg)
            if 'qb_norm' in cfg:
                cfg['qb_norm'] = dict(cfg['qb_norm'], bank=os.path.join(work_dir, 'bank.npy'))
            for device in ('cpu', 'gpu'):  # 'gpu' = all_gather_object path, gloo on CPU
                metric = RetrievalRecallMetric(
                    chunk_size=3, collect_device=device,
                    collect_dir=os.path.join(work_dir, f'c_{layout}_{name}') if device == 'cpu'
                    else None, **cfg)
                for b in range(0, len(indices), 2):
                    metric.process(None, [make_sample(i, text, video, t2v)
                                          for i in indices[b:b + 2]])
                out['metrics'][f'{layout}/{name}/{device}'] = metric.evaluate(NUM_VIDEOS)
    with open(os.path.join(work_dir, f'rank{rank}.json'), 'w') as f:
        json.dump(out, f)
    dist.barrier()
    dist.destroy_process_group()


def single_process_metrics(work_dir):
    from stan_mm.evaluation import RetrievalRecallMetric
    text, video, t2v, _ = make_data()
    expected = {}
    for name, cfg in CONFIGS.items():
        cfg = dict(cfg)
        if 'qb_norm' in cfg:
            cfg['qb_norm'] = dict(cfg['qb_norm'], bank=os.path.join(work_dir, 'bank.npy'))
        metric = RetrievalRecallMetric(chunk_size=3, **cfg)
        metric.process(None, [make_sample(i, text, video, t2v) for i in range(NUM_VIDEOS)])
        expected[name] = metric.evaluate(NUM_VIDEOS)
    return expected


def test_two_processes_equal_one(tmp_path):
    import stan_mm  # noqa: F401
    from stan_mm.evaluation import retrieval_metrics_from_embeddings
    _, _, _, bank = make_data()
    np.save(tmp_path / 'bank.npy', bank.numpy())
    # forked ranks: the parent's imports are inherited (spawned ones re-import torch,
    # mmengine and mmaction: several seconds each on a small CI machine)
    mp.start_processes(_worker, args=(2, str(tmp_path / 'init'), str(tmp_path)),
                       nprocs=2, join=True, start_method='fork')
    ranks = [json.loads((tmp_path / f'rank{r}.json').read_text()) for r in range(2)]

    # the samplers really produced a duplicate, and positional truncation loses sample 5
    default = ranks[0]['layouts']['default_sampler'] + ranks[1]['layouts']['default_sampler']
    assert len(default) == 8 and sorted(set(default)) == list(range(NUM_VIDEOS))
    assert sorted(ranks[0]['positional']) == [0, 0, 1, 2, 3, 4, 6]

    expected = single_process_metrics(str(tmp_path))
    # one process == the core function on L2-normalized features
    text, video, t2v, _ = make_data()
    core = retrieval_metrics_from_embeddings(torch.nn.functional.normalize(text, dim=1),
                                             torch.nn.functional.normalize(video, dim=1), t2v,
                                             chunk_size=3)
    assert expected['plain'] == pytest.approx({f'retrieval/{k}': v for k, v in core.items()})
    assert expected['dsl_qb'] != expected['plain']

    for layout in ('default_sampler', 'front_padded'):
        for name in CONFIGS:
            for device in ('cpu', 'gpu'):
                key = f'{layout}/{name}/{device}'
                for r in range(2):  # every rank receives the same, exact numbers
                    assert ranks[r]['metrics'][key] == expected[name], key
