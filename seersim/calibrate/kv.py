"""KV capacity: what a vLLM server reports against what seersim's specs predict.

Sources, in any of these forms (one engine = one DP rank; its TP ranks share its blocks):
- a vLLM server log: V1 prints `GPU KV cache size: 1,234,567 tokens` (`CPU ...` on
  CPU servers); V0 prints `# GPU blocks: 12345` (or `# cuda blocks:`), with the block
  size from the scenario;
- the server's `/metrics` text: `vllm:cache_config_info{...,num_gpu_blocks="12345",block_size="16",...}`;
- a profile's `.meta.json` with `kv_cache_tokens` (or `num_gpu_blocks` and `block_size`).

V1's size and block count include its null block (the first block, never allocated:
vllm/v1/core/block_pool.py); the usable KV is one block less.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from seersim.config import Scenario, with_overrides
from seersim.errors import TraceError
from seersim.profile.steplog import usable_kv_tokens

_V1 = re.compile(r"(?:GPU|CPU) KV cache size:\s*([\d,]+)\s*tokens")
_V0 = re.compile(r"#\s*(?:GPU|cuda) blocks:\s*([\d,]+)", re.IGNORECASE)
_METRIC = re.compile(r"vllm:cache_config_info\{([^}]*)\}")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


@dataclass
class KVReport:
    measured_tokens_per_engine: int
    engines_per_instance: int
    measured_tokens: int
    predicted_tokens: int
    difference: float  # (predicted − measured) / measured
    source: str


def measured_tokens_per_engine(path: str | Path, block_size: int) -> tuple[int, str]:
    """KV tokens one vLLM engine reported, and how it was found."""
    p = Path(path)
    if not p.is_file():
        raise TraceError(f"'{p}' not found; pass a vLLM server log, a saved /metrics page or a profile's .meta.json")
    text = p.read_text(errors="replace")
    if p.suffix == ".json":
        try:
            meta = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TraceError(f"{p}: malformed JSON ({exc}); pass a profile's .meta.json as written") from None
        if not isinstance(meta, dict):
            raise TraceError(f"{p}: a JSON object expected (a profile's .meta.json)")
        if "kv_cache_tokens" in meta:
            return int(meta["kv_cache_tokens"]), "meta kv_cache_tokens"
        if "num_gpu_blocks" in meta:
            return int(meta["num_gpu_blocks"]) * int(meta.get("block_size", block_size)), "meta num_gpu_blocks"
        raise TraceError(f"{p}: no kv_cache_tokens or num_gpu_blocks field")
    found = _V1.findall(text)
    if found:
        return usable_kv_tokens(int(found[-1].replace(",", "")), block_size), "log 'KV cache size' less the null block"
    m = _METRIC.search(text)
    if m:
        labels = dict(_LABEL.findall(m.group(1)))
        if labels.get("num_gpu_blocks", "None") not in ("", "None"):
            bs = int(labels.get("block_size", block_size))
            return usable_kv_tokens(int(labels["num_gpu_blocks"]) * bs, bs), "metrics cache_config_info less the null block"
    found = _V0.findall(text)
    if found:
        return int(found[-1].replace(",", "")) * block_size, "log '# GPU blocks'"
    raise TraceError(
        f"{p}: no KV cache size found (looked for 'GPU KV cache size: N tokens', '# GPU blocks: N' and "
        "vllm:cache_config_info num_gpu_blocks)"
    )


def kv_report(path: str | Path, scenario: Scenario) -> KVReport:
    """Compare the server's KV capacity with the scenario's predicted one (no what-if override)."""
    from seersim.engine import kv_capacity_blocks

    bs = scenario.engine.block_size_tokens
    per_engine, source = measured_tokens_per_engine(path, bs)
    dp = scenario.cluster.parallelism.dp
    free = with_overrides(scenario, **{"engine.kv_capacity_tokens": None})
    predicted = kv_capacity_blocks(free) * bs
    measured = per_engine * dp
    return KVReport(per_engine, dp, measured, predicted, (predicted - measured) / measured, source)
