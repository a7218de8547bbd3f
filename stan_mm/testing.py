"""Tiny-model helpers shared by the tests (CPU, random weights, no downloads).

- :func:`tiny_clip_cfg` / :func:`tiny_clip`: a small ViT CLIP (open_clip) for fast tests.
- ``save_*``: write a CLIP's weights in each layout users have (OpenAI state dict and
  TorchScript archive, open_clip ``.pt`` / ``.safetensors``), so loaders can be tested.
- :func:`tiny_hf_clip_config`: a ``transformers.CLIPConfig`` with matching sizes
  (transformers is imported only inside the functions that need it).
- :func:`free_port`, :func:`run_ranks`: distributed tests on CPU.
- :func:`load_script`: a script of the repository (``tools/...``) imported as a module.
"""
import contextlib
import copy
import logging
from typing import Dict, Optional

import torch
from torch import nn

_TINY = {
    'embed_dim': 32,
    'quick_gelu': True,
    'vision_cfg': {'image_size': 32, 'patch_size': 8, 'width': 64, 'layers': 3,
                   'head_width': 16},
    'text_cfg': {'context_length': 77, 'vocab_size': 49408, 'width': 32, 'heads': 2,
                 'layers': 2},
}


def tiny_clip_cfg(**overrides) -> Dict:
    """A tiny clip_cfg (embed 32; vision 32x32 images, patch 8, width 64, 3 layers, 4 heads
    of 16; text width 32, 2 heads, 2 layers, context 77, CLIP's vocab 49408; QuickGELU).

    Overrides: top-level keys replace (``embed_dim=16``, ``quick_gelu=False``); the dicts
    ``vision_cfg=``/``text_cfg=`` are merged into the defaults; ``vision_<key>=`` /
    ``text_<key>=`` set one field (``vision_layers=4``, ``text_width=64``).

    Note: heads are not stored in weights, so a checkpoint of this default model cannot
    have its architecture inferred (widths below 64); pass the cfg as ``arch`` or use
    widths that are multiples of 64 with head width 64.
    """
    cfg = copy.deepcopy(_TINY)
    for key, value in overrides.items():
        if key in ('vision_cfg', 'text_cfg'):
            cfg[key].update(value)
        elif key.startswith('vision_') and key[7:] not in ('cfg', ):
            cfg['vision_cfg'][key[7:]] = value
        elif key.startswith('text_') and key[5:] not in ('cfg', ):
            cfg['text_cfg'][key[5:]] = value
        else:
            cfg[key] = value
    return cfg


def tiny_clip(seed: int = 0, **overrides) -> nn.Module:
    """A randomly initialized open_clip ``CLIP`` (eval mode) with :func:`tiny_clip_cfg`."""
    from open_clip.model import CLIP
    cfg = tiny_clip_cfg(**overrides)
    torch.manual_seed(seed)
    model = CLIP(embed_dim=cfg['embed_dim'], vision_cfg=dict(cfg['vision_cfg']),
                 text_cfg=dict(cfg['text_cfg']), quick_gelu=cfg['quick_gelu'])
    # open_clip leaves LayerNorms at 1/0 and logit_scale constant; randomize them too so
    # that a loader that drops them is caught.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if 'ln_' in name or name == 'logit_scale':
                p.add_(0.1 * torch.randn_like(p))
            elif name.endswith('bias'):
                p.normal_(0, 0.02)
    return model.eval()


