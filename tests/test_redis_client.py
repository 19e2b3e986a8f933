"""SF_REDIS_URL naming a Sentinel group (sf/redis_client.py), against real redis-server and
redis-sentinel processes (harness/sentinel.py): the URL's forms and mistakes, and the clients
of a node's services (commands, the gate's pipelined script, pub/sub) following a failover."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest
import redis
import redis.exceptions

from harness.ports import reserve_port
from harness.sentinel import SERVICE, SentinelGroup
from sf.config import ConfigError, load_config
from sf.node.tls import write_self_signed
from sf.redis_client import parse_sentinel_url, service_client, watch_primary
from sf.redis_pipeline import PipelinedScript

INCR = "return redis.call('INCR', KEYS[1])"


def test_a_sentinel_url_names_sentinels_service_database_and_credentials():
    target = parse_sentinel_url(
        "redis+sentinel://sf%3Aapp:p%40ss@10.0.0.1:26379,[fd00::2]:26380,sentinel-3/cache/4"
        "?sentinel_password=s%26cret&sentinel_username=watch")
    assert target.sentinels == (("10.0.0.1", 26379), ("fd00::2", 26380), ("sentinel-3", 26379))
    assert (target.service, target.db) == ("cache", 4)
    assert (target.username, target.password) == ("sf:app", "p@ss")
    assert (target.sentinel_username, target.sentinel_password) == ("watch", "s&cret")
    assert target.ssl is False
    assert parse_sentinel_url("redis+sentinel://h1/mymaster").db == 0
    tls = parse_sentinel_url("rediss+sentinel://h1:1,h2:2/m/0?ssl_cert_reqs=required"
                             "&ssl_ca_certs=/etc/ca.pem&ssl_check_hostname=true")
    assert tls.ssl and tls.server_options()["ssl"] and tls.sentinel_options()["ssl"]
    assert tls.ssl_options == {"ssl_cert_reqs": "required", "ssl_ca_certs": "/etc/ca.pem",
                               "ssl_check_hostname": True}


@pytest.mark.parametrize(("url", "problem"), [
    ("redis+sentinel://h1:26379,h2:port/m/0", "the port is not a number"),
    ("redis+sentinel://h1:70000/m/0", "no such port"),
    ("redis+sentinel://h1,,h2/m/0", "names no host"),
    ("redis+sentinel://h1/", "the path must be /<service name>[/<db>]"),
    ("redis+sentinel://h1/m/0/extra", "the path must be"),
    ("redis+sentinel://h1/m/zero", "is not a number"),
    ("redis+sentinel://h1/m/0?socket_timeout=1", "unknown option 'socket_timeout'"),
    ("redis+sentinel://h1/m/0?ssl_cert_reqs=none", "ssl_* options need rediss+sentinel://"),
    ("redis+sentinel://h1//0", "the path must be /<service name>[/<db>]"),  # no service
    ("redis+sentinel://h1/m/0?sentinel_password=a&sentinel_password=b", "given twice"),
    ("redis+sentinel://[::1:26379/m/0", "expected a"),  # an unclosed IPv6 address
    ("redis+sentinel://:26379,h2:26379/m/0", "expected a"),  # no first host (an unset ${H1})
    ("redis://:6379/0", "expected a"),
    ("redis://127.0.0.1:6379,h2:6379/0", "expected a"),  # a list is not one server's URL
])
def test_a_wrong_redis_url_stops_the_start_with_what_is_wrong(url, problem, monkeypatch):
    monkeypatch.setenv("SF_REDIS_URL", url.replace("//", "//:secretpass@", 1) + (
        "&" if "?" in url else "?") + "sentinel_password=sentinelsecret")
    with pytest.raises(ConfigError) as raised:
        load_config()
    assert problem in str(raised.value)
    # The URL's passwords are not echoed (the message lands in journals and pod events).
    assert "secretpass" not in str(raised.value)
    assert "sentinelsecret" not in str(raised.value)


def test_a_unix_socket_redis_url_is_taken(monkeypatch):
    monkeypatch.setenv("SF_REDIS_URL", "unix:///run/redis/redis.sock?db=2")
    assert load_config().redis_url == "unix:///run/redis/redis.sock?db=2"


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    started = SentinelGroup(tmp_path_factory.mktemp("sentinel")).start()
    yield started
    started.stop()


@pytest.mark.platform  # redis-server and redis-sentinel processes of its own
def test_a_demoted_primary_answers_readonly_and_the_gate_takes_it_for_a_lost_connection(group):
    """The gate's pipelined connection turns READONLY (a primary demoted under it) into a
    connection error, as redis-py's Sentinel connections do: the gate's outage path, never a
    verdict from a script that could not count."""
    replica = next(port for port in group.server_ports if port != group.primary())

    async def scenario() -> None:
        client = service_client(f"redis://:{group.password}@127.0.0.1:{replica}/0")
        script = PipelinedScript(client, INCR)
        try:
            with pytest.raises(redis.exceptions.ConnectionError, match="replica now"):
                await script(["sf:test:readonly"], [])
        finally:
            script.close()
            await client.aclose()

    asyncio.run(scenario())


@pytest.mark.platform  # redis-server and redis-sentinel processes of its own
def test_services_status_says_which_primary_each_sentinel_names(group):
    """`sf services status` with a Sentinel URL: no local Redis, the sentinels' view instead."""
    sentinels = ",".join(f"127.0.0.1:{port}" for port in [*group.sentinel_ports, reserve_port()])
    url = (f"redis+sentinel://:{group.password}@{sentinels}/{SERVICE}/0"
           f"?sentinel_password={group.sentinel_password}")
    result = subprocess.run([sys.executable, "-m", "sf.app", "services", "status"],
                            env={**os.environ, "SF_REDIS_URL": url}, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("redis:"))
    primary = group.primary()
    assert line.count(f"names 127.0.0.1:{primary}") == 3, line
    assert "ConnectionError" in line  # the fourth, where nothing listens
    assert group.password not in result.stdout + result.stderr


