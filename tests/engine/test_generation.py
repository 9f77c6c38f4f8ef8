"""Generation with the native decoder (kdengine.generation): greedy completions equal to
transformers' `generate` token for token on tiny random models of each family, ragged prompts in
one batch; sampling that follows the softmax after temperature / top-k / top-p; stopping at EOS
and at stop strings; reproducible with a seeded generator; the trained model left untouched.
fp32, CPU. transformers is a test-only dependency."""

from __future__ import annotations

import pytest
import torch

from kdengine.generation import SamplingConfig, generate, warp_logits
from kdengine.models import Decoder, config_from_hf

transformers = pytest.importorskip("transformers")

VOCAB, PAD = 96, 0
BASE = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            rms_norm_eps=1e-5, pad_token_id=PAD, bos_token_id=None, eos_token_id=None)
FAMILIES = {
    "llama": ("LlamaConfig", dict(rope_theta=10000.0)),
    "llama-tied": ("LlamaConfig", dict(num_key_value_heads=1, tie_word_embeddings=True)),
    "qwen2": ("Qwen2Config", dict(rope_theta=1e6)),
    "qwen3": ("Qwen3Config", dict(head_dim=16, num_key_value_heads=1, rope_theta=1e6)),
    # a window of 5 over prompts of up to 9 tokens and 10 new ones: the window slides in both
    "mistral-sliding-window": ("MistralConfig", dict(sliding_window=5, rope_theta=1e6)),
}
PROMPT_LENGTHS = (9, 3, 6)


def _hf_model(family: str):
    config_class, overrides = FAMILIES[family]
    config = getattr(transformers, config_class)(**{**BASE, **overrides})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(
        config, attn_implementation="eager").float().eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # large weights: peaked logits, so no argmax hangs on a near-tie
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.2 * noise if name.endswith("norm.weight") else 0.3 * noise)
    return model


def _native(hf_model) -> Decoder:
    model = Decoder(config_from_hf(hf_model.config.to_dict()))
    model.load_state_dict(hf_model.state_dict(), strict=False)
    if model.config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()


def _prompts(seed: int = 2, lengths: tuple[int, ...] = PROMPT_LENGTHS) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(1, VOCAB, (n,), generator=gen) for n in lengths]


