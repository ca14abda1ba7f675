"""Data for the trainer: byte tokenizer, embedded corpora, token shards, seeded sampling."""
from .corpus import EMBEDDED, Corpus, corpora_dir, load_corpus, split_tail
from .errors import DataError
from .sampler import PROBE_STREAM, TRAIN_STREAM, VAL_STREAM, BatchSampler
from .shards import Shard, read_shard, write_shard
from .tokenizer import ByteTokenizer

__all__ = ["ByteTokenizer", "Corpus", "load_corpus", "split_tail", "corpora_dir", "EMBEDDED",
           "DataError", "BatchSampler", "TRAIN_STREAM", "VAL_STREAM", "PROBE_STREAM",
           "Shard", "read_shard", "write_shard"]
