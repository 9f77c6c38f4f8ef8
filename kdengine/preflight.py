"""One validation of a run's inputs, before any run directory exists: what the run would refuse
and can be known without loading weights. `kdengine train` and `kdengine train --check` call it
(so the dashboard's pre-start check and the remote check stage, which run `--check`, do too);
the engine's loading code applies the same rules again to what it loads.

Checked: the sources (demo, local directory, hub cache), each model's config.json (family and
features, as `config_from_hf` reads it), its weight files (safetensors, every shard an index
names), tokenizer.json present and readable, one tokenizer for teacher and student, vocab sizes
(student <= teacher, tokenizer ids inside the vocab), the device, the engine's cache
directory (KDENGINE_CACHE: one the run can make and write into), and the data: every file
readable, UTF-8, every JSONL line parsed, and enough tokens for one training batch and one
validation window (counted with the run's tokenizer and split rule, stopping once both sides
have enough; one huge file is counted on a prefix; data the run's text cache already holds
with the same key is counted from the entry, no file read). Not checked here (it needs the
weights or a download): tensor names, shapes and dtypes against config.json, a hub model that
is not in the local cache yet, and the document split of pre-tokenized shards (it needs a
scan; their largest token id is checked against the vocab: a vectorized max over the mapped
files)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from kdengine.config import (
    DEMO_DATA,
    FIELDS_BY_NAME,
    ConfigError,
    RunConfig,
    student_compile_from_env,
    student_placement_from_env,
    teacher_compile_from_env,
)
from kdengine.model_facts import (
    DEMO_VOCAB,
    DemoByteTokenizer,
    ModelFacts,
    check_seq_len_fits,
    position_limit,
)
from kdengine.sources import check_sources


@dataclass
class Preflight:
    """The facts a passed preflight found; `unchecked` says what it could not look at here."""

    teacher: ModelFacts
    student: ModelFacts
    device: str
    train_tokens: int | None = None  # at least this many: counting stops once there are enough
    val_tokens: int | None = None
    unchecked: list[str] = field(default_factory=list)
    # GPUs the run may spread over (device auto or cuda): with several, a launcher starts it
    # under torchrun (kdtui.launch.base.engine_launcher)
    cuda_devices: int = 0
    # example data's token store, by content (kdengine.data.store): a --resume compares it with
    # its checkpoint's data position before any model is loaded
    data_content: str | None = None
    # the tokenizer the run's data is read with (the teacher's): a --resume on raw text
    # tokenizes the data with it to compare it with its checkpoint's (kdengine.resume)
    tokenizer: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        facts = asdict(replace(self, tokenizer=None))
        del facts["tokenizer"]
        return facts


NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")  # a folder per GPU the driver sees (Linux)


def cuda_devices_here(spec: str, driver: Path = NVIDIA_GPUS) -> int:
    """The CUDA devices a run on `spec` may spread over: every visible one for auto or cuda,
    none for a named device (cuda:1) or the CPU. torch is asked only where the driver lists
    several GPUs (it honours CUDA_VISIBLE_DEVICES), so a check on a machine with one GPU or
    none does not wait for torch's import."""
    if spec not in ("auto", "cuda"):
        return 0
    try:
        listed = sum(1 for _ in driver.iterdir())
    except OSError:
        return 0
    if listed < 2:
        return listed
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# The engine's on/off variables (docs/models.md), each read as `!= "0"` or `== "1"` where it
# acts: any other value (true, off, yes) would silently mean one or the other.
SWITCHES = {
    "KDENGINE_KD_KERNEL": ("the KD chunk math through torch.compile",
                           "the Triton kernels, the default"),
    "KDENGINE_COMPILE": ("the loss's chunk math eager", "compiled on CUDA, the default"),
    "KDENGINE_SYNC_CHECKPOINTS": ("checkpoints written in the background, the default",
                                  "written inside the step"),
}


def check_switches() -> None:
    """Refuse an on/off variable of SWITCHES set to anything but 0 or 1 (empty is unset)."""
    for name, (off, on) in SWITCHES.items():
        value = os.environ.get(name, "")
        if value not in ("", "0", "1"):
            raise ConfigError(name, f"is {value!r}: set it to 0 ({off}) or 1 ({on}), "
                              "or unset it")


