"""Audit 14: `kdengine`'s help and refusals, read as a new user reads them (getting-started.md):
each names the flag as it is typed and says what is wrong with what was given."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kdengine.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import one_line_in_process  # noqa: E402


def test_an_unreadable_config_file_is_refused_under_the_flag_that_named_it(
        capsys, tmp_path) -> None:
    """It said 'config: cannot read ...': the user typed --config."""
    missing = tmp_path / "nope.toml"
    line = one_line_in_process(capsys, main(["train", "--config", str(missing)]), "train")
    assert line.startswith(f"kdengine train: error: --config: cannot read {missing}: "), line


def test_max_new_tokens_past_seq_len_names_the_seq_len_flag(capsys) -> None:
    """'must be below seq_len (128) ...: lower it or raise seq_len' on the command line."""
    code = main(["train", "--check", "--teacher", "demo://teacher", "--student",
                 "demo://student", "--data", "demo://python-stdlib", "--lmbda", "1",
                 "--seq-len", "128", "--max-new-tokens", "200"])
    line = one_line_in_process(capsys, code, "train")
    assert line == ("kdengine train: error: --max-new-tokens: must be below --seq-len (128) so "
                    "a prompt keeps a token (got 200): lower it or raise --seq-len"), line


def test_resume_of_a_directory_that_does_not_exist_says_so(capsys, tmp_path, monkeypatch
                                                           ) -> None:
    """`--resume nowhere` said 'nowhere holds no config.json: not a kdengine run dir'; given the
    run's name (as `kdtui resume` takes it), it now says where that run is."""
    monkeypatch.chdir(tmp_path)
    line = one_line_in_process(capsys, main(["train", "--resume", "nowhere"]), "train")
    assert line == ("kdengine train: error: --resume: nowhere does not exist (give the run's "
                    "directory, the one that holds its config.json)"), line
    runs = tmp_path / "runs"  # KDENGINE_RUNS_DIR (conftest)
    (runs / "my-first-kd").mkdir(parents=True)
    (runs / "my-first-kd" / "config.json").write_text("{}")
    line = one_line_in_process(capsys, main(["train", "--resume", "my-first-kd"]), "train")
    named = runs / "my-first-kd"
    assert line == (f"kdengine train: error: --resume: my-first-kd does not exist (the run of "
                    f"that name is {named}: kdengine train --resume {named})"), line


def test_the_stop_flag_s_help_says_its_escapes_once(capsys) -> None:
    """'--stop ... (escapes \\n \\t \\\\ are read) (text whose backslashes start an escape:
    \\n (newline), ...)': the same rule twice in one help line."""
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    start = text.index("--stop STOP Text")
    stop_help = text[start:text.index("--sample-every SAMPLE_EVERY", start)]
    assert stop_help.count("\\t") == 1, stop_help
