"""Requests SF makes to addresses its users chose (webhooks, Web Push endpoints): never to a
private, loopback, link-local or otherwise non-public address (SSRF).

The check is made on the addresses a name resolves to at send time, by the resolver of the
aiohttp session that then connects to exactly those addresses (no second lookup a DNS
rebinding could answer differently), and on IP literals in the URL, which aiohttp connects to
without resolving. Every form an address can be written in ends up as an `ipaddress` value
first: decimal (`2130706433`), octal or hexadecimal parts (`0x7f.1`: resolved by the C
library), IPv6 (`[::1]`), IPv4 mapped into IPv6 (`[::ffff:127.0.0.1]`), 6to4 and Teredo.
Redirects are never followed, nothing comes from the environment (proxies), time is short
and response bodies are read up to a cap only (`read_capped`).

Names are resolved with c-ares (aiodns, through aiohttp's `AsyncResolver`), never in the
loop's thread pool: a name whose DNS server stalls costs a pending query, not one of a handful
of threads every other lookup of the process waits for (security.md#webhook-slow-dns).
`vet` is the check made when a user names a URL (a webhook, a push endpoint): the same rules,
and the name resolved now, within RESOLVE_TIMEOUT; one answer for every name that is not
public — internal, unknown or too slow — so the check tells nobody which internal names exist.

`SF_OUTBOUND_ALLOWED_NETWORKS` lets an operator (or the tests' local receivers) reach named
networks anyway; empty by default.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import AsyncResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

RESPONSE_CAP_BYTES = 64 * 1024
RESOLVE_TIMEOUT = 2.0  # seconds a name may take to resolve when a user names it (`vet`)
NOT_PUBLIC = "must name a public address (names must resolve to one now)"
NUMERIC_HOST = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+))*", re.IGNORECASE)
USER_AGENT = "SF-Webhooks/1 (+https://github.com/sf)"


class BlockedAddress(aiohttp.ClientError):
    """The URL names, or resolves to, an address SF does not send to."""


def embedded_addresses(address: IPAddress) -> list[IPAddress]:
    """The address and any IPv4 address carried inside an IPv6 one (mapped, 6to4, Teredo)."""
    found: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        for inner in (address.ipv4_mapped, address.sixtofour):
            if inner is not None:
                found.append(inner)
        if address.teredo is not None:
            found.extend(address.teredo)
    return found


def is_public(address: IPAddress, allowed: Iterable[IPNetwork] = ()) -> bool:
    """True for an address on the public Internet (or in an allowed network)."""
    allowed = tuple(allowed)
    if any(address in network for network in allowed):
        return True
    return all(inner.is_global and not inner.is_multicast and not inner.is_reserved
               and not inner.is_private and not inner.is_loopback and not inner.is_link_local
               and not inner.is_unspecified
               for inner in embedded_addresses(address))


def literal_address(host: str) -> IPAddress | None:
    """The host as an IP address when it is written as one ([v6] or dotted IPv4), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def check_url(url: str, allowed: Iterable[IPNetwork] = (), *,
              schemes: tuple[str, ...] = ("https", "http")) -> str:
    """`url` when SF may send to it as written (scheme, no credentials, a host, and no
    literal non-public address); raises BlockedAddress (for a literal) or ValueError. Names
    are checked again, resolved, when a request is made."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if parts.scheme not in schemes:
        raise ValueError(f"must be an {' or '.join(schemes)} URL")
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise ValueError("must name a host and no credentials")
    if port == 0 or any(char in url for char in "\r\n\t \\"):
        raise ValueError("is not a valid URL")
    address = literal_address(parts.hostname)
    if address is not None and not is_public(address, allowed):
        raise BlockedAddress("points at a private, loopback or link-local address")
    if address is None and NUMERIC_HOST.fullmatch(parts.hostname.rstrip(".")):
        # An IPv4 address in another spelling (`0177.0.0.1`, `0x7f.1`, `2130706433`): read as
        # octal by browsers and inet_aton, as decimal by some resolvers; no name is all numbers.
        raise ValueError("is not a valid URL (an IPv4 address is written as four decimals)")
    name = parts.hostname.rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):  # loopback by definition (RFC 6761)
        raise BlockedAddress("names the loopback address")
    return url


def schemes_for(url: str, allowed: Iterable[IPNetwork]) -> tuple[str, ...]:
    """https, and also http when the URL names an IP address of an allowed network (a local
    receiver an operator allowed: SF_OUTBOUND_ALLOWED_NETWORKS)."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return ("https",)
    address = literal_address(host)
    if address is not None and any(address in network for network in allowed):
        return ("https", "http")
    return ("https",)


