"""A hub dataset's splits as `datasets` names them: ultrachat_200k's train_sft, test_sft,
train_gen and test_gen are four splits (push_to_hub's data/<split>-NNNNN-of-NNNNN files, or the
dataset card's `configs`), not one 'train' and one 'test' made of two each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import (
    chat_record,
    offline_hub,
    one_line_in_process,
    put_in_hub_cache,
    write_chat_pair,
)

ULTRACHAT = ("train_sft", "test_sft", "train_gen", "test_gen")


def _jsonl(first: int, count: int) -> str:
    return "".join(json.dumps(chat_record(i)) + "\n" for i in range(first, first + count))


def _ultrachat_files() -> dict[str, str]:
    """ultrachat_200k's layout (data/<split>-00000-of-0000N-<hash>.<suffix>), 10 records a
    split, each split's first record numbered apart (split i holds q{100 i}...)."""
    return {f"data/{split}-00000-of-00001-a3ecf927.jsonl": _jsonl(100 * i, 10)
            for i, split in enumerate(ULTRACHAT)}


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf" / "hub"
    offline_hub(monkeypatch, cache, tmp_path / "hf")
    return cache


def _first_question(sources) -> list[str]:
    return [next(iter(s.examples())).record["messages"][0]["content"] for s in sources]


def test_audit13_push_to_hub_splits_are_each_their_own(hub) -> None:
    """--data-split train read train_sft and train_gen as one split (and train_sft was 'no
    split'); now each is its own split, picked by its name, and 'train' is refused naming the
    four."""
    from kdengine.config import ConfigError
    from kdengine.data.formats import find_sources

    put_in_hub_cache(hub, "HuggingFaceH4/ultrachat_tiny", _ultrachat_files(), kind="dataset")
    for i, split in enumerate(ULTRACHAT):
        sources = find_sources("HuggingFaceH4/ultrachat_tiny", split=split)
        assert [s.name for s in sources] == [f"data/{split}-00000-of-00001-a3ecf927.jsonl"]
        assert _first_question(sources) == [f"q{100 * i}?"]
    with pytest.raises(ConfigError) as info:
        find_sources("HuggingFaceH4/ultrachat_tiny", split="train")
    assert info.value.field == "data_split"
    assert "has no split 'train' (it has test_gen, test_sft, train_gen, train_sft)" in \
        info.value.message


def test_audit13_a_dataset_card_s_configs_say_the_splits(hub) -> None:
    """A card (README.md's YAML) that maps files to splits is followed, as `datasets` does:
    files whose names say no split (sft/chats.jsonl, holdout/chats.jsonl) were all 'train' and
    the card's test split was refused; each is now the card's split."""
    from kdengine.data.formats import find_sources

    card = ("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
            "    path: sft/*.jsonl\n  - split: test\n    path: holdout/*.jsonl\n---\n# card\n")
    put_in_hub_cache(hub, "org/carded", {"README.md": card, "sft/chats.jsonl":
                                         _jsonl(0, 5), "holdout/chats.jsonl": _jsonl(50, 5)},
                     kind="dataset")
    assert _first_question(find_sources("org/carded", split="train")) == ["q0?"]
    assert _first_question(find_sources("org/carded", split="test")) == ["q50?"]


def test_audit13_a_folder_of_split_words_still_reads_as_before(tmp_path) -> None:
    """No card and no push_to_hub files: a split's word in a name (alpaca_train.jsonl,
    dev/...) still says the split."""
    from kdengine.data.formats import find_sources

    folder = tmp_path / "words"
    (folder / "dev").mkdir(parents=True)
    (folder / "alpaca_train.jsonl").write_text(_jsonl(0, 3))
    (folder / "dev" / "part.jsonl").write_text(_jsonl(10, 3))
    assert _first_question(find_sources(str(folder))) == ["q0?"]
    assert _first_question(find_sources(str(folder), split="validation")) == ["q10?"]


def test_audit13_the_cli_trains_on_the_split_it_is_given(hub, tmp_path, capsys) -> None:
    """`kdengine train --check --data-split train_gen` on the hub id passes, and the default
    split is refused in one line naming --data-split and the splits."""
    from kdengine.cli import main

    put_in_hub_cache(hub, "HuggingFaceH4/ultrachat_tiny", _ultrachat_files(), kind="dataset")
    teacher, student = write_chat_pair(tmp_path / "pair")
    argv = ["train", "--teacher", str(teacher), "--student", str(student), "--data",
            "HuggingFaceH4/ultrachat_tiny", "--seq-len", "64", "--batch-size", "2", "--check"]
    line = one_line_in_process(capsys, main(argv), "train")
    assert line.startswith("kdengine train: error: --data-split: ")
    assert "has no split 'train' (it has test_gen, test_sft, train_gen, train_sft)" in line
    assert main([*argv, "--data-split", "train_gen"]) == 0, capsys.readouterr().err
