"""Shared test setup: no test reads or writes the user's own state. Every test gets its own runs
dir, evidence dir, kdtui config dir (settings, hosts file, seen runs) and an empty ssh config;
the XDG dirs (platformdirs' defaults, the hub cache's) point into a session tmp dir; the user's
KDTUI_*/KDENGINE_*/HF_* variables are unset; the demo teacher is trained once per session into a
session cache (never the user's). A test sets what it needs on top of that."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent

# How long a live run may go without a new event or log line before a test calls it stuck. A run
# says something every few seconds when idle (steps, evals, stages, the demo teacher every 50 of
# its steps); the quietest stretches (the engine's start-up, 50 teacher steps) took up to 240s
# on a 2-core machine loaded 5-fold. Tests wait on the run's own progress, never on a wall-clock
# total: a run that is slow but moving is waited for; the pytest timeout is the backstop.
QUIET_S = 300.0
AFTER_FINISH_S = 60.0  # once run_finished is on disk, what the waiter still allows


def read_events(run_dir: Path) -> list[dict]:
    """The run's events so far (complete lines only: the engine may be mid-write)."""
    try:
        text = (Path(run_dir) / "events.jsonl").read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


class RunWatch:
    """A run's progress as its files show it, for a test waiting on it: `check()` fails only
    when the run has gone QUIET_S without a new event or log line, or AFTER_FINISH_S past its
    run_finished event, with what the run said last."""

    def __init__(self, run_dir: Path, what: str = "condition", quiet: float = QUIET_S) -> None:
        self.run_dir, self.what, self.quiet = Path(run_dir), what, quiet
        self.started = self.last_news = time.monotonic()
        self.seen: tuple[int, int] = (-1, -1)
        self.finished_at: float | None = None

    def _sizes(self) -> tuple[int, int]:
        sizes = []
        for name in ("events.jsonl", "launch.log"):
            try:
                sizes.append((self.run_dir / name).stat().st_size)
            except FileNotFoundError:
                sizes.append(0)
        return sizes[0], sizes[1]

    def check(self) -> None:
        now = time.monotonic()
        sizes = self._sizes()
        if sizes != self.seen:
            self.seen, self.last_news = sizes, now
            if self.finished_at is None and any(e.get("type") == "run_finished"
                                                for e in read_events(self.run_dir)):
                self.finished_at = now
        if self.finished_at is not None and now - self.finished_at > AFTER_FINISH_S:
            self._fail(f"the run finished {AFTER_FINISH_S:.0f}s ago")
        if now - self.last_news > self.quiet:
            self._fail(f"the run went {self.quiet:.0f}s without a new event or log line")

    def _fail(self, why: str) -> None:
        try:
            tail = (self.run_dir / "launch.log").read_text().splitlines()[-25:]
        except FileNotFoundError:
            tail = ["(no launch.log)"]
        events = read_events(self.run_dir)
        raise AssertionError(
            f"{self.what} not met after {time.monotonic() - self.started:.0f}s: {why} "
            f"({self.run_dir}); last event: {events[-1] if events else None}; launch.log ends:\n"
            + "\n".join(tail))


def wait_on_run(run_dir: Path, condition: Callable[[], bool], what: str = "condition",
                step: float = 0.2, quiet: float = QUIET_S) -> None:
    """Block until condition() holds, for as long as the run in run_dir makes progress."""
    watch = RunWatch(run_dir, what, quiet)
    while not condition():
        watch.check()
        time.sleep(step)


