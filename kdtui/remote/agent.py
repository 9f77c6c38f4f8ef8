"""kdtui's remote agent: the small stdlib-only program every remote step runs on the GPU box.

kdtui uploads this file (named by its content hash, so a changed agent is a new file) into the
host's work dir over SFTP, and runs it with an argv list: `python agent-HASH.py SUBCOMMAND ...`.
Doing the work in Python on the far side keeps every remote command a plain, quoted argv (no
shell pipelines, no `nohup ... &`), and each subcommand answers with one JSON line on stdout.

Subcommands: probe, mkenv, launch, status, tail, cancel, pull. It must run on any Python >= 3.8
with nothing but the standard library (pull runs under the per-version venv, which has kdengine).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import signal
import site
import subprocess
import sys
import sysconfig

PID_FILE = "engine.pid"
TOKEN_FILE = "launch.token"  # which launch started the engine in engine.pid
LOG_FILE = "launch.log"
EVENTS_FILE = "events.jsonl"
BUILD_MARKER = ".kdtui-build"
ENGINE_MODULES = ("torch", "safetensors", "tokenizers", "huggingface_hub")


def answer(payload: dict) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = 3) -> None:
    answer({"ok": False, "error": message})
    sys.exit(code)


# -- probe -----------------------------------------------------------------------------------
def _module_version(name: str, python: str) -> str | None:
    code = ("import importlib, sys\n"
            "try:\n m = importlib.import_module(sys.argv[1])\nexcept Exception:\n print('')\n"
            "else:\n print(getattr(m, '__version__', '?'))")
    try:
        out = subprocess.run([python, "-c", code, name], capture_output=True, text=True,
                             timeout=120).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out or None


def _env_kdengine(env_dir: str) -> str | None:
    """kdengine's version as the venv imports it, None unless it comes from inside the venv (a
    removed package would otherwise be found in the configured python's, through the .pth)."""
    code = ("import json\ntry:\n import kdengine as m\nexcept Exception:\n print('null')\n"
            "else:\n print(json.dumps([getattr(m, '__version__', '?'), m.__file__]))")
    env_dir = os.path.abspath(env_dir)
    try:
        out = subprocess.run([os.path.join(env_dir, "bin", "python"), "-c", code],
                             capture_output=True, text=True, timeout=120).stdout.strip()
        found = json.loads(out or "null")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None
    if not found or not os.path.abspath(found[1]).startswith(env_dir + os.sep):
        return None
    return found[0]


def _torch_info() -> dict:
    try:
        import torch  # noqa: PLC0415 - probing is the point
    except Exception as exc:  # ImportError, or a broken CUDA install raising anything
        return {"torch": None, "torch_error": f"{type(exc).__name__}: {exc}"}
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_devices": []}
    try:
        if torch.cuda.is_available():
            info["cuda_devices"] = [torch.cuda.get_device_name(i)
                                    for i in range(torch.cuda.device_count())]
    except Exception as exc:
        info["cuda_error"] = f"{type(exc).__name__}: {exc}"
    return info


