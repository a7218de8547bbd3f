"""The examples a researcher copies into a notebook run, and match the code.

1. Docstring examples: every ``>>>`` example in stan_mm/ runs (doctest) and shows what the
   code returns.
2. Python blocks of README.md and docs/*.md (``tests/test_readme_commands.py`` only
   compiles them):

   - a block that imports: every imported name exists (``importlib`` + ``hasattr``), and
     every call of an imported function or class binds its arguments
     (``inspect.signature(...).bind_partial``);
   - a config block: every ``dict(type='X', key=...)`` names a class of an MMAction2 /
     mmengine registry whose constructor takes those keys;
   - the QB-Norm script of docs/retrieval.md prints the numbers of the table above it;
   - the notebook snippet of docs/user_tools.md runs as written, from a folder holding two
     synthetic videos and a random tiny checkpoint at the path it names, twice.

3. Inline spans of the prose that call a function or a registered class
   (```stan_mm.apis.recognize(model, video, classnames=[...])```,
   ```EpochSeedHook(per_iteration=True)```, ```init_model(config, checkpoint)```): the name
   resolves and the arguments bind.
4. ``help()``: the ``__all__`` of the public packages names what exists, every exported
   function and class has a docstring, and the ``Args:`` entries of every docstring in
   stan_mm/ are parameters of the function (unless it passes ``**kwargs`` on).
5. The notebook path without ``tools/``: :class:`~stan_mm.apis.VideoPipeline` takes a
   config path, and builds its transforms whatever default scope is current.
"""
import ast
import doctest
import importlib
import inspect
import os
import os.path as osp
import pkgutil
import re
from typing import Dict, List, Optional, Tuple

import pytest
import torch

import stan_mm
from stan_mm.testing import load_script

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..'))
_docs = load_script('tests/test_docs_consistency.py')      # prose_paragraphs, resolves
_commands = _docs._commands                                # code_blocks, doc_files

#: packages whose ``__all__`` is the Python API (``help()``, ``from ... import *``)
PUBLIC_PACKAGES = ('stan_mm.apis', 'stan_mm.evaluation', 'stan_mm.utils',
                   'stan_mm.models.backbones', 'stan_mm.models.clip', 'stan_mm.models.heads',
                   'stan_mm.models.losses', 'stan_mm.models.retrievers')
#: registries a config's ``type=`` is looked up in (MMAction2's, with mmengine's as parents)
REGISTRIES = ('MODELS', 'TRANSFORMS', 'DATASETS', 'DATA_SAMPLERS', 'HOOKS', 'LOOPS',
              'METRICS', 'EVALUATOR', 'PARAM_SCHEDULERS', 'OPTIMIZERS', 'OPTIM_WRAPPERS',
              'OPTIM_WRAPPER_CONSTRUCTORS', 'VISUALIZERS', 'VISBACKENDS')
#: namespaces an unqualified call in the prose (``init_model(config, checkpoint)``) is from
PROSE_NAMESPACES = ('stan_mm.apis', 'stan_mm.evaluation')
NOTEBOOK_CONFIG = 'configs/quickstart/motion_retrieval_tiny.py'


def _doc(path: str) -> str:
    with open(osp.join(REPO, path), encoding='utf-8') as f:
        return f.read()


def python_blocks(path: str) -> List[Tuple[int, str]]:
    return [(line, body) for lang, line, body in _commands.code_blocks(_doc(path))
            if lang == 'python']


# ------------------------------------------------------------------ resolving and binding
def registered(name: str) -> List[type]:
    """The classes registered as ``name`` in :data:`REGISTRIES` (scope mmaction)."""
    import mmaction.registry as registries
    found = []
    for reg in REGISTRIES:
        try:
            obj = getattr(registries, reg).get(name)
        except Exception:  # noqa: BLE001  (a registry that cannot import its location)
            obj = None
        if obj is not None and obj not in found:
            found.append(obj)
    return found


