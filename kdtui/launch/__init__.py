"""Launchers: start a run somewhere and hand back what the dashboard needs to watch it."""

from kdtui.launch.base import Launcher, RunHandle, StageUpdate

__all__ = ["Launcher", "RunHandle", "StageUpdate"]
