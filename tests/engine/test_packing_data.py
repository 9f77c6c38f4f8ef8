"""Examples tokenized once into a cached store, packed into rows whose position ids restart at
every example (the boundaries masked attention needs), with no target crossing examples."""

from __future__ import annotations

import json
import os
import re
import sys
import zlib
from pathlib import Path

import pytest
import torch

from kdengine.config import ConfigError
from kdengine.data import is_validation
from kdengine.data.chat import load_chat_template
from kdengine.data.examples import load_example_data
from kdengine.data.packing import PackedSampler, pack_rows
from kdengine.data.store import DataOptions, open_store
from kdengine.losses import IGNORE_INDEX
from kdengine.tokenizer import load_tokenizer

CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}"
          "{% generation %}{{ m.content }}<|endoftext|>{% endgeneration %}{% else %}"
          "{{ m.content }}{% endif %}\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def chat(i: int) -> dict:
    answer = "ok " * (i % 7) + f"answer {i}."
    return {"messages": [{"role": "user", "content": f"question {i}?"},
                         {"role": "assistant", "content": answer}]}


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import write_byte_tokenizer

    directory = tmp_path_factory.mktemp("tok")
    write_byte_tokenizer(directory)
    (directory / "chat_template.jinja").write_text(CHATML)
    return directory


@pytest.fixture
def chats(tmp_path: Path) -> Path:
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(chat(i)) + "\n" for i in range(120)))
    return path


def store_of(spec: Path, tok_dir: Path, root: Path, **options):
    return open_store(str(spec), load_tokenizer(tok_dir, "teacher"),
                      load_chat_template(tok_dir), DataOptions(**options), root)


def data_of(spec: Path, tok_dir: Path, root: Path, seq_len: int = 128, **kw):
    return load_example_data(str(spec), load_tokenizer(tok_dir, "teacher"),
                             load_chat_template(tok_dir), seq_len=seq_len, batch_size=4,
                             val_fraction=0.1, root=root, **kw)


def example_rows(rows, index: int) -> list[tuple[int, int]]:
    """(example, tokens taken) of one packed row."""
    return [tuple(s) for s in rows.segments[rows.row_starts[index]:
                                            rows.row_starts[index + 1]].tolist()]


def test_rows_hold_whole_examples_with_positions_restarting_at_each(
        chats: Path, tok_dir: Path, tmp_path: Path) -> None:
    data = data_of(chats, tok_dir, tmp_path / "cache")
    store, rows = data.store, data.train
    batch = rows.rows(list(range(len(rows))))
    assert batch.input_ids.shape == batch.labels.shape == (len(rows), 128)
    assert batch.position_ids.dtype == torch.int64
    seen = []
    for r in range(len(rows)):
        at = 0
        for example, take in example_rows(rows, r):
            start, stop = store.offsets[example].item(), store.offsets[example + 1].item()
            assert take == stop - start  # nothing here is longer than a row
            ids = store.tokens[start:stop].to(torch.int64)
            trains = store.trains[start:stop].bool()
            assert batch.input_ids[r, at:at + take].tolist() == ids.tolist()
            assert batch.position_ids[r, at:at + take].tolist() == list(range(take))
            want = torch.where(trains[1:], ids[1:], IGNORE_INDEX).tolist() + [IGNORE_INDEX]
            assert batch.labels[r, at:at + take].tolist() == want  # no target crosses over
            seen.append(example)
            at += take
        # padding: no labels, positions counting on (no new example starts there)
        assert (batch.labels[r, at:] == IGNORE_INDEX).all()
        assert (batch.position_ids[r, at:] > 0).all()
    assert sorted(seen) == sorted(set(seen)) and len(seen) == data.stats.train_examples
    starts = (batch.position_ids == 0).sum().item()
    assert starts == data.stats.train_examples  # one start per example, as the model reads them


