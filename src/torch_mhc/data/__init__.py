"""Data for the trainer: byte tokenizer, embedded corpora, token shards, seeded sampling."""
from .._extras import require

require("torch_mhc.data", ("numpy",))

from .corpus import EMBEDDED, Corpus, corpora_dir, load_corpus, split_tail  # noqa: E402
from .errors import DataError  # noqa: E402
from .sampler import PROBE_STREAM, TRAIN_STREAM, VAL_STREAM, BatchSampler  # noqa: E402
from .shards import Shard, read_shard, write_shard  # noqa: E402
from .tokenizer import ByteTokenizer  # noqa: E402

__all__ = ["ByteTokenizer", "Corpus", "load_corpus", "split_tail", "corpora_dir", "EMBEDDED",
           "DataError", "BatchSampler", "TRAIN_STREAM", "VAL_STREAM", "PROBE_STREAM",
           "Shard", "read_shard", "write_shard"]
