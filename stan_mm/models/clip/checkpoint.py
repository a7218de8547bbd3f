"""Read CLIP weights from a local path in any common layout, as an open_clip state dict.

Accepted (detected automatically):

========================  ==============================================================
OpenAI TorchScript        the ``.pt`` archives OpenAI distributes (a zip holding ``code/``
                          and ``constants.pkl``), whatever the file's name; their tensors
                          are read without running the archive's code
                          (:func:`read_torchscript_state_dict`)
OpenAI state dict         ``visual.conv1.weight``, ``transformer.resblocks.N.*``, ... (fp16)
open_clip                 ``torch.save`` of a state dict (``.pt``/``.pth``/``.bin``), possibly
                          wrapped as ``{'state_dict': ...}`` with ``module.`` prefixes, or
                          ``.safetensors``; or an open_clip directory
                          (``open_clip_config.json`` + ``open_clip_model.safetensors`` / ...)
HF ``transformers``       a directory with ``config.json`` + ``model.safetensors`` /
                          ``pytorch_model.bin`` (sharded ones too), or such a weights file
image tower alone         any of the above holding only ``visual.*`` keys; an open_clip /
                          OpenAI ``model.visual.state_dict()`` (``conv1.weight``,
                          ``class_embedding``, ``transformer.resblocks.N.*``, ``proj``: put
                          under ``visual.``); an HF ``CLIPVisionModelWithProjection``
                          (``vision_model.*`` + ``visual_projection.weight``; its
                          ``config.json`` is a ``CLIPVisionConfig``) or ``CLIPVisionModel``
                          (no projection; ``vision_model.`` prefix or none)
========================  ==============================================================

Such image-tower-only weights have no text tower (:attr:`ClipCheckpoint.has_text_tower`
is False) and no key of neither tower besides ``logit_scale`` / ``logit_bias``
(:attr:`ClipCheckpoint.stray_keys` is empty):
:func:`stan_mm.models.clip.build_clip_vision` (``CLIPSTAN``) loads them,
:func:`stan_mm.models.clip.build_clip` refuses them.

Everything is returned in open_clip's key layout and in fp32. Pickled files are read with
:func:`stan_mm.compat.safe_torch_load` (weights-only unpickling). A TorchScript archive is
never given to ``torch.jit.load`` unless checkpoints are trusted
(``STAN_MM_TRUST_CHECKPOINTS=1`` or :func:`stan_mm.compat.trusted_checkpoints`): that would
compile and run code stored in the archive (a ``__setstate__`` runs at load). Otherwise its
``data.pkl`` is read by a restricted unpickler (module objects become inert stand-ins,
tensors are rebuilt from the archive's records, nothing else is imported) and the state dict
is assembled from the ``__parameters__`` / ``__buffers__`` declarations in its ``code/``
files, read as text; an archive that cannot be read that way (a module with its own
``__setstate__``, a global beyond tensors and containers) is refused with
:class:`stan_mm.compat.UnsafeCheckpointError` naming the file and the opt-in. Shards named by
a HuggingFace ``*.index.json`` must lie in the index's folder.

Activation (QuickGELU vs GELU) is not stored in weights. This module reports a *hint* from
the file when there is one: ``config.json`` ``hidden_act`` (HF), ``quick_gelu`` in
``open_clip_config.json``, and "OpenAI release" markers (TorchScript archive, the archive's
``input_resolution``/``context_length``/``vocab_size`` entries, or weights stored in fp16 as
OpenAI stores them) which mean QuickGELU. Without a hint the caller decides
(:func:`stan_mm.models.clip.build_clip` documents the rule).
"""
import ast
import collections
import io
import json
import os
import os.path as osp
import pickle
import re
import sys
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from .hf_convert import hf_clip_to_openclip, is_hf_clip_state_dict, is_position_ids

Tensor = torch.Tensor

#: what tools/convert/clip_to_mm.py records as meta.converter in the files it writes
CLIP_TO_MM = 'tools/convert/clip_to_mm.py'
OPENAI_META_KEYS = ('input_resolution', 'context_length', 'vocab_size')
_OC_ANCHOR = 'visual.conv1.weight'
_HF_ANCHORS = ('vision_model.embeddings.patch_embedding.weight',
               'text_model.embeddings.token_embedding.weight')
