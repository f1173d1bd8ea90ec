"""AFCN attention pooling with per-item lengths, and the classifier on the pooled vector.

For item b with trunk map a (D, F', T') (positions i = f * T' + t, valid where t < length_b):

    e_i = u^T tanh(W a_i + b_W)          W: (A, D)
    alpha = softmax(scale * e) over the valid positions (exactly zero elsewhere)
    c = sum_i alpha_i a_i                 (D,)
    logits = W_c c + b_c                  (C,)

The map is read where the trunk wrote it, channels-first, with no transpose copy. Forward: one
program per item, an online softmax over position tiles (the projection W a_i as tile GEMMs over
chunks of A), then a pass normalising the stored scores into alpha. Backward: one program per
item for the grads of a, u and the classifier, writing d(W a_i + b_W) so that a second kernel
forms the grad of W as one GEMM over all (item, position) pairs.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from glam_fast.kernels import KernelSpec, register_compile_specs
from glam_fast.ops.temporal_block import dot_precision, pipeline_stages
from glam_fast.ops.utils import check_same_device, empty_output, interpreting


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _load_positions(feat, p, dd, L, D):
    """[BLOCK_L, BLOCK_D] tile of the (D, L) map: positions p, channels dd (zeros outside)."""
    return tl.load(feat + dd[None, :] * L + p[:, None], mask=(p < L)[:, None] & (dd < D)[None, :], other=0.0)


@triton.jit
def _valid_positions(p, L, length_t, T_out):
    return (p < L) & (p % T_out < length_t)


@triton.jit
def _projection_chunk(a, proj_w_ptr, proj_b_ptr, a0, dd, A, D, BLOCK_A: tl.constexpr, PRECISION: tl.constexpr):
    """tanh(a @ W[a0:a0+BLOCK_A]^T + b) for a tile a [BLOCK_L, BLOCK_D]: [BLOCK_L, BLOCK_A] fp32, and the rows."""
    aa = a0 + tl.arange(0, BLOCK_A)
    w_t = tl.load(proj_w_ptr + aa[None, :] * D + dd[:, None], mask=(dd < D)[:, None] & (aa < A)[None, :], other=0.0)
    z = tl.dot(a, w_t.to(a.dtype), input_precision=PRECISION)
    z += tl.load(proj_b_ptr + aa, mask=aa < A, other=0.0).to(tl.float32)[None, :]
    return _tanh(z), aa


@triton.jit
def _attention_pool_forward_kernel(
    feat_ptr, lengths_ptr, proj_w_ptr, proj_b_ptr, ctx_w_ptr, cls_w_ptr, cls_b_ptr, logits_ptr, alpha_ptr, context_ptr,
    D, L, T_out, A, C, scale,
    HAS_LENGTHS: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_C: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    feat = feat_ptr + b * D * L
    dd = tl.arange(0, BLOCK_D)
    length_t = tl.load(lengths_ptr + b) if HAS_LENGTHS else T_out
    alpha_row = alpha_ptr + b * L
    running_max = tl.full([], float("-inf"), dtype=tl.float32)
    running_sum = tl.zeros([], dtype=tl.float32)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for p0 in range(0, L, BLOCK_L):
        p = p0 + tl.arange(0, BLOCK_L)
        a = _load_positions(feat, p, dd, L, D)
        energy = tl.zeros([BLOCK_L], dtype=tl.float32)
        for a0 in range(0, A, BLOCK_A):
            th, aa = _projection_chunk(a, proj_w_ptr, proj_b_ptr, a0, dd, A, D, BLOCK_A, PRECISION)
            u = tl.load(ctx_w_ptr + aa, mask=aa < A, other=0.0).to(tl.float32)
            energy += tl.sum(th * u[None, :], axis=1)
        score = tl.where(_valid_positions(p, L, length_t, T_out), scale * energy, -float("inf"))
        tl.store(alpha_row + p, score, mask=p < L)
        new_max = tl.maximum(running_max, tl.max(score, axis=0))
        weights = tl.exp(score - new_max)
        correction = tl.exp(running_max - new_max)
        running_sum = running_sum * correction + tl.sum(weights, axis=0)
        acc = acc * correction + tl.sum(weights[:, None] * a.to(tl.float32), axis=0)
        running_max = new_max
    context = acc / running_sum
    tl.store(context_ptr + b * D + dd, context, mask=dd < D)
    classes = tl.arange(0, BLOCK_C)
    cls_w = tl.load(cls_w_ptr + classes[:, None] * D + dd[None, :], mask=(classes < C)[:, None] & (dd < D)[None, :], other=0.0).to(tl.float32)
    logits = tl.sum(cls_w * context[None, :], axis=1) + tl.load(cls_b_ptr + classes, mask=classes < C, other=0.0).to(tl.float32)
    tl.store(logits_ptr + b * C + classes, logits.to(logits_ptr.dtype.element_ty), mask=classes < C)
    # the stored scores -> alpha (exp(-inf) = 0 at padded positions); the barrier makes every
    # thread's score stores visible to the threads that reload them
    tl.debug_barrier()
    for p0 in range(0, L, BLOCK_L):
        p = p0 + tl.arange(0, BLOCK_L)
        score = tl.load(alpha_row + p, mask=p < L, other=-float("inf"))
        tl.store(alpha_row + p, tl.exp(score - running_max) / running_sum, mask=p < L)


@triton.jit
def _attention_pool_backward_kernel(
    grad_logits_ptr, grad_alpha_ptr, feat_ptr, alpha_ptr, context_ptr, proj_w_ptr, proj_b_ptr, ctx_w_ptr, cls_w_ptr,
    grad_feat_ptr, grad_z_ptr, grad_ctx_partial_ptr, grad_cls_partial_ptr,
    D, L, A, C, scale,
    HAS_GRAD_ALPHA: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_C: tl.constexpr,
    N_A_CHUNKS: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Per item: grad of the map a, grad z of the projection pre-activation (B, L, A) fp32, and
    partial grads of u (B, A) and of the classifier (B, C, D + 1: bias grad in the last column)."""
    b = tl.program_id(0)
    feat = feat_ptr + b * D * L
    alpha_row = alpha_ptr + b * L
    dd = tl.arange(0, BLOCK_D)
    classes = tl.arange(0, BLOCK_C)
    g = tl.load(grad_logits_ptr + b * C + classes, mask=classes < C, other=0.0).to(tl.float32)
    cls_w = tl.load(cls_w_ptr + classes[:, None] * D + dd[None, :], mask=(classes < C)[:, None] & (dd < D)[None, :], other=0.0).to(tl.float32)
    grad_c = tl.sum(cls_w * g[:, None], axis=0)  # [BLOCK_D]
    context = tl.load(context_ptr + b * D + dd, mask=dd < D, other=0.0)
    cls_row = grad_cls_partial_ptr + b * C * (D + 1)
    tl.store(cls_row + classes[:, None] * (D + 1) + dd[None, :], g[:, None] * context[None, :], mask=(classes < C)[:, None] & (dd < D)[None, :])
    tl.store(cls_row + classes * (D + 1) + D, g, mask=classes < C)
    # softmax backward needs sum_i alpha_i * dalpha_i first
    alpha_dot = tl.zeros([], dtype=tl.float32)
    for p0 in range(0, L, BLOCK_L):
        p = p0 + tl.arange(0, BLOCK_L)
        a = _load_positions(feat, p, dd, L, D).to(tl.float32)
        grad_alpha = tl.sum(a * grad_c[None, :], axis=1)
        if HAS_GRAD_ALPHA:
            grad_alpha += tl.load(grad_alpha_ptr + b * L + p, mask=p < L, other=0.0).to(tl.float32)
        alpha_dot += tl.sum(tl.load(alpha_row + p, mask=p < L, other=0.0) * grad_alpha, axis=0)
    grad_u = tl.zeros([N_A_CHUNKS, BLOCK_A], dtype=tl.float32)
    chunk_ids = tl.arange(0, N_A_CHUNKS)
    for p0 in range(0, L, BLOCK_L):
        p = p0 + tl.arange(0, BLOCK_L)
        a = _load_positions(feat, p, dd, L, D)
        alpha = tl.load(alpha_row + p, mask=p < L, other=0.0)
        grad_alpha = tl.sum(a.to(tl.float32) * grad_c[None, :], axis=1)
        if HAS_GRAD_ALPHA:
            grad_alpha += tl.load(grad_alpha_ptr + b * L + p, mask=p < L, other=0.0).to(tl.float32)
        grad_energy = scale * alpha * (grad_alpha - alpha_dot)  # zero at padded positions (alpha = 0)
        grad_a = alpha[:, None] * grad_c[None, :]
        for ci in range(0, N_A_CHUNKS):
            a0 = ci * BLOCK_A
            th, aa = _projection_chunk(a, proj_w_ptr, proj_b_ptr, a0, dd, A, D, BLOCK_A, PRECISION)
            u = tl.load(ctx_w_ptr + aa, mask=aa < A, other=0.0).to(tl.float32)
            grad_z = grad_energy[:, None] * u[None, :] * (1.0 - th * th)
            tl.store(grad_z_ptr + (b * L + p[:, None]) * A + aa[None, :], grad_z, mask=(p < L)[:, None] & (aa < A)[None, :])
            grad_u += tl.where(chunk_ids[:, None] == ci, tl.sum(grad_energy[:, None] * th, axis=0)[None, :], 0.0)
            w = tl.load(proj_w_ptr + aa[:, None] * D + dd[None, :], mask=(aa < A)[:, None] & (dd < D)[None, :], other=0.0)
            grad_a = tl.dot(grad_z.to(a.dtype), w.to(a.dtype), grad_a, input_precision=PRECISION)
        tl.store(grad_feat_ptr + b * D * L + dd[None, :] * L + p[:, None], grad_a.to(grad_feat_ptr.dtype.element_ty),
                 mask=(p < L)[:, None] & (dd < D)[None, :])  # fmt: skip
    flat = tl.reshape(grad_u, [N_A_CHUNKS * BLOCK_A])
    aa = tl.arange(0, N_A_CHUNKS * BLOCK_A)
    tl.store(grad_ctx_partial_ptr + b * A + aa, flat, mask=aa < A)


