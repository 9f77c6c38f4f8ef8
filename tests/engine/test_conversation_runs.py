"""Distillation on conversation and instruction data, end to end through the real CLI: a tiny
teacher/student pair whose tokenizer has a chat template trains on a `messages` JSONL, a parquet
file, a `save_to_disk` folder and prompt/completion pairs to a verdict; `--check` refuses bad
inputs in one line; bad files are skipped or fail as --on-bad-file says, for raw text too; a
killed run resumes to the same losses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kdengine.events import read_events

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import write_jsonl  # noqa: E402

CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}"
          "{% generation %}{{ m.content }}<|endoftext|>{% endgeneration %}{% else %}"
          "{{ m.content }}{% endif %}\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# small and quick: 12 steps of 4 packed rows of 128 tokens, on the CPU
RUN = ["--steps", "12", "--batch-size", "4", "--seq-len", "128", "--lr", "3e-3",
       "--eval-every", "6", "--eval-batches", "2", "--log-every", "1", "--checkpoint-every", "6",
       "--temperature", "2", "--device", "cpu", "--seed", "3"]


def chat(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"what is {i} times 3?"},
            {"role": "assistant", "content": f"{i} times 3 is {i * 3}."}]


def with_template(directory: Path) -> Path:
    config = json.loads((directory / "tokenizer_config.json").read_text())
    (directory / "tokenizer_config.json").write_text(json.dumps({**config,
                                                                 "chat_template": CHATML}))
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Teacher and student with a chat template in tokenizer_config.json, and a pair without."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import write_tiny_model

    root = tmp_path_factory.mktemp("chat-models")
    out = {}
    for name, hidden, layers, seed in (("teacher", 32, 2, 1), ("student", 16, 1, 2)):
        plain = write_tiny_model(root / f"plain-{name}", hidden=hidden, layers=layers, seed=seed)
        out[f"plain_{name}"] = str(plain)
        out[name] = str(with_template(Path(shutil.copytree(plain, root / name))))
    return out


def env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1"}


ENGINE = [sys.executable, "-m", "kdengine"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            "2", "-m", "kdengine"]


def kdengine(*argv: str, launcher: list[str] = ENGINE) -> subprocess.CompletedProcess:
    return subprocess.run([*launcher, *argv], capture_output=True, text=True, timeout=300,
                          env=env())


def train(models: dict[str, str], data: Path, run_dir: Path | None, *extra: str,
          check: bool = False, plain: bool = False,
          launcher: list[str] = ENGINE, via=None) -> subprocess.CompletedProcess:
    """`kdengine train` in a process of its own; `via`: through it instead (engine_in_process,
    the CLI in this process: a --check's new interpreter and torch import check nothing more)."""
    prefix = "plain_" if plain else ""
    argv = ["train", "--teacher", models[prefix + "teacher"],
            "--student", models[prefix + "student"], "--data", str(data), *RUN, *extra]
    if run_dir is not None:
        argv += ["--run-dir", str(run_dir)]
    if via is not None:
        return via(*argv, *(["--check"] if check else []))
    return kdengine(*argv, *(["--check"] if check else []), launcher=launcher)


def data_stage(run_dir: Path) -> dict:
    return next(e for e in read_events(run_dir / "events.jsonl")
                if e["type"] == "stage" and e["stage"] == "data" and e["state"] == "done")


def distils_to_a_verdict(models: dict[str, str], data: Path, run_dir: Path,
                         *extra: str) -> dict:
    """Train through the CLI, read the verdict with `kdengine verdict`; the data stage event."""
    out = train(models, data, run_dir, *extra)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    verdict = kdengine("verdict", str(run_dir))
    assert verdict.returncode == 0 and "PASS" in verdict.stdout, verdict.stdout + verdict.stderr
    return data_stage(run_dir)


def refusal(out: subprocess.CompletedProcess) -> str:
    """The one line a refused --check prints (exit 2, no traceback)."""
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    return lines[0]



def test_messages_jsonl_distils_to_a_verdict_training_on_assistant_tokens(
        models: dict[str, str], tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "chats.jsonl", [{"messages": chat(i)} for i in range(160)])
    stage = distils_to_a_verdict(models, data, tmp_path / "run")
    assert stage["kind"] == "examples" and stage["examples"] == 160
    assert stage["train_examples"] + stage["val_examples"] == 160 and stage["val_examples"] > 0
    # only the assistant's answers (and their end token) train: well under half the tokens
    assert 0 < stage["trained_tokens"] < stage["tokens"] / 2
    assert stage["truncated"] == stage["dropped"] == stage["skipped_files"] == 0
    assert stage["detail"].startswith("160 ex, ") and stage["detail"].endswith(" trained tok")
    assert len(stage["detail"]) <= 26  # the stage tracker's detail column, side column 52 wide
    # the preflight of this same command built the store: the run tokenized, nothing cached
    assert stage["cached"] is False
    log = (tmp_path / "run" / "launch.log").read_text()
    assert "data: 160 examples" in log
    assert "token store built: 160 examples tokenized in " in log and "reused" not in log
    final = tmp_path / "run" / "final" / "tokenizer_config.json"
    assert json.loads(final.read_text())["chat_template"] == CHATML


def test_train_on_all_trains_every_token(models: dict[str, str], tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "chats.jsonl", [{"messages": chat(i)} for i in range(160)])
    out = train(models, data, tmp_path / "run", "--train-on", "all", "--steps", "2",
                "--eval-every", "0")
    assert out.returncode == 0, out.stderr[-3000:]
    stage = data_stage(tmp_path / "run")
    assert stage["trained_tokens"] == stage["tokens"]


def test_parquet_file_distils_to_a_verdict(models: dict[str, str], tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    path = tmp_path / "chats.parquet"
    pq.write_table(pa.Table.from_pylist([{"conversations": chat(i), "id": i}
                                         for i in range(160)]), path)
    stage = distils_to_a_verdict(models, path, tmp_path / "run",
                                 "--data-fields", "messages=conversations")
    assert stage["examples"] == 160 and 0 < stage["trained_tokens"] < stage["tokens"]


def test_saved_dataset_folder_distils_to_a_verdict_on_its_split(models: dict[str, str],
                                                               tmp_path: Path,
        engine_in_process) -> None:
    datasets = pytest.importorskip("datasets")
    saved = tmp_path / "saved"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list([{"messages": chat(i)} for i in range(150)]),
        "test": datasets.Dataset.from_list([{"messages": chat(i)} for i in range(7)]),
    }).save_to_disk(str(saved))
    stage = distils_to_a_verdict(models, saved, tmp_path / "run")
    assert stage["examples"] == 150  # the train split only
    out = train(models, saved, None, "--data-split", "validation", check=True,
                via=engine_in_process)
    line = refusal(out)
    assert "--data-split" in line and "no split 'validation' (it has train, test)" in line


