"""The tokens of raw-text data are cached across runs (kdengine.data.text_cache): a second load
tokenizes nothing and gives the same streams, any change of the files or the tokenizer tokenizes
again, a broken entry is rebuilt, and a cache that cannot be written costs one warning line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from kdengine.config import ConfigError, RunConfig
from kdengine.data import (
    ByteTokenizer,
    Document,
    TokenSplits,
    pack,
    pack_flat,
    read_documents,
    split_documents,
    split_tokens,
    stream_fingerprint,
)
from kdengine.data.text_cache import cached_summary
from kdengine.loading import load_data
from kdengine.tokenizer import load_tokenizer

DOCS = [f"document {i}: " + " ".join(f"word{i}_{j}" for j in range(40)) for i in range(30)]


class Counting:
    """A real tokenizer that counts the documents it is asked to encode."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, 0
        self.fingerprint = getattr(inner, "fingerprint", type(inner).__name__)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def encode_tensor(self, text: str) -> torch.Tensor:
        self.calls += 1
        return self.inner.encode_tensor(text)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KDENGINE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    """The byte-level BPE tokenizer tests/conftest.py writes for tiny models."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import write_byte_tokenizer

    directory = tmp_path_factory.mktemp("tok")
    write_byte_tokenizer(directory)
    return load_tokenizer(directory, "teacher")


def _corpus(directory: Path) -> Path:
    """Text files, a JSONL file and a file that is not UTF-8 (skipped)."""
    directory.mkdir()
    for i, doc in enumerate(DOCS[:20]):
        (directory / f"{i:02d}.txt").write_text(doc)
    (directory / "more.jsonl").write_text(
        "\n".join(json.dumps({"text": d}) for d in DOCS[20:]) + "\n")
    (directory / "bad.txt").write_bytes(b"\xff\xfe not utf-8")
    return directory


def _config(data: Path) -> RunConfig:
    return RunConfig.from_mapping({"teacher": "t", "student": "s", "data": str(data),
                                   "seq_len": 32, "batch_size": 4, "val_fraction": 0.1,
                                   "on_bad_file": "skip"})


def _load(data: Path, tokenizer) -> tuple[TokenSplits, list[str]]:
    lines: list[str] = []
    return load_data(_config(data), tokenizer, progress=lines.append), lines


def _uncached(data: Path, tokenizer) -> TokenSplits:
    """What load_data gave before the cache: every document read and tokenized."""
    skipped: list[list[str]] = []
    splits = split_documents(read_documents(str(data), on_bad_file="skip", skipped=skipped),
                             tokenizer.encode_tensor, tokenizer.eos_id, 0.1, 32, 4)
    splits.skipped = skipped
    return splits


def _assert_same(a: TokenSplits, b: TokenSplits, skipped: int = 1) -> None:
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val)
    assert a.train.dtype == b.train.dtype == a.val.dtype == torch.int64
    assert stream_fingerprint(a.train) == stream_fingerprint(b.train)
    assert stream_fingerprint(a.val) == stream_fingerprint(b.val)
    assert a.skipped == b.skipped and len(a.skipped) == skipped


def test_documents_laid_end_to_end_pack_and_split_as_one_tensor_each_did() -> None:
    gen = torch.Generator().manual_seed(0)
    short, long = ([torch.randint(0, 1000, (int(n),), generator=gen)
                    for n in torch.randint(low, high, (50,), generator=gen)]
                   for low, high in ((0, 9), (200, 900)))  # empty documents too
    keep = torch.rand(50, generator=gen) < 0.3
    for docs in (short, long):  # packed through masks, and from a view of each
        ids, lengths = torch.cat(docs), torch.tensor([len(d) for d in docs])
        assert torch.equal(pack_flat(ids, lengths, 7), pack(docs, 7))
        assert torch.equal(pack_flat(ids, lengths, 7, keep),
                           pack((d for d, k in zip(docs, keep, strict=True) if k), 7))
    # documents (some held out whole), and one long one (the stream's tail held out)
    for docs, window in ((short, 4), (long, 64), ([torch.arange(600)], 16)):
        names = [f"doc{i}" for i in range(len(docs))]
        lengths = torch.tensor([len(d) for d in docs])
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
        by_name = dict(zip(names, docs, strict=True))
        split = split_documents([Document(n, n) for n in names], by_name.__getitem__, 7, 0.1,
                                window, 1)
        _assert_same(split_tokens(names, torch.cat(docs), offsets, 7, 0.1, window, 1), split,
                     skipped=0)


def test_second_load_tokenizes_nothing_and_gives_the_same_streams(
        tmp_path: Path, cache: Path, hf_tokenizer) -> None:
    data = _corpus(tmp_path / "data")
    reference = _uncached(data, hf_tokenizer)
    first, lines = _load(data, tok := Counting(hf_tokenizer))
    assert tok.calls == len(DOCS)
    assert any(f"tokenized {len(DOCS)} documents (" in line and "cached for the next run" in line
               for line in lines)
    _assert_same(first, reference)
    second, lines = _load(data, tok := Counting(hf_tokenizer))
    assert tok.calls == 0
    entry = next(cache.glob("data/text-*"))
    assert lines == [f"data: tokens of {len(DOCS)} documents from the cache ({entry})"]
    _assert_same(second, reference)  # the skipped file reported as on the first load too


def test_a_changed_file_or_another_tokenizer_tokenizes_again(
        tmp_path: Path, cache: Path, hf_tokenizer) -> None:
    data = _corpus(tmp_path / "data")
    _load(data, Counting(hf_tokenizer))
    one = data / "03.txt"
    stat = one.stat()
    os.utime(one, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched, same size
    _, _ = _load(data, tok := Counting(hf_tokenizer))
    assert tok.calls == len(DOCS)
    one.write_text(DOCS[3] + " and more words")  # another size
    splits, _ = _load(data, tok := Counting(hf_tokenizer))
    assert tok.calls == len(DOCS)
    _assert_same(splits, _uncached(data, hf_tokenizer))
    # the same eos id and vocab size, another fingerprint: other ids, so tokenized again
    splits, _ = _load(data, tok := Counting(ByteTokenizer()))
    assert tok.calls == len(DOCS)
    _assert_same(splits, _uncached(data, ByteTokenizer()))
    assert len(list(cache.glob("data/text-*"))) == 4


def test_a_truncated_or_garbled_entry_is_rebuilt(tmp_path: Path, cache: Path) -> None:
    data = _corpus(tmp_path / "data")
    reference = _uncached(data, ByteTokenizer())
    _load(data, ByteTokenizer())
    entry = next(cache.glob("data/text-*"))
    for broken in ("tokens.bin", "meta.json"):
        path = entry / broken
        path.write_bytes(path.read_bytes()[:-7])
        splits, _ = _load(data, tok := Counting(ByteTokenizer()))
        assert tok.calls == len(DOCS)
        _assert_same(splits, reference)
        splits, _ = _load(data, tok := Counting(ByteTokenizer()))  # rebuilt, read again
        assert tok.calls == 0
        _assert_same(splits, reference)
    assert [p.name for p in cache.glob("data/*")] == [entry.name]  # nothing left behind


def test_a_cache_that_cannot_be_written_warns_once_and_the_run_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _corpus(tmp_path / "data")
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("KDENGINE_CACHE", str(tmp_path / "a-file" / "cache"))  # mkdir fails
    splits, lines = _load(data, ByteTokenizer())
    assert len(lines) == 1 and lines[0].startswith("WARNING: data: cannot cache the tokens in ")
    assert "this run goes on uncached" in lines[0]
    _assert_same(splits, _uncached(data, ByteTokenizer()))


# The run's preflight (kdengine.preflight.check_data) counts cached data from the entry.

def _preflight_config(data: Path, seq_len: int = 32) -> RunConfig:
    return RunConfig.from_mapping({"teacher": "t", "student": "s", "data": str(data),
                                   "seq_len": seq_len, "batch_size": 4, "val_fraction": 0.1,
                                   "on_bad_file": "fail"})


def _garble_keeping_stat(file: Path) -> None:
    """Not UTF-8 any more, with the same size and mtime: the cache key cannot tell."""
    stat = file.stat()
    file.write_bytes(b"\xff" * stat.st_size)
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_preflight_of_cached_data_reads_no_file_until_one_is_touched(
        tmp_path: Path, cache: Path, hf_tokenizer) -> None:
    from kdengine.preflight import check_data

    data = tmp_path / "data"
    data.mkdir()
    for i, doc in enumerate(DOCS):
        (data / f"{i:02d}.txt").write_text(doc)
    config = _preflight_config(data)
    read = check_data(config, hf_tokenizer, [])  # no entry yet: every file read
    load_data(config, hf_tokenizer)  # writes the entry
    assert cached_summary(str(data), hf_tokenizer, on_bad_file="fail") is not None
    one = data / "05.txt"
    _garble_keeping_stat(one)
    assert check_data(config, hf_tokenizer, []) == read  # the same counts, the file unread
    stat = one.stat()
    os.utime(one, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched
    with pytest.raises(ConfigError, match=r"05\.txt:1 is not UTF-8 text \(byte 0 of the line\).*"
                                          r"--on-bad-file skip"):
        check_data(config, hf_tokenizer, [])


def test_preflight_says_too_few_tokens_the_same_way_with_or_without_the_entry(
        tmp_path: Path, cache: Path, hf_tokenizer) -> None:
    from kdengine.preflight import check_data

    data = tmp_path / "data"
    data.mkdir()
    for i, doc in enumerate(DOCS[:3]):
        (data / f"{i}.txt").write_text(doc)
    config = _preflight_config(data, seq_len=256)  # 3 documents: far from one batch
    with pytest.raises(ConfigError) as read:
        check_data(config, hf_tokenizer, [])
    with pytest.raises(ConfigError) as loaded:
        load_data(config, hf_tokenizer)  # refused too, after caching the tokens
    assert cached_summary(str(data), hf_tokenizer, on_bad_file="fail") is not None
    _garble_keeping_stat(data / "1.txt")
    with pytest.raises(ConfigError) as cached:
        check_data(config, hf_tokenizer, [])
    assert "shorter than one batch" in str(read.value)
    assert str(cached.value) == str(read.value) == str(loaded.value)
