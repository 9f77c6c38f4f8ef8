"""Chat templates a new user's model plausibly ships that do not work: a template file that is
not UTF-8 (saved by a Windows editor), and an empty template. `kdengine train --check` on
conversations refuses each in one line naming the field and the fix, exit 2, before a run
directory exists; transformers fails on the first too and renders the second as no text."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from kdengine.cli import main


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import write_chat_pair

    root = tmp_path_factory.mktemp("audit5-templates")
    teacher, student = write_chat_pair(root)
    data = root / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"What is {i} plus {i}?"},
        {"role": "assistant", "content": f"{2 * i}."}]}) + "\n" for i in range(80)))
    return {"teacher": str(teacher), "student": str(student), "data": str(data)}


def teacher_with(made: dict[str, str], root: Path, change) -> str:
    teacher = root / "teacher"
    shutil.copytree(made["teacher"], teacher)
    change(teacher)
    return str(teacher)


def check(made: dict[str, str], teacher: str, run_dir: Path,
          capsys: pytest.CaptureFixture[str]) -> str:
    code = main(["train", "--teacher", teacher, "--student", made["student"], "--data",
                 made["data"], "--seq-len", "128", "--steps", "2", "--device", "cpu",
                 "--run-dir", str(run_dir), "--check"])
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert code == 2 and out.out == "" and len(lines) == 1, out.err
    assert "Traceback" not in out.err and not run_dir.exists()
    return lines[0]


def test_a_template_file_that_is_not_utf8_is_named_with_the_fix(made, tmp_path, capsys) -> None:
    """chat_template.jinja saved in cp1252 (an é as byte 0xe9): a UnicodeDecodeError
    traceback, exit 1; now one line naming --teacher, the file and the fix."""
    teacher = teacher_with(made, tmp_path, lambda d: (d / "chat_template.jinja").write_bytes(
        "{% for m in messages %}{{ m.content }} \u00e9{% endfor %}".encode("cp1252")))
    line = check(made, teacher, tmp_path / "run", capsys)
    assert line.startswith(f"kdengine train: error: --teacher: {teacher}/chat_template.jinja "
                           "is not UTF-8 text (byte 0xe9 at offset 39): save it as UTF-8"), line


def test_an_empty_template_is_named_not_packed_into_no_rows(made, tmp_path, capsys) -> None:
    """tokenizer_config.json's chat_template "" rendered every conversation as no text, and
    the run was refused as '--data: ... has 80 examples, packed into 0 train and 0 validation
    rows ... give more data'; now the first conversation is named with the template."""
    def empty(directory: Path) -> None:
        config = json.loads((directory / "tokenizer_config.json").read_text())
        (directory / "tokenizer_config.json").write_text(json.dumps({**config,
                                                                     "chat_template": ""}))
    teacher = teacher_with(made, tmp_path, empty)
    line = check(made, teacher, tmp_path / "run", capsys)
    assert line.startswith(f"kdengine train: error: --data: {made['data']}:1: the chat "
                           "template renders it as no text"), line
    assert f"{teacher}/tokenizer_config.json chat_template" in line, line


# DeepSeek-R1's template (its distills are qwen2 and llama checkpoints): every assistant turn
# is rendered without what comes before </think>, the last one too
DEEPSEEK_R1 = (
    "{% set ns = namespace(system_prompt='') %}{%- for message in messages %}{%- if "
    "message['role'] == 'system' %}{% set ns.system_prompt = message['content'] %}{%- endif %}"
    "{%- endfor %}{{bos_token}}{{ns.system_prompt}}{%- for message in messages %}{%- if "
    "message['role'] == 'user' %}{{'<|User|>' + message['content']}}{%- endif %}{%- if "
    "message['role'] == 'assistant' and message['content'] is not none %}{% set content = "
    "message['content'] %}{% if '</think>' in content %}{% set content = "
    "content.split('</think>')[-1] %}{% endif %}{{'<|Assistant|>' + content + "
    "'<|end_of_sentence|>'}}{%- endif %}{%- endfor %}{% if add_generation_prompt %}"
    "{{'<|Assistant|><think>\\n'}}{% endif %}")


def test_a_template_that_drops_the_reasoning_is_named_for_that(tmp_path) -> None:
    """A one-turn reasoning example ("<think>...</think>answer") under DeepSeek-R1's template,
    which renders the answer alone (as transformers does): refused as 'renders the
    assistant's turn differently once later turns follow', with no later turn there; now the
    refusal says the template drops part of the content, the reasoning before </think>."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import write_chat_tokenizer
    from transformers import AutoTokenizer

    from kdengine.data.chat import load_chat_template
    from kdengine.data.encode import encode_example
    from kdengine.data.formats import BadRecord, Example
    from kdengine.tokenizer import load_tokenizer

    directory = write_chat_tokenizer(tmp_path / "r1", DEEPSEEK_R1)
    messages = [{"role": "user", "content": "2 + 2?"},
                {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\n4."}]
    template = load_chat_template(directory)
    rendered = "<|User|>2 + 2?<|Assistant|>\n\n4.<|end_of_sentence|>"
    assert template.render(messages) == rendered == \
        AutoTokenizer.from_pretrained(str(directory)).apply_chat_template(messages,
                                                                          tokenize=False)
    with pytest.raises(BadRecord) as refused:
        encode_example(Example("r1.jsonl:1", "messages", {"messages": messages}),
                       load_tokenizer(directory, "teacher"), template)
    said = str(refused.value)
    assert said.startswith("r1.jsonl:1: turn 1: the chat template does not render the "
                           "assistant's content as written (it drops or rewrites part of it: "
                           "here the reasoning before </think>)"), said
    assert "later turns" not in said and "--train-on all" in said, said


def test_a_conversation_that_opens_with_the_assistant_trains_its_words_not_the_header(
        tmp_path) -> None:
    """A greeting turn first ([assistant, user, assistant], as some chat logs start): its
    header (`<|im_start|>assistant\\n`) trained as if the assistant wrote it, where every later
    turn trains from after it; now the first turn starts where the template's generation
    prompt for no messages ends, as every other turn does."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import write_chat_tokenizer

    from kdengine.data.chat import load_chat_template
    from kdengine.data.encode import encode_example
    from kdengine.data.formats import Example
    from kdengine.tokenizer import load_tokenizer

    directory = write_chat_tokenizer(tmp_path / "chatml")
    tok = load_tokenizer(directory, "teacher")
    messages = [{"role": "assistant", "content": "Hi! How can I help?"},
                {"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4."}]
    ids, trains = encode_example(Example("c.jsonl:1", "messages", {"messages": messages}), tok,
                                 load_chat_template(directory))
    pieces, run = [], []
    for token, trained in [*zip(ids, trains, strict=True), (None, False)]:
        if trained:
            run.append(token)
        elif run:
            pieces.append(tok.decode(run))
            run = []
    assert pieces == ["Hi! How can I help?<|im_end|>\n", "4.<|im_end|>\n"]
