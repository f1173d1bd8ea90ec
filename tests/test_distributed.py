"""SyncBatchNorm across 2 CPU processes (gloo) equals one process on the whole batch."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from glam_fast.distributed import SyncBatchNorm


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4, momentum=None))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return net


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, 3, 5, 7, generator=g), torch.randn(6, 4, 5, 7, generator=g)


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    net = SyncBatchNorm.convert(_net()).train()
    x, gy = _data()
    shard = slice(rank * 3, rank * 3 + 3)
    xs = x[shard].clone().requires_grad_(True)
    for _ in range(2):  # twice: running statistics accumulate over steps
        y = net(xs)
    (y * gy[shard]).sum().backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    for g in grads.values():
        dist.all_reduce(g)  # what DDP does (sum here; the reference loss is a sum too)
    torch.save({"y": y.detach(), "gx": xs.grad, "grads": grads, "buffers": {n: b.clone() for n, b in net.named_buffers()}}, os.path.join(out_dir, f"{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_equal_one_process(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    net = _net().train()
    x, gy = _data()
    x.requires_grad_(True)
    for _ in range(2):
        y = net(x)
    (y * gy).sum().backward()
    ranks = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([r["gx"] for r in ranks]), x.grad, rtol=1e-5, atol=1e-5)
    for name, p in net.named_parameters():
        torch.testing.assert_close(ranks[0]["grads"][name], p.grad, rtol=1e-4, atol=1e-4)  # sums of ~200 products
    for name, b in net.named_buffers():
        for r in ranks:
            torch.testing.assert_close(r["buffers"][name], b, rtol=1e-5, atol=1e-6)


def test_without_process_group_it_is_plain_batch_norm():
    ref = _net().train()
    sync = SyncBatchNorm.convert(_net()).train()
    x, _ = _data()
    torch.testing.assert_close(sync(x), ref(x))
    assert isinstance(sync[1], SyncBatchNorm) and sync[1].momentum == 0.1 and sync[4].momentum is None


# ----------------------------------------------------------------------------- DDP training

GLAM_SHAPE = (14, 24)  # small MFCC segments: the same layers, a fraction of the work


def _glam_units():
    from glam_fast.train import Units

    g = torch.Generator().manual_seed(2)
    n = 20  # 3 global batches of 8: the last one short (4 items, 2 per rank)
    x = torch.randn(n, 1, *GLAM_SHAPE, generator=g)
    labels = torch.randint(0, 3, (n,), generator=g)
    return Units(x, None, labels, torch.arange(n), n)


def _glam_training(rank: int, world: int) -> dict:
    """Two epochs of the GLAM recipe's loop (mixup on) with plain SGD, global batch 8. (The lr is
    small because random data at a large lr is chaotic: rounding differences of the summation
    order grow to 1e-3 within a few steps, in two single-process runs just the same.)"""
    from glam_fast import GLAM
    from glam_fast.distributed import DistributedContext
    from glam_fast.train import default_args, train_epoch

    torch.manual_seed(0)
    model = SyncBatchNorm.convert(GLAM(shape=GLAM_SHAPE, num_classes=3))
    context = DistributedContext(rank, world, rank)
    wrapped = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    args = default_args("glam", batch_size=8, backend="torch")
    generator = torch.Generator().manual_seed(3)
    losses = [train_epoch(wrapped, optimizer, _glam_units(), args, generator, context) for _ in range(2)]
    return {"losses": losses, "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.save(_glam_training(rank, world), os.path.join(out_dir, f"ddp{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_ddp_training_equals_one_process(tmp_path):
    """2 CPU processes (gloo, DDP, SyncBatchNorm), each on its half of every global batch, end
    with the weights, BatchNorm statistics and epoch losses of one process on the whole batch."""
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    single = _glam_training(0, 1)
    ranks = [torch.load(tmp_path / f"ddp{r}.pt") for r in range(2)]
    initial = _initial_state()
    for r in ranks:
        torch.testing.assert_close(torch.tensor(r["losses"]), torch.tensor(single["losses"]), rtol=1e-5, atol=1e-6)
        for name, expected in single["state"].items():
            torch.testing.assert_close(r["state"][name], expected, rtol=1e-4, atol=2e-5, msg=lambda m, n=name: f"{n}: {m}")
    # Training moved the weights by 10x the tolerance or more, so an error in the gradient
    # averaging or the sharding (a step off by a factor) could not pass.
    steps = {name: (t - initial[name]).abs().max().item() for name, t in single["state"].items() if name.endswith("weight")}
    assert sum(step > 2e-4 for step in steps.values()) >= 8, steps


def _initial_state() -> dict:
    from glam_fast import GLAM

    torch.manual_seed(0)
    return GLAM(shape=GLAM_SHAPE, num_classes=3).state_dict()
