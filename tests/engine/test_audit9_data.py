"""A user's own conversation data (the ninth audit):
- empty assistant turns (content "") trained only `<|im_end|>`, uncounted and unsaid; data whose
  every answer was empty trained on end-of-turn tokens alone;
- examples that train nothing (no assistant turn, or every answer token past --seq-len) were
  packed, filling rows with tokens no loss term reads, and counted nowhere;
- OpenAI's legacy `function` role (and an assistant's `function_call`) were refused without
  the `tool` (tool_calls) form that replaces them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kdengine.cli import main
from kdengine.events import read_events

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import chat_record as chat  # noqa: E402
from conftest import one_line_in_process as one_line  # noqa: E402
from conftest import write_jsonl  # noqa: E402

SEQ_LEN = 128




@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from conftest import write_chat_pair

    root = tmp_path_factory.mktemp("audit9-data")
    teacher, student = write_chat_pair(root)
    rows = [chat(i) for i in range(40)]
    rows[1] = chat(1, "")  # empty answers: the first is chats.jsonl:2
    rows[7] = chat(7, "  \n")
    rows[5] = {"messages": [{"role": "user", "content": "no answer here"}]}
    rows[9] = {"messages": [{"role": "user", "content": "x" * 400},  # answer past seq_len
                            {"role": "assistant", "content": "late"}]}
    return {"root": root, "teacher": teacher, "student": student,
            "chats": write_jsonl(root / "chats.jsonl", rows)}


def argv(made: dict[str, Path], data: Path, *extra: str) -> list[str]:
    return ["train", "--teacher", str(made["teacher"]), "--student", str(made["student"]),
            "--data", str(data), "--seq-len", str(SEQ_LEN), "--batch-size", "2",
            "--device", "cpu", *extra]


def loaded(made: dict[str, Path], data: Path, **values):
    from kdengine.config import RunConfig
    from kdengine.data.examples import load_examples
    from kdengine.tokenizer import load_tokenizer

    config = RunConfig.from_mapping({"teacher": str(made["teacher"]),
                                     "student": str(made["student"]), "data": str(data),
                                     "seq_len": SEQ_LEN, "batch_size": 2, **values})
    return load_examples(config, load_tokenizer(made["teacher"], "teacher"), made["teacher"])


def test_empty_answers_and_examples_that_train_nothing_are_counted(made) -> None:
    """Two empty answers and two examples that train nothing were trained and packed unsaid;
    now the data's stats count them, name the first empty answer, and the two that train
    nothing are in no row."""
    data = loaded(made, made["chats"])
    stats = data.stats
    assert (stats.answers, stats.empty_answers, stats.first_empty_answer) == \
        (39, 2, "chats.jsonl:2")
    assert (stats.no_answer, stats.answer_past_seq_len) == (1, 1)
    packed = set(data.train.segments[:, 0].tolist()) | set(data.val.segments[:, 0].tolist())
    assert packed == set(range(40)) - {5, 9}
    assert data.train.untrained + data.val.untrained == 2
    assert stats.examples == 40 and stats.truncated == 0  # the cut-off one is not packed


def test_a_run_says_the_counts_in_its_data_stage_and_log(made, tmp_path, capsys) -> None:
    """The data stage's event carries the counts, and the log says them in words (the empty
    answers as a warning the run screen highlights); --check says them on stderr."""
    assert main(argv(made, made["chats"], "--check")) == 0
    said = capsys.readouterr().err
    assert "data: 2 examples train nothing and are left out of the rows" in said
    assert 'WARNING: data: 2 of 39 assistant turns (or completions) are empty' in said
    run_dir = tmp_path / "run"
    assert main(argv(made, made["chats"], "--steps", "2", "--eval-every", "2",
                     "--eval-batches", "1", "--checkpoint-every", "2",
                     "--run-dir", str(run_dir))) == 0
    done = next(e for e in read_events(run_dir / "events.jsonl")
                if e.get("stage") == "data" and e.get("state") == "done")
    assert (done["empty_answers"], done["answers"], done["no_answer"],
            done["answer_past_seq_len"]) == (2, 39, 1, 1)
    log = (run_dir / "launch.log").read_text()
    assert "data: 2 examples train nothing and are left out of the rows (1 with no assistant " \
           "turn or completion, 1 whose trained tokens all lie past seq_len)" in log
    assert 'WARNING: data: 2 of 39 assistant turns (or completions) are empty (content ""; ' \
           "the first: chats.jsonl:2): each trains only its end-of-turn token" in log


def test_data_whose_every_answer_is_empty_is_refused(made, tmp_path, capsys) -> None:
    """Every assistant turn empty (the answers under another key, say) trained `<|im_end|>`
    alone; now --check refuses it in one line naming the first; a run that never trains on the
    data's answers (--lmbda 1 samples its own) takes it as prompts."""
    data = write_jsonl(tmp_path / "empty.jsonl", [chat(i, "") for i in range(20)])
    line = one_line(capsys, main(argv(made, data, "--check")), "train")
    assert line == (f"kdengine train: error: --data: {data}: all 20 assistant turns (or "
                    "completions) are empty (content \"\"; the first: empty.jsonl:1), so only "
                    "their end-of-turn token would train: give the answers' text (in another "
                    "field? name it with --data-fields)")
    assert not (tmp_path / "runs").exists()
    assert main(argv(made, data, "--check", "--lmbda", "1", "--max-new-tokens", "16")) == 0


