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
import math
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
    """Times one operator as a serving engine runs it.

    On CUDA the calls are captured in a CUDA graph and its replays are timed with
    events, as vLLM replays its decode steps from graphs: the row is the kernels'
    time, not the host's launch latency, which on a slow host is tens of µs per kernel
    and would swamp every small operator (an eager MoE layer of 64 experts measured
    6 ms where its kernels take a fraction of that). Where capture fails, the calls
    are timed one by one, launches included, and `eager_points` counts them."""

    GRAPH_SPAN_S = 1e-3  # kernel time per replay: the replay's own launch and the events' resolution vanish in it
    MOST_CALLS = 32  # per graph (its memory pool holds every call's outputs)

    def __init__(self, torch, device: str, repeats: int, warmup: int) -> None:
        self.torch, self.device, self.repeats, self.warmup = torch, device, repeats, warmup
        self.cuda = device.startswith("cuda")
        self.eager_points = 0

    def __call__(self, fn: Callable[[], object]) -> tuple[float, float, int]:
        """(median s, std s, repeats) of one call of fn()."""
        for _ in range(self.warmup):
            fn()
        if self.cuda:
            try:
                return self._graphed(fn)
            except Exception:  # noqa: BLE001 (an operator that syncs with the host cannot be captured)
                self.eager_points += 1
                self.torch.cuda.synchronize()
        return _summary([self._once(fn) for _ in range(self.repeats)])

    def _once(self, fn: Callable[[], object]) -> float:
        torch = self.torch
        if not self.cuda:
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) * 1e-3  # ms -> s

    def _graphed(self, fn: Callable[[], object]) -> tuple[float, float, int]:
        torch = self.torch
        eager_s = self._once(fn)  # (launches included: an upper bound of the kernels' time)
        calls = max(1, min(self.MOST_CALLS, math.ceil(self.GRAPH_SPAN_S / max(eager_s, 1e-7))))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # (capture wants the operator warmed up on a side stream)
            fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
        graph.replay()
        torch.cuda.synchronize()
        return _summary([self._once(graph.replay) / calls for _ in range(self.repeats)])


def _summary(times: list[float]) -> tuple[float, float, int]:
    std = statistics.pstdev(times) if len(times) > 1 else 0.0
    return statistics.median(times), std, len(times)


def _row(op: str, tokens: int, batch: int, context: int, prefill: int, decode: int, timed) -> dict:
    t, sd, n = timed
    return {"op": op, "num_tokens": tokens, "batch_size": batch, "context_tokens": context,
            "prefill_tokens": prefill, "decode_tokens": decode, "time_s": t, "time_s_std": sd, "repeats": n}


# Each kind plans its points as (point, thunk) pairs: the thunk times one point and
# returns its row, so that one shape out of GPU memory costs that point, not the item.
Point = tuple[str, Callable[[], dict]]


FP8 = "float8_e4m3fn"  # the weights of an fp8 checkpoint (Kimi-K2's), with one scale per output column
FP8_MAX = 448.0


def _quantize_rows(torch, a):
    """a's rows in fp8 with one scale each, as fp8 linear and MoE kernels quantize their input."""
    scale = a.abs().amax(dim=1).float().clamp(min=1e-12) / FP8_MAX
    return (a / scale[:, None]).to(getattr(torch, FP8)), scale


def _weight_stack(torch, e: int, k: int, n: int, device: str, dt, fp8: bool):
    """e weight matrices [k, n] (a layer's experts; one for a dense GEMM): in dt, or fp8
    laid out column-major (as the scaled GEMMs read them) with their per-column scales."""
    if not fp8:
        return torch.randn(e, k, n, device=device, dtype=dt), None
    values = torch.randn(e, n, k, device=device, dtype=dt).to(getattr(torch, FP8)).transpose(-2, -1)
    return values, torch.rand(e, n, device=device, dtype=torch.float32) / FP8_MAX


def _gemm(torch, item: dict, device: str, dt, timer) -> list[Point]:
    """x · w over `tokens` rows; fp8 weights through `torch._scaled_mm`, the input
    quantized per row inside the timed call (as fp8 linear layers run)."""
    fp8 = item.get("weights") == FP8
    w, w_scale = _weight_stack(torch, 1, item["k"], item["n"], device, dt, fp8)
    w = w[0]

    def point(t: int) -> dict:
        x = torch.randn(t, item["k"], device=device, dtype=dt)
        if not fp8:
            return _row(item["op"], t, t, 0, t, 0, timer(lambda: x @ w))

        def run():
            q, q_scale = _quantize_rows(torch, x)
            return torch._scaled_mm(q, w, scale_a=q_scale[:, None], scale_b=w_scale, out_dtype=dt)

        return _row(item["op"], t, t, 0, t, 0, timer(run))

    return [(f"tokens={t}", lambda t=t: point(t)) for t in item["tokens"]]


