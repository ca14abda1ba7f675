"""``mhc train``, ``mhc compare`` and ``mhc report``: the command-line front of the trainer.

``register(subparsers)`` adds the three subcommands to the ``mhc`` parser
(``torch_mhc.cli``); ``main(argv)`` runs them on their own
(``python -m torch_mhc.train.cli compare --preset tiny``). Every flag of ``train`` and
``compare`` is a :class:`~torch_mhc.train.config.TrainConfig` field. Bad input ends with a
one-line message and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import functools
import signal
import sys
import textwrap
import threading
from dataclasses import fields
from pathlib import Path
from typing import List, Optional

import torch

from ..data import DataError
from .checkpoint import CheckpointError
from .config import (PRESETS, RESUME_KEYS, RUNTIME_KEYS, ConfigError, TrainConfig,
                     load_config_file, resolve_config, resume_config)
from .distributed import shutdown

__all__ = ["register", "main", "EXIT_OK", "EXIT_DIVERGED", "EXIT_BAD_INPUT",
           "EXIT_INTERRUPTED"]

EXIT_OK, EXIT_DIVERGED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130

_GROUPS = ("model", "data", "optimisation", "runtime", "output")


def _preset_table() -> str:
    lines = []
    for name, p in PRESETS.items():
        shape = (f"{p['n_layer']} blocks x d={p['d_model']}, {p['n_head']} heads"
                 if p["model"] == "gpt" else f"{p['n_layer']} layers x width {p['d_model']}")
        lines.append(f"  {name:<10} {p['model']:<5} {shape}, seq {p['seq_len']}, batch "
                     f"{p['batch_size']}, {p['max_steps']} steps, lr {p['lr']:g}")
    return "\n".join(lines)


_COMMON_EPILOG = f"""
presets (any flag overrides a preset value):
{_preset_table()}
  tiny and deep-tiny run on a laptop CPU in minutes; small, medium and deep are meant
  for one GPU (--device auto picks CUDA when present, with bf16 autocast).

data (--data): shakespeare (default, embedded), wikitext2 (embedded), a text file, a
  folder of text files (byte-level tokens, vocabulary 256), or pre-tokenized .bin
  shards as nanoGPT/llm.c write them (a file, a folder or a glob; uint16/uint32).

config files (--config run.toml / .yaml / .json): flag names as keys, dashes or
  underscores, optionally in [sections]; flags given on the command line win:
      preset = "small"
      [optimisation]
      lr = 1e-3
      max-steps = 5000

exit codes: 0 done, 1 stopped (non-finite loss, out of memory), 2 bad input,
  130 interrupted.
"""

def _flag_list(names) -> str:
    return textwrap.fill(", ".join("--" + n.replace("_", "-") for n in names), width=86,
                         break_on_hyphens=False,
                         initial_indent="    ", subsequent_indent="    ")


TRAIN_EPILOG = """examples:
  mhc train                                   # tiny mHC GPT on TinyShakespeare, CPU
  mhc train --connection hc --n 4 --out runs/hc
  mhc train --preset small --data wikitext2   # one GPU
  mhc train --data notes/ --seq-len 256 --max-steps 2000 --lr 1e-3
  mhc train --data fineweb10B/ --vocab-size 50304 --preset medium --compile
  mhc train --preset small --compile --compile-mode reduce-overhead   # CUDA graphs
  mhc train --config run.toml --lr 1e-3       # the flag overrides the file
  mhc train --out runs/a --resume --max-steps 400   # continue the run in runs/a, longer
""" + f"""
resuming (--resume): every setting comes from the run's checkpoint, not from the preset;
  a flag given with --resume changes only that setting. Changing the model, data, batch
  or seed is refused:
{_flag_list(RESUME_KEYS)}
  any other change (e.g. --max-steps, --lr, --eval-interval, --device) is applied and
  stated in one line. The newest checkpoint whose files match their SHA-256 sums is
  used; a damaged newer one is named.
