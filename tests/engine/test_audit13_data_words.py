"""Data refusals in the words a careful writer uses (JSON's kinds, not Python's type names; a
count with its noun in the right number), and a UTF-8 byte-order mark read as no text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import chat_record, one_line_in_process, write_chat_pair


@pytest.fixture(scope="module")
def chat_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_chat_pair(tmp_path_factory.mktemp("pair"))


def _check(pair: tuple[Path, Path], data: Path, capsys: pytest.CaptureFixture[str],
           *extra: str) -> str:
    """`kdengine train --check` of `data` in this process: its one refusal line."""
    from kdengine.cli import main

    teacher, student = pair
    code = main(["train", "--teacher", str(teacher), "--student", str(student), "--data",
                 str(data), "--seq-len", "64", "--check", *extra])
    return one_line_in_process(capsys, code, "train")


@pytest.mark.parametrize("name, lines, said", [
    ("raw.jsonl", ['{"text": "hello"}', "5"],
     "raw.jsonl:2 is a number, not a record (an object of fields); give each line a JSON "
     "object"),
    ("chat.jsonl", [json.dumps(chat_record(0)), "7"],
     "chat.jsonl:2: is a number, not a record (an object of fields): write it as an object "
     "with a text, messages, or prompt and completion field"),
    ("pair.jsonl", ['{"prompt": 1, "completion": "x"}'],
     "pair.jsonl:1: has a prompt that is a number and a completion that is a string: make both "
     "strings, or both lists of {role, content} messages"),
    ("calls.jsonl", [json.dumps({"messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": None, "tool_calls": {"name": "f"}}]})],
     "calls.jsonl:1: messages[1] (assistant) has tool_calls that are an object, not a list"),
    ("texts.json", None, "texts.json:record 0: has a text field that is a number, not a "
     "string: give it a string"),
    ("broken.jsonl", [json.dumps(chat_record(0)), '{"messages": [}'],
     "broken.jsonl:2: is not JSON (Expecting value at column 15): fix the line (one JSON "
     "object a line)"),
])
def test_audit13_a_record_of_the_wrong_kind_is_named_in_json_words(
        chat_pair, tmp_path, capsys, name, lines, said) -> None:
    """'is a int', 'text is a float', '(got int and str)', 'tool_calls that are a dict': Python's
    type names in a user's refusal, and a line that is not JSON said no fix; now JSON's words,
    and each line says the fix."""
    data = tmp_path / name
    data.write_text("\n".join(lines) + "\n" if lines else '[{"text": 1.5}]')
    line = _check(chat_pair, data, capsys)
    assert f"--data: {tmp_path / said}" in line, line
    for python in (" int", " float", " str", " dict", "a int"):
        assert python + "," not in line and python + ")" not in line, line


def test_audit13_one_example_is_counted_in_the_singular(chat_pair, tmp_path, capsys) -> None:
    """'has 1 examples', 'all 1 files skipped; first: ...; fix those files (the first is
    named)': now '1 example', 'its one file skipped: ...; fix that file'."""
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps(chat_record(1)) + "\n")
    line = _check(chat_pair, one, capsys)
    assert f"--data: {one} has 1 example, packed into " in line, line
    assert "1 examples" not in line
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.jsonl").write_text('{"messages": 5}\n')
    line = _check(chat_pair, folder, capsys, "--on-bad-file", "skip")
    assert f"--data: {folder} holds no examples (its one file skipped: " in line, line
    assert line.endswith("; fix that file, or give other data"), line
    raw = tmp_path / "raw"  # raw text: the preflight's own refusal said it too
    raw.mkdir()
    (raw / "a.jsonl").write_text("{bad\n")
    line = _check(chat_pair, raw, capsys, "--on-bad-file", "skip")
    assert f"--data: {raw} is empty: no text to train on (its one file skipped: {raw}/a.jsonl:1 " \
        "is not JSON: " in line, line
    assert line.endswith("; fix that file, or give other data"), line


