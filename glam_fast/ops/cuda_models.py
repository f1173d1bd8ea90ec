"""Whole models on the ``cuda`` backend (inference only): the CUDA C++ kernels of
:mod:`glam_fast.ops.cuda_kernels` for the layers they cover, PyTorch for the rest.

- GLAM: the stem, the three multi-scale blocks (BatchNorm folded, one 5x5 convolution each, with
  the ReLU and max-pool epilogues) and conv5 + BN + ReLU run as CUDA kernels, channels-last from
  one to the next; the global-aware fusion head and the classifier run in PyTorch.
- MS-SENet: the squeeze-and-excitation front ends of both time directions run as one CUDA
  kernel; the temporal-aware blocks, the dynamic fusion and the classifier run in PyTorch.

AFCN has no CUDA kernel (its trunk is cuDNN's convolutions already): ``backend("cuda")`` refuses
it. A model in training mode, or a forward that needs gradients, raises
:class:`~glam_fast.dispatch.BackendUnavailableError`: the kernels use BatchNorm's running
statistics and have no backward. Inside ``torch.autocast`` the kernels run in the autocast dtype.

``emulate=True`` runs CPU tensors through the extension's host emulation of the kernels (slow),
which is how the tests check the composition without a GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glam_fast import dispatch
from glam_fast.dispatch import BackendUnavailableError
from glam_fast.models.glam import MULTISCALE_BLOCKS
from glam_fast.ops import cuda_kernels
from glam_fast.ops.utils import compute_dtype


def _require_eval(model: nn.Module, name: str) -> None:
    if model.training:
        raise BackendUnavailableError(
            f"backend 'cuda' runs {name} in inference only (BatchNorm running statistics, no backward); "
            "call model.eval(), or train with glam_fast.backend('triton') or backend('torch')"
        )


def _bn(bn: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return bn.weight, bn.bias, bn.running_mean, bn.running_var


def glam_forward(model: nn.Module, x: Tensor, *, emulate: bool = False) -> Tensor:
    """GLAM logits through the CUDA kernels: x (B, 1, H, W) MFCC segments -> (B, num_classes) in
    the compute dtype (x's, or the autocast dtype)."""
    _require_eval(model, "GLAM")
    if model.bn1a.eps != model.bn1b.eps:
        raise NotImplementedError("the cuda GLAM stem normalises bn1a and bn1b with one eps: they must be equal")
    dtype = compute_dtype(x)
    h = cuda_kernels.stem_inference(
        x.to(dtype).contiguous(), model.conv1a.weight, model.conv1a.bias, model.conv1b.weight, model.conv1b.bias,
        *_bn(model.bn1a), *_bn(model.bn1b), model.bn1a.eps, emulate=emulate,
    )  # fmt: skip
    for name, pool in MULTISCALE_BLOCKS:
        block = getattr(model, name)
        h = cuda_kernels.multiscale_block_inference(
            h, block.conv3.weight, block.conv3.bias, block.conv5.weight, block.conv5.bias, *_bn(block.bn), block.bn.eps, pool,
            emulate=emulate,
        )  # fmt: skip
    h = cuda_kernels.conv_bn_relu_inference(h, model.conv5.weight, model.conv5.bias, *_bn(model.bn5), model.bn5.eps, emulate=emulate)
    tokens = h.permute(0, 3, 1, 2).flatten(2)  # (B, 128, H' W'): the reference's token layout
    head_dtype = model.fc.weight.dtype
    with torch.autocast(x.device.type, enabled=False):
        logits = model.fc(F.relu(model.gmlp(tokens.to(head_dtype))).flatten(1))
    return logits.to(dtype)


def mssenet_forward(model: nn.Module, x: Tensor, *, emulate: bool = False) -> Tensor:
    """MS-SENet logits with the front ends as one CUDA kernel: x (B, T, n_mfcc) -> (B, num_classes)
    in the compute dtype (x's, or the autocast dtype)."""
    _require_eval(model, "MS-SENet")
    dtype = compute_dtype(x)
    directions = (model.forward_direction, model.backward_direction)
    eps = directions[0].front.bn_time.eps
    fronts = cuda_kernels.squeeze_excite_inference(x.to(dtype).contiguous(), directions[0].front, directions[1].front, eps, emulate=emulate)
    param_dtype = model.classifier.weight.dtype
    with torch.autocast(x.device.type, enabled=False):
        outputs = [direction.run_blocks(h) for direction, h in zip(directions, fronts.to(param_dtype))]  # (B, F, T) each
        logits = model.fuse(*outputs)
    return logits.to(dtype)


@dispatch.register("glam", "cuda")
def _glam_cuda(model: nn.Module, x: Tensor) -> Tensor:
    return glam_forward(model, x)


@dispatch.register("mssenet", "cuda")
def _mssenet_cuda(model: nn.Module, x: Tensor) -> Tensor:
    return mssenet_forward(model, x)
