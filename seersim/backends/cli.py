"""The live-backend commands of `seersim` (serve-local, validate): a thin layer over
seersim.backends and seersim.studies.validate; registered on the main app by
seersim/cli.py."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from seersim.cli_common import JsonOpt, OutOpt, SetOpt, cli_errors, echo_json, load, split_csv, split_ints, split_logs, split_urls

PANEL = "Live vLLM servers"
app = typer.Typer()

UrlOpt = Annotated[str, typer.Option("--url", help="comma-separated vLLM server URLs, one per instance")]


@app.command("serve-local", rich_help_panel=PANEL)
def serve_local(
    instances: Annotated[int, typer.Option("--instances", "-n", min=1, help="servers to start (one instance each)")] = 2,
    max_num_seqs: Annotated[int, typer.Option("--max-num-seqs", min=1, help="vLLM --max-num-seqs (the scenario's engine.max_num_seqs)")] = 16,
    kv_cache_tokens: Annotated[
        Optional[int], typer.Option("--kv-cache-tokens", min=1, help="KV cache per server in tokens as vLLM logs it, one block of which is its null block (default: vLLM's)")
    ] = None,
    model_dir: Annotated[Optional[Path], typer.Option("--model-dir", help="where the tiny model is built (default: a cache folder)")] = None,
    log_dir: Annotated[Optional[Path], typer.Option("--log-dir", help="server logs (default: next to the model)")] = None,
    cores: Annotated[Optional[str], typer.Option("--cores", help="comma-separated CPU cores, one per server (default: round-robin)")] = None,
) -> None:
    """Start N vLLM CPU servers on 127.0.0.1 serving a tiny random-weight Llama (built
    locally, no download), each pinned to one core; print their URLs; stop them on
    Ctrl-C or SIGTERM."""
    from seersim.backends.local import LocalServers, ServerOptions, TinyModel, build_tiny_model, default_model_dir

    with cli_errors():
        spec = TinyModel()
        kv_bytes = kv_cache_tokens * spec.kv_bytes_per_token if kv_cache_tokens else None
        servers = LocalServers(  # (checks its options before the model is built)
            instances, model_dir or default_model_dir(), ServerOptions(max_num_seqs=max_num_seqs, kv_cache_memory_bytes=kv_bytes),
            log_dir=log_dir, cores=split_ints(cores, "--cores", "0,1", minimum=0),
        )
        path = build_tiny_model(servers.model_dir, spec)
        typer.echo(f"starting {instances} vLLM server(s) with {path} (logs in {servers.log_dir}) ...", err=True)
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, _interrupt)  # also when started in the background (SIGINT ignored)
        with servers:
            for s in servers.servers:
                typer.echo(f"instance {s.url}  pid {s.pid}  core {s.core}  log {s.log_path}", err=True)
            typer.echo(f"per-step logs (--server-logs): {','.join(str(s.log_path) for s in servers.servers)}", err=True)
            typer.echo(f"ready in {servers.start_s:.0f} s; Ctrl-C stops them", err=True)
            typer.echo(",".join(servers.urls), err=False)
            try:
                while all(s.alive() for s in servers.servers):
                    time.sleep(1.0)
            except KeyboardInterrupt:
                pass
            dead = [s.url for s in servers.servers if not s.alive()]
            if dead:
                typer.echo(f"server(s) exited: {', '.join(dead)}; stopping the others", err=True)


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


@app.command("validate", rich_help_panel=PANEL)
def validate_cmd(
    scenario: Annotated[Path, typer.Argument(help="scenario YAML file")],
    backend: Annotated[str, typer.Option("--backend", help="live backend (vllm)")] = "vllm",
    url: UrlOpt = "",
    policies: Annotated[Optional[str], typer.Option("--policies", help="comma-separated (default baseline,divided,context_aware)")] = None,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="live runs per policy, interleaved across policies")] = 5,
    server_logs: Annotated[
        Optional[str],
        typer.Option("--server-logs", help="the servers' per-step logs, comma-separated, one per --url (serve-local prints them): "
                     "profile from real engine steps and report engine totals per run"),
    ] = None,
    set_: SetOpt = None,
    out: OutOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Run a scenario live and in the simulator (calibrated from separate profiling
    passes of the same servers, one before each repeat) and report the simulator's
    error per policy. With --out, each live run is kept as soon as it ends."""
    from seersim.errors import ScenarioError
    from seersim.studies.validate import DEFAULT_POLICIES, validate, write_validation

    with cli_errors():
        if backend != "vllm":
            raise ScenarioError(f"--backend {backend!r}: the live backend is 'vllm'")
        sc = load(scenario, set_)

        def on_run(policy: str, repeat: int, summary: dict) -> None:
            if not json_:
                typer.echo(f"  live {policy:14s} repeat {repeat}: makespan {summary['makespan_s']:.1f} s", err=True)

        res = validate(
            sc, split_urls(url), split_csv(policies) or list(DEFAULT_POLICIES), repeats, work_dir=out, on_run=on_run,
            logs=split_logs(server_logs),
        )
        if out is not None:
            write_validation(out, res)
        if json_:
            echo_json(res.to_json())
            return
        _print(res)
        if out is not None:
            typer.echo(f"validation report written to {out}/")


def _print(res) -> None:
    from seersim.tables import Column, print_table

    heads = ("live makespan", "sim makespan", "error", "live speedup", "sim speedup", "tail live / sim")
    rows = [
        [
            p.policy,
            f"{p.live['makespan_s']:.1f} s ± {p.live_spread['makespan_s']:.0%}",
            f"{p.sim['makespan_s']:.1f} s",
            f"{p.error['makespan_s']:+.1%}",
            f"{p.live_speedup:.2f}x",
            f"{p.sim_speedup:.2f}x",
            f"{p.live['tail_s']:.1f} / {p.sim['tail_s']:.1f} s",
        ]
        for p in res.policies
    ]
    print_table(
        f"{res.scenario.name}: live ({len(res.servers)} servers, {res.repeats} repeats) vs simulated",
        [Column("policy", "left", whole=True)] + [Column(h) for h in heads],
        rows,
    )
    for pair in res.pairs:
        typer.echo(f"  {' vs '.join(pair['pair'])}: live {pair['live']} (diff {pair['live_difference_s']:.1f} s, spread "
                   f"{pair['live_spread_s']:.1f} s), sim {pair['sim']}{'' if pair['agrees'] else '  DISAGREES'}")
    for e in res.engine_comparison():
        typer.echo(f"  {e['policy']}: engine steps live {e['live_steps']:.0f} / sim {e['sim_steps']}, prefill tokens live "
                   f"{e['live_prefill_tokens']:.0f} (recomputed {e['live_recomputed_tokens']:.0f}) / sim {e['sim_prefill_tokens']}, "
                   f"mean step live {e['live_mean_step_s'] * 1e3:.1f} / sim {e['sim_mean_step_s'] * 1e3:.1f} ms")
    typer.echo(f"ranking agrees: {res.ranking_agrees}")
