"""Audit 13, a run's life: a disk with bytes left but no free inodes (or no space) when a run,
or the remote agent making a run's venv, writes its first files: the run dir's engine.lock,
config.json, events.jsonl and launch.log, the venv's ENV.lock. Before, the engine's preflight
probe (one directory) passed, then the run's events.jsonl or launch.log raised a traceback
(exit 1) and left a run directory of a run that never was; a refusal's fix said 'make the run
directory writable', and the agent's mkenv raised a traceback over SSH. Each is one line now,
naming the path, that the disk has no free inodes (or no space) and the fix, exit 2 for the
engine, nothing left behind. The disks are real tmpfs mounts (root only; skipped elsewhere)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import tiny_run_args, tmpfs, write_tiny_inputs  # noqa: E402


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_tiny_inputs(tmp_path_factory.mktemp("disk"))


def leave_inodes(mount: Path, free: int) -> None:
    """Files made in `mount` until `free` inodes are left (bytes to spare)."""
    fill = mount / "filler"
    fill.mkdir()
    for i in range(os.statvfs(mount).f_favail - free):
        (fill / str(i)).touch()
    assert os.statvfs(mount).f_favail == free


@pytest.mark.parametrize("free", [3, 4])  # room for the directory and its lock, not the log
def test_a_new_run_on_a_disk_out_of_inodes_is_refused_in_one_line_leaving_nothing(
        inputs, tmp_path: Path, engine_in_process, one_line_refusal, free: int) -> None:
    with tmpfs(tmp_path / "disk", "8m,nr_inodes=64") as mount:
        leave_inodes(mount, free)
        run_dir = mount / "run"
        done = engine_in_process(*tiny_run_args(inputs, run_dir, steps=2))
        line = one_line_refusal(done, "train", f"--run-dir: cannot create {run_dir}: No space "
                                "left on device (")
        assert f"the file system of {run_dir} has no free inodes" in line, line
        assert line.endswith("delete files there (df -i shows it), or pick another --run-dir")
        assert not run_dir.exists()


def test_a_resume_on_a_disk_out_of_inodes_names_the_inodes_not_permissions(
        inputs, tmp_path: Path, engine_in_process, one_line_refusal) -> None:
    with tmpfs(tmp_path / "disk", "8m,nr_inodes=64") as mount:
        run_dir = mount / "run"
        done = engine_in_process(*tiny_run_args(inputs, run_dir, steps=2, checkpoint_every=1,
                                                eval_every=0))
        assert done.returncode == 0, done.stderr[-2000:]
        # a stopped run, copied here without its lock (a copy from another host)
        events = run_dir / "events.jsonl"
        events.write_text("".join(line for line in events.read_text().splitlines(True)
                                  if '"run_finished"' not in line))
        (run_dir / "engine.lock").unlink()
        leave_inodes(mount, 0)
        record = events.read_bytes()
        done = engine_in_process("train", "--resume", str(run_dir))
        line = one_line_refusal(done, "train", f"--resume: {run_dir} cannot be written: ")
        assert line.endswith(f"the file system of {run_dir} has no free inodes (64 in all, "
                             "all used; " + line.split("all used; ")[1]), line
        assert "delete files there" in line and "writable" not in line, line
        assert events.read_bytes() == record


def test_the_agents_venv_lock_on_a_disk_out_of_inodes_is_one_line(tmp_path: Path,
                                                                  capsys) -> None:
    from kdtui.remote import agent

    with tmpfs(tmp_path / "disk", "8m,nr_inodes=16") as mount:
        (mount / "envs").mkdir()
        leave_inodes(mount, 0)
        env = mount / "envs" / "kdengine-0.1.0"
        with pytest.raises(SystemExit) as ended:
            agent.main(["mkenv", "--env-dir", str(env), "--build", "b1", "--wheel", "x.whl"])
        assert ended.value.code == 3
        out = capsys.readouterr()
        (said,) = [json.loads(line) for line in out.out.splitlines()]
        assert said == {"ok": False, "error": (
            f"cannot make {env}: the disk there has no free inodes ("
            + said["error"].split("no free inodes (")[1])}
        assert said["error"].endswith("MiB free, no file can be made); delete files on it, or "
                                      "set the host's work_dir to a disk with room")
        assert "Traceback" not in out.err
