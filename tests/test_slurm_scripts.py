"""``tools/slurm_train.sh`` / ``tools/slurm_test.sh`` under a simulated Slurm, on CPU.

Our machines have no Slurm. The tests write a fake ``srun`` and ``scontrol`` into a
temporary folder put first on ``PATH``:

- ``srun`` parses the options the scripts pass (an option it does not know is refused, as
  srun does), records them as one JSON line in ``$FAKE_SLURM_LOG``, and starts ``--ntasks``
  copies of the command on this one node with the ``SLURM_*`` variables srun sets
  (``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NTASKS``, ``SLURM_NODELIST``,
  ``SLURM_JOB_ID``, ...); with ``--kill-on-bad-exit=1`` the first failing task terminates
  the others; it exits with the status of the first failing task.
- ``scontrol show hostname(s) NODELIST`` prints the node names of a Slurm node list.

Then ``GPUS=2 GPUS_PER_NODE=2 bash tools/slurm_train.sh ...`` trains the tiny recognition
config of ``test_recognition.py`` with 2 gloo ranks on CPU, and ``slurm_test.sh`` on its
checkpoint reproduces single-process ``tools/test.py``. ``MASTER_ADDR`` is left unset (so
``scontrol`` is asked, as on a cluster) and ``MASTER_PORT`` is a free port per run.

What a fake srun cannot show: GPU binding (``--gres``; Slurm's ``CUDA_VISIBLE_DEVICES``),
NCCL, several nodes, the scheduler's own checks of partition / resources, and its signal
handling on preemption.
"""
import glob
import json
import os
import os.path as osp
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch

from stan_mm.testing import free_port

sys.path.insert(0, osp.dirname(__file__))
from test_recognition import REPO, assert_same_dumps, load_tool, write_tiny_config  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which('bash') is None, reason='needs bash')

NUM_VAL = 5
NODE = 'localhost'