def test_only_assistant_tokens_are_labels(chats: Path, tok_dir: Path, tmp_path: Path) -> None:
    data = data_of(chats, tok_dir, tmp_path / "cache")
    batch = data.train.rows([0])
    tok = load_tokenizer(tok_dir, "teacher")
    decoded = tok._tok.decode([t for t in batch.labels[0].tolist() if t != IGNORE_INDEX])
    assert "answer" in decoded and "question" not in decoded and "user" not in decoded
    everything = data_of(chats, tok_dir, tmp_path / "cache", options=DataOptions(train_on="all"))
    assert everything.stats.trained_tokens == everything.stats.tokens
    assert data.stats.trained_tokens < data.stats.tokens / 2
    assert everything.store.key != data.store.key


def test_best_fit_rows_come_out_nearly_full(chats: Path, tok_dir: Path, tmp_path: Path) -> None:
    data = data_of(chats, tok_dir, tmp_path / "cache", seq_len=256)
    lengths = data.store.lengths()
    train_tokens = int(lengths[data.train.segments[:, 0]].sum())
    assert data.stats.fill > 0.85  # examples of ~70 tokens: three a row, the rest padding
    assert len(data.train) <= train_tokens // 256 + 5


def test_too_long_examples_are_truncated_or_dropped_and_counted(
        chats: Path, tok_dir: Path, tmp_path: Path) -> None:
    store = store_of(chats, tok_dir, tmp_path / "cache")
    lengths = store.lengths()
    every = torch.arange(len(store))
    cap = int(lengths.median())
    long = int((lengths > cap).sum())
    assert 0 < long < len(store)
    cut = pack_rows(store, every, cap, "truncate")
    assert cut.truncated == long and cut.dropped == 0
    assert int(cut.segments[:, 1].max()) == cap and len(cut.segments) == len(store)
    example = int(every[lengths > cap][0])
    row = next(r for r in range(len(cut)) if example in dict(example_rows(cut, r)))
    batch = cut.rows([row])
    start = int(store.offsets[example])
    at = [e for e, _ in example_rows(cut, row)].index(example)
    offset = sum(t for _, t in example_rows(cut, row)[:at])
    last_target = int(store.tokens[start + cap]) if store.trains[start + cap] else IGNORE_INDEX
    assert last_target != IGNORE_INDEX
    assert int(batch.labels[0, offset + cap - 1]) == last_target  # the cut keeps its last target
    dropped = pack_rows(store, every, cap, "drop")
    assert dropped.dropped == long and dropped.truncated == 0
    assert len(dropped.segments) == len(store) - long
    with pytest.raises(ConfigError, match="on_long: must be one of truncate, drop"):
        pack_rows(store, every, cap, "wrap")


def test_a_second_load_reuses_the_store_without_tokenizing(chats: Path, tok_dir: Path,
                                                           tmp_path: Path) -> None:
    root = tmp_path / "cache"
    first = data_of(chats, tok_dir, root)
    assert first.store.tokenized == 120 and not first.stats.cached
    tokens_file = first.store.directory / "tokens.bin"
    built = tokens_file.stat().st_mtime_ns
    again = data_of(chats, tok_dir, root, seq_len=64)  # another seq_len: the same tokens
    assert again.store.tokenized == 0 and again.stats.cached
    assert again.store.directory == first.store.directory
    assert tokens_file.stat().st_mtime_ns == built
    assert [d.name for d in root.iterdir()] == [first.store.key]  # no build folder left
    # changed data is a new store, not a stale one
    with chats.open("a") as f:
        f.write(json.dumps(chat(999)) + "\n")
    changed = data_of(chats, tok_dir, root)
    assert changed.store.tokenized == 121 and changed.store.key != first.store.key


