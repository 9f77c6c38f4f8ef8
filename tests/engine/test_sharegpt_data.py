"""ShareGPT data ({"conversations": [{"from": "human", "value": ...}]}) trains as the
conversations it means, wherever messages do: JSONL, JSON, Parquet, save_to_disk folders and
hub datasets, the `conversations` column found on its own and any column named with
--data-fields; a `from` no ShareGPT-style set uses is one line naming the record.
(tests/engine/test_chat_templates.py checks the rendering against transformers.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from kdengine.config import ConfigError
from kdengine.data.chat import load_chat_template
from kdengine.data.formats import find_sources, is_example_data, parse_fields
from kdengine.data.store import DataOptions, open_store
from kdengine.tokenizer import load_tokenizer


def sharegpt(i: int) -> list[dict[str, str]]:
    return [{"from": "human", "value": f"What is {i} + {i}?"},
            {"from": "gpt", "value": f"{2 * i}."}]


def messages(i: int, system: str | None = None) -> list[dict[str, str]]:
    opening = [{"role": "system", "content": system}] if system else []
    return [*opening, {"role": "user", "content": f"What is {i} + {i}?"},
            {"role": "assistant", "content": f"{2 * i}."}]


# every shape public ShareGPT-style sets write, and the messages each means
RECORDS = [
    ({"id": "a", "conversations": sharegpt(1)}, messages(1)),
    ({"conversations": [{"from": "system", "value": "Be brief."}, *sharegpt(2)]},
     messages(2, "Be brief.")),
    ({"system": "Be terse.", "conversations": sharegpt(3)}, messages(3, "Be terse.")),
    ({"conversations": [{"from": "user", "value": "What is 4 + 4?"},
                        {"from": "assistant", "value": "8."}]}, messages(4)),
    ({"conversations": messages(5)}, messages(5)),  # a conversations column of messages
    ({"conversations": [{"from": "human", "value": "Weather?"},
                        {"from": "function_call", "value": '{"name": "weather", '
                         '"arguments": {"city": "Paris"}}'},
                        {"from": "observation", "value": "21"},
                        {"from": "tool", "value": "22"},
                        {"from": "gpt", "value": "Mild."}]},
     [{"role": "user", "content": "Weather?"},
      {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
          "name": "weather", "arguments": {"city": "Paris"}}}]},
      {"role": "tool", "content": "21"}, {"role": "tool", "content": "22"},
      {"role": "assistant", "content": "Mild."}]),
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import write_chat_tokenizer

    return write_chat_tokenizer(tmp_path_factory.mktemp("tok"))


def messages_of(spec: Path | str, **options) -> list[list[dict]]:
    examples = [e for s in find_sources(str(spec), **options) for e in s.examples()]
    assert {e.kind for e in examples} == {"messages"}
    return [e.record["messages"] for e in examples]


def test_sharegpt_jsonl_is_found_and_read_as_the_messages_it_means(tmp_path: Path,
                                                                   tok_dir: Path) -> None:
    path = tmp_path / "sharegpt.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record, _ in RECORDS))
    assert is_example_data(str(path))  # not the raw-text stream, which reads `text` only
    assert messages_of(path) == [meant for _, meant in RECORDS]
    store = open_store(str(path), load_tokenizer(tok_dir, "teacher"),
                       load_chat_template(tok_dir), DataOptions(), tmp_path / "cache")
    assert store.meta["examples"] == len(RECORDS) and store.meta["trained_tokens"] > 0


def test_sharegpt_json_parquet_saved_and_hub_datasets_read_alike(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets
    from conftest import offline_hub, put_in_hub_cache

    records = [{"system": "Be terse." if i % 2 else "", "conversations": sharegpt(i)}
               for i in range(4)]
    meant = [messages(i, "Be terse." if i % 2 else None) for i in range(4)]
    (tmp_path / "chats.json").write_text(json.dumps(records))
    dataset = datasets.Dataset.from_list(records)
    dataset.to_parquet(str(tmp_path / "chats.parquet"))
    dataset.save_to_disk(str(tmp_path / "saved"))
    for spec in ("chats.json", "chats.parquet", "saved"):
        assert is_example_data(str(tmp_path / spec)), spec
        assert messages_of(tmp_path / spec) == meant, spec
    lines = "".join(json.dumps(r) + "\n" for r in records)
    put_in_hub_cache(tmp_path / "hub", "kd-test/sharegpt", {"data/train.jsonl": lines},
                     kind="dataset")
    offline_hub(monkeypatch, tmp_path / "hub", tmp_path / "home")
    assert messages_of("kd-test/sharegpt") == meant


def test_data_fields_name_a_column_of_sharegpt_turns(tmp_path: Path) -> None:
    path = tmp_path / "dialogs.jsonl"
    path.write_text(json.dumps({"dialog": sharegpt(1), "conversations": "not these"}) + "\n")
    fields = parse_fields("messages=dialog")
    assert is_example_data(str(path), fields)
    assert messages_of(path, fields=fields) == [messages(1)]


def test_an_unknown_from_is_one_line_naming_the_record_the_value_and_the_known_ones(
        tmp_path: Path, tok_dir: Path) -> None:
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"conversations": sharegpt(1)}) + "\n" + json.dumps(
        {"conversations": [*sharegpt(2), {"from": "bard", "value": "Hi."}]}) + "\n")
    with pytest.raises(ConfigError) as caught:
        open_store(str(path), load_tokenizer(tok_dir, "teacher"), load_chat_template(tok_dir),
                   DataOptions(), tmp_path / "cache")
    assert str(caught.value) == (
        f"data: {path}:2: conversations[2] has from 'bard'; ShareGPT's from values are "
        "human, user, gpt, assistant, system, tool, function_call, observation")  # the only
    # file: skipping it leaves nothing, so --on-bad-file skip is not offered