def binding_problem(target, call: ast.Call) -> Optional[str]:
    """Why ``call``'s arguments do not fit ``target``'s signature (None when they do, or
    when its signature is not known: a builtin, ``*args`` / ``**kw`` in the call)."""
    if any(isinstance(a, ast.Starred) for a in call.args):
        return None
    keywords = [k.arg for k in call.keywords if k.arg is not None]
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    try:
        sig.bind_partial(*[None] * len(call.args), **dict.fromkeys(keywords))
    except TypeError as e:
        return f'{getattr(target, "__qualname__", target)}{sig}: {e}'
    return None


def config_dict_problems(tree: ast.AST) -> List[str]:
    """``dict(type='X', k=v)`` calls whose type is registered nowhere, or none of whose
    registered classes takes the keys (``_delete_``-style keys are mmengine's)."""
    problems = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and
                node.func.id == 'dict'):
            continue
        kw = {k.arg: k.value for k in node.keywords if k.arg is not None}
        if not (isinstance(kw.get('type'), ast.Constant) and
                isinstance(kw['type'].value, str)):
            continue
        name = kw['type'].value
        classes = registered(name)
        if not classes:
            problems.append(f'line {node.lineno}: type={name!r} is in no registry')
            continue
        call = ast.Call(func=node.func, args=[], keywords=[
            k for k in node.keywords if k.arg is not None and k.arg != 'type' and
            not k.arg.startswith('_')])
        why = [binding_problem(cls, call) for cls in classes]
        if all(why):
            problems.append(f'line {node.lineno}: dict(type={name!r}, ...): {why[0]}')
    return problems


def import_problems(tree: ast.AST) -> Tuple[List[str], Dict[str, object]]:
    """Imports of names that do not exist, and ``{local name: object}`` of the others."""
    problems, names = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                try:
                    module = importlib.import_module(alias.name)
                except ImportError as e:
                    problems.append(f'line {node.lineno}: import {alias.name}: {e}')
                    continue
                if alias.asname:
                    names[alias.asname] = module
                else:
                    top = alias.name.split('.')[0]
                    names[top] = importlib.import_module(top)
        elif isinstance(node, ast.ImportFrom):
            try:
                module = importlib.import_module(node.module)
            except ImportError as e:
                problems.append(f'line {node.lineno}: from {node.module}: {e}')
                continue
            for alias in node.names:
                if not hasattr(module, alias.name):
                    problems.append(f'line {node.lineno}: {node.module} has no '
                                    f'{alias.name!r}')
                else:
                    names[alias.asname or alias.name] = getattr(module, alias.name)
    return problems, names


def _resolve(expr: ast.AST, names: Dict[str, object]):
    """The object of ``name`` or ``name.attr.attr`` (None when unknown)."""
    if isinstance(expr, ast.Name):
        return names.get(expr.id)
    if isinstance(expr, ast.Attribute):
        owner = _resolve(expr.value, names)
        return getattr(owner, expr.attr, None) if owner is not None else None
    return None


def call_problems(tree: ast.AST, names: Dict[str, object]) -> List[str]:
    """Calls of imported names (``f(...)``, ``mod.f(...)``) whose arguments do not bind."""
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            target = _resolve(node.func, names)
            if target is not None and callable(target):
                why = binding_problem(target, node)
                if why:
                    problems.append(f'line {node.lineno}: {why}')
    return problems


def snippet_problems(body: str) -> List[str]:
    """Problems of one python block (see the module docstring)."""
    try:
        tree = ast.parse(body)
    except SyntaxError as e:
        # an abridged call, dict(type='X', ...): checked without its '...'
        # (test_readme_commands.py reports what does not compile otherwise)
        try:
            tree = ast.parse(re.sub(r',\s*\.\.\.\s*\)', ')', body))
        except SyntaxError:
            return [] if '...' in body else [f'does not parse: {e}']
    problems, names = import_problems(tree)
    return problems + call_problems(tree, names) + config_dict_problems(tree)


