"""What a user reads when the engine refuses or judges, where an audit found the words wrong: a
cache job asked for a batch size it has no flag for, a KD temperature of 0 meant as greedy
sampling, the demo preset's max_new_tokens named as if the user gave it, an on-policy run told to
train on every token, a stale cache with no word that it may go, a skip that would skip every
file, and a verdict that said PASS on `delta -0.0000`."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from kdengine.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import one_line_in_process as one_line  # noqa: E402

RAISES_ON_BAD = ("{% for m in messages %}{% if m.content == 'bad' %}"
                 "{{ raise_exception('Conversation roles must alternate') }}{% endif %}"
                 "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny teacher and student with a ChatML template, and small data sets."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import write_chat_pair, write_chat_tokenizer, write_tiny_model

    root = tmp_path_factory.mktemp("audit6")
    teacher, student = write_chat_pair(root)
    strict = write_chat_tokenizer(write_tiny_model(root / "strict", hidden=16, layers=1,
                                                   seed=3), RAISES_ON_BAD)
    four = root / "four.jsonl"  # 4 pairs: 2 train rows and 1 held out at seq_len 64
    four.write_text("".join(json.dumps({"prompt": f"Q: what is {i} times 3?\nA:",
                                        "completion": f" {i * 3}."}) + "\n" for i in range(4)))
    forty = root / "forty.jsonl"
    forty.write_text("".join(json.dumps({"prompt": f"Q: what is {i} times 3?\nA:",
                                         "completion": f" {i * 3}."}) + "\n"
                             for i in range(40)))
    users = root / "users.jsonl"  # prompts only: user turns, no answer
    users.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"hi {i}"}]})
                             + "\n" for i in range(40)))
    return {"root": root, "teacher": teacher, "student": student, "strict": strict,
            "four": four, "forty": forty, "users": users}


def cache_args(made: dict[str, Path], data: Path, out: Path, *extra: str) -> list[str]:
    return ["cache-teacher", "--teacher", str(made["teacher"]), "--data", str(data),
            "--seq-len", "64", "--top-k", "8", "--device", "cpu", "--out", str(out), *extra]


def check_train(made: dict[str, Path], data: Path, *extra: str,
                teacher: str = "teacher") -> list[str]:
    return ["train", "--teacher", str(made[teacher]), "--student", str(made["student"]),
            "--data", str(data), "--seq-len", "64", "--device", "cpu", "--check", *extra]


def test_cache_teacher_caches_data_smaller_than_a_train_batch(made, tmp_path, capsys) -> None:
    """4 pairs, 2 train rows: cache-teacher refused them with `batch_size 4 needs 4 train rows
    ... or a smaller batch_size`, a flag it has not (a cache job scores every row, it batches
    nothing by batch_size). Now the cache is written, and a run from it with --batch-size 2
    passes its check; the run's own batch_size is checked by the run."""
    out = tmp_path / "cache"
    assert main(cache_args(made, made["four"], out)) == 0, capsys.readouterr().err
    assert json.loads((out / "manifest.json").read_text())["complete"] is True
    capsys.readouterr()
    run = ["train", "--teacher-cache", str(out), "--student", str(made["student"]), "--data",
           str(made["four"]), "--seq-len", "64", "--device", "cpu", "--steps", "2",
           "--run-dir", str(tmp_path / "run"), "--check"]
    assert main([*run, "--batch-size", "2"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    line = one_line(capsys, main(run), "train")  # the default batch_size 4: the run's word
    # the fix names the flag (before: "or a smaller batch_size", not what one types)
    assert "batch_size 4 needs 4 train rows" in line and "or a smaller --batch-size)" in line


def test_a_kd_temperature_of_0_points_to_the_sampling_temperature(capsys) -> None:
    """TRL's `temperature` is the sampling one: `--temperature 0` (greedy) was refused as
    `must be a number > 0` alone; the line now says what it is and where greedy lives."""
    line = one_line(capsys, main(["train", "--demo", "--temperature", "0", "--check"]), "train")
    assert line == ("kdengine train: error: --temperature: must be a number > 0 and <= 100 "
                    "(got 0): it is the KD loss's softmax temperature; for greedy sampling of "
                    "completions use --gen-temperature 0")
    line = one_line(capsys, main(["train", "--demo", "--temperature", "200", "--check"]),
                    "train")
    assert line.endswith("(got 200)")  # too high: no word of sampling


def test_the_demo_presets_max_new_tokens_is_named_as_the_presets(capsys) -> None:
    """`--demo --seq-len 64 --lmbda 1` was told `--max-new-tokens: must be below seq_len (64)
    ... lower it`, a flag the user never gave; the line now says the demo preset set it, and
    the fix it names passes."""
    argv = ["train", "--demo", "--seq-len", "64", "--lmbda", "1", "--check"]
    line = one_line(capsys, main(argv), "train")
    assert line == ("kdengine train: error: --max-new-tokens: the --demo preset's 64 must be "
                    "below --seq-len 64 so a prompt keeps a token: give --max-new-tokens 32 (or "
                    "any value below 64), or a --seq-len above 64")
    assert main([*argv, "--max-new-tokens", "32"]) == 0
    capsys.readouterr()
    line = one_line(capsys, main([*argv, "--max-new-tokens", "64"]), "train")
    assert "preset" not in line  # given by the user: the plain refusal
    assert "must be below --seq-len (64) so a prompt keeps a token (got 64)" in line


def test_prompts_only_data_gets_a_fix_an_on_policy_run_can_use(made, capsys) -> None:
    """User turns only, on-policy: the refusal's fix was `--train-on all`, which on-policy then
    refuses (`--lmbda: ... every token of them trains`). An on-policy run now hears what data
    it needs; an off-policy one still hears --train-on all."""
    on_policy = check_train(made, made["users"], "--lmbda", "1", "--max-new-tokens", "16")
    line = one_line(capsys, main(on_policy), "train")
    assert f"--data: {made['users']}: the " in line and "rows hold no trained tokens" in line
    assert "--train-on all" not in line
    assert line.endswith("data whose examples end with an answer (conversations whose last "
                         "turn is the assistant's, or prompt/completion pairs): an on-policy "
                         "run samples its own answer to what comes before it"), line
    line = one_line(capsys, main(check_train(made, made["users"])), "train")
    assert line.endswith("or --train-on all")


def test_an_out_holding_another_cache_says_it_may_be_removed(made, tmp_path, capsys) -> None:
    """`--out` with another (or a stale) teacher cache said only `pick another --out`; it now
    names the directory to remove, and after removing it the same command goes. A directory
    that is no cache is not offered for removal."""
    out = tmp_path / "cache"
    assert main(cache_args(made, made["forty"], out)) == 0
    capsys.readouterr()
    other = cache_args(made, made["forty"], out, "--check")
    other[other.index("--top-k") + 1] = "4"
    line = one_line(capsys, main(other), "cache-teacher")
    assert line == (f"kdengine cache-teacher: error: --out: {out} holds another teacher cache "
                    f"(its k differ): pick another --out, or remove {out} (that cache) and run "
                    "the same command again")
    manifest = out / "manifest.json"  # a cache of an older kdengine's format
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()),
                                    "format": "kdengine-teacher-cache-0"}))
    line = one_line(capsys, main(other), "cache-teacher")
    assert line.endswith(f"{manifest} is not a kdengine-teacher-cache-1 manifest (it is "
                         f"kdengine-teacher-cache-0, from another kdengine version: remove "
                         f"{out} and run the same command again, or pick another --out)"), line
    shutil.rmtree(out)
    assert main(other) == 0
    capsys.readouterr()
    stranger = tmp_path / "mine"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine\n")
    line = one_line(capsys, main(cache_args(made, made["forty"], stranger, "--check")),
                    "cache-teacher")
    assert "remove" not in line and line.endswith("is not a teacher cache: pick another --out")


