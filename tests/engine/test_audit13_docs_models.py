"""Audit 13: docs/models.md's promises, through `kdengine train` in this process.

- Each family the native-decoder table names (Llama with untied heads and q/k/v/o + MLP biases,
  Mistral with a sliding window, Qwen2 with sliding layers, Qwen3 with its own head_dim, tied
  heads and attention bias), as transformers writes it (save_pretrained), distils end to end, and
  the final student in RUN_DIR/final/ loads with transformers' AutoModelForCausalLM with the
  native decoder's logits.
- "Anything else is refused with an error naming it": each config.json refusal the doc lists
  that test_audit7_model_inputs does not (the rope types and parameters, partial rotary, a size
  that is not an integer, a rope_theta of 0) and a
  tokenizer with ids beyond the student's vocab: exit 2, one line naming --student and the key,
  no run directory.
- "defaults included": a config.json without max_position_embeddings reads each family's own
  (it read Llama's 2048 for all, and the final student's config.json said so).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import (  # noqa: E402
    one_line_in_process,
    write_byte_tokenizer,
    write_tiny_inputs,
    write_tiny_model,
)

from kdengine.cli import main  # noqa: E402
from kdengine.models.hf_layout import load_decoder  # noqa: E402

BASE = dict(vocab_size=257, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            rms_norm_eps=1e-5)
FAMILIES = {
    "llama-untied-biases": ("LlamaConfig", dict(attention_bias=True, mlp_bias=True,
                                                tie_word_embeddings=False)),
    "mistral-window": ("MistralConfig", dict(sliding_window=8)),
    "qwen2-sliding-layers": ("Qwen2Config", dict(use_sliding_window=True, sliding_window=8,
                                                 max_window_layers=1)),
    "qwen3-head-dim-tied-bias": ("Qwen3Config", dict(head_dim=16, tie_word_embeddings=True,
                                                     attention_bias=True)),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audit13-models")


@pytest.fixture(scope="module")
def inputs(root: Path) -> dict[str, str]:
    return write_tiny_inputs(root / "tiny")


def _hf_model(transformers, directory: Path, family: str, seed: int, **extra) -> Path:
    kind, overrides = FAMILIES[family]
    torch.manual_seed(seed)
    config = getattr(transformers, kind)(**{**BASE, **overrides, **extra})
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    write_byte_tokenizer(directory)
    return directory


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_documented_family_distils_and_its_final_student_loads_in_transformers(
        root: Path, inputs: dict[str, str], family: str, capsys) -> None:
    transformers = pytest.importorskip("transformers")
    teacher = _hf_model(transformers, root / family / "teacher", family, 1)
    student = _hf_model(transformers, root / family / "student", family, 2)
    run_dir = root / family / "run"
    code = main(["train", "--teacher", str(teacher), "--student", str(student), "--data",
                 inputs["data"], "--run-dir", str(run_dir), "--steps", "2", "--seq-len", "32",
                 "--batch-size", "2", "--eval-batches", "1"])
    assert code in (0, 1), capsys.readouterr().err[-2000:]  # a pass or a fail: completed
    final = run_dir / "final"
    said = json.loads((final / "config.json").read_text())
    assert said["model_type"] == family.split("-")[0]  # the student's own family
    ids = torch.randint(0, 257, (2, 24), generator=torch.Generator().manual_seed(0))
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        final, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        ours, reference = load_decoder(final).logits(ids), theirs(ids).logits
    assert ((ours - reference).abs().max() / reference.abs().max()).item() <= 1e-4


REFUSED = {
    "partial_rotary_factor": ({"partial_rotary_factor": 0.5}, "partial_rotary_factor = 0.5"),
    "rope-dynamic": ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}},
                     "rope type 'dynamic' is not supported"),
    "rope-longrope": ({"rope_scaling": {"rope_type": "longrope", "factor": 2.0}},
                      "rope type 'longrope' is not supported"),
    "linear-without-factor": ({"rope_scaling": {"rope_type": "linear"}},
                              "rope_scaling.factor = None is not supported"),
    "llama3-negative-factor": ({"rope_scaling": {"rope_type": "llama3", "factor": -2.0}},
                               "rope_scaling.factor = -2.0 is not supported"),
    "per-layer-type-rope": ({"rope_parameters": {"full_attention": {"rope_type": "default"}}},
                            "per-layer-type rope_parameters are not supported"),
    "size-not-an-integer": ({"num_hidden_layers": 1.5},
                            "num_hidden_layers missing or not a positive integer"),
    "rope_theta-not-positive": ({"rope_parameters": {"rope_type": "default", "rope_theta": 0}},
                                "rope_theta = 0 is not supported"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_config_json_the_decoder_cannot_run_exactly_is_refused_naming_the_key(
        root: Path, inputs: dict[str, str], case: str, capsys) -> None:
    patch, said = REFUSED[case]
    student = root / "refused" / case
    shutil.copytree(inputs["student"], student)
    config = json.loads((student / "config.json").read_text())
    (student / "config.json").write_text(json.dumps({**config, **patch}))
    run_dir = root / "refused" / f"run-{case}"
    code = main(["train", "--teacher", inputs["teacher"], "--student", str(student), "--data",
                 inputs["data"], "--run-dir", str(run_dir), "--steps", "2", "--seq-len", "32"])
    line = one_line_in_process(capsys, code, "train")
    assert line.startswith(f"kdengine train: error: --student: {student / 'config.json'}: ")
    assert said in line, line
    assert not run_dir.exists()


def test_a_tokenizer_with_ids_beyond_the_students_vocab_is_refused(root: Path, inputs,
                                                                   capsys) -> None:
    student = write_tiny_model(root / "small-vocab", hidden=16, layers=1, seed=2, vocab=200)
    run_dir = root / "run-small-vocab"
    code = main(["train", "--teacher", inputs["teacher"], "--student", str(student), "--data",
                 inputs["data"], "--run-dir", str(run_dir), "--steps", "2", "--seq-len", "32"])
    assert one_line_in_process(capsys, code, "train") == (
        "kdengine train: error: --student: the tokenizer has ids up to 256, beyond the model's "
        "vocab_size (200): not this model's tokenizer")
    assert not run_dir.exists()


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_a_config_json_without_max_position_embeddings_reads_the_familys_default(
        tmp_path: Path, family: str) -> None:
    # models.md: config.json is read as transformers 5 reads it, defaults included; the
    # final student's config.json keeps what the student's said (2048 was written for every
    # family, which for a Qwen2/Qwen3 (32768) or Mistral (131072) student shrank its context)
    transformers = pytest.importorskip("transformers")
    from kdengine.models.hf_layout import config_from_hf, config_to_hf

    hf = {"model_type": family, "vocab_size": 257, "hidden_size": 32, "intermediate_size": 64,
          "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
    (tmp_path / "config.json").write_text(json.dumps(hf))
    theirs = transformers.AutoConfig.from_pretrained(tmp_path).max_position_embeddings
    ours = config_from_hf(hf)
    assert ours.max_position_embeddings == theirs
    assert config_to_hf(ours)["max_position_embeddings"] == theirs
