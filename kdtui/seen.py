"""Which finished runs the user has looked at: the runs list marks the others (•).

One JSON file beside the settings ($KDTUI_CONFIG_DIR/seen.json): the run directories seen after
they ended. The first time there is no file, every run that had already ended counts as seen, so
a new dashboard does not mark a whole history of runs as news.
"""

from __future__ import annotations

import json
from pathlib import Path

from kdtui.settings import config_dir

SEEN_FILE = "seen.json"
KEEP = 2000  # the newest entries kept: the file stays small however many runs come and go


class SeenRuns:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or config_dir() / SEEN_FILE
        self.fresh = False  # no file yet: whatever ended before now counts as seen
        try:
            data = json.loads(self.path.read_text())
            self.runs = [str(r) for r in data] if isinstance(data, list) else []
        except (OSError, ValueError):
            self.runs, self.fresh = [], True

    def is_seen(self, run_dir: Path | str) -> bool:
        return str(run_dir) in self.runs

    def mark(self, *run_dirs: Path | str) -> None:
        new = [str(r) for r in run_dirs if str(r) not in self.runs]
        if not new and not self.fresh:
            return
        self.runs = (self.runs + new)[-KEEP:]
        self.fresh = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(self.runs, indent=0) + "\n")
            tmp.replace(self.path)
        except OSError:
            pass  # a read-only config dir: the marks last for this session only
