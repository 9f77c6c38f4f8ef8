"""The small things a remote dispatch and its watch must get right, each pinned without a host:
values the engine must read as one word, a refusal that holds a newline, the verdict naming the
engine's own last step, attempts appended to the manifest, the link's state in words."""

from __future__ import annotations

import json

from kdengine.cli import build_train_parser
from kdengine.config import RunConfig
from kdengine.verdict import verdict_from_events
from kdtui.launch.base import engine_args
from kdtui.launch.outcome import WatchedRun
from kdtui.remote.link import LOST, RECONNECTED, LinkState
from kdtui.remote.manifest import merge_attempts, record_watch, write_manifest
from kdtui.remote.stages import one_line, refusal_line


def test_a_value_starting_with_a_dash_reaches_the_engine_as_one_word():
    config = RunConfig.from_mapping(dict(teacher="-rf", student="s", data="--data-dir"))
    args = engine_args(config)
    assert "--teacher=-rf" in args and "--data=--data-dir" in args
    parsed = build_train_parser().parse_args(args)  # the engine's own parser
    assert parsed.teacher == "-rf" and parsed.data == "--data-dir" and parsed.student == "s"


def test_a_refusal_holding_a_newline_is_reported_whole_on_one_line():
    stderr = ["some warning", "kdengine train: error: --teacher: /no/such", "teacher does not "
              "exist (give a local HF-layout directory)"]
    why = refusal_line(stderr)
    assert why == ("kdengine train: error: --teacher: /no/such\\nteacher does not exist (give "
                   "a local HF-layout directory)")
    assert one_line("$ run --teacher '/a\nb'") == "$ run --teacher '/a\\nb'"


def test_the_verdict_names_the_engines_last_step_not_the_last_logged_one():
    events = [{"type": "run_started", "run_id": "r"},
              {"type": "eval", "step": 0, "val_loss": 3.0},
              *({"type": "step", "step": s, "loss": 2.0} for s in range(0, 150, 5)),
              {"type": "checkpoint", "step": 140},
              {"type": "run_finished", "status": "cancelled", "exit_code": 130, "steps": 149}]
    watched = WatchedRun()
    for event in events:
        watched.add(event)
    assert watched.engine_last_step == 149 and watched.last_step == 145
    assert "at step 149" in verdict_from_events(watched.verdict_events(events)).reason
    assert watched.resumable and watched.checkpoint_step == 140


def test_a_resumed_part_resets_the_end_its_earlier_part_had():
    watched = WatchedRun()
    for event in ({"type": "run_finished", "status": "cancelled"},
                  {"type": "run_started", "resumed_from": 10}):
        watched.add(event)
    assert watched.finished is None and watched.status is None and watched.resumed_from == [10]


def test_attempts_are_appended_and_a_watch_records_the_end_of_the_current_segment(tmp_path):
    path = write_manifest(tmp_path / "dispatch.json", {
        "attempts": [{"id": "a", "stages": ["preflight"]}],
        "segments": [{"kind": "dispatch", "pid": 1}]})
    data = json.loads(path.read_text())
    merged = merge_attempts(data, [{"id": "a", "stages": ["preflight", "launch"]}, {"id": "b"}])
    assert [a["id"] for a in merged] == ["a", "b"] and merged[0]["stages"][-1] == "launch"
    record_watch(path, verdict={"status": "inconclusive"}, finished=None, engine_last_step=23,
                 checkpoint_step=20, status="stopped", log_tail=["step 23 loss 2.1"])
    data = json.loads(path.read_text())
    assert data["state"] == "stopped" and data["engine_last_step"] == 23
    assert data["engine_gone"]["log_tail"] == ["step 23 loss 2.1"]
    assert data["segments"][-1]["ended"] == "stopped" and data["segments"][-1]["last_step"] == 23


def test_the_link_state_reads_as_an_outage_with_its_countdowns():
    lost = LinkState(LOST, "gpu1", since=100.0, reason="ConnectionLost", retry_at=116.0,
                     give_up_at=700.0)
    assert lost.line(now=112.0) == ("link to gpu1 lost 12s ago (ConnectionLost); retry in 4s, "
                                    "gives up in 9m48s")
    again = LinkState(LOST, "gpu1", since=100.0, retry_at=130.0)
    assert not again.changed(lost) and LinkState(RECONNECTED, "gpu1", 131.0).changed(lost)


def test_kdtui_resume_refuses_what_cannot_resume_in_one_line(tmp_path, capsys, monkeypatch):
    from kdtui.cli import main as kdtui_main

    monkeypatch.setenv("KDTUI_EVIDENCE_DIR", str(tmp_path / "evidence"))
    runs = tmp_path / "runs"
    for name, status in (("done-1", "completed"), ("stop-1", "cancelled")):
        (runs / name).mkdir(parents=True)
        (runs / name / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in (
            {"v": 1, "seq": 0, "t": 1.0, "type": "run_started", "run_id": name},
            {"v": 1, "seq": 1, "t": 2.0, "type": "run_finished", "status": status})))
    for ref, said in (("done-1", "done-1 is completed: only a stopped, failed or cancelled"),
                      ("stop-1", "stop-1 has no complete checkpoint to continue from"),
                      ("nope", "no run 'nope'")):
        assert kdtui_main(["--runs-dir", str(runs), "resume", ref, "--headless"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("kdtui resume: error: ") and err.count("\n") == 1, err
        assert said in err, err
