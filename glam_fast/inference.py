"""Inference-only forms of the models for the CPU (what most scoring machines have).

:func:`prepare` turns a trained reference model (``GLAM``, ``MSSENet`` or ``AFCN``) into a frozen
module that computes the same logits with less work:

- **BatchNorm folded** into the convolution before it (running statistics: eval semantics), and
  for GLAM's multi-scale blocks the identity shortcuts too: ``BN(cat[conv3(x) + x, conv5(x) + x])``
  becomes ``cat[conv3'(x), conv5'(x)]``, or (``merge_multiscale=True``) one 5x5 convolution
  C -> 2C with the 3x3 kernel embedded in it (47 % more multiply-adds, one call instead of two).
- **oneDNN with pre-packed weights** (:mod:`glam_fast.onednn`): each 2-D convolution is one call
  with its weight already in oneDNN's layout and the ReLU fused; GLAM's gMLP input projection
  has its GELU fused and the output projection its residual add.
- **Channels-last** activations, so oneDNN does not reorder between layers (GLAM, AFCN).
- **Micro-batches**: a large batch runs a few items at a time so that each layer's activations
  stay in the CPU cache (GLAM's gMLP head in smaller ones again).
- GLAM: native calls for the rest of the forward (``native=True``, the default where the
  extension is built): the stem's two 3-tap convolutions in one pass that writes the
  height-concatenated map channels-last (:mod:`glam_fast.glam_stem_cpu`), each block's pooling
  and concatenation in one pass (:mod:`glam_fast.pool_concat_cpu`), the gMLP head in one call
  (:mod:`glam_fast.gmlp_head_cpu`: GEMM tiles with the bias, GELU, LayerNorm, gate and residual
  applied in registers). Without them, the same in PyTorch ops: the stem as one small matmul,
  each branch max-pooled before the concatenation.
- MS-SENet: both time directions in every call (grouped front-end convolutions, block-diagonal
  GEMMs for the temporal blocks); the squeeze-and-excitation scale folded into the collapse, and
  the (2·39, T, 117) front-end map never concatenated (see :class:`InferenceMSSENet`).
- Winograd convolutions (:mod:`glam_fast.winograd`: F(4x4, 5x5), 4 multiplications per output
  instead of 25; F(4x4, 3x3), 2.25 instead of 9) where measured faster: GLAM's conv5 and, from
  4 segments per call, its wider multi-scale branches; AFCN's conv2 (5x5, 64 -> 192) and conv3-5
  (3x3, 192-384 channels, from 4 tiles per call).
- AFCN: the per-layer masking beyond each item's length skipped for batches with no padding;
  the attention reads the trunk's channels-last map as it is, its tanh fused into the projection.

The choices that only pay off on some machines are arguments. The defaults (oneDNN, separate
branches, channels-last, the micro-batch sizes) come from interleaved measurements on a 2-core CPU
machine (``bench/bench_inference_cpu.py``, results in ``bench/results/``). The prepared module
holds copies of the folded weights (the source model is left as it is), has no gradients, and
raises on input the reference would reject.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from glam_fast import glam_stem_cpu, gmlp_head_cpu, pool_concat_cpu, winograd
from glam_fast import onednn as onednn_ops
from glam_fast.models import AFCN, GLAM, MSSENet
from glam_fast.models._checks import check_input
from glam_fast.models.afcn import _out_size


def fold_batch_norm(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of ``bn(conv(x))`` as one convolution, with ``bn``'s running statistics.

    weight: (C_out, ...) of the convolution (any kernel rank); bias: (C_out,) or None.
    Computed in float64 and returned in the weight's dtype.
    """
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = bn.bias.double() - bn.running_mean.double() * scale
    conv_bias = bias.double() if bias is not None else torch.zeros_like(scale)
    folded_weight = weight.double() * scale.view(-1, *([1] * (weight.dim() - 1)))
    return folded_weight.to(weight.dtype), (conv_bias * scale + shift).to(weight.dtype)