# an image tower saved on its own (open_clip/OpenAI ``model.visual``; HF
# ``CLIPVisionTransformer`` as transformers >= 5 saves ``CLIPVisionModel``): anchor key and
# a sibling that tells it apart from other models with such a key (a ResNet's conv1)
_BARE_VISION = (('conv1.weight', 'class_embedding', 'visual.'),
                ('embeddings.patch_embedding.weight', 'pre_layrnorm.weight', 'vision_model.'))
#: open_clip-layout keys (or key prefixes) that belong to the text tower
TEXT_TOWER_KEYS = ('token_embedding.weight', 'positional_embedding', 'ln_final.weight',
                   'ln_final.bias', 'text_projection')
TEXT_TOWER_PREFIXES = ('transformer.',)
#: keys of neither tower that CLIP weights carry (the logit scale and bias)
OUTSIDE_TOWER_KEYS = ('logit_scale', 'logit_bias')
_HF_DIR_FILES = ('model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin',
                 'pytorch_model.bin.index.json')
_OC_DIR_FILES = ('open_clip_model.safetensors', 'open_clip_pytorch_model.safetensors',
                 'open_clip_pytorch_model.bin', 'open_clip_pytorch_model.pth')


@dataclass
class ClipCheckpoint:
    """CLIP weights read from ``path``.

    Attributes:
        state_dict: open_clip-layout weights, floating tensors in fp32.
        fmt: ``'openai-torchscript'``, ``'openai'`` (state dict with OpenAI markers),
            ``'open_clip'`` or ``'hf'``.
        path: what the user passed; ``weights_file``: the file(s) actually read.
        quick_gelu: activation hint from the file (``None``: the file does not tell).
        quick_gelu_reason: why, for the log line.
        heads: ``(vision_heads, text_heads)`` when a config file states them.
        vision_heads: the image tower's heads when a config file states them (also a
            vision-only config such as HF ``CLIPVisionConfig``).
        ignored_keys: keys dropped because they lie outside the CLIP prefix.
        bare_vision: the file held an image tower saved on its own (keys without the
            ``visual.`` / ``vision_model.`` prefix), now put under ``visual.``.
        file_tensors: how many tensors the file holds as CLIP weights, counted as stored
            (before the conversion to open_clip keys; :attr:`ignored_keys` not counted).
        file_key: one of those keys as the file spells it (the patch embedding where
            present), for messages; ``state_dict`` holds open_clip names instead.
    """
    state_dict: Dict[str, Tensor]
    fmt: str
    path: str
    weights_file: str
    quick_gelu: Optional[bool] = None
    quick_gelu_reason: str = ''
    heads: Optional[Tuple[int, int]] = None
    stored_dtype: Optional[torch.dtype] = None
    ignored_keys: List[str] = field(default_factory=list)
    vision_heads: Optional[int] = None
    bare_vision: bool = False
    file_tensors: Optional[int] = None
    file_key: Optional[str] = None

    @property
    def has_text_tower(self) -> bool:
        """Whether any text tower weight is present (:data:`TEXT_TOWER_KEYS`,
        ``transformer.*``); False for image-tower-only files."""
        return any(is_text_tower_key(k) for k in self.state_dict)

    @property
    def stray_keys(self) -> List[str]:
        """The keys of neither CLIP tower: not ``visual.*``, not the text tower's, not
        :data:`OUTSIDE_TOWER_KEYS` (none in CLIP weights; e.g. ``branch.*`` of a trained
        stan-mm backbone, ``text.*`` of an open_clip CustomTextCLIP)."""
        return [k for k in self.state_dict if not k.startswith('visual.')
                and not is_text_tower_key(k) and k not in OUTSIDE_TOWER_KEYS]


def is_text_tower_key(key: str) -> bool:
    """An open_clip-layout key of CLIP's text tower (:data:`TEXT_TOWER_KEYS`,
    :data:`TEXT_TOWER_PREFIXES`)."""
    return key in TEXT_TOWER_KEYS or key.startswith(TEXT_TOWER_PREFIXES)


# ---------------------------------------------------------------------------------------
# file readers
# ---------------------------------------------------------------------------------------
def is_torchscript_archive(file: str) -> bool:
    """A TorchScript archive is a zip with ``<name>/code/`` and ``<name>/constants.pkl``;
    ``torch.save`` zips have neither. (``torch.load`` hands any zip with a top-level
    ``<name>/constants.pkl`` to ``torch.jit.load``: such a zip counts too.)"""
    if not zipfile.is_zipfile(file):
        return False
    with zipfile.ZipFile(file) as zf:
        names = zf.namelist()
    return (any(n.endswith('/constants.pkl') for n in names)
            and any('/code/' in n for n in names)) or any(
        n.count('/') == 1 and n.endswith('/constants.pkl') for n in names)


