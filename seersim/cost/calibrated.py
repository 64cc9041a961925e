"""Calibrated step-time models: fitted kernel curves applied to a model's shapes, or a
deployment's fitted whole-iteration line.

Both keep the `StepLines` contract: for a fixed batch the time is linear in the
attended context (max of an attention-compute and a KV-read line added to the
token-dependent part), so fast-forward sums stay closed-form and exact.
"""

from __future__ import annotations

import math
from pathlib import Path

from seersim.config import Parallelism, Scenario
from seersim.cost.base import CachedStepLines, StepLines
from seersim.cost.calibration import Calibration, IterationFit, load_calibration, shipped_calibration
from seersim.cost.collectives import ep_all_to_all_s, tp_message_bytes
from seersim.cost.curves import ACTIVATION_BYTES, KernelCurves, elementwise_bytes, routed_experts_s
from seersim.cost.overhead import ENGINE_STEP_OVERHEAD_S
from seersim.errors import SpecError
from seersim.specs import GPUSpec, ModelSpec


class KernelCurvesCost(CachedStepLines):
    """Iteration time from a GPU's fitted kernel curves and the model's per-rank shapes.

    Per rank (tokens spread evenly over DP ranks, as the engine pools them): every layer's
    attention projections and vLLM's fused elementwise kernels; dense MLPs; MoE layers'
    shared experts, router and the routed experts the batch touches (one fused kernel
    launch, each touched expert's weights read once); lm_head on the logit rows only;
    the embedding as a row gather; TP all-reduces and EP all-to-alls; attention as the
    max of its FLOPs (decode: MLA absorbed, in its kernel's query tiles where the curves
    name one; prefill pairs: non-absorbed) and its KV reads.
    """

    name = "calibrated"

    def __init__(
        self, model: ModelSpec, gpu: GPUSpec, parallelism: Parallelism, curves: KernelCurves, step_overhead_s: float
    ) -> None:
        self.model, self.gpu, self.par, self.curves = model, gpu, parallelism, curves
        self.step_overhead_s = step_overhead_s
        # every layer launches its attention kernel once per iteration, whatever the batch
        self._attention_floor_s = model.num_layers * curves.attention_latency_s
        tp, dp = parallelism.tp, parallelism.dp
        flops = tp * dp * gpu.peak_flops * curves.attention_flops_efficiency
        self._prefill_pair_s = model.prefill_attention_flops_per_pair / flops
        # MLA decode through its own kernel (FlashMLA on Hopper): its efficiency, and its
        # query rows (the GPU's heads per query token) rounded up to whole tiles
        self._mla_tiles = model.attention == "mla" and curves.mla_decode_flops_efficiency is not None
        if self._mla_tiles:
            flops = tp * dp * gpu.peak_flops * curves.mla_decode_flops_efficiency
            self._heads_per_gpu = max(1, model.num_attention_heads // tp)
        self._decode_pair_s = model.attention_flops_per_pair / flops
        kv_rate = gpu.hbm_bandwidth_bytes_per_s * curves.attention_bandwidth_efficiency
        self._kv_s = model.kv_bytes_per_token_per_gpu(tp) / kv_rate / dp
        self._prepare()

    def _prepare(self) -> None:
        """Per-rank shapes, once: (layers, k, n, bytes a weight) of every GEMM and the
        elementwise bytes per token."""
        m, par = self.model, self.par
        w = m.weight_bytes_per_param
        dense_layers = m.num_layers - m.num_moe_layers
        gemms = [(m.num_layers, s.k, s.n, w) for s in m.attention_gemms(par.tp)]
        gemms += [(dense_layers, s.k, s.n, w) for s in m.mlp_gemms(m.intermediate_size, par.tp)] if dense_layers else []
        if m.is_moe:
            gemms.append((m.num_moe_layers, m.hidden_size, m.num_experts, m.unquantized_bytes_per_param))  # router
            if m.num_shared_experts:
                width = m.num_shared_experts * m.moe_intermediate_size
                gemms += [(m.num_moe_layers, s.k, s.n, w) for s in m.mlp_gemms(width, par.tp)]
        self._gemms = gemms
        self._elem_bytes_per_token = [float(b) for _, b in elementwise_bytes(m, par.tp, 1.0, fused=True)]
        self._lm_head = (m.hidden_size, max(1, m.vocab_size // par.tp), m.unquantized_bytes_per_param)  # (k, n, bytes a weight)

    def _tokens_s(self, tokens: float, logit_rows: float) -> float:
        """Everything that depends on the iteration's token count, per rank."""
        layers_s, after_s = self._token_parts(tokens)
        # (summed in this order: the layers, lm_head, then the rest)
        total = layers_s + self.curves.gemm_scalar_s(self.gpu, logit_rows / self.par.dp, *self._lm_head)
        for part in after_s:
            total += part
        return total

    def _token_parts(self, tokens: float) -> tuple[float, tuple[float, ...]]:
        """The layers' time, and the embedding's, TP all-reduces' and EP all-to-alls' (the
        terms after lm_head), at a token count; memoised: iterations with one token count
        and different logit rows (prefill chunks beside decodes) share them."""
        cache = self.__dict__.setdefault("_parts_cache", {})
        hit = cache.get(tokens)
        if hit is not None:
            return hit
        m, c, g, par = self.model, self.curves, self.gpu, self.par
        t = tokens / par.dp
        gemm = c.gemm_scalar_s
        total = sum(layers * gemm(g, t, k, n, w) for layers, k, n, w in self._gemms)
        elem_rate = g.hbm_bandwidth_bytes_per_s * c.elementwise_bandwidth_efficiency
        total += m.num_layers * sum(c.elementwise_latency_s + b * t / elem_rate for b in self._elem_bytes_per_token)
        if m.is_moe:
            total += m.num_moe_layers * routed_experts_s(c, g, m, t, par.tp, par.ep)
        after = [c.elementwise_latency_s + 2 * t * m.hidden_size * ACTIVATION_BYTES / elem_rate]  # embedding gather
        if par.tp > 1:
            after.append(2 * m.num_layers * float(c.all_reduce_s(g, tp_message_bytes(m, t), par.tp)))
        after.append(ep_all_to_all_s(m, par, g, t, c.all_reduce_latency_s))
        if len(cache) >= self._CACHE_SIZE:
            cache.clear()
        hit = cache[tokens] = (total, tuple(after))
        return hit

    def _base_s(self, tokens: int, logit_rows: float) -> float:
        """Overhead + token-dependent time, memoised like `step_lines` (a DP-rank iteration
        asks for many prefill-pair counts at one token count)."""
        cache = self.__dict__.setdefault("_base_cache", {})
        key = (tokens, logit_rows)
        hit = cache.get(key)
        if hit is None:
            if len(cache) >= self._CACHE_SIZE:
                cache.clear()
            hit = cache[key] = self.step_overhead_s + self._attention_floor_s + self._tokens_s(tokens, logit_rows)
        return hit

    def _tiled_queries(self, queries_per_seq: float) -> float:
        """Query tokens a sequence is charged for in decode attention: with MLA's tiled
        kernel its rows (heads x queries) rounded up to whole tiles, in query tokens. (A
        batch of mixed widths is charged at its mean width: sequences differ in drafts.)"""
        if not self._mla_tiles:
            return queries_per_seq
        heads, tile = self._heads_per_gpu, self.curves.mla_decode_tile_rows
        return math.ceil(queries_per_seq * heads / tile - 1e-9) * tile / heads

    def _step_lines(self, num_seqs: int, new_tokens: int, extra_attn_pairs: int, queries_per_seq: float) -> StepLines:
        logit_rows = min(float(new_tokens), num_seqs * queries_per_seq)
        base = self._base_s(new_tokens, logit_rows)
        return StepLines(
            intercepts_s=(base + self._prefill_pair_s * extra_attn_pairs, base),
            slopes_s=(self._decode_pair_s * self._tiled_queries(queries_per_seq), self._kv_s),
        )


class IterationCost(CachedStepLines):
    """A deployment's fitted iteration line (live step logs): one line in the context."""

    name = "calibrated"

    def __init__(self, fit: IterationFit, step_overhead_s: float | None = None) -> None:
        self.fit = fit
        self.step_overhead_s = fit.overhead_s if step_overhead_s is None else step_overhead_s

    def _step_lines(self, num_seqs: int, new_tokens: int, extra_attn_pairs: int, queries_per_seq: float) -> StepLines:
        f = self.fit
        a = self.step_overhead_s + float(f.tokens_s(new_tokens)) + f.seq_s * num_seqs
        return StepLines(intercepts_s=(a,), slopes_s=(f.context_s_per_token,))


def scenario_calibration(scenario: Scenario) -> Calibration:
    """The calibration a scenario's `cost:` names, or the one shipped for its GPU."""
    c = scenario.cost
    if c.file:
        path = Path(c.file)
        if not path.is_absolute():
            path = Path(scenario.base_dir) / path
        return load_calibration(path)
    if not scenario.gpu.calibration:
        raise SpecError(
            f"cost.model 'calibrated': GPU '{scenario.gpu.name}' has no shipped calibration; give cost.file "
            "(from `seersim calibrate cost`) or set cost.model: roofline"
        )
    return load_calibration(shipped_calibration(scenario.gpu.calibration))


def _base_name(name: str) -> str:
    """'Qwen/Qwen2.5-7B' and 'qwen2.5-7b' name one model (a hub id vs a catalog name)."""
    return name.rsplit("/", 1)[-1].lower()


def calibrated_from_scenario(scenario: Scenario) -> CachedStepLines:
    cal = scenario_calibration(scenario)
    c = scenario.cost
    if cal.kind == "iteration":
        if cal.model and _base_name(cal.model) != _base_name(scenario.model.name):
            raise SpecError(
                f"cost.file '{cal.path}' is an iteration fit for model '{cal.model}', not '{scenario.model.name}': "
                "an iteration fit prices only the deployment it was measured on; use a kernel-curves calibration"
            )
        return IterationCost(cal.iteration, c.step_overhead_s)  # type: ignore[arg-type]
    _check_gpu_family(cal, scenario.gpu)
    if c.step_overhead_s is not None:
        overhead = c.step_overhead_s
    elif cal.step_overhead_s is not None:
        overhead = float(cal.step_overhead_s)
    else:
        overhead = ENGINE_STEP_OVERHEAD_S[c.engine_kind]
    return KernelCurvesCost(scenario.model, scenario.gpu, scenario.cluster.parallelism, cal.curves, overhead)  # type: ignore[arg-type]


def _check_gpu_family(cal: Calibration, gpu: GPUSpec) -> None:
    """Kernel curves are one GPU architecture's efficiencies: a GPU may use curves fitted
    on one that shares its shipped calibration (the H800 and H200 use the H100's), not
    another architecture's (A100 curves on an H100). Unknown or inline GPUs are the
    user's to pair."""
    from seersim.specs import GPUS

    fitted = GPUS.get(cal.gpu)
    if fitted is None or fitted.calibration is None or gpu.calibration is None or fitted.calibration == gpu.calibration:
        return
    raise SpecError(
        f"cost.file '{cal.path}' holds kernel curves fitted on {cal.gpu}, another architecture than the scenario's "
        f"{gpu.name}: fit this GPU's profiling tables (`seersim calibrate cost`) or give a calibration fitted on "
        f"a GPU of its family"
    )


def per_token_decode_s(cost, context_tokens: int = 1000) -> float:
    """One sequence decoding alone: the iteration time at the given context (a check the
    tests and docs quote)."""
    return float(cost.step_lines(1, 1, 0).at(context_tokens))


__all__ = ["KernelCurvesCost", "IterationCost", "calibrated_from_scenario", "scenario_calibration", "per_token_decode_s"]
