"""Audit 13, a full disk's words: a checkpoint that cannot be written because the file system
has no free inodes left (bytes to spare) said `disk full: ... needs 104 kB, its file system has
20.8 MB free`, contradicting itself. The line now says what is exhausted (inodes, space or a
quota) and the fix for it. Real tmpfs mounts with nr_inodes (root only; skipped elsewhere)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import tiny_run_args, tmpfs, write_tiny_inputs  # noqa: E402


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_tiny_inputs(tmp_path_factory.mktemp("inodes"))


def use_up_inodes(mount: Path) -> None:
    """Empty files made in `mount` until it has no free inode (its bytes to spare)."""
    fill = mount / "someone-elses-files"
    fill.mkdir(exist_ok=True)
    for i in range(os.statvfs(mount).f_favail):
        (fill / str(i)).touch()
    assert os.statvfs(mount).f_favail == 0


def test_a_checkpoint_on_a_disk_out_of_inodes_says_inodes_not_bytes(
        inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine_in_process) -> None:
    import kdengine.checkpoint_writer as writer

    real_write = writer.write_checkpoint

    def inodes_gone_before_step_2(run_dir, step, *args, **kwargs):
        if step == 2:  # another process takes every inode left, bytes stay free
            use_up_inodes(Path(run_dir).parent)
        return real_write(run_dir, step, *args, **kwargs)

    monkeypatch.setattr(writer, "write_checkpoint", inodes_gone_before_step_2)
    with tmpfs(tmp_path / "disk", "32m,nr_inodes=200") as mount:
        run_dir = mount / "run"
        done = engine_in_process(*tiny_run_args(inputs, run_dir, steps=3, checkpoint_every=1,
                                                eval_every=0))
        assert done.returncode == 1, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
        line = lines[0]
        print(line)
        assert "no free inodes" in line and "needs" not in line.split(";")[0], line
        assert "df -i" in line and "delete files" in line, line
        assert "the last good checkpoint step-00000001 is intact" in line, line


def test_a_teacher_cache_on_a_disk_out_of_inodes_says_inodes(
        inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine_in_process) -> None:
    import kdengine.teacher.writer as writer

    real_write = writer.write_shard

    def inodes_gone_first(directory, index, arrays):
        use_up_inodes(Path(directory).parent)
        return real_write(directory, index, arrays)

    monkeypatch.setattr(writer, "write_shard", inodes_gone_first)
    with tmpfs(tmp_path / "disk", "32m,nr_inodes=200") as mount:
        job = mount / "cache"
        done = engine_in_process(
            "cache-teacher", "--teacher", inputs["teacher"], "--data", inputs["data"],
            "--seq-len", "32", "--device", "cpu", "--dtype", "float32", "--top-k", "4",
            "--cache-targets", "topk", "--out", str(job))
        assert done.returncode == 1, done.stderr
        line = (done.stdout + done.stderr).strip().splitlines()[-1]
        assert line.startswith(f"kdengine cache-teacher: error: [score] failed: no "
                               f"free inodes under {job} (its file system has "), line
        assert "; delete files on that file system): " in line and "df -i" in line, line


def test_a_full_disks_words_name_a_quota_or_the_space(tmp_path: Path) -> None:
    import errno

    from kdengine.diskspace import DiskFull

    quota = OSError(errno.EDQUOT, "Disk quota exceeded")
    said = str(DiskFull(tmp_path, "the final student", 10, None, tmp_path, cause=quota))
    assert said.startswith(f"disk quota exceeded: writing the final student into {tmp_path}: "
                           "your disk quota there is used up"), said
    assert said.endswith("(free some of your quota, or ask for more and start it again)"), said
    space = OSError(errno.ENOSPC, "No space left on device")
    said = str(DiskFull(tmp_path, "the final student", 10 ** 18, None, tmp_path, cause=space))
    assert said.startswith(f"disk full: writing the final student into {tmp_path} needs "
                           "1e+06 TB, its file system has "), said
