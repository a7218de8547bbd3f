#!/usr/bin/env python3
"""The GPU measurements of docs/benchmarks.md ("GPU") in one command, sized for one call
on a borrowed GPU machine (10 minutes, nothing downloadable there).

    # here, once, where pip can reach the package index: the stan-mm stack as wheels for
    # the GPU machine's Python (3.12, x86-64), into .whl/ (git-ignored, about 20 MB)
    bash tools/analysis/fetch_gpu_wheels.sh
    # there, from the repository root, with .whl carried along:
    python3 tools/analysis/gpu_session.py --out "$OUT"

Steps, most important first (``--steps`` picks some); each runs
``tools/analysis/benchmark.py`` in a child process under its own time limit (cut to what
is left of ``--budget``); a step with less time left than it needs to be worth starting
is skipped and the next one tried. Each finished setting of a step is written to its JSON
at once, so a step killed at its limit keeps what it finished:

==============  ===========================================================================
``compile``     ``torch.compile`` (default mode) + fused AdamW: the best row of the GPU table
                re-measured (MFU goal: 35 %)
``eager``       eager forward and training step, with and without gradient checkpointing,
                peak memory
``autotune``    the compile step with ``--compile-mode max-autotune-no-cudagraphs``
``cudagraphs``  the compile step with ``--compile-mode reduce-overhead`` (CUDA graphs)
==============  ===========================================================================

The model is ViT-B/16, 8 frames, STAN depth 4 with the attention temporal module, batch 16,
bf16 autocast, a full training step (forward, backward, AdamW), against the same CLIP with
mean pooling, alternating (``--model-args`` replaces the model and batch arguments; the
tests use a tiny config on CPU).

Writes ``OUT/<step>.json`` per step, ``OUT/steps.log`` (every step's output, one after the
other), ``OUT/machine.txt`` and ``OUT/summary.md`` (clips/s, MFU and time/FLOPs of both
models per step; the same table is printed at the end): at most 7 files, as a borrowed
machine sends back at most 8.

Only the standard library is imported here, so the script runs on the machine's own
Python before the stack is there: when ``import mmengine, mmaction, open_clip, decord``
fails in a child process and ``--wheels`` (default ``.whl``) holds wheels, they are
installed with ``pip --no-index --no-deps`` into ``--site`` and the steps run with
``PYTHONPATH=<site>:<repository>``.
"""
import argparse
import glob
import json
import os
import shlex
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCHMARK = os.path.join(ROOT, 'tools', 'analysis', 'benchmark.py')
STACK_IMPORT = 'import stan_mm, decord'   # what the steps import (the whole stack)

MODEL_ARGS = ['--arch', 'ViT-B-16', '--frames', '8', '--depth', '4', '--temporal-module',
              'attn', '--batch', '16']
_TRAIN = ['--modes', 'train', '--optim-step', '--skip-pipeline']
_COMPILED = _TRAIN + ['--grad-ckpt', 'off', '--fused-adamw', '--no-memory']
# (name, benchmark arguments after the model's, time limit in seconds, the least time worth
# starting it with (with less left it is skipped and the next step tried), what it
# measures). Every finished setting of a step is saved at once, so a step killed at its
# limit keeps the settings it finished.
STEPS = (
    ('compile', _COMPILED + ['--compile', '--warmup', '2'], 180, 100,
     'torch.compile default mode, fused AdamW'),
    ('eager', ['--modes', 'forward', 'train', '--optim-step', '--skip-pipeline',
               '--grad-ckpt', 'both'], 120, 70,
     'eager forward and training step, gradient checkpointing off/on, peak memory'),
    ('autotune', _COMPILED + ['--compile-mode', 'max-autotune-no-cudagraphs', '--warmup',
                              '3'], 240, 150, 'max-autotune (no CUDA graphs), fused AdamW'),
    ('cudagraphs', _COMPILED + ['--compile-mode', 'reduce-overhead', '--warmup', '3'], 150,
     90, 'reduce-overhead (CUDA graphs), fused AdamW'),
)
STEP_NAMES = tuple(s[0] for s in STEPS)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', type=os.path.expanduser,
                   default=os.environ.get('OUT') or 'work_dirs/gpu_session',
                   help='output folder (default: $OUT, else work_dirs/gpu_session)')
    p.add_argument('--steps', nargs='+', choices=STEP_NAMES, default=list(STEP_NAMES),
                   help='steps to run, in the order given (default: all)')
    p.add_argument('--budget', type=float, default=540.0,
                   help='seconds for all steps together (default 540: a 600 s call)')
    p.add_argument('--device', default='cuda', help='cuda (default) | cpu (for tests)')
    p.add_argument('--model-args', default=None,
                   help='replaces the model/batch arguments (default: '
                        f'"{" ".join(MODEL_ARGS)}"), e.g. "CONFIG --batch 2"')
    p.add_argument('--extra', default='',
                   help='arguments appended to every step, e.g. "--repeats 3"')
    p.add_argument('--wheels', type=os.path.expanduser, default=os.path.join(ROOT, '.whl'),
                   help='folder of wheels to install when the stack is missing')
    p.add_argument('--site', type=os.path.expanduser, default=os.path.join(ROOT, '.whl-site'),
                   help='where those wheels are installed (default: .whl-site in the '
                        'repository; a folder that another user owns or may write to is '
                        'refused: what it holds would run in every step)')
    p.add_argument('--python', default=sys.executable, help='interpreter for the steps')
    p.add_argument('--dry-run', action='store_true',
                   help='print the steps\' commands and exit')
    return p.parse_args(argv)


