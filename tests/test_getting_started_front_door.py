"""docs/getting-started.md's step 4 as a user with KDENGINE_RUNS_DIR set meets it: the verdict's
path in the guide is the default runs dir's, so the guide says where the run is otherwise, and
`kdengine verdict` given the run's name alone says so too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "getting-started.md"


def test_guide_says_where_the_verdicts_run_is_when_kdengine_runs_dir_is_set(tmp_path):
    step4 = GUIDE.read_text().split("## 4. Check", 1)[1].split("\n## ", 1)[0]
    assert 'kdengine verdict "$KDENGINE_RUNS_DIR/my-first-kd"' in step4
    runs = Path(os.environ["KDENGINE_RUNS_DIR"])  # the test's own (tests/conftest.py)
    (runs / "my-first-kd").mkdir(parents=True)
    (runs / "my-first-kd" / "events.jsonl").write_text("")
    done = subprocess.run([sys.executable, "-m", "kdengine", "verdict", "my-first-kd"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert f"kdengine verdict {runs / 'my-first-kd'}" in done.stderr, done.stderr
