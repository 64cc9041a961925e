"""Scenario schema: YAML in, validated typed config out, one clear error per bad field.

A scenario fixes everything that defines one RL rollout step: model, hardware,
engine settings, workload, policy knobs and the global KV pool. The same scenario,
unchanged, runs every policy (`--policy` only swaps `policy.name`).
"""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from seersim.errors import ScenarioError, SpecError, plain
from seersim.fields import (
    MAX_GPUS_PER_INSTANCE,
    Bytes,
    BytesPerS,
    CapacityTokens,
    Count,
    Fraction,
    GPUs,
    Int,
    NonNegBytes,
    NonNegCount,
    NonNegTokens,
    PlainNumber,
    Real,
    Seconds,
    Tokens,
    TokenAmount,
    UnitInterval,
)
from seersim.specs import GPUSpec, ModelSpec, get_gpu, get_model
from seersim.yamlfile import read_yaml_mapping


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- hardware
class Parallelism(_Strict):
    """How one instance spreads over GPUs. GPUs per instance = tp × dp; ep shards experts."""

    tp: GPUs = 1
    dp: GPUs = 1
    ep: GPUs = 1

    @model_validator(mode="after")
    def _ep_fits(self) -> "Parallelism":
        if self.ep > self.tp * self.dp:
            raise ValueError(f"ep={self.ep} cannot exceed the instance's GPUs tp*dp={self.tp * self.dp}")
        return self

    @property
    def gpus(self) -> int:
        return self.tp * self.dp


class ClusterConfig(_Strict):
    # 1M instances: ~100x the largest published rollout fleets (Seer: 8-32 instances)
    instances: Count = Field(description="inference instances (model replicas)", le=1_000_000)
    parallelism: Parallelism = Parallelism()


# --------------------------------------------------------------------------- engine
class SpeculationConfig(_Strict):
    """Speculative decoding is an engine option (DESIGN §6)."""

    mode: Literal["none", "fixed", "grouped_adaptive"] = "none"
    draft_tokens: Int = Field(
        4, ge=1, le=8, description="γ for mode 'fixed' (grouped_adaptive chooses γ per batch, up to 8: DESIGN §6)"
    )
    paths: Annotated[Literal[1, 2, 4], PlainNumber] = Field(1, description="draft paths (multi-path drafts accept more, cost more)")
    reevaluate_steps: Count = Field(
        64, description="engine iterations after which acceptance and draft length are re-chosen"
    )
    draft_overhead_s: Seconds = Field(0.0005, description="per-step cost of building drafts (suffix-tree lookups)")
    acceptance_table: dict[NonNegCount, Real] | None = Field(
        None, description="finished sibling references -> mean accepted length; default: paper Table 2"
    )
    reference_draft_tokens: Int = Field(8, ge=1, le=8, description="draft length at which the table's values hold")

    @model_validator(mode="after")
    def _table(self) -> "SpeculationConfig":
        if self.acceptance_table is not None:
            if 0 not in self.acceptance_table:
                raise ValueError("acceptance_table needs an entry for 0 references")
            if any(not 1.0 <= v <= self.reference_draft_tokens + 1 for v in self.acceptance_table.values()):
                raise ValueError(
                    "acceptance_table values are mean accepted lengths incl. the bonus token: between 1 and "
                    f"reference_draft_tokens + 1 = {self.reference_draft_tokens + 1}"
                )
        return self


