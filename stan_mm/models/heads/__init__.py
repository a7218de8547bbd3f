"""Recognition heads (registered in MMAction2's ``MODELS`` on import).

- :class:`TextClassifierHead`: cosine similarity to CLIP text embeddings of the class names
  (prompt templates, cached class embeddings, temperature, zero-shot class swap).
- A linear head needs nothing new: MMAction2's ``I3DHead`` with ``spatial_type=None``
  maps CLIPSTAN's ``[N, E]`` video embedding to ``[N, num_classes]`` (see
  ``configs/_base_/models/stan_recognition_b16.py``: ``linear_head``).
"""
from .classnames import (build_prompts, check_templates, load_classnames,  # noqa: F401
                         read_classnames_file)
from .text_classifier_head import TextClassifierHead  # noqa: F401

__all__ = ['TextClassifierHead', 'load_classnames', 'read_classnames_file', 'build_prompts',
           'check_templates']
