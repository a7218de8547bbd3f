"""The prose of README.md and docs/*.md, and the docstrings of stan_mm/ and tools/, name
things that exist.

``tests/test_readme_commands.py`` checks the shell commands of fenced blocks; this file
checks what is written outside them and in the code's own text:

- every repository path written in inline backticks in README.md / docs/*.md
  (```tools/data/check_videos.py```, ```configs/stan/...```) exists;
- every ``--option`` written in an inline span that starts with a tool
  (```tools/extract_features.py --videos```) is an option of that tool's ``--help``;
- every ``--option`` in the prose is an option of some tool under ``tools/`` or of one of
  the outside programs the docs talk about (:data:`OUTSIDE_OPTIONS`);
- every path of a tool, doc or config named in the text of stan_mm/ and tools/ exists;
- every Sphinx cross-reference to a ``stan_mm.`` name in stan_mm/ and tools/
  (``:class:`~stan_mm.x.Y```) resolves by import.

Nothing is run but ``--help``.
"""
import ast
import glob
import importlib
import os.path as osp
import re
from typing import Dict, List, Set, Tuple

import pytest

from stan_mm.testing import load_script

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..'))
_commands = load_script('tests/test_readme_commands.py')   # tool_help, doc_files, FENCE

#: top-level folders and files whose names in inline backticks are checked
PATH_ROOTS = ('configs/', 'tools/', 'tests/', 'docs/', 'stan_mm/', 'requirements/')
#: options of programs outside this repository that the docs explain
OUTSIDE_OPTIONS = {
    '--shm-size', '--ipc',            # docker run
    '--signal', '--gres',             # srun / sbatch
    '--standalone',                   # torchrun
    '--logdir',                       # tensorboard
}
#: paths named as examples of what a user writes (not files of the repository)
EXAMPLE_PATHS = {'configs/stan/x.py'}
OPTION = re.compile(r'(?<![\w-])--[A-Za-z][\w-]*')
SPAN = re.compile(r'`([^`]+)`')
TOOL_SPAN = re.compile(r'^(?:python3?\s+)?(tools/[\w/.-]+\.py)\b(.*)$', re.S)
CODE_PATH = re.compile(r'\b(?:tools/[\w/.-]+\.(?:py|sh)|docs/[\w/.-]+\.md|'
                       r'configs/[\w/.-]+\.py)\b')
XREF = re.compile(r':(?:func|class|meth|data|attr|exc):`~?(stan_mm(?:\.\w+)+)`')


def prose_paragraphs(text: str) -> List[Tuple[int, str]]:
    """``(first line, text)`` of every paragraph outside fenced blocks (lines joined with
    a space, so that a backtick span broken over two lines is one span)."""
    out, cur, start, in_block = [], [], 0, False
    for no, line in enumerate(text.splitlines(), start=1):
        if _commands.FENCE.match(line) or (in_block and line.strip() == '```'):
            in_block = not in_block
            line = ''
        if in_block or not line.strip():
            if cur:
                out.append((start, ' '.join(cur)))
            cur = []
            continue
        if not cur:
            start = no
        cur.append(line.strip())
    if cur:
        out.append((start, ' '.join(cur)))
    return out


_OPTIONS: Dict[str, Set[str]] = {}


def tool_options(script: str) -> Set[str]:
    """The options ``python SCRIPT --help`` lists (run in this process)."""
    if script not in _OPTIONS:
        code, text = _commands.tool_help(script)
        assert code == 0, f'{script} --help exits with {code}: {text[-500:]}'
        _OPTIONS[script] = set(re.findall(r'--[A-Za-z0-9][\w-]*', text))
    return _OPTIONS[script]


def all_tool_options() -> Set[str]:
    scripts = [osp.relpath(p, REPO) for p in
               glob.glob(osp.join(REPO, 'tools', '**', '*.py'), recursive=True)]
    options = set()
    for script in sorted(scripts):
        name = osp.basename(script)
        if name.startswith('_') or name == 'list_files.py':   # modules, not tools
            continue
        options |= tool_options(script)
    return options


def _is_repo_path(token: str) -> bool:
    return token.startswith(PATH_ROOTS) or token in ('README.md', 'setup.py')


def doc_problems(path: str, known_options: Set[str]) -> List[str]:
    """Missing paths and unknown options in the prose of one Markdown file."""
    with open(path, encoding='utf-8') as f:
        text = f.read()
    name = osp.relpath(path, REPO)
    problems = []
    for line, para in prose_paragraphs(text):
        for span in SPAN.findall(para):
            first = span.split()[0] if span.split() else ''
            first = first.split('::')[0].rstrip(',.:;')
            if _is_repo_path(first) and not any(c in first for c in '*<>{}$[]') and \
                    not osp.exists(osp.join(REPO, first)):
                problems.append(f'{name}:{line}: `{first}` does not exist')
            m = TOOL_SPAN.match(span.strip())
            if m and osp.isfile(osp.join(REPO, m.group(1))):
                for option in OPTION.findall(m.group(2)):
                    if option not in tool_options(m.group(1)):
                        problems.append(f'{name}:{line}: {m.group(1)} has no option '
                                        f'{option}')
        for option in OPTION.findall(para):
            if option not in known_options and option not in OUTSIDE_OPTIONS:
                problems.append(f'{name}:{line}: {option} is an option of no tool in '
                                f'tools/ (nor of OUTSIDE_OPTIONS)')
    return problems


