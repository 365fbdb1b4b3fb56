"""Distributed data parallel set-up: one process per device, launched by ``torchrun``.

NCCL on CUDA, gloo on CPU. Without torchrun's environment (``WORLD_SIZE``
unset or 1), everything runs in the one process and collectives are no-ops.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mixlab.errors import MixlabValueError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank, world size and its device.

    Example:
        >>> DistInfo(0, 1, torch.device("cpu")).is_main
        True
    """

    rank: int
    world_size: int
    device: torch.device
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes outputs (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` is CUDA (this rank's GPU) when available, else MPS, else CPU.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise MixlabValueError(f"train.device is {name!r} but CUDA is not available here; use cpu or auto")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


def setup_distributed(device_name: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (if any) and pick this rank's device.

    Example:
        >>> setup_distributed("cpu").world_size  # not launched by torchrun
        1
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size > 1 and device_name.startswith("cuda:"):
        raise MixlabValueError(
            f"train.device is {device_name!r}, which would put all {world_size} ranks on one GPU; "
            "use cuda or auto under torchrun (each rank takes the GPU of its LOCAL_RANK)"
        )
    device = resolve_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank, world_size, device, local_rank)


def teardown_distributed() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum ``values`` over ranks (in place, returned); unchanged in a single process.

    Example:
        >>> all_reduce_sum(torch.tensor([1.0, 2.0])).tolist()
        [1.0, 2.0]
    """
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_tensors(tensors: list[torch.Tensor]) -> None:
    """Overwrite each tensor with rank 0's values, in place (a no-op in a single process).

    Example:
        >>> broadcast_tensors([torch.ones(2)])
    """
    if dist.is_initialized() and dist.get_world_size() > 1:
        for tensor in tensors:
            dist.broadcast(tensor, src=0)


def average_gradients(params: list[torch.Tensor]) -> None:
    """Replace each parameter's gradient by its mean over ranks (for parameters outside DDP's wrapper).

    Example:
        >>> p = torch.nn.Parameter(torch.ones(1)); p.grad = torch.ones(1); average_gradients([p]); p.grad.tolist()
        [1.0]
    """
    if dist.is_initialized() and dist.get_world_size() > 1:
        for param in params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
            param.grad /= dist.get_world_size()


def barrier() -> None:
    """Wait for every rank (a no-op in a single process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
