"""Audit 13, docs/apr-profile.md's watcher table: matching ignores leading tags and timestamps,
and `cuda ... error` is a CUDA error. Before, a panic whose message line a logger had prefixed
read "panic in thread 'main': 2026-11-30T12:00:01.123Z INFO boom", and "CUDA kernel launch
error" was an error of kind `error`, not `cuda` (only "cuda error", "cuda driver error" matched)."""

from __future__ import annotations

import pytest

from kdtui.profiles.apr.parser import parse_log


def logs(text: str) -> list[tuple[str, str]]:
    return [(e["kind"], e["message"]) for e in parse_log(text, epochs=1) if e["type"] == "log"]


@pytest.mark.parametrize("prefix", ["2026-11-30T12:00:01.123Z INFO ", "[12:00:01] [ERROR] ",
                                    "2026-11-30 12:00:01,5 WARN "])
def test_a_panic_message_is_read_without_its_loggers_prefix(prefix: str) -> None:
    text = f"{prefix}thread 'main' panicked at src/a.rs:1:2:\n{prefix}boom: device lost\n"
    assert logs(text) == [("panic", "panic in thread 'main': boom: device lost at src/a.rs:1:2")]


@pytest.mark.parametrize("line", ["cuda launch error: invalid argument",
                                  "[t=3s] CUDA kernel launch error", "cuda error: x",
                                  "CUDA driver error 700"])
def test_cuda_something_error_is_a_cuda_error(line: str) -> None:
    assert logs(line + "\n") == [("cuda", line.strip())]


@pytest.mark.parametrize("line", ["Using cuda backend, no errors", "cuda: 0 errors"])
def test_cuda_lines_without_an_error_are_not_errors(line: str) -> None:
    assert logs(line + "\n") == []
