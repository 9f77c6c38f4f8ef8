"""Model directories a user could plausibly give that the preflight let through, to fail the run
in load_student/load_teacher (exit 1, a traceback in launch.log, a run directory left) or to
train on nonsense: a weight missing, extra or of another shape than config.json says (all read
from the safetensors headers, no weights loaded), integer (quantized) weights, a
quantization_config, a rope scaling without its factor, config values of the wrong type, a
config.json or index that is JSON but not an object. Each is now `--check`'s one line naming the
model, exit 2, and no run directory."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from kdengine.cli import main


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import write_tiny_inputs

    return write_tiny_inputs(tmp_path_factory.mktemp("audit7"))


def _weights(edit: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path], None]:
    def change(directory: Path) -> None:
        weights = load_file(str(directory / "model.safetensors"))
        edit(weights)
        save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return change


def _config(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def change(directory: Path) -> None:
        config = json.loads((directory / "config.json").read_text())
        edit(config)
        (directory / "config.json").write_text(json.dumps(config))
    return change


def _sharded_with_index(text: str) -> Callable[[Path], None]:
    def change(directory: Path) -> None:
        (directory / "model.safetensors").rename(directory / "model-00001-of-00001.safetensors")
        (directory / "model.safetensors.index.json").write_text(text)
    return change


def _as_int(weights: dict[str, torch.Tensor]) -> None:
    for name in weights:
        weights[name] = (weights[name] * 100).to(torch.int32)


CASES = {
    "missing_weight": (_weights(lambda w: w.pop("model.norm.weight")),
                       "model.norm.weight is missing"),
    "extra_weight": (_weights(lambda w: w.update({"model.layers.0.extra.weight":
                                                  torch.zeros(3)})),
                     "model.layers.0.extra.weight"),
    "shape_mismatch": (_weights(lambda w: w.update({"model.norm.weight": torch.ones(17)})),
                       "model.norm.weight has shape (17,)"),
    "more_layers_in_config": (_config(lambda c: c.update(num_hidden_layers=2)),
                              "model.layers.1."),
    "untied_config_tied_weights": (_config(lambda c: c.update(tie_word_embeddings=False)),
                                   "lm_head.weight is missing"),
    "integer_weights": (_weights(_as_int), "int32"),
    "quantization_config": (_config(lambda c: c.update(quantization_config={
        "quant_method": "fp8"})), "quantization_config"),
    "llama3_rope_without_factor": (_config(lambda c: c.update(rope_scaling={
        "rope_type": "llama3"})), "factor"),
    "linear_rope_factor_a_string": (_config(lambda c: c.update(rope_scaling={
        "rope_type": "linear", "factor": "2"})), "factor"),
    "rope_scaling_a_string": (_config(lambda c: c.update(rope_scaling="linear")),
                              "rope_scaling"),
    "rope_theta_a_string": (_config(lambda c: c.update(rope_theta="abc",
                                                        rope_parameters=None)), "rope_theta"),
    "rms_norm_eps_a_string": (_config(lambda c: c.update(rms_norm_eps="1e-6")),
                              "rms_norm_eps"),
    "hidden_size_zero": (_config(lambda c: c.update(hidden_size=0)), "hidden_size"),
    "vocab_size_a_bool": (_config(lambda c: c.update(vocab_size=True)), "vocab_size"),
    "num_key_value_heads_zero": (_config(lambda c: c.update(num_key_value_heads=0)),
                                 "num_key_value_heads"),
    "config_a_list": (lambda d: (d / "config.json").write_text("[1, 2]"),
                      "config.json is not a JSON object"),
    "index_a_list": (_sharded_with_index("[]"), "model.safetensors.index.json"),
    "index_weight_map_a_list": (_sharded_with_index('{"weight_map": []}'),
                                "model.safetensors.index.json"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_broken_student_directory_is_refused_by_check_in_one_line(
        made: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        case: str) -> None:
    change, named = CASES[case]
    student = tmp_path / "student"
    shutil.copytree(made["student"], student)
    change(student)
    run_dir = tmp_path / "run"
    code = main(["train", "--teacher", made["teacher"], "--student", str(student), "--data",
                 made["data"], "--run-dir", str(run_dir), "--batch-size", "4", "--seq-len",
                 "32", "--check"])
    out = capsys.readouterr()
    err = out.err.strip().splitlines()
    assert code == 2, out.err
    assert out.out == "" and len(err) == 1 and "Traceback" not in out.err, out.err
    assert err[0].startswith("kdengine train: error: --student: "), err[0]
    assert named in err[0], err[0]
    assert not run_dir.exists()


def test_a_missing_teacher_weight_is_refused_before_any_run_directory(
        made: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Not only by --check: the real run refuses it before it makes the run directory (it used
    to load the student first, then fail load_teacher with exit 1 and leave the directory)."""
    teacher = tmp_path / "teacher"
    shutil.copytree(made["teacher"], teacher)
    _weights(lambda w: w.pop("model.layers.1.mlp.down_proj.weight"))(teacher)
    run_dir = tmp_path / "run"
    code = main(["train", "--teacher", str(teacher), "--student", made["student"], "--data",
                 made["data"], "--run-dir", str(run_dir), "--batch-size", "4", "--seq-len",
                 "32", "--steps", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("kdengine train: error: --teacher: ") and \
        "model.layers.1.mlp.down_proj.weight is missing" in err[0], err[0]
    assert not run_dir.exists()


@pytest.mark.parametrize("stored", [torch.bfloat16, torch.float16, torch.float64])
def test_floating_weights_of_any_width_still_pass_the_check(
        made: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        stored: torch.dtype) -> None:
    student = tmp_path / "student"
    shutil.copytree(made["student"], student)

    def cast(weights: dict[str, torch.Tensor]) -> None:
        for name in weights:
            weights[name] = weights[name].to(stored)
    _weights(cast)(student)
    code = main(["train", "--teacher", made["teacher"], "--student", str(student), "--data",
                 made["data"], "--run-dir", str(tmp_path / "run"), "--batch-size", "4",
                 "--seq-len", "32", "--check"])
    assert code == 0, capsys.readouterr().err
