"""Plan and time a catalog model's operators at its TP-shard shapes (random weights).

One layer's GEMMs (QKV/O or MLA's projections, the MLP, shared experts), the routed
MoE experts with the expected touched-expert count, the lm_head, and attention kernels
for prefill (causal SDPA; MLA in its non-absorbed form) and decode (SDPA over a batch ×
context × verify-width grid; MLA absorbed over its 576-wide latent). Fused, MLA decode
runs seersim's Triton kernel (`triton_mla`) and the routed experts one grouped GEMM per
projection, as serving engines run them; unfused, torch's own paths. `plan_model`
turns the catalog's shapes into a plan (JSON-ready); `torch_runner.run_plan` times it,
here in-process or standalone on a GPU machine that has torch only. Rows follow
`seersim-profile/1`. Needs the `[gpu]` extra (torch) to time; runs on CPU for tests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd

from seersim.errors import ScenarioError, SpecError
from seersim.profile.torch_runner import PLAN_SCHEMA, run_plan
from seersim.specs import ModelSpec


DECODE_STEP = "decode_step"  # one whole decode iteration of the model (an `iteration` row)
MOST_STEP_KV_BYTES = 32 * 2**30  # a whole step's KV beside a 7-8B model's weights on an 80 GB GPU


def _whole_step_timeable(model: ModelSpec, tp: int) -> bool:
    """The runner's whole-step forward is a dense GQA/MHA transformer on one GPU (at tp > 1
    it would leave out the all-reduces)."""
    return model.attention != "mla" and not model.is_moe and tp == 1


@dataclass(frozen=True)
class ProfileGrid:
    tokens: tuple[int, ...] = (1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096)
    decode_batches: tuple[int, ...] = (1, 8, 32, 128)
    decode_contexts: tuple[int, ...] = (512, 2048, 8192, 32768)
    # queries per sequence: 1 = a plain decode, γ+1 = verifying γ drafts (γ ≤ 8)
    decode_widths: tuple[int, ...] = (1, 3, 5, 9)
    prefill_tokens: tuple[int, ...] = (128, 512, 2048, 8192)
    repeats: int = 10
    warmup: int = 3


def plan_model(
    model: ModelSpec,
    tp: int = 1,
    grid: ProfileGrid = ProfileGrid(),
    ops: set[str] | None = None,
    dtype: str = "bfloat16",
    gpu: str = "cpu",
    command: str = "",
    seed: int = 0,
    fused: bool = False,
) -> dict:
    """The kernel shapes of one layer's operators (and the lm_head) of `model` on one
    TP rank, as a plan for `torch_runner.run_plan`. A tp vLLM could not use, an op
    the model does not have or fewer than one timed repeat is a typed error."""
    from seersim.config import tp_divides_heads

    ok, why = tp_divides_heads(model, tp) if tp >= 1 else (False, "a tensor-parallel degree is at least 1")
    if not ok:
        raise SpecError(f"--tp {tp}: {why}")
    if grid.repeats < 1:
        raise ScenarioError(f"--repeats {grid.repeats}: time each point at least once")
    gemms = model.layer_gemms(tp)
    known = [s.op for s in gemms] + ["lm_head"] + (["moe_experts"] if model.is_moe else []) + ["attn_decode", "attn_prefill"]
    if _whole_step_timeable(model, tp):
        known.append(DECODE_STEP)
    if ops and not ops <= set(known):
        raise ScenarioError(f"--ops: {model.name} has no {', '.join(sorted(ops - set(known)))}; its ops: {', '.join(known)}")
    if ops and DECODE_STEP in ops and len(ops) > 1:
        raise ScenarioError(f"--ops: {DECODE_STEP} times whole iterations, a table of its own: plan it alone")
    # (whole steps only when asked: they are an iteration table, not operator rows)
    want = (lambda op: op in ops) if ops else (lambda op: op != DECODE_STEP)
    items: list[dict] = []
    # (an fp8 checkpoint's weights in fp8 where they are timed as engines run them; its lm_head stays bf16)
    weights = "float8_e4m3fn" if fused and model.weight_bytes_per_param == 1 else dtype
    for shape in gemms:
        if want(shape.op):
            items.append({"kind": "gemm", "op": shape.op, "k": shape.k, "n": shape.n, "tokens": list(grid.tokens),
                          "weights": weights})
    if want("lm_head"):
        items.append({"kind": "gemm", "op": "lm_head", "k": model.hidden_size, "n": max(1, model.vocab_size // tp),
                      "tokens": list(grid.tokens)})
    if model.is_moe and want("moe_experts"):
        points = []
        for t in grid.tokens:
            touched = max(1, round(model.distinct_experts_touched(t)))
            points.append([t, touched, max(1, round(t * model.experts_per_token / touched))])
        items.append({"kind": "moe", "op": "moe_experts", "experts": model.num_experts, "hidden": model.hidden_size,
                      "width": max(1, model.moe_intermediate_size // tp), "points": points, "fused": fused, "weights": weights})
    heads = max(1, model.num_attention_heads // tp)
    if want("attn_decode"):
        points = [[b, c, w] for b in grid.decode_batches for c in grid.decode_contexts for w in grid.decode_widths if w <= c]
        if model.attention == "mla":
            attn = {"mla": True, "width": model.kv_lora_rank + model.qk_rope_head_dim, "lora": model.kv_lora_rank,
                    "scale": 1.0 / (model.qk_nope_head_dim + model.qk_rope_head_dim) ** 0.5, "fused": fused}
        else:
            attn = {"mla": False, "kv_heads": model.kv_heads_per_rank(tp), "head_dim": model.head_dim}
        items.append({"kind": "attn_decode", "op": "attn_decode", "heads": heads, **attn, "points": points})
    if want("attn_prefill"):
        if model.attention == "mla":  # non-absorbed: per-head K/V up-projected from the latent
            attn = {"kv_heads": heads, "qk_dim": model.qk_nope_head_dim + model.qk_rope_head_dim, "v_dim": model.v_head_dim}
        else:
            attn = {"kv_heads": model.kv_heads_per_rank(tp), "qk_dim": model.head_dim, "v_dim": model.head_dim}
        items.append({"kind": "attn_prefill", "op": "attn_prefill", "heads": heads, **attn, "tokens": list(grid.prefill_tokens)})
    if want(DECODE_STEP):
        kv_token_bytes = model.kv_bytes_per_token_per_gpu(tp)
        points = [[b, c, w] for b in grid.decode_batches for c in grid.decode_contexts for w in grid.decode_widths
                  if b * c * kv_token_bytes <= MOST_STEP_KV_BYTES and w <= c]
        items.append({"kind": "decode_step", "op": "iteration", "layers": model.num_layers, "hidden": model.hidden_size,
                      "heads": heads, "kv_heads": model.kv_heads_per_rank(tp), "head_dim": model.head_dim,
                      "intermediate": max(1, model.intermediate_size // tp), "vocab": max(1, model.vocab_size // tp),
                      "points": points})
    return {
        "schema": PLAN_SCHEMA,
        "meta": {"gpu": gpu, "model": model.name, "tp": tp, "dtype": dtype, "command": command, "fused": fused,
                 "grid": {k: v for k, v in asdict(grid).items() if k not in ("repeats", "warmup")}},
        "repeats": grid.repeats,
        "warmup": grid.warmup,
        "seed": seed,
        "items": items,
    }


def profile_model(
    model: ModelSpec,
    tp: int = 1,
    device: str = "cuda",
    dtype: str = "bfloat16",
    grid: ProfileGrid = ProfileGrid(),
    ops: set[str] | None = None,
    seed: int = 0,
    gpu: str = "cpu",
    command: str = "",
    fused: bool = False,
) -> tuple[pd.DataFrame, dict]:
    """Profile one layer's operators (and the lm_head) of `model` on one TP rank, in
    this process: (rows, the table's meta)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise SpecError("`seersim profile` needs torch: pip install 'seersim[gpu]'") from None
    rows, meta = run_plan(plan_model(model, tp, grid, ops, dtype, gpu, command, seed, fused), device)
    if not rows:
        raise SpecError(f"no operator of {model.name} could be timed on {device}: {meta['failed_items']}")
    return pd.DataFrame(rows), meta
