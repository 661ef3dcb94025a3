"""The address policy and its three checkpoints: URL literals, resolver answers, the dialer."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from services.fetcher.netguard import (
    BLOCKED_MARKER,
    BlockedAddressError,
    GuardedResolver,
    allow_all,
    check_literal_host,
    guarded_socket_factory,
    is_public,
    parse_literal,
)
from tests.fetcher.support import ScriptedResolver


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.255.254",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",  # CGNAT
        "169.254.169.254",  # cloud metadata
        "224.0.0.1",  # multicast
        "0.0.0.0",
        "240.0.0.1",  # reserved
        "255.255.255.255",
        "192.0.0.1",  # IETF protocol assignments
        "198.18.0.1",  # benchmarking
        "192.0.2.1",  # documentation
        "::1",
        "::",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "fec0::1",  # site-local (deprecated)
        "ff02::1",
        "ff0e::1",  # global-scope multicast is still multicast
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:10.0.0.1",
        "::127.0.0.1",  # IPv4-compatible (deprecated)
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b:1::1",  # local-use NAT64
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
        "2001:db8::1",  # documentation
        "100::1",  # discard-only
    ],
)
def test_special_addresses_are_not_public(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "151.101.1.140", "2606:4700::6810:84e5", "::ffff:93.184.216.34", "64:ff9b::5db8:d822"]
)
def test_public_addresses(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("[::1]", "::1"),
        ("[::ffff:169.254.169.254]", "::ffff:a9fe:a9fe"),
        ("pbs.twimg.com", None),
    ],
)
def test_literals_in_every_spelling_are_read_as_getaddrinfo_would(host: str, address: str | None) -> None:
    expected = ipaddress.ip_address(address) if address else None
    assert parse_literal(host) == expected


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "2130706433", "0x7f000001", "0177.0.0.1", "127.1", "[::1]", "[::ffff:169.254.169.254]"],
)
def test_odd_spellings_of_private_literals_are_refused(host: str) -> None:
    with pytest.raises(BlockedAddressError):
        check_literal_host(host)


@pytest.mark.parametrize("host", ["pbs.twimg.com", "93.184.216.34"])
def test_names_and_public_literals_pass_the_literal_check(host: str) -> None:
    check_literal_host(host)


def test_the_permissive_policy_is_explicit() -> None:
    check_literal_host("127.0.0.1", allow_all)


async def test_resolver_refuses_an_answer_with_any_private_address() -> None:
    guarded = GuardedResolver(is_public, ScriptedResolver({"a.test": [["93.184.216.34", "10.0.0.1"]]}))
    with pytest.raises(BlockedAddressError, match=r"10\.0\.0\.1"):
        await guarded.resolve("a.test", 80)


async def test_resolver_passes_public_answers() -> None:
    guarded = GuardedResolver(is_public, ScriptedResolver({"a.test": [["93.184.216.34", "2606:4700::6810:84e5"]]}))
    assert [r["host"] for r in await guarded.resolve("a.test", 80)] == ["93.184.216.34", "2606:4700::6810:84e5"]


def test_the_dialer_creates_no_socket_for_a_refused_address() -> None:
    create = guarded_socket_factory(is_public)
    for family, sockaddr in ((socket.AF_INET, ("169.254.169.254", 80)), (socket.AF_INET6, ("::1", 80, 0, 0))):
        with pytest.raises(BlockedAddressError, match=BLOCKED_MARKER):
            create((family, socket.SOCK_STREAM, 6, "", sockaddr))


def test_the_dialer_creates_a_socket_for_an_allowed_address() -> None:
    with guarded_socket_factory(is_public)((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 80))) as s:
        assert s.family == socket.AF_INET
