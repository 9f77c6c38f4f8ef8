"""On-policy distillation as a new user meets it (docs/on-policy.md): a chat template that
ignores add_generation_prompt is refused at --check (its prompts would end before the
assistant's header); generation stops where transformers' `generate` stops (every id of
generation_config.json's eos_token_id list, Phi-3's <|end|> among them) and at the chat
template's end of turn."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from kdengine.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import (  # noqa: E402
    PLAIN_CHATML,
    one_line_in_process,
    write_chat_tokenizer,
    write_tiny_model,
)

# ChatML without the generation prompt: renders the same with and without add_generation_prompt
NO_GENERATION_PROMPT = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
                        "<|im_end|>\n{% endfor %}")


@pytest.fixture(scope="module")
def chat_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("audit9")
    teacher = write_tiny_model(root / "teacher", hidden=32, layers=1, seed=1)
    student = write_tiny_model(root / "student", hidden=16, layers=1, seed=2)
    data = root / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"{i} x 3?"},
        {"role": "assistant", "content": f"{3 * i}."}]}) + "\n" for i in range(60)))
    return {"teacher": teacher, "student": student, "data": data}


def check_argv(models: dict[str, Path], run_dir: Path, *extra: str) -> list[str]:
    return ["train", "--teacher", str(models["teacher"]), "--student", str(models["student"]),
            "--data", str(models["data"]), "--run-dir", str(run_dir), "--seq-len", "128",
            "--batch-size", "2", "--device", "cpu", *extra, "--check"]


SAMPLES = ("--max-new-tokens", "16")  # a run that samples: prompts fit seq_len 128 with these


@pytest.mark.parametrize("extra, field", [(["--lmbda", "1"], "--lmbda"),
                                          (["--seq-kd"], "--seq-kd")])
def test_a_template_that_ignores_add_generation_prompt_is_refused_before_sampling(
        chat_models, tmp_path, capsys, extra, field) -> None:
    for role in ("teacher", "student"):
        write_chat_tokenizer(chat_models[role], NO_GENERATION_PROMPT)
    run_dir = tmp_path / "run"
    line = one_line_in_process(capsys, main(check_argv(chat_models, run_dir, *extra, *SAMPLES)),
                               "train")
    assert line.startswith(f"kdengine train: error: {field}: "), line
    assert "tokenizer_config.json chat_template" in line  # names the template
    assert "add_generation_prompt" in line and "'<|im_start|>assistant'" in line
    assert "chat_template.jinja" in line  # and the fix
    assert not run_dir.exists()


def test_the_same_data_with_a_template_that_opens_the_assistant_turn_passes(
        chat_models, tmp_path, capsys) -> None:
    for role in ("teacher", "student"):
        write_chat_tokenizer(chat_models[role], PLAIN_CHATML)
    assert main(check_argv(chat_models, tmp_path / "run", "--lmbda", "1", *SAMPLES)) == 0
    # and the fix the refusal names: a chat_template.jinja beside the broken config's
    for role in ("teacher", "student"):
        write_chat_tokenizer(chat_models[role], NO_GENERATION_PROMPT)
        (chat_models[role] / "chat_template.jinja").write_text(PLAIN_CHATML)
    try:
        assert main(check_argv(chat_models, tmp_path / "run2", "--lmbda", "1", *SAMPLES)) == 0
    finally:
        for role in ("teacher", "student"):
            (chat_models[role] / "chat_template.jinja").unlink()
    capsys.readouterr()


def test_off_policy_runs_and_prompt_completion_strings_do_not_need_the_generation_prompt(
        chat_models, tmp_path, capsys) -> None:
    for role in ("teacher", "student"):
        write_chat_tokenizer(chat_models[role], NO_GENERATION_PROMPT)
    assert main(check_argv(chat_models, tmp_path / "off")) == 0  # off-policy: never samples
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Q: {i}?\nA:", "completion": f" {i}."})
                             + "\n" for i in range(60)))
    models = {**chat_models, "data": pairs}
    assert main(check_argv(models, tmp_path / "pairs", "--lmbda", "1", *SAMPLES)) == 0
    capsys.readouterr()


# ---- where generation stops, against transformers' generate --------------------------------

PHI3_SPECIALS = ("<|endoftext|>", "<|assistant|>", "<|user|>")  # <|end|> placed by the test
PHI3_TEMPLATE = ("{% for m in messages %}{{ '<|' + m.role + '|>\n' + m.content + '<|end|>\n' }}"
                 "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}"
                 "{% else %}{{ eos_token }}{% endif %}")
PROMPT = [72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100]
VOCAB = 260


def _hf_greedy(directory: Path, eos: list[int] | None, new: int = 12) -> list[int]:
    """transformers' greedy continuation of PROMPT, stopping at `eos` (None: at no id)."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    config = GenerationConfig(do_sample=False, max_new_tokens=new, eos_token_id=eos,
                              pad_token_id=256)
    out = model.generate(torch.tensor([PROMPT]), generation_config=config)
    return out[0, len(PROMPT):].tolist()