@triton.jit
def _attention_pool_weight_grad_kernel(
    grad_z_ptr, feat_ptr, grad_w_ptr, grad_b_ptr,
    B, D, L, A,
    BLOCK_L: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """grad W = sum over (item, position) of dz^T a, one [BLOCK_A, BLOCK_D] tile per program; the
    programs of the first D tile also sum grad b."""
    pid_a = tl.program_id(0)
    pid_d = tl.program_id(1)
    dot_t = feat_ptr.dtype.element_ty
    aa = pid_a * BLOCK_A + tl.arange(0, BLOCK_A)
    dd = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    acc = tl.zeros([BLOCK_A, BLOCK_D], dtype=tl.float32)
    grad_b = tl.zeros([BLOCK_A], dtype=tl.float32)
    for b in range(0, B):
        for p0 in range(0, L, BLOCK_L):
            p = p0 + tl.arange(0, BLOCK_L)
            dz = tl.load(grad_z_ptr + (b * L + p[:, None]) * A + aa[None, :], mask=(p < L)[:, None] & (aa < A)[None, :], other=0.0)
            a = _load_positions(feat_ptr + b * D * L, p, dd, L, D)
            acc = tl.dot(tl.trans(dz.to(dot_t)), a, acc, input_precision=PRECISION)
            grad_b += tl.sum(dz, axis=0)
    tl.store(grad_w_ptr + aa[:, None] * D + dd[None, :], acc, mask=(aa < A)[:, None] & (dd < D)[None, :])
    if pid_d == 0:
        tl.store(grad_b_ptr + aa, grad_b, mask=aa < A)


# GPU: a 16-position x 256-channel tile of the map against chunks of W, at 8 warps; the backward
# holds two W chunks per step (for W a and for the grad of a), so its chunks are half as wide.
# Two pipeline stages keep shared memory within sm_80's. At 4 warps, or 64-wide backward chunks,
# the kernels spill.
_GPU_CONFIG = {
    "forward": {"BLOCK_L": 16, "BLOCK_A": 64, "num_warps": 8, "num_stages": 2},
    "backward": {"BLOCK_L": 16, "BLOCK_A": 32, "num_warps": 8, "num_stages": 2},
}
_GPU_WEIGHT_GRAD = {"BLOCK_L": 32, "BLOCK_A": 64, "BLOCK_D": 64, "num_warps": 4, "num_stages": 3}


def _config(kind: str, positions: int, attn_dim: int, dtype: torch.dtype) -> dict:
    if interpreting():
        block_a = triton.next_power_of_2(attn_dim)
        return {"BLOCK_L": max(16, min(128, triton.next_power_of_2(positions))), "BLOCK_A": max(16, block_a), "num_warps": 4, "num_stages": 1}
    return _gpu_config(kind, dtype)


def _gpu_config(kind: str, dtype: torch.dtype) -> dict:
    """The GPU configuration of _config; also what the compile specs compile."""
    cfg = _GPU_CONFIG[kind]
    return dict(cfg, num_stages=min(cfg["num_stages"], pipeline_stages(dtype)))


def _check_inputs(op: str, features: Tensor, lengths: Optional[Tensor], proj_weight: Tensor, proj_bias: Tensor, context_weight: Tensor,
                  classifier_weight: Tensor, classifier_bias: Tensor) -> tuple[int, int, int, int, int, int]:  # fmt: skip
    if features.dim() != 4:
        raise ValueError(f"{op}: features must have shape (B, D, F', T'), got {tuple(features.shape)}")
    if features.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"{op}: features must be float32, float16 or bfloat16, got {features.dtype}")
    batch, dim, freq, time = features.shape
    if min(batch, dim, freq, time) < 1:
        raise ValueError(f"{op}: features must be non-empty, got shape {tuple(features.shape)}")
    attn_dim = proj_weight.shape[0]
    classes = classifier_weight.shape[0]
    for name, t, shape in (
        ("proj_weight", proj_weight, (attn_dim, dim)), ("proj_bias", proj_bias, (attn_dim,)), ("context_weight", context_weight, (1, attn_dim)),
        ("classifier_weight", classifier_weight, (classes, dim)), ("classifier_bias", classifier_bias, (classes,)),
    ):  # fmt: skip
        if tuple(t.shape) != shape:
            raise ValueError(f"{op}: {name} must have shape {shape} for features of shape {tuple(features.shape)}, got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
    tensors = dict(features=features, proj_weight=proj_weight, proj_bias=proj_bias, context_weight=context_weight,
                   classifier_weight=classifier_weight, classifier_bias=classifier_bias)  # fmt: skip
    if lengths is not None:
        if lengths.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{op}: lengths must be int32 or int64 (valid frames of the map per item), got {lengths.dtype}")
        if tuple(lengths.shape) != (batch,):
            raise ValueError(f"{op}: lengths must have shape (B,) = ({batch},), got {tuple(lengths.shape)}")
        tensors["lengths"] = lengths
    check_same_device(op, **tensors)
    return batch, dim, freq, time, attn_dim, classes


def _as_operand(weight: Tensor, features: Tensor) -> Tensor:
    """The projection weight in the map's dtype: the kernels cast each chunk to it before the dot
    anyway (as autocast does), so casting once here only halves what they load."""
    return weight.to(features.dtype).contiguous()


def _check_length_values(lengths: Tensor, time: int) -> None:
    bad = (lengths < 1) | (lengths > time)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"attention_pool: lengths must lie in [1, T'={time}]; item {i} has length {int(lengths[i])}")


