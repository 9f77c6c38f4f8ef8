"""A RunSource that reads a remote run's files over SFTP and outlives dropped connections.

`read(name, offset, limit)` is a positioned SFTP read, so resuming after a reconnect is just
reading from the same offset again: RunFollower only advances offsets past complete lines, and
the files are append-only, so nothing is lost and nothing is shown twice. While the link is
down, `read` waits and reconnects with exponential backoff (0.25 s doubling to 10 s), telling
`on_status` what it is doing, and gives up with a RemoteError after `give_up_after` seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncssh

from kdtui.remote.command import RemoteCommand
from kdtui.remote.connect import (
    CONNECTION_ERRORS,
    HostKeyRefused,
    RemoteError,
    open_connection,
    run_agent,
)
from kdtui.remote.hosts import HostConfig
from kdtui.remote.link import CONNECTED, GIVEN_UP, LOST, RECONNECTED, LinkState

T = TypeVar("T")
LINK_ERRORS = (*CONNECTION_ERRORS, asyncssh.SFTPConnectionLost, asyncssh.SFTPNoConnection)
BLOCK = 256 << 10  # bytes a request, when the server does not say its limit
PARALLEL_BLOCKS = 15  # more requests at once while a backlog lasts


class SSHRunSource:
    """Follows RUN_DIR/{events.jsonl,launch.log} on `host` by byte offset."""

    def __init__(self, host: HostConfig, run_dir: str, *,
                 conn: asyncssh.SSHClientConnection | None = None,
                 on_status: Callable[[str], None] | None = None,
                 give_up_after: float = 600.0, max_backoff: float = 10.0) -> None:
        self.host = host
        self.run_dir = run_dir
        self.label = host.alias
        self.on_status = on_status
        self.give_up_after = give_up_after
        self.max_backoff = max_backoff
        self.reconnects = 0  # how many times the link was re-established
        self.link: LinkState | None = None  # None until the first connection
        self.link_listeners: list[Callable[[LinkState], None]] = []
        self._conn = conn
        self._sftp: asyncssh.SFTPClient | None = None
        self._files: dict[str, asyncssh.SFTPClientFile] = {}
        self._lock = asyncio.Lock()

    # -- the connection ------------------------------------------------------------------------
    async def _ensure(self) -> asyncssh.SSHClientConnection:
        if self._conn is None:
            self._conn = await open_connection(self.host)
        if self._sftp is None:
            self._sftp = await self._conn.start_sftp_client()
        if self.link is None:
            self._set_link(LinkState(CONNECTED, self.host.alias, time.monotonic()))
        return self._conn

    def _set_link(self, state: LinkState) -> None:
        """Tell the listeners (every retry of a loss: its countdown moves); `on_status` hears
        only changes of state, in words."""
        before, self.link = self.link, state
        for listener in list(self.link_listeners):
            listener(state)
        if state.changed(before) and state.state != CONNECTED:
            self._say(state.line())

    def _drop(self) -> None:
        self._files.clear()
        if self._sftp is not None:
            self._sftp.exit()
            self._sftp = None
        if self._conn is not None:
            self._conn.abort()
            self._conn = None

    async def with_link(self, action: Callable[[asyncssh.SSHClientConnection], Awaitable[T]]) -> T:
        """Run `action(conn)`, reconnecting with backoff as often as the link drops."""
        first_failure: float | None = None
        delay = 0.25
        while True:
            try:
                async with self._lock:
                    conn = await self._ensure()
                    result = await action(conn)
                if first_failure is not None:
                    self.reconnects += 1
                    self._set_link(LinkState(RECONNECTED, self.host.alias, time.monotonic(),
                                             reconnects=self.reconnects))
                return result
            except HostKeyRefused:
                raise  # never retried: a changed key is not a flaky link
            except (RemoteError, *LINK_ERRORS) as exc:
                if isinstance(exc, RemoteError) and not _is_link_error(exc):
                    raise
                self._drop()
                now = time.monotonic()
                first_failure = first_failure or now
                if now - first_failure > self.give_up_after:
                    self._set_link(LinkState(GIVEN_UP, self.host.alias, first_failure,
                                             _reason(exc), reconnects=self.reconnects))
                    raise RemoteError(f"lost {self.host.alias} for over {self.give_up_after:g}s "
                                      f"({_reason(exc)}); the run may still be going: "
                                      "try `kdtui watch` again later") from None
                self._set_link(LinkState(LOST, self.host.alias, first_failure, _reason(exc),
                                         retry_at=now + delay,
                                         give_up_at=first_failure + self.give_up_after,
                                         reconnects=self.reconnects))
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)

    async def try_connect(self) -> str | None:
        """One attempt at the link, no retries: None when it is up, else why not (a watch of
        an ended run shows what its manifest recorded instead of waiting for the host)."""
        try:
            async with self._lock:
                await self._ensure()
        except HostKeyRefused:
            raise
        except (RemoteError, *LINK_ERRORS) as exc:
            if isinstance(exc, RemoteError) and not _is_link_error(exc):
                raise
            self._drop()
            return _reason(exc)
        return None

    def _say(self, text: str) -> None:
        if self.on_status is not None:
            self.on_status(text)

    # -- RunSource -----------------------------------------------------------------------------
    async def read(self, name: str, offset: int, limit: int) -> bytes:
        async def action(conn: asyncssh.SSHClientConnection) -> bytes:
            assert self._sftp is not None
            handle = self._files.get(name)
            if handle is None:
                try:
                    # block_size=0: one SFTP request per read (_read_blocks parallelizes).
                    # asyncssh's own split into parallel tasks leaves those it no longer
                    # awaits when the link dies: "Task exception was never retrieved"
                    handle = await self._sftp.open(f"{self.run_dir}/{name}", "rb",
                                                   block_size=0)
                except (asyncssh.SFTPNoSuchFile, asyncssh.SFTPNoSuchPath):
                    return b""  # not written yet
                self._files[name] = handle
            # one request asks no more than the server answers in one (its limits; 0: unknown)
            block = min(limit, getattr(self._sftp.limits, "max_read_len", 0) or BLOCK)
            return await _read_blocks(handle, offset, limit, block)
        return await self.with_link(action)

    async def agent(self, command: RemoteCommand, timeout: float = 60) -> dict[str, Any]:
        """Run an agent subcommand (status, cancel, tail) over the same resilient link."""
        return await self.with_link(lambda conn: run_agent(conn, command, timeout=timeout))

    async def close(self) -> None:
        conn = self._conn
        self._drop()
        if conn is not None:
            await conn.wait_closed()


async def _read_blocks(handle: asyncssh.SFTPClientFile, offset: int, limit: int,
                       block: int) -> bytes:
    """Up to `limit` bytes from `offset`: one request, then (a backlog: it came back full) up to
    PARALLEL_BLOCKS more at once. Every request's outcome is awaited (gather with
    return_exceptions), so a link that dies under them leaves no task unread; the data stops at
    the first short block, so it is always contiguous."""
    data = await handle.read(block, offset)
    if len(data) < block or limit <= block:
        return data
    count = min(PARALLEL_BLOCKS, limit // block - 1)
    rest = await asyncio.gather(*(handle.read(block, offset + block * (i + 1))
                                  for i in range(count)), return_exceptions=True)
    for part in rest:
        if isinstance(part, BaseException):
            raise part
    for part in rest:
        data += part
        if len(part) < block:
            break
    return data


def _is_link_error(exc: RemoteError) -> bool:
    # ConnectFailed while reconnecting (sshd restarting, host rebooting) is worth retrying
    from kdtui.remote.connect import ConnectFailed

    return isinstance(exc, ConnectFailed)


def _reason(exc: BaseException) -> str:
    from kdtui.remote.connect import link_reason

    return str(exc) if isinstance(exc, RemoteError) else link_reason(exc)