def _identity_kernel(channels: int, size: int, dtype: torch.dtype) -> torch.Tensor:
    """(C, C, size, size) kernel of the identity map (1 at the centre tap of the diagonal)."""
    kernel = torch.zeros(channels, channels, size, size, dtype=dtype)
    kernel[torch.arange(channels), torch.arange(channels), size // 2, size // 2] = 1.0
    return kernel


def _in_micro_batches(forward, x: torch.Tensor, micro_batch: int | None, *per_item: torch.Tensor) -> torch.Tensor:
    """``forward(x, *per_item)``, run ``micro_batch`` items at a time when the batch is larger
    (None: at once); ``per_item`` tensors (e.g. lengths) are split along with x."""
    if micro_batch is None or x.shape[0] <= micro_batch:
        return forward(x, *per_item)
    parts = zip(*(torch.split(t, micro_batch) for t in (x, *per_item)))
    return torch.cat([forward(*part) for part in parts])


def _frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone().contiguous(), requires_grad=False)


def _frozen_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters do not require gradients (the source is untouched)."""
    module = copy.deepcopy(module)
    for p in module.parameters():
        p.requires_grad_(False)
    return module


# ----------------------------------------------------------------------------- GLAM


# Segments per call from which each of GLAM's convolutions runs as a Winograd layer
# (glam_fast.winograd), by (kernel size, input channels); absent: never. Measured layer alone on 2
# cores (AVX-512), Winograd against direct: conv5 (5x5, 128) 0.37-0.60 against 0.77-0.86 ms at
# batch 1, 10.9 against 20.8 at 32; the 5x5 branches with 64 / 32 channels level at batch 1
# (0.22 / 0.21 against 0.20 / 0.20 ms) and faster from 8 (0.64 / 0.60 against 1.35 / 1.31 ms; at 32
# 2.5 / 3.2 against 5.4 / 5.5), the 3x3 with 64 slower at 1 and 2, faster at 8 and 32 (1.05 against
# 1.78 ms). With 16 channels (block 2), and 3x3 with 32, Winograd was slower (block 2's 3x3 at
# batch 32: 13.8 against 2.6 ms): the GEMMs are too thin for the transforms to pay.
GLAM_WINOGRAD_FROM_BATCH = {(5, 128): 1, (5, 64): 4, (5, 32): 4, (3, 64): 4}


def _glam_conv(weight: torch.Tensor, bias: torch.Tensor, padding: int, map_size: tuple[int, int], use_winograd: bool, onednn: bool, channels_last: bool) -> nn.Module:
    """Convolution + ReLU of a GLAM layer on (B, C, *map_size) maps: a Winograd layer from the
    batch :data:`GLAM_WINOGRAD_FROM_BATCH` gives (direct below it), else a direct one."""
    from_batch = GLAM_WINOGRAD_FROM_BATCH.get((weight.shape[-1], weight.shape[1]))
    if use_winograd and from_batch is not None and winograd.supported(weight, 1, padding):
        return winograd.WinogradConvReLU(weight, bias, min_tiles=winograd.tiles(from_batch, *map_size))
    return onednn_ops.ConvReLU(weight, bias, padding, onednn=onednn, channels_last=channels_last)


class InferenceMultiScale(nn.Module):
    """GLAM's multi-scale block with BN and the identity folded: (B, C, H, W) -> (B, 2C, H', W'), ReLU
    applied, then (``pool=True``) 2x2 max-pooled: H' = H // 2, W' = W // 2."""

    def __init__(self, block, merge: bool, map_size: tuple[int, int], use_winograd: bool, onednn: bool, channels_last: bool, native: bool = False):
        super().__init__()
        self.native = native  # pooling + concatenation as one native call (glam_fast.pool_concat_cpu)
        channels = block.conv3.in_channels
        w3 = block.conv3.weight.double() + _identity_kernel(channels, 3, torch.float64)
        w5 = block.conv5.weight.double() + _identity_kernel(channels, 5, torch.float64)
        weight = torch.cat([F.pad(w3, (1, 1, 1, 1)), w5])  # (2C, C, 5, 5), 3x3 centred in 5x5
        bias = torch.cat([block.conv3.bias, block.conv5.bias]).double()
        weight, bias = fold_batch_norm(weight, bias, block.bn)
        dtype = block.conv3.weight.dtype
        weight, bias = weight.to(dtype), bias.to(dtype)
        options = {"map_size": map_size, "use_winograd": use_winograd, "onednn": onednn, "channels_last": channels_last}
        if merge:
            branches = [_glam_conv(weight, bias, 2, **options)]
        else:
            branches = [
                _glam_conv(weight[:channels, :, 1:4, 1:4].contiguous(), bias[:channels], 1, **options),
                _glam_conv(weight[channels:], bias[channels:], 2, **options),
            ]
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor, pool: bool) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches]
        if pool and self.native and pool_concat_cpu.applies(outs):
            return pool_concat_cpu.pool_concat(outs)
        if pool:  # each branch pooled before the concatenation (max and ReLU commute with it): a quarter of the copy
            return pool_concat_cpu.pool_concat_reference(outs)
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


