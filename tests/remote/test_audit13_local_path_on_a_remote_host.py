"""README's and docs/remote.md's `kdtui launch --host gpu1 ... --data corpus/`: the run reads
its paths on the box (kdtui copies its own code there, never models or data), so a `corpus/`
that is here and not there was refused with the engine's 'the engine on gpu1 refused the run:
--data: corpus/ does not exist', of a folder the user can see. The refusal now says the path is
on this machine, that the run reads paths on the box (a relative one from its home), and how
to copy it there."""

from __future__ import annotations

import shutil
import uuid

import pytest

from kdtui.cli import main as kdtui_main

from .conftest import launch_flags

pytestmark = pytest.mark.ssh


def test_a_data_folder_only_on_this_machine_is_said_to_be_here_not_on_the_box(
        remote_env, tiny_run_inputs, tmp_path, monkeypatch, capsys):
    corpus = f"corpus-{uuid.uuid4().hex[:8]}/"
    shutil.copytree(tiny_run_inputs["data"], tmp_path / corpus)
    monkeypatch.chdir(tmp_path)
    code = kdtui_main(["launch", "--headless", "--host", "kdtest", "--run-name", "here-data",
                       *launch_flags({**tiny_run_inputs, "data": corpus}, 2, 2)])
    out = capsys.readouterr().out
    assert code == 2, out
    failed = next(line for line in out.splitlines() if line.startswith("[check] failed"))
    assert f"--data: {corpus} does not exist" in failed, failed  # the engine's own words
    assert f"{corpus} is on this machine: the run reads its paths on kdtest" in failed, failed
    assert f"rsync -a {corpus} kdtest:{corpus}" in failed, failed
