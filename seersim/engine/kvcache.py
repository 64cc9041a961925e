"""Paged KV-cache block accounting of one instance — the one owner of its invariants.

Blocks are *used* (held by running sequences, including a group's shared prompt
while any sibling runs), *cached* (freed but still hashed: evictable, LRU, hit by
a later prefix lookup, as vLLM keeps freed blocks' hashes) or free. Cached blocks
count as free for allocation: allocating evicts least-recently-cached entries.

Cache entries are keyed by int: a request's own context beyond its prompt under
key = request id (>= 0), a group's shared prompt under key = -1 - group id. Prefix
semantics: a request's own entry is only usable while its group's prompt is cached.
"""

from __future__ import annotations

from collections import OrderedDict


def prompt_key(group_id: int) -> int:
    return -1 - group_id


class KVCache:
    __slots__ = ("total_blocks", "block_size", "used_blocks", "cached_blocks", "_cached", "_prompt_refs")

    def __init__(self, total_blocks: int, block_size: int) -> None:
        if total_blocks <= 0:
            raise ValueError("total_blocks must be positive")
        self.total_blocks = total_blocks
        self.block_size = block_size
        self.used_blocks = 0
        self.cached_blocks = 0
        self._cached: OrderedDict[int, int] = OrderedDict()  # key -> blocks, LRU first
        self._prompt_refs: dict[int, tuple[int, int]] = {}  # group -> (refcount, blocks) while in use

    # ---- queries ---------------------------------------------------------------------
    @property
    def free_blocks(self) -> int:
        """Blocks an allocation may take (free + evictable cached)."""
        return self.total_blocks - self.used_blocks

    def cached(self, key: int) -> int:
        return self._cached.get(key, 0)

    def prompt_present(self, group_id: int) -> bool:
        return group_id in self._prompt_refs or prompt_key(group_id) in self._cached

    def prefix_blocks(self, request_id: int, group_id: int, prompt_blocks: int) -> tuple[int, int]:
        """(prompt blocks, own blocks) a request would hit here; own needs the prompt."""
        if prompt_blocks and not self.prompt_present(group_id):
            return 0, 0
        return prompt_blocks, self._cached.get(request_id, 0)

    def blocks_before_eviction_of(self, keys: tuple[int, ...]) -> int:
        """Blocks allocatable before any of `keys`' cached entries would be evicted (LRU)."""
        room = self.total_blocks - self.used_blocks - self.cached_blocks
        if not any(k in self._cached for k in keys):
            return self.free_blocks
        for key, blocks in self._cached.items():
            if key in keys:
                return room
            room += blocks
        return room

    # ---- mutations -------------------------------------------------------------------
    def allocate(self, blocks: int) -> None:
        if blocks < 0 or blocks > self.free_blocks:
            raise AssertionError(f"allocate({blocks}) with {self.free_blocks} free")
        self.used_blocks += blocks
        self._evict_to_fit()

    def release(self, blocks: int) -> None:
        if blocks < 0 or blocks > self.used_blocks:
            raise AssertionError(f"release({blocks}) with {self.used_blocks} used")
        self.used_blocks -= blocks

    def release_to_cache(self, key: int, blocks: int) -> None:
        """Free `blocks` used blocks but keep them hashed under `key` (most recently used)."""
        self.release(blocks)
        if blocks <= 0:
            return
        self.cached_blocks += blocks - self._cached.pop(key, 0)
        self._cached[key] = blocks
        # (evicting is never needed here: used + cached did not grow)

    def take_cached(self, key: int) -> int:
        """A prefix hit: the entry's blocks become used again. Returns the blocks taken."""
        blocks = self._cached.pop(key, 0)
        self.cached_blocks -= blocks
        self.used_blocks += blocks
        return blocks

    def drop_cached(self, key: int) -> None:
        self.cached_blocks -= self._cached.pop(key, 0)

    def acquire_prompt(self, group_id: int) -> bool:
        """Reference the group's shared prompt if present (in use or cached)."""
        if group_id in self._prompt_refs:
            refs, blocks = self._prompt_refs[group_id]
            self._prompt_refs[group_id] = (refs + 1, blocks)
            return True
        key = prompt_key(group_id)
        if key in self._cached:
            self._prompt_refs[group_id] = (1, self.take_cached(key))
            return True
        return False

    def share_prompt(self, group_id: int, blocks: int) -> None:
        """A sequence's freshly computed prompt blocks become the group's shared copy."""
        assert group_id not in self._prompt_refs and prompt_key(group_id) not in self._cached
        self._prompt_refs[group_id] = (1, blocks)

    def release_prompt(self, group_id: int) -> None:
        refs, blocks = self._prompt_refs[group_id]
        if refs > 1:
            self._prompt_refs[group_id] = (refs - 1, blocks)
        else:
            del self._prompt_refs[group_id]
            self.release_to_cache(prompt_key(group_id), blocks)

    def prompt_refs(self, group_id: int) -> int:
        return self._prompt_refs.get(group_id, (0, 0))[0]

    def _evict_to_fit(self) -> None:
        while self.used_blocks + self.cached_blocks > self.total_blocks:
            _, blocks = self._cached.popitem(last=False)
            self.cached_blocks -= blocks

    def check(self, idle: bool = False) -> None:
        """Assert the block invariants (used by tests and at the end of a run, when
        `idle`: nothing runs, so no block may still be in use)."""
        assert 0 <= self.used_blocks <= self.total_blocks, (self.used_blocks, self.total_blocks)
        assert self.cached_blocks == sum(self._cached.values())
        assert self.used_blocks + self.cached_blocks <= self.total_blocks
        shared = sum(b for _, b in self._prompt_refs.values())
        assert shared <= self.used_blocks
        if idle:
            assert self.used_blocks == 0 and not self._prompt_refs, (self.used_blocks, len(self._prompt_refs))
