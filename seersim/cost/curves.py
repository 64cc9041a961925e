"""Kernel efficiency curves of one GPU type, and the operator times they give a model.

The generalising part of calibration: instead of a table per (model, GPU), a GPU's
profiling tables are fitted once to a few *achieved efficiencies* — a GEMM's fraction
of peak FLOP/s as a function of its token count (the knee between memory- and
compute-bound is where a roofline is most wrong), its fraction of HBM bandwidth when
memory-bound, a per-kernel latency, the same for elementwise kernels, attention
efficiencies and the all-reduce's — and applied to any catalog model's shapes. Every
function here accepts scalars or numpy arrays of token counts (the fit evaluates a
whole table at once; the simulator one iteration at a time).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from seersim.specs import GPUSpec, ModelSpec

ACTIVATION_BYTES = 2  # bf16 activations


def check_number(name: str, value, low: float = 0.0, high: float = math.inf, low_open: bool = False) -> None:
    """A calibration field must be a finite number in [low, high] ((low, high] with
    `low_open`): a hand-edited or corrupt file fails here, naming the field, not as a
    division by zero or a NaN deep in a run."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < low or value > high or (low_open and value == low):
        raise ValueError(f"{name} must lie in {'(' if low_open else '['}{low:g}, {high:g}], got {value!r}")


def check_knots(name: str, knots: tuple, values_name: str, values: tuple) -> None:
    """Knots of a piecewise-linear curve: at least one, positive, strictly increasing,
    with one value each."""
    if not knots:
        raise ValueError(f"{name} needs at least one knot")
    for k in knots:
        check_number(name, k, 0.0, low_open=True)
    if any(b <= a for a, b in zip(knots, knots[1:])):
        raise ValueError(f"{name} must be strictly increasing, got {list(knots)}")
    if len(values) != len(knots):
        raise ValueError(f"{values_name} needs one value per knot of {name} ({len(knots)}), got {len(values)}")


@dataclass(frozen=True)
class KernelCurves:
    """Achieved efficiencies of one GPU type's kernels (fitted by `seersim calibrate cost`)."""

    gemm_latency_s: float
    gemm_bandwidth_efficiency: float
    flops_knots_tokens: tuple[float, ...]
    flops_efficiency: tuple[float, ...]
    elementwise_latency_s: float
    elementwise_bandwidth_efficiency: float
    attention_flops_efficiency: float
    attention_bandwidth_efficiency: float
    all_reduce_latency_s: float
    all_reduce_bandwidth_efficiency: float
    # one attention kernel's floor (launch to finish of the smallest): fitted on attention
    # rows; 0 in files fitted without them, where the efficiencies alone were assumed
    attention_latency_s: float = 0.0
    # MLA decode (the absorbed form over the latent) as serving runs it: vLLM's Hopper
    # kernel, FlashMLA, computes query rows (heads x tokens a sequence verifies) in tiles
    # of `mla_decode_tile_rows`, a partial tile costing a whole one, at this FLOP/s
    # efficiency. None: MLA decode priced as other attention (no kernel of its own known)
    mla_decode_flops_efficiency: float | None = None
    mla_decode_tile_rows: int = 1
    sources: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("gemm_latency_s", "elementwise_latency_s", "all_reduce_latency_s", "attention_latency_s"):
            check_number(name, getattr(self, name))
        for name in ("gemm_bandwidth_efficiency", "elementwise_bandwidth_efficiency", "attention_flops_efficiency",
                     "attention_bandwidth_efficiency", "all_reduce_bandwidth_efficiency"):
            check_number(name, getattr(self, name), 0.0, 1.0, low_open=True)
        check_knots("flops_knots_tokens", self.flops_knots_tokens, "flops_efficiency", self.flops_efficiency)
        for e in self.flops_efficiency:
            check_number("flops_efficiency", e, 0.0, 1.0, low_open=True)
        if self.mla_decode_flops_efficiency is not None:
            check_number("mla_decode_flops_efficiency", self.mla_decode_flops_efficiency, 0.0, 1.0, low_open=True)
        check_number("mla_decode_tile_rows", self.mla_decode_tile_rows, 1.0, 4096.0)
        if self.mla_decode_tile_rows != int(self.mla_decode_tile_rows):
            raise ValueError(f"mla_decode_tile_rows must be a whole number of rows, got {self.mla_decode_tile_rows!r}")
        object.__setattr__(self, "mla_decode_tile_rows", int(self.mla_decode_tile_rows))
        for name in ("flops_knots_tokens", "flops_efficiency"):  # (a file may write 1 for 1.0)
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        d["flops_knots_tokens"] = list(self.flops_knots_tokens)
        d["flops_efficiency"] = list(self.flops_efficiency)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "KernelCurves":
        d = dict(d)
        d["flops_knots_tokens"] = tuple(d["flops_knots_tokens"])
        d["flops_efficiency"] = tuple(d["flops_efficiency"])
        return cls(**d)

    def flops_fraction(self, tokens):
        """Achieved / peak FLOP/s of a GEMM over `tokens` rows: piecewise linear in log2(tokens)."""
        x = np.log2(np.maximum(tokens, 1.0))
        return np.interp(x, np.log2(self.flops_knots_tokens), self.flops_efficiency)

    def gemm_scalar_s(self, gpu: GPUSpec, tokens: float, k: int, n: int, weight_bytes_per_param: float = 2.0) -> float:
        """`gemm_s` for one token count in plain floats (the simulator's hot path)."""
        if tokens <= 0:
            return 0.0
        knots = self.__dict__.get("_log_knots")
        if knots is None:
            knots = [math.log2(x) for x in self.flops_knots_tokens]
            object.__setattr__(self, "_log_knots", knots)
        x = math.log2(max(tokens, 1.0))
        eff = self.flops_efficiency
        if x <= knots[0]:
            frac = eff[0]
        elif x >= knots[-1]:
            frac = eff[-1]
        else:
            j = bisect.bisect_right(knots, x) - 1
            frac = eff[j] + (eff[j + 1] - eff[j]) * (x - knots[j]) / (knots[j + 1] - knots[j])
        moved = k * n * weight_bytes_per_param + tokens * (k + n) * ACTIVATION_BYTES
        memory = moved / (gpu.hbm_bandwidth_bytes_per_s * self.gemm_bandwidth_efficiency)
        compute = 2.0 * tokens * k * n / (gpu.peak_flops * frac)
        return self.gemm_latency_s + (memory if memory > compute else compute)

    def gemm_s(self, gpu: GPUSpec, tokens, k: int, n: int, weight_bytes_per_param: float = 2.0):
        """One GEMM (tokens × k) · (k × n): latency + max(bytes moved, FLOPs) at achieved rates."""
        t = np.asarray(tokens, dtype=np.float64)
        moved = k * n * weight_bytes_per_param + t * (k + n) * ACTIVATION_BYTES
        memory = moved / (gpu.hbm_bandwidth_bytes_per_s * self.gemm_bandwidth_efficiency)
        compute = 2.0 * t * k * n / (gpu.peak_flops * self.flops_fraction(t))
        return np.where(t > 0, self.gemm_latency_s + np.maximum(memory, compute), 0.0)

    def elementwise_s(self, gpu: GPUSpec, moved_bytes):
        """A memory-bound elementwise kernel (norm, activation, rotary, residual add)."""
        b = np.asarray(moved_bytes, dtype=np.float64)
        return np.where(b > 0, self.elementwise_latency_s + b / (gpu.hbm_bandwidth_bytes_per_s * self.elementwise_bandwidth_efficiency), 0.0)

    def all_reduce_s(self, gpu: GPUSpec, message_bytes, workers: int):
        """Ring all-reduce of `message_bytes` over `workers` GPUs of one node."""
        if workers <= 1:
            return np.zeros_like(np.asarray(message_bytes, dtype=np.float64))
        link = gpu.nvlink_bandwidth_bytes_per_s * self.all_reduce_bandwidth_efficiency
        return self.all_reduce_latency_s + 2.0 * (workers - 1) / workers * np.asarray(message_bytes, np.float64) / link