FAKE_SRUN = r'''#!{python}
"""Stand-in for Slurm's srun on one node (written by tests/test_slurm_scripts.py)."""
import json, os, signal, subprocess, sys, time

VALUE = {{  # options with a value -> their long name
    '-p': 'partition', '--partition': 'partition', '-J': 'job-name', '--job-name': 'job-name',
    '-n': 'ntasks', '--ntasks': 'ntasks', '--ntasks-per-node': 'ntasks-per-node',
    '-c': 'cpus-per-task', '--cpus-per-task': 'cpus-per-task', '--gres': 'gres',
    '-N': 'nodes', '--nodes': 'nodes', '-w': 'nodelist', '--nodelist': 'nodelist',
    '-x': 'exclude', '--exclude': 'exclude', '-t': 'time', '--time': 'time',
    '--mem': 'mem', '--quotatype': 'quotatype'}}
OPTIONAL = {{'-K': 'kill-on-bad-exit', '--kill-on-bad-exit': 'kill-on-bad-exit'}}  # [=0|1]


def fail(msg):
    sys.stderr.write(f'srun: error: {{msg}}\n')
    sys.exit(1)


def positive(opts, name, default):
    value = opts.get(name, default)
    if not str(value).isdigit() or int(value) < 1:
        fail(f'invalid --{{name}} {{value!r}}')
    return int(value)


def parse(argv):
    opts, i = {{}}, 0
    while i < len(argv) and argv[i].startswith('-'):
        arg = argv[i]
        i += 1
        if arg.startswith('--'):
            name, eq, attached = arg.partition('=')
            attached = attached if eq else None
        else:
            name, attached = arg[:2], (arg[2:] or None)
        if name in OPTIONAL:
            opts[OPTIONAL[name]] = '1' if attached is None else attached
        elif name in VALUE:
            if attached is None:
                if i == len(argv):
                    fail(f'option {{name}} requires an argument')
                attached = argv[i]
                i += 1
            opts[VALUE[name]] = attached
        else:
            fail(f'unrecognized option {{arg!r}}')
    return opts, argv[i:]


def record(entry):
    with open(os.environ['FAKE_SLURM_LOG'], 'a') as f:
        f.write(json.dumps(entry) + '\n')


argv = sys.argv[1:]
opts, command = parse(argv)
if not command:
    fail('no command to run')
ntasks = positive(opts, 'ntasks', 1)
per_node = positive(opts, 'ntasks-per-node', ntasks)
cpus = positive(opts, 'cpus-per-task', 1)
if -(-ntasks // per_node) != positive(opts, 'nodes', 1):
    fail(f'this fake srun has one node: --ntasks={{ntasks}} with '
         f'--ntasks-per-node={{per_node}} needs {{-(-ntasks // per_node)}}')
if opts.get('kill-on-bad-exit', '0') not in ('0', '1'):
    fail(f"invalid --kill-on-bad-exit {{opts['kill-on-bad-exit']!r}}")
if 'gres' in opts:
    kind, _, count = opts['gres'].rpartition(':')
    if not kind.startswith('gpu') or not count.isdigit():
        fail(f"invalid --gres {{opts['gres']!r}}")
entry = dict(argv=argv, options=opts, command=command, returncodes=None)
if os.environ.get('FAKE_SRUN_DRY_RUN') == '1':
    record(entry)
    sys.exit(0)

node = os.environ.get('FAKE_SLURM_NODE', 'localhost')
job_id = os.environ.get('SLURM_JOB_ID') or str(4000000 + os.getpid() % 100000)
env = dict(os.environ)
env.update(
    SLURM_JOB_ID=job_id, SLURM_JOBID=job_id, SLURM_STEP_ID='0', SLURM_STEPID='0',
    SLURM_JOB_NAME=opts.get('job-name', os.path.basename(command[0])),
    SLURM_JOB_PARTITION=opts.get('partition', 'debug'),
    SLURM_NNODES='1', SLURM_JOB_NUM_NODES='1', SLURM_NODEID='0', SLURMD_NODENAME=node,
    SLURM_NODELIST=node, SLURM_JOB_NODELIST=node, SLURM_STEP_NODELIST=node,
    SLURM_NTASKS=str(ntasks), SLURM_NPROCS=str(ntasks), SLURM_STEP_NUM_TASKS=str(ntasks),
    SLURM_TASKS_PER_NODE=str(ntasks), SLURM_STEP_TASKS_PER_NODE=str(ntasks),
    SLURM_CPUS_PER_TASK=str(cpus), SLURM_SUBMIT_DIR=os.getcwd(),
    SLURM_GTIDS=','.join(map(str, range(ntasks))))
if 'ntasks-per-node' in opts:
    env['SLURM_NTASKS_PER_NODE'] = str(per_node)
procs = [subprocess.Popen(command, env=dict(env, SLURM_PROCID=str(r), SLURM_LOCALID=str(r)))
         for r in range(ntasks)]


def terminate(*_):
    for p in procs:
        if p.poll() is None:
            p.terminate()


signal.signal(signal.SIGTERM, lambda *a: (terminate(), sys.exit(143)))
signal.signal(signal.SIGINT, lambda *a: (terminate(), sys.exit(130)))
codes, kill_at, first_bad = [None] * ntasks, None, None
while None in codes:
    for rank, p in enumerate(procs):
        if codes[rank] is None and p.poll() is not None:
            codes[rank] = p.returncode
            if p.returncode < 0:
                sys.stderr.write(f'srun: error: {{node}}: task {{rank}}: '
                                 f'{{signal.Signals(-p.returncode).name}}\n')
            elif p.returncode:
                sys.stderr.write(f'srun: error: {{node}}: task {{rank}}: Exited with exit '
                                 f'code {{p.returncode}}\n')
                first_bad = p.returncode if first_bad is None else first_bad
                if opts.get('kill-on-bad-exit') == '1' and kill_at is None:
                    sys.stderr.write('srun: error: terminating the job step '
                                     '(--kill-on-bad-exit)\n')
                    terminate()
                    kill_at = time.time() + 10
    if kill_at is not None and time.time() > kill_at:
        for p in procs:
            if p.poll() is None:
                p.kill()
    time.sleep(0.05)
entry['returncodes'] = codes
record(entry)
# the status of the task that failed first, else 128 + signal of a killed one
sys.exit(first_bad or max(c if c >= 0 else 128 - c for c in codes))
'''

FAKE_SCONTROL = r'''#!{python}
"""Stand-in for Slurm's scontrol: only `show hostname(s) NODELIST`."""
import json, os, re, sys


def expand(node_list):
    hosts = []
    for part in re.findall(r'[^,\[]+(?:\[[^\]]*\][^,\[]*)*', node_list):
        m = re.fullmatch(r'([^\[]*)\[([^\]]*)\](.*)', part)
        if not m:
            hosts.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        for r in ranges.split(','):
            lo, _, hi = r.partition('-')
            for i in range(int(lo), int(hi or lo) + 1):
                hosts.append(f'{{prefix}}{{i:0{{len(lo)}}d}}{{suffix}}')
    return hosts


args = sys.argv[1:]
with open(os.environ['FAKE_SLURM_LOG'], 'a') as f:
    f.write(json.dumps(dict(scontrol=args)) + '\n')
if len(args) == 3 and args[0] == 'show' and args[1] in ('hostname', 'hostnames'):
    print('\n'.join(expand(args[2])))
else:
    sys.stderr.write(f'scontrol: this fake only answers show hostnames NODELIST: {{args}}\n')
    sys.exit(1)
'''


