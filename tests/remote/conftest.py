"""A real OpenSSH server on 127.0.0.1 for the remote tests.

One sshd per test session: its own host key, a client key in its authorized_keys, a high free
port, StrictModes off (keys live in tmp). An ssh config file names the aliases the tests use:

    kdtest          the server, trusted through a known_hosts file written here
    kdtest-unknown  the same server, with an empty known_hosts (unknown key)
    kdtest-changed  the same server, with known_hosts holding another key (changed key)
    kdtest-down     a port nothing listens on (a host that is down)

The remote "work dir" is in tmp and the remote python is this interpreter (it has torch).
`SSHServer.kill_connections()` SIGKILLs the per-connection sshd processes, which drops every
open connection exactly like a network cut, while the listener keeps accepting new ones.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import fill_up, tmpfs  # noqa: F401 - the remote tests' full disks

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = next((p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server",
                                "/usr/libexec/sftp-server") if os.path.exists(p)),
                   "/usr/lib/openssh/sftp-server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kdtui-test",
                    "-f", str(path)], check=True)


@dataclass
class SSHServer:
    dir: Path
    port: int
    process: subprocess.Popen[bytes]
    ssh_config: Path
    host_key_pub: str

    def _descendants(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
        out, todo = [], [self.process.pid]
        while todo:
            for child in children.get(todo.pop(), []):
                out.append(child)
                todo.append(child)
        return out

    def kill_connections(self) -> int:
        """SIGKILL every sshd process serving a connection (not the listener)."""
        killed = 0
        for pid in self._descendants():
            try:
                with open(f"/proc/{pid}/comm") as fh:
                    comm = fh.read().strip()
            except OSError:
                continue
            if comm.startswith("sshd"):
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
                except ProcessLookupError:
                    pass
        return killed


def launch_flags(inputs: dict[str, str], steps: int = 4, eval_every: int = 2,
                 *extra: str) -> list[str]:
    """`kdtui launch`'s flags for a tiny run of the tiny_run_inputs models: fast on the CPU."""
    return ["--teacher", inputs["teacher"], "--student", inputs["student"], "--data",
            inputs["data"], "--steps", str(steps), "--batch-size", "2", "--seq-len", "16",
            "--eval-every", str(eval_every), "--eval-batches", "1", "--log-every", "1",
            "--device", "cpu", "--dtype", "float32", *extra]


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> SSHServer:
    if not os.path.exists(SSHD) or shutil.which("ssh-keygen") is None:
        pytest.skip("needs OpenSSH's sshd and ssh-keygen (.ci/run installs openssh-server)")
    d = tmp_path_factory.mktemp("sshd")
    _keygen(d / "host_key")
    _keygen(d / "client_key")
    _keygen(d / "other_host_key")
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    port = _free_port()
    down_port = _free_port()
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation dir
    (d / "sshd_config").write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {d}/host_key
AuthorizedKeysFile {d}/authorized_keys
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
PidFile {d}/sshd.pid
MaxSessions 64
MaxStartups 64
Subsystem sftp {SFTP_SERVER}
""")
    host_pub = (d / "host_key.pub").read_text().split()
    other_pub = (d / "other_host_key.pub").read_text().split()
    target = f"[127.0.0.1]:{port}"
    (d / "known_hosts").write_text(f"{target} {host_pub[0]} {host_pub[1]}\n")
    (d / "known_hosts_empty").write_text("")
    (d / "known_hosts_changed").write_text(f"{target} {other_pub[0]} {other_pub[1]}\n")
    common = f"  User {os.environ.get('USER', 'root')}\n  IdentityFile {d}/client_key\n" \
        "  IdentitiesOnly yes\n"
    (d / "ssh_config").write_text(
        f"Host kdtest\n  HostName 127.0.0.1\n  Port {port}\n{common}"
        f"  UserKnownHostsFile {d}/known_hosts\n\n"
        f"Host kdtest-unknown\n  HostName 127.0.0.1\n  Port {port}\n{common}"
        f"  UserKnownHostsFile {d}/known_hosts_empty\n\n"
        f"Host kdtest-changed\n  HostName 127.0.0.1\n  Port {port}\n{common}"
        f"  UserKnownHostsFile {d}/known_hosts_changed\n\n"
        f"Host kdtest-down\n  HostName 127.0.0.1\n  Port {down_port}\n{common}"
        f"  UserKnownHostsFile {d}/known_hosts\n")
    log = open(d / "sshd.log", "wb")  # noqa: SIM115 - lives as long as the server
    process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
                               stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"sshd exited: {(d / 'sshd.log').read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    server = SSHServer(d, port, process, d / "ssh_config", " ".join(host_pub[:2]))
    yield server
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


@pytest.fixture(scope="session")
def remote_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The remote work dir, shared by the session so the per-version venv is built once."""
    return tmp_path_factory.mktemp("remote-work")


