"""Data-parallel training helpers: process-group setup and BatchNorm synchronised across ranks.

``torch.nn.SyncBatchNorm`` only runs on GPUs; :class:`SyncBatchNorm` here works with any backend
(gloo on CPUs, NCCL on GPUs): in training it all-reduces the per-channel sums (Σx, Σx², count)
in the forward and (Σdy, Σdy·x̂) in the backward, so N ranks with local shards of a global batch
compute exactly what one process computes on the whole batch (up to summation order).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_environment(device: torch.device | str | None = None) -> DistributedContext:
    """Join the process group that ``torchrun`` describes in the environment (NCCL for CUDA
    devices, gloo otherwise); a plain single-process run gets a disabled context."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return DistributedContext()
    if not dist.is_initialized():
        device_type = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank)


class _SyncBatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm over all ranks: x (N, C, ...) -> y, plus the global mean/var."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, group):
        dims = [0] + list(range(2, x.dim()))
        xf = x.float()
        count = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float32, device=x.device)
        stats = torch.cat([xf.sum(dims), (xf * xf).sum(dims), count])
        dist.all_reduce(stats, group=group)
        c = x.shape[1]
        total = stats[2 * c]
        mean = stats[:c] / total
        var = (stats[c : 2 * c] / total - mean * mean).clamp_min(0)
        rstd = torch.rsqrt(var + eps)
        shape = [1, c] + [1] * (x.dim() - 2)
        x_hat = (xf - mean.view(shape)) * rstd.view(shape)
        ctx.save_for_backward(x_hat, weight, rstd)
        ctx.total, ctx.group, ctx.dims, ctx.shape = total, group, dims, shape
        y = x_hat * weight.float().view(shape) + bias.float().view(shape)
        return y.to(x.dtype), mean, var, total

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_var, _grad_total):
        x_hat, weight, rstd = ctx.saved_tensors
        dims, shape = ctx.dims, ctx.shape
        gy = grad_y.float()
        grad_bias = gy.sum(dims)
        grad_weight = (gy * x_hat).sum(dims)
        sums = torch.cat([grad_bias, grad_weight])
        dist.all_reduce(sums, group=ctx.group)
        c = grad_bias.numel()
        mean_dy, mean_dy_xhat = sums[:c] / ctx.total, sums[c:] / ctx.total
        grad_x = (gy - mean_dy.view(shape) - x_hat * mean_dy_xhat.view(shape)) * (weight.float() * rstd).view(shape)
        # weight/bias gradients stay local: DDP averages them over ranks like every other parameter
        return grad_x.to(grad_y.dtype), grad_weight.to(weight.dtype), grad_bias.to(weight.dtype), None, None


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics span every rank of ``process_group`` (any backend).

    Outside training, or without an initialised process group, it is a plain BatchNorm. Running
    statistics use PyTorch's rule (unbiased variance over the global batch), so every rank keeps
    identical buffers.
    """

    def __init__(self, *args, process_group=None, **kwargs):
        super().__init__(*args, **kwargs)
        if not (self.affine and self.track_running_stats):
            raise ValueError("SyncBatchNorm here supports affine BatchNorm with running statistics only")
        self.process_group = process_group

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input (N, C, ...), got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        self._check_input_dim(x)
        y, mean, var, total = _SyncBatchNormFunction.apply(x, self.weight, self.bias, self.eps, self.process_group)
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            unbiased = var * (total / (total - 1).clamp_min(1))
            self.running_mean.mul_(1 - momentum).add_(mean.to(self.running_mean.dtype), alpha=momentum)
            self.running_var.mul_(1 - momentum).add_(unbiased.to(self.running_var.dtype), alpha=momentum)
        return y

    @classmethod
    def convert(cls, module: nn.Module, process_group=None) -> nn.Module:
        """Replace every BatchNorm{1,2,3}d in ``module`` (in place, sharing parameters and buffers)."""
        for name, child in module.named_children():
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, cls):
                sync = cls(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats, process_group=process_group)
                sync.weight, sync.bias = child.weight, child.bias
                sync.running_mean, sync.running_var = child.running_mean, child.running_var
                sync.num_batches_tracked = child.num_batches_tracked
                sync.train(child.training)
                setattr(module, name, sync)
            else:
                cls.convert(child, process_group)
        return module
