"""glam_fast.ops._triton_compat: Triton 3.6's interpreter converted scalars with int(array)."""

import operator
from types import SimpleNamespace

import numpy as np
import pytest

from glam_fast.ops._triton_compat import fix_interpreter_scalar_index

interpreter = pytest.importorskip("triton.runtime.interpreter")


class _Scope:
    def set_attr(self, obj, name, value):
        setattr(obj, name, value)


def _old_patch_lang_tensor(tensor, scope):  # what Triton 3.6 does
    scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data))


def test_the_old_conversion_is_wrapped_to_squeeze(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(interpreter, "_patch_lang_tensor", _old_patch_lang_tensor)
    assert fix_interpreter_scalar_index()

    class Tensor:
        handle = SimpleNamespace(data=np.array([7], dtype=np.int32))  # a scalar, as the interpreter holds it

    interpreter._patch_lang_tensor(Tensor, _Scope())
    assert operator.index(Tensor()) == 7
    assert list(range(operator.index(Tensor()))) == list(range(7))
    assert not fix_interpreter_scalar_index()  # once only


def test_nothing_changes_without_the_interpreter_or_the_old_code(monkeypatch):
    monkeypatch.setattr(interpreter, "_patch_lang_tensor", _old_patch_lang_tensor)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not fix_interpreter_scalar_index()
    assert interpreter._patch_lang_tensor is _old_patch_lang_tensor

    def newer(tensor, scope):
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(interpreter, "_patch_lang_tensor", newer)
    assert not fix_interpreter_scalar_index()
    assert interpreter._patch_lang_tensor is newer
