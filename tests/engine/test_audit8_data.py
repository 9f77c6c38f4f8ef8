"""A new user's own conversation data (the sixth audit):
- OpenAI-style content parts ([{"type": "text", "text": ...}]) in messages: a template that
  prints `{{ m.content }}` rendered their Python repr and the model was trained to write it;
- --data-split on a single file: trained on the whole file as if it were that split;
- --data-fields naming a column the data does not have: silently unused, or refused as "got str
  and NoneType" without naming the column or the flag."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kdengine.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import chat_record as chat  # noqa: E402
from conftest import one_line_in_process as one_line  # noqa: E402
from conftest import write_jsonl  # noqa: E402


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from conftest import write_chat_pair

    root = tmp_path_factory.mktemp("audit8-data")
    teacher, student = write_chat_pair(root)
    return {"root": root, "teacher": teacher, "student": student,
            "chats": write_jsonl(root / "chats.jsonl", [chat(i) for i in range(40)])}


def check(made: dict[str, Path], data: Path, *extra: str) -> list[str]:
    return ["train", "--teacher", str(made["teacher"]), "--student", str(made["student"]),
            "--data", str(data), "--seq-len", "128", "--batch-size", "2", "--device", "cpu",
            "--check", *extra]


def encoded(made: dict[str, Path], data: Path) -> list[tuple[str, str]]:
    """(rendered text, trained text) of each example of `data`."""
    from kdengine.data.chat import load_chat_template
    from kdengine.data.encode import encode_example
    from kdengine.data.formats import find_sources
    from kdengine.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(made["teacher"], "teacher")
    template = load_chat_template(made["teacher"])
    out = []
    for source in find_sources(str(data)):
        for example in source.examples():
            ids, trains = encode_example(example, tokenizer, template)
            out.append((tokenizer.decode(ids),
                        tokenizer.decode([i for i, t in zip(ids, trains, strict=True) if t])))
    return out


def test_text_parts_content_trains_the_text_not_its_python_repr(made, tmp_path) -> None:
    """OpenAI's content as a list of parts ([{"type": "text", "text": ...}]) reached a template
    that prints `{{ m.content }}`: the model was trained to write `[{'type': 'text', 'text':
    'Hi'}]`. Now text parts are the text they hold, joined (as templates that read parts join
    them), and the same conversation written with strings gives the same tokens."""
    parts = write_jsonl(tmp_path / "parts.jsonl", [{"messages": [
        {"role": "user", "content": [{"type": "text", "text": "Hello "},
                                     {"type": "text", "text": "parts"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hi from parts"}]}]}])
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"messages": [
        {"role": "user", "content": "Hello parts"},
        {"role": "assistant", "content": "Hi from parts"}]}])
    [(text, trained)] = encoded(made, parts)
    assert "'type'" not in text and trained == "Hi from parts<|im_end|>\n"
    assert encoded(made, plain) == [(text, trained)]


def test_an_image_part_is_refused_naming_the_record_and_the_part(made, tmp_path,
                                                                 capsys) -> None:
    """An image part was rendered as a Python dict and trained on as text; now it is refused,
    one line naming the record, the part and what to do."""
    rows = [chat(i) for i in range(20)]
    rows[2] = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "http://x/cat.png"}}]},
        {"role": "assistant", "content": "A cat."}]}
    data = write_jsonl(tmp_path / "vision.jsonl", rows)
    line = one_line(capsys, main(check(made, data)), "train")
    assert f"--data: {data}:3: messages[0] content[1] is a 'image_url' part" in line
    assert "text parts only" in line


def test_data_split_on_a_single_file_is_refused(made, capsys) -> None:
    """`--data-split test` on one JSONL file trained on the whole file as if it were the test
    split; the docs promise a split the data lacks is refused. Now it is, naming the flag."""
    line = one_line(capsys, main(check(made, made["chats"], "--data-split", "test")), "train")
    assert line.startswith("kdengine train: error: --data-split: ")
    assert "has no split 'test' (one file, whose name says no split: train only)" in line


def test_data_fields_column_no_record_has_is_refused(made, capsys) -> None:
    """`--data-fields text=body` on data with no `body` column trained on the records' other
    fields as if the flag were not given. Now --check refuses it, naming the column and the
    fields the data has."""
    line = one_line(capsys, main(check(made, made["chats"], "--data-fields", "text=body")),
                    "train")
    assert line.startswith("kdengine train: error: --data-fields: text=body names column "
                           "'body', which no record of")
    assert "(their fields: messages)" in line


def test_data_fields_column_missing_from_a_pair_names_the_mapping(made, tmp_path,
                                                                  capsys) -> None:
    """A typo in the mapped column (`completion=answr`) was refused as `prompt and completion
    must both be strings or both be message lists (got str and NoneType)`: not the column, nor
    the flag. Now the line names the column the record lacks, the mapping and its fields."""
    data = write_jsonl(tmp_path / "qa.jsonl", [{"question": f"q{i}?", "answer": f"a{i}"}
                                               for i in range(20)])
    line = one_line(capsys, main(check(made, data, "--data-fields",
                                       "prompt=question,completion=answr")), "train")
    assert f"{data}:1: has no column 'answr' (--data-fields completion=answr; its fields: " \
           "answer, question)" in line
