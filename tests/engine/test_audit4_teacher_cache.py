"""A teacher cache as a new user meets one that is not what `kdengine cache-teacher` left: a
shard file cut short or gone (a full disk, a partial copy), a manifest with fields missing, a
--teacher-cache that is a file or not there. Each is one line at `kdengine train --check`, exit
2, before a run directory exists, naming the fix; the cut-short cache is mended by the same
`kdengine cache-teacher` command, to the bytes of the whole one."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from kdengine.cli import main


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tiny teacher and student, raw text, and a complete cache of it (24 shards)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import TINY_TEXT, write_tiny_model

    root = tmp_path_factory.mktemp("audit4-cache")
    teacher = write_tiny_model(root / "teacher", hidden=32, layers=2, seed=1)
    student = write_tiny_model(root / "student", hidden=16, layers=1, seed=2)
    (root / "text").mkdir()
    (root / "text" / "a.txt").write_text(TINY_TEXT[:12000])
    out = {"teacher": str(teacher), "student": str(student), "text": str(root / "text"),
           "cache": str(root / "cache")}
    assert main(cache_args(out, out["cache"])) == 0
    return out


def cache_args(made: dict[str, str], out: str | Path) -> list[str]:
    return ["cache-teacher", "--teacher", made["teacher"], "--data", made["text"], "--seq-len",
            "32", "--top-k", "8", "--shard-rows", "40", "--device", "cpu", "--out", str(out)]


def train_check(made: dict[str, str], cache: str | Path, run_dir: Path) -> list[str]:
    return ["train", "--teacher-cache", str(cache), "--student", made["student"], "--data",
            made["text"], "--seq-len", "32", "--steps", "4", "--batch-size", "4",
            "--device", "cpu", "--run-dir", str(run_dir), "--check"]


def refusal(capsys: pytest.CaptureFixture[str], code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert err.startswith("kdengine train: error: --teacher-cache: "), err
    return err


@pytest.mark.parametrize("damage, said", [
    (lambda d: (d / "shard-00003.logp").write_bytes(b"\0" * 100),
     "shard-00003.logp is 100 bytes, 20480 expected"),
    (lambda d: (d / "shard-00005.ids").unlink(), "shard-00005.ids is missing"),
])
def test_a_cache_cut_short_is_refused_at_check_and_the_same_command_mends_it(
        made, tmp_path, capsys, damage, said) -> None:
    """A shard file cut short passed --check; the run trained until it reached that shard and
    failed there (`cannot map ...: write it again`), and the same cache-teacher command said
    `complete already; nothing to do`. Now --check refuses it naming the file, and the same
    command writes the damaged shard again, to the whole cache's bytes."""
    cache = tmp_path / "cache"
    shutil.copytree(made["cache"], cache)
    damage(cache)
    run_dir = tmp_path / "run"
    err = refusal(capsys, main(train_check(made, cache, run_dir)))
    assert f"{cache} is damaged ({said})" in err and "kdengine cache-teacher" in err, err
    assert not run_dir.exists()
    # the writer's --check sees a job to do, and writes nothing
    assert main([*cache_args(made, cache), "--check"]) == 0
    assert json.loads(capsys.readouterr().out)["run_dir"] == str(cache)
    assert main(cache_args(made, cache)) == 0
    assert "is damaged" in capsys.readouterr().out
    whole = Path(made["cache"])
    names = sorted(p.name for p in whole.glob("shard-*"))
    assert names == sorted(p.name for p in cache.glob("shard-*"))
    for name in names:
        assert (cache / name).read_bytes() == (whole / name).read_bytes(), name
    assert main(train_check(made, cache, run_dir)) == 0


def test_a_teacher_cache_that_is_a_file_or_not_there_says_so(made, tmp_path, capsys,
                                                             a_file) -> None:
    """Both said `holds no manifest.json: not a teacher cache`, for a path that does not exist
    and for a file."""
    run_dir = tmp_path / "run"
    err = refusal(capsys, main(train_check(made, a_file, run_dir)))
    assert f"{a_file} is a file, not a teacher cache directory" in err, err
    err = refusal(capsys, main(train_check(made, tmp_path / "nowhere", run_dir)))
    assert f"{tmp_path / 'nowhere'} does not exist" in err, err
    assert not run_dir.exists()


