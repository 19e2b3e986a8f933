"""The node's garbage-collection policy (sf/node/gcpolicy.py): freezing survivors is safe only
if closed viewer connections are freed by reference counting, without the collector."""

from __future__ import annotations

import asyncio
import gc
import json
import weakref
from typing import Any

import pytest
import tornado.httpclient
import tornado.websocket

from sf.node.gcpolicy import GcPolicy


async def _prepared_stream(api: Any) -> int:
    user = await api.register("gcstreamer")
    response = await api.post("/api/streams", {"title": "gc"}, token=user["access_token"])
    assert response.status == 201, response
    return response.json["id"]  # type: ignore[no-any-return]


@pytest.mark.gen_test(timeout=30)
async def test_closed_viewer_sockets_are_freed_without_the_collector(api, services, base_url):
    stream_id = await _prepared_stream(api)
    url = base_url.replace("http://", "ws://") + f"/ws/streams/{stream_id}/viewers"
    clients = []
    await services.viewers.start()  # the flush loop that sends each viewer its first total
    gc.collect()
    gc.disable()  # from here on only reference counting frees anything
    try:
        for _ in range(20):
            request = tornado.httpclient.HTTPRequest(url)  # no Origin: not a browser
            clients.append(await tornado.websocket.websocket_connect(request))
        for client in clients:
            assert json_type(await client.read_message()) == "viewers"
        handlers = [weakref.ref(socket) for socket in services.viewers.sockets[stream_id]]
        assert len(handlers) == 20
        for client in clients:
            client.close()
        clients.clear()
        for _ in range(100):
            await asyncio.sleep(0.02)
            if all(ref() is None for ref in handlers):
                break
        alive = [ref() for ref in handlers if ref() is not None]
        assert not alive, f"{len(alive)} of 20 closed viewer handlers need the collector"
    finally:
        gc.enable()
        await services.viewers.stop()


def json_type(message: Any) -> str:
    return json.loads(message)["type"]  # type: ignore[no-any-return]


def test_policy_freezes_survivors_and_collects_fully_when_due():
    gc.unfreeze()
    policy = GcPolicy(full_every=100)
    survivor = [object() for _ in range(1000)]
    policy.step(now=policy._last_full + 1)  # not due: only a freeze
    assert gc.get_freeze_count() >= 1000

    class Cycle:
        pass

    garbage = Cycle()
    garbage.self = garbage  # type: ignore[attr-defined]
    ref = weakref.ref(garbage)
    gc.freeze()
    del garbage
    gc.collect()
    assert ref() is not None  # frozen cyclic garbage survives ordinary collections...
    # Past due, not exactly due: (t + 100) - t can come out just under 100 in floating point.
    policy.step(now=policy._last_full + 101)
    assert ref() is None      # ...until the full pass
    assert gc.get_freeze_count() >= 1000  # and survivors are frozen again
    gc.unfreeze()
    del survivor


def test_policy_with_no_full_pass_only_freezes():
    gc.unfreeze()
    policy = GcPolicy(full_every=0)
    policy.step(now=policy._last_full + 10**9)
    assert gc.get_freeze_count() > 0
    gc.unfreeze()
