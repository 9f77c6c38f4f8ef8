"""Packed rows without cross-talk: with `position_ids` restarting at each example (the format of
kdengine.data.packing), the native decoder keeps every example to itself. On the CPU (SDPA with
a boolean mask) a packed row's examples come out as each example run alone, bit-identical to
perturbations of their neighbours, and equal to transformers' own packed-sequence semantics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdengine.config import RunConfig
from kdengine.data import TokenSplits
from kdengine.distributed import Dist
from kdengine.losses import IGNORE_INDEX
from kdengine.models import Decoder, DecoderConfig, load_decoder
from kdengine.models.decoder import example_ids
from kdengine.providers import ModelStudent, ModelTeacher
from kdengine.runlog import RunLog
from kdengine.trainer import KDTrainer

VOCAB = 97
LENGTHS = [9, 4, 14, 1, 12]  # one row of 40 tokens: five examples, one of a single token
BASE = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
FAMILIES = {  # what each case adds to the plain Llama block
    "llama": dict(),
    "llama3-rope-scaling": dict(rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}),
    "qwen3-qk-norm-bias": dict(qk_norm=True, attention_bias=True, head_dim=16),
    # windows shorter than the examples, mixed with full layers: the window acts inside them
    "sliding-window-layers": dict(sliding_window=5, layer_types=[
        "sliding_attention", "full_attention", "sliding_attention"]),
}


def decoder(family: str, seed: int = 0) -> Decoder:
    model = Decoder(DecoderConfig(**{**BASE, **FAMILIES[family]}))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # every parameter random, norms and biases too
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.2 * noise if name.endswith("norm.weight") else 0.15 * noise)
    return model.eval()


def packed(lengths: list[int], rows: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and position_ids [rows, sum(lengths)] (position ids restarting per example)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (rows, sum(lengths)), generator=gen)
    pos = torch.cat([torch.arange(n) for n in lengths]).repeat(rows, 1)
    return ids, pos


def spans(lengths: list[int]) -> list[slice]:
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    return [slice(s, s + n) for s, n in zip(starts, lengths, strict=True)]


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_example_of_a_packed_row_equals_the_example_run_alone(family: str) -> None:
    model = decoder(family)
    ids, pos = packed(LENGTHS)
    with torch.no_grad():
        logits = model.logits(ids, pos)
        for span in spans(LENGTHS):
            alone = model.logits(ids[:, span])
            assert relative(logits[:, span], alone) <= 1e-5, (family, span)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("backend", ["sdpa", "flex"])
@pytest.mark.parametrize("family", ["llama", "sliding-window-layers"])
def test_perturbing_one_example_leaves_every_other_example_unchanged(
        family: str, backend: str) -> None:
    model = decoder(family)
    model.packed_attention = backend  # flex runs eagerly on the CPU (its reference kernel)
    ids, pos = packed(LENGTHS, rows=2)
    victim = spans(LENGTHS)[2]
    changed = ids.clone()
    changed[1, victim] = (changed[1, victim] + 1 + torch.arange(victim.stop - victim.start)) \
        % VOCAB
    with torch.no_grad():
        before, after = model(ids, pos), model(changed, pos)
    others = torch.ones(2, sum(LENGTHS), dtype=torch.bool)
    others[1, victim] = False
    assert torch.equal(before[others], after[others])  # exactly: not one bit moves
    assert not torch.allclose(before[~others], after[~others])  # the perturbation is real


def test_training_gradients_of_a_packed_row_are_those_of_its_examples_alone() -> None:
    model = decoder("sliding-window-layers").train()
    ids, pos = packed(LENGTHS)
    probe = torch.randn(1, sum(LENGTHS), BASE["hidden_size"],
                        generator=torch.Generator().manual_seed(3))
    (model(ids, pos) * probe).sum().backward()
    trained = [p for p in model.parameters() if p.grad is not None]  # (not the lm head)
    packed_grads = [p.grad.clone() for p in trained]
    model.zero_grad()
    for span in spans(LENGTHS):
        (model(ids[:, span]) * probe[:, span]).sum().backward()
    for got, p in zip(packed_grads, trained, strict=True):
        assert relative(got, p.grad) <= 1e-5


def test_one_example_filling_the_row_is_the_unpacked_forward() -> None:
    model = decoder("sliding-window-layers")
    ids, pos = packed([40], rows=2)
    with torch.no_grad():
        assert relative(model(ids, pos), model(ids)) <= 1e-6


def test_an_example_starts_wherever_the_positions_do_not_continue() -> None:
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 0, 1, 2, 3],   # restarts at 0, one-token example
                        [5, 6, 7, 0, 1, 2, 3, 4, 5, 6]])  # a row that starts mid-example
    assert example_ids(pos).tolist() == [[0, 0, 0, 1, 1, 2, 3, 3, 3, 3],
                                         [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]]


def test_an_unknown_packed_attention_kernel_is_named() -> None:
    model = decoder("llama")
    model.packed_attention = "fast"
    with pytest.raises(ValueError, match="packed_attention 'fast'"):
        model(*packed(LENGTHS))


# -- against transformers: its packed-sequence detection from position_ids ---------------------

transformers = pytest.importorskip("transformers")

HF_CASES = {
    "llama": ("LlamaConfig", dict(rope_theta=10000.0)),
    "mistral-sliding-window": ("MistralConfig", dict(sliding_window=6, rope_theta=1e6)),
    "qwen3-qk-norm": ("Qwen3Config", dict(head_dim=16, rope_theta=1e6)),
}


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("case", list(HF_CASES))
def test_packed_rows_match_transformers_packed_sequences(case: str, attn: str,
                                                         tmp_path: Path) -> None:
    """transformers (>= 4.54) turns position_ids that restart into a block-diagonal mask when
    no attention mask is given: the same semantics, checked on the same checkpoint."""
    cls, overrides = HF_CASES[case]
    config = getattr(transformers, cls)(**{**BASE, "num_hidden_layers": 2, **overrides})
    hf_model = transformers.AutoModelForCausalLM.from_config(
        config, attn_implementation=attn).float().eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in hf_model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.2 * noise if name.endswith("norm.weight") else 0.15 * noise)
    hf_model.save_pretrained(tmp_path)
    ids, pos = packed(LENGTHS, rows=2)
    with torch.no_grad():
        theirs = hf_model(ids, position_ids=pos, use_cache=False).logits
        ours = load_decoder(tmp_path).eval().logits(ids, pos)
        cross_talk = load_decoder(tmp_path).eval().logits(ids)  # one long sequence per row
    assert relative(ours, theirs) <= 1e-4
    assert relative(cross_talk, theirs) > 1e-2  # transformers did mask: the check has teeth


# -- the trainer and torchrun's row split carry the position ids --------------------------------


def test_a_packed_batch_trains_with_the_loss_of_its_examples_alone(tmp_path: Path) -> None:
    """KDTrainer takes (input_ids, labels, position_ids): its loss is the token-weighted mean of
    each example's loss computed alone, for both the teacher and the student."""
    config = RunConfig.from_mapping(dict(teacher="t", student="s", data="d", steps=2,
                                         batch_size=1, seq_len=40, lr=0.01, eval_batches=1,
                                         temperature=2.0, alpha=0.5))
    stream = torch.arange(400) % VOCAB
    trainer = KDTrainer(config, ModelTeacher(decoder("sliding-window-layers", seed=1)),
                        ModelStudent(decoder("llama", seed=2).train()),
                        TokenSplits(train=stream, val=stream, eos_id=0), RunLog(tmp_path),
                        torch.device("cpu"), torch.float32)
    ids, pos = packed(LENGTHS)
    labels = torch.full_like(ids, IGNORE_INDEX)  # next token inside each example only
    for span in spans(LENGTHS):
        labels[0, span.start:span.stop - 1] = ids[0, span.start + 1:span.stop]
    with torch.no_grad():
        whole = trainer._loss(ids, labels, pos)
        parts = [(trainer._loss(ids[:, s], labels[:, s]), int((labels[:, s] >= 0).sum()))
                 for s in spans(LENGTHS) if (labels[:, s] >= 0).any()]
        mixed = trainer._loss(ids, labels)  # without position ids: examples see each other
    expected = sum(p.loss.item() * n for p, n in parts) / sum(n for _, n in parts)
    assert whole.loss.item() == pytest.approx(expected, rel=1e-5)
    assert mixed.loss.item() != pytest.approx(expected, rel=1e-3)
    step = trainer.train_step((ids, labels, pos))
    assert step["loss"] == pytest.approx(whole.loss.item(), rel=1e-5)


def test_torchrun_ranks_take_the_same_rows_of_every_batch_tensor() -> None:
    ids, pos = packed(LENGTHS, rows=4)
    labels = ids.clone()
    labels[:, ::3] = IGNORE_INDEX
    rank1 = Dist(rank=1, world_size=2)
    got_ids, got_labels, got_pos = rank1.rows(ids, labels, pos)
    assert torch.equal(got_ids, ids[2:]) and torch.equal(got_labels, labels[2:])
    assert torch.equal(got_pos, pos[2:])
    assert rank1.normalizer(got_labels) == float((labels != IGNORE_INDEX).sum()) / 2
    assert rank1.rows(ids, labels, None)[2] is None  # raw-text batches: no position ids
