"""Constrained numeric field types shared by the scenario schema and the spec catalogs.

Every number a user can type (in a scenario, an inline spec or a `--set`) goes through
one of these: `true`/`false` are not numbers, NaN and ±inf are refused, and each kind
of quantity has a range beyond which a value can only be a typo. Bounds of one field
can be narrowed further with `Field(ge=..., le=...)` at the field.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

# The longest context windows of published models are ~10M tokens (Llama 4 Scout);
# no prompt, response, chunk or step budget is longer.
MAX_TOKENS = 10_000_000
# Token capacity of one instance's KV cache: 1e10 tokens is ~100x what a 32-GPU
# Kimi-K2 instance holds (seersim specs), room for what-ifs, not for typos.
MAX_CAPACITY_TOKENS = 10_000_000_000
# Counts (prompts, samples, sequences, steps): int32, what the engine's arrays index.
MAX_COUNT = 2**31 - 1
# GPUs in one instance (tp, dp, ep): the largest NVLink domains are 72-576 GPUs (GB200 NVL72/NVL576).
MAX_GPUS_PER_INSTANCE = 4096
# Seconds: ~116 days, longer than any RL step or transfer latency.
MAX_SECONDS = 1e7
# Bytes: 1 EB (memory and storage per node or GPU are TB-scale).
MAX_BYTES = 1e18
# Bytes per second: 1 PB/s (HBM is ~5 TB/s, NVLink ~1 TB/s).
MAX_BYTES_PER_S = 1e15
# FLOP/s of one device: 1 EFLOP/s (an H100 does ~1e15 dense bf16).
MAX_FLOPS = 1e18


def _plain_number(value: Any) -> Any:
    """Refuse what YAML or Python would silently turn into a number."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


PlainNumber = BeforeValidator(_plain_number)
"""Attach to any other numeric annotation (e.g. a Literal of numbers)."""
_Num = PlainNumber

Int = Annotated[int, _Num, Field(ge=-(2**63), le=2**63 - 1)]
"""Any integer (narrow it at the field)."""
Real = Annotated[float, _Num]
"""Any finite float (narrow it at the field)."""

Count = Annotated[int, _Num, Field(ge=1, le=MAX_COUNT)]
NonNegCount = Annotated[int, _Num, Field(ge=0, le=MAX_COUNT)]
Tokens = Annotated[int, _Num, Field(ge=1, le=MAX_TOKENS)]
NonNegTokens = Annotated[int, _Num, Field(ge=0, le=MAX_TOKENS)]
TokenAmount = Annotated[float, _Num, Field(gt=0, le=MAX_TOKENS)]
"""A (mean) token length, fractional allowed."""
CapacityTokens = Annotated[int, _Num, Field(ge=1, le=MAX_CAPACITY_TOKENS)]
"""An instance's KV capacity: a 32-GPU instance holds more than any one sequence."""
GPUs = Annotated[int, _Num, Field(ge=1, le=MAX_GPUS_PER_INSTANCE)]
Seconds = Annotated[float, _Num, Field(ge=0, le=MAX_SECONDS)]
Bytes = Annotated[float, _Num, Field(gt=0, le=MAX_BYTES)]
NonNegBytes = Annotated[float, _Num, Field(ge=0, le=MAX_BYTES)]
BytesPerS = Annotated[float, _Num, Field(gt=0, le=MAX_BYTES_PER_S)]
Flops = Annotated[float, _Num, Field(gt=0, le=MAX_FLOPS)]
Fraction = Annotated[float, _Num, Field(gt=0, le=1)]
"""A share in (0, 1]."""
UnitInterval = Annotated[float, _Num, Field(ge=0, le=1)]
"""A value in [0, 1] (a correlation, a probability)."""
Usd = Annotated[float, _Num, Field(ge=0, le=1e6)]
"""A price per GPU-hour: $1M is far above any cloud list price (~$2-10)."""
