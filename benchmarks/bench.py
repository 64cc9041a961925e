"""Simulator speed benchmark (DESIGN §6 "Benchmarks", issue 13). Run from the repo root:

    python benchmarks/bench.py            # every policy on the paper scenarios + ../shared/bench
    python benchmarks/bench.py --quick    # small scenario, Kimi-K2 baseline/divided, shared bench
    python benchmarks/bench.py --only shared-bench --policies baseline

Prints, per run, the wall time of the simulation itself (no imports, no workload I/O:
the workload is built once and replayed), simulated output tokens per wall second and
batch-composition events per wall second (events = timeline rows: a batch changed on
an instance), then two growth series (DESIGN §6: wall time should follow batch
changes, not tokens): the ../shared/bench workload from x1 to x4 (all output lengths
×4), and Moonlight with its fleet and its requests ×2 and ×4 together. Targets (issue
13, one core): every policy ≤ 2 s on each paper scenario and on the 64-instance
Kimi-K2 stress variant (baseline, divided, context_aware ≤ 1 s on Kimi-K2); shared
bench x4 baseline ≤ 0.2 s and ≤ 1.5× x1. Pin to one core for comparable numbers:
`taskset -c 0 python benchmarks/bench.py`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import seersim
from seersim.workload import build_workload

REPO = Path(__file__).resolve().parents[1]
SHARED_BENCH = REPO.parent / "shared" / "bench"
# the paper scenarios, and Kimi-K2 on 64 smaller instances (many-and-small fleets)
SCENARIOS = ("moonlight", "qwen2-vl-72b", "kimi-k2", "kimi-k2-stress")
FLEET_BASE = "moonlight"  # scaled: instances and prompts x2, x4 together
POLICIES = ("baseline", "divided", "context_aware", "seer")

# ../shared/bench/README.md: Llama-2-7B (the catalog's llama-2-7b: MHA, bf16) on 4 x
# H100-SXM, one GPU per instance, block 16, max_num_seqs 128, baseline round-robin,
# max_tokens 16,384 (x4: 65,536).
def shared_bench_scenario(factor: int) -> seersim.Scenario:
    return seersim.scenario_from_dict(
        {
            "name": f"shared-bench-x{factor}",
            "model": "llama-2-7b",
            "gpu": "h100-sxm",
            "cluster": {"instances": 4},
            "engine": {"block_size_tokens": 16, "max_num_seqs": 128},
            "workload": {
                "kind": "replay",
                "path": str(SHARED_BENCH / f"rl-512-x{factor}.csv"),
                "format": "csv",
                "max_tokens": 16384 * factor,
            },
            "policy": {"name": "baseline", "baseline_assignment": "round_robin"},
        }
    )


def fleet_scenario(factor: int) -> seersim.Scenario:
    """The fleet-growth series: FLEET_BASE with `factor`× its instances and its prompts."""
    base = seersim.load_scenario(REPO / "scenarios" / f"{FLEET_BASE}.yaml")
    return seersim.with_overrides(
        base,
        name=f"{FLEET_BASE}-fleet-x{factor}",
        **{"cluster.instances": base.cluster.instances * factor, "workload.prompts": base.workload.prompts * factor},
    )


def warm_imports() -> None:
    """Import what a process's first run would import lazily (the simulation API, and
    scipy for speculation's acceptance fit), so that every timing is the simulation's
    alone and no run pays for the others; start-up is measured by `seersim --help`."""
    import scipy.optimize  # noqa: F401

    import seersim.api  # noqa: F401


def timed(sc: seersim.Scenario, policy: str, label: str | None = None) -> dict:
    wl = build_workload(sc, np.random.default_rng(sc.seed))  # built once, outside the timing
    t0, c0 = time.perf_counter(), time.process_time()
    res = seersim.simulate(sc, policy=policy, workload=wl)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    s = res.summary
    events = len(res.timeline)
    return {
        "scenario": label or sc.name,
        "policy": policy,
        "instances": sc.cluster.instances,
        "requests": s["requests"],
        "output_tokens": s["output_tokens"],
        "iterations": s["iterations"],
        "events": events,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),  # this process's CPU time: robust on a shared machine
        "sim_tokens_per_wall_s": round(s["output_tokens"] / wall),
        "events_per_wall_s": round(events / wall),
    }


def growth_lines(rows: list[dict]) -> list[str]:
    """Per growth series and policy, each factor's wall time, CPU time, iterations and
    events over the factor-1 run's."""
    x1 = {(r["series"], r["policy"]): r for r in rows if r.get("factor") == 1}
    lines = []
    for r in rows:
        base = x1.get((r.get("series"), r["policy"]))
        if base is not None and r["factor"] > 1:
            lines.append(
                f"{r['series']} x{r['factor']}/x1, {r['policy']}: wall {r['wall_s'] / base['wall_s']:.2f}x, "
                f"cpu {r['cpu_s'] / base['cpu_s']:.2f}x, iterations {r['iterations'] / base['iterations']:.1f}x, "
                f"events {r['events'] / max(1, base['events']):.1f}x"
            )
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--only", help=f"comma-separated scenario names ({', '.join(SCENARIOS)}, small, shared-bench, fleet)"
    )
    ap.add_argument("--policies", help="comma-separated policies (default: baseline, divided, context_aware, seer)")
    ap.add_argument("--json", action="store_true", help="print rows as JSON lines")
    args = ap.parse_args(argv)
    policies = args.policies.split(",") if args.policies else list(POLICIES)
    from seersim.policies import REGISTRY

    if unknown := sorted(set(policies) - set(REGISTRY)):
        ap.error(f"--policies: unknown {', '.join(unknown)}; choose from {', '.join(REGISTRY)}")
    known = (*SCENARIOS, "small", "shared-bench", "fleet")
    if args.only:
        unknown = sorted(set(args.only.split(",")) - set(known))
        if unknown:
            ap.error(f"--only: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
        plan = [(name, policies) for name in args.only.split(",")]
    elif args.quick:
        plan = [("small", policies), ("kimi-k2", args.policies.split(",") if args.policies else ["baseline", "divided"]), ("shared-bench", ["baseline"])]
    else:
        plan = [(name, policies) for name in SCENARIOS] + [("shared-bench", policies), ("fleet", policies)]
    warm_imports()
    rows = []
    for name, pols in plan:
        if name == "shared-bench":
            if not SHARED_BENCH.is_dir():
                print(f"skipping shared-bench: {SHARED_BENCH} is absent")
                continue
            for factor in (1, 4):
                sc = shared_bench_scenario(factor)
                rows.extend(timed(sc, p) | {"series": "shared bench lengths", "factor": factor} for p in pols)
        elif name == "fleet":
            for factor in (1, 2, 4):
                sc = fleet_scenario(factor)
                rows.extend(timed(sc, p) | {"series": f"{FLEET_BASE} fleet+requests", "factor": factor} for p in pols)
        else:
            sc = seersim.load_scenario(REPO / "scenarios" / f"{name}.yaml")
            rows.extend(timed(sc, p) for p in pols)
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return
    print(
        f"{'scenario':20s} {'policy':14s} {'inst':>4s} {'out tokens':>12s} {'iters':>10s} {'events':>8s} "
        f"{'wall s':>7s} {'cpu s':>6s} {'tok/wall-s':>12s} {'events/wall-s':>13s}"
    )
    for r in rows:
        print(
            f"{r['scenario']:20s} {r['policy']:14s} {r['instances']:4d} {r['output_tokens']:12,d} {r['iterations']:10,d} "
            f"{r['events']:8,d} {r['wall_s']:7.2f} {r['cpu_s']:6.2f} {r['sim_tokens_per_wall_s']:12,d} {r['events_per_wall_s']:13,d}"
        )
    for line in growth_lines(rows):
        print(line)


if __name__ == "__main__":
    main()
