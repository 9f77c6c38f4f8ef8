"""Seconds as people read them, one way everywhere: the dashboard's clocks and ETAs and the
engine's launch.log lines (a teacher-cache job's ETA). No torch: the dashboard imports it."""

from __future__ import annotations


def format_seconds(seconds: float | None) -> str:
    """'42s', '3m05s', '2h10m', '3d04h'; '–' where there is no number (None, NaN, negative)."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "–"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"
