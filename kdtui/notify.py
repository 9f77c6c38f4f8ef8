"""Telling the user a run ended when they are not looking: a desktop notification through the
terminal (OSC 9 or OSC 777, whichever the terminal speaks), else the bell.

OSC 9 (`ESC ] 9 ; text BEL`) is iTerm2's, also spoken by WezTerm, Windows Terminal, Ghostty and
kitty; OSC 777 (`ESC ] 777 ; notify ; title ; body BEL`) is rxvt's, spoken by foot and VTE
terminals (GNOME Terminal, Tilix). Inside tmux the sequence is wrapped to pass through to the
outer terminal. A terminal known to speak neither gets the bell. `notifications: false` in the
settings (or the palette's "Notifications off") turns it off.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

BEL = "\a"
OSC9_TERMINALS = ("iTerm.app", "WezTerm", "ghostty", "vscode")


def terminal_kind(env: Mapping[str, str] | None = None) -> str:
    """'osc9', 'osc777' or 'bell' for the terminal described by `env`."""
    env = os.environ if env is None else env
    program = env.get("TERM_PROGRAM", "")
    term = env.get("TERM", "")
    if program in OSC9_TERMINALS or "WT_SESSION" in env or "kitty" in term \
            or "KITTY_WINDOW_ID" in env:
        return "osc9"
    if "VTE_VERSION" in env or term.startswith(("foot", "rxvt")):
        return "osc777"
    return "bell"


def _clean(text: str) -> str:
    # a control character (or ';' in OSC 777's fields) would end the sequence early
    return "".join(c for c in text if c.isprintable()).replace(";", ",")


def notification_sequence(title: str, body: str, env: Mapping[str, str] | None = None) -> str:
    """The bytes to write to the terminal for a notification `title`: `body`."""
    env = os.environ if env is None else env
    kind = terminal_kind(env)
    if kind == "osc9":
        seq = f"\x1b]9;{_clean(title)}: {_clean(body)}{BEL}"
    elif kind == "osc777":
        seq = f"\x1b]777;notify;{_clean(title)};{_clean(body)}{BEL}"
    else:
        return BEL
    if "TMUX" in env:  # tmux passes a sequence through when wrapped, its ESCs doubled
        seq = "\x1bPtmux;" + seq.replace("\x1b", "\x1b\x1b") + "\x1b\\"
    return seq


def send(app, title: str, body: str) -> bool:
    """Write the notification to the app's terminal; False when there is no driver to write to
    (a headless test app)."""
    driver = getattr(app, "_driver", None)
    if driver is None or not hasattr(driver, "write"):
        return False
    try:
        driver.write(notification_sequence(title, body))
        driver.flush()
    except Exception:  # noqa: BLE001 - a notification never takes the dashboard down
        return False
    return True
