"""Unit tests of the paged KV-cache block accounting (seersim/engine/kvcache.py)."""

from __future__ import annotations

from collections import OrderedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seersim.engine.kvcache import KVCache, prompt_key


def test_construction():
    kv = KVCache(100, 16)
    assert (kv.total_blocks, kv.block_size, kv.used_blocks, kv.cached_blocks, kv.free_blocks) == (100, 16, 0, 0, 100)
    kv.check()
    with pytest.raises(ValueError):
        KVCache(0, 16)


def test_prompt_key_is_negative_and_distinct():
    assert prompt_key(0) == -1 and prompt_key(5) == -6
    assert len({prompt_key(g) for g in range(100)}) == 100
    assert all(prompt_key(g) < 0 for g in range(100))


def test_allocate_and_release():
    kv = KVCache(10, 16)
    kv.allocate(4)
    assert kv.used_blocks == 4 and kv.free_blocks == 6
    kv.allocate(6)
    assert kv.free_blocks == 0
    kv.release(3)
    assert kv.used_blocks == 7 and kv.free_blocks == 3
    kv.allocate(0)
    kv.release(0)
    assert kv.used_blocks == 7
    kv.check()


@pytest.mark.parametrize("blocks", [11, -1])
def test_over_allocation_raises(blocks):
    kv = KVCache(10, 16)
    with pytest.raises(AssertionError):
        kv.allocate(blocks)
    assert kv.used_blocks == 0


def test_over_allocation_after_partial_use_raises():
    kv = KVCache(10, 16)
    kv.allocate(7)
    with pytest.raises(AssertionError):
        kv.allocate(4)
    assert kv.used_blocks == 7


@pytest.mark.parametrize("blocks", [4, -1])
def test_over_release_raises(blocks):
    kv = KVCache(10, 16)
    kv.allocate(3)
    with pytest.raises(AssertionError):
        kv.release(blocks)
    with pytest.raises(AssertionError):
        kv.release_to_cache(7, blocks)
    assert kv.used_blocks == 3 and kv.cached_blocks == 0


def test_release_to_cache_and_take_cached():
    kv = KVCache(10, 16)
    kv.allocate(5)
    kv.release_to_cache(7, 3)
    assert kv.used_blocks == 2 and kv.cached_blocks == 3
    assert kv.free_blocks == 8, "cached blocks count as free for allocation"
    assert kv.cached(7) == 3 and kv.cached(8) == 0
    kv.check()
    assert kv.take_cached(7) == 3
    assert kv.used_blocks == 5 and kv.cached_blocks == 0 and kv.cached(7) == 0
    assert kv.take_cached(7) == 0, "an entry is taken once"
    assert kv.take_cached(12345) == 0
    kv.check()


def test_release_to_cache_zero_blocks_is_noop():
    kv = KVCache(10, 16)
    kv.allocate(2)
    kv.release_to_cache(1, 0)
    assert kv.cached(1) == 0 and kv.cached_blocks == 0 and kv.used_blocks == 2


def test_release_to_cache_same_key_replaces_entry():
    kv = KVCache(10, 16)
    kv.allocate(6)
    kv.release_to_cache(1, 2)
    kv.release_to_cache(1, 3)
    assert kv.cached(1) == 3
    assert kv.cached_blocks == 3
    assert kv.used_blocks == 1
    kv.check()


def test_drop_cached():
    kv = KVCache(10, 16)
    kv.allocate(4)
    kv.release_to_cache(3, 4)
    kv.drop_cached(3)
    assert kv.cached(3) == 0 and kv.cached_blocks == 0 and kv.used_blocks == 0
    kv.drop_cached(3)  # absent: no-op
    kv.check()


def _filled_lru():
    """10 blocks; cached entries 1, 2, 3 (2 blocks each, 1 oldest); nothing used."""
    kv = KVCache(10, 16)
    kv.allocate(6)
    for key in (1, 2, 3):
        kv.release_to_cache(key, 2)
    assert kv.used_blocks == 0 and kv.cached_blocks == 6
    return kv


