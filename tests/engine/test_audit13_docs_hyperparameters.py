"""Audit 13: docs/hyperparameters.md's promises about refusals, checked through `kdengine train`
in this process. "A value set in a `--config` file is named as the file spells it
(`max_new_tokens in run.toml: ...`)": the table's last row (options of example data on raw text)
named a --flag the user never typed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import RAW_TEXT_REFUSALS, one_line_in_process, write_tiny_inputs  # noqa: E402

from kdengine.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_tiny_inputs(tmp_path_factory.mktemp("audit13-hyper"))


def _file_value(flag: str, value: str) -> str:
    return f'{flag[2:].replace("-", "_")} = "{value}"\n'


@pytest.mark.parametrize("flag, value, said", RAW_TEXT_REFUSALS)
def test_an_example_data_option_set_in_a_config_file_is_named_as_the_file_spells_it(
        inputs, tmp_path: Path, capsys, flag: str, value: str, said: str) -> None:
    run_dir = tmp_path / "run"
    config = tmp_path / "run.toml"
    config.write_text("".join(f'{k} = "{v}"\n' for k, v in inputs.items())
                      + 'seq_len = 32\nbatch_size = 2\nsteps = 2\n' + _file_value(flag, value))
    code = main(["train", "--config", str(config), "--run-dir", str(run_dir)])
    line = one_line_in_process(capsys, code, "train")
    name = flag[2:].replace("-", "_")
    assert line == f"kdengine train: error: {name} in {config}: {said.split(': ', 1)[1]}", line
    assert not run_dir.exists()
    # the same value given as a flag beside the file is the flag's, and named so
    code = main(["train", "--config", str(config), "--run-dir", str(run_dir), flag, value])
    assert one_line_in_process(capsys, code, "train") == f"kdengine train: error: {said}"
    assert not run_dir.exists()


@pytest.mark.parametrize("in_file, said", [
    ("jsd_beta = 0.2\n", "jsd_beta in {}: is the JSD's mixture weight, and --loss forward_kl "
     "has none: set --loss jsd, or leave it at its default (0.5)"),
    ('loss = "jsd"\njsd_beta = 2\n', "jsd_beta in {}: must be a number >= 0 and <= 1 (got 2)"),
], ids=["unused", "out-of-bounds"])
def test_a_value_under_its_older_name_in_a_config_file_is_named_as_the_file_spells_it(
        inputs, tmp_path: Path, capsys, in_file: str, said: str) -> None:
    # an older run.toml or config.json (jsd_beta, now beta) still reads: a refusal of its value
    # names the key the file has, not one the user will not find in it
    config = tmp_path / "old.toml"
    config.write_text("".join(f'{k} = "{v}"\n' for k, v in inputs.items())
                      + "seq_len = 32\n" + in_file)
    run_dir = tmp_path / "run"
    code = main(["train", "--config", str(config), "--run-dir", str(run_dir)])
    assert one_line_in_process(capsys, code, "train") == \
        "kdengine train: error: " + said.format(config)
    assert not run_dir.exists()
