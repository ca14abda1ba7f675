import hashlib
import re

import numpy as np
import pytest

from torch_mhc.data import (ByteTokenizer, DataError, corpora_dir, load_corpus, read_shard,
                            split_tail, write_shard)


def test_embedded_corpora_match_their_readme():
    readme = (corpora_dir() / "README.md").read_text()
    sums = dict(re.findall(r"- (\S+\.txt) `([0-9a-f]{64})`", readme))
    assert set(sums) == {"tinyshakespeare.txt", "wikitext2-valid.txt", "wikitext2-test.txt"}
    for name, digest in sums.items():
        assert hashlib.sha256((corpora_dir() / name).read_bytes()).hexdigest() == digest
    assert "licence" in readme and "CC BY-SA 3.0" in readme


def test_default_corpus_split_is_deterministic_tail():
    c = load_corpus("shakespeare", val_fraction=0.1)
    raw = (corpora_dir() / "tinyshakespeare.txt").read_bytes()
    assert c.kind == "bytes" and c.vocab_size == 256
    assert c.train_tokens + c.val_tokens == len(raw)
    assert c.val_tokens == round(0.1 * len(raw))
    assert bytes(c.val[0][:50].tobytes()) == raw[c.train_tokens:c.train_tokens + 50]
    c2 = load_corpus("shakespeare", val_fraction=0.1)
    assert np.array_equal(c.val[0], c2.val[0])


def test_wikitext2_is_both_files():
    c = load_corpus("wikitext2")
    assert c.train_tokens + c.val_tokens == 1121681 + 1256449 + 1  # joined by one newline


def test_text_file_and_folder(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("hello world\n" * 50)
    c = load_corpus(str(f), val_fraction=0.2)
    assert c.train_tokens + c.val_tokens == len(f.read_bytes())
    d = tmp_path / "folder"
    (d / "sub").mkdir(parents=True)
    (d / "b.txt").write_text("second")
    (d / "a.md").write_text("first")
    (d / "sub" / "c.txt").write_text("third")
    (d / ".hidden").write_text("SECRET")
    c = load_corpus(str(d), val_fraction=0.25)
    text = b"".join(bytes(a.tobytes()) for a in c.train + c.val)
    assert text == b"first\nsecond\nthird"
    assert [p.split("/")[-1] for p in c.files] == ["a.md", "b.txt", "c.txt"]


@pytest.mark.parametrize("make, phrase", [
    (lambda p: str(p / "nope.txt"), "does not exist"),
    (lambda p: (p / "e.txt").write_text("") and None or str(p / "e.txt"), "empty"),
    (lambda p: (p / "d").mkdir() or str(p / "d"), "empty"),
    (lambda p: str(p / "*.bin"), "no token shards match"),
])
def test_bad_sources(tmp_path, make, phrase):
    with pytest.raises(DataError, match=phrase):
        load_corpus(make(tmp_path))


def test_llmc_shards_uint16_and_uint32(tmp_path):
    toks = np.arange(1000) % 50000
    write_shard(tmp_path / "x_train_000.bin", toks, "uint16")
    write_shard(tmp_path / "x_val_000.bin", toks[:300], "uint16")
    c = load_corpus(str(tmp_path))
    assert c.kind == "shards" and c.vocab_size == 50257
    assert c.train_tokens == 1000 and c.val_tokens == 300  # 'val' in the name: validation
    big = np.array([0, 70000, 128000, 5], dtype=np.int64)
    s = read_shard(write_shard(tmp_path / "big.bin", big, "uint32"))
    assert s.layout == "llm.c" and s.vocab_size == 128256
    assert s.tokens.tolist() == big.tolist()


def test_raw_nanogpt_shards_and_glob(tmp_path):
    write_shard(tmp_path / "train.bin", np.arange(500) % 300, "uint16", header=False)
    c = load_corpus(str(tmp_path / "train.bin"), val_fraction=0.1)
    assert c.vocab_size is None and c.train_tokens == 450 and c.val_tokens == 50
    write_shard(tmp_path / "val.bin", np.arange(100), "uint16", header=False)
    c = load_corpus(str(tmp_path / "*.bin"))
    assert c.train_tokens == 500 and c.val_tokens == 100
    write_shard(tmp_path / "w.bin", np.arange(10), "uint32", header=False)
    assert read_shard(tmp_path / "w.bin", "uint32").tokens.tolist() == list(range(10))


def test_truncated_shard(tmp_path):
    p = write_shard(tmp_path / "t.bin", np.arange(100), "uint16")
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated"):
        read_shard(p)
    (tmp_path / "odd.bin").write_bytes(b"abc")
    with pytest.raises(DataError, match="whole number"):
        read_shard(tmp_path / "odd.bin")


def test_split_tail_across_pieces():
    a, b = np.arange(10), np.arange(10, 14)
    train, val = split_tail([a, b], 0.3)  # 4 of 14 -> exactly b
    assert [t.tolist() for t in train] == [a.tolist()] and [v.tolist() for v in val] == [b.tolist()]
    train, val = split_tail([a, b], 0.5)  # 7 -> 3 of a + b
    assert sum(len(t) for t in train) == 7 and val[0].tolist() == [7, 8, 9]
    with pytest.raises(DataError):
        split_tail([a], 1.0)


def test_byte_tokenizer_roundtrip():
    tok = ByteTokenizer()
    text = "Grüße, 世界 — mHC"
    ids = tok.encode(text)
    assert ids.dtype == np.uint8 and len(ids) == len(text.encode())
    assert tok.decode(ids) == text
    assert tok.decode([0xFF]) == "\ufffd"
