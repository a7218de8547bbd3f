"""Utilities: public STAN checkpoint conversion (:mod:`.stan_convert`) and FLOPs /
parameter counting (:mod:`.flops`)."""
from .stan_convert import (ConversionReport, convert_public_checkpoint,  # noqa: F401
                           export_public_checkpoint, mm_to_public, public_to_mm)

__all__ = ['ConversionReport', 'convert_public_checkpoint', 'export_public_checkpoint',
           'mm_to_public', 'public_to_mm']
