"""Full CLIP weights (both towers) in any supported layout -> one stan-mm CLIP checkpoint
(``tools/convert/clip_to_mm.py``). Weights of the image tower alone are refused (they go
to ``CLIPSTAN``'s ``pretrained=`` as they are).

Output (``OUT.pth`` / ``OUT.pt``): ``torch.save`` of::

    {'state_dict': {...},   # open_clip key layout (visual.*, transformer.*, ...), fp32,
                            # exactly open_clip.model.CLIP(**clip_cfg).state_dict() keys
     'meta': {'clip_cfg': {...},  # the full architecture: embed_dim, quick_gelu,
                                  # vision_cfg (with head_width), text_cfg (with heads)
              'source': ..., 'source_layout': ..., 'activation_reason': ...,
              'converter': 'tools/convert/clip_to_mm.py'}}

or, for an ``OUT`` without that suffix, an open_clip model folder:
``OUT/open_clip_config.json`` (``{"model_cfg": clip_cfg}``) + ``OUT/open_clip_model.safetensors``,
which :func:`stan_mm.models.clip.build_clip` (and open_clip itself) read with the
architecture and the activation stated, nothing inferred.

Either is replaced as a whole: a reader (or a conversion killed at any moment, or a full
disk) never leaves the new weights beside the previous output's config. A folder is
written as ``.OUT.tmp-XXXXXXXX`` beside ``OUT`` and renamed to ``OUT`` (the previous one
goes aside as ``.OUT.old-XXXXXXXX`` until then); a kill between those renames leaves
``OUT`` missing and both folders beside it, which the next conversion into ``OUT``
removes once it has written its own (the report names them). An ``OUT`` that cannot be
swapped (a mount point, a folder in a read-only parent) is written in place instead, in an
order that leaves it without weights, never mixed, after a kill (:func:`_write_in_place`).
A killed ``.pth`` conversion leaves its full-size temporary file beside ``OUT``; the next
one removes those older than 10 minutes (the report names them).

Both are CLIP weights: use them as ``pretrained=`` (``CLIPSTAN``, ``STANRetriever``,
``CLIPTextEncoder``), not as ``load_from``: the STAN branch's spatial blocks are copies of
CLIP blocks made when the model is built, which only ``pretrained`` does. A text tower
whose vocabulary is not CLIP BPE's (:data:`~stan_mm.models.clip.builder.
CLIP_BPE_VOCAB_SIZE` ids; a CLIP trained with another tokenizer) is converted too, but the
text users refuse it: the report warns and names ``CLIPSTAN`` alone.
"""
import contextlib
import errno
import json
import logging
import os
import os.path as osp
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple, Union

import torch

from stan_mm.models.clip.builder import CLIP_BPE_VOCAB_SIZE
from stan_mm.models.clip.checkpoint import CLIP_TO_MM as CONVERTER
FILE_SUFFIXES = ('.pth', '.pt')
#: what an open_clip folder output holds (the only files written into it)
DIR_FILES = ('open_clip_config.json', 'open_clip_model.safetensors')


