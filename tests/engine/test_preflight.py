"""The run's preflight (kdengine.preflight): every input the run would refuse and that is known
without weights is refused by `kdengine train --check` and by `kdengine train` alike (the latter
as real processes, as a user runs it): exit 2, one stderr line naming the field, no traceback,
no run directory."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from array import array
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from kdengine.config import ConfigError
from kdengine.data import ByteTokenizer, Document, plan_split, split_documents

_spec = importlib.util.spec_from_file_location(  # by path: "conftest" may be another one
    "kd_tests_conftest", Path(__file__).resolve().parents[1] / "conftest.py")
assert _spec is not None and _spec.loader is not None
_shared = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_shared)
TINY_TEXT, write_tiny_inputs, write_tiny_model = (_shared.TINY_TEXT, _shared.write_tiny_inputs,
                                                  _shared.write_tiny_model)

Inputs = dict[str, str]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    """Good teacher, student and data, written once; each case edits its own copy."""
    return write_tiny_inputs(tmp_path_factory.mktemp("pristine"))


@pytest.fixture
def inputs(pristine: Inputs, tmp_path: Path) -> Inputs:
    copy = tmp_path / "inputs"
    shutil.copytree(Path(pristine["teacher"]).parent, copy)
    return {k: str(copy / Path(v).name) for k, v in pristine.items()}


def _edit_config(model: str, **changes) -> None:
    path = Path(model) / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def gemma_teacher(i: Inputs) -> list[str]:
    _edit_config(i["teacher"], model_type="gemma", architectures=["GemmaForCausalLM"],
                 hidden_act="gelu_pytorch_tanh")
    return []


def gpt2_teacher(i: Inputs) -> list[str]:
    (Path(i["teacher"]) / "config.json").write_text(json.dumps(
        {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": 257,
         "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 256}))
    return []


def yarn_teacher(i: Inputs) -> list[str]:
    _edit_config(i["teacher"], rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                             "original_max_position_embeddings": 64})
    return []


def student_tokenizer_differs(i: Inputs) -> list[str]:
    path = Path(i["student"]) / "tokenizer.json"
    spec = json.loads(path.read_text())
    vocab = spec["model"]["vocab"]
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]  # same size, other ids
    path.write_text(json.dumps(spec))
    return []


def no_tokenizer_json(i: Inputs) -> list[str]:
    (Path(i["teacher"]) / "tokenizer.json").unlink()
    (Path(i["teacher"]) / "tokenizer.model").write_bytes(b"sentencepiece")
    return []


def only_pytorch_model_bin(i: Inputs) -> list[str]:
    (Path(i["teacher"]) / "model.safetensors").rename(Path(i["teacher"]) / "pytorch_model.bin")
    return []


def a_shard_missing(i: Inputs) -> list[str]:
    student = Path(i["student"])
    (student / "model.safetensors").rename(student / "model-00001-of-00002.safetensors")
    (student / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
        "model.norm.weight": "model-00002-of-00002.safetensors"}}))
    return []


def student_vocab_larger(i: Inputs) -> list[str]:
    shutil.rmtree(i["student"])
    write_tiny_model(Path(i["student"]), hidden=16, layers=1, seed=2, vocab=300)
    return []


def only_csv_data(i: Inputs) -> list[str]:
    shutil.rmtree(i["data"])
    Path(i["data"]).mkdir()
    (Path(i["data"]) / "table.csv").write_text("a,b\n1,2\n" * 500)
    return []


def forty_one_tokens(i: Inputs) -> list[str]:
    shutil.rmtree(i["data"])
    Path(i["data"]).mkdir()
    (Path(i["data"]) / "tiny.txt").write_text("x" * 41)  # a byte tokenizer: 41 tokens
    return []


def bad_jsonl_line(i: Inputs) -> list[str]:
    # plenty of good lines first: counting stops early, parsing goes on to the end
    lines = [json.dumps({"text": TINY_TEXT[k:k + 500]}) for k in range(0, 20000, 500)]
    (Path(i["data"]) / "more.jsonl").write_text("\n".join([*lines, "{not json"]) + "\n")
    return []


def latin1_text(i: Inputs) -> list[str]:
    (Path(i["data"]) / "zz-latin1.txt").write_bytes("café crème, déjà vu\n".encode("latin-1"))
    return []


def shard_id_beyond_vocab(i: Inputs) -> list[str]:
    shutil.rmtree(i["data"])
    Path(i["data"]).mkdir()
    (Path(i["data"]) / "tokens.json").write_text(json.dumps(
        {"format": "kdengine-tokens", "dtype": "uint16", "eos_id": 256}))
    ids = [k % 256 for k in range(4000)]
    ids[3000] = 400  # one id past the 257 of the byte tokenizer, deep in the second shard
    (Path(i["data"]) / "a.bin").write_bytes(array("H", ids[:2000]).tobytes())
    (Path(i["data"]) / "b.bin").write_bytes(array("H", ids[2000:]).tobytes())
    return []


def cuda_without_cuda(i: Inputs) -> list[str]:
    return ["--device", "cuda"]


def demo_teacher_hf_student(i: Inputs) -> list[str]:
    return ["--teacher", "demo://teacher"]  # the last --teacher wins


CASES: list[tuple[Callable[[Inputs], list[str]], str, list[str]]] = [
    (gemma_teacher, "--teacher", ["gemma", "not supported"]),
    (gpt2_teacher, "--teacher", ["gpt2", "not supported"]),
    (yarn_teacher, "--teacher", ["'yarn'", "not supported"]),
    (student_tokenizer_differs, "--student", ["does not share the teacher's tokenizer"]),
    (no_tokenizer_json, "--teacher", ["no tokenizer.json", "save_pretrained"]),
    (only_pytorch_model_bin, "--teacher", ["pytorch_model.bin", "convert to safetensors"]),
    (a_shard_missing, "--student", ["model-00002-of-00002.safetensors", "missing"]),
    (student_vocab_larger, "--student", ["vocab (300) is larger than the teacher's (257)"]),
    (only_csv_data, "--data", ["holds no", ".jsonl"]),
    (forty_one_tokens, "--data", ["has 42 tokens", "shorter than one batch"]),
    (bad_jsonl_line, "--data", ["more.jsonl:41 is not JSON"]),
    (latin1_text, "--data", ["zz-latin1.txt", "not UTF-8"]),
    (shard_id_beyond_vocab, "--data", ["b.bin holds token id 400",
                                       "beyond the model's vocab (257)", "teacher's"]),
    (cuda_without_cuda, "--device", ["no CUDA device"]),
    (demo_teacher_hf_student, "--student", ["demo model", "demo://student"]),
]
IDS = [case[0].__name__ for case in CASES]


def _args(i: Inputs, extra: list[str], *check: str) -> list[str]:
    return ["train", *check, "--teacher", i["teacher"], "--student", i["student"],
            "--data", i["data"], "--run-name", "refused", "--steps", "4", "--batch-size", "4",
            "--seq-len", "32", "--device", "cpu", *extra]


def _engine(i: Inputs, extra: list[str], *check: str) -> subprocess.CompletedProcess[str]:
    """`kdengine train` as a user runs it, in a process of its own."""
    return subprocess.run([sys.executable, "-m", "kdengine", *_args(i, extra, *check)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def _in_process(i: Inputs, extra: list[str], capsys: pytest.CaptureFixture[str],
                *check: str) -> subprocess.CompletedProcess[str]:
    """The same command through kdengine.cli.main in this process (no torch import to pay
    again: the --check matrix, and the plain one but for its REAL_PROCESS cases)."""
    from kdengine.cli import main

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = main(_args(i, extra, *check))
    finally:  # kdengine's early stop handlers, not the test worker's
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    out = capsys.readouterr()
    return subprocess.CompletedProcess([], code, out.out, out.err)


def _assert_refused(out: subprocess.CompletedProcess[str], flag: str, words: list[str]) -> None:
    lines = out.stderr.splitlines()
    assert out.returncode == 2, out.stderr[-3000:]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"kdengine train: error: {flag}: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    assert "Traceback" not in out.stderr + out.stdout
    runs = Path(os.environ["KDENGINE_RUNS_DIR"])
    assert not runs.exists() or not any(runs.iterdir())


@pytest.mark.parametrize(("make", "flag", "words"), CASES, ids=IDS)
def test_check_refuses_what_the_run_would(inputs: Inputs, make, flag, words,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    if make is cuda_without_cuda and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _assert_refused(_in_process(inputs, make(inputs), capsys, "--check"), flag, words)


# the plain (no --check) matrix in a process of its own, as a user runs it, for one refusal of
# the models (before the engine reads data) and one of the data (after its torch import); the
# other cases run the same `train` command through kdengine.cli.main in this process (a new
# interpreter's torch import, 2-4 s a case, checks nothing more for them)
REAL_PROCESS = {"gemma_teacher", "bad_jsonl_line"}


@pytest.mark.parametrize(("make", "flag", "words"), CASES, ids=IDS)
def test_train_refuses_before_any_run_directory(inputs: Inputs, make, flag, words,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    if make is cuda_without_cuda and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    if make.__name__ in REAL_PROCESS:
        _assert_refused(_engine(inputs, make(inputs)), flag, words)
    else:
        _assert_refused(_in_process(inputs, make(inputs), capsys), flag, words)


def test_check_passes_good_inputs_and_says_what_it_found(inputs: Inputs) -> None:
    out = _engine(inputs, [], "--check")
    assert out.returncode == 0, out.stderr
    facts = json.loads(out.stdout)["preflight"]
    assert facts["teacher"]["model_type"] == "llama"
    assert facts["student"]["weight_files"] == ["model.safetensors"]
    assert facts["train_tokens"] >= 4 * 31 + 2 and facts["val_tokens"] >= 33
    assert facts["unchecked"] == []
    assert not Path(os.environ["KDENGINE_RUNS_DIR"]).exists()


def test_counting_stops_once_both_sides_have_enough(inputs: Inputs) -> None:
    from kdengine.config import RunConfig
    from kdengine.preflight import check_run_inputs

    data = Path(inputs["data"])
    for k in range(200):  # a large corpus: the count must not reach its end
        (data / f"extra{k:03d}.txt").write_text(TINY_TEXT)
    config = RunConfig(teacher=inputs["teacher"], student=inputs["student"], data=str(data),
                       batch_size=4, seq_len=32)
    facts = check_run_inputs(config)
    assert facts.train_tokens + facts.val_tokens < 201 * len(TINY_TEXT) // 4

    # one huge file is one document: a prefix of it is counted, not all of it
    shutil.rmtree(data)
    data.mkdir()
    (data / "corpus.txt").write_text(TINY_TEXT * 40)
    facts = check_run_inputs(config)
    assert facts.train_tokens < len(TINY_TEXT) * 40 // 4


@pytest.mark.parametrize("sizes", [[5, 7], [40], [300, 2, 2], [50] * 30, [1000, 10, 10, 10]])
def test_plan_split_gives_the_lengths_split_documents_builds(sizes: list[int]) -> None:
    docs = [Document(f"doc{i}.txt", "y" * n) for i, n in enumerate(sizes)]
    held, train, val = plan_split([(d.name, len(d.text)) for d in docs], 0.1, 16)
    tok = ByteTokenizer()
    try:
        splits = split_documents(docs, tok.encode_tensor, tok.eos_id, 0.1, 16, 1)
    except ConfigError:
        assert train < 1 * 15 + 2 or val < 17
        return
    assert (len(splits.train), len(splits.val)) == (train, val)
    assert isinstance(splits.train, torch.Tensor)


@pytest.mark.parametrize("sizes", [[5000], [30] * 10, [2000, 20, 20], [60] * 200, [100, 100],
                                   [120, 40], [90] * 3, [30] * 3, [20], [200_000],
                                   [200_000, 40, 40], [40, 200_000], [300_000] * 3])
def test_preflight_and_the_runs_data_stage_agree(inputs: Inputs, sizes: list[int]) -> None:
    """Pass or refuse alike, whichever split the run falls back to (the preflight's second
    reading counts what its first skipped)."""
    from kdengine.config import RunConfig
    from kdengine.loading import load_data
    from kdengine.preflight import check_run_inputs
    from kdengine.tokenizer import load_tokenizer

    data = Path(inputs["data"])
    shutil.rmtree(data)
    data.mkdir()
    for k, n in enumerate(sizes):
        (data / f"d{k:03d}.txt").write_text(("abcdefghij" * (n // 10 + 1))[:n])
    config = RunConfig(teacher=inputs["teacher"], student=inputs["student"], data=str(data),
                       batch_size=4, seq_len=32)
    try:
        splits = load_data(config, load_tokenizer(Path(inputs["teacher"]), "teacher"))
    except ConfigError as exc:
        with pytest.raises(ConfigError) as refused:
            check_run_inputs(config)
        assert refused.value.message == exc.message
        return
    facts = check_run_inputs(config)
    assert facts.train_tokens <= len(splits.train) and facts.val_tokens <= len(splits.val)


def test_pre_tokenized_shards_are_sized_without_a_scan(inputs: Inputs) -> None:
    from kdengine.config import RunConfig
    from kdengine.preflight import check_run_inputs

    shards = Path(inputs["data"]).with_name("shards")
    shards.mkdir()
    (shards / "tokens.json").write_text(json.dumps(
        {"format": "kdengine-tokens", "dtype": "uint16", "eos_id": 256}))
    (shards / "a.bin").write_bytes(array("H", range(100)).tobytes())
    config = RunConfig(teacher=inputs["teacher"], student=inputs["student"], data=str(shards),
                       batch_size=4, seq_len=32)
    with pytest.raises(ConfigError, match="has 100 tokens") as info:
        check_run_inputs(config)
    assert info.value.field == "data"
    (shards / "b.bin").write_bytes(array("H", [i % 256 for i in range(1000)]).tobytes())
    facts = check_run_inputs(config)
    assert any("shards" in line for line in facts.unchecked)
    (shards / "tokens.json").write_text(json.dumps(
        {"format": "kdengine-tokens", "dtype": "uint16", "eos_id": 400}))
    with pytest.raises(ConfigError, match="eos_id 400 is beyond the tokenizer's vocab"):
        check_run_inputs(config)


@pytest.mark.parametrize(("dtype", "typecode"), [("uint16", "H"), ("uint32", "I")])
def test_shard_ids_are_checked_against_the_vocab_in_every_dtype(
        inputs: Inputs, dtype: str, typecode: str) -> None:
    from kdengine.config import RunConfig
    from kdengine.preflight import check_run_inputs

    shards = Path(inputs["data"]).with_name("shards")
    shards.mkdir()
    (shards / "tokens.json").write_text(json.dumps(
        {"format": "kdengine-tokens", "dtype": dtype, "eos_id": 256}))
    (shards / "a.bin").write_bytes(array(typecode, [k % 257 for k in range(3000)]).tobytes())
    (shards / "b.bin").write_bytes(b"")  # an empty shard is skipped, as the run skips it
    config = RunConfig(teacher=inputs["teacher"], student=inputs["student"], data=str(shards),
                       batch_size=4, seq_len=32)
    facts = check_run_inputs(config)  # ids up to 256, the eos: inside the vocab of 257
    assert not any("token ids" in line for line in facts.unchecked)
    top = 70_000 if dtype == "uint32" else 257  # past uint16 too, for the uint32 shards
    (shards / "c.bin").write_bytes(array(typecode, [1, 2, top, 256]).tobytes())
    with pytest.raises(ConfigError, match=f"c.bin holds token id {top}, beyond the model's "
                       r"vocab \(257\)") as info:
        check_run_inputs(config)
    assert info.value.field == "data"
