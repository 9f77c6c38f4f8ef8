"""The offline teacher cache end to end, on the CPU in fp32: `kdengine cache-teacher` writes the
tiny teacher's targets, `kdengine train --teacher-cache` trains from them with no teacher
loaded. With K equal to the vocab a cached run follows a live-teacher run to 1e-5; a writer
killed mid-shard finishes to the same bytes; a cached run resumes exactly; a cache that does not
fit the run is refused at --check in one line."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdengine.cli import main
from kdengine.events import read_events

CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}"
          "{% generation %}{{ m.content }}<|endoftext|>{% endgeneration %}{% else %}"
          "{{ m.content }}{% endif %}\n{% endfor %}")
RUN = ["--steps", "10", "--batch-size", "4", "--seq-len", "64", "--lr", "3e-3",
       "--eval-every", "5", "--eval-batches", "2", "--log-every", "1", "--checkpoint-every", "5",
       "--temperature", "2", "--alpha", "0.3", "--device", "cpu", "--dtype", "float32"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Tiny teacher and student with a chat template, conversations and raw text."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import TINY_TEXT, write_tiny_model

    root = tmp_path_factory.mktemp("teacher-cache")
    out = {}
    for name, hidden, layers, seed in (("teacher", 32, 2, 1), ("student", 16, 1, 2)):
        path = write_tiny_model(root / name, hidden=hidden, layers=layers, seed=seed)
        cfg = json.loads((path / "tokenizer_config.json").read_text())
        (path / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": CHATML}))
        out[name] = str(path)
    chats = root / "chats.jsonl"
    chats.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"what is {i} times 3?"},
        {"role": "assistant", "content": f"{i} times 3 is {i * 3}."}]}) + "\n"
        for i in range(120)))
    out["chats"] = str(chats)
    (root / "text").mkdir()
    (root / "text" / "a.txt").write_text(TINY_TEXT[:8000])
    out["text"] = str(root / "text")
    return out


def losses(run_dir: Path) -> tuple[dict[int, float], dict[int, float]]:
    events = read_events(run_dir / "events.jsonl")
    return ({e["step"]: e["loss"] for e in events if e["type"] == "step"},
            {e["step"]: e["val_loss"] for e in events if e["type"] == "eval"})


@pytest.fixture(scope="module")
def runs(inputs: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A K = vocab cache of the conversations, a live run and a cached run of the same setup."""
    root = tmp_path_factory.mktemp("cache-runs")
    cache = root / "cache"
    assert main(["cache-teacher", "--teacher", inputs["teacher"], "--data", inputs["chats"],
                 "--seq-len", "64", "--top-k", "257", "--store-dtype", "float32",
                 "--device", "cpu", "--out", str(cache)]) == 0
    common = ["train", "--student", inputs["student"], "--data", inputs["chats"], *RUN]
    assert main([*common, "--teacher", inputs["teacher"], "--run-dir", str(root / "live")]) == 0
    assert main([*common, "--teacher-cache", str(cache), "--run-dir", str(root / "cached")]) == 0
    return {"cache": cache, "live": root / "live", "cached": root / "cached", "root": root}


def test_cached_run_follows_the_live_teacher_with_k_equal_to_vocab(runs) -> None:
    live_steps, live_evals = losses(runs["live"])
    steps, evals = losses(runs["cached"])
    assert sorted(steps) == list(range(1, 11)) and sorted(evals) == [0, 5, 10]
    for step, loss in live_steps.items():
        assert steps[step] == pytest.approx(loss, abs=1e-5), step
    for step, loss in live_evals.items():
        assert evals[step] == pytest.approx(loss, abs=1e-5), step
    events = read_events(runs["cached"] / "events.jsonl")
    started = events[0]["teacher_cache"]
    assert started["k"] == 257 and started["targets"] == "topk" and started["bytes"] > 0
    assert started["teacher"] == read_events(runs["cache"] / "events.jsonl")[0]["config"][
        "teacher"]
    loaded = next(e for e in events if e["type"] == "stage" and e["stage"] == "load_teacher"
                  and e["state"] == "done")
    assert loaded["detail"].startswith("cached: K=257 topk")
    # its size in the unit that fits, as the runs list and the run screen say it (it said
    # '0.00109 GB' of a 1 MB cache)
    assert re.fullmatch(r"cached: K=257 topk, \d[\d.]* (kB|MB)", loaded["detail"]), loaded
    from kdtui.runs import run_info  # `kdtui runs` shows it

    assert run_info(runs["cached"]).teacher.startswith("cached K=257 topk")
    assert run_info(runs["live"]).teacher is None


