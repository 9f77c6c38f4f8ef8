"""What the machine is doing while a run trains: the gauge fields of `step` events.

GPU memory (allocated, reserved, peak) from torch.cuda; GPU utilization and power from NVML
(nvidia-ml-py, imported only when a CUDA device exists, through torch.cuda's own wrappers, which
map CUDA_VISIBLE_DEVICES to NVML's indices), sampled once a second by a thread of their own
(NvmlSampler); the process's resident host memory; and an MFU estimate from the models'
shapes. A field the device cannot give is absent, never zero: a CPU run's step events carry host
memory only. docs/events.md lists the fields.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

# Dense bf16/fp16 tensor-core peaks (FLOP/s) by a name fragment of torch.cuda.get_device_name,
# most specific first. A GPU not listed (or an fp32 run) gets no MFU rather than a wrong one.
PEAK_FLOPS_16BIT = (
    ("H200", 989e12), ("H100", 989e12), ("H800", 989e12), ("GH200", 989e12),
    ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L40", 181e12),
    ("L4", 121e12), ("A10G", 70e12), ("A10", 125e12), ("RTX 4090", 165e12),
    ("RTX 3090", 71e12), ("V100", 125e12), ("T4", 65e12),
)


def peak_flops(device_name: str, dtype: torch.dtype) -> float | None:
    if dtype not in (torch.bfloat16, torch.float16):
        return None
    for fragment, flops in PEAK_FLOPS_16BIT:
        if fragment in device_name:
            return flops
    return None


def flops_per_token(student: torch.nn.Module, teacher: Any, seq_len: int) -> float:
    """Training FLOPs per token: forward and backward of the student (6N plus attention, as
    nanoGPT and PaLM's appendix count them) and the teacher's forward (2N plus attention)."""
    def shape(module: Any) -> tuple[int, int, int]:
        params = sum(p.numel() for p in module.parameters()) if module is not None else 0
        cfg = getattr(module, "config", None)
        return (params, getattr(cfg, "num_hidden_layers", 0) or 0,
                getattr(cfg, "hidden_size", 0) or 0)

    n_s, layers_s, hidden_s = shape(student)
    n_t, layers_t, hidden_t = shape(getattr(teacher, "model", None))  # none for a cache
    # attention's forward per token and layer: QK^T and AV, seq_len x hidden multiply-adds each
    attention = 4 * seq_len
    return (6 * n_s + 3 * attention * layers_s * hidden_s
            + 2 * n_t + attention * layers_t * hidden_t)


def host_rss() -> int | None:
    """The engine process's resident memory in bytes (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class NvmlSampler:
    """GPU utilization and power, read by a daemon thread every `period` seconds; `sample` is
    the latest reading (NVML's own utilization window is 1/6 to 1 s long).

    The training loop never waits on NVML: each read through torch.cuda's wrappers
    re-initializes NVML, milliseconds a read in a VM, and under torchrun rank 0's delay at a
    step event is every rank's (the others wait for it at the next collective). `read` returns
    the fields, or raises where NVML is missing: then there is no sample and no thread."""

    def __init__(self, read: Callable[[], dict[str, Any]], period: float = 1.0) -> None:
        self._read, self._period = read, period
        self._stop = threading.Event()
        self.sample: dict[str, Any] | None = None
        self._take()  # the first step event has a reading
        if self.sample is not None:
            threading.Thread(target=self._loop, name="kdengine-nvml", daemon=True).start()

    @classmethod
    def for_device(cls, device: torch.device, period: float = 1.0) -> NvmlSampler:
        def read() -> dict[str, Any]:
            out: dict[str, Any] = {"gpu_util": int(torch.cuda.utilization(device))}
            try:  # a GPU without power readings still has its utilization
                out["gpu_power_w"] = round(torch.cuda.power_draw(device) / 1000, 1)  # mW
            except Exception:  # noqa: BLE001
                pass
            return out

        return cls(read, period)

    def _take(self) -> None:
        try:
            self.sample = self._read()  # one assignment: a reader sees a whole sample
        except Exception:  # noqa: BLE001 - not installed, no NVML: absent, never a failure
            self.sample = None
            self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self._period):
            self._take()

    def close(self) -> None:
        self._stop.set()


@dataclass
class Gauges:
    """Reads the gauges of one engine process, at the steps that emit a step event."""

    device: torch.device
    flops_per_token: float = 0.0
    peak: float | None = None  # FLOP/s of the whole run's devices
    nvml: bool = True  # off after NVML failed once (not installed, no driver access)
    sampler: NvmlSampler | None = None  # started at the first read

    @classmethod
    def for_run(cls, device: torch.device, dtype: torch.dtype, student: torch.nn.Module,
                teacher: Any, seq_len: int, world_size: int = 1) -> Gauges:
        peak = None
        if device.type == "cuda":
            one = peak_flops(torch.cuda.get_device_name(device), dtype)
            peak = one * world_size if one else None
        return cls(device, flops_per_token(student, teacher, seq_len), peak)

    def read(self, tokens_per_s: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        rss = host_rss()
        if rss is not None:
            out["host_rss"] = rss
        if self.device.type == "cuda":
            out.update(self._cuda())
        if self.peak and tokens_per_s:
            out["mfu"] = round(self.flops_per_token * tokens_per_s / self.peak, 4)
        return out

    def _cuda(self) -> dict[str, Any]:
        dev = self.device
        out: dict[str, Any] = {
            "gpu_mem_allocated": torch.cuda.memory_allocated(dev),
            "gpu_mem_reserved": torch.cuda.memory_reserved(dev),
            "gpu_mem_peak": torch.cuda.max_memory_allocated(dev),
            "gpu_mem_total": torch.cuda.get_device_properties(dev).total_memory,
        }
        if self.nvml:
            if self.sampler is None:
                self.sampler = NvmlSampler.for_device(dev)
            sample = self.sampler.sample
            if sample is None:
                self.nvml = False
            else:
                out.update(sample)
        return out

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.close()


def describe_gauges(gauges: dict[str, Any]) -> str:
    """The gauges for the engine's step line: ' gpu_mem=12.3/80G peak=14.0G util=97% 612W
    mfu=41.2% host=3.1G' (what is there)."""
    g = 1 << 30
    parts = []
    if "gpu_mem_allocated" in gauges:
        total = gauges.get("gpu_mem_total")
        parts.append(f"gpu_mem={gauges['gpu_mem_allocated'] / g:.1f}"
                     + (f"/{total / g:.0f}G" if total else "G")
                     + f" peak={gauges['gpu_mem_peak'] / g:.1f}G")
    if "gpu_util" in gauges:
        parts.append(f"util={gauges['gpu_util']}%")
    if "gpu_power_w" in gauges:
        parts.append(f"{gauges['gpu_power_w']:.0f}W")
    if "mfu" in gauges:
        parts.append(f"mfu={gauges['mfu']:.1%}")
    if "host_rss" in gauges:
        parts.append(f"host={gauges['host_rss'] / g:.1f}G")
    return (" " + " ".join(parts)) if parts else ""
