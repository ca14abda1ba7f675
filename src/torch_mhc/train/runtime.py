"""Where and how a run executes: device, autocast dtype, process rank, peak memory.

This is the single place that decides "is this the main process" (it logs, writes
checkpoints and shows the progress bar). With ``--parallel ddp|fsdp`` under torchrun,
:meth:`Runtime.from_config` starts the process group (``train/distributed.py``) and takes
this process's rank, world size and GPU from it.
"""
from __future__ import annotations

import contextlib
import resource
import sys
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from .config import ConfigError, TrainConfig
from .distributed import DistEnv, init_distributed

__all__ = ["Runtime"]


@dataclass
class Runtime:
    """Device, autocast dtype and process group position of one run."""

    device: torch.device
    autocast_dtype: Optional[torch.dtype] = None
    rank: int = 0
    world_size: int = 1
    dist: DistEnv = DistEnv()

    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes files."""
        return self.rank == 0

    @property
    def dtype_name(self) -> str:
        """``"bfloat16"`` under autocast, else ``"float32"``."""
        return "bfloat16" if self.autocast_dtype == torch.bfloat16 else "float32"

    @classmethod
    def from_config(cls, cfg: TrainConfig, rank: int = 0, world_size: int = 1) -> "Runtime":
        """Resolve ``cfg.device`` (``auto``: cuda if available) and ``cfg.dtype``."""
        name = cfg.device
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ConfigError(f"unknown device {cfg.device!r}; use auto, cpu, cuda or "
                              "cuda:N") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {cfg.device!r} requested but CUDA is not available; "
                              "use --device cpu or auto")
        if device.type == "cuda" and device.index is not None \
                and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {cfg.device!r}: only {torch.cuda.device_count()} "
                              "GPU(s) visible")
        if cfg.backend == "triton":
            from ..ops._backend import interpret_mode, triton_available
            if not triton_available():
                raise ConfigError("--backend triton needs Triton: pip install "
                                  "'torch-mhc[triton]', or use --backend auto")
            if device.type != "cuda" and not interpret_mode():
                raise ConfigError(f"--backend triton needs a CUDA device, and this run is on "
                                  f"{device}; use --backend auto (Triton on CUDA, PyTorch "
                                  "elsewhere) or --backend torch")
        env = DistEnv(rank, world_size, device=str(device))
        if cfg.parallel != "none":
            env = init_distributed(cfg.parallel, device.type)
            device, rank, world_size = torch.device(env.device), env.rank, env.world_size
        dtype = cfg.dtype
        if dtype == "auto":
            dtype = "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() \
                else "float32"
        bf16 = dtype in ("bfloat16", "bf16")
        return cls(device, torch.bfloat16 if bf16 else None, rank, world_size, env)

    def autocast(self):
        """Context manager for the forward pass (bf16 autocast, or nothing)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def reset_peak_memory(self) -> None:
        """Start measuring peak memory (CUDA allocator, or the process RSS high-water mark)."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif sys.platform.startswith("linux"):
            try:  # Linux: writing 5 resets VmHWM, the peak resident set size
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass

    def peak_memory_mb(self) -> Tuple[Optional[float], str]:
        """``(MiB, kind)``: CUDA ``max_memory_allocated``, or the process's peak RSS on CPU
        (which includes the Python and PyTorch baseline of a few hundred MiB)."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2 ** 20, "cuda_allocated"
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024, "process_peak_rss"
        except OSError:
            pass
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / (2 ** 20 if sys.platform == "darwin" else 1024), "process_peak_rss"

    def synchronize(self) -> None:
        """Wait for queued device work (for honest timings)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