class EngineConfig(_Strict):
    """vLLM-like engine knobs (names follow vLLM's where one exists)."""

    # vLLM's largest block size is 256 tokens; 64K leaves room for what-ifs, not for typos
    block_size_tokens: Tokens = Field(16, le=65_536)
    max_num_seqs: Count = Field(256, le=1_000_000)  # vLLM default 256; 1M is beyond any GPU's batch
    max_num_batched_tokens: Tokens = 8192
    gpu_memory_utilization: Fraction = 0.9
    activation_reserve_bytes_per_gpu: NonNegBytes = Field(2e9, description="activations, CUDA graphs, workspace")
    kv_capacity_tokens: CapacityTokens | None = Field(None, description="override KV capacity (what-if); default from memory")
    prefix_caching: bool = True
    mode: Literal["fast_forward", "step_by_step"] = "fast_forward"
    speculation: SpeculationConfig = SpeculationConfig()

    @model_validator(mode="after")
    def _budget(self) -> "EngineConfig":
        if self.max_num_batched_tokens < self.max_num_seqs:
            # vLLM's own rule (SchedulerConfig): every running sequence can decode a token
            # each step. Draft tokens beyond the step's budget are cut, as vLLM trims them.
            raise ValueError(
                f"max_num_batched_tokens={self.max_num_batched_tokens} must be >= max_num_seqs="
                f"{self.max_num_seqs} so every running sequence can decode a token each step"
            )
        return self


# --------------------------------------------------------------------------- workload
class LogMixture(_Strict):
    """The second component of a two-lognormal mixture, relative to the first.

    Relative, so that `mean` (the whole mixture's clipped mean) still sets the scale:
    a what-if on the mean shifts both components together.
    """

    # a real mixture: each component carries at least 0.1% of the responses
    weight: Real = Field(..., ge=0.001, le=0.999, description="share of responses in the second component")
    sigma: Real = Field(..., ge=0, le=10, description="log-space spread of the second component")
    # e^±20 spans x5e8 either way: far past any two length modes of one rollout
    log_ratio: Real = Field(..., ge=-20, le=20, description="log-space location of the second component minus the first")


class LengthDist(_Strict):
    """A token-length distribution. `mean` is the mean *after* clipping to [min, max]
    for every family, so one knob scales any of them.

    lognormal: `sigma` is the log-space spread. gamma: `shape` (k; below 1 a long
    tail and a mode at 0). lognormal_mixture: `sigma` is the first component's spread,
    `mixture` the second component. `seersim calibrate lengths` writes any of them.
    """

    dist: Literal["constant", "uniform", "lognormal", "gamma", "lognormal_mixture"] = "lognormal"
    mean: TokenAmount
    # log-space spread: sigma 10 already spans e^10 (x22,000) per standard deviation
    sigma: Real = Field(1.0, ge=0, le=10)
    # gamma shape: 0.01 has its median ~1e-30 of the mean, 1e4 is a near-constant length
    shape: Real | None = Field(None, ge=0.01, le=1e4, description="gamma only: shape k")
    mixture: LogMixture | None = Field(None, description="lognormal_mixture only: the second component")
    min: Tokens = 1
    max: Tokens | None = None

    @model_validator(mode="after")
    def _range(self) -> "LengthDist":
        if self.max is not None and self.max < self.min:
            raise ValueError(f"max={self.max} is below min={self.min}")
        if self.max is not None and not (self.min <= self.mean <= self.max):
            raise ValueError(f"mean={self.mean} must lie in [min={self.min}, max={self.max}]")
        if (self.shape is not None) != (self.dist == "gamma"):
            raise ValueError("'shape' is required for dist: gamma and only allowed there")
        if (self.mixture is not None) != (self.dist == "lognormal_mixture"):
            raise ValueError(
                "'mixture: {weight, sigma, log_ratio}' is required for dist: lognormal_mixture and only allowed there"
            )
        return self


class OutputDist(LengthDist):
    """Output lengths: a per-group latent plus per-response noise in log space.

    `intra_group_corr` is the correlation of log-lengths of two responses of one group.
    The upper clip is the workload's max_tokens.
    """

    intra_group_corr: UnitInterval = 0.8


class SyntheticWorkload(_Strict):
    kind: Literal["synthetic"] = "synthetic"
    prompts: Count
    group_size: Count
    max_tokens: Tokens
    input_tokens: LengthDist
    output_tokens: OutputDist