def test_a_store_written_by_an_older_encoding_is_tokenized_again(
        chats: Path, tok_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a change to how examples become tokens and masks bumps STORE_FORMAT: the old store's
    # masks are not reused (nor a teacher cache over it)
    import kdengine.data.store as store_module

    root = tmp_path / "cache"
    monkeypatch.setattr(store_module, "STORE_FORMAT", "kdengine-examples-1")
    old = data_of(chats, tok_dir, root)
    monkeypatch.undo()
    now = data_of(chats, tok_dir, root)
    assert now.store.key != old.store.key and now.store.tokenized == 120
    meta = json.loads((now.store.directory / "meta.json").read_text())
    assert meta["format"] == store_module.STORE_FORMAT != "kdengine-examples-1"


def test_a_store_built_by_the_preflight_is_the_runs_own_build(chats: Path, tok_dir: Path,
                                                               tmp_path: Path) -> None:
    """One `kdengine train` builds the store in its preflight and maps it in its run: that run
    tokenized it (not cached), with the build's time; a later command reuses it (cached)."""
    from kdengine.data.store import hand_over

    root = tmp_path / "cache"
    preflight = data_of(chats, tok_dir, root)
    assert preflight.store.tokenized == 120 and preflight.store.seconds > 0
    hand_over(preflight.store)
    run = data_of(chats, tok_dir, root)
    assert run.store.tokenized == 120 and not run.stats.cached
    assert run.store.seconds == preflight.store.seconds
    later = data_of(chats, tok_dir, root)  # handed over once: the next command's is reused
    assert later.store.tokenized == 0 and later.stats.cached and later.store.seconds == 0
    hand_over(later.store)  # a preflight that built nothing hands nothing over
    assert data_of(chats, tok_dir, root).stats.cached


def test_the_cache_lives_under_kdengine_cache(chats: Path, tok_dir: Path,
                                              session_cache: Path) -> None:
    assert Path(os.environ["KDENGINE_CACHE"]) == session_cache
    store = open_store(str(chats), load_tokenizer(tok_dir, "teacher"),
                       load_chat_template(tok_dir))
    assert store.directory.parent == session_cache / "data"


def test_validation_holds_out_whole_examples_by_name_hash(chats: Path, tok_dir: Path,
                                                          tmp_path: Path) -> None:
    data = data_of(chats, tok_dir, tmp_path / "cache")
    held = {e for e, _ in data.val.segments.tolist()}
    train = {e for e, _ in data.train.segments.tolist()}
    assert not held & train and len(held | train) == 120
    names = [f"chats.jsonl:{i}" for i in range(1, 121)]
    assert held == {i for i, n in enumerate(names) if is_validation(n, 0.1)}
    assert data.store.names.tolist() == [zlib.crc32(n.encode()) for n in names]
    assert data.stats.val_examples == len(held) and data.stats.val_rows == len(data.val)


def test_batches_are_a_function_of_seed_and_step_for_resume(chats: Path, tok_dir: Path,
                                                            tmp_path: Path) -> None:
    data = data_of(chats, tok_dir, tmp_path / "cache")
    one, two = PackedSampler(data.train, 4, seed=3), PackedSampler(data.train, 4, seed=3)
    for step in (0, 7, 50, 3):
        a, b = one.batch(step), two.batch(step)
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    # an epoch visits every row once
    rows_per_epoch = len(data.train) // 4
    rows = {tuple(one.batch(s).input_ids[i].tolist()) for s in range(rows_per_epoch)
            for i in range(4)}
    assert len(rows) == rows_per_epoch * 4
    saved = one.position(10)
    two.check_position(saved, 10)
    other = data_of(chats, tok_dir, tmp_path / "cache", seq_len=64)
    with pytest.raises(ConfigError, match="differs from the checkpoint's"):
        PackedSampler(other.train, 4, seed=3).check_position(saved, 10)
    val = PackedSampler(data.val, 4, seed=0).fixed_batches(2)
    assert val and all(torch.equal(x, y) for x, y in zip(
        val[0], PackedSampler(data.val, 4, seed=9).fixed_batches(2)[0], strict=True))


def test_the_data_stage_counts(tmp_path: Path, tok_dir: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "chats.jsonl").write_text("".join(json.dumps(chat(i)) + "\n" for i in range(60)))
    (data / "text.jsonl").write_text(json.dumps({"text": "x" * 300}) + "\n")
    (data / "bad.jsonl").write_text("{oops\n")
    loaded = data_of(data, tok_dir, tmp_path / "cache", seq_len=128,
                     options=DataOptions(on_bad_file="skip"), on_long="drop")
    stats = loaded.stats.to_event()
    assert stats["examples"] == 61 and stats["skipped_files"] == 1
    assert stats["skipped"] == [["bad.jsonl", "bad.jsonl:1: is not JSON (Expecting property "
                                 "name enclosed in double quotes at column 2): fix the line "
                                 "(one JSON object a line)"]]
    assert stats["dropped"] == 1 and stats["truncated"] == 0
    assert stats["train_examples"] + stats["val_examples"] == 61
    assert stats["tokens"] == int(loaded.store.lengths().sum())
    assert stats["trained_tokens"] == int(loaded.store.trains.sum())
    assert set(stats) >= {"examples", "tokens", "trained_tokens", "truncated", "dropped",
                          "skipped_files"}


def test_data_shorter_than_a_batch_is_a_clear_error(tmp_path: Path, tok_dir: Path) -> None:
    path = tmp_path / "two.jsonl"
    path.write_text("".join(json.dumps(chat(i)) + "\n" for i in range(2)))
    with pytest.raises(ConfigError, match="batch_size 4 needs 4 train rows"):
        data_of(path, tok_dir, tmp_path / "cache")


def test_examples_all_dropped_as_too_long_name_seq_len_and_on_long(
        chats: Path, tok_dir: Path, tmp_path: Path) -> None:
    """--on-long drop that leaves too few rows says how many it dropped and that the fix is a
    larger seq_len or truncating, not more data or a smaller batch_size."""
    shortest = int(store_of(chats, tok_dir, tmp_path / "cache").lengths().min())
    with pytest.raises(ConfigError) as every:
        data_of(chats, tok_dir, tmp_path / "cache", seq_len=shortest - 1, on_long="drop")
    assert every.value.field == "on_long"
    assert every.value.message == (
        f"drop left out 120 of the 120 examples as longer than seq_len {shortest - 1}, leaving "
        "0 train and 0 validation rows: batch_size 4 needs 4 train rows and one validation row "
        "(give a larger --seq-len, or --on-long truncate)")
    # two left (chats 0 and 7, the shortest): more data would do as well
    with pytest.raises(ConfigError, match=r"drop left out 118 of the 120 examples .*"
                       r"\(give a larger --seq-len, or --on-long truncate, or more data\)"):
        data_of(chats, tok_dir, tmp_path / "cache", seq_len=shortest, on_long="drop")
    # truncating the same examples trains
    assert len(data_of(chats, tok_dir, tmp_path / "cache", seq_len=shortest - 1).train) >= 4


def test_workers_build_the_same_store_and_name_the_same_first_error(
        tmp_path: Path, tok_dir: Path) -> None:
    path = tmp_path / "many.jsonl"
    lines = [json.dumps(chat(i)) + "\n" for i in range(700)]
    path.write_text("".join(lines))
    tok, template = load_tokenizer(tok_dir, "teacher"), load_chat_template(tok_dir)
    alone = open_store(str(path), tok, template, root=tmp_path / "alone", workers=0)
    pooled = open_store(str(path), tok, template, root=tmp_path / "pooled", workers=2)
    for name in ("tokens", "trains", "offsets", "names"):
        assert (alone.directory / f"{name}.bin").read_bytes() == \
            (pooled.directory / f"{name}.bin").read_bytes(), name
    assert alone.meta == pooled.meta
    # a record the template refuses (in a worker's chunk) comes before a line that is not JSON
    bad_turn = {"messages": [{"role": "tool", "content": "x"}]}
    lines[300] = json.dumps(bad_turn) + "\n"
    lines[650] = "{not json\n"
    path.write_text("".join(lines))
    (tok_dir / "strict").mkdir(exist_ok=True)
    for f in tok_dir.iterdir():
        if f.is_file():
            (tok_dir / "strict" / f.name).write_bytes(f.read_bytes())
    (tok_dir / "strict" / "chat_template.jinja").write_text(
        "{% if messages[0].role == 'tool' %}{{ raise_exception('no tool first') }}{% endif %}"
        + CHATML)
    strict = load_chat_template(tok_dir / "strict")
    for workers in (0, 2):
        with pytest.raises(ConfigError, match=rf"^data: {re.escape(str(path))}:301: the chat "
                           r"template cannot render it \(TemplateError: no tool first\)"):
            open_store(str(path), tok, strict, root=tmp_path / f"bad{workers}",
                       workers=workers)
        assert not list((tmp_path / f"bad{workers}").iterdir())  # no half-built store left
