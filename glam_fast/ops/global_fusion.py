"""GLAM's global-aware fusion head: fc(ReLU(X + gMLP(LN(X)))) over the 128 channel tokens.

TEMPORARY: this file holds only the plain-PyTorch reference. The fused Triton op is developed
separately and replaces this file; until then ``global_fusion_head`` is the reference itself, so
the fused GLAM forward runs (and is tested) end to end with the head in plain PyTorch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def global_fusion_head_ref(
    x: Tensor, norm_weight: Tensor, norm_bias: Tensor, proj_in_weight: Tensor, proj_in_bias: Tensor,
    gate_norm_weight: Tensor, gate_norm_bias: Tensor, token_weight: Tensor, token_bias: Tensor,
    proj_out_weight: Tensor, proj_out_bias: Tensor, fc_weight: Tensor, fc_bias: Tensor,
) -> Tensor:  # fmt: skip
    """x: (B, n = 128, d) -> logits (B, K); the layers of GLAM's head in plain PyTorch (MODELS.md §1)."""
    d = x.shape[-1]
    z = F.layer_norm(x, (d,), norm_weight, norm_bias, 1e-5)
    u = F.gelu(F.linear(z, proj_in_weight, proj_in_bias))
    res, gate = u.chunk(2, dim=-1)
    gate = F.layer_norm(gate, (gate.shape[-1],), gate_norm_weight, gate_norm_bias, 1e-5)
    gate = torch.matmul(token_weight, gate) + token_bias[:, None]
    y = F.linear(torch.tanh(gate) * res, proj_out_weight, proj_out_bias) + x
    return F.linear(F.relu(y).flatten(1), fc_weight, fc_bias)


# TEMPORARY alias until the fused global-aware fusion op replaces this file.
global_fusion_head = global_fusion_head_ref