class ReplayWorkload(_Strict):
    """Replay a trace so every policy gets identical work. Relative paths are resolved
    against the scenario file's folder."""

    kind: Literal["replay"] = "replay"
    path: str
    format: Literal["csv", "mooncake", "azure", "vidur"] = "csv"
    max_tokens: Tokens | None = Field(None, description="truncate outputs here; default the trace's max")
    group_size: Count = Field(1, description="serving traces only: consecutive rows form a group")
    limit: Count | None = Field(None, description="use only the first N rows")


# --------------------------------------------------------------------------- policy and pool
KVReservation = Literal["chunk_limit", "expected_growth", "none"]


class PolicyConfig(_Strict):
    name: str = "baseline"
    chunk_tokens: Tokens = Field(8192, description="Divided Rollout chunk; paper gives none, 8K per DESIGN §6")
    imbalance_threshold: NonNegCount = Field(32, description="in-flight spread that switches affinity -> least-loaded")
    migrate_margin_tokens: NonNegTokens = Field(512, description="pull KV through the pool when the affinity gap exceeds this")
    baseline_assignment: Literal["round_robin", "least_loaded"] = "round_robin"
    anti_starvation_every: NonNegCount = Field(
        0, description="context_aware: every Nth pick serves the group with least served time (0 = off)"
    )
    # Default from measurements over the shipped scenarios (issue 11; README, known
    # limitations): with `estimate`, a request whose group's first finisher was short waits
    # behind every group without one at each chunk boundary (Kimi-K2: its 98K-token
    # requests end the step; context_aware 1.32x vs divided 1.38x over 10 seeds, 1.43x with
    # `first`); `first` is as fast or faster, within seed noise, on every shipped scenario
    # but small-replay (-0.5%).
    continuation_order: Literal["first", "estimate"] = Field(
        "first",
        description="context_aware: a request between two chunks continues before the requests not started yet, "
        "in the order its chunk returned (first), or competes with them by its group's estimate (estimate)",
    )
    # APRIL over-issues ~2x; 10x is far past any benefit (the extra groups mostly run to waste)
    over_issue_factor: Real = Field(2.0, ge=1, le=10, description="partial_rollout: groups issued / groups needed")
    # Default from measurements over the shipped scenarios (issue 11): the only rule that
    # (all but) never preempts (paper Fig. 9: KV kept high without preemption) and that
    # keeps context_aware >= divided on moonlight and qwen2-vl-72b; expected_growth/none
    # preempt ~20K times on qwen2-vl-72b and drop context_aware below divided on moonlight.
    kv_reservation: KVReservation = Field(
        "chunk_limit",
        description="KV an in-flight chunk reserves on its instance (chunked policies): its context plus the "
        "whole chunk, plus the mean tokens a chunk has generated so far this step, or nothing (the engine preempts)",
    )


class PoolTier(_Strict):
    name: str
    capacity_bytes_per_node: Bytes
    bandwidth_bytes_per_s: BytesPerS = Field(description="read bandwidth of one transfer from this tier")
    latency_s: Seconds = 20e-6


class KVPoolConfig(_Strict):
    """Global KVCache Pool (Mooncake-style): tiers filled in order, LRU eviction."""

    enabled: bool = True
    tiers: tuple[PoolTier, ...] = (
        # Seer setup: 2 TB DRAM and 4 TB NVMe per node (DESIGN §4).
        PoolTier(name="dram", capacity_bytes_per_node=2e12, bandwidth_bytes_per_s=50e9, latency_s=20e-6),
        PoolTier(name="ssd", capacity_bytes_per_node=4e12, bandwidth_bytes_per_s=6e9, latency_s=100e-6),
    )


