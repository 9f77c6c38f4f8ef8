"""Audit 12: a model whose model.safetensors.index.json names a shard that is not there (a copy
or a download cut short) was refused with 'shards named in model.safetensors.index.json are
missing: ...', naming no fix. The refusal now says how to finish it: copy the shards in from
where the model came from, or download it again (the command, into that folder).
`kdengine cache-teacher` did not look at the teacher's weight files at all: its --check passed
and the job made --out, then failed loading the teacher; it now checks them as `kdengine train`'s
preflight does (kdengine.preflight), before --out exists."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import tiny_run_args, write_tiny_inputs  # noqa: E402


def test_a_missing_shard_is_refused_with_how_to_get_it_back(tmp_path: Path, engine_in_process,
                                                             one_line_refusal) -> None:
    from safetensors.torch import load_file, save_file

    inputs = write_tiny_inputs(tmp_path / "in")
    teacher = Path(inputs["teacher"])
    weights = load_file(str(teacher / "model.safetensors"))
    (teacher / "model.safetensors").unlink()
    names = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": names[::2],
              "model-00002-of-00002.safetensors": names[1::2]}
    for shard, held in shards.items():
        save_file({n: weights[n] for n in held}, str(teacher / shard))
    (teacher / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {n: s for s, held in shards.items() for n in held}}))
    run_dir = tmp_path / "run"
    args = tiny_run_args(inputs, run_dir, steps=2)
    assert engine_in_process(*args, "--check").returncode == 0  # whole: taken
    (teacher / "model-00002-of-00002.safetensors").unlink()
    line = one_line_refusal(engine_in_process(*args, "--check"), "train", "")
    assert line == (f"kdengine train: error: --teacher: {teacher}: shards named in "
                    "model.safetensors.index.json are missing: model-00002-of-00002.safetensors:"
                    f" copy them into {teacher} from where the model came from, or download the"
                    f" model again (`hf download ORG/NAME --local-dir {teacher}`)"), line
    assert not run_dir.exists()
    out = tmp_path / "cache"
    for check in (("--check",), ()):
        line = one_line_refusal(engine_in_process(
            "cache-teacher", "--teacher", str(teacher), "--data", inputs["data"], "--seq-len",
            "32", "--device", "cpu", "--top-k", "4", "--out", str(out), *check),
            "cache-teacher", "")
        assert line.startswith(f"kdengine cache-teacher: error: --teacher: {teacher}: shards "
                               "named in model.safetensors.index.json are missing: "), line
        assert not out.exists()