# The user's variables that would change what a test reads or how a run behaves (where runs,
# dispatches, settings and caches live; engine switches; the hub cache). Unset for the whole
# session, before any test module is imported (huggingface_hub reads its variables on import).
USER_STATE_PREFIXES = ("KDTUI_", "KDENGINE_", "HF_", "HUGGINGFACE_", "XDG_")
XDG_DIRS = ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME")
_user_state_root: Path | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _user_state_root
    _user_state_root = Path(tempfile.mkdtemp(prefix="kdtui-tests-home-"))
    for name in list(os.environ):
        if name.startswith(USER_STATE_PREFIXES) and name != "XDG_RUNTIME_DIR":
            del os.environ[name]
    for name in XDG_DIRS:
        path = _user_state_root / name.lower()
        path.mkdir(mode=0o700)
        os.environ[name] = str(path)
    os.environ["HF_HUB_OFFLINE"] = "1"
    # One torch thread in the test process too, as in the engines it starts (isolated_engine_dirs
    # below): torch reads OMP_NUM_THREADS once, when a test module first imports it, before any
    # test's monkeypatch. With torch's default (a thread a core), every in-process run and
    # tensor test waited on its descheduled second thread while the other worker ran: a 40-step
    # tiny run in this process took 5-9 s on 2 threads, 0.5 s on 1, beside a busy worker.
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The files holding a `long` test first (their order kept): --dist loadfile hands files
    to the workers in this order, and a minute-long test in a file handed out last would run
    alone at the end while the other worker idles."""
    long_files = {item.path for item in items if item.get_closest_marker("long")}
    items.sort(key=lambda item: item.path not in long_files)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _user_state_root is not None:
        shutil.rmtree(_user_state_root, ignore_errors=True)


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The engine's cache dir for this worker's tests; its demo/ (the demo teacher, trained in
    the first test that needs it) is one for every xdist worker, as a machine's is: the engine
    trains it once and a second engine waits for it (kdengine.demo.teacher_path)."""
    cache = tmp_path_factory.mktemp("kdengine-cache")
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the workers' base temps share their parent
        shared = tmp_path_factory.getbasetemp().parent / "kdengine-demo"
        shared.mkdir(exist_ok=True)
        (cache / "demo").symlink_to(shared, target_is_directory=True)
    return cache


