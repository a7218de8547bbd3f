"""Exception types shared across stan-mm that describe the user's input, not a bug.

A leaf module (it imports nothing of stan-mm), so that models, datasets and hooks can
raise these without import cycles; :func:`stan_mm.utils.cli.user_errors` lists them, so
``tools/train.py``, ``tools/test.py`` and the other tools print their message on one line
(exit status 2) instead of a traceback through mmengine's registry.
"""


class ConfigValueError(ValueError):
    """A config value a stan-mm class refuses when it is built (``model.backbone.depth=99``,
    an unknown ``temporal_module``): the message names the class and argument and says
    what is expected.

    A plain :class:`ValueError` subclass taking the message as its only argument: code
    catching ``ValueError`` keeps working, and a wrapper that re-creates an exception as
    ``type(e)(message)`` (mmengine's registry did in some versions) keeps the type."""


class PipelineKeyError(ConfigValueError, KeyError):
    """A step of a dataset's pipeline needs a results key that no step before it set (a
    frame sampler before the video init step, a decode step without a sampler): the
    message names the dataset, the sample (index and video file), the step and the steps
    that make the key.

    Also a :class:`KeyError` (what the step raised), but printed as its message without
    the quotes ``KeyError`` adds. Takes the message as its only argument, so PyTorch keeps
    the type when it re-raises it from a DataLoader worker."""

    def __str__(self) -> str:
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()