# storage classes a TorchScript data.pkl names (``torch.HalfStorage`` ...) -> dtype
_TS_STORAGE_DTYPES = {
    'HalfStorage': torch.float16, 'FloatStorage': torch.float32,
    'DoubleStorage': torch.float64, 'BFloat16Storage': torch.bfloat16,
    'LongStorage': torch.int64, 'IntStorage': torch.int32, 'ShortStorage': torch.int16,
    'CharStorage': torch.int8, 'ByteStorage': torch.uint8, 'BoolStorage': torch.bool,
    'ComplexFloatStorage': torch.complex64, 'ComplexDoubleStorage': torch.complex128}
# torch.jit._pickle helpers TorchScript's pickler emits: all return their first argument
_TS_IDENTITY_HELPERS = ('build_intlist', 'build_tensorlist', 'build_doublelist',
                        'build_boollist', 'restore_type_tag')


class _TorchScriptUnreadable(Exception):
    """The archive cannot be read without running its code (internal; the message says why)."""


class _ScriptObject:
    """Inert stand-in for a TorchScript object (``__torch__.*`` class) of ``data.pkl``: it
    only keeps the state the pickle gives it. A subclass per class name is made."""
    qualname = ''
    state = None

    def __new__(cls, *args):
        return object.__new__(cls)

    def __init__(self, *args):
        pass


class _StorageType:
    """What ``torch.<Name>Storage`` resolves to: only its dtype (not callable)."""

    def __init__(self, dtype):
        self.dtype = dtype


@dataclass
class _TSClassDecl:
    is_module: bool
    parameters: Optional[List[str]] = None
    buffers: Optional[List[str]] = None
    has_setstate: bool = False


_TS_CLASS_LINE = re.compile(r'class\s+(\w+)\s*(?:\(([^)]*)\))?\s*:')
_TS_LIST_LINE = re.compile(r'\s+(__parameters__|__buffers__)\s*=\s*(\[.*\])\s*$')


def _ts_class_decls(zf: zipfile.ZipFile, prefix: str) -> Dict[str, _TSClassDecl]:
    """The classes declared in the archive's ``code/`` files, read as text (never compiled
    or run): qualified name -> whether it is a Module, its ``__parameters__`` and
    ``__buffers__`` lists, whether it defines ``__setstate__``."""
    decls: Dict[str, _TSClassDecl] = {}
    code = prefix + 'code/'
    for name in zf.namelist():
        if not (name.startswith(code) and name.endswith('.py')):
            continue
        module = name[len(code):-len('.py')].replace('/', '.')
        text = zf.read(name).decode('utf-8', errors='replace')
        cur = None
        for line in text.splitlines():
            if not line[:1].isspace():
                m = _TS_CLASS_LINE.match(line)
                cur = None
                if m:
                    cur = _TSClassDecl(is_module=(m.group(2) or '').strip() == 'Module')
                    decls[f'{module}.{m.group(1)}'] = cur
                continue
            if cur is None:
                continue
            m = _TS_LIST_LINE.match(line)
            if m:
                try:
                    names = ast.literal_eval(m.group(2))
                except (ValueError, SyntaxError):
                    raise _TorchScriptUnreadable(
                        f'unreadable {m.group(1)} of {module} in {name}') from None
                setattr(cur, m.group(1).strip('_'), [str(n) for n in names])
            elif line.lstrip().startswith('def __setstate__('):
                cur.has_setstate = True
    return decls