def check_destination(url: str, allowed: Iterable[IPNetwork]) -> str:
    """`check_url` with the schemes of URLs users name (`schemes_for`)."""
    allowed = tuple(allowed)
    return check_url(url, allowed, schemes=schemes_for(url, allowed))


async def vet(url: str, allowed: Iterable[IPNetwork], nameservers: Sequence[str] = ()) -> str:
    """`url` when a user may name it (`check_destination`, and a name that resolves, now and
    within RESOLVE_TIMEOUT, to public addresses only); ValueError with one message for every
    name that does not (checked again at every send)."""
    allowed = tuple(allowed)
    try:
        check_destination(url, allowed)
    except BlockedAddress:
        raise ValueError(NOT_PUBLIC) from None
    host = urlsplit(url).hostname or ""
    if literal_address(host) is None:
        resolver = GuardedResolver(allowed, nameservers)
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT):
                await resolver.resolve(host, 0, socket.AF_UNSPEC)
        except (OSError, TimeoutError, UnicodeError, aiohttp.ClientError):
            raise ValueError(NOT_PUBLIC) from None
        finally:
            await resolver.close()
    return url


class GuardedResolver(AbstractResolver):
    """Resolves like the system does, and refuses a name any of whose addresses is not public
    (a name with one public and one private address is refused: which one a connection gets
    is not ours to choose)."""

    def __init__(self, allowed: Iterable[IPNetwork] = (),
                 nameservers: Sequence[str] = ()) -> None:
        self.allowed = tuple(allowed)
        # c-ares: the system's servers (resolv.conf), or the operator's (SF_OUTBOUND_NAMESERVERS).
        self._resolver = (AsyncResolver(nameservers=list(nameservers), timeout=RESOLVE_TIMEOUT,
                                        tries=2) if nameservers else AsyncResolver())

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._resolver.resolve(host, port, family)
        for result in results:
            address = ipaddress.ip_address(result["host"].split("%", 1)[0])
            if not is_public(address, self.allowed):
                raise BlockedAddress(f"{host} resolves to a non-public address")
        return results

    async def close(self) -> None:
        await self._resolver.close()


def guarded_session(allowed: Iterable[IPNetwork] = (), *, timeout: float = 5.0,
                    connections: int = 100,
                    nameservers: Sequence[str] = ()) -> aiohttp.ClientSession:
    """An aiohttp session that only connects to public addresses (see the module), with short
    timeouts and no proxies from the environment. Open it inside the running loop."""
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(allowed, nameservers),
                                     limit=connections,
                                     limit_per_host=8, ttl_dns_cache=None, use_dns_cache=False,
                                     enable_cleanup_closed=True)
    return aiohttp.ClientSession(
        connector=connector, trust_env=False, auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=timeout, connect=min(3.0, timeout),
                                      sock_read=timeout),
        headers={"User-Agent": USER_AGENT})


async def read_capped(response: aiohttp.ClientResponse, cap: int = RESPONSE_CAP_BYTES) -> bytes:
    """At most `cap` bytes of a response body (the rest is never read)."""
    return await response.content.read(cap)


def failure_reason(error: BaseException) -> str:
    """What a failed request tells the user who named the URL: the kind of failure, never
    the library's words (they would read internal details, and map SF's egress)."""
    if isinstance(error, BlockedAddress):
        return "blocked: not a public address"
    if isinstance(error, TimeoutError | aiohttp.ServerTimeoutError):
        return "timed out"
    if isinstance(error, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return "TLS failed"
    if isinstance(error, aiohttp.ClientConnectorDNSError):
        return "name did not resolve"
    if isinstance(error, aiohttp.ClientConnectorError | ConnectionError):
        return "could not connect"
    if isinstance(error, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
        return "connection dropped"
    if isinstance(error, ValueError):  # not https, or a spelling aiohttp will not parse
        return "not a URL SF sends to"
    return "request failed"


def request_options(**more: Any) -> dict[str, Any]:
    """What every guarded request passes: no redirects followed."""
    return {"allow_redirects": False, **more}