@dataclass
class ClipExportReport:
    """What :func:`convert_clip` read and wrote (``format()`` prints it)."""
    source: str
    source_layout: str
    stored_dtype: str
    clip_cfg: Dict
    activation_reason: str
    activation_guessed: bool
    params: Dict[str, int]
    num_keys: int
    ignored_keys: List[str]
    same_shapes_as: List[str]
    out: str
    out_format: str
    out_bytes: int = 0
    load_note: str = ''
    arch_hint: Union[str, Dict, None] = None
    warnings: List[str] = field(default_factory=list)
    #: folders (or, for a ``.pth``, temporary files) that interrupted conversions into
    #: ``out`` left beside it, removed by this one
    removed_leftovers: List[str] = field(default_factory=list)

    def format(self) -> str:
        c, v, t = self.clip_cfg, self.clip_cfg['vision_cfg'], self.clip_cfg['text_cfg']
        vh = v['width'] // v['head_width']
        act = 'QuickGELU' if c['quick_gelu'] else 'GELU'
        p = self.params
        lines = [
            f'source:        {self.source} ({self.source_layout} layout, stored as '
            f'{self.stored_dtype})',
            f'architecture:  embed_dim {c["embed_dim"]}; vision {v["image_size"]}px, patch '
            f'{v["patch_size"]}, width {v["width"]}, {v["layers"]} layers, {vh} heads; text '
            f'context {t["context_length"]}, vocab {t["vocab_size"]}, width {t["width"]}, '
            f'{t["layers"]} layers, {t["heads"]} heads',
            f'same shapes as open_clip configs: {", ".join(self.same_shapes_as) or "none"}',
            f'activation:    {act} ({self.activation_reason})',
            f'parameters:    vision {p["vision"] / 1e6:.2f}M, text {p["text"] / 1e6:.2f}M, '
            f'other {p["other"]}, total {p["total"] / 1e6:.2f}M',
            f'keys:          {self.num_keys} tensors written'
            + (f'; {len(self.ignored_keys)} source keys outside CLIP ignored: '
               f'{", ".join(self.ignored_keys[:8])}' if self.ignored_keys else ''),
            f'output:        {self.out} ({self.out_format}, fp32, '
            f'{self.out_bytes / 2 ** 20:.1f} MiB)',
        ]
        use = f"pretrained='{self.out}'"
        if self.arch_hint is not None:
            use = f'arch={self.arch_hint!r}, ' + use
        users = ('CLIPSTAN / STANRetriever / CLIPTextEncoder' if _has_clip_bpe_vocab(c) else
                 'CLIPSTAN only: the text tower is not CLIP BPE\'s')
        lines.append(f'use as:        {use}  ({users}; not load_from)')
        if self.load_note:
            lines.append(f'note:          {self.load_note}')
        if self.removed_leftovers:
            lines.append(f'removed:       {", ".join(self.removed_leftovers)} (left beside '
                         f'the output by an interrupted conversion)')
        lines += [f'WARNING: {w}' for w in self.warnings]
        return '\n'.join(lines)


def _has_clip_bpe_vocab(cfg: Dict) -> bool:
    """Whether the text tower of clip_cfg ``cfg`` has CLIP BPE's vocabulary, which the text
    users (``STANRetriever``, ``CLIPTextEncoder``) require of loaded weights."""
    return cfg['text_cfg']['vocab_size'] == CLIP_BPE_VOCAB_SIZE


def _activation_reason(quick_gelu, arch, arch_cfg, ckpt):
    """(reason, guessed), by the same rule as ``build_clip``."""
    from stan_mm.models.clip.builder import _choose_activation
    _, reason, guessed = _choose_activation(quick_gelu, arch, arch_cfg, ckpt)
    if quick_gelu is not None:
        reason = '--quick-gelu' if quick_gelu else '--gelu'
    return reason, guessed


def _count_params(model) -> Dict[str, int]:
    vision = sum(p.numel() for p in model.visual.parameters())
    total = sum(p.numel() for p in model.parameters())
    other = sum(p.numel() for n, p in model.named_parameters() if n in ('logit_scale',
                                                                        'logit_bias'))
    return dict(vision=vision, text=total - vision - other, other=other, total=total)


def _same_shapes(cfg: Dict) -> List[str]:
    """Bundled open_clip names whose shapes and head counts equal ``cfg``'s."""
    import open_clip
    from stan_mm.models.clip.arch import arch_from_name, shape_mismatches, validate_clip_cfg
    out = []
    for name in open_clip.list_models():
        try:
            ref = validate_clip_cfg(arch_from_name(name))
        except (ValueError, TypeError, KeyError):
            continue
        if shape_mismatches(cfg, ref):
            continue
        if (ref['vision_cfg']['head_width'] == cfg['vision_cfg']['head_width']
                and ref['text_cfg']['heads'] == cfg['text_cfg']['heads']):
            out.append(name)
    return out


def _arch_hint(cfg: Dict, same: List[str]):
    """An ``arch`` that states ``cfg`` fully: a bundled name with the right activation,
    else the dict itself."""
    for name in same:
        if name.endswith('-quickgelu') == bool(cfg['quick_gelu']):
            return name
    return cfg


