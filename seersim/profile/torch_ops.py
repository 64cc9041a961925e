"""Time a catalog model's operators with torch at its TP-shard shapes (random weights).

One layer's GEMMs (QKV/O or MLA's projections, the MLP, shared experts), the routed
MoE experts with the expected touched-expert count, the lm_head, and attention kernels
for prefill (causal SDPA; MLA in its non-absorbed form) and decode (SDPA over a batch ×
context grid; MLA absorbed over its 576-wide latent). Rows follow `seersim-profile/1`.
Needs the `[gpu]` extra (torch); runs on CPU for tests, on CUDA for real tables.
"""

from __future__ import annotations

import datetime as _dt
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import pandas as pd

from seersim.errors import SpecError
from seersim.specs import ModelSpec

GEMM_OPS = ("qkv_proj", "attn_out_proj", "q_a_proj", "q_b_proj", "q_proj", "kv_a_proj", "kv_b_proj", "mlp_up_gate", "mlp_down")


@dataclass(frozen=True)
class ProfileGrid:
    tokens: tuple[int, ...] = (1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096)
    decode_batches: tuple[int, ...] = (1, 8, 32, 128)
    decode_contexts: tuple[int, ...] = (512, 2048, 8192, 32768)
    prefill_tokens: tuple[int, ...] = (128, 512, 2048, 8192)
    repeats: int = 10
    warmup: int = 3


def _torch():
    try:
        import torch
    except ImportError:
        raise SpecError("`seersim profile` needs torch: pip install 'seersim[gpu]'") from None
    return torch


class _Timer:
    def __init__(self, device: str, repeats: int, warmup: int) -> None:
        self.torch = _torch()
        self.device, self.repeats, self.warmup = device, repeats, warmup
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