@pytest.fixture
def remote_env(sshd: SSHServer, remote_work: Path, tmp_path: Path, session_cache: Path,
               monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Hosts file, ssh config and evidence dir for kdtui, all in tmp."""
    hf_home = tmp_path / "hf-home"
    hosts = tmp_path / "hosts.toml"
    # alive_check_s: the launch stage sleeps this long before it asks whether the engine lives,
    # in every dispatch; the tests' engines are still importing torch after 0.5 s (an engine
    # that ends at once is test_launch_alive_check's, with a window of its own)
    host_block = (f'work_dir = "{remote_work}"\npython = "{sys.executable}"\n'
                  f'ssh_config = ["{sshd.ssh_config}"]\nalive_check_s = 0.5\n'
                  'env_setup = ["export OMP_NUM_THREADS=1"]\n'
                  f'env = {{ HF_HUB_OFFLINE = "1", HF_HOME = "{hf_home}", '
                  f'KDENGINE_CACHE = "{session_cache}" }}\n')
    hosts.write_text("".join(f"[hosts.{alias}]\n{host_block}\n" for alias in
                             ("kdtest", "kdtest-unknown", "kdtest-changed", "kdtest-down")))
    monkeypatch.setenv("KDTUI_HOSTS_FILE", str(hosts))
    monkeypatch.setenv("KDTUI_SSH_CONFIG", str(sshd.ssh_config))
    monkeypatch.setenv("KDTUI_EVIDENCE_DIR", str(tmp_path / "evidence"))
    for name in list(os.environ):
        if name.startswith("KDTUI_") and name not in ("KDTUI_HOSTS_FILE", "KDTUI_SSH_CONFIG",
                                                      "KDTUI_EVIDENCE_DIR", "KDTUI_CONFIG_DIR"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("DRY_RUN", raising=False)
    return {"hosts": hosts, "evidence": tmp_path / "evidence", "work": remote_work,
            "hf_home": hf_home}


@pytest.fixture
def launched_on_down_host(remote_env, tiny_run_inputs):
    """launched_on_down_host(run_name): a real dispatch's evidence for kdtest-down (it stops at
    the connect: nothing answers there), then as if the run had been launched before the host
    went down (no end recorded); returns its dispatch.json."""
    import json

    from kdtui.cli import main as kdtui_main

    def launch(run_name: str) -> Path:
        flags = ["--teacher", tiny_run_inputs["teacher"], "--student", tiny_run_inputs["student"],
                 "--data", tiny_run_inputs["data"], "--run-name", run_name, "--steps", "40"]
        assert kdtui_main(["launch", "--headless", "--detach", "--host", "kdtest-down",
                           *flags]) == 2
        manifest = remote_env["evidence"] / run_name / "dispatch.json"
        data = json.loads(manifest.read_text())
        manifest.write_text(json.dumps({**data, "launched": True, "pid": 4242, "error": None}))
        return manifest

    return launch
