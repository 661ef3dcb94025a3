"""Refuse to connect to addresses that are not public unicast (SSRF protection).

The check runs on the addresses the connection will actually use: a DNS name is resolved
once, by `GuardedResolver`, and aiohttp connects only to what it returns, so a name that
resolves to a private address (or rebinds to one) is refused. IP literals never reach a
resolver, so `check_literal_host` covers them, including spellings such as `2130706433`
or `0x7f.1` that `getaddrinfo` would read as 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class BlockedAddressError(OSError):
    """The target address is loopback, private, link-local or otherwise not public."""


def is_public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:
            return is_public(mapped)
        if address.teredo is not None:
            return False
    elif address in _CGNAT:
        return False
    return address.is_global and not address.is_multicast


def check_literal_host(host: str) -> None:
    """Raise BlockedAddressError if `host` is an IP literal, in any spelling, that is not public."""
    literal = host.strip("[]")
    try:
        address: IPAddress = ipaddress.ip_address(literal)
    except ValueError:
        try:  # inet_aton accepts the legacy forms: decimal, octal, hex, fewer than four parts
            address = ipaddress.IPv4Address(socket.inet_aton(literal))
        except OSError:
            return  # a DNS name: GuardedResolver checks what it resolves to
    if not is_public(address):
        raise BlockedAddressError(f"{host} is not a public address")


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, then refuses any non-public answer."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            if not is_public(ipaddress.ip_address(result["host"])):
                raise BlockedAddressError(f"{host} resolves to {result['host']}, which is not a public address")
        return results

    async def close(self) -> None:
        await self._inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
