"""Batched generation with the native decoder: prefill the left-padded prompts into a static KV
cache, then one token per step until every row has stopped or max_new_tokens.

On CUDA the decode step (one token for the whole batch -> logits) is compiled and captured as a
CUDA graph once per cache shape; each step is then one graph replay plus a few eager kernels that
choose the token. Should compiling or capturing fail, or the result differ from the eager step's,
the step falls back to a slower way (with a warning). The CPU runs eager. `GenerationEngine`
keeps the weights, cache and graph between calls; `generate` keeps one engine per model and
compute dtype, so a training loop calling it each step pays the compile and capture once.
"""

from __future__ import annotations

import math
import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch

from kdengine.generation.cache import SLOT_MULTIPLE, KVCache
from kdengine.generation.sampling import SamplingConfig, next_tokens
from kdengine.generation.stopping import RowStops
from kdengine.generation.weights import compute_twin, refresh_twin, unwrap
from kdengine.models.decoder import Decoder

EOS_CHECK_EVERY = 8  # steps between host checks of "all rows finished" (EOS only: no other sync)


@dataclass
class Generated:
    """tokens [batch, max_new_tokens] int64 on the model's device (pad_id after a row's end);
    lengths [batch] int64: tokens kept per row (EOS included; with a stop string up to and
    including the token that completed it); finished [batch] bool: stopped by EOS or a stop
    string (False: cut at max_new_tokens); seconds: wall time of the call (synchronized);
    new_tokens: sum(lengths)."""

    tokens: torch.Tensor
    lengths: torch.Tensor
    finished: torch.Tensor
    seconds: float
    new_tokens: int


