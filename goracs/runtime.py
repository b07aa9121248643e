"""Where and how computations run: devices, CPU threads, torch.distributed sharding."""

from __future__ import annotations

from typing import Callable

import torch


class DeviceError(ValueError):
    """A device that was asked for but is not there."""


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Map 'auto' / 'cpu' / 'cuda[:k]' to a torch device; 'auto' picks cuda only when it is available, and a cuda
    device that torch does not see fails here rather than at the first tensor."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {str(device)!r} was requested but torch sees no CUDA device; "
                          "use device=auto or cpu")
    return dev


def model_device(model) -> torch.device:
    """The device of a model's first parameter."""
    return next(model.parameters()).device


def set_threads(n: int | None) -> None:
    """Limit torch's CPU threads (the machines are shared)."""
    if n:
        torch.set_num_threads(int(n))


def dist_info() -> tuple[int, int]:
    """(rank, world size) of an initialised torch.distributed group, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def sharded_map(fn: Callable[[list[int]], list], n: int) -> list:
    """Run fn on this process's share of range(n) and gather the results in order on every process."""
    rank, world = dist_info()
    if world == 1:
        return list(fn(list(range(n))))
    mine = list(range(rank, n, world))
    part = list(fn(mine)) if mine else []
    parts: list = [None] * world
    torch.distributed.all_gather_object(parts, list(zip(mine, part)))
    out: list = [None] * n
    for p in parts:
        for i, v in p:
            out[i] = v
    return out
