"""docs/teacher-cache.md's promises that no test held: one cache serves a sweep (T, alpha, seed,
batch_size, lr, steps differ from run to run and the cache still fits), a student of another
vocab is refused naming the --vocab that fits, --seed is refused where nothing is drawn, and a
data set too small for a run's batch is cached all the same (the run checks its own batch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import one_line_in_process, write_tiny_model


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A teacher padded past its tokenizer (300 ids), a student of 257, a little raw text,
    and that text's top-4 cache written with the teacher's vocab (the default)."""
    from kdengine.cli import main

    root = tmp_path_factory.mktemp("promises")
    made = {"teacher": write_tiny_model(root / "teacher", hidden=32, layers=1, seed=1, vocab=300),
            "student": write_tiny_model(root / "student", hidden=16, layers=1, seed=2),
            "text": root / "text", "cache": root / "cache", "small": root / "small"}
    made["text"].mkdir()
    (made["text"] / "a.txt").write_text("".join(f"line {j} of the text\n" for j in range(120)))
    made["small"].mkdir()  # 3 rows of 64 tokens: fewer than a batch of 4
    (made["small"] / "a.txt").write_text("x" * 200)
    assert main(["cache-teacher", "--teacher", str(made["teacher"]), "--data",
                 str(made["text"]), "--seq-len", "64", "--device", "cpu", "--dtype", "float32",
                 "--top-k", "4", "--out", str(made["cache"])]) == 0
    return made


def _train_check(made: dict[str, Path], cache: Path, data: Path, run_dir: Path,
                 *extra: str) -> int:
    from kdengine.cli import main

    return main(["train", "--teacher-cache", str(cache), "--student", str(made["student"]),
                 "--data", str(data), "--seq-len", "64", "--device", "cpu", "--run-dir",
                 str(run_dir), "--check", *extra])


def test_audit14_a_student_of_another_vocab_is_told_the_vocab_to_cache(
        made, tmp_path, capsys) -> None:
    run_dir = tmp_path / "never"
    code = _train_check(made, made["cache"], made["text"], run_dir, "--batch-size", "2")
    line = one_line_in_process(capsys, code, "train")
    assert f"--teacher-cache: {made['cache']} holds targets over 300 ids, the student's vocab " \
        "is 257: write the cache with --vocab 257" in line
    assert not run_dir.exists()
    # the fix it names works: the same cache written with the student's vocab fits
    from kdengine.cli import main

    fitting = tmp_path / "cache-257"
    assert main(["cache-teacher", "--teacher", str(made["teacher"]), "--data",
                 str(made["text"]), "--seq-len", "64", "--device", "cpu", "--dtype", "float32",
                 "--top-k", "4", "--vocab", "257", "--out", str(fitting)]) == 0
    capsys.readouterr()
    # ... and serves a sweep: T, alpha, seed, batch_size, lr and steps are the run's own
    for sweep in (["--temperature", "4", "--alpha", "0.9"], ["--seed", "7", "--batch-size", "3"],
                  ["--lr", "1e-2", "--steps", "3", "--batch-size", "2"]):
        assert _train_check(made, fitting, made["text"], tmp_path / "fits", *sweep) == 0, \
            (sweep, capsys.readouterr().err)


def test_audit14_seed_is_refused_where_nothing_is_drawn(made, tmp_path, capsys) -> None:
    from kdengine.cli import main

    out = tmp_path / "never"
    code = main(["cache-teacher", "--teacher", str(made["teacher"]), "--data",
                 str(made["text"]), "--seq-len", "64", "--seed", "3", "--out", str(out)])
    line = one_line_in_process(capsys, code, "cache-teacher")
    assert "--seed: seeds the sampled targets' draws, and --cache-targets topk draws nothing: " \
        "give --cache-targets sampled, or leave it at its default (0)" in line, line
    assert not out.exists()


def test_audit14_data_too_small_for_a_batch_is_cached_and_the_run_checks_its_batch(
        made, tmp_path, capsys) -> None:
    from kdengine.cli import main

    cache = tmp_path / "small-cache"
    assert main(["cache-teacher", "--teacher", str(made["teacher"]), "--data",
                 str(made["small"]), "--seq-len", "64", "--device", "cpu", "--dtype",
                 "float32", "--top-k", "4", "--vocab", "257", "--val-fraction", "0.3",
                 "--out", str(cache)]) == 0
    capsys.readouterr()
    run_dir = tmp_path / "never"
    code = _train_check(made, cache, made["small"], run_dir, "--batch-size", "8",
                        "--val-fraction", "0.3")
    line = one_line_in_process(capsys, code, "train")
    assert "shorter than one batch" in line and "--batch-size" in line, line
    assert not run_dir.exists()
    assert _train_check(made, cache, made["small"], tmp_path / "fits", "--batch-size", "2",
                        "--val-fraction", "0.3") == 0, capsys.readouterr().err
