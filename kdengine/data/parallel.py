"""Examples encoded on several processes, results in the examples' order.

Chat templates render in Python (jinja2), the slow part of tokenizing conversations, so a
large dataset is encoded by a pool of spawned worker processes (they import the tokenizer and
jinja2, never torch), in chunks, a bounded number in flight so memory stays flat. Results come
back as packed bytes (uint32 ids, uint8 trains): cheap to pass between processes. Errors keep
their order: the first bad example of a source is the one named, with or without workers.
"""

from __future__ import annotations

import multiprocessing
import os
from array import array
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from kdengine.config import ConfigError
from kdengine.data.chat import ChatTemplate
from kdengine.data.encode import encode_example
from kdengine.data.formats import BadRecord, Example

CHUNK = 256  # examples a task: large enough that passing them costs little next to encoding
# a source this large (bytes on disk) is worth starting workers for
PARALLEL_BYTES = 16 << 20

Encoded = tuple[Example, bytes, bytes, int]  # example, ids (uint32), trains (uint8), trained


def default_workers(total_bytes: int) -> int:
    """Processes to encode with: 0 (this process) for small data, else the cores but one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)
    return 0 if total_bytes < PARALLEL_BYTES or cores < 3 else min(cores - 1, 32)


def start_pool(workers: int, tokenizer: Any, template: ChatTemplate | None) \
        -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init, initargs=(tokenizer, template))


def encode_all(examples: Iterable[Example], tokenizer: Any, template: ChatTemplate | None,
               train_on: str, pool: ProcessPoolExecutor | None = None,
               ahead: int = 8) -> Iterator[Encoded]:
    """(example, ids, trains, trained) for each example, in order; on `pool` when given."""
    if pool is None:
        for example in examples:
            yield _encoded(example, tokenizer, template, train_on)
        return
    pending: deque[tuple[list[Example], Future]] = deque()
    chunk: list[Example] = []
    try:
        for example in examples:
            chunk.append(example)
            if len(chunk) == CHUNK:
                pending.append((chunk, pool.submit(_encode_chunk, chunk, train_on)))
                chunk = []
                while len(pending) > ahead:
                    yield from _results(*pending.popleft())
    except BadRecord:
        while pending:  # the examples before the bad one may hold an earlier error
            yield from _results(*pending.popleft())
        raise
    if chunk:
        pending.append((chunk, pool.submit(_encode_chunk, chunk, train_on)))
    while pending:
        yield from _results(*pending.popleft())


def _encoded(example: Example, tokenizer: Any, template: ChatTemplate | None,
             train_on: str) -> Encoded:
    ids, trains = encode_example(example, tokenizer, template, train_on)
    return example, array("I", ids).tobytes(), bytes(trains), sum(trains)


def _results(chunk: list[Example], future: Future) -> Iterator[Encoded]:
    done = future.result()
    for example, (ids, trains, trained) in zip(chunk, done[0], strict=False):
        yield example, ids, trains, trained
    if done[1] is not None:  # the chunk stopped at a bad example: raise it here, in order
        kind, where, message = done[1]
        raise BadRecord(where, message) if kind == "bad" else ConfigError(where, message)


_WORKER: dict[str, Any] = {}


def _init(tokenizer: Any, template: ChatTemplate | None) -> None:
    _WORKER.update(tokenizer=tokenizer, template=template)


def _encode_chunk(chunk: list[Example], train_on: str) \
        -> tuple[list[tuple[bytes, bytes, int]], tuple[str, str, str] | None]:
    """Encoded examples of the chunk up to the first error, and that error (as plain values:
    exceptions with their own constructors do not cross processes)."""
    out = []
    for example in chunk:
        try:
            out.append(_encoded(example, _WORKER["tokenizer"], _WORKER["template"],
                                train_on)[1:])
        except BadRecord as exc:
            return out, ("bad", exc.where, exc.message)
        except ConfigError as exc:
            return out, ("config", exc.field or "data", exc.message)
    return out, None
