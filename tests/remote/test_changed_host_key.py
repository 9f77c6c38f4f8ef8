"""A changed host key is refused with both commands a user needs when the box was reinstalled:
the `ssh-keygen -R` that removes the old key and the `ssh-keyscan` that trusts the new one
(the unknown-key message has the second; the changed one only said "trust the new one")."""

from __future__ import annotations

import asyncio

import pytest

from kdtui.remote.connect import RemoteError, open_connection
from kdtui.remote.hosts import get_host

pytestmark = pytest.mark.ssh


def test_a_changed_host_key_says_how_to_remove_the_old_key_and_trust_the_new(
        remote_env, sshd) -> None:
    with pytest.raises(RemoteError) as refused:
        asyncio.run(open_connection(get_host("kdtest-changed")))
    said = str(refused.value)
    known_hosts = sshd.dir / "known_hosts_changed"
    assert "CHANGED" in said
    assert f"ssh-keygen -R '[127.0.0.1]:{sshd.port}' -f {known_hosts}" in said
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {known_hosts}" in said