def _write(sd: Dict[str, torch.Tensor], meta: Dict, out: str, fmt: str) -> List[str]:
    """Write ``out`` (``fmt`` ``'pth'`` or ``'dir'``) so that a reader finds the previous
    output or the new one complete, never a part or a mix: the single file through
    :func:`~stan_mm.engine.checkpoint_hook.atomic_write_bytes`, the folder through
    :func:`_write_dir`. A failed write leaves ``out`` as it was and no temporary file; a
    full disk is an ``OSError`` naming the file. Returns the temporary files of killed
    ``.pth`` conversions it removed (:func:`_remove_stale_pth_tmps`)."""
    if fmt == 'pth':
        import io
        from stan_mm.engine.checkpoint_hook import atomic_write_bytes
        buf = io.BytesIO()   # (mmengine saves checkpoints the same way)
        torch.save({'state_dict': sd, 'meta': meta}, buf)
        # the view is released however the write ends: an error kept in a reference cycle
        # (a caller storing it) otherwise let the collector close the BytesIO while the
        # view still exported it ("Exception ignored ... BufferError" on stderr)
        with buf.getbuffer() as view:
            atomic_write_bytes(view, out)
        return _remove_stale_pth_tmps(out)
    _write_dir(sd, meta, out)
    return []


def _remove_stale_pth_tmps(out: str) -> List[str]:
    """Delete the temporary files that killed conversions into ``out`` (a ``.pth``) left
    beside its real path: named exactly ``.<name>.<8 chars>.tmp`` (``atomic_write_bytes``'
    ``mkstemp``) and unchanged for 10 minutes
    (:func:`~stan_mm.utils.atomic.remove_stale_temps`). Each is a full-size copy
    of the model (1.7 GB for ViT-L) that nothing else removes. Returns the removed paths."""
    from stan_mm.utils.atomic import remove_stale_temps
    folder, name = osp.split(osp.realpath(out))
    pattern = re.compile(r'\.' + re.escape(name) + r'\.[A-Za-z0-9_]{8}\.tmp')
    return remove_stale_temps(folder, pattern.fullmatch)


#: the temporary folders beside ``OUT``: one being written, and the previous ``OUT``
#: renamed aside while the new one takes its name (both left by a kill at the wrong time)
_LEFTOVER_KINDS = ('tmp', 'old')


#: errors of ``replace_folder`` after which ``out`` is written in place
#: (:func:`_write_in_place`): a mount point (EBUSY), another file system (EXDEV), a folder
#: that may not be renamed (EPERM, EACCES; a sticky or read-only parent)
_IN_PLACE_ERRNOS = (errno.EBUSY, errno.EXDEV, errno.EPERM, errno.EACCES)


