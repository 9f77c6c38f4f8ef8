"""The FP8 teacher's one-pass norm kernel alone on the GPU: its kernel time (the profiler's, not
the host's launch) for a few rows a program against one, with and without the residual add,
on Qwen2.5-1.5B's and Qwen3-4B's rows (8192 x 1536, 8192 x 2560).

    python3 benchmarks/norm_kernel.py
"""

from __future__ import annotations

import json
from functools import partial

import torch
from torch.profiler import ProfilerActivity, profile

from kdengine.models import fp8_kernels as K


def kernel_ms(fn, repeat: int = 50, name: str = "") -> float:
    """GPU time of one call of fn, in ms: the profiler's, of the kernels whose name holds `name`
    (every kernel when empty), not the host's launch."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeat):
            fn()
        torch.cuda.synchronize()
    total = sum(e.self_device_time_total for e in prof.key_averages()
                if name in e.key and e.self_device_time_total > 0)
    return total / 1e3 / repeat


def main() -> None:
    gen = torch.Generator(device="cuda").manual_seed(0)
    for cols in (1536, 2560):
        x = torch.randn(8192, cols, device="cuda", generator=gen, dtype=torch.bfloat16)
        add = torch.randn_like(x)
        w = torch.rand(cols, device="cuda", generator=gen).to(torch.bfloat16) + 0.5
        values = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device="cuda")
        scale = torch.empty((8192, 1), dtype=torch.float32, device="cuda")
        total = torch.empty_like(x)
        row = {"cols": cols}
        norm = partial(K.launch_rms_norm_quantize_rows, x, w, 1e-6, values, scale)
        add_norm = partial(norm, add=add, total=total)
        for elements in (1, 4096, 8192, 16384):  # 1: one row a program
            K.NORM_ELEMENTS = elements
            row[f"norm_{elements}"] = kernel_ms(norm, name="rms_norm_quantize")
            row[f"add_norm_{elements}"] = kernel_ms(add_norm, name="rms_norm_quantize")
        moved = x.numel() * 3 + 8192 * 4
        row["tb_s_best_norm"] = moved / min(v for k, v in row.items()
                                            if k.startswith("norm_")) / 1e9
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