def test_a_manifest_with_fields_missing_is_one_line_not_a_traceback(made, tmp_path,
                                                                    capsys) -> None:
    """A manifest of the right format with its fields missing (hand-edited, cut off by a
    copy) was a KeyError traceback at --check; it is one line naming the file and the fix, for
    a run and for the writer."""
    cache = tmp_path / "cache"
    shutil.copytree(made["cache"], cache)
    manifest = json.loads((cache / "manifest.json").read_text())
    for key in ("teacher", "rows"):
        (cache / "manifest.json").write_text(json.dumps(
            {k: v for k, v in manifest.items() if k != key}))
        run_dir = tmp_path / "run"
        err = refusal(capsys, main(train_check(made, cache, run_dir)))
        assert f"manifest.json is damaged ('{key}' is None)" in err, err
        assert f"remove {cache} and write the cache again" in err, err
        assert not run_dir.exists()
        code = main(cache_args(made, cache))
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err and err.startswith(
            "kdengine cache-teacher: error: --out: ") and "is damaged" in err, err


# the writer, held before its second shard until the test lets it go (a long job, at no cost)
HELD_WRITER = r"""
import os, sys, time
from pathlib import Path
import kdengine.teacher.writer as W
real = W.write_shard
def held(directory, index, arrays):
    while index == 1 and not Path(os.environ["KD_GO"]).exists():
        time.sleep(0.05)
    return real(directory, index, arrays)
W.write_shard = held
from kdengine.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_the_same_command_while_the_writer_still_goes_is_refused(made, tmp_path,
                                                                 capsys) -> None:
    """Run again while the first still wrote, the same command wrote the same shards and
    events beside it (duplicate event seqs) and failed with a FileNotFoundError of the
    manifest's temp file. It is refused in one line, --check too, and the first finishes."""
    import os
    import subprocess
    import time

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import read_events, wait_on_run

    out, go = tmp_path / "cache", tmp_path / "go"
    first = subprocess.Popen([sys.executable, "-c", HELD_WRITER, *cache_args(made, out)],
                             env={**os.environ, "KD_GO": str(go)}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        wait_on_run(out, lambda: (out / "shard-00000.done").exists() or first.poll() is not None,
                    "the first shard")
        assert first.poll() is None, first.stderr.read()
        for check in ([], ["--check"]):
            code = main([*cache_args(made, out), *check])
            captured = capsys.readouterr()
            err = captured.err.strip()
            assert code == 2 and "\n" not in err and captured.out == "", captured
            assert err.startswith(f"kdengine cache-teacher: error: --out: {out} is being "
                                  "written by another `kdengine cache-teacher` right now"), err
        go.touch()
        assert first.wait(timeout=120) == 0, first.stderr.read()
    finally:
        go.touch()
        if first.poll() is None:
            time.sleep(1)
            first.kill()
    events = read_events(out)
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events].count("run_started") == 1
    assert events[-1]["type"] == "run_finished" and events[-1]["status"] == "completed"
    assert json.loads((out / "manifest.json").read_text())["complete"]
    assert main(train_check(made, out, tmp_path / "run")) == 0


@pytest.mark.parametrize("flags, named", [(["--lmbda", "0.5"], "--lmbda"),
                                          (["--seq-kd"], "--seq-kd")])
def test_a_sampling_run_from_a_cache_is_refused_naming_the_flag_given(made, tmp_path, capsys,
                                                                     flags, named) -> None:
    """--seq-kd alone was refused as '--lmbda: ...', a flag the user had not given."""
    run_dir = tmp_path / "run"
    code = main([*train_check(made, made["cache"], run_dir), *flags, "--max-new-tokens", "8"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert err.startswith(f"kdengine train: error: {named}: on-policy and seq_kd runs"), err
    assert not run_dir.exists()