# --------------------------------------------------------------------------- cost model
class CostConfig(_Strict):
    """Which step-time model prices an engine iteration (`seersim/cost/`, a registry).

    `calibrated` (default) reads a calibration file written by `seersim calibrate cost`
    (omitted: the one shipped for the scenario's GPU); `roofline` is the analytic model
    with achieved efficiencies; any other name is a registered model or a dotted import
    path `package.module:Class` whose class has `from_scenario(scenario)`.
    """

    model: str = Field("calibrated", description="'calibrated', 'roofline', a registered name or 'pkg.module:Class'")
    file: str | None = Field(
        None, description="calibrated: calibration file, relative to the scenario's folder (default: shipped for the GPU)"
    )
    engine_kind: Literal["vllm-v1", "vllm-v0"] = Field(
        "vllm-v1", description="serving engine whose per-iteration CPU overhead is the default (seersim/cost/overhead.py)"
    )
    step_overhead_s: Seconds | None = Field(
        None, description="per-iteration overhead; default: the calibration's fitted value, else the engine kind's"
    )
    flops_efficiency: Fraction | None = Field(None, description="roofline: achieved/peak FLOP/s (default: GPU spec)")
    bandwidth_efficiency: Fraction | None = Field(None, description="roofline: achieved/peak HBM (default: GPU spec)")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for a user's own model")


# --------------------------------------------------------------------------- limits
class LimitsConfig(_Strict):
    """Bounds on one run's work, checked from the scenario before anything is built
    (seersim/limits.py), so a typo cannot exhaust memory or hang a machine. They do not
    change results; raise one with e.g. `--set limits.max_requests=50000000`."""

    # 2M requests: ~600x a paper step (Moonlight: 3,200 per step, DESIGN §4), ~15 min
    # at the ~0.4 ms per request measured on scenarios/small.yaml (one core)
    max_requests: Count = Field(2_000_000, description="requests simulated over all steps")
    # 10M chunks: each is a dispatch and a batch change, ~0.1 ms measured (small.yaml,
    # policy.chunk_tokens=64), so ~15 min
    max_chunks: Count = Field(10_000_000, description="chunk dispatches over all steps (chunked policies)")
    # 1e11 tokens: ~400x a Kimi-K2 step (6,400 x 38,959 mean = 2.5e8, DESIGN §4)
    max_output_tokens: Real = Field(1e11, gt=0, le=1e15, description="output tokens generated over all steps")
    max_memory_bytes: Bytes | None = Field(
        None, description="estimated memory of the records; default: half of this machine's physical memory"
    )


# --------------------------------------------------------------------------- scenario
class Scenario(_Strict):
    name: str = "scenario"
    description: str = ""
    seed: Int = Field(0, ge=0, description="random seed (numpy Generator)")
    steps: Count = Field(1, le=100_000, description="RL steps to simulate (carry-over matters for partial_rollout)")
    model: ModelSpec
    gpu: GPUSpec
    cluster: ClusterConfig
    engine: EngineConfig = EngineConfig()
    workload: SyntheticWorkload | ReplayWorkload = Field(discriminator="kind")
    policy: PolicyConfig = PolicyConfig()
    kv_pool: KVPoolConfig = KVPoolConfig()
    cost: CostConfig = CostConfig()
    limits: LimitsConfig = LimitsConfig()
    training_s: Seconds = Field(0.0, description="training time per RL step, for whole-iteration reports")
    base_dir: str = Field(".", description="folder relative trace paths resolve against (set by the loader)")

    @model_validator(mode="after")
    def _tp_splits_heads(self) -> "Scenario":
        tp_ok, why = tp_divides_heads(self.model, self.cluster.parallelism.tp)
        if not tp_ok:
            raise ValueError(f"cluster.parallelism.tp={self.cluster.parallelism.tp}: {why}")
        return self

    @property
    def gpus_total(self) -> int:
        return self.cluster.instances * self.cluster.parallelism.gpus


