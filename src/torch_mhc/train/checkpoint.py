"""Checkpoints: weights as safetensors, optimizer/step/RNG in a small state file.

A checkpoint is a folder ``<run>/checkpoints/step_00000100/`` holding ``model.safetensors``,
``state.pt`` and ``SHA256SUMS`` (the SHA-256 of both, in the format ``sha256sum -c``
reads). It is written into a temporary folder first and renamed into place, so a crash
never leaves a half-written checkpoint under a real name; only the last ``keep_last`` are
kept. Before a checkpoint is used its files are checked against ``SHA256SUMS``: a damaged
newest checkpoint (truncated, bit-flipped) is reported and the previous intact one used.
``CheckpointManager`` is the whole interface the trainer uses (save, latest, load), so
another storage scheme (e.g. sharded, for FSDP) can replace it.
"""
from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .distributed import full_state_dicts, load_full_state_dicts

__all__ = ["CheckpointManager", "CheckpointError", "find_checkpoint", "verify_checkpoint",
           "rng_state", "set_rng_state", "WEIGHTS", "STATE", "SUMS"]

WEIGHTS, STATE, SUMS = "model.safetensors", "state.pt", "SHA256SUMS"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or from an incompatible run."""


def rng_state() -> Dict[str, Any]:
    """Every RNG the run could touch (torch CPU/CUDA, Python, NumPy) as plain data."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *np_state[2:]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _step_dirs(root: Path) -> List[Path]:
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP_DIR.match(p.name)) and (p / STATE).is_file()
             and (p / WEIGHTS).is_file()]
    return [p for _, p in sorted(found)]


def _step_of(p: Path) -> int:
    m = _STEP_DIR.match(p.name)
    return int(m.group(1)) if m else -1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_sums(folder: Path) -> None:
    (folder / SUMS).write_text("".join(f"{_sha256(folder / name)}  {name}\n"
                                       for name in (WEIGHTS, STATE)))


# verdicts of verify_checkpoint, keyed by the files' identity (path, size, mtime), so a
# checkpoint checked once (e.g. by the command line, then by the trainer) is hashed once
_VERDICTS: Dict[Tuple, Optional[str]] = {}


def verify_checkpoint(path) -> Optional[str]:
    """What is wrong with checkpoint folder ``path``, or None if it is intact.

    The weights and the state file must match the SHA-256 sums in ``SHA256SUMS``. A
    checkpoint of an older torch-mhc without that file is checked for readability only
    (both files must open)."""
    p = Path(path)
    files = [p / WEIGHTS, p / STATE, p / SUMS]
    try:
        key = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns)
                    for f in files if f.exists())
    except OSError as e:
        return f"cannot read it: {e.strerror or e}"
    if key in _VERDICTS:
        return _VERDICTS[key]
    for f in files[:2]:
        if not f.is_file():
            return f"{f.name} is missing"
    try:
        if (p / SUMS).is_file():
            sums = {}
            for line in (p / SUMS).read_text().splitlines():
                digest, _, name = line.partition("  ")
                sums[name.strip()] = digest.strip()
            bad = [f.name for f in files[:2] if sums.get(f.name) != _sha256(f)]
            verdict = (f"{' and '.join(bad)} {'does' if len(bad) == 1 else 'do'} not match "
                       f"the checksum in {SUMS}" if bad else None)
        else:  # written before checksums: at least both files must open
            verdict = None
            try:
                with safe_open(str(files[0]), "pt") as f:
                    list(f.keys())
                torch.load(files[1], map_location="cpu", weights_only=True)
            except Exception as e:  # any parse error of either format
                verdict = f"it cannot be read: {type(e).__name__}: {str(e)[:120]}"
    except OSError as e:
        verdict = f"cannot read it: {e.strerror or e}"
    _VERDICTS[key] = verdict
    return verdict


