"""Process-group plumbing for DistributedDataParallel runs started by ``torchrun``.

``torchrun --nproc_per_node G [--nnodes N --node_rank R --rdzv_endpoint HOST:PORT]`` sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; the process
group is then joined with ``init_method="env://"``: NCCL between GPUs, gloo on CPUs. A plain
``python``/``anomaly-seg`` run has no ``WORLD_SIZE`` and trains in one process.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from anomaly_seg_ros.common.errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    #: True when this process created the process group (and so destroys it at the end).
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes checkpoints, logs and progress bars."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r}: expected an integer (as torchrun sets it)") from None


def _device(setting: str, local_rank: int, distributed: bool) -> torch.device:
    if setting == "cpu":
        return torch.device("cpu")
    if setting == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"train.device: {setting!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    if setting == "cuda":
        return torch.device("cuda", local_rank)
    if distributed:
        raise ConfigError(
            f"train.device: {setting!r} pins one GPU, but this is a distributed run where each process "
            "uses the GPU of its LOCAL_RANK; use 'cuda' or 'auto'"
        )
    return torch.device(setting)


def setup_distributed(device: str = "auto") -> DistContext:
    """Join the ``torchrun`` process group if there is one; pick this process's device."""
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return DistContext(device=_device(device, 0, False))
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    torch_device = _device(device, local_rank, True)
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    owns = not dist.is_initialized()
    if owns:
        backend = "nccl" if torch_device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {}
        if torch_device.type == "cuda" and "device_id" in inspect.signature(dist.init_process_group).parameters:
            kwargs["device_id"] = torch_device  # binds NCCL to this GPU at once (PyTorch >= 2.3)
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size, **kwargs)
    return DistContext(rank, world_size, local_rank, torch_device, owns)


def cleanup_distributed(context: DistContext) -> None:
    if context.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, context: DistContext) -> torch.Tensor:
    """Sum of ``tensor`` over all processes (the tensor itself when not distributed)."""
    if context.distributed:
        tensor = tensor.to(context.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(value: Any, context: DistContext) -> Any:
    """Rank 0's ``value`` on every process (pickled; for small state like weights or trainer state)."""
    if not context.distributed:
        return value
    box = [value if context.is_main else None]
    dist.broadcast_object_list(box, src=0, device=context.device if context.device.type == "cuda" else None)
    return box[0]


__all__ = [
    "DistContext",
    "all_reduce_sum",
    "broadcast_object",
    "cleanup_distributed",
    "setup_distributed",
]
