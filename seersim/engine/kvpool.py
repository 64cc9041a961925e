"""Global KVCache Pool (Mooncake-style): tiers of memory shared by all instances.

When a chunk ends, its request's KV is written to the pool (in the background: not on
the critical path, as Mooncake's offload); a request continuing on another instance
pulls the missing part from the tier holding it, paying bytes / bandwidth + latency.
Tiers fill in order; a full tier demotes its least-recently-used entry to the next
tier, and the last tier drops it (a later move then recomputes). A request's pooled
KV is freed when it finishes.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from seersim.config import KVPoolConfig


@dataclass
class TierStats:
    name: str
    capacity_bytes: float
    used_bytes: float = 0.0
    peak_bytes: float = 0.0
    bytes_written: float = 0.0
    bytes_read: float = 0.0
    evictions: int = 0


@dataclass
class _Tier:
    stats: TierStats
    bandwidth_bytes_per_s: float
    latency_s: float
    entries: OrderedDict = field(default_factory=OrderedDict)  # request id -> bytes, LRU first


class KVPool:
    def __init__(self, cfg: KVPoolConfig, nodes: int, bytes_per_token: float) -> None:
        self.enabled = cfg.enabled and bool(cfg.tiers)
        self.bytes_per_token = bytes_per_token
        self.tiers = [
            _Tier(TierStats(t.name, t.capacity_bytes_per_node * nodes), t.bandwidth_bytes_per_s, t.latency_s)
            for t in cfg.tiers
        ]
        self.dropped = 0
        self.transfers = 0
        self.transfer_s = 0.0

    def _find(self, request_id: int) -> int | None:
        for i, tier in enumerate(self.tiers):
            if request_id in tier.entries:
                return i
        return None

    def tokens(self, request_id: int) -> int:
        """Tokens of the request's KV held in the pool (0 if none)."""
        i = self._find(request_id)
        if i is None:
            return 0
        return int(round(self.tiers[i].entries[request_id] / self.bytes_per_token))

    def store(self, request_id: int, tokens: int) -> None:
        if not self.enabled:
            return
        self.free(request_id)
        self._put(0, request_id, tokens * self.bytes_per_token)

    def _put(self, level: int, request_id: int, nbytes: float) -> None:
        if level >= len(self.tiers):
            self.dropped += 1
            return
        tier = self.tiers[level]
        s = tier.stats
        if nbytes > s.capacity_bytes:
            self._put(level + 1, request_id, nbytes)
            return
        while s.used_bytes + nbytes > s.capacity_bytes:
            victim, vbytes = tier.entries.popitem(last=False)
            s.used_bytes -= vbytes
            s.evictions += 1
            self._put(level + 1, victim, vbytes)
        tier.entries[request_id] = nbytes
        s.used_bytes += nbytes
        s.bytes_written += nbytes
        s.peak_bytes = max(s.peak_bytes, s.used_bytes)

    def free(self, request_id: int) -> None:
        i = self._find(request_id)
        if i is not None:
            tier = self.tiers[i]
            tier.stats.used_bytes -= tier.entries.pop(request_id)

    def pull_time_s(self, request_id: int, tokens: int, link_bytes_per_s: float) -> float:
        """Time to bring `tokens` of the request's KV to an instance; records the read."""
        i = self._find(request_id)
        assert i is not None, "pull of a request the pool does not hold"
        tier = self.tiers[i]
        tier.entries.move_to_end(request_id)
        nbytes = tokens * self.bytes_per_token
        tier.stats.bytes_read += nbytes
        t = tier.latency_s + nbytes / min(tier.bandwidth_bytes_per_s, link_bytes_per_s)
        self.transfers += 1
        self.transfer_s += t
        return t

    def summary(self) -> dict:
        out: dict = {"pool_transfers": self.transfers, "pool_transfer_s": self.transfer_s, "pool_dropped": self.dropped}
        for t in self.tiers:
            s = t.stats
            out[f"pool_{s.name}_peak_bytes"] = s.peak_bytes
            out[f"pool_{s.name}_written_bytes"] = s.bytes_written
            out[f"pool_{s.name}_read_bytes"] = s.bytes_read
            out[f"pool_{s.name}_evictions"] = s.evictions
        return out
