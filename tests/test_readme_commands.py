"""The shell commands in README.md and docs/*.md match the repository.

From every ```bash / ```sh / ```shell block: commands are joined across ``\\`` line
continuations, comments dropped, leading ``VAR=value`` assignments removed. Checked:

- every script a command runs (``python tools/x.py``, ``bash tools/y.sh``) exists, and
  every argument naming a repository path (``configs/...``, ``tools/...``, ``tests``)
  exists;
- every python tool's ``--help`` runs (in this process, exit status 0), and every
  ``--option`` a command passes to a tool is one its ``--help`` lists (options after the
  arguments of ``dist_*.sh`` / ``slurm_*.sh`` are checked against ``tools/train.py`` or
  ``tools/test.py``, which receive them);
- ``bash -n`` accepts every shell script; ``python -c`` snippets and ```python blocks
  compile (blocks containing ``...``, abridged on purpose, are skipped).

Nothing is trained or tested: only paths, options and syntax.
"""
import contextlib
import glob
import io
import os.path as osp
import re
import runpy
import shlex
import subprocess
import sys
from typing import Dict, List, Tuple

import pytest

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..'))
SHELL_LANGS = ('bash', 'sh', 'shell')
OPERATORS = ('&&', '||', ';', '|')
OTHER_COMMANDS = ('pip', 'cd', 'export', 'mkdir', 'ln', 'ls', 'cp', 'mv', 'unzip', 'tar')
PATH_PREFIXES = ('configs/', 'tools/', 'tests/', 'docs/')
# scripts that forward their trailing options to a python tool, and how many positional
# arguments they take before those options
FORWARDING = {'tools/dist_train.sh': ('tools/train.py', 2),
              'tools/dist_test.sh': ('tools/test.py', 3),
              'tools/slurm_train.sh': ('tools/train.py', 3),
              'tools/slurm_test.sh': ('tools/test.py', 4)}
ASSIGNMENT = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*=')
FENCE = re.compile(r'^\s*```\s*([\w+-]*)\s*$')


def doc_files() -> List[str]:
    files = [osp.join(REPO, 'README.md')] + sorted(glob.glob(osp.join(REPO, 'docs', '*.md')))
    return [f for f in files if osp.isfile(f)]


def code_blocks(text: str) -> List[Tuple[str, int, str]]:
    """``(language, line of the first body line, body)`` of every fenced block."""
    blocks, lang, start, body = [], None, 0, []
    for no, line in enumerate(text.splitlines(), start=1):
        m = FENCE.match(line)
        if lang is None and m:
            lang, start, body = m.group(1).lower(), no + 1, []
        elif lang is not None and line.strip() == '```':
            blocks.append((lang, start, '\n'.join(body)))
            lang = None
        elif lang is not None:
            body.append(line)
    return blocks


def shell_commands(body: str, first_line: int) -> List[Tuple[int, List[str]]]:
    """``(line, tokens)`` per command of a shell block (continuations joined, comments
    dropped, split at ``&& || ; |``, leading assignments removed)."""
    commands, pending, start = [], '', first_line
    for no, line in enumerate(body.splitlines(), start=first_line):
        if not pending:
            start = no
        if line.rstrip().endswith('\\'):
            pending += line.rstrip()[:-1] + ' '
            continue
        pending += line
        tokens = shlex.split(pending, comments=True)
        pending = ''
        current: List[str] = []
        for tok in tokens + [';']:
            if tok in OPERATORS:
                while current and ASSIGNMENT.match(current[0]):
                    current.pop(0)
                if current:
                    commands.append((start, current))
                current = []
            else:
                current.append(tok)
    return commands


_HELP: Dict[str, Tuple[int, str]] = {}


def tool_help(script: str) -> Tuple[int, str]:
    """``(exit status, output)`` of ``python SCRIPT --help``, run in this process."""
    if script not in _HELP:
        out = io.StringIO()
        argv, path = sys.argv, list(sys.path)
        sys.argv = [osp.join(REPO, script), '--help']
        code = 0
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                runpy.run_path(osp.join(REPO, script), run_name='__main__')
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception as e:  # noqa: BLE001
            code, _ = 1, out.write(f'{type(e).__name__}: {e}')
        finally:
            sys.argv, sys.path[:] = argv, path
        _HELP[script] = (code, out.getvalue())
    return _HELP[script]


def _options(tokens: List[str]) -> List[str]:
    return [t.split('=', 1)[0] for t in tokens if t.startswith('--') and len(t) > 2]


