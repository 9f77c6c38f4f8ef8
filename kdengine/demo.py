"""The embedded demo: no network, no GPU.

A 4-layer byte-level teacher is trained once on the Python standard library's own sources and
cached in the user's cache dir (HF layout); each demo run then distils it into a fresh 2-layer
student. The teacher is a real model that knows Python's byte statistics, so the KD signal is real.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from kdengine.cache_dir import cache_root
from kdengine.data import BatchSampler, ByteTokenizer, demo_documents, split_documents
from kdengine.models import Decoder, DecoderConfig, load_decoder, save_decoder

TEACHER = DecoderConfig(vocab_size=257, hidden_size=128, intermediate_size=384,
                        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                        max_position_embeddings=512, tie_word_embeddings=True)
STUDENT = DecoderConfig(vocab_size=257, hidden_size=64, intermediate_size=192,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        max_position_embeddings=512, tie_word_embeddings=True)
TEACHER_STEPS, TEACHER_BATCH, TEACHER_SEQ, TEACHER_LR, TEACHER_SEED = 400, 16, 128, 3e-3, 1234


def _recipe_id() -> str:
    recipe = json.dumps([TEACHER.to_dict(), TEACHER_STEPS, TEACHER_BATCH, TEACHER_SEQ,
                         TEACHER_LR, TEACHER_SEED], sort_keys=True)
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def teacher_path(say: Callable[[str], None] = print) -> Path:
    """The cached demo teacher, trained first if this machine has none yet. Two engines that
    start at once (Start twice, two `kdengine train --demo`) train it once: the second waits
    for the first and uses its teacher (a cancel interrupts the wait as it does the training)."""
    path = cache_root() / "demo" / f"teacher-{_recipe_id()}"
    if (path / "model.safetensors").exists():
        say(f"demo teacher: cached at {path}")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with _training_lock(path.with_name(f".{path.name}.lock"), say) as progress:
        if (path / "model.safetensors").exists():  # the engine it waited for trained it
            say(f"demo teacher: trained by another engine meanwhile, cached at {path}")
            return path
        tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        model = train_teacher(say, progress)
        save_decoder(model, tmp)
        try:
            tmp.rename(path)  # no lock (not POSIX): another process may have won the race
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return path


# how often an engine waiting for another's teacher looks at its progress
WAIT_POLL_S = 2.0


@contextmanager
def _training_lock(file: Path, say: Callable[[str], None]) -> Iterator[Callable[[str], None]]:
    """Held while this process trains the teacher (the kernel drops it however the process
    ends); a second process waits for it, and says the training's progress meanwhile (the
    holder writes its step lines into the lock file, through the callable this yields)."""
    try:
        import fcntl
    except ModuleNotFoundError:  # pragma: no cover - not POSIX: both train, one rename wins
        yield lambda line: None
        return
    with open(file, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("demo teacher: another engine on this machine is training it; waiting for it "
                "(then this run uses it)")
            done = threading.Event()
            watcher = threading.Thread(target=_say_progress, args=(file, say, done), daemon=True)
            watcher.start()
            try:
                fcntl.flock(handle, fcntl.LOCK_EX)  # a cancel's signal interrupts it
            finally:
                done.set()
                watcher.join()
        handle.truncate(0)

        def progress(line: str) -> None:
            handle.write(line + "\n")
            handle.flush()

        yield progress


def _say_progress(file: Path, say: Callable[[str], None], done: threading.Event) -> None:
    """Until `done`: each new step line the training engine writes into `file`, said as the
    other engine's (a minute of training is not a minute of silence)."""
    shown = ""
    while not done.wait(WAIT_POLL_S):
        try:
            lines = file.read_text().splitlines()
        except OSError:
            continue
        if lines and lines[-1] != shown:
            shown = lines[-1]
            say(f"demo teacher: another engine's training is at {shown}")


def train_teacher(say: Callable[[str], None] = print,
                  progress: Callable[[str], None] = lambda line: None) -> Decoder:
    """The demo teacher, trained here; each step line goes to `say` and, without its prefix,
    to `progress` (what an engine waiting for this one shows)."""
    say(f"demo teacher: training once ({TEACHER_STEPS} steps on the Python stdlib; cached "
        "afterwards)")
    torch.manual_seed(TEACHER_SEED)
    tok = ByteTokenizer()
    splits = split_documents(demo_documents(), tok.encode_tensor, tok.eos_id, 0.05, TEACHER_SEQ)
    sampler = BatchSampler(splits.train, TEACHER_BATCH, TEACHER_SEQ, TEACHER_SEED)
    model = Decoder(TEACHER)
    model.init_weights(torch.Generator().manual_seed(TEACHER_SEED))
    opt = torch.optim.AdamW(model.parameters(), lr=TEACHER_LR, betas=(0.9, 0.95))
    t0 = time.monotonic()
    for step in range(1, TEACHER_STEPS + 1):
        lr = TEACHER_LR * min(1.0, step / 30) * (0.1 + 0.9 * (1 - step / TEACHER_STEPS))
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = sampler.batch(step)
        loss = F.cross_entropy(model.logits(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == TEACHER_STEPS:
            line = (f"step {step}/{TEACHER_STEPS} ce={loss.item():.4f} "
                    f"({time.monotonic() - t0:.0f}s)")
            say(f"demo teacher: {line}")
            progress(line)
    return model.eval()


def load_teacher_model() -> Decoder:
    return load_decoder(teacher_path())


def fresh_student(seed: int) -> Decoder:
    model = Decoder(STUDENT)
    model.init_weights(torch.Generator().manual_seed(seed + 1))
    return model
