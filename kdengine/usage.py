"""What every `kdengine` subcommand's parser shares: the program name and one-line usage errors
(exit code 2, no usage dump). Imported by kdengine.cli and the subcommands it dispatches to
(kdengine.teacher.command), so neither imports the other's module for them."""

from __future__ import annotations

import argparse

EXIT_USAGE = 2
PROG = "kdengine"


class UsageError(Exception):
    pass


class OneLineParser(argparse.ArgumentParser):
    """argparse, but every error is one line and exit code 2 (no usage dump)."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(message)
