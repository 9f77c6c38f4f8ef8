"""The dashboard's remembered choices: theme, the launch form's last values per host, and
whether a run's end is a terminal notification.

One JSON file in the user's config dir (platformdirs), or in $KDTUI_CONFIG_DIR when set (tests
isolate themselves that way). A missing or unreadable file means defaults, never a crash; one
that cannot be written (a read-only or full disk, a file where the dir should be) is said in
`problem`, and the dashboard goes on remembering for this session only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SETTINGS_FILE = "settings.json"


def config_dir() -> Path:
    """Where kdtui keeps its files: $KDTUI_CONFIG_DIR, else the platform's user config dir."""
    env = os.environ.get("KDTUI_CONFIG_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_config_path

    return user_config_path("kdtui")


@dataclass
class Settings:
    theme: str = "kdtui-dark"
    last_host: str = "local"
    # host -> {field name or form key: the text the user typed}; text, so a value that did not
    # validate last time comes back as typed and shows its error again
    last_values: dict[str, dict[str, Any]] = field(default_factory=dict)
    # a terminal notification (OSC 9/777, else the bell) when a run ends: kdtui/notify.py
    notifications: bool = True
    path: Path | None = None
    # why the last save failed ("" when it did not): the app says it once (KDApp.warn_unsaved)
    problem: str = field(default="", compare=False)

    @classmethod
    def load(cls, path: Path | None = None) -> Settings:
        path = path or config_dir() / SETTINGS_FILE
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        if not isinstance(data, dict):
            data = {}
        values = data.get("last_values")
        return cls(
            theme=str(data.get("theme") or cls.theme),
            last_host=str(data.get("last_host") or "local"),
            last_values=values if isinstance(values, dict) else {},
            notifications=data.get("notifications", True) is not False,
            path=path,
        )

    def save(self) -> bool:
        """Write the file; False, with `problem` saying why, when it cannot be written (the
        form's Start and a theme change called this: an OSError took the dashboard down)."""
        path = self.path or config_dir() / SETTINGS_FILE
        data = {"theme": self.theme, "last_host": self.last_host,
                "last_values": self.last_values, "notifications": self.notifications}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
            tmp.replace(path)  # atomic: a crash mid-write never leaves half a settings file
        except OSError as exc:
            self.problem = (f"settings not saved: {path}: {exc.strerror or exc} (kept until "
                            "kdtui quits; KDTUI_CONFIG_DIR moves them)")
            return False
        self.problem = ""
        return True

    def values_for(self, host: str) -> dict[str, Any]:
        values = self.last_values.get(host)
        return dict(values) if isinstance(values, dict) else {}

    def remember(self, host: str, values: dict[str, Any]) -> bool:
        self.last_host = host
        self.last_values[host] = dict(values)
        return self.save()
