"""Where the models live under torchrun: the student replicated (DDP) or sharded (FSDP2,
consecutive layers grouped by size) and the teacher replicated or sharded, each by its size; the
AdamW update and gradient norm on FSDP2's local shards. kdengine.distributed.Dist calls these."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

# A teacher replicated on every GPU needs no all-gathers (fastest); one that would take more than
# this share of a GPU's memory is sharded like the student.
REPLICATE_TEACHER_UP_TO = 0.25
# A student whose training state (fp32 weights and gradients, two AdamW moments: 16 bytes a
# parameter) takes at most this share of a GPU is replicated on every rank (DDP: one bucketed
# all-reduce of its gradients, plain tensors, little host work a step); a larger one is sharded
# with FSDP2, whose per-group and per-parameter host work bounded a 0.5B student's 120 ms step
# on 2 x H200 (issue 8: 0.77-0.94 of linear scaling, by the host's speed).
REPLICATE_STUDENT_UP_TO = 0.1
REPLICATE_BUCKET_MB = 100  # DDP's gradient buckets (torch's default 25: 4x the all-reduces)
KEEP_GATHERED_UP_TO = 0.1
# Consecutive decoder layers are grouped until a group holds this many bytes of parameters:
# each FSDP2 group costs a collective each way, whose NCCL kernels wait on the other ranks while
# holding SMs, and a set of host-side hooks. Measured on 2 x H200 (issue 8): a Qwen2.5-0.5B
# student (24 layers of ~60 MB) scaled 0.68 with a group per layer and 0.94 with 4 layers a
# group; a Llama-3.2-1B student (~240 MB a layer) 0.94 with one.
GROUP_BYTES_AT_LEAST = 200 * 2**20
# How the student's parameters travel in the all-gathers (Dist.param_gather):
#   "fp32"        fp32, as stored; autocast casts each matmul's weight, as with one process
#   "compute"     the decoder layers in the compute dtype (what autocast would cast them to),
#                 inputs not cast: residual stream, embeddings and final norm stay fp32; the
#                 only difference to one process is the layers' norm gains, rounded to bf16
#   "compute-all" MixedPrecisionPolicy(param_dtype) on every group, inputs cast: the residual
#                 stream in bf16 too; faster in eager mode, but not the one-process function
PARAM_GATHERS = ("fp32", "compute", "compute-all")


def student_placement_by_size(params: int, device_bytes: float) -> str:
    """replicated while the student's training state (16 bytes a parameter: fp32 weights and
    gradients, two AdamW moments) takes at most REPLICATE_STUDENT_UP_TO of a device, else
    sharded."""
    return "replicated" if 16 * params <= REPLICATE_STUDENT_UP_TO * device_bytes else "sharded"


def replicate_student(module: nn.Module) -> None:
    """DDP in place (its hooks on `module`'s forward): gradients averaged over ranks by bucketed
    all-reduces during the backward, as FSDP2's reduce-scatter averages them."""
    from torch.distributed._composable import replicate

    device = next(module.parameters()).device
    # per-block graphs stay whole: dynamo would otherwise split each at DDP's bucket edges
    # (its gradients come out at the block's end either way, where their all-reduce starts)
    torch._dynamo.config.optimize_ddp = False
    # broadcast_buffers=False on purpose: no buffer synced, at init or a forward (torch 2.13's
    # forward_sync_buffers=False still syncs them at init). DDP is made at the first forward,
    # whose FutureWarning saying so would be two lines of every rank's log
    warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated",
                            category=FutureWarning)
    replicate(module, device_id=device,  # (a CPU device: DDP's device_ids=None)
              bucket_cap_mb=REPLICATE_BUCKET_MB, broadcast_buffers=False,
              gradient_as_bucket_view=True)


def fully_shard_decoder(module: nn.Module, reshard_layers: bool = True,
                        layer_policy: Any = None, root_policy: Any = None,
                        layers_per_group: int | None = None) -> None:
    from torch.distributed.fsdp import fully_shard

    layers = list(module.model.layers)
    per_group = layers_per_group or layers_per_group_of(layers)
    for i in range(0, len(layers), per_group):
        group = layers[i:i + per_group]
        kwargs = {"mp_policy": layer_policy} if layer_policy is not None else {}
        fully_shard(group if len(group) > 1 else group[0], reshard_after_forward=reshard_layers,
                    **kwargs)
    kwargs = {"mp_policy": root_policy} if root_policy is not None else {}
    fully_shard(module, reshard_after_forward=False, **kwargs)


