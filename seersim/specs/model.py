"""Model architecture spec: the shapes that decide weight bytes, KV bytes and FLOPs.

Parameter counts are *derived from the architecture* (as a model's config.json gives
it) rather than typed in, so a user-added model needs only its config values; the
catalog's tests check the derived totals against the model cards.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from seersim.fields import Count, NonNegCount, Real


# Issue 11's audit of a DP32/EP32 Kimi-K2 instance: the slowest GPU's routed-expert time is
# 1.46x the mean at 8 tokens per rank; uniform random routing gives 1.33x there
# (`ModelSpec.ep_load_factor`), so real routing spreads 0.46 / 0.33 = 1.39x wider.
EP_ROUTING_SKEW = 1.39


class LinearShape(NamedTuple):
    """One GEMM of a layer on one TP rank: `tokens × k` activations times a `k × n` weight."""

    op: str
    k: int
    n: int


class ModelSpec(BaseModel):
    """One LLM's architecture, as in its published config.json."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    num_layers: Count
    hidden_size: Count
    intermediate_size: Count = Field(description="dense (non-MoE) MLP width")
    num_attention_heads: Count
    num_kv_heads: Count
    head_dim: Count
    vocab_size: Count
    tie_word_embeddings: bool = False
    mlp_gated: bool = Field(True, description="gated (SwiGLU) MLP: up and gate projections")
    attention: Literal["gqa", "mla"] = "gqa"
    # MLA (DeepSeek-V3 / Kimi-K2 style): the KV cache holds a latent of this size per layer.
    kv_lora_rank: NonNegCount = 0
    q_lora_rank: NonNegCount = 0
    qk_rope_head_dim: NonNegCount = 0
    qk_nope_head_dim: NonNegCount = 0
    v_head_dim: NonNegCount = 0
    # MoE: routed experts, top-k, shared experts; the first `num_dense_layers` are dense.
    num_experts: NonNegCount = 0
    experts_per_token: NonNegCount = 0
    num_shared_experts: NonNegCount = 0
    moe_intermediate_size: NonNegCount = 0
    num_dense_layers: NonNegCount = 0
    weight_bytes_per_param: Real = Field(2.0, gt=0, le=8, description="2 = bf16, 1 = fp8 (8 = fp64, the widest)")
    kv_bytes_per_element: Real = Field(2.0, gt=0, le=8, description="2 = bf16 KV cache (8 = fp64, the widest)")
    sources: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_consistency(self) -> "ModelSpec":
        if self.attention == "mla" and (self.kv_lora_rank == 0 or self.qk_rope_head_dim == 0):
            raise ValueError("attention 'mla' needs kv_lora_rank and qk_rope_head_dim > 0")
        if self.attention == "gqa" and self.num_attention_heads % self.num_kv_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} must be a multiple of num_kv_heads={self.num_kv_heads} "
                "(each KV head serves an equal group of query heads)"
            )
        if self.num_experts and not (0 < self.experts_per_token <= self.num_experts):
            raise ValueError("experts_per_token must be in 1..num_experts for a MoE model")
        if self.num_experts and self.moe_intermediate_size == 0:
            raise ValueError("a MoE model needs moe_intermediate_size > 0")
        if self.num_dense_layers > self.num_layers:
            raise ValueError("num_dense_layers cannot exceed num_layers")
        return self

    # ---- derived shapes -------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def attention_layout(self) -> str:
        """"mla", "mha" (one KV head per query head) or "gqa": what a reader of a
        catalog listing wants, where `attention` only picks the MLA or the GQA formulas
        (MHA is GQA with as many KV heads as query heads)."""
        if self.attention == "mla":
            return "mla"
        return "mha" if self.num_kv_heads == self.num_attention_heads else "gqa"

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.num_dense_layers if self.is_moe else 0

    @property
    def kv_bytes_per_token(self) -> float:
        """KV cache bytes one token occupies across all layers (DESIGN §4 formulas)."""
        if self.attention == "mla":
            per_layer = self.kv_lora_rank + self.qk_rope_head_dim
        else:
            per_layer = 2 * self.num_kv_heads * self.head_dim
        return self.num_layers * per_layer * self.kv_bytes_per_element

    def kv_heads_per_rank(self, tp: int) -> int:
        """KV heads one TP rank stores: vLLM replicates KV heads when tp > num_kv_heads."""
        return max(1, self.num_kv_heads // tp)

    def kv_bytes_per_token_per_gpu(self, tp: int) -> float:
        """KV bytes one token occupies on each GPU of its TP group.

        MLA caches one latent per token that every TP rank keeps whole (attention heads
        are split, the latent is not); GQA shards KV heads over ranks but replicates
        them once tp exceeds the KV head count (vLLM). So the KV of a TP group is not
        `kv_bytes_per_token` split `tp` ways in these cases.
        """
        if self.attention == "mla":
            per_layer = self.kv_lora_rank + self.qk_rope_head_dim
        else:
            per_layer = 2 * self.kv_heads_per_rank(tp) * self.head_dim
        return self.num_layers * per_layer * self.kv_bytes_per_element

    def kv_bytes_per_token_stored(self, tp: int) -> float:
        """KV bytes one token costs its TP group's memory (all ranks' copies together):
        the divisor of KV capacity."""
        return tp * self.kv_bytes_per_token_per_gpu(tp)

    @property
    def embedding_params(self) -> int:
        """Input embedding table (a lookup: read one row per token, never a GEMM)."""
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        """Output projection to the vocabulary (tied or not, it runs as a GEMM)."""
        return self.vocab_size * self.hidden_size

    def attention_gemms(self, tp: int) -> list[LinearShape]:
        """The attention block's projections of one layer on one TP rank.

        MLA: the KV down-projection (`kv_a`) is replicated; the up-projection (`kv_b`)
        runs per token whether absorbed into q/o (decode) or applied to the latent
        (prefill), with the same FLOPs per new token.
        """
        h, nh = self.hidden_size, self.num_attention_heads
        heads = max(1, nh // tp)
        if self.attention == "mla":
            qk = self.qk_nope_head_dim + self.qk_rope_head_dim
            q = (
                [LinearShape("q_a_proj", h, self.q_lora_rank), LinearShape("q_b_proj", self.q_lora_rank, heads * qk)]
                if self.q_lora_rank
                else [LinearShape("q_proj", h, heads * qk)]
            )
            return q + [
                LinearShape("kv_a_proj", h, self.kv_lora_rank + self.qk_rope_head_dim),
                LinearShape("kv_b_proj", self.kv_lora_rank, heads * (self.qk_nope_head_dim + self.v_head_dim)),
                LinearShape("attn_out_proj", heads * self.v_head_dim, h),
            ]
        qkv = (heads + 2 * self.kv_heads_per_rank(tp)) * self.head_dim
        return [LinearShape("qkv_proj", h, qkv), LinearShape("attn_out_proj", heads * self.head_dim, h)]

    def mlp_gemms(self, intermediate: int, tp: int) -> list[LinearShape]:
        """An MLP of width `intermediate`, column/row-parallel over `tp` ranks."""
        width = max(1, intermediate // tp)
        up = (2 if self.mlp_gated else 1) * width
        return [LinearShape("mlp_up_gate", self.hidden_size, up), LinearShape("mlp_down", width, self.hidden_size)]

    def layer_gemms(self, tp: int) -> list[LinearShape]:
        """A decoder layer's weight GEMMs outside the MoE (what a profile times and the
        curves price as named GEMM operators): the attention projections, and the dense
        MLP where the model has dense layers."""
        gemms = self.attention_gemms(tp)
        if self.num_layers > self.num_moe_layers:
            gemms += self.mlp_gemms(self.intermediate_size, tp)
        return gemms

    @property
    def attention_params_per_layer(self) -> int:
        h, nh = self.hidden_size, self.num_attention_heads
        if self.attention == "mla":
            qk_dim = self.qk_nope_head_dim + self.qk_rope_head_dim
            q = (h * self.q_lora_rank + self.q_lora_rank * nh * qk_dim) if self.q_lora_rank else h * nh * qk_dim
            kv_a = h * (self.kv_lora_rank + self.qk_rope_head_dim)
            kv_b = self.kv_lora_rank * nh * (self.qk_nope_head_dim + self.v_head_dim)
            o = nh * self.v_head_dim * h
            return q + kv_a + kv_b + o
        q_o = 2 * h * nh * self.head_dim
        kv = 2 * h * self.num_kv_heads * self.head_dim
        return q_o + kv

    @property
    def expert_params(self) -> int:
        """Parameters of one routed (or shared) expert of one layer (gated MLP)."""
        return 3 * self.hidden_size * self.moe_intermediate_size

    @property
    def routed_expert_params(self) -> int:
        return self.num_moe_layers * self.num_experts * self.expert_params

    @property
    def dense_params(self) -> int:
        """Parameters every token touches: embeddings, attention, dense MLPs, shared experts."""
        embed = self.vocab_params
        attn = self.num_layers * self.attention_params_per_layer
        dense_layers = self.num_layers - self.num_moe_layers
        mlp = dense_layers * (3 if self.mlp_gated else 2) * self.hidden_size * self.intermediate_size
        shared = self.num_moe_layers * self.num_shared_experts * self.expert_params
        return embed + attn + mlp + shared + self.router_params

    @property
    def total_params(self) -> int:
        return self.dense_params + self.routed_expert_params

    @property
    def active_params(self) -> int:
        """Parameters one token's forward pass multiplies (dense + its top-k experts)."""
        return self.dense_params + self.num_moe_layers * self.experts_per_token * self.expert_params

    @property
    def vocab_params(self) -> int:
        """The input embedding and the lm_head (once if tied)."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    @property
    def router_params(self) -> int:
        """The MoE layers' router (gate) weights."""
        return self.num_moe_layers * self.hidden_size * self.num_experts

    @property
    def unquantized_params(self) -> int:
        """Parameters a quantized checkpoint keeps in 16 bits: the embedding, the lm_head
        and the MoE router (DeepSeek-V3's and Kimi-K2's fp8 checkpoints ship them in bf16,
        outside the fp8 blocks; vLLM builds the lm_head and the router unquantized)."""
        return self.vocab_params + self.router_params

    @property
    def unquantized_bytes_per_param(self) -> float:
        """Bytes of one of `unquantized_params` (16 bits, or the weights' own if wider)."""
        return max(self.weight_bytes_per_param, 2.0)

    def params_bytes(self, params: float, unquantized_params: float = 0.0) -> float:
        """Bytes of `params` parameters of which `unquantized_params` stay in 16 bits."""
        return (params - unquantized_params) * self.weight_bytes_per_param + unquantized_params * self.unquantized_bytes_per_param

    @property
    def weight_bytes(self) -> float:
        return self.params_bytes(self.total_params, self.unquantized_params)

    @property
    def attention_flops_per_pair(self) -> float:
        """FLOPs of one (query token, context token) pair over all layers: QK^T and AV.

        MLA is counted in its absorbed (decode) form, attending over the latent.
        """
        nh = self.num_attention_heads
        if self.attention == "mla":
            per_layer = 2 * nh * (2 * self.kv_lora_rank + self.qk_rope_head_dim)
        else:
            per_layer = 4 * nh * self.head_dim
        return self.num_layers * per_layer

    @property
    def prefill_attention_flops_per_pair(self) -> float:
        """Attention FLOPs per (query, context) pair in prefill.

        MLA prefill runs the non-absorbed form (vLLM's MLA backends): K/V are
        up-projected per head, so QK^T spans qk_nope+rope and AV spans v_head_dim,
        about 3.4x fewer FLOPs per pair than attending over the 576-wide latent.
        """
        if self.attention != "mla":
            return self.attention_flops_per_pair
        nh = self.num_attention_heads
        per_layer = 2 * nh * (self.qk_nope_head_dim + self.qk_rope_head_dim + self.v_head_dim)
        return self.num_layers * per_layer

    def distinct_experts_touched(self, tokens: int) -> float:
        """Expected routed experts per MoE layer that `tokens` tokens touch (uniform top-k).

        E·(1−(1−k/E)^B): small tail batches read a fraction of the expert weights.
        """
        if not self.is_moe or tokens <= 0:
            return 0.0
        e, k = self.num_experts, self.experts_per_token
        return e * (1.0 - (1.0 - k / e) ** tokens)

    def ep_load_factor(self, tokens_per_rank: float, ep: int) -> float:
        """Slowest EP rank's routed-expert load over the mean, for one MoE layer.

        Each rank receives ~Poisson(λ = tokens_per_rank·k) expert assignments (every
        rank of the EP group sends its tokens' top-k); the expected maximum over `ep`
        ranks is ≈ λ + √(2λ·ln ep) (Gaussian extreme value), times EP_ROUTING_SKEW for
        routing less uniform than random. The step waits for that rank's expert GEMMs
        and all-to-all, so small per-rank batches pay most (2.3x at 1 token per rank
        on Kimi-K2's EP32, 1.46x at 8, 1.03x at 2,048).
        """
        if not self.is_moe or ep <= 1 or tokens_per_rank <= 0:
            return 1.0
        lam = tokens_per_rank * self.experts_per_token
        return min(float(ep), 1.0 + EP_ROUTING_SKEW * math.sqrt(2.0 * math.log(ep) / lam))
