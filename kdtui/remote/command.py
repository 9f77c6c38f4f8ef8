"""The one place a remote shell command line is made: an argv list, each word shlex-quoted.

Every command kdtui sends over SSH, and every line the dry run prints, comes from
`RemoteCommand.text`, so what is shown is what is sent, and no value (a teacher id, a run name,
a path) can ever be read by the remote shell as syntax. The only unquoted text is the host's
`env_setup` lines from the user's own hosts file: shell by design (`source venv/bin/activate`,
`module load cuda`), shown verbatim in the dry run.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

# an env variable whose name says it holds a secret: its value is sent, never shown
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|API_?KEY|"
                         r"ACCESS_KEY|PRIVATE_KEY|AUTH", re.IGNORECASE)
_ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.+)", re.DOTALL)
MASK = "***"


def mask_secret(word: str) -> str:
    """`NAME=value` with `value` as *** when NAME says it is a secret (HF_TOKEN, WANDB_API_KEY,
    AWS_SECRET_ACCESS_KEY...); any other word as it is."""
    match = _ASSIGNMENT.fullmatch(word)
    if match and SECRET_NAME.search(match.group(1)):
        return f"{match.group(1)}={MASK}"
    return word


def quote_argv(argv: Sequence[str]) -> str:
    """`argv` as one shell word list: every element quoted, so each arrives as one argument."""
    if not argv:
        raise ValueError("a remote command needs at least a program")
    return " ".join(shlex.quote(str(word)) for word in argv)


@dataclass(frozen=True)
class RemoteCommand:
    """One command to run on a host: why, what (argv), and the host's setup lines before it."""

    purpose: str  # one line for the stage output and the dry run
    argv: tuple[str, ...]
    setup: tuple[str, ...] = ()  # the hosts file's env_setup lines, verbatim
    env: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # passed through `env`

    @property
    def text(self) -> str:
        """Exactly the string handed to the SSH server."""
        return " && ".join([*self.setup, quote_argv(self._words())])

    @property
    def shown(self) -> str:
        """`text` as the dry run, the stage output and the dashboard show it: a secret-named
        variable's value (`HF_TOKEN=...`, in `env` or in the argv) as ***, so a token in the
        hosts file's `env` never lands in a terminal log; everything else is `text`."""
        return " && ".join([*self.setup, quote_argv([mask_secret(w) for w in self._words()])])

    def _words(self) -> list[str]:
        argv = list(self.argv)
        if self.env:
            argv = ["env", *(f"{k}={v}" for k, v in self.env), *argv]
        return argv


def remote_command(purpose: str, argv: Sequence[str], *, setup: Sequence[str] = (),
                   env: Mapping[str, str] | None = None) -> RemoteCommand:
    """Build a RemoteCommand; env names must be plain identifiers (their values are quoted)."""
    pairs = tuple((env or {}).items())
    for name, _ in pairs:
        if not name.isidentifier():
            raise ValueError(f"environment variable name {name!r} is not an identifier")
    return RemoteCommand(purpose, tuple(str(a) for a in argv), tuple(setup), pairs)
