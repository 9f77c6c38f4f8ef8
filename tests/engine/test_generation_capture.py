"""The decode step's CUDA graph is captured while another thread of the process uses the GPU,
as the trainer's checkpoint writer does (copies to pinned host memory, then waits on them):
the capture and the other thread's copies both succeed. In torch's default capture mode a CUDA
call of any thread during the capture fails; an on-policy run on an H200 died so when its first
sample event of a new shape came during a checkpoint's copy (benchmarks/gpu_features.py).
Needs a GPU: skipped on the CPU (CI); run on the device with `pytest tests/engine/
test_generation_capture.py`."""

from __future__ import annotations

import threading
import warnings

import pytest
import torch

from kdengine.generation import SamplingConfig, generate
from kdengine.models import Decoder, DecoderConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_a_decode_graph_is_captured_while_another_thread_copies_to_the_host() -> None:
    device = torch.device("cuda")
    config = DecoderConfig(vocab_size=257, hidden_size=128, intermediate_size=384,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           attention_bias=True, model_type="qwen2", tie_word_embeddings=True)
    model = Decoder(config)
    model.init_weights(torch.Generator().manual_seed(0))
    model = model.to(device)
    state = [torch.randn(4 << 20, device=device) for _ in range(4)]  # a checkpoint's tensors
    pinned = torch.empty(4 << 20, pin_memory=True)
    stop, errors = threading.Event(), []

    def copy_out() -> None:  # the writer thread: copy, wait, again
        stream = torch.cuda.Stream(device)
        try:
            while not stop.is_set():
                for tensor in state:
                    with torch.cuda.stream(stream):
                        pinned.copy_(tensor, non_blocking=True)
                    stream.synchronize()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    writer = threading.Thread(target=copy_out)
    writer.start()
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            for batch in (3, 5, 2):  # each a new cache shape: a capture each
                prompts = [torch.arange(1, 9, device=device) for _ in range(batch)]
                out = generate(model, prompts,
                               SamplingConfig(max_new_tokens=8, temperature=0.0),
                               dtype=torch.bfloat16)
                assert len(out.tokens) == batch
    finally:
        stop.set()
        writer.join()
    assert errors == []
    assert not [w for w in seen if "falling back" in str(w.message)]
    from kdengine.generation import engine_for

    assert engine_for(model, torch.bfloat16).step_kind.startswith("cuda graph")
