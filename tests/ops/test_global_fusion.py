"""global_fusion_head (GLAM's gMLP block + ReLU + classifier, fused) against the float64 reference.

On the CPU the Triton kernels run under TRITON_INTERPRET=1 (tests/conftest.py), which computes fp32
GEMMs in IEEE fp32; kernel outputs and scratch start as NaN (GLAM_FAST_POISON=1), so an element a
kernel fails to write fails the comparison. Tolerances (TESTING.md), on the logits and on the
gradient of x and of every parameter: fp32 on the CPU, relative error <= 2e-5; half precision (and
fp32 on a GPU, where the GEMMs run in TF32), at most twice the error of the eager reference run in
the same precision. Gradients are compared at the ReLU mask the kernels used (head_with_relu_mask).
"""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch import nn

import glam_fast.ops.global_fusion as gf
from glam_fast.models.glam import GLAM, GlobalAwareFusion
from glam_fast.ops.global_fusion import global_fusion_head, global_fusion_head_ref
from tests.helpers import rel_err

N_TOKENS = 128
NAMES = ("x", "norm_weight", "norm_bias", "proj_in_weight", "proj_in_bias", "gate_norm_weight", "gate_norm_bias",
         "token_weight", "token_bias", "proj_out_weight", "proj_out_bias", "fc_weight", "fc_bias")


