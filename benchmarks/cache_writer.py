"""Where `kdengine cache-teacher`'s time goes on a GPU, in-process: the writer's own scoring call
(kdengine.teacher.writer.TeacherForward -> score_rows) on a Qwen3-4B-shaped teacher with random
weights, split into the teacher's forward and the per-chunk targets (log-softmax, top-K, tail,
label NLL), with the GPU kernels of one batch by time; then the targets' parts alone on one
chunk of logits, each way of computing them that gives the same numbers.

    python3 benchmarks/cache_writer.py --out DIR          # H200: ~2 min
    python3 benchmarks/cache_writer.py --tiny --out DIR   # CPU check of the script itself

Prints one JSON line per measurement and writes DIR/cache_writer.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pairs import QWEN3_4B, QWEN3_COMMON  # noqa: E402 - benchmarks/pairs.py

TINY = dict(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeat: int) -> dict:
    """Median, min and max wall seconds of fn() (the GPU drained before and after each)."""
    times = []
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return {"median_s": round(statistics.median(times), 5), "min_s": round(min(times), 5),
            "max_s": round(max(times), 5)}


def kernels(fn, device: torch.device, top: int = 25) -> dict:
    """GPU kernel time of one fn() call, in all and the `top` kernels by time."""
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        sync(device)
    rows = []
    for evt in prof.key_averages():
        us = getattr(evt, "self_device_time_total", None)
        us = us if us is not None else getattr(evt, "self_cuda_time_total", 0)
        if us:
            rows.append((us, evt.count, evt.key[:110]))
    rows.sort(reverse=True)
    return {"kernel_s": round(sum(r[0] for r in rows) / 1e6, 5),
            "top": [{"ms": round(us / 1e3, 3), "count": n, "kernel": k} for us, n, k in rows[:top]]}


def chunk_targets_before(z: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """score_rows' per-chunk targets before kdengine.teacher.targets (top-K): fp32 log-softmax,
    topk, the tail's log-mass from a scattered copy."""
    import math

    lp = torch.log_softmax(z.float(), -1)
    v, i = lp.topk(k, -1)
    t = torch.logsumexp(lp.scatter(-1, i, -math.inf), -1)
    return v, i, t


def two_stage_topk(x: torch.Tensor, k: int, block: int = 1024) -> tuple[torch.Tensor, ...]:
    """topk(x, k) over the last dim as top-k of each `block`-wide slice, then top-k of those
    candidates: the same set (the overall top-k lie among each slice's top-k)."""
    rows, width = x.shape
    pad = -width % block
    if pad:
        x = torch.nn.functional.pad(x, (0, pad), value=-float("inf"))
    blocks = x.view(rows, -1, block)
    v, i = blocks.topk(k, -1)  # [rows, nblocks, k]
    i = i + torch.arange(0, blocks.shape[1] * block, block, device=x.device).view(1, -1, 1)
    v2, j = v.reshape(rows, -1).topk(k, -1)
    return v2, i.reshape(rows, -1).gather(-1, j)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    p.add_argument("--rows", type=int, default=16, help="rows a batch (--rows-per-batch)")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.tiny:
        args.rows, args.seq_len, args.repeat = 2, 64, 2
    results: list[dict] = []

    def say(record: dict) -> None:
        print(json.dumps(record), flush=True)
        results.append(record)

    from kdengine.models import Decoder, DecoderConfig
    from kdengine.providers import ModelTeacher
    from kdengine.teacher.targets import topk_targets
    from kdengine.teacher.writer import TeacherForward

    shape = TINY if args.tiny else QWEN3_4B
    t0 = time.perf_counter()
    with torch.device(device):
        model = Decoder(DecoderConfig(**{**QWEN3_COMMON, **shape}))
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.fill_(1.0) if name.endswith("norm.weight") else param.normal_(0, 0.02)
    model.to(dtype)
    teacher = ModelTeacher(model)
    forward = TeacherForward(teacher, device)
    vocab = shape["vocab_size"]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (args.rows, args.seq_len), generator=gen)
    labels = torch.randint(0, vocab, (args.rows, args.seq_len), generator=gen)
    opts = dict(vocab=vocab, top_k=args.k, targets="topk", compute_dtype=dtype)
    forward(ids, labels, None, **opts)  # compiles
    sync(device)
    say({"measure": "setup", "s": round(time.perf_counter() - t0, 1), "device": str(device),
         "teacher_params": sum(q.numel() for q in model.parameters())})
    tokens = ids.numel()

    def whole() -> None:
        out = forward(ids, labels, None, **opts)
        out["ids"].cpu(), out["logp"].cpu(), float(out["nll"])  # what the writer reads back

    def hidden_only() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            teacher.hidden_states(ids.to(device))

    for name, fn in (("score_rows (the writer's call)", whole), ("teacher forward only",
                                                                  hidden_only)):
        fn()
        t = timed(fn, device, args.repeat)
        say({"measure": name, **t, "tokens_per_s": round(tokens / t["median_s"])})
    if device.type == "cuda":
        say({"measure": "kernels of one score_rows call", **kernels(whole, device)})

    # the targets of one 4096-token chunk, from its bf16 logits
    chunk = min(4096, tokens)
    with torch.no_grad():
        h = torch.randn(chunk, model.config.hidden_size, device=device, dtype=dtype)
        w = teacher.head_weight[:vocab].to(dtype)
        z = h @ w.t()
        ref_v, ref_i, ref_t = chunk_targets_before(z, args.k)
        lse = torch.logsumexp(z.float(), -1, keepdim=True)
        ways = {
            "head matmul": lambda: h @ w.t(),
            "before: log_softmax fp32, topk, scatter + logsumexp": lambda: chunk_targets_before(
                z, args.k),
            "now: topk_targets (bf16 top-K, fused sums)": lambda: topk_targets(z, args.k),
            "log_softmax fp32 alone": lambda: torch.log_softmax(z.float(), -1),
            "topk of fp32 log-probs alone": lambda: torch.log_softmax(z.float(), -1).topk(args.k),
            "topk of the bf16 logits": lambda: z.topk(args.k, -1),
            "two-stage topk of the bf16 logits": lambda: two_stage_topk(z, args.k),
            "logsumexp fp32 of the logits": lambda: torch.logsumexp(z.float(), -1),
        }
        for name, fn in ways.items():
            fn()
            say({"measure": f"chunk {chunk} x {vocab}: {name}", **timed(fn, device, args.repeat)})
        now = topk_targets(z, args.k)
        taken = (z.float() - lse).gather(-1, now["ids"])  # each id's log-prob, from the logits
        say({"measure": "topk_targets against the log-softmax way (GPU correctness)",
             "max_abs_logp_diff": float((now["logp"] - ref_v).abs().max()),
             "max_abs_id_logp_diff": float((taken - now["logp"]).abs().max()),
             "max_abs_tail_diff": float((now["tail"] - ref_t).abs().max()),
             "same_ids_but_ties": float((torch.sort(now["ids"], -1).values
                                         == torch.sort(ref_i, -1).values).float().mean())})
        v2, i2 = two_stage_topk(z, args.k)
        same = bool(torch.equal(torch.sort(i2, -1).values, torch.sort(ref_i, -1).values))
        say({"measure": "two-stage topk: same ids as topk", "same": same,
             "max_abs_logp_diff": float(((v2.float() - lse) - ref_v).abs().max())})
    (args.out / "cache_writer.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
