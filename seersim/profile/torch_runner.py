"""Time a profiling plan's operators with torch and write a `seersim-profile/1` table.

A plan (`torch_ops.plan_model`, written by `seersim profile --plan-out`) lists the
kernel shapes of one catalog model at its TP shard: GEMMs, the routed MoE experts,
attention for prefill and for decode over batch × context × verify width. This module
needs torch and the standard library only, so it runs on a GPU machine where seersim's
other dependencies are absent:

    python -m seersim.profile.torch_runner PLAN.json --out table.csv --device cuda

`seersim calibrate cost table.csv` then fits the table wherever seersim is installed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from seersim.profile.schema import write_profile_table

PLAN_SCHEMA = "seersim-profile-plan/1"


class _Timer:
    def __init__(self, torch, device: str, repeats: int, warmup: int) -> None:
        self.torch, self.device, self.repeats, self.warmup = torch, device, repeats, warmup
        self.cuda = device.startswith("cuda")

    def __call__(self, fn: Callable[[], object]) -> tuple[float, float, int]:
        """(median s, std s, repeats) of fn()."""
        torch = self.torch
        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(self.repeats):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) * 1e-3)  # ms -> s
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        std = statistics.pstdev(times) if len(times) > 1 else 0.0
        return statistics.median(times), std, len(times)


def _row(op: str, tokens: int, batch: int, context: int, prefill: int, decode: int, timed) -> dict:
    t, sd, n = timed
    return {"op": op, "num_tokens": tokens, "batch_size": batch, "context_tokens": context,
            "prefill_tokens": prefill, "decode_tokens": decode, "time_s": t, "time_s_std": sd, "repeats": n}


def _gemm(torch, item: dict, device: str, dt, timer) -> list[dict]:
    w = torch.randn(item["k"], item["n"], device=device, dtype=dt)
    rows = []
    for t in item["tokens"]:
        x = torch.randn(t, item["k"], device=device, dtype=dt)
        rows.append(_row(item["op"], t, t, 0, t, 0, timer(lambda: x @ w)))
    return rows


def _moe(torch, item: dict, device: str, dt, timer) -> list[dict]:
    """Routed experts: `touched` experts, each with `per` token rows."""
    e, h, width = item["experts"], item["hidden"], item["width"]
    up = torch.randn(e, h, 2 * width, device=device, dtype=dt)
    down = torch.randn(e, width, h, device=device, dtype=dt)
    rows = []
    for t, touched, per in item["points"]:
        x = torch.randn(per, h, device=device, dtype=dt)

        def run(x=x, touched=touched):
            for i in range(touched):
                a = x @ up[i]
                (torch.nn.functional.silu(a[:, :width]) * a[:, width:]) @ down[i]

        rows.append(_row("moe_experts", t, t, 0, t, 0, timer(run)))
    return rows


def verify_mask(torch, context: int, width: int, device: str):
    """(width × context) bool: the last `width` positions of the context are the
    queries, and query i sees the context up to its own position, context − width + i."""
    return torch.arange(context, device=device)[None, :] <= torch.arange(context - width, context, device=device)[:, None]


def _decode(torch, item: dict, device: str, dt, timer) -> list[dict]:
    """Decode attention of `b` sequences at context `c`, `w` queries each: a plain decode
    (w = 1) or a verify step of w − 1 drafts, the queries being the context's last w
    positions (causal among themselves)."""
    heads = item["heads"]
    rows = []
    for b, c, w in item["points"]:
        mask = verify_mask(torch, c, w, device) if w > 1 else None
        if item["mla"]:  # absorbed: attend over the latent (kv_lora + rope wide)
            q = torch.randn(b, heads, w, item["width"], device=device, dtype=dt)
            kv = torch.randn(b, 1, c, item["width"], device=device, dtype=dt)

            def run(q=q, kv=kv, mask=mask, scale=item["scale"], lora=item["lora"]):
                s = (q @ kv.transpose(-1, -2)) * scale
                if mask is not None:
                    s = s.masked_fill(~mask, float("-inf"))
                return torch.softmax(s, dim=-1) @ kv[..., :lora]
        else:
            d = item["head_dim"]
            q = torch.randn(b, heads, w, d, device=device, dtype=dt)
            k = torch.randn(b, item["kv_heads"], c, d, device=device, dtype=dt)
            v = torch.randn(b, item["kv_heads"], c, d, device=device, dtype=dt)

            def run(q=q, k=k, v=v, mask=mask):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)

        rows.append(_row("attn_decode", b * w, b, b * c, 0, b * w, timer(run)))
    return rows


def _prefill(torch, item: dict, device: str, dt, timer) -> list[dict]:
    heads, kvh = item["heads"], item["kv_heads"]
    rows = []
    for t in item["tokens"]:
        q = torch.randn(1, heads, t, item["qk_dim"], device=device, dtype=dt)
        k = torch.randn(1, kvh, t, item["qk_dim"], device=device, dtype=dt)
        v = torch.randn(1, kvh, t, item["v_dim"], device=device, dtype=dt)

        def run(q=q, k=k, v=v):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

        rows.append(_row("attn_prefill", t, 1, t, t, 0, timer(run)))
    return rows


_KINDS = {"gemm": _gemm, "moe": _moe, "attn_decode": _decode, "attn_prefill": _prefill}


def run_plan(plan: dict, device: str, on_item: Callable[[list[dict], dict], None] | None = None) -> tuple[list[dict], dict]:
    """Time every item of `plan` on `device`: (rows, the table's meta: the plan's and
    the machine's provenance, and how far it got).

    An item that fails (a shape out of GPU memory; grouped-query SDPA needs torch ≥
    2.5) is recorded in the meta's `failed_items` and the rest still run; `on_item(rows, meta)` is called after each
    item, so a caller can keep what is measured if the run is cut short."""
    import torch

    if not isinstance(plan, dict) or plan.get("schema") != PLAN_SCHEMA:
        schema = plan.get("schema") if isinstance(plan, dict) else None
        raise ValueError(f"not a profiling plan: schema {schema!r}, expected {PLAN_SCHEMA!r}")
    # checked before any timing: device time is scarce, a plan edited by hand is not
    for key, least in (("repeats", 1), ("warmup", 0)):
        if isinstance(plan.get(key), bool) or not isinstance(plan.get(key), int) or plan[key] < least:
            raise ValueError(f"'{key}' must be an integer >= {least}, got {plan.get(key)!r}")
    if not isinstance(plan.get("items"), list):
        raise ValueError("'items' must be a list of operators to time")
    dt = getattr(torch, str(plan["meta"]["dtype"]), None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"meta.dtype {plan['meta']['dtype']!r} is not a torch dtype (e.g. bfloat16)")
    torch.manual_seed(plan.get("seed", 0))
    timer = _Timer(torch, device, plan["repeats"], plan["warmup"])
    items = plan["items"]
    meta = {**plan["meta"], **machine_provenance(torch, device)}
    meta.update(items=len(items), items_done=0, failed_items=[], complete=False)
    rows: list[dict] = []
    for item in items:
        try:
            rows += _KINDS[item["kind"]](torch, item, device, dt, timer)
        except Exception as exc:  # noqa: BLE001 (out of GPU memory, a kernel this torch lacks: keep the rest)
            error = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
            meta["failed_items"].append({"op": item.get("op", "?"), "error": error})
        finally:
            if device.startswith("cuda"):
                torch.cuda.empty_cache()  # (the next shapes get the memory back)
        meta["items_done"] += 1
        meta["complete"] = meta["items_done"] == len(items) and not meta["failed_items"]
        if on_item is not None:
            on_item(rows, meta)
    return rows, meta


def machine_provenance(torch, device: str) -> dict:
    """Where and with what software the plan ran."""
    meta = {
        "device": device,
        "torch": torch.__version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "weights": "random (timing only)",
    }
    if device.startswith("cuda"):
        meta["device_name"] = torch.cuda.get_device_name(0)
        meta["cuda"] = torch.version.cuda
        try:
            meta["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, check=False,
            ).stdout.strip()
        except OSError:
            meta["driver"] = "unknown"
    else:
        meta["device_name"] = platform.processor() or platform.machine()
    return meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Time a seersim profiling plan with torch; write a seersim-profile/1 table.")
    ap.add_argument("plan", type=Path, help="plan JSON written by `seersim profile --plan-out`")
    ap.add_argument("--out", type=Path, required=True, help="table to write (CSV + .meta.json)")
    ap.add_argument("--device", default="cuda", help="torch device (default cuda)")
    args = ap.parse_args(argv)
    try:
        import torch  # noqa: F401
    except ImportError:
        print("error: the runner needs torch (pip install torch)", file=sys.stderr)
        return 2
    command = " ".join(["python -m seersim.profile.torch_runner", *(argv if argv is not None else sys.argv[1:])])

    def keep(rows: list[dict], meta: dict) -> None:
        # the table so far, after every item: a run cut short keeps what it measured
        if rows:
            write_profile_table(rows, args.out, {**meta, "runner_command": command})

    try:
        plan = json.loads(args.plan.read_text())
        rows, meta = run_plan(plan, args.device, keep)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {args.plan}: {exc}", file=sys.stderr)
        return 2
    for failed in meta["failed_items"]:
        print(f"warning: {failed['op']} failed and was skipped: {failed['error']}", file=sys.stderr)
    if not rows:
        print(f"error: {args.plan}: no item could be timed", file=sys.stderr)
        return 1
    print(f"profiled {len(rows)} points of {meta.get('model')} (tp={meta.get('tp')}) on {args.device}: wrote {args.out}")
    return 0 if meta["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
