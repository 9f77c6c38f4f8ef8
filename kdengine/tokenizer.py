"""HF tokenizers (tokenizer.json) through the `tokenizers` library: encoding, the end-of-document
id, and a fingerprint that says whether teacher and student tokenize text the same way."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdengine.config import ConfigError

if TYPE_CHECKING:
    import torch

_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<|im_end|>", "<eos>")
# the files that make up a tokenizer in HF layout, copied next to the final student
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model")


class HFTokenizer:
    def __init__(self, directory: Path, field: str = "teacher") -> None:
        from tokenizers import Tokenizer

        self.directory = Path(directory)
        path = self.directory / "tokenizer.json"
        try:
            raw = path.read_text(encoding="utf-8")
            self._tok = Tokenizer.from_str(raw)
            spec = json.loads(raw)
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise ConfigError(field, f"{path} is not a readable tokenizer "
                              f"({type(exc).__name__}: {exc})") from None
        model = spec.get("model", {})
        added = sorted((t.get("id"), t.get("content")) for t in spec.get("added_tokens") or [])
        # The same ids for the same strings = the same tokenizer, whatever else the files say
        # (chat templates, padding side): vocabulary, merges and added tokens.
        self.identity: dict[str, Any] = {"vocab": model.get("vocab"), "merges": model.get("merges"),
                                         "added": added}
        self.fingerprint = hashlib.sha256(
            json.dumps(self.identity, sort_keys=True, default=str).encode()).hexdigest()
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.max_id = max(self._tok.get_vocab(with_added_tokens=True).values(), default=-1)
        self.eos_id = self._find_eos(field)

    def _find_eos(self, field: str) -> int:
        names: list[str] = []
        cfg = self.directory / "tokenizer_config.json"
        if cfg.exists():
            try:  # an edited or cut-short file: one line naming it, not a traceback
                settings = json.loads(cfg.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                settings = exc
            if not isinstance(settings, dict):
                why = (settings if isinstance(settings, Exception)
                       else f"it holds a {type(settings).__name__}")
                raise ConfigError(field, f"{cfg} is not a JSON object of tokenizer settings "
                                  f"({why}); restore it from the model's files")
            eos = settings.get("eos_token")
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
        raise ConfigError(field, f"{self.directory}: the tokenizer has no end-of-text token "
                          "(set eos_token in tokenizer_config.json)")

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids of `text` and each id's [start, end) character span (completion-only labels:
        the tokens that overlap an assistant turn train, kdengine.data.encode)."""
        encoding = self._tok.encode(text, add_special_tokens=False)
        return encoding.ids, encoding.offsets

    def decode(self, ids: list[int]) -> str:
        """The text of `ids`, special tokens included (a sample shows what was written)."""
        return self._tok.decode(ids, skip_special_tokens=False)

    def encode_tensor(self, text: str) -> torch.Tensor:
        import torch  # here, not at the top: the run's preflight reads tokenizers without torch

        return torch.tensor(self.encode(text), dtype=torch.int64)

    def difference(self, other: HFTokenizer) -> str:
        """In words, how `other` differs from this tokenizer ('' when they are the same)."""
        for key, what in (("vocab", "vocabulary differs"), ("merges", "merges differ"),
                          ("added", "added/special tokens differ")):
            mine, theirs = self.identity[key], other.identity[key]
            if mine != theirs:
                size = (f" ({len(mine or [])} vs {len(theirs or [])} entries)"
                        if len(mine or []) != len(theirs or []) else "")
                return f"its {what}{size}"
        return ""


def load_tokenizer(directory: Path, field: str) -> HFTokenizer:
    if not (Path(directory) / "tokenizer.json").exists():
        hint = (" (it has only a sentencepiece tokenizer.model: save it with transformers' "
                "AutoTokenizer.save_pretrained to get tokenizer.json)"
                if (Path(directory) / "tokenizer.model").exists() else "")
        raise ConfigError(field, f"{directory} has no tokenizer.json (KD needs the model's "
                          f"tokenizer to read the data){hint}")
    return HFTokenizer(directory, field)


def check_same_tokenizer(a: Any, b: Any) -> None:
    """Teacher and student must tokenize text into the same ids, or KD compares nonsense."""
    if isinstance(a, HFTokenizer) and isinstance(b, HFTokenizer):
        if a.fingerprint == b.fingerprint:
            return
        why = a.difference(b)
    elif type(a) is type(b):  # the demo's byte tokenizer on both sides
        return
    else:  # one side is a demo model: the demo's byte tokenizer, the other an HF tokenizer
        demo = "teacher" if not isinstance(a, HFTokenizer) else "student"
        raise ConfigError("student", f"the {demo} is a demo model, which reads bytes with the "
                          "demo's own tokenizer, and the other model has an HF tokenizer; pair "
                          "demo://teacher with demo://student, or two models of one family")
    raise ConfigError("student", f"does not share the teacher's tokenizer ({why}); KD needs one "
                      "tokenizer for both: pick a student of the teacher's family")
