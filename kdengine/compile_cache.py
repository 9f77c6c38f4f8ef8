"""torch.compile's artifacts kept in the engine's cache dir (KDENGINE_CACHE/compile), so a
second run of the same shapes loads its compiled graphs and kernels instead of compiling them.

Which mechanism, and why: torch's own on-disk caches, pointed at our directory. Inductor's FX
graph cache and AOTAutograd's cache are on by default (torch >= 2.6; TORCHINDUCTOR_FX_GRAPH_CACHE=0
/ TORCHINDUCTOR_AUTOGRAD_CACHE=0 still turn them off) and write every artifact as it is made,
keyed by the graph, the input shapes, the torch/Triton versions and the GPU. Everything they
keep lives under TORCHINDUCTOR_CACHE_DIR, read by torch each time it looks (cache_dir_utils):
`fxgraph/`, `aotautograd/`, the generated kernels with their autotuning results, and `dynamo/`
(PGO: which dimensions turned out dynamic, so a second run compiles the dynamic graph at once
instead of recompiling). Triton's kernel cache follows TRITON_CACHE_DIR. Their default is
/tmp/torchinductor_$USER, which a reboot or a fresh container loses; the engine's cache dir
already keeps its token stores and is where a user looks. Not the "mega-cache"
(torch.compiler.save/load_cache_artifacts): it fills the same directories from one blob that
we would have to save after the last lazy compile (the backward, the eval graphs) and load
before the first; it is for carrying caches to another machine, which copying compile/ does too.

Several processes may share the directory (torchrun ranks, two runs at once): torch writes each
entry to a temporary file named by pid and thread, then renames it into place (write_atomic),
and serializes C++ builds with file locks (`locks/`); Triton renames each kernel's files into
place too. A user's own TORCHINDUCTOR_CACHE_DIR or TRITON_CACHE_DIR wins (set to anything but
torch's default, which torch itself writes into the environment once it has looked).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

COMPILE_DIR = "compile"
INDUCTOR_ENV, TRITON_ENV = "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"

# What this process set, to tell it from a user's value on a later call (a second trainer in
# the same process, with another KDENGINE_CACHE, is pointed at its own directory)
_SET_HERE: dict[str, str] = {}


@dataclass(frozen=True)
class CompileCache:
    """Where this process's compiled artifacts go: `directory` (None: torch's default), whose
    choice it was (`engine`, `environment`, or `torch` when ours was not writable), and the
    warning line to log when ours could not be used."""

    directory: str | None
    owner: str
    warning: str = ""

    def where(self) -> str:
        return self.directory if self.directory else "torch's default dir"


def _users(name: str) -> str | None:
    """The user's own value of `name`: set, not by us, and not torch's default, which torch
    writes back into TORCHINDUCTOR_CACHE_DIR the first time it looks (importing torch._dynamo
    does, e.g. through torch.use_deterministic_algorithms in the run's prepare stage)."""
    value = os.environ.get(name)
    if not value or _SET_HERE.get(name) == value:
        return None
    if name == INDUCTOR_ENV:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        if os.path.abspath(value) == os.path.abspath(default_cache_dir()):
            return None
    return value


def _writable(directory: Path) -> OSError | None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=directory)  # per process: no race
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return exc
    return None


def keep_compiled_artifacts() -> CompileCache:
    """Point torch.compile's caches at cache_root()/compile unless the user pointed them
    elsewhere; call before anything compiles. An unwritable directory leaves torch's defaults
    and returns a one-line warning instead of failing the run."""
    from kdengine.cache_dir import cache_root

    users = _users(INDUCTOR_ENV)
    if users:
        return CompileCache(users, "environment")
    for name in (INDUCTOR_ENV, TRITON_ENV):  # ours from an earlier call: chosen again below
        if name in _SET_HERE and os.environ.get(name) == _SET_HERE.pop(name):
            del os.environ[name]
    root = Path(os.path.abspath(cache_root() / COMPILE_DIR))  # as torch writes it back
    error = _writable(root)
    if error is not None:
        return CompileCache(None, "torch", f"compile cache: {root} is not writable "
                            f"({error.strerror or error}); compiled artifacts go to torch's "
                            f"default dir this run (set KDENGINE_CACHE or {INDUCTOR_ENV})")
    _set(INDUCTOR_ENV, str(root))
    if not _users(TRITON_ENV):  # Triton's own kernels (kdengine.kd_kernels too) beside them
        _set(TRITON_ENV, str(root / "triton"))
    return CompileCache(str(root), "engine")


def _set(name: str, value: str) -> None:
    os.environ[name] = _SET_HERE[name] = value


def cache_lookups() -> dict[str, int]:
    """This process's lookups so far in torch's on-disk compile caches (FX graph and
    AOTAutograd together; an AOTAutograd hit loads its FX graphs, which count as hits too)."""
    from torch._dynamo.utils import counters

    inductor, aot = counters["inductor"], counters["aot_autograd"]
    return {"compile_cache_hits": inductor["fxgraph_cache_hit"] + aot["autograd_cache_hit"],
            "compile_cache_misses": inductor["fxgraph_cache_miss"] + aot["autograd_cache_miss"]}


def compile_seconds() -> dict[str, float]:
    """Seconds this process has spent in torch.compile so far (`compile_s`: Dynamo's tracing,
    Inductor's compiling or loading from the caches, autotuning) and the part of it that was
    Dynamo tracing Python (`trace_s`: no cache keeps that), from torch's own timers."""
    from torch._dynamo.utils import compilation_time_metrics as metrics

    return {"compile_s": round(sum(metrics.get("_compile.compile_inner", ())), 3),
            "trace_s": round(sum(metrics.get("bytecode_tracing", ())), 3)}


def describe_lookups(hits: int, misses: int) -> str:
    """`hit` (everything loaded), `miss` (everything compiled), `partial`, or `unused`."""
    if not hits and not misses:
        return "unused"
    return "hit" if not misses else "miss" if not hits else "partial"
