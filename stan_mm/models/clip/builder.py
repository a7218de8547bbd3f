"""``build_clip``: an open_clip ``CLIP`` from an arch (name or dict) and/or local weights.

Activation rule (weights do not store it), first that applies:

1. ``build_clip(..., quick_gelu=True/False)``;
2. the arch states it: ``quick_gelu`` key of a clip_cfg dict, a name ending in
   ``-quickgelu``, or an OpenAI spelling (``'ViT-B/16'``: OpenAI models use QuickGELU);
3. the weights hint at it (:mod:`.checkpoint`): HF ``config.json`` ``hidden_act``, open_clip
   ``open_clip_config.json``, or an OpenAI release (TorchScript archive, OpenAI archive
   entries, fp16 storage) -> QuickGELU;
4. an arch without that statement (``'ViT-B-16'``, a dict without ``quick_gelu``) means
   what open_clip means by it: GELU;
5. nothing at all (``arch=None``, fp32 weights without a hint) -> QuickGELU
   (:data:`DEFAULT_QUICK_GELU`), because STAN starts from OpenAI's CLIP; a warning says so.
   LAION/DataComp weights need ``arch='ViT-B-16'`` (GELU) or ``quick_gelu=False``.

The choice and its reason are logged. Weights are loaded in fp32; ``precision='fp16'`` or
``'bf16'`` then casts like open_clip does (LayerNorms compute in fp32).

``build_clip_vision``: the image tower (open_clip ``VisionTransformer``) alone, for what
needs only it (``CLIPSTAN``). Full CLIP weights go through ``build_clip`` (both towers
checked, the ``.visual`` returned) unless ``arch`` describes the image tower alone (a
clip_cfg without ``text_cfg``: the text tower's weights are then left unread); weights
that hold only the image tower (``visual.*`` keys, an open_clip ``model.visual`` state
dict, an HF ``CLIPVisionModelWithProjection``) build and strictly load the tower alone,
architecture inferred from the image tower (``embed_dim`` from its projection) or checked
against ``arch``. The activation follows the same rule; such files hint at it only through
an HF ``config.json`` ``hidden_act``, an ``open_clip_config.json`` or fp16 storage
(OpenAI), else rule 4 or 5 applies. ``build_clip`` refuses them with
:class:`CLIPTextTowerMissingError`, naming the file and the component that needs the text
tower.

A file with keys of neither CLIP tower besides ``visual.*`` (:attr:`~.checkpoint.
ClipCheckpoint.stray_keys`: ``branch.*`` of a trained stan-mm backbone, ``text.*`` of an
open_clip CustomTextCLIP, ...) is not image-tower-only: the errors list those keys and
say what the file looks like.
"""
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from mmengine.logging import print_log

from stan_mm.errors import ConfigValueError

from .arch import (SHAPE_FIELDS, VISION_SHAPE_FIELDS, infer_clip_cfg, infer_clip_shapes,
                   infer_vision_cfg, infer_vision_shapes, is_vision_only_arch, resolve_arch,
                   resolve_vision_arch, shape_mismatches)
from .checkpoint import (OUTSIDE_TOWER_KEYS, ClipCheckpoint, is_text_tower_key,
                         read_clip_checkpoint)

DEFAULT_QUICK_GELU = True
_PRECISIONS = {'fp32': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}
_MAX_LISTED = 25


class CLIPArchMismatchError(ValueError):
    """The given ``arch`` disagrees with the shapes of the ``pretrained`` weights."""


class CLIPKeysMismatchError(RuntimeError):
    """The weights have missing or unexpected keys for the built model (``strict=True``)."""


class CLIPArchMissingError(ValueError):
    """Neither an architecture nor a weights file to infer it from was given."""


class CLIPTextTowerMissingError(CLIPArchMismatchError):
    """The weights hold only CLIP's image tower, and the caller needs the text tower."""


#: who needs the text tower, when ``build_clip``'s caller does not say
_FULL_CLIP_USER = 'build_clip (it builds both CLIP towers)'