def chats(path: Path, first: str) -> Path:
    path.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": first if i == 0 else f"hi {i}"},
        {"role": "assistant", "content": f"hello {i}"}]}) + "\n" for i in range(30)))
    return path


def test_skipping_bad_files_is_offered_only_where_it_leaves_a_file(made, tmp_path,
                                                                 capsys) -> None:
    """A chat template that raises on every record: the refusal ended `(skip bad files with
    --on-bad-file skip)`, and skipping then skipped every file (`holds no examples`). Now the
    suffix comes only where another file renders, and there the skip trains."""
    everywhere = tmp_path / "everywhere"  # a model whose template raises on every record
    shutil.copytree(made["strict"], everywhere)
    config = json.loads((everywhere / "tokenizer_config.json").read_text())
    (everywhere / "tokenizer_config.json").write_text(json.dumps(
        {**config, "chat_template": "{{ raise_exception('Conversation roles must alternate') }}"}))
    made = {**made, "everywhere": everywhere}
    always = tmp_path / "always"
    always.mkdir()
    for data in (tmp_path / "one.jsonl", always / "a.jsonl", always / "b.jsonl"):
        chats(data, "hi")
    for data in (tmp_path / "one.jsonl", always):  # one file, or every file's records raise
        line = one_line(capsys, main(check_train(made, data, teacher="everywhere")), "train")
        assert "the chat template cannot render it (TemplateError: Conversation roles must " \
               "alternate)" in line and "--on-bad-file" not in line, line
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    chats(mixed / "a.jsonl", "bad")
    chats(mixed / "b.jsonl", "hi")  # this template renders b's records
    line = one_line(capsys, main(check_train(made, mixed, teacher="strict")), "train")
    assert line.endswith("(skip bad files with --on-bad-file skip)"), line
    assert main(check_train(made, mixed, "--on-bad-file", "skip", teacher="strict")) == 0


