"""Profiling inputs for cost calibration, read into one shape: operator rows with the
model's shapes, or iteration rows.

Accepted: a Vidur model folder as published (`compute/<gpu>/<org>/<model>` with
`mlp.csv`; times in ms, converted here; `../../network/<gpu>_dgx/all_reduce.csv` for
collectives), or a `seersim-profile/1` table (operator or `iteration` rows).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from seersim.errors import TraceError
from seersim.fields import MAX_COUNT
from seersim.io import read_csv_table
from seersim.profile.table import read_profile_table
from seersim.specs import GPUS, MODELS, ModelSpec, get_model

# Vidur's per-layer operator columns -> seersim op names
VIDUR_OPS = {
    "emb": "embedding",
    "input_layernorm": "layernorm",
    "attn_pre_proj": "qkv_proj",
    "attn_rope": "rope",
    "attn_post_proj": "attn_out_proj",
    "post_attention_layernorm": "layernorm",
    "mlp_up_proj": "mlp_up_gate",
    "mlp_act": "mlp_act",
    "mlp_down_proj": "mlp_down",
    "add": "add",
}
ATTENTION_OPS = ("attn_decode", "attn_prefill")
VIDUR_GPUS = {"h100": "h100-sxm", "a100": "a100-80gb"}


@dataclass
class CostData:
    """Rows to fit or test: `rows` has op, num_tokens, batch_size, context_tokens,
    prefill_tokens, decode_tokens, time_s, tp and `point` (rows with one point id were
    measured together and are summed into one measured value: a Vidur line)."""

    label: str  # the meta's model name (iteration tables: any name, e.g. a Hugging Face id)
    gpu: str
    model: ModelSpec | None  # catalog shapes, for operator tables
    rows: pd.DataFrame
    network: pd.DataFrame | None = None  # all_reduce: size_bytes, workers, time_s

    @property
    def is_iteration(self) -> bool:
        return bool((self.rows["op"] == "iteration").all())

    def attention_only(self) -> "CostData":
        """The attention rows alone (their points hold no other operator: a Vidur line
        sums GEMMs and norms, a seersim-profile row is one operator)."""
        return self.only(self.rows["op"].isin(ATTENTION_OPS))

    def eight_bit_gemms(self) -> pd.Series:
        """Which rows are GEMMs with 8-bit weights: every weight GEMM of an fp8 model's
        table (the routed experts included) but its lm_head, which stays bf16."""
        if self.model is None or self.model.weight_bytes_per_param != 1:
            return pd.Series(False, index=self.rows.index)
        m = self.model
        ops = {s.op for s in m.layer_gemms(1)} | {"moe_experts"}
        return self.rows["op"].isin(ops)

    def only(self, keep: pd.Series) -> "CostData":
        return replace(self, rows=self.rows[keep], network=None)

    def points(self) -> pd.DataFrame:
        """One measured value per point: the summed time of its rows."""
        return self.rows.groupby("point", sort=True)["time_s"].sum()


def read_cost_data(path: str | Path, gpu: str | None = None) -> CostData:
    p = Path(path)
    if p.is_dir():
        return _read_vidur(p)
    table = read_profile_table(p)
    rows = table.rows.copy()
    meta = table.meta
    gpu_name = gpu or meta.get("gpu")
    if not gpu_name:
        raise TraceError(f"{p}: the meta.json names no 'gpu' (a catalog name, e.g. h100-sxm); pass --gpu")
    model = None
    if not table.is_iteration:  # operator rows are priced from the catalog model's shapes
        if not meta.get("model"):
            raise TraceError(f"{p}: an operator table needs 'model' (a catalog name) in its meta.json")
        model = get_model(str(meta["model"]))
    elif str(meta.get("model")) in MODELS:  # (iteration rows of a catalog model: kernel curves can price them)
        model = get_model(str(meta["model"]))
    if "tp" not in rows.columns:
        rows["tp"] = int(meta.get("tp", 1))
    rows["point"] = np.arange(len(rows))
    return CostData(str(meta.get("model", p.stem)), gpu_name, model, rows)


def _read_vidur(folder: Path) -> CostData:
    csv = folder / "mlp.csv"
    if not csv.is_file():
        raise TraceError(f"{folder}: no mlp.csv; pass a Vidur model folder compute/<gpu>/<org>/<model>")
    counts = ["n_embd", "n_expanded_embd", "n_head", "n_kv_head", "vocab_size", "num_tokens", "num_tensor_parallel_workers"]
    d = read_csv_table(
        csv, "Vidur operator table", counts + ["use_gated_mlp"],
        "a Vidur mlp.csv as published (profiling/compute/<gpu>/<org>/<model>/mlp.csv)",
        integers={c: (1, MAX_COUNT, "") for c in counts},
    )
    if not any(f"time_stats.{col}.median" in d.columns for col in VIDUR_OPS):
        raise TraceError(f"{csv}: no time_stats.<op>.median column of a known operator ({', '.join(VIDUR_OPS)})")
    gpu_dir = folder.parent.parent.name
    if gpu_dir not in VIDUR_GPUS:
        raise TraceError(
            f"{folder}: GPU folder '{gpu_dir}' has no catalog GPU; known: {', '.join(VIDUR_GPUS)} "
            f"(catalog: {', '.join(GPUS)})"
        )
    first = d.iloc[0]
    model = ModelSpec(
        name=folder.name,
        num_layers=1,
        hidden_size=int(first["n_embd"]),
        intermediate_size=int(first["n_expanded_embd"]),
        num_attention_heads=int(first["n_head"]),
        num_kv_heads=int(first["n_kv_head"]),
        head_dim=int(first["n_embd"]) // int(first["n_head"]),
        vocab_size=int(first["vocab_size"]),
        mlp_gated=bool(first["use_gated_mlp"]),
    )
    parts = []
    for col, op in VIDUR_OPS.items():
        key = f"time_stats.{col}.median"
        if key not in d.columns:
            continue
        parts.append(
            pd.DataFrame(
                {
                    "op": op,
                    "num_tokens": d["num_tokens"].to_numpy(),
                    "batch_size": 1,
                    "context_tokens": 0,
                    "prefill_tokens": d["num_tokens"].to_numpy(),
                    "decode_tokens": 0,
                    "time_s": d[key].to_numpy() * 1e-3,  # Vidur: ms
                    "tp": d["num_tensor_parallel_workers"].to_numpy(),
                    "point": np.arange(len(d)),
                }
            )
        )
    rows = pd.concat(parts, ignore_index=True)
    rows = rows[rows["time_s"] > 0]
    net = folder.parent.parent.parent.parent / "network" / f"{gpu_dir}_dgx" / "all_reduce.csv"
    network = None
    if net.is_file():
        n = read_csv_table(net, "Vidur all-reduce table", ["size", "num_workers", "time_stats.all_reduce.median"],
                           "a Vidur network/<gpu>_dgx/all_reduce.csv as published")
        network = pd.DataFrame(
            {
                "size_bytes": n["size"].to_numpy(dtype=float),
                "workers": n["num_workers"].to_numpy(),
                "time_s": n["time_stats.all_reduce.median"].to_numpy() * 1e-3,
            }
        )
    return CostData(folder.name, VIDUR_GPUS[gpu_dir], model, rows, network)