def test_lru_eviction_order_on_allocate():
    kv = _filled_lru()
    kv.allocate(4)  # fits in the 4 never-used blocks: nothing evicted
    assert [kv.cached(k) for k in (1, 2, 3)] == [2, 2, 2]
    kv.allocate(1)  # one block beyond: only the oldest entry's tail block goes
    assert [kv.cached(k) for k in (1, 2, 3)] == [1, 2, 2]
    assert kv.cached_blocks == 5 and kv.used_blocks == 5
    kv.allocate(2)  # the rest of entry 1, then the tail of entry 2
    assert [kv.cached(k) for k in (1, 2, 3)] == [0, 1, 2]
    kv.allocate(3)
    assert kv.cached_blocks == 0 and kv.used_blocks == 10
    kv.check()


def test_allocating_one_block_beyond_free_evicts_one_block():
    """The audit's repro: one block beyond free space used to evict a whole 125-block
    group prompt and strand the request entry that depends on it."""
    kv = KVCache(200, 16)
    g, rid = 4, 9
    kv.allocate(125)
    kv.release_to_cache(prompt_key(g), 125)
    kv.allocate(40)
    kv.release_to_cache(rid, 40, parent=prompt_key(g))
    kv.allocate(35)  # fills the never-used blocks
    assert kv.free_blocks == 165 and kv.cached_blocks == 165
    kv.allocate(1)
    assert kv.cached(prompt_key(g)) == 125, "the prompt others depend on stays whole"
    assert kv.cached(rid) == 39, "one tail block of the dependent entry goes"
    assert kv.prefix_blocks(rid, g, 125) == (125, 39), "what is left is still a prefix hit"
    kv.check()


def test_eviction_takes_tail_blocks_and_leaves_a_shorter_prefix():
    kv = KVCache(10, 16)
    g = 2
    kv.allocate(8)
    kv.release_to_cache(prompt_key(g), 8)
    kv.allocate(3)
    assert kv.cached(prompt_key(g)) == 7 and kv.cached_blocks == 7 and kv.used_blocks == 3
    # a partly evicted prompt is a partial hit, and no own entry extends it
    assert kv.prefix_blocks(5, g, 8) == (7, 0)
    kv.check()


def test_dependents_are_evicted_before_their_prompt():
    kv = KVCache(20, 16)
    g = 0
    kv.allocate(4)
    kv.release_to_cache(prompt_key(g), 4)  # oldest
    kv.allocate(2)
    kv.release_to_cache(7, 2)  # unrelated, newer than the prompt
    kv.allocate(3)
    kv.release_to_cache(5, 3, parent=prompt_key(g))  # newest, extends the prompt
    kv.allocate(11)  # all never-used blocks
    # the prompt is least recently cached, but its dependent goes first
    assert kv.blocks_before_eviction_of((5,)) == 0
    assert kv.blocks_before_eviction_of((prompt_key(g),)) == 3
    assert kv.blocks_before_eviction_of((7,)) == 7
    kv.allocate(4)
    assert (kv.cached(5), kv.cached(prompt_key(g)), kv.cached(7)) == (0, 3, 2)
    assert kv.prefix_blocks(5, g, 4) == (3, 0)
    kv.check()


def test_a_dependent_older_than_its_prompt_is_evicted_once():
    """An own entry cached before its prompt was last re-cached (the prompt's last
    holder finished later) comes first in LRU order already."""
    kv = KVCache(12, 16)
    g = 0
    kv.allocate(10)
    kv.share_prompt(g, 4)
    kv.release_to_cache(3, 2, parent=prompt_key(g))  # sibling 3 finished first
    kv.release_prompt(g)  # the last holder finished: the prompt is cached after it
    kv.release_to_cache(7, 2)
    assert list(kv._eviction_order()) == [(3, 2), (prompt_key(g), 4), (7, 2)]
    kv.allocate(kv.free_blocks)
    assert kv.cached_blocks == 0
    kv.check()