def make_fake_slurm(folder):
    """Writes fake ``srun`` and ``scontrol`` into ``folder/bin``; returns the environment
    to run the scripts with (fake Slurm first on PATH, one thread per process, CUDA
    hidden, a free MASTER_PORT; no MASTER_ADDR, SLURM_* of an enclosing job, nor the
    scripts' own variables from the caller's shell)."""
    bindir = osp.join(folder, 'bin')
    os.makedirs(bindir, exist_ok=True)
    for name, text in (('srun', FAKE_SRUN), ('scontrol', FAKE_SCONTROL)):
        path = osp.join(bindir, name)
        with open(path, 'w') as f:
            f.write(text.format(python=sys.executable))
        os.chmod(path, 0o755)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith('SLURM_') and k not in (
               'MASTER_ADDR', 'MASTER_PORT', 'GPUS', 'GPUS_PER_NODE', 'CPUS_PER_TASK', 'GRES',
               'SRUN_ARGS')}
    env.update(
        PATH=bindir + os.pathsep + env.get('PATH', ''), FAKE_SLURM_LOG=osp.join(folder,
                                                                                'slurm.jsonl'),
        FAKE_SLURM_NODE=NODE, PYTHON=sys.executable, OMP_NUM_THREADS='1',
        CUDA_VISIBLE_DEVICES='', MASTER_PORT=str(free_port()),
        PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get('PYTHONPATH')])))
    return env


def slurm_log(env):
    path = env['FAKE_SLURM_LOG']
    if not osp.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f]


def run(cmd, env, log=None, cwd=REPO, timeout=300, **extra):
    """Runs ``cmd`` in its own process group (killed whole on a timeout); returns
    (returncode, output)."""
    env = dict(env, **extra)
    out = open(log, 'w+') if log else subprocess.PIPE
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        text = proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    if log:
        out.seek(0)
        text = out.read()
        out.close()
    return proc.returncode, text


# ----------------------------------------------------------------------------- the scripts
@pytest.mark.parametrize('script, nargs', [('slurm_train.sh', 2), ('slurm_test.sh', 3)])
def test_too_few_arguments_print_usage(tmp_path, script, nargs):
    env = make_fake_slurm(str(tmp_path))
    rc, out = run(['bash', f'tools/{script}'] + ['x'] * nargs, env)
    assert rc == 2, out
    assert out.startswith(f'usage: bash tools/{script} PARTITION JOB_NAME CONFIG'), out
    assert slurm_log(env) == []  # srun not called