def check_engine_environment() -> None:
    """Refuse a malformed value of any of the engine's KDENGINE_ variables that choose how it
    runs; `kdengine train` and `kdengine cache-teacher` both check them before writing."""
    teacher_compile_from_env()  # KDENGINE_TEACHER_COMPILE, if set, names a compile there is
    student_compile_from_env()  # as KDENGINE_STUDENT_COMPILE does
    student_placement_from_env()  # and KDENGINE_STUDENT_PLACEMENT a placement
    check_switches()  # KDENGINE_KD_KERNEL, KDENGINE_COMPILE, KDENGINE_SYNC_CHECKPOINTS: 0 or 1


def check_run_inputs(config: RunConfig) -> Preflight:
    """Refuse (ConfigError naming the field and the fix) every input the run would refuse that
    can be known without loading weights; return what was found."""
    unchecked: list[str] = []
    check_cache_root()  # the demo teacher, compiled artifacts and tokenized data live there
    if config.teacher_cache:  # the cache stands for the teacher (kdengine.teacher.checks)
        from kdengine.teacher.checks import cached_teacher_facts

        dirs, teacher, teacher_tok, cache_template = cached_teacher_facts(config)
    else:
        dirs = check_sources(config)
        teacher, teacher_tok = _check_model(config.teacher, "teacher", dirs.get("teacher"),
                                            unchecked)
    student, student_tok = _check_model(config.student, "student", dirs.get("student"),
                                        unchecked)
    if teacher_tok is not None and student_tok is not None:
        from kdengine.tokenizer import check_same_tokenizer

        check_same_tokenizer(teacher_tok, student_tok)
    for model in (teacher, student):  # a cache's teacher: its writer checked seq_len
        if model.directory and model.model_type != "cache":
            check_seq_len_fits(config.seq_len, model.role, model.max_positions,
                               str(Path(model.directory) / "config.json"))
    tokenizer = teacher_tok if teacher_tok is not None else student_tok
    if tokenizer is not None:
        if teacher.vocab_size is not None and student.vocab_size is not None:
            check_vocab(teacher.vocab_size, student.vocab_size, tokenizer)
        else:
            for model in (teacher, student):
                if model.vocab_size is not None:
                    check_tokenizer_fits(tokenizer, model.vocab_size, model.role)
    device = check_device(config.device)
    check_engine_environment()
    check_torchrun_config(config.batch_size, config.dtype)  # WORLD_SIZE > 1: splits, dtype
    for name in ("teacher_dtype", "student_matmuls"):
        if getattr(config, name) == "float8":
            require_fp8(name, _resolved_device(device))
    facts = Preflight(teacher, student, device, unchecked=unchecked,
                      cuda_devices=cuda_devices_here(device))
    teacher_dir = Path(teacher.directory) if teacher.directory else None
    if config.teacher_cache:
        teacher_dir = cache_template
    found: dict[str, str] = {}
    facts.train_tokens, facts.val_tokens = check_data(config, tokenizer, unchecked,
                                                      teacher_dir, teacher_tok, found)
    facts.data_content = found.get("content")
    facts.tokenizer = tokenizer
    if config.teacher_cache:
        from kdengine.teacher.checks import check_cache_fits

        check_cache_fits(config, teacher_tok, teacher_dir, student.vocab_size)
    return facts


# Options only example data (conversations, prompt/completion, datasets) reads, and why raw text
# (the packed document stream: text files, .bin shards, the demo's) has no use for them
EXAMPLE_DATA_OPTIONS = {
    "train_on": "raw text trains on every token (only conversations and prompt/completion data "
                "have tokens that do not)",
    "on_long": "raw text is cut into seq_len windows, so no example is longer than seq_len",
    "data_split": "raw text has no splits (only a saved DatasetDict, a hub dataset or a folder "
                  "of example files named for their split has)",
    "data_fields": "raw text files have no columns to map (only JSONL, JSON, Parquet and Arrow "
                   "records have)",
}


