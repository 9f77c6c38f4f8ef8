"""The native decoder: the Llama family as published on the hub, in one readable file.

Covers Llama 2/3 (llama3 rope scaling), Mistral (sliding-window attention), Qwen2/2.5 (q/k/v
bias), Qwen3 (q/k RMSNorm), SmolLM2 (Llama with tied embeddings): pre-norm blocks of
grouped-query attention with rotary embeddings and a SwiGLU MLP, RMSNorm, optionally tied
embeddings. Parameter names follow the HF layout (`model.layers.N.self_attn.q_proj.weight`), so
an HF safetensors checkpoint loads with `load_state_dict` as is.

`forward` returns the final hidden states [batch, seq, hidden], not logits: the KD loss projects
through `lm_head_weight` chunk by chunk and never holds all [tokens, vocab] logits at once.

Packed rows (several examples in one row): `forward(input_ids, position_ids)` takes position ids
[batch, seq] that restart at each example (kdengine.data.packing's rows); the rotary positions
come from them and attention stays inside each example (block-diagonal causal, with the sliding
window inside an example). Without position ids nothing of this runs: the kernels are today's.

Generation (kdengine.generation) runs `forward_cached`: new tokens at given positions, their keys
and values written into a static KV cache that the queries attend over; training never runs it.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from kdengine.models.fp8 import qk_norm_rope, quantizable
from kdengine.models.fp8_train import fp8_swiglu_mlp
from kdengine.models.norm import RMSNorm
from kdengine.models.rope import apply_rope
from kdengine.models.swiglu import swiglu


@dataclass
class DecoderConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # bias on q, k, v (Qwen2 always; Llama/Qwen3 with o_proj_bias)
    o_proj_bias: bool = False  # bias on o_proj (Llama/Qwen3 attention_bias=true)
    mlp_bias: bool = False  # bias on gate/up/down (Llama mlp_bias=true)
    qk_norm: bool = False  # Qwen3: RMSNorm over each head of q and k
    sliding_window: int | None = None  # attend to the last N positions only (Mistral v0.1)
    layer_types: list[str] | None = None  # per layer: full_attention | sliding_attention
    model_type: str = "llama"
    # the source config.json, kept so a saved model keeps keys we do not model (eos ids, ...)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.layer_types is not None and len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries for "
                             f"{self.num_hidden_layers} layers")

    def window_of(self, layer: int) -> int | None:
        """The sliding window of layer `layer`, or None for full causal attention."""
        if self.sliding_window is None:
            return None
        if self.layer_types is None or self.layer_types[layer] == "sliding_attention":
            return self.sliding_window
        return None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("extra")
        return out


ROPE_TYPES = ("default", "linear", "llama3")


def rope_inv_freq(config: DecoderConfig) -> torch.Tensor:
    """Inverse frequencies of the rotary embedding (float32, on the CPU), with Llama 3's
    frequency-band scaling. Computed in float32 the way transformers does, so both agree."""
    dim = config.head_dim
    positions = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float()
    inv_freq = 1.0 / (config.rope_theta ** (positions / dim))
    scaling = config.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
        old_ctx = scaling.get("original_max_position_embeddings",
                              config.max_position_embeddings)
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        mid = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv_freq = torch.where(mid, smoothed, scaled)
    elif kind == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif kind not in ROPE_TYPES:
        raise ValueError(f"rope_scaling type {kind!r} is not supported "
                         f"({', '.join(ROPE_TYPES)})")
    return inv_freq.float()


class Attention(nn.Module):
    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim
        hs, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(hs, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hs, self.n_kv * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hs, self.n_kv * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, hs, bias=config.o_proj_bias)
        if config.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None
        # Runtime-only fusion (never saved; the HF names above stay the parameters):
        # `qkv_weight`/`qkv_bias` are set by Decoder.fuse_for_inference (frozen models), and
        # `concat_qkv` makes a trainable model run one matmul over the concatenated weights.
        self.qkv_weight: torch.Tensor | None = None
        self.qkv_bias: torch.Tensor | None = None
        self.concat_qkv = False
        # a frozen model's fused projection as a module of its own (kdengine.models.fp8)
        self.qkv_linear: nn.Module | None = None
        # an FP8 teacher's q/k norms and rotary embedding in one pass (fp8.qk_norm_rope)
        self.fused_rope = False

    def _qkv(self, x: torch.Tensor,
             norm: RMSNorm | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if norm is not None:  # x not normed yet: an FP8 teacher norms and quantizes in one pass
            qkv = self.qkv_linear.normed(x, norm)
        elif self.qkv_linear is not None:
            qkv = self.qkv_linear(x)
        elif self.qkv_weight is not None:
            qkv = F.linear(x, self.qkv_weight, self.qkv_bias)
        elif self.concat_qkv:
            # under torch.compile the concatenation fuses with autocast's weight cast: one
            # kernel and one matmul instead of three of each (and one d/dx matmul in backward)
            projs = (self.q_proj, self.k_proj, self.v_proj)
            bias = (torch.cat([p.bias for p in projs]) if self.q_proj.bias is not None
                    else None)
            qkv = F.linear(x, torch.cat([p.weight for p in projs]), bias)
        else:
            return self.q_proj(x), self.k_proj(x), self.v_proj(x)
        return self._split(qkv)

    def _split(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        nq, nkv = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        return qkv.split((nq, nkv, nkv), dim=-1)

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        return self.o_proj(x)

    def _heads(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               norm: RMSNorm | None = None,
               qkv: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v [b, heads, t, head_dim] of `x` [b, t, hidden] (normed by `norm` first when
        given; or of the projection `qkv` made before), q and k normed and rotated."""
        b, t, _ = x.shape
        if self.fused_rope:
            return self._heads_fused(x, cos, sin, norm, qkv)
        q, k, v = self._qkv(x, norm) if qkv is None else self._split(qkv)
        q = q.view(b, t, self.n_heads, self.head_dim)
        k = k.view(b, t, self.n_kv, self.head_dim)
        v = v.view(b, t, self.n_kv, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (y.transpose(1, 2) for y in (q, k, v))  # [b, heads, t, d]
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def _heads_fused(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     norm: RMSNorm | None,
                     qkv: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """_heads for an FP8 teacher (fused_rope): its one q/k/v projection, then the q/k norms
        and rope in one pass (kdengine.models.fp8.qk_norm_rope)."""
        b, t, _ = x.shape
        if qkv is None:
            qkv = self.qkv_linear.normed(x, norm) if norm is not None else self.qkv_linear(x)
        q, k = qk_norm_rope(qkv, self, cos, sin, b, t)
        v = self._split(qkv)[2].view(b, t, self.n_kv, self.head_dim)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: Any = None, norm: RMSNorm | None = None,
                qkv: torch.Tensor | None = None) -> torch.Tensor:
        """`mask` [t, t] (True = may attend) replaces the plain causal mask (sliding window).
        Packed rows (Decoder.attention_masks): a bool [b, 1, t, t] tensor (SDPA), a flex
        BlockMask or VarlenSpans; cos/sin are then [b, 1, t, head_dim]. `norm`: x is the
        block's input, normed here (an FP8 teacher's qkv_linear.normed). `qkv`: the q/k/v
        projection [b, t, q + 2 kv], made by the caller (DecoderLayer._forward_fused)."""
        b, t, _ = x.shape
        q, k, v = self._heads(x, cos, sin, norm, qkv)
        gqa = self.n_kv != self.n_heads
        if mask is None or isinstance(mask, torch.Tensor):
            # SDPA picks flash / memory-efficient kernels on the GPU; GQA shares each kv head.
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                                 enable_gqa=gqa)
        else:  # packed rows through varlen or flex, which autocast does not cast
            q, k, v = _autocast_inputs(q, k, v)
            if isinstance(mask, VarlenSpans):  # flash varlen: [b*t, heads, d]
                q, k, v = (y.transpose(1, 2).reshape(b * t, -1, self.head_dim)
                           for y in (q, k, v))
                out = _varlen_attention(q, k, v, mask, gqa)
                return self._out(out.reshape(b, t, -1))
            out = _FLEX[mask.kv_indices.device.type](q, k, v, block_mask=mask, enable_gqa=gqa)
        return self._out(out.transpose(1, 2).reshape(b, t, -1))

    def forward_cached(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                       mask: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor],
                       slots: torch.Tensor) -> torch.Tensor:
        """Generation: the keys and values of the new tokens `x` [b, t, hidden] are written into
        `cache` (k, v: [b, kv_heads, cache_slots, head_dim]) at `slots` [t], and the queries
        attend to the whole cache through `mask` [b, 1, t, cache_slots] (True = may attend)."""
        b, t, _ = x.shape
        q, k, v = self._heads(x, cos, sin)
        k_cache, v_cache = cache
        k_cache.index_copy_(2, slots, k)
        v_cache.index_copy_(2, slots, v)
        # The q heads that share a kv head (heads kv*g .. kv*g+g-1) become one query of g*t rows:
        # plain attention over the cache as it is, no repeated kv copies, any SDPA kernel.
        group = self.n_heads // self.n_kv
        q = q.reshape(b, self.n_kv, group * t, self.head_dim)
        if group > 1:
            mask = mask.unsqueeze(2).expand(b, 1, group, t, mask.shape[-1]).reshape(
                b, 1, group * t, mask.shape[-1])
        out = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask)
        # (reshape: SDPA's fp32 kernels on CUDA may return it with strides a view cannot take)
        out = out.reshape(b, self.n_heads, t, self.head_dim)
        return self._out(out.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        hs, inter, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(hs, inter, bias=bias)
        self.up_proj = nn.Linear(hs, inter, bias=bias)
        self.down_proj = nn.Linear(inter, hs, bias=bias)
        # runtime-only fusion, as Attention's: set by Decoder.fuse_for_inference / concat
        self.gate_up_weight: torch.Tensor | None = None
        self.gate_up_bias: torch.Tensor | None = None
        self.concat_gate_up = False
        self.gate_up_linear: nn.Module | None = None  # as Attention.qkv_linear
        # a trained model's MLP through FP8 matmuls (kdengine.models.fp8_train), set where
        # fp8_as_one holds
        self.fp8_matmuls = False
        # an FP8 teacher's down_proj takes gate/up whole: SwiGLU and the quantization of its
        # rows are one pass (kdengine.models.fp8.Fp8Linear.swiglu)
        self.fused_swiglu = False

    def from_gate_up(self, gate_up: torch.Tensor) -> torch.Tensor:
        """The MLP's output from its gate/up projection's (an FP8 teacher's blocks make that
        projection with the norm before it: DecoderLayer.fused_norms)."""
        if self.fused_swiglu:
            return self.down_proj.swiglu(gate_up)
        gate, up = gate_up.chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_swiglu:
            return self.down_proj.swiglu(self.gate_up_linear(x))
        if self.fp8_matmuls:  # one autograd function: SwiGLU's passes quantize for the matmuls
            gate_up = torch.cat([self.gate_proj.weight, self.up_proj.weight])
            return fp8_swiglu_mlp(x, gate_up, self.down_proj.weight)
        if self.gate_up_linear is not None:
            gate, up = self.gate_up_linear(x).chunk(2, dim=-1)
        elif self.gate_up_weight is not None:
            gate, up = F.linear(x, self.gate_up_weight, self.gate_up_bias).chunk(2, dim=-1)
        elif self.concat_gate_up:
            projs = (self.gate_proj, self.up_proj)
            bias = (torch.cat([p.bias for p in projs]) if self.gate_proj.bias is not None
                    else None)
            gate_up = F.linear(x, torch.cat([p.weight for p in projs]), bias)
            return self.down_proj(swiglu(gate_up))  # one pass each way on the GPU
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)

    def fp8_as_one(self) -> bool:
        """Whether a trained FP8 MLP runs as kdengine.models.fp8_train.fp8_swiglu_mlp: no
        biases (no pair this engine has met has them) and 16-aligned weights."""
        projs = (self.gate_proj, self.up_proj, self.down_proj)
        return (self.gate_up_linear is None and self.gate_up_weight is None
                and all(p.bias is None and quantizable(p.weight) for p in projs))