def _existing_parent(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def cmd_probe(args: argparse.Namespace) -> None:
    """What the host offers: python, torch, CUDA devices, disk, kdengine, and the run's state."""
    info: dict = {"ok": True, "python": sys.version.split()[0], "executable": sys.executable,
                  "home": os.path.expanduser("~"), "work_dir": os.path.abspath(args.work_dir),
                  "host": os.uname().nodename, "user": _user()}
    info.update(_torch_info())
    info["missing_modules"] = [m for m in ENGINE_MODULES[1:] if not _importable(m)]
    # what mkenv needs of this python to make the venv (venv) and install kdengine in it (pip)
    info["missing_for_venv"] = [m for m in ("venv", "pip") if not _importable(m)]
    info["disk_free_bytes"] = shutil.disk_usage(_existing_parent(args.work_dir)).free
    env_python = os.path.join(args.env_dir, "bin", "python")
    info["env_dir"] = os.path.abspath(args.env_dir)
    info["env_build"] = _read(os.path.join(args.env_dir, BUILD_MARKER))
    info["env_ready"] = info["env_build"] == args.build and os.path.exists(env_python)
    info["kdengine"] = (_env_kdengine(args.env_dir) if info["env_ready"]
                        else _module_version("kdengine", sys.executable))
    if info["env_ready"] and info["kdengine"] is None:
        # marked ready, but kdengine does not import from inside it (a package removed, a pip
        # run by hand): the sync stage makes it again instead of every check failing on it, or
        # the run taking the configured python's own kdengine through the .pth
        info["env_ready"], info["env_broken"] = False, True
        info["kdengine"] = _module_version("kdengine", sys.executable)
    info["run"] = _status(args.run_dir)
    info["run_dir"] = os.path.abspath(args.run_dir)
    answer(info)


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def _importable(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


# -- mkenv -----------------------------------------------------------------------------------
def cmd_mkenv(args: argparse.Namespace) -> None:
    """A venv for one kdengine build that still sees this python's packages (torch, CUDA).

    `venv --system-site-packages` is not enough: when this python is itself a venv or conda env,
    "system" means its base interpreter, which lacks torch. So the venv gets a .pth file that
    lists this python's own site-packages dirs, after the venv's own: the venv's kdengine wins,
    torch and friends come from the configured python, and nothing is downloaded.
    """
    import fcntl

    env_dir = os.path.abspath(args.env_dir)
    # one mkenv per venv at a time: a mkenv cut off by a dropped link may still be running
    # when the stage sends it again; the second waits, then finds the venv made
    try:  # a full disk (no space, or no inodes left) is one line here too, not a traceback
        os.makedirs(os.path.dirname(env_dir), exist_ok=True)
        lock = open(env_dir + ".lock", "w")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        fail(_env_problem(env_dir, exc.errno in (errno.ENOSPC, errno.EDQUOT),
                          f"{exc.strerror}: {exc.filename}"))
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        env_python = os.path.join(env_dir, "bin", "python")
        if _read(os.path.join(env_dir, BUILD_MARKER)) == args.build and \
                os.path.exists(env_python):
            version = _env_kdengine(env_dir)
            if version is not None:
                answer({"ok": True, "env_dir": env_dir, "kdengine": version,
                        "already_made": True})
                return
            print(f"{env_dir} is marked ready but kdengine does not import from it: "
                  "making it again", file=sys.stderr, flush=True)
        _make_env(args, env_dir)


def _make_env(args: argparse.Namespace, env_dir: str) -> None:
    """Make the venv; one that cannot be finished (a full disk, a failed install) is removed
    again, so it neither holds the space a retry needs nor looks half-ready."""
    try:
        problem = _fill_env(args, env_dir)
    except OSError as exc:
        problem = _env_problem(env_dir, exc.errno == errno.ENOSPC, f"{exc.strerror}: "
                               f"{exc.filename}" if exc.filename else str(exc))
    if problem:
        shutil.rmtree(env_dir, ignore_errors=True)
        fail(problem)


def _env_problem(env_dir: str, disk_full: bool, why: str) -> str:
    if disk_full:
        where = _existing_parent(env_dir)
        free = shutil.disk_usage(where).free
        found = os.statvfs(where)
        if found.f_files and found.f_favail == 0:  # bytes left, but no file can be made
            return (f"cannot make {env_dir}: the disk there has no free inodes "
                    f"({free / 2**20:.1f} MiB free, no file can be made); delete files on it, "
                    "or set the host's work_dir to a disk with room")
        return (f"cannot make {env_dir}: the disk there is full ({free / 2**20:.1f} MiB free); "
                "free some space on it, or set the host's work_dir to a disk with room")
    return f"cannot make {env_dir}: {why}"


def _fill_env(args: argparse.Namespace, env_dir: str) -> str | None:
    """Create the venv and install kdengine into it; the problem in one line, or None."""
    import venv

    venv.EnvBuilder(clear=True, symlinks=os.name != "nt", with_pip=False).create(env_dir)
    purelib = sysconfig.get_path("purelib", vars={"base": env_dir, "platbase": env_dir})
    dirs = [d for d in site.getsitepackages() if os.path.isdir(d)]
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        dirs.append(site.getusersitepackages())
    with open(os.path.join(purelib, "_kdtui_base_site.pth"), "w") as fh:
        fh.write("".join(d + "\n" for d in dirs))
    env_python = os.path.join(env_dir, "bin", "python")
    target = args.wheel or args.source
    # --ignore-installed: the base python may have a kdtui of its own (seen through the .pth);
    # it must neither satisfy the install nor be uninstalled
    pip = [env_python, "-m", "pip", "install", "--no-deps", "--ignore-installed",
           "--no-warn-script-location", "--disable-pip-version-check"]
    if args.wheel:
        pip.append("--no-index")
    else:
        pip.append("--no-build-isolation")
    # pip's output streams on (progress), and is kept: its last line is the reason it failed
    process = subprocess.Popen(pip + [target], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, errors="replace")
    said = []
    for line in process.stdout:
        sys.stderr.write(line)
        sys.stderr.flush()
        if line.strip():
            said.append(line.strip())
    if process.wait() != 0:
        full = any("No space left on device" in line or "Errno 28" in line for line in said)
        last = said[-1] if said else "no output"
        return _env_problem(env_dir, full, f"pip install of {target} failed (exit "
                            f"{process.returncode}): {last}")
    check = subprocess.run([env_python, "-c", "import kdengine, json, sys; print(json.dumps("
                            "[kdengine.__version__, kdengine.__file__]))"],
                           capture_output=True, text=True)
    if check.returncode != 0:
        return f"kdengine does not import in {env_dir}: {check.stderr.strip()[-300:]}"
    version, path = json.loads(check.stdout)
    if not os.path.abspath(path).startswith(env_dir + os.sep):
        return f"{env_python} imports kdengine from {path}, not from the new venv"
    with open(os.path.join(env_dir, BUILD_MARKER), "w") as fh:
        fh.write(args.build + "\n")  # written last: a half-made venv never looks ready
    answer({"ok": True, "env_dir": env_dir, "kdengine": version, "kdengine_file": path,
            "base_site": dirs})
    return None


# -- git -------------------------------------------------------------------------------------
def cmd_gitsync(args: argparse.Namespace) -> None:
    """Clone or fetch `url` into src_dir and check out `ref` detached; answer the commit."""
    src = os.path.abspath(args.src_dir)
    if args.ref.startswith("-"):  # git would read it as an option (--upload-pack=CMD runs CMD)
        fail(f"git ref {args.ref!r} starts with '-', which no branch, tag or commit does: "
             "give a branch, tag or commit")
    if not os.path.isdir(os.path.join(src, ".git")):
        os.makedirs(os.path.dirname(src), exist_ok=True)
        _git(["clone", "--quiet", "--", args.url, src])  # a URL is never an option
    else:
        _git(["-C", src, "remote", "set-url", "origin", args.url])
    _git(["-C", src, "fetch", "--quiet", "--force", "origin", args.ref])
    _git(["-C", src, "checkout", "--quiet", "--force", "--detach", "FETCH_HEAD"])
    commit = subprocess.run(["git", "-C", src, "rev-parse", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
    answer({"ok": True, "src_dir": src, "commit": commit})


def _git(argv: list) -> None:
    result = subprocess.run(["git", *argv], stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        fail(f"git {argv[0] if argv[0] != '-C' else argv[2]} failed: {result.stderr.strip()}")


# -- launch / status / tail / cancel ---------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[-1].split()[0] == "Z":
                return False
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            # a recycled pid belongs to something else: only a kdengine process is our run
            return b"kdengine" in fh.read()
    except OSError:
        return True


def _last_finished(run_dir: str) -> dict | None:
    path = os.path.join(run_dir, EVENTS_FILE)
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(path) - 65536))
            lines = fh.read().split(b"\n")
    except OSError:
        return None
    for raw in reversed(lines):
        try:
            event = json.loads(raw)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("type") == "run_finished":
            return event
        if isinstance(event, dict) and event.get("type") == "run_started":
            return None  # a resumed run: the earlier part's end is not this part's
    return None


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return -1


def _checkpoint_step(run_dir: str) -> int | None:
    """The step of the run's newest complete checkpoint (meta.json is written last), or None:
    what `kdengine train --resume` would continue from."""
    try:
        names = os.listdir(os.path.join(run_dir, "checkpoints"))
    except OSError:
        return None
    steps = [int(n[5:]) for n in names if n.startswith("step-") and n[5:].isdigit()
             and os.path.exists(os.path.join(run_dir, "checkpoints", n, "meta.json"))]
    return max(steps) if steps else None


def _status(run_dir: str) -> dict:
    pid_text = _read(os.path.join(run_dir, PID_FILE))
    pid = int(pid_text) if pid_text and pid_text.isdigit() else None
    return {"pid": pid, "alive": bool(pid and _pid_alive(pid)),
            "run_dir_exists": os.path.isdir(run_dir),
            "finished": _last_finished(run_dir),
            "checkpoint_step": _checkpoint_step(run_dir),
            "events_bytes": _size(os.path.join(run_dir, EVENTS_FILE)),
            "log_bytes": _size(os.path.join(run_dir, LOG_FILE))}


def cmd_launch(args: argparse.Namespace) -> None:
    """Start the engine in its own session, stdin from /dev/null, output into launch.log.

    `--token` makes a launch idempotent: the token is written beside engine.pid once the engine
    is started, so the same launch sent again after a dropped link answers the engine it
    already started (alive or not) instead of starting another one."""
    run_dir = os.path.abspath(args.run_dir)
    os.makedirs(run_dir, exist_ok=True)
    state = _status(run_dir)
    if args.token and _read(os.path.join(run_dir, TOKEN_FILE)) == args.token:
        answer({"ok": True, "pid": state["pid"], "already_running": False,
                "already_started": True, "alive": state["alive"]})
        return
    if state["alive"]:
        answer({"ok": True, "pid": state["pid"], "already_running": True})
        return
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(os.path.join(run_dir, LOG_FILE), "ab") as log, open(os.devnull, "rb") as null:
        process = subprocess.Popen(argv, stdin=null, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, close_fds=True, env=env)
    with open(os.path.join(run_dir, PID_FILE), "w") as fh:
        fh.write(f"{process.pid}\n")
    if args.token:
        with open(os.path.join(run_dir, TOKEN_FILE), "w") as fh:
            fh.write(args.token + "\n")
    # the events' size before this start: a run_finished the alive check finds must lie past
    # it, not be the end of the run's part before (a resume whose engine refused and exited)
    answer({"ok": True, "pid": process.pid, "already_running": False,
            "events_bytes": state["events_bytes"]})


def cmd_status(args: argparse.Namespace) -> None:
    answer({"ok": True, **_status(os.path.abspath(args.run_dir))})


def cmd_tail(args: argparse.Namespace) -> None:
    path = os.path.join(args.run_dir, LOG_FILE)
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(path) - 65536))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        lines = []
    answer({"ok": True, "lines": lines[-args.lines:]})


def cmd_cancel(args: argparse.Namespace) -> None:
    """SIGTERM to the run's process group (the engine is its session and group leader)."""
    state = _status(os.path.abspath(args.run_dir))
    pid = state["pid"]
    if not pid or not state["alive"]:
        answer({"ok": True, "sent": False, "pid": pid, "reason": "the run is not running"})
        return
    try:
        pgid = os.getpgid(pid)
        if pgid == pid:
            os.killpg(pgid, signal.SIGTERM)
        else:  # not a group leader after all: signal the process alone, never someone's group
            os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        answer({"ok": True, "sent": False, "pid": pid, "reason": "the run just ended"})
        return
    answer({"ok": True, "sent": True, "pid": pid})


# -- pull ------------------------------------------------------------------------------------
def cmd_pull(args: argparse.Namespace) -> None:
    """Bring hub models into the huggingface_hub cache, exactly as the engine will resolve them.

    Runs under the per-version venv: kdengine.sources is the engine's own resolution, so
    "cached" here means the engine will find it. huggingface_hub's progress bars go to stderr.
    """
    from kdengine.sources import is_repo_id, resolve_model_dir

    results = []
    for item in args.models:
        field, _, spec = item.partition("=")
        if not is_repo_id(spec):
            results.append({"field": field, "spec": spec, "pulled": False, "cached": True,
                            "note": "not a hub repo id"})
            continue
        cached = _cached(spec)
        print(f"{field}: {spec} " + ("is in the hub cache" if cached else "downloading"),
              file=sys.stderr, flush=True)
        try:
            path = resolve_model_dir(spec, field)
        except Exception as exc:  # ConfigError from kdengine: one line naming field and fix
            fail(_hub_error(field, spec, exc))
        results.append({"field": field, "spec": spec, "path": str(path), "cached": cached,
                        "pulled": not cached})
    answer({"ok": True, "models": results})


def _cached(spec: str) -> bool:
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(spec, local_files_only=True, allow_patterns=["config.json"])
        return True
    except Exception:
        return False


def _hub_error(field: str, spec: str, exc: Exception) -> str:
    text = str(exc)
    if "RepositoryNotFound" in text or "404" in text:
        return (f"{field}: {spec} was not found on the hub, or it is private: check the id, or "
                "log in on this host (`huggingface-cli login`, or HF_TOKEN in the host's env)")
    if "GatedRepo" in text or "403" in text or "401" in text:
        return (f"{field}: {spec} is gated or private: accept its licence on the hub and log in "
                "on this host (`huggingface-cli login`)")
    return f"{field}: {getattr(exc, 'message', text)}"


def main(argv: list | None = None) -> None:
    p = argparse.ArgumentParser(prog="kdtui-agent")
    sub = p.add_subparsers(dest="command", required=True)
    probe = sub.add_parser("probe")
    probe.add_argument("--work-dir", required=True)
    probe.add_argument("--env-dir", required=True)
    probe.add_argument("--build", required=True)
    probe.add_argument("--run-dir", required=True)
    mkenv = sub.add_parser("mkenv")
    mkenv.add_argument("--env-dir", required=True)
    mkenv.add_argument("--build", required=True)
    group = mkenv.add_mutually_exclusive_group(required=True)
    group.add_argument("--wheel")
    group.add_argument("--source")
    git = sub.add_parser("gitsync")
    git.add_argument("--src-dir", required=True)
    git.add_argument("--url", required=True)
    git.add_argument("--ref", required=True)
    launch = sub.add_parser("launch")
    launch.add_argument("--run-dir", required=True)
    launch.add_argument("--token", default="")
    launch.add_argument("argv", nargs=argparse.REMAINDER)
    for name in ("status", "cancel"):
        sub.add_parser(name).add_argument("--run-dir", required=True)
    tail = sub.add_parser("tail")
    tail.add_argument("--run-dir", required=True)
    tail.add_argument("--lines", type=int, default=40)
    pull = sub.add_parser("pull")
    pull.add_argument("models", nargs="+", metavar="FIELD=SPEC")
    args = p.parse_args(argv)
    handler = {"probe": cmd_probe, "mkenv": cmd_mkenv, "gitsync": cmd_gitsync,
               "launch": cmd_launch, "status": cmd_status, "tail": cmd_tail,
               "cancel": cmd_cancel, "pull": cmd_pull}[args.command]
    handler(args)


if __name__ == "__main__":
    main()