class _TorchScriptUnpickler(pickle._Unpickler):
    """Reads a TorchScript ``data.pkl`` importing nothing: ``__torch__.*`` classes become
    :class:`_ScriptObject` stand-ins, tensors are rebuilt from the archive's ``data/``
    records; any other global, and BUILD on anything but a stand-in, is refused."""
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, data: bytes, zf: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(data))
        self._zf, self._prefix = zf, prefix
        self._classes: Dict[str, type] = {}
        self._storages: Dict[str, Tensor] = {}

    def find_class(self, module, name):
        if module == '__torch__' or module.startswith('__torch__.'):
            qualname = f'{module}.{name}'
            if qualname not in self._classes:
                self._classes[qualname] = type('ScriptObject', (_ScriptObject,),
                                               {'qualname': qualname})
            return self._classes[qualname]
        if module == 'torch' and name in _TS_STORAGE_DTYPES:
            return _StorageType(_TS_STORAGE_DTYPES[name])
        if module == 'torch._utils' and name == '_rebuild_tensor_v2':
            return self._rebuild_tensor
        if module == 'torch._utils' and name == '_rebuild_parameter':
            return _ts_rebuild_parameter
        if module == 'collections' and name == 'OrderedDict':
            return collections.OrderedDict
        if module == 'torch.jit._pickle' and name in _TS_IDENTITY_HELPERS:
            return _ts_identity
        raise _TorchScriptUnreadable(f'its data.pkl asks for {module}.{name}')

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage'
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and isinstance(pid[4], int) and pid[4] >= 0):
            raise _TorchScriptUnreadable(f'unexpected persistent id {pid!r:.80}')
        dtype, key, numel = pid[1].dtype, pid[2], pid[4]
        if key not in self._storages:
            try:
                raw = self._zf.read(f'{self._prefix}data/{key}')
            except KeyError:
                raise _TorchScriptUnreadable(f'tensor record data/{key} is missing') from None
            itemsize = torch.empty((), dtype=dtype).element_size()
            if len(raw) != numel * itemsize:
                raise _TorchScriptUnreadable(
                    f'tensor record data/{key} holds {len(raw)} bytes, not {numel} x '
                    f'{itemsize}')
            self._storages[key] = (torch.frombuffer(bytearray(raw), dtype=dtype) if raw
                                   else torch.empty(0, dtype=dtype))
        storage = self._storages[key]
        if storage.dtype != dtype:
            raise _TorchScriptUnreadable(f'tensor record data/{key} is read as two dtypes')
        return storage

    @staticmethod
    def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None,
                        metadata=None):
        if not (isinstance(storage, Tensor) and isinstance(offset, int)
                and isinstance(size, tuple) and isinstance(stride, tuple)
                and len(size) == len(stride)
                and all(isinstance(n, int) for n in size + stride)):
            raise _TorchScriptUnreadable('a malformed tensor record')
        try:  # as_strided checks the view against the storage's size
            return storage.as_strided(size, stride, offset)
        except RuntimeError as e:
            raise _TorchScriptUnreadable(f'a tensor out of its storage ({e})') from None

    def load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if not isinstance(inst, _ScriptObject):
            raise _TorchScriptUnreadable(f'its data.pkl sets the state of a '
                                         f'{type(inst).__name__}')
        inst.state = state

    dispatch[pickle.BUILD[0]] = load_build


def _ts_rebuild_parameter(data, requires_grad=False, hooks=None):
    if not isinstance(data, Tensor):
        raise _TorchScriptUnreadable('a parameter that is not a tensor')
    return data


def _ts_identity(value, *args):
    return value


def _ts_module_state_dict(root, decls: Dict[str, _TSClassDecl]) -> Dict[str, Tensor]:
    """What ``torch.jit.load(...).state_dict()`` returns, from the stand-ins: per module its
    parameters, then its buffers (attribute order), then its submodules'. A class missing
    from ``code/`` counts as a module whose every tensor attribute is state."""
    out: Dict[str, Tensor] = {}
    path = set()  # the modules being visited: a shared submodule is fine, a cycle is not

    def visit(obj, prefix):
        if id(obj) in path:
            raise _TorchScriptUnreadable('a module that contains itself')
        decl = decls.get(obj.qualname)
        if decl is not None and decl.has_setstate:
            raise _TorchScriptUnreadable(f'{obj.qualname} restores itself with its own '
                                         f'__setstate__ (code in the archive)')
        state = obj.state
        if not isinstance(state, dict):
            raise _TorchScriptUnreadable(f'{obj.qualname} is stored as a '
                                         f'{type(state).__name__}, not as attributes')
        tensors = [k for k, v in state.items() if isinstance(v, Tensor)]
        if decl is None or decl.parameters is None or decl.buffers is None:
            names = tensors
        else:
            names = [k for k in tensors if k in decl.parameters] + [
                k for k in tensors if k in decl.buffers]
        for k in names:
            out[prefix + str(k)] = state[k]
        path.add(id(obj))
        for k, v in state.items():
            if isinstance(v, _ScriptObject):
                sub = decls.get(v.qualname)
                if sub is None or sub.is_module:
                    visit(v, f'{prefix}{k}.')
        path.discard(id(obj))

    if not isinstance(root, _ScriptObject):
        raise _TorchScriptUnreadable(f'its data.pkl holds a {type(root).__name__}, '
                                     f'not a module')
    try:
        visit(root, '')
    except RecursionError:
        raise _TorchScriptUnreadable('modules nested too deeply') from None
    return out


