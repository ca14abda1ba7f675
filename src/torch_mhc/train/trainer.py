"""The training loop behind ``mhc train``: AdamW, warm-up + cosine or step decay
(:mod:`.schedules`), clipping, diagnostics.

One loop, read top to bottom in :meth:`Trainer.fit`. At step ``s`` (optimizer steps done):
validation loss every ``eval_interval`` steps, diagnostics every ``diag_interval`` steps
(on a fixed probe batch; they never change the training trajectory), a checkpoint every
``ckpt_interval`` steps, then one optimizer step over ``grad_accum`` micro-batches.

Exactness: batches are a pure function of (seed, step), the checkpoint holds weights,
optimizer state, RNG state and the step, and the loop skips the evaluation it already did
at the resumed step, so a run interrupted at a checkpoint and resumed logs the same losses
as an uninterrupted one (bit for bit on CPU).

Non-finite loss or gradient norm: the optimizer step is never applied. With
``on_nonfinite="stop"`` (default) training stops with a message naming the last good
checkpoint (nothing newer is written); with ``"skip"`` the step is skipped and logged, up
to ``max_skips`` in a row.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import signal
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .. import __version__
from ..data import PROBE_STREAM, TRAIN_STREAM, VAL_STREAM, BatchSampler, load_corpus
from ..diagnostics import probe_diagnostics, step_stats
from ..models import GPT, DeepStack, DeepStackConfig, GPTConfig, compile_blocks, force_eager
from ..nn.hyper_connection import no_weight_decay_parameters
from .checkpoint import CheckpointError, CheckpointManager, find_checkpoint, set_rng_state
from .config import (GRAPH_MODES, RESUME_KEYS, ConfigError, TrainConfig, config_changes,
                     config_to_dict, format_changes)
from .distributed import all_reduce_mean, reshard, wrap_model
from .logs import RunLog, read_log, summarize
from .schedules import lr_at
from .trackers import check_tracker
from .runtime import Runtime

__all__ = ["Trainer", "train", "build_model", "build_optimizer", "lr_at", "prepare_out",
           "RUN_FILES"]

# what a run writes into its folder (removed by --overwrite; nothing else is touched)
RUN_FILES = ("log.jsonl", "summary.json", "config.json", "checkpoints", "tensorboard",
             "plots", "report.html")


def build_model(cfg: TrainConfig, vocab_size: int) -> nn.Module:
    """``GPT`` or ``DeepStack`` from the config (``n_layer``/``d_model`` are depth/width)."""
    try:
        if cfg.model == "gpt":
            return GPT(GPTConfig(vocab_size=vocab_size, seq_len=cfg.seq_len,
                                 n_layer=cfg.n_layer, n_head=cfg.n_head, d_model=cfg.d_model,
                                 mlp_hidden=cfg.mlp_hidden, connection=cfg.connection,
                                 n=cfg.n, backend=cfg.backend,
                                 sinkhorn_iters=cfg.sinkhorn_iters,
                                 recompute_block=cfg.recompute_block))
        return DeepStack(DeepStackConfig(vocab_size=vocab_size, seq_len=cfg.seq_len,
                                         depth=cfg.n_layer, width=cfg.d_model,
                                         connection=cfg.connection, n=cfg.n,
                                         backend=cfg.backend,
                                         sinkhorn_iters=cfg.sinkhorn_iters,
                                         recompute_block=cfg.recompute_block))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"cannot build the model: {e}") from None


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device):
    """AdamW; weight decay on matrices only (not on norms, gates or the mHC biases), and not
    on the connection parameters that their mode excludes (``ConnectionMode.no_weight_decay``)."""
    skip = {id(p) for p in no_weight_decay_parameters(model)}
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 and id(p) not in skip else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    kwargs = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             eps=cfg.adam_eps, **kwargs)


def prepare_out(out: Path, resuming: bool, overwrite: bool, create: bool = True) -> None:
    """Check the output folder (not a file; no earlier run unless resuming or ``overwrite``);
    with ``create``, delete the earlier run's files (``overwrite``) and make the folder."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output directory {out} is an existing file; choose another --out")
    earlier = out.is_dir() and not resuming and any(
        (out / f).exists() for f in ("log.jsonl", "summary.json", "checkpoints"))
    if earlier and not overwrite:
        raise ConfigError(f"{out} already holds a run; continue it with --resume {out}, "
                          "start over with --overwrite, or choose another --out")
    if not create:
        return
    if earlier:
        for name in RUN_FILES:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create output directory {out}: {e.strerror or e}") from None


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _raw_vocab(corpus) -> int:
    """Vocabulary of raw shards: largest id among the first 16M tokens, plus one (a batch
    with a larger id later stops the run with a message asking for --vocab-size)."""
    return int(np.max(corpus.train[0][:16 * 2 ** 20])) + 1