def test_evicting_a_prompt_never_strands_its_dependents():
    kv = KVCache(10, 16)
    g, rid = 0, 5
    kv.allocate(4)
    kv.release_to_cache(prompt_key(g), 4)  # oldest
    kv.allocate(2)
    kv.release_to_cache(rid, 2, parent=prompt_key(g))
    assert kv.prefix_blocks(rid, g, 4) == (4, 2)
    kv.allocate(5)  # 4 never-used blocks + 1: the dependent's tail goes, not the prompt
    assert kv.prefix_blocks(rid, g, 4) == (4, 1)
    kv.allocate(2)  # the dependent's last block, then the prompt's tail
    assert kv.prefix_blocks(rid, g, 4) == (3, 0) and kv.cached(rid) == 0
    kv.check()


def test_drop_cached_drops_the_dependents_it_would_strand():
    kv = KVCache(10, 16)
    kv.allocate(6)
    kv.release_to_cache(prompt_key(1), 4)
    kv.release_to_cache(3, 2, parent=prompt_key(1))
    kv.drop_cached(prompt_key(1))
    assert kv.cached_blocks == 0 and kv.cached(3) == 0
    kv.check()


def test_insert_prefix():
    kv = KVCache(20, 16)
    g, rid = 1, 6
    kv.insert_prefix(rid, g, 4, 3)
    assert kv.prefix_blocks(rid, g, 4) == (4, 3) and kv.used_blocks == 0
    kv.insert_prefix(rid, g, 4, 2)  # shorter than what is cached: nothing changes
    assert kv.prefix_blocks(rid, g, 4) == (4, 3)
    kv.allocate(14)  # evicts one own block
    assert kv.prefix_blocks(rid, g, 4) == (4, 2)
    kv.release(14)
    kv.insert_prefix(rid, g, 4, 5)
    assert kv.prefix_blocks(rid, g, 4) == (4, 5)
    # a partly evicted prompt is topped up
    kv.allocate(20)
    kv.release(20)
    kv.allocate(18)
    kv.release_to_cache(prompt_key(g), 2)
    kv.release(16)
    kv.insert_prefix(rid, g, 4, 0)
    assert kv.cached(prompt_key(g)) == 4
    # no room: nothing lands
    kv.allocate(kv.free_blocks)
    kv.insert_prefix(99, 7, 3, 1)
    assert kv.cached(prompt_key(7)) == 0 and kv.cached(99) == 0
    kv.check()


def test_recaching_refreshes_recency():
    kv = _filled_lru()
    # take 1 back and cache it again: it becomes the most recent, so 2 is evicted first
    kv.take_cached(1)
    kv.release_to_cache(1, 2)
    kv.allocate(6)
    assert kv.cached(2) == 0 and kv.cached(1) == 2 and kv.cached(3) == 2


def test_blocks_before_eviction_of():
    kv = _filled_lru()
    assert kv.blocks_before_eviction_of((1,)) == 4
    assert kv.blocks_before_eviction_of((2,)) == 6
    assert kv.blocks_before_eviction_of((3,)) == 8
    assert kv.blocks_before_eviction_of((3, 2)) == 6
    assert kv.blocks_before_eviction_of((99,)) == kv.free_blocks == 10
    # told how many it must fit, the walk stops once they do (4 uncached, then 1's 2 blocks, ...)
    assert kv.blocks_before_eviction_of((3,), enough=4) == 4
    assert kv.blocks_before_eviction_of((3,), enough=5) == 6
    assert kv.blocks_before_eviction_of((3,), enough=7) == 8
    assert kv.blocks_before_eviction_of((3,), enough=9) == 8, "short of enough: the exact answer"
    assert kv.blocks_before_eviction_of((99,), enough=11) == kv.free_blocks
    # exactly that many blocks keep the entry; one more evicts it
    kv.allocate(kv.blocks_before_eviction_of((2,)))
    assert kv.cached(2) == 2
    kv.allocate(1)
    assert kv.cached(2) == 1
    kv = _filled_lru()
    kv.allocate(5)  # one block of entry 1 is evicted lazily
    assert kv.blocks_before_eviction_of((3,), enough=1) == 1
    assert kv.blocks_before_eviction_of((3,)) == 3


