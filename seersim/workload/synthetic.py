"""Synthetic rollout steps: P prompts × G samples with long-tailed, group-correlated lengths.

Output lengths use a Gaussian copula: each group draws a latent z_g, each response
z = √ρ·z_g + √(1−ρ)·ε, and the length is the marginal's quantile at Φ(z). So ρ is
the correlation of (log-)lengths inside a group (hard prompts make all G long),
and the marginal is exactly the configured distribution, clipped at max_tokens.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, special

from seersim.config import LengthDist, OutputDist, SyntheticWorkload
from seersim.errors import ScenarioError
from seersim.workload.request import Workload


def _clipped_lognormal_mean(mu: float, sigma: float, lo: float, hi: float) -> float:
    """E[clip(exp(X), lo, hi)] for X ~ N(mu, sigma^2), in closed form."""
    if sigma == 0:
        return float(min(max(math.exp(mu), lo), hi))
    a, b = math.log(lo), math.log(hi)
    cdf = special.ndtr  # the standard normal CDF (what scipy.stats.norm.cdf calls), without importing scipy.stats
    body = math.exp(mu + sigma**2 / 2) * (cdf((b - mu - sigma**2) / sigma) - cdf((a - mu - sigma**2) / sigma))
    return lo * cdf((a - mu) / sigma) + body + hi * (1 - cdf((b - mu) / sigma))


def _clipped_gamma_mean(k: float, scale: float, lo: float, hi: float) -> float:
    """E[clip(X, lo, hi)] for X ~ Gamma(k, scale), in closed form (∫x·f = k·scale·ΔP(k+1, ·))."""
    p = special.gammainc
    body = k * scale * (p(k + 1, hi / scale) - p(k + 1, lo / scale))
    return lo * p(k, lo / scale) + body + hi * (1 - p(k, hi / scale))


def _solve_location(clipped_mean, mean: float, lo: float, hi: float, bracket: tuple[float, float]) -> float:
    """The location parameter (log-space) whose clipped distribution has mean `mean`."""
    if not lo < mean < hi:
        raise ScenarioError(f"mean {mean} must lie strictly inside (min={lo}, max={hi})")
    f = lambda loc: clipped_mean(loc) - mean  # noqa: E731
    return float(optimize.brentq(f, *bracket, xtol=1e-12))


def lognormal_mu_for_mean(mean: float, sigma: float, lo: float, hi: float) -> float:
    """The log-space location whose clipped lognormal has the requested mean."""
    bracket = (math.log(lo) - 10 * sigma - 10, math.log(hi) + 10 * sigma + 10)
    return _solve_location(lambda mu: _clipped_lognormal_mean(mu, sigma, lo, hi), mean, lo, hi, bracket)


def _gamma_quantile(dist: LengthDist, u: np.ndarray, lo: float, hi: float) -> np.ndarray:
    k = float(dist.shape)
    bracket = (math.log(lo) - 40, math.log(hi) + 10)  # log(scale): k·scale spans the clip range
    log_scale = _solve_location(lambda ls: _clipped_gamma_mean(k, math.exp(ls), lo, hi), dist.mean, lo, hi, bracket)
    return special.gammaincinv(k, u) * math.exp(log_scale)


def _mixture_quantile(dist: LengthDist, u: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Quantiles of w1·LN(mu, s1) + w2·LN(mu + log_ratio, s2), inverted by bisection in
    log space (no closed form; 64 halvings of a bracket far wider than any length)."""
    mix = dist.mixture
    w2, s1, s2, d = mix.weight, dist.sigma, mix.sigma, mix.log_ratio
    w1 = 1.0 - w2

    def clipped_mean(mu: float) -> float:
        return w1 * _clipped_lognormal_mean(mu, s1, lo, hi) + w2 * _clipped_lognormal_mean(mu + d, s2, lo, hi)

    spread = 10 * max(s1, s2) + abs(d) + 10
    mu = _solve_location(clipped_mean, dist.mean, lo, hi, (math.log(lo) - spread, math.log(hi) + spread))

    def cdf(lx: np.ndarray) -> np.ndarray:
        return w1 * _normal_cdf(lx, mu, s1) + w2 * _normal_cdf(lx, mu + d, s2)

    a = np.full(u.shape, min(mu, mu + d) - spread)
    b = np.full(u.shape, max(mu, mu + d) + spread)
    for _ in range(64):
        m = 0.5 * (a + b)
        below = cdf(m) < u
        a, b = np.where(below, m, a), np.where(below, b, m)
    return np.exp(0.5 * (a + b))


def _normal_cdf(x: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    """Φ((x − mu)/sigma); a zero spread is a step at mu."""
    if sigma == 0:
        return (x >= mu).astype(np.float64)
    return special.ndtr((x - mu) / sigma)


def quantile(dist: LengthDist, u: np.ndarray, hi: int) -> np.ndarray:
    """Map uniform quantiles u in (0,1) to integer token lengths of `dist`, clipped to [min, hi]."""
    lo = dist.min
    if dist.dist == "constant":
        x = np.full(u.shape, dist.mean)
    elif dist.dist == "uniform":
        # U[min, 2·mean − min], so the configured mean holds before clipping.
        x = lo + u * (2 * dist.mean - 2 * lo)
    elif dist.dist == "gamma":
        x = _gamma_quantile(dist, u, lo, hi)
    elif dist.dist == "lognormal_mixture":
        x = _mixture_quantile(dist, u, lo, hi)
    else:
        mu = lognormal_mu_for_mean(dist.mean, dist.sigma, lo, hi) if dist.sigma > 0 else math.log(dist.mean)
        x = np.exp(mu + dist.sigma * special.ndtri(u))
    return np.clip(np.rint(x), lo, hi).astype(np.int64)


def correlated_uniforms(rng: np.random.Generator, groups: int, group_size: int, rho: float) -> np.ndarray:
    z_group = rng.standard_normal(groups)[:, None]
    eps = rng.standard_normal((groups, group_size))
    z = math.sqrt(rho) * z_group + math.sqrt(1.0 - rho) * eps
    return np.clip(special.ndtr(z), 1e-12, 1 - 1e-12).ravel()


def generate_synthetic(cfg: SyntheticWorkload, rng: np.random.Generator) -> Workload:
    """One RL step of `prompts × group_size` requests. Siblings share their prompt length."""
    out_cfg: OutputDist = cfg.output_tokens
    in_cfg = cfg.input_tokens
    in_hi = in_cfg.max if in_cfg.max is not None else max(int(in_cfg.mean * 64), in_cfg.min + 1)
    prompt_u = np.clip(rng.random(cfg.prompts), 1e-12, 1 - 1e-12)
    prompt_len = quantile(in_cfg, prompt_u, in_hi)
    out_hi = min(out_cfg.max or cfg.max_tokens, cfg.max_tokens)
    if out_cfg.dist != "constant" and not out_cfg.min < out_cfg.mean < out_hi:
        raise ScenarioError(
            f"workload.output_tokens.mean={out_cfg.mean} must lie strictly between min={out_cfg.min} and "
            f"max_tokens={out_hi}"
        )
    u = correlated_uniforms(rng, cfg.prompts, cfg.group_size, out_cfg.intra_group_corr)
    out_len = quantile(out_cfg, u, out_hi)
    group_id = np.repeat(np.arange(cfg.prompts), cfg.group_size)
    return Workload.from_arrays(group_id, prompt_len[group_id], out_len, cfg.max_tokens)