def test_a_verdict_by_less_than_the_printed_digits_prints_enough_of_them(tmp_path) -> None:
    """val_loss 1.79440 -> 1.79437 printed `1.7944 (step 0) -> 1.7944 (step 10), delta -0.0000`
    under PASS; now the losses get the digits that tell them apart and the delta reads as a
    number below zero. The dashboard's verdict panel prints the same texts."""
    from kdengine.events import EventWriter
    from kdengine.verdict import verdict_for_run

    with EventWriter(tmp_path) as writer:
        writer.emit("eval", step=0, val_loss=1.79440)
        writer.emit("eval", step=10, val_loss=1.79437)
        writer.emit("run_finished", status="completed", exit_code=0, steps=10)
    verdict = verdict_for_run(str(tmp_path))
    assert verdict.status == "pass"
    assert verdict.summary().startswith("F-DISTILL-SMOKE-001 PASS: val loss 1.79440 (step 0) "
                                        "-> 1.79437 (step 10), delta -3.00e-05. ")
    from kdengine.verdict import loss_texts

    assert loss_texts(2.0, 2.0) == ("2.0000", "2.0000", "+0.0000")  # FAIL: equal, and says so
    assert loss_texts(1.7944, 1.5) == ("1.7944", "1.5000", "-0.2944")  # as before


def test_getting_started_says_what_the_run_directory_check_does(tmp_path, capsys) -> None:
    """docs/getting-started.md named only 'a read-only parent', while the check makes and
    removes a hidden directory and so refuses any place that takes none (/proc, a full disk).
    The page now says both; what it says is what `--check` does."""
    import re

    doc = (Path(__file__).resolve().parents[2] / "docs" / "getting-started.md").read_text()
    text = " ".join(doc.split())
    assert "takes no new directory, such as `/proc`" in text
    assert re.search(r"makes a hidden directory \(`\.kdengine-check-\*`\) in the nearest "
                     r"existing parent and removes it at once", text)
    line = one_line(capsys, main(["train", "--demo", "--check", "--run-dir", "/proc/nope"]),
                    "train")
    assert "/proc/nope cannot be created" in line  # (root: "/proc takes no new directory")
    parent = tmp_path / "parent"
    parent.mkdir()
    assert main(["train", "--demo", "--check", "--run-dir", str(parent / "run")]) == 0
    assert list(parent.iterdir()) == []  # the hidden directory made and removed
