"""Videos outside a dataset: find them, and preprocess one exactly as the config's test
pipeline does (same frames, size and normalization as in testing).

- :func:`list_videos`: a folder (scanned recursively) or a list file -> root + paths;
- :func:`inference_pipeline`: the config's ``test_dataloader`` pipeline made usable on a
  bare file name (safe decoding that names the file, no caption tokenization, optional
  ``CLIPSxCROPS`` views);
- :class:`VideoPipeline`: ``pipeline(path)`` -> the packed sample (``inputs``,
  ``data_samples``) that ``model.data_preprocessor`` batches, as in ``tools/test.py``.
"""
import codecs
import collections
import copy
import os
import os.path as osp
from typing import List, Optional, Sequence, Tuple

from stan_mm.datasets.retrieval import VIDEO_EXTS
from stan_mm.errors import ConfigValueError
from stan_mm.datasets.transforms.video_io import VideoReadError, resolve_video_name

#: transforms replaced by versions whose errors name the file
SAFE_TRANSFORMS = {'DecordInit': 'SafeDecordInit', 'DecordDecode': 'SafeDecordDecode'}
#: caption transforms dropped from the pipeline (a bare video has no caption)
TEXT_TRANSFORMS = ('CLIPBPETokenize', 'CLIPTokenize')
SAMPLERS = ('SampleFrames', 'UniformSample', 'UniformSampleFrames')
#: samplers that always draw one clip: views ``1xN`` change only the crop
SINGLE_CLIP_SAMPLERS = ('SymmetricSample', )
CROPS = {1: 'CenterCrop', 3: 'ThreeCrop', 10: 'TenCrop'}


def _storable(path: str) -> bool:
    """``path`` fits on one UTF-8 line (no line break, no undecodable bytes)."""
    if '\n' in path or '\r' in path:
        return False
    try:
        path.encode('utf-8')
    except UnicodeEncodeError:   # surrogate escapes of bytes that are not UTF-8
        return False
    return True


def _names_a_file(root: str, line: str) -> bool:
    """Whether ``line`` of a list file in ``root`` names an existing file, as
    :func:`_listed_file` resolves it (``clip`` is ``clip`` or else ``clip.mp4``)."""
    full = line if osp.isabs(line) else osp.join(root, line)
    return osp.isfile(resolve_video_name(full))


def _read_video_list(source: str, exts: Sequence[str], option: str = '') -> List[str]:
    """The paths of a list file: blank lines skipped, and lines starting with ``#`` skipped
    as comments unless the line names an existing file (relative to the list file's
    folder, a name without an extension also as ``<name>.mp4``): ``#1 clip.mp4`` is then a
    video, as a folder scan finds it. A file that is not UTF-8 text (an image, a video with
    another extension) raises ``ValueError`` naming it (after ``option``, the tool's flag,
    when given)."""
    name = f'{option} {source!r}' if option else repr(source)

    def not_a_list(why: str) -> ValueError:
        return ValueError(f'{name} is neither a folder, a video (a file ending in '
                          f'{", ".join(exts)}) nor a UTF-8 text list of videos ({why})')
    # read and decoded in chunks: a large binary file stops at its first bad chunk
    decoder = codecs.getincrementaldecoder('utf-8-sig')()   # a BOM is not part of the path
    parts, offset = [], 0
    try:
        with open(source, 'rb') as f:
            for chunk in iter(lambda: f.read(1 << 20), b''):
                try:
                    parts.append(decoder.decode(chunk))
                except UnicodeDecodeError as e:   # (e.object: bytes held over + chunk)
                    where = offset - (len(e.object) - len(chunk)) + e.start
                    raise not_a_list(f'byte {e.object[e.start]:#04x} at position {where} '
                                     f'is not UTF-8') from None
                offset += len(chunk)
            parts.append(decoder.decode(b'', final=True))
    except UnicodeDecodeError:
        raise not_a_list('it ends inside a UTF-8 character') from None
    except OSError as e:
        raise ValueError(f'{name}: cannot read the video list: {e.strerror or e}') from None
    text = ''.join(parts).replace('\r\n', '\n').replace('\r', '\n')   # (as text mode)
    nul = text.find('\x00')
    if nul >= 0:
        raise not_a_list(f'it holds NUL bytes, from position {nul}')
    root = osp.dirname(osp.abspath(source))      # (list_videos' root for relative names)
    lines = [ln.strip() for ln in text.split('\n')]   # (as the lines of the file)
    return [ln for ln in lines
            if ln and (not ln.startswith('#') or _names_a_file(root, ln))]


