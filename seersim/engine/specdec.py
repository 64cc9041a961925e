"""Speculative decoding as an engine option (DESIGN §6): `fixed` and Seer's
`grouped_adaptive`.

Acceptance model. The paper's Table 2 gives the mean accepted length τ (incl. the
bonus token) against the number n of a group's finished sibling responses used as
draft references (n = 0, 1, 5, 15; 1/2/4 draft paths). We read each entry as τ at the
reference draft length (`reference_draft_tokens`, 8 = the adaptive cap, an assumption:
the table does not state it), solve τ = (1−α^(γ+1))/(1−α) for the per-token acceptance
α, and interpolate α linearly in n between rows. `fixed` uses the n = 0 row (the
request's own history only) with a constant γ.

Accounting is integer and deterministic: each sequence carries an accumulator in
units of 1/Q token and emits (acc + τ·Q) // Q tokens per iteration, capped by its chunk,
so tokens are conserved exactly and a stretch's emissions are closed-form.

Epochs. The draft lengths (for probes, for the others) are chosen for the current
batch at an *epoch* start and kept for `reevaluate_steps` iterations; when the batch
changes mid-epoch every decoding sequence is re-assigned the epoch's lengths and the τ
of its group's references then. The same in fast-forward and step-by-step modes, so
both give identical records.

Token budget. Drafts that do not fit an iteration's `max_num_batched_tokens` are cut,
as vLLM v1's scheduler trims a request's spec tokens to its share of the budget (later
sequences in the batch may get none that iteration); a cut sequence accepts by the τ
of the drafts it verified. Such an iteration is a mixed one (one step in both modes).
`grouped_adaptive` re-chooses the drafts when a batch change makes them overflow.

Draft length (`grouped_adaptive`, the paper's Algorithm 1): for the batch size B pick
γ* minimising the time per accepted token T_SD = (D + T(B, γ))/τ(γ) over γ ≤ 8 whose
drafts fit the step's token budget (B·(1 + paths·γ) ≤ max_num_batched_tokens), where
T(B, γ) is the cost model's iteration time verifying γ drafts per sequence and D the
draft-building overhead; the budget Γ* = γ*·B goes to probes first (one token each),
then one token per request at a time to probes while their marginal gain
B_h·(β[γ_h]−β[γ_h+1]) exceeds λ = 2 times the others' B_l·(β[γ_l]−β[γ_l+1]), else to
the others (β[j] = α^j, the probability that the j-th draft token is accepted).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import accumulate

import numpy as np

from seersim.calibrate.acceptance import load_acceptance, tau
from seersim.config import SpeculationConfig
from seersim.cost import CostModel, StepLines
from seersim.engine.batch import Q, EngineState, Plan, RunningBatch, all_of, any_of, indices_of
from seersim.engine.stretch import LinearStretch, SegmentedStretch, TabulatedStretch, steps_within
from seersim.engine.dp import DPRanks
from seersim.requests import GroupProgress

MAX_DRAFT = 8
PRIORITY_LAMBDA = 2.0
# Most pieces of one stretch across draft-cap changes (bounds its planning work; a
# stretch may end at any piece boundary, where a cap change would have ended it).
MAX_SEGMENTS = 16

# Paper Table 2 (the shipped default calibration, seersim/calibrate/data/): mean accepted
# length incl. bonus, by finished references n, per draft paths.
PAPER_ACCEPTANCE: dict[int, dict[int, float]] = load_acceptance()["paths"]

LinesMemo = tuple[dict, dict]

# Q is a power of two, so an accumulator's whole tokens and remainder are a shift and a
# mask (the same integers as // Q and % Q for every int64, at a fraction of the cost of
# numpy's integer division over a batch)
_Q_BITS = Q.bit_length() - 1
_Q_MASK = Q - 1
assert Q == 1 << _Q_BITS


def new_lines_memo() -> LinesMemo:
    """Memos of the cost model's lines for speculative iterations: batch -> per-γ lines
    (`_iteration_lines`), (seqs, verified) -> one rank's verify lines (`_stretch`). Pure
    functions of the cost model, the draft configuration and their keys, so the decoders
    of every instance of one cluster share one (`SimBackend` hands it out); else each
    would fill its own."""
    return {}, {}


def alpha_for_tau(tau_value: float, gamma: int) -> float:
    """Per-token acceptance α whose τ at draft length γ equals `tau_value`."""
    if tau_value <= 1.0:
        return 0.0
    if tau_value >= gamma + 1:
        return 1.0
    from scipy import optimize  # only runs with speculation need it (start-up time)

    return float(optimize.brentq(lambda a: float(tau(a, gamma)) - tau_value, 0.0, 1.0 - 1e-12, xtol=1e-14))


def _first_emitting(tokens: np.ndarray, acc: np.ndarray, tau_q: np.ndarray) -> np.ndarray:
    """Per sequence, the first iteration after which it has emitted `tokens` (ceil((tokens·Q −
    acc) / τ·Q)); `tokens` is overwritten."""
    tokens *= Q
    tokens -= acc
    tokens += tau_q - 1
    tokens //= tau_q
    return tokens


class AcceptanceModel:
    """α as a function of a group's finished sibling references (calibratable table)."""

    def __init__(self, table: dict[int, float], reference_draft_tokens: int = MAX_DRAFT) -> None:
        self.refs = np.array(sorted(table), dtype=float)
        self.alphas = np.array([alpha_for_tau(table[int(n)], reference_draft_tokens) for n in self.refs])

    def alpha(self, refs: np.ndarray | int) -> np.ndarray:
        return np.interp(np.asarray(refs, dtype=float), self.refs, self.alphas)

    def tables(self, max_refs: int) -> tuple[np.ndarray, np.ndarray]:
        """α[n] and τ·Q[n, γ] for n = 0..max_refs references and γ = 0..8, precomputed
        so that choosing drafts per epoch is table look-ups."""
        alpha = self.alpha(np.arange(max_refs + 1))
        tau_q = np.rint(tau(alpha[:, None], np.arange(MAX_DRAFT + 1)[None, :]) * Q).astype(np.int64)
        return alpha, tau_q


