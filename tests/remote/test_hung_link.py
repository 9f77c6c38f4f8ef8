"""A hung link (the sshd serving it stopped, so nothing answers and nothing closes) is dropped by
the keepalive and reconnected, and leaves no asyncssh task behind whose exception nobody read
("Task exception was never retrieved": 15 tracebacks a hang, before reads were one request)."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from dataclasses import replace

import pytest

from kdtui.remote.hosts import get_host
from kdtui.remote.link import LOST, RECONNECTED
from kdtui.remote.source import SSHRunSource

pytestmark = pytest.mark.ssh


async def test_a_hung_link_reconnects_and_leaves_no_unretrieved_task_errors(
        remote_env, sshd, tmp_path):
    run_dir = tmp_path / "hung"
    run_dir.mkdir()
    log = b"".join(b"line %07d\n" % i for i in range(200_000))  # 2.4 MB: parallel blocks
    (run_dir / "launch.log").write_bytes(log)
    host = replace(get_host("kdtest"), keepalive_interval=0.2, keepalive_count_max=2)
    source = SSHRunSource(host, str(run_dir), max_backoff=0.5)
    states: list[str] = []
    source.link_listeners.append(lambda s: states.append(s.state))
    errors: list[dict] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    stopped: list[int] = []
    try:
        assert await source.read("launch.log", 0, 4 << 20)
        stopped = [pid for pid in sshd._descendants()]
        for pid in stopped:  # the link hangs: the serving processes neither answer nor close
            os.kill(pid, signal.SIGSTOP)
        reader = asyncio.create_task(source.read("launch.log", 0, 4 << 20))
        for _ in range(600):
            if LOST in states:
                break
            await asyncio.sleep(0.05)
        assert LOST in states
        for pid in stopped:
            os.kill(pid, signal.SIGKILL)
        stopped = []
        # the same read, over a new connection, whole and in order
        assert await asyncio.wait_for(reader, 60) == log
        assert states[-1] == RECONNECTED
        for _ in range(3):
            gc.collect()
            await asyncio.sleep(0.1)
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGKILL)
        await source.close()
        loop.set_exception_handler(None)
    assert not [c.get("message") for c in errors], errors
