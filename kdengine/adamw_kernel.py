"""AdamW's update as one hand-written Triton pass per parameter, for the trainer's fused step
(kdengine.compiled.fused_clipped_step) on CUDA.

What torch's fused AdamW computes, in its order and in fp32, on the optimizer's own state
(exp_avg, exp_avg_sq, step: checkpoints and resumes are unchanged):

    g = grad / grad_scale                      (the clip factor, max(1, norm / max_norm))
    p = p - lr * weight_decay * p
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    p = p - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

and nothing at all when `found_inf` is set (a non-finite loss or gradient norm); the step
counters then stay where they were. Why a kernel of its own: the update is a pure stream over
28 bytes a parameter (read p, g, m, v; write p, m, v), 34.6 GB a step for a 1.2B student, and
torch's multi-tensor kernel moved it at ~2.6 TB/s of the H200's ~4.8 (docs/performance.md,
round 4). One program per block of a tensor reads each operand once, coalesced.

Only imported on CUDA with Triton present (KDENGINE_ADAMW_KERNEL=0 keeps torch's kernel);
benchmarks/adamw_kernel.py checks it against torch's fused AdamW on the GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 2048


@triton.jit
def _adamw_block(p_ptr, g_ptr, m_ptr, v_ptr, beta1_t_ptr, beta2_t_ptr, grad_scale_ptr,
                 found_inf_ptr, n, lr, beta1, beta2, eps, weight_decay,
                 HAS_SCALE: tl.constexpr, BLOCK: tl.constexpr):
    if tl.load(found_inf_ptr) != 0.0:  # the whole update skipped, as torch's kernel does
        return
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(g_ptr + offs, mask=mask, other=0.0)
    if HAS_SCALE:
        g = tl.div_rn(g, tl.load(grad_scale_ptr))
    p = tl.load(p_ptr + offs, mask=mask, other=0.0)
    m = tl.load(m_ptr + offs, mask=mask, other=0.0)
    v = tl.load(v_ptr + offs, mask=mask, other=0.0)
    bias_correction1 = 1.0 - tl.load(beta1_t_ptr)  # beta^t of this update's step t
    bias_correction2_sqrt = tl.sqrt_rn(1.0 - tl.load(beta2_t_ptr))
    p = p - lr * weight_decay * p
    m = beta1 * m + (1.0 - beta1) * g
    v = beta2 * v + (1.0 - beta2) * g * g
    step_size = tl.div_rn(lr, bias_correction1)
    denom = tl.div_rn(tl.sqrt_rn(v), bias_correction2_sqrt) + eps
    p = p - tl.div_rn(step_size * m, denom)
    tl.store(p_ptr + offs, p, mask=mask)
    tl.store(m_ptr + offs, m, mask=mask)
    tl.store(v_ptr + offs, v, mask=mask)


def supports(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> bool:
    """Plain fp32 CUDA tensors under a plain AdamW (no amsgrad, maximize or per-group extras)."""
    if not isinstance(optimizer, torch.optim.AdamW):
        return False
    for group in optimizer.param_groups:
        if group["amsgrad"] or group["maximize"] or group["differentiable"]:
            return False
    return all(type(p.data) is torch.Tensor and p.is_cuda and p.dtype == torch.float32
               and p.is_contiguous() for p in params)


@torch.no_grad()
def adamw_step(optimizer: torch.optim.AdamW, grad_scale: torch.Tensor | None,
               found_inf: torch.Tensor) -> None:
    """optimizer.step() with `grad_scale` dividing every gradient and `found_inf` (1.0: skip)
    read on the device; the state is created as torch's fused AdamW creates it."""
    found = found_inf
    for group in optimizer.param_groups:
        lr, (beta1, beta2) = float(group["lr"]), group["betas"]
        eps, weight_decay = group["eps"], group["weight_decay"]
        params = [p for p in group["params"] if p.grad is not None]
        for p in params:
            state = optimizer.state[p]
            if not state:  # torch's layout: a float32 step on the parameter's device (fused)
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if not params:
            continue
        steps = [optimizer.state[p]["step"] for p in params]
        # beta^t for this update's t, each parameter's own counter (as torch's foreach AdamW)
        upcoming = torch._foreach_add(steps, 1.0)
        beta1_t, beta2_t = torch._foreach_pow(beta1, upcoming), torch._foreach_pow(beta2, upcoming)
        for p, b1, b2 in zip(params, beta1_t, beta2_t, strict=True):
            state = optimizer.state[p]
            grad = p.grad if p.grad.is_contiguous() else p.grad.contiguous()
            n = p.numel()
            _adamw_block[(triton.cdiv(n, BLOCK),)](
                p, grad, state["exp_avg"], state["exp_avg_sq"], b1, b2,
                grad_scale if grad_scale is not None else found, found, n,
                lr, beta1, beta2, eps, weight_decay,
                HAS_SCALE=grad_scale is not None, BLOCK=BLOCK, num_warps=8)
        torch._foreach_add_(steps, 1.0 - found)  # one up, unless the update was skipped
