"""glam_fast: fused GPU kernels for speech emotion recognition models (GLAM, MS-SENet, AFCN).

The models are drop-in ``nn.Module``s whose parameters match the plain-PyTorch reference;
``glam_fast.backend(...)`` / ``GLAM_FAST_BACKEND`` chooses which implementation runs them.
"""

from glam_fast._extension import build_info
from glam_fast._version import __version__
from glam_fast.dispatch import BackendUnavailableError, backend
from glam_fast.info import info
from glam_fast.models import AFCN, GLAM, MSSENet
from glam_fast.optimize import optimize

__all__ = ["AFCN", "GLAM", "MSSENet", "BackendUnavailableError", "__version__", "backend", "build_info", "info", "optimize"]
