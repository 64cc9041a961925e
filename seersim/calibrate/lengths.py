"""Fit output-length distributions from a rollout log.

Log: CSV with `group_id`, `input_tokens`, `output_tokens` and optionally `max_tokens`
per row (or one `max_tokens` for all). A response that stopped at its max_tokens is
*censored* (its natural length is at least that): it enters the likelihood through the
survival function, not the density. Families: lognormal, gamma, and a two-component
lognormal mixture; the best by AIC (likelihood, penalised for the mixture's extra
parameters). Intra-group correlation: the one-way ANOVA intraclass correlation of the
lengths' normal scores Φ⁻¹(F(x)) under the chosen family — the Gaussian-copula ρ
seersim's synthetic workload uses (`output_tokens.intra_group_corr`; for the lognormal
family the correlation of log lengths). The workload snippet carries the chosen
family, which the synthetic workload draws as fitted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import integrate, optimize, special, stats

from seersim.errors import TraceError
from seersim.fields import MAX_COUNT, MAX_TOKENS
from seersim.io import read_csv_table

FAMILIES = ("lognormal", "gamma", "lognormal_mixture")


# fewest responses below max_tokens a length fit accepts (the mixture has five parameters)
MIN_FIT_RESPONSES = 10


@dataclass
class LengthFit:
    distribution: str
    params: dict
    loglik: float
    aic: float
    mean_tokens: float
    intra_group_correlation: float
    ks_statistic: float
    families: dict = field(default_factory=dict)  # family -> {params, loglik, aic}
    rows: int = 0
    groups: int = 0
    censored: int = 0
    group_size: int = 0
    max_tokens: int = 0
    input_fit: dict = field(default_factory=dict)


def read_length_log(path: str | Path, max_tokens: int | None = None) -> pd.DataFrame:
    need = ["group_id", "input_tokens", "output_tokens"]
    tokens = (1, MAX_TOKENS, "tokens")
    d = read_csv_table(
        path, "rollout log", need, f"a rollout log has {need} and optionally max_tokens",
        integers={"group_id": (0, MAX_COUNT, "(a group number)"), "input_tokens": tokens, "output_tokens": tokens,
                  "max_tokens": tokens},
    )
    if max_tokens is not None:
        d["max_tokens"] = max_tokens
    elif "max_tokens" not in d.columns:
        raise TraceError(f"{path}: no max_tokens column; pass --max-tokens (truncation is needed to treat capped rows)")
    ended = d["output_tokens"][d["output_tokens"] < d["max_tokens"]]
    if len(ended) < MIN_FIT_RESPONSES or ended.nunique() < 2:
        raise TraceError(
            f"{path}: {len(ended)} of its {len(d)} responses ended below max_tokens"
            + (" (all of one length)" if len(ended) and ended.nunique() < 2 else "")
            + f"; a length fit needs at least {MIN_FIT_RESPONSES} of two or more lengths (fewer leave a family's shape"
            " unidentified): log more of the rollout, or check max_tokens"
        )
    return d


def _censored_loglik(logpdf: np.ndarray, logsf: np.ndarray, censored: np.ndarray) -> float:
    return float(np.where(censored, logsf, logpdf).sum())


def _fit_lognormal(x, cens):
    lx = np.log(x)

    def nll(p):
        mu, log_s = p
        s = math.exp(log_s)
        return -_censored_loglik(stats.norm.logpdf(lx, mu, s) - lx, stats.norm.logsf(lx, mu, s), cens)

    r = optimize.minimize(nll, [lx.mean(), math.log(lx.std() + 1e-3)], method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-6, "maxiter": 4000})
    return {"mu": float(r.x[0]), "sigma": float(math.exp(r.x[1]))}, -float(r.fun), 2


def _fit_gamma(x, cens):
    def nll(p):
        k, theta = math.exp(p[0]), math.exp(p[1])
        return -_censored_loglik(stats.gamma.logpdf(x, k, scale=theta), stats.gamma.logsf(x, k, scale=theta), cens)

    m, v = x.mean(), x.var() + 1.0
    r = optimize.minimize(nll, [math.log(m * m / v), math.log(v / m)], method="Nelder-Mead", options={"maxiter": 4000})
    return {"shape": float(math.exp(r.x[0])), "scale": float(math.exp(r.x[1]))}, -float(r.fun), 2


def _fit_mixture(x, cens):
    lx = np.log(x)

    def nll(p):
        w = special.expit(p[0])
        s1, s2 = math.exp(p[2]), math.exp(p[4])
        pdf = np.logaddexp(math.log(w) + stats.norm.logpdf(lx, p[1], s1), math.log(1 - w) + stats.norm.logpdf(lx, p[3], s2)) - lx
        sf = np.logaddexp(math.log(w) + stats.norm.logsf(lx, p[1], s1), math.log(1 - w) + stats.norm.logsf(lx, p[3], s2))
        return -_censored_loglik(pdf, sf, cens)

    q1, q3 = np.quantile(lx, [0.25, 0.75])
    s0 = math.log(lx.std() / 2 + 1e-3)
    r = optimize.minimize(nll, [0.0, q1, s0, q3, s0], method="Nelder-Mead", options={"maxiter": 8000, "xatol": 1e-6, "fatol": 1e-6})
    w = float(special.expit(r.x[0]))
    return {"weight": w, "mu1": float(r.x[1]), "sigma1": float(math.exp(r.x[2])), "mu2": float(r.x[3]),
            "sigma2": float(math.exp(r.x[4]))}, -float(r.fun), 5


def family_cdf(family: str, params: dict, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if family == "lognormal":
        return stats.norm.cdf(np.log(x), params["mu"], params["sigma"])
    if family == "gamma":
        return stats.gamma.cdf(x, params["shape"], scale=params["scale"])
    w = params["weight"]
    lx = np.log(x)
    return w * stats.norm.cdf(lx, params["mu1"], params["sigma1"]) + (1 - w) * stats.norm.cdf(lx, params["mu2"], params["sigma2"])


def _clipped_mean(family: str, params: dict, hi: float) -> float:
    """E[min(X, hi)] = ∫_0^hi (1 − F(x)) dx, numerically."""
    grid = np.linspace(0.0, hi, 20001)[1:]
    return float(integrate.trapezoid(1.0 - family_cdf(family, params, grid), grid))


def intra_group_correlation(group_id: np.ndarray, values: np.ndarray) -> float:
    """One-way ANOVA intraclass correlation (groups of unequal size allowed)."""
    d = pd.DataFrame({"g": group_id, "v": values})
    sizes = d.groupby("g")["v"].size()
    d = d[d["g"].isin(sizes[sizes > 1].index)]
    if d.empty:
        return 0.0
    groups = d.groupby("g")["v"]
    n_i, means = groups.size(), groups.mean()
    k, n = len(n_i), len(d)
    grand = d["v"].mean()
    msb = float((n_i * (means - grand) ** 2).sum() / (k - 1)) if k > 1 else 0.0
    msw = float(((d["v"] - d["g"].map(means)) ** 2).sum() / (n - k)) if n > k else 0.0
    n0 = (n - float((n_i**2).sum()) / n) / (k - 1) if k > 1 else 1.0
    denom = msb + (n0 - 1) * msw
    return float(min(1.0, max(0.0, (msb - msw) / denom))) if denom > 0 else 0.0


def fit_lengths(log: pd.DataFrame) -> LengthFit:
    """The output-length family and parameters by censored likelihood, and the
    intra-group correlation, of a log `read_length_log` accepted."""
    x = log["output_tokens"].to_numpy(dtype=np.float64)
    cap = log["max_tokens"].to_numpy(dtype=np.float64)
    cens = x >= cap
    x = np.minimum(x, cap)
    fits = {"lognormal": _fit_lognormal(x, cens), "gamma": _fit_gamma(x, cens), "lognormal_mixture": _fit_mixture(x, cens)}
    families = {f: {"params": p, "loglik": ll, "aic": 2 * k - 2 * ll} for f, (p, ll, k) in fits.items()}
    best = min(families, key=lambda f: families[f]["aic"])
    hi = float(cap.max())
    uncensored = np.sort(x[~cens])
    ks = 0.0
    if len(uncensored):
        emp = np.arange(1, len(uncensored) + 1) / len(x)  # empirical CDF over all rows (censored ones at the top)
        ks = float(np.max(np.abs(emp - family_cdf(best, families[best]["params"], uncensored))))
    scores = special.ndtri(np.clip(family_cdf(best, families[best]["params"], x), 1e-12, 1 - 1e-12))
    rho = intra_group_correlation(log["group_id"].to_numpy(), scores)
    prompt = log.groupby("group_id")["input_tokens"].first().to_numpy(dtype=np.float64)
    input_fit = {"mean": float(prompt.mean()), "sigma": float(np.log(prompt).std()) if len(prompt) > 1 else 0.0,
                 "min": int(prompt.min()), "max": int(prompt.max())}
    sizes = log.groupby("group_id").size()
    return LengthFit(
        distribution=best, params=families[best]["params"], loglik=families[best]["loglik"], aic=families[best]["aic"],
        mean_tokens=_clipped_mean(best, families[best]["params"], hi), intra_group_correlation=rho, ks_statistic=ks,
        families=families, rows=len(x), groups=int(sizes.size), censored=int(cens.sum()),
        group_size=int(sizes.mode().iloc[0]), max_tokens=int(hi), input_fit=input_fit,
    )


def output_dist_lines(fit: LengthFit) -> list[str]:
    """The `output_tokens` fields of the chosen family, in the synthetic workload's terms
    (every family's `mean` is its mean after clipping at max_tokens)."""
    p = fit.params
    lines = [f"    dist: {fit.distribution}", f"    mean: {fit.mean_tokens:.0f}                  # mean after clipping at max_tokens"]
    if fit.distribution == "lognormal":
        lines.append(f"    sigma: {p['sigma']:.3f}")
    elif fit.distribution == "gamma":
        lines.append(f"    shape: {p['shape']:.4f}")
    else:  # the workload's second component is relative to the first
        weight2 = min(max(1.0 - p["weight"], 0.001), 0.999)
        lines += [
            f"    sigma: {p['sigma1']:.3f}",
            f"    mixture: {{weight: {weight2:.4f}, sigma: {p['sigma2']:.3f}, log_ratio: {p['mu2'] - p['mu1']:.4f}}}",
        ]
    return lines


def workload_snippet(fit: LengthFit) -> str:
    """A ready `workload:` section with the family chosen by AIC."""
    inp = fit.input_fit
    others = ", ".join(f"{f} {a['aic'] - fit.aic:+.1f}" for f, a in fit.families.items() if f != fit.distribution)
    return "\n".join([
        f"# written by `seersim calibrate lengths`: {fit.rows} responses in {fit.groups} groups, {fit.censored} capped at max_tokens",
        f"# output family {fit.distribution}: best by AIC (others: {others})",
        "workload:",
        "  kind: synthetic",
        f"  prompts: {fit.groups}",
        f"  group_size: {fit.group_size}",
        f"  max_tokens: {fit.max_tokens}",
        f"  input_tokens: {{dist: lognormal, mean: {inp['mean']:.0f}, sigma: {inp['sigma']:.3f}, min: {inp['min']}, max: {max(inp['max'], inp['min'] + 1)}}}",
        "  output_tokens:",
        *output_dist_lines(fit),
        f"    intra_group_corr: {fit.intra_group_correlation:.3f}",
        "",
    ])


def plot_cdf(log: pd.DataFrame, fit: LengthFit, path) -> None:
    from seersim.report import _pyplot

    plt = _pyplot()
    x = np.sort(np.minimum(log["output_tokens"].to_numpy(dtype=np.float64), log["max_tokens"].to_numpy()))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.step(x, np.arange(1, len(x) + 1) / len(x), where="post", label="empirical", color="k")
    grid = np.linspace(max(1.0, x.min()), fit.max_tokens, 400)
    for fam, f in fit.families.items():
        ax.plot(grid, family_cdf(fam, f["params"], grid), label=f"{fam} (AIC {f['aic']:.0f})", lw=1.5 if fam == fit.distribution else 0.8)
    ax.set(xscale="log", xlabel="output tokens", ylabel="CDF", title="output lengths: fitted vs empirical")
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = str(path) + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    Path(tmp).replace(path)
