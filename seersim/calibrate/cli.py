"""`seersim calibrate ...` and `seersim profile`: a typer sub-app over calibrate/ and profile/."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from seersim.cli_common import cli_errors, echo_json, split_ints, split_logs, split_urls

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Fit cost, KV capacity, output lengths and speculative acceptance from measurements.",
    pretty_exceptions_enable=False,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="print the result as one JSON object on stdout")]


def _command() -> str:
    return "seersim " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _emit(result: dict, as_json: bool, lines: list[str]) -> None:
    if as_json:
        echo_json(result)
    else:
        for line in lines:
            typer.echo(line)


@app.command("cost")
def cost_cmd(
    profiles: Annotated[list[Path], typer.Argument(help="Vidur model folder(s) or seersim-profile/1 table(s), one GPU")],
    test: Annotated[
        Optional[list[Path]], typer.Option("--test", help="another model's table on the same GPU: report test_mape")
    ] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="calibration file to write (YAML)")] = None,
    gpu: Annotated[Optional[str], typer.Option("--gpu", help="catalog GPU, if the table's meta names none")] = None,
    base: Annotated[
        Optional[Path],
        typer.Option("--base", help="kernel-curves calibration whose GEMM, elementwise and all-reduce curves are kept: "
                                    "fit only attention, on the tables' attention rows"),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="seed of the held-out split")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Fit a cost calibration: kernel curves from operator tables, or an iteration line
    from `iteration` tables (live engine steps). Writes the calibration file a scenario's
    `cost: {model: calibrated, file: ...}` reads, and a predicted-vs-measured plot."""
    with cli_errors():
        _cost(profiles, test, out, gpu, base, seed, as_json)


def _cost(profiles, test, out, gpu, base, seed, as_json) -> None:
    from seersim.calibrate.costfit import (
        evaluate_iteration,
        evaluate_kernel_curves,
        fit_iteration,
        fit_kernel_curves,
        plot_fit,
    )
    from seersim.calibrate.tables import read_cost_data
    from seersim.cost.calibration import load_calibration, save_calibration
    from seersim.errors import TraceError

    datas = [read_cost_data(p, gpu) for p in profiles]
    iteration = datas[0].is_iteration
    if iteration:
        if len(datas) > 1:
            raise TraceError("fit one iteration table at a time (each is one deployment)")
        if base is not None:
            raise TraceError("--base keeps kernel curves: it applies to operator tables, not iteration tables")
        res = fit_iteration(datas[0], seed, _command())
    else:
        res = fit_kernel_curves(datas, seed, _command(), base=load_calibration(base) if base is not None else None)
    frames = [res.predicted]
    tests: dict[str, float] = {}
    for p in test or []:
        td = read_cost_data(p, gpu)
        if td.gpu != res.calibration.gpu:
            raise TraceError(f"--test {p}: GPU '{td.gpu}' differs from the fitted '{res.calibration.gpu}'")
        if iteration:
            mape, frame = evaluate_iteration(res.calibration.iteration, td)  # type: ignore[arg-type]
        else:
            mape, frame = evaluate_kernel_curves(res.calibration.curves, td)  # type: ignore[arg-type]
        tests[td.label] = mape
        frames.append(frame)
    if tests:
        res.calibration.fit["test_mape_per_table"] = tests
        res.calibration.fit["test_mape"] = max(tests.values())
    label = "+".join(d.label for d in datas)
    out = out or Path(f"calibration-{label}.yaml")
    save_calibration(res.calibration, out)
    plot = out.with_suffix(".png")
    import pandas as pd

    plot_fit(pd.concat(frames, ignore_index=True), plot, f"{res.calibration.kind} fit, {res.calibration.gpu}")
    result = {
        "kind": res.calibration.kind,
        "gpu": res.calibration.gpu,
        "tables": [d.label for d in datas],
        "rows": res.rows,
        "heldout_mape": res.heldout_mape,
        "heldout_mape_per_table": res.calibration.fit.get("heldout_mape_per_table", {datas[0].label: res.heldout_mape}),
        "train_mape": res.train_mape,
        "params": res.params,
        "calibration": str(out),
        "plot": str(plot),
    }
    if tests:
        result["test_mape"] = max(tests.values())
        result["test_mape_per_table"] = tests
    lines = [
        f"{res.calibration.kind} fit on {', '.join(result['tables'])} ({res.calibration.gpu}): {res.rows} rows",
        f"  held-out MAPE {res.heldout_mape:.1%} (train {res.train_mape:.1%})",
    ]
    lines += [f"  test MAPE on {k}: {v:.1%}" for k, v in tests.items()]
    lines += [f"  wrote {out} and {plot}"]
    _emit(result, as_json, lines)


