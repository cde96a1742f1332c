""".internal names (pure): each asker sees its own network's apps and nothing else."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from hangar.contract.names import Record
from hangar.domain.addressing import host_slice, machine_address, network_prefix
from hangar.net.dns import answer, resolver_address

PREFIX = ipaddress.IPv6Network("fd77:7777::/32")
NET_A, NET_B = network_prefix(PREFIX, 1), network_prefix(PREFIX, 2)


def addr(net: ipaddress.IPv6Network, host: int, index: int) -> ipaddress.IPv6Address:
    return machine_address(host_slice(net, host), index)


RECORDS = [
    Record("clinic-db", "fra", "m_1", addr(NET_A, 1, 2)),
    Record("clinic-db", "ams", "m_2", addr(NET_A, 2, 2)),
    Record("clinic-api", "fra", "m_3", addr(NET_A, 1, 3)),
    Record("billing", "fra", "m_4", addr(NET_B, 1, 2)),
]
ASKER_A, ASKER_B = addr(NET_A, 1, 9), addr(NET_B, 1, 9)


def test_names_of_the_askers_network() -> None:
    both = answer(RECORDS, PREFIX, ASKER_A, "clinic-db.internal.", "AAAA")
    assert both.rcode == "NOERROR" and both.addresses == (addr(NET_A, 1, 2), addr(NET_A, 2, 2))
    fra = answer(RECORDS, PREFIX, ASKER_A, "fra.clinic-db.internal", "AAAA")
    assert fra.addresses == (addr(NET_A, 1, 2),)
    vm = answer(RECORDS, PREFIX, ASKER_A, "m_2.vm.clinic-db.internal", "AAAA")
    assert vm.addresses == (addr(NET_A, 2, 2),)
    apps = answer(RECORDS, PREFIX, ASKER_A, "_apps.internal", "TXT")
    assert apps.texts == ("clinic-api,clinic-db",)
    # A region with no machine is an empty answer, not a missing name.
    assert answer(RECORDS, PREFIX, ASKER_A, "nyc.clinic-db.internal", "AAAA").rcode == "NOERROR"


def test_another_network_answers_nothing_useful() -> None:
    assert answer(RECORDS, PREFIX, ASKER_A, "billing.internal", "AAAA").rcode == "NXDOMAIN"
    assert answer(RECORDS, PREFIX, ASKER_B, "clinic-db.internal", "AAAA").rcode == "NXDOMAIN"
    assert answer(RECORDS, PREFIX, ASKER_B, "_apps.internal", "TXT").texts == ("billing",)
    assert answer(RECORDS, PREFIX, ASKER_A, "m_4.vm.billing.internal", "AAAA").addresses == ()


def test_outside_names_and_outside_askers_are_refused() -> None:
    assert answer(RECORDS, PREFIX, ASKER_A, "example.com", "AAAA").rcode == "REFUSED"
    assert answer(RECORDS, PREFIX, ASKER_A, "internal.example.com", "AAAA").rcode == "REFUSED"
    stranger = ipaddress.IPv6Address("2001:db8::1")
    assert answer(RECORDS, PREFIX, stranger, "clinic-db.internal", "AAAA").rcode == "REFUSED"


def test_the_resolver_is_never_a_machine() -> None:
    dns = resolver_address(PREFIX)
    assert dns in PREFIX and not any(dns in network_prefix(PREFIX, n) for n in (1, 2, 65535))


@given(st.integers(1, 0xFFFF), st.integers(1, 0xFFFF), st.integers(2, 0xFFFF), st.text(max_size=30))
def test_no_asker_learns_another_networks_addresses(
    net: int, host: int, index: int, name: str
) -> None:
    asker = machine_address(host_slice(network_prefix(PREFIX, net), host), index)
    mine = ipaddress.IPv6Network((int(asker) >> 80 << 80, 48))
    for qname in (name, f"{name}.internal", "billing.internal", "clinic-db.internal"):
        got = answer(RECORDS, PREFIX, asker, qname, "AAAA")
        assert all(a in mine for a in got.addresses)
