"""Run a dataset's pipeline so that a step missing a results key says where and why.

mmengine's ``Compose`` lets a transform's ``KeyError`` out as is: ``KeyError:
'total_frames'`` from inside a DataLoader worker, with no sample, no video file and no hint
that a pipeline step is missing or in the wrong order. :class:`PipelineContextMixin` runs the
same steps in the same way (a step returning ``None`` ends the pipeline with ``None``) and
turns a ``KeyError`` for one of the keys the video steps make (:data:`KEY_SOURCES`) that
the results do not hold into a
:class:`~stan_mm.errors.PipelineKeyError` naming the dataset, the sample index, the video
file, the step and the steps that make the key. Other errors (a ``KeyError`` of a lookup
inside a step included) pass through unchanged.
"""
from typing import Optional

from stan_mm.errors import PipelineKeyError

__all__ = ['PipelineContextMixin', 'run_pipeline']

_SAMPLER = ('a frame sampler (UniformSample, UniformSampleFrames, SampleFrames, '
            'SymmetricSample) after the video init step')
_DECODE = 'the decode step (SafeDecordDecode) after the frame sampler'
#: results key -> the pipeline step that sets it
KEY_SOURCES = {
    'total_frames': 'the video init step (SafeDecordInit), the first step of a video pipeline',
    'video_reader': 'the video init step (SafeDecordInit), the first step of a video pipeline',
    'avg_fps': 'the video init step (SafeDecordInit), the first step of a video pipeline',
    'frame_inds': _SAMPLER,
    'clip_len': _SAMPLER,
    'num_clips': _SAMPLER,
    'frame_interval': _SAMPLER,
    'imgs': _DECODE,
    'img_shape': _DECODE,
    'original_shape': _DECODE,
    'input_shape': 'FormatShape, after the resize/crop steps',
}


def _step_name(step) -> str:
    return type(step).__name__


def run_pipeline(pipeline, data, idx: int, dataset: str, test_mode: bool = False):
    """``pipeline(data)`` (an mmengine ``Compose``), step by step, for sample ``idx`` of
    ``dataset`` (a class name, for the message); see the module docstring."""
    steps = getattr(pipeline, 'transforms', None)
    if steps is None:
        return pipeline(data)
    video = data.get('filename') if isinstance(data, dict) else None
    for i, step in enumerate(steps):
        try:
            data = step(data)
        except KeyError as exc:
            # (checked on the failing step's input, not copied before every step: the
            # steps read and add keys, so a key missing now was missing when it started)
            key = exc.args[0] if len(exc.args) == 1 else None
            if not isinstance(data, dict) or key not in KEY_SOURCES or key in data:
                raise
            raise PipelineKeyError(
                _message(steps, i, key, idx, dataset, video, test_mode)) from exc
        if data is None:
            return None
    return data


def _message(steps, i: int, key: str, idx: int, dataset: str, video: Optional[str],
             test_mode: bool) -> str:
    earlier = ', '.join(f'{j} {_step_name(s)}' for j, s in enumerate(steps[:i])) or 'none'
    where = ('val_dataloader / test_dataloader' if test_mode else 'train_dataloader')
    fix = f'{key!r} is set by {KEY_SOURCES[key]}'
    sample = f'sample {idx}' + (f' ({video})' if video else '')
    return (f'{dataset} {sample}: pipeline step {i} ({_step_name(steps[i])}) needs '
            f'results[{key!r}], which no step before it set (steps before it: {earlier}). '
            f'{fix[0].upper()}{fix[1:]}: check the steps and their order in '
            f'{where}.dataset.pipeline')


class PipelineContextMixin:
    """``prepare_data`` of an mmengine dataset through :func:`run_pipeline` (mix in before
    the dataset class)."""

    def prepare_data(self, idx):
        return run_pipeline(self.pipeline, self.get_data_info(idx), idx, type(self).__name__,
                            bool(getattr(self, 'test_mode', False)))