def step_commands(args) -> list:
    """``[(name, argv, limit_s, what)]`` for the chosen steps, in the chosen order."""
    model = shlex.split(args.model_args) if args.model_args else list(MODEL_ARGS)
    extra = shlex.split(args.extra)
    table = {name: (tail, limit, least, what) for name, tail, limit, least, what in STEPS}
    out = []
    for name in args.steps:
        tail, limit, least, what = table[name]
        argv = ([args.python, BENCHMARK] + model + ['--device', args.device] + tail + extra
                + ['--out', os.path.join(args.out, f'{name}.json')])
        out.append((name, argv, limit, least, what))
    return out


def check_site(site: str) -> None:
    """Refuse an install folder (``--site``) that another user owns or that others may
    write to: it goes first on the steps' ``PYTHONPATH``, so a ``sitecustomize.py`` or a
    package planted there would run in every step (a fixed folder in a shared ``/tmp``
    could be created first by anyone). A missing folder is created for this user only."""
    if not os.path.lexists(site):
        os.makedirs(site, mode=0o700)
        return
    info = os.lstat(site)
    import stat
    if not stat.S_ISDIR(info.st_mode):
        raise SystemExit(f'gpu_session: --site {site} is not a folder (a link or a file); '
                         f'give a folder of your own')
    if info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise SystemExit(
            f'gpu_session: --site {site} is owned by another user or writable by others '
            f'(mode {stat.filemode(info.st_mode)}): what it holds would run in every step. '
            f'Give a folder of your own (default: .whl-site in the repository)')


def stack_env(args, log) -> dict:
    """The environment the steps run in: the repository on PYTHONPATH, and the carried
    wheels installed first when the stack cannot be imported."""
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    paths = [ROOT] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p]
    env['PYTHONPATH'] = os.pathsep.join(paths)
    if _import_error(args.python, env) is None:
        return env
    wheels = sorted(glob.glob(os.path.join(args.wheels, '*.whl')))
    if not wheels:
        raise SystemExit(
            f'gpu_session: `{STACK_IMPORT}` fails with {args.python} and {args.wheels} has '
            f'no wheels. Run `bash tools/analysis/fetch_gpu_wheels.sh` where pip can reach '
            f'the index and carry .whl along (or install the stack on this machine).')
    check_site(args.site)
    log(f'installing {len(wheels)} wheels from {args.wheels} into {args.site}')
    cmd = [args.python, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps',
           '--no-compile', '--no-cache-dir', '--upgrade', '--target', args.site] + wheels
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f'gpu_session: installing the wheels failed:\n{done.stderr[-3000:]}')
    env['PYTHONPATH'] = os.pathsep.join([args.site] + paths)
    error = _import_error(args.python, env)
    if error is not None:
        raise SystemExit(f'gpu_session: the stack still does not import after installing '
                         f'the wheels (a dependency missing from .whl?):\n{error[-3000:]}')
    return env


def _import_error(python: str, env: dict):
    """None when ``python`` imports the stack in ``env``, else its error output."""
    done = subprocess.run([python, '-c', STACK_IMPORT], env=env, capture_output=True,
                          text=True)
    return None if done.returncode == 0 else done.stderr


def run_step(argv, limit_s: float, log_path: str, env: dict) -> dict:
    """Run one step in its own process group, its output appended to ``log_path``; kill
    the group (compile workers included) at ``limit_s``, and when this session stops while
    it runs (Ctrl-C, an error): in a session of its own the step does not get the
    terminal's SIGINT, and went on holding the GPU after the session had ended."""
    t0 = time.monotonic()
    with open(log_path, 'a') as log:
        log.write('$ ' + shlex.join(argv) + '\n')
        log.flush()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=ROOT, start_new_session=True)
        timed_out = False
        try:
            rc = proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            rc = proc.wait()
        except BaseException:
            _kill_group(proc)
            proc.wait()
            raise
    if timed_out:
        with open(log_path, 'a') as log:
            log.write(f'\n[gpu_session] killed after {limit_s:.0f} s\n')
    return dict(rc=rc, timed_out=timed_out, seconds=round(time.monotonic() - t0, 1))


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of ``proc`` (a step started with ``start_new_session``);
    one that has ended already is left alone."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def tail(path: str, start: int = 0, lines: int = 25) -> str:
    """The last ``lines`` lines of ``path`` after byte ``start``."""
    with open(path, 'rb') as f:
        f.seek(start)
        text = f.read().decode(errors='replace')
    return ''.join(text.splitlines(keepends=True)[-lines:])