def test_shared_prompt_refcounting():
    kv = KVCache(20, 16)
    g = 3
    assert kv.prompt_blocks_present(g) == 0 and kv.prompt_refs(g) == 0
    assert kv.acquire_prompt(g) is False, "nothing to acquire yet"
    kv.allocate(4)  # the first sibling computes the prompt ...
    kv.share_prompt(g, 4)  # ... and publishes it
    assert kv.prompt_blocks_present(g) == 4 and kv.prompt_refs(g) == 1
    assert kv.acquire_prompt(g) is True
    assert kv.acquire_prompt(g) is True
    assert kv.prompt_refs(g) == 3
    assert kv.used_blocks == 4, "siblings share the blocks, they do not copy them"
    kv.check()
    kv.release_prompt(g)
    kv.release_prompt(g)
    assert kv.prompt_refs(g) == 1 and kv.used_blocks == 4 and kv.cached_blocks == 0
    kv.release_prompt(g)  # last holder: the prompt becomes a cached entry
    assert kv.prompt_refs(g) == 0
    assert kv.used_blocks == 0 and kv.cached(prompt_key(g)) == 4
    assert kv.prompt_blocks_present(g) == 4
    kv.check()
    # a later sibling hits it: the cached blocks become used again, refcount 1
    assert kv.acquire_prompt(g) is True
    assert kv.prompt_refs(g) == 1 and kv.used_blocks == 4 and kv.cached_blocks == 0
    kv.check()


def test_sharing_a_prompt_in_use_is_rejected():
    kv = KVCache(20, 16)
    kv.allocate(8)
    kv.share_prompt(1, 4)
    with pytest.raises(AssertionError):
        kv.share_prompt(1, 4)


def test_sharing_replaces_a_cached_copy_and_keeps_its_dependents():
    kv = KVCache(20, 16)
    kv.allocate(6)
    kv.release_to_cache(prompt_key(1), 4)
    kv.release_to_cache(8, 2, parent=prompt_key(1))
    kv.allocate(4)  # a sibling computed the prompt itself ...
    kv.share_prompt(1, 4)  # ... and shares it: the cached duplicate is freed
    assert kv.cached(prompt_key(1)) == 0 and kv.used_blocks == 4
    assert kv.prefix_blocks(8, 1, 4) == (4, 2), "the dependent now extends the shared copy"
    kv.check()


def test_release_prompt_of_unknown_group_raises():
    kv = KVCache(20, 16)
    with pytest.raises(KeyError):
        kv.release_prompt(9)


def test_in_use_prompt_is_not_evictable():
    kv = KVCache(10, 16)
    kv.allocate(4)
    kv.share_prompt(0, 4)
    kv.allocate(6)
    assert kv.free_blocks == 0
    with pytest.raises(AssertionError):
        kv.allocate(1)
    assert kv.prompt_refs(0) == 1


def test_prefix_semantics():
    kv = KVCache(40, 16)
    g, rid = 2, 17
    # the request's own context beyond the prompt is cached, but its group's prompt is not
    kv.allocate(3)
    kv.release_to_cache(rid, 3)
    assert kv.prefix_blocks(rid, g, prompt_blocks=4) == (0, 0), "own entry unusable without the prompt"
    # with the prompt cached both are hit
    kv.allocate(4)
    kv.release_to_cache(prompt_key(g), 4)
    assert kv.prefix_blocks(rid, g, prompt_blocks=4) == (4, 3)
    # another request of the group hits only the prompt
    assert kv.prefix_blocks(99, g, prompt_blocks=4) == (4, 0)
    # a prompt in use (shared) counts as present too
    kv.acquire_prompt(g)
    assert kv.prefix_blocks(rid, g, prompt_blocks=4) == (4, 3)
    kv.release_prompt(g)
    # a prompt shorter than one block (0 full blocks) needs no prompt entry
    assert kv.prefix_blocks(rid, 7, prompt_blocks=0) == (0, 3)
    kv.check()


def test_eviction_is_applied_lazily_and_exactly():
    """An allocation evicts when the entries are next read; two allocations evict as one would."""
    kv = KVCache(10, 16)
    kv.allocate(6)
    kv.release_to_cache(1, 3)
    kv.release_to_cache(2, 3)
    kv.allocate(7)  # 4 uncached free blocks, then the 3 of entry 1 (least recently cached)
    assert kv.cached_blocks == 3 and kv._cached_blocks == 6  # counted, not yet applied
    kv.allocate(1)  # and one of entry 2
    assert kv.cached_blocks == 2
    assert kv.cached(1) == 0 and kv.cached(2) == 2 and kv._cached_blocks == 2
    kv.check()


