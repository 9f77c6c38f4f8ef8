"""Audit 10: no value silently dropped. A sampling flag on a run that samples nothing
(`--max-new-tokens 10` with --lmbda 0), --eval-prompts without on-policy steps, --top-p/--top-k
with greedy sampling, --beta without --loss jsd, --seq-kd with --lmbda 1, a --stop with a lone
or unknown escape, and cache-teacher's --seed out of range or without sampled targets were all
taken and ignored. Each is now refused in one line naming the flag and the fix, before a run
directory exists: from a flag, a config file and the dashboard's form alike. A value equal to
its default counts as unset (the dashboard passes every field; a run's config.json holds every
field), and so does the --demo preset's own max_new_tokens on a demo run."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from textual.widgets import Input, Static

from kdengine.cli import main
from kdengine.config import FIELDS, RunConfig, demo_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import one_line_in_process  # noqa: E402

FIX_SAMPLE = "only an on-policy run (--lmbda > 0) or --seq-kd samples completions: set --lmbda " \
    "above 0 or --seq-kd, or leave it at its default"


def refused(capsys, tmp_path: Path, *argv: str, check: bool = True) -> str:
    """`kdengine train --demo ... --run-dir RUN`'s refusal, in this process (check=False: the
    real start, 2 steps, where the refusal must come before the run directory is made)."""
    more = ["--check"] if check else ["--steps", "2", "--warmup-steps", "0"]
    code = main(["train", "--demo", "--run-dir", str(tmp_path / "run"), *more, *argv])
    line = one_line_in_process(capsys, code, "train")
    assert not (tmp_path / "run").exists()
    return line.removeprefix("kdengine train: error: ")


@pytest.mark.parametrize("flag, value", [
    ("--max-new-tokens", "10"), ("--gen-temperature", "0.5"), ("--top-p", "0.9"),
    ("--top-k", "5"), ("--stop", "x"), ("--sample-every", "2")])
def test_a_sampling_flag_on_a_run_that_samples_nothing_is_refused(capsys, tmp_path, flag,
                                                                  value) -> None:
    line = refused(capsys, tmp_path, "--lmbda", "0", flag, value)
    assert line.startswith(f"{flag}: {FIX_SAMPLE} ("), line


def test_the_max_new_tokens_refusal_names_the_flag_and_both_fixes(capsys, tmp_path) -> None:
    assert refused(capsys, tmp_path, "--max-new-tokens", "10", check=False) == (
        f"--max-new-tokens: {FIX_SAMPLE} (the demo preset's 64)")
    for fix in (["--lmbda", "0.5"], ["--seq-kd"]):  # each fix it names passes
        assert main(["train", "--demo", "--check", "--max-new-tokens", "10", *fix]) == 0
        capsys.readouterr()


def test_eval_prompts_needs_on_policy_steps_not_seq_kd_alone(capsys, tmp_path) -> None:
    line = refused(capsys, tmp_path, "--seq-kd", "--eval-prompts", "4")
    assert line == ("--eval-prompts: only an on-policy run (--lmbda > 0) completes held-out "
                    "prompts at its evaluations (--seq-kd alone does not): set --lmbda above 0, "
                    "or leave it at its default (16)")
    assert main(["train", "--demo", "--check", "--lmbda", "0.5", "--eval-prompts", "4"]) == 0


@pytest.mark.parametrize("flag, value", [("--top-p", "0.9"), ("--top-k", "5")])
def test_top_p_and_top_k_with_greedy_sampling_are_refused(capsys, tmp_path, flag,
                                                          value) -> None:
    line = refused(capsys, tmp_path, "--lmbda", "1", "--gen-temperature", "0", flag, value)
    assert line == (f"{flag}: greedy sampling (--gen-temperature 0) takes the likeliest token, "
                    "so it changes nothing: set --gen-temperature above 0, or leave it at its "
                    f"default ({'1' if flag == '--top-p' else '0'})")


def test_beta_without_the_jsd_loss_is_refused(capsys, tmp_path) -> None:
    line = refused(capsys, tmp_path, "--beta", "0.2")
    assert line == ("--beta: is the JSD's mixture weight, and --loss forward_kl has none: set "
                    "--loss jsd, or leave it at its default (0.5)")
    assert main(["train", "--demo", "--check", "--beta", "0.2", "--loss", "jsd"]) == 0


def test_seq_kd_with_every_step_on_policy_is_refused(capsys, tmp_path) -> None:
    line = refused(capsys, tmp_path, "--lmbda", "1", "--seq-kd")
    assert line.startswith("--seq-kd: with --lmbda 1 every step is on-policy"), line
    assert line.endswith("lower --lmbda below 1, or drop --seq-kd")


def test_a_value_equal_to_its_default_counts_as_unset(capsys) -> None:
    """The dashboard passes every field as a flag: defaults on a run that samples nothing, and
    the demo preset's max_new_tokens 64 on a demo run, start as before."""
    assert main(["train", "--check", *demo_config(run_name="every-flag").to_args()]) == 0
    defaults = [word for f in FIELDS if f.name in ("max_new_tokens", "top_p", "beta", "stop",
                                                   "eval_prompts", "sample_every")
                for word in (f"{f.flag}={f.default}",)]
    assert main(["train", "--demo", "--check", "--lmbda", "0", *defaults]) == 0
    capsys.readouterr()


