"""`seersim calibrate ...` and `seersim profile`: a typer sub-app over calibrate/ and profile/."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from seersim.cli_common import cli_errors

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
        typer.echo(json.dumps(result, default=float))
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
    seed: Annotated[int, typer.Option("--seed", help="seed of the held-out split")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Fit a cost calibration: kernel curves from operator tables, or an iteration line
    from `iteration` tables (live engine steps). Writes the calibration file a scenario's
    `cost: {model: calibrated, file: ...}` reads, and a predicted-vs-measured plot."""
    with cli_errors():
        _cost(profiles, test, out, gpu, seed, as_json)


def _cost(profiles, test, out, gpu, seed, as_json) -> None:
    from seersim.calibrate.costfit import (
        evaluate_iteration,
        evaluate_kernel_curves,
        fit_iteration,
        fit_kernel_curves,
        plot_fit,
    )
    from seersim.calibrate.tables import read_cost_data
    from seersim.cost.calibration import save_calibration
    from seersim.errors import TraceError

    datas = [read_cost_data(p, gpu) for p in profiles]
    iteration = datas[0].is_iteration
    if iteration:
        if len(datas) > 1:
            raise TraceError("fit one iteration table at a time (each is one deployment)")
        res = fit_iteration(datas[0], seed, _command())
    else:
        res = fit_kernel_curves(datas, seed, _command())
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


def _ints(csv: str | None) -> tuple[int, ...] | None:
    return tuple(int(x) for x in csv.split(",") if x.strip()) if csv else None


def profile_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help="catalog model, e.g. qwen2.5-7b")],
    out: Annotated[Path, typer.Option("--out", "-o", help="profiling table to write (CSV + .meta.json)")],
    device: Annotated[str, typer.Option("--device", help="torch device: cuda, cuda:1, cpu")] = "cuda",
    gpu: Annotated[Optional[str], typer.Option("--gpu", help="catalog GPU this runs on (recorded for calibration)")] = None,
    tp: Annotated[int, typer.Option("--tp", help="tensor-parallel degree whose shard shapes are timed")] = 1,
    dtype: Annotated[str, typer.Option("--dtype", help="torch dtype of weights and activations")] = "bfloat16",
    ops: Annotated[Optional[str], typer.Option("--ops", help="comma-separated subset of ops (default: all)")] = None,
    tokens: Annotated[Optional[str], typer.Option("--tokens", help="token counts for GEMMs, comma-separated")] = None,
    batches: Annotated[Optional[str], typer.Option("--batches", help="decode attention batch sizes")] = None,
    contexts: Annotated[Optional[str], typer.Option("--contexts", help="decode attention context lengths")] = None,
    prefill: Annotated[Optional[str], typer.Option("--prefill", help="prefill attention lengths")] = None,
    repeats: Annotated[int, typer.Option("--repeats", help="timed repeats per point (median kept)")] = 10,
) -> None:
    """Time a catalog model's operators with torch at its TP-shard shapes (random weights)
    and write a `seersim-profile/1` table for `seersim calibrate cost`. Needs torch
    (`pip install 'seersim[gpu]'`)."""
    with cli_errors():
        from seersim.errors import SpecError
        from seersim.profile.table import write_profile_table
        from seersim.profile.torch_ops import ProfileGrid, profile_model, provenance
        from seersim.specs import get_gpu, get_model

        spec = get_model(model)
        if gpu is not None:
            gpu = get_gpu(gpu).name
        elif device.startswith("cuda"):
            raise SpecError("--gpu: name the catalog GPU this runs on (e.g. h100-sxm) so the table can be calibrated")
        base = ProfileGrid()
        grid = ProfileGrid(
            tokens=_ints(tokens) or base.tokens,
            decode_batches=_ints(batches) or base.decode_batches,
            decode_contexts=_ints(contexts) or base.decode_contexts,
            prefill_tokens=_ints(prefill) or base.prefill_tokens,
            repeats=repeats,
            warmup=min(3, repeats),
        )
        wanted = {o.strip() for o in ops.split(",")} if ops else None
        rows = profile_model(spec, tp, device, dtype, grid, wanted)
        write_profile_table(rows, out, provenance(spec, gpu or "cpu", tp, device, dtype, _command()))
        typer.echo(f"profiled {len(rows)} points of {spec.name} (tp={tp}) on {device}: wrote {out}")
