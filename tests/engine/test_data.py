"""Data sources (text, jsonl, directories, pre-tokenized shards), packing, the held-out split,
the sampler's determinism, and one clear error for every kind of bad data."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from kdengine.config import ConfigError, RunConfig
from kdengine.data import (
    BatchSampler,
    ByteTokenizer,
    read_documents,
    read_token_shards,
    split_token_shards,
)
from kdengine.loading import load_data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from file_modes import AS_ROOT, run_python  # noqa: E402

TOK = ByteTokenizer()
DOCS = [f"document {i}: " + " ".join(f"word{i}_{j}" for j in range(60)) for i in range(40)]


def _config(data: Path | str, **values) -> RunConfig:
    return RunConfig.from_mapping({"teacher": "t", "student": "s", "data": str(data),
                                   "seq_len": 32, "batch_size": 4, "val_fraction": 0.1,
                                   **values})


def _write_shards(directory: Path, docs: list[list[int]], dtype: str, eos: int,
                  per_shard: int = 10) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    width = {"uint16": 2, "uint32": 4}[dtype]
    for s in range(0, len(docs), per_shard):
        ids = [t for doc in docs[s:s + per_shard] for t in [*doc, eos]]
        (directory / f"shard-{s // per_shard:03d}.bin").write_bytes(
            b"".join(t.to_bytes(width, "little") for t in ids))
    (directory / "tokens.json").write_text(json.dumps(
        {"format": "kdengine-tokens", "dtype": dtype, "eos_id": eos}))
    return directory


def _error(config: RunConfig, tokenizer=TOK) -> str:
    with pytest.raises(ConfigError) as info:
        load_data(config, tokenizer)
    assert info.value.field == "data"
    return info.value.message


def test_text_file_jsonl_and_directory_all_read_as_documents(tmp_path: Path) -> None:
    (tmp_path / "one.txt").write_text(DOCS[0])
    (tmp_path / "d").mkdir()
    for i, doc in enumerate(DOCS[:3]):
        (tmp_path / "d" / f"{i}.txt").write_text(doc)
    (tmp_path / "d" / "more.jsonl").write_text(
        "\n".join(json.dumps({"text": d, "id": i}) for i, d in enumerate(DOCS[3:6])) + "\n\n")
    assert [d.text for d in read_documents(str(tmp_path / "one.txt"))] == [DOCS[0]]
    docs = read_documents(str(tmp_path / "d"))
    assert sorted(d.text for d in docs) == sorted(DOCS[:6])
    assert len({d.name for d in docs}) == 6


def test_packed_stream_puts_one_separator_after_every_document(tmp_path: Path) -> None:
    for i, doc in enumerate(DOCS):
        (tmp_path / f"{i:02d}.txt").write_text(doc)
    splits = load_data(_config(tmp_path), TOK)
    for stream in (splits.train, splits.val):
        assert stream[-1] == TOK.eos_id
    total_eos = int((splits.train == TOK.eos_id).sum() + (splits.val == TOK.eos_id).sum())
    assert total_eos == len(DOCS)
    assert len(splits.train) + len(splits.val) == sum(len(d) for d in DOCS) + len(DOCS)


def test_validation_split_is_deterministic_whole_documents_never_trained_on(
        tmp_path: Path) -> None:
    for i, doc in enumerate(DOCS):
        (tmp_path / f"{i:02d}.txt").write_text(doc)
    a, b = load_data(_config(tmp_path), TOK), load_data(_config(tmp_path), TOK)
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val)
    val_text = bytes(a.val[a.val != TOK.eos_id].tolist()).decode()
    train_text = bytes(a.train[a.train != TOK.eos_id].tolist()).decode()
    held = [d for d in DOCS if d in val_text]
    assert held and all(d not in train_text for d in held)


def test_pre_tokenized_uint16_and_uint32_shards_hold_out_whole_documents(tmp_path: Path) -> None:
    docs = [[(7 * i + j) % 500 + 1 for j in range(30 + i)] for i in range(40)]
    for dtype, offset in (("uint16", 0), ("uint32", 70_000)):
        shifted = [[t + offset for t in doc] for doc in docs]
        path = _write_shards(tmp_path / dtype, shifted, dtype, eos=0)
        shards = read_token_shards(str(path))
        assert len(shards.shards) == 4
        splits = split_token_shards(shards, 0.1, 16, 4)
        train, val = splits.train.tensor(), splits.val.tensor()
        again = split_token_shards(read_token_shards(str(path)), 0.1, 16, 4)
        assert torch.equal(val, again.val.tensor())
        assert int((train == 0).sum() + (val == 0).sum()) == 40
        assert len(splits.train) + len(splits.val) == sum(len(d) + 1 for d in docs)
        assert int(train.max()) == max(max(d) for d in shifted)  # uint32 ids survive
        # validation holds whole documents: every held-out document appears intact
        val_docs = [tuple(d) for d in
                    torch.tensor_split(val, (val == 0).nonzero().flatten() + 1)[:-1]]
        assert val_docs and all(list(d[:-1]) in shifted for d in val_docs)


def test_shards_go_through_load_data_with_the_tokenizer_vocab_check(tmp_path: Path) -> None:
    docs = [[1 + (i + j) % 200 for j in range(40)] for i in range(30)]
    path = _write_shards(tmp_path / "ok", docs, "uint16", eos=256)
    splits = load_data(_config(path), TOK)
    assert len(splits.train) > 0
    bad = _write_shards(tmp_path / "big", [[*d, 300] for d in docs], "uint16", eos=256)
    assert "token id 300" in _error(_config(bad)) and "vocab (257)" in _error(_config(bad))


def test_step_k_batch_is_a_pure_function_of_seed_and_k() -> None:
    stream = torch.arange(5000) % 251
    a = BatchSampler(stream, 4, 16, seed=3)
    b = BatchSampler(stream.clone(), 4, 16, seed=3)
    for k in (1, 7, 7, 1000):
        assert all(torch.equal(x, y) for x, y in zip(a.batch(k), b.batch(k), strict=True))
    assert not torch.equal(a.batch(1)[0], a.batch(2)[0])
    assert not torch.equal(a.batch(1)[0], BatchSampler(stream, 4, 16, seed=4).batch(1)[0])


def test_resume_on_changed_data_is_refused() -> None:
    stream = torch.arange(5000) % 251
    saved = BatchSampler(stream, 4, 16, seed=3).position(10)
    BatchSampler(stream.clone(), 4, 16, seed=3).check_position(saved, 10)
    changed = stream.clone()
    changed[100] += 1
    with pytest.raises(ConfigError, match="stream"):
        BatchSampler(changed, 4, 16, seed=3).check_position(saved, 10)


# -- bad data: one clear error each ----------------------------------------------------------

def test_empty_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("  \n")
    assert "is empty" in _error(_config(tmp_path / "empty.txt"))


def test_directory_without_text_files_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    message = _error(_config(tmp_path))
    assert "holds no" in message and ".jsonl" in message and "tokens.json" in message


def test_directory_of_empty_files_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "   "}) + "\n")
    assert "is empty" in _error(_config(tmp_path))


def test_non_utf8_file_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 100)
    message = _error(_config(tmp_path))
    assert "latin1.txt" in message and "not UTF-8" in message


def test_unreadable_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "secret.txt"
    path.write_text("text " * 1000)
    path.chmod(0)
    try:
        message = _unreadable_error(path)
        assert "cannot read" in message and "secret.txt" in message
    finally:
        path.chmod(0o600)


def _unreadable_error(path: Path) -> str:
    """_error of `path` where its mode keeps the reader out: in this process for a user; for
    root (CI), whom no mode keeps out, in one child that the modes bind (tests/file_modes.py)."""
    if not AS_ROOT:
        return _error(_config(path))
    done = run_python(
        "import sys\n"
        "from kdengine.config import ConfigError, RunConfig\n"
        "from kdengine.data import ByteTokenizer\n"
        "from kdengine.loading import load_data\n"
        "config = RunConfig.from_mapping({'teacher': 't', 'student': 's', 'data': sys.argv[1],\n"
        "                                 'seq_len': 32, 'batch_size': 4, 'val_fraction': 0.1})\n"
        "try:\n"
        "    load_data(config, ByteTokenizer())\n"
        "except ConfigError as exc:\n"
        "    print(exc.field, exc.message)\n", str(path))
    assert done.returncode == 0 and done.stdout.startswith("data "), done.stderr
    return done.stdout.removeprefix("data ")


def test_a_jsonl_line_that_is_not_json_names_the_column_of_the_error(tmp_path: Path) -> None:
    (tmp_path / "broken.jsonl").write_text('{"text": "fine"}\n{"text": "no end\n')
    assert _error(_config(tmp_path / "broken.jsonl")).startswith(
        f"{tmp_path / 'broken.jsonl'}:2 is not JSON: Unterminated string starting at column 10; "
        "fix the line")


def test_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{not json\n')
    assert "bad.jsonl:2 is not JSON" in _error(_config(tmp_path / "bad.jsonl"))
    (tmp_path / "field.jsonl").write_text('{"text": "fine"}\n{"content": "x"}\n')
    assert "field.jsonl:2 has no text, messages, conversations or prompt+completion field " \
        "(its fields: content); name the columns with --data-fields, e.g. text=content" in \
        _error(_config(tmp_path / "field.jsonl"))


def test_data_shorter_than_one_batch_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "short.txt").write_text("x" * 100)  # 101 tokens; a batch of 4 x 33 needs more
    message = _error(_config(tmp_path / "short.txt"))
    assert "shorter than one batch" in message and "batch_size" in message
    # the same text is enough for a batch of one short sequence
    assert load_data(_config(tmp_path / "short.txt", seq_len=8, batch_size=1), TOK)


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    assert "does not exist" in _error(_config(tmp_path / "nowhere"))


@pytest.mark.parametrize("meta, bins, expected", [
    ({"format": "other", "dtype": "uint16", "eos_id": 0}, {"a.bin": b"\0\0"}, "format"),
    ({"format": "kdengine-tokens", "dtype": "int8", "eos_id": 0}, {"a.bin": b"\0"},
     "uint16 or uint32"),
    ({"format": "kdengine-tokens", "dtype": "uint16"}, {"a.bin": b"\0\0"}, "eos_id"),
    ({"format": "kdengine-tokens", "dtype": "uint32", "eos_id": 0}, {"a.bin": b"\0" * 6},
     "not a whole number of uint32"),
    ({"format": "kdengine-tokens", "dtype": "uint16", "eos_id": 0}, {}, "no *.bin"),
    ({"format": "kdengine-tokens", "dtype": "uint16", "eos_id": 0}, {"a.bin": b""},
     "is empty"),
    ({"format": "kdengine-tokens", "dtype": "uint16", "eos_id": 0},
     {"a.bin": b"\1\0" * 20}, "shorter than one batch"),
])
def test_bad_token_shards_are_errors(tmp_path: Path, meta: dict, bins: dict,
                                     expected: str) -> None:
    (tmp_path / "tokens.json").write_text(json.dumps(meta))
    for name, raw in bins.items():
        (tmp_path / name).write_bytes(raw)
    assert expected in _error(_config(tmp_path))


def test_unparseable_shard_meta_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "tokens.json").write_text("{oops")
    assert "cannot read" in _error(_config(tmp_path))
