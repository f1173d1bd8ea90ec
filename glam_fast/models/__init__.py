"""The three reference models, in plain PyTorch: the numerics every fused kernel must match."""

from glam_fast.models.afcn import AFCN
from glam_fast.models.glam import GLAM
from glam_fast.models.mssenet import MSSENet

__all__ = ["AFCN", "GLAM", "MSSENet"]
