"""Loading the optional native extension `glam_fast._C` without ever failing an import."""

from __future__ import annotations

import functools
from types import ModuleType


@functools.lru_cache(maxsize=None)
def load() -> tuple[ModuleType | None, str]:
    """Return (the extension module or None, why it is missing: '' when loaded)."""
    try:
        from glam_fast import _C
    except ImportError as err:
        return None, f"native extension not built or not importable ({err})"
    return _C, ""


def has(name: str) -> bool:
    """Whether the extension is built and has the entry point ``name``."""
    module, _ = load()
    return module is not None and hasattr(module, name)


def require(name: str, what: str) -> ModuleType:
    """The extension module, which has the entry point ``name``; else a RuntimeError saying that
    ``what`` needs it and why it is missing."""
    module, reason = load()
    if module is None or not hasattr(module, name):
        raise RuntimeError(f"{what} needs glam_fast's native extension: {reason or f'built without {name}'}")
    return module


def build_info() -> dict:
    """What the native extension was compiled with.

    Keys: ``built`` (bool), ``reason`` (why not built), and when built: ``version``,
    ``cxx_compiler``, ``build_type``, ``cuda`` (bool: CUDA sources compiled), ``nvcc_version``,
    ``cuda_archs``, ``cuda_runtime_version``.
    """
    module, reason = load()
    if module is None:
        return {"built": False, "reason": reason, "cuda": False}
    return {"built": True, "reason": "", **module.build_info()}


_DTYPE_NAMES = {"torch.float32": "float32", "torch.float16": "float16", "torch.bfloat16": "bfloat16"}


def tensor_descriptor(t) -> tuple:
    """What the extension's bindings read of a torch tensor: (data pointer, shape, strides, dtype
    name, device type, device index); they check it before any kernel runs."""
    index = -1 if t.device.index is None else t.device.index
    return (t.data_ptr(), tuple(t.shape), tuple(t.stride()), _DTYPE_NAMES.get(str(t.dtype), str(t.dtype)), t.device.type, index)