def random_head(n_seg: int, d: int, n_classes: int, seed: int = 0) -> list[torch.Tensor]:
    """x and the 12 parameters, random at the magnitudes of a trained network (token weight
    ~N(0, 1/128), not the near-zero init), in NAMES order, float32."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale, offset=0.0):
        return torch.randn(*shape, generator=g) * scale + offset

    return [
        rand(n_seg, N_TOKENS, d, scale=1.0),
        rand(d, scale=0.2, offset=1.0), rand(d, scale=0.2),
        rand(4 * d, d, scale=d**-0.5), rand(4 * d, scale=0.2),
        rand(2 * d, scale=0.2, offset=1.0), rand(2 * d, scale=0.2),
        rand(N_TOKENS, N_TOKENS, scale=N_TOKENS**-0.5), rand(N_TOKENS, scale=0.2, offset=1.0),
        rand(d, 2 * d, scale=(2 * d) ** -0.5), rand(d, scale=0.2),
        rand(n_classes, N_TOKENS * d, scale=(N_TOKENS * d) ** -0.5), rand(n_classes, scale=0.2),
    ]


def default_init_head(n_seg: int, d: int, n_classes: int, seed: int = 0) -> list[torch.Tensor]:
    """x and the parameters of a freshly constructed GLAM head (PyTorch default init; token weight
    ~U(±1e-3/128), token bias 1), in NAMES order, float32."""
    torch.manual_seed(seed)
    block = GlobalAwareFusion(d).layers[0].fn
    mlp = block.fn.fn
    fc = nn.Linear(N_TOKENS * d, n_classes)
    params = [block.norm.weight, block.norm.bias, mlp.proj_in[0].weight, mlp.proj_in[0].bias, mlp.sgu.norm.weight,
              mlp.sgu.norm.bias, mlp.sgu.weight[0], mlp.sgu.bias[0], mlp.proj_out.weight, mlp.proj_out.bias,
              fc.weight, fc.bias]
    return [torch.randn(n_seg, N_TOKENS, d)] + [p.detach().clone() for p in params]


def residual_out(x, norm_w, norm_b, w1, b1, gate_w, gate_b, ws, bs, w2, b2) -> torch.Tensor:
    """O = X + gMLP(LN(X)) of global_fusion_head_ref (before its ReLU), written out again."""
    d = x.shape[-1]
    z = F.layer_norm(x, (d,), norm_w, norm_b, 1e-5)
    res, gate = F.gelu(F.linear(z, w1, b1)).chunk(2, dim=-1)
    gate = torch.matmul(ws, F.layer_norm(gate, (2 * d,), gate_w, gate_b, 1e-5)) + bs[:, None]
    return F.linear(torch.tanh(gate) * res, w2, b2) + x


def head_with_relu_mask(mask: torch.Tensor, x, *params) -> torch.Tensor:
    """The head with ReLU(O) written as O·mask: with mask = (O > 0) the same function, whose
    gradient takes the ReLU's kink on the side the mask says. In half precision O rounds
    differently in every implementation, so elements with |O| within rounding of 0 fall on
    different sides of the kink; comparing gradients at the kernel's own mask keeps that coin flip
    (not an error of either implementation) out of the comparison."""
    *mlp_params, fc_w, fc_b = params
    out = residual_out(x, *mlp_params)
    return F.linear((out * mask.to(out.dtype)).flatten(1), fc_w, fc_b)


def test_reference_is_glams_head():
    """global_fusion_head_ref == fc(ReLU(gmlp(x)).flatten(1)) with GLAM's own modules."""
    torch.manual_seed(0)
    model = GLAM(shape=(26, 57), num_classes=5).double()
    block, mlp = model.gmlp.layers[0].fn, model.gmlp.layers[0].fn.fn.fn
    x = torch.randn(3, N_TOKENS, model.fusion_dim, dtype=torch.float64)
    expected = model.fc(F.relu(model.gmlp(x)).flatten(1))
    got = global_fusion_head_ref(x, block.norm.weight, block.norm.bias, mlp.proj_in[0].weight, mlp.proj_in[0].bias,
                                 mlp.sgu.norm.weight, mlp.sgu.norm.bias, mlp.sgu.weight[0], mlp.sgu.bias[0],
                                 mlp.proj_out.weight, mlp.proj_out.bias, model.fc.weight, model.fc.bias)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def check_against_float64(tensors: list[torch.Tensor], dtype: torch.dtype, device: str = "cpu") -> None:
    """Fused logits and the gradients of x and all 12 parameters vs the float64 reference.

    fp32 on the CPU (interpreter, IEEE GEMMs): relative error <= 2e-5. Otherwise the error must be
    at most twice that of the eager reference run the same way (in the half dtype; for fp32 on a GPU,
    with TF32 matmuls like the kernels)."""
    n_seg, n_classes = tensors[0].shape[0], tensors[-1].shape[0]
    grad_logits = torch.randn(n_seg, n_classes, generator=torch.Generator().manual_seed(1)).to(device)
    tensors = [t.to(device) for t in tensors]

    fused_in = [t.to(dtype).requires_grad_() for t in tensors]
    logits = global_fusion_head(*fused_in)
    assert logits.dtype == dtype and logits.shape == (n_seg, n_classes)
    fused_grads = torch.autograd.grad(logits, fused_in, grad_logits.to(dtype))
    with torch.no_grad():  # the ReLU mask the kernels used: their saved P = ReLU(X + Y)
        mask = torch.ops.glam_fast.global_fusion_head_forward(*[t.detach() for t in fused_in])[5] > 0

    def run(fn, run_dtype, *extra):
        inputs = [t.to(run_dtype).requires_grad_() for t in tensors]
        out = fn(*extra, *inputs)
        return out.detach(), torch.autograd.grad(out, inputs, grad_logits.to(run_dtype))

    ref_logits, _ = run(global_fusion_head_ref, torch.float64)
    _, ref_grads = run(head_with_relu_mask, torch.float64, mask)
    with torch.no_grad():  # the kernels' mask is the float64 one but for elements within rounding of 0
        ref_mask = residual_out(*[t.double() for t in tensors[:11]]) > 0
    flip_limit = 1e-4 if dtype == torch.float32 and device == "cpu" else 5e-3 if dtype != torch.bfloat16 else 2e-2
    assert (mask != ref_mask).double().mean() <= flip_limit

    if dtype == torch.float32 and device == "cpu":
        tol = dict.fromkeys(("logits", *NAMES), 2e-5)
    else:
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            eager_logits, _ = run(global_fusion_head_ref, dtype)
            _, eager_grads = run(head_with_relu_mask, dtype, mask)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
        tol = {"logits": 2 * rel_err(eager_logits, ref_logits)}
        tol.update({name: 2 * rel_err(g, r) for name, g, r in zip(NAMES, eager_grads, ref_grads)})

    errors = {"logits": rel_err(logits, ref_logits)}
    errors.update({name: rel_err(g, r) for name, g, r in zip(NAMES, fused_grads, ref_grads)})
    for name, grad, t in zip(NAMES, fused_grads, fused_in):
        assert grad.dtype == t.dtype and grad.shape == t.shape, name
    bad = {name: f"{err:.2e} > {tol[name]:.2e}" for name, err in errors.items() if not err <= tol[name]}
    assert not bad, f"errors against float64 above tolerance: {bad}"


