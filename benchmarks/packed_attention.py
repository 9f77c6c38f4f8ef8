"""Masked packing on the GPU (issue 12): are the CUDA kernels for packed rows right, and what do
they cost against today's unmasked causal attention?

Part 1 (correctness, a small 2-layer model with the 0.5B's heads, one sliding-window layer):
every CUDA backend of `Decoder.packed_attention` (sdpa with a boolean mask, flex, varlen) against
the CPU float32 reference semantics (SDPA with the block-diagonal causal mask, which
tests/engine/test_packed_attention.py pins against per-example runs): hidden states and
parameter gradients, relative error ||gpu - cpu|| / ||cpu||; perturbing one example's tokens
must leave every other example's hidden states unchanged.

Part 2 (speed): forward + backward of a Qwen2.5-0.5B-shaped student (24 layers, hidden 896, 14
heads, 2 kv heads, SwiGLU 4864), bf16 autocast over fp32 weights, compiled as the trainer compiles
it (kdengine.compiled.compile_student), batch x seq tokens of packed rows with random example
lengths; the loss is a plain function of the final hidden states (the lm head and the KD loss are
the same for every variant and left out). Masks are built inside each timed step, as in training.

    python benchmarks/packed_attention.py --out results.json   (GPU box; CPU: part 1 only)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdengine.compiled import CompileOptions, compile_student  # noqa: E402
from kdengine.models import decoder as decoder_module  # noqa: E402
from kdengine.models.decoder import Decoder, DecoderConfig  # noqa: E402
from kdengine.providers import ModelStudent  # noqa: E402


def packed_positions(batch: int, seq: int, mean_len: float,
                     gen: torch.Generator) -> tuple[torch.Tensor, list[list[int]]]:
    """position_ids [batch, seq] of rows filled with examples of lognormal lengths (median
    ~mean_len/1.3, a long tail), the last one cut to fit; and each row's example lengths."""
    rows, lengths = [], []
    sigma = 0.75
    mu = math.log(mean_len) - sigma * sigma / 2
    for _ in range(batch):
        lens, filled = [], 0
        while filled < seq:
            n = int(torch.empty(1).log_normal_(mu, sigma, generator=gen).item())
            n = min(max(8, n), seq - filled)
            lens.append(n)
            filled += n
        rows.append(torch.cat([torch.arange(n) for n in lens]))
        lengths.append(lens)
    return torch.stack(rows), lengths


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def flat_grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.detach().float().flatten().cpu() for p in model.parameters()
                      if p.grad is not None])


def set_backend(name: str) -> str:
    """The decoder's packed_attention for a variant name; "varlen-repeat-kv" repeats each kv
    head for its q heads (what GQA costs without flash's own; "varlen" hands them as they are)."""
    if name.startswith("varlen"):
        decoder_module._VARLEN.pop("gqa", None)
        if name == "varlen-repeat-kv":
            decoder_module._VARLEN["gqa"] = "repeat"
        return "varlen"
    return name