def tp_divides_heads(model: ModelSpec, tp: int) -> tuple[bool, str]:
    """vLLM's rule for tensor parallelism: tp must divide the attention heads; KV heads
    are split when tp <= their count (tp must divide them) and replicated when tp is
    larger (their count must divide tp). vLLM: ModelConfig.verify_with_parallel_config
    ("Total number of attention heads (28) must be divisible by tensor parallel size
    (3)") and QKVParallelLinear's KV-head replication. MLA caches one latent per token,
    so only the attention heads count there."""
    heads, kv = model.num_attention_heads, model.num_kv_heads

    def splits(t: int) -> bool:
        kv_ok = model.attention != "gqa" or (kv % t == 0 if t <= kv else t % kv == 0)
        return heads % t == 0 and kv_ok

    if splits(tp):
        return True, ""
    fits = [t for t in range(1, min(heads, MAX_GPUS_PER_INSTANCE) + 1) if splits(t)]
    what = f"{heads} attention heads" + (f" and {kv} KV heads" if model.attention == "gqa" else "")
    return False, (
        f"vLLM cannot split {model.name}'s {what} over {tp} GPUs; "
        f"use a tp of {', '.join(map(str, fits))}"
    )


# --------------------------------------------------------------------------- loading
def _resolve_spec(raw: Any, field: str, lookup) -> Any:
    """A spec field is a catalog name, or a mapping (optionally `base: NAME` + overrides)."""
    if isinstance(raw, str):
        try:
            return lookup(raw)
        except SpecError as exc:
            raise ScenarioError(f"{field}: {exc}") from None
    if isinstance(raw, dict) and "base" in raw:
        raw = dict(raw)
        try:
            base = lookup(str(raw.pop("base")))
        except SpecError as exc:
            raise ScenarioError(f"{field}.base: {exc}") from None
        merged = base.model_dump()
        merged.update(raw)
        merged.setdefault("name", base.name)
        return merged
    return raw


def _format_validation_error(exc: ValidationError, data: dict) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not str(p).startswith("function-")]
        # pydantic puts the union tag into the path: drop it for readability
        loc = [p for p in loc if p not in ("synthetic", "replay")]
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            known = _known_fields(loc[:-1], data)
            close = difflib.get_close_matches(loc[-1], known, n=1) if known else []
            msg = "unknown field" + (f"; did you mean '{close[0]}'?" if close else "")
        elif err["type"] != "missing" and not isinstance(err.get("input", {}), (dict, list, tuple)):
            # scalars only: a whole mapping (e.g. the workload under a bad `kind`) says nothing
            msg = f"{msg} (got {plain(err['input'])})"
        lines.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
    return "; ".join(lines)


def _known_fields(loc: list[str], data: Any) -> list[str]:
    """Field names of the model at `loc` (for a union, the member the data's `kind` picks)."""
    model: Any = Scenario
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        data = data.get(part) if isinstance(data, dict) else None
        ann = field.annotation
        candidates = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        kind = data.get("kind") if isinstance(data, dict) else None
        chosen = [c for c in candidates if "kind" in c.model_fields and c.model_fields["kind"].default == kind]
        candidates = chosen or candidates
        if not candidates:
            return []
        model = candidates[0]
    return list(getattr(model, "model_fields", {}))


def scenario_from_dict(data: dict, base_dir: str | Path = ".") -> Scenario:
    """Validate a raw mapping into a Scenario; raises ScenarioError naming each bad field."""
    if not isinstance(data, dict):
        raise ScenarioError(f"a scenario must be a mapping of fields, got {type(data).__name__}")
    data = copy.deepcopy(data)
    for field in ("model", "gpu"):
        if field not in data:
            raise ScenarioError(f"{field}: missing; name a catalog entry (see `seersim specs`) or give an inline spec")
    data["model"] = _resolve_spec(data["model"], "model", get_model)
    data["gpu"] = _resolve_spec(data["gpu"], "gpu", get_gpu)
    data.setdefault("base_dir", str(base_dir))
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(_format_validation_error(exc, data)) from None


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|[-+]?(inf|infinity|nan)", re.IGNORECASE)


def parse_overrides(pairs: list[str]) -> list[tuple[list[str], Any]]:
    """`a.b.c=value` strings -> (path, YAML-parsed value)."""
    out = []
    for pair in pairs:
        if "=" not in pair:
            raise ScenarioError(f"--set '{pair}': expected dotted.key=value, e.g. --set cluster.instances=16")
        key, _, value = pair.partition("=")
        path = [p for p in key.strip().split(".") if p]
        if not path:
            raise ScenarioError(f"--set '{pair}': empty key")
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            parsed = value
        if isinstance(parsed, str) and _FLOAT.fullmatch(parsed.strip()):
            parsed = float(parsed)  # YAML 1.1 reads `1e6` and `inf` as strings
        out.append((path, parsed))
    return out


