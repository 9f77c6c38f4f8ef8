"""ShareGPT turns ({"from": "human", "value": ...}) as the HF chat format's {role, content}
messages, so templates, masks and errors see one shape whatever the data set wrote.

The `from` values are those public ShareGPT-style sets use: FastChat's human/gpt (and system),
the user/assistant some exports keep, and LLaMA-Factory's tool turns, function_call (the
assistant calling a tool: a JSON {"name", "arguments"} or a list of them) and observation (what
the tool returned). A record-level `system` string (LLaMA-Factory's) opens the conversation
when no system turn does. Any other `from` is a bad record naming the value and these.
"""

from __future__ import annotations

import json
from typing import Any

# `from` -> the role it plays in the HF chat format
ROLE_OF_FROM = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                "system": "system", "tool": "tool", "function_call": "assistant",
                "observation": "tool"}


def is_sharegpt(turns: Any) -> bool:
    """Whether a list of turns is written ShareGPT's way (a `from` where messages have a
    `role`). A columnar file mixing both shapes gives every turn both keys, the unused ones
    None: a turn with a role is a message."""
    return isinstance(turns, list) and any(
        isinstance(turn, dict) and turn.get("from") is not None and turn.get("role") is None
        for turn in turns)


def to_messages(turns: list[Any], system: Any = None) -> list[Any]:
    """The turns as messages; `system` (the record's own field) first when no turn is one.
    Raises UnknownFrom for a `from` outside ROLE_OF_FROM; turns that are not ShareGPT's (not
    objects, or messages already) pass through for the caller's checks."""
    messages = [_message(i, turn) for i, turn in enumerate(turns)]
    opens_with_system = bool(messages) and isinstance(messages[0], dict) and \
        messages[0].get("role") == "system"
    if isinstance(system, str) and system.strip() and not opens_with_system:
        messages.insert(0, {"role": "system", "content": system})
    return messages


class UnknownFrom(ValueError):
    """Turn `index` has a `from` value no ShareGPT-style set we know uses."""

    def __init__(self, index: int, value: Any) -> None:
        self.index, self.value = index, value
        super().__init__(f"[{index}] has from {value!r}; ShareGPT's from values are "
                         f"{', '.join(ROLE_OF_FROM)}")


def _message(index: int, turn: Any) -> Any:
    if not isinstance(turn, dict) or turn.get("from") is None or turn.get("role") is not None:
        return turn
    speaker, value = turn["from"], turn.get("value")
    if speaker not in ROLE_OF_FROM:
        raise UnknownFrom(index, speaker)
    if speaker == "function_call" and (calls := _tool_calls(value)) is not None:
        # content "" (not None) as in transformers' examples: templates test it for truth,
        # and the assistant's tokens are found around it (kdengine.data.encode)
        return {"role": "assistant", "content": "", "tool_calls": calls}
    return {"role": ROLE_OF_FROM[speaker], "content": value}


def _tool_calls(value: Any) -> list[dict[str, Any]] | None:
    """A function_call turn's value as HF tool_calls ({"type": "function", "function": {name,
    arguments}}), which templates render in their own tool-call syntax; None when it is not
    a JSON call (then it stays the assistant's text)."""
    try:
        calls = json.loads(value) if isinstance(value, str) else None
    except json.JSONDecodeError:
        return None
    calls = [calls] if isinstance(calls, dict) else calls
    if not isinstance(calls, list) or not calls or not all(
            isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls):
        return None
    return [{"type": "function", "function": {"name": c["name"],
                                              "arguments": c.get("arguments", {})}}
            for c in calls]
