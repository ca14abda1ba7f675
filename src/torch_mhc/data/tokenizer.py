"""Byte-level tokenizer: every byte of UTF-8 text is one token (vocabulary 256, no files)."""
from __future__ import annotations

from typing import Iterable, Union

import numpy as np

__all__ = ["ByteTokenizer"]


class ByteTokenizer:
    """Tokens are the bytes of the UTF-8 encoding; ``decode`` replaces invalid sequences.

    Needs no vocabulary file and no download, works on any text (or any file: the trainer
    tokenizes files as raw bytes), and makes byte-level losses comparable across runs.
    """

    vocab_size = 256

    def encode(self, text: Union[str, bytes]) -> np.ndarray:
        """``str`` or ``bytes`` -> ``uint8`` array of token ids."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return np.frombuffer(data, dtype=np.uint8).copy()

    def decode(self, ids: Iterable[int]) -> str:
        """Token ids (0..255) -> text; bytes that are not valid UTF-8 become U+FFFD."""
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")