CALL_SPAN = re.compile(r'^([A-Za-z_][\w.]*)\((.*)\)$', re.S)


def _prose_target(name: str):
    """What a call in the prose names: ``stan_mm.x.y`` (resolved), a name exported by
    :data:`PROSE_NAMESPACES`, or registered classes; None when it is none of those
    (``np.array``, ``runner.train``)."""
    if name.startswith('stan_mm.'):
        if not _docs.resolves(name):
            return False
        module, _, attr = name.rpartition('.')
        try:
            return [getattr(importlib.import_module(module), attr)]
        except ImportError:        # a module's attribute chain: resolved above
            return None
    if '.' in name:
        return None
    for namespace in PROSE_NAMESPACES:
        module = importlib.import_module(namespace)
        if name in getattr(module, '__all__', ()):
            return [getattr(module, name)]
    return registered(name) or None


def prose_call_problems(path: str) -> List[str]:
    """Inline spans ``name(args)`` of the prose whose name (when it is stan-mm's or
    registered) does not resolve or whose arguments do not bind; and spans naming a
    ``stan_mm.x.y`` that does not resolve."""
    name = osp.relpath(path, REPO)
    with open(path, encoding='utf-8') as f:
        text = f.read()
    problems = []
    for line, para in _docs.prose_paragraphs(text):
        for span in _docs.SPAN.findall(para):
            span = span.strip()
            if re.fullmatch(r'stan_mm(\.\w+)+', span):
                if not _docs.resolves(span):
                    problems.append(f'{name}:{line}: `{span}` does not resolve')
                continue
            m = CALL_SPAN.match(span)
            if not m:
                continue
            try:
                call = ast.parse(span, mode='eval').body
            except SyntaxError:
                continue
            if not isinstance(call, ast.Call):
                continue
            if m.group(1) == 'dict':
                problems += [f'{name}:{line}: `{span}`: {p}'
                             for p in config_dict_problems(call)]
                continue
            targets = _prose_target(m.group(1))
            if targets is False:
                problems.append(f'{name}:{line}: `{span}`: {m.group(1)} does not resolve')
            elif targets:
                why = [binding_problem(t, call) for t in targets]
                if all(why):
                    problems.append(f'{name}:{line}: `{span}`: {why[0]}')
    return problems


# ------------------------------------------------------------------ docstrings
def doc_arg_names(doc: str) -> List[str]:
    """The names the ``Args:`` sections of a Google-style docstring document
    (``a:``, ``a, b:``, ``a / b:``, ``a (int):``)."""
    lines = inspect.cleandoc(doc).splitlines()
    names, i = [], 0
    while i < len(lines):
        if lines[i].strip() not in ('Args:', 'Arguments:'):
            i += 1
            continue
        base, indent = len(lines[i]) - len(lines[i].lstrip()), None
        i += 1
        while i < len(lines):
            line = lines[i]
            i += 1
            if not line.strip():
                continue
            cur = len(line) - len(line.lstrip())
            if cur <= base:
                i -= 1
                break
            indent = cur if indent is None else indent
            m = re.match(r'\s*(\*{0,2}\w+(?:\s*[,/]\s*\*{0,2}\w+)*)\s*(\(.*?\))?\s*:', line)
            if cur == indent and m:
                names += [n.strip().lstrip('*') for n in re.split('[,/]', m.group(1))]
    return names


