"""Paged KV-cache block accounting of one instance — the one owner of its invariants.

Blocks are *used* (held by running sequences, including a group's shared prompt
while any sibling runs), *cached* (freed but still hashed: evictable, hit by a later
prefix lookup, as vLLM keeps freed blocks' hashes) or free. Cached blocks count as
free for allocation: allocating evicts cached blocks one at a time.

Eviction is applied lazily: an allocation only counts its blocks as used, and the
blocks it would have evicted are evicted when the cache's entries are next read or
changed. Evicting a then b blocks in eviction order is evicting a + b (a partly
evicted entry keeps its place), so this is exact, and the engine's hot path (every
rank allocating every stretch) touches no entry. `cached_blocks` counts what is left
after the pending evictions.

Cache entries are keyed by int: a request's own context beyond its prompt under
key = request id (>= 0), a group's shared prompt under key = -1 - group id. An own
entry *depends on* its group's prompt entry (its parent): block hashes chain, so a
request's own blocks are only a hit while the whole prompt before them is present.

Eviction order (vLLM v1's BlockPool: freed blocks join a FIFO free queue in reverse
order, tail block first, and allocation pops the queue's head; a prefix hit takes
blocks out of the queue):
- least recently cached entry first, and within an entry its *tail* block first,
  so what remains of a partly evicted entry is still a usable (shorter) prefix hit;
- an entry's dependents go before it: a prompt loses no block while an own entry
  that extends it is cached (freeing the prompt before the context built on it
  would strand that context, as vLLM's reverse-order freeing avoids).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterator


def prompt_key(group_id: int) -> int:
    return -1 - group_id


class KVCache:
    __slots__ = (
        "total_blocks",
        "block_size",
        "used_blocks",
        "_cached_blocks",
        "_cached",
        "_parent",
        "_children",
        "_prompt_refs",
        "version",
        "directory",
        "rank",
    )

    def __init__(self, total_blocks: int, block_size: int, directory: dict[int, set[int]] | None = None, rank: int = 0) -> None:
        if total_blocks <= 0:
            raise ValueError("total_blocks must be positive")
        self.total_blocks = total_blocks
        self.block_size = block_size
        self.used_blocks = 0
        self._cached_blocks = 0  # hashed blocks before the pending evictions (`_settle`)
        self._cached: OrderedDict[int, int] = OrderedDict()  # key -> blocks, least recently cached first
        self._parent: dict[int, int] = {}  # cached own entry -> its prompt's key
        self._children: dict[int, dict[int, None]] = {}  # prompt key -> cached dependents, in recency order
        self._prompt_refs: dict[int, tuple[int, int]] = {}  # group -> (refcount, blocks) while in use
        # bumped by every change but an allocation (which only evicts): while it stands,
        # a request the cache could not admit stays so as free blocks shrink
        self.version = 0
        # shared by an instance's DP-rank caches: key -> ranks that may hold it (a
        # superset: entries are added when stored, never removed), so a lookup visits
        # only those ranks
        self.directory, self.rank = directory, rank

    # ---- queries ---------------------------------------------------------------------
    @property
    def free_blocks(self) -> int:
        """Blocks an allocation may take (free + evictable cached)."""
        return self.total_blocks - self.used_blocks

    @property
    def cached_blocks(self) -> int:
        """Cached blocks, after the evictions the allocations so far imply."""
        room = self.total_blocks - self.used_blocks
        return self._cached_blocks if self._cached_blocks <= room else room

    @property
    def uncached_free_blocks(self) -> int:
        """Blocks an allocation may take without evicting a cached one."""
        room = self.total_blocks - self.used_blocks - self._cached_blocks
        return room if room > 0 else 0

    def cached(self, key: int) -> int:
        self._settle()
        return self._cached.get(key, 0)

    def prompt_blocks_present(self, group_id: int) -> int:
        """Blocks of the group's prompt a lookup finds: all of it while in use, else
        what is left of its cached entry (a prefix of it after partial eviction)."""
        self._settle()
        return self._prompt_present(group_id)

    def _prompt_present(self, group_id: int) -> int:
        """`prompt_blocks_present`, the cache settled."""
        refs = self._prompt_refs.get(group_id)
        return refs[1] if refs is not None else self._cached.get(prompt_key(group_id), 0)

    def prefix_blocks(self, request_id: int, group_id: int, prompt_blocks: int) -> tuple[int, int]:
        """(prompt blocks, own blocks) a request would hit here: the prompt's present
        prefix, and its own entry only when the whole prompt is present."""
        self._settle()
        if prompt_blocks:
            present = self._prompt_present(group_id)
            if present < prompt_blocks:
                return present, 0
        return prompt_blocks, self._cached.get(request_id, 0)

    def may_hit(self, request_id: int, group_id: int, prompt_blocks: int) -> bool:
        """Whether `prefix_blocks` could find anything, without applying the pending
        evictions (they only remove): the prompt, when the request has one (its own
        entry is a hit only behind it), else its own entry is present."""
        if prompt_blocks:
            return group_id in self._prompt_refs or prompt_key(group_id) in self._cached
        return request_id in self._cached

    def _eviction_order(self) -> Iterator[tuple[int, int]]:
        """(key, blocks) of the cached entries in the order their blocks are evicted."""
        self._settle()
        seen: set[int] = set()
        for key, blocks in self._cached.items():
            if key in seen:
                continue
            for child in self._children.get(key, ()):
                if child not in seen:
                    seen.add(child)
                    yield child, self._cached[child]
            if key in self._parent:
                seen.add(key)  # its parent, later in the order, must not yield it again
            yield key, blocks

    def blocks_before_eviction_of(self, keys: tuple[int, ...], enough: int | None = None) -> int:
        """Blocks allocatable before any block of `keys`' cached entries is evicted.

        With `enough`, the walk down the eviction order stops once that many fit (the
        answer is then some number >= `enough`): a running stretch allocates a few
        blocks and a looked-up entry is usually recent, so it seldom looks past the
        first entries."""
        room = self.total_blocks - self.used_blocks - self._cached_blocks
        if enough is not None and enough <= room:
            return room  # (room >= 0: no eviction is pending either)
        self._settle()
        cached = self._cached
        for key in keys:
            if key in cached:
                break
        else:
            return self.free_blocks  # (a loop: any() over a generator costs more on this hot path)
        room = self.total_blocks - self.used_blocks - self._cached_blocks
        for key, blocks in self._eviction_order():
            if key in keys:
                return room
            room += blocks
            if enough is not None and enough <= room:
                return room
        raise AssertionError("unreachable: a key of `keys` is cached")

    # ---- mutations -------------------------------------------------------------------
    def allocate(self, blocks: int) -> None:
        """Take `blocks` free blocks; the cached blocks this evicts go at the next `_settle`."""
        if blocks < 0 or blocks > self.total_blocks - self.used_blocks:
            raise AssertionError(f"allocate({blocks}) with {self.free_blocks} free")
        self.used_blocks += blocks

    def _settle(self) -> None:
        """Apply the evictions the allocations since the last call imply."""
        excess = self.used_blocks + self._cached_blocks - self.total_blocks
        if excess > 0:
            self._evict(excess)

    def release(self, blocks: int) -> None:
        if blocks < 0 or blocks > self.used_blocks:
            raise AssertionError(f"release({blocks}) with {self.used_blocks} used")
        self._settle()
        self.used_blocks -= blocks
        self.version += 1

    def release_to_cache(self, key: int, blocks: int, parent: int | None = None) -> None:
        """Free `blocks` used blocks but keep them hashed under `key` (most recently
        used). An existing entry under `key` is a shorter or equal copy of the same
        prefix: it is freed. `parent`: the prompt key an own entry extends."""
        self.release(blocks)
        if blocks <= 0:
            return
        old = self._cached.pop(key, 0)
        if old:
            self._unlink(key)
        self._cached_blocks += blocks - old
        self._cached[key] = blocks
        if self.directory is not None:
            self._list_in_directory(key)
        if parent is not None:
            assert parent in self._cached or -1 - parent in self._prompt_refs, "an own entry needs its prompt present"
            self._parent[key] = parent
            self._children.setdefault(parent, {})[key] = None
        # (evicting is never needed here: used + cached did not grow)

    def _list_in_directory(self, key: int) -> None:
        """Record in the ranks' shared directory that this rank may hold `key`."""
        holders = self.directory.get(key)
        if holders is None:
            self.directory[key] = {self.rank}
        else:
            holders.add(self.rank)

    def take_cached(self, key: int) -> int:
        """A prefix hit: the entry's blocks become used again. Returns the blocks taken.

        Taking a prompt entry leaves its dependents cached: the caller takes the whole
        prompt into use (they stay usable), or a partial one (which has none)."""
        self._settle()
        blocks = self._cached.pop(key, 0)
        if blocks:
            self._unlink(key)
            self._cached_blocks -= blocks
            self.used_blocks += blocks
        self.version += 1
        return blocks

    def drop_cached(self, key: int) -> None:
        """Forget an entry (its blocks become free), with the dependents it would strand."""
        self._settle()
        self.version += 1
        for child in list(self._children.get(key, ())):
            self.drop_cached(child)
        blocks = self._cached.pop(key, 0)
        if blocks:
            self._unlink(key)
            self._cached_blocks -= blocks

    def acquire_prompt(self, group_id: int) -> bool:
        """Reference the group's shared prompt if present whole (in use or cached).
        (A partly evicted prompt is a prefix hit the caller takes with `take_cached`.)"""
        self._settle()
        self.version += 1
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
        """A sequence's freshly computed prompt blocks become the group's shared copy;
        a cached copy of it (whole or partial) is a duplicate and is freed — its
        dependents stay, extending the shared copy."""
        assert group_id not in self._prompt_refs
        self._settle()
        self.version += 1
        key = prompt_key(group_id)
        if self.directory is not None:
            self._list_in_directory(key)
        old = self._cached.pop(key, 0)
        self._cached_blocks -= old
        self._prompt_refs[group_id] = (1, blocks)

    def release_prompt(self, group_id: int) -> None:
        self.version += 1
        refs, blocks = self._prompt_refs[group_id]
        if refs > 1:
            self._prompt_refs[group_id] = (refs - 1, blocks)
        else:
            del self._prompt_refs[group_id]
            self.release_to_cache(prompt_key(group_id), blocks)

    def prompt_refs(self, group_id: int) -> int:
        return self._prompt_refs.get(group_id, (0, 0))[0]

    def insert_prefix(self, request_id: int, group_id: int, prompt_blocks: int, own_blocks: int) -> None:
        """KV that arrived from elsewhere (the global pool) lands as cached blocks: the
        group's prompt, then the request's own context. What does not fit is dropped
        (the transfer is wasted; the request recomputes that part)."""
        key = prompt_key(group_id)
        if prompt_blocks and self.prompt_blocks_present(group_id) < prompt_blocks:
            if prompt_blocks > self.free_blocks:
                return
            self.allocate(prompt_blocks)  # may evict the partial copy it replaces (it has no dependents)
            self.release_to_cache(key, prompt_blocks)
        if own_blocks > self.cached(request_id):
            self.drop_cached(request_id)
            # it must not evict the prompt it extends
            room = self.blocks_before_eviction_of((key,), own_blocks) if prompt_blocks else self.free_blocks
            if own_blocks > room:
                return
            self.allocate(own_blocks)
            self.release_to_cache(request_id, own_blocks, key if prompt_blocks else None)

    def _unlink(self, key: int) -> None:
        parent = self._parent.pop(key, None)
        if parent is not None:
            siblings = self._children[parent]
            del siblings[key]
            if not siblings:
                del self._children[parent]

    def _evict(self, blocks: int) -> None:
        """Evict `blocks` cached blocks in eviction order (`_eviction_order`: the least
        recently cached entry's dependents first, then the entry; tail blocks first)."""
        cached, children = self._cached, self._children
        while blocks:
            key = next(iter(cached))
            deps = children.get(key)
            if deps:
                key = next(iter(deps))  # an own entry: it has no dependents itself
            held = cached[key]
            take = held if held < blocks else blocks
            self._cached_blocks -= take
            blocks -= take
            if take < held:
                cached[key] = held - take  # keeps its recency: it still holds the entry's head
            else:
                del cached[key]
                self._unlink(key)

    def check(self, idle: bool = False) -> None:
        """Assert the block invariants (used by tests and at the end of a run, when
        `idle`: nothing runs, so no block may still be in use)."""
        assert 0 <= self.used_blocks <= self.total_blocks, (self.used_blocks, self.total_blocks)
        assert self._cached_blocks == sum(self._cached.values())
        self._settle()
        assert self._cached_blocks == sum(self._cached.values())
        assert all(b > 0 for b in self._cached.values())
        assert self.used_blocks + self.cached_blocks <= self.total_blocks
        shared = sum(b for _, b in self._prompt_refs.values())
        assert shared <= self.used_blocks
        for child, parent in self._parent.items():
            # no stranded entry: what an own entry extends is present (cached or in use)
            assert child in self._cached and child in self._children[parent], (child, parent)
            assert parent in self._cached or -1 - parent in self._prompt_refs, (child, parent)
        assert sum(len(c) for c in self._children.values()) == len(self._parent)
        for group in self._prompt_refs:
            assert prompt_key(group) not in self._cached, group
        if idle:
            assert self.used_blocks == 0 and not self._prompt_refs, (self.used_blocks, len(self._prompt_refs))

