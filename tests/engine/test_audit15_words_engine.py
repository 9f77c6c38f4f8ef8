"""kdengine's words the audit-14 helpers left (audit 15): the --demo preset's max_new_tokens
blamed on the user once the teacher was their own; a float16 overflow's fix written as a
config-file key on the command line; a bare `kdengine` printing its help to stdout with exit 2;
`(a value; ...)` in a flag's help."""

from __future__ import annotations

import pytest

from kdengine.cli import main
from kdengine.config import FIELDS_BY_NAME, RunConfig, demo_config

FIX_SAMPLE = ("only an on-policy run (--lmbda > 0) or --seq-kd samples completions: set --lmbda "
              "above 0 or --seq-kd, or leave it at its default")


def _line(capsys: pytest.CaptureFixture[str], code: int) -> str:
    out = capsys.readouterr()
    assert code == 2 and out.out == "" and "Traceback" not in out.err, out
    lines = out.err.strip().splitlines()
    assert len(lines) == 1, out.err
    return lines[0]


# -- 1. the preset's own values are the preset's, whatever the teacher -----------------------
def test_demo_with_their_own_teacher_is_not_refused_for_the_presets_max_new_tokens(
        capsys, tmp_path) -> None:
    mine = tmp_path / "my-teacher"  # not there: the check's refusal, not the preset's 64
    line = _line(capsys, main(["train", "--demo", "--teacher", str(mine), "--check"]))
    assert line.startswith(f"kdengine train: error: --teacher: {mine} does not exist"), line
    # the preset's 64 stays the run's (half the preset's seq_len: an on-policy prompt's room)
    config = demo_config(teacher=str(mine), run_name="mine").validate(require_models=False)
    assert config.max_new_tokens == 64 and config.unused_value() is None


def test_demo_with_their_own_teacher_still_refuses_a_max_new_tokens_they_typed(
        capsys, tmp_path) -> None:
    line = _line(capsys, main(["train", "--demo", "--teacher", str(tmp_path / "t"),
                               "--max-new-tokens", "10", "--check"]))
    # leaving the flag out gives the preset's 64, not the field's 128
    assert line == (f"kdengine train: error: --max-new-tokens: {FIX_SAMPLE} (the demo preset's "
                    "64)")


def test_a_config_json_of_a_demo_run_with_its_own_teacher_loads_again(capsys, tmp_path) -> None:
    """A run's config.json holds every field: the one `--demo --teacher DIR` wrote, given to
    --config, was refused for the preset's max_new_tokens it holds."""
    ran = tmp_path / "config.json"
    ran.write_text(demo_config(teacher=str(tmp_path / "t"), run_name="again").to_json())
    line = _line(capsys, main(["train", "--config", str(ran), "--check"]))
    assert "max_new_tokens" not in line and line.startswith(
        f"kdengine train: error: teacher in {ran}: "), line
    assert RunConfig.from_mapping({"max_new_tokens": 64}).unused_value() is None
    assert FIELDS_BY_NAME["max_new_tokens"].default == 128


# -- 4. float16's fix as the command line writes it --------------------------------------------
def test_float16_under_torchrun_names_the_dtype_flag_in_its_fix() -> None:
    from kdengine.config import ConfigError
    from kdengine.preflight import check_torchrun_config

    with pytest.raises(ConfigError) as refused:
        check_torchrun_config(8, "float16", env={"WORLD_SIZE": "2"})
    assert refused.value.field == "dtype"
    assert refused.value.message.endswith("use --dtype bfloat16 (or float32)"), refused.value


# -- 5. a bare command is a usage error, in both programs --------------------------------------
def test_bare_kdengine_is_one_usage_line_on_stderr_as_a_bare_kdtui_command_is(capsys) -> None:
    from kdtui.cli import main as kdtui_main

    assert _line(capsys, main([])) == ("kdengine: error: give a command: train, cache-teacher, "
                                       "verdict, version (`kdengine --help` says what each does)")
    assert _line(capsys, kdtui_main(["watch"])).startswith("kdtui watch: error: ")
    assert main(["--help"]) == 0  # help asked for: stdout, exit 0
    assert capsys.readouterr().out.startswith("usage: kdengine {train,")


# -- 6. a flag's help as a new user reads it ---------------------------------------------------
def test_train_help_says_what_a_models_flag_needs_not_a_value() -> None:
    from kdengine.cli import build_train_parser

    text = " ".join(build_train_parser().format_help().split())
    assert "(a value;" not in text, "'(a value; ...)' says nothing of what to give"
    assert "or demo://teacher (required unless --demo or --teacher-cache)" in text
    assert "or demo://student (required unless --demo)" in text
    assert "or demo://python-stdlib (required unless --demo)" in text
    assert "docs/teacher-cache.md) (default: none)" in text
    # a help that says what empty means is not followed by 'default: none'
    assert "(empty: <run_name> in the runs directory, KDENGINE_RUNS_DIR) (default: empty)" in text