def test_audit13_a_short_text_says_one_validation_sequence_of_its_length(
        chat_pair, tmp_path, capsys) -> None:
    """'... and one validation sequence 33': now 'one validation sequence of 33'."""
    short = tmp_path / "short.txt"
    short.write_text("h")
    line = _check(chat_pair, short, capsys)
    assert f"--data: {short} has 2 tokens (0 train, 2 validation)" in line, line
    assert "one validation sequence of 65 (give more data" in line, line


BOM = "\ufeff"


def test_audit13_a_byte_order_mark_opens_no_text_file(tmp_path) -> None:
    """Notepad writes a UTF-8 byte-order mark: a .txt's first 'word' was U+FEFF (three tokens
    the model then learned to open documents with), as raw text and as an example folder's
    text file. Now it is no text; .jsonl and .json keep reading past it."""
    from kdengine.data import ByteTokenizer, read_documents
    from kdengine.data.formats import find_sources
    from kdengine.data.text_cache import document_tokens

    text = tmp_path / "notes.txt"
    text.write_text(BOM + "def f(x):\n    return x\n", encoding="utf-8")
    assert [d.text for d in read_documents(str(text))] == ["def f(x):\n    return x\n"]
    _, ids, _ = document_tokens(str(text), ByteTokenizer(), root=tmp_path / "cache")
    assert ids[:3].tolist() == list(b"def")
    # an example folder's .txt beside conversations (read as a text record)
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "chat.jsonl").write_text(BOM + json.dumps(chat_record(1)) + "\n",
                                       encoding="utf-8")
    (folder / "notes.txt").write_text(BOM + "plain words\n", encoding="utf-8")
    (folder / "more.json").write_text(BOM + json.dumps([chat_record(2)]), encoding="utf-8")
    examples = [e for s in find_sources(str(folder)) for e in s.examples()]
    assert [e.kind for e in examples] == ["messages", "messages", "text"]
    assert examples[2].record["text"] == "plain words\n"
    assert not any(BOM in json.dumps(e.record, ensure_ascii=False) for e in examples)


def test_audit13_a_chat_template_of_the_wrong_kind_is_named_in_json_words(
        chat_pair, tmp_path, capsys) -> None:
    """tokenizer_config.json's chat_template 5 was '(got int)'; now 'is a number', and the two
    forms it may take."""
    import shutil

    from kdengine.cli import main

    teacher = tmp_path / "teacher"
    shutil.copytree(chat_pair[0], teacher)
    config = json.loads((teacher / "tokenizer_config.json").read_text())
    (teacher / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": 5}))
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps(chat_record(0)) + "\n")
    code = main(["train", "--teacher", str(teacher), "--student", str(chat_pair[1]), "--data",
                 str(data), "--check"])
    line = one_line_in_process(capsys, code, "train")
    assert line == (f"kdengine train: error: --teacher: {teacher / 'tokenizer_config.json'} "
                    "chat_template is a number: it must be a string (the template) or a list "
                    "of {\"name\", \"template\"} entries")


@pytest.mark.parametrize("name", ["notes.txt", "notes.jsonl"])
def test_audit13_text_that_is_not_utf8_is_named_by_its_line_or_as_utf16(
        chat_pair, tmp_path, capsys, name) -> None:
    """Raw text not in UTF-8 was 'cannot read FILE: not UTF-8 text (byte 9135)', an offset in
    the whole file; it now names the line and the byte on it, and a UTF-16 file (PowerShell's
    `>` writes one) is named as such, with the fix."""
    latin = tmp_path / name
    lines = [json.dumps({"text": f"line {i}"}) if name.endswith(".jsonl") else f"line {i}"
             for i in range(3)]
    latin.write_bytes(("\n".join(lines) + "\n").encode() + b"caf\xe9\n")
    line = _check(chat_pair, latin, capsys)
    assert f"--data: {latin}:4 is not UTF-8 text (byte 3 of the line); save the file as " \
        "UTF-8" in line, line
    wide = tmp_path / f"wide{Path(name).suffix}"
    wide.write_bytes(("\n".join(lines) + "\n").encode("utf-16"))
    line = _check(chat_pair, wide, capsys)
    assert f"--data: {wide} is UTF-16 text, not UTF-8 (PowerShell's > and Notepad's 'Unicode' " \
        "write it); save it as UTF-8" in line, line
