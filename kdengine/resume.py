"""What `kdengine train --resume RUN_DIR` must find before it continues, checked before a model
loads or a byte is written (kdengine.cli): the run's own config.json, an unfinished run with a
whole checkpoint to continue from, the teacher it started with and the data it trained on
(example data's examples, raw text's tokens). Each refusal is a ConfigError naming --resume
and the way on."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kdengine.checkpoint_files import newest_complete
from kdengine.config import ConfigError, RunConfig, default_runs_dir
from kdengine.usage import PROG


def resume_config(run_dir: Path) -> RunConfig:
    """The run's own config.json, whose run may be continued (check_resumable)."""
    path = run_dir / "config.json"
    if not run_dir.exists():  # a run's name, as kdtui resume takes it: say where that run is
        named = default_runs_dir() / run_dir
        raise ConfigError("resume", f"{run_dir} does not exist " + (
            f"(the run of that name is {named}: {PROG} train --resume {named})"
            if (named / "config.json").is_file() else
            "(give the run's directory, the one that holds its config.json)"))
    if not path.exists():
        raise ConfigError("resume", f"{run_dir} holds no config.json: not a kdengine run dir")
    try:  # a config.json cut short or edited by hand: one line naming it, not a traceback
        config = RunConfig.from_mapping(json.loads(path.read_text()))
    except ConfigError as exc:  # a ValueError too: caught first
        raise ConfigError("resume", f"{exc.field} in {path}: {exc.message}") from None
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError("resume", f"{path} cannot be read ({exc}): it is the run's own "
                          "config, restore it or start a new run") from None
    config = config.with_values(run_dir=str(run_dir))
    check_resumable(run_dir, config)
    return config


def check_resumable(run_dir: Path, config: RunConfig) -> None:
    """--resume continues from a complete checkpoint of an unfinished run; anything else is
    refused before a byte is written (a restart at step 0 in the same directory would write a
    second curve over the first, and a finished run has nothing left to do)."""
    from kdengine.events import RUN_FINISHED, STEP, read_events

    seen = read_events(run_dir / "events.jsonl") if (run_dir / "events.jsonl").exists() else []
    finished = [e for e in seen if e.get("type") == RUN_FINISHED]
    if finished and finished[-1].get("status") == "completed":
        raise ConfigError("resume", f"{run_dir} already completed ({config.steps} steps): "
                          "nothing to continue (to train its student further, start a new run "
                          f"with --student {run_dir / 'final'})")
    # a complete checkpoint is a step-N directory whose meta.json (written last) exists
    # (kdengine.checkpoint_files, without torch)
    if not any((run_dir / "checkpoints").glob("step-*/meta.json")):
        # where it stopped: its run_finished says, else (killed) the last step it logged
        last = max((n for e in seen if e.get("type") in (STEP, RUN_FINISHED)
                    if isinstance(n := e.get("step" if e["type"] == STEP else "steps"), int)),
                   default=0)
        every = config.checkpoint_every
        why = ("checkpoint_every=0 keeps none while it trains" if not every else
               f"it stopped at step {last}, before its first checkpoint at step {every}"
               if last < every else f"it stopped at step {last} with no checkpoint complete")
        raise ConfigError("resume", f"{run_dir} has no complete checkpoint to continue from "
                          f"({why}); start it again under a new directory with `{PROG} train "
                          f"--config {run_dir / 'config.json'} --run-dir NEW_DIR`")
    from kdengine.checkpoint_files import latest_checkpoint_refusal

    damaged = latest_checkpoint_refusal(run_dir, PROG)  # found now, not after the models load
    if damaged:
        raise ConfigError("resume", damaged)
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        from kdengine.checkpoint_files import one_process_checkpoint

        latest = one_process_checkpoint(run_dir)
        if latest is not None:  # torchrun's ranks read DCP shards only (kdengine.distributed)
            raise ConfigError("resume", f"{latest} was written by a one-process run; resume it "
                              f"with one process (`{PROG} train --resume {run_dir}`), not "
                              "under torchrun")


def teacher_identity(config: RunConfig, directory: str | None) -> str | None:
    """The live teacher's identity (kdengine.sources.model_identity: its config.json and a
    sample of its weight files' bytes), where it is on this machine now; None for a teacher
    cache, the demo teacher or a hub id still to download."""
    if config.teacher_cache or not directory:
        return None
    from kdengine.sources import model_identity

    return model_identity(Path(directory))