def correctness(device: torch.device, report: dict) -> bool:
    cfg = DecoderConfig(vocab_size=1000, hidden_size=896, intermediate_size=512,
                        num_hidden_layers=2, num_attention_heads=14, num_key_value_heads=2,
                        rope_theta=1e6, sliding_window=100,
                        layer_types=["sliding_attention", "full_attention"])
    gen = torch.Generator().manual_seed(0)
    cpu_model = Decoder(cfg)
    cpu_model.init_weights(gen, std=0.05)
    batch, seq = 2, 1024
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=gen)
    pos, lens = packed_positions(batch, seq, 150, gen)
    probe = torch.randn(batch, seq, cfg.hidden_size, generator=gen)

    def run(model, dev, backend, autocast, ids=ids):
        model.packed_attention = set_backend(backend)
        model.zero_grad(set_to_none=True)
        ctx = (torch.autocast(dev.type, dtype=torch.bfloat16) if autocast
               else torch.autocast(dev.type, enabled=False))
        with ctx:
            hidden = model(ids.to(dev), pos.to(dev))
        (hidden.float() * probe.to(dev)).sum().backward()
        return hidden.detach().float().cpu(), flat_grads(model)

    ref_h, ref_g = run(cpu_model, torch.device("cpu"), "sdpa", False)
    # the CPU reference against each example run alone (what the tests pin, here at 0.5B heads)
    worst = 0.0
    with torch.no_grad():
        start = 0
        for n in lens[0]:
            alone = cpu_model(ids[:1, start:start + n])
            worst = max(worst, rel(ref_h[:1, start:start + n], alone))
            start += n
    report["cpu_packed_vs_alone_rel"] = worst
    print(f"cpu fp32: packed row vs each example alone: rel {worst:.2e}")
    if device.type != "cuda":
        return worst < 1e-5

    gpu_model = Decoder(cfg).to(device)
    gpu_model.load_state_dict(cpu_model.state_dict())
    ok = worst < 1e-5
    other = torch.ones(batch, seq, dtype=torch.bool)
    first = lens[1][0]
    other[1, first:first + lens[1][1]] = False  # row 1's second example is perturbed
    perturbed = ids.clone()
    perturbed[1, first:first + lens[1][1]] = torch.randint(0, cfg.vocab_size, (lens[1][1],),
                                                            generator=gen)
    rows = []
    same_gpu = {}  # (the GPU's sdpa in each precision: bf16 rounding alone is ~2e-2 of the CPU's)
    for backend, autocast in [("sdpa", False), ("flex", False), ("sdpa", True),
                              ("flex", True), ("varlen", True), ("varlen-repeat-kv", True)]:
        name = f"{backend}/{'bf16' if autocast else 'fp32'}"
        try:
            h, g = run(gpu_model, device, backend, autocast)
            h2, _ = run(gpu_model, device, backend, autocast, ids=perturbed)
        except Exception as exc:  # noqa: BLE001 - report and go on to the next backend
            rows.append({"backend": name, "error": f"{type(exc).__name__}: {exc}"[:300]})
            print(f"{name}: FAILED {type(exc).__name__}: {exc}"[:300])
            ok = False
            continue
        cross = (h2 - h)[other].abs().max().item()
        moved = (h2 - h)[~other].abs().max().item()
        same_gpu.setdefault(autocast, (h, g))
        h0, g0 = same_gpu[autocast]
        row = {"backend": name, "hidden_rel": rel(h, ref_h), "grad_rel": rel(g, ref_g),
               "hidden_rel_vs_gpu_sdpa": rel(h, h0), "grad_rel_vs_gpu_sdpa": rel(g, g0),
               "other_examples_max_abs_change": cross, "perturbed_example_change": moved}
        rows.append(row)
        limit = 5e-2 if autocast else 5e-3
        good = (row["hidden_rel"] < limit and row["grad_rel"] < limit and cross == 0.0
                and row["hidden_rel_vs_gpu_sdpa"] < limit / 2
                and row["grad_rel_vs_gpu_sdpa"] < limit / 2)
        ok = ok and good and moved > 0
        print(f"{name:12s} vs cpu fp32: hidden rel {row['hidden_rel']:.2e}  grad rel "
              f"{row['grad_rel']:.2e}; vs gpu sdpa: {row['hidden_rel_vs_gpu_sdpa']:.1e} / "
              f"{row['grad_rel_vs_gpu_sdpa']:.1e}  "
              f"other examples changed by {cross:.1e} (perturbed one by {moved:.1e})  "
              f"{'ok' if good else 'FAIL'}")
    report["correctness"] = rows
    return ok