class SpecDecoder:
    """Per-instance speculative-decoding strategy: the current epoch's draft lengths.

    The instance calls it at fixed points, through these public methods only:
    `admit` (columns of a new sequence), `begin_iteration` (before scheduling),
    `plan` (the next stretch), `mixed_emission` (tokens of decodes in a mixed
    iteration), and for a "spec_decode" plan `slots_at`, `emitted` and `advance`.
    It reads a group-progress view (finished siblings, probes), never the cluster.
    """

    def __init__(
        self,
        cfg: SpeculationConfig,
        groups: GroupProgress,
        cost: CostModel,
        token_budget: int,
        lines_memo: LinesMemo | None = None,
    ) -> None:
        self.groups = groups
        self.cost = cost
        self.cfg = cfg
        self.token_budget = token_budget  # the engine's max_num_batched_tokens
        self.grouped = cfg.mode == "grouped_adaptive"
        table = cfg.acceptance_table or PAPER_ACCEPTANCE[cfg.paths]
        self.model = AcceptanceModel({int(k): float(v) for k, v in table.items()}, cfg.reference_draft_tokens)
        self.epoch_left = 0
        self._rebase = False  # the batch changed: re-assign drafts, restart the context model
        self.epoch_gamma = (0, 0)  # (γ for probes, γ for the others) of the current epoch
        self._alpha: np.ndarray | None = None  # per-reference-count tables, built on first use
        self._tau_q = np.zeros((0, 0), np.int64)
        # The iteration time inside an epoch uses the epoch's *expected* context growth
        # (Σ τ_i per iteration) rather than the integer emissions: identical in both
        # engine modes, closed-form over a stretch, and off by < 1 token per sequence.
        self.epoch_step = 0
        self.epoch_base_context = np.zeros(1)  # per DP rank
        self.epoch_rate = np.zeros(1)
        # `_assign` restarted the context model but it is not computed yet: only a
        # speculative stretch planned in the same iteration reads it (a mixed iteration
        # prices its actual context and re-assigns next iteration), so `_plan_decode`
        # computes it, from the batch `_assign` saw (a stretch means nothing changed)
        self._context_restarted = False
        # memos of pure functions of their keys (speed only: same numbers either way)
        # batch -> per γ (`_iteration_lines`); (seqs, verified) -> dp = 1 lines (`_stretch`)
        self._gamma_lines, self._verify_lines = lines_memo if lines_memo is not None else new_lines_memo()
        self._split_memo: dict[tuple, tuple[int, int]] = {}  # _split_budget's answers
        # (rid column, references, probes) of the drafts this iteration's `_assign` gave
        self._assigned: tuple[np.ndarray, np.ndarray | None, np.ndarray] | None = None
        # (acc column, steps, accumulators after them) from `emitted`, for `advance`
        self._acc_after: tuple[np.ndarray, int, np.ndarray] | None = None
        self._last_choice: tuple[tuple[bytes, bytes] | None, Callable[[int], tuple[int, int]] | None] = (None, None)
        self._max_emit_tokens = 1  # most tokens one iteration may emit per sequence (KV bound)
        # the current stretch's cumulative verified tokens per iteration, when its drafts change
        self._verified_cum: list[int] | None = None
        # the current stretch's epoch starts (`_later_epochs`): (last iteration of the
        # epoch before, the new epoch's context model: base per rank, rate per rank)
        self._epoch_ends: list[tuple[int, np.ndarray, np.ndarray]] = []
        # later epochs a stretch plans ahead: halved when finished siblings cut stretches
        # short (their pieces were planned in vain), doubled when one runs through them;
        # 0 (after one epoch planned in vain twice running): skip one look-ahead
        self._epochs_ahead = MAX_SEGMENTS - 1

    @staticmethod
    def max_draft_tokens(cfg: SpeculationConfig) -> int:
        """The longest draft (per path) a sequence may get: γ of `fixed`, the adaptive cap."""
        return cfg.draft_tokens if cfg.mode == "fixed" else MAX_DRAFT

    # ------------------------------------------------------------------ engine hooks
    @staticmethod
    def admit() -> tuple[int, int, int, int]:
        """(acc, gamma, tau_q, draft) of a newly admitted sequence: no drafts until the next epoch."""
        return 0, 0, Q, 0

    def begin_iteration(self, state: EngineState) -> None:
        """Before scheduling an iteration: at an epoch start choose the draft lengths
        (probes, others) for the batch; after a batch change re-assign them; cap every
        sequence's draft slots by what its chunk can still emit."""
        self._assigned = None
        if self.epoch_left > 0:
            if not self._rebase:
                self._cap(state.batch)
                return
            verify_tokens = self._assign(state.batch, state.ranks)
            if not self.grouped or verify_tokens <= self.token_budget:
                return
            # the batch grew past what the epoch's drafts fit in a step: choose again
        b = state.batch
        self.epoch_left = self.cfg.reevaluate_steps
        if self._alpha is None:
            self._alpha, self._tau_q = self.model.tables(self.groups.max_group_size)
            self._max_emit_tokens = -(-max(int(self._tau_q.max()), Q) // Q)
        decoding = b.tokens - b.computed == 1
        probe, refs = self._batch_groups(b)
        if not self.grouped:
            self.epoch_gamma = (self.cfg.draft_tokens, self.cfg.draft_tokens)
        elif not (n_decoding := int(np.count_nonzero(decoding))):
            self.epoch_gamma = (0, 0)
        elif n_decoding == len(b):
            self.epoch_gamma = self._adaptive_gamma(b, refs, probe)
        else:
            self.epoch_gamma = self._adaptive_gamma(b, refs[decoding], probe[decoding])
        self._assign(b, state.ranks, decoding, probe, refs)

    def _assign(
        self,
        b: RunningBatch,
        ranks: DPRanks,
        decoding: np.ndarray | None = None,
        probe: np.ndarray | None = None,
        refs: np.ndarray | None = None,
    ) -> int:
        """Give every decoding sequence its epoch draft length and τ (from its group's
        finished references now), and restart the epoch's context model (computed where
        a stretch needs it: `_context_restarted`). `decoding`,
        `probe`, `refs`: the batch's, when the caller has them already. Returns the
        tokens the decoding sequences verify per iteration with their drafts."""
        if decoding is None:
            decoding = b.tokens - b.computed == 1
            probe, refs = self._batch_groups(b)
        np.multiply(decoding, self._epoch_drafts(probe), out=b.draft)
        b.tau_q[:] = self._tau_q_of(refs, b.draft)
        self._cap(b)
        self._rebase = False
        self.epoch_step = 0
        self._context_restarted = True
        self._assigned = (b.rid, refs, probe)
        # only decoding sequences have drafts
        return int(np.count_nonzero(decoding)) + int(np.add.reduce(b.gamma))

    def _batch_groups(self, b: RunningBatch) -> tuple[np.ndarray, np.ndarray | None]:
        """(probe flags, finished references; None without grouping) of the batch's sequences."""
        return self.groups.is_probe(b.rid), (self.groups.finished_siblings(b.rid) if self.grouped else None)

    def _epoch_drafts(self, probe: np.ndarray) -> np.ndarray | int:
        """The epoch's draft length of each sequence (probes', the others'), before the
        decoding mask and the chunk caps."""
        g_probe, g_other = self.epoch_gamma
        return np.where(probe, g_probe, g_other) if g_probe != g_other else g_other

    def _tau_q_of(self, refs: np.ndarray | None, draft: np.ndarray) -> np.ndarray:
        """τ·Q of these draft lengths with these finished references (without grouping,
        the no-reference column)."""
        return self._tau_q[refs, draft] if refs is not None else self._tau_q[0, draft]

    @staticmethod
    def _base_context(
        b: RunningBatch, ranks: DPRanks, verified: np.ndarray, computed_sum: int, computed: np.ndarray | None
    ) -> np.ndarray:
        """Per rank, the context an epoch's first iteration attends, its sequences having
        `computed` tokens each, `computed_sum` in all (the epoch's context model starts
        there); `verified`: tokens each rank verifies per iteration (`_verified_now`).
        One rank reads only the sum (`computed` may then be None)."""
        if ranks.dp == 1:
            return np.array([float(computed_sum + int(verified[0]))])
        return ranks.per_rank(b.rank, computed + 1 + b.gamma).astype(np.float64)

    @staticmethod
    def _verified_now(b: RunningBatch, ranks: DPRanks) -> np.ndarray:
        """Tokens each rank verifies per iteration with the batch's draft slots now."""
        if ranks.dp == 1:
            return np.array([len(b) + int(np.add.reduce(b.gamma))])
        return ranks.per_rank(b.rank, 1 + b.gamma)

    @staticmethod
    def _context_rate(b: RunningBatch, ranks: DPRanks) -> np.ndarray:
        """Per rank, the epoch's expected context growth per iteration (Σ τ)."""
        if ranks.dp == 1:
            return np.array([int(np.add.reduce(b.tau_q)) / Q])
        return np.bincount(b.rank, weights=b.tau_q, minlength=ranks.dp) / Q

    def scheduled_tau_q(self, b: RunningBatch, new: np.ndarray) -> np.ndarray:
        """τ·Q per running sequence for the tokens scheduled this iteration: a decode
        whose drafts the token budget cut (vLLM trims them to fit) verifies only
        (new − 1) // paths drafts per path, with its group's references now."""
        room = new - 1
        np.maximum(room, 0, out=room)  # drafts the budget left room for
        cut = room < b.gamma
        if not any_of(cut):
            return b.tau_q
        rids = b.rid[cut]
        refs = self.groups.finished_siblings(rids) if self.grouped else np.zeros(len(rids), np.int64)
        tau_q = b.tau_q.copy()
        tau_q[cut] = self._tau_q[refs, room[cut] // self.cfg.paths]
        return tau_q

    def _cap(self, b: RunningBatch) -> None:
        """Draft slots this iteration: paths · min(draft, left − 1). Drafting past the
        chunk's last token is useless, so it neither holds KV nor costs verification."""
        room = b.left - 1
        np.maximum(room, 0, out=room)
        np.minimum(b.draft, room, out=b.gamma)
        if self.cfg.paths != 1:
            b.gamma *= self.cfg.paths

    def _iteration_lines(self, batch: int) -> tuple[list[tuple[StepLines, int, float]], list[tuple[float, ...]] | None]:
        """Per draft length γ = 0..8: the cost model's lines of an iteration of `batch`
        sequences verifying γ drafts each, the context its draft queries add, and the
        draft-building overhead; and, when every γ's lines are a roofline (two lines),
        their numbers flat (a0, a1, b0, b1, context added, overhead) to evaluate inline.
        Memoised per batch size."""
        memo = self._gamma_lines.get(batch)
        if memo is None:
            if len(self._gamma_lines) >= 4096:
                self._gamma_lines.clear()
            per_gamma = []
            for gamma in range(MAX_DRAFT + 1):
                width = 1 + self.cfg.paths * gamma
                lines = self.cost.step_lines(batch, batch * width, 0, float(width))
                per_gamma.append((lines, batch * (width - 1), self.cfg.draft_overhead_s if gamma else 0.0))
            rooflines = None
            if all(len(lines.slopes_s) == 2 for lines, _, _ in per_gamma):
                rooflines = [(*lines.intercepts_s, *lines.slopes_s, extra, o) for lines, extra, o in per_gamma]
            memo = self._gamma_lines[batch] = (per_gamma, rooflines)
        return memo

    def _adaptive_gamma(self, b: RunningBatch, refs: np.ndarray, probe: np.ndarray) -> tuple[int, int]:
        """(γ for probes, γ for the others) of a batch with these references, now."""
        return self._gamma_choice(refs, probe)(int(np.add.reduce(b.computed)) + len(b))

    def _gamma_choice(self, refs: np.ndarray, probe: np.ndarray) -> Callable[[int], tuple[int, int]]:
        """Algorithm 1 for a batch whose sequences have these finished references and
        probe flags, as a function of its context tokens: (γ for probes, γ for the
        others). The last one is kept with the two arrays' contents: a batch's
        statistics are taken once for its epoch starts while its references stay
        (`_later_epochs`). (One, not a table: memos that keep many objects alive make
        Python's garbage collector run more often and longer.)"""
        key = (refs.tobytes(), probe.tobytes())
        if self._last_choice[0] != key:
            self._last_choice = (key, self._build_choice(self._alpha[refs], probe))
        return self._last_choice[1]

    def _build_choice(self, alpha: np.ndarray, probe: np.ndarray) -> Callable[[int], tuple[int, int]]:
        """`_gamma_choice` for a batch with these acceptances."""
        batch = len(alpha)
        a_mean = float(np.add.reduce(alpha)) / batch  # (ndarray.sum's own reduction)
        # drafts the step's token budget cannot verify are not worth building
        cap = min(MAX_DRAFT, (self.token_budget // batch - 1) // self.cfg.paths)
        per_gamma, rooflines = self._iteration_lines(batch)
        # τ(γ) = Σ_{j ≤ γ} a_mean^j
        tau_g = list(accumulate(a_mean**g for g in range(cap + 1)))
        n_h = int(np.count_nonzero(probe))
        n_l = batch - n_h
        if n_h:
            a_h = float(np.add.reduce(alpha[probe])) / n_h
            a_l = float(np.add.reduce(alpha[~probe])) / n_l if n_l else 0.0
        else:
            a_h, a_l = 0.0, a_mean  # (the others are the whole batch)
        memo = self._split_memo
        # time per accepted token of each γ: iteration time / τ(γ); a roofline's two
        # lines are evaluated inline (the same arithmetic as `StepLines.at`)
        if rooflines is not None:

            def per_token_s(context: int) -> list[float]:
                return [
                    ((x if (x := a0 + b0 * (c := context + e)) > (y := a1 + b1 * c) else y) + o) / t
                    for (a0, a1, b0, b1, e, o), t in zip(rooflines, tau_g)
                ]
        else:

            def per_token_s(context: int) -> list[float]:
                return [(lines.at(context + e) + o) / t for (lines, e, o), t in zip(per_gamma, tau_g)]

        def choose(context: int) -> tuple[int, int]:
            times = per_token_s(context)
            best = times.index(min(times))  # the first minimum
            budget = best * batch
            if best == 0 or budget < n_h:
                return 0, 0
            if n_h == 0:
                return best, best
            key = (budget, n_h, n_l, a_h, a_l)
            split = memo.get(key)
            if split is None:
                if len(memo) >= 65536:
                    memo.clear()
                split = memo[key] = self._split_budget(budget, n_h, n_l, a_h, a_l)
            return split

        return choose

    @staticmethod
    def _split_budget(budget: int, n_h: int, n_l: int, a_h: float, a_l: float) -> tuple[int, int]:
        """Algorithm 1's split of Γ* = `budget` draft tokens between n_h probes and n_l others."""
        g_h, g_l = 1, 0
        budget -= n_h
        while True:
            gain_h = n_h * (a_h**g_h - a_h ** (g_h + 1)) if g_h < MAX_DRAFT else -1.0
            gain_l = n_l * (a_l**g_l - a_l ** (g_l + 1)) if (g_l < MAX_DRAFT and n_l) else -1.0
            if gain_h >= 0 and budget >= n_h and (gain_h > PRIORITY_LAMBDA * gain_l or gain_l < 0 or budget < n_l):
                g_h += 1
                budget -= n_h
            elif gain_l >= 0 and budget >= n_l:
                g_l += 1
                budget -= n_l
            else:
                break
        return g_h, g_l

    # ------------------------------------------------------------------ planning
    def plan(self, state: EngineState, new: np.ndarray, changed: bool, preempted: bool) -> Plan:
        b = state.batch
        self._epoch_ends = []
        if changed or preempted or not self._all_full_decodes(b, new):
            # A mixed iteration. Draft lengths stay until the epoch ends (sequences that
            # joined decode without drafts); the context model restarts from the new batch.
            self._rebase = True
            return Plan(1, TabulatedStretch.single(state.mixed_step_s(new)), "mixed", new)
        return self._plan_decode(state)

    @staticmethod
    def _all_full_decodes(b: RunningBatch, new: np.ndarray) -> bool:
        """Whether every sequence decodes and was scheduled its token and all its drafts."""
        pending = b.tokens - b.computed
        if not all_of(pending == 1):
            return False
        pending += b.gamma
        return all_of(new == pending)

    def _stretch(
        self,
        b: RunningBatch,
        ranks: DPRanks,
        verified: np.ndarray,
        first: int = 1,
        seqs: np.ndarray | None = None,
        epoch: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> LinearStretch:
        """The epoch's speculative iterations from the stretch's iteration `first` on: each
        rank verifies its sequences' drafts (`verified` tokens per rank) over its expected
        context (the epoch's context model, per rank). `epoch`: the context model (base,
        rate) of a later epoch that starts at `first`."""
        if epoch is None:
            base, rate_per_rank = self.epoch_base_context, self.epoch_rate
            step = self.epoch_step + first - 1  # epoch iterations done before it
        else:
            (base, rate_per_rank), step = epoch, 0
        if ranks.dp == 1:  # `DPRanks.lines` of one rank, in scalars, with the lines memoised
            seqs = len(b)
            tokens = int(verified[0])
            key = (seqs, tokens)
            lines = self._verify_lines.get(key)
            if lines is None:
                if len(self._verify_lines) >= 4096:
                    self._verify_lines.clear()
                lines = self.cost.step_lines(seqs, tokens, 0, tokens / max(seqs, 1))
                if tokens > seqs:  # building drafts: every line later
                    lines = lines.raised(self.cfg.draft_overhead_s)
                self._verify_lines[key] = lines
            rate = float(rate_per_rank[0])
            return LinearStretch(lines, float(base[0]) + rate * (step - 1), rate)
        if seqs is None:
            seqs = b.rank_counts(ranks.dp)
        queries = verified / np.maximum(seqs, 1)
        c0 = base + rate_per_rank * (step - 1)
        overhead = self.cfg.draft_overhead_s if int(np.add.reduce(verified)) > len(b) else 0.0
        return ranks.stretch(seqs, verified, np.zeros(ranks.dp), queries, c0, rate_per_rank, overhead_s=overhead)

    def _plan_decode(self, state: EngineState) -> Plan:
        """A pure speculative-decode stretch, in closed form (O(n log K), no per-step loop).

        Sequence i emits cum_i(k) = (acc_i + k·τ_i) // Q tokens after k iterations. It
        ends at the epoch's end, where a chunk fills, or where KV runs out. Where a
        sequence's draft cap min(draft, left − 1) changes the stretch goes on (one
        draft path, `_plan_across_caps`) in pieces of constant verified tokens.
        """
        b, bs, ranks = state.batch, state.block_size, state.ranks
        acc, tq, rank = b.acc, b.tau_q, b.rank
        computed, gamma, blocks, shared = b.computed, b.gamma, b.blocks, b.shared
        self._verified_cum = None

        def extra_blocks(k: int) -> np.ndarray:
            """Blocks per rank iterations 1..k need beyond those held: iteration k needs
            slots for computed + emitted before it + 1 + γ (step 1's are allocated)."""
            if k <= 1:
                return np.zeros(ranks.dp, np.int64)
            need = -(-(computed + 1 + gamma + ((acc + (k - 1) * tq) >> _Q_BITS)) // bs)
            return ranks.per_rank(rank, np.maximum(need - blocks - shared, 0))

        verified = self._verified_now(b, ranks)
        if self._context_restarted:
            self._context_restarted = False
            self.epoch_base_context = self._base_context(b, ranks, verified, int(np.add.reduce(computed)), computed)
            self.epoch_rate = self._context_rate(b, ranks)
        if not state.fast_forward:
            return Plan(1, self._stretch(b, ranks, verified), "spec_decode", None, extra_blocks)
        # The draft cap min(draft, left − 1) changes at the first iteration where
        # emitted-so-far ≥ max(left − draft, 1); without drafts that threshold is the
        # chunk's own end, and it is never later than it.
        left = b.left
        threshold = left - b.draft
        np.maximum(threshold, 1, out=threshold)
        np.minimum(threshold, left, out=threshold)
        cap_reach = _first_emitting(threshold, acc, tq)
        cap_min = int(np.minimum.reduce(cap_reach))
        steps = max(1, min(self.epoch_left, cap_min))
        if steps < self.epoch_left and self.cfg.paths == 1:
            last = max(1, min(self.epoch_left, int(np.minimum.reduce(_first_emitting(left.copy(), acc, tq)))))
            if steps < last and self._leaves_budget(verified, ranks):
                return self._plan_across_caps(state, cap_reach, last, verified)
        if steps == self.epoch_left < cap_min:
            if self._epochs_ahead:
                steps = self._later_epochs(b, ranks, steps, cap_min, verified)
            else:
                self._epochs_ahead = 1
        if steps > 1 and not self._blocks_surely_fit(b, ranks, steps, state.stretch_block_limit(), bs):
            steps = steps_within(extra_blocks, state.stretch_block_limit(), steps)
        if self._epoch_ends:
            ends = self._epoch_ends = [e for e in self._epoch_ends if e[0] < steps]
            if ends:
                parts = [(1, self._stretch(b, ranks, verified))]
                parts += [(end + 1, self._stretch(b, ranks, verified, epoch=(base, rate))) for end, base, rate in ends]
                return Plan(steps, SegmentedStretch(parts), "spec_decode", None, extra_blocks)
        return Plan(steps, self._stretch(b, ranks, verified), "spec_decode", None, extra_blocks)

    def _later_epochs(self, b: RunningBatch, ranks: DPRanks, steps: int, cap_min: int, verified: np.ndarray) -> int:
        """How far a stretch whose epoch ends after `steps` iterations, with no draft cap
        changing before iteration `cap_min` + 1, may run on through later epochs.

        An epoch start re-chooses the drafts (`begin_iteration`): from the batch, its
        context and its groups' finished siblings. The batch is fixed in a stretch and
        its context is known at each epoch start, so the stretch goes on while the
        drafts each start would assign are the ones the batch has: then the emissions
        (acc + k·τ) // Q, the KV slots and the token budget run on unchanged, and only
        the context model restarts (a new piece of the stretch's time, kept in
        `_epoch_ends` for `advance`). A sibling finishing elsewhere in the meantime
        ends the stretch at the next epoch end (`Instance.sibling_finished`), so each epoch start
        sees the finished counts step-by-step simulation would. `verified`: tokens each
        rank verifies per iteration. Returns the steps."""
        assigned = self._assigned
        if assigned is not None and assigned[0] is b.rid:
            # this iteration's `_assign` gave the drafts and τ from these references, and
            # every sequence decodes (else the plan is a mixed one): they are the ones
            # an epoch start assigns
            _, refs, probe = assigned
            rate = self.epoch_rate
        else:
            probe, refs = self._batch_groups(b)
            if not all_of(b.draft == self._epoch_drafts(probe)):
                return steps
            if not all_of(b.tau_q == self._tau_q_of(refs, b.draft)):
                return steps  # a sibling finished since the drafts were assigned
            rate = self._context_rate(b, ranks)
        starts = []  # the epoch starts (iterations before each) it may run into
        while steps < cap_min and len(starts) < self._epochs_ahead:
            starts.append(steps)
            steps = min(steps + self.cfg.reevaluate_steps, cap_min)
        if not starts:
            return steps
        # tokens each sequence emitted by each start (no chunk fills before cap_min)
        emitted = np.multiply.outer(b.tau_q, starts)
        emitted += b.acc[:, None]
        emitted >>= _Q_BITS
        computed_sum = int(np.add.reduce(b.computed))
        context = (computed_sum + np.add.reduce(emitted, axis=0)).tolist()
        choose = self._gamma_choice(refs, probe) if refs is not None else None
        ends = self._epoch_ends
        for j, start in enumerate(starts):
            if choose is not None and choose(context[j] + len(b)) != self.epoch_gamma:
                return start
            at_start = b.computed + emitted[:, j] if ranks.dp > 1 else None
            ends.append((start, self._base_context(b, ranks, verified, context[j], at_start), rate))
        return steps

    @property
    def epoch_ends(self) -> list[int]:
        """The current stretch's epoch ends before its last iteration (see `_later_epochs`):
        where it must end when a sibling finishes before them."""
        return [end for end, _, _ in self._epoch_ends]

    @property
    def spans_epochs(self) -> bool:
        """Whether the current stretch runs into later epochs (see `_later_epochs`)."""
        return bool(self._epoch_ends)

    def _leaves_budget(self, verified: np.ndarray, ranks: DPRanks) -> bool:
        """Whether every rank leaves some of its token budget unused, verifying `verified`
        tokens per iteration. Then a waiting head was held back by `max_num_seqs` or KV,
        not by the budget, and stays so while drafts shrink (a larger budget only needs
        more blocks to admit it)."""
        return all_of(verified < self.token_budget // ranks.dp)

    def _plan_across_caps(self, state: EngineState, cap_reach: np.ndarray, last: int, verified: np.ndarray) -> Plan:
        """A stretch of up to `last` iterations (one draft path) over draft-cap changes:
        pieces of constant verified tokens per rank, at most MAX_SEGMENTS of them.

        `cap_reach`: per sequence, the iterations before its cap changes; `verified`:
        tokens each rank verifies in iteration 1. Keeps the cumulative verified tokens
        per iteration for `verified_tokens`."""
        b, bs, ranks = state.batch, state.block_size, state.ranks
        moving = indices_of(cap_reach < last)  # sequences whose cap falls within the stretch
        # their drafts in iterations 1..last: min(draft, max(left − emitted before − 1, 0))
        drafts = np.multiply.outer(b.tau_q[moving], np.arange(last))
        drafts += b.acc[moving, None]
        drafts >>= _Q_BITS
        np.subtract((b.left[moving] - 1)[:, None], drafts, out=drafts)
        np.maximum(drafts, 0, out=drafts)
        np.minimum(drafts, b.draft[moving, None], out=drafts)
        # drafts only fall, so a rank's verified tokens change exactly where one of its
        # sequences' does, which is where their sum does
        moving_drafts = np.add.reduce(drafts, axis=0)
        starts = (indices_of(moving_drafts[1:] != moving_drafts[:-1]) + 2).tolist()
        if len(starts) >= MAX_SEGMENTS:
            last = starts[MAX_SEGMENTS - 1] - 1
            starts = starts[: MAX_SEGMENTS - 1]
        # tokens verified per iteration: iteration 1's, less the drafts that fell since
        total = (int(np.add.reduce(verified)) - int(moving_drafts[0])) + moving_drafts[:last]
        self._verified_cum = list(accumulate(total.tolist(), initial=0))
        blocks_fn = self._capped_blocks_fn(b, ranks, bs)
        steps = last
        if not self._blocks_surely_fit(b, ranks, steps, state.stretch_block_limit(), bs):
            steps = steps_within(blocks_fn, state.stretch_block_limit(), steps)
        starts = [1] + [first for first in starts if first <= steps]
        if len(starts) == 1:
            self._verified_cum = None  # the drafts stay as they are throughout
            return Plan(steps, self._stretch(b, ranks, verified), "spec_decode", None, blocks_fn)
        if ranks.dp == 1:  # a piece verifies its first iteration's total
            parts = [(first, self._stretch(b, ranks, total[first - 1 : first], first)) for first in starts]
        else:
            seqs, owners, fell = b.rank_counts(ranks.dp), b.rank[moving], drafts - drafts[:, :1]
            parts = [
                (first, self._stretch(b, ranks, verified + ranks.per_rank(owners, fell[:, first - 1]), first, seqs))
                for first in starts
            ]
        return Plan(steps, SegmentedStretch(parts), "spec_decode", None, blocks_fn)

    @staticmethod
    def _capped_blocks_fn(b: RunningBatch, ranks: DPRanks, bs: int):
        """blocks_fn of a stretch over draft-cap changes (one path): iteration k needs
        slots for computed + e + 1 + min(draft, left − e − 1), e emitted before it, which
        never falls as e grows (so the last iteration needs the most)."""
        acc, tq, rank, left, draft = b.acc, b.tau_q, b.rank, b.left, b.draft
        computed, blocks, shared = b.computed, b.blocks, b.shared

        def extra_blocks(k: int) -> np.ndarray:
            if k <= 1:
                return np.zeros(ranks.dp, np.int64)
            emitted = (acc + (k - 1) * tq) >> _Q_BITS
            slots = computed + 1 + emitted + np.minimum(draft, np.maximum(left - emitted - 1, 0))
            return ranks.per_rank(rank, np.maximum(-(-slots // bs) - blocks - shared, 0))

        return extra_blocks

    def _blocks_surely_fit(self, b: RunningBatch, ranks: DPRanks, steps: int, limit: np.ndarray, bs: int) -> bool:
        """A cheap sufficient test that `steps` iterations' blocks fit each rank's limit.

        Iteration 1's blocks are held, so a sequence needs at most ⌈e/bs⌉ ≤ e//bs + 1
        more for the e tokens it emits before iteration `steps`, and e < 1 + (steps − 1)·T
        with T the most tokens an iteration emits."""
        per_seq = (1 + (steps - 1) * self._max_emit_tokens) // bs + 1
        if ranks.dp == 1:
            return len(b) * per_seq <= int(limit[0])
        return all_of(b.rank_counts(ranks.dp) * per_seq <= limit)

    # ------------------------------------------------------------------ emissions
    def mixed_emission(self, b: RunningBatch, speculating: np.ndarray, new: np.ndarray) -> np.ndarray:
        """Tokens each sequence emits in a mixed iteration computing `new` tokens each,
        where the `speculating` ones verify their (possibly budget-cut) drafts (others'
        entries are unused); advances their accumulators and the epoch by one iteration."""
        total = b.acc + self.scheduled_tau_q(b, new)
        emit = np.minimum(total >> _Q_BITS, b.left)
        np.copyto(b.acc, total & _Q_MASK, where=speculating)
        self._iterations_done(1)
        return emit

    def slots_at(self, b: RunningBatch, steps: int) -> np.ndarray:
        """KV slots each sequence needs in the last of `steps` speculative iterations
        (the most any of them needs): computed + emitted before it + 1 + drafts."""
        slots = b.acc + (steps - 1) * b.tau_q
        slots >>= _Q_BITS  # emitted before it
        if self._verified_cum is None:
            drafts = b.gamma
        else:  # min(draft, left − emitted − 1), at least 0
            drafts = b.left - 1
            drafts -= slots
            np.maximum(drafts, 0, out=drafts)
            np.minimum(drafts, b.draft, out=drafts)
        slots += b.computed
        slots += drafts
        slots += 1
        return slots

    def verified_tokens(self, b: RunningBatch, steps: int) -> int:
        """Tokens `steps` speculative iterations verify (each sequence 1 + its drafts)."""
        if self._verified_cum is None:
            return steps * (len(b) + int(np.add.reduce(b.gamma)))
        return self._verified_cum[steps]

    def emitted(self, b: RunningBatch, steps: int) -> np.ndarray:
        """Tokens each sequence emits over `steps` speculative iterations (capped by its
        chunk). Keeps the accumulators they leave for `advance`, which follows."""
        emitted = b.acc + steps * b.tau_q
        acc = emitted & _Q_MASK
        emitted >>= _Q_BITS
        self._acc_after = (b.acc, steps, acc)
        return np.minimum(emitted, b.left, out=emitted)

    def advance(self, b: RunningBatch, steps: int) -> None:
        """`steps` speculative iterations ran: advance accumulators and the epoch (the
        last epoch the stretch started, with its context model)."""
        kept, self._acc_after = self._acc_after, None
        if kept is not None and kept[0] is b.acc and kept[1] == steps:
            b.acc[:] = kept[2]
        else:
            b.acc[:] = (b.acc + steps * b.tau_q) & _Q_MASK
        planned = self._epoch_ends
        started = [e for e in planned if e[0] < steps]
        self._epoch_ends = []
        if planned:
            if len(started) == len(planned):
                self._epochs_ahead = min(2 * self._epochs_ahead, MAX_SEGMENTS - 1)
            elif started or self._epochs_ahead > 1:
                self._epochs_ahead = max(1, self._epochs_ahead // 2)
            else:
                self._epochs_ahead = 0  # wasted again: skip the next epoch end's look-ahead
        if started:
            end, self.epoch_base_context, self.epoch_rate = started[-1]
            self.epoch_left, self.epoch_step = self.cfg.reevaluate_steps, 0
            steps -= end
        self._iterations_done(steps)

    def _iterations_done(self, steps: int) -> None:
        self.epoch_left = max(0, self.epoch_left - steps)
        self.epoch_step += steps
