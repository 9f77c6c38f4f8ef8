"""`kdengine cache-teacher`: run the teacher once over every train and validation row of the
data and write its top-K (or sampled) targets as a teacher cache (kdengine.teacher.cache).

Stages as a run's (`prepare -> load_teacher -> data -> score`), `step` events with the rows
scored (`step`/`total_steps`), tokens/s, the ETA and the teacher's own CE on the scored rows,
so `kdtui watch DIR` follows it. A rerun of the same command continues a killed one: finished
shards are kept, the others are written again, byte for byte the same.
"""

from __future__ import annotations

import json
import os
import signal
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kdengine import events as ev
from kdengine.config import ConfigError, RunConfig
from kdengine.diskspace import human
from kdengine.runlog import RunLog
from kdengine.stop import RunCancelled, StopSignals
from kdengine.teacher.cache import (
    CACHE_FORMAT,
    STORE_DTYPES,
    bytes_per_token,
    id_dtype_for,
    read_manifest,
    shard_done,
    shard_problem,
    shard_sizes,
    write_manifest,
    write_shard,
)
from kdengine.teacher.identity import (
    data_identity,
    row_options,
    teacher_identity,
    tokenizer_identity,
)
from kdengine.teacher.progress import ScoreProgress
from kdengine.teacher.rows import cache_rows, describe_rows, row_hash
from kdengine.teacher.sparse import SAMPLED, TARGET_KINDS
from kdengine.teacher.targets import topk_targets

SHARD_BYTES = 512 << 20  # a shard's size on disk, about: small enough to redo after a kill


@dataclass
class CacheJob:
    config: RunConfig  # teacher, data and the row fields (identity.ROW_FIELDS), device, dtype
    top_k: int = 64
    targets: str = "topk"
    store_dtype: str = "float16"
    vocab: int | None = None  # default: the teacher's lm-head rows
    rows_per_batch: int = 8  # teacher inference batch
    shard_rows: int | None = None  # default: about SHARD_BYTES a shard
    seed: int = 0  # sampled targets' draws

    @property
    def data_config(self) -> RunConfig:
        """The config the job reads its data by: batch_size 1, since it scores every row,
        not batches of them (a run that trains from the cache checks its own batch_size
        against the rows; the default's 4 refused a smaller data set here, naming a flag that
        cache-teacher has not)."""
        return self.config.with_values(batch_size=1)

    def check(self) -> None:
        if self.targets not in TARGET_KINDS:
            raise ConfigError("cache_targets", f"must be one of {', '.join(TARGET_KINDS)}")
        if self.store_dtype not in STORE_DTYPES:
            raise ConfigError("store_dtype", f"must be one of {', '.join(STORE_DTYPES)}")
        for name in ("top_k", "rows_per_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be at least 1 (got {getattr(self, name)})")
        if self.shard_rows is not None and self.shard_rows < 1:
            raise ConfigError("shard_rows", f"must be at least 1 (got {self.shard_rows})")


def default_cache_dir(key: str) -> Path:
    from kdengine.cache_dir import cache_root

    return cache_root() / "teacher" / key


def _teacher_dir(config: RunConfig) -> Path | None:
    """The teacher's directory here, without downloading or training anything."""
    if config.teacher.startswith("demo://"):
        return None
    from kdengine.hub import is_repo_id
    from kdengine.sources import cached_snapshot

    return cached_snapshot(config.teacher) if is_repo_id(config.teacher) else \
        Path(config.teacher).expanduser()


def plan_identity(job: CacheJob, tokenizer: Any, template_dir: Path | None,
                  teacher_vocab: int, teacher_dir: Path | None) -> dict[str, Any]:
    """Everything the cache's bytes depend on (hashed into its key)."""
    cfg = job.config
    vocab = job.vocab or teacher_vocab
    return {"format": CACHE_FORMAT, "teacher": teacher_identity(cfg.teacher, teacher_dir),
            "tokenizer": tokenizer_identity(tokenizer),
            "data": data_identity(cfg, tokenizer, template_dir), "options": row_options(cfg),
            "k": job.top_k, "targets": job.targets, "dtype": job.store_dtype, "vocab": vocab,
            "teacher_dtype": _resolved_dtype(cfg),
            "seed": job.seed if job.targets == SAMPLED else None}


def _resolved_dtype(config: RunConfig) -> str:
    """The teacher's compute dtype as the job will run it (auto: bfloat16 on CUDA, else fp32)."""
    from kdengine.trainer import pick_device, pick_dtype

    dtype = str(pick_dtype(config, pick_device(config)))[6:]
    return f"float8_e4m3+{dtype}" if config.teacher_dtype == "float8" else dtype