def timing(device: torch.device, args: argparse.Namespace, report: dict) -> None:
    import torch._dynamo

    for knob in ("recompile_limit", "cache_size_limit"):  # 4 variants x (static, dynamic)
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 64)
    cfg = DecoderConfig(vocab_size=32000, hidden_size=896, intermediate_size=4864,
                        num_hidden_layers=args.layers, num_attention_heads=14,
                        num_key_value_heads=2, rope_theta=1e6, max_position_embeddings=32768)
    gen = torch.Generator().manual_seed(1)
    model = Decoder(cfg)
    model.init_weights(gen, std=0.02)
    model.to(device)
    student = ModelStudent(model)
    compile_student(student, CompileOptions())
    b, t = args.batch, args.seq
    batches = {}
    for mean in args.mean_len:
        sets = []
        for _ in range(4):  # rotate layouts: varlen's spans change shape between batches
            pos, lens = packed_positions(b, t, mean, gen)
            ids = torch.randint(0, cfg.vocab_size, (b, t), generator=gen)
            sets.append((ids.to(device), pos.to(device), lens))
        pairs = sum(n * (n + 1) / 2 for _, _, ls in sets for row in ls for n in row)
        full = len(sets) * b * t * (t + 1) / 2
        docs = sum(len(row) for _, _, ls in sets for row in ls) / (len(sets) * b)
        batches[mean] = (sets, pairs / full, docs)

    def step(ids, pos):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            hidden = student.hidden_states(ids, pos)
        loss = hidden.float().square().mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    variants = [("unmasked", None, args.mean_len[0])]
    for backend in args.backends:  # the likely winner first: the budget may cut the rest
        variants += [(backend, backend, mean) for mean in args.mean_len]
    rows = []
    started = time.perf_counter()
    for name, backend, mean in variants:
        if time.perf_counter() - started > args.time_budget:
            print(f"{name} (mean {mean}): skipped, time budget spent")
            rows.append({"variant": name, "mean_len": mean, "skipped": "time budget"})
            continue
        sets, density, docs = batches[mean]
        model.packed_attention = set_backend(backend or "auto")
        try:
            t0 = time.perf_counter()
            for i in range(args.warmup):
                ids, pos, _ = sets[i % len(sets)]
                step(ids, None if backend is None else pos)
            torch.cuda.synchronize()
            warm_s = time.perf_counter() - t0
            torch.cuda.reset_peak_memory_stats()
            times = []
            for i in range(args.steps):
                ids, pos, _ = sets[i % len(sets)]
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                    enable_timing=True)
                start.record()
                step(ids, None if backend is None else pos)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
        except Exception as exc:  # noqa: BLE001 - report and go on
            print(f"{name} (mean {mean}): FAILED {type(exc).__name__}: {exc}"[:400])
            rows.append({"variant": name, "mean_len": mean,
                         "error": f"{type(exc).__name__}: {exc}"[:400]})
            continue
        times.sort()
        ms = times[len(times) // 2]
        row = {"variant": name, "mean_len": mean if backend else None,
               "examples_per_row": docs if backend else 1.0,
               "attention_density": density if backend else 1.0,
               "ms_median": ms, "ms_min": times[0], "ms_max": times[-1],
               "tokens_per_s": b * t / (ms / 1000), "peak_gib": torch.cuda.max_memory_allocated()
               / 2**30, "warmup_s": warm_s}
        rows.append(row)
        print(f"{name:9s} mean {str(row['mean_len']):>5s} ex/row {row['examples_per_row']:5.1f} "
              f"density {row['attention_density']:.3f}  {ms:7.1f} ms "
              f"({times[0]:.1f}-{times[-1]:.1f})  {row['tokens_per_s']:9,.0f} tok/s  "
              f"peak {row['peak_gib']:5.1f} GiB  (warm-up {warm_s:.0f} s)", flush=True)
    report["timing"] = rows


def trainer_check(device: torch.device, report: dict) -> bool:
    """KDTrainer on packed batches as a run does it on CUDA (teacher compiled whole, student per
    block, auto kernel): its first losses equal an eager trainer's, and nothing fell back."""
    import tempfile

    from kdengine.config import RunConfig
    from kdengine.data import TokenSplits
    from kdengine.providers import ModelTeacher
    from kdengine.runlog import RunLog
    from kdengine.trainer import KDTrainer

    def pair(seed: int) -> tuple[Decoder, Decoder]:
        models = []
        for hidden, layers in ((256, 3), (128, 2)):
            cfg = DecoderConfig(vocab_size=512, hidden_size=hidden, intermediate_size=2 * hidden,
                                num_hidden_layers=layers, num_attention_heads=4,
                                num_key_value_heads=2, sliding_window=64,
                                layer_types=["sliding_attention"] + ["full_attention"] * (
                                    layers - 1))
            model = Decoder(cfg)
            model.init_weights(torch.Generator().manual_seed(seed + layers), std=0.05)
            models.append(model.to(device))
        return models[0], models[1]

    gen = torch.Generator().manual_seed(5)
    batches = []
    for _ in range(3):
        pos, _ = packed_positions(4, 512, 120, gen)
        ids = torch.randint(0, 512, (4, 512), generator=gen)
        labels = torch.roll(ids, -1, 1)
        labels[torch.roll(pos, -1, 1) == 0] = -100  # no target across examples
        batches.append((ids, labels, pos))
    config = RunConfig.from_mapping(dict(teacher="t", student="s", data="d", steps=3,
                                         batch_size=4, seq_len=512, lr=1e-3, eval_batches=1))
    stream = torch.arange(10_000) % 512
    losses = {}
    for compiled in (False, True):
        run_dir = Path(tempfile.mkdtemp())
        teacher, student = pair(0)
        trainer = KDTrainer(config, ModelTeacher(teacher), ModelStudent(student),
                            TokenSplits(train=stream, val=stream, eos_id=0), RunLog(run_dir),
                            device, torch.bfloat16, compile_models=compiled)
        losses[compiled] = [trainer.train_step(b)["loss"] for b in batches]
        log = (run_dir / "launch.log").read_text() if (run_dir / "launch.log").exists() else ""
        fell_back = "torch.compile failed" in log
        report[f"trainer_{'compiled' if compiled else 'eager'}"] = {
            "losses": losses[compiled], "fell_back_to_eager": fell_back,
            "backend": student.packed_backend(device, torch.bfloat16)}
    worst = max(abs(a - b) / abs(b) for a, b in zip(losses[True], losses[False], strict=True))
    fell_back = report["trainer_compiled"]["fell_back_to_eager"]
    ok = worst < 2e-2 and not fell_back
    print(f"trainer on packed batches: eager {losses[False]}, compiled {losses[True]} "
          f"(worst rel {worst:.1e}; fell back to eager: {fell_back}) {'ok' if ok else 'FAIL'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--mean-len", type=float, nargs="+", default=[600.0, 2000.0])
    parser.add_argument("--backends", nargs="+",
                        default=["varlen", "varlen-repeat-kv", "flex", "sdpa"])
    parser.add_argument("--time-budget", type=float, default=300.0,
                        help="seconds of timing after which the remaining variants are skipped")
    parser.add_argument("--skip-correctness", action="store_true")
    parser.add_argument("--trainer-check", action="store_true",
                        help="only: KDTrainer steps on packed batches, compiled vs eager")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report: dict = {"torch": torch.__version__, "device": (torch.cuda.get_device_name()
                                                           if device.type == "cuda" else "cpu"),
                    "args": {k: (str(v) if isinstance(v, Path) else v)
                             for k, v in vars(args).items()}}
    print(f"torch {torch.__version__} on {report['device']}", flush=True)
    ok = True
    try:
        if args.trainer_check:
            return 0 if trainer_check(device, report) else 1
        if not args.skip_correctness:
            ok = correctness(device, report)
            print(f"correctness: {'PASS' if ok else 'FAIL'}", flush=True)
        if device.type == "cuda":
            timing(device, args, report)
    finally:
        if args.out:
            args.out.write_text(json.dumps(report, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
