"""The apr distill schema: every kdengine field is accounted for, steps map to epochs visibly,
values apr cannot take are shown as NOT applied, and the host's --help is checked flag by flag."""

from __future__ import annotations

import pytest

from kdengine.config import FIELD_NAMES, ConfigError, RunConfig
from kdtui.profiles.apr.schema import (
    DISTILL_FLAGS,
    AprSettings,
    build_invocation,
    check_against_help,
    classify_field,
    steps_to_epochs,
)

# What aprender's apr distill --help looks like (clap), with every flag kdtui passes.
FULL_HELP = """Knowledge distillation (teacher -> student)

Usage: apr distill [OPTIONS] [TEACHER]

Arguments:
  [TEACHER]  Teacher model (.apr)

Options:
      --student <STUDENT>          Student model (.apr)
      --data <DATA>                Training data
  -o, --output <OUTPUT>            Output path
      --strategy <STRATEGY>        standard, progressive, ensemble [default: standard]
      --temperature <TEMPERATURE>  [default: 3.0]
      --alpha <ALPHA>              [default: 0.7]
      --epochs <EPOCHS>            [default: 3]
      --plan                       Show the plan only
      --backend <BACKEND>          fixture or cuda [default: fixture]
      --json                       JSON output
  -h, --help                       Print help
"""


def run_config(**values) -> RunConfig:
    base = dict(teacher="/m/teacher.apr", student="/m/student.apr", run_dir="kdtui/runs/r1")
    base.update(values)
    return RunConfig.from_mapping(base)


def test_every_kdengine_field_is_applied_not_applied_or_local():
    for name in FIELD_NAMES:
        assert classify_field(name) in ("applied", "not_applied", "local"), name


def test_steps_map_to_whole_epochs_with_a_note_that_names_the_overshoot():
    epochs, note = steps_to_epochs(500, 31)
    assert epochs == 17
    assert "--epochs 17" in note and "527 steps" in note and "27 more than asked" in note
    assert steps_to_epochs(62, 31) == (2, steps_to_epochs(62, 31)[1])
    assert "more than asked" not in steps_to_epochs(62, 31)[1]
    assert steps_to_epochs(1, 31)[0] == 1


def test_invocation_passes_exactly_the_declared_flags_in_order():
    inv = build_invocation(run_config(steps=500, temperature=2.0, alpha=0.5), AprSettings())
    assert inv.args == ("distill", "/m/teacher.apr", "--student", "/m/student.apr", "--epochs",
                        "17", "--temperature", "2.0", "--alpha", "0.5", "--backend", "cuda",
                        "--output", "kdtui/runs/r1/student", "--json")
    declared = {f.name for f in DISTILL_FLAGS}
    assert {a for a in inv.args if a.startswith("--")} <= declared
    assert inv.epochs == 17 and inv.effective_steps == 527


def test_batch_size_and_lr_are_shown_as_not_applied_and_marked_when_set():
    inv = build_invocation(run_config(batch_size=8, lr=3e-4), AprSettings())
    by_field = {n.field: n for n in inv.not_applied}
    assert by_field["batch_size"].value == 8 and by_field["batch_size"].changed
    assert by_field["lr"].value == 3e-4 and by_field["lr"].changed
    assert not by_field["seed"].changed
    lines = "\n".join(inv.lines())
    assert "NOT applied  batch_size=8" in lines and "you set this" in lines
    assert "NOT applied  lr=0.0003" in lines
    assert "--epochs 17: apr counts whole epochs" in lines  # the visible steps note
    manifest = inv.manifest()
    assert manifest["not_applied"]["batch_size"] == {
        "value": 8, "reason": by_field["batch_size"].reason, "changed_from_default": True}
    assert manifest["applied"]["steps"]["flag"] == "--epochs"
    assert set(manifest["applied"]) | set(manifest["not_applied"]) | {
        "run_name", "allow_same_teacher_student"} == set(FIELD_NAMES)


def test_teacher_equal_to_student_is_refused_unless_allowed():
    with pytest.raises(ConfigError) as err:
        build_invocation(run_config(student="/m/teacher.apr"), AprSettings())
    assert err.value.field == "student"
    inv = build_invocation(run_config(student="/m/teacher.apr", allow_same_teacher_student=True),
                           AprSettings())
    assert inv.args[1] == "/m/teacher.apr"


def test_cpu_device_is_refused_naming_the_field_and_cuda_index_is_noted():
    with pytest.raises(ConfigError) as err:
        build_invocation(run_config(device="cpu"), AprSettings())
    assert err.value.field == "device" and "use device=cuda" in str(err.value)
    inv = build_invocation(run_config(device="cuda:1"), AprSettings())
    assert "--backend" in inv.args and any("CUDA_VISIBLE_DEVICES" in n for n in inv.notes)


def test_pulled_paths_replace_hub_ids_and_the_account_says_so():
    inv = build_invocation(run_config(teacher="org/teacher", student="org/student"),
                           AprSettings(), teacher="/cache/t/model.apr",
                           student="/cache/s/model.apr")
    assert inv.args[1] == "/cache/t/model.apr" and inv.args[3] == "/cache/s/model.apr"
    assert "resolved by apr pull" in "\n".join(inv.lines())


def test_help_with_every_flag_passes_the_check():
    check = check_against_help(FULL_HELP)
    assert check.ok and check.missing == ()


def test_help_without_epochs_fails_and_names_the_flag():
    check = check_against_help(FULL_HELP.replace("--epochs <EPOCHS>", "--steps <STEPS>  "))
    assert not check.ok
    assert check.missing_required == ("--epochs",)
    assert "lacks --epochs" in check.message("gpu1")


def test_help_check_does_not_take_a_longer_flag_for_a_declared_one():
    help_text = FULL_HELP.replace("--student <STUDENT>", "--student-init <S>").replace(
        "-o, --output <OUTPUT>", "    --output-dir <DIR>")
    check = check_against_help(help_text)
    assert check.missing_required == ("--student", "--output")


def test_help_without_json_is_optional_and_the_flag_is_then_omitted_visibly():
    check = check_against_help(FULL_HELP.replace("--json", "--yaml"))
    assert check.ok and check.missing == ("--json",)
    inv = build_invocation(run_config(), AprSettings(), omit_optional=frozenset(check.missing))
    assert "--json" not in inv.args
    assert any("no --json" in n for n in inv.notes)


def test_settings_reject_unknown_keys_and_bad_values_by_name():
    with pytest.raises(ConfigError) as err:
        AprSettings.from_mapping({"repo": "x"})
    assert err.value.field == "repo"
    with pytest.raises(ConfigError) as err:
        AprSettings.from_mapping({"steps_per_epoch": 0})
    assert err.value.field == "steps_per_epoch"
    with pytest.raises(ConfigError) as err:
        AprSettings.from_mapping({"git_ref": "--upload-pack=evil"})
    assert err.value.field == "git_ref"
    assert AprSettings.from_mapping({"git_ref": "v1.2", "build": False}).build is False
