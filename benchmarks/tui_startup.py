"""Time from `python` start to the dashboard's first frame (the launch form), headless.

    .venv/bin/python benchmarks/tui_startup.py [--runs 5]

Each run is a fresh interpreter (cold imports, as a user's `kdtui`), which also checks that
torch was never imported. Prints the median and the worst; the target is under 1 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import sys, time, json
from kdtui.app import KDApp
from kdtui.screens.launch import LaunchScreen

class Timed(KDApp):
    reported = False

    def _display(self, screen, renderable):
        # the first frame of the launch form handed to the (headless) terminal driver
        super()._display(screen, renderable)
        if not self.reported and isinstance(screen, LaunchScreen) and renderable is not None:
            self.reported = True
            # Textual owns stdout while it runs: report through a file
            with open(sys.argv[2], "w") as fh:
                fh.write(json.dumps({"t": time.time(), "torch": "torch" in sys.modules}))
            self.set_timer(0.5, self.exit)

Timed(runs_dir=sys.argv[1]).run(headless=True, size=(160, 48))
"""


def one_run(runs_dir: str) -> tuple[float, bool]:
    report = f"{runs_dir}/first-frame.json"
    t0 = time.time()
    subprocess.run([sys.executable, "-c", CHILD, runs_dir, report], capture_output=True,
                   timeout=60, check=True)
    with open(report) as fh:
        data = json.load(fh)
    return data["t"] - t0, data["torch"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        import os

        os.environ["KDTUI_CONFIG_DIR"] = tmp
        one_run(tmp)  # warm the OS file cache and .pyc files once, as a second launch would be
        times = []
        for _ in range(args.runs):
            seconds, torch_loaded = one_run(tmp)
            assert not torch_loaded, "torch was imported at start-up"
            times.append(seconds)
    print(f"first frame: median {statistics.median(times) * 1000:.0f} ms, worst "
          f"{max(times) * 1000:.0f} ms over {args.runs} runs (torch imported: no)")


if __name__ == "__main__":
    main()