def test_cached_loss_equals_the_live_loss_on_raw_text_windows(inputs, tmp_path) -> None:
    """Raw text trains on the cache's grid of windows: the same rows through a live teacher
    give the same losses (at T = 2, where the tail bucket would be tempered; K = vocab here)."""
    from kdengine.config import RunConfig
    from kdengine.loading import load_data, load_student, load_teacher
    from kdengine.runlog import RunLog
    from kdengine.teacher.provider import open_cached_teacher
    from kdengine.trainer import KDTrainer

    cache = tmp_path / "cache"
    assert main(["cache-teacher", "--teacher", inputs["teacher"], "--data", inputs["text"],
                 "--seq-len", "32", "--top-k", "257", "--store-dtype", "float32",
                 "--device", "cpu", "--out", str(cache)]) == 0
    base = RunConfig(teacher=inputs["teacher"], student=inputs["student"], data=inputs["text"],
                     seq_len=32, batch_size=4, steps=4, lr=3e-3, temperature=2.0,
                     eval_batches=2, device="cpu", dtype="float32")
    cached_cfg = base.with_values(teacher="", teacher_cache=str(cache))
    got = []
    for config in (base, cached_cfg):
        (tmp_path / f"log-{len(got)}").mkdir()
        log = RunLog(tmp_path / f"log-{len(got)}")
        cpu = torch.device("cpu")
        if config.teacher_cache:
            teacher, tokenizer = open_cached_teacher(config, log)
        else:
            teacher, tokenizer = load_teacher(config, cpu, torch.float32, log)
        torch.manual_seed(0)
        student = load_student(config, cpu, tokenizer, teacher, log)
        trainer = KDTrainer(config, teacher, student, load_data(config, tokenizer), log, cpu,
                            torch.float32)
        if not config.teacher_cache:  # the same rows, through the live teacher
            train, val = open_cached_teacher(cached_cfg, log)[0].samplers(
                load_data(config, tokenizer), config.batch_size, config.seed)
            trainer.sampler.batch = lambda step, rows=train: rows.batch(step)[:3]  # no cache rows
            trainer.val_batches = [b[:3] for b in val.fixed_batches(config.eval_batches)]
        got.append([trainer.evaluate()["val_loss"]] +
                   [trainer.train_step()["loss"] for _ in range(config.steps)])
        log.close()
    assert got[1] == pytest.approx(got[0], abs=1e-5)


KILLER = r"""
import os, signal, sys
import kdengine.teacher.writer as W
real = W.write_shard
def killing(directory, index, arrays):
    if index == 2:  # one file of the third shard written, then the process dies
        (directory / "shard-00002.ids").write_bytes(arrays["ids"].numpy().tobytes()[:100])
        os.kill(os.getpid(), signal.SIGKILL)
    return real(directory, index, arrays)
W.write_shard = killing
from kdengine.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_cache_writer_finishes_to_the_same_bytes(inputs, tmp_path, capsys) -> None:
    args = ["cache-teacher", "--teacher", inputs["teacher"], "--data", inputs["text"],
            "--seq-len", "32", "--top-k", "8", "--cache-targets", "sampled", "--seed", "5",
            "--shard-rows", "40", "--device", "cpu"]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-c", KILLER, *args, "--out", str(killed)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stdout + proc.stderr
    assert sorted(p.name for p in killed.glob("*.done")) == ["shard-00000.done",
                                                            "shard-00001.done"]
    # a run refuses the unfinished cache, in one line, with what to do
    code = main(["train", "--teacher-cache", str(killed), "--student", inputs["student"],
                 "--data", inputs["text"], "--seq-len", "32", "--check"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "is not complete" in err, err
    assert main([*args, "--out", str(killed)]) == 0  # the same command finishes it
    assert main([*args, "--out", str(whole)]) == 0
    shards = sorted(p.name for p in whole.glob("shard-*"))
    assert len(shards) > 10 and shards == sorted(p.name for p in killed.glob("shard-*"))
    for name in shards:
        assert (killed / name).read_bytes() == (whole / name).read_bytes(), name
    manifest = json.loads((killed / "manifest.json").read_text())
    assert manifest["complete"] and manifest["targets"] == "sampled"
    whole_val = json.loads((whole / "manifest.json").read_text())["teacher_val"]
    assert manifest["teacher_val"] == whole_val and None not in whole_val["nll"]
    events = read_events(killed / "events.jsonl")
    assert [e["type"] for e in events].count("run_started") == 2  # one stream, seq continued
    assert events[-1]["type"] == "run_finished" and events[-1]["status"] == "completed"
    steps = [e for e in events if e["type"] == "step"]
    assert steps[-1]["step"] == steps[-1]["total_steps"] and "eta_s" in steps[-1]
    # each shard's write and sync, timed (the progress events between shard ends have none)
    assert all(e["write_s"] >= 0 for e in steps if e["step"] == e["rows_written"])


def test_a_cached_run_resumes_exactly(runs, inputs, monkeypatch) -> None:
    from kdengine.trainer import KDTrainer

    real = KDTrainer.queue_step

    def stop_before_step_8(self, batch=None, **queue):
        if self.step + 1 == 8:
            raise KeyboardInterrupt
        return real(self, batch, **queue)

    run_dir = runs["root"] / "resumed"
    args = ["train", "--student", inputs["student"], "--data", inputs["chats"], *RUN,
            "--teacher-cache", str(runs["cache"]), "--run-dir", str(run_dir)]
    monkeypatch.setattr(KDTrainer, "queue_step", stop_before_step_8)
    assert main(args) == 130
    monkeypatch.setattr(KDTrainer, "queue_step", real)
    assert main(["train", "--resume", str(run_dir)]) == 0
    steps, evals = losses(run_dir)
    want_steps, want_evals = losses(runs["cached"])
    assert steps == want_steps and evals == want_evals


def test_check_refuses_a_cache_that_does_not_fit_the_run(runs, inputs, tmp_path,
                                                          capsys) -> None:
    base = ["train", "--teacher-cache", str(runs["cache"]), "--student", inputs["student"],
            "--data", inputs["chats"], "--check", *RUN]
    other = tmp_path / "other.jsonl"
    shutil.copy(inputs["chats"], other)
    with other.open("a") as fh:
        fh.write(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                          {"role": "assistant", "content": "hello"}]}) + "\n")
    cases = [(["--seq-len", "32"], "seq_len=64, the run has seq_len=32"),
             (["--data", str(other)], "which is not the run's data"),
             (["--loss", "reverse_kl"], "reverse_kl needs the teacher's full distribution"),
             (["--teacher", "demo://teacher"], "was written from")]
    for extra, why in cases:
        run_dir = tmp_path / "never"
        code = main([*base, *extra, "--run-dir", str(run_dir)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err and why in err, (extra, err)
        assert not run_dir.exists()
    assert main([*base, "--run-dir", str(tmp_path / "fits")]) == 0


def test_a_vocab_below_the_tokenizers_ids_is_refused_by_check_too(inputs, tmp_path,
                                                                   capsys) -> None:
    """--vocab 100 with a tokenizer of ids 0..256 passed --check and failed in the scorer
    (`index 220 is out of bounds`): it is refused in one line naming the smallest value, by
    --check as by the job, and nothing is written; a vocab beyond the teacher's as well."""
    base = ["cache-teacher", "--teacher", inputs["teacher"], "--data", inputs["chats"],
            "--seq-len", "64", "--top-k", "8", "--device", "cpu"]
    for vocab, said in (("100", "--vocab: must be at least 257"),
                        ("300", "--vocab: must be at most the teacher's 257")):
        for check in (["--check"], []):
            out = tmp_path / f"cache-{vocab}-{bool(check)}"
            code = main([*base, "--vocab", vocab, "--out", str(out), *check])
            err = capsys.readouterr().err.strip()
            assert code == 2 and "\n" not in err and said in err, err
            assert not out.exists()
    assert main([*base, "--vocab", "257", "--out", str(tmp_path / "fits"), "--check"]) == 0