def _describe_stray_keys(ckpt: ClipCheckpoint) -> str:
    """What ``ckpt``'s keys of neither CLIP tower (:attr:`ClipCheckpoint.stray_keys`, not
    empty) are, and what the file looks like, for error messages."""
    stray = ckpt.stray_keys
    looks = []
    if any(k.startswith('branch.') for k in stray):
        looks.append(
            'branch.* is a STAN branch: this looks like the state dict of a trained '
            'stan-mm CLIPSTAN backbone (or of a model holding one), not CLIP weights: '
            'load it with load_from= (or give it to tools/test.py as CKPT)')
    if any(k.startswith('text.') for k in stray):
        looks.append(
            'text.* is the text tower of an open_clip CustomTextCLIP (a HuggingFace or '
            'other custom text model), which is not supported: STAN needs a ViT CLIP whose '
            'text tower is open_clip\'s own transformer (token_embedding, '
            'transformer.resblocks.N, ln_final, text_projection)')
    if not looks:
        looks.append('they are not CLIP weights (CLIP holds visual.*, the text tower '
                     f'token_embedding, transformer.*, ln_final, text_projection, and '
                     f'{", ".join(OUTSIDE_TOWER_KEYS)})')
    return (f'{ckpt.path}: besides the CLIP image tower (visual.*) these weights hold '
            f'{len(stray)} keys of neither CLIP tower [{_list(stray)}]; '
            + '; '.join(looks))


def require_text_tower(ckpt: ClipCheckpoint, needed_by: Optional[str] = None) -> None:
    """Raise :class:`CLIPTextTowerMissingError` when ``ckpt`` holds no text tower: the
    message names the file, what it holds and ``needed_by`` (the component that needs the
    text tower). A file without the text tower but with keys of neither tower is not
    image-tower-only: :class:`CLIPArchMismatchError` lists them.
    """
    if ckpt.has_text_tower:
        return
    if ckpt.stray_keys:
        raise CLIPArchMismatchError(
            f'{_describe_stray_keys(ckpt)}. {needed_by or _FULL_CLIP_USER} needs CLIP '
            f'weights with both towers.')
    layout = f'{ckpt.fmt} layout' + (', image tower saved alone' if ckpt.bare_vision else '')
    if ckpt.file_tensors is not None and ckpt.file_key is not None:
        held = f'{ckpt.file_tensors} tensors such as {ckpt.file_key}'
    else:       # a ClipCheckpoint made by hand: only the open_clip names are known
        names = sorted(ckpt.state_dict)
        held = (f'{len(names)} image-tower tensors (open_clip names) such as '
                f'{"visual.conv1.weight" if "visual.conv1.weight" in names else names[0]}')
    raise CLIPTextTowerMissingError(
        f'{ckpt.path}: these CLIP weights hold only the image tower ({layout}, '
        f'{held}); the text tower is '
        f'missing, and {needed_by or _FULL_CLIP_USER} needs it. Image-tower-only weights '
        f'serve the recognition backbone CLIPSTAN(pretrained=...) (build_clip_vision); for '
        f'text (STANRetriever, CLIPTextEncoder / TextClassifierHead, '
        f'tools/convert/clip_to_mm.py) pass the full CLIP weights (both towers) of the '
        f'same model. (A trained stan-mm / MMAction2 checkpoint goes to load_from, or to '
        f'tools/test.py as CKPT.)')


#: token ids of CLIP's BPE tokenizer (what stan-mm tokenizes captions and prompts with):
#: 49,152 merges + 256 bytes, <start_of_text>, <end_of_text>
CLIP_BPE_VOCAB_SIZE = 49408