def sliding_window_mask(seq_len: int, window: int, device: torch.device) -> torch.Tensor:
    """[seq, seq] bool, True where query i may see key j: j <= i and j > i - window
    (transformers' sliding_window_causal_mask_function)."""
    i = torch.arange(seq_len, device=device).unsqueeze(1)
    j = torch.arange(seq_len, device=device).unsqueeze(0)
    return (j <= i) & (j > i - window)


# --- packed rows: attention that never crosses an example boundary -------------------------

PACKED_ATTENTION = ("auto", "sdpa", "flex", "varlen")


class VarlenSpans(NamedTuple):
    """The examples of packed rows for flash varlen attention: the rows flattened to
    batch*seq tokens, `cu_seqlens` [examples + 1] int32 the start of each example (and the
    end), `max_len` a bound on an example's length (the row length: no second host sync, and
    one compiled shape), `window` the sliding window or None."""

    cu_seqlens: torch.Tensor
    max_len: int
    window: int | None


def example_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """[batch, seq] int64: which example of its row each token belongs to (0, 1, ...). An
    example starts at the row's first token and wherever the position does not continue the
    previous token's by one (packed rows restart at 0)."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    return starts.long().cumsum(1) - 1


def packed_causal_mask(examples: torch.Tensor, window: int | None) -> torch.Tensor:
    """[batch, 1, seq, seq] bool for SDPA, True where query i may see key j: the same example,
    j <= i, and j > i - window with a window."""
    seq = examples.shape[1]
    i = torch.arange(seq, device=examples.device).unsqueeze(1)
    j = torch.arange(seq, device=examples.device).unsqueeze(0)
    allowed = j <= i
    if window is not None:
        allowed = allowed & (j > i - window)
    return ((examples.unsqueeze(2) == examples.unsqueeze(1)) & allowed).unsqueeze(1)


_FLEX: dict[str, Any] = {}  # device type -> flex_attention (compiled on CUDA: its fast kernel)


def packed_block_mask(examples: torch.Tensor, window: int | None) -> Any:
    """The same mask as packed_causal_mask as a FlexAttention BlockMask: blocks of 128x128
    that no query may see are skipped, not computed."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    device = examples.device
    if device.type not in _FLEX:
        # eager flex_attention is a slow reference; on CUDA it must run compiled
        _FLEX[device.type] = (torch.compile(flex_attention, dynamic=False)
                              if device.type == "cuda" else flex_attention)

    def same_example_causal(b, h, q, kv):
        keep = (examples[b, q] == examples[b, kv]) & (kv <= q)
        if window is not None:
            keep = keep & (kv > q - window)
        return keep

    batch, seq = examples.shape
    return create_block_mask(same_example_causal, batch, None, seq, seq, device=device,
                             _compile=device.type == "cuda")