def _listed_file(root: str, path: str) -> str:
    """``path`` of a list file as the decoder reads it (:func:`resolve_video_name`): a name
    without an extension, ``clip``, becomes ``clip.mp4`` when no file ``clip`` exists (URLs
    of other storages are left as they are)."""
    if '://' in path:
        return path
    full = path if osp.isabs(path) else osp.join(root, path)
    found = resolve_video_name(full)
    return path if found == full else path + found[len(full):]


def list_videos(source: str, exts: Sequence[str] = VIDEO_EXTS,
                option: str = '', resolve: bool = True) -> Tuple[str, List[str]]:
    """Videos to process: ``(root, paths)``, each path relative to ``root`` unless absolute.

    ``source`` is either a folder, scanned recursively for files with a video extension
    (``exts``, case-insensitive; hidden files and folders skipped; symbolic links to
    folders not followed; sorted), one video file (a file with a video extension), or a
    UTF-8 text file listing one video per line (blank lines ignored; relative paths are
    relative to the list file's folder; order kept; any other file, e.g. an image, raises
    ``ValueError`` naming it). A line starting with ``#`` is a comment, unless it names an
    existing file (``#1 clip.mp4`` next to the list, or ``#1 clip`` for ``#1 clip.mp4``):
    that line is a video, as a folder scan would list it. Every other ``#`` line is a
    comment (``# day 1``, or ``#a.mp4`` to leave out ``a.mp4`` when no file ``#a.mp4``
    exists). A file name that cannot be written as one UTF-8 line of ``videos.txt`` (a
    line break, bytes that are not UTF-8) is refused before anything is embedded.
    ``option``: the tool's flag for ``source``, named in the messages.

    A listed name without an extension, ``clip``, means the file ``clip`` when there is one,
    else ``clip.mp4`` (as :class:`~stan_mm.datasets.transforms.video_io.SafeDecordInit`
    reads it); with ``resolve`` (default) such a name is returned as the file it means
    (``clip.mp4``), so that what is embedded and what is recorded of it (``videos.txt``,
    the size and time stamps) are the same file. ``resolve=False`` keeps the names as
    listed.
    """
    if osp.isdir(source):
        root = osp.abspath(source)
        lower = tuple(e.lower() for e in exts)
        found = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
            for name in filenames:
                if not name.startswith('.') and name.lower().endswith(lower):
                    found.append(osp.relpath(osp.join(dirpath, name), root).replace(
                        os.sep, '/'))
        if not found:
            raise FileNotFoundError(f'no videos found under {source} (looked for files '
                                    f'ending in {", ".join(exts)})')
        bad = [p for p in found if not _storable(p)]
        if bad:
            raise ValueError(f'{source}: {len(bad)} video file name(s) cannot be stored one '
                             f'per line in UTF-8 (a line break, or bytes that are not '
                             f'UTF-8): {", ".join(ascii(p) for p in bad[:5])}; rename them or '
                             f'list the videos to use in a text file')
        return root, sorted(found)
    if osp.isfile(source):
        root = osp.dirname(osp.abspath(source))
        if source.lower().endswith(tuple(e.lower() for e in exts)):   # one video
            return root, [osp.basename(source)]
        paths = _read_video_list(source, exts, option)
        if not paths:
            raise ValueError(f'{source}: the video list is empty (expected one video path '
                             f'per line)')
        listed = paths
        if resolve:
            paths = [_listed_file(root, p) for p in paths]
        dup = sorted(p for p, n in collections.Counter(paths).items() if n > 1)
        if dup:
            renamed = {q for p, q in zip(listed, paths) if p != q}   # 'clip' -> 'clip.mp4'
            raise ValueError(f'{source}: videos listed more than once: {dup[:5]}'
                             + (' (a name without an extension means <name>.mp4 when no '
                                'file <name> exists)' if renamed & set(dup) else ''))
        return root, paths
    from stan_mm.datasets.readers_common import resolved_note
    raise FileNotFoundError(f'--videos {source!r}: no such folder or list file'
                            f'{resolved_note(source)}')