@pytest.fixture(autouse=True)
def isolated_engine_dirs(tmp_path: Path, session_cache: Path,
                         monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test's own places for what kdtui and the engine keep (nothing is created: a test
    that wants a dir makes it), so the user's runs, dispatches and settings are never read."""
    monkeypatch.setenv("KDENGINE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("KDENGINE_CACHE", str(session_cache))
    monkeypatch.setenv("KDTUI_EVIDENCE_DIR", str(tmp_path / "evidence"))
    monkeypatch.setenv("KDTUI_CONFIG_DIR", str(tmp_path / "kdtui-config"))
    monkeypatch.setenv("KDTUI_HOSTS_FILE", str(tmp_path / "kdtui-config" / "hosts.toml"))
    monkeypatch.setenv("KDTUI_SSH_CONFIG", os.devnull)  # never ~/.ssh/config
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    # One torch thread per engine: with two threads and one other busy process on 2 cores, every
    # parallel op waits on the descheduled thread (30 demo steps: 65s with 2 threads, 13s with 1,
    # measured with one busy loop); idle, the tiny models the tests train hardly gain from two.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    stop_left_engines(tmp_path)


def stop_left_engines(root: Path) -> None:
    """Kill the engines a test left going under root (a failed or timed-out test that started
    a run from the dashboard): each runs in its own process group and would otherwise train on,
    slowing every later test on a 2-core machine. Only a live process whose command line names
    its run dir is touched (an engine.pid may be stale)."""
    for pid_file in root.glob("**/engine.pid"):
        try:
            pid = int(pid_file.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
        if "kdengine" in cmdline and str(pid_file.parent) in cmdline:
            with contextlib.suppress(OSError):
                if os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)


# The engine's CLI, SIGKILLed by itself before training step KD_KILL_AT (a kill -9 mid-run, once
# the checkpoints saved before it are whole: the engine writes them in the background)
KILL_BEFORE_STEP = r"""
import os, signal, sys
import kdengine.trainer as T
kill_at = int(os.environ["KD_KILL_AT"])
train_step = T.KDTrainer.queue_step
def killing_step(self, batch=None, **queue):
    if self.step + 1 == kill_at:
        self.report_checkpoints(wait=True)  # the checkpoints saved so far, whole on disk
        os.kill(os.getpid(), signal.SIGKILL)
    return train_step(self, batch, **queue)
T.KDTrainer.queue_step = killing_step
from kdengine.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def killed_at_step() -> list[str]:
    """A launcher for `kdengine ...` argv that kills the engine before step KD_KILL_AT (set it
    in the environment the engine gets)."""
    return [sys.executable, "-c", KILL_BEFORE_STEP]


def _one_line_refusal(done: subprocess.CompletedProcess[str], command: str, said: str) -> str:
    """The promise for bad input (docs): exit 2, nothing on stdout, no traceback, one line on
    stderr that starts `kdengine COMMAND: error: SAID`; returns that line."""
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"kdengine {command}: error: {said}"), lines[0]
    return lines[0]


def one_line_in_process(capsys: pytest.CaptureFixture[str], code: int, command: str) -> str:
    """The same promise for `kdengine.cli.main` called in this process: its exit `code`, what
    `capsys` caught; returns the line."""
    out = capsys.readouterr()
    return _one_line_refusal(subprocess.CompletedProcess([], code, out.out, out.err), command, "")


@pytest.fixture
def engine_in_process(capsys: pytest.CaptureFixture[str]
                      ) -> Callable[..., subprocess.CompletedProcess[str]]:
    """engine_in_process(*argv): `kdengine argv` through kdengine.cli.main in this process, as
    subprocess.run(capture_output=True, text=True) gives it (exit code, stdout, stderr), without
    a new interpreter's torch import; the test worker's SIGINT/SIGTERM handlers are put back."""
    import signal as signals

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        from kdengine.cli import main

        capsys.readouterr()
        handlers = {sig: signals.getsignal(sig) for sig in (signals.SIGINT, signals.SIGTERM)}
        try:
            code = main(list(argv))
        except SystemExit as stop:
            code = stop.code
        finally:
            for sig, handler in handlers.items():
                signals.signal(sig, handler)
        out = capsys.readouterr()
        return subprocess.CompletedProcess(list(argv), code, out.out, out.err)

    return run


@pytest.fixture
def one_line_refusal() -> Callable[[subprocess.CompletedProcess[str], str, str], str]:
    """one_line_refusal(done, command, said): the refusal's line, checked (_one_line_refusal)."""
    return _one_line_refusal


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    """A regular file where a directory is wanted."""
    path = tmp_path / "afile"
    path.write_text("not a directory\n")
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    """`rows` as a JSONL file at `path` (one JSON record a line); returns `path`."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def chat_record(i: int, answer: str | None = None) -> dict:
    """A one-turn conversation record: the user's q{i}?, the assistant's `answer` (a{i})."""
    return {"messages": [{"role": "user", "content": f"q{i}?"},
                         {"role": "assistant", "content": f"a{i}" if answer is None else answer}]}


def put_in_hub_cache(cache: Path, repo_id: str,
                     files: Mapping[str, str | bytes] | Path | Iterable[Path], *,
                     kind: str = "model") -> str:
    """Lay `files` out as huggingface_hub's cache holds a downloaded repo (its documented
    layout: blobs by sha256, snapshots/<commit>/ symlinks, refs/main) under `cache` (HF_HOME/hub);
    returns the commit. `files`: {path in the repo: content}, a directory (its files), or
    files. `kind`: "model" or "dataset". Test-side only: the engine never builds or guesses
    these paths, it asks snapshot_download."""
    import hashlib

    if isinstance(files, Path):
        files = sorted(p for p in files.iterdir() if p.is_file())
    contents = (dict(files) if isinstance(files, Mapping)
                else {path.name: path.read_bytes() for path in files})
    repo = cache / f"{kind}s--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    for name, content in contents.items():
        data = content.encode() if isinstance(content, str) else content
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return commit


@pytest.fixture
def hub_cache_layout() -> Callable[..., str]:
    """put_in_hub_cache, for the tests under a folder with a conftest of its own."""
    return put_in_hub_cache


def offline_hub(monkeypatch: pytest.MonkeyPatch, cache: Path, home: Path) -> dict[str, str]:
    """Point huggingface_hub at the local `cache` with HF_HUB_OFFLINE=1, for this process (its
    constants are read at import) and the commands it starts; returns that environment."""
    import huggingface_hub.constants as constants

    env = {"HF_HUB_CACHE": str(cache), "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return env


async def wait_for(pilot: Any, condition: Callable[[], bool], timeout: float = 30.0,
                   step: float = 0.1) -> None:
    """A Textual pilot: let the app run until condition() holds; fail with the time it waited."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await pilot.pause(step)