class GenerationEngine:
    """Generation with one model in one compute dtype. Holds the model's weights in that dtype
    (refreshed in place from the model at each call), the static KV cache and the decode step
    (compiled and captured as a CUDA graph on CUDA) for the latest batch and cache length."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype | None = None, *,
                 compile: bool | None = None, cuda_graphs: bool | None = None) -> None:
        decoder = unwrap(model)
        param = next(decoder.parameters())
        self.device, self.dtype = param.device, dtype or param.dtype
        on_cuda = self.device.type == "cuda"
        self.compile = on_cuda if compile is None else compile
        self.cuda_graphs = on_cuda if cuda_graphs is None else cuda_graphs
        self._model = weakref.ref(decoder)  # (an engine never keeps a model alive)
        self.weights = compute_twin(decoder, self.dtype, fuse=on_cuda)
        self.cache: KVCache | None = None
        self._step: Callable[[], torch.Tensor] | None = None
        self.step_kind = ""  # how the decode step runs: "cuda graph (compiled)", "eager", ...

    def _buffers(self, batch: int, slots: int) -> None:
        """The cache and the decode step's static inputs for this shape (reused when equal)."""
        if self.cache is not None and (self.cache.batch, self.cache.slots) == (batch, slots):
            return
        self.cache = self._step = None  # the old graph and cache go before the new ones come
        self.cache = KVCache(self.weights.config, batch, slots, self.device, self.dtype)
        self.token_in = torch.zeros(batch, 1, dtype=torch.int64, device=self.device)
        self.position_in = torch.zeros(batch, 1, dtype=torch.int64, device=self.device)
        self.slot_in = torch.zeros(1, dtype=torch.int64, device=self.device)

    def _decode_step(self) -> torch.Tensor:
        """Float32 logits [batch, vocab] of `token_in` at `position_in`, cache slot `slot_in`."""
        hidden = self.weights.forward_cached(self.token_in, self.position_in, self.cache.layers,
                                             self.slot_in, self.cache.masks(self.slot_in))
        return self.weights.lm_head(hidden[:, -1]).float()

    def _build_step(self) -> Callable[[], torch.Tensor]:
        """The fastest decode step that works here: compiled + CUDA graph, CUDA graph, eager."""
        attempts = []
        if self.cuda_graphs and self.compile:
            attempts.append(("cuda graph (compiled)", lambda: self._captured(
                torch.compile(self._decode_step, dynamic=False))))
        if self.cuda_graphs:
            attempts.append(("cuda graph", lambda: self._captured(self._decode_step)))
        elif self.compile:
            attempts.append(("compiled", lambda: torch.compile(self._decode_step,
                                                               dynamic=False)))
        for kind, build in attempts:
            try:
                step = build()  # (a compiled step compiles at its first call)
                self._check_against_eager(step)
            except Exception as error:  # noqa: BLE001 - any failure falls back to a slower step
                warnings.warn(f"generation: the decode step as {kind} failed, falling back "
                              f"({type(error).__name__}: {str(error)[:300]})", stacklevel=3)
                continue
            self.step_kind = kind
            return step
        self.step_kind = "eager"
        return self._decode_step

    def _check_against_eager(self, step: Callable[[], torch.Tensor]) -> None:
        """Raise unless `step` gives the eager step's logits for the current inputs (both write
        the same keys and values into the same cache slot, so the order does not matter)."""
        fast = step().clone()
        eager = self._decode_step()
        limit = 1e-4 if self.dtype == torch.float32 else 5e-2
        error = ((fast - eager).abs().max() / eager.abs().max().clamp_min(1e-6)).item()
        if not error <= limit:  # (NaN fails too)
            raise RuntimeError(f"its logits differ from the eager step's by {error:.3g} "
                               f"(relative, limit {limit})")

    def _captured(self, step: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        """`step` captured as a CUDA graph: warm-up runs on a side stream (compiles, picks
        kernels), then one capture. Warm-up and capture write the current cache slot, which the
        real step overwrites."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(3):
                step()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # thread_local: only this thread's calls may not break the capture. In torch's default
        # ("global") a CUDA call of any thread during the capture fails, and the trainer's
        # checkpoint writer copies to the host from its own thread: an on-policy run whose
        # first sample of a new shape came while a checkpoint was being copied failed with
        # "operation not permitted when stream is capturing" (benchmarks/gpu_features.py)
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            logits = step()

        def replay() -> torch.Tensor:
            graph.replay()
            return logits

        return replay

    def _prefill(self, prompts: list[torch.Tensor], pad_id: int) -> torch.Tensor:
        """Run the left-padded prompts into the cache; float32 logits [batch, vocab] of each
        row's last prompt token. Leaves the step inputs at the first new token's slot."""
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.int64)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):] = prompt.cpu()
        ids = ids.to(self.device)  # one copy to the device, not one per row
        lengths = torch.tensor([len(p) for p in prompts], device=self.device)
        first_real = width - lengths
        self.cache.first_real.copy_(first_real)
        slots = torch.arange(width, device=self.device)
        positions = (slots.unsqueeze(0) - first_real.unsqueeze(1)).clamp_min(0)
        hidden = self.weights.forward_cached(ids, positions, self.cache.layers, slots,
                                             self.cache.masks(slots))
        self.position_in.copy_(lengths.unsqueeze(1))
        self.slot_in.fill_(width)
        return self.weights.lm_head(hidden[:, -1]).float()

    def generate(self, prompts: list[torch.Tensor], config: SamplingConfig, *,
                 generator: torch.Generator | None = None, pad_id: int = 0,
                 decode: Callable[[list[int]], str] | None = None,
                 min_cache_len: int = 0, check: Callable[[], None] | None = None) -> Generated:
        """Completions of `prompts` (1-D int64 token tensors, any lengths) under `config`.
        `min_cache_len`: allocate at least this many cache slots, so calls whose prompts differ
        in length share one cache shape (one compile and graph, not one per length).
        `check`: called before the prefill and before each new token; what it raises ends the
        call there (a cancel: the trainer's StopSignals.check), nothing returned."""
        model = self._model()
        if model is None:
            raise RuntimeError("the model of this GenerationEngine no longer exists")
        if not prompts or any(p.dim() != 1 or len(p) == 0 for p in prompts):
            raise ValueError("prompts must be a non-empty list of non-empty 1-D token tensors")
        if config.stop_strings and decode is None:
            raise ValueError("stop_strings need `decode` (token ids -> text)")
        if generator is None:
            # a fresh random seed, never the global RNG (training's own draws stay as they are)
            generator = torch.Generator(self.device)
            generator.seed()
        elif generator.device.type != self.device.type:
            raise ValueError(f"generator is on {generator.device} but the model on "
                             f"{self.device}: make it with torch.Generator(device="
                             f"'{self.device}')")
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            refresh_twin(self.weights, model)
            batch, steps = len(prompts), config.max_new_tokens
            width = max(len(p) for p in prompts)
            slots = max(width + steps, min_cache_len)
            self._buffers(batch, math.ceil(slots / SLOT_MULTIPLE) * SLOT_MULTIPLE)
            tokens = torch.full((batch, steps), pad_id, dtype=torch.int64, device=self.device)
            stops = RowStops(tokens, config, pad_id, decode)
            if check is not None:
                check()
            logits = self._prefill(prompts, pad_id)
            for step in range(steps):
                if check is not None:
                    check()
                fed = stops.record(step, next_tokens(logits, config, generator))
                if step == steps - 1:
                    break
                if stops.can_stop and (config.stop_strings or step % EOS_CHECK_EVERY == 0) \
                        and stops.all_finished():
                    break
                self.token_in.copy_(fed.unsqueeze(1))
                if self._step is None:
                    self._step = self._build_step()
                logits = self._step()
                self.position_in += 1
                self.slot_in += 1
            new_tokens = int(stops.lengths.sum())
        sync()
        return Generated(tokens=tokens, lengths=stops.lengths, finished=stops.finished,
                         seconds=time.perf_counter() - start, new_tokens=new_tokens)


_ENGINES: weakref.WeakKeyDictionary[Decoder, dict[torch.dtype, GenerationEngine]] = (
    weakref.WeakKeyDictionary())


def engine_for(model: torch.nn.Module, dtype: torch.dtype | None = None) -> GenerationEngine:
    """The engine `generate` uses for `model` in `dtype`, made at the first call and kept while
    the model lives (its weights in `dtype`, KV cache and CUDA graph stay allocated)."""
    decoder = unwrap(model)
    param = next(decoder.parameters())
    engines = _ENGINES.setdefault(decoder, {})
    engine = engines.get(dtype or param.dtype)
    if engine is None or engine.device != param.device:
        engines.clear()  # one engine per model: the latest dtype and device
        engine = engines[dtype or param.dtype] = GenerationEngine(decoder, dtype)
    return engine


def release_engines(model: torch.nn.Module) -> None:
    """Free what `generate` keeps for `model` (weights copy, KV cache, CUDA graph)."""
    _ENGINES.pop(unwrap(model), None)


def generate(model: Decoder, prompts: list[torch.Tensor], config: SamplingConfig, *,
             generator: torch.Generator | None = None, pad_id: int = 0,
             decode: Callable[[list[int]], str] | None = None,
             dtype: torch.dtype | None = None, min_cache_len: int = 0,
             check: Callable[[], None] | None = None) -> Generated:
    """Sample completions of `prompts` (1-D int64 token tensors of any lengths; left-padded
    together, positions from 0 at each row's first real token) from `model` under `config`.

    `generator` is the only source of randomness (pass one seeded per step for exact resumes;
    it must be on the model's device). `dtype` is the compute dtype (default: the parameters'):
    the weights are kept once in it, refreshed from the model at each call. The model's
    parameters, gradients and train/eval mode are left as they were. `min_cache_len` (see
    GenerationEngine.generate): a training loop passes its row length, so every step's
    prompts, whatever their lengths, reuse one compiled step and CUDA graph. `check`: called
    before each new token; what it raises stops the generation there (a cancel)."""
    return engine_for(model, dtype).generate(prompts, config, generator=generator,
                                             pad_id=pad_id, decode=decode,
                                             min_cache_len=min_cache_len, check=check)
