"""The ``cuda`` backend: CUDA C++ inference kernels from csrc/, one section per op.

Ops (registered with :mod:`glam_fast.dispatch` under these names for backend ``cuda``):

=============================  ==================================================================
multiscale_block_inference     GLAM multi-scale block: BN, the 3x3 branch and the identity folded
                               into one 5x5 convolution C -> 2C, + ReLU (+ 2x2 max-pool); NHWC
conv_bn_relu_inference         a 5x5 convolution + BN + ReLU (GLAM's conv5 128 -> 128), BN folded;
                               NHWC
stem_inference                 GLAM stem: conv1a / conv1b + BN + ReLU stacked along height,
                               (B, 1, H, W) -> (B, 2H, W, 16) NHWC
squeeze_excite_inference       MS-SENet squeeze-and-excitation front end, both time directions
=============================  ==================================================================

Each section holds the launch through a ``torch.library`` custom op (so ``torch.compile`` traces
it), the public function (argument checks, BatchNorm folding and weight packing) and the
plain-PyTorch reference ``<op>_ref`` with the same arguments. A Triton implementation registered
under the same op name must take the same arguments: under ``auto`` the two are timed against
each other on the same inputs (:func:`glam_fast.backend_tuning.op_runner`).

Inference only: the kernels use BatchNorm's running statistics and have no backward. Tensors
that require grad while grad mode is on (training) raise :class:`BackendUnavailableError`; run
under ``torch.no_grad()`` / ``torch.inference_mode()``, or use the ``triton`` / ``torch``
backends to train. Kernels run on the current CUDA stream of the input's device.

Folded and packed weights are computed once per set of parameter tensors and cached; an entry
is rebuilt when any of those tensors changes (version counter, storage) and dropped when one
is freed.

``emulate=True`` runs CPU tensors through the extension's host emulation of the same kernel
code (every block and thread in loops; slow). Tests use it to check the kernels' indexing and
arithmetic without a GPU; it does not exercise the tensor-core instructions, the asynchronous
copies or the barriers.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glam_fast import _extension, dispatch
from glam_fast.dispatch import BackendUnavailableError
from glam_fast.models.mssenet import KERAS_BN_EPS
from glam_fast.ops.utils import empty_output

_IO_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# ---------------------------------------------------------------------------------------------
# Shared plumbing
# ---------------------------------------------------------------------------------------------


def _native():
    """The extension module, which must have been compiled with its CUDA sources."""
    module, reason = _extension.load()
    if module is None:
        raise BackendUnavailableError(f"backend 'cuda': {reason}")
    if not _extension.build_info()["cuda"]:
        raise BackendUnavailableError("backend 'cuda': the native extension was built without nvcc (no CUDA kernels compiled)")
    return module


_descriptor = _extension.tensor_descriptor


def _stream(t: Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream


def _check_input(op: str, x: object, layout: str, ndim: int, emulate: bool) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: input must be a torch.Tensor of shape {layout}, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{op}: input must be {ndim}-D {layout}, got shape {tuple(x.shape)}")
    if x.dtype not in _IO_DTYPES:
        raise TypeError(f"{op}: input must be float32, float16 or bfloat16, got {x.dtype}")
    if not x.is_contiguous():
        raise ValueError(f"{op}: input must be contiguous {layout}; got strides {x.stride()}: call .contiguous()")
    if torch.compiler.is_compiling():
        return  # availability was settled in eager mode; the extension raises if it is not
    if x.device.type == "cuda":
        reason = dispatch.unavailable_reason("cuda", x.device)
    elif x.device.type == "cpu" and emulate:
        reason = ""
        _native()
    elif x.device.type == "cpu":
        reason = "the cuda backend needs CUDA tensors, got a cpu tensor (emulate=True runs the kernels' host emulation, for tests)"
    else:
        reason = f"the cuda backend needs CUDA tensors, got a {x.device.type} tensor"
    if reason:
        raise BackendUnavailableError(f"{op}: {reason}")


def _check_parameters(op: str, x: Tensor, expected: Mapping[str, tuple[Tensor, tuple[int, ...]]]) -> None:
    """Each named parameter is a floating-point tensor of the given shape on x's device."""
    for name, (t, shape) in expected.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{op}: {name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be floating point, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{op}: {name} is on {t.device} but the input is on {x.device}; move them to one device")


def _require_inference(op: str, tensors: Sequence[Tensor]) -> None:
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        raise BackendUnavailableError(
            f"backend 'cuda' has inference kernels only (BatchNorm running statistics, no backward), but '{op}' "
            f"got tensors that require grad with grad mode on. Run under torch.no_grad() or torch.inference_mode() "
            f"with the model in eval(), or use backend 'triton' or 'torch' for training."
        )


class _PackedWeights:
    """Folded + packed weights per set of parameter tensors (bounded, least recently used out)."""

    def __init__(self, capacity: int = 64):
        self._entries: OrderedDict[tuple, tuple[tuple, tuple, object]] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def get(self, kind: str, tensors: Sequence[Tensor], options: tuple, build: Callable[[], object]):
        if torch.compiler.is_compiling():
            return build()  # traced into the graph
        try:
            stamp = tuple((t._version, t.data_ptr(), t.dtype, t.device, t.shape) for t in tensors)
        except RuntimeError:  # inference tensors have no version counter: changes cannot be seen
            with torch.no_grad():
                return build()
        key = (kind, options, tuple(id(t) for t in tensors))
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[1] == stamp and all(ref() is t for ref, t in zip(entry[0], tensors)):
                self._entries.move_to_end(key)
                return entry[2]
        with torch.no_grad():
            value = build()
        with self._lock:
            self._entries[key] = (tuple(weakref.ref(t) for t in tensors), stamp, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
        return value


_packed = _PackedWeights()


def _bn_scale_shift(weight: Tensor, bias: Tensor, running_mean: Tensor, running_var: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Inference BatchNorm as y = x * scale + shift (float64)."""
    scale = weight.double() / torch.sqrt(running_var.double() + eps)
    return scale, bias.double() - running_mean.double() * scale


# ---------------------------------------------------------------------------------------------
# 5x5 convolution + bias + ReLU (+ 2x2 max-pool), NHWC: multiscale_block_inference and
# conv_bn_relu_inference
# ---------------------------------------------------------------------------------------------


def _conv5x5_output(x: Tensor, cout: int, pool: bool) -> Tensor:
    b, h, w, _ = x.shape
    return empty_output((b, h // 2, w // 2, cout) if pool else (b, h, w, cout), dtype=x.dtype, device=x.device)


@torch.library.custom_op("glam_fast::cuda_conv5x5_bias_relu", mutates_args=(), device_types="cuda")
def _conv5x5_bias_relu(x: Tensor, weight: Tensor, bias: Tensor, pool: bool) -> Tensor:
    """relu(conv5x5(x) + bias) [2x2 max-pooled]: x (B, H, W, Cin), weight packed by _pack_conv5x5."""
    out = _conv5x5_output(x, bias.shape[0], pool)
    _native().conv5x5_bias_relu(_descriptor(x), _descriptor(weight), _descriptor(bias), _descriptor(out), pool, _stream(x))
    return out


@_conv5x5_bias_relu.register_kernel("cpu")
def _conv5x5_bias_relu_emulated(x: Tensor, weight: Tensor, bias: Tensor, pool: bool) -> Tensor:
    out = _conv5x5_output(x, bias.shape[0], pool)
    _native().conv5x5_bias_relu_emulated(_descriptor(x), _descriptor(weight), _descriptor(bias), _descriptor(out), pool)
    return out


@_conv5x5_bias_relu.register_fake
def _conv5x5_bias_relu_fake(x: Tensor, weight: Tensor, bias: Tensor, pool: bool) -> Tensor:
    b, h, w, _ = x.shape
    shape = (b, h // 2, w // 2, bias.shape[0]) if pool else (b, h, w, bias.shape[0])
    return x.new_empty(shape)


def _pack_conv5x5(weight: Tensor, bias: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(Cout, Cin, 5, 5) weight -> the kernels' layout, K = (kh*5 + kw)*Cin + c: fp32 (25*Cin, Cout);
    fp16/bf16 (Cout, Kpad) with K zero-padded to the tensor-core kernel's K tile. Bias -> fp32."""
    cout, cin = weight.shape[:2]
    k = 25 * cin
    rows = weight.permute(0, 2, 3, 1).reshape(cout, k)
    if dtype == torch.float32:
        packed = rows.t().to(torch.float32).contiguous()
    else:
        tile = _native().conv5x5_k_tile
        packed = F.pad(rows, (0, -k % tile)).to(dtype).contiguous()
    return packed, bias.to(torch.float32).contiguous()


def fold_multiscale_block(
    conv3_weight: Tensor, conv3_bias: Tensor, conv5_weight: Tensor, conv5_bias: Tensor,
    bn_weight: Tensor, bn_bias: Tensor, bn_running_mean: Tensor, bn_running_var: Tensor, bn_eps: float,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The inference multi-scale block as one 5x5 convolution C -> 2C (+ ReLU): (weight (2C, C, 5, 5),
    bias (2C,)), float64.

    ``cat([conv3(x) + x, conv5(x) + x])`` is one 5x5 convolution with weight
    ``[pad5(W3) + I; W5 + I]`` (I: the identity at the centre tap) and bias ``[b3; b5]``; the
    BatchNorm then scales each output channel and shifts it.
    """
    c = conv3_weight.shape[0]
    weight = conv3_weight.new_zeros((2 * c, c, 5, 5), dtype=torch.float64)
    weight[:c, :, 1:4, 1:4] = conv3_weight.double()
    weight[c:] = conv5_weight.double()
    channel = torch.arange(c, device=weight.device)
    weight[channel, channel, 2, 2] += 1.0
    weight[c + channel, channel, 2, 2] += 1.0
    scale, shift = _bn_scale_shift(bn_weight, bn_bias, bn_running_mean, bn_running_var, bn_eps)
    bias = torch.cat((conv3_bias, conv5_bias)).double()
    return weight * scale[:, None, None, None], bias * scale + shift


@dispatch.register("multiscale_block_inference", "cuda")
def multiscale_block_inference(
    x: Tensor, conv3_weight: Tensor, conv3_bias: Tensor, conv5_weight: Tensor, conv5_bias: Tensor,
    bn_weight: Tensor, bn_bias: Tensor, bn_running_mean: Tensor, bn_running_var: Tensor, bn_eps: float,
    pool: bool, *, emulate: bool = False,
) -> Tensor:  # fmt: skip
    """GLAM multi-scale block (ResMultiConv), inference, channels-last:
    ``relu(BN(cat[conv3(x) + x, conv5(x) + x]))``, then a 2x2 max-pool (floor) if ``pool``.

    x: (B, H, W, C) contiguous, C in {16, 32, 64}, float32 / float16 / bfloat16 on a CUDA device.
    Parameters as in ResMultiConv(C): conv3 (C, C, 3, 3), (C,); conv5 (C, C, 5, 5), (C,); BatchNorm
    over 2C channels (weight, bias, running mean, running variance; ``bn_eps``).
    Returns (B, H', W', 2C) in x's dtype, (H', W') = (H // 2, W // 2) with pool, else (H, W).
    float32 runs exact fp32 FMAs; float16 / bfloat16 run on tensor cores with fp32 accumulation,
    the folded weights rounded to x's dtype.
    """
    op = "multiscale_block_inference"
    _check_input(op, x, "(B, H, W, C) channels-last", 4, emulate)
    c = x.shape[3]
    if c not in (16, 32, 64):
        raise ValueError(f"{op}: C must be 16, 32 or 64 (GLAM's blocks), got input of shape {tuple(x.shape)}")
    if pool and (x.shape[1] < 2 or x.shape[2] < 2):
        raise ValueError(f"{op}: 2x2 pooling needs H >= 2 and W >= 2, got input of shape {tuple(x.shape)}")
    parameters = (conv3_weight, conv3_bias, conv5_weight, conv5_bias, bn_weight, bn_bias, bn_running_mean, bn_running_var)
    shapes = ((c, c, 3, 3), (c,), (c, c, 5, 5), (c,), (2 * c,), (2 * c,), (2 * c,), (2 * c,))
    names = ("conv3_weight", "conv3_bias", "conv5_weight", "conv5_bias", "bn_weight", "bn_bias", "bn_running_mean", "bn_running_var")
    _check_parameters(op, x, {n: (t, s) for n, t, s in zip(names, parameters, shapes)})
    _require_inference(op, (x, *parameters))
    weight, bias = _packed.get(
        op, parameters, (float(bn_eps), x.dtype), lambda: _pack_conv5x5(*fold_multiscale_block(*parameters, bn_eps), x.dtype)
    )
    return _conv5x5_bias_relu(x, weight, bias, bool(pool))


def multiscale_block_inference_ref(
    x: Tensor, conv3_weight: Tensor, conv3_bias: Tensor, conv5_weight: Tensor, conv5_bias: Tensor,
    bn_weight: Tensor, bn_bias: Tensor, bn_running_mean: Tensor, bn_running_var: Tensor, bn_eps: float,
    pool: bool,
) -> Tensor:  # fmt: skip
    """Plain PyTorch, unfused, same arguments and layout as :func:`multiscale_block_inference`
    (computed in the wider of ``x``'s and the parameters' dtypes, returned in ``x``'s)."""
    dtype, compute = x.dtype, torch.promote_types(x.dtype, conv3_weight.dtype)
    x = x.permute(0, 3, 1, 2).to(compute)
    conv3_weight, conv3_bias, conv5_weight, conv5_bias, bn_weight, bn_bias, bn_running_mean, bn_running_var = (
        t.to(compute) for t in (conv3_weight, conv3_bias, conv5_weight, conv5_bias, bn_weight, bn_bias, bn_running_mean, bn_running_var)
    )
    y = torch.cat((F.conv2d(x, conv3_weight, conv3_bias, padding=1) + x, F.conv2d(x, conv5_weight, conv5_bias, padding=2) + x), 1)
    y = F.relu(F.batch_norm(y, bn_running_mean, bn_running_var, bn_weight, bn_bias, training=False, eps=bn_eps))
    if pool:
        y = F.max_pool2d(y, 2)
    return y.permute(0, 2, 3, 1).to(dtype).contiguous()


@dispatch.register("conv_bn_relu_inference", "cuda")
def conv_bn_relu_inference(
    x: Tensor, conv_weight: Tensor, conv_bias: Tensor, bn_weight: Tensor, bn_bias: Tensor,
    bn_running_mean: Tensor, bn_running_var: Tensor, bn_eps: float, *, emulate: bool = False,
) -> Tensor:  # fmt: skip
    """``relu(BN(conv5x5(x)))``, inference, channels-last (GLAM's conv5 + bn5 + ReLU).

    x: (B, H, W, Cin) contiguous, float32 / float16 / bfloat16 on a CUDA device; conv_weight
    (Cout, Cin, 5, 5) with (Cin, Cout) one of (16, 32), (32, 64), (64, 128), (128, 128); conv_bias
    and the BatchNorm tensors (Cout,). Returns (B, H, W, Cout) in x's dtype.
    """
    op = "conv_bn_relu_inference"
    _check_input(op, x, "(B, H, W, Cin) channels-last", 4, emulate)
    cin = x.shape[3]
    if not isinstance(conv_weight, Tensor) or conv_weight.dim() != 4:
        raise ValueError(f"{op}: conv_weight must be a (Cout, Cin, 5, 5) tensor")
    cout = conv_weight.shape[0]
    if (cin, cout) not in ((16, 32), (32, 64), (64, 128), (128, 128)):
        raise ValueError(f"{op}: no kernel for Cin={cin} -> Cout={cout}; (Cin, Cout) must be (16, 32), (32, 64), (64, 128) or (128, 128)")
    parameters = (conv_weight, conv_bias, bn_weight, bn_bias, bn_running_mean, bn_running_var)
    names = ("conv_weight", "conv_bias", "bn_weight", "bn_bias", "bn_running_mean", "bn_running_var")
    shapes = ((cout, cin, 5, 5),) + ((cout,),) * 5
    _check_parameters(op, x, {n: (t, s) for n, t, s in zip(names, parameters, shapes)})
    _require_inference(op, (x, *parameters))

    def build() -> tuple[Tensor, Tensor]:
        scale, shift = _bn_scale_shift(bn_weight, bn_bias, bn_running_mean, bn_running_var, bn_eps)
        return _pack_conv5x5(conv_weight.double() * scale[:, None, None, None], conv_bias.double() * scale + shift, x.dtype)

    weight, bias = _packed.get(op, parameters, (float(bn_eps), x.dtype), build)
    return _conv5x5_bias_relu(x, weight, bias, False)


def conv_bn_relu_inference_ref(
    x: Tensor, conv_weight: Tensor, conv_bias: Tensor, bn_weight: Tensor, bn_bias: Tensor,
    bn_running_mean: Tensor, bn_running_var: Tensor, bn_eps: float,
) -> Tensor:  # fmt: skip
    """Plain PyTorch, same arguments and layout as :func:`conv_bn_relu_inference`."""
    y = F.conv2d(x.permute(0, 3, 1, 2), conv_weight, conv_bias, padding=2)
    y = F.relu(F.batch_norm(y, bn_running_mean, bn_running_var, bn_weight, bn_bias, training=False, eps=bn_eps))
    return y.permute(0, 2, 3, 1).contiguous()


# ---------------------------------------------------------------------------------------------
# GLAM stem
# ---------------------------------------------------------------------------------------------


def _stem_output(x: Tensor) -> Tensor:
    b, _, h, w = x.shape
    return empty_output((b, 2 * h, w, 16), dtype=x.dtype, device=x.device)


@torch.library.custom_op("glam_fast::cuda_glam_stem", mutates_args=(), device_types="cuda")
def _glam_stem(x: Tensor, params: Tensor) -> Tensor:
    """x (B, 1, H, W), params packed by fold_stem -> (B, 2H, W, 16)."""
    out = _stem_output(x)
    _native().glam_stem(_descriptor(x), _descriptor(params), _descriptor(out), _stream(x))
    return out


@_glam_stem.register_kernel("cpu")
def _glam_stem_emulated(x: Tensor, params: Tensor) -> Tensor:
    out = _stem_output(x)
    _native().glam_stem_emulated(_descriptor(x), _descriptor(params), _descriptor(out))
    return out


@_glam_stem.register_fake
def _glam_stem_fake(x: Tensor, params: Tensor) -> Tensor:
    b, _, h, w = x.shape
    return x.new_empty((b, 2 * h, w, 16))


def fold_stem(
    conv1a_weight: Tensor, conv1a_bias: Tensor, conv1b_weight: Tensor, conv1b_bias: Tensor,
    bn1a_weight: Tensor, bn1a_bias: Tensor, bn1a_running_mean: Tensor, bn1a_running_var: Tensor,
    bn1b_weight: Tensor, bn1b_bias: Tensor, bn1b_running_mean: Tensor, bn1b_running_var: Tensor, bn_eps: float,
) -> Tensor:  # fmt: skip
    """The stem's parameters with BN folded, packed as [wa (16, 3), ba (16), wb (16, 3), bb (16)], float64."""
    pieces = []
    for weight, bias, bn in (
        (conv1a_weight, conv1a_bias, (bn1a_weight, bn1a_bias, bn1a_running_mean, bn1a_running_var)),
        (conv1b_weight, conv1b_bias, (bn1b_weight, bn1b_bias, bn1b_running_mean, bn1b_running_var)),
    ):
        scale, shift = _bn_scale_shift(*bn, bn_eps)
        pieces += [(weight.double().reshape(16, 3) * scale[:, None]).flatten(), bias.double() * scale + shift]
    return torch.cat(pieces)


@dispatch.register("stem_inference", "cuda")
def stem_inference(
    x: Tensor, conv1a_weight: Tensor, conv1a_bias: Tensor, conv1b_weight: Tensor, conv1b_bias: Tensor,
    bn1a_weight: Tensor, bn1a_bias: Tensor, bn1a_running_mean: Tensor, bn1a_running_var: Tensor,
    bn1b_weight: Tensor, bn1b_bias: Tensor, bn1b_running_mean: Tensor, bn1b_running_var: Tensor, bn_eps: float,
    *, emulate: bool = False,
) -> Tensor:  # fmt: skip
    """GLAM stem, inference: ``cat([relu(bn1a(conv1a(x))), relu(bn1b(conv1b(x)))], height)`` written
    channels-last for the first multi-scale block.

    x: (B, 1, H, W) contiguous float32 / float16 / bfloat16 on a CUDA device; conv1a (16, 1, 3, 1),
    conv1b (16, 1, 1, 3), biases and BatchNorm tensors (16,). Returns (B, 2H, W, 16) in x's dtype.
    """
    op = "stem_inference"
    _check_input(op, x, "(B, 1, H, W)", 4, emulate)
    if x.shape[1] != 1:
        raise ValueError(f"{op}: input must be (B, 1, H, W), got shape {tuple(x.shape)}")
    parameters = (
        conv1a_weight, conv1a_bias, conv1b_weight, conv1b_bias,
        bn1a_weight, bn1a_bias, bn1a_running_mean, bn1a_running_var,
        bn1b_weight, bn1b_bias, bn1b_running_mean, bn1b_running_var,
    )  # fmt: skip
    names = (
        "conv1a_weight", "conv1a_bias", "conv1b_weight", "conv1b_bias",
        "bn1a_weight", "bn1a_bias", "bn1a_running_mean", "bn1a_running_var",
        "bn1b_weight", "bn1b_bias", "bn1b_running_mean", "bn1b_running_var",
    )  # fmt: skip
    shapes = ((16, 1, 3, 1), (16,), (16, 1, 1, 3)) + ((16,),) * 9
    _check_parameters(op, x, {n: (t, s) for n, t, s in zip(names, parameters, shapes)})
    _require_inference(op, (x, *parameters))
    params = _packed.get(op, parameters, (float(bn_eps),), lambda: fold_stem(*parameters, bn_eps).to(torch.float32))
    return _glam_stem(x, params)


def stem_inference_ref(
    x: Tensor, conv1a_weight: Tensor, conv1a_bias: Tensor, conv1b_weight: Tensor, conv1b_bias: Tensor,
    bn1a_weight: Tensor, bn1a_bias: Tensor, bn1a_running_mean: Tensor, bn1a_running_var: Tensor,
    bn1b_weight: Tensor, bn1b_bias: Tensor, bn1b_running_mean: Tensor, bn1b_running_var: Tensor, bn_eps: float,
) -> Tensor:  # fmt: skip
    """Plain PyTorch, same arguments and layout as :func:`stem_inference`."""
    a = F.batch_norm(F.conv2d(x, conv1a_weight, conv1a_bias, padding=(1, 0)), bn1a_running_mean, bn1a_running_var,
                     bn1a_weight, bn1a_bias, training=False, eps=bn_eps)  # fmt: skip
    b = F.batch_norm(F.conv2d(x, conv1b_weight, conv1b_bias, padding=(0, 1)), bn1b_running_mean, bn1b_running_var,
                     bn1b_weight, bn1b_bias, training=False, eps=bn_eps)  # fmt: skip
    return torch.cat((F.relu(a), F.relu(b)), dim=2).permute(0, 2, 3, 1).contiguous()


# ---------------------------------------------------------------------------------------------
# MS-SENet squeeze-and-excitation front end, both time directions
# ---------------------------------------------------------------------------------------------

_FRONT_END_BRANCHES = (("conv_time", "bn_time", (11, 1)), ("conv_freq", "bn_freq", (1, 9)), ("conv_square", "bn_square", (3, 3)))
_FRONT_END_KEYS = tuple(
    [f"{conv}.{p}" for conv, _, _ in _FRONT_END_BRANCHES for p in ("weight", "bias")]
    + [f"{bn}.{p}" for _, bn, _ in _FRONT_END_BRANCHES for p in ("weight", "bias", "running_mean", "running_var")]
    + [f"{layer}.{p}" for layer in ("squeeze", "excite", "collapse", "project") for p in ("weight", "bias")]
)


def _front_end_tensors(front: nn.Module | Mapping[str, Tensor], what: str) -> dict[str, Tensor]:
    """The tensors of a SqueezeExciteFrontEnd (module, or mapping with its state_dict names)."""
    if isinstance(front, nn.Module):
        found = {**dict(front.named_parameters()), **dict(front.named_buffers())}
    elif isinstance(front, Mapping):
        found = dict(front)
    else:
        raise TypeError(f"{what} must be a SqueezeExciteFrontEnd or a mapping of its tensors, got {type(front).__name__}")
    missing = [key for key in _FRONT_END_KEYS if key not in found]
    if missing:
        raise ValueError(f"{what} lacks the front-end tensors {missing}")
    return {key: found[key] for key in _FRONT_END_KEYS}


def _front_end_shapes(filters: int, n_mfcc: int) -> dict[str, tuple[int, ...]]:
    shapes = {f"{conv}.weight": (filters, 1, *kernel) for conv, _, kernel in _FRONT_END_BRANCHES}
    shapes.update({key: (filters,) for key in _FRONT_END_KEYS if key.endswith(("bias", "running_mean", "running_var"))})
    shapes.update({f"{bn}.weight": (filters,) for _, bn, _ in _FRONT_END_BRANCHES})
    shapes.update({
        "squeeze.weight": (filters, filters), "excite.weight": (filters, filters),
        "collapse.weight": (1, filters, 1, 1), "collapse.bias": (1,),
        "project.weight": (filters, 4 * n_mfcc, 1),
    })  # fmt: skip
    return shapes


def fold_squeeze_excite(tensors: Mapping[str, Tensor], bn_eps: float) -> Tensor:
    """One direction's front end, BN folded into its three convolutions, packed in the order of
    csrc/ops.h SqueezeExciteLayout (float64, 1-D)."""
    weights, biases = [], []
    for conv, bn, _ in _FRONT_END_BRANCHES:
        scale, shift = _bn_scale_shift(*(tensors[f"{bn}.{p}"] for p in ("weight", "bias", "running_mean", "running_var")), bn_eps)
        weights.append((tensors[f"{conv}.weight"].double().flatten(1) * scale[:, None]).flatten())
        biases.append(tensors[f"{conv}.bias"].double() * scale + shift)
    rest = [tensors[f"{layer}.{p}"].double().flatten() for layer in ("squeeze", "excite", "collapse", "project") for p in ("weight", "bias")]
    return torch.cat(weights + biases + rest)


def _squeeze_excite_output(mfcc: Tensor, filters: int) -> tuple[Tensor, Tensor]:
    b, t, _ = mfcc.shape
    tiles = -(-t // _native().squeeze_excite_time_tile)
    partial_sums = torch.empty((2, b, tiles, filters), dtype=torch.float32, device=mfcc.device)
    return empty_output((2, b, filters, t), dtype=mfcc.dtype, device=mfcc.device), partial_sums


@torch.library.custom_op("glam_fast::cuda_squeeze_excite", mutates_args=(), device_types="cuda")
def _squeeze_excite(mfcc: Tensor, params: Tensor, filters: int) -> Tensor:
    """mfcc (B, T, M), params (2, P) packed by fold_squeeze_excite -> (2, B, F, T)."""
    out, partial_sums = _squeeze_excite_output(mfcc, filters)
    _native().squeeze_excite(_descriptor(mfcc), _descriptor(params), _descriptor(partial_sums), _descriptor(out), _stream(mfcc))
    return out


@_squeeze_excite.register_kernel("cpu")
def _squeeze_excite_emulated(mfcc: Tensor, params: Tensor, filters: int) -> Tensor:
    out, partial_sums = _squeeze_excite_output(mfcc, filters)
    _native().squeeze_excite_emulated(_descriptor(mfcc), _descriptor(params), _descriptor(partial_sums), _descriptor(out))
    return out


@_squeeze_excite.register_fake
def _squeeze_excite_fake(mfcc: Tensor, params: Tensor, filters: int) -> Tensor:
    b, t, _ = mfcc.shape
    return mfcc.new_empty((2, b, filters, t))


@dispatch.register("squeeze_excite_inference", "cuda")
def squeeze_excite_inference(
    mfcc: Tensor,
    forward_front: nn.Module | Mapping[str, Tensor],
    reversed_front: nn.Module | Mapping[str, Tensor],
    bn_eps: float = KERAS_BN_EPS,
    *,
    emulate: bool = False,
) -> Tensor:
    """MS-SENet's squeeze-and-excitation front end for both time directions, inference.

    mfcc: (B, T, M) contiguous float32 / float16 / bfloat16 on a CUDA device, M <= 64.
    forward_front, reversed_front: the two directions' SqueezeExciteFrontEnd modules (or mappings
    with their state_dict names), F <= 64 filters; ``bn_eps`` their BatchNorm eps (Keras' 1e-3).
    Returns (2, B, F, T) in mfcc's dtype: [0] = forward_front(mfcc), [1] =
    reversed_front(mfcc.flip(1)) (in reversed time order, as the reversed direction sees it).
    Spatial dropout is the identity (inference).
    """
    op = "squeeze_excite_inference"
    _check_input(op, mfcc, "(B, T, M)", 3, emulate)
    n_mfcc = mfcc.shape[2]
    fronts = [_front_end_tensors(front, f"{op}: {name}") for front, name in ((forward_front, "forward_front"), (reversed_front, "reversed_front"))]
    filters = fronts[0]["conv_time.weight"].shape[0]
    if not (1 <= filters <= 64 and 1 <= n_mfcc <= 64):
        raise ValueError(f"{op}: supports up to 64 filters and 64 MFCC coefficients, got F={filters}, M={n_mfcc}")
    shapes = _front_end_shapes(filters, n_mfcc)
    for front, name in zip(fronts, ("forward_front", "reversed_front")):
        _check_parameters(op, mfcc, {f"{name}[{key!r}]": (t, shapes[key]) for key, t in front.items()})
    parameters = [t for front in fronts for t in front.values()]
    _require_inference(op, (mfcc, *parameters))
    params = _packed.get(
        op, parameters, (float(bn_eps),), lambda: torch.stack([fold_squeeze_excite(f, bn_eps) for f in fronts]).to(torch.float32)
    )
    return _squeeze_excite(mfcc, params, filters)


def squeeze_excite_inference_ref(
    mfcc: Tensor,
    forward_front: nn.Module | Mapping[str, Tensor],
    reversed_front: nn.Module | Mapping[str, Tensor],
    bn_eps: float = KERAS_BN_EPS,
) -> Tensor:
    """Plain PyTorch, same arguments and result as :func:`squeeze_excite_inference`."""
    outputs = []
    for front, x in ((forward_front, mfcc), (reversed_front, mfcc.flip(1))):
        p = _front_end_tensors(front, "squeeze_excite_inference_ref")
        image = x.unsqueeze(1)
        branches = []
        for conv, bn, kernel in _FRONT_END_BRANCHES:
            h = F.conv2d(image, p[f"{conv}.weight"], p[f"{conv}.bias"], padding=(kernel[0] // 2, kernel[1] // 2))
            h = F.batch_norm(h, p[f"{bn}.running_mean"], p[f"{bn}.running_var"], p[f"{bn}.weight"], p[f"{bn}.bias"], training=False, eps=bn_eps)
            branches.append(F.relu(h))
        h = torch.cat(branches, dim=3)  # (B, F, T, 3M)
        scale = torch.sigmoid(F.linear(F.relu(F.linear(h.mean(dim=(2, 3)), p["squeeze.weight"], p["squeeze.bias"])), p["excite.weight"], p["excite.bias"]))
        h = F.relu(F.conv2d(h * scale[:, :, None, None], p["collapse.weight"], p["collapse.bias"])).squeeze(1)
        outputs.append(F.conv1d(torch.cat((h, x), dim=2).transpose(1, 2), p["project.weight"], p["project.bias"]))
    return torch.stack(outputs)