def read_torchscript_state_dict(file: str) -> Dict[str, Tensor]:
    """The state dict of a TorchScript archive without running its code (see the module
    docstring; tensors keep their stored dtype and are put on the CPU).

    Raises:
        stan_mm.compat.UnsafeCheckpointError: the archive cannot be read that way; the
            message names the file, why, and the opt-in (then ``torch.jit.load``).
    """
    from stan_mm.compat.checkpoint import TRUST_ENV, UnsafeCheckpointError
    try:
        with zipfile.ZipFile(file) as zf:
            names = zf.namelist()
            top = sorted(n[:-len('constants.pkl')] for n in names
                         if n.endswith('/constants.pkl') and n.count('/') == 1)
            prefix = top[0] if top else ''
            if prefix + 'data.pkl' not in names:
                raise _TorchScriptUnreadable('it has no data.pkl next to constants.pkl')
            if prefix + 'byteorder' in names:
                order = zf.read(prefix + 'byteorder').decode('ascii', 'replace').strip()
                if order != sys.byteorder:
                    raise _TorchScriptUnreadable(f'its tensors are stored {order}-endian')
            decls = _ts_class_decls(zf, prefix)
            unpickler = _TorchScriptUnpickler(zf.read(prefix + 'data.pkl'), zf, prefix)
            try:
                root = unpickler.load()
            except (pickle.UnpicklingError, EOFError, ValueError, TypeError,
                    AttributeError, IndexError, KeyError, RecursionError) as e:
                raise _TorchScriptUnreadable(
                    f'its data.pkl is not a plain TorchScript pickle '
                    f'({type(e).__name__}: {e})') from None
            return _ts_module_state_dict(root, decls)
    except _TorchScriptUnreadable as e:
        raise UnsafeCheckpointError(
            f'Refused to read {file}: it is a TorchScript archive whose weights cannot be '
            f'read without running the code stored in it ({e}), and torch.jit.load would '
            f'run that code. If you trust where this file comes from, set {TRUST_ENV}=1 '
            f'(for tools/convert/clip_to_mm.py too) or load it inside '
            f'stan_mm.compat.trusted_checkpoints().') from None


def _read_torchscript(file: str) -> Dict[str, Tensor]:
    """A TorchScript archive's state dict: with ``torch.jit.load`` (which runs the
    archive's code) only when checkpoints are trusted, else read without running it."""
    from stan_mm.compat.checkpoint import checkpoints_trusted
    if not checkpoints_trusted():
        return read_torchscript_state_dict(file)
    with warnings.catch_warnings():  # torch >= 2.9 marks torch.jit as deprecated
        warnings.simplefilter('ignore', FutureWarning)
        module = torch.jit.load(file, map_location='cpu')
    return dict(module.state_dict())


def _read_safetensors(file: str) -> Dict[str, Tensor]:
    from safetensors.torch import load_file
    return load_file(file, device='cpu')


def _read_pickle(file: str):
    from stan_mm.compat.checkpoint import safe_torch_load
    return safe_torch_load(file, map_location='cpu')


def _read_file(file: str) -> Tuple[object, bool]:
    """-> (loaded object, is_torchscript)."""
    if file.endswith('.safetensors'):
        return _read_safetensors(file), False
    if is_torchscript_archive(file):
        return _read_torchscript(file), True
    return _read_pickle(file), False


def _read_sharded(index_file: str) -> Dict[str, Tensor]:
    with open(index_file) as f:
        weight_map = json.load(f).get('weight_map')
    if not isinstance(weight_map, dict):
        raise ValueError(f'{index_file} has no "weight_map"; is it a sharded checkpoint index?')
    sd = {}
    folder = osp.dirname(index_file)
    for shard in sorted(set(map(str, weight_map.values()))):
        obj, _ = _read_file(_shard_path(index_file, folder, shard))
        sd.update(obj)
    return sd