def profile_model(
    model: ModelSpec,
    tp: int = 1,
    device: str = "cuda",
    dtype: str = "bfloat16",
    grid: ProfileGrid = ProfileGrid(),
    ops: set[str] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Profile one layer's operators (and the lm_head) of `model` on one TP rank."""
    torch = _torch()
    torch.manual_seed(seed)
    dt = getattr(torch, dtype)
    timer = _Timer(device, grid.repeats, grid.warmup)
    want = (lambda op: op in ops) if ops else (lambda op: True)
    rows: list[dict] = []
    h = model.hidden_size
    gemms = model.attention_gemms(tp)
    if model.num_layers > model.num_moe_layers:
        gemms += model.mlp_gemms(model.intermediate_size, tp)
    for shape in gemms:
        if not want(shape.op):
            continue
        w = torch.randn(shape.k, shape.n, device=device, dtype=dt)
        for t in grid.tokens:
            x = torch.randn(t, shape.k, device=device, dtype=dt)
            rows.append(_row(shape.op, t, t, 0, t, 0, timer(lambda: x @ w)))
        del w
    if want("lm_head"):
        w = torch.randn(h, max(1, model.vocab_size // tp), device=device, dtype=dt)
        for t in grid.tokens:
            x = torch.randn(t, h, device=device, dtype=dt)
            rows.append(_row("lm_head", t, t, 0, t, 0, timer(lambda: x @ w)))
        del w
    if model.is_moe and want("moe_experts"):
        rows += _moe_rows(torch, model, tp, device, dt, grid, timer)
    if want("attn_decode"):
        rows += _decode_rows(torch, model, tp, device, dt, grid, timer)
    if want("attn_prefill"):
        rows += _prefill_rows(torch, model, tp, device, dt, grid, timer)
    return pd.DataFrame(rows)


def _moe_rows(torch, model: ModelSpec, tp: int, device: str, dt, grid: ProfileGrid, timer) -> list[dict]:
    """Routed experts: the expected touched experts, each with its share of token rows."""
    width = max(1, model.moe_intermediate_size // tp)
    rows = []
    up = torch.randn(model.num_experts, model.hidden_size, 2 * width, device=device, dtype=dt)
    down = torch.randn(model.num_experts, width, model.hidden_size, device=device, dtype=dt)
    for t in grid.tokens:
        touched = max(1, round(model.distinct_experts_touched(t)))
        per = max(1, round(t * model.experts_per_token / touched))
        x = torch.randn(per, model.hidden_size, device=device, dtype=dt)

        def run():
            for e in range(touched):
                a = x @ up[e]
                (torch.nn.functional.silu(a[:, :width]) * a[:, width:]) @ down[e]

        rows.append(_row("moe_experts", t, t, 0, t, 0, timer(run)))
    return rows


def _decode_rows(torch, model: ModelSpec, tp: int, device: str, dt, grid: ProfileGrid, timer) -> list[dict]:
    heads = max(1, model.num_attention_heads // tp)
    rows = []
    for b in grid.decode_batches:
        for c in grid.decode_contexts:
            if model.attention == "mla":  # absorbed: attend over the latent (kv_lora + rope wide)
                width = model.kv_lora_rank + model.qk_rope_head_dim
                q = torch.randn(b, heads, 1, width, device=device, dtype=dt)
                kv = torch.randn(b, 1, c, width, device=device, dtype=dt)
                scale = 1.0 / (model.qk_nope_head_dim + model.qk_rope_head_dim) ** 0.5

                def run(q=q, kv=kv, scale=scale):
                    p = torch.softmax((q @ kv.transpose(-1, -2)) * scale, dim=-1)
                    return p @ kv[..., : model.kv_lora_rank]
            else:
                kvh = model.kv_heads_per_rank(tp)
                q = torch.randn(b, heads, 1, model.head_dim, device=device, dtype=dt)
                k = torch.randn(b, kvh, c, model.head_dim, device=device, dtype=dt)
                v = torch.randn(b, kvh, c, model.head_dim, device=device, dtype=dt)

                def run(q=q, k=k, v=v):
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)

            rows.append(_row("attn_decode", b, b, b * c, 0, b, timer(run)))
    return rows


def _prefill_rows(torch, model: ModelSpec, tp: int, device: str, dt, grid: ProfileGrid, timer) -> list[dict]:
    heads = max(1, model.num_attention_heads // tp)
    rows = []
    for t in grid.prefill_tokens:
        if model.attention == "mla":  # non-absorbed: per-head K/V up-projected from the latent
            qk = model.qk_nope_head_dim + model.qk_rope_head_dim
            q = torch.randn(1, heads, t, qk, device=device, dtype=dt)
            k = torch.randn(1, heads, t, qk, device=device, dtype=dt)
            v = torch.randn(1, heads, t, model.v_head_dim, device=device, dtype=dt)
        else:
            kvh = model.kv_heads_per_rank(tp)
            q = torch.randn(1, heads, t, model.head_dim, device=device, dtype=dt)
            k = torch.randn(1, kvh, t, model.head_dim, device=device, dtype=dt)
            v = torch.randn(1, kvh, t, model.head_dim, device=device, dtype=dt)

        def run(q=q, k=k, v=v):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

        rows.append(_row("attn_prefill", t, 1, t, t, 0, timer(run)))
    return rows


def provenance(model: ModelSpec, gpu: str, tp: int, device: str, dtype: str, command: str) -> dict:
    """The sidecar's fields: what ran where, with which software."""
    torch = _torch()
    meta = {
        "gpu": gpu,
        "model": model.name,
        "tp": tp,
        "dtype": dtype,
        "device": device,
        "torch": torch.__version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "command": command,
        "weights": "random (timing only)",
    }
    if device.startswith("cuda"):
        meta["device_name"] = torch.cuda.get_device_name(0)
        meta["cuda"] = torch.version.cuda
        try:
            import subprocess

            meta["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, check=False,
            ).stdout.strip()
        except OSError:
            meta["driver"] = "unknown"
    else:
        meta["device_name"] = platform.processor() or platform.machine()
    return meta
