"""The gauge fields of step events (kdengine.gauges): what a CPU run carries, the MFU estimate's
FLOPs from the models' shapes, and the engine's step-line text of GPU fields."""

from __future__ import annotations

import torch

from kdengine.gauges import Gauges, describe_gauges, flops_per_token, peak_flops
from kdengine.models import Decoder, DecoderConfig
from kdengine.providers import ModelTeacher

GIB = 1 << 30


def tiny(layers: int, hidden: int) -> Decoder:
    return Decoder(DecoderConfig(vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden,
                                 num_hidden_layers=layers, num_attention_heads=2,
                                 num_key_value_heads=2, max_position_embeddings=64,
                                 tie_word_embeddings=True))


def test_a_cpu_run_carries_host_memory_and_nothing_it_cannot_measure():
    student, teacher = tiny(1, 16), ModelTeacher(tiny(2, 32))
    gauges = Gauges.for_run(torch.device("cpu"), torch.float32, student, teacher, seq_len=32)
    read = gauges.read(tokens_per_s=1000.0)
    assert set(read) == {"host_rss"} and read["host_rss"] > 10 << 20
    assert describe_gauges(read).startswith(" host=")


def test_flops_per_token_count_the_students_training_and_the_teachers_forward():
    student, teacher = tiny(1, 16), tiny(2, 32)
    n_s = sum(p.numel() for p in student.parameters())
    n_t = sum(p.numel() for p in teacher.parameters())
    expected = 6 * n_s + 12 * 1 * 16 * 32 + 2 * n_t + 4 * 2 * 32 * 32
    assert flops_per_token(student, ModelTeacher(teacher), 32) == expected
    # a teacher cache holds no model: the student's training alone
    assert flops_per_token(student, object(), 32) == 6 * n_s + 12 * 16 * 32


def test_peak_flops_know_the_bf16_gpus_and_no_fp32_guess():
    assert peak_flops("NVIDIA H200", torch.bfloat16) == 989e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", torch.float16) == 312e12
    assert peak_flops("NVIDIA H200", torch.float32) is None
    assert peak_flops("Some Future GPU", torch.bfloat16) is None


def test_step_line_of_gpu_gauges():
    line = describe_gauges({"gpu_mem_allocated": int(12.3 * GIB), "gpu_mem_peak": int(13.2 * GIB),
                            "gpu_mem_total": int(139.8 * GIB), "gpu_util": 97,
                            "gpu_power_w": 612.4, "mfu": 0.412, "host_rss": int(6.3 * GIB)})
    assert line == " gpu_mem=12.3/140G peak=13.2G util=97% 612W mfu=41.2% host=6.3G"


def test_nvml_is_read_by_a_thread_of_its_own_never_at_a_step_event():
    """A step event takes the sampler's latest reading: reading it calls no NVML (each NVML
    read takes milliseconds in a VM, and under torchrun rank 0's delay is every rank's)."""
    import threading
    import time

    from kdengine.gauges import NvmlSampler

    calls = []
    lock = threading.Lock()

    def read():
        with lock:
            calls.append(threading.current_thread().name)
            return {"gpu_util": len(calls), "gpu_power_w": 100.0}

    sampler = NvmlSampler(read, period=0.01)
    try:
        assert sampler.sample == {"gpu_util": 1, "gpu_power_w": 100.0}  # the first, at once
        deadline = time.monotonic() + 30
        while sampler.sample["gpu_util"] < 3:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with lock:
            before = len(calls)
            taken = [sampler.sample for _ in range(1000)]  # what step events do
            assert len(calls) == before
        assert all(t["gpu_util"] >= 3 for t in taken)
        assert set(calls[1:]) == {"kdengine-nvml"}
    finally:
        sampler.close()


def test_a_gpu_without_nvml_has_no_sampler_thread_and_no_fields():
    import threading

    from kdengine.gauges import NvmlSampler

    def read():
        raise ModuleNotFoundError("nvidia-ml-py does not seem to be installed")

    before = threading.active_count()
    sampler = NvmlSampler(read, period=0.01)
    assert sampler.sample is None and threading.active_count() == before