def find_checkpoint(path, on_damaged: Optional[Callable[[str], None]] = None) -> Path:
    """An intact checkpoint folder from a checkpoint folder, a ``checkpoints`` folder or a
    run folder (its newest intact checkpoint).

    A damaged newer checkpoint of a run is passed over: ``on_damaged`` (if given) is
    called with one line saying which and why. A checkpoint folder named directly must be
    intact; the error then names the previous intact checkpoint of its run.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"cannot resume: {path} does not exist")
    if (p / STATE).is_file() and (p / WEIGHTS).is_file():
        why = verify_checkpoint(p)
        if why is None:
            return p
        older = [d for d in _step_dirs(p.parent) if _step_of(d) < _step_of(p)]
        good = next((d for d in reversed(older) if verify_checkpoint(d) is None), None)
        hint = (f"; the previous intact checkpoint is {good} (--resume {good})" if good
                else "; no earlier intact checkpoint in its run")
        raise CheckpointError(f"cannot resume: checkpoint {p} is damaged: {why}{hint}")
    for root in (p / "checkpoints", p):
        dirs = _step_dirs(root)
        if not dirs:
            continue
        damaged = []
        for d in reversed(dirs):
            why = verify_checkpoint(d)
            if why is None:
                if damaged and on_damaged is not None:
                    on_damaged(f"damaged checkpoint(s) passed over ({'; '.join(damaged)}); "
                               f"using the previous intact one, {d}")
                return d
            damaged.append(f"{d}: {why}")
        raise CheckpointError(f"cannot resume: every checkpoint in {root} is damaged "
                              f"({'; '.join(damaged)}); start a new run")
    raise CheckpointError(f"cannot resume: no checkpoint in {path} (a run writes one every "
                          "--ckpt-interval steps and at the end)")


class CheckpointManager:
    """Save, find and load the checkpoints of one run folder.

    Args:
        run_dir: the run's output folder; checkpoints go to ``run_dir/checkpoints``.
        keep_last: how many checkpoints to keep (older ones are deleted after a save).
        enabled: False on processes that must not write (non-main ranks).
    """

    def __init__(self, run_dir, keep_last: int = 2, enabled: bool = True):
        self.root = Path(run_dir) / "checkpoints"
        self.keep_last, self.enabled = keep_last, enabled

    def list(self) -> List[Path]:
        """Complete checkpoints, oldest first."""
        return _step_dirs(self.root)

    def latest(self) -> Optional[Path]:
        """The newest complete checkpoint, or None (its files are not checked)."""
        dirs = self.list()
        return dirs[-1] if dirs else None

    def latest_intact(self) -> Optional[Path]:
        """The newest checkpoint whose files match their checksums, or None."""
        return next((d for d in reversed(self.list()) if verify_checkpoint(d) is None), None)

    def save(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             extra: Dict[str, Any]) -> Optional[Path]:
        """Write checkpoint ``step`` atomically and prune old ones; returns its folder.

        Model and optimizer state are gathered in full and keyed by parameter name
        (``train/distributed.py``), so under DDP/FSDP every rank must call this (the
        gathering is collective) and only the main one writes; the files are the same
        whatever the world size.
        """
        model_sd, optim_sd = full_state_dicts(model, optimizer)
        if not self.enabled:
            return None
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"step_{step:08d}"
        tmp = self.root / f".tmp-{final.name}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_file(_untie(model_sd), str(tmp / WEIGHTS))
        state = {"format": 2, "step": step, "optimizer": optim_sd, "rng": rng_state(), **extra}
        torch.save(state, tmp / STATE)
        _write_sums(tmp)
        for f in (WEIGHTS, STATE, SUMS):
            with open(tmp / f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():  # re-saving a step (e.g. after a resume): swap, then drop the old
            old = self.root / f".old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        # prune among checkpoints up to this step: newer ones (left by a run resumed from an
        # earlier checkpoint, e.g. past a damaged one) never push out the one just written
        upto = [d for d in self.list() if _step_of(d) <= step]
        for stale in upto[:-self.keep_last]:
            shutil.rmtree(stale, ignore_errors=True)
        return final

    def clean_temporary(self) -> None:
        """Remove leftovers of interrupted saves."""
        if self.root.is_dir():
            for p in self.root.iterdir():
                if p.name.startswith((".tmp-", ".old-")):
                    shutil.rmtree(p, ignore_errors=True)

    @staticmethod
    def read_state(path) -> Dict[str, Any]:
        """The state file of checkpoint folder ``path`` (no weights)."""
        try:
            return torch.load(Path(path) / STATE, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"cannot read checkpoint {path}: {e}") from None

    @staticmethod
    def load(path, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer],
             state: Dict[str, Any], device) -> None:
        """Load weights (and optimizer state) of checkpoint ``path`` into the given objects
        (plain, DDP or FSDP2 models alike; under DDP/FSDP every rank calls this)."""
        try:
            weights = load_file(str(Path(path) / WEIGHTS))
        except Exception as e:
            raise CheckpointError(f"cannot load the weights of checkpoint {path}: {e}") from None
        expected = model.state_dict()
        for name, twin in _ties(model).items():  # tied weights are stored once
            if name not in weights and twin in weights:
                weights[name] = weights[twin]
        missing = sorted(set(expected) - set(weights))
        unexpected = sorted(set(weights) - set(expected))
        if missing or unexpected:
            raise CheckpointError(f"checkpoint {path} does not fit this model (missing "
                                  f"{missing[:5]}, unexpected {unexpected[:5]})")
        optim_sd = state.get("optimizer") if optimizer is not None else None
        if optim_sd and state.get("format", 1) < 2:
            raise CheckpointError(f"checkpoint {path} has an optimizer state of an older "
                                  "torch-mhc format; start a new run")
        try:
            load_full_state_dicts(model, optimizer, weights, optim_sd or {})
        except Exception as e:
            raise CheckpointError(f"checkpoint {path} does not fit this model or optimizer: "
                                  f"{e}") from None


def _ties(model: torch.nn.Module) -> Dict[str, str]:
    """``{name: first name}`` for every parameter reachable under a second name (tying)."""
    first: Dict[int, str] = {}
    ties: Dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            ties[name] = first[id(p)]
        else:
            first[id(p)] = name
    return ties


def _untie(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Drop later names of tensors that share storage (safetensors stores a tensor once)."""
    seen, out = set(), {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key not in seen:
            seen.add(key)
            out[name] = t.contiguous()
    return out
