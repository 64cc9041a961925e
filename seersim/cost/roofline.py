"""Analytic roofline step time from model and GPU specs.

time = max(compute, memory) + collectives + per-step overhead, where
- compute: 2·active_params FLOPs per token plus attention pairs, at an achieved
  fraction of peak;
- memory: weights read once per step (MoE: only the experts the batch touches,
  E·(1−(1−k/E)^T) per layer; dense weights once per DP replica) plus the KV of every
  attended context token, at an achieved fraction of HBM bandwidth;
- collectives: TP all-reduces (2 per layer) and EP all-to-alls (2 per MoE layer),
  over NVLink inside a node and the NIC beyond.
"""

from __future__ import annotations

from functools import lru_cache

from seersim.config import Parallelism
from seersim.cost.base import StepLines
from seersim.specs import GPUSpec, ModelSpec

ACTIVATION_BYTES = 2  # bf16 activations on the wire


class RooflineCost:
    name = "roofline"

    def __init__(self, model: ModelSpec, gpu: GPUSpec, parallelism: Parallelism) -> None:
        self.model, self.gpu, self.par = model, gpu, parallelism
        g = parallelism.gpus
        self._flops_per_s = g * gpu.peak_flops * gpu.flops_efficiency
        self._bytes_per_s = g * gpu.hbm_bandwidth_bytes_per_s * gpu.bandwidth_efficiency
        self._link_bytes_per_s = (
            gpu.nvlink_bandwidth_bytes_per_s if g <= gpu.gpus_per_node else gpu.scaleout_bandwidth_bytes_per_s
        )
        # Dense weights are replicated per DP rank; routed experts are sharded (EP), read once.
        self._dense_bytes = model.dense_params * model.weight_bytes_per_param * parallelism.dp
        self._expert_bytes = model.expert_params * model.weight_bytes_per_param
        self._active_params = model.active_params
        self._moe_layers = model.num_moe_layers
        self._attn_slope_s = model.attention_flops_per_pair / self._flops_per_s
        self._kv_slope_s = model.kv_bytes_per_token / self._bytes_per_s
        self.step_lines = lru_cache(maxsize=65536)(self._step_lines)  # type: ignore[method-assign]

    def collective_s(self, new_tokens: int) -> float:
        m, par, gpu = self.model, self.par, self.gpu
        tokens_per_rank = new_tokens / par.dp
        t = 0.0
        if par.tp > 1:
            msg = tokens_per_rank * m.hidden_size * ACTIVATION_BYTES
            ring = 2 * (par.tp - 1) / par.tp * msg / self._link_bytes_per_s
            t += 2 * m.num_layers * (gpu.collective_latency_s + ring)
        if par.ep > 1 and m.is_moe:
            sent = tokens_per_rank / par.tp * m.experts_per_token * m.hidden_size * ACTIVATION_BYTES
            a2a = sent * (par.ep - 1) / par.ep / self._link_bytes_per_s
            t += 2 * m.num_moe_layers * (gpu.collective_latency_s + a2a)
        return t

    def _step_lines(
        self, num_seqs: int, new_tokens: int, extra_attn_pairs: int, queries_per_seq: float = 1.0
    ) -> StepLines:
        m = self.model
        fixed = self.gpu.step_overhead_s + self.collective_s(new_tokens)
        compute0 = (2.0 * self._active_params * new_tokens) / self._flops_per_s + self._attn_slope_s * extra_attn_pairs
        weights = self._dense_bytes + self._moe_layers * m.distinct_experts_touched(new_tokens) * self._expert_bytes
        memory0 = weights / self._bytes_per_s
        return StepLines(
            intercepts_s=(fixed + compute0, fixed + memory0),
            slopes_s=(self._attn_slope_s * queries_per_seq, self._kv_slope_s),
        )