def require_clip_bpe_vocab(clip: torch.nn.Module, pretrained, user: str) -> None:
    """Refuse loaded text-tower weights whose vocabulary is not CLIP's BPE vocabulary.

    stan-mm tokenizes text with CLIP's BPE tokenizer (49,408 ids) and pools the text
    tower at the highest id, ``<end_of_text>``. A text tower trained with another tokenizer
    (e.g. MetaCLIP's worldwide models, XLM-V, 901,629 ids) would read those ids as other
    tokens and give wrong text embeddings without any error, so it is refused by name.
    Randomly initialised towers (``pretrained=None``) are left alone (tests use small
    vocabularies).

    Args:
        clip: the built open_clip ``CLIP`` (its ``token_embedding`` ``[V, width]``).
        pretrained: the weights it was loaded from, or None.
        user: the component that tokenizes text, named in the message.

    Raises:
        CLIPArchMismatchError: ``V != 49408`` for loaded weights.
    """
    if pretrained is None:
        return
    vocab = int(clip.token_embedding.weight.shape[0])
    if vocab != CLIP_BPE_VOCAB_SIZE:
        raise CLIPArchMismatchError(
            f'{pretrained}: the text tower has a vocabulary of {vocab:,} tokens, but '
            f'{user} tokenizes text with CLIP\'s BPE tokenizer ({CLIP_BPE_VOCAB_SIZE:,} '
            f'tokens): this model was trained with another tokenizer (multilingual CLIPs '
            f'such as MetaCLIP worldwide use XLM-V), so its text embeddings would be wrong. '
            f'Use CLIP weights trained with the CLIP BPE tokenizer (OpenAI, LAION, '
            f'DataComp, MetaCLIP English); the image tower alone still serves '
            f'CLIPSTAN(pretrained=...) for recognition.')


def _weights_cfg(ckpt: ClipCheckpoint, takes: str) -> Dict:
    """The clip_cfg of both towers inferred from ``ckpt``, which holds a text tower (the
    callers check it with :func:`require_text_tower`). ``takes``, in the error: which
    weights the caller takes (``'build_clip takes CLIP weights with both towers'``)."""
    from stan_mm.utils.cli import describe
    try:
        return infer_clip_cfg(ckpt.state_dict, heads=ckpt.heads, source=ckpt.path)
    except KeyError as e:            # keys of another kind of file
        raise CLIPArchMismatchError(
            f'{ckpt.path}: {describe(e).rstrip(".")}. {takes} (a trained stan-mm / MMAction2 '
            'checkpoint goes to load_from, or to tools/test.py as CKPT)') from e
    except ValueError as e:          # CLIP weights whose shapes do not tell the architecture
        raise CLIPArchMismatchError(
            f'{ckpt.path}: {describe(e).rstrip(".")} (in a config: arch=...; '
            'tools/convert/clip_to_mm.py: --arch NAME or a JSON clip_cfg file)') from e


def load_clip_state_dict(path) -> Tuple[Dict[str, torch.Tensor], Dict]:
    """Read CLIP weights (OpenAI .pt/TorchScript, open_clip .pt/.bin/.safetensors, HF folder
    or file) as ``(open_clip-layout state dict in fp32, inferred clip_cfg)``.

    The clip_cfg's ``quick_gelu`` is the file's hint, or :data:`DEFAULT_QUICK_GELU` when the
    file gives none (rule 5 of the module docstring).
    """
    ckpt = read_clip_checkpoint(path)
    require_text_tower(ckpt, 'load_clip_state_dict (it returns the clip_cfg of both towers)')
    cfg = _weights_cfg(ckpt, 'load_clip_state_dict takes CLIP weights with both towers')
    cfg['quick_gelu'] = DEFAULT_QUICK_GELU if ckpt.quick_gelu is None else ckpt.quick_gelu
    return ckpt.state_dict, cfg


