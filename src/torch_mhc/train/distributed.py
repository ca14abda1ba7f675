"""Data parallelism on PyTorch's own stack: torchrun + DDP or FSDP2 (``fully_shard``).

``mhc train --parallel ddp|fsdp`` under ``torchrun`` goes through here:

* :func:`init_distributed` reads torchrun's environment (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``), picks NCCL on GPUs and gloo on CPU, and pins each rank to its GPU.
* :func:`wrap_model` wraps the model: DDP as a whole, or FSDP2 with one ``fully_shard``
  unit per transformer block (a block's two ``HyperConnection`` s, their branches and
  coefficient parameters are sharded and gathered together), then the root.
  Under bf16 mixed precision each branch is its own unit with a bf16 policy, while the
  block unit that keeps the small mHC parameters (``fn``, ``base``, ``scale``) keeps them
  in float32, so the coefficients and Sinkhorn see full-precision parameters.
* :func:`full_state_dicts` / :func:`load_full_state_dicts` gather and scatter model and
  optimizer state through ``torch.distributed.checkpoint.state_dict``, so a checkpoint
  written by N ranks is an ordinary single-file checkpoint that resumes on any number of
  ranks (1 included).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Tuple

import torch
import torch.distributed as dist
from torch import nn

from ..nn import HyperConnection

__all__ = ["DistEnv", "init_distributed", "wrap_model", "reshard", "all_reduce_mean",
           "full_state_dicts", "load_full_state_dicts", "shutdown", "PARALLEL_MODES"]

PARALLEL_MODES = ("none", "ddp", "fsdp")


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: its rank among ``world_size`` and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    parallel: str = "none"

    @property
    def is_main(self) -> bool:
        """True on the one process that writes logs, plots, reports and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group is in use."""
        return self.parallel != "none"


def init_distributed(parallel: str, device: str) -> DistEnv:
    """Start the process group for ``parallel`` (``none`` | ``ddp`` | ``fsdp``).

    ``device`` is the resolved single-process device (``"cuda"`` or ``"cpu"``); on CUDA
    each rank takes ``cuda:LOCAL_RANK``. Without torchrun's variables a ``ddp``/``fsdp``
    request runs as a world of one, so the same command works everywhere.
    """
    if parallel not in PARALLEL_MODES:
        raise ValueError(f"unknown --parallel {parallel!r}; choose one of {PARALLEL_MODES}")
    if parallel == "none":
        return DistEnv(device=device)
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("LOCAL_RANK", "0")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, device, parallel)


def _units(model: nn.Module):
    """The repeated blocks to shard one by one (GPT blocks or deep-stack layers)."""
    for name in ("blocks", "layers"):
        units = getattr(model, name, None)
        if isinstance(units, nn.ModuleList):
            return list(units)
    return []


def wrap_model(model: nn.Module, env: DistEnv, bf16: bool = False) -> nn.Module:
    """Wrap ``model`` (already on ``env.device``) for ``env.parallel``; identity for ``none``."""
    if env.parallel == "none":
        return model
    if env.parallel == "ddp":
        ids = [env.local_rank] if env.device.startswith("cuda") else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(env.device.split(":")[0], (env.world_size,))
    low = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    full = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
    for unit in _units(model):
        if bf16:
            for hc in unit.modules():
                if isinstance(hc, HyperConnection):
                    fully_shard(hc.branch, mesh=mesh, mp_policy=low)
        fully_shard(unit, mesh=mesh, mp_policy=full)
    fully_shard(model, mesh=mesh, mp_policy=low if bf16 else full)
    return model


def reshard(model: nn.Module) -> None:
    """Free FSDP2's gathered parameters (no-op otherwise).

    A forward under ``torch.no_grad`` (validation) leaves FSDP2's root unit gathered, and
    the next forward + backward then mixes its gradients into the following step's; the
    trainer reshards after every validation and diagnostic pass.
    """
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def all_reduce_mean(value: float, env: DistEnv) -> float:
    """Mean of a Python number over the ranks (the number itself without a process group)."""
    if not env.distributed:
        return float(value)
    t = torch.tensor(float(value), dtype=torch.float64,
                     device=env.device if env.device.startswith("cuda") else "cpu")
    dist.all_reduce(t)
    return float(t) / env.world_size


def full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer) -> Tuple[dict, dict]:
    """Model and optimizer state, gathered in full on CPU, keyed by parameter names.

    Collective under DDP/FSDP (call it on every rank); the same format without a process
    group, so checkpoints move freely between world sizes.
    """
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return (get_model_state_dict(model, options=opts),
            get_optimizer_state_dict(model, optimizer, options=opts))


def load_full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer, model_sd: dict,
                          optim_sd: dict) -> None:
    """Load state from :func:`full_state_dicts` into a plain or sharded model, any world size."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)
    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_sd, options=opts)
    if optim_sd:
        set_optimizer_state_dict(model, optimizer, optim_sd, options=opts)


def shutdown(env: DistEnv, finished: bool = True) -> None:
    """Destroy the process group of a distributed run. After a run that ``finished`` on this
    rank, wait for every rank first: a rank that tears gloo down while a peer still talks to
    it can make the peer abort at exit. After an error, destroy it at once (a barrier could
    wait on a rank that is gone)."""
    if env.distributed and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()