def _shard_path(index_file: str, folder: str, shard: str) -> str:
    """A shard named by an index's ``weight_map`` -> its path, which must lie in the
    index's folder: absolute names, ``..`` and folders that are links leading outside are
    refused. (The shard file itself may be a link: HuggingFace's cache links each shard to
    its ``blobs/`` folder.)"""
    path = osp.join(folder, shard)
    real_folder = osp.realpath(folder)
    inside = (shard and not osp.isabs(shard) and not osp.splitdrive(shard)[0]
              and osp.normpath(path).startswith(osp.join(osp.normpath(folder), ''))
              and osp.commonpath([real_folder, osp.realpath(osp.dirname(path))])
              == real_folder)
    if not inside:
        raise ValueError(f'{index_file}: shard {shard!r} of "weight_map" lies outside the '
                         f'index\'s folder {folder}; refused (shards must be files in that '
                         f'folder, named relative to it)')
    return path


# ---------------------------------------------------------------------------------------
# unwrapping and layout detection
# ---------------------------------------------------------------------------------------
def _unwrap(obj, file: str) -> Dict[str, Tensor]:
    """Find the state dict in what ``torch.load`` returned."""
    for _ in range(3):  # {'state_dict': {...}}, {'model': {...}}, mmengine checkpoints ...
        if not isinstance(obj, Mapping):
            break
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        for key in ('state_dict', 'model', 'module', 'model_state_dict'):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        else:
            break
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping) or not any(isinstance(v, torch.Tensor)
                                               for v in obj.values()):
        kind = type(obj).__name__
        keys = list(obj)[:10] if isinstance(obj, Mapping) else ''
        raise ValueError(f'{file} does not hold a state dict of tensors (found {kind} {keys}); '
                         f'expected CLIP weights in OpenAI, open_clip or HuggingFace layout')
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _bare_vision_tower(sd: Dict[str, Tensor]) -> Optional[Tuple[Dict[str, Tensor], List[str]]]:
    """An image tower saved on its own (:data:`_BARE_VISION`), possibly under a common
    prefix, -> (its keys under ``visual.`` / ``vision_model.``, ignored keys); else None."""
    for anchor, sibling, tower in _BARE_VISION:
        for k in sd:
            prefix = k[:-len(anchor)]
            if k.endswith(anchor) and (not prefix or prefix.endswith('.')) \
                    and prefix + sibling in sd:
                inside = {tower + q[len(prefix):]: v for q, v in sd.items()
                          if q.startswith(prefix)}
                return inside, [q for q in sd if not q.startswith(prefix)]
    return None


def _strip_prefix(sd: Dict[str, Tensor], file: str
                  ) -> Tuple[Dict[str, Tensor], List[str], bool]:
    """Remove a common prefix in front of the CLIP keys (``module.``, ``clip.``, ...).

    Returns (CLIP keys, ignored keys, whether the keys were an image tower saved alone)."""
    anchor = next((k for k in sd if k.endswith(_OC_ANCHOR)
                   or any(k.endswith(a) for a in _HF_ANCHORS)), None)
    if anchor is None:
        bare = _bare_vision_tower(sd)
        if bare is not None:
            return bare + (True,)
        sample = list(sd)[:8]
        raise ValueError(
            f'{file}: no CLIP image tower found (looked for a key ending in {_OC_ANCHOR!r} '
            f'(OpenAI/open_clip) or {_HF_ANCHORS[0]!r} (HuggingFace), or an image tower '
            f'saved alone: conv1.weight + class_embedding (open_clip model.visual), '
            f'embeddings.patch_embedding.weight + pre_layrnorm.weight (HuggingFace)); '
            f'first keys: {sample}')
    for a in (_OC_ANCHOR,) + _HF_ANCHORS:
        if anchor.endswith(a):
            prefix = anchor[:-len(a)]
            break
    if not prefix:
        return sd, [], False
    model_keys = [k for k in sd if k.startswith(('backbone.branch.', 'text_backbone.',
                                                 'cls_head.'))]
    if prefix == 'backbone.' and model_keys:
        raise ValueError(
            f'{file}: this is a model checkpoint (stan-mm or MMAction2; keys such as '
            f'{model_keys[0]!r}), not CLIP weights: test or fine-tune it with load_from= / '
            f'tools/test.py CONFIG {file}; pretrained= and tools/convert/clip_to_mm.py take '
            f'OpenAI, open_clip or HuggingFace CLIP weights')
    inside = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    ignored = [k for k in sd if not k.startswith(prefix)]
    return inside, ignored, False