def _choose_activation(quick_gelu, arch, arch_cfg, ckpt) -> Tuple[bool, str, bool]:
    """-> (quick_gelu, reason, guessed)."""
    if quick_gelu is not None:
        return bool(quick_gelu), 'quick_gelu argument of build_clip', False
    if arch_cfg is not None and 'quick_gelu' in arch_cfg:
        return arch_cfg['quick_gelu'], f'stated by arch {arch!r}' if isinstance(
            arch, str) else 'quick_gelu key of the arch dict', False
    if ckpt is not None and ckpt.quick_gelu is not None:
        return ckpt.quick_gelu, ckpt.quick_gelu_reason, False
    if arch_cfg is not None:
        return False, ('open_clip\'s meaning of an arch without quick_gelu; use '
                       'arch "<name>-quickgelu" or quick_gelu=True for OpenAI weights'), \
            ckpt is not None
    return DEFAULT_QUICK_GELU, ('default for weights without an activation hint (STAN uses '
                                'OpenAI CLIP); for LAION/DataComp weights pass '
                                'arch=\'ViT-B-16\' (GELU) or quick_gelu=False'), True


def _list(keys) -> str:
    keys = list(keys)
    more = f' ... and {len(keys) - _MAX_LISTED} more' if len(keys) > _MAX_LISTED else ''
    return ', '.join(keys[:_MAX_LISTED]) + more


def _check_agreement(arch, arch_cfg: Dict, ckpt: ClipCheckpoint,
                     vision_only: bool = False) -> None:
    """Raise :class:`CLIPArchMismatchError` listing where ``arch`` (resolved to
    ``arch_cfg``) and the weights disagree: the shapes (``vision_only``: of the image tower
    and ``embed_dim``, when the file has a projection) and the heads a config file states."""
    what_weights = 'image tower weights' if vision_only else 'weights'
    try:
        weights = (infer_vision_shapes(ckpt.state_dict, require_proj=False) if vision_only
                   else infer_clip_shapes(ckpt.state_dict))
    except (KeyError, ValueError) as e:
        raise CLIPArchMismatchError(f'{ckpt.path}: cannot read the architecture of the '
                                    f'{what_weights} to compare with arch {arch!r}: '
                                    f'{e}') from e
    fields = [f for f in (VISION_SHAPE_FIELDS if vision_only else SHAPE_FIELDS)
              if 'embed_dim' in weights or f != ('embed_dim', )]
    problems = shape_mismatches(arch_cfg, weights, fields)
    v_heads = arch_cfg['vision_cfg']['width'] // arch_cfg['vision_cfg']['head_width']
    if vision_only:
        name, arch_heads, stated = 'vision heads', v_heads, ckpt.vision_heads
    else:
        name, arch_heads = '(vision heads, text heads)', (v_heads, arch_cfg['text_cfg']['heads'])
        stated = None if ckpt.heads is None else tuple(ckpt.heads)
    if stated is not None and arch_heads != stated:
        problems.append(f'{name}: arch {arch_heads}, config file {stated}')
    if problems:
        what = f'arch {arch!r}' if isinstance(arch, str) else 'the arch dict'
        raise CLIPArchMismatchError(
            f'{what} does not match the {what_weights} in {ckpt.path}:\n  '
            + '\n  '.join(problems) + '\nPass arch=None to infer the architecture from the '
            'weights, or the arch these weights were trained with.')


def _load_weights(model: torch.nn.Module, ckpt: ClipCheckpoint, strict: bool,
                  loaded_by: Optional[str] = None,
                  state_dict: Optional[Dict[str, torch.Tensor]] = None, what: str = 'CLIP',
                  prefix: str = '', unexpected_in_file: Sequence[str] = ()) -> None:
    """Load ``state_dict`` (default ``ckpt.state_dict``) into ``model``; missing and
    unexpected keys are listed (as the file names them: ``prefix`` + model key, plus the
    file's keys ``unexpected_in_file`` that were not offered to the model) and raise with
    ``strict``, else warn. The error suggests ``strict=False`` unless ``loaded_by`` names
    the component that loads the weights (it has no such option)."""
    sd = ckpt.state_dict if state_dict is None else state_dict
    try:
        result = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches raise even with strict=False
        raise CLIPArchMismatchError(f'weights in {ckpt.path} do not fit the built {what}: '
                                    f'{e}') from e
    missing = [prefix + k for k in result.missing_keys]
    unexpected = [prefix + k for k in result.unexpected_keys] + list(unexpected_in_file)
    if not missing and not unexpected:
        return
    msg = (f'{what} weights {ckpt.path} ({ckpt.fmt} layout): '
           f'{len(missing)} missing keys [{_list(missing)}]; '
           f'{len(unexpected)} unexpected keys [{_list(unexpected)}]')
    if strict:
        raise CLIPKeysMismatchError(msg + '. ' + (
            'Pass strict=False to load anyway (missing weights keep their random init).'
            if loaded_by is None else f'{loaded_by} loads CLIP weights strictly: pass the '
            f'CLIP weights of the model (a trained stan-mm / MMAction2 checkpoint goes to '
            f'load_from).'))
    print_log(msg, logger='current', level=logging.WARNING)