def test_srun_options_and_command(tmp_path):
    """What the scripts hand srun, recorded by the fake without running the tasks: the
    defaults, the environment overrides, SRUN_ARGS split into words at any whitespace
    (several lines too) but never glob-expanded (Slurm node lists use brackets), paths
    with spaces kept whole, and train.py / test.py options passed through."""
    env = make_fake_slurm(str(tmp_path))
    cwd = tmp_path / 'cwd'
    cwd.mkdir()
    (cwd / 'node1').write_text('')  # what `node[1-2]` would glob to in this folder
    config = str(tmp_path / 'my configs' / 'a b.py')
    rc, out = run(['bash', osp.join(REPO, 'tools', 'slurm_train.sh'), 'gpu', 'job a', config,
                   '--work-dir', 'w d', '--seed', '3'], env, cwd=str(cwd),
                  FAKE_SRUN_DRY_RUN='1')
    assert rc == 0, out
    rc, out = run(['bash', osp.join(REPO, 'tools', 'slurm_test.sh'), 'p2', 'j2', config,
                   'c.pth', '--views', '1x1'], env, cwd=str(cwd), FAKE_SRUN_DRY_RUN='1',
                  GPUS='4', GPUS_PER_NODE='4', CPUS_PER_TASK='2',
                  SRUN_ARGS='-w node[1-2]  --quotatype=auto')
    assert rc == 0, out
    # one option per line, as a job script may set it: every line reaches srun
    rc, out = run(['bash', osp.join(REPO, 'tools', 'slurm_train.sh'), 'gpu', 'j3', config],
                  env, cwd=str(cwd), FAKE_SRUN_DRY_RUN='1',
                  SRUN_ARGS='\n  -w node[1-2]\n\t--quotatype=auto\n--time 5 \n-x *\n\n')
    assert rc == 0, out
    rc, out = run(['bash', osp.join(REPO, 'tools', 'slurm_test.sh'), 'p2', 'j4', config,
                   'c.pth'], env, cwd=str(cwd), FAKE_SRUN_DRY_RUN='1',
                  SRUN_ARGS='--quotatype=auto\r\n-w node1')
    assert rc == 0, out
    train, test, train_lines, test_lines = slurm_log(env)
    for entry, extra in ((train_lines, ['-w', 'node[1-2]', '--quotatype=auto', '--time', '5',
                                        '-x', '*']),
                         (test_lines, ['--quotatype=auto', '-w', 'node1'])):
        argv = entry['argv']
        assert argv[argv.index('--kill-on-bad-exit=1') + 1:argv.index(sys.executable)] \
            == extra, argv
    assert train['options'] == {'partition': 'gpu', 'job-name': 'job a', 'gres': 'gpu:8',
                                'ntasks': '8', 'ntasks-per-node': '8', 'cpus-per-task': '5',
                                'kill-on-bad-exit': '1'}
    assert train['command'] == [sys.executable, '-u', osp.join(REPO, 'tools', 'train.py'),
                                config, '--launcher', 'slurm', '--work-dir', 'w d',
                                '--seed', '3']
    assert test['options'] == {'partition': 'p2', 'job-name': 'j2', 'gres': 'gpu:4',
                               'ntasks': '4', 'ntasks-per-node': '4', 'cpus-per-task': '2',
                               'kill-on-bad-exit': '1', 'nodelist': 'node[1-2]',
                               'quotatype': 'auto'}
    assert test['command'] == [sys.executable, '-u', osp.join(REPO, 'tools', 'test.py'),
                               config, 'c.pth', '--launcher', 'slurm', '--views', '1x1']


def test_gres_can_be_set_or_left_out(tmp_path):
    """GRES picks the generic resources (a GPU type), and an empty GRES leaves --gres out,
    as a CPU-only partition needs; unset, it is gpu:GPUS_PER_NODE."""
    env = make_fake_slurm(str(tmp_path))
    for script, extra in (('slurm_train.sh', ['cfg.py']),
                          ('slurm_test.sh', ['cfg.py', 'c.pth'])):
        for gres in ('gpu:a100:4', ''):
            rc, out = run(['bash', osp.join(REPO, 'tools', script), 'p', 'j', *extra], env,
                          FAKE_SRUN_DRY_RUN='1', GPUS='4', GPUS_PER_NODE='4', GRES=gres)
            assert rc == 0, out
            entry = slurm_log(env)[-1]
            if gres:
                assert entry['options']['gres'] == gres, entry
            else:
                assert 'gres' not in entry['options'], entry
                assert not any(a.startswith('--gres') for a in entry['argv']), entry
            assert entry['options']['ntasks-per-node'] == '4', entry


def test_failing_tasks_fail_the_script(tmp_path):
    """A task that exits nonzero makes srun, and so the script, fail; with
    --kill-on-bad-exit=1 the other tasks are terminated instead of left running."""
    env = make_fake_slurm(str(tmp_path))
    rc, out = run(['bash', 'tools/slurm_train.sh', 'p', 'j', 'cfg.py'], env, PYTHON='false',
                  GPUS='2', GPUS_PER_NODE='2')
    assert rc == 1, out
    # both tasks exit 1 at once; srun may terminate one before it has seen it exit
    codes = slurm_log(env)[-1]['returncodes']
    assert 1 in codes and set(codes) <= {1, -signal.SIGTERM}, codes

    task = ('import os, sys, time\n'
            'if os.environ["SLURM_PROCID"] == "1": sys.exit(3)\n'
            'time.sleep(120)\n')
    start = time.time()
    rc, out = run(['srun', '-p', 'p', '--ntasks=2', '--ntasks-per-node=2',
                   '--kill-on-bad-exit=1', sys.executable, '-c', task], env, timeout=60)
    assert rc == 3, out
    assert time.time() - start < 30
    assert slurm_log(env)[-1]['returncodes'] == [-signal.SIGTERM, 3]
    assert 'task 1: Exited with exit code 3' in out


