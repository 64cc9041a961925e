"""Fit cost calibrations (scipy) and measure how well they predict held-out and other
models' rows.

Operator tables -> `KernelCurves` (one GPU type's achieved efficiencies, applied to any
model's shapes): minimise the log ratio of predicted to measured time per measured
point. Iteration tables -> `IterationFit`, a bounded linear least squares in relative
error. MAPE is the mean |predicted/measured − 1| over measured points, as a fraction.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from scipy import optimize

from seersim.calibrate.tables import ATTENTION_OPS, CostData
from seersim.cost.calibration import Calibration, IterationFit
from seersim.cost.curves import KernelCurves, elementwise_bytes, routed_experts_s
from seersim.errors import TraceError
from seersim.specs import GPUSpec, ModelSpec, get_gpu

# Efficiency knots: dense where GEMMs turn from memory- to compute-bound (64-512 tokens),
# up to Vidur's largest profiled batch (4096 tokens); constant beyond the last knot.
KNOTS_TOKENS = (1.0, 8.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0)
HELDOUT_FRACTION = 0.25  # a seeded random quarter of each table's points is never fitted
# what a --base fit records of the fit that gave the curves it keeps
_BASE_FIT_KEYS = ("tables", "points", "heldout_mape", "heldout_mape_per_table", "seed", "date", "command")
# Without attention rows in a table (Vidur's public set has none) these stay assumptions:
ASSUMED_ATTENTION = {
    "attention_flops_efficiency": (
        0.5,
        "assumed: FlashAttention-3 reaches up to 75% of H100 bf16 peak on long prefill "
        "(Shah et al. 2024), FA2 ~35-50%; varlen serving batches sit lower",
    ),
    "attention_bandwidth_efficiency": (
        0.75,
        "assumed: paged decode attention reads KV below the GEMV rate (scattered 16-token blocks); "
        "replace with `seersim profile` attention rows when a GPU is lent",
    ),
}


@dataclass
class FitResult:
    calibration: Calibration
    rows: int
    heldout_mape: float
    train_mape: float
    params: dict
    predicted: pd.DataFrame  # point, measured_s, predicted_s, heldout, num_tokens, tp
    extra: dict = field(default_factory=dict)


def _mape(pred: np.ndarray, meas: np.ndarray, weights: np.ndarray | None = None) -> float:
    return float(np.average(np.abs(pred / meas - 1.0), weights=weights)) if len(meas) else float("nan")


def _split(n: int, seed: int) -> np.ndarray:
    """Boolean mask of held-out points (a seeded random quarter)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(n, bool)
    mask[rng.permutation(n)[: max(1, int(round(n * HELDOUT_FRACTION)))]] = True
    return mask


