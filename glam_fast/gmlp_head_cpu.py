"""GLAM's global-aware fusion head (one gMLP block) for CPU inference as one native call.

The head of :class:`glam_fast.models.GLAM` after conv5, on (B, S, D) tokens (S = 128 channels,
D = H' * W' of conv5's map)::

    z = LN(tokens);  value = gelu(z Wv^T + bv);  gate = LN_g(gelu(z Wg^T + bg))
    out = relu(tokens + (value * tanh(Wmix gate + bmix)) Wo^T + bo)        (B, S, D)

PyTorch runs this as a dozen ops (three GEMMs of 128 x 182-364 per segment, two LayerNorms,
GELU, the gate), each streaming the activations through memory; at batch 1 on a 2-core CPU they
took about 1 ms of GLAM's 3.5. The native kernel (``csrc/gmlp_head_cpu.cpp``) computes the GEMMs
as register tiles with the bias, GELU, gate and residual applied while each tile is in
registers, in two passes split over PyTorch's OpenMP threads.

:class:`NativeGMLPHead` packs the weights once; :func:`gmlp_head_reference` is the same
computation in PyTorch ops (the model's own modules), what the tests compare it with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from glam_fast import _extension
from glam_fast.ops.utils import empty_output


def native_available() -> bool:
    """Whether glam_fast's native extension is built with the CPU gMLP head."""
    return _extension.has("gmlp_head")


def _native():
    return _extension.require("gmlp_head", "the native gMLP head")


def _padded(n: int) -> int:
    step = _native().gmlp_head_column_step
    return (n + step - 1) // step * step


def _parts(fusion: nn.Module):
    """(pre-norm LayerNorm, GatedMLPBlock) of a :class:`glam_fast.models.glam.GlobalAwareFusion`
    with one layer: ``_Residual(_PreNorm(_TokenShift(GatedMLPBlock)))``."""
    if len(fusion.layers) != 1:
        raise ValueError(f"the native gMLP head computes one gMLP block, got {len(fusion.layers)}")
    prenorm = fusion.layers[0].fn
    return prenorm.norm, prenorm.fn.fn


def gmlp_head_reference(fusion: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``relu(fusion(tokens))`` with the model's own modules: (B, S, D) -> (B, S, D)."""
    return F.relu(fusion(tokens))


class NativeGMLPHead(nn.Module):
    """``relu(fusion(tokens))`` for a GLAM fusion block, float32 on the CPU, inference only:
    tokens (B, S, D) -> (B, S, D). The weights are copied and packed (the source is untouched)."""

    def __init__(self, fusion: nn.Module):
        super().__init__()
        norm, block = _parts(fusion)
        proj_in, gating, proj_out = block.proj_in[0], block.sgu, block.proj_out
        features, hidden = proj_in.in_features, proj_out.in_features
        n_tokens = gating.weight.shape[-1]
        hidden_padded, features_padded = _padded(hidden), _padded(features)
        frozen = {"device": proj_in.weight.device, "dtype": torch.float32}

        def put(name: str, value: torch.Tensor) -> None:
            self.register_buffer(name, value.detach().to(**frozen).contiguous(), persistent=False)

        # proj_in as (D, 2 Hp) columns [value | 0 | gate | 0]: rows of the right-hand side are contiguous.
        in_weight = torch.zeros(features, 2 * hidden_padded, **frozen)
        in_bias = torch.zeros(2 * hidden_padded, **frozen)
        in_weight[:, :hidden] = proj_in.weight[:hidden].t()
        in_weight[:, hidden_padded : hidden_padded + hidden] = proj_in.weight[hidden:].t()
        in_bias[:hidden], in_bias[hidden_padded : hidden_padded + hidden] = proj_in.bias[:hidden], proj_in.bias[hidden:]
        out_weight = torch.zeros(hidden, features_padded, **frozen)
        out_weight[:, :features] = proj_out.weight.t()
        put("norm_weight", norm.weight)
        put("norm_bias", norm.bias)
        put("in_weight", in_weight)
        put("in_bias", in_bias)
        put("gate_norm_weight", gating.norm.weight)
        put("gate_norm_bias", gating.norm.bias)
        # tanh(u) = 2 sigmoid(2u) - 1: the 2 folded into the token mixing (exact in floating point).
        put("mix_weight", 2 * gating.weight[0])
        put("mix_bias", 2 * gating.bias[0])
        put("out_weight", out_weight)
        put("out_bias", proj_out.bias)
        self.norm_eps, self.gate_norm_eps = float(norm.eps), float(gating.norm.eps)
        self.n_tokens, self.features, self.hidden = n_tokens, features, hidden

    def _weights(self) -> list:
        names = ("norm_weight", "norm_bias", "in_weight", "in_bias", "gate_norm_weight", "gate_norm_bias", "mix_weight", "mix_bias", "out_weight", "out_bias")
        return [_extension.tensor_descriptor(getattr(self, name)) for name in names]

    def applies(self, tokens: torch.Tensor) -> bool:
        """Whether :meth:`forward` takes ``tokens``: float32 on the CPU (weights too: a module cast
        or moved leaves this path), and no gradient wanted."""
        return (
            tokens.device.type == "cpu" and tokens.dtype == torch.float32 and self.in_weight.device.type == "cpu"
            and self.in_weight.dtype == torch.float32 and not (tokens.requires_grad and torch.is_grad_enabled())
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        shape = (self.n_tokens, self.features)
        if tokens.dim() != 3 or tuple(tokens.shape[1:]) != shape:
            raise ValueError(f"NativeGMLPHead expects tokens of shape (B, {shape[0]}, {shape[1]}), got {tuple(tokens.shape)}")
        if tokens.device.type != "cpu" or tokens.dtype != torch.float32 or self.in_weight.dtype != torch.float32:
            raise ValueError(f"NativeGMLPHead runs float32 on the CPU, got {tokens.dtype} tokens on {tokens.device}, {self.in_weight.dtype} weights")
        if tokens.requires_grad and torch.is_grad_enabled():
            raise RuntimeError("NativeGMLPHead is inference only: call it under torch.inference_mode() or no_grad")
        tokens = tokens.contiguous()
        batch = tokens.shape[0]
        hidden_padded = self.in_bias.shape[0] // 2
        scratch = [
            empty_output((batch, self.n_tokens, self.features), dtype=torch.float32, device="cpu"),
            empty_output((batch, self.n_tokens, 2 * hidden_padded), dtype=torch.float32, device="cpu"),
            empty_output((batch, self.n_tokens, hidden_padded), dtype=torch.float32, device="cpu"),
        ]
        out = empty_output(tokens.shape, dtype=torch.float32, device="cpu")
        descriptor = _extension.tensor_descriptor
        _native().gmlp_head(
            descriptor(tokens), self._weights(), [descriptor(t) for t in scratch], descriptor(out),
            self.norm_eps, self.gate_norm_eps, torch.get_num_threads(),
        )
        return out

    def extra_repr(self) -> str:
        return f"tokens={self.n_tokens}, features={self.features}, hidden={self.hidden}"