def _write_dir(sd: Dict[str, torch.Tensor], meta: Dict, out: str) -> None:
    """Write both files of a folder output into a new folder beside ``out`` (its name is
    unique to this run; both files fsync'ed), then put that folder in place of ``out``
    (:func:`~stan_mm.engine.checkpoint_hook.replace_folder`). Writing the files into
    ``out`` one after the other left, after a kill or a full disk between them, the new
    weights with the previous output's config, which the loader then used silently (the
    wrong activation). A symlink ``out`` is kept: the folder it names is replaced. While
    the new folder is written this process holds a lock on it, so that
    :func:`_remove_leftovers` of another conversion leaves it alone.

    Where ``out`` is an existing folder that cannot be swapped (a mount point: Docker bind
    mount, tmpfs; a pre-created folder in a read-only parent), the files are written
    inside it instead (:func:`_write_in_place`), as versions before the swap did."""
    from stan_mm.engine.checkpoint_hook import fsync_folder, output_folder, replace_folder
    from stan_mm.utils.atomic import umask as _umask
    parent, name = osp.split(output_folder(out))  # (a link is followed)
    target = osp.join(parent, name)
    os.makedirs(parent, exist_ok=True)
    mode = os.stat(target).st_mode & 0o7777 if osp.isdir(target) else 0o777 & ~_umask()
    try:
        tmp = tempfile.mkdtemp(prefix=f'.{name}.tmp-', dir=parent)
    except OSError as e:
        if osp.isdir(target) and os.access(target, os.W_OK | os.X_OK):
            _write_in_place(sd, meta, out, target, f'cannot create a folder in {parent} ({e})')
            return
        raise OSError(e.errno, f'{e.strerror}: cannot create a folder in {parent}, where '
                      f'{out} is written first (then renamed to {out}); make {parent} '
                      f'writable') from e
    lock = _hold_folder(tmp)
    swap_error = None
    try:
        os.chmod(tmp, mode)   # (mkdtemp's 0700 would hide the model from the group)
        _write_files(sd, meta, out, osp.join(tmp, DIR_FILES[1]), osp.join(tmp, DIR_FILES[0]))
        fsync_folder(tmp)
        check_output(out, 'dir')   # (again: files may have been put there meanwhile)
        try:
            replace_folder(tmp, target)
        except OSError as e:
            if e.errno not in _IN_PLACE_ERRNOS or not osp.isdir(target):
                raise
            swap_error = e
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            os.close(lock)
    if swap_error is not None:
        _write_in_place(sd, meta, out, target, f'cannot rename {target} ({swap_error})')


def _write_files(sd: Dict[str, torch.Tensor], meta: Dict, out: str, weights: str,
                 config: str) -> None:
    """Write the weights and the config of a folder output ``out`` to the paths
    ``weights`` and ``config``, fsync'ed and with mode ``0o666`` less the umask (what
    ``open`` gives; safetensors makes its file 0600, which hid the model from the group)."""
    from safetensors.torch import save
    from stan_mm.utils.atomic import umask
    mode = 0o666 & ~umask()
    config_text = lambda: json.dumps({'model_cfg': meta['clip_cfg'], 'stan_mm': {  # noqa
        k: v for k, v in meta.items() if k != 'clip_cfg'}}, indent=2).encode()
    for path, data in ((weights, lambda: save(sd, metadata={'converter': CONVERTER})),
                       (config, config_text)):
        with _naming_the_file(out, path):
            # created exclusively and written through the descriptor: a link planted at
            # the name (a shared folder) is refused, never written through
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                         | getattr(os, 'O_NOFOLLOW', 0), 0o600)
            with os.fdopen(fd, 'wb') as f:
                f.write(data())
                f.flush()
                os.fchmod(f.fileno(), mode)
                os.fsync(f.fileno())


def _write_in_place(sd: Dict[str, torch.Tensor], meta: Dict, out: str, target: str,
                    why: str) -> None:
    """Write the folder output ``out`` inside its existing folder ``target`` (``why``: the
    swap of :func:`_write_dir` is impossible there). Both new files are written and synced
    first as ``<file>.tmp`` (names :func:`_ours` accepts), then (1) the old weights are
    removed, (2) the new config replaces the old one, (3) the new weights take their name:
    a kill at any point leaves the old output, or a folder without weights (the loader
    fails loudly), never new weights beside the old config nor old weights beside the new
    config (the wrong activation, silently). On failure the temporary files are removed."""
    from mmengine.logging import print_log
    from stan_mm.engine.checkpoint_hook import fsync_folder
    print_log(f'{out}: {why}; writing the new files inside it instead (a kill while they '
              f'are put in place leaves it without weights: convert again then)',
              logger='current', level=logging.WARNING)
    weights, config = (osp.join(target, f) for f in (DIR_FILES[1], DIR_FILES[0]))
    new_weights, new_config = weights + '.tmp', config + '.tmp'
    check_output(out, 'dir')
    swapping = False
    try:
        for path in (new_weights, new_config):   # (a link planted there is not written
            with contextlib.suppress(FileNotFoundError):   # through: removed first)
                os.remove(path)
        _write_files(sd, meta, out, new_weights, new_config)
        fsync_folder(target)
        check_output(out, 'dir')   # (again: files may have been put there meanwhile)
        swapping = True
        with contextlib.suppress(FileNotFoundError):
            os.remove(weights)
        os.replace(new_config, config)
        os.replace(new_weights, weights)
        fsync_folder(target)
    except BaseException as e:
        for path in (new_weights, new_config):
            with contextlib.suppress(OSError):
                os.remove(path)
        if swapping and isinstance(e, OSError):
            raise OSError(e.errno, f'{e.strerror}: could not put the new files in place in '
                          f'{out}, which may now hold no weights; convert again') from e
        raise


