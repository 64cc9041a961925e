"""Simulator speed benchmark (DESIGN §6 "Benchmarks"). Run from the repo root:

    python benchmarks/bench.py            # full set (about a minute or two)
    python benchmarks/bench.py --quick    # small scenario and one Kimi-K2 run

Prints wall time of the simulation itself (no imports, no workload I/O), simulated
output tokens per wall-clock second, and how wall time grows when max_tokens is
doubled twice (same mean length: the long tail gets longer). Targets (DESIGN §6): a
Kimi-K2-scale step in <= 2 s on one core for baseline and divided; wall time nearly
flat in max_tokens for baseline (its events do not grow with tokens), while chunked
policies add events in proportion to tokens / chunk_tokens.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import seersim

REPO = Path(__file__).resolve().parents[1]


def timed(sc, policy: str, **overrides) -> dict:
    t0 = time.perf_counter()
    s = seersim.simulate(sc, policy=policy, **overrides).summary
    wall = time.perf_counter() - t0
    return {
        "scenario": sc.name,
        "policy": policy,
        "instances": sc.cluster.instances,
        "requests": s["requests"],
        "output_tokens": s["output_tokens"],
        "iterations": s["iterations"],
        "wall_s": round(wall, 3),
        "sim_tokens_per_wall_s": round(s["output_tokens"] / wall),
        "max_tokens": overrides.get("workload.max_tokens", sc.workload.max_tokens),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true", help="print rows as JSON lines")
    args = ap.parse_args()
    rows = []
    small = seersim.load_scenario(REPO / "scenarios/small.yaml")
    kimi = seersim.load_scenario(REPO / "scenarios/kimi-k2.yaml")
    stress = seersim.load_scenario(REPO / "scenarios/kimi-k2-stress.yaml")
    policies = ["baseline", "divided"] if args.quick else ["baseline", "divided", "seer"]
    for p in ["baseline", "divided", "seer"]:
        rows.append(timed(small, p))
    for p in policies:
        rows.append(timed(kimi, p))
    if not args.quick:
        for p in policies:
            rows.append(timed(stress, p))
        # max_tokens doubled twice, the mean length kept
        for factor in (2, 4):
            over = {"workload.max_tokens": kimi.workload.max_tokens * factor}
            for p in ("baseline", "divided"):
                rows.append(timed(kimi, p, **over) | {"length_factor": factor})
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return
    print(f"{'scenario':16s} {'policy':10s} {'inst':>4s} {'max_tok':>8s} {'out tokens':>12s} {'iters':>9s} {'wall s':>7s} {'tok/wall-s':>12s}")
    for r in rows:
        print(
            f"{r['scenario']:16s} {r['policy']:10s} {r['instances']:4d} {r['max_tokens']:8d} {r['output_tokens']:12,d} "
            f"{r['iterations']:9,d} {r['wall_s']:7.2f} {r['sim_tokens_per_wall_s']:12,d}"
        )
    base = {(r["policy"]): r["wall_s"] for r in rows if r["scenario"] == "kimi-k2" and "length_factor" not in r}
    for r in rows:
        if "length_factor" in r:
            print(f"wall-time ratio {r['policy']} at {r['length_factor']}x max_tokens: {r['wall_s'] / base[r['policy']]:.2f}")


if __name__ == "__main__":
    main()
