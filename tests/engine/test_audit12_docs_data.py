"""docs/data.md, as a new user meets it (the twelfth audit): an empty `.json` file is empty data,
as an empty `.jsonl` or Parquet file is, not a JSON syntax error. Before, a 0-byte `chat.json`
was refused as `chat.json:1: is not JSON (Expecting value at column 1)`, and one beside good
files in a folder stopped the run (or was skipped as a bad file)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from kdengine.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import chat_record, one_line_in_process, write_jsonl  # noqa: E402


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from conftest import write_chat_pair

    root = tmp_path_factory.mktemp("audit12-data")
    teacher, student = write_chat_pair(root)
    return {"root": root, "teacher": teacher, "student": student}


def _check(made: dict[str, Path], data: Path, *extra: str) -> int:
    return main(["train", "--teacher", str(made["teacher"]), "--student", str(made["student"]),
                 "--data", str(data), "--seq-len", "64", "--batch-size", "2", "--steps", "2",
                 "--device", "cpu", "--run-dir", str(data.parent / "run"), *extra, "--check"])


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_an_empty_json_file_is_refused_as_holding_no_examples(made, tmp_path, capsys,
                                                              content: str) -> None:
    data = tmp_path / "chat.json"
    data.write_text(content)
    line = one_line_in_process(capsys, _check(made, data), "train")
    assert line.startswith(f"kdengine train: error: --data: {data} holds no examples"), line
    assert not (tmp_path / "run").exists()


def test_an_empty_json_file_beside_good_ones_in_a_folder_adds_nothing(made, tmp_path,
                                                                      capsys) -> None:
    folder = tmp_path / "chats"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [chat_record(i) for i in range(40)])
    (folder / "b.json").write_text(json.dumps([chat_record(i) for i in range(40, 80)]))
    (folder / "c.json").write_text("")
    code = _check(made, folder)
    out = capsys.readouterr()
    assert code == 0, out.err
    assert json.loads(out.out)["ok"] is True


def _stopped_after_step_2(made: dict[str, Path], data: Path, run_dir: Path) -> None:
    """A 4-step run on `data`, left as a run killed after its step-2 checkpoint."""
    import shutil

    code = main(["train", "--teacher", str(made["teacher"]), "--student", str(made["student"]),
                 "--data", str(data), "--seq-len", "64", "--batch-size", "2", "--steps", "4",
                 "--checkpoint-every", "2", "--eval-every", "0", "--device", "cpu",
                 "--run-dir", str(run_dir)])
    assert code == 0
    shutil.rmtree(run_dir / "final")
    shutil.rmtree(sorted((run_dir / "checkpoints").glob("step-*"))[-1])
    events = run_dir / "events.jsonl"
    events.write_text("".join(line for line in events.read_text().splitlines(keepends=True)
                              if '"type":"run_finished"' not in line))


def test_a_resume_on_the_same_examples_in_a_touched_file_continues(made, tmp_path,
                                                                   engine_in_process) -> None:
    """The data's files are the same, byte for byte, with a new mtime (copied back, checked
    out again, synced to another machine without -t). Before, the checkpoint's data position
    named the token store's key, a hash of each file's size and mtime, so the resume failed
    once the models had loaded (`[train] failed: data: differs from the checkpoint's`, exit 1),
    and the run's events ended `failed`; the position is now the store's content."""
    import os

    data = write_jsonl(tmp_path / "chats.jsonl", [chat_record(i) for i in range(40)])
    run_dir = tmp_path / "run"
    _stopped_after_step_2(made, data, run_dir)
    later = data.stat().st_mtime + 60
    os.utime(data, (later, later))
    out = engine_in_process("train", "--resume", str(run_dir))
    assert out.returncode == 0, out.stderr[-2000:]
    started = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()
               if '"type":"run_started"' in line]
    assert started[-1]["resumed_from"] == 2


def test_a_resume_on_changed_examples_is_still_refused(made, tmp_path, engine_in_process) -> None:
    data = write_jsonl(tmp_path / "chats.jsonl", [chat_record(i) for i in range(40)])
    run_dir = tmp_path / "run"
    _stopped_after_step_2(made, data, run_dir)
    write_jsonl(data, [chat_record(i, answer=f"b{i}") for i in range(40)])  # as many tokens
    out = engine_in_process("train", "--resume", str(run_dir))
    # refused before any model loads (kdengine.resume.check_same_examples), exit 2
    assert out.returncode == 2 and "are not the ones" in out.stderr, out.stderr


def test_a_checkpoint_whose_position_names_the_store_key_still_resumes(made, tmp_path) -> None:
    """Checkpoints written before the position named the store's content named its key: the
    same store still matches it, another does not."""
    from kdengine.config import ConfigError, RunConfig
    from kdengine.data.examples import load_examples
    from kdengine.data.packing import PackedSampler
    from kdengine.tokenizer import load_tokenizer

    data = write_jsonl(tmp_path / "chats.jsonl", [chat_record(i) for i in range(40)])
    tokenizer = load_tokenizer(made["teacher"], "teacher")
    config = RunConfig(teacher=str(made["teacher"]), student=str(made["student"]),
                       data=str(data), seq_len=64, batch_size=2)
    loaded = load_examples(config, tokenizer, made["teacher"])
    sampler = PackedSampler(loaded.train, 2, seed=0)
    old = {**sampler.position(2), "stream": f"{loaded.store.key}:{len(loaded.train)}"}
    sampler.check_position(old, 2)
    assert sampler.position(2)["stream"] != old["stream"]  # the content, now
    with pytest.raises(ConfigError, match="differs from the checkpoint's"):
        sampler.check_position({**old, "stream": f"{'f' * 24}:{len(loaded.train)}"}, 2)


@pytest.mark.parametrize("train, test", [
    ("alpaca_train.jsonl", "alpaca_test.jsonl"),
    ("data/sft-train-00000-of-00001.jsonl", "data/sft-test-00000-of-00001.jsonl"),
    ("chats.train.jsonl", "chats.test.jsonl"),
    ("train/part.jsonl", "test/part.jsonl"),  # (named at the start: as before)
    ("training.jsonl", "eval.jsonl"),  # datasets' other words for train and test
])
def test_a_split_named_anywhere_in_a_file_name_is_that_split(made, tmp_path, capsys,
                                                              train: str, test: str) -> None:
    """As `datasets` reads a folder's splits: a split's word between separators (-._ digits
    space) anywhere in a file's name, its other words too (training; eval, testing, evaluation;
    dev, valid, val for validation). Before, only a name that began with train, test, ...
    counted, so a folder of alpaca_train.jsonl and alpaca_test.jsonl (or training.jsonl and
    eval.jsonl) had 'no split', and its test file was trained on."""
    from kdengine.data.formats import find_sources

    folder = tmp_path / "chats"
    for name, first in ((train, 0), (test, 100)):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(folder / name, [chat_record(i) for i in range(first, first + 40)])
    assert [s.path for s in find_sources(str(folder))] == [folder / train]
    assert [s.path for s in find_sources(str(folder), split="test")] == [folder / test]
    line = one_line_in_process(capsys, _check(made, folder, "--data-split", "validation"),
                               "train")
    assert line.endswith(f"--data-split: {folder} has no split 'validation' (it has train, "
                         "test)"), line


def test_a_word_that_only_holds_a_splits_name_names_no_split() -> None:
    from kdengine.data.formats import _split_of

    root = Path("/data")
    for name in ("contest.jsonl", "interval.jsonl", "latest/x.jsonl", "trainer.jsonl"):
        assert _split_of(root / name, root) is None, name
    said = {name: _split_of(root / name, root) for name in (
        "val2017.jsonl", "dev.jsonl", "valid/x.jsonl", "qa-testing.jsonl", "evaluation.jsonl")}
    assert said == {"val2017.jsonl": "validation", "dev.jsonl": "validation",
                    "valid/x.jsonl": "validation", "qa-testing.jsonl": "test",
                    "evaluation.jsonl": "test"}