def test_check_detects_broken_invariants():
    kv = KVCache(10, 16)
    kv.allocate(3)
    kv.release_to_cache(1, 2)
    kv.check()
    kv._cached_blocks += 1  # bookkeeping out of sync with the entries
    with pytest.raises(AssertionError):
        kv.check()
    kv._cached_blocks -= 1
    kv.used_blocks = 11
    with pytest.raises(AssertionError):
        kv.check()
    kv.used_blocks = 1
    kv._prompt_refs[4] = (1, 5)  # a shared prompt larger than what is used
    with pytest.raises(AssertionError):
        kv.check()


# --------------------------------------------------------------------------- random operations vs a model
# keys 0..5 are own entries extending group (key % 2)'s prompt when it is cached; -1, -2 are prompts
OPS = st.lists(
    st.tuples(st.sampled_from(["alloc", "release", "cache", "take", "drop"]), st.integers(-2, 5), st.integers(0, 12)),
    max_size=80,
)


def _reference_evict_one(cache: OrderedDict, parent: dict) -> None:
    """One block, by the rule stated plainly: the least recently cached entry's tail,
    unless entries extending it are cached: then theirs first (least recent first)."""
    victim = next(iter(cache))
    kids = [k for k in cache if parent.get(k) == victim]
    if kids:
        victim = kids[0]
    cache[victim] -= 1
    if not cache[victim]:
        del cache[victim]
        parent.pop(victim, None)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(total=st.integers(1, 40), ops=OPS)
def test_random_operations_match_a_reference_lru(total, ops):
    kv = KVCache(total, 16)
    used = 0
    cache: OrderedDict[int, int] = OrderedDict()
    parent: dict[int, int] = {}
    for op, key, n in ops:
        if op == "alloc":
            if n > total - used:
                with pytest.raises(AssertionError):
                    kv.allocate(n)
                continue
            rooms = {k: kv.blocks_before_eviction_of((k,)) for k in cache}
            pairs = [(k, prompt_key(k % 2)) for k in range(6)]  # (an own entry, its prompt): a lookup's keys
            # (stopping the walk once n fit: evicting iff more than that many are needed)
            evicts = {keys: n > kv.blocks_before_eviction_of(keys, n) for keys in [(k,) for k in cache] + pairs}
            blocks_before = dict(cache)
            kv.allocate(n)
            used += n
            while used + sum(cache.values()) > total:
                _reference_evict_one(cache, parent)
            for k, room in rooms.items():  # the stretch limit is exact: untouched iff n <= room
                assert (cache.get(k, 0) == blocks_before[k]) == (n <= room), (k, n, room)
            for keys, hit in evicts.items():  # a lookup may skip settling exactly when none is touched
                touched = any(cache.get(k, 0) != blocks_before.get(k, 0) for k in keys)
                assert hit == touched, (keys, n, hit)
        elif op == "release":
            n = min(n, used)
            kv.release(n)
            used -= n
        elif op == "cache":
            n = min(n, used)
            p = prompt_key(key % 2) if key >= 0 and prompt_key(key % 2) in cache else None
            if key < 0 and n < cache.get(key, 0):
                continue  # the engine re-caches a prompt only with a copy at least as long
            kv.release_to_cache(key, n, p)
            used -= n
            if n:
                cache.pop(key, None)
                parent.pop(key, None)
                cache[key] = n
                if p is not None:
                    parent[key] = p
        elif op == "take":
            if key < 0:
                continue  # prompts are taken whole into use by acquire_prompt (tested above)
            got = kv.take_cached(key)
            assert got == cache.pop(key, 0)
            parent.pop(key, None)
            used += got
        else:
            kv.drop_cached(key)
            for k in [k for k in cache if parent.get(k) == key]:
                del cache[k]
                del parent[k]
            cache.pop(key, None)
            parent.pop(key, None)
        kv.check()
        assert kv.used_blocks == used
        assert kv.cached_blocks == sum(cache.values())
        assert kv.free_blocks == total - used
        assert all(kv.cached(k) == v for k, v in cache.items())
