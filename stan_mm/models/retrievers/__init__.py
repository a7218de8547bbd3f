"""Video-text retrieval models (registered in MMAction2's ``MODELS``):
:class:`STANRetriever` (CLIPSTAN video tower + CLIP text tower, symmetric InfoNCE) and its
:class:`RetrievalDataPreprocessor`."""
from .data_preprocessor import CLIP_MEAN, CLIP_STD, RetrievalDataPreprocessor
from .stan_retriever import VIDEO_ID_KEYS, STANRetriever, build_text_tower, build_video_tower

__all__ = ['STANRetriever', 'RetrievalDataPreprocessor', 'CLIP_MEAN', 'CLIP_STD',
           'VIDEO_ID_KEYS', 'build_video_tower', 'build_text_tower']