def _hf_greedy(hf_model, prompts: list[torch.Tensor], new: int,
               eos: int | None = None) -> torch.Tensor:
    """transformers' greedy completions [batch, <= new] of left-padded `prompts`."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), PAD, dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):], mask[row, width - len(p):] = p, 1
    hf_model.generation_config.eos_token_id = eos
    hf_model.generation_config.pad_token_id = PAD
    with torch.no_grad():
        out = hf_model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                max_new_tokens=new, eos_token_id=eos, pad_token_id=PAD)
    return out[:, width:]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_greedy_completions_equal_transformers_generate_with_ragged_prompts(
        family: str) -> None:
    hf_model = _hf_model(family)
    model, prompts, new = _native(hf_model), _prompts(), 10
    ours = generate(model, prompts, SamplingConfig(max_new_tokens=new, temperature=0.0))
    theirs = _hf_greedy(hf_model, prompts, new)
    assert torch.equal(ours.tokens, theirs), family
    assert ours.lengths.tolist() == [new] * 3 and not ours.finished.any()
    assert ours.new_tokens == 3 * new
    # the first row alone: left padding changes nothing
    alone = generate(model, prompts[1:2], SamplingConfig(max_new_tokens=new, temperature=0.0))
    assert torch.equal(alone.tokens[0], ours.tokens[1])


def test_eos_stops_a_row_as_transformers_does_and_later_tokens_are_pad() -> None:
    hf_model = _hf_model("qwen2")
    model, prompts, new = _native(hf_model), _prompts(), 10
    free = generate(model, prompts, SamplingConfig(max_new_tokens=new, temperature=0.0))
    row0 = free.tokens[0].tolist()
    eos = next(t for i, t in enumerate(row0) if i >= 2 and t not in row0[:i])  # first at i
    at = row0.index(eos)
    ours = generate(model, prompts, SamplingConfig(max_new_tokens=new, temperature=0.0,
                                                   eos_ids=(eos,)), pad_id=PAD)
    theirs = _hf_greedy(hf_model, prompts, new, eos=eos)
    assert ours.lengths[0] == at + 1 and ours.finished[0]
    assert ours.tokens[0, at] == eos and (ours.tokens[0, at + 1:] == PAD).all()
    assert torch.equal(ours.tokens[:, :theirs.shape[1]], theirs)
    for row in range(3):
        stopped = eos in free.tokens[row].tolist()
        assert bool(ours.finished[row]) == stopped
        expected = free.tokens[row].tolist().index(eos) + 1 if stopped else new
        assert ours.lengths[row] == expected
        assert torch.equal(ours.tokens[row, :expected], free.tokens[row, :expected])


def test_stop_string_ends_a_row_at_the_token_that_completes_it() -> None:
    model = _native(_hf_model("llama"))
    prompts = _prompts()
    free = generate(model, prompts, SamplingConfig(max_new_tokens=8, temperature=0.0))
    # a "tokenizer" where token t is the text <t>; stop once row 1 has written tokens 2 and 3
    decode = lambda ids: "".join(f"<{t}>" for t in ids)  # noqa: E731
    first, second = free.tokens[1, 2].item(), free.tokens[1, 3].item()
    stop = f"{first}><{second}"
    out = generate(model, prompts, SamplingConfig(max_new_tokens=8, temperature=0.0,
                                                  stop_strings=(stop,)),
                   decode=decode, pad_id=PAD)
    text = decode(free.tokens[1].tolist())
    assert out.finished[1] and out.lengths[1] == 4
    assert (out.tokens[1, 4:] == PAD).all() and torch.equal(out.tokens[1, :4],
                                                            free.tokens[1, :4])
    for row in (0, 2):  # rows whose text never holds the stop string run to the end
        text = decode(free.tokens[row].tolist())
        assert bool(out.finished[row]) == (stop in text)
    with pytest.raises(ValueError, match="decode"):
        generate(model, prompts, SamplingConfig(max_new_tokens=2, stop_strings=("x",)))


def test_sampled_first_tokens_follow_the_warped_softmax() -> None:
    """20000 draws of the first token (one prompt repeated): no filtered-out token is ever drawn,
    and the empirical distribution is within total variation 0.5 * sum(sqrt(p / n)) * 2 of
    softmax(warp(logits)), about 2.5x the expected TV of n draws (the seed is fixed: no flake),
    while the distribution without the warping is far outside it (the test can tell)."""
    model = _native(_hf_model("qwen3"))
    prompt = _prompts(lengths=(5,))[0]
    with torch.no_grad():
        logits = model.logits(prompt.unsqueeze(0))[0, -1].double()
    draws = 20000
    for config in (SamplingConfig(max_new_tokens=1, temperature=2.5),
                   SamplingConfig(max_new_tokens=1, temperature=3.0, top_k=12, top_p=0.8)):
        out = generate(model, [prompt] * draws, config,
                       generator=torch.Generator().manual_seed(3))
        freq = torch.bincount(out.tokens[:, 0], minlength=VOCAB).double() / draws
        # the reference, written out here: temperature, top-k, then top-p on the sorted probs
        scores = logits / config.temperature
        unfiltered = scores.softmax(-1) if config.top_k else logits.softmax(-1)
        if config.top_k:
            scores[scores < scores.topk(config.top_k).values[-1]] = float("-inf")
        probs = scores.softmax(-1)
        if config.top_p < 1:
            ordered, order = probs.sort(descending=True)
            keep = ordered.cumsum(0) - ordered < config.top_p  # the smallest set reaching top_p
            probs = torch.zeros_like(probs).index_put_((order[keep],), ordered[keep])
            probs /= probs.sum()
        assert (freq[probs == 0] == 0).all()
        assert (probs > 0).sum() >= 4  # several tokens in play
        bound = (probs / draws).sqrt().sum().item()
        assert 0.5 * (freq - probs).abs().sum().item() < bound, config
        assert 0.5 * (freq - unfiltered).abs().sum().item() > 2 * bound, config


def test_same_generator_seed_gives_the_same_completions_and_leaves_global_rng_alone() -> None:
    model = _native(_hf_model("llama"))
    prompts = _prompts()
    config = SamplingConfig(max_new_tokens=12, temperature=1.5, top_p=0.95, top_k=40)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = generate(model, prompts, config, generator=torch.Generator().manual_seed(7))
    b = generate(model, prompts, config, generator=torch.Generator().manual_seed(7))
    c = generate(model, prompts, config, generator=torch.Generator().manual_seed(8))
    unseeded = generate(model, prompts, config)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(a.tokens, b.tokens)
    assert not torch.equal(a.tokens, c.tokens)
    assert unseeded.tokens.shape == a.tokens.shape


def test_the_trained_model_keeps_its_parameters_grads_and_mode() -> None:
    """A student mid-training (train mode, gradients held) generates in a compute dtype of its
    own; afterwards every parameter, gradient and mode is as before, and a change of the
    weights reaches the next generation."""
    model = _native(_hf_model("qwen2")).train()
    model.logits(torch.randint(0, VOCAB, (2, 6))).sum().backward()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    prompts = _prompts()
    config = SamplingConfig(max_new_tokens=6, temperature=0.0)
    fp32 = generate(model, prompts, config)
    bf16 = generate(model, prompts, config, dtype=torch.bfloat16)
    assert bf16.tokens.shape == fp32.tokens.shape
    assert model.training and all(m.training for m in model.modules())
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32 and p.requires_grad
        assert torch.equal(p, params[name]) and torch.equal(p.grad, grads[name]), name
    other = (fp32.tokens[0, 0].item() + 1) % VOCAB
    with torch.no_grad():  # token `other` now has the largest logit after row 0's prompt
        hidden = model(prompts[0].unsqueeze(0))[0, -1]
        model.lm_head.weight[other] = 10.0 * hidden
    again = generate(model, prompts, config)
    assert again.tokens[0, 0] == other


def test_bad_inputs_are_named() -> None:
    model = _native(_hf_model("llama"))
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(max_new_tokens=1, top_p=0.0)
    with pytest.raises(ValueError, match="prompts"):
        generate(model, [torch.tensor([], dtype=torch.int64)], SamplingConfig(max_new_tokens=1))


def test_compiled_decode_step_makes_the_eager_tokens() -> None:
    """The decode step as CUDA runs it, compiled (here on the CPU, without the graph capture):
    the same tokens as eager, sliding windows included. Where compiling fails the engine warns
    and runs eager, and the tokens are the same all the same."""
    from kdengine.generation import GenerationEngine

    model = _native(_hf_model("mistral-sliding-window"))
    config = SamplingConfig(max_new_tokens=10, temperature=0.0)
    eager = GenerationEngine(model).generate(_prompts(), config)
    engine = GenerationEngine(model, compile=True, cuda_graphs=False)
    compiled = engine.generate(_prompts(), config)
    again = engine.generate(_prompts(seed=5), config)  # the same shape: no new compile
    assert engine.step_kind in ("compiled", "eager")
    assert torch.equal(compiled.tokens, eager.tokens)
    assert torch.equal(again.tokens, GenerationEngine(model).generate(_prompts(seed=5),
                                                                      config).tokens)


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.7, 0, 1.0), (1.0, 5, 1.0),
                                                       (1.3, 0, 0.6), (0.9, 20, 0.9)])
def test_warped_logits_equal_transformers_warpers(temperature: float, top_k: int,
                                                  top_p: float) -> None:
    logits = torch.randn(6, VOCAB, generator=torch.Generator().manual_seed(4)) * 3
    logits[0, :10] = logits[0, 0]  # ties at the k-th score are kept, as transformers keeps them
    warpers = [transformers.TemperatureLogitsWarper(temperature)]
    if top_k:
        warpers.append(transformers.TopKLogitsWarper(top_k))
    if top_p < 1:
        warpers.append(transformers.TopPLogitsWarper(top_p))
    theirs = logits.clone()
    for warper in warpers:
        theirs = warper(None, theirs)
    ours = warp_logits(logits, SamplingConfig(max_new_tokens=1, temperature=temperature,
                                              top_k=top_k, top_p=top_p))
    assert torch.equal(ours, theirs)


def test_ids_beyond_vocab_limit_are_never_drawn() -> None:
    """A teacher padded beyond the student's vocab (seq_kd) writes only ids the student has."""
    from kdengine.generation import SamplingConfig, next_tokens

    logits = torch.zeros(64, 10)
    logits[:, 8:] = 50.0  # the padding ids would win every draw and every argmax
    gen = torch.Generator().manual_seed(0)
    for temperature in (1.0, 0.0):
        config = SamplingConfig(max_new_tokens=1, temperature=temperature, vocab_limit=8)
        assert int(next_tokens(logits, config, gen).max()) < 8
