"""Model architecture spec: the shapes that decide weight bytes, KV bytes and FLOPs.

Parameter counts are *derived from the architecture* (as a model's config.json gives
it) rather than typed in, so a user-added model needs only its config values; the
catalog's tests check the derived totals against the model cards.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from seersim.fields import Count, NonNegCount, Real


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
        embed = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        attn = self.num_layers * self.attention_params_per_layer
        dense_layers = self.num_layers - self.num_moe_layers
        mlp = dense_layers * 3 * self.hidden_size * self.intermediate_size
        shared = self.num_moe_layers * (self.num_shared_experts * self.expert_params + self.hidden_size * self.num_experts)
        return embed + attn + mlp + shared

    @property
    def total_params(self) -> int:
        return self.dense_params + self.routed_expert_params

    @property
    def active_params(self) -> int:
        """Parameters one token's forward pass multiplies (dense + its top-k experts)."""
        return self.dense_params + self.num_moe_layers * self.experts_per_token * self.expert_params

    @property
    def weight_bytes(self) -> float:
        return self.total_params * self.weight_bytes_per_param

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

    def distinct_experts_touched(self, tokens: int) -> float:
        """Expected routed experts per MoE layer that `tokens` tokens touch (uniform top-k).

        E·(1−(1−k/E)^B): small tail batches read a fraction of the expert weights.
        """
        if not self.is_moe or tokens <= 0:
            return 0.0
        e, k = self.num_experts, self.experts_per_token
        return e * (1.0 - (1.0 - k / e) ** tokens)
