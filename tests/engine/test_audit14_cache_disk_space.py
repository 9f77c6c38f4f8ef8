"""A teacher cache that cannot fit on its disk: the writer knew its size (rows x seq_len x bytes
a token) at its data stage, yet scored on until a shard's write failed with 'disk full', the
teacher's time spent (hours, on a real data set). It now ends at the data stage, before a row
is scored, saying what it needs, what is free and the fix. A real tmpfs (root only)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import read_events, tmpfs, write_chat_pair


def test_audit14_a_cache_too_big_for_its_disk_fails_before_scoring(
        engine_in_process, tmp_path: Path) -> None:
    teacher = write_chat_pair(tmp_path)[0]
    data = tmp_path / "text"
    data.mkdir()
    for i in range(3):  # ~3k tokens: ~1.2 MB at K = 64 in float32
        (data / f"doc{i}.txt").write_text("".join(f"line {i} {j} of the text\n"
                                                  for j in range(40)))
    with tmpfs(tmp_path / "small", "256k") as mount:
        out = mount / "cache"
        done = engine_in_process("cache-teacher", "--teacher", str(teacher), "--data",
                                 str(data), "--seq-len", "64", "--device", "cpu", "--dtype",
                                 "float32", "--top-k", "64", "--store-dtype", "float32",
                                 "--out", str(out))
        assert done.returncode == 1, done.stdout + done.stderr
        events = read_events(out)
        assert not [e for e in events if e["type"] == "step"]  # not a row scored
        assert not list(out.glob("shard-*"))
        failed = [e for e in events if e["type"] == "stage" and e.get("state") == "failed"]
        assert [e["stage"] for e in failed] == ["data"], failed
        # the whole error is run_finished's (a failed stage's detail is its short first clause)
        reason = events[-1]["error"]
        assert reason.startswith(failed[0]["detail"].removesuffix("…")), failed
        assert reason.startswith(f"out: {out}'s file system has "), reason
        assert "free, the cache needs " in reason and " B/token)" in reason
        assert reason.endswith("free some space, or pick another --out (a smaller --top-k or "
                               "--store-dtype makes it smaller)"), reason
        assert "[data] failed: out: " in done.stdout