def apply_overrides(data: dict, overrides: list[tuple[list[str], Any]]) -> dict:
    """Set each dotted path in a raw scenario mapping (creating sub-mappings as needed).
    A numeric part indexes a list, e.g. `kv_pool.tiers.0.bandwidth_bytes_per_s`."""
    data = copy.deepcopy(data)
    for path, value in overrides:
        node: Any = data
        for depth, part in enumerate(path):
            where = ".".join(path[: depth + 1])
            if isinstance(node, (list, tuple)):
                if not part.isdigit() or int(part) >= len(node):
                    raise ScenarioError(
                        f"--set {'.'.join(path)}: '{where}' is not an item of a list of {len(node)} "
                        f"(use an index 0..{len(node) - 1})"
                    )
                key: Any = int(part)
            elif isinstance(node, dict):
                key = part
            else:
                raise ScenarioError(f"--set {'.'.join(path)}: '{'.'.join(path[:depth])}' is a value, not a mapping")
            if depth == len(path) - 1:
                node[key] = copy.deepcopy(value)  # a later dotted override must not edit the caller's value
                break
            nxt = node.get(key) if isinstance(node, dict) else node[key]
            if isinstance(nxt, str) and part in ("model", "gpu") and depth == 0:
                nxt = {"base": nxt}  # override one field of a catalog spec
            elif nxt is None:
                nxt = _default_at(path[: depth + 1])
            elif isinstance(nxt, tuple):
                nxt = list(nxt)
            node[key] = nxt
            node = nxt
    return data


def _default_at(path: list[str]) -> Any:
    """The schema's default at a dotted path, as raw data (so `--set kv_pool.tiers.0.x=..`
    can edit the default tiers of a scenario that never names them); {} where none."""
    model: Any = Scenario
    default: Any = None
    for part in path:
        if isinstance(default, (list, tuple)) and part.isdigit() and int(part) < len(default):
            default = default[int(part)]
            model = type(default)
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None or field.is_required():
            return {}
        default = field.get_default(call_default_factory=True)
        model = type(default)
    if isinstance(default, BaseModel):
        return default.model_dump()
    if isinstance(default, (list, tuple)):
        return [d.model_dump() if isinstance(d, BaseModel) else d for d in default]
    return {} if default is None else default


def read_scenario_dict(path: str | Path) -> dict:
    """Read a scenario YAML file into a raw mapping (errors name the file and line)."""
    return read_yaml_mapping(
        path, ScenarioError, "scenario file", "pass the path to a .yaml scenario (see scenarios/)",
        "a scenario must be a YAML mapping of fields",
    )


def load_scenario(path: str | Path, overrides: list[str] | None = None, **fields: Any) -> Scenario:
    """Load a scenario YAML, apply `--set`-style overrides, validate.

    `fields` are top-level or dotted overrides from Python, e.g.
    ``load_scenario("s.yaml", **{"cluster.instances": 8})``.
    """
    p = Path(path)
    data = read_scenario_dict(p)
    ov = parse_overrides(overrides or [])
    ov += [(k.split("."), v) for k, v in fields.items()]
    data = apply_overrides(data, ov)
    try:
        return scenario_from_dict(data, base_dir=p.resolve().parent)
    except ScenarioError as exc:
        raise ScenarioError(f"{p}: {exc}") from None


def with_overrides(scenario: Scenario, **fields: Any) -> Scenario:
    """A copy of a scenario with dotted-path overrides applied, re-validated."""
    data = scenario.model_dump()
    data = apply_overrides(data, [(k.split("."), v) for k, v in fields.items()])
    return scenario_from_dict(data, base_dir=scenario.base_dir)