class ViewsError(ValueError):
    """Test views (``--views CLIPSxCROPS``) that are malformed or that this config or model
    cannot take; the message says which and what to use instead."""


def parse_views(views: str) -> Tuple[int, int]:
    """``'CLIPSxCROPS'`` (``'1x3'``, ``'4x3'``, ``'1x1'``) -> (clips, crops)."""
    try:
        clips, crops = (int(v) for v in str(views).lower().split('x'))
        if clips < 1 or crops not in CROPS:
            raise ValueError
    except ValueError:
        raise ViewsError(f'views {views!r}: expected CLIPSxCROPS with CLIPS >= 1 and CROPS '
                         f'in {sorted(CROPS)}, e.g. 1x3 or 4x3') from None
    return clips, crops


def check_views(kind: str, views: Optional[str]) -> None:
    """Validate ``views`` (``'CLIPSxCROPS'``); retrieval models embed one view per video
    (frames ``[T, C, H, W]``): more is refused."""
    if views is not None and parse_views(views) != (1, 1) and kind == 'retriever':
        raise ViewsError(f'views {views!r}: a retrieval model embeds one view per video '
                         f'(the test pipeline\'s); multi-view testing is for recognition '
                         f'configs')


def config_name(cfg) -> str:
    """The config's file name for messages (``'the config'`` for a plain dict or a
    ``Config`` built in code, which have no file)."""
    return getattr(cfg, 'filename', None) or 'the config'


def dataset_cfgs(loader) -> List[dict]:
    """The dataset configs of a dataloader config that hold samples, in order, through
    wrappers: each dataset of a ``ConcatDataset`` (``datasets``), the one a
    ``RepeatDataset`` / ``ClassBalancedDataset`` / ``SkipUnreadable`` wraps (``dataset``);
    a config with a ``pipeline`` is a leaf. ``[]`` without a dataset."""
    dataset = loader.get('dataset') if loader else None
    leaves, stack = [], [dataset] if dataset is not None else []
    while stack:
        ds = stack.pop(0)
        if not hasattr(ds, 'get') or 'pipeline' in ds:
            leaves.append(ds)
        elif isinstance(ds.get('datasets'), (list, tuple)):
            stack[:0] = list(ds['datasets'])
        elif hasattr(ds.get('dataset'), 'get'):
            stack.insert(0, ds['dataset'])
        else:
            leaves.append(ds)
    return leaves


def dataset_cfg(loader) -> Optional[dict]:
    """The dataset config of a dataloader config, through wrappers (``RepeatDataset``,
    ``SkipUnreadable``, ...): the innermost one with a ``pipeline``, the first dataset's
    of a ``ConcatDataset`` (:func:`dataset_cfgs` lists them all; None without a
    dataset)."""
    leaves = dataset_cfgs(loader)
    return leaves[0] if leaves else None


