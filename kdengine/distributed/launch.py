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
Here both are the cancelled run's exit code. Any other failure stays torchrun's own report and
exit 1. The run's events say cancelled either way (kdengine.run).
"""

from __future__ import annotations

import signal
import sys

# a kdengine run cancelled by a signal exits 128 + its number (kdengine.run)
CANCELLED_EXITS = frozenset({128 + signal.SIGINT, 128 + signal.SIGTERM})


def main(argv: list[str] | None = None) -> int:
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
        if not codes <= CANCELLED_EXITS:
            raise  # a rank failed: torchrun's report of it, as plain torchrun gives it
        return exc.get_first_failure()[1].exitcode
    return 0


if __name__ == "__main__":
    sys.exit(main())
