"""Every data format the engine reads, detected per record: text, messages and prompt +
completion in .jsonl, .json, .parquet, .arrow, folders, save_to_disk folders and the hub cache;
a bad record is one line naming its file and line (or row); bad files skipped or fatal."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kdengine.config import ConfigError
from kdengine.data.chat import load_chat_template
from kdengine.data.formats import find_sources, is_example_data, parse_fields
from kdengine.data.store import DataOptions, open_store
from kdengine.tokenizer import load_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import write_jsonl  # noqa: E402


def chat(i: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"What is {i} + {i}?"},
            {"role": "assistant", "content": f"{2 * i}."}]


RECORDS = [
    {"messages": chat(1)},
    {"prompt": "Capital of France:", "completion": " Paris."},
    {"prompt": chat(2)[:2], "completion": chat(2)[2:]},
    {"text": "def f(x):\n    return x\n"},
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import write_chat_tokenizer

    return write_chat_tokenizer(tmp_path_factory.mktemp("tok"))


def load(spec: Path | str, tok_dir: Path, tmp_path: Path, **options):
    return open_store(str(spec), load_tokenizer(tok_dir, "teacher"),
                      load_chat_template(tok_dir), DataOptions(**options), tmp_path / "cache")


def kinds_of(spec: Path | str, **options) -> list[tuple[str, str]]:
    sources = find_sources(str(spec), **options)
    return [(e.name, e.kind) for s in sources for e in s.examples()]



def test_jsonl_records_are_detected_one_by_one(tmp_path: Path, tok_dir: Path) -> None:
    path = write_jsonl(tmp_path / "mixed.jsonl", RECORDS)
    assert kinds_of(path) == [("mixed.jsonl:1", "messages"),
                              ("mixed.jsonl:2", "prompt_completion"),
                              ("mixed.jsonl:3", "prompt_completion"),
                              ("mixed.jsonl:4", "text")]
    store = load(path, tok_dir, tmp_path)
    assert store.meta["examples"] == 4
    assert store.meta["kinds"] == {"messages": 1, "prompt_completion": 2, "text": 1}
    assert 0 < store.meta["trained_tokens"] < store.meta["tokens"]


def test_json_array(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(RECORDS, indent=1))
    assert [k for _, k in kinds_of(path)] == ["messages", "prompt_completion",
                                              "prompt_completion", "text"]
    assert kinds_of(path)[3][0] == "data.json:record 3"


def test_parquet_arrow_and_save_to_disk(tmp_path: Path, tok_dir: Path) -> None:
    import datasets
    import pyarrow as pa
    import pyarrow.ipc

    chats = datasets.Dataset.from_list([{"messages": chat(i)} for i in range(5)])
    chats.to_parquet(str(tmp_path / "chats.parquet"))
    assert kinds_of(tmp_path / "chats.parquet")[4] == ("chats.parquet:row 4", "messages")

    with pa.OSFile(str(tmp_path / "file-format.arrow"), "wb") as sink:  # feather v2 / IPC file
        table = chats.data.table
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    assert len(kinds_of(tmp_path / "file-format.arrow")) == 5

    chats.save_to_disk(str(tmp_path / "saved"))
    arrow = next((tmp_path / "saved").glob("*.arrow"))  # datasets' own IPC stream files
    assert [k for _, k in kinds_of(arrow)] == ["messages"] * 5
    assert kinds_of(tmp_path / "saved")[0] == ("saved:row 0", "messages")

    pairs = datasets.Dataset.from_list([{"prompt": f"{i} + {i} =", "completion": f" {2 * i}"}
                                        for i in range(3)])
    datasets.DatasetDict({"train": chats, "test": pairs}).save_to_disk(str(tmp_path / "dict"))
    assert kinds_of(tmp_path / "dict", split="test")[2] == ("dict[test]:row 2",
                                                            "prompt_completion")
    with pytest.raises(ConfigError, match="has no split 'dev' \\(it has train, test\\)"):
        kinds_of(tmp_path / "dict", split="dev")
    # the same conversations give the same tokens from every container
    stores = [load(tmp_path / name, tok_dir, tmp_path) for name in
              ("chats.parquet", "file-format.arrow", "saved")]
    assert len({s.key for s in stores}) == 3
    assert all(s.tokens.tolist() == stores[0].tokens.tolist() for s in stores)
    assert all(s.trains.tolist() == stores[0].trains.tolist() for s in stores)


def test_a_folder_reads_every_file_and_picks_the_split(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    write_jsonl(data / "a.jsonl", RECORDS[:2])
    write_jsonl(data / "sub" / "b.jsonl", RECORDS[2:])
    (data / "notes.txt").write_text("plain text file\n")
    (data / ".hidden.jsonl").write_text("not json\n")
    (data / "README.md").write_text("# a dataset card\n")
    (data / "dataset_info.json").write_text("{}")
    assert [n for n, _ in kinds_of(data)] == ["a.jsonl:1", "a.jsonl:2", "notes.txt",
                                              "sub/b.jsonl:1", "sub/b.jsonl:2"]
    hub_style = tmp_path / "hub_style"
    (hub_style / "data").mkdir(parents=True)
    write_jsonl(hub_style / "data" / "train-00000-of-00001.jsonl", RECORDS[:3])
    write_jsonl(hub_style / "data" / "test-00000-of-00001.jsonl", RECORDS[3:])
    assert len(kinds_of(hub_style)) == 3
    assert kinds_of(hub_style, split="test") == [
        ("data/test-00000-of-00001.jsonl:1", "text")]


def test_field_mapping_renames_columns(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "sharegpt.jsonl",
                       [{"conversations": chat(1)}, {"question": "Q?", "answer": "A."}])
    fields = parse_fields("messages=conversations, prompt=question,completion=answer")
    assert [k for _, k in kinds_of(path, fields=fields)] == ["messages", "prompt_completion"]
    with pytest.raises(ConfigError, match="data_fields: 'msgs' is not NAME=COLUMN"):
        parse_fields("msgs")


def test_hub_dataset_id_from_the_cache_offline(tmp_path: Path, tok_dir: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import put_in_hub_cache

    cache = tmp_path / "hub"
    lines = "".join(json.dumps({"messages": chat(i)}) + "\n" for i in range(4))
    put_in_hub_cache(cache, "kd-test/chats", {"data/train.jsonl": lines,
                                              "data/test.jsonl": lines[:200] + "\n",
                                              "dataset_infos.json": "{}",
                                              "README.md": "# chats\n"}, kind="dataset")
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert [n for n, _ in kinds_of("kd-test/chats")] == [f"data/train.jsonl:{i}"
                                                         for i in range(1, 5)]
    assert load("kd-test/chats", tok_dir, tmp_path).meta["examples"] == 4
    with pytest.raises(ConfigError, match="kd-test/missing is not a local path, and not in "
                       "the local hub cache as a dataset while HF_HUB_OFFLINE=1 forbids"):
        kinds_of("kd-test/missing")


BAD = [  # (file name, content, the one-line error it must give)
    ("notjson.jsonl", '{"text": "ok"}\n{"text": \n',
     r"notjson.jsonl:2: is not JSON \(Expecting value at column 10\)"),
    ("nofields.jsonl", '{"text": "ok"}\n\n{"body": "x"}\n',
     r"nofields.jsonl:3: has no text, messages, conversations or prompt\+completion field "
     r"\(its fields: body\); name the columns with --data-fields"),
    ("role.jsonl", json.dumps({"messages": [{"role": "robot", "content": "hi"}]}) + "\n",
     r"role.jsonl:1: messages\[0\] has role 'robot'; roles are system, user, assistant, tool"),
    ("mixed.jsonl", json.dumps({"prompt": "p", "completion": [{"role": "assistant",
                                                               "content": "c"}]}) + "\n",
     r"mixed.jsonl:1: has a prompt that is a string and a completion that is a list: "
     r"make both strings, or both lists"),
    ("texttype.jsonl", '{"text": 5}\n',
     r"texttype.jsonl:1: has a text field that is a number, not a string"),
    ("latin1.jsonl", None, r"latin1.jsonl:2: is not UTF-8 text"),
    ("object.json", '{"a": 1}', r"object.json: must hold a JSON array of records"),
    ("broken.parquet", "PAR1 not really", r"broken.parquet: is not a readable parquet file"),
    ("empty.jsonl", json.dumps({"messages": []}) + "\n",
     r"empty.jsonl:1: messages must be a non-empty list"),
    ("unterminated.jsonl", '{"text": "ok"}\n{"text": "no end\n',
     r"unterminated.jsonl:2: is not JSON \(Unterminated string starting at column 10\)"),
    ("broken.json", '[{"text": "ok"},\n {"text": "x",}]',
     r"broken.json:2: is not JSON \(Expecting property name enclosed in double quotes at "
     r"column 15\)"),
]


def write_bad(path: Path, content: str | None) -> None:
    if content is None:
        path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    else:
        path.write_text(content)


@pytest.mark.parametrize(("name", "content", "message"), BAD, ids=[b[0] for b in BAD])
def test_each_bad_format_is_one_line_naming_file_and_line(tmp_path: Path, tok_dir: Path,
                                                          name: str, content: str | None,
                                                          message: str) -> None:
    write_bad(tmp_path / name, content)
    with pytest.raises(ConfigError) as caught:
        load(tmp_path / name, tok_dir, tmp_path)
    text = str(caught.value)
    assert caught.value.field == "data" and "\n" not in text
    assert text.startswith("data: ") and re.search(message, text), text


def test_a_template_error_names_the_example(tmp_path: Path, tok_dir: Path) -> None:
    directory = tmp_path / "tok"
    directory.mkdir()
    for f in tok_dir.iterdir():
        (directory / f.name).write_bytes(f.read_bytes())
    (directory / "chat_template.jinja").write_text(
        "{% if messages[0].role != 'user' %}{{ raise_exception('first turn must be the "
        "user') }}{% endif %}{{ messages[0].content }}")
    write_jsonl(tmp_path / "chat.jsonl", [{"messages": chat(1)[1:]}, {"messages": chat(2)}])
    with pytest.raises(ConfigError, match=rf"^data: {re.escape(str(tmp_path))}/chat.jsonl:2: the "
                       r"chat template cannot render it \(TemplateError: first turn must be the "
                       r"user\)"):
        load(tmp_path / "chat.jsonl", directory, tmp_path)


def test_bad_files_are_skipped_counted_and_named(tmp_path: Path, tok_dir: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "a_good.jsonl", RECORDS)
    for name, content, _ in BAD[:3]:
        write_bad(data / name, content)
    with pytest.raises(ConfigError, match="nofields.jsonl:3: .* \\(skip bad files with "
                       "--on-bad-file skip\\)"):
        load(data, tok_dir, tmp_path)
    store = load(data, tok_dir, tmp_path, on_bad_file="skip")
    assert store.meta["examples"] == 4  # the bad files' good first lines are not kept
    assert store.meta["skipped_files"] == 3
    assert [name for name, _ in store.meta["skipped"]] == ["nofields.jsonl", "notjson.jsonl",
                                                           "role.jsonl"]
    assert store.meta["skipped"][1][1].startswith("notjson.jsonl:2: is not JSON")
    clean = load(data / "a_good.jsonl", tok_dir, tmp_path)
    assert store.tokens.tolist() == clean.tokens.tolist()
    assert store.names.tolist() == clean.names.tolist()  # named by their path in the folder


def test_only_bad_files_is_an_error_even_when_skipping(tmp_path: Path, tok_dir: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_bad(data / "x.jsonl", BAD[0][1])
    with pytest.raises(ConfigError, match=r"holds no examples \(its one file skipped: "
                       r"x.jsonl:2: is not JSON"):
        load(data, tok_dir, tmp_path, on_bad_file="skip")


def test_text_data_loads_neither_datasets_nor_jinja2(tmp_path: Path, tok_dir: Path) -> None:
    write_jsonl(tmp_path / "text.jsonl", [{"text": "hello"}, {"prompt": "a", "completion": "b"}])
    code = (
        "import sys; from pathlib import Path\n"
        "from kdengine.data.store import open_store\n"
        "from kdengine.tokenizer import load_tokenizer\n"
        f"s = open_store({str(tmp_path / 'text.jsonl')!r}, load_tokenizer(Path("
        f"{str(tok_dir)!r}), 'teacher'), None, root=Path({str(tmp_path / 'c')!r}))\n"
        "assert s.meta['examples'] == 2\n"
        "print(sorted(m for m in ('datasets', 'pyarrow', 'jinja2') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_raw_text_keeps_the_document_stream_and_examples_take_the_rest(tmp_path: Path) -> None:
    text = write_jsonl(tmp_path / "text.jsonl", [{"text": "a"}, {"messages": chat(1)}])
    chats = write_jsonl(tmp_path / "chats.jsonl", [{"messages": chat(1)}])
    mapped = write_jsonl(tmp_path / "mapped.jsonl", [{"dialog": chat(1)}])
    sharegpt = write_jsonl(tmp_path / "sharegpt.jsonl", [{"conversations": chat(1)}])
    (tmp_path / "doc.txt").write_text("plain")
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "tokens.json").write_text("{}")
    assert not is_example_data(str(text)) and not is_example_data(str(tmp_path / "doc.txt"))
    assert not is_example_data("demo://python-stdlib")
    assert not is_example_data(str(tmp_path / "shards"))
    assert is_example_data(str(chats))
    assert not is_example_data(str(mapped)) and is_example_data(str(sharegpt))
    assert is_example_data(str(mapped), parse_fields("messages=dialog"))
    (tmp_path / "x.json").write_text("[]")
    assert is_example_data(str(tmp_path / "x.json"))