def layers_per_group_of(layers: list[nn.Module]) -> int:
    """Consecutive layers a group takes to hold GROUP_BYTES_AT_LEAST (the layers are alike)."""
    if not layers:
        return 1
    size = max(param_bytes(layers[0]), 1)
    return max(1, min(len(layers), -(-GROUP_BYTES_AT_LEAST // size)))


def gather_policies(mode: str, dtype: torch.dtype | None) -> dict[str, Any]:
    """FSDP2 MixedPrecisionPolicy of the layers and the root for a Dist.param_gather mode.
    Gradients are always reduced in fp32; fp32 runs gather fp32 whatever the mode."""
    if mode == "fp32" or dtype not in (torch.bfloat16, torch.float16):
        return {}
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if mode == "compute":
        # inputs not cast: the fp32 residual stream of autocast over fp32 weights is kept
        return {"layer_policy": MixedPrecisionPolicy(param_dtype=dtype,
                                                     reduce_dtype=torch.float32,
                                                     cast_forward_inputs=False)}
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    return {"layer_policy": policy, "root_policy": policy}


def prefetch_during(teacher: nn.Module, student: nn.Module) -> None:
    """Start the all-gathers of every student group (root first, then the layers in forward
    order) when the teacher's forward starts, so they travel while the teacher computes. The
    student's own forward then only waits for them. Training steps only (the student is in
    train mode), and from the second step on: the first forward sets FSDP2's state up."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    groups, seen = [], set()
    for m in student.modules():  # one module per group (a group may hold several layers)
        if isinstance(m, FSDPModule) and id(fully_shard.state(m)) not in seen:
            seen.add(id(fully_shard.state(m)))
            groups.append(m)
    started = {"ready": False}

    def ready(module: nn.Module, args: Any, output: Any) -> None:
        started["ready"] = True

    def start(module: nn.Module, args: Any) -> None:
        if started["ready"] and student.training:
            # the teacher runs under inference_mode: buffers made for the student must be
            # normal tensors (autograd uses them in the student's forward)
            with torch.inference_mode(False), torch.no_grad():
                for group in groups:
                    group.unshard(async_op=True)  # the group's forward waits for it

    # eager even when the teacher's whole forward is compiled (the hook is then inside
    # nn.Module.compile's frame): FSDP2's unshard is not something to trace
    student.register_forward_hook(torch._dynamo.disable(ready))
    teacher.register_forward_pre_hook(torch._dynamo.disable(start))


def local_shard(t: torch.Tensor) -> torch.Tensor:
    """The rank's own shard of a DTensor (a view: updating it updates the DTensor), or `t`."""
    return getattr(t, "_local_tensor", t)


class ShardAdamW(torch.optim.AdamW):
    """torch's AdamW whose update runs on each rank's local shards.

    The state (exp_avg, exp_avg_sq as DTensors, step) and state_dict are torch's own, so DCP
    checkpoints and one-process resumes see a plain AdamW; the update is the same fused (CUDA)
    or for-each kernel, handed the local tensors: AdamW is elementwise, so no communication is
    needed, and the DTensor dispatch over hundreds of tensors (several ms a step) is skipped.
    """

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        from torch.optim.adamw import adamw

        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params: list[torch.Tensor] = []
            grads: list[torch.Tensor] = []
            exp_avgs: list[torch.Tensor] = []
            exp_avg_sqs: list[torch.Tensor] = []
            max_exp_avg_sqs: list[torch.Tensor] = []
            steps: list[torch.Tensor] = []
            # torch's own lazy state initialisation (DTensor state, step on the right device)
            has_complex = self._init_group(group, params, grads, exp_avgs, exp_avg_sqs,
                                           max_exp_avg_sqs, steps)
            beta1, beta2 = group["betas"]
            adamw([local_shard(t) for t in params], [local_shard(t) for t in grads],
                  [local_shard(t) for t in exp_avgs], [local_shard(t) for t in exp_avg_sqs],
                  [local_shard(t) for t in max_exp_avg_sqs], steps,
                  foreach=group["foreach"], capturable=group["capturable"],
                  differentiable=group["differentiable"], fused=group["fused"],
                  grad_scale=getattr(self, "grad_scale", None),
                  found_inf=getattr(self, "found_inf", None), has_complex=has_complex,
                  amsgrad=group["amsgrad"], beta1=beta1, beta2=beta2, lr=group["lr"],
                  weight_decay=group["weight_decay"], eps=group["eps"],
                  maximize=group["maximize"])
        return loss


def sharded_grad_norm(grads: list[torch.Tensor],
                      sum_over_ranks: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """L2 norm over every rank's shards: the local shards' squared norms summed across ranks
    (FSDP2 shards are disjoint, so nothing is counted twice)."""
    local = [local_shard(g) for g in grads]
    if local:
        square = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(local, 2.0)),
                                          2.0).square()
    else:
        square = torch.zeros(())
    return sum_over_ranks(square.to(torch.float32).reshape(1))[0].sqrt()


def param_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def device_memory(module: nn.Module) -> float:
    device = next(module.parameters()).device
    if device.type == "cuda":
        return float(torch.cuda.get_device_properties(device).total_memory)
    return float("inf")  # the CPU (gloo tests): keep gathered
