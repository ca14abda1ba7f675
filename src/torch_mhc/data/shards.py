"""Pre-tokenized token shards (``.bin``), as written by nanoGPT and llm.c.

Two layouts are read, both memory-mapped (nothing is loaded into RAM):

* llm.c: a 256 x int32 header (``magic``, ``version``, token count, zeros) followed by the
  tokens. Magic 20240520 / version 1 holds uint16 tokens (GPT-2 vocabulary, 50257);
  magic 20240801 / version 7 holds uint32 tokens (Llama-3 vocabulary, 128256).
* nanoGPT: raw tokens with no header (``train.bin`` / ``val.bin``), uint16 by default;
  pass ``token_dtype="uint32"`` for vocabularies beyond 65536.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from .errors import DataError

__all__ = ["Shard", "read_shard", "write_shard", "LLMC_FORMATS", "HEADER_INTS"]

HEADER_INTS = 256
# magic -> (version, token dtype, vocabulary size, name)
LLMC_FORMATS = {
    20240520: (1, np.uint16, 50257, "gpt-2"),
    20240801: (7, np.uint32, 128256, "llama-3"),
}
_DTYPES = {"uint16": np.uint16, "uint32": np.uint32}


@dataclass
class Shard:
    """One memory-mapped shard: ``tokens`` (1-D), the format, and the vocabulary it implies."""

    path: Path
    tokens: np.ndarray
    layout: str  # "llm.c" or "raw"
    vocab_size: Optional[int]  # from the llm.c header; None for raw shards


def _dtype(token_dtype: str):
    if token_dtype not in _DTYPES:
        raise DataError(f"token dtype must be 'uint16' or 'uint32', got {token_dtype!r}")
    return _DTYPES[token_dtype]


def read_shard(path: Union[str, Path], token_dtype: str = "uint16") -> Shard:
    """Memory-map one ``.bin`` shard; llm.c headers are recognised, else raw ``token_dtype``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"token shard {path} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"token shard {path} is empty")
    if size >= HEADER_INTS * 4:
        header = np.fromfile(path, dtype=np.int32, count=HEADER_INTS)
        fmt = LLMC_FORMATS.get(int(header[0]))
        if fmt is not None and int(header[1]) == fmt[0]:
            version, dtype, vocab, _ = fmt
            count = int(header[2])
            expected = HEADER_INTS * 4 + count * np.dtype(dtype).itemsize
            if count <= 0 or size != expected:
                raise DataError(f"token shard {path} is truncated or corrupt: its llm.c header "
                                f"promises {count} tokens ({expected} bytes), the file has "
                                f"{size} bytes")
            tokens = np.memmap(path, dtype=dtype, mode="r", offset=HEADER_INTS * 4,
                               shape=(count,))
            return Shard(path, tokens, "llm.c", vocab)
    dtype = _dtype(token_dtype)
    itemsize = np.dtype(dtype).itemsize
    if size % itemsize:
        raise DataError(f"token shard {path} has {size} bytes, not a whole number of "
                        f"{token_dtype} tokens; is --token-dtype right?")
    return Shard(path, np.memmap(path, dtype=dtype, mode="r"), "raw", None)


def write_shard(path: Union[str, Path], tokens, token_dtype: str = "uint16",
                header: bool = True) -> Path:
    """Write ``tokens`` as a shard: llm.c layout with ``header=True``, else nanoGPT raw.

    With a header, ``uint16`` uses the GPT-2 magic and ``uint32`` the Llama-3 magic.
    """
    dtype = _dtype(token_dtype)
    arr = np.asarray(tokens)
    if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(dtype).max):
        raise DataError(f"token ids out of range for {token_dtype}")
    arr = arr.astype(dtype, copy=False)
    path = Path(path)
    with open(path, "wb") as f:
        if header:
            magic = next(m for m, fmt in LLMC_FORMATS.items() if fmt[1] == dtype)
            head = np.zeros(HEADER_INTS, dtype=np.int32)
            head[0], head[1], head[2] = magic, LLMC_FORMATS[magic][0], arr.size
            f.write(head.tobytes())
        f.write(arr.tobytes())
    return path
