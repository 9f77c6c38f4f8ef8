"""HF tokenizers (tokenizer.json) through the `tokenizers` library."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from kdengine.config import ConfigError

_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<|im_end|>", "<eos>")


class HFTokenizer:
    def __init__(self, directory: Path) -> None:
        from tokenizers import Tokenizer

        self.directory = Path(directory)
        raw = (self.directory / "tokenizer.json").read_text(encoding="utf-8")
        self._tok = Tokenizer.from_str(raw)
        model = json.loads(raw).get("model", {})
        # Same vocabulary and merges = same tokenizer, whatever else the files say.
        self.fingerprint = hashlib.sha256(
            json.dumps([model.get("vocab"), model.get("merges")], sort_keys=True).encode()
        ).hexdigest()
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.eos_id = self._find_eos()

    def _find_eos(self) -> int:
        names: list[str] = []
        cfg = self.directory / "tokenizer_config.json"
        if cfg.exists():
            eos = json.loads(cfg.read_text()).get("eos_token")
            names.append(eos.get("content") if isinstance(eos, dict) else eos)
        names += list(_EOS_CANDIDATES)
        for name in names:
            if name and (token_id := self._tok.token_to_id(name)) is not None:
                return token_id
        model_cfg = self.directory / "config.json"
        if model_cfg.exists():
            eos_id = json.loads(model_cfg.read_text()).get("eos_token_id")
            if isinstance(eos_id, list):
                eos_id = eos_id[0] if eos_id else None
            if isinstance(eos_id, int):
                return eos_id
        raise ConfigError("data", f"{self.directory}: the tokenizer has no end-of-text token")

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_tensor(self, text: str) -> torch.Tensor:
        return torch.tensor(self.encode(text), dtype=torch.int64)


def load_tokenizer(directory: Path, field: str) -> HFTokenizer:
    if not (Path(directory) / "tokenizer.json").exists():
        raise ConfigError(field, f"{directory} has no tokenizer.json (KD needs the model's "
                          "tokenizer to read the data)")
    return HFTokenizer(directory)