def test_a_cache_jobs_run_id_is_its_directorys_name(runs) -> None:
    """`kdtui runs` lists a cache job by its run_started's run_id, and `kdtui watch` finds a run
    by directory name: the run_id was cache-<key[:12]>, an id watch refused. The key stays in
    the event's cache.key."""
    from kdtui.runs import find_run, list_runs

    started = read_events(runs["cache"] / "events.jsonl")[0]
    manifest = json.loads((runs["cache"] / "manifest.json").read_text())
    assert started["run_id"] == runs["cache"].name == "cache"
    assert started["cache"]["key"] == manifest["key"]
    listed = [r.run_id for r in list_runs(runs["root"])]
    assert "cache" in listed
    assert find_run(runs["root"], "cache") == runs["cache"]


def test_a_cached_run_reports_the_teachers_held_out_ce_at_step_0(runs, tmp_path) -> None:
    """The writer measured the teacher's CE but a run from the cache reported none (`teacher
    CE –` in kdtui compare). The manifest keeps each held-out row's NLL, and the step-0 eval of
    a run from the cache reports val_teacher_ce on its own held-out rows: the live teacher's."""
    from kdengine.teacher.cache import TeacherCache
    from kdengine.teacher.provider import CachedTeacher

    manifest = json.loads((runs["cache"] / "manifest.json").read_text())
    stored = manifest["teacher_val"]
    assert len(stored["nll"]) == len(stored["tokens"]) == manifest["rows"]["val"]
    assert None not in stored["nll"] and all(n > 0 for n in stored["tokens"])

    def step0(run_dir: Path) -> dict:
        return next(e for e in read_events(run_dir / "events.jsonl")
                    if e["type"] == "eval" and e["step"] == 0)

    live, cached = step0(runs["live"]), step0(runs["cached"])
    assert cached["val_teacher_ce"] == pytest.approx(live["val_teacher_ce"], abs=1e-5)
    assert "val_teacher_ce=" in (runs["cached"] / "launch.log").read_text()

    # a cache written before the manifest kept them: no teacher CE, and nothing else changes
    old = tmp_path / "old-cache"
    shutil.copytree(runs["cache"], old)
    manifest.pop("teacher_val")
    (old / "manifest.json").write_text(json.dumps(manifest))
    teacher = CachedTeacher(TeacherCache(old))
    assert teacher.val_ce([]) is None
    full = CachedTeacher(TeacherCache(runs["cache"]))
    assert full.val_ce([]) is None  # no rows: no CE (never a division by zero)
