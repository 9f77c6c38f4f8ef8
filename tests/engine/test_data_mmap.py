"""Pre-tokenized shards stay memory-mapped: the TokenStream splits read, sample and fingerprint
exactly like the int64 streams the engine packed before (so runs resume and seeds keep their
meaning), the shard files are never written, and loading a large corpus costs a small fraction
of its int64 size in RAM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
import torch

import kdengine.data as data
from kdengine.config import ConfigError
from kdengine.data import (
    BatchSampler,
    TokenSplits,
    TokenStream,
    read_token_shards,
    split_token_shards,
    stream_fingerprint,
)

# -- the reference: how the engine packed shards before they were mapped (kept small, on purpose)


def _old_streams(path: Path) -> list[tuple[str, torch.Tensor]]:
    meta = json.loads((path / "tokens.json").read_text())
    dtype = {"uint16": torch.uint16, "uint32": torch.uint32}[meta["dtype"]]
    out = []
    for file in sorted(path.glob("*.bin")):
        raw = bytearray(file.read_bytes())
        if not raw:
            continue
        stream = torch.frombuffer(raw, dtype=dtype).to(torch.int64)
        if stream[-1].item() != meta["eos_id"]:
            stream = torch.cat([stream, torch.tensor([meta["eos_id"]])])
        out.append((file.name, stream))
    return out


def _old_split(path: Path, val_fraction: float, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    eos = json.loads((path / "tokens.json").read_text())["eos_id"]
    streams = _old_streams(path)
    train_parts, val_parts = [], []
    for name, stream in streams:
        ends = (stream == eos).nonzero().flatten()
        held = torch.tensor([zlib.crc32(f"{name}:{i}".encode()) % 10_000 < val_fraction * 10_000
                             for i in range(len(ends))], dtype=torch.bool)
        doc_of = torch.zeros(len(stream), dtype=torch.int64)
        doc_of[ends[:-1] + 1] = 1
        mask = held[doc_of.cumsum(0)]
        train_parts.append(stream[~mask])
        val_parts.append(stream[mask])
    train, val = torch.cat(train_parts), torch.cat(val_parts)
    if len(val) < window + 1:
        stream = torch.cat([s for _, s in streams])
        cut = int(len(stream) * (1 - max(val_fraction, 0.05)))
        cut = max(min(cut, len(stream) - (window + 1)), 0)
        train, val = stream[:cut], stream[cut:]
    return train, val


def _old_fingerprint(stream: torch.Tensor) -> str:
    weights = torch.arange(len(stream), dtype=torch.int64) * 2654435761 + 97
    return f"{len(stream)}:{int(((stream + 1) * weights).sum()) & 0xFFFFFFFFFFFF:012x}"


def _old_batch(stream: torch.Tensor, batch_size: int, seq_len: int, seed: int,
               step: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63))
    starts = torch.randint(0, len(stream) - (seq_len + 1) + 1, (batch_size,), generator=gen)
    return stream[starts.unsqueeze(1) + torch.arange(seq_len + 1)]


# -- corpora ----------------------------------------------------------------------------------


def _write_corpus(directory: Path, seed: int, dtype: str = "uint16", eos: int = 0,
                  shards: int = 4, docs: int = 30, drop_last_eos: tuple[int, ...] = (1,),
                  empty: tuple[int, ...] = (2,), top: int = 500) -> Path:
    """Random short documents (1 to 25 tokens, so windows cross many documents and ranges),
    some shards without a final eos, some empty."""
    directory.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    torch_dtype = {"uint16": torch.uint16, "uint32": torch.uint32}[dtype]
    for s in range(shards):
        ids: list[int] = []
        if s not in empty:
            for _ in range(docs):
                length = int(torch.randint(1, 26, (1,), generator=gen))
                ids += torch.randint(1, top, (length,), generator=gen).tolist()
                ids.append(eos)
            if s in drop_last_eos:
                ids.pop()
        raw = torch.tensor(ids, dtype=torch.int64).to(torch_dtype)
        (directory / f"shard-{s:03d}.bin").write_bytes(bytes(raw.view(torch.uint8)) if ids
                                                       else b"")
    (directory / "tokens.json").write_text(json.dumps(
        {"format": "kdengine-tokens", "dtype": dtype, "eos_id": eos}))
    return directory


CASES = [  # (dtype, eos, val_fraction, window): held-out documents, uint32 ids, the tail split
    ("uint16", 0, 0.1, 8),
    ("uint16", 0, 0.3, 16),
    ("uint32", 70_000, 0.2, 8),
    ("uint16", 0, 0.0, 8),  # nothing held out: the tail of the stream is the validation split
]


@pytest.mark.parametrize("dtype, eos, val_fraction, window", CASES)
def test_mapped_splits_hold_exactly_the_old_packed_streams(
        tmp_path: Path, dtype: str, eos: int, val_fraction: float, window: int) -> None:
    for seed in range(3):
        top = 60_000 if dtype == "uint16" else 100_000  # uint32 ids beyond 65535
        path = _write_corpus(tmp_path / f"c{seed}", seed, dtype, eos, top=top)
        splits = split_token_shards(read_token_shards(str(path)), val_fraction, window, 2)
        old_train, old_val = _old_split(path, val_fraction, window)
        for new, old in ((splits.train, old_train), (splits.val, old_val)):
            assert isinstance(new, TokenStream)
            assert len(new) == len(old)
            assert torch.equal(new.tensor(), old)
            # random access, slices and single positions read the same tokens
            positions = torch.randint(0, len(old), (7, 13), generator=torch.Generator()
                                      .manual_seed(seed))
            assert torch.equal(new[positions], old[positions])
            assert torch.equal(new[3:len(old) - 2], old[3:len(old) - 2])
            assert int(new[-1]) == int(old[-1]) and int(new[5]) == int(old[5])
            # every window the sampler can draw: slices inside a range, rows across ranges,
            # across shards (the tail split's ranges span shards) and over added eos tokens
            starts = torch.arange(len(old) - window)
            assert torch.equal(new.windows(starts, window + 1),
                               old[starts.unsqueeze(1) + torch.arange(window + 1)])


def test_step_k_batches_equal_the_old_samplers_token_for_token(tmp_path: Path) -> None:
    path = _write_corpus(tmp_path / "c", 7, shards=5, docs=40, drop_last_eos=(0, 3))
    splits = split_token_shards(read_token_shards(str(path)), 0.25, 12, 4)
    old_train, old_val = _old_split(path, 0.25, 12)
    sampler = BatchSampler(splits.train, 4, 12, seed=11)
    crossed_ranges = crossed_shards = 0
    for step in range(300):
        x, y = sampler.batch(step)
        rows = _old_batch(old_train, 4, 12, 11, step)
        assert torch.equal(x, rows[:, :-1]) and torch.equal(y, rows[:, 1:])
        assert x.dtype == torch.int64
    # the windows did cross the boundaries between kept ranges and between shards
    stream = splits.train
    for step in range(300):
        gen = torch.Generator().manual_seed((11 * 1_000_003 + step) % (2**63))
        starts = torch.randint(0, sampler.max_start + 1, (4,), generator=gen)
        idx = starts.unsqueeze(1) + torch.arange(13)
        ranges = torch.searchsorted(stream.offsets, idx, right=True)
        shards, _ = stream._locate(idx.reshape(-1))
        crossed_ranges += int((ranges[:, 0] != ranges[:, -1]).sum())
        crossed_shards += int((shards.reshape(4, 13)[:, 0] != shards.reshape(4, 13)[:, -1]).sum())
    # (and most rows lie inside one range: the sampler's slice path is checked too)
    assert 100 < crossed_ranges < 600 and crossed_shards > 0
    # the fixed evaluation batches too
    new_eval = BatchSampler(splits.val, 4, 12, seed=0).fixed_batches(5)
    old_eval = BatchSampler(old_val, 4, 12, seed=0).fixed_batches(5)
    assert all(torch.equal(a, b) for new, old in zip(new_eval, old_eval, strict=True)
               for a, b in zip(new, old, strict=True))


def test_fingerprint_is_the_one_pass_value_whatever_the_chunk_size(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # pinned: the values the engine gave before fingerprints were chunked (checkpoints hold them)
    assert stream_fingerprint(torch.arange(5000) % 251) == "5000:64a3e62da148"
    big = torch.randint(0, 70_000, (100_000,), generator=torch.Generator().manual_seed(0))
    assert stream_fingerprint(big) == "100000:35a9d9b74b92"
    path = _write_corpus(tmp_path / "c", 3, docs=60)
    old_train, _ = _old_split(path, 0.1, 8)
    for chunk in (7, 64, 1 << 22):
        monkeypatch.setattr(data, "SCAN_TOKENS", chunk)
        splits = split_token_shards(read_token_shards(str(path)), 0.1, 8, 2)
        assert stream_fingerprint(splits.train) == _old_fingerprint(old_train)
        assert stream_fingerprint(old_train) == _old_fingerprint(old_train)
    # a checkpoint written on the in-memory stream resumes on the mapped one, and vice versa
    saved = BatchSampler(old_train, 2, 8, seed=5).position(40)
    BatchSampler(splits.train, 2, 8, seed=5).check_position(saved, 40)


def test_token_splits_take_plain_tensors_and_streams_alike(tmp_path: Path) -> None:
    path = _write_corpus(tmp_path / "c", 1)
    mapped = split_token_shards(read_token_shards(str(path)), 0.1, 8, 2)
    plain = TokenSplits(mapped.train.tensor(), mapped.val.tensor(), mapped.eos_id)
    for a, b in ((mapped.train, plain.train), (mapped.val, plain.val)):
        assert len(a) == len(b)
        sa, sb = BatchSampler(a, 2, 8, 9), BatchSampler(b, 2, 8, 9)
        assert all(torch.equal(u, v) for u, v in zip(sa.batch(4), sb.batch(4), strict=True))
        assert sa.position(4) == sb.position(4)


def test_vocab_check_reads_every_chunk_and_the_added_eos(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "SCAN_TOKENS", 16)  # the bad id lies in a later chunk
    path = _write_corpus(tmp_path / "c", 2, shards=3, drop_last_eos=(), empty=(), top=200)
    last = sorted(path.glob("*.bin"))[-1]
    raw = bytearray(last.read_bytes())
    raw[-6:-4] = (300).to_bytes(2, "little")
    last.write_bytes(bytes(raw))
    shards = read_token_shards(str(path))
    with pytest.raises(ConfigError) as info:
        split_token_shards(shards, 0.1, 8, 2, vocab_size=257)
    assert info.value.field == "data"
    assert f"{last.name} holds token id 300, beyond the model's vocab (257)" in info.value.message
    # an eos beyond the vocab, added to a shard that lacks its final one, is caught the same way
    path = _write_corpus(tmp_path / "d", 2, eos=400, shards=2, drop_last_eos=(1,), empty=(),
                         top=200)
    (path / "shard-000.bin").unlink()
    with pytest.raises(ConfigError, match="shard-001.bin holds token id 400"):
        split_token_shards(read_token_shards(str(path)), 0.1, 8, 2, vocab_size=257)


def test_shard_files_are_mapped_read_only_and_never_written(tmp_path: Path) -> None:
    path = _write_corpus(tmp_path / "c", 4, drop_last_eos=(0, 1, 3))
    files = sorted(path.glob("*.bin"))
    before = {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in files}
    for f in files:
        f.chmod(0o444)
    shards = read_token_shards(str(path))
    splits = split_token_shards(shards, 0.1, 8, 2)
    # a shard without its final eos reads as if it had one: the file keeps its size
    assert all(int(TokenStream([s], torch.tensor([0, len(s)]))[-1]) == 0
               for s in shards.shards)
    assert sum(s.eos_added for s in shards.shards) == 3
    BatchSampler(splits.train, 2, 8, 1).batch(3)
    stream_fingerprint(splits.train)
    shards.shards[0].tokens[0] = 12345  # a private mapping: even a write stays in this process
    assert {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in files} == before
    assert {line.split()[1] for line in Path("/proc/self/maps").read_text().splitlines()
            if str(path) in line} <= {"rw-p", "r--p"}  # private, never "s" (shared)


def test_positions_outside_the_stream_are_an_index_error(tmp_path: Path) -> None:
    splits = split_token_shards(read_token_shards(str(_write_corpus(tmp_path / "c", 5))),
                                0.1, 8, 2)
    with pytest.raises(IndexError):
        splits.train[torch.tensor([0, len(splits.train)])]
    with pytest.raises(IndexError):
        splits.train[len(splits.train)]


# -- memory: a large corpus loads and samples in a fraction of its int64 size ---------------

TOKENS = 64 * 1024 * 1024  # 128 MB of uint16 on disk; 512 MB as int64, ~1 GB with the old splits

MEMORY_PROBE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import torch
    from kdengine.data import (BatchSampler, read_token_shards, split_token_shards,
                               stream_fingerprint)

    def status():
        fields = dict(line.split(":", 1) for line in
                      Path("/proc/self/status").read_text().splitlines())
        return {k: int(fields[k].split()[0]) * 1024 for k in ("VmHWM", "RssAnon", "RssFile")}

    def run(path, steps):
        splits = split_token_shards(read_token_shards(path), 0.01, 1024, 8, vocab_size=50000)
        sampler = BatchSampler(splits.train, 8, 1024, seed=0)
        for step in range(steps):
            sampler.batch(step)
        return splits, stream_fingerprint(splits.train)

    run(sys.argv[2], 3)  # the same code on a small corpus first: torch's own pages, once
    base = status()
    t0 = time.perf_counter()
    splits, fp = run(sys.argv[1], 50)
    seconds = time.perf_counter() - t0
    end = status()
    print(len(splits.train), len(splits.val), seconds,
          *(end[k] - base[k] for k in ("VmHWM", "RssAnon", "RssFile")))
""")