@torch.no_grad()
def score_rows(teacher: Any, input_ids: torch.Tensor, labels: torch.Tensor,
               position_ids: torch.Tensor | None, *, vocab: int, top_k: int, targets: str,
               compute_dtype: torch.dtype, generator: torch.Generator | None = None,
               chunk_tokens: int = 4096) -> dict[str, torch.Tensor]:
    """The teacher's targets for a batch of rows: ids and log-probs [b, seq, K] and the tail's
    log-mass [b, seq] (log_softmax at T = 1 over the first `vocab` ids, as the live path drops a
    padded teacher's extra ids), plus its summed NLL on the labels and their count, in all
    (`nll`, `count`) and per row (`row_nll`, `row_count`: the held-out rows' teacher CE)."""
    device = teacher.head_weight.device
    pos = position_ids.to(device) if position_ids is not None else None
    autocast = nullcontext() if compute_dtype in (torch.float32, torch.float64) else \
        torch.autocast(device.type, dtype=compute_dtype)
    with autocast:
        hidden = teacher.hidden_states(input_ids.to(device), pos)
    b, seq = input_ids.shape
    h = hidden.reshape(b * seq, -1).to(compute_dtype)
    w = teacher.head_weight[:vocab].to(compute_dtype)
    flat_labels = labels.reshape(-1).to(device)
    ids, logp, tail = [], [], []
    token_nll = []
    for start in range(0, h.shape[0], chunk_tokens):
        logits = h[start:start + chunk_tokens] @ w.t()
        lab = flat_labels[start:start + chunk_tokens].clamp(min=0).unsqueeze(-1)
        if targets == SAMPLED:
            lp = torch.log_softmax(logits.float(), -1)
            i = torch.multinomial(lp.exp(), top_k, replacement=True, generator=generator)
            v = lp.gather(-1, i)
            t = torch.zeros(len(lp), device=device)  # no tail bucket for draws
            picked = lp.gather(-1, lab).squeeze(-1)
        else:  # kdengine.teacher.targets: no fp32 log-probs of the whole vocab are made
            top = topk_targets(logits, top_k)
            v, i, t = top["logp"], top["ids"], top["tail"]
            picked = logits.gather(-1, lab).squeeze(-1).float() - top["lse"]
        valid = flat_labels[start:start + chunk_tokens] >= 0
        picked = picked.double()
        token_nll.append(torch.where(valid, -picked, torch.zeros_like(picked)))
        ids.append(i)
        logp.append(v)
        tail.append(t)
    k = ids[0].shape[-1]
    row_nll = torch.cat(token_nll).reshape(b, seq).sum(1)
    row_count = (flat_labels >= 0).reshape(b, seq).sum(1)
    return {"ids": torch.cat(ids).reshape(b, seq, k), "logp": torch.cat(logp).reshape(b, seq, k),
            "tail": torch.cat(tail).reshape(b, seq), "nll": row_nll.sum(),
            "count": row_count.sum(), "row_nll": row_nll, "row_count": row_count}