def rounded_fp16(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose floating parameters went through fp16 and back (the
    reference for weights that were stored in fp16)."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(p.half().float())
    return ref


# ---------------------------------------------------------------------------------------
# writers
# ---------------------------------------------------------------------------------------
def save_openai_state_dict(model: nn.Module, path) -> None:
    """``torch.save`` of the state dict with every floating tensor in fp16, as OpenAI stores
    its released weights."""
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    torch.save(sd, path)


class _OpenAIArchive(nn.Module):
    """Module with the attribute layout of OpenAI's scripted CLIP: the CLIP's top-level
    modules/parameters plus the ``input_resolution``, ``context_length`` and ``vocab_size``
    entries OpenAI's archives carry, so its state dict keys are OpenAI's."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        for name in ('visual', 'transformer', 'token_embedding', 'ln_final'):
            setattr(self, name, getattr(clip, name))
        self.positional_embedding = clip.positional_embedding
        self.text_projection = clip.text_projection
        self.logit_scale = clip.logit_scale
        image_size = clip.visual.image_size
        image_size = image_size[0] if isinstance(image_size, (tuple, list)) else image_size
        self.register_buffer('input_resolution', torch.tensor(image_size))
        self.register_buffer('context_length', torch.tensor(clip.positional_embedding.shape[0]))
        self.register_buffer('vocab_size', torch.tensor(clip.token_embedding.weight.shape[0]))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)


def save_openai_torchscript(model: nn.Module, path, fp16: bool = True) -> None:
    """A TorchScript archive like OpenAI's ``ViT-B-16.pt``: ``torch.jit.trace`` of a module
    with OpenAI's state dict keys (fp16 weights by default)."""
    import warnings
    archive = _OpenAIArchive(copy.deepcopy(model)).eval()
    if fp16:
        archive = archive.half()
    size = archive.input_resolution.item()
    example = torch.zeros(1, 3, size, size, dtype=torch.float16 if fp16 else torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        traced = torch.jit.trace(archive, example, check_trace=False)
        torch.jit.save(traced, str(path))


def save_open_clip(model: nn.Module, path, wrap: bool = False) -> None:
    """open_clip layout: ``.safetensors`` when ``path`` ends so, else ``torch.save``; with
    ``wrap`` like open_clip's training checkpoints: ``{'epoch', 'name', 'state_dict'}`` with
    ``module.`` prefixes."""
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    if str(path).endswith('.safetensors'):
        from safetensors.torch import save_file
        save_file(sd, str(path))
        return
    if wrap:
        sd = {'epoch': 3, 'name': 'tiny', 'state_dict': {'module.' + k: v for k, v in sd.items()}}
    torch.save(sd, path)


def tiny_hf_clip_config(hidden_act: str = 'quick_gelu', vision_width: int = 128,
                        vision_heads: int = 2, text_width: int = 64, text_heads: int = 1,
                        layers: int = 2, projection_dim: int = 32, image_size: int = 32,
                        patch_size: int = 8, eos_token_id: Optional[int] = 2):
    """A ``transformers.CLIPConfig`` for a tiny CLIP. ``eos_token_id=2`` selects HF's
    original pooling (argmax of the token ids, as OpenAI's CLIP); widths are multiples of 64
    so that a weights file alone can have its heads inferred."""
    from transformers import CLIPConfig
    text = dict(hidden_size=text_width, intermediate_size=4 * text_width,
                num_hidden_layers=layers, num_attention_heads=text_heads,
                max_position_embeddings=77, vocab_size=49408, hidden_act=hidden_act)
    if eos_token_id is not None:
        text['eos_token_id'] = eos_token_id
    vision = dict(hidden_size=vision_width, intermediate_size=4 * vision_width,
                  num_hidden_layers=layers, num_attention_heads=vision_heads,
                  image_size=image_size, patch_size=patch_size, hidden_act=hidden_act)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


def tiny_hf_clip(seed: int = 0, **config_kwargs) -> nn.Module:
    """A randomly initialized ``transformers.CLIPModel`` (eval) from
    :func:`tiny_hf_clip_config`; LayerNorms randomized as in :func:`tiny_clip`."""
    from transformers import CLIPModel
    torch.manual_seed(seed)
    model = CLIPModel(tiny_hf_clip_config(**config_kwargs))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if 'layer_norm' in name or 'layrnorm' in name or name == 'logit_scale':
                p.add_(0.1 * torch.randn_like(p))
            elif name.endswith('bias'):
                p.normal_(0, 0.02)
    return model.eval()


def load_script(path: str, name: Optional[str] = None):
    """Import the script ``path`` (absolute, or relative to the repository root, e.g.
    ``'tools/test.py'``) as a new module object, so that a test can call its ``main(argv)``
    and helpers. ``name``: the module's ``__name__`` (default one derived from the path);
    the module is not added to ``sys.modules``, and each call executes the script anew."""
    import importlib.util
    import os.path as osp
    import re
    repo = osp.dirname(osp.dirname(osp.abspath(__file__)))
    full = path if osp.isabs(path) else osp.join(repo, path)
    if name is None:
        name = '_script_' + re.sub(r'\W', '_', osp.relpath(full, repo))
    spec = importlib.util.spec_from_file_location(name, full)
    if spec is None or spec.loader is None:
        raise ImportError(f'cannot import {full} as a module (not a .py file?)')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it), for a test's
    ``MASTER_PORT`` / torchrun ``PORT``, so that concurrent distributed tests do not clash."""
    import socket
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _rank_main(target, rank: int, world_size: int, init_file: str, queue) -> None:
    """One rank of :func:`run_ranks`: a gloo process group, ``target``, its result (or the
    traceback of what it raised) on ``queue``."""
    import traceback
    import torch.distributed as dist
    try:
        dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank,
                                world_size=world_size)
        result = target(rank, init_file)
        dist.destroy_process_group()
        queue.put((rank, result))
    except BaseException:  # noqa: BLE001 (reported to the test, which fails on it)
        queue.put((rank, traceback.format_exc()))


def run_ranks(target, init_file: str, world_size: int = 2, timeout: float = 120) -> Dict:
    """Run ``target(rank, init_file)`` in ``world_size`` forked processes, each in a gloo
    process group of them all (``init_method='file://' + init_file``), and return
    ``{rank: what target returned}`` (a traceback string where it raised)."""
    import multiprocessing as mp
    ctx = mp.get_context('fork')
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank_main,
                         args=(target, rank, world_size, str(init_file), queue))
             for rank in range(world_size)]
    for p in procs:
        p.start()
    import queue as queues
    try:
        return dict(queue.get(timeout=timeout) for _ in procs)
    except queues.Empty:
        codes = {rank: p.exitcode for rank, p in enumerate(procs)}
        raise RuntimeError(f'run_ranks: not every rank reported within {timeout} s; exit '
                           f'codes {codes} (None: still running)') from None
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()


@contextlib.contextmanager
def logged_warning_messages():
    """The messages (str) of the warnings logged through mmengine's current logger while
    the block runs."""
    from mmengine.logging import MMLogger
    logger, records = MMLogger.get_current_instance(), []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda r: records.append(r.getMessage())
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