def _hold_folder(path: str) -> Optional[int]:
    """A descriptor of the folder ``path`` holding an exclusive ``flock`` on it (closing
    it releases it; so does the end of the process, however it ends); None where the
    file system has no locks."""
    try:
        import fcntl
        fd = os.open(path, os.O_RDONLY)
    except (ImportError, OSError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def _naming_the_file(out: str, path: str) -> Iterator[None]:
    """An ``OSError`` (or safetensors' error around one: ``... (os error 28)``) while
    ``path`` (a file of the new folder of ``out``) is written becomes an ``OSError`` naming
    that file and saying that ``out`` is unchanged."""
    try:
        yield
    except Exception as e:   # noqa: BLE001  (only OS errors are rewritten)
        code = getattr(e, 'errno', None) if isinstance(e, OSError) else None
        if code is None:
            found = re.search(r'os error (\d+)', str(e))
            code = int(found.group(1)) if found else None
        if code is None:
            raise
        hint = (' (the disk is full: free some space and convert again)'
                if code in (errno.ENOSPC, getattr(errno, 'EDQUOT', errno.ENOSPC)) else '')
        raise OSError(code, f'{os.strerror(code)}: could not write '
                      f'{osp.join(out, osp.basename(path))}{hint}; {out} is unchanged '
                      f'(nothing of the new output was put there)') from e


def _leftovers(out: str) -> List[str]:
    """The folders beside ``out`` that an interrupted conversion into ``out`` left
    (:data:`_LEFTOVER_KINDS`): named ``.<name>.tmp-*`` / ``.<name>.old-*`` and holding
    nothing but :data:`DIR_FILES` (or their ``.tmp``, written by older versions)."""
    from stan_mm.engine.checkpoint_hook import output_folder
    parent, name = osp.split(output_folder(out))  # (a link is followed)
    try:
        entries = os.listdir(parent)
    except OSError:
        return []
    ours = set(DIR_FILES) | {f + '.tmp' for f in DIR_FILES}
    found = []
    for entry in sorted(entries):
        if not any(entry.startswith(f'.{name}.{kind}-') for kind in _LEFTOVER_KINDS):
            continue
        path = osp.join(parent, entry)
        try:
            if osp.islink(path) or not osp.isdir(path) or not set(os.listdir(path)) <= ours:
                continue
        except OSError:
            continue
        found.append(path)
    return found


def _remove_leftovers(out: str) -> Tuple[List[str], List[str]]:
    """Delete the :func:`_leftovers` of ``out`` that no running conversion holds (after a
    conversion into ``out`` succeeded: until then the previous model may be there alone,
    when a kill came between the renames of ``replace_folder``). Returns (removed, kept:
    held by a conversion that is running, or where the file system cannot tell)."""
    removed, kept = [], []
    for path in _leftovers(out):
        fd = _hold_folder(path)
        if fd is None:
            kept.append(path)
            continue
        try:
            shutil.rmtree(path)
            removed.append(path)
        except OSError:
            kept.append(path)
        finally:
            os.close(fd)
    return removed, kept


def _ours(path: str) -> bool:
    """Whether ``path`` (one of :data:`DIR_FILES`, or its ``.tmp`` left by an interrupted
    run) was written by this converter."""
    name = osp.basename(path)
    if name.endswith('.tmp'):
        return name[:-len('.tmp')] in DIR_FILES
    try:
        if name == 'open_clip_config.json':
            with open(path) as f:
                cfg = json.load(f)
            return (isinstance(cfg, dict) and isinstance(cfg.get('stan_mm'), dict)
                    and cfg['stan_mm'].get('converter') == CONVERTER)
        if name == 'open_clip_model.safetensors':
            from safetensors import safe_open
            with safe_open(path, framework='pt') as f:
                return (f.metadata() or {}).get('converter') == CONVERTER
    except Exception:   # unreadable, not JSON, not safetensors: not ours
        return False
    return False


def check_output(out: str, out_format: str) -> None:
    """Refuse (``FileExistsError``) an output the conversion must not replace: for a
    folder output (``out_format='dir'``), an existing file, or a non-empty folder that holds
    anything but an earlier output of this converter (whose files are replaced); for a
    single file, an existing folder. An existing single file is replaced."""
    if out_format == 'pth':
        if osp.isdir(out):
            raise FileExistsError(f'output {out} is a folder; give a file name (OUT.pth) '
                                  f'for a single-file checkpoint')
        return
    if not osp.lexists(out):
        return
    if not osp.isdir(out):
        raise FileExistsError(f'output folder {out} exists and is not a folder; give a new '
                              f'or empty folder (or OUT.pth for a single file)')
    names = sorted(os.listdir(out))
    other = [n for n in names if not _ours(osp.join(out, n))]
    if other:
        shown = ', '.join(other[:5]) + (f' and {len(other) - 5} more' if len(other) > 5
                                        else '')
        raise FileExistsError(
            f'output folder {out} is not empty and holds files this converter did not write '
            f'({shown}); it writes {" + ".join(DIR_FILES)} and replaces only its own '
            f'earlier output: give a new or empty folder (or OUT.pth for a single file)')


def _written_bytes(out: str, out_format: str) -> int:
    if out_format == 'pth':
        return os.path.getsize(out)
    return sum(os.path.getsize(osp.join(out, f)) for f in DIR_FILES)


def _check_reload(out: str, sd: Dict[str, torch.Tensor], cfg: Dict) -> str:
    """Read ``out`` back; raise if the weights differ; return a note when loading it
    without ``arch`` would not rebuild ``cfg`` (the reader infers what it is not told)."""
    from stan_mm.models.clip import infer_clip_cfg, read_clip_checkpoint
    from stan_mm.models.clip.builder import DEFAULT_QUICK_GELU
    ck = read_clip_checkpoint(out)
    if set(ck.state_dict) != set(sd) or not all(torch.equal(ck.state_dict[k], sd[k].float())
                                                for k in sd):
        raise RuntimeError(f'{out}: the weights read back differ from those written')
    try:
        inferred = infer_clip_cfg(ck.state_dict, heads=ck.heads)
    except ValueError as e:
        return f'loading it with arch=None fails ({e}); pass the arch shown above'
    q = DEFAULT_QUICK_GELU if ck.quick_gelu is None else ck.quick_gelu
    problems = []
    if (inferred['vision_cfg']['head_width'], inferred['text_cfg']['heads']) != (
            cfg['vision_cfg']['head_width'], cfg['text_cfg']['heads']):
        problems.append('the head counts')
    if q != cfg['quick_gelu']:
        problems.append('the activation')
    if problems:
        return (f'with arch=None the loader would infer {" and ".join(problems)} wrongly '
                f'from this file; pass the arch shown above')
    return ''


def convert_clip(src: str, out: str, arch=None, quick_gelu: Optional[bool] = None,
                 out_format: Optional[str] = None) -> ClipExportReport:
    """Read CLIP weights ``src`` (OpenAI state dict or TorchScript archive, open_clip file or
    folder, HuggingFace folder or file), build the CLIP with
    :func:`stan_mm.models.clip.build_clip` (``arch`` / ``quick_gelu`` as there; strict key
    check) and write it to ``out`` (format: module docstring; ``out_format`` ``'pth'`` or
    ``'dir'``, default from the suffix of ``out``). The written file is read back and
    compared with the built model's weights. An existing ``OUT.pth`` is replaced; a folder
    output must be new, empty, or an earlier output of this converter (replaced as a
    whole, :func:`_write_dir`): anything else raises ``FileExistsError``
    (:func:`check_output`) before the input is read, and again before the new folder is
    put in place. A failed write (e.g. a full disk: an ``OSError`` naming the file) leaves
    ``out`` as it was.
    """
    from stan_mm.models.clip import read_clip_checkpoint
    from stan_mm.models.clip.arch import resolve_arch
    from stan_mm.models.clip.builder import build_clip_from_checkpoint
    if out_format is None:
        out_format = 'pth' if out.endswith(FILE_SUFFIXES) else 'dir'
    if out_format not in ('pth', 'dir'):
        raise ValueError(f'out_format must be "pth" or "dir", got {out_format!r}')
    if osp.abspath(out) == osp.abspath(src):
        raise ValueError(f'output {out} would overwrite the input')
    check_output(out, out_format)
    ckpt = read_clip_checkpoint(src)
    arch_cfg = resolve_arch(arch)[0] if arch is not None else None
    reason, guessed = _activation_reason(quick_gelu, arch, arch_cfg, ckpt)
    model = build_clip_from_checkpoint(
        ckpt, arch, strict=True, quick_gelu=quick_gelu,
        needed_by=f'{CONVERTER} (it writes a full CLIP checkpoint, both towers; '
        f'image-tower-only weights go to CLIPSTAN\'s pretrained= as they are)')
    cfg = json.loads(json.dumps(model.clip_cfg))
    sd = {k: v.detach().float().contiguous().clone() for k, v in model.state_dict().items()}
    from stan_mm.version import __version__
    meta = dict(clip_cfg=cfg, converter=CONVERTER, source=osp.abspath(src),
                source_layout=ckpt.fmt, activation_reason=reason,
                stan_mm_version=__version__)
    removed_tmps = _write(sd, meta, out, out_format)
    same = _same_shapes(cfg)
    report = ClipExportReport(
        source=src, source_layout=ckpt.fmt, stored_dtype=str(ckpt.stored_dtype).replace(
            'torch.', ''), clip_cfg=cfg, activation_reason=reason,
        activation_guessed=guessed, params=_count_params(model), num_keys=len(sd),
        ignored_keys=list(ckpt.ignored_keys), same_shapes_as=same, out=out,
        out_format='single file' if out_format == 'pth' else 'open_clip folder',
        removed_leftovers=removed_tmps)
    report.out_bytes = _written_bytes(out, out_format)
    report.load_note = _check_reload(out, sd, cfg)
    if out_format == 'dir':
        report.removed_leftovers, kept = _remove_leftovers(out)
        if kept:
            report.warnings.append(
                f'{", ".join(kept)}: folder(s) of a conversion into {out} that is still '
                f'running (or was interrupted, on a file system without locks); delete '
                f'them once no conversion into {out} runs')
    if report.load_note:
        report.arch_hint = _arch_hint(cfg, same)
    if not _has_clip_bpe_vocab(cfg):
        report.warnings.append(
            f'the text tower has a vocabulary of {cfg["text_cfg"]["vocab_size"]:,} tokens, '
            f'not the {CLIP_BPE_VOCAB_SIZE:,} of CLIP\'s BPE tokenizer, which stan-mm '
            f'tokenizes text with: this model was trained with another tokenizer '
            f'(multilingual CLIPs such as MetaCLIP worldwide use XLM-V), so STANRetriever '
            f'and CLIPTextEncoder refuse this checkpoint; its image tower serves '
            f'CLIPSTAN(pretrained=...) for recognition.')
    if guessed and cfg['quick_gelu']:
        report.warnings.append(
            'the source does not say which activation it was trained with; QuickGELU '
            '(OpenAI CLIP) was assumed. For LAION/DataComp weights convert again with '
            '--gelu (or --arch ViT-B-16 style open_clip names).')
    elif guessed:
        report.warnings.append(
            'the source does not say which activation it was trained with; GELU was used '
            '(what open_clip means by an arch name without -quickgelu). For OpenAI CLIP '
            'weights convert again with --quick-gelu (or --arch ViT-B-16-quickgelu style '
            'names).')
    return report
