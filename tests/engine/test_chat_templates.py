"""Chat templates render token for token as transformers' apply_chat_template, and the
assistant turns (only) carry labels, on templates written in the styles of the model families
users distil: Llama 3, Qwen2.5, Qwen3 (thinking), Mistral, SmolLM2."""
# ruff: noqa: E501  (the templates keep the long lines their families ship)

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from kdengine.config import ConfigError
from kdengine.data.chat import load_chat_template
from kdengine.data.encode import encode_example, overlap_mask
from kdengine.data.formats import BadRecord, Example, to_example
from kdengine.tokenizer import load_tokenizer

LLAMA3 = """{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = strftime_now("%d %b %Y") %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {%- if message.role == "tool" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable and message.content is not string %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- else %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

QWEN25 = """{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

QWEN3 = """{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}
"""

MISTRAL = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.last and system_message is defined %}
            {{- '[INST] ' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}
        {%- else %}
            {{- '[INST] ' + message['content'] + '[/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token }}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

# SmolLM2's ChatML, with the {% generation %} markers TRL's SFT templates add
SMOLLM2 = """{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system
You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>
' }}{% endif %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant
' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '
' }}{% else %}{{'<|im_start|>' + message['role'] + '
' + message['content'] + '<|im_end|>' + '
'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant
' }}{% endif %}"""

CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
STYLES = {
    "llama3": (LLAMA3, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
               ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>",
                "<|end_header_id|>"]),
    "qwen2.5": (QWEN25, {"eos_token": "<|im_end|>"}, CHATML_SPECIALS),
    "qwen3": (QWEN3, {"eos_token": "<|im_end|>"}, CHATML_SPECIALS),
    "mistral": (MISTRAL, {"bos_token": "<s>", "eos_token": "</s>"}, ["<s>", "</s>"]),
    "smollm2": (SMOLLM2, {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"},
                CHATML_SPECIALS),
}

SYSTEM = {"role": "system", "content": "You are a terse geography tutor."}
TURNS = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?  "},
    {"role": "assistant", "content": "Rome, since 1871."},
]
TOOL_CALL = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": "{\"temp\": 21}"},
    {"role": "assistant", "content": "21 degrees."},
]
THINKING = [
    {"role": "user", "content": "2 + 2?"},
    {"role": "assistant", "content": "4.", "reasoning_content": "Add them."},
    {"role": "user", "content": "Times 3?"},
    {"role": "assistant", "content": "<think>\n4 * 3\n</think>\n\n12."},
]
CONVERSATIONS = {"system": [SYSTEM, *TURNS], "plain": TURNS, "one_turn": TURNS[:2]}
EXTRA = {"qwen2.5": {"tools": TOOL_CALL}, "qwen3": {"tools": TOOL_CALL, "thinking": THINKING},
         "llama3": {"tool": TOOL_CALL[:1] + [TOOL_CALL[2]] + TOOL_CALL[3:]}}
CORPUS = ("You are a terse geography tutor. What is the capital of France? Paris. Rome, since "
          "1871. The weather in Paris: 21 degrees. Add them, 2 + 2 = 4, times 3 is 12.")


def write_chat_tokenizer(directory: Path, style: str) -> Path:
    """A small byte-level BPE (merges learned on a sentence, so tokens span word pieces and
    template text) with the family's special tokens, and its template in
    tokenizer_config.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    template, specials, added = STYLES[style]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=added, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS] * 8, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps({**specials, "chat_template": template}))
    return directory


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("chat-tokenizers")
    return {style: write_chat_tokenizer(root / style, style) for style in STYLES}


def conversations_of(style: str) -> dict[str, list[dict]]:
    return {**CONVERSATIONS, **EXTRA.get(style, {})}


def _encode(directory: Path, messages: list[dict], train_on: str = "completion"):
    tok = load_tokenizer(directory, "teacher")
    template = load_chat_template(directory)
    return tok, encode_example(Example("chat.jsonl:1", "messages", {"messages": messages}), tok,
                               template, train_on)


@pytest.mark.parametrize("style", sorted(STYLES))
def test_renders_token_for_token_as_transformers(tokenizers: dict[str, Path],
                                                 style: str) -> None:
    from transformers import AutoTokenizer

    theirs = AutoTokenizer.from_pretrained(str(tokenizers[style]))
    mine = load_chat_template(tokenizers[style])
    tok = load_tokenizer(tokenizers[style], "teacher")
    for name, messages in conversations_of(style).items():
        for prompt in (False, True):
            if prompt and messages[-1]["role"] == "assistant":
                messages = messages[:-1]  # a generation prompt follows a user turn
            expected = theirs.apply_chat_template(messages, tokenize=True, return_dict=False,
                                                  add_generation_prompt=prompt)
            text = mine.render(messages, add_generation_prompt=prompt)
            assert text == theirs.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=prompt), name
            assert tok.encode(text) == expected, (style, name, prompt)


def _trained_pieces(tok, ids: list[int], trains: list[bool]) -> list[str]:
    """The decoded runs of consecutive trained tokens."""
    pieces, run = [], []
    for token, trains_here in zip(ids, trains, strict=True):
        if trains_here:
            run.append(token)
        elif run:
            pieces.append(tok._tok.decode(run, skip_special_tokens=False))
            run = []
    if run:
        pieces.append(tok._tok.decode(run, skip_special_tokens=False))
    return pieces


# what trains in CONVERSATIONS["system"] on each template: the assistant turns and the
# template's end-of-turn text, nothing of the system or user turns
EXPECTED_MASKS = {
    "llama3": ["Paris.<|eot_id|>", "Rome, since 1871.<|eot_id|>"],
    "qwen2.5": ["Paris.<|im_end|>\n", "Rome, since 1871.<|im_end|>\n"],
    "qwen3": ["Paris.<|im_end|>\n", "<think>\n\n</think>\n\nRome, since 1871.<|im_end|>\n"],
    "mistral": [" Paris.</s>", " Rome, since 1871.</s>"],
    "smollm2": ["Paris.<|im_end|>", "Rome, since 1871.<|im_end|>"],
}


@pytest.mark.parametrize("style", sorted(STYLES))
def test_only_the_assistant_turns_carry_labels(tokenizers: dict[str, Path],
                                               style: str) -> None:
    tok, (ids, trains) = _encode(tokenizers[style], CONVERSATIONS["system"])
    assert _trained_pieces(tok, ids, trains) == EXPECTED_MASKS[style]
    _, (all_ids, all_trains) = _encode(tokenizers[style], CONVERSATIONS["system"], "all")
    assert all_ids == ids and all(all_trains)


def test_qwen3_earlier_thinking_and_tool_turns_are_found(tokenizers: dict[str, Path]) -> None:
    """Qwen3 renders a turn without its thinking once a later user turn follows, so prefix
    renders alone cannot find it: the marks around its content do."""
    tok, (ids, trains) = _encode(tokenizers["qwen3"], THINKING)
    assert _trained_pieces(tok, ids, trains) == [
        "4.<|im_end|>\n", "<think>\n4 * 3\n</think>\n\n12.<|im_end|>\n"]
    tok, (ids, trains) = _encode(tokenizers["qwen3"], TOOL_CALL)
    assert _trained_pieces(tok, ids, trains) == [
        "<|im_end|>\n", "<think>\n\n</think>\n\n21 degrees.<|im_end|>\n"]


# ShareGPT records and the HF messages they mean: FastChat's human/gpt with a system turn,
# user/assistant with a record-level system (LLaMA-Factory's), and LLaMA-Factory's tool turns
SHAREGPT = [
    ({"conversations": [{"from": "system", "value": SYSTEM["content"]},
                        *({"from": {"user": "human", "assistant": "gpt"}[m["role"]],
                           "value": m["content"]} for m in TURNS)]}, [SYSTEM, *TURNS]),
    ({"system": SYSTEM["content"],
      "conversations": [{"from": m["role"], "value": m["content"]} for m in TURNS]},
     [SYSTEM, *TURNS]),
]
SHAREGPT_TOOLS = (
    {"conversations": [
        {"from": "human", "value": "Weather in Paris?"},
        {"from": "function_call",
         "value": json.dumps({"name": "weather", "arguments": {"city": "Paris"}})},
        {"from": "observation", "value": "{\"temp\": 21}"},
        {"from": "gpt", "value": "21 degrees."}]},
    TOOL_CALL)


@pytest.mark.parametrize("style", sorted(STYLES))
def test_sharegpt_turns_render_as_transformers_renders_their_messages(
        tokenizers: dict[str, Path], style: str) -> None:
    """A ShareGPT record's tokens are apply_chat_template's of the messages it means, and
    the same tokens train as in those messages."""
    from transformers import AutoTokenizer

    theirs = AutoTokenizer.from_pretrained(str(tokenizers[style]))
    tok, template = load_tokenizer(tokenizers[style], "teacher"), \
        load_chat_template(tokenizers[style])
    cases = SHAREGPT + ([SHAREGPT_TOOLS] if "tools" in EXTRA.get(style, {}) else [])
    for record, messages in cases:
        ids, trains = encode_example(to_example("chat.jsonl:1", record, {}), tok, template)
        assert ids == theirs.apply_chat_template(messages, tokenize=True, return_dict=False)
        assert trains == encode_example(Example("chat.jsonl:1", "messages",
                                                {"messages": messages}), tok, template)[1]
        assert any(trains)


def test_generation_markers_give_transformers_assistant_masks(
        tokenizers: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    theirs = AutoTokenizer.from_pretrained(str(tokenizers["smollm2"]))
    messages = CONVERSATIONS["system"]
    out = theirs.apply_chat_template(messages, tokenize=True, return_dict=True,
                                     return_assistant_tokens_mask=True)
    tok, (ids, trains) = _encode(tokenizers["smollm2"], messages)
    assert ids == out["input_ids"]
    assert [int(t) for t in trains] == out["assistant_masks"]


def test_prompt_completion_trains_the_completion_only(tokenizers: dict[str, Path]) -> None:
    directory = tokenizers["qwen2.5"]
    tok, template = load_tokenizer(directory, "teacher"), load_chat_template(directory)
    pair = Example("pairs.jsonl:3", "prompt_completion",
                   {"prompt": [SYSTEM, *TURNS[:3]], "completion": [TURNS[3]]})
    ids, trains = encode_example(pair, tok, template)
    assert _trained_pieces(tok, ids, trains) == ["Rome, since 1871.<|im_end|>\n"]
    plain = Example("pairs.jsonl:4", "prompt_completion",
                    {"prompt": "The capital of France is", "completion": " Paris."})
    ids, trains = encode_example(plain, tok, template)
    assert tok._tok.decode(ids, skip_special_tokens=False).endswith(" Paris.<|im_end|>")  # + eos
    assert _trained_pieces(tok, ids, trains)[0].endswith("Paris.<|im_end|>")
    assert not trains[0]


def test_overlap_mask_marks_every_token_touching_a_span() -> None:
    offsets = [(0, 2), (2, 5), (5, 6), (6, 9)]
    assert overlap_mask(offsets, [(3, 6)]) == [False, True, True, False]
    assert overlap_mask(offsets, []) == [False] * 4


def test_template_comes_from_the_jinja_file_before_the_config(tmp_path: Path) -> None:
    directory = write_chat_tokenizer(tmp_path / "tok", "qwen2.5")
    (directory / "chat_template.jinja").write_text("{% for m in messages %}[{{ m.content }}]"
                                                   "{% endfor %}")
    template = load_chat_template(directory)
    assert template.render(TURNS[:2]) == "[What is the capital of France?][Paris.]"


def test_named_templates_pick_default_or_the_name_given(tmp_path: Path) -> None:
    directory = tmp_path / "tok"
    write_chat_tokenizer(directory, "qwen2.5")
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config["chat_template"] = [{"name": "default", "template": "D{{ messages|length }}"},
                               {"name": "tool_use", "template": "T{{ eos_token }}"}]
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    assert load_chat_template(directory).render(TURNS) == "D4"
    assert load_chat_template(directory, "tool_use").render(TURNS) == "T<|im_end|>"
    with pytest.raises(ConfigError, match="no chat template named 'nope'"):
        load_chat_template(directory, "nope")


def test_tojson_takes_transformers_keyword_arguments(tmp_path: Path) -> None:
    directory = write_chat_tokenizer(tmp_path / "tok", "qwen2.5")
    (directory / "chat_template.jinja").write_text(
        "{{ messages[0] | tojson(indent=2, sort_keys=True) }}|{{ {'é': 1} | tojson }}")
    from transformers import AutoTokenizer

    expected = AutoTokenizer.from_pretrained(str(directory)).apply_chat_template(
        TURNS[:1], tokenize=False)
    assert load_chat_template(directory).render(TURNS[:1]) == expected
    assert '"é": 1' in expected


def test_a_template_that_raises_names_the_example(tokenizers: dict[str, Path]) -> None:
    not_alternating = [TURNS[0], TURNS[0]]
    with pytest.raises(BadRecord, match=r"^chat.jsonl:1: the chat template cannot render it "
                       r"\(TemplateError: After the optional system message"):
        _encode(tokenizers["mistral"], not_alternating)


def test_the_sandbox_keeps_templates_out_of_python_internals(tmp_path: Path) -> None:
    directory = write_chat_tokenizer(tmp_path / "tok", "qwen2.5")
    (directory / "chat_template.jinja").write_text(
        "{% set ns = namespace() %}{% set ns.__class__ = 1 %}")
    with pytest.raises(Exception, match="underscore"):
        load_chat_template(directory).render(TURNS)


def test_conversations_without_a_template_are_a_clear_error(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import write_byte_tokenizer

    write_byte_tokenizer(tmp_path / "tok")
    assert load_chat_template(tmp_path / "tok") is None
    with pytest.raises(ConfigError, match="no chat template"):
        encode_example(Example("chat.jsonl:1", "messages", {"messages": TURNS}),
                       load_tokenizer(tmp_path / "tok", "teacher"), None)


# a conversation that opens with the assistant's greeting: what trains, as in EXPECTED_MASKS
# (Mistral's template refuses it, as it refuses any order but user/assistant)
GREETING = [{"role": "assistant", "content": "Hi! How can I help?"},
            {"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4."}]
GREETING_MASKS = {
    "llama3": ["Hi! How can I help?<|eot_id|>", "4.<|eot_id|>"],
    "qwen2.5": ["Hi! How can I help?<|im_end|>\n", "4.<|im_end|>\n"],
    "qwen3": ["Hi! How can I help?<|im_end|>\n", "<think>\n\n</think>\n\n4.<|im_end|>\n"],
    "smollm2": ["Hi! How can I help?<|im_end|>", "4.<|im_end|>"],
}


@pytest.mark.parametrize("style", sorted(GREETING_MASKS))
def test_an_opening_assistant_turn_trains_its_own_words_only(tokenizers: dict[str, Path],
                                                             style: str) -> None:
    """The first turn the assistant's: it trained from the text's first character, so Llama
    3's system block (with today's date) and Qwen's default system prompt trained with it as
    if the assistant wrote them; now its span is its content and closing, as a later turn's."""
    from transformers import AutoTokenizer

    tok, (ids, trains) = _encode(tokenizers[style], GREETING)
    assert ids == AutoTokenizer.from_pretrained(str(tokenizers[style])).apply_chat_template(
        GREETING, tokenize=True, return_dict=False)
    assert _trained_pieces(tok, ids, trains) == GREETING_MASKS[style]
