"""Collective communication of one iteration: TP all-reduces and EP all-to-alls."""

from __future__ import annotations

from seersim.config import Parallelism
from seersim.specs import GPUSpec, ModelSpec

ACTIVATION_BYTES = 2  # bf16 activations on the wire


def link_bytes_per_s(gpu: GPUSpec, gpus: int) -> float:
    """Per-GPU bandwidth of the slowest link a collective over `gpus` GPUs crosses."""
    return gpu.nvlink_bandwidth_bytes_per_s if gpus <= gpu.gpus_per_node else gpu.scaleout_bandwidth_bytes_per_s


def tp_message_bytes(model: ModelSpec, tokens_per_rank: float) -> float:
    """Bytes of one TP all-reduce (the layer's hidden states of the rank's tokens)."""
    return tokens_per_rank * model.hidden_size * ACTIVATION_BYTES


def ep_all_to_all_s(model: ModelSpec, par: Parallelism, gpu: GPUSpec, tokens_per_rank: float, latency_s: float) -> float:
    """Dispatch + combine all-to-alls of every MoE layer (each token to its top-k experts),
    as long as the busiest receiver takes (`ModelSpec.ep_load_factor` times the mean)."""
    if par.ep <= 1 or not model.is_moe:
        return 0.0
    received = tokens_per_rank / par.tp * model.experts_per_token * model.hidden_size * ACTIVATION_BYTES
    received *= model.ep_load_factor(tokens_per_rank / par.tp, par.ep)
    a2a = received * (par.ep - 1) / par.ep / link_bytes_per_s(gpu, par.gpus)
    return 2 * model.num_moe_layers * (latency_s + a2a)
