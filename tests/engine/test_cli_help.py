"""`kdengine --help` and each command's `--help`: usage for the command asked about, aligned
summaries, bounds and defaults written as a person writes them."""

from __future__ import annotations

import functools
import re
import subprocess
import sys

import pytest

from kdengine.cli import COMMANDS
from kdengine.config import FIELDS, FIELDS_BY_NAME


@functools.cache
def _kdengine(*argv: str) -> subprocess.CompletedProcess[str]:
    """`python -m kdengine argv`, once per argv in this module: the commands asked here (help,
    version, a refusal) print the same each time."""
    return subprocess.run([sys.executable, "-m", "kdengine", *argv], capture_output=True,
                          text=True, timeout=60)


def test_version_help_prints_its_usage_not_the_version() -> None:
    done = _kdengine("version", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: kdengine version")
    assert not done.stdout.startswith("kdengine 0")
    assert _kdengine("version").stdout.startswith("kdengine ")
    assert _kdengine("--version").stdout == _kdengine("version").stdout


def test_version_with_a_stray_argument_is_one_line_exit_2() -> None:
    done = _kdengine("version", "extra")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "kdengine version: error: unrecognized arguments: extra\n"


def test_top_level_help_lists_every_command_with_its_summary_aligned() -> None:
    done = _kdengine("--help")
    assert done.returncode == 0
    rows = [line for line in done.stdout.splitlines() if line.startswith("  ")]
    assert [row.split()[0] for row in rows] == list(COMMANDS)
    starts = {re.match(r"  \S+ +", row).end() for row in rows}
    assert len(starts) == 1, rows  # every summary starts in the same column
    assert done.stdout.startswith("usage: kdengine {train,cache-teacher,verdict,version} ...")


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_commands_help_answers_without_importing_torch(command: str) -> None:
    """Help is read before anything is run: it must not wait seconds for torch (cache-teacher's
    did, 1.5-2 s, through the imports before its flags were parsed)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "kdengine", command,
                           "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert not re.search(r"\|\s*torch$", done.stderr, re.M), command


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_commands_help_is_its_own_usage(command: str) -> None:
    done = _kdengine(command, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: kdengine {command} ")
    assert done.stderr == ""


def test_integer_bounds_print_as_integers_in_help_and_errors() -> None:
    seed = FIELDS_BY_NAME["seed"]
    assert seed.bounds_text() == "an integer >= 0 and <= 9223372036854775807"
    help_text = " ".join(_kdengine("train", "--help").stdout.split())
    assert "<= 9223372036854775807" in help_text
    assert not re.search(r"\d\.\d+e\+\d+", help_text), "a bound in e-notation"
    done = _kdengine("train", "--demo", "--seed", "-1", "--check")
    assert done.stderr == ("kdengine train: error: --seed: must be an integer >= 0 and <= "
                           "9223372036854775807 (got -1)\n")


def test_a_flags_help_does_not_repeat_its_bounds() -> None:
    repeated = [f.name for f in FIELDS if f.bounds_text() in f.help]
    assert repeated == []


def test_boolean_defaults_print_as_the_true_or_false_they_take() -> None:
    help_text = " ".join(_kdengine("train", "--help").stdout.split())
    assert "(true or false; default: false)" in help_text
    assert "default: False" not in help_text


def test_verdict_help_says_what_its_argument_is() -> None:
    done = _kdengine("verdict", "--help")
    assert done.stdout.startswith("usage: kdengine verdict [-h] [--json] RUN_DIR")
    assert "RUN_DIR     A run's directory (it holds events.jsonl)" in done.stdout


def _flag_helps(command: str) -> dict[str, str]:
    """Each --flag's help text of `kdengine COMMAND --help`, on one line."""
    flags: dict[str, str] = {}
    flag = None
    for line in _kdengine(command, "--help").stdout.splitlines():
        match = re.match(r"  (--[\w-]+)(?: [A-Z_]+)?(?:  +(.*))?$", line)
        if match:
            flag = match.group(1)
            flags[flag] = match.group(2) or ""
        elif flag and line.startswith("    "):
            flags[flag] = f"{flags[flag]} {line.strip()}".strip()
        else:
            flag = None
    return flags


def test_cache_teacher_help_writes_defaults_as_train_help_does() -> None:
    helps = _flag_helps("cache-teacher")
    train = _flag_helps("train")
    for flag in ("--seq-len", "--val-fraction", "--data-split", "--train-on", "--device"):
        assert helps[flag] == train[flag], flag  # the run's own fields, written the same
    assert helps["--top-k"].endswith("(an integer >= 1; default: 64)")
    assert helps["--rows-per-batch"].endswith("(an integer >= 1; default: 8)")
    assert helps["--seed"].endswith("(an integer; default: 0)")
    assert helps["--store-dtype"].endswith("(one of float16, bfloat16, float32; default: "
                                           "'float16')")
    assert helps["--cache-targets"].endswith("(one of topk, sampled; default: 'topk')")
    assert helps["--out"].endswith("default: KDENGINE_CACHE/teacher/<key>)")
    text = " ".join(helps.values())
    assert "(default " not in text and "default: ''" not in text


def test_cache_teacher_help_says_teacher_and_data_are_required() -> None:
    helps = _flag_helps("cache-teacher")
    for flag in ("--teacher", "--data"):
        # '(a value; required)' told a new user nothing: train's help says '(required ...)'
        assert helps[flag].endswith(" (required)"), helps[flag]


def test_every_cache_teacher_flag_says_its_default_or_that_it_is_required() -> None:
    helps = _flag_helps("cache-teacher")
    assert len(helps) > 15
    said = re.compile(r"(\(|; )(default: .+|required)\)$")  # '(bounds; default)' or '(required)'
    unsaid = [f for f, text in helps.items()
              if f not in ("--help", "--check") and not said.search(text)]
    assert unsaid == []