# ----------------------------------------------------------------------------- init_dist
INIT_DIST_SCRIPT = '''
import importlib.util, os, torch
if os.environ['WITH_FIX'] == '1':  # stan_mm.compat.dist alone (importing stan_mm is slower)
    spec = importlib.util.spec_from_file_location('_dist_fix', {dist_py!r})
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    mod.apply_dist_fix()
from mmengine.dist import init_dist, get_rank, get_world_size
init_dist('slurm', backend='nccl')
t = torch.tensor([get_rank() + 1.0])
torch.distributed.all_reduce(t)
with open(os.path.join(os.environ['OUT_DIR'], f'rank{{get_rank()}}'), 'w') as f:
    f.write(f"{{get_rank()}} {{get_world_size()}} {{int(t)}} {{os.environ['LOCAL_RANK']}} "
            f"{{os.environ['MASTER_ADDR']}} {{os.environ['MASTER_PORT']}}")
torch.distributed.barrier()
torch.distributed.destroy_process_group()
'''


@pytest.mark.parametrize('with_fix', [False, True])
def test_init_dist_slurm_on_cpu(tmp_path, with_fix):
    """mmengine's slurm launcher calls torch.cuda.set_device and uses nccl: without the
    fix of stan_mm.compat.dist it fails on a machine without CUDA; with it, the srun tasks
    form one gloo group (all_reduce over both ranks) addressed by scontrol's first host."""
    env = make_fake_slurm(str(tmp_path))
    script = tmp_path / 'init_dist.py'
    script.write_text(INIT_DIST_SCRIPT.format(
        dist_py=osp.join(REPO, 'stan_mm', 'compat', 'dist.py')))
    rc, out = run(['srun', '-p', 'p', '--ntasks=2', '--ntasks-per-node=2',
                   '--kill-on-bad-exit=1', sys.executable, str(script)], env, timeout=120,
                  WITH_FIX='1' if with_fix else '0', OUT_DIR=str(tmp_path))
    if not with_fix:
        assert rc != 0, out
        assert 'cuda' in out.lower() or 'nccl' in out.lower(), out[-3000:]
        return
    assert rc == 0, out[-3000:]
    port = env['MASTER_PORT']
    for rank in (0, 1):  # rank, world size, 1 + 2, local rank, master
        assert (tmp_path / f'rank{rank}').read_text() == f'{rank} 2 3 {rank} {NODE} {port}'
    assert {'scontrol': ['show', 'hostnames', NODE]} in slurm_log(env)


def test_scontrol_failure_is_named(tmp_path, monkeypatch):
    """Without MASTER_ADDR the host comes from scontrol; its failure is reported as such
    (mmengine would take the shell's error message as the host name)."""
    import stan_mm  # noqa: F401
    from stan_mm.compat import dist as dist_fix
    env = make_fake_slurm(str(tmp_path))
    monkeypatch.setenv('PATH', env['PATH'])
    monkeypatch.setenv('FAKE_SLURM_LOG', env['FAKE_SLURM_LOG'])
    assert dist_fix._first_slurm_host('gn[07-09],cpu3') == 'gn07'
    (tmp_path / 'bin' / 'scontrol').write_text('#!/bin/sh\necho "no controller" >&2\nexit 1\n')
    with pytest.raises(RuntimeError, match=r'scontrol show hostnames gn1.*no controller.*'
                       r'set MASTER_ADDR'):
        dist_fix._first_slurm_host('gn1')


