from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hangar.domain.addressing import (
    FIRST_MACHINE,
    MAX_MACHINE_INDEX,
    host_slice,
    machine_address,
    network_prefix,
    new_installation_prefix,
    next_machine_address,
    parse_installation_prefix,
)
from hangar.errors import Conflict, ValidationError

PREFIX = ipaddress.IPv6Network("fd12:3456::/32")


def test_new_prefixes_are_random_ula_slash_32() -> None:
    prefixes = {new_installation_prefix() for _ in range(50)}
    assert len(prefixes) > 45
    for p in prefixes:
        assert p.prefixlen == 32 and p.subnet_of(ipaddress.IPv6Network("fd00::/8"))
        assert parse_installation_prefix(str(p)) == p


@given(st.integers(1, 0xFFFF), st.integers(1, 0xFFFF), st.integers(2, 0xFFFFFFFF))
def test_layout_nests(network: int, host: int, index: int) -> None:
    net = network_prefix(PREFIX, network)
    sl = host_slice(net, host)
    addr = machine_address(sl, index)
    assert net.prefixlen == 48 and net.subnet_of(PREFIX)
    assert sl.prefixlen == 64 and sl.subnet_of(net)
    assert addr in sl and addr != sl.network_address + 1  # ::1 is the host's


@given(
    st.tuples(st.integers(1, 0xFFFF), st.integers(1, 0xFFFF), st.integers(2, 2**32 - 1)),
    st.tuples(st.integers(1, 0xFFFF), st.integers(1, 0xFFFF), st.integers(2, 2**32 - 1)),
)
def test_distinct_machines_get_distinct_addresses(
    a: tuple[int, int, int], b: tuple[int, int, int]
) -> None:
    def address(n: int, h: int, i: int) -> ipaddress.IPv6Address:
        return machine_address(host_slice(network_prefix(PREFIX, n), h), i)

    assert (address(*a) == address(*b)) == (a == b)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: network_prefix(PREFIX, 0), Conflict),
        (lambda: network_prefix(PREFIX, 0x10000), Conflict),
        (lambda: host_slice(network_prefix(PREFIX, 1), 0x10000), Conflict),
        (lambda: machine_address(host_slice(network_prefix(PREFIX, 1), 1), 1), Conflict),
        (lambda: machine_address(host_slice(network_prefix(PREFIX, 1), 1), 2**32), Conflict),
        (lambda: parse_installation_prefix("10.0.0.0/8"), ValidationError),
        (lambda: parse_installation_prefix("2001:db8::/32"), ValidationError),
        (lambda: parse_installation_prefix("fd00::/48"), ValidationError),
    ],
)
def test_exhaustion_and_bad_prefixes_are_clear_errors(call: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        call()  # type: ignore[operator]


SLICE = host_slice(network_prefix(PREFIX, 3), 2)
OTHER = host_slice(network_prefix(PREFIX, 4), 2)


@given(
    st.sets(st.integers(FIRST_MACHINE, MAX_MACHINE_INDEX - 1), max_size=8),
    st.sets(st.integers(FIRST_MACHINE, MAX_MACHINE_INDEX), max_size=8),
)
def test_next_machine_address_is_new_and_in_the_slice(mine: set[int], others: set[int]) -> None:
    taken = [machine_address(SLICE, i) for i in mine] + [machine_address(OTHER, i) for i in others]
    address = next_machine_address(SLICE, taken)
    assert address in SLICE and address not in taken
    index = int(address) & MAX_MACHINE_INDEX
    assert index == max(mine, default=FIRST_MACHINE - 1) + 1  # in order; other slices ignored
    assert next_machine_address(SLICE, reversed(taken)) == address


def test_next_machine_address_starts_at_the_first_and_ends_with_a_conflict() -> None:
    assert next_machine_address(SLICE, []) == machine_address(SLICE, FIRST_MACHINE)
    with pytest.raises(Conflict, match="exhausted"):
        next_machine_address(SLICE, [machine_address(SLICE, MAX_MACHINE_INDEX)])
