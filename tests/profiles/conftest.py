"""Fixtures of the apr profile's end-to-end tests.

The real test sshd comes from tests/remote/conftest.py (imported, not copied). The "aprender
repo" is a real git repository holding a real Cargo package, apr-cli, whose `apr` binary (built
on the host by the profile's own `cargo build --release --features cuda,training`) execs the
Python stand-in apr_standin.py with its arguments. The stand-in's mode comes from the host's env
in a per-test hosts file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
STANDIN = HERE / "apr_standin.py"

_spec = importlib.util.spec_from_file_location("kdtui_tests_remote_conftest",
                                               HERE.parent / "remote" / "conftest.py")
_remote = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(_remote)
sshd = _remote.sshd  # the session's real OpenSSH server (pytest registers the fixture here)

CARGO_TOML = """[package]
name = "apr-cli"
version = "0.0.1"
edition = "2021"

[[bin]]
name = "apr"
path = "src/main.rs"

[features]
cuda = []
training = []
"""

MAIN_RS = """use std::os::unix::process::CommandExt;

// kdtui test stand-in: the real apr's CLI surface, implemented in apr_standin.py
fn main() {
    let err = std::process::Command::new(PYTHON)
        .arg(SCRIPT)
        .args(std::env::args_os().skip(1))
        .exec();
    eprintln!("apr stand-in: cannot exec {PYTHON}: {err}");
    std::process::exit(127);
}

const PYTHON: &str = %s;
const SCRIPT: &str = %s;
"""


def _git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "kdtui", "GIT_AUTHOR_EMAIL": "t@x",
                        "GIT_COMMITTER_NAME": "kdtui", "GIT_COMMITTER_EMAIL": "t@x"})


@pytest.fixture(scope="session")
def apr_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repo with the stand-in apr-cli package, its main branch tagged v-test."""
    if shutil.which("cargo") is None or shutil.which("git") is None:
        pytest.skip("needs cargo and git (the profile builds apr with cargo on the host)")
    repo = tmp_path_factory.mktemp("aprender")
    (repo / "src").mkdir()
    (repo / "Cargo.toml").write_text(CARGO_TOML)
    (repo / "src" / "main.rs").write_text(
        MAIN_RS % (json.dumps(sys.executable), json.dumps(str(STANDIN))))
    (repo / ".gitignore").write_text("target/\n")
    _git("init", "-q", "-b", "main", cwd=repo)
    _git("add", ".", cwd=repo)
    _git("commit", "-q", "-m", "stand-in apr-cli", cwd=repo)
    _git("tag", "v-test", cwd=repo)
    return repo


@pytest.fixture(scope="session")
def apr_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The host's work dir, shared by the session so apr is built once."""
    return tmp_path_factory.mktemp("apr-host-work")


@pytest.fixture
def apr_host(sshd, apr_work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write a hosts file for alias kdtest with the stand-in's mode; returns a setter."""
    cargo_dir = os.path.dirname(shutil.which("cargo") or "/root/.cargo/bin/cargo")
    cache = tmp_path / "host-cache"

    def configure(mode: str = "normal", *, step_delay: float = 0.25,
                  alive_check_s: float = 1.0) -> str:
        env = {"APR_STANDIN_MODE": mode, "APR_STANDIN_STEP_DELAY": str(step_delay),
               "XDG_CACHE_HOME": str(cache)}
        env_toml = ", ".join(f'{k} = "{v}"' for k, v in env.items())
        hosts = tmp_path / "hosts.toml"
        hosts.write_text(f'[hosts.kdtest]\nwork_dir = "{apr_work}"\npython = "{sys.executable}"\n'
                         f'ssh_config = ["{sshd.ssh_config}"]\nalive_check_s = {alive_check_s}\n'
                         f"env_setup = ['export PATH=\"{cargo_dir}:$PATH\"']\n"
                         f"env = {{ {env_toml} }}\n")
        monkeypatch.setenv("KDTUI_HOSTS_FILE", str(hosts))
        monkeypatch.setenv("KDTUI_SSH_CONFIG", str(sshd.ssh_config))
        return "kdtest"

    return configure


@pytest.fixture
def evidence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's dispatch records (KDTUI_EVIDENCE_DIR), with no dry run left on by the env."""
    path = tmp_path / "evidence"
    monkeypatch.setenv("KDTUI_EVIDENCE_DIR", str(path))
    monkeypatch.delenv("DRY_RUN", raising=False)
    monkeypatch.delenv("KDTUI_DRY_RUN", raising=False)
    return path
