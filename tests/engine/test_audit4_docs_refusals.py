"""Promises of docs/getting-started.md, docs/models.md and docs/architecture.md about bad input
and the refusals a user reads, checked through the real CLI on tiny models the tests write:
exit 2, one line naming the field and the fix, no traceback, no run directory."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

TIMEOUT = 300


def _engine(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kdengine", *argv], capture_output=True,
                          text=True, timeout=TIMEOUT, cwd=cwd)


@pytest.mark.parametrize("text", ["{not json", '["eos_token"]'], ids=["not-json", "a-list"])
@pytest.mark.parametrize("check", [True, False], ids=["check", "run"])
def test_a_tokenizer_config_that_is_not_a_json_object_is_one_line_naming_the_teacher(
        tiny_run_inputs, tiny_args, tmp_path, one_line_refusal, engine_in_process, text,
        check) -> None:
    # getting-started: `--check` refuses "the tokenizer files" in one line naming the field
    # (before: a JSONDecodeError or AttributeError traceback, exit 1)
    config = Path(tiny_run_inputs["teacher"]) / "tokenizer_config.json"
    config.write_text(text)
    args = [*tiny_args(tiny_run_inputs, tmp_path / "run"), *(["--check"] if check else [])]
    # one case as a user's process; the others in this process (the same CLI, no torch import)
    done = _engine(*args) if (check, text) == (False, "{not json") else engine_in_process(*args)
    line = one_line_refusal(done, "train", "--teacher: ")
    assert str(config) in line and "JSON object" in line, line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_a_config_file_that_is_not_utf8_is_one_line_naming_the_file(
        tmp_path, one_line_refusal, suffix) -> None:
    # getting-started's run.toml, saved by an editor in Latin-1 (before: UnicodeDecodeError
    # traceback, exit 1, from kdengine train and kdtui launch alike)
    path = tmp_path / f"run{suffix}"
    path.write_bytes('run_name = "café"\n'.encode("latin-1"))
    done = _engine("train", "--config", str(path), "--check")
    line = one_line_refusal(done, "train", "--config: ")
    assert f"cannot read {path}: not UTF-8 text (byte 15)" in line, line

    headless = subprocess.run([sys.executable, "-m", "kdtui", "launch", "--headless",
                               "--config", str(path)], capture_output=True, text=True,
                              timeout=TIMEOUT)
    assert headless.returncode == 2, headless.stderr
    assert "Traceback" not in headless.stderr
    assert f"cannot read {path}: not UTF-8 text" in headless.stderr


def test_resume_without_a_checkpoint_names_the_step_the_run_stopped_at(
        tiny_run_inputs, tiny_args, tmp_path, wait_on_run, one_line_refusal) -> None:
    # architecture.md: `--resume RUN` with no complete checkpoint is refused, naming the command
    # that starts it again; the step it names is where the run stopped (before: the last
    # logged step event's, 1 for a run cancelled at step 10 with log_every 1000)
    run_dir = tmp_path / "run"
    args = tiny_args(tiny_run_inputs, run_dir, steps=100000, log_every=1000, eval_every=5,
                     checkpoint_every=100000)
    engine = subprocess.Popen([sys.executable, "-m", "kdengine", *args],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def evals_past_ten() -> bool:
            from kdengine.events import read_events

            path = run_dir / "events.jsonl"
            return path.exists() and any(e.get("type") == "eval" and e["step"] >= 10
                                         for e in read_events(path))
        wait_on_run(run_dir, evals_past_ten, "an eval at step 10")
        engine.send_signal(signal.SIGTERM)
        engine.wait(timeout=TIMEOUT)
    finally:
        if engine.poll() is None:
            engine.kill()
    from kdengine.events import read_events

    finished = read_events(run_dir / "events.jsonl")[-1]
    assert finished["type"] == "run_finished" and finished["status"] == "cancelled"
    assert finished["steps"] >= 10
    # the cancel checkpointed its last step; a second signal during that write would have cut
    # it short, leaving none (kdengine.run._checkpoint_at_cancel): that run is resumed here
    cancels = run_dir / "checkpoints"
    assert [p.name for p in cancels.glob("step-*")] == [f"step-{finished['steps']:08d}"]
    shutil.rmtree(cancels)
    done = _engine("train", "--resume", str(run_dir))
    line = one_line_refusal(done, "train", "--resume: ")
    assert (f"(it stopped at step {finished['steps']}, before its first checkpoint at step "
            "100000)") in line, line


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_a_config_file_opening_with_a_byte_order_mark_is_read(tiny_run_inputs, tmp_path,
                                                              engine_in_process, suffix) -> None:
    # getting-started's run.toml saved by Notepad: "is not valid TOML: Invalid statement (at
    # line 1, column 1)" for the invisible mark
    values = {"teacher": tiny_run_inputs["teacher"], "student": tiny_run_inputs["student"],
              "data": tiny_run_inputs["data"], "seq_len": 32, "batch_size": 4,
              "run_name": "marked"}
    text = (json.dumps(values) if suffix == ".json" else
            "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    path = tmp_path / f"run{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    done = engine_in_process("train", "--config", str(path), "--check")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["config"]["run_name"] == "marked"
