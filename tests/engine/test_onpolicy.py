"""On-policy distillation end to end: the student samples completions for the data's prompts,
the teacher grades them token by token, and the run reaches a verdict judged on the student's own
held-out writing; a killed on-policy run resumes to exactly the same losses (every draw comes
from (seed, step)); inputs an on-policy run cannot use are refused before any run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdengine.config import RunConfig
from kdengine.events import read_events

# small and quick: 12 steps, 4 prompts a step, 24 new tokens, on the CPU
RUN = ["--steps", "12", "--batch-size", "4", "--seq-len", "64", "--lr", "3e-3",
       "--eval-every", "6", "--eval-batches", "2", "--log-every", "1", "--checkpoint-every", "6",
       "--temperature", "1", "--alpha", "0.3", "--device", "cpu", "--seed", "5"]
# how the runs here sample (a flag that would change nothing is refused: hyperparameters.md)
ON_POLICY = ("--lmbda", "0.75", "--max-new-tokens", "24", "--eval-prompts", "6",
             "--sample-every", "3")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import write_tiny_model

    root = tmp_path_factory.mktemp("onpolicy")
    teacher = write_tiny_model(root / "teacher", hidden=32, layers=2, seed=1)
    student = write_tiny_model(root / "student", hidden=16, layers=1, seed=2)
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Q: what is {i} times 3?\nA:",
                                        "completion": f" {i * 3}."}) + "\n"
                            for i in range(120)))
    return {"teacher": str(teacher), "student": str(student), "data": str(data)}


def kdengine(*argv: str, launcher: tuple[str, ...] = (sys.executable, "-m", "kdengine"),
             **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*launcher, *argv], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                               **env})


def train(inputs: dict[str, str], run_dir: Path, *extra: str,
          sampling: tuple[str, ...] = ON_POLICY, engine=None, **kw) -> subprocess.CompletedProcess:
    """`kdengine train` on the module's inputs: a real process, or `engine` (the
    engine_in_process fixture: the CLI in this process, where a new interpreter's torch import
    would check nothing more; the reference run is the real one)."""
    argv = ("train", "--teacher", inputs["teacher"], "--student", inputs["student"],
            "--data", inputs["data"], *RUN, *sampling, "--run-dir", str(run_dir), *extra)
    return engine(*argv) if engine is not None else kdengine(*argv, **kw)


def events(run_dir: Path, kind: str) -> list[dict]:
    return [e for e in read_events(run_dir / "events.jsonl") if e["type"] == kind]


@pytest.fixture(scope="module")
def reference(inputs: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    out = train(inputs, run_dir)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return run_dir


def test_an_on_policy_run_reaches_a_verdict_on_the_students_own_writing(
        reference: Path) -> None:
    steps = events(reference, "step")
    assert [e["step"] for e in steps] == list(range(1, 13))
    sampled = [e for e in steps if e["on_policy"]]
    # lmbda 0.75: some steps sampled by the student, the others the data's own completions
    assert 0 < len(sampled) < 12
    for e in sampled:
        assert e["source"] == "student" and e["gen_len"] >= 1
        assert e["gen_s"] > 0 and e["gen_tokens_per_s"] > 0
        assert e["teacher_s"] >= 0 and e["student_s"] >= 0
        assert abs(e["loss"] - e["kd"]) < 1e-6  # T^2 KD alone on the student's own text
    assert all("gen_s" not in e for e in steps if not e["on_policy"])
    evals = events(reference, "eval")
    assert [e["step"] for e in evals] == [0, 6, 12]
    for e in evals:  # the student's completions to the same held-out prompts, graded
        assert e["val_gen_kl"] >= 0 and e["val_gen_teacher_logp"] < 0
        assert 1 <= e["val_gen_len"] <= 24
    samples = events(reference, "sample")
    val = [s for s in samples if s["split"] == "val"]
    assert [(s["step"], s["index"]) for s in val] == [(0, 0), (0, 1), (6, 0), (6, 1),
                                                     (12, 0), (12, 1)]
    assert val[0]["prompt"].endswith("times 3?\nA:")  # the prompt, without its completion
    for s in samples:
        assert 1 <= s["tokens"] <= 24 and isinstance(s["finished"], bool)
        assert s["teacher_logp"] < 0 and s["source"] == "student"
    train_samples = [s["step"] for s in samples if s["split"] == "train"]
    assert train_samples and all(step % 3 == 0 for step in train_samples)
    verdict = events(reference, "verdict")[-1]
    assert verdict["loss_kind"] == "val_gen_kl" and verdict["status"] in ("pass", "fail")
    assert verdict["initial_val_gen_kl"] == evals[0]["val_gen_kl"]
    assert verdict["final_val_gen_kl"] == evals[-1]["val_gen_kl"]
    assert verdict["reason"].startswith("on-policy val gen KL") and "val loss" in verdict["reason"]
    log = (reference / "launch.log").read_text()
    assert "val_gen_kl=" in log and "gen_tok/s=" in log


def test_a_killed_on_policy_run_resumes_to_exactly_the_same_losses(
        inputs: dict[str, str], reference: Path, tmp_path: Path, killed_at_step) -> None:
    killed = tmp_path / "killed"
    out = train(inputs, killed, launcher=killed_at_step, KD_KILL_AT="9")
    assert out.returncode == -9, out.stderr[-2000:]
    out = kdengine("train", "--resume", str(killed))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    def by_step(run_dir: Path, kind: str, *keys: str) -> dict[int, tuple]:
        return {e["step"]: tuple(e.get(k) for k in keys) for e in events(run_dir, kind)}

    keys = ("loss", "kd", "ce", "on_policy", "gen_len")
    assert by_step(killed, "step", *keys) == by_step(reference, "step", *keys)  # exact
    assert by_step(killed, "eval", "val_loss", "val_gen_kl") == \
        by_step(reference, "eval", "val_loss", "val_gen_kl")
    texts = {(s["step"], s["split"], s["index"]): s["completion"]
             for s in events(reference, "sample")}
    assert {(s["step"], s["split"], s["index"]): s["completion"]
            for s in events(killed, "sample")} == texts


@pytest.mark.parametrize("extra, field", [
    (["--max-new-tokens", "64"], "--max-new-tokens"),  # no room left for a prompt
    (["--train-on", "all"], "--lmbda"),  # every token trains: no prompts
])
def test_inputs_an_on_policy_run_cannot_use_are_refused_before_any_run_directory(
        inputs: dict[str, str], tmp_path: Path, extra: list[str], field: str,
        engine_in_process) -> None:
    run_dir = tmp_path / "run"
    # (the CLI in this process: a new interpreter's torch import checks nothing more)
    out = engine_in_process("train", "--teacher", inputs["teacher"], "--student",
                            inputs["student"], "--data", inputs["data"], *RUN, *ON_POLICY,
                            "--run-dir", str(run_dir), *extra, "--check")
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert field in lines[-1] and "Traceback" not in out.stderr
    assert not run_dir.exists()


def test_prompts_of_conversations_end_before_the_last_assistant_turn(tmp_path: Path) -> None:
    from kdengine.data.chat import ChatTemplate
    from kdengine.data.examples import load_example_data
    from kdengine.data.store import DataOptions
    from kdengine.onpolicy.prompts import prompt_source
    from kdengine.tokenizer import HFTokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import write_byte_tokenizer

    write_byte_tokenizer(tmp_path / "tok")
    tokenizer = HFTokenizer(tmp_path / "tok")
    template = ChatTemplate(
        "{% for m in messages %}<{{ m.role }}>{% if m.role == 'assistant' %}{% generation %}"
        "{{ m.content }}<|endoftext|>{% endgeneration %}{% else %}{{ m.content }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": f"sum {i}+{i}?"},
        {"role": "assistant", "content": f"{2 * i}"}]}) + "\n" for i in range(40)))
    examples = load_example_data(str(data), tokenizer, template, seq_len=128, batch_size=2,
                                 val_fraction=0.1, options=DataOptions())
    config = RunConfig(seq_len=128, max_new_tokens=16, batch_size=2, lmbda=1.0)
    source = prompt_source(config, examples)
    prompts = source.train(1) + source.held_out(4)
    texts = [tokenizer.decode(p.tolist()) for p in prompts]
    for text in texts:  # the whole conversation up to the last answer, which the student writes
        assert text.startswith("<user>hi ") and "<assistant>hello<|endoftext|>" in text
        assert text.endswith("?<assistant>")
    assert [p.tolist() for p in source.train(3)] == [p.tolist() for p in source.train(3)]
    # a long conversation keeps its end: the prompt is cut to seq_len - max_new_tokens
    short = prompt_source(config.with_values(seq_len=48), examples).held_out(1)[0]
    assert len(short) == 32 and tokenizer.decode(short.tolist()).endswith("?<assistant>")


def test_the_lmbda_coin_is_a_function_of_seed_and_step() -> None:
    from kdengine.onpolicy.rollout import stream_seed

    def coin(seed: int, step: int) -> float:
        gen = torch.Generator().manual_seed(stream_seed(seed, f"lmbda:{step}"))
        return float(torch.rand((), generator=gen))

    draws = [coin(0, s) for s in range(1, 2001)]
    assert draws == [coin(0, s) for s in range(1, 2001)]
    assert abs(sum(d < 0.25 for d in draws) / len(draws) - 0.25) < 0.04
    assert draws != [coin(1, s) for s in range(1, 2001)]


def test_seq_kd_trains_on_the_teachers_completions_and_is_judged_on_val_loss(
        inputs: dict[str, str], tmp_path: Path, engine_in_process) -> None:
    run_dir = tmp_path / "seqkd"
    out = train(inputs, run_dir, "--seq-kd", "--steps", "4", "--eval-every", "0",
                "--sample-every", "2", "--stop", r"\n", sampling=("--max-new-tokens", "24"),
                engine=engine_in_process)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    steps = events(run_dir, "step")
    assert all(e["source"] == "teacher" and not e["on_policy"] for e in steps)
    # the CE term trains on the teacher's text: loss = alpha CE + (1 - alpha) T^2 KD
    assert all(abs(e["loss"] - (0.3 * e["ce"] + 0.7 * e["kd"])) < 1e-4 for e in steps)
    assert [s["source"] for s in events(run_dir, "sample")] == ["teacher", "teacher"]
    assert all("val_gen_kl" not in e for e in events(run_dir, "eval"))
    assert events(run_dir, "verdict")[-1]["loss_kind"] == "val"


def test_the_documented_demo_command_passes_its_check(engine_cmd, tmp_path) -> None:
    """docs/on-policy.md's `kdengine train --demo --lmbda 1`, run as written with --check: the
    demo preset's max_new_tokens leaves the prompt part of its seq_len; an explicit value that
    leaves none is still refused."""
    import re
    import shlex

    doc = (Path(__file__).resolve().parents[2] / "docs" / "on-policy.md").read_text()
    command = re.search(r"`(kdengine train --demo --lmbda 1)`", doc)
    assert command, "docs/on-policy.md no longer shows `kdengine train --demo --lmbda 1`"
    argv = shlex.split(command.group(1))[1:]
    done = subprocess.run([*engine_cmd, *argv, "--check"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)["config"]
    assert config["lmbda"] == 1.0 and 0 < config["max_new_tokens"] < config["seq_len"]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    bad = subprocess.run([*engine_cmd, *argv, "--max-new-tokens", str(config["seq_len"]),
                          "--check"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    # the seq_len is the --demo preset's, so it is named as such (validate_with_preset)
    assert "--max-new-tokens: must be below the --demo preset's seq_len" in bad.stderr


def test_more_eval_prompts_than_the_held_out_data_has_is_said_not_silent(
        inputs: dict[str, str], tmp_path: Path, engine_in_process) -> None:
    out = train(inputs, tmp_path / "run", "--eval-prompts", "50", "--steps", "1",
                "--eval-every", "0", "--checkpoint-every", "0", engine=engine_in_process)
    assert out.returncode == 0, out.stderr[-2000:]
    warned = [e["message"] for e in events(tmp_path / "run", "log") if e["level"] == "warning"]
    said = [m for m in warned if m.startswith("--eval-prompts 50:")]
    assert said == ["--eval-prompts 50: the held-out data has 6 prompts, so each evaluation "
                    "completes those 6 (a larger --val-fraction holds out more)"]
    assert "WARNING: --eval-prompts 50:" in (tmp_path / "run" / "launch.log").read_text()


# The engine's CLI whose on-policy step KD_SLOW_AT generates slowly (1 s a token, as a big
# student with a long --max-new-tokens does): KD_SLOW_MARK is written once it generates
SLOW_GENERATION_AT_STEP = r"""
import os, sys, time
from pathlib import Path
import kdengine.trainer as T
import kdengine.generation.engine as G
slow_at, queued = int(os.environ["KD_SLOW_AT"]), {"step": 0}
queue_step, next_tokens = T.KDTrainer.queue_step, G.next_tokens
def noting_step(self, batch=None, **queue):
    queued["step"] = self.step + 1
    try:
        return queue_step(self, batch, **queue)
    finally:
        queued["step"] = 0
