"""Hidden files and folders (`.DS_Store`, `.hidden.txt`, `.git/`, macOS's `._name` copies) are
not data: raw-text folders and pre-tokenized shard folders skip them as example folders do, and
the text cache's key does not change when one of them does."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def text_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("def a():\n    return 1\n" * 20)
    (folder / "sub" / "b.md").write_text("# b\n" * 20)
    (folder / ".hidden.txt").write_bytes(b"\xff\xfe not UTF-8")  # would stop a run if read
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / ".git").mkdir()
    (folder / ".git" / "notes.md").write_text("not training data\n")
    (folder / "sub" / "._b.md").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    return folder


def test_a_raw_text_folder_skips_hidden_files_and_folders(text_folder) -> None:
    from kdengine.data import read_documents

    assert [d.name for d in read_documents(str(text_folder))] == ["a.txt", "sub/b.md"]


def test_a_folder_of_hidden_text_only_is_refused_as_holding_none(tmp_path) -> None:
    from kdengine.config import ConfigError
    from kdengine.data import read_documents

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / ".notes.txt").write_text("hidden\n")
    with pytest.raises(ConfigError, match="holds no .txt"):
        read_documents(str(tmp_path / "d"))


def test_the_text_cache_key_ignores_hidden_files(text_folder) -> None:
    from kdengine.data import ByteTokenizer
    from kdengine.data.text_cache import text_key

    def key() -> str:
        return text_key(text_folder, ByteTokenizer(), "text", "fail")

    before = key()
    (text_folder / ".DS_Store").write_bytes(b"changed by Finder")
    os.utime(text_folder / ".DS_Store", ns=(1, 1))
    assert key() == before


def test_a_shard_folder_skips_hidden_bin_files(tmp_path) -> None:
    from kdengine.data import shard_files

    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "tokens.json").write_text('{"format": "kdengine-tokens", "dtype": "uint16", '
                                        '"eos_id": 256}')
    np.array([1, 2, 256], dtype="<u2").tofile(folder / "shard-000.bin")
    (folder / "._shard-000.bin").write_bytes(b"\x00\x05\x16")  # odd size: refused if read
    files, _, _ = shard_files(str(folder))
    assert [f.name for f in files] == ["shard-000.bin"]
