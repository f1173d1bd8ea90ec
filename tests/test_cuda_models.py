"""Whole GLAM / MS-SENet forwards on the cuda backend (glam_fast.ops.cuda_models).

Without a GPU: the composition through the extension's host emulation of each kernel, against
the reference model in float64; the dispatch wiring and the refusals (training mode, AFCN,
gradients). With a GPU (marked gpu): ``backend("cuda")`` on the real kernels.
"""

import contextlib
import copy

import pytest
import torch

import glam_fast
from glam_fast import AFCN, GLAM, MSSENet, dispatch
from glam_fast.dispatch import BackendUnavailableError
from glam_fast.ops import cuda_models
from tests.helpers import rel_err
from tests.test_cuda_ops import needs_cuda_build, randomize_batch_norms


def glam_model(seed: int = 0) -> GLAM:
    torch.manual_seed(seed)
    return randomize_batch_norms(GLAM(num_classes=5), torch.Generator().manual_seed(seed))


def mssenet_model(seed: int = 0) -> MSSENet:
    torch.manual_seed(seed)
    return randomize_batch_norms(MSSENet(num_classes=3, n_blocks=4), torch.Generator().manual_seed(seed))


def reference(model, x):
    """The model's own forward in float64 on a copy (the original keeps its dtype)."""
    with torch.no_grad(), glam_fast.backend("torch"):
        return copy.deepcopy(model).double()(x.double())


@needs_cuda_build
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_glam_emulated_equals_reference(dtype, tolerance):
    model = glam_model(seed=1)
    x = torch.randn(3, 1, 26, 57)
    with torch.no_grad():
        logits = cuda_models.glam_forward(model, x.to(dtype), emulate=True)
    assert logits.shape == (3, 5) and logits.dtype == dtype
    assert rel_err(logits, reference(model, x.to(dtype))) < tolerance


@needs_cuda_build
def test_glam_emulated_under_autocast_runs_in_the_autocast_dtype():
    model = glam_model(seed=2)
    x = torch.randn(2, 1, 26, 57)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = cuda_models.glam_forward(model, x, emulate=True)
    assert logits.dtype == torch.bfloat16
    assert rel_err(logits, reference(model, x)) < 3e-2


@needs_cuda_build
@pytest.mark.parametrize("time", [7, 40])
def test_mssenet_emulated_equals_reference(time):
    model = mssenet_model(seed=3)
    x = torch.randn(2, time, 39)
    with torch.no_grad():
        logits = cuda_models.mssenet_forward(model, x, emulate=True)
    assert logits.shape == (2, 3) and logits.dtype == torch.float32
    assert rel_err(logits, reference(model, x)) < 1e-5


@pytest.mark.parametrize("build", [glam_model, mssenet_model])
def test_training_mode_is_refused(build):
    model = build().train()
    x = torch.randn(2, 1, 26, 57) if isinstance(model, GLAM) else torch.randn(2, 9, 39)
    forward = cuda_models.glam_forward if isinstance(model, GLAM) else cuda_models.mssenet_forward
    with torch.no_grad(), pytest.raises(BackendUnavailableError, match="inference only"):
        forward(model, x, emulate=True)


def test_dispatch_wiring():
    dispatch._load_fused_ops()
    assert {"glam", "mssenet"} <= set(dispatch.registered_ops("cuda"))
    assert "afcn" not in dispatch.registered_ops("cuda")
    # On CPU tensors the cuda backend says why it cannot run, naming the device, not a missing op.
    with glam_fast.backend("cuda"), pytest.raises(BackendUnavailableError, match="needs CUDA tensors|without nvcc|not built"):
        glam_model().eval()(torch.randn(1, 1, 26, 57))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_models_on_the_cuda_backend_equal_reference(dtype):
    tolerance = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}[dtype]
    glam, mssenet = glam_model().cuda().eval(), mssenet_model().cuda().eval()
    x_glam, x_mssenet = torch.randn(64, 1, 26, 57, device="cuda"), torch.randn(16, 188, 39, device="cuda")
    want_glam, want_mssenet = reference(glam, x_glam), reference(mssenet, x_mssenet)
    # fp32 models; half precision the way users ask for it: autocast.
    half = torch.autocast("cuda", dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    with torch.no_grad(), glam_fast.backend("cuda"), half:
        got_glam, got_mssenet = glam(x_glam), mssenet(x_mssenet)
    assert got_glam.dtype == dtype
    assert rel_err(got_glam, want_glam) < tolerance
    assert rel_err(got_mssenet, want_mssenet) < tolerance
    with torch.no_grad(), glam_fast.backend("cuda"):
        with pytest.raises(BackendUnavailableError, match="no cuda implementation of 'afcn'"):
            AFCN().cuda().eval()(torch.randn(2, 3, 64, 64, device="cuda"))