def _file_keys(sd: Dict[str, Tensor], ignored: List[str]) -> Tuple[int, Optional[str]]:
    """The file's CLIP tensors as stored (``sd`` less ``ignored``) -> (their count, one of
    their keys: the image tower's patch embedding where present, else the first)."""
    skip = set(ignored)
    keys = [k for k in sd if k not in skip]
    anchors = (_OC_ANCHOR,) + _HF_ANCHORS[:1] + tuple(a for a, _, _ in _BARE_VISION)
    for a in anchors:
        key = next((k for k in keys if k == a or k.endswith('.' + a)), None)
        if key is not None:
            return len(keys), key
    return len(keys), keys[0] if keys else None


def _is_hf_vision_config(cfg) -> bool:
    """An HF ``CLIPVisionConfig`` (``CLIPVisionModel[WithProjection]``'s config.json)."""
    return isinstance(cfg, dict) and (cfg.get('model_type') == 'clip_vision_model' or (
        'vision_config' not in cfg and 'hidden_size' in cfg and 'patch_size' in cfg))


def _hf_config_hints(config_file: str):
    """-> (quick_gelu, reason, (vision_heads, text_heads) or None, vision_heads or None)."""
    with open(config_file) as f:
        cfg = json.load(f)
    if _is_hf_vision_config(cfg):
        # transformers' CLIPVisionConfig default is quick_gelu too
        act = cfg.get('hidden_act', 'quick_gelu')
        if act not in ('quick_gelu', 'gelu'):
            raise ValueError(f'{config_file}: hidden_act {act!r} is not supported; open_clip '
                             f'uses "quick_gelu" or "gelu"')
        v_heads = cfg.get('num_attention_heads')
        return (act == 'quick_gelu', f'hidden_act={act!r} in {config_file}', None,
                int(v_heads) if v_heads is not None else None)
    vc, tc = cfg.get('vision_config') or {}, cfg.get('text_config') or {}
    # transformers' CLIP default is quick_gelu when a config omits hidden_act.
    acts = {vc.get('hidden_act', 'quick_gelu'), tc.get('hidden_act', 'quick_gelu')}
    if len(acts) != 1 or not acts <= {'quick_gelu', 'gelu'}:
        raise ValueError(f'{config_file}: hidden_act {sorted(acts)} is not supported; open_clip '
                         f'uses one activation, "quick_gelu" or "gelu", for both towers')
    act = acts.pop()
    heads = None
    if 'num_attention_heads' in vc and 'num_attention_heads' in tc:
        heads = (int(vc['num_attention_heads']), int(tc['num_attention_heads']))
    v_heads = int(vc['num_attention_heads']) if 'num_attention_heads' in vc else None
    return act == 'quick_gelu', f'hidden_act={act!r} in {config_file}', heads, v_heads


def _model_cfg_hints(model_cfg: Mapping, where: str):
    """Activation and head counts stated by an open_clip model config."""
    q = bool(model_cfg.get('quick_gelu', False))
    heads = v_heads = None
    v, t = model_cfg.get('vision_cfg', {}), model_cfg.get('text_cfg', {})
    if 'width' in v:
        v_heads = v['width'] // v.get('head_width', 64)
    if v_heads is not None and 'heads' in t:
        heads = (v_heads, t['heads'])
    return q, f'quick_gelu={q} in {where}', heads, v_heads


def _open_clip_config_hints(config_file: str):
    with open(config_file) as f:
        cfg = json.load(f)
    return _model_cfg_hints(cfg.get('model_cfg', cfg), config_file)


def _converted_clip_cfg(raw) -> Optional[Mapping]:
    """The ``clip_cfg`` that tools/convert/clip_to_mm.py stores in a single-file output
    (``{'meta': {'converter': ..., 'clip_cfg': ...}, 'state_dict': ...}``), else None."""
    meta = raw.get('meta') if isinstance(raw, Mapping) else None
    if (isinstance(meta, Mapping) and meta.get('converter') == CLIP_TO_MM
            and isinstance(meta.get('clip_cfg'), Mapping)):
        return meta['clip_cfg']
    return None


def _is_hf_clip_config(config_file: str) -> bool:
    """A readable HuggingFace CLIP ``config.json`` (both tower configs present, or a
    ``CLIPVisionConfig``)."""
    try:
        with open(config_file) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return False
    return (isinstance(cfg, dict) and isinstance(cfg.get('vision_config'), dict)
            and isinstance(cfg.get('text_config'), dict)) or _is_hf_vision_config(cfg)


