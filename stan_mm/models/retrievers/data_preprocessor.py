"""``RetrievalDataPreprocessor``: batches videos ``[N, T, C, H, W]`` and caption tokens.

Why not MMAction2's ``ActionDataPreprocessor(format_shape='NCHW')``: it expects one tensor
per sample, not the ``dict(imgs=..., text=...)`` that ``PackActionInputs(collect_keys=
('imgs', 'text'))`` makes, and its ``stack_batch`` needs one shape for all samples, so the
``[n_i, L]`` caption tensors of a test batch (n_i captions per video) cannot be batched by
it (it raises on differing caption counts).
"""
from typing import List, Sequence, Union

import torch
from mmengine.model import BaseDataPreprocessor

from mmaction.registry import MODELS

from stan_mm.errors import ConfigValueError

#: CLIP's normalization in 0..255 pixel units (RGB)
CLIP_MEAN = (122.771, 116.746, 104.093)
CLIP_STD = (68.500, 66.632, 70.323)


@MODELS.register_module()
class RetrievalDataPreprocessor(BaseDataPreprocessor):
    """Stack and normalize video frames; stack or list caption tokens.

    Input (one batch from ``pseudo_collate``): ``data['inputs']`` is a dict with

    - ``video_key`` (default ``'imgs'``): a list of ``[T, C, H, W]`` tensors (the output of
      ``FormatShape(input_format='NCHW')`` with one clip), or an already stacked
      ``[N, T, C, H, W]`` tensor;
    - ``text_key`` (default ``'text'``, optional): a list of token tensors ``[L]`` (one
      caption per sample: training) or ``[n_i, L]`` (all captions of a video: testing).

    Output ``data['inputs']``: ``dict(imgs=[N, T, C, H, W] float, normalized over C,
    text=...)`` where ``text`` is a LongTensor ``[N, L]`` when every sample has one 1-D
    caption, else a list of N LongTensors ``[n_i, L]`` (1-D items become ``[1, L]``).

    Args:
        mean, std: per-channel statistics in pixel units (default: CLIP's).
        to_rgb: reverse the channel order (BGR input).
        video_key, text_key: keys of the packed inputs.
    """

    def __init__(self, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                 to_rgb: bool = False, video_key: str = 'imgs', text_key: str = 'text',
                 non_blocking: bool = False) -> None:
        super().__init__(non_blocking=non_blocking)
        if len(mean) != len(std):
            raise ConfigValueError(f'RetrievalDataPreprocessor: mean {mean} and std {std} must '
                                   'have one value per channel')
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1),
                             False)
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(-1, 1, 1),
                             False)
        self.to_rgb = to_rgb
        self.video_key = video_key
        self.text_key = text_key

    # ------------------------------------------------------------------ parts
    def stack_video(self, video: Union[torch.Tensor, List[torch.Tensor]]) -> torch.Tensor:
        """List of ``[T, C, H, W]`` (or ``[N, T, C, H, W]``) -> normalized float
        ``[N, T, C, H, W]``."""
        if isinstance(video, (list, tuple)):
            shapes = {tuple(v.shape) for v in video}
            if len(shapes) != 1 or len(next(iter(shapes))) != 4:
                raise ValueError(
                    'RetrievalDataPreprocessor: every video must be [T, C, H, W] with the '
                    f'same shape (FormatShape(input_format=\'NCHW\'), one clip, fixed crop '
                    f'size); got shapes {sorted(shapes)}')
            video = torch.stack(list(video))
        if video.dim() != 5:
            raise ValueError(f'RetrievalDataPreprocessor: videos must stack to '
                             f'[N, T, C, H, W], got {tuple(video.shape)}')
        C = self.mean.shape[0]
        if video.shape[2] != C:
            raise ValueError(f'RetrievalDataPreprocessor: videos {tuple(video.shape)} do not '
                             f'have {C} channels at dim 2 ([N, T, C, H, W]); use '
                             "FormatShape(input_format='NCHW') in the pipeline")
        if self.to_rgb:
            video = video.flip(2)
        return (video.float() - self.mean) / self.std

    def collect_text(self, text) -> Union[torch.Tensor, List[torch.Tensor]]:
        """Token tensors -> ``[N, L]`` (all 1-D) or a list of ``[n_i, L]``."""
        if isinstance(text, torch.Tensor):
            if text.dim() != 2:
                raise ValueError(f'RetrievalDataPreprocessor: a stacked text batch must be '
                                 f'[N, L], got {tuple(text.shape)}')
            return text.long()
        items = list(text)
        dims = {t.dim() for t in items}
        lengths = {t.shape[-1] for t in items}
        if not dims <= {1, 2} or len(lengths) != 1:
            raise ValueError(
                'RetrievalDataPreprocessor: captions must be token tensors [L] or [n, L] '
                'with one length L (CLIPBPETokenize(context_length=...)); got shapes '
                f'{sorted({tuple(t.shape) for t in items})}')
        if dims == {1}:
            return torch.stack(items).long()
        return [(t[None] if t.dim() == 1 else t).long() for t in items]

    # ------------------------------------------------------------------ forward
    def forward(self, data: dict, training: bool = False) -> dict:
        data = self.cast_data(data)
        inputs = data['inputs']
        if not isinstance(inputs, dict) or self.video_key not in inputs:
            raise KeyError(
                f'RetrievalDataPreprocessor: inputs must be a dict with {self.video_key!r} '
                f'(and {self.text_key!r}); use PackActionInputs(collect_keys=('
                f'{self.video_key!r}, {self.text_key!r}))')
        out = dict(imgs=self.stack_video(inputs[self.video_key]))
        if inputs.get(self.text_key) is not None:
            out['text'] = self.collect_text(inputs[self.text_key])
        return dict(inputs=out, data_samples=data.get('data_samples'))