class Trainer:
    """One training run of ``cfg`` (see the module docstring).

    Args:
        cfg: the run's settings (validated here).
        runtime: device/rank; default from ``cfg`` (single process).
        resume: a run folder or checkpoint folder to continue from.
        overwrite: delete an earlier run in ``cfg.out`` instead of refusing.
        desc: label of the progress bar (default: the connection mode).
    """

    def __init__(self, cfg: TrainConfig, runtime: Optional[Runtime] = None,
                 resume: Optional[str] = None, overwrite: bool = False,
                 desc: Optional[str] = None):
        self.cfg = cfg = cfg.validate()
        self.rt = rt = runtime or Runtime.from_config(cfg)
        self.out = Path(cfg.out or cfg.default_out())
        self.desc = desc or cfg.connection
        self.damaged: list = []  # damaged newer checkpoints passed over on resume
        self.resume_from = find_checkpoint(resume, self.damaged.append) if resume else None
        for line in self.damaged:
            self.say(f"warning: {line}")
        # continuing the run in --out; resuming another run's checkpoint into a folder that
        # holds a run of its own needs --overwrite, like starting a new run there
        own = self.resume_from is not None and \
            self.resume_from.resolve().parent.parent == self.out.resolve()
        if rt.is_main:
            prepare_out(self.out, own, overwrite, create=False)
        self.corpus = corpus = load_corpus(cfg.data, cfg.val_fraction, cfg.token_dtype)
        self.vocab_size = cfg.vocab_size or corpus.vocab_size or _raw_vocab(corpus)
        check = self.vocab_size if (corpus.kind != "bytes" or self.vocab_size < 256) else None
        common = dict(seq_len=cfg.seq_len, seed=cfg.seed, vocab_size=check)
        self.train_data = BatchSampler(corpus.train, batch_size=cfg.batch_size,
                                       stream=TRAIN_STREAM, rank=rt.rank,
                                       world_size=rt.world_size, split="train", **common)
        self.val_data = BatchSampler(corpus.val, batch_size=cfg.batch_size, stream=VAL_STREAM,
                                     split="validation", **common)
        self.probe_data = BatchSampler(corpus.val, batch_size=cfg.probe_batch_size,
                                       stream=PROBE_STREAM, split="validation", **common)
        self.resume_state = self._check_resume(self.resume_from) if resume else None
        _seed_everything(cfg.seed)
        self.model = build_model(cfg, self.vocab_size).to(rt.device)
        self.connections = self.model.connections()
        # DDP wraps; FSDP2 shards self.model in place. self.model stays the user's module.
        whole = cfg.compile and cfg.compile_scope == "model"
        self.blocks_compiled = cfg.compile and not whole
        if self.blocks_compiled:  # before DDP / FSDP2 wrap the model
            # FSDP2 runs its hooks outside Dynamo: a block breaks its graph at each FSDP2
            # unit inside it (the branches, with bf16), as a whole compiled model does
            compile_blocks(self.model, cfg.compile_mode, fullgraph=cfg.parallel != "fsdp")
        wrapped = wrap_model(self.model, rt.dist, bf16=rt.autocast_dtype is not None)
        self.step_model = torch.compile(wrapped, mode=cfg.compile_mode) if whole else wrapped
        # CUDA graphs (reduce-overhead, max-autotune): a replay overwrites the outputs of the
        # one before, so each step is marked, losses are summed as they come and gradients
        # are accumulated in place (see train_step)
        self.graphs = cfg.compile and cfg.compile_mode in GRAPH_MODES
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.model, cfg, rt.device)
        if rt.is_main:  # inputs are good: only now touch the disk
            check_tracker(cfg.tracker)
            prepare_out(self.out, own, overwrite)
        self.ckpt = CheckpointManager(self.out, cfg.keep_last, enabled=rt.is_main)
        self.log = RunLog(self.out / "log.jsonl", enabled=rt.is_main,
                          tensorboard=cfg.tensorboard, tracker=cfg.tracker)
        self.tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum  # all ranks
        self.elapsed = 0.0  # training wall time, carried across resumes
        self.skips_in_row = 0
        self.last_val: Optional[float] = None
        self.bar = None

    # -- output ----------------------------------------------------------------------------
    def say(self, msg: str) -> None:
        """Print a line on the main process without breaking the progress bar."""
        if self.rt.is_main:
            tqdm.write(msg)

    def _header(self) -> Dict[str, Any]:
        names = {id(m): name for name, m in self.model.named_modules()}
        return {"type": "config", "config": config_to_dict(self.cfg),
                "params": sum(p.numel() for p in self.params), "streams": self.cfg.streams,
                "vocab_size": self.vocab_size, "data": self.corpus.describe(),
                "train_tokens": self.corpus.train_tokens, "val_tokens": self.corpus.val_tokens,
                "layers": len(self.connections),
                "layer_names": [names.get(id(c), str(i)) for i, c in enumerate(self.connections)],
                "tokens_per_step": self.tokens_per_step, "device": str(self.rt.device),
                "dtype": self.rt.dtype_name, "world_size": self.rt.world_size,
                "torch_mhc_version": __version__, "torch_version": torch.__version__,
                "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    # -- resume ----------------------------------------------------------------------------
    def _check_resume(self, path: Path) -> Dict[str, Any]:
        """Read the checkpoint's state and refuse it if a setting of :data:`RESUME_KEYS`
        (model shape, data, batches, seed) differs from ours."""
        state = CheckpointManager.read_state(path)
        saved = state.get("config", {})
        diffs = {k: v for k, v in config_changes(saved, self.cfg).items() if k in RESUME_KEYS}
        if state.get("vocab_size") not in (None, self.vocab_size) and "vocab_size" not in diffs:
            diffs["vocab_size"] = (state.get("vocab_size"), self.vocab_size)
        if diffs:
            listed = "; ".join(f"{k}: checkpoint {a!r}, this run {b!r}"
                               for k, (a, b) in diffs.items())
            flags = " ".join(f"--{k.replace('_', '-')} {a}" for k, (a, _) in diffs.items()
                             if a is not None and k != "vocab_size")
            raise CheckpointError(
                f"cannot resume from {path}: it was written by a run with a different "
                f"configuration ({listed}); model shape, data, batch and seed are fixed for "
                f"a run: resume without those settings{' (or with ' + flags + ')' if flags else ''}"
                ", or start a new run without --resume")
        step = int(state["step"])
        if step > self.cfg.max_steps:
            raise ConfigError(f"checkpoint {path} is at step {step}, beyond --max-steps "
                              f"{self.cfg.max_steps}; raise --max-steps to continue it")
        return state

    def _restore(self, path: Path, state: Dict[str, Any]) -> int:
        """Load the checkpoint and cut the log back to it; returns its step."""
        cfg, step = self.cfg, int(state["step"])
        changed = config_changes(state.get("config", {}), cfg)
        CheckpointManager.load(path, self.model, self.optimizer, state, self.rt.device)
        # the optimizer's hyper-parameters come from the settings, not from the checkpoint
        for group, decay in zip(self.optimizer.param_groups, (cfg.weight_decay, 0.0)):
            group.update(betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, weight_decay=decay)
        set_rng_state(state["rng"])
        self.elapsed = float(state.get("elapsed_s", 0.0))
        self.skips_in_row = int(state.get("skips_in_row", 0))
        self.last_val = state.get("last_val")
        unreadable: list = []
        if self.rt.is_main:  # the log continues from the checkpoint: drop what came after it
            src = path.parent.parent / "log.jsonl"
            keep = self._log_upto(src, step, unreadable) if src.is_file() else []
            tmp = self.out / f".log.jsonl.tmp-{os.getpid()}"
            tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
            os.replace(tmp, self.out / "log.jsonl")
        self.log.write(self._header())
        self.log.write({"type": "event", "event": "resume", "step": step,
                        "checkpoint": str(path), "changed": changed or None,
                        "damaged": self.damaged or None})
        self.say(f"resumed from {path} at step {step}; "
                 + (f"changed since the checkpoint: {format_changes(changed)}" if changed
                    else "same settings as the checkpoint"))
        if unreadable:
            self.say(f"warning: {src}: line(s) {', '.join(map(str, unreadable))} are not "
                     "valid JSON; kept as they are (mhc report skips them)")
        return step

    @staticmethod
    def _log_upto(src: Path, step: int, unreadable: list) -> list:
        """The lines of log ``src`` up to ``step``: records after it are dropped, a torn last
        line (a crash mid-write) too; other unreadable lines are kept as they are and their
        numbers appended to ``unreadable``."""
        lines = src.read_text(encoding="utf-8").splitlines()
        keep = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                if i < len(lines) - 1:
                    keep.append(line)
                    unreadable.append(i + 1)
                continue
            if not isinstance(r, dict) or r.get("step") is None or r["step"] <= step:
                keep.append(line)
        return keep

    # -- the pieces of one step ------------------------------------------------------------
    def _batch(self, sampler: BatchSampler, step: int, micro: int = 0):
        x, y = sampler.batch(step, micro)
        dev = self.rt.device
        return x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean validation loss over the fixed validation batches."""
        self.model.eval()
        total = torch.zeros((), device=self.rt.device)
        for i in range(self.cfg.eval_batches):
            total += self._loss(*self._batch(self.val_data, i)).float()
        self.model.train()
        reshard(self.model)
        return all_reduce_mean(float(total) / self.cfg.eval_batches, self.rt.dist)

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss of one batch through the (compiled) model, under autocast."""
        if self.graphs:  # a new step: the graphs' earlier outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        with self.rt.autocast():
            return self.step_model(x, y)[1]

    def diagnose(self) -> Dict[str, Any]:
        """Diagnostics on the fixed probe batch (see :mod:`torch_mhc.diagnostics`)."""
        x, y = self._batch(self.probe_data, 0)
        # compiled blocks run eagerly here: the diagnostics hook into the connections
        with force_eager() if self.blocks_compiled else contextlib.nullcontext():
            out = probe_diagnostics(self.model, x, y, self.rt.autocast, self.connections)
        reshard(self.model)
        return out

    def train_step(self, step: int) -> Dict[str, Any]:
        """One optimizer step (skipped when the loss or gradient is not finite)."""
        cfg = self.cfg
        lr = lr_at(step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        total = torch.zeros((), device=self.rt.device)
        # the mappings of the training batch, for the per-step mean ||H_res||_F (recording
        # mutates the modules, which a compiled graph must not do)
        record = cfg.step_stats and not cfg.compile
        for c in self.connections:
            c.record_mappings = record
        if self.graphs:
            # with .grad already there autograd adds into it; with none it would keep the
            # backward graph's output buffer itself as .grad, which the next replay overwrites
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
        for micro in range(cfg.grad_accum):
            loss = self._loss(*self._batch(self.train_data, step, micro))
            (loss / cfg.grad_accum).backward()
            total += loss.detach().float()
        extra = step_stats(self.connections) if cfg.step_stats else {}  # before clipping
        for c in self.connections:
            c.record_mappings, c.last_mappings = False, None
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        if hasattr(gnorm, "full_tensor"):  # FSDP2: a DTensor holding the global norm
            gnorm = gnorm.full_tensor()
        loss_v, gnorm_v, *extra_v = torch.stack(
            [total / cfg.grad_accum, gnorm.float().to(total.device)]
            + [v.float().to(total.device) for v in extra.values()]).tolist()
        loss_v = all_reduce_mean(loss_v, self.rt.dist)  # each rank saw its slice
        finite = math.isfinite(loss_v) and math.isfinite(gnorm_v)
        if finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=not self.graphs)
        dt = time.perf_counter() - t0
        self.elapsed += dt
        return {"type": "train", "step": step + 1, "loss": loss_v, "lr": lr,
                "grad_norm": gnorm_v, "clipped": bool(cfg.grad_clip > 0 and finite
                                                      and gnorm_v > cfg.grad_clip),
                "nonfinite": not finite, "tokens": (step + 1) * self.tokens_per_step,
                "tokens_per_s": self.tokens_per_step / dt, "step_time_s": dt,
                "elapsed_s": self.elapsed, **dict(zip(extra, extra_v))}

    def save(self, step: int) -> Optional[Path]:
        """Checkpoint the current state as step ``step``."""
        return self.ckpt.save(step, self.model, self.optimizer,
                              {"config": config_to_dict(self.cfg), "vocab_size": self.vocab_size,
                               "elapsed_s": self.elapsed, "skips_in_row": self.skips_in_row,
                               "last_val": self.last_val, "torch_mhc_version": __version__})

    def _nonfinite(self, rec: Dict[str, Any]) -> bool:
        """Handle a non-finite step; True if training must stop."""
        cfg, step = self.cfg, rec["step"]
        what = f"loss {rec['loss']}, gradient norm {rec['grad_norm']}"
        if cfg.on_nonfinite == "skip" and self.skips_in_row < cfg.max_skips:
            self.skips_in_row += 1
            self.log.write({"type": "event", "event": "skip", "step": step, "detail": what})
            self.say(f"step {step}: non-finite ({what}); step skipped "
                     f"({self.skips_in_row}/{cfg.max_skips} in a row)")
            return False
        latest = self.ckpt.latest_intact()
        where = (f"the last good checkpoint is {latest} (resume with --resume {self.out}, "
                 "e.g. with a lower --lr or --on-nonfinite skip)" if latest
                 else "no checkpoint was written before it")
        reason = ("too many non-finite steps in a row" if cfg.on_nonfinite == "skip"
                  else "non-finite loss or gradient")
        self.log.write({"type": "event", "event": "stop", "step": step, "reason": reason,
                        "detail": what, "checkpoint": str(latest) if latest else None})
        self.say(f"{self.desc}: {reason} at step {step} ({what}); training stopped; {where}")
        return True

    # -- the loop --------------------------------------------------------------------------
    def fit(self) -> Dict[str, Any]:
        """Train to ``max_steps`` (or until stopped); returns the run's summary dict."""
        cfg, rt = self.cfg, self.rt
        self.ckpt.clean_temporary()
        start = self._restore(self.resume_from, self.resume_state) if self.resume_from else 0
        if not self.resume_from:
            self.log.write(self._header())
        head = self._header()
        self.say(f"{self.desc}: {cfg.model} {cfg.preset} ({cfg.connection}, "
                 f"{cfg.streams} stream(s)), {head['params'] / 1e6:.2f}M parameters, "
                 f"data {self.corpus.describe()}, {rt.device} {rt.dtype_name}, "
                 f"{cfg.max_steps} steps x {self.tokens_per_step:,} tokens -> {self.out}")
        if cfg.compile:
            self.say(f"torch.compile ({cfg.compile_mode} mode, {cfg.compile_scope} scope): the "
                     "first evaluation and training step compile, which can take minutes"
                     + (" (--compile-scope block compiles faster)"
                        if cfg.compile_scope == "model" else ""))
        rt.reset_peak_memory()
        self.bar = tqdm(total=cfg.max_steps, initial=start, desc=self.desc, unit="step",
                        dynamic_ncols=True, disable=not (cfg.progress and rt.is_main))
        seg_tokens, seg_time0, diverged = 0, self.elapsed, False
        step = start
        restore_signals = self._defer_interrupts()
        try:
            while True:
                fresh = not (self.resume_from is not None and step == start)
                last = step == cfg.max_steps
                if fresh and (step % cfg.eval_interval == 0 or last):
                    self.last_val = self.evaluate()
                    self.log.write({"type": "eval", "step": step, "val_loss": self.last_val})
                if fresh and cfg.diag_interval and (step % cfg.diag_interval == 0 or last):
                    self.log.write({"type": "diag", "step": step, **self.diagnose()})
                saved = step > start and (step % cfg.ckpt_interval == 0 or last)
                if saved:
                    self.save(step)
                if last:
                    break
                if self._interrupt_requested():
                    self._save_and_stop(step, start, saved)
                rec = self.train_step(step)
                step += 1
                seg_tokens += self.tokens_per_step
                if rec["nonfinite"]:
                    self.log.write(rec)
                    if self._nonfinite(rec):
                        diverged = True
                        break
                else:
                    self.skips_in_row = 0
                    if step % cfg.log_interval == 0 or step == cfg.max_steps:
                        self.log.write(rec)
                self.bar.update(1)
                val = f" val {self.last_val:.3f}" if self.last_val is not None else ""
                self.bar.set_postfix_str(f"loss {rec['loss']:.3f}{val} "
                                         f"{rec['tokens_per_s']:,.0f} tok/s", refresh=False)
        except torch.cuda.OutOfMemoryError:
            self.log.write({"type": "event", "event": "error", "step": step + 1,
                            "reason": "out of memory",
                            "detail": "lower --batch-size (raise --grad-accum to keep the "
                                      "tokens per step)"})
            self._finish(step, False, seg_tokens, seg_time0)
            raise
        finally:
            restore_signals()
            self.bar.close()
        return self._finish(step, diverged, seg_tokens, seg_time0)

    # -- interruption ------------------------------------------------------------------------
    def _defer_interrupts(self) -> Callable[[], None]:
        """Ctrl-C / SIGTERM: finish the current step, checkpoint, then stop (a second signal
        stops at once). Returns the function that restores the previous handlers."""
        self._stop_signal = None
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum, frame):
            if self._stop_signal is not None:  # second signal: stop now
                raise KeyboardInterrupt
            self._stop_signal = signal.Signals(signum).name
            self.say(f"\n{self.desc}: {self._stop_signal}: stopping after this step with a "
                     "checkpoint (signal again to stop at once)")

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

        def restore() -> None:
            for sig, old in previous.items():
                signal.signal(sig, old)
        return restore

    def _interrupt_requested(self) -> bool:
        """True once a stop signal arrived (on any rank, under DDP/FSDP)."""
        asked = float(getattr(self, "_stop_signal", None) is not None)
        if self.rt.dist.distributed:
            asked = all_reduce_mean(asked, self.rt.dist)
        return asked > 0

    def _save_and_stop(self, step: int, start: int, saved: bool) -> None:
        """Checkpoint step ``step`` (unless just done) and end the run with KeyboardInterrupt."""
        path = self.ckpt.latest() if (saved or step == start) else self.save(step)
        self.log.write({"type": "event", "event": "interrupt", "step": step,
                        "checkpoint": str(path) if path else None})
        self.log.close()
        self.say(f"{self.desc}: stopped at step {step}; checkpoint {path}")
        raise KeyboardInterrupt

    def _finish(self, step: int, diverged: bool, seg_tokens: int, seg_time0: float
                ) -> Dict[str, Any]:
        rt = self.rt
        mem, kind = rt.peak_memory_mb()
        seg_time = self.elapsed - seg_time0
        self.log.write({"type": "end", "step": step, "diverged": diverged,
                        "wall_time_s": self.elapsed,
                        "tokens_per_s": seg_tokens / seg_time if seg_time > 0 else None,
                        "peak_memory_mb": mem, "memory_kind": kind})
        self.log.close()
        if not rt.is_main:
            return {}
        summary = summarize(read_log(self.out / "log.jsonl", skipped=[]))
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary


def train(cfg: TrainConfig, resume: Optional[str] = None, overwrite: bool = False
          ) -> Dict[str, Any]:
    """Run :class:`Trainer` on ``cfg`` and return the summary (programmatic ``mhc train``)."""
    return Trainer(cfg, resume=resume, overwrite=overwrite).fit()

