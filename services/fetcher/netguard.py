"""Refuse to connect to addresses that are not public unicast (SSRF protection).

An `AddressPolicy` says which addresses may be dialled; the default, `is_public`, allows only
public unicast. It is enforced in three places, so that the address actually connected to is
always the one checked:

- `check_literal_host`: an IP literal in a URL, in any spelling (`2130706433`, `0x7f.1`,
  `0177.0.0.1`, `[::ffff:127.0.0.1]`), refused before any request is made;
- `GuardedResolver`: a DNS name is resolved once, and the whole answer is refused if any address
  in it is not allowed; aiohttp connects only to (and caches only) what this resolver returned,
  so a name that resolves, or rebinds, to a private address is refused;
- `guarded_socket_factory`: the dialer itself checks every address it is about to connect to,
  whatever path produced it (the last line, as in go-camo and imgproxy).

Tests inject a policy that also allows one loopback address; the production default is only
ever `is_public` or, with `FETCHER_ALLOW_PRIVATE_NETWORKS=true`, `allow_all`.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Callable
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AddressPolicy = Callable[[IPAddress], bool]
"""True when the fetcher may connect to this address."""

SocketFactory = Callable[[tuple[Any, ...]], socket.socket]
"""aiohttp's `socket_factory`: (family, type, proto, canonname, sockaddr) → an unconnected socket."""

BLOCKED_MARKER = "is not an allowed address"

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
# RFC 6052 well-known NAT64 prefix: the low 32 bits are the IPv4 address a gateway would dial.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class BlockedAddressError(OSError):
    """The target address is loopback, private, link-local or otherwise not allowed."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EACCES, message)


def is_public(address: IPAddress) -> bool:
    """Public unicast only: no loopback, private, CGNAT, link-local, multicast, unspecified or reserved."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public(embedded)
        if address.teredo is not None or address.is_site_local:
            return False
    elif address in _CGNAT:
        return False
    return address.is_global and not (
        address.is_multicast
        or address.is_reserved
        or address.is_loopback
        or address.is_link_local
        or address.is_unspecified
        or address.is_private
    )


def allow_all(_: IPAddress) -> bool:
    """The policy of `FETCHER_ALLOW_PRIVATE_NETWORKS=true` (local stack only)."""
    return True


def parse_literal(host: str) -> IPAddress | None:
    """The address `host` spells, in any form `getaddrinfo` would accept, or None for a DNS name."""
    literal = host.strip("[]")
    try:
        return ipaddress.ip_address(literal)
    except ValueError:
        pass
    try:  # inet_aton accepts the legacy forms: decimal, octal, hex, fewer than four parts
        return ipaddress.IPv4Address(socket.inet_aton(literal))
    except OSError:
        return None


def check_literal_host(host: str, policy: AddressPolicy = is_public) -> None:
    """Raise BlockedAddressError if `host` is an IP literal, in any spelling, that `policy` refuses."""
    address = parse_literal(host)
    if address is not None and not policy(address):
        raise BlockedAddressError(f"{host} {BLOCKED_MARKER}")


def check_address(address: str, policy: AddressPolicy, what: str) -> None:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError as exc:  # not an address at all: refuse rather than guess
        raise BlockedAddressError(f"{what}: {address!r} {BLOCKED_MARKER}") from exc
    if not policy(parsed):
        raise BlockedAddressError(f"{what}: {address} {BLOCKED_MARKER}")


class GuardedResolver(AbstractResolver):
    """Resolves with `inner` (aiohttp's default resolver), then refuses the answer if `policy`
    refuses any address in it."""

    def __init__(self, policy: AddressPolicy = is_public, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            check_address(result["host"], self._policy, f"{host} resolves to")
        return results

    async def close(self) -> None:
        await self._inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def guarded_socket_factory(policy: AddressPolicy) -> SocketFactory:
    """A socket factory for aiohttp's dialer that refuses to create a socket for a refused address."""

    def create(addr_info: tuple[Any, ...]) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        check_address(str(sockaddr[0]), policy, "connecting to")
        return socket.socket(family=family, type=type_, proto=proto)

    return create
