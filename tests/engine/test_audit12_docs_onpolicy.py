"""docs/on-policy.md, as a new user meets it (the twelfth audit): a cancel during an
evaluation's generations stops them, checkpoints the step that evaluation followed, and the
resume does not run the cut evaluation again, reaching the uninterrupted run's losses."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import chat_record, read_events, write_jsonl  # noqa: E402

RUN = ["--seq-len", "64", "--batch-size", "4", "--steps", "6", "--eval-every", "3",
       "--checkpoint-every", "0", "--eval-batches", "1", "--log-every", "1", "--device", "cpu",
       "--dtype", "float32", "--lmbda", "0.5", "--max-new-tokens", "12", "--eval-prompts", "4"]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from conftest import write_chat_pair

    root = tmp_path_factory.mktemp("audit12-onpolicy")
    teacher, student = write_chat_pair(root)
    data = write_jsonl(root / "chats.jsonl", [chat_record(i) for i in range(80)])
    return {"teacher": str(teacher), "student": str(student), "data": str(data)}


def _train(made: dict[str, str], run_dir: Path) -> list[str]:
    return ["train", "--teacher", made["teacher"], "--student", made["student"], "--data",
            made["data"], *RUN, "--run-dir", str(run_dir)]


def _events(run_dir: Path, kind: str) -> list[dict]:
    return [e for e in read_events(run_dir) if e["type"] == kind]


def test_a_cancel_during_an_evaluations_generations_checkpoints_the_step_it_followed(
        made, tmp_path, engine_in_process, monkeypatch) -> None:
    from kdengine.onpolicy import rollout

    reference = tmp_path / "reference"
    out = engine_in_process(*_train(made, reference))
    assert out.returncode == 0, out.stderr[-3000:]

    # SIGTERM as the student starts the held-out completions of the step-3 evaluation (the
    # second: step 0's is the first)
    complete, evaluations = rollout.Rollout.complete, []

    def cancelled_in_evaluation(self, prompts, model, seed_stream, source):
        if seed_stream.startswith("eval:"):
            evaluations.append(seed_stream)
            if len(evaluations) == 2:
                os.kill(os.getpid(), signal.SIGTERM)  # the engine's handler takes it
        return complete(self, prompts, model, seed_stream, source)

    monkeypatch.setattr(rollout.Rollout, "complete", cancelled_in_evaluation)
    run_dir = tmp_path / "cut"
    out = engine_in_process(*_train(made, run_dir))
    monkeypatch.undo()
    assert out.returncode == 143, out.stderr[-3000:]
    assert [(e["status"], e["steps"]) for e in _events(run_dir, "run_finished")] == \
        [("cancelled", 3)]
    assert [e["step"] for e in _events(run_dir, "eval")] == [0]  # the cut one wrote none
    assert [(e["step"], e.get("reason")) for e in _events(run_dir, "checkpoint")] == \
        [(3, "cancel")]

    out = engine_in_process("train", "--resume", str(run_dir))
    assert out.returncode == 0, out.stderr[-3000:]
    assert _events(run_dir, "run_started")[-1]["resumed_from"] == 3
    keys = ("loss", "kd", "ce", "on_policy")
    assert [e["step"] for e in _events(run_dir, "eval")] == [0, 6]  # step 3's not run again
    assert {e["step"]: tuple(e.get(k) for k in keys) for e in _events(run_dir, "step")} == \
        {e["step"]: tuple(e.get(k) for k in keys) for e in _events(reference, "step")}
    assert _events(run_dir, "eval")[-1]["val_gen_kl"] == \
        _events(reference, "eval")[-1]["val_gen_kl"]


@pytest.mark.parametrize("sampling, field, runs", [
    (("--seq-kd",), "--seq-kd", "seq_kd runs"),
    (("--lmbda", "1"), "--lmbda", "on-policy runs"),
])
def test_data_without_prompts_is_refused_naming_the_option_that_samples(
        made, tmp_path, capsys, sampling: tuple[str, ...], field: str, runs: str) -> None:
    """`--train-on all` leaves no prompt. A seq_kd run (lmbda 0) was refused naming `--lmbda`,
    which it was never given, and as an on-policy run; now it names `--seq-kd`, as its other
    refusals do (the chat template's, torchrun's)."""
    from conftest import one_line_in_process

    from kdengine.cli import main

    run_dir = tmp_path / "run"
    code = main([*_train(made, run_dir)[:7], "--seq-len", "64", "--batch-size", "4",
                 "--device", "cpu", "--max-new-tokens", "8", "--train-on", "all", *sampling,
                 "--run-dir", str(run_dir), "--check"])
    line = one_line_in_process(capsys, code, "train")
    assert line.startswith(f"kdengine train: error: {field}: the data's training examples "
                           "hold no prompt (every token of them trains): "
                           f"{runs} need conversations or prompt/completion pairs with "
                           "--train-on completion"), line
    assert not run_dir.exists()


def test_a_completion_trains_its_eos_token_and_no_prompt_token(made) -> None:
    """on-policy.md: a sampled row is the prompt and its completion, right-padded to seq_len;
    only the completion's tokens train, and the EOS token is part of it (the student learns when
    to stop)."""
    import torch

    from kdengine.generation import SamplingConfig, generate
    from kdengine.losses import IGNORE_INDEX
    from kdengine.models import load_decoder
    from kdengine.onpolicy.rollout import completion_rows

    student = load_decoder(made["student"]).eval()
    prompts = [torch.tensor([10, 11, 12, 13]), torch.tensor([20, 21])]
    free = generate(student, prompts, SamplingConfig(max_new_tokens=6, temperature=0.0))
    row = free.tokens[0].tolist()
    at, eos = [(i, t) for i, t in enumerate(row) if t not in row[:i]][-1]  # its first place
    done = generate(student, prompts, SamplingConfig(max_new_tokens=6, temperature=0.0,
                                                      eos_ids=(eos,)), pad_id=256)
    assert bool(done.finished[0]) and int(done.lengths[0]) == at + 1
    input_ids, labels = completion_rows(prompts, done, 16, 256)
    completion = row[:at + 1]
    assert input_ids[0, :4 + at + 1].tolist() == [10, 11, 12, 13, *completion]
    assert (input_ids[0, 4 + at + 1:] == 256).all()  # right-padded
    assert labels[0, 3:3 + at + 1].tolist() == completion and completion[-1] == eos
    assert (labels[0, :3] == IGNORE_INDEX).all() and (labels[0, 3 + at + 1:] == IGNORE_INDEX).all()


def test_a_seq_kd_run_resumed_from_a_checkpoint_samples_the_same_teacher_completions(
        made, tmp_path, engine_in_process) -> None:
    """on-policy.md's exact resume, for the teacher's samples too (lmbda 0.5 with seq_kd: the
    steps the coin does not give the student train on completions the teacher writes)."""
    import shutil

    reference = tmp_path / "reference"
    argv = [*_train(made, reference)[:7], "--seq-len", "64", "--batch-size", "4", "--steps", "6",
            "--checkpoint-every", "3", "--eval-every", "3", "--eval-batches", "1", "--device",
            "cpu", "--dtype", "float32", "--lmbda", "0.5", "--seq-kd", "--max-new-tokens", "8",
            "--eval-prompts", "4", "--sample-every", "1", "--log-every", "1",
            "--run-dir", str(reference)]
    out = engine_in_process(*argv)
    assert out.returncode == 0, out.stderr[-3000:]
    resumed = tmp_path / "resumed"  # the run as if killed after its step-3 checkpoint
    shutil.copytree(reference, resumed)
    shutil.rmtree(resumed / "final")
    shutil.rmtree(resumed / "checkpoints" / "step-00000006")
    events = resumed / "events.jsonl"
    events.write_text("".join(line for line, e in zip(
        events.read_text().splitlines(keepends=True), read_events(resumed), strict=True)
        if e.get("step", 0) <= 3 and e["type"] != "run_finished"))
    out = engine_in_process("train", "--resume", str(resumed))
    assert out.returncode == 0, out.stderr[-3000:]

    def drawn(run_dir: Path) -> dict[tuple, tuple]:
        return {(e["type"], e["step"], e.get("split"), e.get("index")):
                (e.get("source"), e.get("loss"), e.get("completion"), e.get("val_gen_kl"))
                for e in read_events(run_dir) if e["type"] in ("step", "sample", "eval")}

    assert drawn(resumed) == drawn(reference)
    assert {e["source"] for e in _events(reference, "step")} == {"student", "teacher"}