def unused_data_option(config: RunConfig) -> ConfigError | None:
    """The first option of example data given (not its default) for raw text, which would take
    it and ignore it, as a refusal naming the fix; None when the data is example data or none
    is given. A new run's rule (RunConfig.unused_value's, for the data's kind): a --resume
    continues as it started, and a run from a teacher cache takes the options the cache was
    written with (kdengine.teacher.checks requires them equal)."""
    given = [n for n in EXAMPLE_DATA_OPTIONS if getattr(config, n) != FIELDS_BY_NAME[n].default]
    if not given or config.teacher_cache:
        return None
    from kdengine.data.formats import is_example_data, parse_fields

    if is_example_data(config.data, parse_fields(config.data_fields)):
        return None
    name = given[0]
    default = FIELDS_BY_NAME[name].default
    fix = f"leave it at its default ({default})" if default else "leave it out"
    return ConfigError(name, f"{EXAMPLE_DATA_OPTIONS[name]}: {fix}")


def batch_split_refusal(batch_size: int, world_size: int) -> ConfigError | None:
    """The error for a global batch that `world_size` ranks cannot split by rows (None if they
    can), with both fixes: another batch size, or a rank count that divides it (a resume at
    another world size keeps its batch)."""
    if world_size <= 1 or batch_size % world_size == 0:
        return None
    fit = world_size * max(batch_size // world_size, 1)
    ranks = [n for n in range(1, max(8, world_size) + 1) if batch_size % n == 0]
    return ConfigError("batch_size", f"{batch_size} is the global batch, split over "
                       f"{world_size} ranks by rows: it must be a multiple of {world_size} "
                       f"(e.g. {fit}), or start {', '.join(map(str, ranks[:-1]))}"
                       f"{' or ' if len(ranks) > 1 else ''}{ranks[-1]} ranks "
                       "(torchrun --nproc-per-node)")


def check_torchrun_config(batch_size: int, dtype: str,
                          env: dict[str, str] | None = None) -> None:
    """What a run under torchrun (WORLD_SIZE > 1) refuses that the config alone shows, for the
    preflight to refuse before a run directory exists or a resumed run is touched (the trainer
    refuses them again, after both models loaded)."""
    raw = (env if env is not None else os.environ).get("WORLD_SIZE", "1")
    world_size = int(raw) if raw.strip().isdigit() else 1  # as torchrun_world_size reads it
    refusal = batch_split_refusal(batch_size, world_size)
    if refusal is not None:
        raise refusal
    if world_size > 1 and dtype == "float16":
        raise ConfigError("dtype", "float16 needs loss scaling, which kdengine does not do "
                          "across torchrun ranks yet: use --dtype bfloat16 (or float32)")


def check_run_dir(run_dir: Path, field: str, fix: str) -> None:
    """The run directory is one the run can make and write into, found without leaving
    anything: it is a directory already, or its nearest existing ancestor is one, and a
    directory can be made in it (one is made and removed: access() says yes to root where the
    filesystem refuses, as /proc does). Else ConfigError(field, ...) with `fix`, the change that
    mends it (a file on the path or a read-only parent would otherwise surface as the real
    run's mkdir traceback)."""
    path = Path(run_dir)
    try:
        # nearest existing ancestor (lexists: a dangling symlink on the path is found too)
        existing = path
        while not os.path.lexists(existing) and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            what = "a broken symlink" if existing.is_symlink() else "a file"
            where = "" if existing == path else f" (on the path to {path})"
            raise ConfigError(field, f"{existing} is {what}, not a directory{where}; {fix}")
        if not os.access(existing, os.W_OK | os.X_OK):
            why = (f"{path} is not writable" if existing == path else
                   f"{path} cannot be created: {existing} is not writable")
            raise ConfigError(field, f"{why}; {fix}")
        _try_making_a_directory(existing, path, field, fix)
    except OSError as exc:  # a parent that cannot be looked into
        raise ConfigError(field, f"{path} cannot be checked: {exc.strerror} "
                          f"({exc.filename}); {fix}") from None


def _try_making_a_directory(existing: Path, path: Path, field: str, fix: str) -> None:
    """Make and remove a hidden directory in `existing`; ConfigError naming `field` if the
    filesystem refuses it (read-only, /proc, full)."""
    import tempfile

    try:
        probe = tempfile.mkdtemp(prefix=".kdengine-check-", dir=existing)
    except OSError as exc:
        what = (f"{path} cannot be written" if existing == path else
                f"{path} cannot be created")
        raise ConfigError(field, f"{what}: {existing} takes no new directory "
                          f"({exc.strerror or exc}); {full_disk_fix(existing, exc, field, fix)}"
                          ) from None
    os.rmdir(probe)


def full_disk_fix(path: Path, exc: OSError, field: str, fix: str) -> str:
    """`fix`, or for a full file system (ENOSPC, EDQUOT) what is full there, its inodes or its
    bytes, and that freeing some mends it (a --resume can only continue where it is; another
    directory is the other way for a new run)."""
    import errno

    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return fix
    from kdengine.diskspace import free_bytes, human

    path = Path(path).absolute()
    while not path.exists() and path != path.parent:  # (a refused run's directory is gone)
        path = path.parent
    try:
        found = os.statvfs(path)
        free = free_bytes(path)
    except OSError:
        return fix
    if exc.errno == errno.EDQUOT:
        what = f"your disk quota on {path} is used up: free some of it"
    elif found.f_files and found.f_favail == 0:
        what = (f"the file system of {path} has no free inodes ({found.f_files} in all, all "
                f"used; {human(free)} free): delete files there (df -i shows it)")
    else:
        what = f"the file system of {path} is full ({human(free)} free): free space there"
    return what if field == "resume" else f"{what}, or {fix}"


def check_cache_root() -> Path:
    """The engine's cache directory (kdengine.cache_dir: KDENGINE_CACHE, else the user's cache
    dir) is one the run can make and write into, as check_run_dir finds it; ConfigError naming
    KDENGINE_CACHE otherwise (a file there would fail the run only once it first writes: the
    demo teacher's save after its training, the data's token cache, a teacher cache)."""
    from kdengine.cache_dir import CACHE_ENV, cache_root

    root = cache_root()
    check_run_dir(root, CACHE_ENV, f"set {CACHE_ENV} to a directory you can write")
    return root


def run_dir_refusal(run_dir: Path, field: str, fix: str, exc: OSError,
                    made: bool = False) -> ConfigError:
    """The one-line error for a run directory that could not be made or written after
    check_run_dir passed it (the path changed in between, or its disk had room for the check
    but not the run's files); `made`: this command made the directory (and will remove it)."""
    where = f" ({exc.filename})" if exc.filename and Path(exc.filename) != Path(run_dir) else ""
    what = "write into" if Path(run_dir).is_dir() and not made else "create"
    return ConfigError(field, f"cannot {what} {run_dir}: {exc.strerror or exc}{where}; "
                       f"{full_disk_fix(Path(run_dir), exc, field, fix)}")


def _check_model(spec: str, name: str, directory: Path | None,
                 unchecked: list[str]) -> tuple[ModelFacts, Any]:
    """(facts, tokenizer or None) of one model: its config, weight files and tokenizer."""
    facts = ModelFacts(name, spec)
    if spec.startswith("demo://"):
        facts.model_type, facts.vocab_size = "demo", DEMO_VOCAB
        return facts, DemoByteTokenizer()
    if directory is None:
        unchecked.append(f"{name}: {spec} is downloaded by the run; its config, weights and "
                         "tokenizer are checked when it loads")
        return facts, None
    from kdengine.models.hf_layout import (
        check_weight_headers,
        config_from_hf,
        read_hf_config,
        weight_files,
    )
    from kdengine.tokenizer import load_tokenizer

    facts.directory = str(directory)
    try:
        hf = read_hf_config(directory)
        decoder = config_from_hf(hf, str(directory / "config.json"))
        files = weight_files(directory)
    except (FileNotFoundError, ValueError) as exc:  # UnsupportedArchitecture is a ValueError
        raise ConfigError(name, f"{exc}") from None
    from kdengine.checkpoint_files import safetensors_damage

    for file in files:  # a copy or download cut short: its header says how long it must be
        damage = safetensors_damage(file)
        if damage:
            raise ConfigError(name, f"{directory}/{damage}: copy or download it again")
    try:  # the tensors config.json implies, from the headers (no weights read)
        check_weight_headers(directory, decoder, files)
    except ValueError as exc:
        raise ConfigError(name, f"{exc}") from None
    facts.model_type, facts.vocab_size = decoder.model_type, decoder.vocab_size
    facts.max_positions = position_limit(hf)
    facts.weight_files = [f.name for f in files]
    return facts, load_tokenizer(directory, name)


def check_vocab(teacher_vocab: int, student_vocab: int, tokenizer: Any) -> None:
    """The student's vocab fits in the teacher's, and the tokenizer's ids in the student's."""
    if student_vocab > teacher_vocab:
        raise ConfigError("student", f"vocab ({student_vocab}) is larger than the teacher's "
                          f"({teacher_vocab}): the teacher has no logits for ids "
                          f"{teacher_vocab}..{student_vocab - 1}; pick a student of the "
                          "teacher's family")
    check_tokenizer_fits(tokenizer, student_vocab, "student")


def check_tokenizer_fits(tokenizer: Any, vocab: int, name: str) -> None:
    top = getattr(tokenizer, "max_id", tokenizer.vocab_size - 1)
    if top >= vocab:
        raise ConfigError(name, f"the tokenizer has ids up to {top}, beyond the model's "
                          f"vocab_size ({vocab}): not this model's tokenizer")


def _resolved_device(spec: str) -> Any:
    import torch

    if spec == "auto":  # as kdengine.trainer.pick_device resolves it
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def require_fp8(field: str, device: Any) -> None:
    """ConfigError naming `field` (teacher_dtype or student_matmuls: float8) where `device` has
    no FP8 matmuls; the preflight asks before a run directory exists, the loader again."""
    import torch

    from kdengine.models.fp8 import fp8_supported

    if not fp8_supported(device):
        where = (f"{torch.cuda.get_device_name(device)} (compute capability "
                 f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))})"
                 if device.type == "cuda" else device.type)
        raise ConfigError(field, f"float8 needs FP8 matmuls (a GPU of compute capability 8.9 "
                          f"or later: L4, L40S, RTX 40xx, H100, H200); {where} has none: set it to "
                          "auto")