def _load_and_log(model: torch.nn.Module, ckpt: Optional[ClipCheckpoint], desc: str,
                  activation: Tuple[bool, str, bool], strict: bool,
                  loaded_by: Optional[str] = None, what: str = 'CLIP', held: str = '',
                  **load_kw) -> None:
    """Load ``ckpt`` into ``model`` (:func:`_load_weights`; ``None``: random init) and log
    what was built from what: ``desc`` (where the architecture came from, as
    :func:`resolve_arch` words it: ``architecture 'ViT-B-16'``), the file,
    ``held`` (what the file holds, when worth saying), the activation and its reason."""
    q, reason, guessed = activation
    act = 'QuickGELU' if q else 'GELU'
    if ckpt is None:
        print_log(f'{what} ({desc}): random init, activation {act} ({reason})',
                  logger='current')
        return
    if ckpt.ignored_keys:
        print_log(f'{ckpt.path}: ignored {len(ckpt.ignored_keys)} keys outside the CLIP '
                  f'weights: [{_list(ckpt.ignored_keys)}]', logger='current',
                  level=logging.WARNING)
    _load_weights(model, ckpt, strict, loaded_by, what=what, **load_kw)
    print_log(f'{what} ({desc}): loaded {ckpt.fmt} weights{held} from {ckpt.weights_file}; '
              f'activation {act} ({reason})', logger='current',
              level=logging.WARNING if guessed else logging.INFO)


def _finish(model: torch.nn.Module, cfg: Dict, precision: str) -> torch.nn.Module:
    from open_clip.model import convert_weights_to_lp
    if _PRECISIONS[precision] is not None:
        convert_weights_to_lp(model, dtype=_PRECISIONS[precision])
    model.clip_cfg = cfg
    return model


def build_clip(arch=None, pretrained=None, *, precision: str = 'fp32', strict: bool = True,
               quick_gelu: Optional[bool] = None, needed_by: Optional[str] = None,
               what: str = 'CLIP'):
    """Build an ``open_clip.model.CLIP`` (ViT) and optionally load local weights.

    Args:
        arch: ``None`` (infer from ``pretrained``), an open_clip model name (``'ViT-B-16'``,
            ``'ViT-B-16-quickgelu'``, ``'ViT-L-14-336'``, ...) or OpenAI spelling
            (``'ViT-B/32'``, ``'ViT-B/16'``, ``'ViT-L/14'``, ``'ViT-L/14@336px'``), built from
            open_clip's bundled configs (nothing is downloaded); or a clip_cfg dict
            ``{'embed_dim', 'quick_gelu'?, 'vision_cfg': {'image_size', 'patch_size',
            'width', 'layers', 'head_width'}, 'text_cfg': {'context_length', 'vocab_size',
            'width', 'heads', 'layers'}}``.
        pretrained: local weights file or directory in OpenAI, open_clip or HF layout
            (see :mod:`stan_mm.models.clip.checkpoint`), or ``None`` for random init.
        precision: ``'fp32'`` (default), ``'fp16'`` or ``'bf16'``.
        strict: raise :class:`CLIPKeysMismatchError` on missing/unexpected keys (listed);
            ``False`` only warns.
        quick_gelu: force the activation (see the module docstring for the default rule).
        needed_by: the component that asks for the full CLIP, named in the error when
            ``pretrained`` holds only the image tower (e.g. ``'STANRetriever (its text
            tower encodes the captions)'``).
        what: what the build line of the log (``<what> (architecture ...): random init``)
            and the loading errors call the model: a component that builds one names its
            own (``'CLIP text tower of model.cls_head.text_encoder'``), so that the two
            CLIPs of one model (a recognizer's backbone and text head) are told apart.

    Returns:
        ``open_clip.model.CLIP`` in fp32 (unless ``precision`` says otherwise), with the
        final clip_cfg in its ``clip_cfg`` attribute.

    Raises:
        ValueError: neither ``arch`` nor ``pretrained`` given; bad arch.
        FileNotFoundError: ``pretrained`` does not exist.
        CLIPTextTowerMissingError: ``pretrained`` holds only the image tower (use
            :func:`build_clip_vision` where only that is needed).
        CLIPArchMismatchError: ``arch`` and the weights disagree (fields listed).
        CLIPKeysMismatchError: missing/unexpected keys with ``strict=True``.
    """
    _check_args('build_clip', arch, pretrained, precision)
    ckpt = read_clip_checkpoint(pretrained) if pretrained is not None else None
    return build_clip_from_checkpoint(ckpt, arch, precision=precision, strict=strict,
                                      quick_gelu=quick_gelu, needed_by=needed_by, what=what)


