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

__all__ = [
    "AFCN",
    "GLAM",
    "MSSENet",
    "BackendUnavailableError",
    "__version__",
    "backend",
    "build_info",
    "info",
    "MFCC",
    "LogMel",
    "GLAMRecipe",
    "MSSENetRecipe",
    "AFCNRecipe",
    "load_pretrained",
    "optimize",
    "Scorer",
]

# Imported on first access, so `import glam_fast` stays fast and needs neither soundfile nor soxr.
_LAZY_MODULES = ("audio", "data", "features", "recipes", "inference", "scoring")
_LAZY_NAMES = {
    "MFCC": "features",
    "LogMel": "features",
    "GLAMRecipe": "recipes",
    "MSSENetRecipe": "recipes",
    "AFCNRecipe": "recipes",
    "load_pretrained": "pretrained",
    "Scorer": "scoring.pipeline",
}


def __getattr__(name: str):
    import importlib

    if name in _LAZY_MODULES:
        return importlib.import_module(f"glam_fast.{name}")
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(f"glam_fast.{_LAZY_NAMES[name]}"), name)
    raise AttributeError(f"module 'glam_fast' has no attribute {name!r}")
