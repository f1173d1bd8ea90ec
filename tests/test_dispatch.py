"""The one dispatch point: requesting backends, resolving them per op and device, clear errors."""

import threading

import pytest
import torch

import glam_fast
from glam_fast import dispatch


@pytest.fixture
def dummy_op():
    """A fused op registered for the test only."""
    name = "test_dummy_op"
    dispatch.register(name, "triton")(lambda x: x)
    yield name
    dispatch._implementations.pop((name, "triton"))


def test_default_is_auto(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    assert dispatch.requested_backend() == "auto"


def test_environment_variable(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, " Torch ")
    assert dispatch.requested_backend() == "torch"
    monkeypatch.setenv(dispatch.ENV_VAR, "tritn")
    with pytest.raises(ValueError, match="GLAM_FAST_BACKEND must be one of auto, torch, triton, cuda; got 'tritn'"):
        dispatch.requested_backend()


def test_context_manager_nests_restores_and_beats_the_environment(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "torch")
    with glam_fast.backend("triton"):
        assert dispatch.requested_backend() == "triton"
        with glam_fast.backend("cuda"):
            assert dispatch.requested_backend() == "cuda"
        assert dispatch.requested_backend() == "triton"
    assert dispatch.requested_backend() == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        with glam_fast.backend("fast"):
            pass


def test_context_is_per_thread(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    seen = []
    with glam_fast.backend("torch"):
        thread = threading.Thread(target=lambda: seen.append(dispatch.requested_backend()))
        thread.start()
        thread.join()
        assert dispatch.requested_backend() == "torch"
    assert seen == ["auto"]


def test_auto_on_cpu_is_the_reference(dummy_op):
    with glam_fast.backend("auto"):
        assert dispatch.resolve(dummy_op, "cpu") == "torch"
        assert dispatch.resolve("glam", "cpu") == "torch"


def test_explicit_torch_always_resolves():
    with glam_fast.backend("torch"):
        assert dispatch.resolve("anything", "cpu") == "torch"


def test_triton_on_cpu_needs_the_interpreter(monkeypatch, dummy_op):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with glam_fast.backend("triton"), pytest.raises(dispatch.BackendUnavailableError, match="set TRITON_INTERPRET=1"):
        dispatch.resolve(dummy_op, "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with glam_fast.backend("triton"):
        assert dispatch.resolve(dummy_op, "cpu") == "triton"
        assert dispatch.implementation(dummy_op, "triton")(3) == 3


def test_missing_op_implementation_is_named(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with glam_fast.backend("triton"), pytest.raises(dispatch.BackendUnavailableError, match="no triton implementation of 'not_an_op'"):
        dispatch.resolve("not_an_op", "cpu")


def test_cuda_backend_on_cpu_tensors_says_why():
    with glam_fast.backend("cuda"), pytest.raises(dispatch.BackendUnavailableError, match="cuda"):
        dispatch.resolve("glam", "cpu")


def test_register_rejects_the_reference_backend():
    with pytest.raises(ValueError, match="only fused backends"):
        dispatch.register("x", "torch")


def test_backend_status_lists_every_concrete_backend():
    status = dispatch.backend_status("cpu")
    assert set(status) == {"torch", "triton", "cuda"}
    assert status["torch"] == ""
    assert status["cuda"]  # never runs CPU tensors


@pytest.mark.gpu
def test_auto_on_cuda_prefers_a_fused_backend(dummy_op):
    with glam_fast.backend("auto"):
        assert dispatch.resolve(dummy_op, torch.device("cuda")) == "triton"


def test_auto_on_cuda_keeps_the_reference_where_fused_was_measured_slower(monkeypatch):
    monkeypatch.setattr(dispatch, "_missing_for_op", lambda op, name, device: "")  # as if on a GPU
    with glam_fast.backend("auto"):
        assert dispatch.resolve("afcn", torch.device("cuda")) == "torch"
        assert dispatch.resolve("mssenet", torch.device("cuda")) == "triton"
        assert dispatch.resolve("afcn", torch.device("cpu")) == "torch"
    with glam_fast.backend("triton"):
        assert dispatch.resolve("afcn", torch.device("cuda")) == "triton"  # asked for explicitly


def test_models_compile_fullgraph_through_the_dispatch_point():
    """Dynamo cannot trace the ContextVar behind the request: resolve() must still compile."""
    torch.manual_seed(0)
    model = glam_fast.MSSENet(n_blocks=2).eval()
    x = torch.randn(2, 9, 39)
    with glam_fast.backend("torch"):
        expected = model(x)
        compiled = torch.compile(model, fullgraph=True, backend="eager")
        torch.testing.assert_close(compiled(x), expected)
    # the compiled graph must not keep running the torch path once another backend is asked for
    with glam_fast.backend("cuda"), pytest.raises(Exception, match="backend 'cuda' cannot run 'mssenet'"):
        compiled(x)
    with glam_fast.backend("cuda"), pytest.raises(Exception, match="backend 'cuda' cannot run 'mssenet'"):
        torch.compile(glam_fast.MSSENet(n_blocks=2).eval(), fullgraph=True, backend="eager")(x)