def split_items(cfg, split: str, check_files: bool = True
                ) -> Tuple[List[str], List[str], List[int]]:
    """Videos (absolute paths, or URLs of other storages, each once), captions, and each
    caption's video index, from the config's ``<split>_dataloader.dataset`` (captions of a
    video grouped by file).
    ``check_files=False``: a ``CheckedVideoDataset``, or a ``RetrievalVideoTextDataset`` whose
    file names come from a template, keeps the videos that have no file (for a tool that
    reports them itself)."""
    from mmaction.registry import DATASETS
    loader = cfg.get(f'{split}_dataloader')
    if not loader or not loader.get('dataset'):
        raise ValueError(f'{config_name(cfg)} has no {split}_dataloader.dataset')
    # wrappers (SkipUnreadable, RepeatDataset, ...) add nothing to the list of videos and
    # captions: read the datasets they wrap (each of a ConcatDataset, in order)
    videos, texts, t2v, index = [], [], [], {}
    for leaf in dataset_cfgs(loader):
        ds_cfg = copy.deepcopy(leaf)
        ds_cfg['pipeline'] = []
        if ds_cfg.get('type') == 'RetrievalVideoTextDataset':
            ds_cfg['test_mode'] = True  # one entry per video with all its captions
        if not check_files and (ds_cfg.get('type') == 'CheckedVideoDataset' or (
                ds_cfg.get('type') == 'RetrievalVideoTextDataset'
                and ds_cfg.get('video_lookup', 'template') == 'template')):
            ds_cfg['check_files'] = False   # (a scanned name is only known if the file exists)
        dataset = DATASETS.build(ds_cfg)
        for i in range(len(dataset)):
            info = dataset.get_data_info(i)
            path = info['filename']
            path = path if '://' in path else osp.abspath(path)   # other storages as they are
            if path not in index:
                index[path] = len(videos)
                videos.append(path)
            caps = info.get('text')
            caps = [caps] if isinstance(caps, str) else list(caps or [])
            texts += caps
            t2v += [index[path]] * len(caps)
    return videos, texts, t2v


def trains_with_flip(cfg) -> Optional[bool]:
    """Whether the config's training pipeline mirrors frames keeping their labels (a
    ``Flip`` with ``flip_ratio > 0`` and no ``flip_label_map``: a mirrored clip is the same
    class); ``None`` when the config has no training pipeline. A ``Flip`` that swaps labels
    (Something-Something-v2 style) counts as False: mirroring changes the class there."""
    dataset = dataset_cfg(cfg.get('train_dataloader'))
    if dataset is None or not dataset.get('pipeline'):
        return None
    flips = [t for t in dataset['pipeline']
             if t.get('type') == 'Flip' and t.get('flip_ratio', 0.5) > 0]
    return bool(flips) and not any(t.get('flip_label_map') for t in flips)


def set_views(pipeline: List[dict], views: str, mirrored_ok: bool = True) -> List[dict]:
    """Set ``num_clips`` of the frame sampler and the crop (CenterCrop / ThreeCrop /
    TenCrop) of a test pipeline for ``views`` (in place; returns the pipeline).

    ``mirrored_ok=False`` refuses ``CROPS = 10``: MMAction2's ``TenCrop`` adds a
    horizontally mirrored copy of each of its 5 crops, which is wrong for direction
    sensitive labels (Something-Something-v2's "left to right"), i.e. for a model trained
    without ``Flip`` (see :func:`trains_with_flip`)."""
    clips, crops = parse_views(views)
    if crops == 10 and not mirrored_ok:
        raise ViewsError(
            f'views {views!r}: TenCrop mirrors 5 of its 10 views (keeping the label), but '
            f'this config trains without Flip, or with a Flip that swaps labels '
            f'(flip_label_map): direction-sensitive labels, e.g. Something-Something-v2, '
            f'where a mirrored "left to right" clip shows "right to left". Use {clips}x3 or '
            f'{clips}x1.')
    sampler = [t for t in pipeline if t['type'] in SAMPLERS + SINGLE_CLIP_SAMPLERS]
    crop = [t for t in pipeline if t['type'] in CROPS.values()]
    if len(sampler) != 1 or len(crop) != 1:
        raise ViewsError(f'views need exactly one frame sampler '
                         f'{SAMPLERS + SINGLE_CLIP_SAMPLERS} and one crop '
                         f'{tuple(CROPS.values())} in the test pipeline; found '
                         f'{[t["type"] for t in pipeline]}')
    if sampler[0]['type'] in SINGLE_CLIP_SAMPLERS:
        if clips != 1:
            raise ViewsError(f'views {views!r}: the test pipeline samples frames with '
                             f'{sampler[0]["type"]}, which draws one clip per video; use '
                             f'1x{crops}')
    else:
        sampler[0]['num_clips'] = clips
        sampler[0]['test_mode'] = True
    crop[0]['type'] = CROPS[crops]
    return pipeline


