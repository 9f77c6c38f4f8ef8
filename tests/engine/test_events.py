"""The event stream: torn lines, unknown types, duplicates, resumed appends."""

from __future__ import annotations

import json

from kdengine.events import EventReader, EventWriter, last_event, read_events


def test_reader_keeps_a_torn_last_line_until_its_newline_arrives() -> None:
    reader = EventReader()
    line = json.dumps({"v": 1, "seq": 0, "type": "step", "step": 1}).encode() + b"\n"
    assert reader.feed(line[:10]) == []
    assert reader.offset == 0
    events = reader.feed(line[10:])
    assert [e["step"] for e in events] == [1]
    assert reader.offset == len(line)


def test_reader_passes_unknown_types_and_skips_garbage() -> None:
    data = (b'{"v":1,"seq":0,"type":"from_the_future","x":1}\n'
            b"not json at all\n"
            b'{"v":1,"seq":1,"type":"step","step":3}\n')
    reader = EventReader()
    events = reader.feed(data)
    assert [e["type"] for e in events] == ["from_the_future", "step"]
    assert reader.bad_lines == 1


def test_reader_drops_sequence_numbers_it_has_seen_and_records_gaps() -> None:
    reader = EventReader()
    mk = lambda seq: json.dumps({"seq": seq, "type": "step"}).encode() + b"\n"  # noqa: E731
    events = reader.feed(mk(0) + mk(1) + mk(1) + mk(0) + mk(4))
    assert [e["seq"] for e in events] == [0, 1, 4]
    assert reader.duplicates == 2
    assert reader.gaps == [(2, 4)]


def test_writer_continues_the_sequence_and_mends_a_torn_tail_on_resume(tmp_path) -> None:
    with EventWriter(tmp_path) as w:
        w.emit("step", step=1)
        w.emit("step", step=2)
    with open(tmp_path / "events.jsonl", "a") as fh:
        fh.write('{"v":1,"seq":2,"type":"st')  # a crash mid-write
    with EventWriter(tmp_path) as w:
        w.emit("step", step=3)
    events = read_events(tmp_path / "events.jsonl")
    assert [(e["seq"], e["step"]) for e in events] == [(0, 1), (1, 2), (2, 3)]
    assert last_event(tmp_path / "events.jsonl")["step"] == 3


def test_nan_losses_survive_the_round_trip(tmp_path) -> None:
    with EventWriter(tmp_path) as w:
        w.emit("step", step=1, loss=float("nan"))
    (event,) = read_events(tmp_path / "events.jsonl")
    assert event["loss"] != event["loss"]
