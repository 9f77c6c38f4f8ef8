"""Data-parallel runs under `torchrun`: one global batch split over ranks by rows, the student
replicated (DDP) or sharded with FSDP2 (`fully_shard`) by size, the teacher replicated or
sharded by size, checkpoints through torch.distributed.checkpoint (DCP), and only rank 0
writing events.

  ranks.py      Dist (the trainer's hooks: rows, the global loss, collectives, checkpoints) and
                from_env(), which reads torchrun's variables (one process: every hook a no-op)
  placement.py  where the models live: DDP or FSDP2 by size, layer groups, the local AdamW
  logs.py       rank 0's events and the other ranks' failures; a stop every rank agrees on
  launch.py     torchrun (`python -m kdengine.distributed.launch`), but a cancelled run exits
                130/143 without torchrun's traceback, as one process does

Numerics: the KD loss is the mean over the valid tokens of the WHOLE global batch. Each rank
divides its token sums by (global valid tokens / world size); DDP's all-reduce and FSDP2's
reduce-scatter average over ranks, so every rank's gradient is exactly the one-process gradient
(the factors are powers of two for world sizes 2, 4, 8). The loss each rank reports is the
global one. docs/distributed.md describes the whole design.
"""

from kdengine.distributed.logs import RANK_NOTES, AgreedStop, RankLog, RelayLog
from kdengine.distributed.placement import (
    GROUP_BYTES_AT_LEAST,
    PARAM_GATHERS,
    REPLICATE_STUDENT_UP_TO,
    ShardAdamW,
    layers_per_group_of,
    sharded_grad_norm,
    student_placement_by_size,
)
from kdengine.distributed.ranks import (
    SHARDED_MARK,
    Dist,
    from_env,
    is_sharded_checkpoint,
    torchrun_world_size,
)

__all__ = ["GROUP_BYTES_AT_LEAST", "PARAM_GATHERS", "RANK_NOTES", "REPLICATE_STUDENT_UP_TO",
           "SHARDED_MARK", "AgreedStop", "Dist", "RankLog", "RelayLog", "ShardAdamW",
           "from_env", "is_sharded_checkpoint", "layers_per_group_of", "sharded_grad_norm",
           "student_placement_by_size", "torchrun_world_size"]