def packed_varlen_spans(examples: torch.Tensor, window: int | None) -> VarlenSpans:
    """The examples of `examples` [batch, seq] as flat spans for varlen attention (one host
    sync per batch, for the number of examples)."""
    if "gqa" not in _VARLEN:
        _VARLEN["gqa"] = _varlen_gqa_mode() or "native"
    batch, seq = examples.shape
    starts = torch.ones_like(examples, dtype=torch.bool)
    starts[:, 1:] = examples[:, 1:] != examples[:, :-1]
    flat = starts.flatten().nonzero().squeeze(1)
    end = torch.tensor([batch * seq], device=examples.device, dtype=flat.dtype)
    return VarlenSpans(torch.cat([flat, end]).to(torch.int32), seq, window)


def _autocast_inputs(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """q, k, v in autocast's dtype, as SDPA gets them: autocast does not know flex or varlen
    (and the fp32 rotary tables would otherwise keep them in fp32)."""
    device = xs[0].device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        return tuple(x.to(dtype) for x in xs)
    return xs


# "gqa": how varlen_attn gets fewer kv heads than q heads, set eagerly (packed_varlen_spans):
# "kwarg" (enable_gqa=True, torch 2.13), "native" (passed as they are: flash's own GQA; torch
# 2.11's wrapper lets them through, checked on the H200 to give the "repeat" results, 0.8 GiB
# less), "repeat" (each kv head repeated for its q heads: the benchmark's comparison)
_VARLEN: dict[str, str] = {}


def _varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spans: VarlenSpans,
                      gqa: bool) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn

    mode = _VARLEN.get("gqa", "repeat") if gqa else "none"
    if mode == "repeat":
        repeat = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
    extra = {"enable_gqa": True} if mode == "kwarg" else {}
    # flash's window (left, 0) sees left+1 keys, ours `window` keys (j > i - window)
    window = (-1, 0) if spans.window is None else (spans.window - 1, 0)
    return varlen_attn(q, k, v, spans.cu_seqlens, spans.cu_seqlens, spans.max_len,
                       spans.max_len, window_size=window, **extra)