@pytest.fixture(name="wait_for")
def wait_for_fixture() -> Callable[..., Any]:
    """wait_for(pilot, condition, timeout=30.0): the app runs until condition() holds."""
    return wait_for


@pytest.fixture
def engine_cmd() -> list[str]:
    """The engine's CLI as a user runs it (the same interpreter as the tests)."""
    return [sys.executable, "-m", "kdengine"]


def write_byte_tokenizer(directory: Path) -> None:
    """A GPT-2-style byte-level BPE tokenizer with no merges: 256 byte tokens + <|endoftext|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text('{"eos_token": "<|endoftext|>"}\n')



# a plain ChatML chat template (the data-format tests' conversations)
PLAIN_CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
                "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def write_chat_tokenizer(directory: Path, template: str = PLAIN_CHATML) -> Path:
    """write_byte_tokenizer, with `template` as tokenizer_config.json's chat_template."""
    write_byte_tokenizer(directory)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    (directory / "tokenizer_config.json").write_text(json.dumps({**config,
                                                                 "chat_template": template}))
    return directory


def write_chat_pair(root: Path) -> tuple[Path, Path]:
    """A tiny teacher (32 wide) and student (16 wide), one block each, with a ChatML template:
    the conversation tests' pair, under `root`."""
    teacher = write_chat_tokenizer(write_tiny_model(root / "teacher", hidden=32, layers=1,
                                                    seed=1))
    student = write_chat_tokenizer(write_tiny_model(root / "student", hidden=16, layers=1,
                                                    seed=2))
    return teacher, student


def write_tiny_model(directory: Path, *, hidden: int, layers: int, seed: int,
                     vocab: int = 257) -> Path:
    """A real HF-layout Llama-family checkpoint (config.json, model.safetensors, tokenizer)."""
    import torch

    from kdengine.models import Decoder, DecoderConfig, save_decoder

    config = DecoderConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2,
                           num_hidden_layers=layers, num_attention_heads=4,
                           num_key_value_heads=2, tie_word_embeddings=True,
                           # above the default seq_len (512): runs that keep it are not
                           # refused for it (kdengine.model_facts.check_seq_len_fits)
                           max_position_embeddings=1024)
    model = Decoder(config)
    model.init_weights(torch.Generator().manual_seed(seed), std=0.1)
    save_decoder(model, directory)
    write_byte_tokenizer(directory)
    return directory


def write_nan_student(inputs: dict[str, str]) -> str:
    """A copy of the tiny student with one NaN weight (a broken fine-tune), beside it: no check
    can see it without reading the weights; the step-0 evaluation stops the run, before any
    training step."""
    from safetensors.torch import load_file, save_file

    broken = Path(inputs["student"]).with_name("student-nan")
    shutil.copytree(inputs["student"], broken)
    weights = load_file(str(broken / "model.safetensors"))
    name = next(n for n in weights if n.endswith("mlp.down_proj.weight"))
    weights[name][0, 0] = float("nan")
    save_file(weights, str(broken / "model.safetensors"))
    return str(broken)


@pytest.fixture(name="write_complete_cache")
def write_complete_cache_fixture() -> Callable[..., list[str]]:
    return write_complete_cache


def write_complete_cache(inputs: dict[str, str], job_dir: Path, *,
                         copied: bool = True) -> list[str]:
    """A complete teacher cache (top-4 targets) of the tiny teacher and data in `job_dir`,
    written by the real `kdengine cache-teacher`; `copied`: as a cache copied in from elsewhere
    (its files, not its writer's events.jsonl and launch.log). Returns its shards' names."""
    written = subprocess.run(
        [sys.executable, "-m", "kdengine", "cache-teacher", "--teacher", inputs["teacher"],
         "--data", inputs["data"], "--seq-len", "32", "--device", "cpu", "--dtype", "float32",
         "--top-k", "4", "--cache-targets", "topk", "--out", str(job_dir)],
        capture_output=True, text=True, timeout=300)
    assert written.returncode == 0, written.stderr
    if copied:
        for name in ("events.jsonl", "launch.log"):
            (job_dir / name).unlink(missing_ok=True)
    return sorted(p.name for p in job_dir.glob("shard-*"))


TINY_TEXT = "\n".join(
    f"def function_{i}(x):\n    return x * {i} + {i % 7}  # line {i}\n" for i in range(400))


