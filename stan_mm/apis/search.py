"""Text -> video search over a folder of videos, with a cached gallery.

The gallery embeddings are a feature folder (:mod:`stan_mm.apis.features`) under
``GALLERY/.stan_mm_cache/<model key>/`` (see :func:`gallery_cache_dir` for ``--cache``):
the first search embeds every video, later searches with the
same config + checkpoint reuse it and embed only videos that were added or changed.

Scores: ``sim = queries @ videos.T`` ``[Nq, Nv]``, the cosine of L2-normalized embeddings
(texts are the rows, the layout of ``tools/analysis/eval_retrieval.py --sim``). Ranking:
descending score; equal scores keep the gallery order (lower row of ``videos.txt`` first).

With ``--cache DIR`` the folder's name holds a hash of the gallery's path; a gallery that
was moved (``mv``, a drive mounted elsewhere) takes over the cache folder of its old place
(:func:`adopt_moved_cache`), whose embeddings are then reused as for a moved gallery with
the cache inside it.
"""
import contextlib
import hashlib
import json
import os
import os.path as osp
import re
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np

CACHE_DIRNAME = '.stan_mm_cache'


def top_k(sim: np.ndarray, k: int) -> np.ndarray:
    """``[Nq, Nv]`` scores -> ``[Nq, min(k, Nv)]`` column indices, best first; ties keep
    the lower index first (stable sort). ``k`` must be an integer >= 1 (``ValueError``).

    Example:
        >>> top_k(np.array([[0.1, 0.9, 0.3], [0.5, 0.2, 0.5]]), 2)
        array([[1, 2],
               [0, 2]])
    """
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


def adopt_moved_cache(out: str, key: str, cache: str, root: str, paths: Sequence[str],
                      log: Callable[[str], None] = print) -> Optional[str]:
    """With ``--cache``: when this gallery has no cache folder ``out`` yet, rename to ``out``
    the cache folder of the same model (``<key>-<8 hex digits>`` in ``cache``) whose
    recorded gallery (``meta.json`` ``video_root``) no longer exists and whose videos are
    mostly (at least half of them, by path inside the gallery) this gallery's: the gallery
    was moved. Its embeddings are then reused (matched by path, size and modification time,
    as for any moved gallery); other videos are embedded. Returns the old folder, or None.
    A cache folder whose gallery still exists is never taken (a copy of a gallery gets its
    own cache)."""
    if osp.lexists(out) or not osp.isdir(cache):
        return None
    from .features import folder_lock, read_lines
    mine = {p for p in paths if not osp.isabs(p)}
    pattern = re.compile(re.escape(key) + r'-[0-9a-f]{8}')
    best, best_count = None, 0
    for name in sorted(os.listdir(cache)):
        folder = osp.join(cache, name)
        if not pattern.fullmatch(name) or folder == out or not osp.isdir(folder):
            continue
        try:
            with open(osp.join(folder, 'meta.json'), encoding='utf-8') as f:
                old_root = json.load(f).get('video_root')
            rows = read_lines(osp.join(folder, 'videos.txt'))
        except (OSError, ValueError, AttributeError):
            continue           # unfinished or damaged: not a gallery's cache to take over
        if not isinstance(old_root, str) or osp.exists(old_root) or not rows:
            continue
        count = sum(r in mine for r in rows)
        if 2 * count >= len(rows) and count > best_count:
            best, best_count = folder, count
    if best is None:
        return None
    with folder_lock(best, wait=True):   # not while another search writes it
        # another search of the moved gallery may have taken it over meanwhile (the lock
        # then made an empty folder at the old name: removed)
        if osp.lexists(out) or not osp.isfile(osp.join(best, 'meta.json')):
            with contextlib.suppress(OSError):
                os.rmdir(best)
            return None
        os.rename(best, out)
    log(f'gallery cache: {best} was made for the same videos at a place that no longer '
        f'exists; it is renamed to {out} and its {best_count} embeddings reused (the '
        f'gallery was moved)')
    return best


def search_gallery(model, gallery: str, queries: Sequence[str], key: str,
                   cache: Optional[str] = None, top: int = 5, batch_size: int = 8,
                   num_workers: int = 2, progress: bool = True, extra_meta=None,
                   log: Callable[[str], None] = print,
                   precision: str = 'fp32') -> SearchResult:
    """Embed (or reuse) the gallery, embed the queries, rank (see the module docstring).

    Args:
        model: from :func:`~stan_mm.apis.init_model` (``model.cfg`` gives the pipeline),
            with a text tower (a retrieval model, or a recognizer with a
            ``TextClassifierHead``).
        gallery: a folder of videos (scanned recursively) or a list file
            (:func:`~stan_mm.apis.video.list_videos`).
        queries: the ``Nq`` texts.
        key: the model's cache key, :func:`~stan_mm.apis.features.loaded_model_key`
            ``(model, checkpoint)``: the cache of another key is not reused. A model changed
            in memory (trained further in a notebook) needs a key of its own, e.g. that of
            the checkpoint it was saved to.
        cache: a folder for the gallery caches instead of ``GALLERY/.stan_mm_cache``
            (:func:`gallery_cache_dir`).
        top: results per query (``ranking`` columns).
        batch_size, num_workers: videos per model call, decoding processes (0: in this
            process).
        progress: a progress bar over the videos to embed (stderr).
        extra_meta: more entries for the cache's ``meta.json``.
        log: where the lines about the cache go (reused / embedded counts, moved gallery,
            skipped rows); ``print`` by default, ``logging.getLogger(...).info`` or
            ``lambda s: None`` to keep them out of a notebook.

    Returns:
        :class:`SearchResult`: ``sim`` ``[Nq, Nv]`` float32, ``ranking`` ``[Nq, min(top,
        Nv)]`` indices into ``video_paths``.

    Unreadable gallery videos are skipped and reported (``bad_videos``). A damaged cache
    file raises :class:`~stan_mm.apis.features.DamagedFeatureFolder` naming it (delete the
    cache folder: the gallery is embedded again). On an interrupt, the videos embedded so
    far stay in the cache folder and the next search reuses them. Rows of the cache that
    hold NaN or inf (written by an older stan-mm, which saved them as they were) are
    embedded again, with a one-line warning (``log``) naming the cache's ``videos.npy`` and
    their videos (a search used to rank them last without a word).

    ``precision``: what the model computes in (``'fp32'``; ``'bf16'`` / ``'fp16'`` for a
    caller that runs it under autocast; ``tools/demo/search.py`` does not). The cache
    records it; a cache embedded in another precision (e.g. by ``tools/extract_features.py
    --amp`` into the cache folder) raises
    :class:`~stan_mm.apis.features.PrecisionMismatchError` naming the cache to delete,
    instead of mixing both precisions in one gallery.

    Threads: searches of one gallery from several threads of a process (a web service
    sharing one model in eval mode) take turns on its cache: the first embeds the gallery,
    the others wait for it and reuse its embeddings (another process searching the same
    cache is refused with :class:`~stan_mm.apis.features.FeatureFolderError`). Pass
    ``progress=False`` there (one progress bar per thread on one stream), and
    ``num_workers=0`` to embed without forking data-loader processes from a process that
    runs other threads.
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
    if cache is not None:
        adopt_moved_cache(out, key, cache, root, paths, log=log)
    # no other run may rewrite the cache before it is read; a search of this gallery in
    # another thread of this process is waited for (its embeddings are then reused)
    with folder_lock(out, wait=True):
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