def code_text_problems(path: str) -> List[str]:
    """Paths of tools, docs and configs named in a Python file that do not exist."""
    with open(path, encoding='utf-8') as f:
        text = f.read()
    name = osp.relpath(path, REPO)
    problems = []
    for no, line in enumerate(text.splitlines(), start=1):
        for ref in CODE_PATH.findall(line):
            if ref not in EXAMPLE_PATHS and not osp.exists(osp.join(REPO, ref)):
                problems.append(f'{name}:{no}: {ref} does not exist')
    return problems


def resolves(dotted: str) -> bool:
    """Whether ``stan_mm.a.b.C`` is a module, or a module's attribute (chain)."""
    parts = dotted.split('.')
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module('.'.join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def xref_problems(path: str) -> List[str]:
    with open(path, encoding='utf-8') as f:
        text = f.read()
    # references broken over lines inside a docstring (``stan_mm.x.\\\ny``) are joined
    text = re.sub(r'\.\\?\n\s*', '.', text)
    return [f'{osp.relpath(path, REPO)}: {ref} does not resolve'
            for ref in sorted(set(XREF.findall(text))) if not resolves(ref)]


def python_files() -> List[str]:
    return sorted(glob.glob(osp.join(REPO, 'stan_mm', '**', '*.py'), recursive=True) +
                  glob.glob(osp.join(REPO, 'tools', '**', '*.py'), recursive=True))


# ------------------------------------------------------------------ tests
@pytest.fixture(scope='module')
def known_options() -> Set[str]:
    return all_tool_options()


@pytest.mark.parametrize('path', _commands.doc_files(), ids=lambda p: osp.relpath(p, REPO))
def test_doc_prose_names_existing_paths_and_options(path, known_options):
    problems = doc_problems(path, known_options)
    assert not problems, '\n'.join(problems)


def test_code_text_names_existing_paths():
    problems = [p for f in python_files() for p in code_text_problems(f)]
    assert not problems, '\n'.join(problems)


def test_code_cross_references_resolve():
    problems = [p for f in python_files() for p in xref_problems(f)]
    assert not problems, '\n'.join(problems)


def test_every_python_file_parses():
    # the checks above read the files as text; a file they skip silently would hide drift
    for path in python_files():
        with open(path, encoding='utf-8') as f:
            ast.parse(f.read(), path)


def test_the_checks_catch_drift(tmp_path, known_options):
    """Each check can fail: a moved tool, an option a tool lacks, an option no tool has,
    a path in a docstring, a cross-reference to a name a package does not export."""
    doc = tmp_path / 'bad.md'
    doc.write_text('\n'.join([
        'Workers of `tools/analysis/check_videos.py` start with spawn; see',
        '`docs/no_such_page.md`. `tools/extract_features.py --videos DIR` is fine,',
        '`tools/extract_features.py --no-such-flag` is not, nor is `--bogus-option`.',
        '',
        '```bash',
        'python tools/analysis/check_videos.py  # fenced: test_readme_commands.py checks it',
        '```',
        'Docker takes `--shm-size=8g`; `configs/stan/*_16f.py` is a pattern.',
    ]))
    problems = '\n'.join(doc_problems(str(doc), known_options))
    assert 'bad.md:1: `tools/analysis/check_videos.py` does not exist' in problems
    assert '`docs/no_such_page.md` does not exist' in problems
    assert 'tools/extract_features.py has no option --no-such-flag' in problems
    assert '--bogus-option is an option of no tool' in problems
    assert '--videos' not in problems and '--shm-size' not in problems
    assert '_16f.py' not in problems
    assert problems.count('check_videos.py') == 1     # the fenced line is not prose here

    code = tmp_path / 'bad.py'
    code.write_text('"""Run tools/analysis/no_such_tool.py; see docs/install.md and\n'
                    ':class:`~stan_mm.datasets.transforms.SkipUnreadable` and\n'
                    ':class:`~stan_mm.datasets.transforms.video_io.SkipUnreadable`."""\n')
    assert [p.split(': ', 1)[1] for p in code_text_problems(str(code))] == \
        ['tools/analysis/no_such_tool.py does not exist']
    assert [p.split(': ', 1)[1] for p in xref_problems(str(code))] == \
        ['stan_mm.datasets.transforms.SkipUnreadable does not resolve']