def _resolve_dir(path: str) -> Tuple[str, Optional[str], Optional[str]]:
    """Directory -> (weights file, HF config.json or None, open_clip config or None)."""
    names = set(os.listdir(path))
    for fname in _OC_DIR_FILES:
        if fname in names:
            oc_cfg = osp.join(path, 'open_clip_config.json')
            if osp.isfile(oc_cfg):
                return osp.join(path, fname), None, oc_cfg
            # hub folders that ship both layouts without open_clip_config.json: the HF
            # config.json describes the same model (activation, heads)
            hf_cfg = osp.join(path, 'config.json')
            return (osp.join(path, fname), hf_cfg if _is_hf_clip_config(hf_cfg) else None,
                    None)
    for fname in _HF_DIR_FILES:
        if fname in names:
            hf_cfg = osp.join(path, 'config.json')
            return osp.join(path, fname), hf_cfg if osp.isfile(hf_cfg) else None, None
    raise FileNotFoundError(
        f'{path} is a directory without CLIP weights: expected a HuggingFace CLIP folder '
        f'(config.json + one of {list(_HF_DIR_FILES)}) or an open_clip folder '
        f'(one of {list(_OC_DIR_FILES)}); found {sorted(names)[:20]}')


def read_clip_checkpoint(path) -> ClipCheckpoint:
    """Read CLIP weights from a local file or directory (see the module docstring).

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it).
        ValueError: the file holds no CLIP weights in a known layout.
    """
    path = os.fspath(path)
    full = osp.abspath(osp.expanduser(path))
    if not osp.exists(full):
        raise FileNotFoundError(f'CLIP weights not found: {path!r} (resolved to {full}); '
                                f'pass a local weights file or directory')
    hf_cfg = oc_cfg = None
    if osp.isdir(full):
        file, hf_cfg, oc_cfg = _resolve_dir(full)
    else:
        file = full
    if file.endswith('.index.json'):
        raw, torchscript = _read_sharded(file), False
    else:
        raw, torchscript = _read_file(file)
    converted_cfg = _converted_clip_cfg(raw)
    sd = _unwrap(raw, file)
    file_sd = sd
    sd, ignored, bare_vision = _strip_prefix(sd, file)
    file_tensors, file_key = _file_keys(file_sd, ignored)

    present_meta = [k for k in OPENAI_META_KEYS if k in sd]
    for k in OPENAI_META_KEYS:
        sd.pop(k, None)
    sd = {k: v for k, v in sd.items() if not is_position_ids(k)}

    hf = is_hf_clip_state_dict(sd)
    anchor = _HF_ANCHORS[0] if hf else _OC_ANCHOR
    stored_dtype = sd[anchor].dtype if anchor in sd else None
    if hf:
        sd = hf_clip_to_openclip(sd)
        fmt = 'hf'
    elif torchscript:
        fmt = 'openai-torchscript'
    elif present_meta or stored_dtype == torch.float16:
        fmt = 'openai'
    else:
        fmt = 'open_clip'

    ckpt = ClipCheckpoint(
        state_dict={k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()},
        fmt=fmt, path=path, weights_file=file, stored_dtype=stored_dtype, ignored_keys=ignored,
        bare_vision=bare_vision, file_tensors=file_tensors, file_key=file_key)

    hints = None
    if hf_cfg is not None:
        hints = _hf_config_hints(hf_cfg)
    elif oc_cfg is not None:
        hints = _open_clip_config_hints(oc_cfg)
    elif converted_cfg is not None:
        hints = _model_cfg_hints(converted_cfg, f'the clip_cfg {CLIP_TO_MM} stored in {file}')
    if hints is not None:
        ckpt.quick_gelu, ckpt.quick_gelu_reason, ckpt.heads, ckpt.vision_heads = hints
    elif torchscript:
        ckpt.quick_gelu, ckpt.quick_gelu_reason = True, 'a TorchScript archive (OpenAI release)'
    elif present_meta:
        ckpt.quick_gelu = True
        ckpt.quick_gelu_reason = f'OpenAI archive entries {present_meta} in the weights'
    elif fmt == 'openai':
        ckpt.quick_gelu = True
        ckpt.quick_gelu_reason = 'weights stored in fp16, as OpenAI releases them'
    return ckpt
