"""Writing initial values into parameters that may be sharded (FSDP2 ``DTensor``)."""
from __future__ import annotations

import torch

__all__ = ["copy_into"]


@torch.no_grad()
def copy_into(param: torch.Tensor, values: torch.Tensor) -> None:
    """``param.copy_(values)`` for a plain tensor or a ``DTensor`` (``values`` is the full
    tensor, the same on every rank: each rank keeps its own shard, no communication)."""
    mesh, placements = getattr(param, "device_mesh", None), getattr(param, "placements", None)
    if mesh is not None and placements is not None:
        from torch.distributed.tensor import distribute_tensor
        values = values.to(device=param.device, dtype=param.dtype)
        try:
            values = distribute_tensor(values, mesh, placements, src_data_rank=None)
        except TypeError:  # torch < 2.7: no src_data_rank (the values are scattered from rank 0)
            values = distribute_tensor(values, mesh, placements)
    param.copy_(values)
