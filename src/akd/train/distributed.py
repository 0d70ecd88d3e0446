"""Data-parallel training through torchrun: process group set-up (gloo on CPU, nccl on GPU) and the two
collectives the trainer needs. A plain single process when WORLD_SIZE is unset or 1."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


EPOCH_SEED_STRIDE = 7919  # a prime: runs of different seeds share no shuffle below epoch 7919


def init_distributed(device: torch.device) -> Distributed:
    """Join the process group torchrun set up (gloo on CPU, nccl on GPU); a single process otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Distributed()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def all_reduce_sum(values: list[float], env: Distributed, device: torch.device) -> list[float]:
    if env.world == 1:
        return values
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def barrier(env: Distributed) -> None:
    if env.world > 1:
        import torch.distributed as dist

        dist.barrier()


def shard_indices(length: int, epoch: int, seed: int, rank: int, world: int, shuffle: bool) -> list[int]:
    """This rank's indices for an epoch: a (seed, epoch)-seeded permutation, padded to a multiple of the world
    size by wrapping, then strided by rank, like torch's DistributedSampler."""
    if shuffle:
        generator = torch.Generator().manual_seed(seed * EPOCH_SEED_STRIDE + epoch)
        order = torch.randperm(length, generator=generator).tolist()
    else:
        order = list(range(length))
    padded = order + order[: (-len(order)) % world]
    return padded[rank::world]