@pytest.mark.platform  # redis-server and redis-sentinel processes of its own
def test_clients_follow_a_failover_of_the_group(group):
    """A coordinated failover (`SENTINEL FAILOVER`: the primary demoted while connected, not
    killed): the services' client, the gate's script and a pub/sub subscriber all continue on
    the new primary, and nothing written before is lost."""

    async def scenario() -> None:
        client = service_client(group.url(2))
        script = PipelinedScript(client, INCR)
        watch = watch_primary(client, [script.close])  # as the services wire it
        assert watch is not None
        received: list[bytes] = []
        subscribed = asyncio.Event()

        async def subscriber() -> None:  # the loop shape of EventBus / ViewerHub / ChatService
            while True:
                try:
                    async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                        await pubsub.subscribe("sf:test:events")
                        subscribed.set()
                        async for message in pubsub.listen():
                            received.append(message["data"])
                except redis.exceptions.ConnectionError:
                    subscribed.clear()
                    await asyncio.sleep(0.2)

        listener = asyncio.ensure_future(subscriber())
        try:
            await client.set("sf:test:before", "kept")
            assert await script(["sf:test:count"], []) == 1
            await asyncio.wait_for(subscribed.wait(), 5)
            old = group.primary()
            await asyncio.to_thread(_failover, group)
            new, _ = await asyncio.to_thread(group.wait_failover, old)
            assert new != old
            # Within a few seconds (the watch looks every second) commands and the script
            # land on the new primary, not on the old one, which stayed up as a primary for a
            # while: what is written there is lost when it becomes a replica.
            deadline, attempt, landed = time.monotonic() + 10, 0, False
            with group.client(new, db=2) as direct:
                while time.monotonic() < deadline and not landed:
                    attempt += 1
                    try:
                        await script(["sf:test:count"], [])
                        await client.set("sf:test:after", attempt)
                        landed = direct.get("sf:test:after") == str(attempt).encode()
                    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                            OSError):
                        pass
                    await asyncio.sleep(0.1)
                assert landed, "the clients stayed on the old primary"
                assert direct.get("sf:test:before") == b"kept"
                assert int(direct.get("sf:test:count")) >= 2  # went on from the replicated 1
            # The subscriber is back on the new primary: a message published now reaches it.
            for _ in range(100):
                if subscribed.is_set():
                    await client.publish("sf:test:events", "after")
                    if b"after" in received:
                        break
                await asyncio.sleep(0.1)
            assert b"after" in received
            print(f"writes on the new primary after {attempt} attempt(s)")
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            await watch.stop()
            script.close()
            await client.aclose()

    asyncio.run(scenario())