# Segments per call of GLAM's gMLP head within a micro-batch: its (n, 128, 364) activations then
# stay in the L2 cache. At batch 32 on a 2-core CPU, in rounds alternating the variants, chunks of
# 8 ran 4-5 % and 8.5 % faster than the whole 32 in two 40-round comparisons, and level in a
# 15-round one (bench/results/cpu-inference-paired-run4-glam.json): a small gain, not a large one.
GLAM_HEAD_MICRO_BATCH = 8


class InferenceGLAM(nn.Module):
    """GLAM for inference: (B, 1, H, W) MFCC segments -> (B, num_classes) logits. Built by :func:`prepare`."""

    def __init__(
        self,
        model: GLAM,
        merge_multiscale: bool | tuple[bool, bool, bool],
        channels_last: bool,
        micro_batch: int | None,
        onednn: bool,
        head_micro_batch: int | None = None,
        native: bool = False,
        use_winograd: bool = False,
    ):
        super().__init__()
        self.shape, self.num_classes, self.fusion_dim = model.shape, model.num_classes, model.fusion_dim
        self.channels_last, self.micro_batch, self.head_micro_batch = channels_last, micro_batch, head_micro_batch
        merges = (merge_multiscale,) * 3 if isinstance(merge_multiscale, bool) else tuple(merge_multiscale)
        wa, ba = fold_batch_norm(model.conv1a.weight, model.conv1a.bias, model.bn1a)
        wb, bb = fold_batch_norm(model.conv1b.weight, model.conv1b.bias, model.bn1b)
        # The stem's two 3-tap convolutions (1 -> 16 channels) as one (B, 2, H*W, 3) @ (2, 3, 16)
        # matmul whose output is already the height-concatenated map in NHWC order.
        self.stem_weight = _frozen(torch.stack([wa.reshape(-1, 3).t(), wb.reshape(-1, 3).t()]))  # (2, 3, 16)
        self.stem_bias = _frozen(torch.stack([ba, bb])[:, None, :])  # (2, 1, 16)
        self.native = native  # the stem, pooled concatenations and gMLP head as native calls
        conv_options = {"use_winograd": use_winograd, "onednn": onednn, "channels_last": channels_last}
        size2 = (2 * self.shape[0], self.shape[1])  # the stem's height-concatenated map, then pooled by 2 per block
        size3 = (size2[0] // 2, size2[1] // 2)
        size4 = (size3[0] // 2, size3[1] // 2)
        self.block2 = InferenceMultiScale(model.conv2, merges[0], size2, native=native, **conv_options)
        self.block3 = InferenceMultiScale(model.conv3, merges[1], size3, native=native, **conv_options)
        self.block4 = InferenceMultiScale(model.conv4, merges[2], size4, native=native, **conv_options)
        self.conv5 = _glam_conv(*fold_batch_norm(model.conv5.weight, model.conv5.bias, model.bn5), 2, size4, **conv_options)
        prenorm = model.gmlp.layers[0].fn  # _Residual(_PreNorm(_TokenShift(GatedMLPBlock)))
        gmlp = prenorm.fn.fn
        self.norm = _frozen_copy(prenorm.norm)
        # proj_in as its two halves (value, gate): each output is contiguous for what follows.
        proj_in, half = gmlp.proj_in[0], gmlp.proj_in[0].out_features // 2
        self.value_weight, self.value_bias = _frozen(proj_in.weight[:half]), _frozen(proj_in.bias[:half])
        self.gate_in_weight, self.gate_in_bias = _frozen(proj_in.weight[half:]), _frozen(proj_in.bias[half:])
        self.gate_norm = _frozen_copy(gmlp.sgu.norm)
        # Token mixing (n, n) and its bias (n, 1), doubled (exact in binary floating point) for
        # tanh(u) = 2 sigmoid(2u) - 1: PyTorch's CPU sigmoid is several times faster than its tanh.
        self.mix_weight_doubled = _frozen(2 * gmlp.sgu.weight[0])
        self.mix_bias_doubled = _frozen(2 * gmlp.sgu.bias[0, :, None])
        self.proj_out = _frozen_copy(gmlp.proj_out)
        self.fc = _frozen_copy(model.fc)
        # The same head as one native call (None: the PyTorch ops above, which also run where it
        # does not apply: a module cast to float64, an input that requires grad).
        self.native_head = gmlp_head_cpu.NativeGMLPHead(model.gmlp) if native else None

    @property
    def onednn(self) -> bool:
        """Whether the convolutions and the gMLP's projections run as fused oneDNN calls."""
        return self.conv5.onednn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = check_input(x, self, f"(B, 1, {self.shape[0]}, {self.shape[1]})", (None, 1, *self.shape))
        return _in_micro_batches(self._forward, x, self.micro_batch)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        native_stem = self.native and glam_stem_cpu.applies(x)
        stem = (glam_stem_cpu.glam_stem if native_stem else glam_stem_cpu.glam_stem_reference)(x, self.stem_weight, self.stem_bias)
        x = stem.permute(0, 3, 1, 2)  # (B, 16, 2H, W), channels-last
        if not self.channels_last:
            x = x.contiguous()
        x = self.block2(x, pool=True)
        x = self.block3(x, pool=True)
        x = self.conv5(self.block4(x, pool=False))
        tokens = x.contiguous().flatten(2)  # (B, 128, fusion_dim), NCHW order as the reference
        return _in_micro_batches(self._head, tokens, self.head_micro_batch)

    def _head(self, tokens: torch.Tensor) -> torch.Tensor:
        """The gMLP and the classifier: (B, 128, fusion_dim) tokens -> (B, num_classes) logits."""
        if self.native_head is not None and self.native_head.applies(tokens):
            return self.fc(self.native_head(tokens).flatten(1))
        batch = tokens.shape[0]
        onednn = self.onednn
        z = self.norm(tokens)
        value = onednn_ops.linear_activation(z, self.value_weight, self.value_bias, "gelu", onednn)  # (B, 128, 2d)
        gate = self.gate_norm(onednn_ops.linear_activation(z, self.gate_in_weight, self.gate_in_bias, "gelu", onednn))
        half_tanh = torch.baddbmm(self.mix_bias_doubled, self.mix_weight_doubled.expand(batch, -1, -1), gate).sigmoid_()
        gated = torch.addcmul(value, half_tanh, value, value=2).sub_(value, alpha=2)  # tanh(mix) * value
        x = onednn_ops.linear_add(gated, self.proj_out.weight, self.proj_out.bias, tokens, onednn)
        return self.fc(x.relu_().flatten(1))


# ----------------------------------------------------------------------------- MS-SENet


class InferenceMSSENet(nn.Module):
    """MS-SENet for inference, both time directions at once: (B, T, M) -> (B, K).

    The front end's three convolutions run grouped over the two directions (oneDNN, fused ReLU),
    each branch is reduced for the squeeze-and-excitation and collapsed to one map by a GEMM with
    the per-utterance scales, without concatenating the (B, 2F, T, 3M) map. From the projection on,
    activations are time-major (B, T, 2F) with the directions side by side, so every 1x1 or causal
    kernel-2 convolution is one GEMM with a block-diagonal weight (the zero blocks cost FLOPs,
    which are not what limits these layers, and save one call per direction).
    """

    def __init__(self, model: MSSENet, micro_batch: int | None, onednn: bool):
        super().__init__()
        self.num_classes, self.n_mfcc, self.n_filters = model.num_classes, model.n_mfcc, model.n_filters
        self.micro_batch = micro_batch
        fwd, bwd = model.forward_direction, model.backward_direction
        m = model.n_mfcc
        branches = []
        for name, padding in (("time", (5, 0)), ("freq", (0, 4)), ("square", (1, 1))):
            (wf, bf), (wb, bb) = (
                fold_batch_norm(getattr(d.front, f"conv_{name}").weight, getattr(d.front, f"conv_{name}").bias, getattr(d.front, f"bn_{name}"))
                for d in (fwd, bwd)
            )
            # (2F, 1, kh, kw) with groups=2: direction d's filters see input channel d.
            branches.append(onednn_ops.ConvReLU(torch.cat([wf, wb]), torch.cat([bf, bb]), padding, groups=2, onednn=onednn))
        self.branches = nn.ModuleList(branches)
        # squeeze / excite as batched matmuls over the two directions: (2, F, F)
        self.squeeze_weight = _frozen(torch.stack([fwd.front.squeeze.weight.t(), bwd.front.squeeze.weight.t()]))
        self.squeeze_bias = _frozen(torch.stack([fwd.front.squeeze.bias, bwd.front.squeeze.bias])[:, None])
        self.excite_weight = _frozen(torch.stack([fwd.front.excite.weight.t(), bwd.front.excite.weight.t()]))
        self.excite_bias = _frozen(torch.stack([fwd.front.excite.bias, bwd.front.excite.bias])[:, None])
        self.collapse_weight = _frozen(torch.cat([fwd.front.collapse.weight.flatten(), bwd.front.collapse.weight.flatten()]))  # (2F,)
        self.collapse_bias = _frozen(torch.cat([fwd.front.collapse.bias, bwd.front.collapse.bias]))  # (2,)
        # (2F, 2): column d selects direction d's channels (the collapse GEMM's block structure)
        self.direction_mask = _frozen(torch.eye(2, dtype=fwd.front.collapse.weight.dtype).repeat_interleave(self.n_filters, dim=0))
        # Projection input is (B, T, 4M, 2): [time | freq | square | raw MFCC] along 4M, the
        # direction last; row k * 2 + d of the weight takes feature k of direction d.
        project = [d.front.project.weight[:, :, 0].t() for d in (fwd, bwd)]  # (4M, F) each
        weight = torch.zeros(4 * m, 2, 2, self.n_filters, dtype=project[0].dtype)
        weight[:, 0, 0], weight[:, 1, 1] = project
        self.project_weight = _frozen(weight.reshape(8 * m, 2 * self.n_filters))
        self.project_bias = _frozen(torch.cat([fwd.front.project.bias, bwd.front.project.bias]))
        self.dilations = [block.dilation for block in fwd.blocks]
        now, past, biases = [], [], []
        for block_f, block_b in zip(fwd.blocks, bwd.blocks):
            for conv, bn in (("conv1", "bn1"), ("conv2", "bn2")):
                (wf, bf), (wb, bb) = (fold_batch_norm(getattr(b, conv).weight, getattr(b, conv).bias, getattr(b, bn)) for b in (block_f, block_b))
                # causal kernel 2: out[t] = W[..., 1] x[t] + W[..., 0] x[t - dilation] + b, as
                # (2F in, 2F out) block-diagonal matrices: forward direction first, then backward
                now.append(_frozen(torch.block_diag(wf[:, :, 1].t(), wb[:, :, 1].t())))
                past.append(_frozen(torch.block_diag(wf[:, :, 0].t(), wb[:, :, 0].t())))
                biases.append(_frozen(torch.cat([bf, bb])))
        self.block_now, self.block_past, self.block_biases = nn.ParameterList(now), nn.ParameterList(past), nn.ParameterList(biases)
        self.fusion_weight = _frozen(model.fusion_weight)
        self.classifier_weight = _frozen(model.classifier.weight)
        self.classifier_bias = _frozen(model.classifier.bias)

    @property
    def onednn(self) -> bool:
        """Whether the front end's convolutions run as fused oneDNN calls."""
        return self.branches[0].onednn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = check_input(x, self, f"(B, T, {self.n_mfcc})", (None, None, self.n_mfcc), min_sizes=(1, 1, 1))
        return _in_micro_batches(self._forward, x, self.micro_batch)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, frames, m = x.shape
        nf = self.n_filters
        # (B, 2, T, M) with the two directions as channels, stored channels-last (B, T, M, 2)
        mfcc = torch.stack((x, x.flip(1)), dim=-1).permute(0, 3, 1, 2)
        # Each branch as (B, T*M, 2F): a free view of oneDNN's channels-last output.
        maps = [branch(mfcc).permute(0, 2, 3, 1).reshape(batch, frames * m, 2 * nf) for branch in self.branches]
        pooled = sum(y.sum(dim=1) for y in maps) / (frames * 3 * m)  # (B, 2F): mean over (T, 3M)
        pooled = pooled.view(batch, 2, nf).transpose(0, 1)  # (2, B, F)
        squeezed = F.relu(torch.baddbmm(self.squeeze_bias, pooled, self.squeeze_weight))
        scale = torch.sigmoid(torch.baddbmm(self.excite_bias, squeezed, self.excite_weight))  # (2, B, F)
        # The SE scale of channel f multiplies the collapse weight of f instead of the map.
        scaled = scale.transpose(0, 1).reshape(batch, 2 * nf) * self.collapse_weight  # (B, 2F)
        collapse = scaled[:, :, None] * self.direction_mask  # (B, 2F, 2)
        collapsed = torch.cat([torch.bmm(y, collapse).view(batch, frames, m, 2) for y in maps], dim=2)  # (B, T, 3M, 2)
        collapsed = collapsed.add_(self.collapse_bias).relu_()
        front_in = torch.cat((collapsed, mfcc.permute(0, 2, 3, 1)), dim=2).view(batch * frames, 8 * m)
        h = torch.addmm(self.project_bias, front_in, self.project_weight).view(batch, frames, 2 * nf)
        pooled_blocks = []
        for j, dilation in enumerate(self.dilations):
            g = h
            for k in (2 * j, 2 * j + 1):
                g = self._causal_conv(g, k, dilation).relu_()
            h = h * torch.sigmoid(g)
            pooled_blocks.append(h.mean(dim=1))
        pooled = torch.stack(pooled_blocks, dim=1)  # (B, n, 2F)
        pooled = pooled[..., :nf] + pooled[..., nf:]
        fused = torch.einsum("bnf,n->bf", pooled, self.fusion_weight)
        return F.linear(fused, self.classifier_weight, self.classifier_bias)

    def _causal_conv(self, h: torch.Tensor, k: int, dilation: int) -> torch.Tensor:
        """Causal kernel-2 convolution k of the temporal blocks on (B, T, 2F), both directions."""
        batch, frames, channels = h.shape
        out = torch.addmm(self.block_biases[k], h.reshape(batch * frames, channels), self.block_now[k]).view(batch, frames, channels)
        if dilation < frames:  # the past tap reaches inside the sequence (zero padding otherwise)
            out[:, dilation:] += torch.matmul(h[:, : frames - dilation], self.block_past[k])
        return out


# ----------------------------------------------------------------------------- AFCN


class InferenceAFCN(nn.Module):
    """AFCN for inference: (B, 3, F, T) [+ lengths] -> (B, K); fused convolution + ReLU (the 5x5
    and 3x3 layers as Winograd convolutions when ``use_winograd``), a channels-last trunk, masking only
    where padded, the attention's projection + tanh one call."""

    def __init__(self, model: AFCN, channels_last: bool, onednn: bool, micro_batch: int | None, use_winograd: bool):
        super().__init__()
        self.num_classes, self.min_size, self.channels_last = model.num_classes, model.min_size, channels_last
        self.micro_batch = micro_batch
        self.trunk = [layer for layer in model.features if isinstance(layer, (nn.Conv2d, nn.MaxPool2d))]

        def conv(layer: nn.Conv2d) -> nn.Module:
            if use_winograd and winograd.supported(layer.weight, layer.stride, layer.padding, layer.groups):
                return winograd.WinogradConvReLU(layer.weight, layer.bias)
            return onednn_ops.ConvReLU(layer.weight, layer.bias, layer.padding, layer.stride, onednn=onednn, channels_last=channels_last)

        self.convs = nn.ModuleList([conv(layer) for layer in self.trunk if isinstance(layer, nn.Conv2d)])
        attention = model.attention
        self.proj_weight, self.proj_bias = _frozen(attention.proj.weight), _frozen(attention.proj.bias)  # (A, 256), (A,)
        # λ folded into the context vector: λ (u . t) = (λ u) . t
        self.context_scaled = _frozen(attention.scale * attention.context.weight[0])  # (A,)
        self.classifier = _frozen_copy(model.classifier)
        self._check_lengths = model._check_lengths  # bound method: the reference's length rules

    @property
    def onednn(self) -> bool:
        """Whether the convolutions run as fused oneDNN calls with pre-packed weights."""
        return self.convs[0].onednn

    def forward(self, x: torch.Tensor, lengths=None) -> torch.Tensor:
        m = self.min_size
        x = check_input(x, self, "(B, 3, F, T)", (None, 3, None, None), min_sizes=(1, 3, m, m))
        if lengths is None:
            return _in_micro_batches(self._forward, x, self.micro_batch)
        lengths = self._check_lengths(lengths, x)
        return _in_micro_batches(self._forward, x, self.micro_batch, lengths)

    def _forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if lengths is not None and bool((lengths == x.shape[3]).all()):
            lengths = None  # nothing padded: every mask would keep everything
        # Without pre-packed weights, batch 1 stays NCHW: there oneDNN's per-call reorders of
        # channels-last weights cost more than the layout saves (2 cores, 257 x 201 input).
        channels_last = self.channels_last and (self.onednn or x.shape[0] > 1)
        h = x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()
        if lengths is not None:
            h = AFCN._zero_beyond(h, lengths)
        convs = iter(self.convs)
        for layer in self.trunk:
            if isinstance(layer, nn.Conv2d):
                h = next(convs)(h)
            else:
                h = F.max_pool2d(h, layer.kernel_size, layer.stride)
            if lengths is not None:
                lengths = _out_size(lengths, layer)
                h = AFCN._zero_beyond(h, lengths)  # ReLU(0) = 0: masking after the ReLU equals the reference's order
        batch, channels, freq, time = h.shape
        # (B, F'T', 256), position = f * T' + t: a view of a channels-last map
        a = h.permute(0, 2, 3, 1).reshape(batch, freq * time, channels)
        energy = torch.matmul(onednn_ops.linear_activation(a, self.proj_weight, self.proj_bias, "tanh", self.onednn), self.context_scaled)  # (B, L)
        if lengths is not None:
            valid = torch.arange(time, device=h.device)[None, :] < lengths[:, None]
            energy = energy.masked_fill(~valid[:, None, :].expand(batch, freq, time).reshape(batch, -1), float("-inf"))
        alpha = torch.softmax(energy, dim=-1)
        return self.classifier(torch.bmm(alpha.unsqueeze(1), a).squeeze(1))


# ----------------------------------------------------------------------------- entry point


# Items per micro-batch by default, from interleaved measurements on a 2-core CPU (the
# prepared-whole-batch variants of bench/bench_inference_cpu.py): GLAM batch 256 ran 1.8-1.9x
# eager in micro-batches of 32 against 1.3-1.5x whole (cpu-inference-run4-quiet.json); MS-SENet
# (T = 188) ran 1.3-1.6x faster in micro-batches of 2 than whole at batch 32 and 256. AFCN
# (257 x 300, conv2-5 as Winograd layers; in-process, alternating): micro-batches of 8 / 16 / 32
# ran 1.90 / 2.01 / 1.64x eager at batch 32, 1.86 / 1.97 / 1.45x at 64, 2.05 / 2.18 / 1.97x at
# 256. At 32 items several buffers pass 32 MB (conv1's output, conv2's transformed input), which
# glibc's malloc maps and unmaps on every call: the page faults cost more than the larger GEMMs save.
AUTO_MICRO_BATCH = {GLAM: 32, MSSENet: 2, AFCN: 16}


def _batch_size_option(name: str, value, auto: int) -> int | None:
    """A micro-batch size argument: a positive int, None (no split) or "auto" (-> ``auto``)."""
    if value == "auto":
        return auto
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f'{name} must be a positive int, None or "auto", got {value!r}')
    return value


def prepare(
    model: nn.Module,
    merge_multiscale: bool | tuple[bool, bool, bool] = False,
    channels_last: bool = True,
    micro_batch: int | None | str = "auto",
    onednn: bool | None = None,
    head_micro_batch: int | None | str = "auto",
    use_winograd: bool | None = None,
    native: bool | None = None,
) -> nn.Module:
    """The inference-only form of a reference ``GLAM``, ``MSSENet`` or ``AFCN`` (same logits).

    Args:
        model: the trained reference model (its BatchNorm running statistics are used); it is
            not modified: the prepared module holds its own copies of the weights.
        merge_multiscale: GLAM only. Merge each multi-scale block's 3x3 and 5x5 branches into one
            5x5 convolution C -> 2C; one flag for all three blocks (C = 16, 32, 64) or one per block.
        channels_last: run the convolutions on NHWC activations (GLAM, AFCN).
        micro_batch: Run larger batches this many items at a time, so that each layer's
            activations stay in the CPU cache; batches up to this size run as they are. None:
            the whole batch at once. "auto": the measured default of the model (GLAM 32
            segments; MS-SENet 2 utterances, whose front end writes a (2·39, T, 117) map per
            utterance; AFCN 16 windows).
        onednn: Run the 2-D convolutions (and GLAM's gMLP projections) as oneDNN calls
            with pre-packed weights and fused ReLU / GELU / residual (:mod:`glam_fast.onednn`).
            None: wherever possible (float32 on the CPU, PyTorch built with oneDNN); True: required
            (raises otherwise); False: plain PyTorch ops.
        head_micro_batch: GLAM only. Segments per call of the gMLP head within each micro-batch
            (its (n, 128, 364) activations then stay in the L2 cache); None: the whole
            micro-batch; "auto": :data:`GLAM_HEAD_MICRO_BATCH`.
        use_winograd: GLAM and AFCN. Run convolutions as Winograd F(4x4, 5x5) / F(4x4, 3x3) ones
            (:mod:`glam_fast.winograd`) where measured faster: AFCN's conv2 always and conv3-5
            from :data:`glam_fast.winograd.MIN_TILES` tiles per call (4: every 257 x 201 or
            257 x 300 window); GLAM's conv5 always, its 5x5 branches with 32 and 64 channels and
            3x3 branch with 64 from 4 segments per call (:data:`GLAM_WINOGRAD_FROM_BATCH`). None:
            wherever possible (oneDNN in use and the native extension built); True: required
            (raises otherwise); False: direct convolutions only.
        native: GLAM only. Run the stem, each block's pooling + concatenation and the gMLP head
            as native calls (:mod:`glam_fast.glam_stem_cpu`, :mod:`glam_fast.pool_concat_cpu`,
            :mod:`glam_fast.gmlp_head_cpu`). None: wherever possible (float32 on the CPU and the
            native extension built); True: required (raises otherwise); False: PyTorch ops.

    Returns an eval-mode module on the model's device and dtype that takes the same input as the
    reference forward. Call it under ``torch.inference_mode()`` (or ``no_grad``).
    """
    if not isinstance(model, (GLAM, MSSENet, AFCN)):
        raise TypeError(f"prepare expects a glam_fast GLAM, MSSENet or AFCN model, got {type(model).__name__}")
    param = next(model.parameters())
    use_onednn = onednn_ops.resolve(onednn, param.device, param.dtype)
    if not isinstance(model, GLAM) and (merge_multiscale is not False or head_micro_batch != "auto"):
        raise ValueError(f"merge_multiscale and head_micro_batch apply to GLAM only, not to {type(model).__name__}")
    if isinstance(model, MSSENet) and use_winograd is not None:
        raise ValueError("use_winograd applies to GLAM and AFCN only, not to MSSENet")
    if not isinstance(model, GLAM) and native is not None:
        raise ValueError(f"native applies to GLAM only, not to {type(model).__name__}")
    native_built = gmlp_head_cpu.native_available() and glam_stem_cpu.native_available() and pool_concat_cpu.native_available()
    native_possible = param.device.type == "cpu" and param.dtype == torch.float32 and native_built
    if native and not native_possible:
        raise RuntimeError(
            "prepare(native=True) needs float32 on the CPU and glam_fast's native extension "
            f"(model: {param.dtype} on {param.device}; extension: {'built' if native_built else 'not built'})"
        )
    winograd_built = winograd.native_available()
    if use_winograd and not (use_onednn and winograd_built):
        raise RuntimeError(
            "prepare(use_winograd=True) needs the oneDNN path (float32 on the CPU) and glam_fast's native extension "
            f"(oneDNN in use: {use_onednn}; extension: {'built' if winograd_built else 'not built'})"
        )
    micro_batch = _batch_size_option("micro_batch", micro_batch, next(size for cls, size in AUTO_MICRO_BATCH.items() if isinstance(model, cls)))
    head_micro_batch = _batch_size_option("head_micro_batch", head_micro_batch, GLAM_HEAD_MICRO_BATCH)
    use_winograd = use_onednn and winograd_built if use_winograd is None else use_winograd
    if isinstance(model, GLAM):
        native = native_possible if native is None else native
        prepared = InferenceGLAM(model, merge_multiscale, channels_last, micro_batch, use_onednn, head_micro_batch, native, use_winograd)
    elif isinstance(model, MSSENet):
        prepared = InferenceMSSENet(model, micro_batch, use_onednn)
    else:
        prepared = InferenceAFCN(model, channels_last, use_onednn, micro_batch, use_winograd)
    return prepared.eval()
