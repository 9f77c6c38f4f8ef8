"""Load time and memory of a pre-tokenized shard corpus (docs/performance.md, "Data loading").

Writes (once) a uint16 corpus of --tokens tokens in --dir: documents of 1 to 2000 tokens (mean
~1000) of random ids below 50000, each ended by eos 0, in --shards shards. Then, in this process:
read_token_shards + split_token_shards (val_fraction 0.01, vocab check on), 100 batches of
8 x 2049 tokens, and the train stream's fingerprint (what a checkpoint stores). Prints the time
of each and the growth of peak RSS (VmHWM) and of anonymous / file-backed resident memory over a
baseline taken after importing torch.

    python benchmarks/data_loading.py --tokens 1000000000 --dir /tmp/kd-corpus
    PYTHONPATH=/tmp/old python benchmarks/data_loading.py ...   # another kdengine, side by side

CPU only, no GPU; `--delete` removes the corpus afterwards.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from kdengine.data import BatchSampler, read_token_shards, split_token_shards, stream_fingerprint

BLOCK = 1 << 24  # tokens written at a time


def memory() -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in
                  Path("/proc/self/status").read_text().splitlines())
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmHWM", "RssAnon", "RssFile")}


def write_corpus(path: Path, tokens: int, shards: int) -> None:
    if (path / "tokens.json").is_file():
        return
    path.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    block = torch.randint(1, 50_000, (BLOCK,), generator=gen)
    ends = torch.randint(1, 2001, (BLOCK // 1000,), generator=gen).cumsum(0)
    block[ends[ends < BLOCK]] = 0
    raw = bytearray(2 * BLOCK)
    torch.frombuffer(raw, dtype=torch.uint16).copy_(block)
    per_shard = tokens // shards
    for s in range(shards):
        with open(path / f"shard-{s:04d}.bin", "wb") as f:
            left = per_shard
            while left:
                n = min(left, BLOCK)
                f.write(memoryview(raw)[:2 * n])
                left -= n
    (path / "tokens.json").write_text(json.dumps(
        {"format": "kdengine-tokens", "dtype": "uint16", "eos_id": 0}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=200_000_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--delete", action="store_true", help="remove the corpus at the end")
    args = parser.parse_args()
    t = time.perf_counter()
    write_corpus(args.dir, args.tokens, args.shards)
    print(f"corpus: {args.tokens / 1e6:.0f}M uint16 tokens, {args.shards} shards "
          f"(written in {time.perf_counter() - t:.1f} s)")
    torch.zeros(1).sum()
    base = memory()
    times = {}
    t = time.perf_counter()
    splits = split_token_shards(read_token_shards(str(args.dir)), 0.01, 2048, 8,
                                vocab_size=50_000)
    times["load (read + split)"] = time.perf_counter() - t
    load_peak = memory()["VmHWM"] - base["VmHWM"]
    sampler = BatchSampler(splits.train, 8, 2048, seed=0)
    t = time.perf_counter()
    for step in range(100):
        sampler.batch(step)
    times["100 batches of 8 x 2049"] = time.perf_counter() - t
    t = time.perf_counter()
    fingerprint = stream_fingerprint(splits.train)
    times["fingerprint"] = time.perf_counter() - t
    end = memory()
    print(f"train {len(splits.train):,} / val {len(splits.val):,} tokens, {fingerprint}")
    for name, seconds in times.items():
        print(f"  {name:<26} {seconds:8.2f} s")
    mib = 2 ** 20
    print(f"  peak RSS growth: {load_peak / mib:.0f} MiB after load, "
          f"{(end['VmHWM'] - base['VmHWM']) / mib:.0f} MiB at the end "
          f"(int64 stream would be {args.tokens * 8 / mib:.0f} MiB)")
    print(f"  resident at the end: anon +{(end['RssAnon'] - base['RssAnon']) / mib:.0f} MiB, "
          f"file-backed +{(end['RssFile'] - base['RssFile']) / mib:.0f} MiB")
    if args.delete:
        del splits, sampler
        shutil.rmtree(args.dir)


if __name__ == "__main__":
    main()