def test_prompt_completion_jsonl_distils_to_a_verdict(models: dict[str, str],
                                                      tmp_path: Path) -> None:
    rows = [{"prompt": f"Q: what is {i} times 3?\nA:", "completion": f" {i * 3}."}
            for i in range(160)]
    stage = distils_to_a_verdict(models, write_jsonl(tmp_path / "pairs.jsonl", rows),
                                 tmp_path / "run")
    assert stage["examples"] == 160
    assert 0 < stage["trained_tokens"] < stage["tokens"] / 3  # the completions (and eos) only


def test_check_refuses_chat_data_for_a_model_without_a_chat_template(
        models: dict[str, str], tmp_path: Path,
        engine_in_process) -> None:
    data = write_jsonl(tmp_path / "chats.jsonl", [{"messages": chat(i)} for i in range(40)])
    line = refusal(train(models, data, None, check=True, plain=True, via=engine_in_process))
    assert "--data" in line and "chat template" in line and "chats.jsonl:1" in line


def test_check_names_a_bad_messages_line(models: dict[str, str], tmp_path: Path,
        engine_in_process) -> None:
    rows = [{"messages": chat(i)} for i in range(40)]
    rows[17] = {"messages": [{"role": "robot", "content": "beep"}]}
    line = refusal(train(models, write_jsonl(tmp_path / "chats.jsonl", rows), None, check=True,
                         via=engine_in_process))
    assert "chats.jsonl:18" in line and "robot" in line
    # the only file: skipping it would leave nothing, so skipping is not offered
    assert "--on-bad-file" not in line, line


def test_a_bad_file_fails_the_check_or_is_skipped_and_named_in_the_data_stage(
        models: dict[str, str], tmp_path: Path,
        engine_in_process) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "chats.jsonl", [{"messages": chat(i)} for i in range(160)])
    (data / "broken.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n'
                                       "{not json\n")
    line = refusal(train(models, data, None, check=True, via=engine_in_process))
    assert "broken.jsonl:2" in line and "not JSON" in line
    assert line.endswith("(skip bad files with --on-bad-file skip)"), line  # chats.jsonl left
    assert train(models, data, None, "--on-bad-file", "skip", check=True,
                 via=engine_in_process).returncode == 0
    stage = distils_to_a_verdict(models, data, tmp_path / "run", "--on-bad-file", "skip")
    assert stage["examples"] == 160 and stage["skipped_files"] == 1
    assert stage["skipped"][0][0] == "broken.jsonl"
    warnings = [e["message"] for e in read_events(tmp_path / "run" / "events.jsonl")
                if e["type"] == "log" and e["level"] == "warning"]
    assert any("1 bad file skipped" in w and "broken.jsonl:2" in w for w in warnings)


