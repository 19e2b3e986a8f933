"""HTTPS: SF_TLS_CERT/SF_TLS_KEY make the API node serve TLS (with a `sf tls-cert` pair)."""

from __future__ import annotations

import asyncio
import ssl

import pytest
import tornado.httpclient
import tornado.netutil

from sf.app import make_app
from sf.node.server import serve_node
from sf.node.tls import write_self_signed
from tests.helpers import run_private


def test_api_node_serves_https_with_a_self_signed_pair(base_config, tmp_path):
    cert, key = write_self_signed(tmp_path / "tls", "127.0.0.1")
    assert oct(key.stat().st_mode)[-3:] == "600"
    # No drain to speak of at the stop (a second's wait for quiet otherwise): this is about TLS.
    config = base_config.replace(tls_cert=str(cert), tls_key=str(key), shutdown_grace_seconds=0.1)

    async def scenario() -> None:
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        port = sockets[0].getsockname()[1]
        ready, stop = asyncio.Event(), asyncio.Event()
        node = asyncio.ensure_future(serve_node(config, sockets, make_app, ready=ready.set,
                                                stop_event=stop))
        await asyncio.wait_for(ready.wait(), 15)
        client = tornado.httpclient.AsyncHTTPClient(force_instance=True)
        try:
            response = await client.fetch(f"https://127.0.0.1:{port}/api/users/nobody",
                                          ca_certs=str(cert), raise_error=False)
            assert response.code == 404
            assert "max-age=" in response.headers["Strict-Transport-Security"]
            with pytest.raises(ssl.SSLError):  # an unknown CA is refused: it is real TLS
                await client.fetch(f"https://127.0.0.1:{port}/healthz")
        finally:
            client.close()
            stop.set()
            await asyncio.wait_for(node, 30)

    run_private(scenario())
