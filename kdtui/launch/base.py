"""What every launcher (local embedded engine, remote over SSH) gives the dashboard.

A launcher runs its dispatch stages, reporting each through `on_stage`, and returns a
`RunHandle`: the run's id, a `RunSource` to follow its files from byte offsets, and how to cancel
it. Local and remote runs then look the same to the run screen and to headless mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from kdtui.watch import RunSource

if TYPE_CHECKING:
    from kdengine.config import RunConfig

STAGE_STATES = ("pending", "running", "done", "failed", "skipped")


@dataclass
class StageUpdate:
    stage: str  # e.g. preflight, sync, models, launch, manifest
    state: str  # one of STAGE_STATES
    elapsed: float = 0.0
    detail: str = ""  # one line for the tracker
    output: list[str] = field(default_factory=list)  # lines of output, for the log pane
    host: str = ""  # which host this attempt ran on (fallback attempts are shown apart)


class RunHandle(Protocol):
    run_id: str
    host: str  # "local" or the SSH host alias
    run_dir: str  # on the host that runs it
    source: RunSource
    asked_config: dict[str, Any] | None  # what the run was asked to be (None: not known)

    async def cancel(self) -> None:
        """SIGTERM to the run's process group: the engine ends it as cancelled."""

    def reattach_hint(self) -> str:
        """How to come back to this run later (shown on detach)."""

    def extra(self) -> dict[str, Any]: ...


class Launcher(Protocol):
    stages: tuple[str, ...]  # shown as pending before start

    async def start(self, on_stage: Callable[[StageUpdate], None]) -> RunHandle: ...


def config_differences(asked: dict[str, Any], effective: dict[str, Any]) -> list[str]:
    """Every field where the config the engine echoes in run_started differs from what was
    asked (a field the engine does not know counts): the seed's engine dropped values silently."""
    out = []
    for name, value in asked.items():
        if name not in effective:
            out.append(f"{name}: asked {value!r}, the engine does not know this field")
        elif effective[name] != value and not _same_path(name, value, effective[name]):
            out.append(f"{name}: asked {value!r}, the engine runs {effective[name]!r}")
    return out


def _same_path(name: str, asked: Any, effective: Any) -> bool:
    """The engine writes a relative local path (or ~/...) absolute on its own host
    (kdengine.config.with_absolute_paths): `models/t` asked, `/home/u/work/models/t` run."""
    from pathlib import PurePosixPath

    from kdengine.config import PATH_FIELDS

    if name not in PATH_FIELDS or not isinstance(asked, str) or not isinstance(effective, str):
        return False
    tail = [p for p in PurePosixPath(asked).parts if p not in ("~", ".", "..")]
    parts = PurePosixPath(effective).parts
    return (PurePosixPath(effective).is_absolute() and not asked.startswith("/") and
            bool(tail) and list(parts[-len(tail):]) == tail)


def engine_args(config: RunConfig) -> list[str]:
    """`config.to_args()` with every value that starts with '-' joined to its flag
    (`--teacher=-rf`): argparse reads a separate '-rf' as an option of its own."""
    from kdengine.config import FIELDS

    takes_value = {f.flag for f in FIELDS if f.kind is not bool}
    words = iter(config.to_args())
    out: list[str] = []
    for word in words:
        if word in takes_value:
            value = next(words)
            out += [f"{word}={value}"] if value.startswith("-") else [word, value]
        else:
            out.append(word)
    return out


def engine_launcher(python: str, gpus: int, config: RunConfig) -> list[str]:
    """`python` alone, or `python -m kdengine.distributed.launch --standalone --nproc-per-node N`
    (torchrun from the engine's venv, a cancelled run ending as one process does: exit 130 or
    143, no traceback in launch.log) when the run may take every GPU (device auto or cuda) and
    the host has several: N is the most GPUs that divide the global batch (rows per rank).
    On-policy, seq_kd and teacher-cache runs train on one process (the engine refuses them
    under torchrun): `python` alone. The local and the remote launchers both start runs so."""
    if gpus < 2 or config.device not in ("auto", "cuda") or config.samples_completions or \
            config.teacher_cache:
        return [python]
    n = max(d for d in range(1, gpus + 1) if config.batch_size % d == 0)
    return torchrun_launcher(python, n)


def torchrun_launcher(python: str, ranks: int) -> list[str]:
    """`python` alone for one rank, else `python -m kdengine.distributed.launch --standalone
    --nproc-per-node RANKS` (what a resume of a run on RANKS ranks starts again)."""
    if ranks < 2:
        return [python]
    return [python, "-m", "kdengine.distributed.launch", "--standalone", "--nproc-per-node",
            str(ranks)]
