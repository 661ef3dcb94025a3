import ipaddress

import pytest

from services.fetcher.netguard import BlockedAddressError, check_literal_host, is_public


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",  # CGNAT
        "169.254.169.254",  # cloud metadata
        "224.0.0.1",  # multicast
        "0.0.0.0",
        "240.0.0.1",  # reserved
        "255.255.255.255",
        "::1",
        "::",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "ff02::1",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:10.0.0.1",
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
    ],
)
def test_special_addresses_are_not_public(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "151.101.1.140", "2606:4700::6810:84e5"])
def test_public_addresses(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


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