class CropSizeError(ConfigValueError):
    """A crop of the test pipeline that cannot fit the frames its ``Resize`` makes (found
    from the config, before any video is read)."""


def _pair(size) -> Optional[Tuple[int, int]]:
    """MMAction2's ``crop_size`` (an int, or ``(w, h)``) as ``(w, h)``; None otherwise."""
    if isinstance(size, int) and not isinstance(size, bool):
        return size, size
    if isinstance(size, (tuple, list)) and len(size) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in size):
        return int(size[0]), int(size[1])
    return None


def check_crop_fits(pipeline: Sequence[dict], where: str = 'the test pipeline') -> None:
    """Refuse a crop placed right after a ``Resize`` whose output it cannot take, which
    MMAction2 finds only per video and deep in a DataLoader worker (``ThreeCrop``: a bare
    ``AssertionError``; ``CenterCrop`` / ``TenCrop``: crops of the wrong size, then a shape
    error in the model). Checked where the frame size is known from the config:

    - ``Resize(scale=(-1, S))`` (short side S, the long side >= S) then a square crop C:
      ``ThreeCrop`` needs ``C == S`` (its 3 crops run along the long side, the short side
      whole); ``CenterCrop`` / ``TenCrop`` need ``C <= S``.
    - ``Resize(scale=(W, H), keep_ratio=False)`` (every frame W x H): ``ThreeCrop`` needs
      ``crop_w == W`` or ``crop_h == H``; ``CenterCrop`` / ``TenCrop`` need the crop inside.

    Anything else (float scales, ``keep_ratio=True`` with two sizes, non-square crops after
    a short-side resize, other transforms in between) depends on each video and is left
    to MMAction2."""
    for i in range(1, len(pipeline)):
        prev, step = pipeline[i - 1], pipeline[i]
        if not (isinstance(prev, dict) and isinstance(step, dict)):
            continue
        kind = step.get('type')
        if kind not in CROPS.values() or prev.get('type') != 'Resize':
            continue
        crop, scale = _pair(step.get('crop_size')), prev.get('scale')
        if crop is None or not isinstance(scale, (tuple, list)) or len(scale) != 2:
            continue
        cw, ch = crop
        resize = f'Resize(scale={tuple(scale)}' + (
            ', keep_ratio=False)' if prev.get('keep_ratio', True) is False else ')')
        head = (f'{where}: {kind}(crop_size={step.get("crop_size")!r}) (index {i}) after '
                f'{resize} (index {i - 1}): ')
        if prev.get('keep_ratio', True) and min(scale) == -1 and max(scale) > 0:
            if cw != ch:
                continue
            short = max(scale)
            if kind == 'ThreeCrop' and cw != short:
                raise CropSizeError(
                    head + f'ThreeCrop takes its 3 crops along the long side and needs the '
                    f'short side ({short}) to equal the crop ({cw}); MMAction2 would stop on '
                    f'a bare AssertionError at the first video. Set the Resize to '
                    f'scale=(-1, {cw}) (the paper\'s 1x3 test) or crop_size={short}.')
            if kind != 'ThreeCrop' and cw > short:
                raise CropSizeError(
                    head + f'the crop ({cw}) is larger than the frames\' short side '
                    f'({short}); MMAction2 would cut crops of the wrong size. Set the '
                    f'Resize to scale=(-1, {cw}) or crop_size={short}.')
        elif prev.get('keep_ratio', True) is False and min(scale) > 0:
            w, h = scale
            if kind == 'ThreeCrop' and cw != w and ch != h:
                raise CropSizeError(
                    head + f'every frame is {w}x{h} (WxH) and ThreeCrop needs the crop\'s '
                    f'width to equal {w} or its height to equal {h}; MMAction2 would stop '
                    f'on a bare AssertionError at the first video.')
            if kind != 'ThreeCrop' and (cw > w or ch > h):
                raise CropSizeError(
                    head + f'every frame is {w}x{h} (WxH), smaller than the {cw}x{ch} crop; '
                    f'MMAction2 would cut crops of the wrong size.')


