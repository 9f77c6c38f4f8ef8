"""A --host that no ssh config names and whose name does not resolve (a typo) is refused in one
line, exit 2, before anything is written: by a dry run (KDTUI_DRY_RUN=1 printed the whole plan
for it, exit 0) as by a launch (which tried to connect, failed 'Name or service not known' and
left a failed dispatch's evidence behind)."""

from __future__ import annotations

import pytest

from kdtui.cli import main

DEMO = ["--demo"]


def _refused(capsys, flag: str, alias: str) -> None:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured
    named = f"{flag} {alias}" if flag.startswith("-") else f"{flag}={alias}"
    assert lines[0].startswith(f"kdtui launch: error: {named}: no such host: no ssh "
                               "config names it and the name does not resolve"), lines
    assert f"add `Host {alias}` with its HostName" in lines[0], lines
    assert captured.out == "" and "Traceback" not in captured.err


@pytest.mark.parametrize("how", ["KDTUI_DRY_RUN", "--dry-run", "launch"])
def test_an_unknown_host_is_refused_by_a_dry_run_as_by_a_launch(remote_env, monkeypatch,
                                                                capsys, how):
    if how == "KDTUI_DRY_RUN":
        monkeypatch.setenv("KDTUI_DRY_RUN", "1")
    extra = ["--dry-run"] if how == "--dry-run" else ["--detach"]
    assert main(["launch", "--headless", "--host", "nosuch", *DEMO, *extra]) == 2
    _refused(capsys, "--host", "nosuch")
    assert not remote_env["evidence"].exists()  # no failed dispatch's manifest either


def test_an_unknown_fallback_host_is_refused_and_a_known_host_is_planned(remote_env,
                                                                        monkeypatch, capsys):
    monkeypatch.setenv("KDTUI_DRY_RUN", "1")
    assert main(["launch", "--headless", "--host", "kdtest", "--fallback-host", "nosuch",
                 *DEMO]) == 2
    _refused(capsys, "--fallback-host", "nosuch")
    # a host of the ssh config, and a name that resolves without one, are planned as before
    for host in ("kdtest", "localhost"):
        assert main(["launch", "--headless", "--host", host, *DEMO]) == 0
        out = capsys.readouterr().out
        assert out.startswith("DRY RUN: nothing is connected to"), out


def test_an_unknown_host_is_refused_by_an_apr_dry_run(remote_env, monkeypatch, capsys):
    monkeypatch.setenv("KDTUI_DRY_RUN", "1")
    assert main(["launch", "--headless", "--profile", "apr", "--host", "nosuch", "--teacher",
                 "/m/t.apr", "--student", "/m/s.apr"]) == 2
    _refused(capsys, "--host", "nosuch")


def test_an_unknown_host_from_kdtui_host_is_named_as_the_variable(remote_env, monkeypatch,
                                                                   capsys):
    monkeypatch.setenv("KDTUI_HOST", "nosuch")
    assert main(["launch", "--headless", "--dry-run", *DEMO]) == 2
    _refused(capsys, "KDTUI_HOST", "nosuch")