def build_clip_from_checkpoint(ckpt: Optional[ClipCheckpoint], arch=None, *,
                               precision: str = 'fp32', strict: bool = True,
                               quick_gelu: Optional[bool] = None,
                               needed_by: Optional[str] = None, what: str = 'CLIP'):
    """:func:`build_clip` on weights already read with :func:`read_clip_checkpoint` (or
    ``None``: random init from ``arch``), for callers that also inspect the checkpoint
    (the converter), so that the file is read once."""
    if ckpt is not None:
        require_text_tower(ckpt, needed_by)
    return _build_full_clip(arch, ckpt, precision, strict, quick_gelu,
                            takes=f'{needed_by or "build_clip"} takes CLIP weights with both '
                            'towers', what=what)


def _check_args(fn: str, arch, pretrained, precision: str) -> None:
    if arch is None and pretrained is None:
        raise CLIPArchMissingError(
            f'{fn} needs arch (an open_clip/OpenAI name such as \'ViT-B/16\' or a '
            'clip_cfg dict) for a randomly initialized CLIP, pretrained (a local weights '
            'file or directory) to infer the architecture from, or both. In a config: the '
            'arch of the model part that builds this CLIP: model.backbone.arch (CLIPSTAN in '
            'a recognizer), model.arch (STANRetriever), model.cls_head.text_encoder.arch '
            '(a text head), e.g. --cfg-options model.backbone.arch=ViT-B/16')
    if precision not in _PRECISIONS:
        raise ConfigValueError(f'precision must be one of {list(_PRECISIONS)}, got {precision!r}')


def _build_full_clip(arch, ckpt: Optional[ClipCheckpoint], precision: str, strict: bool,
                     quick_gelu: Optional[bool], takes: str,
                     loaded_by: Optional[str] = None, what: str = 'CLIP'):
    """``build_clip`` after its checks, on weights already read (or none) that hold a text
    tower; ``takes`` as :func:`_weights_cfg`, ``loaded_by`` as :func:`_load_weights`,
    ``what`` as :func:`build_clip`."""
    from open_clip.model import CLIP
    arch_cfg = None
    if arch is not None:
        arch_cfg, desc = resolve_arch(arch)
        if ckpt is not None:
            _check_agreement(arch, arch_cfg, ckpt)
        cfg = arch_cfg
    else:
        cfg, desc = _weights_cfg(ckpt, takes), 'architecture inferred from the weights'

    activation = _choose_activation(quick_gelu, arch, arch_cfg, ckpt)
    q = activation[0]
    cfg = dict(cfg, quick_gelu=q)
    model = CLIP(embed_dim=cfg['embed_dim'], vision_cfg=dict(cfg['vision_cfg']),
                 text_cfg=dict(cfg['text_cfg']), quick_gelu=q,
                 cast_dtype=_PRECISIONS[precision],
                 **({'init_logit_scale': cfg['init_logit_scale']}
                    if 'init_logit_scale' in cfg else {}))
    _load_and_log(model, ckpt, desc, activation, strict, loaded_by, what=what)
    return _finish(model, cfg, precision)


