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
    kv.allocate(1)  # now an eviction is needed: the least recently cached goes
    assert [kv.cached(k) for k in (1, 2, 3)] == [0, 2, 2]
    assert kv.cached_blocks == 4 and kv.used_blocks == 5
    kv.allocate(2)
    assert [kv.cached(k) for k in (1, 2, 3)] == [0, 0, 2]
    kv.allocate(3)
    assert kv.cached_blocks == 0 and kv.used_blocks == 10
    kv.check()


def test_recaching_refreshes_recency():
    kv = _filled_lru()
    # take 1 back and cache it again: it becomes the most recent, so 2 is evicted first
    kv.take_cached(1)
    kv.release_to_cache(1, 2)
    kv.allocate(5)
    assert kv.cached(2) == 0 and kv.cached(1) == 2 and kv.cached(3) == 2


def test_eviction_of_a_large_entry_frees_it_whole():
    kv = KVCache(10, 16)
    kv.allocate(8)
    kv.release_to_cache(1, 8)
    kv.allocate(3)
    assert kv.cached(1) == 0 and kv.cached_blocks == 0 and kv.used_blocks == 3


def test_blocks_before_eviction_of():
    kv = _filled_lru()
    assert kv.blocks_before_eviction_of((1,)) == 4
    assert kv.blocks_before_eviction_of((2,)) == 6
    assert kv.blocks_before_eviction_of((3,)) == 8
    assert kv.blocks_before_eviction_of((3, 2)) == 6
    assert kv.blocks_before_eviction_of((99,)) == kv.free_blocks == 10
    # exactly that many blocks keep the entry; one more evicts it
    kv.allocate(kv.blocks_before_eviction_of((2,)))
    assert kv.cached(2) == 2
    kv.allocate(1)
    assert kv.cached(2) == 0


def test_shared_prompt_refcounting():
    kv = KVCache(20, 16)
    g = 3
    assert not kv.prompt_present(g) and kv.prompt_refs(g) == 0
    assert kv.acquire_prompt(g) is False, "nothing to acquire yet"
    kv.allocate(4)  # the first sibling computes the prompt ...
    kv.share_prompt(g, 4)  # ... and publishes it
    assert kv.prompt_present(g) and kv.prompt_refs(g) == 1
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
    assert kv.prompt_present(g)
    kv.check()
    # a later sibling hits it: the cached blocks become used again, refcount 1
    assert kv.acquire_prompt(g) is True
    assert kv.prompt_refs(g) == 1 and kv.used_blocks == 4 and kv.cached_blocks == 0
    kv.check()


def test_sharing_a_present_prompt_is_rejected():
    kv = KVCache(20, 16)
    kv.allocate(8)
    kv.share_prompt(1, 4)
    with pytest.raises(AssertionError):
        kv.share_prompt(1, 4)


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


def test_evicted_prompt_makes_own_entry_unusable():
    kv = KVCache(10, 16)
    g, rid = 0, 5
    kv.allocate(4)
    kv.release_to_cache(prompt_key(g), 4)  # oldest
    kv.allocate(2)
    kv.release_to_cache(rid, 2)
    assert kv.prefix_blocks(rid, g, 4) == (4, 2)
    kv.allocate(5)  # evicts the prompt (LRU) but not the own entry
    assert not kv.prompt_present(g)
    assert kv.cached(rid) == 2
    assert kv.prefix_blocks(rid, g, 4) == (0, 0)


def test_check_detects_broken_invariants():
    kv = KVCache(10, 16)
    kv.allocate(3)
    kv.release_to_cache(1, 2)
    kv.check()
    kv.cached_blocks += 1  # bookkeeping out of sync with the entries
    with pytest.raises(AssertionError):
        kv.check()
    kv.cached_blocks -= 1
    kv.used_blocks = 11
    with pytest.raises(AssertionError):
        kv.check()
    kv.used_blocks = 9  # used + cached > total
    with pytest.raises(AssertionError):
        kv.check()
    kv.used_blocks = 1
    kv._prompt_refs[4] = (1, 5)  # a shared prompt larger than what is used
    with pytest.raises(AssertionError):
        kv.check()


# --------------------------------------------------------------------------- random operations vs a model
OPS = st.lists(
    st.tuples(st.sampled_from(["alloc", "release", "cache", "take", "drop"]), st.integers(0, 6), st.integers(0, 12)),
    max_size=80,
)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(total=st.integers(1, 40), ops=OPS)
def test_random_operations_match_a_reference_lru(total, ops):
    kv = KVCache(total, 16)
    used = 0
    cache: OrderedDict[int, int] = OrderedDict()
    for op, key, n in ops:
        if op == "alloc":
            if n > total - used:
                with pytest.raises(AssertionError):
                    kv.allocate(n)
                continue
            kv.allocate(n)
            used += n
            while used + sum(cache.values()) > total:
                cache.popitem(last=False)
        elif op == "release":
            n = min(n, used)
            kv.release(n)
            used -= n
        elif op == "cache":
            n = min(n, used)
            kv.release_to_cache(key, n)
            used -= n
            if n:
                cache.pop(key, None)
                cache[key] = n
        elif op == "take":
            got = kv.take_cached(key)
            assert got == cache.pop(key, 0)
            used += got
        else:
            kv.drop_cached(key)
            cache.pop(key, None)
        kv.check()
        assert kv.used_blocks == used
        assert kv.cached_blocks == sum(cache.values())
        assert kv.free_blocks == total - used
        assert all(kv.cached(k) == v for k, v in cache.items())
