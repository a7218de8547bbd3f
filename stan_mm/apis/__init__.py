"""Inference helpers shared by the user tools (``tools/extract_features.py``,
``tools/demo/search.py``, ``tools/demo/recognize.py``, ``tools/convert/clip_to_mm.py``).

- :func:`init_model`: config + checkpoint -> model in eval mode (``model.cfg``);
- :class:`VideoPipeline`, :func:`list_videos`: videos outside a dataset, preprocessed by the
  config's test pipeline;
- :func:`embed_video_batch`, :func:`embed_texts`: L2-normalized embeddings;
- :func:`extract_features`, :func:`load_features`: resumable feature folders;
- :func:`search_gallery`, :func:`recognize`: the demos' computations;
- :func:`convert_clip`: CLIP weights in any layout -> one stan-mm CLIP checkpoint.

Nothing here registers anything: import it directly (``from stan_mm.apis import ...``).
"""
from .clip_export import ClipExportReport, convert_clip  # noqa: F401
from .embed import embed_dim, embed_texts, embed_video_batch, text_tower  # noqa: F401
from .features import (DamagedFeatureFolder, ExtractionResult, FeatureFolderError,  # noqa: F401
                       FeatureWriteError, PrecisionMismatchError, extract_features,
                       load_features, loaded_model_key, model_key, sigterm_as_interrupt)
from .inference import (ModelLoadError, checkpoint_fingerprint, init_model,  # noqa: F401
                        load_config, model_kind)
from .recognition import recognize  # noqa: F401
from .search import search_gallery, top_k  # noqa: F401
from .video import VideoPipeline, inference_pipeline, list_videos, parse_views  # noqa: F401

__all__ = [
    'init_model', 'load_config', 'model_kind', 'checkpoint_fingerprint', 'ModelLoadError',
    'VideoPipeline', 'inference_pipeline', 'list_videos', 'parse_views',
    'embed_video_batch', 'embed_texts', 'embed_dim', 'text_tower',
    'extract_features', 'load_features', 'model_key', 'loaded_model_key',
    'sigterm_as_interrupt', 'ExtractionResult', 'FeatureFolderError', 'FeatureWriteError',
    'DamagedFeatureFolder', 'PrecisionMismatchError',
    'search_gallery', 'top_k', 'recognize', 'convert_clip', 'ClipExportReport',
]