# ---------------------------------------------------------------------------------------
# the image tower alone
# ---------------------------------------------------------------------------------------
def _refuse_no_projection(ckpt: ClipCheckpoint, loaded_by: Optional[str] = None) -> None:
    """Refuse an image tower without ``visual.proj``; ``loaded_by`` as
    :func:`_load_weights` (named, and no ``strict=False`` advice)."""
    if 'visual.proj' in ckpt.state_dict:
        return
    raise CLIPArchMismatchError(
        f'{ckpt.path}: the CLIP image tower in these weights has no output projection '
        f'(visual.proj; HuggingFace: visual_projection.weight). A HuggingFace '
        f'CLIPVisionModel checkpoint leaves it out (CLIPVisionModelWithProjection and '
        f'CLIPModel keep it). STAN\'s video embedding [N, E] is CLIP\'s projected embedding '
        f'and embed_dim E is read from the projection, so {loaded_by or "it"} needs it: use '
        f'the CLIPVisionModelWithProjection or full CLIP weights of the same model' + (
            ' (or pass arch and strict=False to start the projection from random weights).'
            if loaded_by is None else '.'))


def _vision_weights_cfg(ckpt: ClipCheckpoint, loaded_by: Optional[str] = None) -> Dict:
    _refuse_no_projection(ckpt, loaded_by)
    try:
        return infer_vision_cfg(ckpt.state_dict, vision_heads=ckpt.vision_heads,
                                source=ckpt.path)
    except (KeyError, ValueError) as e:
        from stan_mm.utils.cli import describe
        raise CLIPArchMismatchError(
            f'{ckpt.path}: {describe(e)} (reading the architecture of the CLIP image tower, '
            f'the only tower in these weights)') from e


def _tower_state_dict(ckpt: ClipCheckpoint) -> Dict[str, torch.Tensor]:
    """The ``visual.*`` weights without the prefix. The logit scale/bias and a text tower
    are not the image tower's: left out (logged); keys of neither tower are the
    checkpoint's ``stray_keys``."""
    sd, outside, text = {}, [], 0
    for k, v in ckpt.state_dict.items():
        if k.startswith('visual.'):
            sd[k[len('visual.'):]] = v
        elif k in OUTSIDE_TOWER_KEYS:
            outside.append(k)
        elif is_text_tower_key(k):
            text += 1
    if outside or text:
        print_log(f'{ckpt.path}: not part of the image tower, not loaded: '
                  + '; '.join(([f'the text tower ({text} keys)'] if text else [])
                              + outside), logger='current')
    return sd