@pytest.mark.parametrize('accelerator', ['cuda', 'npu', None])
def test_slurm_fix_leaves_accelerators_to_mmengine(monkeypatch, accelerator):
    """With an accelerator (CUDA, or one mmengine handles itself) mmengine's own
    _init_dist_slurm runs unchanged; without one, the CPU path does. Every device check
    is mocked: the same on machines with and without GPUs."""
    import mmengine.device as device
    import mmengine.dist.utils as dist_utils
    import stan_mm  # noqa: F401
    from stan_mm.compat import dist as dist_fix
    patched = dist_utils._init_dist_slurm
    assert patched._stan_mm_patched
    calls = []
    monkeypatch.setattr(patched, '__wrapped__', lambda backend, port=None,
                        init_backend='torch', **k: calls.append(('mmengine', backend, port)))
    monkeypatch.setattr(dist_fix, '_set_slurm_env', lambda port: calls.append(('env', port)))
    monkeypatch.setattr(torch.distributed, 'init_process_group',
                        lambda backend, **k: calls.append(('init', backend)))
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: accelerator == 'cuda')
    for name in ('is_npu_available', 'is_mlu_available', 'is_musa_available'):
        monkeypatch.setattr(device, name, lambda: accelerator == 'npu', raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # 'using the gloo backend instead of nccl'
        patched('nccl', port=1234)
    if accelerator:
        assert calls == [('mmengine', 'nccl', 1234)]
    else:
        assert calls == [('env', 1234), ('init', 'gloo')]


# ----------------------------------------------------------------------------- train + test
@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """Tiny config + a checkpoint trained by slurm_train.sh with 2 CPU tasks."""
    tmp = tmp_path_factory.mktemp('slurm')
    cfg = write_tiny_config(tmp, num_train=6, num_val=NUM_VAL, max_epochs=1)
    env = make_fake_slurm(str(tmp))
    work = tmp / 'work_train'
    rc, log = run(['bash', 'tools/slurm_train.sh', 'cpu', 'stan_tiny', cfg,
                   '--work-dir', str(work)], env, log=str(tmp / 'train.log'),
                  GPUS='2', GPUS_PER_NODE='2', CPUS_PER_TASK='1')
    assert rc == 0, log[-6000:]
    return tmp, cfg, env, work, log


def test_slurm_train_forms_one_group_and_checkpoints_once(trained):
    tmp, cfg, env, work, log = trained
    runs = [e for e in slurm_log(env) if 'argv' in e]
    assert len(runs) == 1 and runs[0]['returncodes'] == [0, 0]
    assert runs[0]['options']['ntasks'] == '2' and runs[0]['options']['gres'] == 'gpu:2'
    assert {'scontrol': ['show', 'hostnames', NODE]} in slurm_log(env)
    assert 'Distributed launcher: slurm' in log, log[-3000:]
    assert 'Distributed training: True' in log and 'GPU number: 2' in log, log[-3000:]
    # 6 train videos, batch 2: 3 iterations in one process, 2 per rank with 2 ranks.
    assert 'Epoch(train) [1][2/2]' in log and '[1][3/3]' not in log, log[-3000:]
    assert re.search(r'Epoch\(val\) \[1\]\[\d+/\d+\]\s+acc/top1: [0-9.]+', log), log[-3000:]
    assert log.count('Saving checkpoint at 1 epochs') == 1, log[-3000:]
    # one checkpoint, published atomically (no temporary file of a second writer left)
    assert sorted(osp.basename(p) for p in glob.glob(str(work / '*.pth'))) == ['epoch_1.pth']
    assert not glob.glob(str(work / '.*.tmp'))
    assert (work / 'last_checkpoint').read_text().strip().endswith('epoch_1.pth')
    from stan_mm.compat import safe_torch_load
    ckpt = safe_torch_load(str(work / 'epoch_1.pth'))
    assert any(k.startswith('backbone.branch.') for k in ckpt['state_dict'])
    assert not any(k.startswith('module.') for k in ckpt['state_dict'])  # DDP unwrapped


def test_slurm_test_reproduces_single_process(trained):
    tmp, cfg, env, work, _ = trained
    ckpt = str(work / 'epoch_1.pth')
    test_tool = load_tool('tools/test.py', 'stan_test_tool_slurm')
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like each task
    try:
        single = test_tool.main([cfg, ckpt, '--work-dir', str(tmp / 'work_single'),
                                 '--dump', str(tmp / 'single.pkl')])
    finally:
        torch.set_num_threads(threads)

    rc, log = run(['bash', 'tools/slurm_test.sh', 'cpu', 'stan_tiny_test', cfg, ckpt,
                   '--work-dir', str(tmp / 'work_dist'), '--dump', str(tmp / 'dist.pkl')],
                  env, log=str(tmp / 'test.log'), GPUS='2', GPUS_PER_NODE='2',
                  CPUS_PER_TASK='1', MASTER_PORT=str(free_port()))
    assert rc == 0, log[-6000:]
    assert 'GPU number: 2' in log, log[-3000:]
    assert [e['returncodes'] for e in slurm_log(env) if 'argv' in e][-1] == [0, 0]
    dist_top1 = float(re.search(r'acc/top1: ([0-9.]+)', log).group(1))
    # The padded sample of the 2-rank sampler is dropped: 5 results, in dataset order.
    a, b = assert_same_dumps(tmp / 'single.pkl', tmp / 'dist.pkl', tmp / 'val_list.txt',
                             NUM_VAL)
    assert dist_top1 == pytest.approx(single['acc/top1'], abs=1e-4)  # log rounds to 4 places