def check_config_crops(cfg, splits: Sequence[str] = ('val', 'test')) -> None:
    """:func:`check_crop_fits` on the pipelines of ``<split>_dataloader`` (those the config
    has): ``train.py`` checks before training, so that a crop which cannot fit fails now
    rather than at the first validation, an epoch later; ``test.py`` checks the test split
    only (the one it runs)."""
    for split in splits:
        for dataset in dataset_cfgs(cfg.get(f'{split}_dataloader')):
            if hasattr(dataset, 'get') and dataset.get('pipeline'):
                check_crop_fits(dataset['pipeline'],
                                f'{config_name(cfg)}, {split}_dataloader.dataset.pipeline')


def set_config_views(cfg, pipeline: List[dict], views: str) -> List[dict]:
    """:func:`set_views` on a test pipeline of ``cfg``, with the config's own limits:
    refused for a retrieval model (one view per video, :func:`check_views`), TenCrop
    refused when the config trains without ``Flip`` (:func:`trains_with_flip`), and the
    new crop checked against the ``Resize`` before it (:func:`check_crop_fits`)."""
    from .inference import config_model_kind
    check_views(config_model_kind(cfg), views)
    set_views(pipeline, views, mirrored_ok=trains_with_flip(cfg) is not False)
    check_crop_fits(pipeline, f'{config_name(cfg)}, test pipeline with views {views}')
    return pipeline


def config_test_pipeline(cfg) -> List[dict]:
    """A deep copy of the config's test pipeline (``test_dataloader``, else
    ``val_dataloader``)."""
    for key in ('test_dataloader', 'val_dataloader'):
        dataset = dataset_cfg(cfg.get(key))
        if dataset is not None and dataset.get('pipeline'):
            return copy.deepcopy([dict(t) for t in dataset['pipeline']])
    raise ValueError(f'{config_name(cfg)}: no test_dataloader.dataset.pipeline (nor '
                     f'val_dataloader...) to preprocess videos with')


def inference_pipeline(cfg, views: Optional[str] = None) -> List[dict]:
    """The config's test pipeline adapted to bare videos (see the module docstring):
    decord transforms -> their safe versions, caption tokenization removed,
    ``PackActionInputs`` collecting only the frames, ``views`` applied when given."""
    out = []
    for t in config_test_pipeline(cfg):
        t = dict(t)
        if t['type'] in TEXT_TRANSFORMS:
            continue
        t['type'] = SAFE_TRANSFORMS.get(t['type'], t['type'])
        if t['type'] == 'PackActionInputs' and t.get('collect_keys'):
            keys = tuple(k for k in t['collect_keys'] if k != 'text')
            t['collect_keys'] = keys or None
        out.append(t)
    if views is not None:
        set_config_views(cfg, out, views)
    else:
        check_crop_fits(out, f'{config_name(cfg)}, test pipeline')
    return out


