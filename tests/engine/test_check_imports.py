"""`kdengine train --check` reads config files and safetensors headers and compiles nothing, so it
must not load torch's compiler: its front end, torch._dynamo, was ~1 s of every check's CPU
(the remote check stage of each dispatch, the dashboard's), imported by nn.Embedding's init on
the meta device where the check builds the model to read its shapes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import write_tiny_inputs  # noqa: E402


def test_a_check_never_imports_the_compiler(tmp_path: Path) -> None:
    inputs = write_tiny_inputs(tmp_path)
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "kdengine", "train", "--teacher",
         inputs["teacher"], "--student", inputs["student"], "--data", inputs["data"],
         "--device", "cpu", "--check"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert re.search(r"\|\s*torch$", done.stderr, re.M)  # it does load torch itself
    assert not re.search(r"\|\s*torch\._dynamo$", done.stderr, re.M)