def _write_pattern(path: Path, tokens: int, shards: int) -> None:
    """uint16 documents of 1000 tokens (ids 1..1000) each ended by eos 0, written 8 MB a time."""
    path.mkdir()
    block = (torch.arange(4 * 1024 * 1024, dtype=torch.int64) + 1) % 1001
    raw = bytearray(2 * len(block))
    torch.frombuffer(raw, dtype=torch.uint16).copy_(block)
    for s in range(shards):
        with open(path / f"shard-{s}.bin", "wb") as f:
            for _ in range(tokens // shards // len(block)):
                f.write(raw)
    (path / "tokens.json").write_text(json.dumps(
        {"format": "kdengine-tokens", "dtype": "uint16", "eos_id": 0}))


def test_loading_and_sampling_a_large_shard_corpus_stays_far_below_its_int64_size(
        tmp_path: Path) -> None:
    _write_pattern(tmp_path / "big", TOKENS, 2)
    _write_pattern(tmp_path / "small", 8 * 1024 * 1024, 2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(tmp_path / "big"),
                          str(tmp_path / "small")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    train, val, seconds, peak, anon, mapped = (float(v) for v in out.stdout.split())
    assert TOKENS <= train + val <= TOKENS + 2  # (+ an eos added to a shard without one)
    int64_size, file_size = TOKENS * 8, TOKENS * 2
    report = (f"peak RSS +{peak / 2**20:.0f} MiB, anon +{anon / 2**20:.0f}, "
              f"file +{mapped / 2**20:.0f}")
    # the old loader held the shards and then both splits as int64: peak over 2 x int64_size.
    # Now the tokens stay on disk: memory of our own (anonymous) is a few chunk buffers and the
    # document index, and the peak is bounded by the file pages the batches mapped in (page
    # cache, reclaimable; the kernel maps whole large folios around each window)
    assert anon < int64_size / 16, report
    assert peak < file_size + int64_size / 16 < int64_size / 3, report
    assert seconds < 30, report


# -- through the real CLI: a checkpoint of an in-memory run resumes on the mapped shards ------

KILL_IN_MEMORY = r"""
import os, signal, sys
import kdengine.loading as loading
import kdengine.trainer as trainer
from kdengine.data import TokenSplits
mapped = loading.split_token_shards
def in_memory(*args, **kwargs):  # the int64 tensors the engine packed before shards were mapped
    splits = mapped(*args, **kwargs)
    return TokenSplits(splits.train.tensor(), splits.val.tensor(), splits.eos_id)
loading.split_token_shards = in_memory
train_step = trainer.KDTrainer.queue_step
def killing_step(self, batch=None, **queue):
    if self.step + 1 == int(os.environ["KD_KILL_AT"]):
        self.report_checkpoints(wait=True)  # the checkpoints saved so far, whole on disk
        os.kill(os.getpid(), signal.SIGKILL)
    return train_step(self, batch, **queue)
trainer.KDTrainer.queue_step = killing_step
from kdengine.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _tiny_model(directory: Path, hidden: int, seed: int) -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers

    from kdengine.models import Decoder, DecoderConfig, save_decoder

    config = DecoderConfig(vocab_size=257, hidden_size=hidden, intermediate_size=2 * hidden,
                           num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                           tie_word_embeddings=True)
    model = Decoder(config)
    model.init_weights(torch.Generator().manual_seed(seed), std=0.1)
    save_decoder(model, directory)
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<|endoftext|>"] = 256
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.add_special_tokens(["<|endoftext|>"])
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text('{"eos_token": "<|endoftext|>"}\n')
    return str(directory)


def test_a_checkpoint_of_the_in_memory_stream_resumes_on_the_mapped_shards(
        tmp_path: Path) -> None:
    from kdengine.events import read_events

    data_dir = _write_corpus(tmp_path / "data", 8, eos=256, shards=3, docs=120, top=256,
                             drop_last_eos=(1,), empty=())
    argv = ["train", "--teacher", _tiny_model(tmp_path / "teacher", 32, 1),
            "--student", _tiny_model(tmp_path / "student", 16, 2), "--data", str(data_dir),
            "--steps", "12", "--batch-size", "4", "--seq-len", "32", "--lr", "3e-3",
            "--eval-every", "6", "--eval-batches", "2", "--log-every", "1",
            "--checkpoint-every", "6", "--device", "cpu", "--seed", "5"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "KD_KILL_AT": "9"}

    def train(args: list[str], script: str | None = None) -> None:
        cmd = [sys.executable, *(["-c", script] if script else ["-m", "kdengine"]), *args]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert out.returncode == (-9 if script else 0), out.stdout[-2000:] + out.stderr[-2000:]

    def losses(run_dir: Path) -> dict[int, float]:
        """Train loss by step, validation loss by -step; a step trained twice keeps the last."""
        events = read_events(run_dir / "events.jsonl")
        return {**{e["step"]: e["loss"] for e in events if e["type"] == "step"},
                **{-e["step"]: e["val_loss"] for e in events if e["type"] == "eval"}}

    train([*argv, "--run-dir", str(tmp_path / "mapped")])
    # killed at step 9 with the checkpoint of step 6 written from the in-memory stream ...
    train([*argv, "--run-dir", str(tmp_path / "resumed")], KILL_IN_MEMORY)
    # ... and resumed on the mapped stream: the fingerprint matches, the batches continue
    train(["train", "--resume", str(tmp_path / "resumed")])
    expected = losses(tmp_path / "mapped")
    assert set(range(1, 13)) | {-6, -12} <= set(expected)
    assert losses(tmp_path / "resumed") == expected  # exact, float equality