def test_a_config_file_of_every_default_loads_and_one_unused_value_is_named_in_it(
        capsys, tmp_path) -> None:
    every = tmp_path / "every.toml"  # every field at its default, as a run's config.json has
    every.write_text(RunConfig().to_toml())
    assert main(["train", "--demo", "--check", "--config", str(every), "--teacher",
                 "demo://teacher", "--student", "demo://student", "--data",
                 "demo://python-stdlib"]) == 0
    ran = tmp_path / "config.json"  # a demo run's own config.json: the preset's 64 within
    ran.write_text(demo_config(run_name="again").to_json())
    assert main(["train", "--check", "--config", str(ran)]) == 0
    capsys.readouterr()
    bad = tmp_path / "run.toml"
    bad.write_text('max_new_tokens = 10\n')
    line = refused(capsys, tmp_path, "--config", str(bad))
    assert line == f"max_new_tokens in {bad}: {FIX_SAMPLE} (the demo preset's 64)"


@pytest.mark.parametrize("stop, said", [
    ("\\", "ends in a lone backslash (got \\; "),
    ("ab\\", "ends in a lone backslash (got ab\\; "),
    ("\\r\\n", "\\r is not an escape (got \\r\\n; "),
])
def test_a_stop_with_a_malformed_escape_is_refused(capsys, tmp_path, stop, said) -> None:
    line = refused(capsys, tmp_path, "--lmbda", "1", "--stop", stop)
    assert line.startswith(f"--stop: {said}escapes read: \\n newline, \\t tab, \\\\ a "
                           "backslash): write \\\\"), line


@pytest.mark.parametrize("stop, text", [("\\n\\n", "\n\n"), ("\\\\", "\\"), ("a\\tb", "a\tb")])
def test_a_stop_with_its_escapes_reads_them(stop, text) -> None:
    assert RunConfig(lmbda=1.0, stop=stop).stop_text == text


CACHE = ["cache-teacher", "--teacher", "demo://teacher", "--data", "demo://python-stdlib"]


@pytest.mark.parametrize("argv, said", [
    (["--seed", "-1"], "--seed: must be an integer >= 0 and <= 9223372036854775807 (got -1)"),
    (["--seed", "5"], "--seed: seeds the sampled targets' draws, and --cache-targets topk draws "
     "nothing: give --cache-targets sampled, or leave it at its default (0)"),
])
def test_cache_teacher_seed_out_of_range_or_without_draws_is_refused(capsys, tmp_path, argv,
                                                                     said) -> None:
    out = tmp_path / "cache"
    line = one_line_in_process(capsys, main([*CACHE, "--out", str(out), "--check", *argv]),
                               "cache-teacher")
    assert line == f"kdengine cache-teacher: error: {said}"
    assert not out.exists()


async def test_the_form_marks_an_unused_sampling_value_at_its_field() -> None:
    """The demo preset (lmbda 0) with a gen_temperature typed in: Start marks that field with
    the engine's reason, in the form's words, and starts nothing."""
    from kdtui.app import KDApp

    runs_dir = Path(os.environ["KDENGINE_RUNS_DIR"])
    runs_dir.mkdir(parents=True, exist_ok=True)

    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        deadline = time.monotonic() + 30
        while not app.screen.form_ready:
            assert time.monotonic() < deadline
            await pilot.pause(0.05)
        form = app.screen
        await pilot.press("f2")
        await pilot.pause()
        form.query_one("#field-gen_temperature", Input).value = "0.5"
        await pilot.pause()
        await pilot.press("ctrl+r")
        while not form.query(".field-row.-invalid"):
            assert time.monotonic() < deadline
            await pilot.pause(0.05)
        assert [row.id for row in form.query(".field-row.-invalid")] == ["row-gen_temperature"]
        error = str(form.query_one("#row-gen_temperature .field-error", Static).render())
        assert "only an on-policy run (lmbda > 0) or seq_kd samples completions" in error
        assert app.screen is form and not list(runs_dir.iterdir())


def test_a_stop_of_newlines_in_a_config_file_is_kept(capsys, tmp_path) -> None:
    """TOML's `stop = "\\n\\n"` is two real newlines: stripped as other text fields are, the run
    had no stop at all."""
    run = tmp_path / "run.toml"
    run.write_text('lmbda = 1.0\nstop = "\\n\\n"\n')
    assert main(["train", "--demo", "--check", "--config", str(run)]) == 0
    config = json.loads(capsys.readouterr().out)["config"]
    assert config["stop"] == "\n\n"
    assert RunConfig.from_mapping(config).stop_text == "\n\n"