def write_tiny_inputs(directory: Path, *, student_layers: int = 1,
                      student_hidden: int = 16, teacher_vocab: int = 257) -> dict[str, str]:
    """Teacher, student and data for a real run that takes seconds, written into `directory`:
    the values of `kdengine train`'s --teacher, --student and --data. `teacher_vocab` > 257:
    a teacher whose embedding is padded past the tokenizer's ids (as Qwen2.5-7B's is)."""
    teacher = write_tiny_model(directory / "teacher", hidden=32, layers=2, seed=1,
                               vocab=teacher_vocab)
    student = write_tiny_model(directory / "student", hidden=student_hidden,
                               layers=student_layers, seed=2)
    data = directory / "data"
    data.mkdir()
    for i in range(6):
        (data / f"doc{i}.txt").write_text(TINY_TEXT[i * 3000:(i + 1) * 3000 + 2000])
    return {"teacher": str(teacher), "student": str(student), "data": str(data)}


@pytest.fixture
def tiny_run_inputs(tmp_path: Path) -> dict[str, str]:
    return write_tiny_inputs(tmp_path)


@pytest.fixture
def make_tiny_inputs() -> Callable[..., dict[str, str]]:
    """write_tiny_inputs, for a test that wants other sizes than tiny_run_inputs'."""
    return write_tiny_inputs


def tiny_run_args(inputs: dict[str, str], run_dir: Path, **overrides) -> list[str]:
    values = dict(steps=20, batch_size=4, seq_len=32, lr=3e-3, eval_every=10, eval_batches=2,
                  log_every=1, checkpoint_every=10, temperature=2.0)
    values.update(overrides)
    args = ["train", "--teacher", inputs["teacher"], "--student", inputs["student"],
            "--data", inputs["data"], "--run-dir", str(run_dir)]
    for key, value in values.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    return args


@pytest.fixture
def tiny_args():
    return tiny_run_args


@pytest.fixture(name="wait_on_run")
def wait_on_run_fixture() -> Callable[..., None]:
    return wait_on_run


async def wait_for_run(pilot: Any, run_dir: Path, condition: Callable[[], bool],
                       what: str = "condition", step: float = 0.2,
                       quiet: float = QUIET_S) -> None:
    """Let a dashboard (Textual pilot) run until condition() holds, for as long as the run in
    run_dir makes progress (RunWatch): no wall-clock total."""
    watch = RunWatch(run_dir, what, quiet)
    while not condition():
        watch.check()
        await pilot.pause(step)


@pytest.fixture(name="wait_for_run")
def wait_for_run_fixture() -> Callable[..., Any]:
    return wait_for_run


# Example data's options on raw text, each with the refusal `kdengine train` and `kdengine
# cache-teacher` give it (kdengine.preflight.unused_data_option): (flag, value, said)
RAW_TEXT_REFUSALS = [
    ("--train-on", "all", "--train-on: raw text trains on every token (only conversations and "
     "prompt/completion data have tokens that do not): leave it at its default (completion)"),
    ("--on-long", "drop", "--on-long: raw text is cut into seq_len windows, so no example is "
     "longer than seq_len: leave it at its default (truncate)"),
    ("--data-split", "test", "--data-split: raw text has no splits (only a saved DatasetDict, "
     "a hub dataset or a folder of example files named for their split has): leave it at "
     "its default (train)"),
    ("--data-fields", "text=body", "--data-fields: raw text files have no columns to map "
     "(only JSONL, JSON, Parquet and Arrow records have): leave it out"),
]


@contextlib.contextmanager
def tmpfs(mount: Path, size: int | str) -> Iterator[Path]:
    """A real tmpfs of `size` bytes (or tmpfs' own size text: "1m") at `mount`, unmounted
    after; the test is skipped where it cannot be mounted (root only). A host's small or full
    disk, for real (fill_up)."""
    mount.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip("needs a tmpfs mount (root): " + done.stderr.decode().strip())
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill_up(mount: Path) -> None:
    """Write a file into `mount` until its disk is full (ENOSPC, as wanted)."""
    with open(mount / "filler", "wb") as fh:
        try:
            fh.write(b"\0" * (2 << 20))
        except OSError:
            pass
