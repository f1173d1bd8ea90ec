"""Compatibility with the Triton releases glam_fast supports (3.6 to 3.9)."""

from __future__ import annotations

import inspect
import os


def fix_interpreter_scalar_index() -> bool:
    """Under TRITON_INTERPRET=1, make Triton 3.6's interpreter convert scalar tensors as later
    releases do. It turns a scalar (a 1-element array) into a Python int with ``int(array)``,
    which NumPy >= 2.4 refuses for arrays of ndim > 0: every ``range()`` over a runtime bound in a
    kernel then fails. Later Triton squeezes the array first; this does the same. Changes nothing
    when the interpreter is off or already converts that way. Returns whether it patched."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    try:
        from triton.runtime import interpreter
    except ImportError:
        return False
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_glam_fast_fixed", False):
        return False
    try:
        if "int(self.handle.data))" not in inspect.getsource(original):
            return False
    except (OSError, TypeError):
        return False

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patch_lang_tensor._glam_fast_fixed = True
    interpreter._patch_lang_tensor = patch_lang_tensor
    return True
