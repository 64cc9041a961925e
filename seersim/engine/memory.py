"""KV-capacity planning of a simulated instance: how many KV blocks its GPUs hold, and
whether every request of a step can ever fit one instance.

Checked up front, so that an impossible set-up is a clear `SpecError` naming the
fields to change, never a failure in the middle of a run.
"""

from __future__ import annotations

from seersim.config import Scenario
from seersim.errors import SpecError


def kv_capacity_blocks(scenario: Scenario) -> int:
    """KV blocks of one instance: GPU memory × utilisation − weights − activation reserve."""
    eng, m, g = scenario.engine, scenario.model, scenario.gpu
    par = scenario.cluster.parallelism
    bs = eng.block_size_tokens
    # dense weights on every DP rank, routed experts sharded over them
    weights = m.params_bytes(m.dense_params, m.unquantized_params) * par.dp + m.params_bytes(m.routed_expert_params)
    budget = par.gpus * (g.memory_bytes * eng.gpu_memory_utilization - eng.activation_reserve_bytes_per_gpu)
    kv_bytes = budget - weights
    block_bytes = m.kv_bytes_per_token_stored(par.tp) * bs
    blocks = int(kv_bytes // block_bytes) if kv_bytes > 0 else 0
    if blocks <= 0 < kv_bytes:
        raise SpecError(
            f"engine.block_size_tokens={bs}: one KV block ({block_bytes / 1e9:.1f} GB) is larger than "
            f"the {kv_bytes / 1e9:.1f} GB of KV memory left after '{m.name}''s weights; use a block size of 16-256 "
            "tokens as vLLM does"
        )
    if blocks <= 0:
        raise SpecError(
            f"model '{m.name}' ({weights / 1e9:.0f} GB of weights per instance) does not fit {par.gpus} x "
            f"{g.name} ({budget / 1e9:.0f} GB usable): raise cluster.parallelism (tp/dp) or use a larger GPU"
        )
    if eng.kv_capacity_tokens is not None:
        # a what-if override may shrink the KV cache, never conjure memory the GPUs lack
        if eng.kv_capacity_tokens // bs > blocks:
            raise SpecError(
                f"engine.kv_capacity_tokens={eng.kv_capacity_tokens} exceeds the {blocks * bs} tokens of KV that "
                f"{par.gpus} x {g.name} hold after the weights; lower it or add memory"
            )
        return eng.kv_capacity_tokens // bs
    return blocks


def speculative_lookahead_tokens(max_draft_slots: int, max_tokens: int, draft_paths: int) -> int:
    """KV slots beyond prompt + max_tokens that a speculating sequence may need at once.

    A decoding sequence with `left` tokens to go in its chunk verifies its next token
    plus paths · min(γ, left − 1) draft slots (drafts are capped by what the chunk can
    still emit). With `tokens` + `left` ≤ prompt + max_tokens, its slots peak at
    left = γ + 1: prompt + max_tokens − 1 + (paths − 1) · γ.
    """
    gamma = min(max_draft_slots, max(0, max_tokens - 1))
    return max(0, (draft_paths - 1) * gamma - 1)


def check_requests_fit(scenario: Scenario, blocks: int, max_context_tokens: int, lookahead_tokens: int) -> None:
    """Raise SpecError unless a request of `max_context_tokens` (prompt + max_tokens),
    plus the speculative look-ahead, fits `blocks` KV blocks alone (an instance's, or
    with DP attention one rank's)."""
    bs = scenario.engine.block_size_tokens
    need = max_context_tokens + lookahead_tokens
    where = "an instance" if scenario.cluster.parallelism.dp == 1 else "one DP rank (a sequence lives on one)"
    if -(-need // bs) <= blocks:
        return
    if lookahead_tokens and -(-max_context_tokens // bs) <= blocks:
        spec = scenario.engine.speculation
        raise SpecError(
            f"with speculation (engine.speculation.mode={spec.mode}, paths={spec.paths}) one request can need "
            f"{need} tokens of KV ({max_context_tokens} of context plus {lookahead_tokens} draft slots) but an "
            f"{where} holds only {blocks * bs}: use fewer draft paths or tokens, more KV memory, or lower "
            "workload.max_tokens"
        )
    raise SpecError(
        f"one request can reach {max_context_tokens} tokens but {where} holds only {blocks * bs} tokens of KV: "
        "give instances more GPUs (cluster.parallelism) or memory, or lower workload.max_tokens"
    )
