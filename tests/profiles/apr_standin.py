#!/usr/bin/env python3
"""A stand-in for aprender's `apr` executable, for the apr profile's end-to-end tests.

It takes exactly the arguments of `apr distill` that aprender declares (an unknown flag is a
clap-style usage error, exit 2, as the real CLI answers flag drift) and prints the real engine's
line formats: `  Step N/M: loss: X`, `Epoch N/M: loss: X`, `checkpoint saved at step N: PATH`,
`✓ Distillation complete: ...` or the `--json` object, Rust panics, CUDA errors.

APR_STANDIN_MODE picks the behaviour:
    normal        (default) trains 2 epochs of APR_STANDIN_STEPS steps, the loss going down
    early-exit    fails at start-up with a CUDA error, exit 1, before any step
    panic         a few steps, then a Rust panic on the main thread, exit 101
    help-no-epochs  `apr distill --help` lacks --epochs (and so does the parser)
APR_STANDIN_STEP_DELAY: seconds per step (0.2). `apr pull REF` writes a small .apr file into
$XDG_CACHE_HOME/pacha/models (as apr does) and prints its `  Path: ...`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

VERSION = "apr 0.31.2 (kdtui test stand-in)"
MODE = os.environ.get("APR_STANDIN_MODE", "normal")
DELAY = float(os.environ.get("APR_STANDIN_STEP_DELAY", "0.2"))
STEPS = int(os.environ.get("APR_STANDIN_STEPS", "4"))

HELP_OPTIONS = [
    ("--student <STUDENT>", "Student model (.apr)"),
    ("--data <DATA>", "Training data (JSONL)"),
    ("-o, --output <OUTPUT>", "Output path"),
    ("--strategy <STRATEGY>", "standard, progressive, ensemble [default: standard]"),
    ("--temperature <TEMPERATURE>", "Softmax temperature [default: 3.0]"),
    ("--alpha <ALPHA>", "Weight of the hard-label loss [default: 0.7]"),
    ("--epochs <EPOCHS>", "Training epochs [default: 3]"),
    ("--plan", "Show the plan only"),
    ("--backend <BACKEND>", "fixture or cuda [default: fixture]"),
    ("--dataset <DATASET>", "Directory of .bin token shards"),
    ("--json", "JSON output"),
    ("-h, --help", "Print help"),
]
VALUE_FLAGS = {"--student", "--data", "--output", "-o", "--strategy", "--temperature", "--alpha",
               "--epochs", "--backend", "--dataset"}
BOOL_FLAGS = {"--plan", "--json"}


def out(line: str = "") -> None:
    print(line, flush=True)


def err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def options() -> list[tuple[str, str]]:
    if MODE == "help-no-epochs":
        return [o for o in HELP_OPTIONS if not o[0].startswith("--epochs")]
    return HELP_OPTIONS


def distill_help() -> int:
    out("Knowledge distillation (teacher -> student)\n")
    out("Usage: apr distill [OPTIONS] [TEACHER]\n")
    out("Arguments:\n  [TEACHER]  Teacher model (.apr)\n")
    out("Options:")
    for flag, text in options():
        pad = "    " if flag.startswith("--") else ""
        out(f"  {pad}{flag:<32} {text}")
    return 0


def usage_error(message: str) -> int:
    err(f"error: {message}\n\nUsage: apr distill [OPTIONS] [TEACHER]\n\n"
        "For more information, try '--help'.")
    return 2


def parse_distill(argv: list[str]) -> tuple[dict[str, str], int]:
    known = {o[0].split()[0].rstrip(",") for o in options()} | {"--output", "-o"}
    values: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-"):
            if arg not in known or arg not in VALUE_FLAGS | BOOL_FLAGS:
                return values, usage_error(f"unexpected argument '{arg}' found")
            if arg in BOOL_FLAGS:
                values[arg] = "true"
                i += 1
                continue
            if i + 1 >= len(argv):
                return values, usage_error(f"a value is required for '{arg}' but none was "
                                           "supplied")
            values["--output" if arg == "-o" else arg] = argv[i + 1]
            i += 2
        else:
            if "TEACHER" in values:
                return values, usage_error(f"unexpected argument '{arg}' found")
            values["TEACHER"] = arg
            i += 1
    return values, 0


def distill(argv: list[str]) -> int:
    if "--help" in argv or "-h" in argv:
        return distill_help()
    values, code = parse_distill(argv)
    if code:
        return code
    if values.get("--backend", "fixture") not in ("fixture", "cuda"):
        err(f"Error: --backend '{values['--backend']}' not recognized. Valid: fixture, cuda.")
        return 1
    for name in ("TEACHER", "--student"):
        path = values.get(name)
        if not path or not os.path.isfile(path):
            err(f"Error: read {name.strip('-').lower()} {path}: No such file or directory")
            return 1
    epochs = int(values.get("--epochs", "3"))
    output = values.get("--output")
    if not output:
        err("Error: --backend cuda requires --output <path>")
        return 1
    json_output = "--json" in values
    if not json_output:
        out("\x1b[1;36m=== APR Distill ===\x1b[0m")
        out(f"  Teacher      {values['TEACHER']}")
        out(f"  Student      {values['--student']}")
        out(f"  Temperature  {float(values.get('--temperature', 3.0)):.1f}")
        out(f"  Alpha        {float(values.get('--alpha', 0.7)):.2f}")
        out(f"  Epochs       {epochs}")
        out(f"  Output       {output}\n")
    err("[PMAT-701] F32/F16/BF16 teacher → CudaTrainerTeacher (legacy path)")
    if MODE == "early-exit":
        err("Error: CudaTrainerTeacher load: CUDA_ERROR_NO_DEVICE: no CUDA-capable device "
            "is detected")
        return 1
    os.makedirs(output, exist_ok=True)
    started = time.monotonic()
    loss = initial = 5.2
    best = loss
    step = 0
    for epoch in range(1, epochs + 1):
        total = 0.0
        for local in range(1, STEPS + 1):
            time.sleep(DELAY)
            step += 1
            loss = round(5.2 * 0.93 ** step, 4)
            best = min(best, loss)
            total += loss
            out(f"  Step {local}/{STEPS}: loss: {loss:.4f}")
            if MODE == "panic" and step == 3:
                err("thread 'main' panicked at crates/aprender-train/src/cuda_trainer.rs:1290:14:")
                err("called `Result::unwrap()` on an `Err` value: CUDA_ERROR_ILLEGAL_ADDRESS")
                err("note: run with `RUST_BACKTRACE=1` environment variable to display a "
                    "backtrace")
                return 101
        out(f"Epoch {epoch}/{epochs}: loss: {total / STEPS:.4f}")
        ckpt = os.path.join(output, f"ckpt-step-{step:06d}.apr")
        with open(ckpt, "wb") as fh:
            fh.write(b"APR2" + bytes(60))
        out(f"checkpoint saved at step {step}: {ckpt}")
    with open(os.path.join(output, "model.apr"), "wb") as fh:
        fh.write(b"APR2" + bytes(60))
    duration = time.monotonic() - started
    if json_output:
        out(json.dumps({"backend": values.get("--backend"), "teacher": values["TEACHER"],
                        "student": values["--student"], "output": output, "epochs": epochs,
                        "initial_loss": initial, "final_loss": loss, "best_loss": best,
                        "steps_completed": step, "duration_seconds": round(duration, 3),
                        "status": "completed"}))
    else:
        out(f"✓ Distillation complete: initial_loss={initial:.4f} → final_loss={loss:.4f} "
            f"({step} steps, {duration:.1f}s)")
        out(f"  Output: {output}")
    return 0


def pull(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        return usage_error("the model reference is required")
    ref = argv[0]
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME") or
                         os.path.join(os.path.expanduser("~"), ".cache"), "pacha", "models")
    os.makedirs(cache, exist_ok=True)
    path = os.path.join(cache, hashlib.sha256(ref.encode()).hexdigest()[:16] + ".apr")
    out("\x1b[1;36m=== APR Pull ===\x1b[0m\n")
    out(f"Model: {ref}")
    if os.path.exists(path):
        out("\x1b[32m✓\x1b[0m Model already cached")
    else:
        with open(path, "wb") as fh:
            fh.write(b"APR2" + ref.encode())
        out("\n\x1b[32m✓\x1b[0m Downloaded successfully")
    out(f"  Path: \x1b[32m{path}\x1b[0m")
    out(f"  Size: {os.path.getsize(path)} B\n")
    out("\x1b[1;36mUsage:\x1b[0m")
    out(f"  apr run {path}")
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] in (["--version"], ["-V"]):
        out(VERSION)
        return 0
    if argv[:1] == ["distill"]:
        return distill(argv[1:])
    if argv[:1] == ["pull"]:
        return pull(argv[1:])
    return usage_error(f"unrecognized subcommand '{argv[0] if argv else ''}'")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
