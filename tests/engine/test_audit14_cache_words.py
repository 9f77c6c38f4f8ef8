"""Words a careful writer would sign: the data stage's warning of skipped files said
"1 bad file(s) skipped"; it says "1 bad file skipped" and "2 bad files skipped"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import read_events


def _text_folder(root: Path, bad: int) -> Path:
    folder = root / f"text-{bad}"
    folder.mkdir()
    for i in range(3):
        (folder / f"doc{i}.txt").write_text("".join(f"line {i} {j} of the text\n"
                                                    for j in range(40)))
    for i in range(bad):  # UTF-16, as PowerShell's > writes it
        (folder / f"bad{i}.txt").write_bytes("not utf-8 text\n".encode("utf-16"))
    return folder


def _pairs_folder(root: Path, bad: int) -> Path:
    folder = root / f"pairs-{bad}"
    folder.mkdir()
    (folder / "pairs.jsonl").write_text("".join(json.dumps({"prompt": f"question {i}?",
                                                            "completion": f" answer {i}."})
                                                + "\n" for i in range(40)))
    for i in range(bad):
        (folder / f"broken{i}.jsonl").write_text("{not json\n")
    return folder


@pytest.mark.parametrize(("kind", "bad", "said"), [
    ("text", 1, "data: 1 bad file skipped (on_bad_file=skip): "),
    ("text", 2, "data: 2 bad files skipped (on_bad_file=skip): "),
    ("pairs", 1, "data: 1 bad file skipped (on_bad_file=skip): broken0.jsonl:1"),
    ("pairs", 2, "data: 2 bad files skipped (on_bad_file=skip): broken0.jsonl:1")])
def test_audit14_skipped_files_are_counted_in_words(tmp_path: Path, kind: str, bad: int,
                                                    said: str) -> None:
    """The data stage's warning, from the real loader's skips of real files into a run's log."""
    from kdengine.config import RunConfig
    from kdengine.data import ByteTokenizer
    from kdengine.loading import load_data
    from kdengine.run import _report_data
    from kdengine.runlog import RunLog

    data = (_text_folder if kind == "text" else _pairs_folder)(tmp_path, bad)
    config = RunConfig(data=str(data), on_bad_file="skip", seq_len=32, batch_size=1)
    splits = load_data(config, ByteTokenizer(), None, lambda _: None)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    log = RunLog(run_dir)
    try:
        _report_data(splits, log)
    finally:
        log.close()
    (warning,) = [e["message"] for e in read_events(run_dir) if e["type"] == "log"
                  and e["level"] == "warning" and "skipped" in e["message"]]
    assert warning.startswith(said), warning
    assert f"bad{bad - 1}.txt" in warning if kind == "text" else f"broken{bad - 1}" in warning
