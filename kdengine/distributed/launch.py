"""torchrun, ending a cancelled run as a one-process run ends: exit 130 (SIGINT) or 143 (SIGTERM),
no traceback.

    python -m kdengine.distributed.launch --standalone --nproc-per-node 2 -m kdengine train ...

takes torchrun's arguments and runs torchrun itself (torch.distributed.run: the same workers,
rendezvous and shutdown). Only its exit differs. torchrun ends a cancelled run with exit 1 and a
traceback on its stderr, which a launcher writes into launch.log:
- a SIGINT/SIGTERM torchrun receives itself (Ctrl-C, or `kdtui cancel`, which signal its whole
  process group) becomes a SignalException that torchrun re-raises once it has stopped its
  workers;
- workers that end cancelled (a rank that alone got the signal; kdengine exits 128 + signal)
  become a ChildFailedError.
Here both are the cancelled run's exit code, and ranks that all refused the run (exit 2, one
line each naming the field) exit 2 as one process would, with that line alone: torchrun's log of
stopping the other ranks and of the failure is held back while it runs and dropped for a
refusal. Any other failure stays torchrun's own report and exit 1. The run's events say
cancelled either way (kdengine.run).
"""

from __future__ import annotations

import logging
import signal
import sys

# a kdengine run cancelled by a signal exits 128 + its number (kdengine.run)
CANCELLED_EXITS = frozenset({128 + signal.SIGINT, 128 + signal.SIGTERM})
REFUSED = 2  # kdengine's exit for bad input: one line, no traceback, nothing started


def _refused(first: int, codes: set[int]) -> bool:
    """The ranks refused the run as `kdengine train` refuses bad input (exit 2): the first to
    end did, and the others did too or were stopped by torchrun's signal (a negative code)."""
    return first == REFUSED and all(code == REFUSED or code < 0 for code in codes)


# torchrun's log of its workers' ends (`Sending process N closing signal SIGTERM`, `failed
# (exitcode: 2) local_rank: 0 ...`): all of it comes as the workers end
WORKER_LOG = "torch.distributed.elastic.multiprocessing.api"


class HeldRecords(logging.Filter):
    """Holds the records of a logger back (it passes none on) until `replay`."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.held.append(record)
        return False

    def replay(self, logger: logging.Logger) -> None:
        for record in self.held:
            logger.handle(record)


def main(argv: list[str] | None = None) -> int:
    workers_log, held = logging.getLogger(WORKER_LOG), HeldRecords()
    workers_log.addFilter(held)
    refused = False
    try:
        code = _run(argv)
        refused = code == REFUSED
        return code
    finally:
        workers_log.removeFilter(held)
        if not refused:  # each rank said why in its one line: torchrun's report would add two
            held.replay(workers_log)


def _run(argv: list[str] | None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(argv)
    except SignalException as exc:  # torchrun stopped its workers, which wrote the events
        return 128 + int(exc.sigval)
    except KeyboardInterrupt:  # a Ctrl-C before torchrun's own handler was installed
        return 128 + signal.SIGINT
    except ChildFailedError as exc:
        codes = {failure.exitcode for failure in exc.failures.values()}
        if _refused(exc.get_first_failure()[1].exitcode, codes):
            return REFUSED  # each rank said why in its one line, before any run dir was touched
        if not codes <= CANCELLED_EXITS:
            raise  # a rank failed: torchrun's report of it, as plain torchrun gives it
        return exc.get_first_failure()[1].exitcode
    return 0


if __name__ == "__main__":
    sys.exit(main())