def check_command(tokens: List[str]) -> List[str]:
    """Problems of one command (empty when it matches the repository)."""
    problems = []
    for tok in tokens[1:]:
        if tok.startswith(PATH_PREFIXES) or tok == 'tests':
            if not osp.exists(osp.join(REPO, tok)):
                problems.append(f'{tok} does not exist')
    head = tokens[0]
    if head in ('python', 'python3'):
        if len(tokens) < 2:
            return problems + ['python without a script']
        if tokens[1] == '-m':
            return problems
        if tokens[1] == '-c':
            try:
                compile(tokens[2], '<python -c>', 'exec')
            except SyntaxError as e:
                problems.append(f'python -c snippet does not compile: {e}')
            return problems
        script = tokens[1]
        if not osp.isfile(osp.join(REPO, script)):
            return problems + [f'script {script} does not exist']
        problems += _check_options(script, _options(tokens[2:]))
    elif head == 'bash':
        script = tokens[1] if len(tokens) > 1 else ''
        if not osp.isfile(osp.join(REPO, script)):
            return problems + [f'script {script!r} does not exist']
        if script in FORWARDING:
            target, n_pos = FORWARDING[script]
            problems += _check_options(target, _options(tokens[2 + n_pos:]))
    elif head not in OTHER_COMMANDS:
        problems.append(f'unknown command {head!r} (expected python/bash with a repository '
                        f'script)')
    return problems


def _check_options(script: str, options: List[str]) -> List[str]:
    if not script.startswith('tools/') or not script.endswith('.py'):
        return []
    code, text = tool_help(script)
    if code != 0:
        return [f'{script} --help exits with {code}: {text[-500:]}']
    listed = set(re.findall(r'--[A-Za-z0-9][\w-]*', text))
    return [f'{script} has no option {o}' for o in options if o not in listed]


def doc_problems(path: str) -> List[str]:
    with open(path, encoding='utf-8') as f:
        text = f.read()
    problems = []
    name = osp.relpath(path, REPO)
    for lang, line, body in code_blocks(text):
        if lang in SHELL_LANGS:
            for no, tokens in shell_commands(body, line):
                problems += [f'{name}:{no}: {p}  [{" ".join(tokens)[:120]}]'
                             for p in check_command(tokens)]
        elif lang == 'python' and '...' not in body:  # '...' marks an abridged snippet
            try:
                compile(body, f'{name}:{line}', 'exec')
            except SyntaxError as e:
                problems.append(f'{name}:{line}: python block does not compile: {e}')
    return problems


# ------------------------------------------------------------------ tests
@pytest.mark.parametrize('path', doc_files(), ids=lambda p: osp.relpath(p, REPO))
def test_documented_commands_match_the_repository(path):
    problems = doc_problems(path)
    assert not problems, '\n'.join(problems)


def test_every_documented_python_tool_has_a_working_help():
    scripts = set()
    for path in doc_files():
        with open(path, encoding='utf-8') as f:
            for lang, line, body in code_blocks(f.read()):
                if lang in SHELL_LANGS:
                    for _, tokens in shell_commands(body, line):
                        if tokens[0].startswith('python') and len(tokens) > 1 and \
                                tokens[1].startswith('tools/'):
                            scripts.add(tokens[1])
    for forwarded in ('tools/train.py', 'tools/test.py'):
        scripts.add(forwarded)
    user_tools = {'tools/extract_features.py', 'tools/demo/search.py',
                  'tools/demo/recognize.py', 'tools/convert/clip_to_mm.py'}
    assert user_tools <= scripts, f'not documented: {sorted(user_tools - scripts)}'
    for script in sorted(scripts):
        code, text = tool_help(script)
        assert code == 0 and 'usage:' in text, f'{script} --help: {text[-800:]}'


def test_shell_scripts_parse():
    for script in sorted(glob.glob(osp.join(REPO, 'tools', '**', '*.sh'), recursive=True)):
        proc = subprocess.run(['bash', '-n', script], capture_output=True, text=True)
        assert proc.returncode == 0, f'{script}: {proc.stderr}'


def test_launch_scripts_print_usage_when_arguments_are_missing():
    """One argument short: a usage line and exit 2 (not 'unbound variable' from set -u),
    before anything is launched."""
    for script, (_, n) in FORWARDING.items():
        args = ['x'] * (n - 1)
        proc = subprocess.run(['bash', osp.join(REPO, script), *args], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 2, (script, proc.stderr)
        assert proc.stderr.startswith(f'usage: bash {script} '), (script, proc.stderr)


def test_the_checker_catches_drift(tmp_path):
    """The checks above can fail: a missing script, a missing config, an option a tool
    does not have, an unknown command and broken python are all reported."""
    doc = tmp_path / 'bad.md'
    doc.write_text('\n'.join([
        '```bash',
        'python tools/no_such_tool.py CONFIG',
        'python tools/test.py configs/stan/no_such_config.py CKPT',
        'OMP_NUM_THREADS=1 python tools/extract_features.py CONFIG CKPT --videos v \\',
        '    --no-such-option 3 --out o  # comment',
        'bash tools/dist_test.sh CONFIG CKPT 8 --views 1x3 --bogus',
        'wget http://example.com',
        '```',
        '```python',
        'model = dict(',
        '```',
    ]))
    problems = '\n'.join(doc_problems(str(doc)))
    assert 'script tools/no_such_tool.py does not exist' in problems
    assert 'configs/stan/no_such_config.py does not exist' in problems
    assert 'tools/extract_features.py has no option --no-such-option' in problems
    assert 'tools/test.py has no option --bogus' in problems
    assert 'has no option --views' not in problems  # a real option of tools/test.py
    assert "unknown command 'wget'" in problems
    assert 'python block does not compile' in problems
    assert 'bad.md:4:' in problems  # continuation lines report the first line
