"""torchrun support in one place: rank, world size, averaging logs, rank-0 writes.

Without torchrun (no ``WORLD_SIZE`` in the environment) every function is a no-op for one
process. Under ``torchrun --nproc_per_node=N`` `init` starts the process group: gloo on CPU,
nccl when CUDA is available.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as tdist
from torch import nn


def is_distributed() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def init() -> None:
    """Start the process group if launched by torchrun; idempotent."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_distributed():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        tdist.init_process_group(backend=backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def rank() -> int:
    return tdist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return tdist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        tdist.barrier()


def wrap(module: nn.Module) -> nn.Module:
    """DistributedDataParallel under torchrun, the module itself otherwise."""
    if not is_distributed() or not any(p.requires_grad for p in module.parameters()):
        return module
    return nn.parallel.DistributedDataParallel(module)


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def mean_over_processes(values: dict[str, float]) -> dict[str, float]:
    """Average scalar logs over processes (identity for one process)."""
    if not is_distributed():
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64)
    tdist.all_reduce(t)
    return dict(zip(values, (t / world_size()).tolist()))