# ----------------------------------------------------------------------------- operators
def predict_rows(curves: KernelCurves, gpu: GPUSpec, model: ModelSpec, rows: pd.DataFrame) -> np.ndarray:
    """Predicted seconds of each operator row (one layer's kernel at the row's shape)."""
    out = np.full(len(rows), np.nan)
    w = model.weight_bytes_per_param
    for (op, tp), idx in rows.groupby(["op", "tp"]).indices.items():
        r = rows.iloc[idx]
        t = r["num_tokens"].to_numpy(dtype=np.float64)
        tp = int(tp)
        gemms = {s.op: s for s in model.layer_gemms(tp)}
        if op in gemms:
            out[idx] = curves.gemm_s(gpu, t, gemms[op].k, gemms[op].n, w)
        elif op == "lm_head":
            out[idx] = curves.gemm_s(gpu, t, model.hidden_size, max(1, model.vocab_size // tp), model.unquantized_bytes_per_param)
        elif op in ("layernorm", "rope", "mlp_act", "add", "add_rmsnorm", "embedding"):
            sizes = dict(elementwise_bytes(model, tp, t, fused=False))
            sizes["add_rmsnorm"] = 2 * sizes["layernorm"]
            sizes["embedding"] = sizes["layernorm"]
            out[idx] = curves.elementwise_s(gpu, sizes[op])
        elif op in ATTENTION_OPS:
            out[idx] = _attention_s(curves, gpu, model, tp, r, prefill=op == "attn_prefill")
        elif op == "iteration":
            out[idx] = _decode_iteration_s(curves, gpu, model, tp, r)
        elif op == "moe_experts":
            out[idx] = [routed_experts_s(curves, gpu, model, float(x), tp, 1) for x in t]
        elif op == "all_reduce":
            out[idx] = curves.all_reduce_s(gpu, t * model.hidden_size * 2, tp)
        else:
            raise TraceError(f"operator '{op}' has no cost formula; known: GEMMs, norms, attention, lm_head, all_reduce")
    return out


def _attention_s(curves: KernelCurves, gpu: GPUSpec, model: ModelSpec, tp: int, r: pd.DataFrame, prefill: bool):
    """One layer's attention kernel: max(FLOPs, KV reads) at the attention efficiencies."""
    layers = model.num_layers
    ctx = r["context_tokens"].to_numpy(dtype=np.float64)
    b = np.maximum(r["batch_size"].to_numpy(dtype=np.float64), 1.0)
    if prefill:
        k = r["prefill_tokens"].to_numpy(dtype=np.float64) / b
        prev = np.maximum(ctx / b - k, 0.0)
        pairs = b * (k * prev + k * (k + 1) / 2)
        flops = pairs * model.prefill_attention_flops_per_pair / layers / tp
    else:
        q = np.maximum(r["num_tokens"].to_numpy(dtype=np.float64) / b, 1.0)
        flops = q * ctx * model.attention_flops_per_pair / layers / tp
    kv = ctx * model.kv_bytes_per_token_per_gpu(tp) / layers
    compute = flops / (gpu.peak_flops * curves.attention_flops_efficiency)
    memory = kv / (gpu.hbm_bandwidth_bytes_per_s * curves.attention_bandwidth_efficiency)
    return curves.attention_latency_s + np.maximum(compute, memory)


def _decode_iteration_s(curves: KernelCurves, gpu: GPUSpec, model: ModelSpec, tp: int, r: pd.DataFrame) -> list[float]:
    """Whole decode iterations timed alone (`seersim profile --ops decode_step`), plain or
    verifying drafts: the calibrated cost model's step at the row's batch, tokens and
    context, without the per-step overhead that a bare forward pass does not pay
    (scheduling, sampling, output)."""
    from seersim.config import Parallelism
    from seersim.cost.calibrated import KernelCurvesCost

    if (r["prefill_tokens"] > 0).any():
        raise TraceError("kernel curves price decode-only iteration rows (seersim profile --ops decode_step); "
                         "this table has prefill tokens: fit it as an iteration table instead")
    cost = KernelCurvesCost(model, gpu, Parallelism(tp=tp), curves, step_overhead_s=0.0)
    rows = zip(r["batch_size"], r["num_tokens"], r["context_tokens"])  # (n / b tokens a sequence: 1 + its drafts)
    return [float(cost.step_lines(int(b), int(n), 0, n / b).at(float(c))) for b, n, c in rows]


def _curves_from(x: np.ndarray, attention: tuple[float, float, float], all_reduce: tuple[float, float],
                 sources: dict) -> KernelCurves:
    n = len(KNOTS_TOKENS)
    # monotone in tokens: logit(eff) = first value + non-negative increments
    eff = 1.0 / (1.0 + np.exp(-np.cumsum(x[4 : 4 + n])))
    return KernelCurves(
        gemm_latency_s=float(x[0]) * 1e-6,
        gemm_bandwidth_efficiency=float(x[1]),
        flops_knots_tokens=KNOTS_TOKENS,
        flops_efficiency=tuple(float(v) for v in eff),
        elementwise_latency_s=float(x[2]) * 1e-6,
        elementwise_bandwidth_efficiency=float(x[3]),
        attention_flops_efficiency=attention[0],
        attention_bandwidth_efficiency=attention[1],
        attention_latency_s=attention[2],
        all_reduce_latency_s=all_reduce[0],
        all_reduce_bandwidth_efficiency=all_reduce[1],
        sources=sources,
    )


def _attention_of(x: np.ndarray) -> tuple[float, float, float]:
    """(FLOP/s efficiency, KV-read efficiency, latency s) from the fit's last 3 parameters."""
    return float(x[-3]), float(x[-2]), float(x[-1]) * 1e-6


def _has_attention(data: CostData) -> bool:
    return bool(data.rows["op"].isin(ATTENTION_OPS).any())


def _predict_points(curves: KernelCurves, data: CostData) -> pd.Series:
    gpu = get_gpu(data.gpu)
    pred = predict_rows(curves, gpu, data.model, data.rows)  # type: ignore[arg-type]
    return pd.Series(pred, index=data.rows.index).groupby(data.rows["point"]).sum()


def _fit_all_reduce(network: pd.DataFrame | None, gpu: GPUSpec) -> tuple[tuple[float, float], str]:
    """Ring all-reduce latency and link efficiency from Vidur's network table (else assumed)."""
    if network is None or network.empty:
        return (10e-6, 0.7), "assumed: 10 us latency, 70% of NVLink bandwidth (no network table given)"
    n = network[network["workers"] > 1]
    ring = 2.0 * (n["workers"] - 1) / n["workers"] * n["size_bytes"] / gpu.nvlink_bandwidth_bytes_per_s
    a = np.column_stack([np.ones(len(n)), ring.to_numpy()]) / n["time_s"].to_numpy()[:, None]
    sol = optimize.lsq_linear(a, np.ones(len(n)), bounds=([0, 1.0], [1e-3, 100.0]))
    latency, inv_eff = sol.x
    return (float(latency), float(min(1.0, 1.0 / inv_eff))), "fitted on the network table's all_reduce rows (ring model)"


def fit_kernel_curves(datas: list[CostData], seed: int = 0, command: str = "", base: Calibration | None = None) -> FitResult:
    """Fit one GPU's kernel curves on operator tables (held-out quarter of each table's points).

    With `base` (a kernel-curves calibration of the same GPU), its GEMM, elementwise and
    all-reduce curves are kept and only the attention kernel (FLOP/s and KV-read
    efficiencies, latency) is fitted, on the tables' attention rows: attention tables
    measured one way (`seersim profile`) then complete curves fitted on another, larger
    set (Vidur's) without the two sets' GEMM timings pulling one curve apart. Without
    `base`, tables holding an fp8 model's GEMM rows are refused: the curves are bf16's."""
    gpus = {d.gpu for d in datas}
    if len(gpus) != 1:
        raise TraceError(f"tables from different GPUs ({', '.join(sorted(gpus))}): fit one GPU at a time")
    gpu = get_gpu(gpus.pop())
    if any(d.is_iteration or d.model is None for d in datas):
        raise TraceError("mixing iteration and operator tables: fit them separately")
    has_attn = any(_has_attention(d) for d in datas)
    if base is not None and has_attn:  # (the other rows fit nothing: the held-out MAPE is attention's)
        datas = [d.attention_only() for d in datas if _has_attention(d)]
    masks = [_split(d.points().size, seed) for d in datas]
    measured = [d.points().to_numpy() for d in datas]
    n = len(KNOTS_TOKENS)
    attention_source = f"fitted on the attention rows of {', '.join(d.label for d in datas if _has_attention(d))}"
    if base is not None:
        if base.curves is None or base.gpu != gpu.name:
            raise TraceError(f"--base {base.path}: not kernel curves of {gpu.name} (it holds {base.kind} for {base.gpu})")
        if not has_attn:
            raise TraceError("--base keeps everything but attention, and these tables hold no attention rows to fit")
        kept = base.curves
        sources = {**kept.sources, "attention": f"{attention_source}; the rest from --base {base.path}"}
        for key in ASSUMED_ATTENTION:
            sources.pop(key, None)
        x0 = np.r_[kept.attention_flops_efficiency, kept.attention_bandwidth_efficiency, kept.attention_latency_s * 1e6]
        lo, hi = np.r_[0.05, 0.05, 0.0], np.r_[1.0, 1.0, 50.0]

        def curves_of(x):
            fl, bw, lat = _attention_of(x)
            return replace(kept, attention_flops_efficiency=fl, attention_bandwidth_efficiency=bw,
                           attention_latency_s=lat, sources=sources)
    else:
        if any(d.eight_bit_gemms().any() for d in datas):
            raise TraceError("these tables hold GEMM rows of an fp8 model (weights in fp8): the curves are the bf16 "
                             "GEMMs', so such rows are recorded, not fitted (docs/calibration.md); fit bf16 tables")
        all_reduce, ar_source = _fit_all_reduce(next((d.network for d in datas if d.network is not None), None), gpu)
        sources = {"all_reduce": ar_source}
        if has_attn:
            sources["attention"] = attention_source
        else:
            sources.update({k: s for k, (_, s) in ASSUMED_ATTENTION.items()})
        attention = tuple(v for v, _ in ASSUMED_ATTENTION.values())
        x0 = np.r_[3.0, 0.8, 2.0, 0.6, -3.0, np.full(n - 1, 0.4), [*attention, 5.0] if has_attn else []]
        lo = np.r_[0.0, 0.05, 0.0, 0.05, -8.0, np.zeros(n - 1), [0.05, 0.05, 0.0] if has_attn else []]
        hi = np.r_[50.0, 1.0, 50.0, 1.0, 8.0, np.full(n - 1, 8.0), [1.0, 1.0, 50.0] if has_attn else []]

        def curves_of(x):
            return _curves_from(x, _attention_of(x) if has_attn else (*attention, 0.0), all_reduce, sources)

    def residuals(x):
        c = curves_of(x)
        res = [np.log(_predict_points(c, d).to_numpy()[~m] / meas[~m]) for d, m, meas in zip(datas, masks, measured)]
        return np.concatenate(res)

    sol = optimize.least_squares(residuals, x0, bounds=(lo, hi))
    curves = curves_of(sol.x)
    frames, held, train = [], [], []
    for d, m, meas in zip(datas, masks, measured):
        pred = _predict_points(curves, d).to_numpy()
        held.append(np.abs(pred[m] / meas[m] - 1))
        train.append(np.abs(pred[~m] / meas[~m] - 1))
        first = d.rows.groupby("point").first()
        frames.append(
            pd.DataFrame(
                {"table": d.label, "measured_s": meas, "predicted_s": pred, "heldout": m,
                 "num_tokens": first["num_tokens"].to_numpy(), "tp": first["tp"].to_numpy()}
            )
        )
    heldout = float(np.mean(np.concatenate(held)))
    per_table = {d.label: float(np.mean(h)) for d, h in zip(datas, held)}
    fit = {
        "tables": [d.label for d in datas],
        "rows": int(sum(len(d.rows) for d in datas)),
        "points": int(sum(len(x) for x in measured)),
        "heldout_fraction": HELDOUT_FRACTION,
        "heldout_mape": heldout,
        "heldout_mape_per_table": per_table,
        "train_mape": float(np.mean(np.concatenate(train))),
        "seed": seed,
        "date": _dt.date.today().isoformat(),
        "command": command,
    }
    if base is not None:  # where the kept curves were fitted (a base's own base, if it had one)
        fit["base"] = base.fit.get("base") or {"path": str(base.path), **{k: base.fit[k] for k in _BASE_FIT_KEYS if k in base.fit}}
    cal = Calibration("kernel_curves", gpu.name, curves=curves, fit=fit, sources=sources,
                      step_overhead_s=base.step_overhead_s if base is not None else None)  # (kept, like its curves)
    return FitResult(cal, fit["rows"], heldout, fit["train_mape"], curves.to_dict(), pd.concat(frames, ignore_index=True))


def evaluate_kernel_curves(curves: KernelCurves, data: CostData) -> tuple[float, pd.DataFrame]:
    """MAPE of fitted curves on another table (every point is unseen): operator rows, or
    the whole decode iterations of a catalog model."""
    if data.model is None:
        raise TraceError(f"{data.label}: iteration rows of a model outside the catalog; kernel curves need its shapes "
                         "(name a catalog model in the table's meta.json)")
    pred = _predict_points(curves, data).to_numpy()
    meas = data.points().to_numpy()
    first = data.rows.groupby("point").first()
    frame = pd.DataFrame({"table": data.label, "measured_s": meas, "predicted_s": pred, "heldout": True,
                          "num_tokens": first["num_tokens"].to_numpy(), "tp": first["tp"].to_numpy()})
    return _mape(pred, meas), frame


# ----------------------------------------------------------------------------- iterations
def _iteration_knots(tokens: np.ndarray) -> np.ndarray:
    """Knots at powers of two between the smallest and largest measured token counts,
    each segment holding data (an empty segment would leave its rise unidentified)."""
    lo, hi = float(tokens.min()), float(tokens.max())
    knots = [lo]
    for k in [2.0**j for j in range(1, 20) if lo < 2.0**j < hi] + [hi]:
        if ((tokens > knots[-1]) & (tokens <= k)).any():
            knots.append(k)
        elif k == hi:
            knots[-1] = hi
    return np.unique(np.array(knots))


def _iteration_design(tokens, context, batch, knots: np.ndarray) -> np.ndarray:
    """Columns: 1 (overhead), the rise of f between consecutive knots (a ramp per knot, so
    non-negative coefficients make f non-decreasing), context, batch size."""
    t = np.asarray(tokens, dtype=np.float64)
    cols = [np.ones_like(t)]
    for j in range(1, len(knots)):
        step = (np.arange(len(knots)) >= j).astype(float)
        cols.append(IterationFit(0.0, tuple(knots), tuple(step), 0.0, 0.0).tokens_s(t))
    cols += [np.asarray(context, dtype=np.float64), np.asarray(batch, dtype=np.float64)]
    return np.column_stack(cols)


def fit_iteration(data: CostData, seed: int = 0, command: str = "") -> FitResult:
    """time = overhead + f(tokens) + c·context + d·batch (f piecewise linear and
    non-decreasing, 0 at the smallest measured token count; all coefficients non-negative).

    A row that averages `repeats` measurements weighs as many (per-step log tables hold
    one row per step composition, from 1 to hundreds of steps each); fit and MAPEs are
    weighted alike, so a MAPE is the mean error per measured step."""
    r = data.rows
    if len(r) < 8:
        raise TraceError(f"{data.label}: {len(r)} iteration rows; a fit needs at least 8")
    held = _split(len(r), seed)
    knots = _iteration_knots(r["num_tokens"].to_numpy(dtype=np.float64)[~held])
    a = _iteration_design(r["num_tokens"], r["context_tokens"], r["batch_size"], knots)
    y = r["time_s"].to_numpy(dtype=np.float64)
    w = r["repeats"].to_numpy(dtype=np.float64) if "repeats" in r.columns else np.ones(len(r))
    sw = np.sqrt(w[~held])
    rel = a[~held] / y[~held, None] * sw[:, None]  # relative error: each row divided by its measured time
    scale = np.maximum(np.abs(rel).max(axis=0), 1e-300)  # columns of unit size (context ~1e5, ones ~1)
    sol = optimize.lsq_linear(rel / scale, sw, bounds=(0.0, np.inf), tol=1e-12)
    x = sol.x / scale
    rises = np.cumsum(x[1 : len(knots)])
    fit_obj = IterationFit(float(x[0]), tuple(float(k) for k in knots), (0.0, *(float(v) for v in rises)),
                           float(x[-2]), float(x[-1]))
    pred = fit_obj.predict(r["num_tokens"], r["context_tokens"], r["batch_size"])
    heldout, train = _mape(pred[held], y[held], w[held]), _mape(pred[~held], y[~held], w[~held])
    fit = {"tables": [data.label], "rows": int(len(r)), "heldout_fraction": HELDOUT_FRACTION, "heldout_mape": heldout,
           "train_mape": train, "seed": seed, "date": _dt.date.today().isoformat(), "command": command}
    cal = Calibration("iteration", data.gpu, iteration=fit_obj, model=data.label,
                      tp=int(r["tp"].iloc[0]), step_overhead_s=fit_obj.overhead_s, fit=fit,
                      sources={"iteration": f"fitted on {data.label} (live engine step times)"})
    frame = pd.DataFrame({"table": data.label, "measured_s": y, "predicted_s": pred, "heldout": held,
                          "num_tokens": r["num_tokens"].to_numpy(), "tp": r["tp"].to_numpy()})
    return FitResult(cal, len(r), heldout, train, fit_obj.to_dict(), frame)


def evaluate_iteration(fit_obj: IterationFit, data: CostData) -> tuple[float, pd.DataFrame]:
    r = data.rows
    y = r["time_s"].to_numpy(dtype=np.float64)
    pred = fit_obj.predict(r["num_tokens"], r["context_tokens"], r["batch_size"])
    frame = pd.DataFrame({"table": data.label, "measured_s": y, "predicted_s": pred, "heldout": True,
                          "num_tokens": r["num_tokens"].to_numpy(), "tp": r["tp"].to_numpy()})
    return _mape(pred, y), frame


def plot_fit(frame: pd.DataFrame, path, title: str) -> None:
    """Predicted vs measured (log-log), held-out points marked."""
    from seersim.report import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for (table, held), g in frame.groupby(["table", "heldout"]):
        ax.scatter(g["measured_s"] * 1e3, g["predicted_s"] * 1e3, s=6, alpha=0.6,
                   label=f"{table} ({'held out / test' if held else 'fit'})")
    lo = float(min(frame["measured_s"].min(), frame["predicted_s"].min())) * 1e3
    hi = float(max(frame["measured_s"].max(), frame["predicted_s"].max())) * 1e3
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="measured (ms)", ylabel="predicted (ms)", title=title)
    ax.legend(fontsize=6)
    fig.tight_layout()
    tmp = str(path) + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    import os

    os.replace(tmp, path)
