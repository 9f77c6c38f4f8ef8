"""Shell injection is inert, the dry run is exact and touches nothing, hosts files are checked."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from kdengine.config import RunConfig
from kdtui.cli import main as kdtui_main
from kdtui.launch.remote import DispatchError, RemoteLauncher
from kdtui.remote.command import remote_command
from kdtui.remote.connect import open_connection, run_command
from kdtui.remote.hosts import HostsFileError, get_host, load_hosts

EVIL = ["$(touch {d}/pwned)", "x; touch {d}/pwned", "`touch {d}/pwned`", "a'b\"c\\d",
        "x && touch {d}/pwned", "\n touch {d}/pwned", "-rf", "*", "~"]


def test_quoted_argv_reaches_a_real_shell_word_for_word(tmp_path):
    words = [w.format(d=tmp_path) for w in EVIL]
    command = remote_command("echo", [sys.executable, "-c",
                                      "import json, sys; print(json.dumps(sys.argv[1:]))",
                                      *words])
    out = subprocess.run(["sh", "-c", command.text], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == words
    assert not (tmp_path / "pwned").exists()


def test_rm_rf_home_as_a_value_is_inert(tmp_path):
    home = tmp_path / "home"
    (home / "keep").mkdir(parents=True)
    command = remote_command("t", ["echo", "x; rm -rf ~"])
    out = subprocess.run(["sh", "-c", command.text], capture_output=True, text=True,
                         env={"HOME": str(home), "PATH": "/usr/bin:/bin"}, check=True)
    assert out.stdout == "x; rm -rf ~\n"
    assert (home / "keep").is_dir()


@pytest.mark.ssh
def test_evil_values_over_ssh_are_inert(remote_env, tiny_run_inputs, tmp_path):
    marker = tmp_path / "pwned"
    for evil in (f"$(touch {marker})", f"x; touch {marker}", "x; rm -rf ~"):
        config = RunConfig.from_mapping(dict(teacher=evil, student=tiny_run_inputs["student"],
                                             data=tiny_run_inputs["data"], steps=5,
                                             run_name="evil-1"))
        updates = []
        with pytest.raises(DispatchError, match="teacher"):
            asyncio.run(RemoteLauncher(config, "kdtest").start(updates.append))
        failed = [u for u in updates if u.state == "failed"]
        assert [u.stage for u in failed] == ["check"]
        assert evil in failed[0].detail  # the engine saw the value itself, as one argument
    assert not marker.exists()

    async def echo() -> str:
        conn = await open_connection(get_host("kdtest"))
        try:
            words = [w.format(d=tmp_path) for w in EVIL]
            result = await run_command(conn, remote_command("echo", [
                sys.executable, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))",
                *words]))
            return result.stdout, words
        finally:
            conn.close()
    stdout, words = asyncio.run(echo())
    assert json.loads(stdout) == words
    assert not marker.exists()


def test_evil_run_name_is_refused_naming_the_field(remote_env, capsys):
    code = kdtui_main(["launch", "--headless", "--host", "kdtest", "--demo",
                       "--run-name", "$(touch /tmp/pwned)"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--run-name" in err and "letters, digits" in err


def test_dry_run_prints_every_command_exactly_and_touches_nothing(remote_env, tiny_run_inputs,
                                                                  capsys, monkeypatch):
    monkeypatch.setenv("DRY_RUN", "1")
    monkeypatch.setenv("KDTUI_STEPS", "7")
    monkeypatch.setenv("KDTUI_HOST", "kdtest")
    work = remote_env["work"]
    before = sorted(p.name for p in work.iterdir())
    code = kdtui_main(["launch", "--headless", "--fallback-host", "kdtest-down",
                       "--run-name", "dry-1", "--teacher", "org/teacher-model",
                       "--student", tiny_run_inputs["student"], "--data",
                       tiny_run_inputs["data"]])
    out = capsys.readouterr().out
    assert code == 0
    launcher = RemoteLauncher(RunConfig.from_mapping(dict(
        teacher="org/teacher-model", student=tiny_run_inputs["student"],
        data=tiny_run_inputs["data"], steps=7, run_name="dry-1")), "kdtest", "kdtest-down")
    for plan in launcher.plans:
        for command in (plan.probe(), plan.mkenv(), plan.check(), plan.pull(), plan.launch(),
                        plan.status(), plan.tail()):
            assert f"$ {command.text}" in out
    assert "--steps 7" in out and "fallback, only if kdtest fails preflight" in out
    assert sorted(p.name for p in work.iterdir()) == before
    assert not (work / "runs" / "dry-1").exists()
    assert not remote_env["evidence"].exists()


def test_hosts_file_is_checked_and_tilde_is_home_relative(tmp_path, monkeypatch):
    path = tmp_path / "hosts.toml"
    path.write_text('[hosts.gpu]\nwork_dir = "~/kd"\npython = "/opt/py/bin/python"\n'
                    'env = { HF_HOME = "/data/hf" }\n')
    host = load_hosts(path)["gpu"]
    assert host.work_dir == "kd" and host.env == (("HF_HOME", "/data/hf"),)
    assert host.run_dir("r1") == "kd/runs/r1"
    path.write_text('[hosts.gpu]\nworkdir = "x"\n')
    with pytest.raises(HostsFileError, match="unknown key 'workdir'"):
        load_hosts(path)
    path.write_text('[hosts.gpu]\nsync = "git"\n')
    with pytest.raises(HostsFileError, match="git_url"):
        load_hosts(path)
    (tmp_path / "none.toml").write_text("")  # a hosts file without the host
    monkeypatch.setenv("KDTUI_HOSTS_FILE", str(tmp_path / "none.toml"))
    assert get_host("plain").work_dir == "kdtui"  # an ssh-config-only host gets defaults