def _ours(directory: Path, eos_ids: tuple[int, ...], new: int = 12) -> list[int]:
    from kdengine.generation import SamplingConfig, generate
    from kdengine.models import load_decoder

    model = load_decoder(directory)
    done = generate(model, [torch.tensor(PROMPT)], SamplingConfig(
        max_new_tokens=new, temperature=0.0, eos_ids=eos_ids), pad_id=256)
    return done.tokens[0, :int(done.lengths[0])].tolist()


def _phi3_tokenizer(directory: Path, end_id: int) -> None:
    """A byte-level tokenizer: <|endoftext|> 256, <|end|> `end_id`, the rest anywhere."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<|endoftext|>": 256, "<|end|>": end_id}
    free = [i for i in (*range(257, VOCAB), *range(256)) if i not in vocab.values()]
    names = [*PHI3_SPECIALS[1:], *sorted(pre_tokenizers.ByteLevel.alphabet())]
    vocab |= dict(zip(names, free, strict=True))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([*PHI3_SPECIALS, "<|end|>"])
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<|endoftext|>", "chat_template": PHI3_TEMPLATE}))


@pytest.fixture(scope="module")
def phi3(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    """A tiny Phi-3-style model (HF layout, real safetensors) and its greedy continuation of
    PROMPT with no EOS at all (transformers')."""
    directory = write_tiny_model(tmp_path_factory.mktemp("phi3") / "model", hidden=32,
                                 layers=1, seed=8, vocab=VOCAB)
    (directory / "config.json").write_text(json.dumps(
        {**json.loads((directory / "config.json").read_text()), "eos_token_id": 256}))
    return directory, _hf_greedy(directory, None)


def _first_new(free: list[int], after: int) -> tuple[int, int]:
    """(index, id) of the first token at index >= after not seen before it."""
    for i in range(after, len(free)):
        if free[i] not in free[:i] and free[i] != 256:
            return i, free[i]
    pytest.skip("the greedy continuation repeats one token")


def test_generation_stops_at_every_eos_id_of_generation_config_as_transformers_does(
        phi3) -> None:
    from kdengine.onpolicy.rollout import eos_ids_of

    directory, free = phi3
    at, end_id = _first_new(free, 1)
    _phi3_tokenizer(directory, end_id)
    (directory / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": [256, end_id, 258]}))
    try:
        from kdengine.tokenizer import load_tokenizer

        eos = eos_ids_of(load_tokenizer(directory, "student"), directory)
        assert set(eos) == {256, end_id, 258}
        theirs = _hf_greedy(directory, [256, end_id, 258])
        assert theirs == free[:at + 1]  # stopped at <|end|>, the EOS kept
        assert _ours(directory, eos) == theirs
    finally:
        (directory / "generation_config.json").unlink()


def test_generation_stops_at_the_chat_templates_end_of_turn(phi3, tmp_path) -> None:
    """A Phi-3 whose generation_config.json does not list <|end|> (config.json's eos is
    <|endoftext|> alone): a conversation's completion still ends at the template's turn end,
    where the data's assistant turns end (and where transformers stops given the id)."""
    from kdengine.onpolicy.rollout import completion_stop_ids
    from kdengine.tokenizer import load_tokenizer

    directory, free = phi3
    at, end_id = _first_new(free, 1)
    _phi3_tokenizer(directory, end_id)
    tokenizer = load_tokenizer(directory, "student")
    eos = completion_stop_ids(tokenizer, directory, directory, conversations=True)
    assert set(eos) == {256, end_id}
    assert _ours(directory, eos) == _hf_greedy(directory, [256, end_id]) == free[:at + 1]
    # raw text or prompt/completion strings (no template renders them): the ids of the
    # tokenizer and the configs only
    assert completion_stop_ids(tokenizer, directory, directory, conversations=False) == (256,)