CASES = [
    # dtype, batch, d, classes, parameters
    pytest.param(torch.float32, 1, 182, 4, random_head, id="fp32-B1-d182-K4"),
    pytest.param(torch.float16, 3, 195, 7, random_head, id="fp16-B3-d195-K7"),
    pytest.param(torch.float32, 5, 13, 7, random_head, id="fp32-B5-d13-K7"),
    pytest.param(torch.float16, 5, 37, 4, random_head, id="fp16-B5-d37-K4"),
    pytest.param(torch.float32, 3, 37, 4, default_init_head, id="fp32-B3-d37-K4-default-init"),
    pytest.param(torch.float16, 1, 13, 7, default_init_head, id="fp16-B1-d13-K7-default-init"),
    pytest.param(torch.float32, 2, 13, 20, random_head, id="fp32-B2-d13-K20"),  # classes beyond one 16-wide block
]


@pytest.mark.parametrize("dtype, n_seg, d, n_classes, make", CASES)
def test_forward_and_every_gradient_match_float64(dtype, n_seg, d, n_classes, make):
    check_against_float64(make(n_seg, d, n_classes), dtype)


def test_opcheck():
    tensors = [t.requires_grad_() for t in random_head(2, 13, 4)]
    torch.library.opcheck(torch.ops.glam_fast.global_fusion_head_forward.default, tuple(tensors))
    with torch.no_grad():
        saved = torch.ops.glam_fast.global_fusion_head_forward(*tensors)[1:]
    args = (torch.randn(2, 4), *[t.detach() for t in tensors], *saved)
    torch.library.opcheck(torch.ops.glam_fast.global_fusion_head_backward.default, args)


def test_torch_compile_fullgraph_matches_eager():
    tensors = random_head(3, 13, 4, seed=2)

    def loss(*ts):
        return global_fusion_head(*ts).square().sum()

    def value_and_grads(fn):
        inputs = [t.clone().requires_grad_() for t in tensors]
        out = fn(*inputs)
        return out.detach(), torch.autograd.grad(out, inputs)

    eager_loss, eager_grads = value_and_grads(loss)
    compiled_loss, compiled_grads = value_and_grads(torch.compile(loss, fullgraph=True))
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-6, atol=0)
    for name, c, e in zip(NAMES, compiled_grads, eager_grads):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-7, msg=name)


def test_no_fallback_to_pytorch_ops(monkeypatch):
    """The op runs its kernels: no torch linear / layer_norm / gelu / matmul call, and no aten GEMM,
    LayerNorm or activation op dispatched, forward or backward."""
    from torch.utils._python_dispatch import TorchDispatchMode

    calls = []
    for module, name in ((F, "linear"), (F, "layer_norm"), (F, "gelu"), (torch, "matmul"), (torch, "tanh")):
        def counting(*args, _fn=getattr(module, name), _name=name, **kwargs):
            calls.append(_name)
            return _fn(*args, **kwargs)
        monkeypatch.setattr(module, name, counting)

    class AtenLog(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func.name())
            return func(*args, **(kwargs or {}))

    tensors = [t.requires_grad_() for t in random_head(1, 13, 4)]
    with AtenLog() as log:
        global_fusion_head_ref(*tensors).sum().backward()
    assert set(calls) == {"linear", "layer_norm", "gelu", "matmul", "tanh"}  # the counters see a fallback
    assert any("mm" in op for op in log.ops)
    calls.clear()

    with AtenLog() as log:
        global_fusion_head(*tensors).sum().backward()
    assert calls == []
    math_ops = ("mm", "matmul", "linear", "layer_norm", "gelu", "tanh", "relu", "threshold", "bmm", "addmm")
    assert not [op for op in log.ops if any(m in op.split("::")[-1] for m in math_ops)], log.ops
    assert "glam_fast::global_fusion_head_forward" in log.ops and "glam_fast::global_fusion_head_backward" in log.ops