def run_cache_job(job: CacheJob, out: Path, identity: dict[str, Any], key: str) -> int:
    """Write (or finish) the cache in `out` (which exists); events and launch.log there."""
    from kdengine.loading import load_data, load_teacher
    from kdengine.run import environment
    from kdengine.trainer import pick_device, pick_dtype

    cfg = job.config
    continued = (out / ev.EVENTS_FILE).exists()  # an earlier attempt's events: this one goes on
    log = RunLog(out)
    stop = StopSignals()
    stage, rows_done, total_rows = "prepare", 0, 0
    try:
        with stop:
            torch.manual_seed(0)
            device, dtype = pick_device(cfg), pick_dtype(cfg, pick_device(cfg))
            torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)
            previous = read_manifest(out) if (out / "manifest.json").exists() else None
            # a continued job's resumed_from: the rows its finished shards hold (a train run's
            # is its checkpoint's step); null for a job's first attempt
            resumed_from = _rows_written(out, previous) if previous or continued else None
            # run_id is the directory's name, the id `kdtui watch` takes (as a train run's); the
            # cache's key is cache.key
            log.emit(ev.RUN_STARTED, run_id=out.name, run_dir=str(out),
                     config=cfg.to_dict(), device=str(device), dtype=str(dtype)[6:],
                     resumed_from=resumed_from, env=environment(),
                     job="cache-teacher", cache={"key": key, "k": job.top_k,
                                                 "targets": job.targets,
                                                 "dtype": job.store_dtype,
                                                 # what finishing the job needs again (R)
                                                 "rows_per_batch": job.rows_per_batch,
                                                 "seed": job.seed})
            log.line(f"teacher cache {key} of {cfg.teacher} into {out}")
            log.stage(stage, "running")
            log.stage(stage, "done")

            stage = "load_teacher"
            log.stage(stage, "running")
            with stop.interruptible():  # a download or the demo teacher's training: stop now
                teacher, tokenizer = load_teacher(cfg, device, dtype, log)
            vocab = job.vocab or teacher.vocab_size
            if vocab > teacher.vocab_size:
                raise ConfigError("vocab", f"{vocab} is beyond the teacher's "
                                  f"{teacher.vocab_size} ids")
            template_dir = getattr(teacher, "source_dir", None)
            _save_tokenizer(out, tokenizer)
            forward = TeacherForward(teacher, device)
            log.stage(stage, "done", f"vocab {vocab}")
            stop.check()

            stage = "data"
            log.stage(stage, "running")
            data = load_data(job.data_config, tokenizer, template_dir, log.line)
            train, val = cache_rows(data, cfg.seq_len)
            total_rows = len(train) + len(val)
            per_token = bytes_per_token(job.top_k, job.store_dtype, vocab, cfg.seq_len)
            shard_rows = job.shard_rows or max(1, int(SHARD_BYTES // (per_token * cfg.seq_len)))
            shards = -(-total_rows // shard_rows)
            manifest = {
                "format": CACHE_FORMAT, "key": key, "complete": False, "identity": identity,
                "teacher": {"spec": cfg.teacher, "identity": identity["teacher"],
                            "dir": str(Path(template_dir).resolve()) if template_dir else None,
                            "vocab_size": teacher.vocab_size, "dtype": str(dtype)[6:]},
                "tokenizer": {"identity": identity["tokenizer"], "eos_id": tokenizer.eos_id,
                              "vocab_size": tokenizer.vocab_size,
                              "dir": "tokenizer" if (out / "tokenizer").is_dir() else None},
                "data": {"spec": cfg.data, "identity": identity["data"],
                         "train_rows": describe_rows(train, val)["train"]},
                "options": row_options(cfg), "rows": describe_rows(train, val),
                "k": job.top_k, "targets": job.targets, "dtype": job.store_dtype,
                "id_dtype": id_dtype_for(vocab), "vocab": vocab, "seed": identity["seed"],
                "bytes_per_token": round(per_token, 3), "shard_rows": shard_rows,
                "shards": shards, "bytes": None,
                # the teacher's NLL and label count of each held-out row (T = 1, over the first
                # `vocab` ids): a run's step-0 val_teacher_ce on the rows it evaluates; null
                # until the row's shard is written (a continued job keeps the earlier ones)
                "teacher_val": _teacher_val(previous, len(val))}
            if previous is not None and previous.get("shard_rows") != shard_rows:
                raise ConfigError("shard_rows", f"{out} was started with "
                                  f"{previous.get('shard_rows')} rows a shard: give the same "
                                  "--shard-rows to finish it")
            write_manifest(out, manifest)
            # a shard counts as written when marked and whole (a file cut short is redone)
            done = [i for i in range(shards)
                    if shard_done(out, i) and shard_problem(out, manifest, i) is None]
            _check_space(out, manifest, [i for i in range(shards) if i not in done])
            rows_done = sum(min(shard_rows, total_rows - i * shard_rows) for i in done)
            # the rows to score, known here: a watcher's total long before the first shard ends
            log.stage(stage, "done", f"{total_rows:,} rows ({len(train):,} train, "
                      f"{len(val):,} val) x {cfg.seq_len}", rows=total_rows,
                      train_rows=len(train), val_rows=len(val), seq_len=cfg.seq_len,
                      shards=shards, shard_rows=shard_rows, rows_written=rows_done)
            stop.check()

            stage = "score"
            log.stage(stage, "running")
            views = [(train, 0), (val, len(train))]
            if done:
                log.line(f"resuming: {len(done)} of {shards} shards already written")
            progress = ScoreProgress(total_rows=total_rows, seq_len=cfg.seq_len, shards=shards,
                                     rows_written=rows_done)
            for index in range(shards):
                if index in done:
                    continue
                first = index * shard_rows
                rows = list(range(first, min(first + shard_rows, total_rows)))
                parts: dict[str, list[torch.Tensor]] = {"ids": [], "logp": [], "tail": [],
                                                        "rowhash": []}
                batches = range(0, len(rows), job.rows_per_batch)
                for b, at in enumerate(batches):
                    stop.check()
                    batch_rows = rows[at:at + job.rows_per_batch]
                    input_ids, labels, positions = _gather(views, batch_rows)
                    gen = None
                    if job.targets == SAMPLED:
                        gen = torch.Generator(device=device).manual_seed(
                            (job.seed * 1_000_003 + index * 65_537 + b) % (2**63))
                    scored = forward(input_ids, labels, positions, vocab=vocab,
                                     top_k=job.top_k, targets=job.targets,
                                     compute_dtype=dtype, generator=gen)
                    parts["ids"].append(scored["ids"].to("cpu", STORE_IDS[id_dtype_for(vocab)]))
                    parts["logp"].append(scored["logp"].to("cpu", STORE_DTYPES[job.store_dtype]))
                    parts["tail"].append(scored["tail"].to("cpu", torch.float32))
                    parts["rowhash"].append(row_hash(input_ids, positions))
                    # float() and int() sync with the device, as the writer always has: the
                    # progress below reads these host numbers and the clock, nothing more
                    _record_val(manifest["teacher_val"], batch_rows, len(train), scored)
                    progress.batch(len(batch_rows), input_ids.numel(), float(scored["nll"]),
                                   int(scored["count"]))
                    if b < len(batches) - 1 and progress.due():  # a shard's end says it there
                        fields = progress.fields(index)
                        log.emit(ev.STEP, **fields)
                        log.line(progress.line(fields))
                written = time.perf_counter()
                write_shard(out, index, {k: torch.cat(v) for k, v in parts.items()})
                if any(r >= len(train) for r in rows):  # the held-out rows' NLL, with them
                    write_manifest(out, manifest)
                write_s = time.perf_counter() - written
                progress.shard_written()
                rows_done = progress.rows_written
                fields = progress.fields(index)
                log.emit(ev.STEP, **fields, write_s=round(write_s, 3))
                log.line(progress.line(fields, write_s))
            size = sum(p.stat().st_size for p in out.glob("shard-*") if p.suffix != ".done")
            manifest.update(complete=True, bytes=size)
            write_manifest(out, manifest)
            log.stage(stage, "done", f"{human(size)}, {manifest['bytes_per_token']:.0f} B/token")
            log.emit(ev.RUN_FINISHED, status="completed", exit_code=0, steps=rows_done,
                     cache=str(out), bytes=size)
            log.line(f"teacher cache complete: {out} ({human(size)}); train from it with "
                     f"`kdengine train --teacher-cache {out} ...`")
            return 0
    except (RunCancelled, KeyboardInterrupt) as exc:
        name = str(exc) or "SIGINT"
        code = 128 + getattr(signal, name, signal.SIGINT)  # 130 or 143, as a train run's
        log.stage(stage, "cancelled", f"{name} received")
        log.emit(ev.RUN_FINISHED, status="cancelled", exit_code=code, steps=rows_done)
        return code
    except Exception as exc:  # noqa: BLE001 - every failure ends the job with its reason
        from kdengine.diskspace import full_prefix  # a full disk: inodes, quota or space

        reason = full_prefix(exc, out) + (str(exc) or type(exc).__name__)
        log.stage(stage, "failed", reason, terminal=False)
        tb = "".join(traceback.format_exception(exc))
        log.emit(ev.LOG, level="error", message=f"{type(exc).__name__}: {reason}", traceback=tb)
        log.line(tb.rstrip(), terminal=False)
        log.emit(ev.RUN_FINISHED, status="failed", exit_code=1, error=reason, stage=stage,
                 steps=rows_done)
        print(f"kdengine cache-teacher: error: [{stage}] failed: {reason} (traceback in "
              f"{out / 'launch.log'})", flush=True)
        return 1
    finally:
        log.close()


def _check_space(out: Path, manifest: dict[str, Any], left: list[int]) -> None:
    """The shards still to write fit on OUT's file system, checked before a row is scored: a
    cache known to be too big would otherwise cost the teacher's whole pass and then fail at a
    shard's write with 'disk full'."""
    from kdengine.diskspace import free_bytes

    need = sum(sum(shard_sizes(manifest, i).values()) for i in left)
    free = free_bytes(out)
    if free >= need:
        return
    rows, per = manifest["rows"], manifest["shard_rows"]
    count = sum(min(per, rows["train"] + rows["val"] - i * per) for i in left)
    raise ConfigError("out", f"{out}'s file system has {human(free)} free, the cache needs "
                      f"{human(need)} more ({count} rows x {rows['seq_len']} tokens x "
                      f"{manifest['bytes_per_token']:.0f} B/token): "
                      "free some space, or pick another --out (a smaller --top-k or "
                      "--store-dtype makes it smaller)")


def _teacher_val(previous: dict[str, Any] | None, val_rows: int) -> dict[str, Any]:
    """The manifest's `teacher_val`: per held-out row, the teacher's summed NLL and label count
    (null: not scored yet), the earlier attempt's kept when it is the same rows."""
    kept = (previous or {}).get("teacher_val") or {}
    if len(kept.get("nll") or []) == val_rows and len(kept.get("tokens") or []) == val_rows:
        return {"nll": list(kept["nll"]), "tokens": list(kept["tokens"])}
    return {"nll": [None] * val_rows, "tokens": [None] * val_rows}


def _record_val(teacher_val: dict[str, Any], batch_rows: list[int], first_val: int,
                scored: dict[str, torch.Tensor]) -> None:
    row_nll, row_count = scored["row_nll"].tolist(), scored["row_count"].tolist()
    for at, row in enumerate(batch_rows):
        if row >= first_val:
            teacher_val["nll"][row - first_val] = row_nll[at]
            teacher_val["tokens"][row - first_val] = int(row_count[at])


def _rows_written(out: Path, previous: dict[str, Any] | None) -> int:
    """The rows in the finished shards of the job that `previous` (its manifest) describes."""
    if not previous:
        return 0
    per, rows = int(previous.get("shard_rows") or 0), previous.get("rows") or {}
    total = int(rows.get("train") or 0) + int(rows.get("val") or 0)
    return sum(min(per, total - i * per) for i in range(int(previous.get("shards") or 0))
               if shard_done(out, i) and shard_problem(out, previous, i) is None)


class TeacherForward:
    """score_rows with the teacher compiled as the trainer compiles it (CUDA): the first call
    compiles, and a compiler failure costs speed, never the cache (eager from then on)."""

    def __init__(self, teacher: Any, device: torch.device) -> None:
        self.teacher, self.graphs, self.proven = teacher, False, True
        if device.type == "cuda" and os.environ.get("KDENGINE_COMPILE", "1") != "0":
            from kdengine.compile_cache import keep_compiled_artifacts
            from kdengine.compiled import CompileOptions, compile_teacher

            kept = keep_compiled_artifacts()  # the trainer's compiled teacher, shared both ways
            if kept.warning:
                print(f"WARNING: {kept.warning}", flush=True)
            self.graphs = compile_teacher(teacher, CompileOptions()) == "model+cudagraphs"
            self.proven = False

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        if self.graphs:  # CUDA-graph trees: the last call's outputs are consumed
            torch.compiler.cudagraph_mark_step_begin()
        if self.proven:
            return score_rows(self.teacher, *args, **kwargs)
        try:
            out = score_rows(self.teacher, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any compiler error: eager instead
            from kdengine.compiled import uncompile_decoder_layers

            print(f"WARNING: torch.compile of the teacher failed ({exc!r:.300}); scoring eager",
                  flush=True)
            uncompile_decoder_layers(self.teacher)
            self.graphs = False
            out = score_rows(self.teacher, *args, **kwargs)
        self.proven = True
        return out


STORE_IDS = {"uint16": torch.uint16, "int32": torch.int32}


def _gather(views: list[tuple[Any, int]], rows: list[int]):
    """input_ids, labels and position_ids (or None) of a run of consecutive cache rows (train
    rows first, then validation rows)."""
    (train, _), (val, offset) = views
    picked = [view.rows(part) for view, part in
              ((train, [r for r in rows if r < offset]),
               (val, [r - offset for r in rows if r >= offset])) if part]
    input_ids = torch.cat([p[0] for p in picked])
    labels = torch.cat([p[1] for p in picked])
    positions = None if picked[0][2] is None else torch.cat([p[2] for p in picked])
    return input_ids, labels, positions


def _save_tokenizer(out: Path, tokenizer: Any) -> None:
    """The teacher's tokenizer files and chat template beside the shards: a cached run reads
    the data with them, and needs no teacher directory."""
    directory = getattr(tokenizer, "directory", None)
    if directory is None:
        return
    import shutil

    from kdengine.tokenizer import TOKENIZER_FILES

    target = out / "tokenizer"
    target.mkdir(exist_ok=True)
    from kdengine.data.chat import TEMPLATE_DIR, TEMPLATE_FILE

    for name in (*TOKENIZER_FILES, TEMPLATE_FILE, "generation_config.json"):
        if (Path(directory) / name).is_file():
            shutil.copy2(Path(directory) / name, target / name)
    extra = Path(directory) / TEMPLATE_DIR
    if extra.is_dir():
        shutil.copytree(extra, target / extra.name, dirs_exist_ok=True)
    (target / "source.json").write_text(json.dumps({"teacher_dir": str(directory)}) + "\n")