def test_legacy_function_role_is_refused_suggesting_tool(made, tmp_path, capsys) -> None:
    """OpenAI's legacy `function` role was refused as `roles are system, user, assistant,
    tool` with no word of the rename; now the line names the record, the turn and the fix."""
    rows = [chat(i) for i in range(20)]
    rows[3] = {"messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "function": {"name": "weather", "arguments": {}}}]},
        {"role": "function", "name": "weather", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."}]}
    data = write_jsonl(tmp_path / "fn.jsonl", rows)
    line = one_line(capsys, main(argv(made, data, "--check")), "train")
    assert line == (f"kdengine train: error: --data: {data}:4: messages[2] has role 'function', "
                    "OpenAI's legacy role for a function's result; write it as role 'tool' (its "
                    "name and content as they are; the call before it as the assistant's "
                    "tool_calls)")


def test_legacy_function_call_is_refused_not_trained_as_nothing(made, tmp_path,
                                                                capsys) -> None:
    """An assistant's legacy `function_call` (content "") trained only `<|im_end|>`: templates
    read tool_calls. Now it is refused, naming the turn and the tool_calls form."""
    rows = [chat(i) for i in range(20)]
    rows[0] = {"messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "",
         "function_call": {"name": "weather", "arguments": "{}"}}]}
    data = write_jsonl(tmp_path / "call.jsonl", rows)
    line = one_line(capsys, main(argv(made, data, "--check")), "train")
    assert f"--data: {data}:1: messages[1] (assistant) has a function_call, OpenAI's legacy " \
           "form of a tool call; write it as tool_calls: [{\"type\": \"function\"" in line


def one_bad(made, tmp_path, capsys, record: dict, name: str = "bad.jsonl") -> str:
    """--check's one line for 20 good chats with `record` as the third."""
    rows = [chat(i) for i in range(20)]
    rows[2] = record
    data = write_jsonl(tmp_path / name, rows)
    line = one_line(capsys, main(argv(made, data, "--check")), "train")
    assert line.startswith(f"kdengine train: error: --data: {data}:3: "), line
    return line.split(f"{data}:3: ", 1)[1]


@pytest.mark.parametrize(("role", "ours"), [("human", "user"), ("USER", "user"),
                                            ("model", "assistant"), ("gpt", "assistant")])
def test_a_role_another_format_uses_is_refused_naming_ours(made, tmp_path, capsys, role,
                                                           ours) -> None:
    """`human`, `model` (Gemma's), `USER` were refused listing our roles, leaving the user to
    guess which one they meant; the line now says which to write."""
    said = one_bad(made, tmp_path, capsys, {"messages": [
        {"role": "user", "content": "q"}, {"role": role, "content": "x"}]})
    assert said == (f"messages[1] has role {role!r}; roles are system, user, assistant, tool "
                    f"(write {ours!r} for {role!r})")


