"""Data-parallel training under ``torchrun``: the one training loop, each process on a shard of every batch.

``torchrun --nproc-per-node N -m edgestem.cli train ...`` starts N processes with ``RANK`` and
``WORLD_SIZE`` set; :func:`world` joins them in a process group. Every process draws the same
batches and the same augmentation noise (all seeded by ``(seed, epoch, batch)``), takes its
contiguous shard of each batch, and weights its loss by its share of the batch, so the gradients
summed over processes are the gradient of the whole batch's mean loss: the single-process update,
up to the order of floating-point sums. BatchNorm normalises each shard with its own statistics
(as PyTorch's DistributedDataParallel does on CPU) and the running statistics are averaged over
the processes after every epoch; with BatchNorm the result is close to, not equal to, the
single-process run. Only rank 0 writes the run directory.

The backend is gloo: the loop computes on CPU tensors (NCCL reduces only CUDA tensors).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

BACKEND = "gloo"


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1

    @property
    def writer(self) -> bool:
        """Whether this process writes checkpoints and reports."""
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous part of a batch of ``n`` (sizes differ by at most one)."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def reduce(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], share: float) -> tuple:
        """The whole batch's loss and loss terms: each rank's values weighted by its share, summed."""
        import torch.distributed as dist

        values = torch.stack([loss.detach(), *(v.detach() for v in terms.values())]) * share
        dist.all_reduce(values)
        return values[0], dict(zip(terms, values[1:], strict=True))

    def sync_grads(self, model: torch.nn.Module) -> None:
        """Sum the gradients over the processes (one flat all-reduce)."""
        import torch.distributed as dist

        params = [p for p in model.parameters() if p.grad is not None]
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Average floating-point buffers (BatchNorm running statistics) so every rank holds the same model."""
        import torch.distributed as dist

        for b in model.buffers():
            if b.is_floating_point():
                dist.all_reduce(b)
                b.div_(self.size)

    def check_batches(self, sizes: list[int]) -> None:
        """Every shard must hold a pattern: refuse batches smaller than the number of processes."""
        from edgestem.errors import ConfigError

        if min(sizes) < self.size:
            raise ConfigError(
                f"a batch of {min(sizes)} patterns cannot be split over {self.size} processes; "
                "raise train.batch_size or start fewer processes"
            )


@contextlib.contextmanager
def world() -> Iterator[World]:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1 (and leave it after); else a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        yield World()
        return
    import torch.distributed as dist

    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(backend=BACKEND)
    try:
        yield World(dist.get_rank(), dist.get_world_size())
    finally:
        if owned:
            dist.destroy_process_group()
