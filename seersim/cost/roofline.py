"""Analytic roofline step time from model and GPU specs.

time = max(compute, memory) + collectives + per-step overhead, where
- compute: 2 FLOPs per weight per token for the layers (the input embedding is a
  lookup, not a GEMM), the lm_head only for the rows whose logits the engine computes
  (the last token of each sequence, every verified position when speculating), plus
  attention pairs (prefill pairs in MLA's non-absorbed form), at an achieved fraction
  of peak;
- memory: weights read once per step (MoE: only the experts the batch touches,
  E·(1−(1−k/E)^T) per layer; dense weights once per DP replica; not the input
  embedding table, of which a step reads only its tokens' rows) plus the KV of every
  attended context token as each GPU stores it (MLA latents and GQA heads fewer than
  tp are replicated, not sharded), at an achieved fraction of HBM bandwidth;
- collectives: TP all-reduces (2 per layer) and EP all-to-alls (2 per MoE layer),
  over NVLink inside a node and the NIC beyond.
"""

from __future__ import annotations

from seersim.config import Parallelism, Scenario
from seersim.cost.base import CachedStepLines, StepLines
from seersim.cost.collectives import ep_all_to_all_s, link_bytes_per_s, tp_message_bytes
from seersim.cost.overhead import ENGINE_STEP_OVERHEAD_S
from seersim.specs import GPUSpec, ModelSpec


class RooflineCost(CachedStepLines):
    name = "roofline"

    def __init__(
        self,
        model: ModelSpec,
        gpu: GPUSpec,
        parallelism: Parallelism,
        flops_efficiency: float | None = None,
        bandwidth_efficiency: float | None = None,
        step_overhead_s: float | None = None,
    ) -> None:
        self.model, self.gpu, self.par = model, gpu, parallelism
        g = parallelism.gpus
        self.step_overhead_s = ENGINE_STEP_OVERHEAD_S["vllm-v1"] if step_overhead_s is None else step_overhead_s
        self._flops_per_s = g * gpu.peak_flops * (flops_efficiency or gpu.flops_efficiency)
        self._bytes_per_s = g * gpu.hbm_bandwidth_bytes_per_s * (bandwidth_efficiency or gpu.bandwidth_efficiency)
        self._link_bytes_per_s = link_bytes_per_s(gpu, g)
        # Dense weights are replicated per DP rank; routed experts are sharded (EP), read once.
        # (the input embedding is gathered row by row, not read whole; it is one of the 16-bit ones)
        gathered = 0 if model.tie_word_embeddings else model.embedding_params
        self._dense_bytes = model.params_bytes(model.dense_params - gathered, model.unquantized_params - gathered) * parallelism.dp
        self._expert_bytes = model.expert_params * model.weight_bytes_per_param
        self._layer_params = model.active_params - model.embedding_params * (1 if model.tie_word_embeddings else 2)
        self._moe_layers = model.num_moe_layers
        self._attn_slope_s = model.attention_flops_per_pair / self._flops_per_s
        self._prefill_pair_s = model.prefill_attention_flops_per_pair / self._flops_per_s
        # every GPU of a TP group reads its own copy of the KV it stores
        self._kv_slope_s = model.kv_bytes_per_token_stored(parallelism.tp) / self._bytes_per_s

    @classmethod
    def from_scenario(cls, scenario: Scenario) -> "RooflineCost":
        c = scenario.cost
        overhead = c.step_overhead_s if c.step_overhead_s is not None else ENGINE_STEP_OVERHEAD_S[c.engine_kind]
        return cls(
            scenario.model, scenario.gpu, scenario.cluster.parallelism, c.flops_efficiency, c.bandwidth_efficiency, overhead
        )

    def collective_s(self, new_tokens: int) -> float:
        m, par, gpu = self.model, self.par, self.gpu
        tokens_per_rank = new_tokens / par.dp
        t = 0.0
        if par.tp > 1:
            ring = 2 * (par.tp - 1) / par.tp * tp_message_bytes(m, tokens_per_rank) / self._link_bytes_per_s
            t += 2 * m.num_layers * (gpu.collective_latency_s + ring)
        return t + ep_all_to_all_s(m, par, gpu, tokens_per_rank, gpu.collective_latency_s)

    def _step_lines(self, num_seqs: int, new_tokens: int, extra_attn_pairs: int, queries_per_seq: float) -> StepLines:
        m = self.model
        logit_rows = min(float(new_tokens), num_seqs * queries_per_seq)
        fixed = self.step_overhead_s + self.collective_s(new_tokens)
        flops = 2.0 * (self._layer_params * new_tokens + m.lm_head_params * logit_rows)
        compute0 = flops / self._flops_per_s + self._prefill_pair_s * extra_attn_pairs
        weights = self._dense_bytes + self._moe_layers * m.distinct_experts_touched(new_tokens) * self._expert_bytes
        memory0 = weights / self._bytes_per_s
        return StepLines(
            intercepts_s=(fixed + compute0, fixed + memory0),
            slopes_s=(self._attn_slope_s * queries_per_seq, self._kv_slope_s),
        )
