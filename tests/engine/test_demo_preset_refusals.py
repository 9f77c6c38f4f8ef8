"""A cross-field refusal caused by a value of the --demo preset names it as the preset's and
gives the fix. `kdengine train --demo --steps 10` was refused `--warmup-steps: must be below steps
(10) (got 25)`: a flag the user never gave (the preset's warm-up). Each rule that compares two
fields, one of which the preset set, is checked both ways; a value the user gave himself keeps
the plain refusal."""

from __future__ import annotations

import pytest

from kdengine.cli import main
from kdengine.config import ConfigError, RunConfig, demo_config, validate_with_preset

PREFIX = "kdengine train: error: "


def refusal(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = main(["train", "--demo", *argv, "--check"])
    out = capsys.readouterr()
    err = out.err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Traceback" not in out.err, out.err
    assert err[0].startswith(PREFIX), err[0]
    return err[0][len(PREFIX):]


def passes(capsys: pytest.CaptureFixture[str], *argv: str) -> None:
    code = main(["train", "--demo", *argv, "--check"])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()


def test_demo_with_fewer_steps_than_its_warmup_names_the_presets_warmup(capsys) -> None:
    assert refusal(capsys, "--steps", "10") == (
        "--warmup-steps: the --demo preset's 25 must be below --steps 10: give a "
        "--warmup-steps below 10 (0 for none), or --steps above 25")
    passes(capsys, "--steps", "10", "--warmup-steps", "2")  # each fix it names passes
    passes(capsys, "--steps", "10", "--warmup-steps", "0")
    passes(capsys, "--steps", "26")


def test_a_warmup_past_the_demos_steps_names_the_presets_steps(capsys) -> None:
    assert refusal(capsys, "--warmup-steps", "600") == (
        "--warmup-steps: must be below the --demo preset's steps (500) (got 600): give a "
        "--warmup-steps below 500, or --steps above 600")
    passes(capsys, "--warmup-steps", "600", "--steps", "601")


def test_a_max_new_tokens_past_the_demos_seq_len_names_the_presets_seq_len(capsys) -> None:
    assert refusal(capsys, "--lmbda", "1", "--max-new-tokens", "200") == (
        "--max-new-tokens: must be below the --demo preset's seq_len (128) so a prompt keeps a "
        "token (got 200): give a --max-new-tokens below 128, or a --seq-len above 200")
    passes(capsys, "--lmbda", "1", "--max-new-tokens", "200", "--seq-len", "256")


def test_values_the_user_gave_both_keep_the_plain_refusal(capsys) -> None:
    line = refusal(capsys, "--steps", "10", "--warmup-steps", "25")
    assert line == "--warmup-steps: must be below steps (10) (got 25)"
    line = refusal(capsys, "--lmbda", "1", "--max-new-tokens", "64", "--seq-len", "64")
    assert "preset" not in line and line.startswith("--max-new-tokens: must be below --seq-len")


def test_every_field_the_preset_sets_is_checked_against_a_users_value() -> None:
    """The rules that compare two fields, with one side the preset's: each one's refusal names
    the preset (a new preset value or rule shows up here)."""
    preset = demo_config()
    cases = {"steps": {"steps": 3}, "warmup_steps": {"warmup_steps": 900},
             "max_new_tokens": {"lmbda": 1.0, "max_new_tokens": 300},
             "seq_len": {"lmbda": 1.0, "seq_len": 32}}
    for chosen, values in cases.items():
        config = preset.with_values(**values)
        with pytest.raises(ConfigError) as refused:
            validate_with_preset(config, preset, chosen=set(values))
        assert "--demo preset's" in str(refused.value), (chosen, refused.value)
    assert validate_with_preset(RunConfig(teacher="t", student="s", data="d"), None, ()) \
        .steps == RunConfig().steps
