"""docs/remote.md's hosts.toml example names every key the hosts file takes (ssh_config and
keepalive_count_max were accepted, and listed by the unknown-key error, but documented nowhere)."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from kdtui.remote.hosts import HostConfig

REMOTE_MD = Path(__file__).resolve().parents[1] / "docs" / "remote.md"


def test_every_hosts_file_key_is_in_the_documented_example() -> None:
    example = re.search(r"```toml\n(.*?)```", REMOTE_MD.read_text(), re.S).group(1)
    documented = set(re.findall(r"(\w+) =", example))  # git_url, git_ref: in sync's comment
    keys = {f.name for f in fields(HostConfig)} - {"alias", "from_file"}
    assert keys - documented == set()
