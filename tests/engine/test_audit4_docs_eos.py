"""docs/getting-started.md, "The end-of-document token": kdengine takes `eos_token` of
tokenizer_config.json; else the first of <|endoftext|>, </s>, <|end_of_text|>, <|im_end|>,
<eos> that the tokenizer knows; else `eos_token_id` of config.json; a tokenizer with none of
these is refused at --check. Checked on real tokenizer.json files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdengine.config import ConfigError
from kdengine.tokenizer import load_tokenizer

SPECIALS = ["<|im_end|>", "</s>", "<|endoftext|>"]  # ids 256, 257, 258: not the doc's order


def _tokenizer(directory: Path, specials: list[str], *, settings: dict | None = None,
               eos_token_id: object = None) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    for name in specials:
        vocab[name] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.add_special_tokens(specials)
    directory.mkdir(parents=True)
    tok.save(str(directory / "tokenizer.json"))
    if settings is not None:
        (directory / "tokenizer_config.json").write_text(json.dumps(settings))
    if eos_token_id is not None:
        (directory / "config.json").write_text(json.dumps({"eos_token_id": eos_token_id}))
    return directory


def _eos(directory: Path) -> int:
    tok = load_tokenizer(directory, "teacher")
    return tok.eos_id


def test_tokenizer_configs_eos_token_comes_first(tmp_path) -> None:
    tok = _tokenizer(tmp_path / "t", SPECIALS, settings={"eos_token": "<|im_end|>"},
                     eos_token_id=0)
    assert _eos(tok) == 256


def test_an_eos_token_written_as_an_added_token_object_counts(tmp_path) -> None:
    tok = _tokenizer(tmp_path / "t", SPECIALS, settings={"eos_token": {"content": "</s>"}})
    assert _eos(tok) == 257


@pytest.mark.parametrize("settings", [None, {}, {"eos_token": "<|not-a-token|>"}],
                         ids=["no-config", "no-eos-token", "an-unknown-eos-token"])
def test_else_the_first_known_name_in_the_documented_order(tmp_path, settings) -> None:
    tok = _tokenizer(tmp_path / "t", SPECIALS, settings=settings, eos_token_id=0)
    assert _eos(tok) == 258  # <|endoftext|>, first of the doc's list, though the last id
    later = _tokenizer(tmp_path / "u", ["<eos>", "<|im_end|>"], settings=settings)
    assert _eos(later) == 257  # <|im_end|> before <eos>


@pytest.mark.parametrize(("value", "expected"), [(5, 5), ([7, 9], 7)])
def test_else_config_jsons_eos_token_id(tmp_path, value, expected) -> None:
    tok = _tokenizer(tmp_path / "t", ["<pad>"], settings={}, eos_token_id=value)
    assert _eos(tok) == expected


def test_a_tokenizer_with_no_end_of_text_token_is_refused(tmp_path) -> None:
    tok = _tokenizer(tmp_path / "t", ["<pad>"], settings={})
    with pytest.raises(ConfigError) as refused:
        _eos(tok)
    assert refused.value.field == "teacher"
    assert "no end-of-text token" in refused.value.message


def test_check_refuses_a_tokenizer_with_no_end_of_text_token_in_one_line(
        tiny_run_inputs, tiny_args, tmp_path, one_line_refusal, engine_in_process) -> None:
    for role in ("teacher", "student"):  # the same tokenizer for both, without <|endoftext|>
        directory = Path(tiny_run_inputs[role])
        spec = json.loads((directory / "tokenizer.json").read_text())
        for token in spec["added_tokens"]:
            token["content"] = "<|pad|>"
        vocab = spec["model"]["vocab"]
        vocab["<|pad|>"] = vocab.pop("<|endoftext|>")
        (directory / "tokenizer.json").write_text(json.dumps(spec))
        (directory / "tokenizer_config.json").write_text("{}")
    # (the CLI in this process: a new interpreter's torch import checks nothing more)
    done = engine_in_process(*tiny_args(tiny_run_inputs, tmp_path / "run"), "--check")
    line = one_line_refusal(done, "train", "--teacher: ")
    assert "the tokenizer has no end-of-text token (set eos_token in tokenizer_config.json)" \
        in line
    assert not (tmp_path / "run").exists()
