"""The one run schema: bounds, messages, round trips, and the CLI generated from it."""

from __future__ import annotations

import json

import pytest

from kdengine.cli import build_train_parser, parse_train_args
from kdengine.config import FIELDS, ConfigError, RunConfig, demo_config


@pytest.mark.parametrize(("name", "raw", "message"), [
    ("steps", "-3", "must be an integer >= 1 and <= 1000000000 (got -3)"),
    ("steps", "ten", "must be an integer (got 'ten')"),
    ("alpha", "2", "must be a number >= 0 and <= 1 (got 2)"),
    ("temperature", "0", "must be a number > 0 and <= 100 (got 0)"),
    ("lr", "nan", "must be a finite number"),
    ("loss", "kl", "must be one of forward_kl, reverse_kl, jsd (got 'kl')"),
    ("device", "gpu", "must be auto, cpu, cuda, cuda:N or mps (got 'gpu')"),
    ("run_name", "x; rm -rf ~", "must be letters, digits"),
    ("allow_same_teacher_student", "maybe", "must be true or false"),
])
def test_bad_value_names_the_field_and_what_it_takes(name: str, raw: str, message: str) -> None:
    field = next(f for f in FIELDS if f.name == name)
    with pytest.raises(ConfigError) as err:
        field.parse(raw)
    assert err.value.field == name
    assert message in err.value.message


def test_every_field_has_help_a_default_that_parses_and_a_cli_flag() -> None:
    help_text = build_train_parser().format_help()
    for f in FIELDS:
        assert f.help and f.parse(f.default) == f.default
        assert f.flag in help_text


def test_config_round_trips_through_json_toml_and_cli_args(tmp_path) -> None:
    cfg = demo_config(steps=123, lr=2.5e-4, loss="jsd", beta=0.25, run_name="rt-1",
                      allow_same_teacher_student=True)
    assert RunConfig.from_mapping(json.loads(cfg.to_json())) == cfg
    toml_path = tmp_path / "run.toml"
    toml_path.write_text(cfg.to_toml())
    assert RunConfig.from_file(toml_path) == cfg
    parsed, _ = parse_train_args(cfg.to_args())
    assert parsed == cfg


def test_unknown_key_in_a_config_file_is_an_error_not_ignored(tmp_path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('teacher = "a"\nbatchsize = 8\n')
    with pytest.raises(ConfigError) as err:
        RunConfig.from_file(path)
    assert err.value.field == "batchsize"


def test_flags_override_the_config_file_which_overrides_the_demo_preset(tmp_path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("steps = 42\nlr = 0.01\n")
    cfg, _ = parse_train_args(["--demo", "--config", str(path), "--lr", "0.02"])
    assert (cfg.steps, cfg.lr, cfg.teacher) == (42, 0.02, "demo://teacher")


def test_teacher_equal_to_student_is_refused_unless_allowed() -> None:
    cfg = RunConfig(teacher="org/m", student="org/m", data="d")
    with pytest.raises(ConfigError, match="same model as the teacher") as err:
        cfg.validate()
    assert err.value.field == "student"
    assert cfg.with_values(allow_same_teacher_student=True).validate()


def test_missing_models_and_data_are_required() -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig().validate()
    assert err.value.field == "teacher"


def test_beta_is_trls_gkd_beta_and_the_old_jsd_beta_name_still_reads() -> None:
    from kdengine.losses import KDLossSpec

    # a run directory or run.toml written before the rename
    assert RunConfig.from_mapping({"jsd_beta": 0.25}).beta == 0.25
    kinds = {b: KDLossSpec.from_config(RunConfig(loss="jsd", beta=b)).kind
             for b in (0.0, 0.5, 1.0)}
    # TRL's limits: beta 0 is forward KL, 1 reverse KL (the JSD formula itself is 0 there)
    assert kinds == {0.0: "forward_kl", 0.5: "jsd", 1.0: "reverse_kl"}


def test_a_data_field_mapped_twice_is_refused_not_one_silently_dropped(
        tmp_path, tiny_run_inputs, tiny_args, engine_cmd, one_line_refusal) -> None:
    import subprocess

    run_dir = tmp_path / "run"
    for check in ([], ["--check"]):
        out = subprocess.run([*engine_cmd, *tiny_args(tiny_run_inputs, run_dir),
                              "--data-fields", "messages=dialog,messages=turns", *check],
                             capture_output=True, text=True, timeout=120)
        line = one_line_refusal(out, "train", "--data-fields")
        assert "messages is mapped twice (messages=dialog,messages=turns)" in line
        assert not run_dir.exists()