def build_clip_vision(arch=None, pretrained=None, *, precision: str = 'fp32',
                      strict: bool = True, quick_gelu: Optional[bool] = None,
                      loaded_by: Optional[str] = None, what: str = 'CLIP image tower'):
    """Build CLIP's image tower (an open_clip ``VisionTransformer``), optionally loading
    local weights that may lack the text tower.

    Input ``[M, 3, S, S]`` images -> ``[M, E]`` embeddings (open_clip's ``encode_image``
    unnormalized), S = ``vision_cfg.image_size``, E = ``embed_dim``.

    * ``pretrained`` with both towers (any layout :func:`build_clip` reads) and an ``arch``
      that is ``None``, a name or a full clip_cfg dict, or no ``pretrained`` and an
      ``arch`` with ``text_cfg``: exactly ``build_clip(arch, pretrained, ...).visual``
      (both towers checked and loaded strictly; the text tower is then dropped).
    * ``pretrained`` with the image tower alone (``visual.*`` keys; an open_clip/OpenAI
      ``model.visual`` state dict; HF ``CLIPVisionModelWithProjection``, folder with its
      ``CLIPVisionConfig`` ``config.json`` or the weights file), or a vision clip_cfg
      ``{'embed_dim', 'vision_cfg', 'quick_gelu'?}`` without ``text_cfg`` (with or without
      weights, both towers or one): only the tower is built. Architecture: inferred from
      the tower (:func:`~.arch.infer_vision_cfg`; ``embed_dim`` from ``visual.proj``
      [W, E]) or ``arch`` (name, full or vision clip_cfg) checked against it. Loading is
      strict on the ``visual.*`` keys (missing and unexpected keys listed with the file;
      ``logit_scale`` and a text tower are left out); keys of neither tower
      (:attr:`~.checkpoint.ClipCheckpoint.stray_keys`) are refused first, with what the
      file looks like. A tower without the projection (HF ``CLIPVisionModel``) is refused
      unless ``arch`` is given with ``strict=False``. Activation: the rule of
      :func:`build_clip`.

    Args: as :func:`build_clip`, and
        loaded_by: the component that loads the weights (e.g. ``'CLIPSTAN
            (pretrained=...)'``): named in the errors, which then do not suggest
            ``strict=False`` (the component has no such option).
        what: as :func:`build_clip` (``'CLIP image tower of model.backbone'``).

    Returns:
        open_clip ``VisionTransformer``; built alone, it carries its vision clip_cfg (with
        ``quick_gelu``) in ``clip_cfg``.

    Raises:
        ValueError, FileNotFoundError, CLIPArchMismatchError, CLIPKeysMismatchError: as
        :func:`build_clip`.
    """
    _check_args('build_clip_vision', arch, pretrained, precision)
    ckpt = read_clip_checkpoint(pretrained) if pretrained is not None else None
    if not is_vision_only_arch(arch) and (ckpt is None or ckpt.has_text_tower):
        takes = (f'{loaded_by or "build_clip_vision"} takes full CLIP weights, or the '
                 'image tower alone')
        return _build_full_clip(arch, ckpt, precision, strict, quick_gelu, takes,
                                loaded_by, what=what).visual

    from open_clip.model import _build_vision_tower
    if ckpt is not None and ckpt.stray_keys and strict:
        raise CLIPKeysMismatchError(f'{_describe_stray_keys(ckpt)}. ' + (
            'Pass strict=False to load the image tower alone and leave them out.'
            if loaded_by is None else f'{loaded_by} takes CLIP weights (both towers, or '
            f'the image tower alone).'))
    arch_cfg = None
    if arch is not None:
        arch_cfg, desc = resolve_vision_arch(arch)
        if ckpt is not None:
            if strict:
                _refuse_no_projection(ckpt, loaded_by)
            _check_agreement(arch, arch_cfg, ckpt, vision_only=True)
        cfg = arch_cfg
    else:
        cfg, desc = (_vision_weights_cfg(ckpt, loaded_by),
                     'architecture inferred from the image tower weights')
    activation = _choose_activation(quick_gelu, arch, arch_cfg, ckpt)
    q = activation[0]
    cfg = dict(embed_dim=cfg['embed_dim'], quick_gelu=q, vision_cfg=dict(cfg['vision_cfg']))
    # the constructor open_clip.model.CLIP uses for its own .visual
    visual = _build_vision_tower(cfg['embed_dim'], dict(cfg['vision_cfg']), q,
                                 _PRECISIONS[precision])
    tower_kw = {}
    if ckpt is not None:
        tower_sd = _tower_state_dict(ckpt)
        held = ('text tower left out' if ckpt.has_text_tower else
                'image tower saved alone' if ckpt.bare_vision else 'no text tower')
        tower_kw = dict(state_dict=tower_sd, prefix='visual.', unexpected_in_file=ckpt.stray_keys,
                        held=f' ({held})')
    _load_and_log(visual, ckpt, desc, activation, strict, loaded_by, what=what, **tower_kw)
    return _finish(visual, cfg, precision)