def check_device(spec: str) -> str:
    """The device a run asks for exists here (auto and cpu always do). Imports torch for the
    others: availability is torch's answer, not a guess from the driver files."""
    if spec in ("auto", "cpu"):
        return spec
    try:
        import torch
    except ModuleNotFoundError:
        raise ConfigError("device", f"{spec} needs torch: pip install 'kdtui[engine]'") from None
    kind, _, index = spec.partition(":")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device", f"{spec} asked for, but torch sees no CUDA device here "
                              "(use cpu or auto)")
        count = torch.cuda.device_count()
        if index and int(index) >= count:
            raise ConfigError("device", f"{spec} asked for, but this machine has {count} CUDA "
                              f"device(s): cuda:0..cuda:{count - 1} (or auto)")
    elif kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device", "mps asked for, but torch sees no MPS device here (Apple "
                          "silicon only; use cpu or auto)")
    return spec


def check_data(config: RunConfig, tokenizer: Any, unchecked: list[str],
               teacher_dir: Path | None = None, teacher_tok: Any = None,
               found: dict[str, str] | None = None) -> tuple[int | None, int | None]:
    """Every file of the data readable (UTF-8, JSONL lines parsed) and at least one training
    batch and one validation window of tokens: (train, val) tokens seen, at least. Example
    data (conversations, prompt/completion, datasets) is tokenized whole with the teacher's
    tokenizer and chat template into the token store the run then reuses: every record, the
    template on every conversation, bad files (failed or skipped as on_bad_file says) and
    one batch of packed rows; (train, val) are then its rows' tokens, and `found["content"]`
    its store's content digest."""
    if config.data == DEMO_DATA:
        return None, None
    from kdengine.data.formats import is_example_data, parse_fields

    if is_example_data(config.data, parse_fields(config.data_fields)):
        return _check_examples(config, teacher_tok, teacher_dir, unchecked,
                               {} if found is None else found)
    from kdengine.data import (
        ByteTokenizer,
        check_split_sizes,
        enough_tokens,
        held_out,
        is_token_shards,
        is_validation,
        iter_documents,
        plan_split,
        shard_files,
    )

    if isinstance(tokenizer, DemoByteTokenizer):
        tokenizer = ByteTokenizer()
    need, need_val = enough_tokens(config.seq_len, config.batch_size)
    if is_token_shards(Path(config.data).expanduser()):
        files, dtype, eos_id = shard_files(config.data)
        total = sum(f.stat().st_size // dtype.itemsize for f in files)
        if total < need + need_val:
            check_split_sizes(0, total, config.seq_len, config.batch_size, config.data)
        if tokenizer is not None and eos_id >= tokenizer.vocab_size:
            meta = Path(config.data).expanduser() / "tokens.json"
            raise ConfigError("data", f"{meta}: eos_id {eos_id} is beyond the tokenizer's "
                              f"vocab ({tokenizer.vocab_size}): tokenized with another "
                              "tokenizer? (tokenize it with the teacher's)")
        if tokenizer is not None:  # the ids the run's split_token_shards refuses
            check_shard_ids(files, dtype, tokenizer.vocab_size)
        else:
            unchecked.append("data: the shards' token ids are checked against the vocab when "
                             "the run has its tokenizer")
        unchecked.append("data: the shards' document split is checked when the run reads them")
        return None, None
    # Tokenize a document only while its side of the run's split (is_validation) still lacks
    # tokens: a big corpus is read and parsed to its end, but tokenized only as far as needed.
    names: list[str] = []
    counts: list[int] = []  # tokens of each document, or a lower bound where not `exact`
    exact: list[bool] = []
    seen = {False: 0, True: 0}  # tokens (eos included) per side: train, validation
    want = {False: need, True: need_val}
    skipped: list[list[str]] = []
    # The run's text cache holds an entry for exactly these files (path, size, mtime), this
    # tokenizer and these options: the files decoded and parsed (or were skipped) and the entry
    # has every document's count, so nothing is read (kdengine.data.text_cache). Counted as
    # below, where the counts of the documents read are exact.
    summary = None
    if tokenizer is not None:
        from kdengine.data.text_cache import cached_summary

        summary = cached_summary(config.data, tokenizer, on_bad_file=config.on_bad_file)
    if summary is not None:
        names, counts, skipped = summary.names, summary.counts, summary.skipped
        exact = [True] * len(names)
        for name, n in zip(names, counts, strict=True):
            side = is_validation(name, config.val_fraction)
            if seen[side] < want[side]:
                seen[side] += n + 1
    else:
        # reads every file: each must decode and parse (or, on_bad_file=skip, is skipped as the
        # run skips it)
        for doc in iter_documents(config.data, on_bad_file=config.on_bad_file,
                                  skipped=skipped):
            side = is_validation(doc.name, config.val_fraction)
            n, whole = 0, False
            if tokenizer is not None and seen[side] < want[side]:
                n, whole = count_tokens(tokenizer, doc.text, want[side] - seen[side])
                seen[side] += n + 1
            names.append(doc.name)
            counts.append(n)
            exact.append(whole)
    if not names:
        from kdengine.data.formats import empty_refusal

        raise empty_refusal(config.data, "is empty: no text to train on", skipped)
    if tokenizer is None:
        unchecked.append("data: tokens are counted when the run has its tokenizer")
        return None, None
    if seen[False] >= need and seen[True] >= need_val:
        return seen[False], seen[True]
    # Short on one side: the run falls back to other splits. Which one depends on the counts of
    # the held-out documents only, and its sizes grow with every count: when those counts are
    # exact, lower bounds for the rest that pass mean the run passes. Else every count is made
    # exact by a second reading (rare: small data, or data too short anyway).
    held = held_out(names, config.val_fraction)
    if all(whole for whole, h in zip(exact, held, strict=True) if h):
        _, train, val = plan_split(list(zip(names, counts, strict=True)), config.val_fraction,
                                   config.seq_len)
        if train >= need and val >= need_val:
            return train, val
    if not all(exact):
        counts = [n if whole else len(tokenizer.encode(doc.text)) for doc, n, whole in
                  zip(iter_documents(config.data, on_bad_file=config.on_bad_file), counts,
                      exact, strict=True)]
    _, train, val = plan_split(list(zip(names, counts, strict=True)), config.val_fraction,
                               config.seq_len)
    check_split_sizes(train, val, config.seq_len, config.batch_size, config.data)
    return train, val


def check_shard_ids(files: list[Path], dtype: Any, vocab_size: int) -> None:
    """Every token id of the shards `files` (raw little-endian `dtype`) inside `vocab_size`:
    a vectorized max over each file, memory-mapped read-only (seconds for gigabytes, nothing
    copied); ConfigError naming data at the first shard holding one beyond it, as the run's
    reading of the shards would refuse it (kdengine.data.split_token_shards)."""
    import numpy as np

    kind = np.uint16 if dtype.itemsize == 2 else np.uint32
    for file in files:
        if file.stat().st_size == 0:
            continue
        try:
            top = int(np.memmap(file, dtype=kind, mode="r").max())
        except (OSError, ValueError) as exc:
            raise ConfigError("data", f"cannot read {file}: {exc}") from None
        if top >= vocab_size:
            raise ConfigError("data", f"{file} holds token id {top}, beyond the model's "
                              f"vocab ({vocab_size}): tokenized with another tokenizer? "
                              "(tokenize it with the teacher's)")


def _check_examples(config: RunConfig, tokenizer: Any, teacher_dir: Path | None,
                    unchecked: list[str], found: dict[str, str]) -> tuple[int | None, int | None]:
    if isinstance(tokenizer, DemoByteTokenizer):
        from kdengine.data import ByteTokenizer

        tokenizer = ByteTokenizer()
    if tokenizer is None:  # a hub teacher the run downloads: its tokenizer and template then
        unchecked.append("data: the examples are tokenized with the teacher's tokenizer and "
                         "chat template when the run has them")
        return None, None
    import sys

    from kdengine.data.examples import load_examples
    from kdengine.data.store import hand_over

    data = load_examples(config, tokenizer, teacher_dir,
                         lambda line: print(line, file=sys.stderr, flush=True))
    hand_over(data.store)  # the run of this command reports the tokenizing as its own
    found["content"] = data.store.content
    # --check passes, and says on stderr what the run's data stage will say of the data
    if (left_out := data.stats.left_out_line()) is not None:
        print(left_out, file=sys.stderr, flush=True)
    if (empty := data.stats.empty_answers_warning()) is not None:
        print(f"WARNING: {empty}", file=sys.stderr, flush=True)
    if config.samples_completions:  # on-policy / seq_kd: the examples must hold prompts
        from kdengine.onpolicy.prompts import check_generation_prompt, prompt_source

        prompt_source(config, data)
        check_generation_prompt(config, data, teacher_dir)  # prompts end with the header
    return data.stats.train_rows * config.seq_len, data.stats.val_rows * config.seq_len


# A prefix of a long text is tokenized in place of the whole when it already holds enough: the
# tokens of the lines before the cut are the tokens the whole text has there, up to a few at the
# cut (a merge or pre-token that spans it), which this margin covers.
_CUT_MARGIN = 64


def count_tokens(tokenizer: Any, text: str, enough: int) -> tuple[int, bool]:
    """(tokens, exact) of `text`: exact, or for a text far longer than `enough` tokens need, a
    lower bound >= enough from a prefix cut at a line end (one huge file is one document: the
    check must not tokenize all of it before the run does it again)."""
    limit = max(16 * enough, 1 << 16)  # characters: >= 4 of them per token for most text
    if len(text) > 2 * limit:
        cut = text.rfind("\n", 0, limit)
        if cut > 0:
            bound = len(tokenizer.encode(text[:cut + 1])) - _CUT_MARGIN
            if bound >= enough:
                return bound, False
    return len(tokenizer.encode(text)), True
