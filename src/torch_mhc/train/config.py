"""Training configuration: one dataclass, named presets, TOML/YAML/JSON files.

Precedence, lowest to highest: dataclass defaults < preset < config file < command-line
flags. ``resolve_config`` applies it; ``TrainConfig.validate`` raises :class:`ConfigError`
with a message meant for the person at the keyboard.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from ..models.presets import TRAIN_PRESETS
from ..nn import MODES, connection_mode
from .distributed import PARALLEL_MODES
from .schedules import OPTIMIZER_PRESETS, SCHEDULES, apply_optimizer_preset

__all__ = ["TrainConfig", "ConfigError", "PRESETS", "RESUME_KEYS", "RUNTIME_KEYS",
           "resolve_config", "resume_config", "config_changes", "format_changes",
           "load_config_file",
           "config_to_dict", "config_from_dict"]


# torch.compile's modes; the ones that capture CUDA graphs need the trainer's care (see
# Trainer.train_step) and run on one GPU
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
GRAPH_MODES = ("reduce-overhead", "max-autotune")
COMPILE_SCOPES = ("model", "block")

# The presets (every field marked preset=True) come from the one table of
# torch_mhc.models.presets, which the model configs read too.
PRESETS: Dict[str, Dict[str, Any]] = TRAIN_PRESETS


class ConfigError(ValueError):
    """A bad setting (flag, file or preset); the message says what to change."""


def _f(default, help: str, group: str = "training", choices=None, preset: bool = False):
    """A dataclass field with CLI metadata (help text, option group, choices)."""
    meta = {"help": help, "group": group, "choices": choices, "preset": preset}
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything one training run needs; every field is also a ``--flag`` of ``mhc train``.

    Fields marked "preset" take their value from the chosen preset unless set explicitly.
    """

    # model
    preset: str = _f("tiny", "named starting point (see PRESETS)", "model")
    model: str = _f("gpt", "architecture: gpt (transformer LM) or deep (plain deep stack)",
                    "model", ("gpt", "deep"), True)
    connection: str = _f("mhc", "residual connection: residual, hc or mhc", "model", MODES)
    n: int = _f(4, "number of residual streams (expansion rate) for hc and mhc", "model")
    n_layer: int = _f(4, "transformer blocks (gpt: 2 connections each) or layers (deep)",
                      "model", preset=True)
    d_model: int = _f(128, "model width C", "model", preset=True)
    n_head: int = _f(4, "attention heads (gpt)", "model", preset=True)
    mlp_hidden: Optional[int] = _f(None, "SwiGLU hidden width (gpt); unset: ~8/3 d_model",
                                   "model")
    seq_len: int = _f(128, "tokens per training sequence", "model", preset=True)
    vocab_size: Optional[int] = _f(None, "vocabulary size (default: from the data; 256 for "
                                         "bytes)", "model")
    sinkhorn_iters: int = _f(20, "Sinkhorn-Knopp iterations of mhc (paper: 20)", "model")
    backend: str = _f("auto", "kernel backend of the connections", "model",
                      ("auto", "torch", "triton"))
    # data
    data: str = _f("shakespeare", "shakespeare, wikitext2, a text file, a folder of text "
                                  "files, or .bin token shards (file, folder or glob)", "data",
                    preset=True)
    val_fraction: float = _f(0.1, "fraction of the data held out for validation (its tail)",
                             "data")
    token_dtype: str = _f("uint16", "token type of raw (headerless) .bin shards", "data",
                          ("uint16", "uint32"))
    # optimisation
    batch_size: int = _f(16, "sequences per micro-batch (over all processes)", "optimisation",
                         preset=True)
    grad_accum: int = _f(1, "micro-batches per optimizer step (gradient accumulation)",
                         "optimisation")
    max_steps: int = _f(200, "optimizer steps", "optimisation", preset=True)
    lr: float = _f(3e-3, "peak learning rate (AdamW)", "optimisation", preset=True)
    optimizer: str = _f("default", "optimizer settings: default (the values below) or paper "
                                   "(the mHC paper's Table 5: AdamW betas 0.9/0.95, eps 1e-20, "
                                   "weight decay 0.1, step decay to 0.316x at 0.8 and 0.1x at 0.9 "
                                   "of the steps, warm-up 0.04 of the steps); flags and "
                                   "file settings given explicitly win", "optimisation",
                        tuple(OPTIMIZER_PRESETS))
    lr_schedule: str = _f("cosine", "after the warm-up: cosine (down to --min-lr-ratio) or "
                                    "step (0.316x from 0.8, 0.1x from 0.9 of the steps)",
                          "optimisation", SCHEDULES)
    min_lr_ratio: float = _f(0.1, "final learning rate as a fraction of --lr (cosine)",
                             "optimisation")
    warmup_steps: int = _f(20, "linear warm-up steps", "optimisation", preset=True)
    weight_decay: float = _f(0.1, "AdamW weight decay (matrices only)", "optimisation")
    beta1: float = _f(0.9, "AdamW beta1", "optimisation")
    beta2: float = _f(0.95, "AdamW beta2", "optimisation")
    adam_eps: float = _f(1e-8, "AdamW epsilon", "optimisation")
    grad_clip: float = _f(1.0, "clip the gradient norm to this (0: off); clipping is "
                               "logged per step", "optimisation")
    seed: int = _f(1337, "seed of the initialisation and of the data order", "optimisation")
    on_nonfinite: str = _f("stop", "on a NaN/Inf loss or gradient: stop (keeping the last "
                                   "good checkpoint) or skip the step", "optimisation",
                           ("stop", "skip"))
    max_skips: int = _f(10, "with --on-nonfinite skip: stop after this many skips in a row",
                        "optimisation")
    # runtime
    device: str = _f("auto", "auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...",
                     "runtime")
    dtype: str = _f("auto", "auto (bf16 autocast on GPU, float32 on CPU), float32 (fp32), "
                            "bfloat16 (bf16)", "runtime",
                    ("auto", "float32", "fp32", "bfloat16", "bf16"))
    compile: bool = _f(False, "torch.compile the model", "runtime")
    compile_mode: str = _f("default", "torch.compile mode with --compile: default, or "
                                      "reduce-overhead (the step's kernels replayed as CUDA "
                                      "graphs: for a host that issues kernels more slowly "
                                      "than the GPU runs them; one GPU), max-autotune "
                                      "(CUDA graphs too), max-autotune-no-cudagraphs",
                           "runtime", COMPILE_MODES)
    compile_scope: str = _f("model", "what --compile compiles: model (the whole model as one "
                                     "graph) or block (each block on its own, the compiled "
                                     "code reused by the others: a fifth of the compile time "
                                     "of a 12-block mHC GPT on the CPU; PyTorch 2.6+)", "runtime",
                            COMPILE_SCOPES)
    recompute_block: int = _f(0, "keep every k-th residual stream for backward and recompute "
                              "the others (paper Eq. 20; eager or --compile): 0 off, -1 the "
                              "paper's block size; gradients unchanged", "runtime")
    parallel: str = _f("none", "data parallelism under torchrun: none, ddp or fsdp (FSDP2); "
                               "--batch-size is the global batch, split over the ranks",
                       "runtime", PARALLEL_MODES)
    # logging, evaluation, diagnostics, checkpoints
    out: Optional[str] = _f(None, "output directory (default runs/<preset>-<connection>)",
                            "output")
    log_interval: int = _f(1, "write a training record every this many steps", "output")
    eval_interval: int = _f(50, "validation loss every this many steps (and at the end)",
                            "output", preset=True)
    eval_batches: int = _f(8, "batches per validation", "output", preset=True)
    diag_interval: int = _f(20, "diagnostics (gains, H_res statistics, gradient norms per "
                                "layer) every this many steps; 0: off", "output", preset=True)
    step_stats: bool = _f(True, "record in every training step the last/first layer "
                                "gradient-norm ratio and the mean ||H_res||_F (the mappings "
                                "of the training batch; H_res not under --compile)", "output")
    probe_batch_size: int = _f(4, "sequences in the diagnostics probe batch", "output")
    ckpt_interval: int = _f(100, "checkpoint every this many steps (and at the end)",
                            "output", preset=True)
    keep_last: int = _f(2, "checkpoints to keep", "output")
    progress: bool = _f(True, "show a progress bar", "output")
    tensorboard: bool = _f(True, "also log to TensorBoard when it is installed", "output")
    tracker: str = _f("none", "also log to Weights & Biases or trackio (pip install "
                              "'torch-mhc[wandb]' / '[trackio]')", "output",
                      ("none", "wandb", "trackio"))

    def validate(self) -> "TrainConfig":
        """Check ranges and combinations; raise :class:`ConfigError`; return self.

        Spelling aliases are normalised here (``dtype`` ``bf16`` -> ``bfloat16``,
        ``fp32`` -> ``float32``)."""
        self.dtype = {"bf16": "bfloat16", "fp32": "float32"}.get(self.dtype, self.dtype)
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}; choose one of "
                              f"{', '.join(PRESETS)}")
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(f"{f.name} must be one of {', '.join(choices)}; got "
                                  f"{getattr(self, f.name)!r}")
        positive = ("n", "n_layer", "d_model", "n_head", "seq_len", "sinkhorn_iters",
                    "batch_size", "grad_accum", "max_steps", "log_interval", "eval_interval",
                    "eval_batches", "probe_batch_size", "ckpt_interval", "keep_last",
                    "max_skips")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "diag_interval"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.compile_mode != "default" and not self.compile:
            raise ConfigError(f"compile_mode {self.compile_mode!r} needs compile (add --compile)")
        if self.compile_scope != "model":
            if not self.compile:
                raise ConfigError(f"compile_scope {self.compile_scope!r} needs compile (add "
                                  "--compile)")
            if not hasattr(torch.compiler, "set_stance"):
                raise ConfigError(f"compile_scope {self.compile_scope!r} needs PyTorch 2.6 or "
                                  f"later (this is {torch.__version__}); use --compile-scope "
                                  "model")
            if self.recompute_block:
                raise ConfigError(f"compile_scope {self.compile_scope!r} and recompute_block "
                                  f"{self.recompute_block}: stream recomputation spans blocks; "
                                  "use --compile-scope model")
        if self.compile and self.compile_mode in GRAPH_MODES and self.parallel != "none":
            raise ConfigError(f"compile_mode {self.compile_mode!r} (CUDA graphs) runs on one "
                              f"process; with parallel {self.parallel!r} use --compile-mode "
                              "default or max-autotune-no-cudagraphs")
        if self.recompute_block < -1:
            raise ConfigError(f"recompute_block must be >= -1 (-1: the paper's size, 0: off), "
                              f"got {self.recompute_block}")
        if self.vocab_size is not None and self.vocab_size < 2:
            raise ConfigError(f"vocab_size must be >= 2, got {self.vocab_size}")
        if self.mlp_hidden is not None and self.mlp_hidden < 1:
            raise ConfigError(f"mlp_hidden must be >= 1, got {self.mlp_hidden}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be between 0 and 1, got {self.val_fraction}")
        if self.grad_clip < 0 or self.weight_decay < 0 or self.adam_eps <= 0:
            raise ConfigError("grad_clip and weight_decay must be >= 0 and adam_eps > 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError(f"beta1 and beta2 must be in [0, 1), got {self.beta1}, {self.beta2}")
        if self.model == "gpt":
            if self.d_model % self.n_head:
                raise ConfigError(f"d_model={self.d_model} is not divisible by "
                                  f"n_head={self.n_head}")
            if (self.d_model // self.n_head) % 2:
                raise ConfigError(f"the head dimension d_model/n_head = "
                                  f"{self.d_model // self.n_head} must be even (rotary "
                                  "embeddings)")
        return self

    @property
    def streams(self) -> int:
        """Residual streams the model uses (the mode's; 1 for the plain residual)."""
        return connection_mode(self.connection).streams(self.n)

    def default_out(self) -> str:
        """``runs/<preset>-<connection>``."""
        return str(Path("runs") / f"{self.preset}-{self.connection}")


# Settings a resumed run must share with its checkpoint: the model's shape, the data and the
# batches. Any other setting (max_steps, lr, intervals, ...) may change on resume, and the
# resumed run says which did.
RESUME_KEYS = ("preset", "model", "connection", "n", "n_layer", "d_model", "n_head",
               "mlp_hidden", "seq_len", "vocab_size", "sinkhorn_iters", "data", "val_fraction",
               "token_dtype", "batch_size", "grad_accum", "seed")
# Where and how a run executes, not what it computes: the only settings a resumed
# comparison may change (its modes must stay comparable).
RUNTIME_KEYS = ("device", "dtype", "compile", "compile_mode", "compile_scope", "recompute_block",
                "parallel", "backend", "progress", "tensorboard")

_FIELDS = {f.name: f for f in fields(TrainConfig)}
_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def config_to_dict(cfg: TrainConfig) -> Dict[str, Any]:
    """Plain-JSON dict of a config."""
    return dataclasses.asdict(cfg)


def _coerce(name: str, value: Any, where: str) -> Any:
    """Check/convert one value to the type of field ``name``."""
    type_name = str(_FIELDS[name].type)
    optional = type_name.startswith("Optional[")
    kind = _TYPES[type_name[9:-1] if optional else type_name]
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: {name} cannot be empty")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: {name} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or not (isinstance(value, int) or
                                           (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{where}: {name} must be an integer, got {value!r}")
        return int(value)
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: {name} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {name} must be a number, got {value!r}") from None
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {name} must be a string, got {value!r}")
    return value


def _flatten(d: Dict[str, Any], where: str, extra_keys=()) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = str(k).replace("-", "_")
        if isinstance(v, dict):  # a [section] table (no setting is itself a table)
            out.update(_flatten(v, where, extra_keys))
            continue
        if key not in _FIELDS and key not in extra_keys:
            close = difflib.get_close_matches(key, list(_FIELDS) + list(extra_keys), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown setting {k!r}{hint}")
        out[key] = v if key in extra_keys else _coerce(key, v, where)
    return out


def load_config_file(path: str, extra_keys=()) -> Dict[str, Any]:
    """Read a ``.toml``, ``.yaml``/``.yml`` or ``.json`` file into validated settings.

    Tables/sections (``[model]``, ``[optim]`` ...) are only for readability: their keys are
    the flat field names of :class:`TrainConfig` (dashes or underscores). ``extra_keys``
    are accepted as they are (``mhc compare`` uses ``modes``).
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = p.read_text(encoding="utf-8")
    suffix = p.suffix.lower()
    try:
        if suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python < 3.11
                import tomli as tomllib
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ModuleNotFoundError:
                raise ConfigError("reading YAML config files needs PyYAML: pip install pyyaml "
                                  "(or use a .toml file)") from None
            data = yaml.safe_load(text) or {}
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config file {path}: use a .toml, .yaml/.yml or .json file")
    except ConfigError:
        raise
    except Exception as e:  # parse errors of any of the three libraries
        raise ConfigError(f"config file {path} could not be parsed: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table of settings")
    return _flatten(data, f"config file {path}", extra_keys)


def config_from_dict(d: Dict[str, Any], where: str = "config") -> TrainConfig:
    """A validated config from a plain dict (e.g. a saved ``config.json``); unknown keys fail."""
    return TrainConfig(**_flatten(dict(d), where)).validate()


def resolve_config(cli: Optional[Dict[str, Any]] = None, config_file: Optional[str] = None,
                   extra_keys=()) -> Tuple[TrainConfig, Dict[str, Any]]:
    """Defaults < preset < file < ``cli`` (flags given explicitly). Returns (config, extras).

    ``extras`` holds the ``extra_keys`` found in the file or ``cli`` (flags win).
    """
    cli = dict(cli or {})
    from_file = load_config_file(config_file, extra_keys) if config_file else {}
    extras = {k: v for src in (from_file, cli) for k, v in src.items() if k in extra_keys}
    from_file = {k: v for k, v in from_file.items() if k not in extra_keys}
    cli = {k: v for k, v in cli.items() if k not in extra_keys}
    preset = cli.get("preset") or from_file.get("preset") or "tiny"
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    values = {**PRESETS[preset], **from_file, **cli, "preset": preset}
    values = apply_optimizer_preset(values, explicit=set(from_file) | set(cli))
    values = {k: _coerce(k, v, "settings") for k, v in values.items()}
    return TrainConfig(**values).validate(), extras


def resume_config(saved: Dict[str, Any], given: Optional[Dict[str, Any]] = None,
                  config_file: Optional[str] = None, extra_keys=(),
                  where: str = "the checkpoint") -> Tuple[TrainConfig, Dict[str, Any]]:
    """The settings of a resumed run: the run's saved settings (a checkpoint's or a
    comparison's ``config``), overridden only by what is given explicitly (``given``
    flags, then ``config_file``'s values; a model preset is *not* re-applied, an optimizer
    preset only when ``optimizer`` is given; ``out`` is None unless given). Returns
    ``(config, extras)`` like :func:`resolve_config`; whether the changes are allowed is
    for the caller to decide (:func:`config_changes`)."""
    given = dict(given or {})
    from_file = load_config_file(config_file, extra_keys) if config_file else {}
    extras = {k: v for src in (from_file, given) for k, v in src.items() if k in extra_keys}
    # the saved output folder is where the run was, not necessarily where it is now: the
    # caller sets ``out`` (settings of older versions that no longer exist are dropped)
    values = {k: _coerce(k, v, where) for k, v in (saved or {}).items()
              if k in _FIELDS and k != "out"}
    explicit = {k: v for k, v in {**from_file, **given}.items() if k not in extra_keys}
    values.update(explicit)
    if "optimizer" in explicit:  # a preset named now sets what it covers, but what is given
        values = apply_optimizer_preset(values, explicit=set(explicit))
    values = {k: _coerce(k, v, "settings") for k, v in values.items()}
    return TrainConfig(**values).validate(), extras


def config_changes(saved: Dict[str, Any], cfg: TrainConfig, ignore=("out",)
                   ) -> Dict[str, Tuple[Any, Any]]:
    """``{name: (saved value, new value)}`` for every setting of ``cfg`` that differs from
    ``saved`` (a config dict; settings it lacks, from older versions, are not compared)."""
    now = config_to_dict(cfg)
    norm = {"bf16": "bfloat16", "fp32": "float32"}
    return {k: (saved[k], now[k]) for k in now
            if k in saved and k not in ignore and norm.get(saved[k], saved[k]) != now[k]}


def format_changes(changes: Dict[str, Tuple[Any, Any]]) -> str:
    """``"max_steps 120 -> 400, lr 0.0005 -> 0.001"``."""
    return ", ".join(f"{k} {a!r} -> {b!r}" if isinstance(a, str) or isinstance(b, str)
                     else f"{k} {a} -> {b}" for k, (a, b) in changes.items())