def build_transforms(steps: Sequence[dict], scope: str = 'mmaction') -> list:
    """The transforms of the configs ``steps``, each class looked up in the ``TRANSFORMS``
    registry of ``scope`` (the config's ``default_scope``; MMAction2's, where stan_mm
    registers its own) and its parents: what ``Compose`` builds under that default scope,
    without switching mmengine's default scope, which is one for the whole process
    (``DefaultScope.overwrite_default_scope`` around ``Compose``, from several threads at
    once, put back the scope one thread saw in the middle of another's switch, so that
    the other library's scope stayed replaced)."""
    import importlib

    from mmengine.registry import TRANSFORMS as ROOT
    try:
        importlib.import_module(f'{scope}.registry')    # (its registry joins the tree)
    except ImportError:
        pass
    registry = ROOT if scope == ROOT.scope else ROOT._search_child(scope)
    if registry is None:
        raise KeyError(f'default_scope {scope!r} of the config: no transform registry of '
                       f'that scope (stan-mm configs use \'mmaction\')')
    built = []
    for step in steps:
        args = dict(step)
        kind = args.pop('type')
        try:
            cls = registry.get(kind) if isinstance(kind, str) else kind
        except RuntimeError:        # (mmengine's "Failed to get X")
            cls = None
        if cls is None:
            raise KeyError(f'test pipeline: type {kind!r} is not a transform of the '
                           f'{scope!r} registry (stan_mm registers in MMAction2\'s); check '
                           f'the type names of the config\'s test_dataloader.dataset.pipeline')
        built.append(cls(**args))
    return built


class VideoPipeline:
    """``pipeline(path)`` -> ``dict(inputs=..., data_samples=...)`` for one video file,
    what :func:`~stan_mm.apis.embed.embed_video_batch` and ``model.data_preprocessor``
    take: ``inputs`` is uint8 frames as the config's ``FormatShape`` lays them out, e.g.
    ``[V, C, T, H, W]`` for a recognition config (``'NCTHW'``, V test views) and
    ``{'imgs': [T, C, H, W]}`` for a retrieval config (``'NCHW'``, one view).

    Any failure while reading or transforming a video is raised as
    :class:`~stan_mm.datasets.transforms.video_io.VideoReadError` ``(filename, reason)``.

    Args:
        cfg: the model's config (``model.cfg`` of :func:`~stan_mm.apis.init_model`), or
            the path of a config file.
        views: ``'CLIPSxCROPS'`` or ``None`` (the config's test views).

    The transforms are built in the config's ``default_scope`` (``mmaction``) whatever
    scope is current, and the current one is not touched (:func:`build_transforms`): a
    pipeline can be made before any model (or runner) set the scope, and by several
    threads at once.
    """

    def __init__(self, cfg, views: Optional[str] = None):
        from mmengine.dataset import Compose
        if isinstance(cfg, (str, os.PathLike)):
            from .inference import load_config
            cfg = load_config(os.fspath(cfg))
        self.steps = inference_pipeline(cfg, views)
        self.views = views
        self.compose = Compose(build_transforms(self.steps,
                                                cfg.get('default_scope', 'mmaction')))

    def __call__(self, filename: str, sample_idx: int = 0) -> dict:
        results = dict(filename=filename, start_index=0, modality='RGB',
                       sample_idx=sample_idx)
        for step, transform in zip(self.steps, self.compose.transforms):
            try:
                results = transform(results)
            except VideoReadError:
                raise
            except Exception as e:  # noqa: BLE001  (any transform failure: name the file)
                raise VideoReadError(filename, f'{step["type"]} of the test pipeline failed '
                                     f'({type(e).__name__}: {e})') from e
            if results is None:
                raise VideoReadError(filename, f'{step["type"]} of the test pipeline returned '
                                     f'None')
        return results

    def describe(self) -> str:
        """The transforms, one line (for logs and meta.json)."""
        return ' -> '.join(t['type'] for t in self.steps)