def test_content_that_is_not_text_says_what_to_give(made, tmp_path, capsys) -> None:
    """A number, or no content, was `has no text content`, with no fix; now the line says
    what it has and what to give."""
    said = one_bad(made, tmp_path, capsys, {"messages": [
        {"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]})
    assert said == ("messages[0] (user) has content that is a number: give it a string (\"\" where "
                    "it says nothing), a list of text parts, or, for the assistant, tool_calls")
    said = one_bad(made, tmp_path, capsys, {"conversations": [
        {"from": "human", "value": "q"}, {"from": "gpt"}]}, "sharegpt.jsonl")
    assert said.startswith("conversations[1] (assistant) has no content: give it a string")


def test_tool_calls_that_are_not_a_list_of_calls_are_refused(made, tmp_path, capsys) -> None:
    """tool_calls written as a string passed, and reached the template as text to iterate;
    now the record is refused naming the form to write."""
    said = one_bad(made, tmp_path, capsys, {"messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "", "tool_calls": "weather()"}]})
    assert said.startswith("messages[1] (assistant) has tool_calls that are a string, not a list "
                           "of calls: write [{\"type\": \"function\"")


def test_a_saved_dataset_refuses_a_split_it_lacks(made, tmp_path, capsys) -> None:
    """`--data-split test` on a saved Dataset (not a DatasetDict) trained on the whole of it as
    if it were the test split; the docs promise a split the data lacks is refused. It is now,
    as for a single file."""
    datasets = pytest.importorskip("datasets")
    saved = tmp_path / "saved"
    datasets.Dataset.from_list([chat(i) for i in range(20)]).save_to_disk(str(saved))
    capsys.readouterr()  # datasets' progress bars
    line = one_line(capsys, main(argv(made, saved, "--check", "--data-split", "test")), "train")
    assert line == (f"kdengine train: error: --data-split: {saved} has no split 'test' (one "
                    "saved Dataset, not a DatasetDict: train only)")
    assert main(argv(made, saved, "--check")) == 0


def test_a_folder_of_text_and_conversation_files_reads_as_examples(made, tmp_path) -> None:
    """A folder whose first JSONL file (by name) holds text and a later one conversations was
    read as raw text, only the first file's first record looked at, and refused at the
    conversation file's first line; the docs promise text mixed with other kinds is an example.
    Every file's first record is looked at now: the folder is examples."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [{"text": f"note {i} " * 8} for i in range(10)])
    write_jsonl(folder / "b.jsonl", [chat(i) for i in range(20)])
    from kdengine.config import RunConfig
    from kdengine.loading import load_data
    from kdengine.tokenizer import load_tokenizer

    config = RunConfig.from_mapping({"teacher": str(made["teacher"]),
                                     "student": str(made["student"]), "data": str(folder),
                                     "seq_len": SEQ_LEN, "batch_size": 2})
    data = load_data(config, load_tokenizer(made["teacher"], "teacher"), made["teacher"])
    assert data.store.meta["kinds"] == {"text": 10, "messages": 20}


def test_a_text_first_jsonl_with_conversations_names_the_cause(made, tmp_path,
                                                               capsys) -> None:
    """A JSONL file whose first record is text and a later one a conversation was refused
    with `has no text ... field (its fields: messages); ... e.g. messages=messages`, a mapping
    of the column to itself that changes nothing. The line now says why it was read as text and
    what to do."""
    data = write_jsonl(tmp_path / "notes.jsonl", [{"text": "hello " * 8}, chat(1)])
    line = one_line(capsys, main(argv(made, data, "--check")), "train")
    assert line == (f"kdengine train: error: --data: {data}:2 is a messages record, but the "
                    "file's first record is text, so the file is read as raw text (a text "
                    "field a line); put a conversation or prompt/completion record first to "
                    "read every record as an example, or keep text and examples in separate "
                    "files")


def test_data_with_no_answer_at_all_is_not_told_to_raise_seq_len(made, tmp_path,
                                                                  capsys) -> None:
    """User turns only: the refusal said `give a larger seq_len or val_fraction, or --train-on
    all`, two fixes that cannot help. It now says what the held-out examples lack and the
    fixes that do."""
    data = write_jsonl(tmp_path / "asks.jsonl", [{"messages": [
        {"role": "user", "content": f"q{i}"}]} for i in range(20)])
    line = one_line(capsys, main(argv(made, data, "--check")), "train")
    assert line.startswith(f"kdengine train: error: --data: {data}: the validation rows hold "
                           "no trained tokens (of the ")
    assert line.endswith(" with no assistant turn or completion): give data with answers "
                         "(conversations with an assistant turn, or prompt/completion pairs), "
                         "or --train-on all")