def check_same_teacher(run_dir: Path, config: RunConfig, identity: str | None) -> None:
    """A resume continues 'as if it had never stopped' only with the teacher it started with:
    one whose files changed since (a hub id whose cache got a newer snapshot, a folder written
    over) is refused, as changed data is (the sampler's fingerprint). A run from before this
    check, or a teacher not here to compare, is not checked."""
    from kdengine.events import RUN_STARTED, read_events

    events = read_events(run_dir / "events.jsonl") if (run_dir / "events.jsonl").exists() else []
    first = next((e.get("teacher_identity") for e in events if e.get("type") == RUN_STARTED
                  and e.get("teacher_identity")), None)
    if identity is None or first is None or first == identity:
        return
    raise ConfigError("resume", f"the teacher {config.teacher} is not the one {run_dir} "
                      "started with (its config.json or weights changed since), so the run "
                      "would not continue as it began: restore that teacher, or start a new run "
                      f"with `{PROG} train --config {run_dir / 'config.json'} --run-dir NEW_DIR`")


def check_same_examples(run_dir: Path, config: RunConfig, content: str | None) -> None:
    """A resume on example data whose examples changed since its newest checkpoint is refused
    here, before any model loads, as the trainer would refuse it after loading both (the
    sampler's data position; kdengine.data.packing): the packed rows' stream starts with the
    token store's content digest. A checkpoint from before meta.json held the position and a
    teacher cache's rows are left to the trainer's check; raw text is check_same_text's."""
    latest = newest_complete(run_dir)
    if content is None or latest is None:
        return
    try:
        saved = json.loads((latest / "meta.json").read_text()).get("data") or {}
    except (OSError, ValueError):
        return  # check_resumable has said what a damaged checkpoint needs
    stream = str(saved.get("stream", ""))
    digest = stream.split(":", 1)[0]
    if len(digest) != len(content) or digest == content:
        return
    raise ConfigError("resume", f"the examples of {config.data} are not the ones {run_dir} "
                      f"trained on up to {latest.name} (their tokens differ: a file changed, "
                      "was added or removed since): restore that data and resume, or start a new "
                      f"run on it with `{PROG} train --config {run_dir / 'config.json'} "
                      "--run-dir NEW_DIR`")


def check_same_text(run_dir: Path, config: RunConfig, tokenizer: Any) -> None:
    """check_same_examples for raw text (text files, pre-tokenized shards): its checkpoint's
    data position holds the training stream's fingerprint (kdengine.data.stream_fingerprint),
    which needs every token, so the data is read as the run reads it (kdengine.loading: text
    is tokenized into the engine's cache, which the run then reads back) and compared before
    any model loads. Example data, the demo's text, a teacher cache's rows, a tokenizer not
    here yet (a hub teacher to download) and a checkpoint from before meta.json held the
    position are not checked here (the trainer's check stays)."""
    from kdengine.config import DEMO_DATA

    if config.teacher_cache or config.data == DEMO_DATA or tokenizer is None:
        return
    from kdengine.data.formats import is_example_data, parse_fields

    if is_example_data(config.data, parse_fields(config.data_fields)):
        return
    latest = newest_complete(run_dir)
    if latest is None:
        return
    try:
        saved = json.loads((latest / "meta.json").read_text()).get("data") or {}
    except (OSError, ValueError):
        return  # check_resumable has said what a damaged checkpoint needs
    stream = saved.get("stream")
    if not isinstance(stream, str) or ":" not in stream:
        return
    from kdengine.data import ByteTokenizer, stream_fingerprint
    from kdengine.loading import load_data
    from kdengine.model_facts import DemoByteTokenizer

    if isinstance(tokenizer, DemoByteTokenizer):  # as the preflight counts the demo teacher's
        tokenizer = ByteTokenizer()
    now = stream_fingerprint(load_data(config, tokenizer).train)
    if now == stream:
        return
    then, count = stream.split(":", 1)[0], now.split(":", 1)[0]
    differ = (f"{then} training tokens then, {count} now" if then != count else
              f"as many training tokens, {count}, but not the same")
    raise ConfigError("resume", f"the text of {config.data} is not the one {run_dir} trained "
                      f"on up to {latest.name} ({differ}: a file changed, was added or "
                      "removed since): restore that data and resume, or start a new run on it "
                      f"with `{PROG} train --config {run_dir / 'config.json'} --run-dir NEW_DIR`")