def _moe(torch, item: dict, device: str, dt, timer) -> list[Point]:
    """Routed experts: `touched` experts, each with `per` token rows. Fused (as vLLM's
    fused-MoE kernels run them): the touched experts' up and down projections as one
    grouped GEMM each (`torch._grouped_mm`, rows sorted by expert; fp8 weights through
    `torch._scaled_grouped_mm`, the input quantized per row); else a loop of GEMMs,
    one pair per expert."""
    e, h, width = item["experts"], item["hidden"], item["width"]
    fp8 = item.get("weights") == FP8
    if fp8 and not item.get("fused"):
        raise ValueError("fp8 expert weights are timed fused only (plan with --fused)")
    up, up_scale = _weight_stack(torch, e, h, 2 * width, device, dt, fp8)
    down, down_scale = _weight_stack(torch, e, width, h, device, dt, fp8)

    def fused_point(t: int, touched: int, per: int) -> dict:
        x = torch.randn(touched * per, h, device=device, dtype=dt)
        ends = torch.arange(1, touched + 1, device=device, dtype=torch.int32) * per

        def grouped(a, w, w_scale):  # one launch over the touched experts
            if not fp8:
                return torch._grouped_mm(a, w[:touched], offs=ends)
            q, q_scale = _quantize_rows(torch, a)
            return torch._scaled_grouped_mm(q, w[:touched], q_scale, w_scale[:touched], offs=ends, out_dtype=dt)

        def run():
            a = grouped(x, up, up_scale)
            return grouped(torch.nn.functional.silu(a[:, :width]) * a[:, width:], down, down_scale)

        return _row("moe_experts", t, t, 0, t, 0, timer(run))

    def point(t: int, touched: int, per: int) -> dict:
        if item.get("fused"):
            return fused_point(t, touched, per)
        x = torch.randn(per, h, device=device, dtype=dt)

        def run():
            for i in range(touched):
                a = x @ up[i]
                (torch.nn.functional.silu(a[:, :width]) * a[:, width:]) @ down[i]

        return _row("moe_experts", t, t, 0, t, 0, timer(run))

    return [(f"tokens={p[0]}", lambda p=p: point(*p)) for p in item["points"]]


def _multiprocessors(torch, device: str) -> int:
    """The GPU's multiprocessors, which split-KV pieces fill (a CPU: one, no split)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.startswith("cuda") else 1


def _decode_points(item: dict, point: Callable[[int, int, int], dict]) -> list[Point]:
    """An item's (batch, context, width) points, each timed by `point`."""
    return [(f"batch={b} context={c} width={w}", lambda b=b, c=c, w=w: point(b, c, w)) for b, c, w in item["points"]]


def kv_splits(batch: int, kv_heads: int, context: int, sms: int, least_tokens: int = 256) -> int:
    """Pieces to split each sequence's context into, as split-KV decode kernels do
    (FlashDecoding; vLLM's FlashAttention and FlashMLA): enough that batch × K/V heads ×
    pieces fill the GPU's `sms` multiprocessors twice over, each piece a power-of-two
    fraction of the context and at least `least_tokens` long. Without the split a
    batch of one long sequence is read by one multiprocessor and times 100× slow."""
    pieces = 1
    while batch * kv_heads * pieces < 2 * sms and context % (2 * pieces) == 0 and context // (2 * pieces) >= least_tokens:
        pieces *= 2
    return pieces