def args_drift(obj) -> List[str]:
    """``Args:`` entries of ``obj``'s docstring (a class: also its ``__init__``'s) that are
    not its parameters; nothing when it takes ``**kwargs`` (passed on)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return []
    doc = obj.__doc__ or ''
    if inspect.isclass(obj) and '__init__' in vars(obj):
        doc += '\n' + (vars(obj)['__init__'].__doc__ or '')
    return [n for n in doc_arg_names(doc) if n not in sig.parameters]


def stan_mm_modules():
    return [importlib.import_module(m.name)
            for m in pkgutil.walk_packages(stan_mm.__path__, 'stan_mm.')]


# ------------------------------------------------------------------ 1. docstring examples
def test_docstring_examples_run():
    """Every module of stan_mm/ whose source holds a ``>>>`` example passes doctest."""
    modules = [m for m in stan_mm_modules()
               if '>>>' in inspect.getsource(m)]
    assert len(modules) >= 3, [m.__name__ for m in modules]
    attempted = 0
    for module in modules:
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, report=False,
                                 verbose=False)
        assert result.failed == 0, f'{module.__name__}: {result.failed} example(s) failed ' \
                                   f'(run: python -m pytest --doctest-modules {module.__file__})'
        attempted += result.attempted
    assert attempted >= 10


# ------------------------------------------------------------------ 2. python blocks
@pytest.mark.parametrize('path', [osp.relpath(p, REPO) for p in _commands.doc_files()])
def test_python_blocks_of_the_docs_match_the_code(path):
    problems = [f'{path}:{line}: {p}' for line, body in python_blocks(path)
                for p in snippet_problems(body)]
    assert not problems, '\n'.join(problems)


def test_qb_norm_script_prints_the_table_of_retrieval_md(capsys):
    text = _doc('docs/retrieval.md')
    body = [b for _, b in python_blocks('docs/retrieval.md') if 'qb_bank_emb' in b]
    assert len(body) == 1
    exec(compile(body[0], 'docs/retrieval.md', 'exec'), {})
    lines = capsys.readouterr().out.splitlines()
    raw, dsl = re.fullmatch(r'raw (\S+) DSL (\S+)', lines[0]).groups()
    printed = {m.group(1): [raw, dsl, m.group(2), m.group(3)] for m in (
        re.fullmatch(r'(\d+) QB-Norm (\S+) DSL \+ QB-Norm (\S+)', line) for line in lines[1:])}
    table = {m.group(1).replace(',', ''): m.group(2).split(' | ') for m in re.finditer(
        r'^\| synthetic, (?:500 videos, )?bank of ([\d,]+)(?: captions)? \| (.*) \|$', text,
        re.M)}
    assert list(table) == ['500', '2000', '10000']
    assert printed == table

@pytest.fixture(scope='module')
def notebook_dir(tmp_path_factory):
    """A folder to run the notebook snippet in: ``configs`` (the repository's),
    ``my_videos/`` (two synthetic videos, 48x48, 8 frames) and a checkpoint of a random
    tiny retrieval model at the path the snippet loads."""
    from stan_mm.apis import init_model
    from stan_mm.datasets.synthetic import make_video_specs, render_video, write_video
    d = tmp_path_factory.mktemp('notebook')
    os.symlink(osp.join(REPO, 'configs'), str(d / 'configs'))
    (d / 'my_videos').mkdir()
    for i, spec in enumerate(make_video_specs('test', 2, num_frames=8, seed=1)):
        write_video(str(d / 'my_videos' / f'clip{i}.mp4'), render_video(spec, 48))
    torch.manual_seed(0)
    model = init_model(osp.join(REPO, NOTEBOOK_CONFIG))
    with torch.no_grad():      # the temporal modules start as the identity: perturb them
        for name, p in model.named_parameters():
            if 'temporal' in name:
                p.normal_(0, 0.2)
    (d / 'work_dirs' / 'motion_retrieval_tiny').mkdir(parents=True)
    torch.save({'state_dict': model.state_dict(), 'meta': {'epoch': 1}},
               str(d / 'work_dirs' / 'motion_retrieval_tiny' / 'epoch_1.pth'))
    return d


def test_notebook_snippet_of_user_tools_md_runs(notebook_dir, monkeypatch, capsys):
    """The snippet as written; what it prints is what the functions compute; a second run
    (a re-executed cell) gives the same embeddings."""
    from stan_mm.apis import embed_dim, top_k
    from stan_mm.evaluation import METRIC_KEYS, retrieval_metrics_from_embeddings
    blocks = [b for _, b in python_blocks('docs/user_tools.md') if 'init_model' in b]
    assert len(blocks) == 1
    assert NOTEBOOK_CONFIG in blocks[0]
    monkeypatch.chdir(notebook_dir)
    code = compile(blocks[0], 'docs/user_tools.md', 'exec')
    ns: dict = {}
    exec(code, ns)
    out = capsys.readouterr().out
    model, videos, texts, sim = ns['model'], ns['videos'], ns['texts'], ns['sim']
    e = embed_dim(model)
    assert videos.shape == (2, e) and texts.shape == (2, e) and sim.shape == (2, 2)
    assert videos.dtype == texts.dtype == torch.float32
    torch.testing.assert_close(videos.norm(dim=1), torch.ones(2))
    assert ns['names'] == ['clip0.mp4', 'clip1.mp4']
    assert str(top_k(sim.numpy(), 2)) in out
    metrics = retrieval_metrics_from_embeddings(texts, videos, [0, 1])
    assert list(metrics) == list(METRIC_KEYS) and repr(metrics) in out
    assert "(['moving left', 'moving right'], array([" in out
    again: dict = {}
    exec(code, again)
    capsys.readouterr()
    assert again['model'] is not model
    torch.testing.assert_close(again['videos'], videos, rtol=0, atol=1e-6)
    torch.testing.assert_close(again['texts'], texts, rtol=0, atol=1e-6)


def test_video_pipeline_takes_a_config_path_in_any_default_scope(notebook_dir):
    """A notebook makes a pipeline before (or without) a model: from the config's path
    (was AttributeError: 'str' object has no attribute 'get'), with another default scope
    current (was KeyError: 'SafeDecordInit is not in the mmengine::transform registry'),
    which it leaves current."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from stan_mm.apis import VideoPipeline
    config = osp.join(REPO, NOTEBOOK_CONFIG)
    video = str(notebook_dir / 'my_videos' / 'clip0.mp4')
    with DefaultScope.overwrite_default_scope('mmengine'):
        from_path = VideoPipeline(config)(video)
        assert DefaultScope.get_current_instance().scope_name == 'mmengine'
    from_cfg = VideoPipeline(Config.fromfile(config))(video)
    imgs = from_path['inputs']['imgs']
    assert imgs.shape == (8, 3, 32, 32) and imgs.dtype == torch.uint8
    assert torch.equal(imgs, from_cfg['inputs']['imgs'])
    with pytest.raises(FileNotFoundError, match='no_such.py'):
        VideoPipeline(str(notebook_dir / 'no_such.py'))


# ------------------------------------------------------------------ 3. prose
@pytest.mark.parametrize('path', _commands.doc_files(), ids=lambda p: osp.relpath(p, REPO))
def test_calls_in_the_prose_match_the_code(path):
    problems = prose_call_problems(path)
    assert not problems, '\n'.join(problems)


# ------------------------------------------------------------------ 4. help()
@pytest.mark.parametrize('package', PUBLIC_PACKAGES)
def test_public_names_exist_and_have_docstrings(package):
    module = importlib.import_module(package)
    names = getattr(module, '__all__', None)
    assert names, f'{package} has no __all__'
    assert len(set(names)) == len(names), f'{package}.__all__ repeats names'
    missing = [n for n in names if not hasattr(module, n)]
    assert not missing, f'{package}.__all__ names what it lacks: {missing}'
    undocumented = [n for n in names if (inspect.isclass(getattr(module, n)) or
                                         inspect.isfunction(getattr(module, n))) and
                    not (vars(getattr(module, n)).get('__doc__') if
                         inspect.isclass(getattr(module, n)) else
                         getattr(module, n).__doc__)]
    assert not undocumented, f'{package}: no docstring: {undocumented}'


def test_public_functions_show_their_keywords():
    """help(extract_features) listed (model, out_dir, **kwargs): the keywords its docstring
    documents were hidden (and bind_partial accepted any)."""
    from stan_mm.apis import extract_features
    params = inspect.signature(extract_features).parameters
    assert {'videos', 'texts', 'key', 'precision', 'log'} <= set(params)
    assert not any(p.kind is p.VAR_KEYWORD for p in params.values())


def test_docstring_args_are_parameters():
    problems = []
    for module in stan_mm_modules():
        for name, obj in vars(module).items():
            if not (inspect.isfunction(obj) or inspect.isclass(obj)) or \
                    obj.__module__ != module.__name__:
                continue
            members = [(name, obj)] + ([(f'{name}.{k}', f) for k, f in vars(obj).items()
                                        if inspect.isfunction(f)]
                                       if inspect.isclass(obj) else [])
            for qual, member in members:
                problems += [f'{module.__name__}.{qual}: Args names {a!r}, not a parameter'
                             for a in args_drift(member)]
    assert not problems, '\n'.join(problems)


# ------------------------------------------------------------------ the checks can fail
def test_the_checks_catch_drift(tmp_path):
    bad = '\n'.join([
        'from stan_mm.apis import init_model, no_such_function',
        'from stan_mm.evaluation import retrieval_metrics_from_similarity as metrics',
        "model = init_model('c.py', 'x.pth', devices='cuda')",
        'metrics(sim, t2v, dsl=True, qb_bank_emb=bank)',
        "model = dict(type='Recognizer3D', backbone=dict(type='CLIPSTAN', depth=4, "
        "temporal='attn'), cls_head=dict(type='NoSuchHead'))",
        "pipeline = [dict(type='Resize', scale=(-1, 256), _delete_=True)]",
    ])
    problems = '\n'.join(snippet_problems(bad))
    assert "stan_mm.apis has no 'no_such_function'" in problems
    assert "got an unexpected keyword argument 'devices'" in problems
    assert "unexpected keyword argument 'qb_bank_emb'" in problems
    assert "dict(type='CLIPSTAN', ...)" in problems and "'temporal'" in problems
    assert "type='NoSuchHead' is in no registry" in problems
    assert 'Resize' not in problems and 'Recognizer3D' not in problems
    assert problems.count('\n') == 4

    doc = tmp_path / 'bad.md'
    doc.write_text('\n'.join([
        'Call `stan_mm.apis.recognize(model, video, class_names=[...])`, then',
        '`init_model(config, checkpoint, gpu=True)`, `EpochSeedHook(per_iteration=True)`,',
        '`EpochSeedHook(per_iter=True)`, `np.array(x, bogus=1)`, `stan_mm.apis.no_such`,',
        "`dict(type='ClassListCheckHook', strict=False)` and `stan_mm.apis.gone(x)`.",
    ]))
    problems = '\n'.join(prose_call_problems(str(doc)))
    assert "unexpected keyword argument 'class_names'" in problems
    assert "unexpected keyword argument 'gpu'" in problems
    assert "unexpected keyword argument 'per_iter'" in problems
    assert '`stan_mm.apis.no_such` does not resolve' in problems
    assert 'stan_mm.apis.gone does not resolve' in problems
    assert "dict(type='ClassListCheckHook', ...)" in problems
    assert 'bogus' not in problems and 'per_iteration=True)`:' not in problems
    assert problems.count('\n') == 5

    def documented(videos, *, key):
        """Embed.

        Args:
            videos / texts: what to embed.
            key, views: the model's key.
        """
    assert args_drift(documented) == ['texts', 'views']

    def forwarding(a, **kwargs):
        """Args:
            a: one.
            b: passed on.
        """
    assert args_drift(forwarding) == []