def profile_cmd(
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="profiling table to write (CSV + .meta.json)")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="torch: catalog model, e.g. qwen2.5-7b")] = None,
    backend: Annotated[str, typer.Option("--backend", help="torch (operators) or vllm (live servers' iterations)")] = "torch",
    url: Annotated[Optional[str], typer.Option("--url", help="vllm: comma-separated server URLs")] = None,
    server_logs: Annotated[
        Optional[str],
        typer.Option("--server-logs", help="vllm: the servers' per-step logs, comma-separated, one per --url (without --url: read as they are)"),
    ] = None,
    block_size: Annotated[Optional[int], typer.Option("--block-size", help="vllm, logs without --url: the servers' KV block size")] = None,
    device: Annotated[str, typer.Option("--device", help="torch device: cuda, cuda:1, cpu")] = "cuda",
    gpu: Annotated[Optional[str], typer.Option("--gpu", help="catalog GPU this runs on (recorded for calibration)")] = None,
    tp: Annotated[int, typer.Option("--tp", help="tensor-parallel degree whose shard shapes are timed")] = 1,
    dtype: Annotated[str, typer.Option("--dtype", help="torch dtype of weights and activations")] = "bfloat16",
    ops: Annotated[
        Optional[str],
        typer.Option("--ops", help="comma-separated subset of ops (default: every operator); decode_step alone: "
                                   "whole decode iterations of a dense model at --tp 1 (batches x contexts x widths)"),
    ] = None,
    tokens: Annotated[Optional[str], typer.Option("--tokens", help="token counts for GEMMs, comma-separated")] = None,
    batches: Annotated[Optional[str], typer.Option("--batches", help="decode attention batch sizes")] = None,
    contexts: Annotated[Optional[str], typer.Option("--contexts", help="decode attention context lengths")] = None,
    prefill: Annotated[Optional[str], typer.Option("--prefill", help="prefill attention lengths")] = None,
    widths: Annotated[
        Optional[str],
        typer.Option("--widths", help="torch: decode attention queries per sequence (1 = decode, γ+1 = verifying γ drafts)"),
    ] = None,
    plan_out: Annotated[
        Optional[Path],
        typer.Option(
            "--plan-out",
            help="torch: write the shapes to time as a plan instead, for `python -m seersim.profile.torch_runner` "
            "on a GPU machine that has torch only",
        ),
    ] = None,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="timed repeats per point (median kept; vllm default 3)")] = 10,
    fused: Annotated[
        bool,
        typer.Option(
            "--fused",
            help="torch: time MLA decode with seersim's fused Triton kernel (needs triton) and the routed experts as one "
            "grouped GEMM per projection, as serving engines run them, instead of torch's unfused paths",
        ),
    ] = False,
) -> None:
    """Write a `seersim-profile/1` table for `seersim calibrate cost`: a catalog model's
    operators timed with torch at its TP-shard shapes (`--backend torch`, needs
    the `gpu` extra), or live vLLM servers' iterations over a grid of batch sizes ×
    context lengths (`--backend vllm --url ...`, needs the `vllm` extra): timed from
    their per-step logs with `--server-logs` (every engine step; `serve-local` writes
    them), else from the client. `--server-logs` without `--url` turns logs already
    written into a table. `--plan-out` writes what `--backend torch` would time as a plan
    that `python -m seersim.profile.torch_runner PLAN --out TABLE` times where only
    torch is installed (docs/calibration.md)."""
    with cli_errors():
        from seersim.errors import ScenarioError, SpecError

        if out is None and not (backend == "torch" and plan_out is not None):
            raise ScenarioError("--out: name the profiling table to write (or, with --backend torch, --plan-out for a plan)")
        if backend == "vllm":
            from seersim.profile.vllm import ProfileGrid as LiveGrid, profile_vllm

            base = LiveGrid()
            grid = LiveGrid(
                batch_sizes=tuple(split_ints(batches, "--batches", "64,256") or base.batch_sizes),
                context_tokens=tuple(split_ints(contexts, "--contexts", "64,256") or base.context_tokens),
                prefill_tokens=tuple(split_ints(prefill, "--prefill", "64,256") or base.prefill_tokens),
                repeats=repeats if repeats != 10 else base.repeats,
            )
            from seersim.profile.schema import write_profile_table

            logs = split_logs(server_logs)
            if logs and not url:
                from seersim.profile.steplog import profile_from_logs

                if block_size is None:
                    raise ScenarioError("--block-size: give the servers' KV block size (vLLM's log does not state it)")
                rows = profile_from_logs(logs, block_size)
                if rows.empty:
                    raise ScenarioError(f"--server-logs: no timed engine steps in {', '.join(map(str, logs))} (millisecond timestamps needed)")
                meta = {"source": "vLLM per-step logs (seersim/profile/steplog.py)", "server_logs": [str(x) for x in logs],
                        "gpu": gpu or "vllm-server", "model": model, "block_size_tokens": block_size}
                write_profile_table(rows, out, {**meta, "command": _command()})
                typer.echo(f"{int(rows['repeats'].sum())} logged steps -> {len(rows)} iteration rows: wrote {out}")
                return
            rows, meta = profile_vllm(split_urls(url), grid, gpu=gpu or "vllm-server", logs=logs)
            write_profile_table(rows, out, {**meta, "command": _command()})
            typer.echo(f"profiled {len(rows)} iteration points on {len(meta['servers'])} vLLM server(s): wrote {out}")
            return
        if backend != "torch":
            raise ScenarioError(f"--backend {backend!r}: use torch or vllm")
        if server_logs:
            raise ScenarioError("--server-logs: vLLM's per-step logs are read with --backend vllm (add it; --url is optional)")
        if model is None:
            raise ScenarioError("--model: name the catalog model to profile with --backend torch (e.g. qwen2.5-7b)")
        from seersim.io import write_json
        from seersim.profile.schema import write_profile_table
        from seersim.profile.torch_ops import ProfileGrid, plan_model, profile_model
        from seersim.specs import get_gpu, get_model

        spec = get_model(model)
        if gpu is not None:
            gpu = get_gpu(gpu).name
        elif device.startswith("cuda") or plan_out is not None:
            raise SpecError("--gpu: name the catalog GPU this runs on (e.g. h100-sxm) so the table can be calibrated")
        base = ProfileGrid()
        grid = ProfileGrid(
            tokens=split_ints(tokens, "--tokens", "64,256") or base.tokens,
            decode_batches=split_ints(batches, "--batches", "64,256") or base.decode_batches,
            decode_contexts=split_ints(contexts, "--contexts", "64,256") or base.decode_contexts,
            decode_widths=split_ints(widths, "--widths", "1,3,5,9") or base.decode_widths,
            prefill_tokens=split_ints(prefill, "--prefill", "64,256") or base.prefill_tokens,
            repeats=repeats,
            warmup=min(3, repeats),
        )
        if min(grid.decode_widths) < 1 or max(grid.decode_widths) > 9:
            raise ScenarioError("--widths: queries per sequence lie in 1..9 (a decode, or γ+1 for γ ≤ 8 drafts)")
        wanted = {o.strip() for o in ops.split(",")} if ops else None
        if plan_out is not None:
            plan = plan_model(spec, tp, grid, wanted, dtype, gpu, _command(), fused=fused)
            write_json(plan_out, plan)
            points = sum(len(i.get("tokens") or i["points"]) for i in plan["items"])
            typer.echo(f"planned {points} points of {spec.name} (tp={tp}): wrote {plan_out}; time them with "
                       f"python -m seersim.profile.torch_runner {plan_out} --out TABLE.csv --device cuda")
            return
        rows, meta = profile_model(spec, tp, device, dtype, grid, wanted, gpu=gpu or "cpu", command=_command(), fused=fused)
        write_profile_table(rows, out, meta)
        typer.echo(f"profiled {len(rows)} points of {spec.name} (tp={tp}) on {device}: wrote {out}")
        for failed in meta["failed_items"]:
            typer.echo(f"seersim: warning: {failed['op']} could not be timed and is missing: {failed['error']}", err=True)