@torch.library.custom_op("glam_fast::attention_pool", mutates_args=())
def attention_pool(
    features: Tensor, lengths: Optional[Tensor], proj_weight: Tensor, proj_bias: Tensor, context_weight: Tensor,
    classifier_weight: Tensor, classifier_bias: Tensor, scale: float,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """features (B, D, F', T') fp32/fp16/bf16 (the trunk's map), lengths (B,) int valid T' per item
    or None (all valid), proj_weight (A, D), proj_bias (A,), context_weight (1, A), classifier
    (C, D) + (C,), scale = lambda.

    Returns logits (B, C) in features' dtype, alpha (B, F', T') fp32 (zero at padded positions) and
    the pooled vector c (B, D) fp32.
    """
    batch, dim, freq, time, attn_dim, classes = _check_inputs(
        "attention_pool", features, lengths, proj_weight, proj_bias, context_weight, classifier_weight, classifier_bias
    )
    if lengths is not None:
        _check_length_values(lengths, time)
    device = features.device
    logits = empty_output((batch, classes), dtype=features.dtype, device=device)
    alpha = empty_output((batch, freq, time), dtype=torch.float32, device=device)
    context = empty_output((batch, dim), dtype=torch.float32, device=device)
    cfg = _config("forward", freq * time, attn_dim, features.dtype)
    _attention_pool_forward_kernel[(batch,)](
        features.contiguous(), lengths.contiguous() if lengths is not None else proj_bias, _as_operand(proj_weight, features), proj_bias.contiguous(),
        context_weight.contiguous(), classifier_weight.contiguous(), classifier_bias.contiguous(), logits, alpha, context,
        dim, freq * time, time, attn_dim, classes, scale,
        HAS_LENGTHS=lengths is not None, BLOCK_L=cfg["BLOCK_L"], BLOCK_D=max(16, triton.next_power_of_2(dim)), BLOCK_A=cfg["BLOCK_A"],
        BLOCK_C=max(16, triton.next_power_of_2(classes)), PRECISION=dot_precision(features.dtype), num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )  # fmt: skip
    return logits, alpha, context


@attention_pool.register_fake
def _(features, lengths, proj_weight, proj_bias, context_weight, classifier_weight, classifier_bias, scale):
    batch, dim, freq, time, _, classes = _check_inputs(
        "attention_pool", features, lengths, proj_weight, proj_bias, context_weight, classifier_weight, classifier_bias
    )
    new = features.new_empty
    return new((batch, classes)), new((batch, freq, time), dtype=torch.float32), new((batch, dim), dtype=torch.float32)


@torch.library.custom_op("glam_fast::attention_pool_backward", mutates_args=())
def attention_pool_backward(
    grad_logits: Tensor, grad_alpha: Optional[Tensor], features: Tensor, alpha: Tensor, context: Tensor,
    proj_weight: Tensor, proj_bias: Tensor, context_weight: Tensor, classifier_weight: Tensor, scale: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """Grads of features (features' dtype), proj_weight, proj_bias, context_weight, classifier_weight,
    classifier_bias (fp32). alpha is zero at padded positions, so they get zero grad."""
    batch, dim, freq, time = features.shape
    positions = freq * time
    attn_dim = proj_weight.shape[0]
    classes = classifier_weight.shape[0]
    device = features.device
    features = features.contiguous()
    cfg = _config("backward", positions, attn_dim, features.dtype)
    block_d = max(16, triton.next_power_of_2(dim))
    n_a_chunks = triton.cdiv(attn_dim, cfg["BLOCK_A"])
    grad_features = empty_output(features.shape, dtype=features.dtype, device=device)
    grad_z = empty_output((batch, positions, attn_dim), dtype=torch.float32, device=device)
    grad_ctx_partial = empty_output((batch, attn_dim), dtype=torch.float32, device=device)
    grad_cls_partial = empty_output((batch, classes, dim + 1), dtype=torch.float32, device=device)
    precision = dot_precision(features.dtype)
    _attention_pool_backward_kernel[(batch,)](
        grad_logits.contiguous(), grad_alpha.contiguous() if grad_alpha is not None else alpha, features, alpha.contiguous(), context.contiguous(),
        _as_operand(proj_weight, features), proj_bias.contiguous(), context_weight.contiguous(), classifier_weight.contiguous(),
        grad_features, grad_z, grad_ctx_partial, grad_cls_partial, dim, positions, attn_dim, classes, scale,
        HAS_GRAD_ALPHA=grad_alpha is not None, BLOCK_L=cfg["BLOCK_L"], BLOCK_D=block_d, BLOCK_A=cfg["BLOCK_A"],
        BLOCK_C=max(16, triton.next_power_of_2(classes)), N_A_CHUNKS=triton.next_power_of_2(n_a_chunks), PRECISION=precision,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    grad_w = empty_output((attn_dim, dim), dtype=torch.float32, device=device)
    grad_b = empty_output((attn_dim,), dtype=torch.float32, device=device)
    wcfg = dict(_GPU_WEIGHT_GRAD) if not interpreting() else {"BLOCK_L": cfg["BLOCK_L"], "BLOCK_A": cfg["BLOCK_A"], "BLOCK_D": block_d, "num_warps": 4, "num_stages": 1}
    _attention_pool_weight_grad_kernel[(triton.cdiv(attn_dim, wcfg["BLOCK_A"]), triton.cdiv(dim, wcfg["BLOCK_D"]))](
        grad_z, features, grad_w, grad_b, batch, dim, positions, attn_dim,
        BLOCK_L=wcfg["BLOCK_L"], BLOCK_A=wcfg["BLOCK_A"], BLOCK_D=wcfg["BLOCK_D"], PRECISION=precision, num_warps=wcfg["num_warps"],
        num_stages=wcfg["num_stages"],
    )  # fmt: skip
    cls = grad_cls_partial.sum(dim=0)
    return grad_features, grad_w, grad_b, grad_ctx_partial.sum(dim=0, keepdim=True), cls[:, :dim].contiguous(), cls[:, dim].contiguous()


@attention_pool_backward.register_fake
def _(grad_logits, grad_alpha, features, alpha, context, proj_weight, proj_bias, context_weight, classifier_weight, scale):
    new = features.new_empty
    f32 = torch.float32
    classes, dim = classifier_weight.shape
    return (torch.empty_like(features), new(proj_weight.shape, dtype=f32), new(proj_bias.shape, dtype=f32), new(context_weight.shape, dtype=f32),
            new((classes, dim), dtype=f32), new((classes,), dtype=f32))  # fmt: skip


def _setup_context(ctx, inputs, output):
    features, lengths, proj_weight, proj_bias, context_weight, classifier_weight, classifier_bias, scale = inputs
    _, alpha, context = output
    ctx.save_for_backward(features, alpha, context, proj_weight, proj_bias, context_weight, classifier_weight)
    ctx.scale = scale
    ctx.dtypes = [t.dtype for t in (proj_weight, proj_bias, context_weight, classifier_weight, classifier_bias)]
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(context)


def _backward(ctx, grad_logits, grad_alpha, _grad_context):
    features, alpha, context, proj_weight, proj_bias, context_weight, classifier_weight = ctx.saved_tensors
    if grad_logits is None:
        grad_logits = torch.zeros((features.shape[0], classifier_weight.shape[0]), dtype=features.dtype, device=features.device)
    grads = attention_pool_backward(grad_logits, grad_alpha, features, alpha, context, proj_weight, proj_bias, context_weight, classifier_weight, ctx.scale)
    grad_features, *param_grads = grads
    param_grads = [g.to(dtype) for g, dtype in zip(param_grads, ctx.dtypes)]
    return (grad_features, None, *param_grads, None)


attention_pool.register_autograd(_backward, setup_context=_setup_context)


def attention_pool_ref(
    features: Tensor, lengths: Optional[Tensor], proj_weight: Tensor, proj_bias: Tensor, context_weight: Tensor,
    classifier_weight: Tensor, classifier_bias: Tensor, scale: float,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Plain PyTorch, same signature: (logits (B, C), alpha (B, F', T'))."""
    batch, _, freq, time = features.shape
    a = features.flatten(2).transpose(1, 2)
    energy = torch.nn.functional.linear(torch.tanh(torch.nn.functional.linear(a, proj_weight, proj_bias)), context_weight).squeeze(-1) * scale
    if lengths is not None:
        valid = (torch.arange(time, device=features.device)[None, :] < lengths[:, None])[:, None, :].expand(batch, freq, time).reshape(batch, -1)
        energy = energy.masked_fill(~valid, float("-inf"))
    alpha = torch.softmax(energy, dim=-1)
    context = torch.bmm(alpha.unsqueeze(1), a).squeeze(1)
    return torch.nn.functional.linear(context, classifier_weight, classifier_bias), alpha.view(batch, freq, time)


@register_compile_specs
def _compile_specs():
    """Every kernel at the configuration _config gives on a GPU (the weight grad's is fixed), for
    bf16 (fp16 launches alike) and fp32 activations."""
    p = "*fp32"
    constexpr = lambda consts: {k: "constexpr" for k in consts}  # noqa: E731
    for act, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        x = f"*{act}"
        precision = "tf32x3" if act == "fp32" else "tf32"
        fwd = _gpu_config("forward", dtype)
        consts = {"HAS_LENGTHS": True, "BLOCK_L": fwd["BLOCK_L"], "BLOCK_D": 256, "BLOCK_A": fwd["BLOCK_A"], "BLOCK_C": 16, "PRECISION": precision}
        scalars = {"D": "i32", "L": "i32", "T_out": "i32", "A": "i32", "C": "i32", "scale": "fp32"}
        sig = {"feat_ptr": x, "lengths_ptr": "*i64", "proj_w_ptr": x, "proj_b_ptr": p, "ctx_w_ptr": p, "cls_w_ptr": p, "cls_b_ptr": p,
               "logits_ptr": x, "alpha_ptr": p, "context_ptr": p, **scalars, **constexpr(consts)}  # fmt: skip
        yield KernelSpec("attention_pool", f"_attention_pool_forward_kernel[{act}]", _attention_pool_forward_kernel, sig, consts,
                         num_warps=fwd["num_warps"], num_stages=fwd["num_stages"])  # fmt: skip
        bwd = _gpu_config("backward", dtype)
        consts = {"HAS_GRAD_ALPHA": True, "BLOCK_L": bwd["BLOCK_L"], "BLOCK_D": 256, "BLOCK_A": bwd["BLOCK_A"], "BLOCK_C": 16,
                  "N_A_CHUNKS": 256 // bwd["BLOCK_A"], "PRECISION": precision}  # fmt: skip
        scalars = {"D": "i32", "L": "i32", "A": "i32", "C": "i32", "scale": "fp32"}
        sig = {"grad_logits_ptr": x, "grad_alpha_ptr": p, "feat_ptr": x, "alpha_ptr": p, "context_ptr": p, "proj_w_ptr": x, "proj_b_ptr": p,
               "ctx_w_ptr": p, "cls_w_ptr": p, "grad_feat_ptr": x, "grad_z_ptr": p, "grad_ctx_partial_ptr": p, "grad_cls_partial_ptr": p,
               **scalars, **constexpr(consts)}  # fmt: skip
        yield KernelSpec("attention_pool", f"_attention_pool_backward_kernel[{act}]", _attention_pool_backward_kernel, sig, consts,
                         num_warps=bwd["num_warps"], num_stages=bwd["num_stages"])  # fmt: skip
        w = _GPU_WEIGHT_GRAD
        consts = {"BLOCK_L": w["BLOCK_L"], "BLOCK_A": w["BLOCK_A"], "BLOCK_D": w["BLOCK_D"], "PRECISION": precision}
        sig = {"grad_z_ptr": p, "feat_ptr": x, "grad_w_ptr": p, "grad_b_ptr": p, "B": "i32", "D": "i32", "L": "i32", "A": "i32", **constexpr(consts)}
        yield KernelSpec("attention_pool", f"_attention_pool_weight_grad_kernel[{act}]", _attention_pool_weight_grad_kernel, sig, consts,
                         num_warps=w["num_warps"], num_stages=w["num_stages"])  # fmt: skip
