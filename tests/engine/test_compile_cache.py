"""Fast starts: torch.compile's artifacts kept under KDENGINE_CACHE/compile and loaded by the next
process (kdengine.compile_cache), and the first step event's startup_s. The GPU benchmark
measures the start of real runs; here the same caches work through Inductor's CPU backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdengine import compile_cache
from kdengine.compile_cache import INDUCTOR_ENV, TRITON_ENV, keep_compiled_artifacts
from kdengine.events import read_events

# A matmul alone: Inductor's graph is Python calling the extern mm, so no C++ is built (seconds,
# and no compiler needed), yet it goes through both on-disk caches as a model's graphs do
COMPILE_ONCE = """
import json, torch
from kdengine.compile_cache import cache_lookups, keep_compiled_artifacts
kept = keep_compiled_artifacts()
f = torch.compile(lambda a, b: a @ b)
f(torch.randn(4, 4), torch.randn(4, 4))
print(json.dumps({"dir": kept.directory, **cache_lookups()}))
"""


@pytest.fixture
def no_user_cache_dirs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither variable set by the user (restored after the test, whatever the code set)."""
    monkeypatch.delenv(INDUCTOR_ENV, raising=False)
    monkeypatch.delenv(TRITON_ENV, raising=False)


def _artifacts(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns
            for sub in ("fxgraph", "aotautograd") for p in (root / sub).rglob("*") if p.is_file()}


def test_a_second_process_loads_what_the_first_compiled(tmp_path: Path,
                                                        no_user_cache_dirs: None) -> None:
    env = {**os.environ, "KDENGINE_CACHE": str(tmp_path / "cache")}

    def compile_in_a_fresh_process() -> dict:
        out = subprocess.run([sys.executable, "-c", COMPILE_ONCE], env=env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    root = tmp_path / "cache" / "compile"
    first = compile_in_a_fresh_process()
    assert first["dir"] == str(root)
    assert first["compile_cache_misses"] > 0 and first["compile_cache_hits"] == 0
    made = _artifacts(root)
    assert any(name.startswith("fxgraph/") for name in made)
    assert any(name.startswith("aotautograd/") for name in made)

    second = compile_in_a_fresh_process()
    assert second["compile_cache_hits"] > 0 and second["compile_cache_misses"] == 0
    assert _artifacts(root) == made  # loaded, nothing compiled or written again


def test_the_compiled_artifacts_go_under_the_engine_cache_dir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_user_cache_dirs: None) -> None:
    monkeypatch.setenv("KDENGINE_CACHE", str(tmp_path / "cache"))
    kept = keep_compiled_artifacts()
    root = tmp_path / "cache" / "compile"
    assert (kept.directory, kept.owner, kept.warning) == (str(root), "engine", "")
    assert os.environ[INDUCTOR_ENV] == str(root)
    assert os.environ[TRITON_ENV] == str(root / "triton")
    # a later run in the same process with another cache dir is pointed at its own
    monkeypatch.setenv("KDENGINE_CACHE", str(tmp_path / "other"))
    assert keep_compiled_artifacts().directory == str(tmp_path / "other" / "compile")
    assert os.environ[TRITON_ENV] == str(tmp_path / "other" / "compile" / "triton")


def test_the_users_own_cache_dirs_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      no_user_cache_dirs: None) -> None:
    monkeypatch.setenv("KDENGINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(INDUCTOR_ENV, str(tmp_path / "mine"))
    kept = keep_compiled_artifacts()
    assert (kept.directory, kept.owner) == (str(tmp_path / "mine"), "environment")
    assert os.environ[INDUCTOR_ENV] == str(tmp_path / "mine") and TRITON_ENV not in os.environ
    assert not (tmp_path / "cache" / "compile").exists()

    monkeypatch.delenv(INDUCTOR_ENV)
    monkeypatch.setenv(TRITON_ENV, str(tmp_path / "my-triton"))
    assert keep_compiled_artifacts().owner == "engine"
    assert os.environ[TRITON_ENV] == str(tmp_path / "my-triton")


def test_torchs_own_default_in_the_environment_is_not_the_users(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_user_cache_dirs: None) -> None:
    """Importing torch._dynamo writes torch's default dir into TORCHINDUCTOR_CACHE_DIR (the
    engine's prepare stage does, before the trainer compiles): still ours to choose."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("KDENGINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(INDUCTOR_ENV, default_cache_dir())
    assert keep_compiled_artifacts().directory == str(tmp_path / "cache" / "compile")


def test_an_unwritable_cache_dir_warns_once_and_leaves_torchs_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_user_cache_dirs: None) -> None:
    blocked = tmp_path / "a-file"  # not a directory: no compile/ can be made under it (as root too)
    blocked.write_text("")
    monkeypatch.setenv("KDENGINE_CACHE", str(blocked))
    kept = keep_compiled_artifacts()
    assert (kept.directory, kept.owner) == (None, "torch")
    assert "\n" not in kept.warning and str(blocked / "compile") in kept.warning
    assert "not writable" in kept.warning and INDUCTOR_ENV in kept.warning
    assert INDUCTOR_ENV not in os.environ and TRITON_ENV not in os.environ
    assert kept.where() == "torch's default dir"


def test_lookups_read_as_hit_miss_partial_or_unused() -> None:
    assert [compile_cache.describe_lookups(h, m) for h, m in ((3, 0), (0, 3), (2, 1), (0, 0))] \
        == ["hit", "miss", "partial", "unused"]


def test_the_first_step_event_says_how_long_the_start_took(
        tmp_path, tiny_run_inputs, tiny_args, engine_cmd) -> None:
    run_dir = tmp_path / "run"
    out = subprocess.run([*engine_cmd, *tiny_args(tiny_run_inputs, run_dir, steps=2,
                                                  eval_every=0, checkpoint_every=0)],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    steps = [e for e in read_events(run_dir / "events.jsonl") if e["type"] == "step"]
    assert steps[0]["step"] == 1 and steps[0]["startup_s"] > 0
    assert "startup_s" not in steps[1]
    assert "compile_cache_hits" not in steps[0]  # the CPU runs eager: no cache to tell of
    first = steps[0]
    parts = [first["setup_s"], first["eval0_s"], first["first_step_s"]]
    assert all(p > 0 for p in parts) and sum(parts) <= first["startup_s"] + 0.01
    log = (run_dir / "launch.log").read_text()
    assert (f"first step {first['startup_s']:.1f} s after start: set-up {first['setup_s']:.1f} s,"
            f" step-0 eval {first['eval0_s']:.1f} s, first step {first['first_step_s']:.1f} s "
            "(eager: nothing compiled)") in log
