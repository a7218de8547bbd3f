"""Text -> video search over a folder of videos, with a cached gallery.

The gallery embeddings are a feature folder (:mod:`stan_mm.apis.features`) under
``GALLERY/.stan_mm_cache/<model key>/`` (see :func:`gallery_cache_dir` for ``--cache``):
the first search embeds every video, later searches with the
same config + checkpoint reuse it and embed only videos that were added or changed.

Scores: ``sim = queries @ videos.T`` ``[Nq, Nv]``, the cosine of L2-normalized embeddings
(texts are the rows, the layout of ``tools/analysis/eval_retrieval.py --sim``). Ranking:
descending score; equal scores keep the gallery order (lower row of ``videos.txt`` first).
"""
import hashlib
import os.path as osp
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np

CACHE_DIRNAME = '.stan_mm_cache'


def top_k(sim: np.ndarray, k: int) -> np.ndarray:
    """``[Nq, Nv]`` scores -> ``[Nq, min(k, Nv)]`` column indices, best first; ties keep
    the lower index first (stable sort). ``k`` must be an integer >= 1 (``ValueError``)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f'top_k: k must be an integer >= 1 (results per query), got {k!r}')
    sim = np.asarray(sim)
    order = np.argsort(-sim, axis=1, kind='stable')
    return order[:, :min(k, sim.shape[1])]


@dataclass
class SearchResult:
    """``sim`` ``[Nq, Nv]``, ``ranking`` ``[Nq, k]`` (indices into ``video_paths``),
    ``video_paths`` (absolute), ``cache_dir`` (the gallery's feature folder)."""
    queries: List[str]
    sim: np.ndarray
    ranking: np.ndarray
    video_paths: List[str]
    cache_dir: str
    bad_videos: list


def gallery_cache_dir(gallery: str, key: str, cache: Optional[str] = None) -> str:
    """``GALLERY/.stan_mm_cache/<model key>``, or with ``cache``
    ``<cache>/<model key>-<gallery>`` (``<gallery>``: 8 hex digits of the gallery's
    absolute path, so that galleries sharing one cache folder keep their own embeddings)."""
    if cache is None:
        return osp.join(gallery, CACHE_DIRNAME, key)
    where = hashlib.sha256(osp.abspath(gallery).encode('utf-8', 'surrogateescape'))
    return osp.join(cache, f'{key}-{where.hexdigest()[:8]}')


def search_gallery(model, gallery: str, queries: Sequence[str], key: str,
                   cache: Optional[str] = None, top: int = 5, batch_size: int = 8,
                   num_workers: int = 2, progress: bool = True, extra_meta=None,
                   log: Callable[[str], None] = print,
                   precision: str = 'fp32') -> SearchResult:
    """Embed (or reuse) the gallery, embed the queries, rank (see the module docstring).

    Unreadable gallery videos are skipped and reported (``bad_videos``). A damaged cache
    file raises :class:`~stan_mm.apis.features.DamagedFeatureFolder` naming it (delete the
    cache folder: the gallery is embedded again). On an interrupt, the videos embedded so
    far stay in the cache folder and the next search reuses them.

    ``precision``: what the model computes in (``'fp32'``; ``'bf16'`` / ``'fp16'`` for a
    caller that runs it under autocast; ``tools/demo/search.py`` does not). The cache
    records it; a cache embedded in another precision (e.g. by ``tools/extract_features.py
    --amp`` into the cache folder) raises
    :class:`~stan_mm.apis.features.PrecisionMismatchError` naming the cache to delete,
    instead of mixing both precisions in one gallery.
    """
    from .embed import embed_texts, require_text_tower
    from .features import (DamagedFeatureFolder, PrecisionMismatchError, extract_features,
                           folder_lock, load_features)
    from .video import list_videos
    if not queries:
        raise ValueError('no query: give at least one text (--query "...")')
    require_text_tower(model)     # before the gallery pass, not after it
    root, paths = list_videos(gallery)
    out = gallery_cache_dir(gallery, key, cache)
    with folder_lock(out):   # no other run may rewrite the cache before it is read
        try:
            res = extract_features(model, out, videos=paths, video_root=root, key=key,
                                   batch_size=batch_size, num_workers=num_workers,
                                   skip_bad=True, progress=progress, extra_meta=extra_meta,
                                   precision=precision, log=log)
            feats = load_features(out)
        except DamagedFeatureFolder as e:   # the fix for a cache is not --overwrite
            raise DamagedFeatureFolder(e.path, e.reason, (
                f'{e.path} of the gallery cache is damaged or incomplete ({e.reason}); '
                f'delete {out} and search again (the gallery is embedded again)')) from None
        except PrecisionMismatchError as e:  # (nor --amp: the search tool has none)
            raise PrecisionMismatchError(e.out_dir, e.recorded, e.requested, (
                f'the gallery cache {out} holds embeddings made in {e.recorded}, and this '
                f'search embeds in {e.requested}: delete {out} and search again (the '
                f'gallery is embedded again in {e.requested})')) from None
    q = embed_texts(model, list(queries)).numpy()                      # [Nq, E]
    sim = q @ feats['videos'].T                                        # [Nq, Nv]
    return SearchResult(queries=list(queries), sim=sim, ranking=top_k(sim, top),
                        video_paths=feats['video_paths'], cache_dir=out, bad_videos=res.bad)