def summarize(results) -> str:
    """A markdown table from ``[(name, what, status, json_or_None)]``."""
    rows = ['| step | setting | mode | grad ckpt | STAN clips/s | CLIP clips/s | STAN MFU | '
            'CLIP MFU | time / FLOPs ratio | STAN peak mem |',
            '|---|---|---|---|---|---|---|---|---|---|']
    for name, what, status, data in results:
        runs = (data or {}).get('model', {}).get('runs', [])
        if not runs:
            rows.append(f'| {name} | {what} | | | {status} | | | | | |')
            continue
        # a step that did not finish: its kept settings are marked with its status
        label = what if not data.get('partial') else f'{what} ({status})'
        for r in runs:
            stan, clip = r.get('stan', {}), r.get('clip', {})
            memory = stan.get('memory', {})
            mem = memory.get('peak_alone', memory.get('delta'))   # CUDA, else CPU
            rows.append('| {} | {} | {} | {} | {:.1f} | {:.1f} | {} | {} | {:.3f} | {} |'.format(
                name, label, r.get('mode', ''), 'on' if r.get('grad_checkpointing') else 'off',
                stan.get('clips_per_s', float('nan')), clip.get('clips_per_s', float('nan')),
                _pct(stan.get('mfu')), _pct(clip.get('mfu')),
                r.get('time_over_flops', float('nan')),
                f'{mem / 2**20:,.0f} MiB' if mem else '-'))
    return '\n'.join(rows) + '\n'


def _pct(x) -> str:
    return '-' if x is None else f'{100 * x:.1f} %'


def machine_text(python: str, env: dict) -> str:
    parts = []
    for cmd in (['nvidia-smi', '--query-gpu=name,memory.total,driver_version,clocks.max.sm,'
                 'power.limit', '--format=csv'],
                [python, '-c', 'import torch, platform; print("torch", torch.__version__, '
                 '"cuda", torch.version.cuda, "python", platform.python_version()); '
                 'print(torch.cuda.get_device_name() if torch.cuda.is_available() '
                 'else "no CUDA device")']):
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
            parts.append(done.stdout.strip() or done.stderr.strip()[-500:])
        except (OSError, subprocess.TimeoutExpired) as e:
            parts.append(f'{cmd[0]}: {e}')
    return '\n'.join(parts) + '\n'


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out = os.path.abspath(args.out)   # the steps run from the repository root
    steps = step_commands(args)
    if args.dry_run:
        for name, cmd, limit, least, what in steps:
            print(f'# {name} ({what}; limit {limit} s, started with at least {least} s '
                  f'left)\n{shlex.join(cmd)}')
        return 0
    os.makedirs(args.out, exist_ok=True)
    start = time.monotonic()

    def log(msg):
        print(f'[gpu_session {time.monotonic() - start:6.1f} s] {msg}', flush=True)

    env = stack_env(args, log)
    with open(os.path.join(args.out, 'machine.txt'), 'w') as f:
        f.write(machine_text(args.python, env))
    results = []
    log_path = os.path.join(args.out, 'steps.log')
    open(log_path, 'w').close()
    for name, cmd, limit, least, what in steps:
        left = args.budget - (time.monotonic() - start)
        if left < least:
            log(f'{name}: skipped, {left:.0f} s left of the budget (needs {least} s)')
            results.append((name, what, f'skipped ({left:.0f} s left)', None))
            continue
        log(f'{name}: {what} (limit {min(limit, left):.0f} s)')
        log_start = os.path.getsize(log_path) if os.path.exists(log_path) else 0
        path = os.path.join(args.out, f'{name}.json')
        # an earlier session's file is not this one's (with the temp files benchmark.py
        # writes it through: .<name>.json.XXXXXXXX.tmp; path + '.tmp' of older versions)
        for stale in [path, path + '.tmp'] + glob.glob(
                os.path.join(args.out, f'.{name}.json.*.tmp')):
            if os.path.exists(stale):
                os.remove(stale)
        res = run_step(cmd, min(limit, left), log_path, env)
        data = None
        if os.path.isfile(path):   # complete, or the settings finished before a kill
            with open(path) as f:
                data = json.load(f)
        partial = ' (the settings it finished are kept)' if data is not None else ''
        if res['rc'] == 0 and data is not None:
            status = f'done in {res["seconds"]} s'
        elif res['timed_out']:
            status = f'killed at its {min(limit, left):.0f} s limit{partial}'
        else:
            status = f'failed (exit {res["rc"]}; see steps.log){partial}'
        log(f'{name}: {status}; the end of its output:')
        print(tail(log_path, log_start), flush=True)
        results.append((name, what, status, data))
    table = summarize(results)
    with open(os.path.join(args.out, 'summary.md'), 'w') as f:
        f.write(table)
    print('\n' + table, flush=True)
    return 0 if any(d is not None for *_, d in results) else 1


if __name__ == '__main__':
    sys.exit(main())
