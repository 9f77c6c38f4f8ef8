"""Under torchrun every rank ran the preflight's tokenizing of example data: N times the work,
and N writers of the same token store. One rank now builds it and the others wait for it
(kdengine.data.store.build_lock), then reuse it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import write_chat_pair

EXAMPLES = 1500  # a build long enough (about a second) that both ranks ask for it at once


def test_audit13_two_torchrun_ranks_build_the_token_store_once(tmp_path: Path) -> None:
    teacher, student = write_chat_pair(tmp_path / "pair")
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"question number {i}?"},
        {"role": "assistant", "content": f"answer {i} " * 3}]}) + "\n"
        for i in range(EXAMPLES)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=str(Path(__file__).resolve().parents[2]) + os.pathsep +
               os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "kdengine", "train", "--teacher", str(teacher), "--student", str(student),
         "--data", str(data), "--seq-len", "128", "--batch-size", "2", "--check"],
        capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count('"config"') == 2  # each rank's check passed
    # the builder says its progress every 1000 examples; a rank that waited builds nothing
    assert done.stderr.count("data: 1000 examples tokenized (at chats.jsonl)") == 1, done.stderr
    root = Path(os.environ["KDENGINE_CACHE"]) / "data"
    stores = [p for p in root.iterdir() if (p / "meta.json").is_file()
              and json.loads((p / "meta.json").read_text()).get("spec") == str(data)]
    assert len(stores) == 1
    assert not list(root.glob(".build-*")) and not list(root.glob(".*.lock"))
