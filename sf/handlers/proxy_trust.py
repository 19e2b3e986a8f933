"""Proxy trust: which client address, scheme and request id to believe from a request's
forwarding headers (X-Forwarded-For, X-Forwarded-Proto, X-Request-ID), given the configured
proxy networks. A peer that is not a configured proxy is its own client; its headers are not
believed."""

from __future__ import annotations

import ipaddress
import uuid
from typing import Any

import tornado.httputil


class _Trust:
    """Memoized decisions about one configured tuple of trusted proxy networks (every request
    asks; hashing the tuple of networks for an lru_cache key costs more than the answer)."""

    __slots__ = ("networks", "peers", "forwarded")
    LIMIT = 4096  # memo entries each, forgotten all at once when full

    def __init__(self, networks: tuple[Any, ...]) -> None:
        self.networks = networks
        self.peers: dict[str, bool] = {}
        self.forwarded: dict[tuple[str, str], str] = {}

    def trusts(self, address: str) -> bool:
        known = self.peers.get(address)
        if known is None:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                known = False
            else:
                known = any(ip in network for network in self.networks)
            if len(self.peers) >= self.LIMIT:
                self.peers.clear()
            self.peers[address] = known
        return known

    def forwarded_client(self, remote: str, forwarded: str) -> str:
        """The rightmost untrusted hop of X-Forwarded-For (from a trusted `remote`)."""
        key = (remote, forwarded)
        known = self.forwarded.get(key)
        if known is None:
            known = remote
            hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
            for hop in reversed(hops):
                if not self.trusts(hop):
                    try:
                        known = str(ipaddress.ip_address(hop))
                    except ValueError:
                        pass
                    break
            else:
                known = hops[0] if hops else remote
            if len(self.forwarded) >= self.LIMIT:
                self.forwarded.clear()
            self.forwarded[key] = known
        return known


_TRUSTS: dict[int, _Trust] = {}


def _trust(networks: tuple[Any, ...]) -> _Trust:
    """The memo of a configured tuple, found by identity (it is held, so its id stays its)."""
    trust = _TRUSTS.get(id(networks))
    if trust is None or trust.networks is not networks:
        if len(_TRUSTS) >= 64:
            _TRUSTS.clear()
        trust = _TRUSTS[id(networks)] = _Trust(networks)
    return trust


def is_trusted(address: str, trusted: tuple[Any, ...]) -> bool:
    """Whether `address` is one of the configured proxies."""
    return _trust(trusted).trusts(address)


def client_ip(request: tornado.httputil.HTTPServerRequest, trusted: tuple[Any, ...]) -> str:
    """The client's address: X-Forwarded-For is read right to left, trusted proxies skipped."""
    remote = request.remote_ip or "0.0.0.0"
    trust = _trust(trusted)
    if not trust.trusts(remote):
        return remote
    return trust.forwarded_client(remote, request.headers.get("X-Forwarded-For", ""))


def is_https(request: tornado.httputil.HTTPServerRequest, trusted: tuple[Any, ...]) -> bool:
    """The client reached us over HTTPS: directly, or through a trusted proxy that says so."""
    if request.protocol == "https":
        return True
    return (is_trusted(request.remote_ip or "", trusted)
            and request.headers.get("X-Forwarded-Proto") == "https")


def request_id_for(request: tornado.httputil.HTTPServerRequest, trusted: tuple[Any, ...]) -> str:
    """The id a request is logged and answered under: the one the proxy in front gave it (nginx
    sets $request_id), else a new one. A client's own X-Request-ID is never echoed or logged
    as ours."""
    incoming = (request.headers.get("X-Request-ID", "")
                if is_trusted(request.remote_ip or "", trusted) else "")
    valid = (8 <= len(incoming) <= 64 and incoming.isascii()
             and incoming.replace("-", "").isalnum())
    return incoming if valid else uuid.uuid4().hex