""" + _COMMON_EPILOG

COMPARE_EPILOG = """examples:
  mhc compare --preset tiny --out runs/tiny          # CPU, a few minutes; open
                                                     # runs/tiny/report.html
  mhc compare --preset small --out runs/small --data wikitext2   # one GPU
  mhc compare --preset deep-tiny --modes residual,mhc --out runs/deep
  mhc compare --preset tiny --max-steps 50 --out runs/quick --overwrite
  mhc compare --out runs/tiny --resume               # finish an interrupted comparison
  mhc compare --preset deep-tiny --seeds 3 --optimizer paper --match-params width

resuming (--resume): the comparison's settings and modes come from DIR/config.json;
  finished modes are skipped and config.json is left as it is. Only where it runs may
  change:
""" + _flag_list(RUNTIME_KEYS) + """
  any other setting that differs is refused, so all modes keep the same settings.

what you get in --out: summary.json (per mode: final train/val loss, composite
gains, gradient ratio, divergence, tokens/s, peak memory), <mode>/log.jsonl,
plots/*.png and report.html.
""" + _COMMON_EPILOG

REPORT_EPILOG = """examples:
  mhc report runs/tiny         # a comparison folder (from mhc compare)
  mhc report runs/tiny-mhc     # a single run (from mhc train)
"""


def _help(f) -> str:
    text = f.metadata.get("help", "")
    if f.metadata.get("preset"):
        return f"{text} (default: from the preset)"
    if f.default is None or isinstance(f.default, bool):
        return text
    return f"{text} (default: {f.default})"


def add_config_flags(parser: argparse.ArgumentParser, skip=()) -> None:
    """One flag per :class:`TrainConfig` field, grouped, defaulting to 'not given'."""
    groups = {g: parser.add_argument_group(f"{g} options") for g in _GROUPS}
    parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="settings file (.toml, .yaml, .json); flags override it")
    for f in fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        group = groups.get(f.metadata.get("group"), parser)
        kw = dict(dest=f.name, default=argparse.SUPPRESS, help=_help(f))
        if f.name == "preset":
            group.add_argument(flag, choices=list(PRESETS), metavar="NAME",
                               **{**kw, "help": f"{', '.join(PRESETS)} (default: tiny)"})
        elif isinstance(f.default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        else:
            tname = str(f.type).replace("Optional[", "").rstrip("]")
            conv = {"int": int, "float": float, "str": str}[tname]
            choices = f.metadata.get("choices")
            metavar = None if choices else {"int": "N", "float": "X"}.get(tname, f.name.upper())
            group.add_argument(flag, type=conv, choices=choices, metavar=metavar, **kw)


def _overrides(args: argparse.Namespace) -> dict:
    names = {f.name for f in fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in names}


def _given(overrides: dict, config_file: Optional[str], extra_keys=()) -> dict:
    """The settings given explicitly: the config file's, then the flags."""
    return {**(load_config_file(config_file, extra_keys) if config_file else {}), **overrides}


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def _guard(func):
    """Turn the expected errors into a message and an exit code (no traceback); a SIGTERM
    (e.g. a cluster pre-empting the job) ends the run like Ctrl-C."""
    def run(args: argparse.Namespace) -> int:
        cmd = getattr(args, "command", None) or "mhc"
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _sigterm) if main_thread else None
        try:
            return func(args)
        except (ConfigError, DataError, CheckpointError) as e:
            print(f"mhc {cmd}: error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except KeyboardInterrupt:
            print(f"\nmhc {cmd}: interrupted; continue from the last checkpoint with --resume",
                  file=sys.stderr)
            return EXIT_INTERRUPTED
        except OSError as e:
            print(f"mhc {cmd}: error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except torch.cuda.OutOfMemoryError:
            print(f"mhc {cmd}: error: out of GPU memory; lower --batch-size (raise "
                  "--grad-accum to keep the tokens per step) or pick a smaller preset",
                  file=sys.stderr)
            return EXIT_DIVERGED
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)
    run.__doc__ = func.__doc__
    return run


@_guard
def cmd_train(args: argparse.Namespace) -> int:
    """``mhc train``: one run; exit 1 if it stopped on a non-finite loss."""
    from .trainer import Trainer
    overrides = _overrides(args)
    config_file = getattr(args, "config", None)
    resume = getattr(args, "resume", None)
    if resume:
        from .checkpoint import CheckpointManager, find_checkpoint
        if resume is True:  # bare --resume: continue the run in --out
            given = _given(overrides, config_file)
            resume = given.get("out") or TrainConfig(
                preset=given.get("preset", "tiny"),
                connection=given.get("connection", "mhc")).default_out()
        # the run's own settings, changed only by what is given now (the trainer refuses
        # changes to model, data, batch and seed, and states the others)
        ckpt = find_checkpoint(resume)
        saved = CheckpointManager.read_state(ckpt).get("config") or {}
        cfg, _ = resume_config(saved, overrides, config_file, where=f"checkpoint {ckpt}")
        if cfg.out is None:  # keep writing where the checkpoint's run is
            cfg.out = str(ckpt.parent.parent)
    else:
        cfg, _ = resolve_config(overrides, config_file)
    trainer = Trainer(cfg, resume=resume, overwrite=args.overwrite)
    finished = False
    try:
        summary = trainer.fit()
        finished = True
    finally:
        shutdown(trainer.rt.dist, finished)
    if not trainer.rt.is_main:
        return EXIT_OK
    out = cfg.out or cfg.default_out()
    if summary.get("diverged"):
        return EXIT_DIVERGED
    print(f"done: train loss {summary.get('final_train_loss') or float('nan'):.4f}, val loss "
          f"{summary.get('final_val_loss') or float('nan'):.4f}, "
          f"{summary.get('tokens_per_s') or 0:,.0f} tokens/s; {out}/summary.json\n"
          f"plots and report.html: mhc report {out}")
    return EXIT_OK


def _seed_options(extras: dict):
    """``(seeds, match_params)`` of ``mhc compare`` from flags or the config file, checked."""
    from .seeds import MATCH_CHOICES
    seeds, match = extras.get("seeds", 1), extras.get("match_params", "none")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"seeds must be an integer >= 1, got {seeds!r}")
    if match not in MATCH_CHOICES:
        raise ConfigError(f"match_params must be one of {', '.join(MATCH_CHOICES)}; got "
                          f"{match!r}")
    return seeds, match


@_guard
def cmd_compare(args: argparse.Namespace) -> int:
    """``mhc compare``: every mode, then summary.json, plots and report.html."""
    from .compare import DEFAULT_MODES, compare, format_table, parse_modes, saved_comparison
    overrides = _overrides(args)
    keys = ("modes", "seeds", "match_params")
    for key in keys:
        if key in vars(args):
            overrides[key] = getattr(args, key)
    config_file = getattr(args, "config", None)
    given = _given(overrides, config_file, extra_keys=keys)
    out = given.get("out") or f"runs/compare-{given.get('preset', 'tiny')}"
    saved = saved_comparison(out) if args.resume else None
    if saved is not None:  # the comparison's own settings, modes, seeds, unless given now
        cfg, extras = resume_config(saved[0], overrides, config_file, extra_keys=keys,
                                    where=f"{out}/config.json")
        extras = {"modes": saved[1], **saved[2], **extras}
    else:
        cfg, extras = resolve_config(overrides, config_file, extra_keys=keys)
    modes = extras.get("modes", DEFAULT_MODES)
    seeds, match = _seed_options(extras)
    if seeds > 1:
        from .seeds import compare_seeds
        result = compare_seeds(cfg, modes, out, seeds, overwrite=args.overwrite,
                               resume=args.resume, report=not args.no_report, match=match)
        means = {m: {k: (a.get("mean") if "mean" in a else a["count"] > 0)
                     for k, a in agg.items()} for m, agg in result["aggregate"].items()}
        print(f"mean over {seeds} seeds (spread in summary.json"
              + ("" if args.no_report else " and report.html") + "):")
        print(format_table(means))
    else:
        from .seeds import match_params
        overrides_, statement = match_params(cfg, parse_modes(modes), match)
        summary = compare(cfg, modes, out, overwrite=args.overwrite, resume=args.resume,
                          report=not args.no_report, mode_overrides=overrides_,
                          param_match=statement)
        print(format_table(summary))
    print(f"\n{out}/summary.json" + ("" if args.no_report else f", {out}/report.html"))
    return EXIT_OK


@_guard
def cmd_report(args: argparse.Namespace) -> int:
    """``mhc report DIR``: rebuild summary.json, plots and report.html from the logs."""
    from .report import ReportError, write_report
    skipped: dict = {}
    had_summary = Path(args.dir, "summary.json").is_file()
    try:
        path = write_report(args.dir, skipped)
    except ReportError as e:
        print(f"mhc report: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for mode, lines in skipped.items():
        print(f"mhc report: warning: the {mode} log has unreadable line(s) "
              f"{', '.join(map(str, lines))}, skipped; summary.json "
              f"{'left as it was' if had_summary else 'written from the readable lines'}",
              file=sys.stderr)
    print(path)
    return EXIT_OK


def register(subparsers) -> None:
    """Add ``train``, ``compare`` and ``report`` to the ``mhc`` subcommand parsers."""
    fmt = argparse.RawDescriptionHelpFormatter
    wrap = functools.partial(textwrap.fill, width=80)
    p = subparsers.add_parser(
        "train", help="train one model (residual, HC or mHC connections)",
        description=wrap("Train a GPT (or a plain deep stack) whose residual connections are "
                    "plain residual, HC or mHC. Logs to OUT/log.jsonl, checkpoints to "
                    "OUT/checkpoints, records diagnostics (gains, H_res, gradient norms) "
                    "every --diag-interval steps."),
        epilog=TRAIN_EPILOG, formatter_class=fmt,
        usage="mhc train [--preset NAME] [--connection MODE] [--n N] [--max-steps N]\n"
              "                 [--out DIR] [--resume [PATH]] [--config FILE] [options below]")
    p.add_argument("--resume", metavar="PATH", nargs="?", const=True, default=None,
                   help="continue a run from its latest intact checkpoint, with the "
                        "checkpoint's settings: the run in --out, or PATH (a run folder or "
                        "a checkpoint folder); flags given change only those settings (model, "
                        "data, batch and seed: refused; others: applied and stated)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run in --out instead of refusing")
    add_config_flags(p)
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser(
        "compare", help="train residual, HC and mHC side by side and report",
        description=wrap("Train the same model once per connection mode (same seed, same data "
                    "order) and write summary.json, the logs, PNG plots and report.html "
                    "into --out."),
        epilog=COMPARE_EPILOG, formatter_class=fmt,
        usage="mhc compare [--preset NAME] [--modes LIST] [--max-steps N] [--out DIR]\n"
              "                   [--config FILE] [options below]")
    p.add_argument("--modes", default=argparse.SUPPRESS, metavar="LIST",
                   help="comma-separated modes to train (default: residual,hc,mhc)")
    p.add_argument("--resume", action="store_true",
                   help="finish the comparison in --out with its own settings "
                        "(config.json): continue unfinished modes from their checkpoints, "
                        "skip finished ones")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier comparison in --out instead of refusing")
    p.add_argument("--no-report", action="store_true", help="skip plots and report.html")
    p.add_argument("--seeds", type=int, default=argparse.SUPPRESS, metavar="K",
                   help="run the comparison for K seeds (--seed, --seed + 1, ...) into "
                        "OUT/seed-<s>/ and report mean, standard deviation and range "
                        "(default: 1)")
    p.add_argument("--match-params", default=argparse.SUPPRESS,
                   choices=("none", "width", "depth"),
                   help="parameter-matched residual baseline: widen (d_model) or deepen "
                        "(n_layer) it to the parameter count closest to mhc's; the report "
                        "states the change and the counts (default: none)")
    add_config_flags(p, skip=("connection",))
    p.set_defaults(func=cmd_compare)

    p = subparsers.add_parser(
        "report", help="rebuild plots and report.html from run logs",
        description=wrap("Rebuild summary.json, plots/*.png and report.html from the logs in DIR "
                    "(a folder from mhc compare or mhc train), e.g. of a run done elsewhere."),
        epilog=REPORT_EPILOG, formatter_class=fmt)
    p.add_argument("dir", metavar="DIR", help="folder of a comparison or a single run")
    p.set_defaults(func=cmd_report)


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m torch_mhc.train.cli ...``: the same as the ``mhc`` command."""
    from ..cli import main as mhc_main
    return mhc_main(argv)


if __name__ == "__main__":
    sys.exit(main())