def _bad(mutate):
    tensors = random_head(2, 13, 4)
    mutate(tensors)
    return tensors


BAD_INPUTS = [
    pytest.param(lambda t: t.__setitem__(0, t[0][0]), ValueError, r"x must have shape \(B, 128, d\)", id="x-2d"),
    pytest.param(lambda t: t.__setitem__(0, t[0][:, :64]), ValueError, r"x must have shape \(B, 128, d\)",
                 id="64-tokens"),
    pytest.param(lambda t: t.__setitem__(0, t[0][:0]), ValueError, r"B, d >= 1", id="empty-batch"),
    pytest.param(lambda t: t.__setitem__(3, t[3][:, :12]), ValueError, r"proj_in_weight must have shape \(52, 13\)",
                 id="proj-in-shape"),
    pytest.param(lambda t: t.__setitem__(7, t[7][:64, :64]), ValueError, r"token_weight must have shape \(128, 128\)",
                 id="token-weight-shape"),
    pytest.param(lambda t: t.__setitem__(11, t[11][:, 1:]), ValueError, r"fc_weight must have shape \(4, 1664\)",
                 id="fc-shape"),
    pytest.param(lambda t: t.__setitem__(0, torch.randn(1, 128, 300)), ValueError, r"d = 300 is larger",
                 id="d-too-big"),
    pytest.param(lambda t: t.__setitem__(5, t[5].double()), TypeError, r"gate_norm_weight.*float64", id="mixed-dtype"),
    pytest.param(lambda t: t.__setitem__(0, t[0].long()), TypeError, r"x must be float32, float16 or bfloat16",
                 id="integer-x"),
    pytest.param(lambda t: t.__setitem__(8, t[8].to("meta")), ValueError, r"different devices", id="mixed-devices"),
    pytest.param(lambda t: t.__setitem__(2, t[2].tolist()), TypeError, r"norm_bias must be a torch.Tensor", id="list"),
]


@pytest.mark.parametrize("mutate, error, message", BAD_INPUTS)
def test_bad_inputs_fail_before_any_launch(monkeypatch, mutate, error, message):
    class NoLaunch:
        def __getitem__(self, grid):
            raise AssertionError("a kernel was launched")

    monkeypatch.setattr(gf, "_global_fusion_forward_kernel", NoLaunch())
    with pytest.raises(error, match=message):
        global_fusion_head(*_bad(mutate))


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        global_fusion_head(*random_head(1, 13, 4))


def test_autocast_runs_in_the_autocast_dtype():
    tensors = [t.requires_grad_() for t in random_head(2, 13, 4)]
    with torch.autocast("cpu", dtype=torch.float16):
        logits = global_fusion_head(*tensors)
    assert logits.dtype == torch.float16
    torch.testing.assert_close(logits, global_fusion_head(*[t.detach().half() for t in tensors]), rtol=0, atol=0)
    logits.float().sum().backward()
    for name, t in zip(NAMES, tensors):
        assert t.grad is not None and t.grad.dtype == torch.float32 and torch.isfinite(t.grad).all(), name


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_large_batch_matches_float64(dtype):
    check_against_float64(random_head(1024, 182, 4), dtype, device="cuda")


@pytest.mark.gpu
def test_gpu_gradients_are_reproducible():
    tensors = [t.cuda().bfloat16() for t in random_head(333, 195, 7)]

    def grads():
        inputs = [t.clone().requires_grad_() for t in tensors]
        return torch.autograd.grad(global_fusion_head(*inputs).float().square().sum(), inputs)

    for name, a, b in zip(NAMES, grads(), grads()):
        assert torch.equal(a, b), name
