"""The shared answer cache (sf/cache.py) against the real Redis: misses computed once per
process, errors not cached, entries read ahead by the request's gate."""

from __future__ import annotations

import asyncio

import pytest

from sf.cache import Cache
from sf.errors import NotFound
from sf.ratelimit import Limit

pytestmark = pytest.mark.gen_test(timeout=30)


async def test_concurrent_misses_of_one_entry_compute_it_once(services):
    cache = Cache(services.redis, ttl=5)
    calls = 0

    async def compute() -> bytes:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)  # a PostgreSQL query in flight while more requests arrive
        return b'{"page": 1}'

    answers = await asyncio.gather(*(cache.get_or_set_in("streams", "k", compute)
                                     for _ in range(20)))
    assert answers == [b'{"page": 1}'] * 20
    assert calls == 1
    assert await cache.get_or_set_in("streams", "k", compute) == b'{"page": 1}'
    assert calls == 1  # and then it is served from Redis


async def test_a_failed_computation_reaches_every_waiter_and_is_not_stored(services):
    cache = Cache(services.redis, ttl=5)
    calls = 0

    async def missing() -> bytes:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        raise NotFound("No such category")

    results = await asyncio.gather(*(cache.get_or_set("user:x", missing) for _ in range(5)),
                                   return_exceptions=True)
    assert calls == 1 and all(isinstance(r, NotFound) for r in results)
    assert await services.redis.get("sf:cache:user:x") is None
    with pytest.raises(NotFound):
        await cache.get_or_set("user:x", missing)
    assert calls == 2  # tried afresh, not answered from a cached failure


async def test_the_gate_reads_ahead_what_the_cache_then_serves(services):
    cache = Cache(services.redis, ttl=5)
    await cache.get_or_set_in("streams", "page", lambda: asyncio.sleep(0, b"cached page"))
    reads = cache.reads("streams", ("page", "other"))
    gate = await services.limiter.hit([Limit("api", "ip-test", 10, 60)], reads)
    assert gate.verdict.allowed and gate.verdict.remaining == 9
    prefetched = cache.prefetched("streams", ("page", "other"), gate.generation, gate.entries)
    assert prefetched is not None and prefetched.values == {"page": b"cached page", "other": None}

    async def never() -> bytes:
        raise AssertionError("a hit read ahead must not be computed")

    assert await cache.get_or_set_in("streams", "page", never, prefetched) == b"cached page"
    # A bump between the gate and the store: the entry goes under the generation read ahead,
    # which readers of the new generation never see.
    await cache.bump("streams")
    assert await cache.get_or_set_in("streams", "other", lambda: asyncio.sleep(0, b"late"),
                                     prefetched) == b"late"
    assert await cache.get_or_set_in("streams", "other",
                                     lambda: asyncio.sleep(0, b"fresh")) == b"fresh"


def test_page_keys_are_remembered_without_merging_filter_sets():
    """StreamService._page_key memoizes per filter set: a remembered key is the one JSON
    gives, whatever the order, and values equal as dict keys (1, 1.0, True) stay apart."""
    from sf.services.streams import StreamService
    key = StreamService._page_key
    first = key({"limit": 20, "category_id": 3, "cursor": None}, False)
    again = key({"cursor": None, "category_id": 3, "limit": 20}, False)
    assert first == again == 'anon:{"category_id": 3, "cursor": null, "limit": 20}'
    assert key({"cursor": "None", "category_id": 3, "limit": 20}, False) != first
    assert key({"limit": 20, "category_id": 3, "cursor": None}, True).startswith("checked:")
    assert len({key({"limit": 1}, False), key({"limit": True}, False),
                key({"limit": 1.0}, False)}) == 3
    assert key({"tags": ["a"]}, False) == 'anon:{"tags": ["a"]}'  # unhashable: not memoized