def test_raw_text_folder_with_a_non_utf8_file_fails_or_skips_it(models: dict[str, str],
                                                                tmp_path: Path,
        engine_in_process) -> None:
    data = tmp_path / "text"
    data.mkdir()
    for i in range(4):
        (data / f"doc{i}.txt").write_text("\n".join(
            f"def f_{i}_{j}(x):\n    return x * {j} + {i}" for j in range(80)))
    (data / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    line = refusal(train(models, data, None, "--seq-len", "32", check=True, via=engine_in_process))
    assert "latin1.txt" in line and "not UTF-8" in line and "--on-bad-file skip" in line
    run_dir = tmp_path / "run"
    out = train(models, data, run_dir, "--seq-len", "32", "--on-bad-file", "skip")
    assert out.returncode == 0, out.stderr[-3000:]
    stage = data_stage(run_dir)
    assert stage["kind"] == "text" and stage["skipped_files"] == 1
    assert stage["skipped"][0][0] == "latin1.txt" and "not UTF-8" in stage["skipped"][0][1]
    assert stage["detail"].endswith(" val tok")  # raw text's data stage as before


def test_a_text_folder_holding_other_json_files_stays_raw_text(tmp_path: Path) -> None:
    from kdengine.data.formats import is_example_data

    (tmp_path / "module.py").write_text("def f(x):\n    return x\n")
    (tmp_path / "config.json").write_text(json.dumps({"vocab": 3}))
    (tmp_path / "patch.json").write_text(json.dumps([{"op": "add", "path": "/a"}]))
    assert not is_example_data(str(tmp_path))  # the .py files are its documents
    (tmp_path / "chats.json").write_text(json.dumps([{"messages": chat(1)}]))
    assert is_example_data(str(tmp_path))


def test_validation_rows_without_trained_tokens_are_refused(models: dict[str, str],
                                                            tmp_path: Path,
        engine_in_process) -> None:
    # every user turn longer than seq_len: truncation leaves no assistant token to evaluate on
    rows = [{"messages": [{"role": "user", "content": f"{i} " + "x" * 200},
                          {"role": "assistant", "content": "ok"}]} for i in range(40)]
    line = refusal(train(models, write_jsonl(tmp_path / "long.jsonl", rows), None, check=True,
                         via=engine_in_process))
    assert "validation rows hold no trained tokens" in line and "seq_len" in line
    stage_ok = train(models, tmp_path / "long.jsonl", None, "--train-on", "all", check=True,
                     via=engine_in_process)
    assert stage_ok.returncode == 0, stage_ok.stderr


def test_two_torchrun_ranks_on_messages_follow_the_one_process_losses(
        models: dict[str, str], tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "chats.jsonl", [{"messages": chat(i)} for i in range(160)])
    one, two = tmp_path / "one", tmp_path / "two"
    assert train(models, data, one, "--steps", "6", "--eval-every", "3").returncode == 0
    out = train(models, data, two, "--steps", "6", "--eval-every", "3", launcher=TORCHRUN)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    def losses(run_dir: Path, kind: str, key: str) -> dict[int, float]:
        return {e["step"]: e[key] for e in read_events(run_dir / "events.jsonl")
                if e["type"] == kind}

    assert losses(two, "step", "loss") == pytest.approx(losses(one, "step", "loss"), rel=1e-5)
    assert losses(two, "eval", "val_loss") == pytest.approx(losses(one, "eval", "val_loss"),
                                                            rel=1e-5)
    assert data_stage(two)["examples"] == 160


def test_a_killed_run_on_messages_resumes_to_the_same_losses(models: dict[str, str],
                                                             tmp_path: Path, monkeypatch,
                                                             killed_at_step,
                                                             engine_in_process) -> None:
    data = write_jsonl(tmp_path / "chats.jsonl", [{"messages": chat(i)} for i in range(160)])
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert train(models, data, reference).returncode == 0
    monkeypatch.setenv("KD_KILL_AT", "9")
    out = train(models, data, killed, launcher=killed_at_step)
    assert out.returncode == -9, out.stderr[-2000:]
    monkeypatch.delenv("KD_KILL_AT")
    # examples changed since the checkpoint: refused before any model loads, in one line, the
    # run's record untouched (it was refused only after both models loaded, exit 1, and the
    # killed run then read as failed); --check says the same
    original = data.read_text()
    write_jsonl(data, [{"messages": chat(i + 1)} for i in range(160)])
    record = (killed / "events.jsonl").read_bytes()
    for check in ([], ["--check"]):
        out = engine_in_process("train", "--resume", str(killed), *check)
        assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
        (line,) = out.stderr.strip().splitlines()
        assert line.startswith(f"kdengine train: error: --resume: the examples of {data} are "
                               f"not the ones {killed} trained on up to step-"), line
        assert "restore that data and resume" in line and "Traceback" not in out.stderr
        assert (killed / "events.jsonl").read_bytes() == record
    data.write_text(original)  # the same examples again (a new mtime: the same content)
    out = kdengine("train", "--resume", str(killed))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    def losses(run_dir: Path, kind: str, key: str) -> dict[int, float]:
        return {e["step"]: e[key] for e in read_events(run_dir / "events.jsonl")
                if e["type"] == kind}

    assert sorted(losses(killed, "step", "loss")) == list(range(1, 13))
    assert losses(killed, "step", "loss") == losses(reference, "step", "loss")  # exact
    assert losses(killed, "eval", "val_loss") == losses(reference, "eval", "val_loss")
    started = [e for e in read_events(killed / "events.jsonl") if e["type"] == "run_started"]
    assert [e["resumed_from"] for e in started] == [None, 6]
