"""Accepting arrays from other libraries (CuPy, JAX, NumPy >= 1.22, ...) through DLPack.

The models' entry points take a ``torch.Tensor`` or any object that implements the DLPack
protocol (``__dlpack__`` / ``__dlpack_device__``); the latter is wrapped with
``torch.from_dlpack``, which shares the memory (no copy) and orders the producer's stream
before PyTorch's current stream. Results come back as torch tensors; ``cupy.from_dlpack(out)``
(or the consumer's equivalent) hands them back without a copy either.
"""

from __future__ import annotations

import torch


def is_dlpack_array(x: object) -> bool:
    """True for non-torch objects that can be handed over with torch.from_dlpack."""
    return not isinstance(x, torch.Tensor) and hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__")


def as_tensor(x: object, what: str = "input") -> torch.Tensor:
    """``x`` itself if it is a torch.Tensor; a zero-copy torch view of a DLPack array otherwise."""
    if isinstance(x, torch.Tensor):
        return x
    if is_dlpack_array(x):
        try:
            return torch.from_dlpack(x)
        except (RuntimeError, TypeError, BufferError) as err:
            raise TypeError(f"{what}: could not take the {type(x).__name__} over through DLPack without a copy ({err})") from err
    raise TypeError(f"{what} must be a torch.Tensor or an array with __dlpack__ (e.g. a CuPy array), got {type(x).__name__}")