def _decode(torch, item: dict, device: str, dt, timer) -> list[Point]:
    """Decode attention of `b` sequences at context `c`, `w` queries each: a plain decode
    (w = 1) or a verify step of w − 1 drafts.

    Laid out as decode kernels lay it out: the query heads that share a K/V head are
    packed into the query rows, so each K/V head is read once for all of them (MLA:
    one latent head, kv_lora + rope wide, whose first kv_lora columns are the values);
    and the context is split into `kv_splits` pieces attended in parallel (the pieces'
    combine, a pass over pieces × rows × head width, is left out). The verify queries'
    causality among themselves is left out too: it masks fewer than w of c keys."""
    heads = item["heads"]
    groups, dim = (1, item["width"]) if item["mla"] else (item["kv_heads"], item["head_dim"])
    per_group = max(1, heads // groups)
    sms = _multiprocessors(torch, device)
    if item["mla"] and item.get("fused"):
        return _mla_fused(torch, item, device, dt, timer, sms)

    def point(b: int, c: int, w: int) -> dict:
        pieces = kv_splits(b, groups, c, sms)
        q = torch.randn(b, pieces * groups, per_group * w, dim, device=device, dtype=dt)
        k = torch.randn(b, pieces * groups, c // pieces, dim, device=device, dtype=dt)
        if item["mla"]:
            v, scale = k[..., : item["lora"]], item["scale"]
        else:
            v, scale = torch.randn(b, pieces * groups, c // pieces, dim, device=device, dtype=dt), None

        def run():
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)

        return _row("attn_decode", b * w, b, b * c, 0, b * w, timer(run))

    return _decode_points(item, point)


def _mla_fused(torch, item: dict, device: str, dt, timer, sms: int) -> list[Point]:
    """MLA decode through seersim's fused Triton kernel (`triton_mla`): every query row
    (heads × width) against the latent cache once per piece of context, the pieces
    (`kv_splits`) combined in a second kernel, as FlashMLA and vLLM's Triton MLA do.
    The kernel is checked against float32 attention first: a wrong kernel's timing is
    no evidence."""
    from seersim.profile.triton_mla import TUNE_SHAPE, check, mla_decode, tune

    check(torch, device, dt, item["heads"], item["width"], item["lora"], item["scale"])
    if device.startswith("cuda"):
        tune_pieces = kv_splits(TUNE_SHAPE[0], 1, TUNE_SHAPE[1], sms)  # (the rule the points use)
        for w in sorted({w for _, _, w in item["points"]}):
            tune(torch, device, dt, item["heads"] * w, item["width"], item["lora"], item["scale"], tune_pieces)

    def point(b: int, c: int, w: int) -> dict:
        q = torch.randn(b, item["heads"] * w, item["width"], device=device, dtype=dt)
        latent = torch.randn(b, c, item["width"], device=device, dtype=dt)
        pieces = kv_splits(b, 1, c, sms)
        return _row("attn_decode", b * w, b, b * c, 0, b * w,
                    timer(lambda: mla_decode(torch, q, latent, item["lora"], item["scale"], pieces)))

    return _decode_points(item, point)


def _decode_step(torch, item: dict, device: str, dt, timer) -> list[Point]:
    """One whole decode iteration of a dense GQA model (one TP rank's share, without
    its all-reduces) over `b` sequences at context `c`, `w` tokens each (a plain
    decode, or verifying w − 1 drafts): every layer's RMSNorm, QKV projection, rotary,
    KV append, split-KV attention (as `_decode`; the pieces' combine approximated by
    their mean, the same bytes), O projection, residual, RMSNorm and gated MLP; then
    the final norm and the lm_head on every row (a verify step samples each position).

    Each layer has its own weights and KV, so a layer's GEMMs find none of their
    weights in L2, as in a real forward: what the operator rows (one operator replayed
    over the same weights) cannot show. This is the check of the operators' sum."""
    fn = torch.nn.functional
    n_layers, h, heads, kvh, d = item["layers"], item["hidden"], item["heads"], item["kv_heads"], item["head_dim"]
    inter, group = item["intermediate"], max(1, heads // kvh)

    def w(*shape):
        return torch.randn(*shape, device=device, dtype=dt) * shape[0] ** -0.5

    layers = [(w(h, (heads + 2 * kvh) * d), w(heads * d, h), w(h, 2 * inter), w(inter, h),
               torch.ones(h, device=device, dtype=dt), torch.ones(h, device=device, dtype=dt)) for _ in range(n_layers)]
    lm_head = w(h, item["vocab"])
    sms = _multiprocessors(torch, device)

    def point(b: int, c: int, width: int) -> dict:
        pieces = kv_splits(b, kvh, c, sms)
        # per layer K and V as (b, K/V head x piece, c / pieces, d): head j's piece s at j * pieces + s
        kv = [(w(b, kvh * pieces, c // pieces, d), w(b, kvh * pieces, c // pieces, d)) for _ in range(n_layers)]
        x0, cos, sin = w(b * width, h), w(b, 1, width, d), w(b, 1, width, d)
        rows = group * width  # (each K/V head's query rows: its query heads x the positions)

        def run():
            x = x0
            for (wqkv, wo, wug, wdown, norm1, norm2), (kc, vc) in zip(layers, kv):
                q, k, v = (fn.rms_norm(x, (h,), norm1) @ wqkv).split([heads * d, kvh * d, kvh * d], dim=-1)
                q = q.reshape(b, width, kvh, group, d).permute(0, 2, 3, 1, 4)  # (b, kvh, group, width, d)
                q = q * cos[:, :, None] + q.flip(-1) * sin[:, :, None]  # (rotary's elementwise work)
                k, v = k.reshape(b, width, kvh, d).transpose(1, 2), v.reshape(b, width, kvh, d).transpose(1, 2)
                k = k * cos + k.flip(-1) * sin
                kc[:, pieces - 1 :: pieces, -width:] = k  # the new tokens: the last piece's last slots
                vc[:, pieces - 1 :: pieces, -width:] = v
                qs = q.reshape(b, kvh, 1, rows, d).expand(b, kvh, pieces, rows, d).reshape(b, kvh * pieces, rows, d)
                o = fn.scaled_dot_product_attention(qs, kc, vc).reshape(b, kvh, pieces, group, width, d).mean(2)
                x = x + o.permute(0, 3, 1, 2, 4).reshape(b * width, heads * d) @ wo
                gate_up = fn.rms_norm(x, (h,), norm2) @ wug
                x = x + (fn.silu(gate_up[:, :inter]) * gate_up[:, inter:]) @ wdown
            return fn.rms_norm(x, (h,)) @ lm_head

        return _row("iteration", b * width, b, b * c, 0, b * width, timer(run))

    return _decode_points(item, point)


def _prefill(torch, item: dict, device: str, dt, timer) -> list[Point]:
    """Causal self-attention of one prompt of t tokens. Grouped K/V heads are expanded
    before timing: prefill is bound by arithmetic, which sharing K/V heads does not
    change, and every torch's flash kernel then takes it."""
    heads, kvh = item["heads"], item["kv_heads"]

    def point(t: int) -> dict:
        q = torch.randn(1, heads, t, item["qk_dim"], device=device, dtype=dt)
        k = torch.randn(1, kvh, t, item["qk_dim"], device=device, dtype=dt).repeat_interleave(heads // kvh, dim=1)
        v = torch.randn(1, kvh, t, item["v_dim"], device=device, dtype=dt).repeat_interleave(heads // kvh, dim=1)

        def run():
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

        return _row("attn_prefill", t, 1, t, t, 0, timer(run))

    return [(f"tokens={t}", lambda t=t: point(t)) for t in item["tokens"]]


_TIMING_CUDA = "CUDA-graph replays, median per call (kernels, no launch gaps); eager_points: timed one by one"
_TIMING_HOST = "host clock per call (perf_counter), median"
_KINDS = {"gemm": _gemm, "moe": _moe, "attn_decode": _decode, "attn_prefill": _prefill, "decode_step": _decode_step}


def _failure(exc: Exception) -> str:
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"


def run_plan(plan: dict, device: str, on_item: Callable[[list[dict], dict], None] | None = None) -> tuple[list[dict], dict]:
    """Time every item of `plan` on `device`: (rows, the table's meta: the plan's and
    the machine's provenance, and how far it got).

    A point that fails (a shape out of GPU memory) is recorded in the meta's
    `failed_points` and the item's other points still run; an item that fails as a
    whole (its weights out of memory) in `failed_items`. `on_item(rows, meta)` is
    called after each item, so a caller can keep what is measured if the run is cut
    short."""
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
    meta = {**plan["meta"], **machine_provenance(torch, device), "timing": _TIMING_CUDA if timer.cuda else _TIMING_HOST}
    meta.update(items=len(items), items_done=0, failed_items=[], failed_points=[], eager_points=0, complete=False)
    rows: list[dict] = []

    lost: list[str] = []  # a kernel's fault (an illegal address) poisons the device: nothing more runs

    def release() -> None:
        if device.startswith("cuda") and not lost:
            try:
                torch.cuda.empty_cache()  # (the next shapes get the memory back)
            except Exception as exc:  # noqa: BLE001
                lost.append(_failure(exc))

    for item in items:
        op = item.get("op", "?")
        try:
            for point, timed in _KINDS[item["kind"]](torch, item, device, dt, timer):
                try:
                    rows.append(timed())
                except Exception as exc:  # noqa: BLE001 (out of GPU memory, a kernel this torch lacks: keep the rest)
                    meta["failed_points"].append({"op": op, "point": point, "error": _failure(exc)})
                    release()
                if lost:
                    break
        except Exception as exc:  # noqa: BLE001 (the item's weights out of memory: keep the other items)
            meta["failed_items"].append({"op": op, "error": _failure(exc)})
        finally:
            release()
        if lost:
            meta["failed_items"].append({"op": op, "error": f"the device was lost, the rest of the plan not run: {lost[0]}"})
            if on_item is not None:
                on_item(rows, meta)
            break
        meta["items_done"] += 1
        meta["eager_points"] = timer.eager_points
        meta["complete"] = meta["items_done"] == len(items) and not meta["failed_items"] and not meta["failed_points"]
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
    try:
        import triton  # (the fused MLA kernel's compiler, where installed)

        meta["triton"] = triton.__version__
    except ImportError:
        pass
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
    for failed in meta["failed_points"]:
        print(f"warning: {failed['op']} at {failed['point']} failed and was skipped: {failed['error']}", file=sys.stderr)
    if not rows:
        print(f"error: {args.plan}: no item could be timed", file=sys.stderr)
        return 1
    print(f"profiled {len(rows)} points of {meta.get('model')} (tp={meta.get('tp')}) on {args.device}: wrote {args.out}")
    return 0 if meta["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
