"""torchrun support in one place: device, rank, world size, averaging logs, rank-0 writes.

Without torchrun (no ``WORLD_SIZE`` in the environment) every function is a no-op for one
process. Under ``torchrun --nproc_per_node=N`` `init` starts the process group from the
environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...):
nccl when this process trains on a GPU (``cuda:LOCAL_RANK``), gloo on CPU.

``DLINK_DEVICE`` chooses where training runs: ``auto`` (default: a GPU if CUDA is
available, else the CPU), ``cpu`` or ``cuda``.
"""

from __future__ import annotations

import atexit
import os
import warnings

import torch
import torch.distributed as tdist
from torch import nn

from dlink.errors import ConfigError


def is_distributed() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def device() -> torch.device:
    """Where this process trains: ``cuda:LOCAL_RANK`` or the CPU (see ``DLINK_DEVICE``)."""
    choice = os.environ.get("DLINK_DEVICE", "auto").lower()
    if choice not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"DLINK_DEVICE={choice!r} is not one of auto, cpu, cuda")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("DLINK_DEVICE=cuda but torch sees no CUDA device; unset it to train on CPU")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def init() -> None:
    """Start the process group if launched by torchrun (``WORLD_SIZE`` > 1); idempotent."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_distributed():
        dev = device()
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
            tdist.init_process_group(backend="nccl", device_id=dev)
        else:
            tdist.init_process_group(backend="gloo")
        atexit.register(_shutdown)


def _shutdown() -> None:
    if is_distributed():
        tdist.destroy_process_group()


def rank() -> int:
    return tdist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return tdist.get_world_size() if is_distributed() else 1


def local_world_size() -> int:
    """Processes on this machine (torchrun's ``LOCAL_WORLD_SIZE``; 1 without torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", world_size()))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        tdist.barrier()


def wrap(module: nn.Module) -> nn.Module:
    """DistributedDataParallel under torchrun, the module itself otherwise.

    ``static_graph=True``: every stage uses the same parameters at every step, but not all
    of them (e.g. the teacher's ``proj_out`` while fine-tuning); DDP learns which in the first
    step instead of searching the graph every step. On GPUs BatchNorm becomes SyncBatchNorm,
    so N processes x B/N windows normalise like 1 x B; gloo has no SyncBatchNorm, so on CPU
    each process normalises over its own B/N windows (a small, stated difference).
    """
    if not is_distributed() or not any(p.requires_grad for p in module.parameters()):
        return module
    # Conv weights with a size-1 axis (e.g. 1 input channel) get gradients whose stride on
    # that axis differs from DDP's bucket; only the copy layout differs, nothing is wrong.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    dev = next(module.parameters()).device
    if dev.type == "cuda":
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return nn.parallel.DistributedDataParallel(module, device_ids=[dev], static_graph=True)
    return nn.parallel.DistributedDataParallel(module, static_graph=True)


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def mean_over_processes(values: dict[str, float]) -> dict[str, float]:
    """Average scalar logs over processes (identity for one process)."""
    if not is_distributed():
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=device())
    tdist.all_reduce(t)
    return dict(zip(values, (t / world_size()).cpu().tolist()))


def share_of_total(local: float) -> float:
    """``local x world / (sum of local over processes)``; 1.0 for one process.

    A loss that is a mean over a per-process count (masked patches, summed class weights),
    times this factor, averages over processes (as DDP averages gradients) to the mean over
    the global count: N processes then compute 1 process's loss exactly.
    """
    if not is_distributed():
        return 1.0
    t = torch.tensor([float(local)], dtype=torch.float64, device=device())
    tdist.all_reduce(t)
    return float(local) * world_size() / float(t)


def broadcast_object(obj):
    """Rank 0's ``obj`` on every process (pickled; ``obj`` itself for one process)."""
    if not is_distributed():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0, device=device())
    return box[0]
