"""Every user-facing feature of the engine on a GPU, as a user runs it: `kdengine train` (and
`cache-teacher`, `--resume`, `verdict`) on tiny HF-layout checkpoints and data written here, one
case a feature combination, several cases at once on the one GPU (the models are tiny).

CI runs these paths on the CPU, where nothing is compiled, no FP8 matmul exists and SDPA takes
its math kernel; this is where the CUDA-only code (Inductor, Triton kernels, FP8, CUDA graphs,
the pinned checkpoint copies, sampling under compile) meets the user's flags. A case passes when
its commands exit as a user would expect and the run's verdict is PASS (or, for the NaN case,
INCONCLUSIVE with one line).

    python3 benchmarks/gpu_features.py --out $OUT/features [--cases a,b] [--jobs 4]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
ENGINE = [sys.executable, "-m", "kdengine"]
TORCHRUN = [sys.executable, "-m", "kdengine.distributed.launch", "--standalone",
            "--nproc-per-node", "2", "-m", "kdengine"]
KDTUI = [sys.executable, "-m", "kdtui"]  # the dashboard's headless launch on this machine


def write_inputs(root: Path) -> dict[str, str]:
    """A Qwen3-style teacher (q/k norms: the FP8 teacher's fused q/k kernel), a Qwen2-style
    student (q/k/v bias), both 16-aligned so FP8 applies; text, chat and ShareGPT data."""
    import torch
    from conftest import TINY_TEXT, write_chat_tokenizer

    from kdengine.models import Decoder, DecoderConfig, save_decoder

    out = {}
    for name, hidden, layers, seed, vocab, extra in (
            ("teacher", 256, 4, 1, 257, dict(qk_norm=True, model_type="qwen3", head_dim=64)),
            # an embedding padded past the tokenizer's ids, as Qwen2.5-7B's is
            ("padded_teacher", 256, 4, 3, 272, dict(attention_bias=True, model_type="qwen2")),
            ("student", 128, 2, 2, 257, dict(attention_bias=True, model_type="qwen2"))):
        config = DecoderConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 3,
                               num_hidden_layers=layers, num_attention_heads=4,
                               num_key_value_heads=2, tie_word_embeddings=True,
                               max_position_embeddings=1024, **extra)
        model = Decoder(config)
        model.init_weights(torch.Generator().manual_seed(seed), std=0.05)
        save_decoder(model, root / name)
        write_chat_tokenizer(root / name)
        out[name] = str(root / name)
    text = root / "text"
    text.mkdir()
    for i in range(8):
        (text / f"doc{i}.txt").write_text(TINY_TEXT * 2)
    chats, sharegpt = [], []
    for i in range(600):
        q, a = f"what is {i} times 3?", f"{i} times 3 is {i * 3}, and {i} plus 3 is {i + 3}."
        chats.append({"messages": [{"role": "user", "content": q},
                                   {"role": "assistant", "content": a}]})
        sharegpt.append({"conversations": [{"from": "human", "value": q},
                                           {"from": "gpt", "value": a}]})
    for name, rows in (("chats.jsonl", chats), ("sharegpt.jsonl", sharegpt)):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    out.update(text=str(text), chats=str(root / "chats.jsonl"),
               sharegpt=str(root / "sharegpt.jsonl"))
    return out


@dataclass
class Case:
    name: str
    what: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    data: str = "text"
    kill_after_checkpoint: str | None = None  # "KILL", "TERM" or "CANCEL" (kdtui's): resume
    kill_on: str = '"type":"checkpoint"'  # ... once events.jsonl holds this (then `kill_delay`)
    kill_delay: float = 1.0
    expect: tuple[str, ...] | str = "PASS"  # the verdicts that count as a pass
    torchrun: bool = False
    cache_first: bool = False  # kdengine cache-teacher, then train from the cache
    teacher: str = "teacher"
    own_args: bool = False  # `args` alone ("{run_dir}" in them replaced), not the common ones
    kdtui: bool = False  # `kdtui launch --headless` and `kdtui resume --headless`, not kdengine
    ranks: int | None = None  # every start's run_started must say this world_size


# what a user should never see in a run's log: a crash, dynamo giving up on a frame (its calls
# then run eager), a kernel's fallback to slower code, a library's warning
ALARMS = ("Traceback", "recompile_limit", "failed, using", "running eager", "Warning:")

FP8 = ["--teacher-dtype", "float8"]
FP8S = FP8 + ["--student-matmuls", "float8"]
ONPOLICY = ["--lmbda", "1", "--loss", "reverse_kl", "--temperature", "1",
            "--max-new-tokens", "32", "--alpha", "0"]

CASES = [
    Case("text-bf16", "raw text, bf16 (the default path)", []),
    Case("text-fp8", "FP8 teacher", FP8),
    Case("text-fp8s", "FP8 teacher and student", FP8S),
    Case("chat-fp8", "messages JSONL, packed, FP8 teacher", FP8, data="chats"),
    Case("sharegpt", "ShareGPT JSONL, packed", [], data="sharegpt"),
    Case("chat-student-graphs", "messages, the student's CUDA graphs", [], data="chats",
         env={"KDENGINE_STUDENT_COMPILE": "graphs"}),
    Case("chat-teacher-graphs", "messages, FP8 teacher as CUDA graphs", FP8, data="chats",
         env={"KDENGINE_TEACHER_COMPILE": "graphs"}),
    Case("text-model-compile", "the whole student as one graph, FP8 both", FP8S,
         env={"KDENGINE_STUDENT_COMPILE": "model", "KDENGINE_TEACHER_COMPILE": "model"}),
    Case("onpolicy", "on-policy (lmbda 1, reverse KL), sampling under compile", ONPOLICY,
         data="chats"),
    Case("onpolicy-mixed-fp8", "lmbda 0.5 with the FP8 teacher", FP8 + ONPOLICY[2:] +
         ["--lmbda", "0.5", "--alpha", "0.5"], data="chats"),
    Case("onpolicy-fp8s", "lmbda 0.5, FP8 teacher and student (generation from a bf16 twin)",
         FP8S + ONPOLICY[2:] + ["--lmbda", "0.5", "--alpha", "0.5"], data="chats"),
    Case("seqkd", "sequence-level KD (teacher's completions)", ["--seq-kd", "--max-new-tokens",
                                                                "32"], data="chats"),
    Case("cache", "cache-teacher on the GPU, then train from the cache",
         ["--alpha", "0.5"], data="chats", cache_first=True),
    Case("kill-resume-fp8s", "FP8 both, SIGKILL after a checkpoint, --resume", FP8S,
         kill_after_checkpoint="KILL"),
    Case("term-resume-chat", "messages, SIGTERM after a checkpoint, --resume", FP8,
         data="chats", kill_after_checkpoint="TERM"),
    Case("fp16", "float16 with loss scaling, FP8 teacher", FP8 + ["--dtype", "float16"]),
    Case("fp32-packed", "float32 on CUDA: packed rows through FlexAttention", ["--dtype",
                                                                          "float32"],
         data="chats"),
    Case("fp16-fp8s", "float16, FP8 teacher and student", FP8S + ["--dtype", "float16"]),
    Case("jsd-fp8", "generalized JSD, off-policy, FP8 teacher", FP8 + ["--loss", "jsd",
                                                                      "--beta", "0.5"]),
    Case("reverse-kl", "reverse KL, off-policy", ["--loss", "reverse_kl"], data="sharegpt"),
    Case("padded-vocab-fp8", "a teacher whose embedding is padded past the tokenizer, FP8",
         FP8, data="chats", teacher="padded_teacher"),
    Case("onpolicy-samples", "on-policy with top-p, top-k, a stop text and sample events",
         ONPOLICY + ["--sample-every", "5", "--eval-prompts", "4", "--top-p", "0.9",
                     "--top-k", "20", "--stop", "\\n\\n"], data="chats"),
    Case("onpolicy-capture-vs-checkpoints", "on-policy, a checkpoint every 2 steps while "
         "new sample shapes are captured", ONPOLICY + ["--checkpoint-every", "2",
                                                       "--sample-every", "3",
                                                       "--eval-prompts", "3"], data="chats"),
    Case("onpolicy-kill-resume", "on-policy, SIGKILL after a checkpoint, --resume", ONPOLICY,
         data="chats", kill_after_checkpoint="KILL"),
    Case("onpolicy-term-resume", "on-policy, SIGTERM after a checkpoint (most of a step is "
         "its generation, cut at the next token), --resume", ONPOLICY, data="chats",
         kill_after_checkpoint="TERM"),
    Case("sync-checkpoints", "checkpoints written in the loop, SIGKILL, --resume", FP8,
         env={"KDENGINE_SYNC_CHECKPOINTS": "1"}, kill_after_checkpoint="KILL"),
    Case("demo", "kdengine train --demo", ["--demo", "--run-dir", "{run_dir}"], own_args=True),
    Case("cuda1", "--device cuda:1, FP8 teacher and student", FP8S + ["--device", "cuda:1"]),
    Case("local-2-gpus", "the dashboard's local launch (headless) on a 2-GPU machine: torchrun",
         FP8, kdtui=True, ranks=2),
    Case("local-2-gpus-resume", "the same, kdtui cancel after a checkpoint, kdtui resume",
         [], data="chats", kdtui=True, ranks=2, kill_after_checkpoint="CANCEL"),
    Case("torchrun-chat-fp8", "torchrun, 2 ranks, messages, FP8 teacher", FP8, data="chats",
         torchrun=True),
    Case("torchrun-fp8s", "torchrun, 2 ranks, FP8 teacher and student (FSDP2 gathers the "
         "MLPs' masters)", FP8S, torchrun=True),
    Case("torchrun-kill-resume", "torchrun, 2 ranks, SIGTERM after a checkpoint, --resume",
         [], torchrun=True, kill_after_checkpoint="TERM"),
    # (torchrun writes no checkpoint at a cancel, the periodic ones only: the resume continues
    # from step 40's, written before the evaluation after step 80 that the SIGTERM cuts)
    Case("torchrun-term-in-eval", "torchrun, 2 ranks, SIGTERM inside the evaluation after step "
         "80 (each of its 200 batches asks every rank whether to stop), --resume from step 40",
         ["--eval-batches", "200"], torchrun=True, kill_after_checkpoint="TERM",
         kill_on='"type":"step","step":80,', kill_delay=0.3),
    Case("graphs-fp8s", "FP8 teacher and student, both models as CUDA graphs", FP8S,
         env={"KDENGINE_STUDENT_COMPILE": "graphs", "KDENGINE_TEACHER_COMPILE": "graphs"}),
]


def common(inputs: dict[str, str], case: Case, run_dir: Path) -> list[str]:
    """Every case's flags, less those the case gives itself (each flag once on a command)."""
    flags = ["--teacher", inputs[case.teacher], "--student", inputs["student"],
             "--data", inputs[case.data], "--steps", "160", "--batch-size", "8",
             "--seq-len", "256", "--lr", "2e-3", "--warmup-steps", "10", "--eval-every", "40",
             "--eval-batches", "4", "--checkpoint-every", "40", "--log-every", "10",
             "--run-dir", str(run_dir)]
    pairs = zip(flags[::2], flags[1::2], strict=True)
    return [word for flag, value in pairs if flag not in case.args for word in (flag, value)]


def run_case(case: Case, inputs: dict[str, str], work: Path, env: dict[str, str]) -> dict:
    run_dir = work / "runs" / case.name
    log = work / "logs" / f"{case.name}.log"
    case_env = {**env, **case.env}
    if case.kdtui:  # the dashboard's state (settings, hosts) in a home of its own
        home = work / "home" / case.name
        case_env.update(HOME=str(home), **{f"XDG_{d}_HOME": str(home / d.lower())
                                           for d in ("CONFIG", "DATA", "STATE", "CACHE")})
    launcher = KDTUI if case.kdtui else TORCHRUN if case.torchrun else ENGINE
    steps: list[dict] = []
    started = time.monotonic()

    def call(argv: list[str], kill: str | None = None) -> int:
        t0 = time.monotonic()
        with open(log, "a") as sink:
            sink.write(f"\n$ {' '.join(argv)}\n")
            sink.flush()
            proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=case_env,
                                    start_new_session=True)
            if kill:
                events = run_dir / "events.jsonl"
                deadline = time.monotonic() + 400
                while proc.poll() is None and time.monotonic() < deadline:
                    if events.exists() and case.kill_on in events.read_text():
                        time.sleep(case.kill_delay)
                        if kill == "CANCEL":
                            subprocess.run(KDTUI + ["cancel", str(run_dir)], env=case_env,
                                           stdout=sink, stderr=subprocess.STDOUT)
                        else:
                            os.killpg(proc.pid, getattr(signal, "SIG" + kill))
                        break
                    time.sleep(0.2)
            code = proc.wait(timeout=600)
        steps.append({"argv": " ".join(argv[len(launcher):] if argv[:len(launcher)] == launcher
                                       else argv), "exit": code,
                      "s": round(time.monotonic() - t0, 1)})
        return code

    args = ([a.replace("{run_dir}", str(run_dir)) for a in case.args] if case.own_args
            else common(inputs, case, run_dir) + case.args)
    if case.cache_first:
        cache = work / "runs" / f"{case.name}-cache"
        call(ENGINE + ["cache-teacher", "--teacher", inputs["teacher"], "--data",
                       inputs[case.data], "--seq-len", "256", "--top-k", "32",
                       "--out", str(cache)])
        i = args.index("--teacher")
        args[i:i + 2] = ["--teacher-cache", str(cache)]
    first = ["launch", "--headless"] if case.kdtui else ["train"]
    call(launcher + [*first, *args], kill=case.kill_after_checkpoint)
    if case.kill_after_checkpoint:
        call(launcher + (["resume", "--headless", str(run_dir)] if case.kdtui
                         else ["train", "--resume", str(run_dir)]))
    verdict = subprocess.run(ENGINE + ["verdict", "--json", str(run_dir)], env=case_env,
                             capture_output=True, text=True)
    try:
        v = json.loads(verdict.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        v = {"status": "?", "error": (verdict.stderr or verdict.stdout)[-300:]}
    result = str(v.get("status", "?")).upper()
    text = log.read_text() if log.exists() else ""
    tail = text.splitlines()[-6:]
    alarms = [line.strip()[:200] for line in text.splitlines()
              if any(sign in line for sign in ALARMS)]
    if case.ranks is not None:
        events = run_dir / "events.jsonl"
        sizes = [e.get("world_size") or 1 for e in map(json.loads, events.read_text().splitlines())
                 if e.get("type") == "run_started"] if events.exists() else []
        if not sizes or any(n != case.ranks for n in sizes):
            alarms.append(f"run_started world_size {sizes}, expected {case.ranks}")
    expect = (case.expect,) if isinstance(case.expect, str) else case.expect
    ok = result in expect and not alarms and all(
        s["exit"] == 0 or (case.kill_after_checkpoint and s is steps[-2])
        or "PASS" not in expect for s in steps)
    return {"case": case.name, "what": case.what, "ok": bool(ok), "verdict": v, "steps": steps,
            "alarms": alarms, "s": round(time.monotonic() - started, 1), "log_tail": tail}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp")) / "features")
    p.add_argument("--work", type=Path, default=Path("/tmp/gpu-features"))
    p.add_argument("--cases", default="")
    p.add_argument("--jobs", type=int, default=4)
    args = p.parse_args()
    import torch

    gpus = torch.cuda.device_count()
    wanted = [c for c in CASES if not args.cases or c.name in args.cases.split(",")]
    skipped = [c.name for c in wanted
               if (c.torchrun or c.ranks or "cuda:1" in c.args) and gpus < 2]
    wanted = [c for c in wanted if c.name not in skipped]
    args.out.mkdir(parents=True, exist_ok=True)
    for sub in ("runs", "logs"):
        (args.work / sub).mkdir(parents=True, exist_ok=True)
    inputs = (json.loads((args.work / "inputs.json").read_text())
              if (args.work / "inputs.json").exists() else write_inputs(args.work / "inputs"))
    (args.work / "inputs.json").write_text(json.dumps(inputs))
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1",
           "KDENGINE_CACHE": str(args.work / "cache"), "PYTHONUNBUFFERED": "1"}
    results = []
    with ThreadPoolExecutor(args.jobs) as pool:
        for r in pool.map(lambda c: run_case(c, inputs, args.work, env), wanted):
            results.append(r)
            print(f"{'ok  ' if r['ok'] else 'FAIL'} {r['case']:24s} {r['s']:6.1f} s  "
                  f"{r['verdict'].get('status')}  "
                  f"{[s['exit'] for s in r['steps']]}", flush=True)
            if not r["ok"]:
                print("     " + "\n     ".join(r["alarms"][:3] or r["log_tail"]), flush=True)
    lines = ["| case | what | ok | verdict | exits | s |", "|---|---|---|---|---|---:|"]
    lines += [f"| {r['case']} | {r['what']} | {'yes' if r['ok'] else '**no**'} | "
              f"{r['verdict'].get('status')} | {[s['exit'] for s in r['steps']]} | {r['s']} |"
              for r in results]
    if skipped:
        lines.append(f"\nnot run (one GPU): {', '.join(skipped)}")
    (args.out / "features.md").write_text("\n".join(lines) + "\n")
    (args.out / "features.json").write_text(json.dumps(results, indent=1))
    print("\n".join(lines))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
