"""A model whose safetensors file was cut short (an interrupted copy or download) is refused by
the preflight (`--check` and before any run directory), one line naming the file, from its
header and size alone: it failed the run only in load_teacher, after the other model loaded."""

from __future__ import annotations

import os
from pathlib import Path


def test_a_cut_short_teacher_weights_file_is_refused_by_check(
        tiny_run_inputs, tiny_args, tmp_path: Path, one_line_refusal, engine_in_process) -> None:
    weights = Path(tiny_run_inputs["teacher"]) / "model.safetensors"
    size = weights.stat().st_size
    os.truncate(weights, size * 6 // 10)
    run_dir = tmp_path / "run"
    # (the CLI in this process: a new interpreter's torch import checks nothing more)
    done = engine_in_process(*tiny_args(tiny_run_inputs, run_dir), "--check")
    line = one_line_refusal(done, "train", "--teacher: ")
    assert line.endswith(f"{weights} is cut short ({size * 6 // 10} bytes of {size}): copy or "
                         "download it again")
    assert not run_dir.exists()
