"""Audit 11: options of example data on raw text. `--train-on all`, `--on-long drop`,
`--data-split test` and `--data-fields text=body` on a folder of .txt files (or .bin shards,
or the demo's text) were taken and ignored: raw text is packed into seq_len windows whose every
token trains, has no example to cut or leave out, no splits and no columns
(docs/hyperparameters.md: a run never takes a value and then ignores it; docs/data.md: a mapped
column is never silently unused). Each is refused now in one line naming the flag and the fix,
before a run directory exists; its default counts as unset, and a --resume checks none of it."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import RAW_TEXT_REFUSALS, tiny_run_args, write_tiny_inputs  # noqa: E402


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_tiny_inputs(tmp_path_factory.mktemp("text-options"))


@pytest.mark.parametrize("flag, value, said", RAW_TEXT_REFUSALS)
def test_an_example_data_option_on_raw_text_is_refused(inputs, tmp_path: Path, flag: str,
                                                       value: str, said: str,
                                                       engine_in_process,
                                                       one_line_refusal) -> None:
    run_dir = tmp_path / "run"
    done = engine_in_process(*tiny_run_args(inputs, run_dir, steps=2), flag, value)
    line = one_line_refusal(done, "train", "")
    assert line == f"kdengine train: error: {said}", line
    assert not run_dir.exists()


def test_their_defaults_on_raw_text_and_a_resume_are_taken(inputs, tmp_path: Path,
                                                          engine_in_process) -> None:
    run_dir = tmp_path / "run"
    args = tiny_run_args(inputs, run_dir, steps=2, checkpoint_every=1, eval_every=0)
    defaults = ["--train-on", "completion", "--on-long", "truncate", "--data-split", "train",
                "--data-fields", ""]
    assert engine_in_process(*args, *defaults, "--check").returncode == 0
    done = engine_in_process(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    # a run started before this rule (its config.json says train_on all), killed after its
    # step-1 checkpoint: it resumes as it was
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "train_on": "all"}))
    shutil.rmtree(run_dir / "checkpoints" / "step-00000002")
    (run_dir / "events.jsonl").write_text("".join(
        line for line in (run_dir / "events.jsonl").read_text().splitlines(keepends=True)
        if '"run_finished"' not in line))
    resumed = engine_in_process("train", "--resume", str(run_dir), "--check")
    assert resumed.returncode == 0, resumed.stderr