def elementwise_bytes(model: ModelSpec, tp: int, tokens, fused: bool) -> list[tuple[str, object]]:
    """Bytes each elementwise kernel of one layer moves for `tokens` tokens on one rank.

    `fused` = vLLM's kernels (residual add fused into RMSNorm: 2 norms, rotary, SiLU-and-mul
    per layer); unfused = the separate norm / add kernels that Vidur's tables time.
    """
    t = np.asarray(tokens, dtype=np.float64)
    h = model.hidden_size * ACTIVATION_BYTES
    width = max(1, model.intermediate_size // tp) * ACTIVATION_BYTES
    act = (3 if model.mlp_gated else 2) * t * width
    if model.attention == "mla":
        rope = 2 * t * (max(1, model.num_attention_heads // tp) + 1) * model.qk_rope_head_dim * ACTIVATION_BYTES
    else:
        rope = 2 * t * (max(1, model.num_attention_heads // tp) + model.kv_heads_per_rank(tp)) * model.head_dim * ACTIVATION_BYTES
    if fused:
        return [("add_rmsnorm", 4 * t * h), ("add_rmsnorm", 4 * t * h), ("rope", rope), ("mlp_act", act)]
    return [("layernorm", 2 * t * h), ("layernorm", 2 * t * h), ("rope", rope), ("mlp_act", act), ("add", 3 * t * h)]


def routed_experts_s(curves: KernelCurves, gpu: GPUSpec, model: ModelSpec, tokens: float, tp: int, ep: int) -> float:
    """One MoE layer's routed experts on the slowest rank: one fused launch, each touched
    expert's weights read once. An EP group sees its ep ranks' tokens and holds E/ep
    experts each, the busiest rank `ModelSpec.ep_load_factor` times the mean rows;
    without EP every expert is split over the tp ranks."""
    w = model.weight_bytes_per_param
    touched = model.distinct_experts_touched(int(round(tokens * ep))) / ep
    if touched <= 0:
        return 0.0
    width = model.moe_intermediate_size // (tp if ep == 1 else 1)
    # token rows per touched expert on the busiest rank
    rows = tokens * model.experts_per_token * model.ep_load_factor(tokens, ep) / touched
    up = curves.gemm_scalar_s(gpu, rows, model.hidden_size, 2 * width, w) - curves.gemm_latency_s
    down = curves.gemm_scalar_s(gpu, rows, width, model.hidden_size, w) - curves.gemm_latency_s
    return 2 * curves.gemm_latency_s + touched * (up + down)