@app.command("kv")
def kv_cmd(
    source: Annotated[Path, typer.Argument(help="vLLM server log, saved /metrics page, or a profile's .meta.json")],
    scenario: Annotated[Path, typer.Option("--scenario", help="scenario whose model, GPU and engine the server ran")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", "-s", help="override a scenario field")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Usable KV tokens per instance as the server reported them, against the capacity the
    specs predict (GPU memory × utilisation − weights − activation reserve)."""
    with cli_errors():
        from seersim.calibrate.kv import kv_report
        from seersim.config import load_scenario

        rep = kv_report(source, load_scenario(scenario, overrides=list(set_ or [])))
        result = {
            "measured_tokens": rep.measured_tokens,
            "measured_tokens_per_engine": rep.measured_tokens_per_engine,
            "engines_per_instance": rep.engines_per_instance,
            "predicted_tokens": rep.predicted_tokens,
            "difference": rep.difference,
            "source": rep.source,
            "snippet": f"engine: {{kv_capacity_tokens: {rep.measured_tokens}}}",
        }
        _emit(result, as_json, [
            f"measured {rep.measured_tokens:,} KV tokens per instance ({rep.source}; {rep.engines_per_instance} engine(s))",
            f"predicted {rep.predicted_tokens:,} ({rep.difference:+.1%})",
            f"to use the measured value: {result['snippet']}",
        ])


@app.command("lengths")
def lengths_cmd(
    log: Annotated[Path, typer.Argument(help="rollout log CSV: group_id, input_tokens, output_tokens[, max_tokens]")],
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", help="truncation limit if the log has no column")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="workload snippet to write (YAML)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Fit output lengths (lognormal / gamma / 2-lognormal mixture, by AIC; capped rows
    censored) and the intra-group correlation; write a `workload:` snippet and a CDF plot."""
    with cli_errors():
        from seersim.calibrate.lengths import fit_lengths, plot_cdf, read_length_log, workload_snippet

        d = read_length_log(log, max_tokens)
        fit = fit_lengths(d)
        out = out or log.with_name(log.stem + "-workload.yaml")
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(workload_snippet(fit))
        tmp.replace(out)
        plot = out.with_suffix(".png")
        plot_cdf(d, fit, plot)
        result = {
            "distribution": fit.distribution,
            "params": fit.params,
            "mean_tokens": fit.mean_tokens,
            "intra_group_correlation": fit.intra_group_correlation,
            "goodness_of_fit": {"loglik": fit.loglik, "aic": fit.aic, "ks_statistic": fit.ks_statistic},
            "families": fit.families,
            "rows": fit.rows,
            "groups": fit.groups,
            "censored": fit.censored,
            "snippet": str(out),
            "plot": str(plot),
        }
        _emit(result, as_json, [
            f"{fit.rows} responses, {fit.groups} groups, {fit.censored} capped: best {fit.distribution} {fit.params}",
            f"  mean {fit.mean_tokens:,.0f} tokens, intra-group correlation {fit.intra_group_correlation:.3f}, KS {fit.ks_statistic:.3f}",
            f"  wrote {out} and {plot}",
        ])


@app.command("acceptance")
def acceptance_cmd(
    log: Annotated[Path, typer.Argument(help="speculative-decoding log CSV: draft_tokens, accepted_tokens, references")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="acceptance file to write (YAML)")] = None,
    reference_draft_tokens: Annotated[int, typer.Option("--draft-tokens", help="draft length the table's τ refers to")] = 8,
    as_json: JsonOpt = False,
) -> None:
    """Fit per-token acceptance against finished sibling references (truncated-geometric
    MLE) into the acceptance table the engine uses (`engine.speculation.acceptance_table`)."""
    with cli_errors():
        from seersim.calibrate.acceptance import acceptance_yaml, fit_acceptance, read_acceptance_log

        fit = fit_acceptance(read_acceptance_log(log), reference_draft_tokens)
        out = out or log.with_name(log.stem + "-acceptance.yaml")
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(acceptance_yaml(fit, f"fitted by `{_command()}`"))
        tmp.replace(out)
        result = {"acceptance_table": fit.table, "alpha": fit.alpha, "verify_steps": fit.steps,
                  "reference_draft_tokens": fit.reference_draft_tokens, "dropped_steps": fit.dropped_steps, "file": str(out)}
        _emit(result, as_json, [
            "references -> mean accepted length (incl. bonus) at γ=" + str(fit.reference_draft_tokens) + ": "
            + ", ".join(f"{n}: {t:.2f}" for n, t in sorted(fit.table.items())),
            f"  wrote {out}",
        ])