@pytest.mark.platform  # redis-server and redis-sentinel processes of its own
def test_a_sentinel_with_another_view_listed_first_is_outvoted(group):
    """A sentinel that names another server as the primary (monitoring something else under
    the same name, or one the failovers passed by) and answers first does not get SF's
    connections: the primary is the one most sentinels name with the newest epoch."""
    decoy, stray = reserve_port(), reserve_port()
    group.start_server(decoy)
    group.start_sentinel(stray, decoy)  # it watches the decoy, alone
    sentinels = ",".join(f"127.0.0.1:{port}" for port in [stray, *group.sentinel_ports])
    url = (f"redis+sentinel://:{group.password}@{sentinels}/{SERVICE}/3"
           f"?sentinel_password={group.sentinel_password}")

    async def scenario() -> None:
        client = service_client(url)
        try:
            await client.set("sf:test:voted", "here")
        finally:
            await client.aclose()

    try:
        asyncio.run(scenario())
        with group.client(group.primary(), db=3) as primary:
            assert primary.get("sf:test:voted") == b"here"
        with group.client(decoy, db=3) as other:
            assert other.get("sf:test:voted") is None
    finally:
        for port in (stray, decoy):
            group.processes.pop(port).kill()


def _failover(group: SentinelGroup) -> None:
    with group.connect(group.sentinel_ports[0], group.sentinel_password,
                       socket_timeout=5) as sentinel:
        sentinel.execute_command("SENTINEL", "FAILOVER", SERVICE)


@pytest.mark.platform  # redis-server and redis-sentinel processes of its own
def test_a_tls_sentinel_group_is_followed_over_tls(tmp_path):
    """rediss+sentinel://: TLS to the sentinels and to the servers (they listen on TLS ports
    only), the certificate checked against ?ssl_ca_certs=; a killed primary is followed."""
    cert, key = write_self_signed(tmp_path / "tls", "127.0.0.1")
    group = SentinelGroup(tmp_path / "redis", tls=(cert, key)).start()

    async def scenario() -> None:
        client = service_client(group.url(0))
        script = PipelinedScript(client, INCR)  # redis-py's connections for TLS
        try:
            await client.set("sf:test:tls", "kept")
            assert await script(["sf:test:tls-count"], []) == 1
            old = group.kill_primary()
            new, _ = await asyncio.to_thread(group.wait_failover, old)
            deadline, count = time.monotonic() + 15, None
            while count is None and time.monotonic() < deadline:
                try:
                    count = await script(["sf:test:tls-count"], [])
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                        OSError):
                    await asyncio.sleep(0.1)
            assert count == 2
            assert await client.get("sf:test:tls") == b"kept"
            with group.client(new) as direct:
                assert direct.get("sf:test:tls-count") == b"2"
        finally:
            script.close()
            await client.aclose()

    try:
        asyncio.run(scenario())
        # Plain text is not spoken: the sentinels' port refuses a client without TLS.
        with redis.Redis(port=group.sentinel_ports[0], password=group.sentinel_password,
                         socket_timeout=2) as plain, pytest.raises(redis.exceptions.RedisError):
            plain.ping()
    finally:
        group.stop()
