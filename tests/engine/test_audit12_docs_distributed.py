"""docs/distributed.md, as a new user meets it (the twelfth audit): a run the ranks refuse, started
through `python -m kdengine.distributed.launch` (what the dashboard starts), ends as one process
refuses bad input: exit 2 and the one `kdengine train: error: ...` line, nothing else on stderr.
Before, torchrun's own log lines came with it (`W... Sending process N closing signal SIGTERM`,
`E... failed (exitcode: 2) local_rank: 0 (pid: N) of binary: ...`): three lines, one of them an
error report of torchrun's, where the docs promise the one line."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import write_tiny_inputs

    return write_tiny_inputs(tmp_path_factory.mktemp("audit12-ranks"))


def test_ranks_that_refuse_a_run_under_the_launcher_say_one_line_and_exit_2(
        made: dict[str, str], tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """The launcher in this process (its torch import is the test's; torchrun's two ranks are
    real processes, whose stderr capfd takes with the launcher's). torch's handler of its
    `torch.distributed` log writes to the stderr of torch's import, which pytest's capture
    replaced, so what torchrun's log passes on to handlers is taken here too."""
    from kdengine.distributed.launch import WORKER_LOG, main

    class Taken(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.WARNING)
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    run_dir, taken = tmp_path / "run", Taken()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    logging.getLogger(WORKER_LOG).addHandler(taken)
    try:
        code = main(["--standalone", "--nproc-per-node", "2", "-m", "kdengine", "train",
                     "--teacher", made["teacher"], "--student", made["student"], "--data",
                     made["data"], "--run-dir", str(run_dir), "--batch-size", "3",
                     "--seq-len", "32", "--steps", "2", "--device", "cpu"])
    finally:
        logging.getLogger(WORKER_LOG).removeHandler(taken)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    out, err = capfd.readouterr()
    assert code == 2 and out == "", out
    assert err.splitlines() == [
        "kdengine train: error: --batch-size: 3 is the global batch, split over 2 ranks by "
        "rows: it must be a multiple of 2 (e.g. 2), or start 1 or 3 ranks (torchrun "
        "--nproc-per-node)"], err
    assert taken.lines == []  # before: closing signal SIGTERM, failed (exitcode: 2) ...
    assert not run_dir.exists()


def test_replicating_the_student_says_no_future_warning_of_torchs(tmp_path: Path) -> None:
    """Every rank of a replicated student (DDP) printed torch 2.13's FutureWarning that
    `broadcast_buffers` is deprecated (two lines a rank in launch.log, from the first run on),
    for a setting kdengine keeps on purpose: no buffer is synced, at init or a forward."""
    import warnings

    import torch
    import torch.distributed as dist

    from kdengine.distributed.placement import replicate_student

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0,
                            world_size=1)
    try:
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            student = torch.nn.Linear(4, 4)
            replicate_student(student)
            student(torch.ones(2, 4)).sum().backward()  # (DDP is made at the first forward)
    finally:
        dist.destroy_process_group()
    assert [str(w.message) for w in said if w.category is FutureWarning] == []
