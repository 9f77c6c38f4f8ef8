"""Examples to token ids and a mask of the tokens that train (completion-only labels).

- text: the text's tokens and the end-of-text id; every token trains.
- prompt + completion strings: tokens of prompt + completion, then end-of-text; the completion
  trains (TRL's convention: the prompt's own tokens are the ones it has alone).
- messages, or prompt + completion message lists: the chat template's rendering, tokenized
  whole (as apply_chat_template tokenizes it); the assistant turns train (of a prompt +
  completion pair, the completion's). Assistant spans come from the template's
  `{% generation %}` blocks where it has them, else from rendering prefixes: turn i starts
  where messages[:i] with the generation prompt ends, and ends where messages[:i + 1] ends.
`train_on="all"` trains every token. A character span trains every token that overlaps it, as
transformers' assistant_masks are built.
"""

from __future__ import annotations

from typing import Any

from kdengine.config import ConfigError
from kdengine.data.chat import ChatTemplate, Span, render_error
from kdengine.data.formats import BadRecord, Example


def encode_offsets(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids of `text` (no special tokens added) and each id's character span."""
    if hasattr(tokenizer, "encode_offsets"):  # HFTokenizer
        return tokenizer.encode_offsets(text)
    ids, offsets, at = [], [], 0  # a byte tokenizer: each character's UTF-8 bytes
    for char in text:
        for byte in char.encode("utf-8"):
            ids.append(byte)
            offsets.append((at, at + 1))
        at += 1
    return ids, offsets


def encode_example(example: Example, tokenizer: Any, template: ChatTemplate | None,
                   train_on: str = "completion") -> tuple[list[int], list[bool]]:
    """(ids, trains): the example's tokens, and whether each is a training target."""
    record = example.record
    if example.kind == "text":
        ids = tokenizer.encode(record["text"]) + [tokenizer.eos_id]
        return ids, [True] * len(ids)
    if example.kind == "prompt_completion" and isinstance(record["prompt"], str):
        prompt = tokenizer.encode(record["prompt"])
        ids = tokenizer.encode(record["prompt"] + record["completion"]) + [tokenizer.eos_id]
        start = 0 if train_on == "all" else _common_prefix(prompt, ids)
        return ids, [i >= start for i in range(len(ids))]
    if template is None:
        raise ConfigError("data", f"{example.name} is a conversation, but the teacher's "
                          "tokenizer has no chat template (add chat_template.jinja, or give "
                          "text or prompt/completion strings)")
    if example.kind == "messages":
        messages, first = record["messages"], 0
    else:
        messages, first = record["prompt"] + record["completion"], len(record["prompt"])
    try:
        text, spans = assistant_spans(template, messages, first)
    except BadRecord as exc:
        raise BadRecord(example.name, exc.message) from None
    except ConfigError:
        raise
    except Exception as exc:  # the template's raise_exception, or a variable it lacks
        raise BadRecord(example.name, f"the chat template cannot render it "
                        f"({render_error(exc)})") from None
    if not text:  # an empty template (transformers renders it so too): nothing would train
        raise BadRecord(example.name, f"the chat template renders it as no text (the template "
                        f"is {template.source}): give the model's chat template there")
    ids, offsets = encode_offsets(tokenizer, text)
    if train_on == "all":
        return ids, [True] * len(ids)
    return ids, overlap_mask(offsets, spans)


def assistant_spans(template: ChatTemplate, messages: list[dict[str, Any]],
                    first: int = 0) -> tuple[str, list[Span]]:
    """The rendered chat and the character spans of its assistant turns at index >= first."""
    text, marked = template.render_with_spans(messages)
    if template.marks_generation:
        if first == 0:
            return text, marked
        start = len(template.render(messages[:first], add_generation_prompt=True))
        return text, [(a, b) for a, b in marked if b > start]
    spans = []
    for i in range(first, len(messages)):
        if messages[i]["role"] != "assistant":
            continue
        before = template.render(messages[:i], add_generation_prompt=True) if i else \
            _opening_prompt(template, text)
        through = text if i == len(messages) - 1 else template.render(messages[:i + 1])
        # an opening turn with no header known (the template cannot render no messages): the
        # content's own span, never what precedes it (a default system prompt, today's date)
        span = _marked_span(template, messages, i, text, None) if not (i or before) else None
        if span is None:
            if text.startswith(before) and text.startswith(through):
                span = (_common_prefix_len(before, through), len(through))
            elif (span := _marked_span(template, messages, i, text, before)) is None:
                raise BadRecord("", f"turn {i}: {_unfound_turn(messages[i], text)}; add "
                                "{% generation %} ... {% endgeneration %} around the "
                                "assistant's output in the template, or use --train-on all")
        if span[1] > span[0]:
            spans.append(span)
    return text, spans


def _opening_prompt(template: ChatTemplate, text: str) -> str:
    """What the template renders for no messages with the generation prompt (its assistant
    header), where a conversation opens with the assistant's turn: the turn's span starts
    after it. "" when the template cannot render no messages (most read messages[0]) or
    renders something the conversation does not start with."""
    try:
        opening = template.render([], add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - the template's own error: no header to skip
        return ""
    return opening if text.startswith(opening) else ""


def _unfound_turn(message: dict[str, Any], text: str) -> str:
    """Why an assistant turn's tokens cannot be found: the template does not render its
    content as written (DeepSeek-R1's drops the reasoning before </think>, every turn's), or
    renders the turn otherwise once later turns follow."""
    content = message.get("content")
    if isinstance(content, str) and content and content not in text:
        why = ": here the reasoning before </think>" if "</think>" in content else ""
        return ("the chat template does not render the assistant's content as written (it "
                f"drops or rewrites part of it{why}), so its tokens cannot be found")
    return ("the chat template renders the assistant's turn differently once later turns "
            "follow, and its tokens cannot be found by rendering prefixes")


_MARK = "\ue000"  # a private-use character: no real content holds it


def _marked_span(template: ChatTemplate, messages: list[dict[str, Any]], i: int, text: str,
                 before: str | None) -> Span | None:
    """Assistant turn i's span in `text` when later turns change how earlier ones render
    (Qwen3 drops the thinking of turns before the last user message; Mistral moves the system
    prompt into the last user turn). Marks around its content find the content in `text`; the
    turn's own text before it (a header the generation prompt lacks) and after it (<|im_end|>,
    </s>: its closing), as the turn renders when it is the last, extend the span where `text`
    has them too (`before` None: nothing before the content, for a turn that opens the
    conversation). None when the marks do not come through the template unchanged."""
    content = messages[i].get("content")
    if not isinstance(content, str):
        return None
    marked = [*messages[:i], {**messages[i], "content": _MARK + content + _MARK},
              *messages[i + 1:]]
    rendered, last = template.render(marked), template.render(marked[:i + 1])
    if rendered.count(_MARK) != 2 or last.count(_MARK) != 2 or \
            rendered.replace(_MARK, "") != text:
        return None
    start = rendered.index(_MARK)
    end = rendered.index(_MARK, start + 1) - 1  # in `text`, without the first mark
    first, second = last.index(_MARK), last.rindex(_MARK)
    lead = last[len(before):first] if before is not None and last.startswith(before) else ""
    closing = last[second + 1:]
    if lead and text[start - len(lead):start] == lead:
        start -= len(lead)
    if text.startswith(closing, end):
        end += len(closing)
    return start, end


def overlap_mask(offsets: list[tuple[int, int]], spans: list[Span]) -> list[bool]:
    """True for each token whose character range overlaps a span (spans in order)."""
    mask, k = [False] * len(offsets), 0
    for t, (start, end) in enumerate(offsets):
        while k < len(spans) and start >= spans[k][1]:
            k += 1
        if k == len(spans):
            break
        if end > spans[k][0]:
            mask[t] = True
    return mask


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _common_prefix_len(a: str, b: str) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)
