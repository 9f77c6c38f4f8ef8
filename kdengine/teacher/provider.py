"""The teacher a run trains against when it is a cache: no model is loaded; the trainer asks it
for the samplers (the rows the cache holds, kdengine.teacher.rows) and for the loss of a batch
(kdengine.teacher.sparse against the rows' cached targets)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from kdengine.config import ConfigError, RunConfig
from kdengine.data import TokenSplits
from kdengine.data.examples import ExampleData
from kdengine.diskspace import human
from kdengine.losses import KDLossSpec, LossParts
from kdengine.teacher.cache import TeacherCache, read_manifest, summary
from kdengine.teacher.rows import CachedBatch, RowSampler, cache_rows, row_hash
from kdengine.teacher.sparse import SparseTargets, check_kind, sparse_kd_loss


def teacher_cache_fields(config: RunConfig) -> dict[str, Any]:
    """run_started's `teacher_cache` (K, targets, size, the teacher's identity), or nothing."""
    if not getattr(config, "teacher_cache", ""):
        return {}
    directory = Path(config.teacher_cache)
    return {"teacher_cache": summary(directory, read_manifest(directory))}


def cache_tokenizer(directory: Path, manifest: dict[str, Any]) -> Any:
    """The tokenizer the cache was written with: its copied files, or the demo's bytes."""
    sub = manifest["tokenizer"].get("dir")
    if sub:
        from kdengine.tokenizer import load_tokenizer

        return load_tokenizer(Path(directory).expanduser() / sub, "teacher_cache")
    from kdengine.data import ByteTokenizer

    return ByteTokenizer()


class CachedTeacher:
    """kdengine.providers' Teacher role, played by a cache."""

    model = None  # nothing to compile, place or count

    def __init__(self, cache: TeacherCache) -> None:
        self.cache = cache
        self.vocab_size = cache.vocab
        sub = cache.manifest["tokenizer"].get("dir")
        # where the run finds the teacher's chat template (example data)
        self.source_dir = cache.directory / sub if sub else None

    def describe(self) -> str:
        size = self.cache.manifest.get("bytes") or 0
        return f"cached: K={self.cache.top_k} {self.cache.kind}, {human(size)}"

    def samplers(self, data: TokenSplits | ExampleData, batch_size: int,
                 seed: int) -> tuple[RowSampler, RowSampler]:
        train, val = cache_rows(data, self.cache.seq_len)
        rows = self.cache.manifest["rows"]
        if (len(train), len(val)) != (rows["train"], rows["val"]):
            raise ConfigError("teacher_cache", f"{self.cache.directory} holds {rows['train']} "
                              f"train and {rows['val']} validation rows, the run's data makes "
                              f"{len(train)} and {len(val)}: the data changed since the cache "
                              "was written; write it again")
        return (RowSampler(train, batch_size, seed, check=self.check_rows),
                RowSampler(val, batch_size, seed, offset=len(train), check=self.check_rows))

    def val_ce(self, batches: list[CachedBatch]) -> float | None:
        """The teacher's CE on exactly these held-out batches' rows (duplicates counted as the
        live teacher's CE counts them), from the NLL the writer stored per held-out row; None
        for a cache written before it kept them, or a row it holds no NLL for."""
        stored = self.cache.manifest.get("teacher_val") or {}
        nll, tokens = stored.get("nll"), stored.get("tokens")
        first_val = self.cache.manifest["rows"]["train"]
        if not isinstance(nll, list) or not isinstance(tokens, list):
            return None
        total, n = 0.0, 0
        for batch in batches:
            for row in batch.rows.tolist():
                at = row - first_val
                if not 0 <= at < len(nll) or nll[at] is None or tokens[at] is None:
                    return None  # not a held-out row of the cache, or not scored
                total, n = total + float(nll[at]), n + int(tokens[at])
        return total / n if n else None

    def check_rows(self, batch: CachedBatch) -> None:
        """The batch's tokens are the ones the cache's targets were computed on (on the CPU,
        when the sampler makes the batch: no device sync)."""
        stored = self.cache.read_hashes(batch.rows)
        seen = row_hash(batch.input_ids, batch.position_ids)
        if not torch.equal(stored, seen):
            bad = int(batch.rows[(stored != seen).nonzero()[0]])
            raise ConfigError("teacher_cache", f"row {bad} of {self.cache.directory} was "
                              "computed on other tokens than the run's data gives: the data or "
                              "its tokenization changed since the cache was written; write it "
                              "again")

    def loss(self, s_hidden: torch.Tensor, head: torch.Tensor, labels: torch.Tensor,
             rows: torch.Tensor, spec: KDLossSpec, chunk_tokens: int, **options: Any
             ) -> LossParts:
        """The batch's loss against its rows' cached targets (options: fused_kd_loss's)."""
        read = self.cache.read(rows.cpu())
        k = self.cache.top_k
        targets = SparseTargets(read["ids"].reshape(-1, k), read["logp"].reshape(-1, k),
                                read["tail"].reshape(-1), self.cache.kind, self.cache.vocab)
        return sparse_kd_loss(s_hidden, head, targets.to(s_hidden.device), labels, spec,
                              chunk_tokens, **options)


def open_cached_teacher(config: RunConfig, log: Any) -> tuple[CachedTeacher, Any]:
    """The cache of config.teacher_cache as the run's teacher, and the tokenizer it was
    written with (the run reads its data with it)."""
    check_kind(config.loss)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("teacher_cache", "runs from a teacher cache train on one process for "
                          "now: run them without torchrun")
    cache = TeacherCache(Path(config.teacher_cache))
    tokenizer = cache_tokenizer(cache.directory, cache.manifest)
    teacher = CachedTeacher(cache)
    m = cache.manifest
    log.line(f"teacher cache {cache.directory}: {m['teacher'].get('spec')} "
             f"(identity {str(m['teacher'].get('identity'))[:12]}), K={cache.top_k} "
             f"{cache.kind}, {m.get('dtype')}, {m.get('bytes_per_token')} B/token; no teacher "
             "is loaded")
    return teacher, tokenizer
