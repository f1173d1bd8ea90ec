"""The models accept DLPack arrays (CuPy, NumPy, ...) without a copy (glam_fast.interop)."""

import numpy as np
import pytest
import torch

from glam_fast import AFCN, GLAM, MSSENet
from glam_fast.interop import as_tensor, is_dlpack_array


class DLPackOnly:
    """An array that offers nothing but the DLPack protocol (as a CuPy array does to torch)."""

    def __init__(self, tensor: torch.Tensor):
        self._tensor = tensor

    def __dlpack__(self, *args, **kwargs):
        return self._tensor.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self._tensor.__dlpack_device__()


def test_as_tensor_shares_memory():
    x = torch.randn(2, 3, 4)
    view = as_tensor(DLPackOnly(x))
    assert isinstance(view, torch.Tensor) and view.data_ptr() == x.data_ptr()
    x[0, 0, 0] = 7.0
    assert view[0, 0, 0] == 7.0  # the same memory, not a copy
    assert as_tensor(x) is x
    assert is_dlpack_array(DLPackOnly(x)) and not is_dlpack_array(x) and not is_dlpack_array([1.0])


def test_as_tensor_rejects_other_objects():
    with pytest.raises(TypeError, match="must be a torch.Tensor or an array with __dlpack__"):
        as_tensor([[1.0, 2.0]], "GLAM input")


@pytest.mark.parametrize(
    "make_model, shape",
    [(lambda: GLAM(), (3, 1, 26, 57)), (lambda: MSSENet(n_blocks=2), (2, 11, 39)), (lambda: AFCN(), (1, 3, 63, 67))],
    ids=["glam", "mssenet", "afcn"],
)
def test_models_take_dlpack_arrays(make_model, shape):
    torch.manual_seed(0)
    model = make_model().eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(model(DLPackOnly(x)), expected)


def test_models_take_numpy_arrays_through_dlpack():
    torch.manual_seed(0)
    model = GLAM().eval()
    x = np.random.default_rng(0).standard_normal((2, 1, 26, 57), dtype=np.float32)
    with torch.no_grad():
        assert torch.equal(model(x), model(torch.from_numpy(x)))


def test_models_name_what_they_accept():
    with pytest.raises(TypeError, match="GLAM expects a torch.Tensor \\(or a DLPack array such as a CuPy array\\)"):
        GLAM()([[0.0] * 57] * 26)
    with pytest.raises(ValueError, match="expects input of shape"):
        GLAM()(DLPackOnly(torch.randn(2, 1, 26, 50)))


@pytest.mark.gpu
def test_models_take_cupy_arrays():
    cupy = pytest.importorskip("cupy")
    torch.manual_seed(0)
    model = GLAM().cuda().eval()
    x = cupy.random.standard_normal((4, 1, 26, 57), dtype=cupy.float32)
    with torch.no_grad():
        out = model(x)
        assert torch.equal(out, model(torch.from_dlpack(x)))
    assert torch.from_dlpack(x).data_ptr() == x.data.ptr