def slow_tokens(*args, **kw):
    if queued["step"] == slow_at:
        Path(os.environ["KD_SLOW_MARK"]).touch()
        time.sleep(1.0)
    return next_tokens(*args, **kw)
T.KDTrainer.queue_step, G.next_tokens = noting_step, slow_tokens
from kdengine.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_cancel_during_an_on_policy_generation_ends_it_at_once_and_resumes_exactly(
        inputs: dict[str, str], reference: Path, tmp_path: Path) -> None:
    """SIGTERM while the student writes a step's completions: the run ends cancelled within a
    token or so (before, the whole generation and the step ran first: 24 slow tokens here, and
    minutes for a big student with a long --max-new-tokens, past `kdtui cancel`'s 60 s), the
    step that never trained is not counted, the cancel checkpoints the last step that trained,
    and a resume from it gives the uninterrupted run's losses."""
    import signal
    import time

    # the first on-policy step after the checkpoint at step 6
    slow_at = next(e["step"] for e in events(reference, "step")
                   if e["step"] > 6 and e["on_policy"])
    run_dir, mark = tmp_path / "cancelled", tmp_path / "generating"
    argv = [sys.executable, "-c", SLOW_GENERATION_AT_STEP, "train", "--teacher",
            inputs["teacher"], "--student", inputs["student"], "--data", inputs["data"], *RUN,
            *ON_POLICY, "--run-dir", str(run_dir)]
    engine = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                                   "KD_SLOW_AT": str(slow_at), "KD_SLOW_MARK": str(mark)})
    try:
        deadline = time.monotonic() + 300
        while not mark.exists():
            assert engine.poll() is None and time.monotonic() < deadline, "no slow generation"
            time.sleep(0.05)
        sent = time.monotonic()
        engine.send_signal(signal.SIGTERM)
        code = engine.wait(timeout=120)
        waited = time.monotonic() - sent
    finally:
        if engine.poll() is None:
            engine.kill()
    assert code == 143
    assert waited < 12, f"the engine took {waited:.0f} s to stop (24 tokens left: 24 s)"
    finished = events(run_dir, "run_finished")
    assert [(e["status"], e["steps"]) for e in finished] == [("cancelled", slow_at - 1)]
    assert max(e["step"] for e in events(run_dir, "step")) == slow_at - 1
    # the periodic checkpoint at 6, then the cancel's of the last trained step (none more
    # when that is step 6 itself); before, a resume went back to step 6
    saved = [(e["step"], e.get("reason")) for e in events(run_dir, "checkpoint")]
    assert saved == [(6, None)] + ([(slow_at - 1, "cancel")] if slow_at - 1 > 6 else [])

    out = kdengine("train", "--resume", str(run_dir))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert events(run_dir, "run_started")[-1]["resumed_from"] == slow_at - 1
    keys = ("loss", "kd", "ce", "on_policy", "gen_len")
    resumed = {e["step"]: tuple(e.get(k) for k in keys) for e in events(run_dir, "step")}
    assert resumed == {e["step"]: tuple(e.get(k) for k in keys)
                       for e in events(reference, "step")}
    assert events(run_dir, "eval")[-1]["val_gen_kl"] == events(reference, "eval")[-1]["val_gen_kl"]