@functools.cache
def _varlen_gqa_mode() -> str | None:
    """"kwarg" or "native" where this torch's varlen_attn serves the decoder (it needs
    `window_size`: torch >= 2.11), else None (auto falls back to flex)."""
    try:
        from torch.nn.attention.varlen import varlen_attn  # (slow to import: only when used)
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    if "window_size" not in params:
        return None
    return "kwarg" if "enable_gqa" in params else "native"


class Pending(NamedTuple):
    """The residual stream and a sublayer's output not yet added to it (between an FP8
    teacher's blocks: DecoderLayer._forward_fused)."""
    stream: torch.Tensor
    add: torch.Tensor


def stream(x: torch.Tensor | Pending) -> torch.Tensor:
    """The residual stream, its pending add made."""
    return x.stream + x.add if isinstance(x, Pending) else x


class DecoderLayer(nn.Module):
    def __init__(self, config: DecoderConfig, index: int = 0) -> None:
        super().__init__()
        self.window = config.window_of(index)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)
        # an FP8 teacher's projections norm and quantize their input rows in one pass
        # (kdengine.models.fp8.Fp8Linear.normed, add_normed): the norms are handed to them
        self.fused_norms = False

    def forward(self, x: torch.Tensor | Pending, cos: torch.Tensor, sin: torch.Tensor,
                mask: Any = None) -> torch.Tensor | Pending:
        if self.fused_norms:
            return self._forward_fused(x, cos, sin, mask)
        x = stream(x)
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))

    def _forward_fused(self, x: torch.Tensor | Pending, cos: torch.Tensor, sin: torch.Tensor,
                       mask: Any) -> Pending:
        """An FP8 teacher's block: each norm makes the residual stream's sum before it, the
        normed rows and their quantization for its projection in one pass
        (Fp8Linear.normed/add_normed). The block's own last add is left Pending, to ride in the
        next block's first norm: one pass over the stream less a block (Decoder.forward makes
        the last block's)."""
        attn = self.self_attn
        if isinstance(x, Pending):
            x, qkv = attn.qkv_linear.add_normed(x.stream, x.add, self.input_layernorm)
            attended = attn(x, cos, sin, mask, qkv=qkv)
        else:
            attended = attn(x, cos, sin, mask, norm=self.input_layernorm)
        x, gate_up = self.mlp.gate_up_linear.add_normed(x, attended,
                                                        self.post_attention_layernorm)
        return Pending(x, self.mlp.from_gate_up(gate_up))

    def forward_cached(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                       mask: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor],
                       slots: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn.forward_cached(self.input_layernorm(x), cos, sin, mask, cache,
                                              slots)
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderBody(nn.Module):
    """`model.*` of the HF layout: embeddings, layers, final norm."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        # a model built on the meta device (to be loaded, or to read its shapes) skips
        # nn.Embedding's init: on meta tensors it goes through torch._refs, whose first use
        # imports torch._dynamo (~1 s of a `kdengine train --check`, which compiles nothing)
        meta = torch.empty(()).is_meta
        weight = torch.empty(config.vocab_size, config.hidden_size) if meta else None
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, _weight=weight)
        self.layers = nn.ModuleList(DecoderLayer(config, i)
                                    for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class Decoder(nn.Module):
    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        self.model = DecoderBody(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        # A plain attribute, not a buffer: `.to(bfloat16)` must not round the frequencies, and a
        # model built on the meta device still gets real ones.
        self.inv_freq = rope_inv_freq(config)
        # packed rows' attention kernel (PACKED_ATTENTION): "auto" is SDPA with a boolean mask
        # on the CPU, flash varlen on CUDA in bf16/fp16, FlexAttention on CUDA in fp32
        self.packed_attention = "auto"

    @property
    def lm_head_weight(self) -> torch.Tensor:
        return self.lm_head.weight

    def rope(self, seq_len: int, device: torch.device,
             dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [seq, head_dim], computed in float32 and cast to the activations' dtype."""
        inv_freq = self.inv_freq
        if inv_freq.device != device:
            # kept where the model runs: a host-to-device copy per forward waits for the stream
            inv_freq = self.inv_freq = inv_freq.to(device)
        pos = torch.arange(seq_len, device=device, dtype=torch.float32)
        freqs = torch.outer(pos, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def packed_rope(self, position_ids: torch.Tensor,
                    dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [batch, 1, seq, head_dim] at `position_ids` [batch, seq] (float32 math)."""
        inv_freq = self.inv_freq
        if inv_freq.device != position_ids.device:
            inv_freq = self.inv_freq = inv_freq.to(position_ids.device)
        freqs = position_ids.to(torch.float32).unsqueeze(-1) * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def packed_backend(self, device: torch.device, dtype: torch.dtype) -> str:
        """The kernel that packed rows run with here (see `packed_attention`)."""
        backend = self.packed_attention
        if backend not in PACKED_ATTENTION:
            raise ValueError(f"packed_attention {backend!r} is not one of "
                             f"{', '.join(PACKED_ATTENTION)}")
        if backend != "auto":
            return backend
        if device.type != "cuda":
            return "sdpa"
        if torch.is_autocast_enabled("cuda"):
            dtype = torch.get_autocast_dtype("cuda")
        half = dtype in (torch.bfloat16, torch.float16)
        return "varlen" if half and _varlen_gqa_mode() is not None else "flex"

    def attention_masks(self, position_ids: torch.Tensor,
                        dtype: torch.dtype) -> dict[int | None, Any]:
        """Per sliding window (None: full), the mask that keeps packed rows' attention inside
        each example, in the form the chosen kernel takes; built once per batch for all layers.
        (Data-dependent: kdengine.compiled keeps it out of compiled graphs.)"""
        build = {"sdpa": packed_causal_mask, "flex": packed_block_mask,
                 "varlen": packed_varlen_spans}[self.packed_backend(position_ids.device, dtype)]
        examples = example_ids(position_ids)
        return {w: build(examples, w) for w in {layer.window for layer in self.model.layers}}

    def forward(self, input_ids: torch.Tensor,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states [batch, seq, hidden] of `input_ids` [batch, seq]. With
        `position_ids` [batch, seq] (restarting at each packed example) the rotary positions
        come from them and no token attends across an example boundary."""
        x = self.model.embed_tokens(input_ids)
        if position_ids is not None:
            cos, sin = self.packed_rope(position_ids, x.dtype)
            packed = self.attention_masks(position_ids, x.dtype)
            for layer in self.model.layers:
                x = layer(x, cos, sin, packed[layer.window])
            return self.model.norm(stream(x))
        seq = input_ids.shape[1]
        cos, sin = self.rope(seq, x.device, x.dtype)
        masks: dict[int, torch.Tensor] = {}
        for layer in self.model.layers:
            mask = None
            if layer.window is not None and seq > layer.window:
                if layer.window not in masks:
                    masks[layer.window] = sliding_window_mask(seq, layer.window, x.device)
                mask = masks[layer.window]
            x = layer(x, cos, sin, mask)
        return self.model.norm(stream(x))

    def forward_cached(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                       cache: list[tuple[torch.Tensor, torch.Tensor]], slots: torch.Tensor,
                       masks: dict[int | None, torch.Tensor]) -> torch.Tensor:
        """Generation (kdengine.generation): final hidden states [batch, t, hidden] of new tokens
        `input_ids` [batch, t] at rotary positions `position_ids` [batch, t], attending over a
        KV cache. Their keys and values go into `cache` (per layer k, v [batch, kv_heads,
        cache_slots, head_dim]) at `slots` [t]; `masks` holds, per sliding window (None: full),
        which cache slots each token may see ([batch, 1, t, cache_slots], True = may attend)."""
        x = self.model.embed_tokens(input_ids)
        cos, sin = self.packed_rope(position_ids, x.dtype)
        for layer, layer_cache in zip(self.model.layers, cache, strict=True):
            x = layer.forward_cached(x, cos, sin, masks[layer.window], layer_cache, slots)
        return self.model.norm(x)

    @torch.no_grad()
    def fuse_for_inference(self) -> Decoder:
        """For a frozen model: q/k/v and gate/up become one weight each (fewer, larger matmuls).

        The fused weights are non-persistent buffers and the HF-named parameters become views
        into them (no extra memory), so `state_dict()` and anything saved keep the HF layout and
        values. Only for models that are not trained (the fused buffers take no gradient)."""
        if any(p.requires_grad for p in self.parameters()):
            raise ValueError("fuse_for_inference is for frozen models: call requires_grad_(False) "
                             "first (a trained model uses concat_projections instead)")

        def fuse(owner: nn.Module, name: str, projs: tuple[nn.Linear, ...]) -> None:
            weight = torch.cat([p.weight for p in projs])
            bias = (torch.cat([p.bias for p in projs]) if projs[0].bias is not None else None)
            delattr(owner, f"{name}_weight")  # the plain None attributes become buffers
            delattr(owner, f"{name}_bias")
            owner.register_buffer(f"{name}_weight", weight, persistent=False)
            owner.register_buffer(f"{name}_bias", bias, persistent=False)
            start = 0
            for p in projs:  # the parameters become views: one copy of the numbers
                rows = p.weight.shape[0]
                p.weight = nn.Parameter(weight[start:start + rows], requires_grad=False)
                if bias is not None:
                    p.bias = nn.Parameter(bias[start:start + rows], requires_grad=False)
                start += rows

        for layer in self.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            if attn.qkv_weight is None and attn.qkv_linear is None:
                fuse(attn, "qkv", (attn.q_proj, attn.k_proj, attn.v_proj))
            if mlp.gate_up_weight is None and mlp.gate_up_linear is None:
                fuse(mlp, "gate_up", (mlp.gate_proj, mlp.up_proj))
        return self

    def concat_projections(self, on: bool = True) -> Decoder:
        """For a trained model under torch.compile: each forward concatenates q/k/v and
        gate/up weights and runs one matmul for each group (the parameters are unchanged)."""
        for layer in self.model.layers:
            layer.self_attn.concat_qkv = on
            layer.mlp.concat_gate_up = on
        return self

    def logits(self, input_ids: torch.Tensor,
               position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Full logits [batch, seq, vocab]: for evaluation and tests, not the training path."""
        return self.lm_head(self(input_ids, position_ids))

    def init_weights(self, generator: torch.Generator | None = None, std: float = 0.02) -> None:
        """Fresh random init (normal(0, std) matrices, unit norms), seeded through `generator`."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                elif name.endswith(".bias"):
                    p.zero_()
                else:
                    p.copy_(torch.randn(p.shape, generator=generator) * std)
