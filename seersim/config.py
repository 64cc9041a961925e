"""Scenario schema: YAML in, validated typed config out, one clear error per bad field.

A scenario fixes everything that defines one RL rollout step: model, hardware,
engine settings, workload, policy knobs and the global KV pool. The same scenario,
unchanged, runs every policy (`--policy` only swaps `policy.name`).
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, model_validator

from seersim.errors import ScenarioError, SpecError
from seersim.specs import GPUSpec, ModelSpec, get_gpu, get_model


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- hardware
class Parallelism(_Strict):
    """How one instance spreads over GPUs. GPUs per instance = tp × dp; ep shards experts."""

    tp: PositiveInt = 1
    dp: PositiveInt = 1
    ep: PositiveInt = 1

    @model_validator(mode="after")
    def _ep_fits(self) -> "Parallelism":
        if self.ep > self.tp * self.dp:
            raise ValueError(f"ep={self.ep} cannot exceed the instance's GPUs tp*dp={self.tp * self.dp}")
        return self

    @property
    def gpus(self) -> int:
        return self.tp * self.dp


class ClusterConfig(_Strict):
    instances: PositiveInt = Field(description="inference instances (model replicas)")
    parallelism: Parallelism = Parallelism()


# --------------------------------------------------------------------------- engine
class SpeculationConfig(_Strict):
    """Speculative decoding is an engine option (DESIGN §6)."""

    mode: Literal["none", "fixed", "grouped_adaptive"] = "none"
    draft_tokens: int = Field(4, ge=1, le=8, description="γ for mode 'fixed'; the cap for adaptive")
    paths: Literal[1, 2, 4] = Field(1, description="draft paths (multi-path drafts accept more, cost more)")
    reevaluate_steps: PositiveInt = Field(
        64, description="engine iterations after which acceptance and draft length are re-chosen"
    )
    draft_overhead_s: float = Field(0.0005, ge=0, description="per-step cost of building drafts (suffix-tree lookups)")
    acceptance_table: dict[int, float] | None = Field(
        None, description="finished sibling references -> mean accepted length; default: paper Table 2"
    )
    reference_draft_tokens: int = Field(8, ge=1, le=8, description="draft length at which the table's values hold")

    @model_validator(mode="after")
    def _table(self) -> "SpeculationConfig":
        if self.acceptance_table is not None:
            if 0 not in self.acceptance_table:
                raise ValueError("acceptance_table needs an entry for 0 references")
            if any(v < 1.0 for v in self.acceptance_table.values()):
                raise ValueError("acceptance_table values are mean accepted lengths incl. the bonus token (>= 1)")
        return self


class EngineConfig(_Strict):
    """vLLM-like engine knobs (names follow vLLM's where one exists)."""

    block_size_tokens: PositiveInt = 16
    max_num_seqs: PositiveInt = 256
    max_num_batched_tokens: PositiveInt = 8192
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    activation_reserve_bytes_per_gpu: float = Field(2e9, ge=0, description="activations, CUDA graphs, workspace")
    kv_capacity_tokens: PositiveInt | None = Field(None, description="override KV capacity (what-if); default from memory")
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
class LengthDist(_Strict):
    """A token-length distribution. lognormal: `mean` is the mean *after* clipping to
    [min, max]; sigma is the log-space spread."""

    dist: Literal["constant", "uniform", "lognormal"] = "lognormal"
    mean: PositiveFloat
    sigma: float = Field(1.0, ge=0)
    min: PositiveInt = 1
    max: PositiveInt | None = None

    @model_validator(mode="after")
    def _range(self) -> "LengthDist":
        if self.max is not None and self.max < self.min:
            raise ValueError(f"max={self.max} is below min={self.min}")
        if self.max is not None and not (self.min <= self.mean <= self.max):
            raise ValueError(f"mean={self.mean} must lie in [min={self.min}, max={self.max}]")
        return self


class OutputDist(LengthDist):
    """Output lengths: a per-group latent plus per-response noise in log space.

    `intra_group_corr` is the correlation of log-lengths of two responses of one group.
    The upper clip is the workload's max_tokens.
    """

    intra_group_corr: float = Field(0.8, ge=0, le=1)


class SyntheticWorkload(_Strict):
    kind: Literal["synthetic"] = "synthetic"
    prompts: PositiveInt
    group_size: PositiveInt
    max_tokens: PositiveInt
    input_tokens: LengthDist
    output_tokens: OutputDist


class ReplayWorkload(_Strict):
    """Replay a trace so every policy gets identical work. Relative paths are resolved
    against the scenario file's folder."""

    kind: Literal["replay"] = "replay"
    path: str
    format: Literal["csv", "mooncake", "azure", "vidur"] = "csv"
    max_tokens: PositiveInt | None = Field(None, description="truncate outputs here; default the trace's max")
    group_size: PositiveInt = Field(1, description="serving traces only: consecutive rows form a group")
    limit: PositiveInt | None = Field(None, description="use only the first N rows")


# --------------------------------------------------------------------------- policy and pool
KVReservation = Literal["chunk_limit", "expected_growth", "none"]


class PolicyConfig(_Strict):
    name: str = "baseline"
    chunk_tokens: PositiveInt = Field(8192, description="Divided Rollout chunk; paper gives none, 8K per DESIGN §6")
    imbalance_threshold: int = Field(32, ge=0, description="in-flight spread that switches affinity -> least-loaded")
    migrate_margin_tokens: int = Field(512, ge=0, description="pull KV through the pool when the affinity gap exceeds this")
    baseline_assignment: Literal["round_robin", "least_loaded"] = "round_robin"
    anti_starvation_every: int = Field(
        0, ge=0, description="context_aware: every Nth pick serves the group with least served time (0 = off)"
    )
    over_issue_factor: float = Field(2.0, ge=1, description="partial_rollout: groups issued / groups needed")
    # Default from measurements over the shipped scenarios (issue 11): the only rule that
    # never preempts (paper Fig. 9: KV kept high without preemption) and that keeps
    # context_aware >= divided on each; expected_growth/none preempt ~20K times on
    # qwen2-vl-72b and drop context_aware below divided on moonlight.
    kv_reservation: KVReservation = Field(
        "chunk_limit",
        description="KV an in-flight chunk reserves on its instance (chunked policies): its context plus the "
        "whole chunk, plus the mean tokens a chunk has generated so far this step, or nothing (the engine preempts)",
    )


class PoolTier(_Strict):
    name: str
    capacity_bytes_per_node: PositiveFloat
    bandwidth_bytes_per_s: PositiveFloat = Field(description="read bandwidth of one transfer from this tier")
    latency_s: float = Field(20e-6, ge=0)


class KVPoolConfig(_Strict):
    """Global KVCache Pool (Mooncake-style): tiers filled in order, LRU eviction."""

    enabled: bool = True
    tiers: tuple[PoolTier, ...] = (
        # Seer setup: 2 TB DRAM and 4 TB NVMe per node (DESIGN §4).
        PoolTier(name="dram", capacity_bytes_per_node=2e12, bandwidth_bytes_per_s=50e9, latency_s=20e-6),
        PoolTier(name="ssd", capacity_bytes_per_node=4e12, bandwidth_bytes_per_s=6e9, latency_s=100e-6),
    )


# --------------------------------------------------------------------------- scenario
class Scenario(_Strict):
    name: str = "scenario"
    description: str = ""
    seed: int = Field(0, ge=0, description="random seed (numpy Generator)")
    steps: PositiveInt = Field(1, description="RL steps to simulate (carry-over matters for partial_rollout)")
    model: ModelSpec
    gpu: GPUSpec
    cluster: ClusterConfig
    engine: EngineConfig = EngineConfig()
    workload: SyntheticWorkload | ReplayWorkload = Field(discriminator="kind")
    policy: PolicyConfig = PolicyConfig()
    kv_pool: KVPoolConfig = KVPoolConfig()
    training_s: float = Field(0.0, ge=0, description="training time per RL step, for whole-iteration reports")
    base_dir: str = Field(".", description="folder relative trace paths resolve against (set by the loader)")

    @property
    def gpus_total(self) -> int:
        return self.cluster.instances * self.cluster.parallelism.gpus


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
        path = ".".join(loc) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            known = _known_fields(loc[:-1], data)
            close = difflib.get_close_matches(loc[-1], known, n=1) if known else []
            msg = "unknown field" + (f"; did you mean '{close[0]}'?" if close else "")
        elif "input" in err and err["type"] != "missing":
            msg = f"{msg} (got {err['input']!r})"
        lines.append(f"{path}: {msg}")
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
        out.append((path, parsed))
    return out


def apply_overrides(data: dict, overrides: list[tuple[list[str], Any]]) -> dict:
    """Set each dotted path in a raw scenario mapping (creating sub-mappings as needed)."""
    data = copy.deepcopy(data)
    for path, value in overrides:
        node = data
        for part in path[:-1]:
            nxt = node.get(part)
            if isinstance(nxt, str) and part in ("model", "gpu"):
                nxt = {"base": nxt}  # override one field of a catalog spec
            if nxt is None:
                nxt = {}
            if not isinstance(nxt, dict):
                raise ScenarioError(f"--set {'.'.join(path)}: '{part}' is not a mapping (it is {nxt!r})")
            node[part] = nxt
            node = nxt
        node[path[-1]] = value
    return data


def read_scenario_dict(path: str | Path) -> dict:
    """Read a scenario YAML file into a raw mapping (errors name the file and line)."""
    p = Path(path)
    if not p.is_file():
        raise ScenarioError(f"scenario file '{p}' not found; pass the path to a .yaml scenario (see scenarios/)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScenarioError(f"{p}: malformed YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{p}: a scenario must be a YAML mapping of fields")
    return data


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
