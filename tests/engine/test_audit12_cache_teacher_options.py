"""Audit 12: `kdengine cache-teacher` took the options of example data (`--train-on all`,
`--on-long drop`, `--data-split test`, `--data-fields text=body`) on raw text and ignored them,
where `kdengine train` refuses them (test_audit11_text_data_options): a cache written with one
then asks every run from it for the same ignored value. The writer now refuses them by the same
rule (kdengine.preflight.unused_data_option), in one line naming the flag and the fix, before
--out exists; their defaults are taken."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import RAW_TEXT_REFUSALS, write_tiny_inputs  # noqa: E402


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_tiny_inputs(tmp_path_factory.mktemp("cache-options"))


def cache_args(inputs: dict[str, str], out: Path) -> list[str]:
    return ["cache-teacher", "--teacher", inputs["teacher"], "--data", inputs["data"],
            "--seq-len", "32", "--device", "cpu", "--dtype", "float32", "--top-k", "4",
            "--out", str(out)]


@pytest.mark.parametrize("flag, value, said", RAW_TEXT_REFUSALS)
def test_an_example_data_option_on_raw_text_is_refused_by_the_cache_writer(
        inputs, tmp_path: Path, flag: str, value: str, said: str, engine_in_process,
        one_line_refusal) -> None:
    out = tmp_path / "cache"
    for check in ((), ("--check",)):
        done = engine_in_process(*cache_args(inputs, out), flag, value, *check)
        line = one_line_refusal(done, "cache-teacher", "")
        assert line == f"kdengine cache-teacher: error: {said}", line
        assert not out.exists()


def test_their_defaults_on_raw_text_pass_the_cache_writers_check(inputs, tmp_path: Path,
                                                                 engine_in_process) -> None:
    out = tmp_path / "cache"
    done = engine_in_process(*cache_args(inputs, out), "--train-on", "completion", "--on-long",
                             "truncate", "--data-split", "train", "--data-fields", "", "--check")
    assert done.returncode == 0, done.stderr
    assert not out.exists()
