"""Corpora: the embedded texts, your text file or folder, or pre-tokenized shards.

``load_corpus(source)`` turns one ``--data`` value into train and validation token arrays:

* ``"shakespeare"`` (default) or ``"wikitext2"``: the corpora embedded in the package
  (``torch_mhc/data/corpora``, see its README for provenance and licences);
* a text file, or a folder of text files (every non-hidden file, recursively, in sorted
  order, joined by a newline): tokenized as raw bytes (vocabulary 256);
* a ``.bin`` shard, a folder holding ``.bin`` shards, or a glob such as
  ``"fineweb/*_train_*.bin"``: pre-tokenized uint16/uint32 tokens, memory-mapped.

Split, deterministic: shards whose file name contains ``val`` form the validation split
(nanoGPT's ``val.bin``, llm.c's ``*_val_*.bin``); otherwise the last ``val_fraction`` of
the token stream is held out for validation.
"""
from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np

from .errors import DataError
from .shards import read_shard
from .tokenizer import ByteTokenizer

__all__ = ["Corpus", "load_corpus", "split_tail", "EMBEDDED", "corpora_dir"]

EMBEDDED = {
    "shakespeare": ("tinyshakespeare.txt",),
    "tinyshakespeare": ("tinyshakespeare.txt",),
    "wikitext2": ("wikitext2-valid.txt", "wikitext2-test.txt"),
}


def corpora_dir() -> Path:
    """Folder of the embedded corpora inside the installed package."""
    return Path(__file__).resolve().parent / "corpora"


@dataclass
class Corpus:
    """Token arrays of one data source, already split.

    ``train`` and ``val`` are lists of 1-D integer arrays (one per file or shard piece;
    samples never cross their boundaries). ``vocab_size`` is what the data implies (256 for
    bytes, the llm.c header's vocabulary for such shards) or None when it cannot be known
    cheaply (raw shards).
    """

    name: str
    kind: str  # "bytes" or "shards"
    train: List[np.ndarray]
    val: List[np.ndarray]
    vocab_size: Optional[int]
    files: List[str] = field(default_factory=list)

    @property
    def train_tokens(self) -> int:
        """Number of training tokens."""
        return int(sum(len(a) for a in self.train))

    @property
    def val_tokens(self) -> int:
        """Number of validation tokens."""
        return int(sum(len(a) for a in self.val))

    def describe(self) -> str:
        """One line for logs: name, kind and split sizes."""
        return (f"{self.name} ({self.kind}, {_fmt(self.train_tokens)} train / "
                f"{_fmt(self.val_tokens)} val tokens)")


def _fmt(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n:,}"


def split_tail(arrays: List[np.ndarray], val_fraction: float):
    """Hold out the last ``val_fraction`` of the concatenated arrays (views, no copies)."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    total = sum(len(a) for a in arrays)
    n_val = int(round(total * val_fraction))
    train, val = list(arrays), []
    while n_val > 0 and train:
        last = train.pop()
        if len(last) <= n_val:
            val.insert(0, last)
            n_val -= len(last)
        else:
            train.append(last[: len(last) - n_val])
            val.insert(0, last[len(last) - n_val:])
            n_val = 0
    return [a for a in train if len(a)], [a for a in val if len(a)]


def _read_text_files(files: List[Path], name: str) -> np.ndarray:
    parts = []
    for f in files:
        try:
            parts.append(f.read_bytes())
        except OSError as e:
            raise DataError(f"cannot read {f}: {e.strerror or e}") from None
    data = b"\n".join(parts)
    if not data.strip():
        raise DataError(f"the corpus {name} is empty (no text in {len(files)} file(s)); "
                        "give a file or folder with text in it")
    return ByteTokenizer().encode(data)


def _shard_files(source: str) -> Optional[List[Path]]:
    path = Path(source).expanduser()
    if any(ch in source for ch in "*?["):
        return sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file())
    if path.is_file() and path.suffix == ".bin":
        return [path]
    if path.is_dir():
        bins = sorted(p for p in path.rglob("*.bin") if p.is_file())
        return bins or None
    return None


def _load_shards(source: str, files: List[Path], val_fraction: float,
                 token_dtype: str) -> Corpus:
    if not files:
        raise DataError(f"no token shards match {source!r}")
    shards = [read_shard(f, token_dtype) for f in files]
    vocabs = {s.vocab_size for s in shards}
    vocab = vocabs.pop() if len(vocabs) == 1 else None
    if vocab is None and any(s.vocab_size for s in shards):
        raise DataError(f"the shards of {source!r} mix llm.c formats / raw files")
    is_val = ["val" in f.name.lower() for f in files]
    train = [s.tokens for s, v in zip(shards, is_val) if not v]
    val = [s.tokens for s, v in zip(shards, is_val) if v]
    if not train:
        raise DataError(f"{source!r} holds only validation shards (names containing 'val'); "
                        "add training shards")
    if not val:
        train, val = split_tail(train, val_fraction)
    return Corpus(str(source), "shards", train, val, vocab, [str(f) for f in files])


def load_corpus(source: str = "shakespeare", val_fraction: float = 0.1,
                token_dtype: str = "uint16") -> Corpus:
    """Load and split one data source (see the module docstring for what ``source`` can be)."""
    if not isinstance(source, str) or not source:
        raise DataError("no data source given; use --data shakespeare, wikitext2, a text "
                        "file, a folder of text files or .bin token shards")
    if source.lower() in EMBEDDED:
        files = [corpora_dir() / f for f in EMBEDDED[source.lower()]]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise DataError(f"the embedded corpus {source!r} is missing from the install "
                            f"({', '.join(missing)}); reinstall torch-mhc")
        train, val = split_tail([_read_text_files(files, source)], val_fraction)
        return Corpus(source.lower(), "bytes", train, val, 256, [str(f) for f in files])
    shard_files = _shard_files(source)
    if shard_files is not None:
        return _load_shards(source, shard_files, val_fraction, token_dtype)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"data file or folder {source!r} does not exist (built-in corpora: "
                        f"{', '.join(sorted(set(EMBEDDED) - {'tinyshakespeare'}))})")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*")
                       if p.is_file() and not any(part.startswith(".")
                                                  for part in p.relative_to(path).parts))
        if not files:
            raise DataError(f"the folder {source!r} holds no files; the corpus is empty")
    else:
        files = [path]
    train, val = split_tail([_read_text_files(files, repr(source))], val_fraction)
    return Corpus(str(source), "bytes", train, val, 256, [str(f) for f in files])
